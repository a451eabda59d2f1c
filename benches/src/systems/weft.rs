//! The weft proxy pair, run from the release `weft-proxy` binary with the
//! environment contract of `weft_api::consts::env`.
//!
//! Client proxy: one upstream listener (`WEFT_PROXY_UPSTREAMS`) that sends to
//! the server proxy's inbound address, expecting the bench server identity.
//! Server proxy: inbound mTLS listener forwarding to the backend
//! (`WEFT_PROXY_APP_ADDR`).

use std::path::{Path, PathBuf};
use std::process::Command;

use weft_api::consts::env as var;

use super::{Running, StartEnv, free_addr, spawn};
use crate::pki::{LeafFiles, SERVER_ID};

/// A `weft-proxy` binary that exists.
#[derive(Debug, Clone)]
pub struct WeftProxy {
    pub path: PathBuf,
}

/// Finds (building it first when run under cargo) the release `weft-proxy`
/// binary, or says why there is none: `explicit` (`--weft-proxy`) if given,
/// else as [`find_binary`].
pub fn find_weft_proxy(explicit: Option<&Path>) -> Result<WeftProxy, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(WeftProxy {
                path: path.to_path_buf(),
            })
        } else {
            Err(format!("--weft-proxy {} does not exist", path.display()))
        };
    }
    find_binary("weft-proxy", "weft-proxy").map(|path| WeftProxy { path })
}

/// The cargo profile the harness itself was built with: `release` for the
/// figures; a debug harness (`cargo run -p weft-benches -- all --quick`, what
/// CI runs after the tests built the debug binaries) uses debug binaries too,
/// since quick mode asserts no speed.
const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// Finds (building it first when run under cargo) the binary `bin` of
/// workspace package `package` in the harness's own profile ([`PROFILE`]), or
/// says why there is none: when the harness was started by `cargo run`
/// (`CARGO` is set), `cargo build [--release] -p <package> --bin <bin>`; then
/// `<bin>` beside the harness executable.
pub fn find_binary(package: &str, bin: &str) -> Result<PathBuf, String> {
    let mut build_note = String::new();
    if let Some(cargo) = std::env::var_os("CARGO") {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."));
        let mut args = vec!["build", "-p", package, "--bin", bin];
        if PROFILE == "release" {
            args.insert(1, "--release");
        }
        let build = format!("cargo {}", args.join(" "));
        eprintln!("building the {PROFILE} {bin} binary ({build})");
        let output = Command::new(cargo)
            .current_dir(workspace)
            .args(&args)
            .output();
        match output {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last: Vec<&str> = stderr.lines().rev().take(3).collect();
                build_note = format!(
                    "; `{build}` failed: {}",
                    last.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            Err(error) => build_note = format!("; could not run cargo: {error}"),
        }
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(bin)));
    match sibling {
        Some(path) if path.is_file() && build_note.is_empty() => Ok(path),
        Some(path) => Err(format!(
            "no {PROFILE} {bin} binary at {}{build_note}",
            path.display()
        )),
        None => Err(format!("cannot locate the harness executable{build_note}")),
    }
}

/// Starts the pair; `extra` variables go to both proxies (tracing).
pub(super) fn start(env: &StartEnv, dir: &Path, extra: &[(&str, &str)]) -> anyhow::Result<Running> {
    let Some(proxy) = &env.weft_proxy else {
        anyhow::bail!("no weft-proxy binary was found");
    };
    let listen = free_addr()?;
    let inbound = free_addr()?;
    let pki = &env.pki;
    let common = |command: &mut Command, leaf: &LeafFiles| -> anyhow::Result<()> {
        command
            .env_clear()
            .env(var::CERT_FILE, &leaf.chain)
            .env(var::KEY_FILE, &leaf.key)
            .env(var::TRUST_ANCHORS_FILE, &pki.root)
            .env(var::ADMIN_ADDR, free_addr()?.to_string())
            .env(var::OUTBOUND_ADDR, free_addr()?.to_string())
            .env(var::SHUTDOWN_GRACE, "1")
            .env(var::LOG, "warn")
            .env(var::WORKER_THREADS, env.workers.to_string())
            .envs(extra.iter().copied());
        Ok(())
    };

    let mut server = Command::new(&proxy.path);
    common(&mut server, &pki.server)?;
    server
        .env(var::INBOUND_ADDR, inbound.to_string())
        .env(var::APP_ADDR, env.backend.to_string());

    let mut client = Command::new(&proxy.path);
    common(&mut client, &pki.client)?;
    // The client proxy's own inbound side is unused here, but every proxy
    // needs an app address while transparent interception is not built.
    client
        .env(var::INBOUND_ADDR, free_addr()?.to_string())
        .env(var::APP_ADDR, env.backend.to_string())
        .env(var::UPSTREAMS, upstreams(listen, inbound));

    let server = spawn("weft-server", server, dir)?;
    let client = spawn("weft-client", client, dir)?;
    Ok(Running::pair(listen, listen, inbound, vec![client, server]))
}

fn upstreams(listen: std::net::SocketAddr, inbound: std::net::SocketAddr) -> String {
    format!("backend,{listen},{inbound},{SERVER_ID}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_entry_follows_the_contract() {
        let a = "127.0.0.1:4140".parse().expect("addr");
        let b = "127.0.0.1:5143".parse().expect("addr");
        assert_eq!(
            upstreams(a, b),
            "backend,127.0.0.1:4140,127.0.0.1:5143,spiffe://cluster.local/ns/bench/sa/server"
        );
    }

    #[test]
    fn an_explicit_missing_binary_is_reported() {
        let err = find_weft_proxy(Some(Path::new("/nonexistent/weft-proxy"))).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
