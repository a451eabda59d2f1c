//! `weft-init`'s configuration: flags, with environment fallbacks
//! ([`weft_api::consts::init_env`]), parsed in one place. Every bad value is
//! reported at once.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;

use clap::Parser;
use weft_api::consts::{PROXY_UID, init_env};

use super::Family;

/// What `weft-init` installs, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    /// Print the rules instead of installing them.
    pub dry_run: bool,
    /// Incoming ports that are not redirected (sorted, without duplicates).
    pub skip_inbound_ports: Vec<PortRange>,
    /// Outgoing destination ports that are not redirected (sorted, without duplicates).
    pub skip_outbound_ports: Vec<PortRange>,
    /// Destination subnets that are not redirected, both families (sorted).
    pub skip_subnets: Vec<Subnet>,
    /// Whether IPv6 rules are installed too.
    pub ipv6: bool,
    /// The uid whose outgoing traffic is never redirected: the proxy's.
    pub proxy_uid: u32,
}

/// A port, or an inclusive range of ports (`first == last` for one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    /// The `multiport` form: `80` or `8000:8100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// A subnet in CIDR form, with its host bits cleared (as iptables prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Parses `addr/prefix`, or a bare address (a single host).
    fn parse(s: &str) -> Result<Subnet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR subnet"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`{s}` has a bad prefix length (0 to {max})")),
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Subnet { addr, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad command line, or `--help` / `--version` (clap prints and exits).
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// One or more values are invalid; each message names the flag, the
    /// environment variable and what is accepted.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Installs the pod's interception rules: incoming TCP to the proxy's inbound
/// port 15143, outgoing TCP to its outbound port 15140 (iptables, nft backend).
///
/// Each option falls back to the environment variable named in its help.
/// Lists are comma separated; ports may be ranges (`8000-8100`).
#[derive(Debug, Parser)]
#[command(name = "weft-init", version)]
struct Args {
    /// Print the rules (iptables-restore input) instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Incoming ports not redirected, e.g. `22,8000-8100`
    /// [env: WEFT_INIT_SKIP_INBOUND_PORTS] [default: none]
    #[arg(long, value_name = "PORTS")]
    skip_inbound_ports: Option<String>,
    /// Outgoing destination ports not redirected, e.g. `25,587`
    /// [env: WEFT_INIT_SKIP_OUTBOUND_PORTS] [default: none]
    #[arg(long, value_name = "PORTS")]
    skip_outbound_ports: Option<String>,
    /// Destination subnets not redirected, e.g. `10.96.0.0/12,fd00::/8`
    /// [env: WEFT_INIT_SKIP_SUBNETS] [default: none]
    #[arg(long, value_name = "CIDRS")]
    skip_subnets: Option<String>,
    /// Install IPv6 rules too: `true` or `false`
    /// [env: WEFT_INIT_IPV6] [default: true]
    #[arg(long, value_name = "BOOL")]
    ipv6: Option<String>,
    /// uid whose outgoing traffic is not redirected (the proxy's)
    /// [env: WEFT_INIT_PROXY_UID] [default: 2510]
    #[arg(long, value_name = "UID")]
    proxy_uid: Option<String>,
}

impl InitConfig {
    /// Parses the command line `args` (the program name first), falling back
    /// to `env` for options not given. Tests pass a map; the binary passes
    /// the process environment.
    pub fn from_args_and_env<I, T>(
        args: I,
        env: &HashMap<String, String>,
    ) -> Result<InitConfig, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = Args::try_parse_from(args)?;
        let mut problems = Vec::new();
        let value = |flag: Option<String>, name: &str, var: &str| match flag {
            Some(v) => Some((v, format!("--{name}"))),
            None => env.get(var).map(|v| (v.clone(), var.to_string())),
        };

        let skip_inbound_ports = value(
            args.skip_inbound_ports,
            "skip-inbound-ports",
            init_env::SKIP_INBOUND_PORTS,
        )
        .map(|(v, src)| parse_list(&v, &src, parse_port_range, &mut problems))
        .unwrap_or_default();
        let skip_outbound_ports = value(
            args.skip_outbound_ports,
            "skip-outbound-ports",
            init_env::SKIP_OUTBOUND_PORTS,
        )
        .map(|(v, src)| parse_list(&v, &src, parse_port_range, &mut problems))
        .unwrap_or_default();
        let skip_subnets = value(args.skip_subnets, "skip-subnets", init_env::SKIP_SUBNETS)
            .map(|(v, src)| parse_list(&v, &src, Subnet::parse, &mut problems))
            .unwrap_or_default();
        let ipv6 = match value(args.ipv6, "ipv6", init_env::IPV6) {
            None => true,
            Some((v, src)) => match v.trim() {
                "true" => true,
                "false" => false,
                other => {
                    problems.push(format!("{src}: `{other}` is not `true` or `false`"));
                    true
                }
            },
        };
        let proxy_uid = match value(args.proxy_uid, "proxy-uid", init_env::PROXY_UID) {
            None => PROXY_UID,
            Some((v, src)) => v.trim().parse().unwrap_or_else(|_| {
                problems.push(format!("{src}: `{v}` is not a uid (0 to 4294967295)"));
                PROXY_UID
            }),
        };

        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(InitConfig {
            dry_run: args.dry_run,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_subnets,
            ipv6,
            proxy_uid,
        })
    }
}

