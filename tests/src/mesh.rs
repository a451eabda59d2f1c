//! Proxies started in process on 127.0.0.1, wired as a client sidecar and a
//! server sidecar.

use std::net::SocketAddr;
use std::sync::Arc;

use weft_api::tls::MeshTls;
use weft_proxy::trace::TraceConfig;
use weft_proxy::{AppTarget, ProxyConfig, ProxyHandle, Target, Upstream};

use crate::pki::TestCa;

pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A proxy whose inbound side forwards to `app`, listening on ephemeral ports.
pub async fn server_proxy(tls: Arc<MeshTls>, app: SocketAddr) -> ProxyHandle {
    configured_server_proxy(tls, app, &|_| {}).await
}

/// [`server_proxy`], its configuration changed by `configure`.
pub async fn configured_server_proxy(
    tls: Arc<MeshTls>,
    app: SocketAddr,
    configure: &dyn Fn(&mut ProxyConfig),
) -> ProxyHandle {
    let mut config = ProxyConfig::new(AppTarget::Fixed(app));
    config.inbound_addr = loopback();
    config.admin_addr = loopback();
    configure(&mut config);
    weft_proxy::start(config, tls)
        .await
        .expect("server proxy starts")
}

/// A proxy with one upstream listener, `name`, that sends to `target` and
/// expects it to prove `identity`.
pub async fn client_proxy(
    tls: Arc<MeshTls>,
    name: &str,
    target: SocketAddr,
    identity: &str,
    opaque: bool,
) -> ProxyHandle {
    configured_client_proxy(tls, name, target, identity, opaque, &|_| {}).await
}

/// [`client_proxy`], its configuration changed by `configure`.
pub async fn configured_client_proxy(
    tls: Arc<MeshTls>,
    name: &str,
    target: SocketAddr,
    identity: &str,
    opaque: bool,
    configure: &dyn Fn(&mut ProxyConfig),
) -> ProxyHandle {
    // The client workload's own app is never called in these tests; its
    // inbound side points at a closed port.
    let mut config = ProxyConfig::new(AppTarget::Fixed(SocketAddr::from(([127, 0, 0, 1], 9))));
    config.inbound_addr = loopback();
    config.admin_addr = loopback();
    let mut t = Target::single(name, target, identity.parse().expect("valid identity"));
    t.opaque = opaque;
    config.upstreams = vec![Upstream {
        listen: loopback(),
        target: t,
    }];
    configure(&mut config);
    weft_proxy::start(config, tls)
        .await
        .expect("client proxy starts")
}

/// app client -> client proxy -> mTLS -> server proxy -> app.
pub struct Pair {
    pub ca: TestCa,
    pub client: ProxyHandle,
    pub server: ProxyHandle,
    /// Where the app's client connects: the client proxy's upstream listener.
    pub entry: SocketAddr,
}

impl Pair {
    /// A pair in front of `app`, `opaque` or with protocol detection.
    pub async fn new(app: SocketAddr, opaque: bool) -> Self {
        Self::traced(app, opaque, None).await
    }

    /// A pair whose proxies both trace as `tracing` says.
    pub async fn traced(app: SocketAddr, opaque: bool, tracing: Option<TraceConfig>) -> Self {
        Self::configured(app, opaque, &move |c| c.tracing = tracing.clone()).await
    }

    /// A pair whose proxies' configurations `configure` changes.
    pub async fn configured(
        app: SocketAddr,
        opaque: bool,
        configure: &dyn Fn(&mut ProxyConfig),
    ) -> Self {
        let ca = TestCa::new("weft test");
        let server = configured_server_proxy(ca.mesh_tls(SERVER_ID), app, configure).await;
        let client = configured_client_proxy(
            ca.mesh_tls(CLIENT_ID),
            "checkout",
            server.inbound_addr,
            SERVER_ID,
            opaque,
            configure,
        )
        .await;
        let entry = client.upstream_addr("checkout").expect("upstream bound");
        Self {
            ca,
            client,
            server,
            entry,
        }
    }
}

/// Fetches a proxy's `/metrics` text.
pub async fn metrics(proxy: &ProxyHandle) -> String {
    let stream = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .expect("admin reachable");
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("admin handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let rsp = tx.send_request(req).await.expect("metrics response");
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .expect("metrics body")
        .to_bytes();
    String::from_utf8(body.to_vec()).expect("metrics are UTF-8")
}

/// The value of the one series of `metrics` that `selector` names
/// (`name{label="value",...}`, see `weft_api::exposition::select`: the name
/// exactly and every label given, in any order), `None` when no series
/// matches. Panics when the selector does not parse or names more than one
/// series: name every label you mean, or use [`sum`].
pub fn sample(metrics: &str, selector: &str) -> Option<f64> {
    let samples = weft_api::exposition::parse(metrics);
    let found = weft_api::exposition::select(&samples, selector)
        .unwrap_or_else(|| panic!("not a metric selector: {selector}"));
    match found.as_slice() {
        [] => None,
        [one] => Some(one.value),
        many => panic!(
            "{selector} names {} series; name the labels that tell them apart, or use sum(): {many:?}",
            many.len()
        ),
    }
}

/// Whether `metrics` has the sample `expected` (`name{labels} value`): the one
/// series the name and labels select ([`sample`]) has exactly that value.
pub fn has(metrics: &str, expected: &str) -> bool {
    let want = weft_api::exposition::parse(expected);
    let [want] = want.as_slice() else {
        panic!("not one sample line: {expected}");
    };
    let labels: Vec<String> = want
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    let selector = format!("{}{{{}}}", want.name, labels.join(","));
    sample(metrics, &selector) == Some(want.value)
}

/// The sum of every series of `metrics` that `selector` names (0 when none).
pub fn sum(metrics: &str, selector: &str) -> f64 {
    let samples = weft_api::exposition::parse(metrics);
    weft_api::exposition::select(&samples, selector)
        .unwrap_or_else(|| panic!("not a metric selector: {selector}"))
        .iter()
        .map(|s| s.value)
        .sum()
}

/// Waits up to two seconds for a proxy's sample `selector` ([`sample`]) to reach `want`
/// (the proxy records some outcomes just after the peer has seen them), and
/// returns the metrics text as last seen.
pub async fn metrics_reaching(
    proxy: &ProxyHandle,
    selector: &str,
    want: f64,
) -> (Option<f64>, String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let text = metrics(proxy).await;
        let value = sample(&text, selector);
        if value == Some(want) || tokio::time::Instant::now() > deadline {
            return (value, text);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
