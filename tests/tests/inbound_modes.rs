//! The default inbound modes (`WEFT_PROXY_DEFAULT_INBOUND_POLICY`), enforced by
//! the inbound proxy on real sockets, with real mTLS from a client proxy and
//! plaintext clients beside it: `allow-all` serves both, `mesh-only` refuses
//! plaintext, `deny` refuses everyone no authorization allows (HTTP 403 with
//! `weft-proxy-error: unauthorized`, gRPC `PERMISSION_DENIED`, opaque TCP
//! closed), and `audit` lets the would-be denial through and counts it. A
//! spoofed `weft-client-id` never reaches the app.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_api::consts::{CLIENT_ID_HEADER, PROXY_ERROR_HEADER};
use weft_api::policy::InboundMode;
use weft_proxy::ProxyHandle;
use weft_proxy::config::{AppTarget, ProxyConfig};
use weft_tests::apps::{self, EchoMessage, SEEN_CLIENT_ID};
use weft_tests::mesh::{CLIENT_ID, SERVER_ID, client_proxy, metrics_reaching};
use weft_tests::pki::TestCa;

struct Answer {
    status: StatusCode,
    error: Option<String>,
    seen_client_id: Option<String>,
}

/// One HTTP/1.1 GET to `addr` (a client proxy's upstream, or the server
/// proxy's inbound port for a plaintext caller) with a spoofed client id.
async fn get(addr: SocketAddr, path: &str) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = tx
        .send_request(
            Request::get(path)
                .header("host", "checkout")
                .header(CLIENT_ID_HEADER, "spiffe://cluster.local/ns/shop/sa/admin")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let header = |name: &str| {
        rsp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let answer = Answer {
        status: rsp.status(),
        error: header(PROXY_ERROR_HEADER),
        seen_client_id: header(SEEN_CLIENT_ID),
    };
    rsp.into_body().collect().await.unwrap();
    answer
}

async fn server(ca: &TestCa, app: SocketAddr, mode: InboundMode) -> ProxyHandle {
    let mut config = ProxyConfig::new(AppTarget::Fixed(app));
    config.inbound_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.default_inbound = mode;
    weft_proxy::start(config, ca.mesh_tls(SERVER_ID))
        .await
        .expect("server proxy starts")
}

/// A client proxy holding `CLIENT_ID` whose upstream `name` is `server`.
async fn mesh_client(ca: &TestCa, name: &str, server: &ProxyHandle, opaque: bool) -> ProxyHandle {
    client_proxy(
        ca.mesh_tls(CLIENT_ID),
        name,
        server.inbound_addr,
        SERVER_ID,
        opaque,
    )
    .await
}

/// The server proxy's decision counter for one caller on the port it dialled
/// (with a fixed app, the proxy's inbound listener: the endpoint callers are given).
fn authz(decision: &str, mode: InboundMode, caller: &str, port: u16) -> String {
    let tls = !caller.is_empty();
    format!(
        "weft_inbound_authz_total{{decision=\"{decision}\",policy=\"default:{mode}\",tls=\"{tls}\",peer_identity=\"{caller}\",port=\"{port}\"}}"
    )
}

async fn expect_count(proxy: &ProxyHandle, sample: &str, want: f64) {
    let (value, text) = metrics_reaching(proxy, sample, want).await;
    assert_eq!(value, Some(want), "{sample} in\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_all_serves_plaintext_and_mesh_callers_with_the_verified_identity_only() {
    let ca = TestCa::new("weft test");
    let app = apps::http_echo().await;
    let server = server(&ca, app, InboundMode::AllowAll).await;
    let client = mesh_client(&ca, "checkout", &server, false).await;

    let mesh = get(client.upstream_addr("checkout").unwrap(), "/cart").await;
    assert_eq!(mesh.status, StatusCode::OK);
    assert_eq!(
        mesh.seen_client_id.as_deref(),
        Some(CLIENT_ID),
        "spoofed id replaced"
    );

    let plain = get(server.inbound_addr, "/cart").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(
        plain.seen_client_id.as_deref(),
        Some(""),
        "a plaintext caller's weft-client-id is removed, and none is set"
    );

    let port = server.inbound_addr.port();
    expect_count(
        &server,
        &authz("allowed", InboundMode::AllowAll, CLIENT_ID, port),
        1.0,
    )
    .await;
    expect_count(
        &server,
        &authz("allowed", InboundMode::AllowAll, "", port),
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_only_refuses_plaintext_http_and_opaque_callers() {
    let ca = TestCa::new("weft test");
    let app = apps::http_echo().await;
    let server = server(&ca, app, InboundMode::MeshOnly).await;
    let client = mesh_client(&ca, "checkout", &server, false).await;

    let mesh = get(client.upstream_addr("checkout").unwrap(), "/").await;
    assert_eq!(mesh.status, StatusCode::OK);
    assert_eq!(mesh.seen_client_id.as_deref(), Some(CLIENT_ID));

    let plain = get(server.inbound_addr, "/").await;
    assert_eq!(plain.status, StatusCode::FORBIDDEN);
    assert_eq!(plain.error.as_deref(), Some("unauthorized"));
    assert_eq!(
        plain.seen_client_id, None,
        "the request never reached the app"
    );

    // Plaintext that is no HTTP is closed without reaching the app.
    let mut tcp = TcpStream::connect(server.inbound_addr).await.unwrap();
    tcp.write_all(b"hello there\n").await.unwrap();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    let port = server.inbound_addr.port();
    expect_count(
        &server,
        &authz("denied", InboundMode::MeshOnly, "", port),
        2.0,
    )
    .await;
    expect_count(
        &server,
        &authz("allowed", InboundMode::MeshOnly, CLIENT_ID, port),
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_refuses_mesh_http_grpc_and_opaque_callers_with_no_authorization() {
    let ca = TestCa::new("weft test");
    let http_app = apps::http_echo().await;
    let http_server = server(&ca, http_app, InboundMode::Deny).await;
    let http_client = mesh_client(&ca, "checkout", &http_server, false).await;
    let denied = get(http_client.upstream_addr("checkout").unwrap(), "/").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.error.as_deref(), Some("unauthorized"));
    assert_eq!(denied.seen_client_id, None);
    expect_count(
        &http_server,
        &authz(
            "denied",
            InboundMode::Deny,
            CLIENT_ID,
            http_server.inbound_addr.port(),
        ),
        1.0,
    )
    .await;

    // gRPC over the mesh: PERMISSION_DENIED, with the reason.
    let grpc_app = apps::grpc_echo().await;
    let grpc_server = server(&ca, grpc_app, InboundMode::Deny).await;
    let grpc_client = mesh_client(&ca, "checkout", &grpc_server, false).await;
    let entry = grpc_client.upstream_addr("checkout").unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{entry}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = apps::grpc_chat(channel, tokio_stream::iter(vec![EchoMessage::default()]))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("may not call"), "{status:?}");

    // Opaque TCP over the mesh is closed before reaching the app.
    let tcp_app = apps::tcp_echo().await;
    let tcp_server = server(&ca, tcp_app, InboundMode::Deny).await;
    let tcp_client = mesh_client(&ca, "db", &tcp_server, true).await;
    let mut tcp = TcpStream::connect(tcp_client.upstream_addr("db").unwrap())
        .await
        .unwrap();
    tcp.write_all(b"ping\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "the echo app answered {rest:?}");
    expect_count(
        &tcp_server,
        &authz(
            "denied",
            InboundMode::Deny,
            CLIENT_ID,
            tcp_server.inbound_addr.port(),
        ),
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lets_the_would_be_denial_through_and_counts_it() {
    let ca = TestCa::new("weft test");
    let app = apps::http_echo().await;
    let server = server(&ca, app, InboundMode::Audit).await;
    let plain = get(server.inbound_addr, "/").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.seen_client_id.as_deref(), Some(""));
    expect_count(
        &server,
        &authz(
            "audited",
            InboundMode::Audit,
            "",
            server.inbound_addr.port(),
        ),
        1.0,
    )
    .await;
}

/// The kubelet's probes (`WEFT_PROXY_PROBE_PATHS`) reach the app in plaintext
/// under `deny`, on the port they name and for their exact path only; every
/// other plaintext request on that port is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_probe_paths_pass_under_deny_and_nothing_else_does() {
    let ca = TestCa::new("weft test");
    let app = apps::http_echo().await;
    let inbound = weft_tests::control::free_port();
    let mut config = ProxyConfig::new(AppTarget::Fixed(app));
    config.inbound_addr = inbound;
    config.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.default_inbound = InboundMode::Deny;
    config.probe_paths = vec![(inbound.port(), "/healthz".to_owned())];
    let server = weft_proxy::start(config, ca.mesh_tls(SERVER_ID))
        .await
        .expect("server proxy starts");

    let probe = get(server.inbound_addr, "/healthz").await;
    assert_eq!(probe.status, StatusCode::OK);
    assert_eq!(probe.seen_client_id.as_deref(), Some(""));
    for path in ["/healthz/x", "/orders", "/"] {
        let other = get(server.inbound_addr, path).await;
        assert_eq!(other.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(other.seen_client_id, None, "{path} reached the app");
    }
    let port = server.inbound_addr.port();
    expect_count(
        &server,
        &format!(
            "weft_inbound_authz_total{{decision=\"allowed\",policy=\"kubelet-probe\",tls=\"false\",peer_identity=\"\",port=\"{port}\"}}"
        ),
        1.0,
    )
    .await;
    expect_count(&server, &authz("denied", InboundMode::Deny, "", port), 3.0).await;
}
