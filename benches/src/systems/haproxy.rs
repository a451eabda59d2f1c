//! HAProxy (Debian) as a client-side / server-side pair with mTLS: TLS 1.3,
//! client certificates verified against the run's root, in `mode http` (HTTP/2
//! between the pair, HTTP/1.1 keep-alive to the backend) or `mode tcp`.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::{Running, StartEnv, free_addr, spawn};
use crate::pki::Pki;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Http,
    Tcp,
}

pub(super) fn start(env: &StartEnv, dir: &Path, mode: Mode) -> anyhow::Result<Running> {
    let listen = free_addr()?;
    let tls = free_addr()?;
    let client_cfg = dir.join("client.cfg");
    let server_cfg = dir.join("server.cfg");
    fs::write(
        &client_cfg,
        client_config(mode, listen, tls, &env.pki, env.workers),
    )
    .with_context(|| format!("write {}", client_cfg.display()))?;
    fs::write(
        &server_cfg,
        server_config(mode, tls, env.backend, &env.pki, env.workers),
    )
    .with_context(|| format!("write {}", server_cfg.display()))?;
    let run = |cfg: &Path| {
        let mut command = Command::new("haproxy");
        command.arg("-db").arg("-f").arg(cfg);
        command
    };
    let server = spawn("haproxy-server", run(&server_cfg), dir)?;
    let client = spawn("haproxy-client", run(&client_cfg), dir)?;
    Ok(Running::pair(listen, listen, tls, vec![client, server]))
}

/// HAProxy refuses to start when `maxconn` needs more descriptors than the
/// limit allows (two per proxied connection, plus some).
fn maxconn() -> u64 {
    (super::nofile_limit().saturating_sub(200) / 2).clamp(1_000, 30_000)
}

fn global(mode: Mode, workers: usize) -> String {
    let maxconn = maxconn();
    let mode = match mode {
        Mode::Http => "http",
        Mode::Tcp => "tcp",
    };
    format!(
        "global
    maxconn {maxconn}
    nbthread {workers}
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode {mode}
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
"
    )
}

fn client_config(
    mode: Mode,
    listen: SocketAddr,
    tls: SocketAddr,
    pki: &Pki,
    workers: usize,
) -> String {
    let (reuse, alpn) = match mode {
        Mode::Http => ("    http-reuse always\n", " alpn h2"),
        Mode::Tcp => ("", ""),
    };
    format!(
        "{global}
frontend app_side
    bind {listen}
    default_backend server_side

backend server_side
{reuse}    server peer {tls} ssl crt {crt} ca-file {ca} verify required{alpn}
",
        global = global(mode, workers),
        crt = pki.client.combined.display(),
        ca = pki.root.display(),
    )
}

fn server_config(
    mode: Mode,
    tls: SocketAddr,
    backend: SocketAddr,
    pki: &Pki,
    workers: usize,
) -> String {
    let (reuse, alpn) = match mode {
        Mode::Http => ("    http-reuse always\n", " alpn h2,http/1.1"),
        Mode::Tcp => ("", ""),
    };
    format!(
        "{global}
frontend mesh_side
    bind {tls} ssl crt {crt} ca-file {ca} verify required{alpn}
    default_backend app

backend app
{reuse}    server app {backend}
",
        global = global(mode, workers),
        crt = pki.server.combined.display(),
        ca = pki.root.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_mode_uses_mtls_and_h2_between_the_pair() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::generate(dir.path()).expect("pki");
        let a: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2000".parse().expect("addr");
        let client = client_config(Mode::Http, a, b, &pki, 1);
        assert!(client.contains("mode http"));
        assert!(client.contains("server peer 127.0.0.1:2000 ssl crt"));
        assert!(client.contains("verify required alpn h2\n"));
        let server = server_config(Mode::Tcp, b, a, &pki, 1);
        assert!(server.contains("mode tcp"));
        assert!(server.contains("bind 127.0.0.1:2000 ssl crt"));
        assert!(!server.contains("alpn"));
        assert!(server.contains("ssl-min-ver TLSv1.3"));
    }
}
