//! The `weft-init` binary without root: `--dry-run`, `--help` and bad values.
//! (Installing the rules is tested in network namespaces by `weft-tests`.)

use std::process::Command;

fn weft_init() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-init"));
    for (name, _) in std::env::vars() {
        if name.starts_with("WEFT_INIT_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[test]
fn dry_run_prints_both_families_and_installs_nothing() {
    let out = weft_init()
        .args(["--dry-run", "--skip-inbound-ports", "22"])
        .env("WEFT_INIT_SKIP_SUBNETS", "10.96.0.0/12,fd00::/8")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (v4, v6) = text
        .split_once("# IPv6: ip6tables-nft-restore --noflush\n")
        .unwrap();
    assert!(v4.starts_with("# IPv4: iptables-nft-restore --noflush\n*nat\n"));
    for part in [v4, v6] {
        assert!(part.contains("-A WEFT_INBOUND -p tcp -m multiport --dports 22 -j RETURN\n"));
        assert!(part.contains("-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15143\n"));
        assert!(part.contains("-A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15140\n"));
        assert!(part.ends_with("COMMIT\n"));
    }
    assert!(v4.contains("-A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN\n"));
    assert!(v6.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN\n"));
}

#[test]
fn bad_values_are_all_reported_with_exit_code_2() {
    let out = weft_init()
        .args(["--dry-run", "--ipv6", "maybe"])
        .env("WEFT_INIT_SKIP_OUTBOUND_PORTS", "smtp")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--ipv6: `maybe`"), "{stderr}");
    assert!(
        stderr.contains("WEFT_INIT_SKIP_OUTBOUND_PORTS: `smtp`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn help_documents_the_environment_fallbacks() {
    let out = weft_init().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("WEFT_INIT_SKIP_SUBNETS"), "{help}");
    assert!(help.contains("--dry-run"), "{help}");
}
