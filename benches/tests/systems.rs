//! Every peer system, started for real on 127.0.0.1 with the run's PKI:
//! HTTP/1.1 and h2c requests pass through it to the backend, full mTLS
//! handshakes with the mesh client certificate succeed against its server
//! side, and a client certificate from another root is refused.
//!
//! Needs Debian's `haproxy` and `nginx` (the harness runs them).

use std::net::SocketAddr;

use weft_benches::backend;
use weft_benches::client::{Connection, Protocol};
use weft_benches::handshake::{self, HandshakeSpec};
use weft_benches::pki::{Pki, SERVER_ID};
use weft_benches::systems::{self, StartEnv, SystemKind};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn start_backend(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(backend::spawn_on_loopback()).expect("backend")
}

fn handshake_spec(addr: SocketAddr, pki: &Pki) -> HandshakeSpec {
    HandshakeSpec {
        addr,
        concurrency: 2,
        duration_ms: 300,
        client_chain: pki.client.chain.clone(),
        client_key: pki.client.key.clone(),
        anchors: pki.root.clone(),
        server_identity: SERVER_ID.to_string(),
    }
}

/// Sends one HTTP/1.1 request over mTLS to the server side. nginx completes
/// the handshake with a bad client certificate and refuses at the HTTP layer
/// (400), HAProxy refuses in the handshake: both are an `Err` here.
async fn request_over_mtls(spec: &HandshakeSpec) -> Result<http::StatusCode, String> {
    use http_body_util::{BodyExt, Empty};
    let config = handshake::client_config(spec).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(spec.addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::get("/")
        .header(http::header::HOST, "backend")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if status == http::StatusCode::OK {
        Ok(status)
    } else {
        Err(format!("refused with {status}"))
    }
}

fn check(kind: SystemKind) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(dir.path()).expect("pki");
    let env = StartEnv {
        pki: pki.clone(),
        backend: start_backend(&rt),
        work_dir: dir.path().to_path_buf(),
        weft_proxy: None,
        workers: 1,
    };
    let running = systems::start(kind, &env).expect("system starts");
    rt.block_on(async {
        for (addr, protocol) in [
            (running.http1, Protocol::Http1),
            (running.http2, Protocol::Http2),
        ] {
            let mut conn = Connection::open(addr, protocol)
                .await
                .unwrap_or_else(|e| panic!("{kind} {protocol:?} connect: {e}"));
            for _ in 0..3 {
                conn.get()
                    .await
                    .unwrap_or_else(|e| panic!("{kind} {protocol:?} request: {e}"));
            }
        }
    });
    if let Some(tls) = running.tls {
        let ok = rt
            .block_on(handshake::run(&handshake_spec(tls, &pki)))
            .expect("handshake run");
        assert!(ok.handshakes > 0 && ok.errors == 0, "{kind}: {ok:?}");

        // A client certificate from another root must be refused.
        let other_dir = tempfile::tempdir().expect("temp dir");
        let other = Pki::generate(other_dir.path()).expect("other pki");
        let mut spec = handshake_spec(tls, &pki);
        spec.client_chain = other.client.chain.clone();
        spec.client_key = other.client.key.clone();
        let foreign = rt.block_on(request_over_mtls(&spec));
        assert!(
            foreign.is_err(),
            "{kind} served a client whose certificate is from another root: {foreign:?}"
        );
        // The same request with the mesh client certificate is served.
        let own = rt.block_on(request_over_mtls(&handshake_spec(tls, &pki)));
        assert_eq!(own.expect("served"), http::StatusCode::OK, "{kind}");
    } else {
        assert_eq!(kind, SystemKind::Direct);
    }
    running.stop();
}

#[test]
fn direct_reaches_the_backend() {
    check(SystemKind::Direct);
}

#[test]
fn haproxy_http_pair_proxies_with_mtls() {
    check(SystemKind::HaproxyHttp);
}

#[test]
fn haproxy_tcp_pair_proxies_with_mtls() {
    check(SystemKind::HaproxyTcp);
}

#[test]
fn nginx_pair_proxies_with_mtls() {
    check(SystemKind::Nginx);
}