/// Parses a comma-separated list, sorted and without duplicates; bad entries
/// are added to `problems`, prefixed with `source` (a flag or variable name).
fn parse_list<T: Ord>(
    list: &str,
    source: &str,
    parse: impl Fn(&str) -> Result<T, String>,
    problems: &mut Vec<String>,
) -> Vec<T> {
    let mut items = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match parse(item) {
            Ok(v) => items.push(v),
            Err(e) => problems.push(format!("{source}: {e}")),
        }
    }
    items.sort();
    items.dedup();
    items
}

/// Parses `80` or `8000-8100` (ports 1 to 65535).
fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "`{s}` is not a port (1 to 65535) or range (`8000-8100`)"
        )),
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(s)?, port(s)?),
    };
    if first > last {
        return Err(format!("`{s}` is a range whose start is after its end"));
    }
    Ok(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = InitConfig::from_args_and_env(["weft-init"], &env(&[])).unwrap();
        assert_eq!(
            c,
            InitConfig {
                dry_run: false,
                skip_inbound_ports: vec![],
                skip_outbound_ports: vec![],
                skip_subnets: vec![],
                ipv6: true,
                proxy_uid: 2510,
            }
        );
    }

    #[test]
    fn flags_win_over_env_and_values_are_normalized() {
        let c = InitConfig::from_args_and_env(
            [
                "weft-init",
                "--dry-run",
                "--skip-inbound-ports",
                "8080, 22,22,9000-9010",
                "--skip-subnets",
                "10.1.2.3/8,fd00::1/8,192.168.1.7",
            ],
            &env(&[
                ("WEFT_INIT_SKIP_INBOUND_PORTS", "1"),
                ("WEFT_INIT_SKIP_OUTBOUND_PORTS", "25"),
                ("WEFT_INIT_IPV6", "false"),
                ("WEFT_INIT_PROXY_UID", "1000"),
            ]),
        )
        .unwrap();
        assert!(c.dry_run);
        let ports: Vec<String> = c.skip_inbound_ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["22", "8080", "9000:9010"]);
        assert_eq!(
            c.skip_outbound_ports,
            [PortRange {
                first: 25,
                last: 25
            }]
        );
        let nets: Vec<String> = c.skip_subnets.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        assert!(!c.ipv6);
        assert_eq!(c.proxy_uid, 1000);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let err = InitConfig::from_args_and_env(
            ["weft-init", "--skip-outbound-ports", "0,70000,9-3"],
            &env(&[
                ("WEFT_INIT_SKIP_INBOUND_PORTS", "http"),
                ("WEFT_INIT_SKIP_SUBNETS", "10.0.0.0/33,nonsense"),
                ("WEFT_INIT_IPV6", "yes"),
                ("WEFT_INIT_PROXY_UID", "-1"),
            ]),
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("expected invalid values, got {err}");
        };
        assert_eq!(problems.len(), 8, "{problems:#?}");
        let text = err.to_string();
        for needle in [
            "--skip-outbound-ports: `0`",
            "--skip-outbound-ports: `70000`",
            "--skip-outbound-ports: `9-3` is a range whose start is after its end",
            "WEFT_INIT_SKIP_INBOUND_PORTS: `http`",
            "WEFT_INIT_SKIP_SUBNETS: `10.0.0.0/33` has a bad prefix length",
            "WEFT_INIT_SKIP_SUBNETS: `nonsense` is not an IP address",
            "WEFT_INIT_IPV6: `yes` is not `true` or `false`",
            "WEFT_INIT_PROXY_UID: `-1` is not a uid",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let err = InitConfig::from_args_and_env(["weft-init", "--nope"], &env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Usage(_)));
    }

    #[test]
    fn help_names_every_environment_variable() {
        let help = Args::command().render_long_help().to_string();
        for var in [
            init_env::SKIP_INBOUND_PORTS,
            init_env::SKIP_OUTBOUND_PORTS,
            init_env::SKIP_SUBNETS,
            init_env::IPV6,
            init_env::PROXY_UID,
        ] {
            assert!(help.contains(var), "help does not mention {var}:\n{help}");
        }
    }
}
