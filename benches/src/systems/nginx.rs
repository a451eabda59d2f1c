//! nginx (Debian) as a client-side / server-side pair with mTLS: TLS 1.3,
//! client certificates verified against the run's root, HTTP/1.1 keep-alive
//! between the pair and to the backend (nginx proxies upstream in HTTP/1.1
//! only). h2c from the load generator needs its own `listen ... http2` port.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::{Running, StartEnv, free_addr, spawn};
use crate::pki::{Pki, SERVER_DNS};

pub(super) fn start(env: &StartEnv, dir: &Path) -> anyhow::Result<Running> {
    let http1 = free_addr()?;
    let http2 = free_addr()?;
    let tls = free_addr()?;
    let mut processes = Vec::new();
    for (name, config) in [
        (
            "nginx-server",
            server_config(dir, tls, env.backend, &env.pki, env.workers),
        ),
        (
            "nginx-client",
            client_config(dir, http1, http2, tls, &env.pki, env.workers),
        ),
    ] {
        let prefix = dir.join(name);
        fs::create_dir_all(&prefix).with_context(|| format!("create {}", prefix.display()))?;
        let conf = prefix.join("nginx.conf");
        fs::write(&conf, config).with_context(|| format!("write {}", conf.display()))?;
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.join("error.log"));
        processes.push(spawn(name, command, dir)?);
    }
    Ok(Running::pair(http1, http2, tls, processes))
}

fn main_block(prefix: &Path, workers: usize) -> String {
    let p = prefix.display();
    // Each worker preallocates its connection table: size it to the limit.
    let connections = super::nofile_limit().clamp(1_024, 30_000);
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
user root;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections {connections}; }}
"
    )
}

fn http_common(prefix: &Path) -> String {
    let p = prefix.display();
    format!(
        "    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
"
    )
}

fn client_config(
    dir: &Path,
    http1: SocketAddr,
    http2: SocketAddr,
    tls: SocketAddr,
    pki: &Pki,
    workers: usize,
) -> String {
    let prefix = dir.join("nginx-client");
    format!(
        "{main}
http {{
{common}
    upstream server_side {{
        server {tls};
        keepalive 1024;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {http1};
        listen {http2} http2;
        location / {{
            proxy_pass https://server_side;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_ssl_certificate {crt};
            proxy_ssl_certificate_key {key};
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_name {SERVER_DNS};
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
",
        main = main_block(&prefix, workers),
        common = http_common(&prefix),
        crt = pki.client.chain.display(),
        key = pki.client.key.display(),
        ca = pki.root.display(),
    )
}

fn server_config(
    dir: &Path,
    tls: SocketAddr,
    backend: SocketAddr,
    pki: &Pki,
    workers: usize,
) -> String {
    let prefix = dir.join("nginx-server");
    format!(
        "{main}
http {{
{common}
    upstream app {{
        server {backend};
        keepalive 1024;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {tls} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_protocols TLSv1.3;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        main = main_block(&prefix, workers),
        common = http_common(&prefix),
        crt = pki.server.chain.display(),
        key = pki.server.key.display(),
        ca = pki.root.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_requires_client_certificates_over_tls13() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::generate(dir.path()).expect("pki");
        let a: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2000".parse().expect("addr");
        let c: SocketAddr = "127.0.0.1:3000".parse().expect("addr");
        let server = server_config(dir.path(), c, a, &pki, 1);
        assert!(server.contains("ssl_verify_client on;"));
        assert!(server.contains("ssl_protocols TLSv1.3;"));
        let client = client_config(dir.path(), a, b, c, &pki, 1);
        assert!(client.contains("listen 127.0.0.1:2000 http2;"));
        assert!(client.contains("proxy_ssl_certificate "));
        assert!(client.contains("proxy_ssl_verify on;"));
    }
}
