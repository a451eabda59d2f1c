//! Installs a [`Plan`] with the iptables nft tools, after checking that the
//! tools and the capability they need are there, and verifies the result.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Family, FamilyPlan, INBOUND_CHAIN, OUTPUT_CHAIN, Plan};

/// `CAP_NET_ADMIN`, from `linux/capability.h`.
const CAP_NET_ADMIN_BIT: u32 = 12;

/// Why the rules could not be installed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "`{binary}` was not found in PATH ({path}): weft-init installs its rules with the \
         iptables nft tools; install the `iptables` package (Debian and Ubuntu: \
         `apt-get install iptables`) in the image that runs weft-init"
    )]
    MissingBinary { binary: &'static str, path: String },
    #[error(
        "the CAP_NET_ADMIN capability is missing; it is needed to change the \
         network namespace's iptables rules: in Kubernetes add NET_ADMIN and NET_RAW to \
         the init container's securityContext.capabilities.add; by hand, run it as root \
         in the pod's namespace (`ip netns exec <pod> weft-init`)"
    )]
    MissingCapability,
    #[error("could not read /proc/self/status to check capabilities (is /proc mounted?): {0}")]
    ReadStatus(#[source] std::io::Error),
    #[error("could not run `{binary}`: {source}")]
    Spawn {
        binary: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{binary}` failed ({status}): {stderr}\n(check that the kernel has nf_tables and \
         that weft-init runs with CAP_NET_ADMIN in the pod's network namespace)\n\
         its input was:\n{input}"
    )]
    Failed {
        binary: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
        input: String,
    },
    #[error(
        "the {family} rules installed differ from the plan (another program changed weft's \
         chains while weft-init ran?)\nexpected:\n{expected}\ninstalled:\n{installed}"
    )]
    Mismatch {
        family: Family,
        expected: String,
        installed: String,
    },
}

/// Installs `plan` in the current network namespace, one family after the
/// other, and checks that `iptables-save` then shows exactly the planned rules.
pub fn apply(plan: &Plan) -> Result<(), ApplyError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut binaries = Vec::new();
    for fp in &plan.families {
        for binary in [fp.family.save_binary(), fp.family.restore_binary()] {
            let found = find_binary(binary, &path).ok_or_else(|| ApplyError::MissingBinary {
                binary,
                path: path.to_string_lossy().into_owned(),
            })?;
            binaries.push(found);
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").map_err(ApplyError::ReadStatus)?;
    check_capabilities(&status)?;

    for (fp, bins) in plan.families.iter().zip(binaries.chunks(2)) {
        apply_family(fp, &bins[0], &bins[1])?;
    }
    Ok(())
}

fn apply_family(plan: &FamilyPlan, save: &Path, restore: &Path) -> Result<(), ApplyError> {
    let family = plan.family;
    let installed = owned_lines(&run(save, family.save_binary(), &["-t", "nat"], "")?);
    let script = plan.restore_script(&installed);
    tracing::debug!(%family, %script, "installing rules");
    run(restore, family.restore_binary(), &["--noflush"], &script)?;

    let installed = owned_lines(&run(save, family.save_binary(), &["-t", "nat"], "")?);
    let expected = plan.saved_lines();
    if installed != expected {
        return Err(ApplyError::Mismatch {
            family,
            expected: expected.join("\n"),
            installed: installed.join("\n"),
        });
    }
    tracing::info!(%family, rules = expected.len(), "interception rules installed");
    Ok(())
}

/// Runs `path` with `args` and `input` on stdin; returns its stdout.
fn run(
    path: &Path,
    binary: &'static str,
    args: &[&str],
    input: &str,
) -> Result<String, ApplyError> {
    let spawn = |source| ApplyError::Spawn { binary, source };
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let output = child.wait_with_output().map_err(spawn)?;
    if !output.status.success() {
        return Err(ApplyError::Failed {
            binary,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            input: input.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The lines of `iptables-save` output that belong to weft: the rules of its
/// chains and the jumps into them, in order.
pub fn owned_lines(save: &str) -> Vec<String> {
    let ours = |chain: &str| chain == INBOUND_CHAIN || chain == OUTPUT_CHAIN;
    save.lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("-A") {
                return false;
            }
            let chain = words.next().unwrap_or_default();
            let jumps_to_ours = line
                .split_once(" -j ")
                .is_some_and(|(_, target)| ours(target.trim()));
            ours(chain) || jumps_to_ours
        })
        .map(str::to_string)
        .collect()
}

/// Finds `binary` in the directories of a `PATH` value.
pub fn find_binary(binary: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// Checks, from the text of `/proc/self/status`, that the effective
/// capabilities hold `CAP_NET_ADMIN`.
pub fn check_capabilities(status: &str) -> Result<(), ApplyError> {
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if effective & (1 << CAP_NET_ADMIN_BIT) == 0 {
        return Err(ApplyError::MissingCapability);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bits_are_read_from_proc_status() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(check_capabilities(root).is_ok());
        let net_admin_only = "CapEff:\t0000000000001000\n";
        assert!(check_capabilities(net_admin_only).is_ok());
        let none = "CapEff:\t0000000000000000\n";
        let err = check_capabilities(none).unwrap_err();
        assert!(err.to_string().contains("NET_ADMIN"), "{err}");
        assert!(check_capabilities("garbage").is_err());
    }

    #[test]
    fn binaries_are_searched_in_path_order() {
        let dir = std::env::temp_dir().join(format!("weft-init-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("iptables-nft-restore"), "").unwrap();
        let path = std::env::join_paths(["/nonexistent-weft".as_ref(), dir.as_path()]).unwrap();
        assert_eq!(
            find_binary("iptables-nft-restore", &path),
            Some(dir.join("iptables-nft-restore"))
        );
        assert_eq!(find_binary("ip6tables-nft-restore", &path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_weft_lines_are_kept_from_save_output() {
        let save = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:WEFT_INBOUND - [0:0]
-A PREROUTING -p tcp -j WEFT_INBOUND
-A PREROUTING -p udp -j DNAT --to-destination 198.18.0.9
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15143
-A WEFT_INBOUNDX -p tcp -j RETURN
COMMIT
";
        assert_eq!(
            owned_lines(save),
            [
                "-A PREROUTING -p tcp -j WEFT_INBOUND",
                "-A OUTPUT -p tcp -j WEFT_OUTPUT",
                "-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15143",
            ]
        );
    }
}
