//! The pod's interception rules, as data, and their `iptables-restore` form.
//!
//! `weft-init` builds a [`Plan`] from its [`InitConfig`], renders it with
//! [`Plan::restore_script`] for the nft backend (`iptables-nft-restore` and
//! `ip6tables-nft-restore`), and [`apply`] installs it. The rules live in two
//! chains of the `nat` table that weft owns ([`INBOUND_CHAIN`], [`OUTPUT_CHAIN`]):
//! they are declared (and so flushed) and rebuilt on every run, and exactly one
//! jump from each built-in chain leads to them, so running twice gives the same
//! rules.
//!
//! - incoming TCP (`PREROUTING`) goes to the proxy's inbound port 15143, except
//!   the admin port 15191 and the configured inbound skip ports;
//! - outgoing TCP (`OUTPUT`) goes to the proxy's outbound port 15140, except
//!   traffic of the proxy's uid 2510, traffic on loopback,
//!   the admin port of other pods, the configured outbound skip ports and
//!   skip subnets.
//!
//! Every rule is written in the exact form `iptables-save` prints it, so that
//! `--dry-run` output can be compared with what is installed.

mod apply;
mod config;

pub use apply::{ApplyError, apply, check_capabilities, find_binary, owned_lines};
pub use config::{ConfigError, InitConfig, PortRange, Subnet};

use std::fmt::{self, Write as _};

use weft_api::consts::{PROXY_ADMIN_PORT, PROXY_INBOUND_PORT, PROXY_OUTBOUND_PORT};

/// weft's chain for incoming TCP, jumped to from `PREROUTING`.
pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
/// weft's chain for outgoing TCP, jumped to from `OUTPUT`.
pub const OUTPUT_CHAIN: &str = "WEFT_OUTPUT";
/// `multiport` accepts at most 15 ports per rule, a range counting as two.
const MULTIPORT_MAX_SLOTS: usize = 15;

/// An IP family, and the iptables binaries (nft backend) that manage it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The binary that installs a rule set (`iptables-restore` syntax).
    pub fn restore_binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables-nft-restore",
            Family::V6 => "ip6tables-nft-restore",
        }
    }

    /// The binary that prints the installed rules.
    pub fn save_binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables-nft-save",
            Family::V6 => "ip6tables-nft-save",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A chain of the `nat` table that a rule is appended to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    Prerouting,
    Output,
    WeftInbound,
    WeftOutput,
}

impl Chain {
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::WeftInbound => INBOUND_CHAIN,
            Chain::WeftOutput => OUTPUT_CHAIN,
        }
    }
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Destination address in this subnet (`-d`).
    Destination(Subnet),
    /// Leaving through this interface (`-o`).
    OutInterface(&'static str),
    /// Protocol TCP (`-p tcp`).
    Tcp,
    /// TCP destination port (`-m tcp --dport`); needs [`Match::Tcp`] before it.
    DestinationPort(u16),
    /// TCP destination ports (`-m multiport --dports`), at most 15 slots.
    DestinationPorts(Vec<PortRange>),
    /// Sent by a socket owned by this uid (`-m owner --uid-owner`).
    UidOwner(u32),
}

/// What happens to a packet that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Leave weft's chain: the packet is not redirected.
    Return,
    /// Redirect to this local port (`-j REDIRECT --to-ports`).
    Redirect(u16),
    /// Continue in weft's chain.
    Jump(Chain),
}

/// One rule: appended to `chain`, matching all of `matches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub matches: Vec<Match>,
    pub target: Target,
}

impl fmt::Display for Rule {
    /// The rule as `iptables-save` prints it (`-A CHAIN ...`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain.name())?;
        for m in &self.matches {
            match m {
                Match::Destination(net) => write!(f, " -d {net}")?,
                Match::OutInterface(name) => write!(f, " -o {name}")?,
                Match::Tcp => f.write_str(" -p tcp")?,
                Match::DestinationPort(port) => write!(f, " -m tcp --dport {port}")?,
                Match::DestinationPorts(ports) => {
                    let list: Vec<String> = ports.iter().map(PortRange::to_string).collect();
                    write!(f, " -m multiport --dports {}", list.join(","))?
                }
                Match::UidOwner(uid) => write!(f, " -m owner --uid-owner {uid}")?,
            }
        }
        match &self.target {
            Target::Return => f.write_str(" -j RETURN"),
            Target::Redirect(port) => write!(f, " -j REDIRECT --to-ports {port}"),
            Target::Jump(chain) => write!(f, " -j {}", chain.name()),
        }
    }
}

/// The rules of one IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: Family,
    /// Jumps from the built-in chains into weft's chains (installed once).
    pub jumps: Vec<Rule>,
    /// The contents of weft's chains (flushed and rebuilt on every run).
    pub rules: Vec<Rule>,
}

/// All the rules `weft-init` installs in a pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub families: Vec<FamilyPlan>,
}

impl Plan {
    /// The rules for `config`: IPv4, and IPv6 unless disabled.
    pub fn new(config: &InitConfig) -> Plan {
        let mut families = vec![FamilyPlan::new(Family::V4, config)];
        if config.ipv6 {
            families.push(FamilyPlan::new(Family::V6, config));
        }
        Plan { families }
    }

    /// What `--dry-run` prints: each family's restore input on a fresh
    /// namespace, headed by a comment naming the binary that takes it.
    pub fn dry_run(&self) -> String {
        let mut out = String::new();
        for plan in &self.families {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "# {}: {} --noflush",
                plan.family,
                plan.family.restore_binary()
            );
            out.push_str(&plan.restore_script(&[]));
        }
        out
    }
}

impl FamilyPlan {
    fn new(family: Family, config: &InitConfig) -> FamilyPlan {
        let jumps = vec![
            Rule {
                chain: Chain::Prerouting,
                matches: vec![Match::Tcp],
                target: Target::Jump(Chain::WeftInbound),
            },
            Rule {
                chain: Chain::Output,
                matches: vec![Match::Tcp],
                target: Target::Jump(Chain::WeftOutput),
            },
        ];

        let mut rules = vec![Rule {
            chain: Chain::WeftInbound,
            matches: vec![Match::Tcp, Match::DestinationPort(PROXY_ADMIN_PORT)],
            target: Target::Return,
        }];
        for group in multiport_groups(&config.skip_inbound_ports) {
            rules.push(Rule {
                chain: Chain::WeftInbound,
                matches: vec![Match::Tcp, Match::DestinationPorts(group)],
                target: Target::Return,
            });
        }
        rules.push(Rule {
            chain: Chain::WeftInbound,
            matches: vec![Match::Tcp],
            target: Target::Redirect(PROXY_INBOUND_PORT),
        });

        rules.push(Rule {
            chain: Chain::WeftOutput,
            matches: vec![Match::UidOwner(config.proxy_uid)],
            target: Target::Return,
        });
        rules.push(Rule {
            chain: Chain::WeftOutput,
            matches: vec![Match::OutInterface("lo")],
            target: Target::Return,
        });
        // Other pods' admin servers speak plain HTTP (probes, scrapes): a
        // connection to one must not be sent over mesh TLS.
        rules.push(Rule {
            chain: Chain::WeftOutput,
            matches: vec![Match::Tcp, Match::DestinationPort(PROXY_ADMIN_PORT)],
            target: Target::Return,
        });
        for net in config
            .skip_subnets
            .iter()
            .filter(|net| net.family() == family)
        {
            rules.push(Rule {
                chain: Chain::WeftOutput,
                matches: vec![Match::Destination(*net)],
                target: Target::Return,
            });
        }
        for group in multiport_groups(&config.skip_outbound_ports) {
            rules.push(Rule {
                chain: Chain::WeftOutput,
                matches: vec![Match::Tcp, Match::DestinationPorts(group)],
                target: Target::Return,
            });
        }
        rules.push(Rule {
            chain: Chain::WeftOutput,
            matches: vec![Match::Tcp],
            target: Target::Redirect(PROXY_OUTBOUND_PORT),
        });

        FamilyPlan {
            family,
            jumps,
            rules,
        }
    }

    /// The input for `<family>-nft-restore --noflush`, given the lines of the
    /// `nat` table already installed (from `iptables-save`): weft's chains are
    /// declared (which flushes them) and refilled; each jump is added when
    /// missing and its duplicates, if any, deleted. Other rules are untouched.
    pub fn restore_script(&self, installed: &[String]) -> String {
        let mut out = String::from("*nat\n");
        for chain in [Chain::WeftInbound, Chain::WeftOutput] {
            let _ = writeln!(out, ":{} - [0:0]", chain.name());
        }
        for jump in &self.jumps {
            let line = jump.to_string();
            let count = installed.iter().filter(|l| **l == line).count();
            if count == 0 {
                let _ = writeln!(out, "{line}");
            }
            for _ in 1..count {
                let _ = writeln!(out, "-D{}", &line["-A".len()..]);
            }
        }
        for rule in &self.rules {
            let _ = writeln!(out, "{rule}");
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The lines `iptables-save` prints for these rules once installed, in order.
    pub fn saved_lines(&self) -> Vec<String> {
        self.jumps
            .iter()
            .chain(&self.rules)
            .map(Rule::to_string)
            .collect()
    }
}

/// Splits ports into `multiport` lists of at most 15 slots (a range takes two).
fn multiport_groups(ports: &[PortRange]) -> Vec<Vec<PortRange>> {
    let mut groups: Vec<Vec<PortRange>> = Vec::new();
    let mut slots = 0;
    for port in ports {
        let need = if port.first == port.last { 1 } else { 2 };
        match groups.last_mut() {
            Some(group) if slots + need <= MULTIPORT_MAX_SLOTS => {
                group.push(*port);
                slots += need;
            }
            _ => {
                groups.push(vec![*port]);
                slots = need;
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(env: &[(&str, &str)]) -> InitConfig {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        InitConfig::from_args_and_env(["weft-init"], &env).unwrap()
    }

    #[test]
    fn default_plan_renders_the_documented_rules() {
        let plan = Plan::new(&config(&[]));
        assert_eq!(plan.families.len(), 2);
        let expected = "\
*nat
:WEFT_INBOUND - [0:0]
:WEFT_OUTPUT - [0:0]
-A PREROUTING -p tcp -j WEFT_INBOUND
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A WEFT_INBOUND -p tcp -m tcp --dport 15191 -j RETURN
-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15143
-A WEFT_OUTPUT -m owner --uid-owner 2510 -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
-A WEFT_OUTPUT -p tcp -m tcp --dport 15191 -j RETURN
-A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15140
COMMIT
";
        for family in &plan.families {
            assert_eq!(family.restore_script(&[]), expected);
        }
        let dry = plan.dry_run();
        assert!(dry.starts_with("# IPv4: iptables-nft-restore --noflush\n*nat\n"));
        assert!(dry.contains("# IPv6: ip6tables-nft-restore --noflush\n*nat\n"));
    }

    #[test]
    fn skip_ports_and_subnets_go_to_their_family_and_chain() {
        let plan = Plan::new(&config(&[
            ("WEFT_INIT_SKIP_INBOUND_PORTS", "22,8000-8100"),
            ("WEFT_INIT_SKIP_OUTBOUND_PORTS", "25"),
            ("WEFT_INIT_SKIP_SUBNETS", "10.96.0.0/12,fd00::/8"),
        ]));
        let v4 = plan.families[0].saved_lines();
        let v6 = plan.families[1].saved_lines();
        assert!(v4.contains(
            &"-A WEFT_INBOUND -p tcp -m multiport --dports 22,8000:8100 -j RETURN".into()
        ));
        assert!(v4.contains(&"-A WEFT_OUTPUT -p tcp -m multiport --dports 25 -j RETURN".into()));
        assert!(v4.contains(&"-A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN".into()));
        assert!(!v4.iter().any(|l| l.contains("fd00")));
        assert!(v6.contains(&"-A WEFT_OUTPUT -d fd00::/8 -j RETURN".into()));
        assert!(!v6.iter().any(|l| l.contains("10.96")));
        // The skip rules come before the redirect.
        let redirect = v4
            .iter()
            .position(|l| l.contains("--to-ports 15140"))
            .unwrap();
        let skip = v4.iter().position(|l| l.contains("--dports 25 ")).unwrap();
        assert!(skip < redirect);
    }

    #[test]
    fn ipv6_can_be_turned_off() {
        let plan = Plan::new(&config(&[("WEFT_INIT_IPV6", "false")]));
        assert_eq!(plan.families.len(), 1);
        assert_eq!(plan.families[0].family, Family::V4);
        assert!(!plan.dry_run().contains("IPv6"));
    }

    #[test]
    fn jumps_are_added_once_and_duplicates_removed() {
        let plan = Plan::new(&config(&[]));
        let v4 = &plan.families[0];
        let installed: Vec<String> = vec![
            "-A PREROUTING -p tcp -j WEFT_INBOUND".into(),
            "-A OUTPUT -p tcp -j WEFT_OUTPUT".into(),
            "-A OUTPUT -p tcp -j WEFT_OUTPUT".into(),
            "-A OUTPUT -p tcp -j WEFT_OUTPUT".into(),
        ];
        let script = v4.restore_script(&installed);
        assert!(!script.contains("-A PREROUTING"));
        assert!(!script.contains("-A OUTPUT"));
        assert_eq!(
            script.matches("-D OUTPUT -p tcp -j WEFT_OUTPUT\n").count(),
            2
        );
        assert!(!script.contains("-D PREROUTING"));
    }

    #[test]
    fn multiport_lists_hold_at_most_15_slots() {
        let ports: Vec<PortRange> = (1..=20)
            .map(|p| PortRange { first: p, last: p })
            .chain([PortRange {
                first: 100,
                last: 200,
            }])
            .collect();
        let groups = multiport_groups(&ports);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), 15);
        // 5 single ports and one range: 7 slots.
        assert_eq!(groups[1].len(), 6);
        assert!(multiport_groups(&[]).is_empty());
    }
}
