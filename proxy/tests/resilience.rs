//! Traffic policy on the real data path: a client proxy fed a
//! `DestinationState` through a watch the test controls, server proxies over
//! loopback mTLS, and real HTTP servers behind them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weft_api::policy::{
    Backend, Backoff, CircuitBreaker, DestinationState, Endpoint, LoadBalancer, RetryBudget,
    RetryCondition, RetryOn, RetryPolicy, Route, RouteTimeouts,
};
use weft_proxy::{AppTarget, ProxyConfig, ProxyHandle, Target, Upstream};
use weft_tests::mesh::{CLIENT_ID, SERVER_ID, metrics, server_proxy};
use weft_tests::pki::TestCa;

/// How a test app answers: its name in the body, a status, a delay.
struct App {
    name: &'static str,
    /// Answer 503 to everything while set.
    failing: AtomicBool,
    /// Answer 503 to this share of requests (per mille), at random.
    fail_per_mille: AtomicU64,
    delay: Duration,
    hits: AtomicU64,
}

impl App {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            failing: AtomicBool::new(false),
            fail_per_mille: AtomicU64::new(0),
            delay: Duration::ZERO,
            hits: AtomicU64::new(0),
        })
    }
}

async fn serve_app(app: Arc<App>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let app = app.clone();
                    async move {
                        app.hits.fetch_add(1, Ordering::Relaxed);
                        // Read the whole body, as a real server would.
                        let _ = req.into_body().collect().await;
                        if !app.delay.is_zero() {
                            tokio::time::sleep(app.delay).await;
                        }
                        let fail = app.failing.load(Ordering::Relaxed)
                            || rand_per_mille() < app.fail_per_mille.load(Ordering::Relaxed);
                        let mut rsp = Response::new(Full::new(Bytes::from(app.name)));
                        if fail {
                            *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn rand_per_mille() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish() % 1000
}

/// A backend of server proxies, each in front of its app.
struct Mesh {
    ca: TestCa,
    servers: Vec<ProxyHandle>,
}

impl Mesh {
    fn new() -> Self {
        Self {
            ca: TestCa::new("weft resilience test"),
            servers: Vec::new(),
        }
    }

    async fn endpoint(&mut self, app: &Arc<App>) -> Endpoint {
        let addr = serve_app(app.clone()).await;
        let server = server_proxy(self.ca.mesh_tls(SERVER_ID), addr).await;
        let e = Endpoint {
            addr: server.inbound_addr,
            identity: Some(SERVER_ID.parse().unwrap()),
            zone: None,
        };
        self.servers.push(server);
        e
    }

    async fn client(
        &self,
        state: DestinationState,
    ) -> (
        ProxyHandle,
        SocketAddr,
        watch::Sender<Arc<DestinationState>>,
    ) {
        let (tx, rx) = watch::channel(Arc::new(state));
        let mut config = ProxyConfig::new(AppTarget::Fixed(SocketAddr::from(([127, 0, 0, 1], 9))));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        config.inbound_addr = loopback;
        config.admin_addr = loopback;
        config.upstreams = vec![Upstream {
            listen: loopback,
            // Overridden by the watch below.
            target: Target {
                name: "checkout".into(),
                opaque: false,
                backends: vec![],
            },
        }];
        let states = HashMap::from([("checkout".to_owned(), rx)]);
        let client = weft_proxy::start_with(config, self.ca.mesh_tls(CLIENT_ID), states)
            .await
            .unwrap();
        let entry = client.upstream_addr("checkout").unwrap();
        (client, entry, tx)
    }
}

fn state(backends: Vec<Backend>, routes: Vec<Route>) -> DestinationState {
    DestinationState {
        version: 1,
        target: "checkout:80".parse().unwrap(),
        routes,
        backends,
        retry_budget: RetryBudget {
            ratio: 1.0,
            min_per_second: 1000,
            window: Duration::from_secs(10),
        },
        circuit_breaker: None,
        load_balancer: LoadBalancer::default(),
        connect_timeout: None,
    }
}

fn backend(name: &str, weight: u32, endpoints: Vec<Endpoint>) -> Backend {
    Backend {
        name: name.into(),
        weight,
        endpoints,
    }
}

fn retry_route(attempts: u32, statuses: &[u16]) -> Route {
    Route {
        name: "retry".into(),
        matches: vec![],
        backends: vec![],
        timeouts: RouteTimeouts::default(),
        retry: Some(RetryPolicy {
            attempts,
            on: RetryOn::new([], statuses),
            backoff: Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(5),
            },
        }),
    }
}

/// One keep-alive HTTP/1.1 connection to the client proxy.
struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(tx)
    }

    async fn send(&mut self, method: &str, body: Bytes) -> (StatusCode, String, Option<String>) {
        self.0.ready().await.unwrap();
        let req = Request::builder()
            .method(method)
            .uri("/orders")
            .header("host", "checkout")
            .body(Full::new(body))
            .unwrap();
        let rsp = self.0.send_request(req).await.unwrap();
        let status = rsp.status();
        let error = rsp
            .headers()
            .get("weft-proxy-error")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), error)
    }

    async fn get(&mut self) -> (StatusCode, String) {
        let (s, b, _) = self.send("GET", Bytes::new()).await;
        (s, b)
    }
}

/// Sends `n` GETs over `conns` keep-alive connections; returns each body's count
/// and the number of 2xx answers.
async fn load(entry: SocketAddr, n: usize, conns: usize) -> (HashMap<String, usize>, usize) {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(entry).await;
            let mut seen = HashMap::new();
            let mut ok = 0;
            for _ in 0..n / conns {
                let (status, body) = conn.get().await;
                if status.is_success() {
                    ok += 1;
                    *seen.entry(body).or_insert(0) += 1;
                }
            }
            (seen, ok)
        }));
    }
    let mut seen = HashMap::new();
    let mut ok = 0;
    for t in tasks {
        let (s, o) = t.await.unwrap();
        ok += o;
        for (k, v) in s {
            *seen.entry(k).or_insert(0) += v;
        }
    }
    (seen, ok)
}

/// The sum of every sample of `name` whose labels contain `labels`.
fn total(text: &str, name: &str, labels: &str) -> f64 {
    weft_tests::mesh::sum(text, &format!("{name}{{{labels}}}"))
}

/// Waits (bounded) until `f` holds.
async fn wait_for<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_and_a_keep_alive_connection_follows_a_weight_change() {
    let mut mesh = Mesh::new();
    let (v1, v2) = (App::new("v1"), App::new("v2"));
    let e1 = mesh.endpoint(&v1).await;
    let e2 = mesh.endpoint(&v2).await;
    let split = |w1, w2| {
        state(
            vec![
                backend("checkout-v1", w1, vec![e1.clone()]),
                backend("checkout-v2", w2, vec![e2.clone()]),
            ],
            vec![],
        )
    };
    let (client, entry, tx) = mesh.client(split(90, 10)).await;
    let (seen, ok) = load(entry, 10_000, 8).await;
    assert_eq!(ok, 10_000, "{seen:?}");
    let share = seen.get("v2").copied().unwrap_or(0) as f64 / 10_000.0;
    assert!(
        (share - 0.10).abs() <= 0.015,
        "v2 got {:.2} % of requests",
        share * 100.0
    );
    let text = metrics(&client).await;
    assert!(
        total(&text, "weft_requests_total", "backend=\"checkout-v2\"") > 0.0,
        "{text}"
    );

    let mut conn = Conn::open(entry).await;
    tx.send_replace(Arc::new(split(100, 0)));
    assert_eq!(conn.get().await.1, "v1");
    tx.send_replace(Arc::new(split(0, 100)));
    for _ in 0..20 {
        assert_eq!(
            conn.get().await.1,
            "v2",
            "the same connection follows the new weights"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_admitted_again_when_it_recovers() {
    let mut mesh = Mesh::new();
    let apps = [App::new("a"), App::new("b"), App::new("bad")];
    apps[2].failing.store(true, Ordering::Relaxed);
    let mut endpoints = Vec::new();
    for app in &apps {
        endpoints.push(mesh.endpoint(app).await);
    }
    let bad_addr = endpoints[2].addr;
    let mut s = state(vec![backend("checkout", 1, endpoints)], vec![]);
    s.circuit_breaker = Some(CircuitBreaker {
        consecutive_failures: 3,
        base_ejection_time: Duration::from_secs(1),
        max_ejection_time: Duration::from_secs(4),
        max_ejected_percent: 50,
    });
    // A short decay: an endpoint not measured yet (at the 30 ms default RTT,
    // beside measured sub-millisecond ones) is tried within a fraction of a
    // second instead of the default 10 s decay's ~45 s, so the breaker sees
    // its failures quickly.
    s.load_balancer = LoadBalancer::PeakEwma {
        decay: Duration::from_millis(100),
        default_rtt: LoadBalancer::DEFAULT_RTT,
    };
    let (client, entry, _tx) = mesh.client(s).await;
    let gauge = format!(
        "weft_proxy_endpoint_ejected{{target=\"checkout\",backend=\"checkout\",endpoint=\"{bad_addr}\"}}"
    );
    // Failures until the breaker trips.
    let mut conn = Conn::open(entry).await;
    let mut last = String::new();
    let ejected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            conn.get().await;
            last = metrics(&client).await;
            if weft_tests::mesh::sample(&last, &gauge) == Some(1.0) {
                break;
            }
        }
    })
    .await;
    assert!(
        ejected.is_ok(),
        "timed out waiting for the ejection:\n{last}"
    );
    let (_, ok) = load(entry, 2_000, 4).await;
    assert!(
        ok as f64 / 2_000.0 >= 0.999,
        "{ok} of 2000 succeeded after the ejection"
    );

    apps[2].failing.store(false, Ordering::Relaxed);
    let before = apps[2].hits.load(Ordering::Relaxed);
    wait_for(
        "the endpoint's return",
        Duration::from_secs(15),
        async || {
            load(entry, 50, 1).await;
            weft_tests::mesh::sample(&metrics(&client).await, &gauge) == Some(0.0)
                && apps[2].hits.load(Ordering::Relaxed) > before + 5
        },
    )
    .await;
    let text = metrics(&client).await;
    assert!(
        total(&text, "weft_proxy_ejections_total", "") >= 1.0,
        "{text}"
    );
}

/// An endpoint outside the mesh (no identity: a pod without a proxy) is sent
/// plaintext HTTP/1.1 beside a meshed one, on the one-try path and on the
/// retrying path (where a failure of the plaintext endpoint is retried on
/// the meshed one); the metrics say which requests were not mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_outside_the_mesh_gets_plaintext_http() {
    let mut mesh = Mesh::new();
    let meshed = App::new("meshed");
    let plain = App::new("plain");
    let meshed_endpoint = mesh.endpoint(&meshed).await;
    let plain_endpoint = Endpoint {
        addr: serve_app(plain.clone()).await,
        identity: None,
        zone: None,
    };
    let split = |routes| {
        state(
            vec![
                backend("meshed", 1, vec![meshed_endpoint.clone()]),
                backend("plain", 1, vec![plain_endpoint.clone()]),
            ],
            routes,
        )
    };
    let (client, entry, tx) = mesh.client(split(vec![])).await;
    let (seen, ok) = load(entry, 200, 2).await;
    assert_eq!(ok, 200, "{seen:?}");
    assert!(seen.get("plain").copied().unwrap_or(0) > 40, "{seen:?}");
    assert!(seen.get("meshed").copied().unwrap_or(0) > 40, "{seen:?}");
    let text = metrics(&client).await;
    assert!(
        total(
            &text,
            "weft_requests_total",
            "tls=\"false\",peer_identity=\"\",backend=\"plain\""
        ) > 40.0,
        "{text}"
    );

    // The retrying path, one backend half injected (a rollout of the mesh):
    // the plaintext endpoint fails, and its tries are retried on the meshed one.
    tx.send_replace(Arc::new(state(
        vec![backend(
            "mixed",
            1,
            vec![meshed_endpoint.clone(), plain_endpoint.clone()],
        )],
        vec![retry_route(2, &[503])],
    )));
    plain.failing.store(true, Ordering::Relaxed);
    let hits = plain.hits.load(Ordering::Relaxed);
    let (seen, ok) = load(entry, 200, 2).await;
    assert_eq!(
        ok, 200,
        "every failure of the plaintext endpoint was retried: {seen:?}"
    );
    assert!(
        plain.hits.load(Ordering::Relaxed) > hits,
        "the plaintext endpoint was tried on the retrying path"
    );
    plain.failing.store(false, Ordering::Relaxed);
    let (seen, ok) = load(entry, 200, 2).await;
    assert_eq!(ok, 200, "{seen:?}");
    assert!(seen.get("plain").copied().unwrap_or(0) > 40, "{seen:?}");
}

/// An upgrade (WebSocket-style, `Upgrade: weft-echo`) to an endpoint outside
/// the mesh goes in plaintext on a connection of its own: the server answers
/// 101 and the raw bytes after it cross both ways; it counts with
/// `tls="false"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_an_endpoint_outside_the_mesh_goes_in_plaintext() {
    let mesh = Mesh::new();
    let plain_endpoint = Endpoint {
        addr: weft_tests::apps::http_echo().await,
        identity: None,
        zone: None,
    };
    let (client, entry, _tx) = mesh
        .client(state(
            vec![backend("plain", 1, vec![plain_endpoint])],
            vec![],
        ))
        .await;
    let tcp = TcpStream::connect(entry).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/ws")
        .header("host", "checkout")
        .header("connection", "upgrade")
        .header("upgrade", weft_tests::apps::ECHO_UPGRADE)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS, "{rsp:?}");
    assert_eq!(rsp.headers()[weft_tests::apps::SEEN_HOST], "checkout");
    assert_eq!(
        rsp.headers()[weft_tests::apps::SEEN_CLIENT_ID],
        "",
        "nothing of the mesh is added for a server outside it"
    );
    let upgraded = hyper::upgrade::on(rsp).await.expect("upgrade completes");
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let got = weft_tests::apps::echo_through(upgraded, &data).await;
    assert!(got == data, "upgraded bytes differ");
    let text = metrics(&client).await;
    assert_eq!(
        total(
            &text,
            "weft_requests_total",
            "tls=\"false\",peer_identity=\"\",backend=\"plain\""
        ),
        1.0,
        "{text}"
    );
}

/// With retries on (the retrying path), an endpoint still failing when its
/// ejection ends gets one probe, which ejects it again for twice as long: it
/// does not take every request once the first ejection is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_ejects_again_on_the_retrying_path() {
    let mut mesh = Mesh::new();
    let apps = [App::new("a"), App::new("b"), App::new("bad")];
    apps[2].failing.store(true, Ordering::Relaxed);
    let mut endpoints = Vec::new();
    for app in &apps {
        endpoints.push(mesh.endpoint(app).await);
    }
    let bad_addr = endpoints[2].addr;
    let mut s = state(
        vec![backend("checkout", 1, endpoints)],
        vec![retry_route(2, &[503])],
    );
    s.circuit_breaker = Some(CircuitBreaker {
        consecutive_failures: 3,
        base_ejection_time: Duration::from_millis(300),
        max_ejection_time: Duration::from_secs(10),
        max_ejected_percent: 50,
    });
    s.load_balancer = LoadBalancer::PeakEwma {
        decay: Duration::from_millis(100),
        default_rtt: LoadBalancer::DEFAULT_RTT,
    };
    let (client, entry, _tx) = mesh.client(s).await;
    let gauge = format!(
        "weft_proxy_endpoint_ejected{{target=\"checkout\",backend=\"checkout\",endpoint=\"{bad_addr}\"}}"
    );
    let mut conn = Conn::open(entry).await;
    wait_for("the first ejection", Duration::from_secs(10), async || {
        conn.get().await;
        weft_tests::mesh::sample(&metrics(&client).await, &gauge) == Some(1.0)
    })
    .await;
    // The first ejection (300 ms) ends, the probe fails, the second (600 ms)
    // starts, and its probe fails too: two probes, not hundreds of requests.
    let before = apps[2].hits.load(Ordering::Relaxed);
    wait_for(
        "two more ejections after failed probes",
        Duration::from_secs(10),
        async || {
            let (_, ok) = load(entry, 50, 2).await;
            assert_eq!(ok, 50, "every request succeeds through retries");
            total(&metrics(&client).await, "weft_proxy_ejections_total", "") >= 3.0
        },
    )
    .await;
    let probes = apps[2].hits.load(Ordering::Relaxed) - before;
    assert!(
        probes <= 4,
        "the ejected endpoint took {probes} requests between ejections; each ejection's end should let one probe through"
    );
    assert_eq!(
        weft_tests::mesh::sample(&metrics(&client).await, &gauge),
        Some(1.0),
        "still ejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_503s_are_retried_and_retries_stay_within_the_budget() {
    let mut mesh = Mesh::new();
    let app = App::new("flaky");
    app.fail_per_mille.store(200, Ordering::Relaxed);
    let endpoint = mesh.endpoint(&app).await;
    // 3 retries: with 2, 0.2^3 = 0.8 % of requests fail all tries, above 0.5 %.
    let s = state(
        vec![backend("checkout", 1, vec![endpoint.clone()])],
        vec![retry_route(3, &[503])],
    );
    let (client, entry, tx) = mesh.client(s.clone()).await;
    let (_, ok) = load(entry, 2_000, 4).await;
    assert!(ok as f64 / 2_000.0 >= 0.995, "{ok} of 2000 succeeded");
    let text = metrics(&client).await;
    assert!(
        total(&text, "weft_proxy_retries_total", "reason=\"5xx\"") > 100.0,
        "{text}"
    );

    // A 20 % budget, nothing per second: retries stay under 20 % of requests.
    let mut tight = s;
    tight.version = 2;
    tight.retry_budget = RetryBudget {
        ratio: 0.2,
        min_per_second: 0,
        window: Duration::from_secs(10),
    };
    tx.send_replace(Arc::new(tight));
    let before = total(&metrics(&client).await, "weft_proxy_retries_total", "");
    let (_, ok) = load(entry, 2_000, 4).await;
    let text = metrics(&client).await;
    let retries = total(&text, "weft_proxy_retries_total", "") - before;
    assert!(
        retries <= 0.2 * 2_000.0 + 1.0,
        "{retries} retries for 2000 requests"
    );
    assert!(
        total(&text, "weft_proxy_retry_budget_exhausted_total", "") > 0.0,
        "{text}"
    );
    assert!(ok >= 1_500, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_is_not_retried_while_the_same_get_is() {
    let mut mesh = Mesh::new();
    let app = App::new("down");
    app.failing.store(true, Ordering::Relaxed);
    let endpoint = mesh.endpoint(&app).await;
    let s = state(
        vec![backend("checkout", 1, vec![endpoint])],
        vec![retry_route(2, &[503])],
    );
    let (_client, entry, _tx) = mesh.client(s).await;
    let mut conn = Conn::open(entry).await;
    let (status, _, _) = conn.send("POST", Bytes::from(vec![7u8; 1 << 20])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.hits.load(Ordering::Relaxed),
        1,
        "the 1 MB POST was sent once"
    );
    let (status, _, _) = conn.send("POST", Bytes::from(vec![7u8; 1024])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.hits.load(Ordering::Relaxed),
        4,
        "a 1 KB POST is kept and retried"
    );
    let (status, _) = conn.get().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.hits.load(Ordering::Relaxed),
        7,
        "the GET was tried 3 times"
    );
}

/// A try to an endpoint outside the mesh that cannot connect never read the
/// request's body, so even a 1 MB POST (beyond the retry buffer, so not kept)
/// is retried on the other endpoint: the plaintext connection is made before
/// the body is taken, as a mesh one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_whose_plaintext_try_cannot_connect_is_retried() {
    let mut mesh = Mesh::new();
    let app = App::new("live");
    let live = mesh.endpoint(&app).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = Endpoint {
        addr: closed.local_addr().unwrap(),
        identity: None,
        zone: None,
    };
    drop(closed);
    let mut route = retry_route(2, &[]);
    route.retry.as_mut().unwrap().on = RetryOn::new([RetryCondition::ConnectFailure], &[]);
    let mut s = state(vec![backend("checkout", 1, vec![live, dead])], vec![route]);
    s.load_balancer = LoadBalancer::RoundRobin;
    let (client, entry, _tx) = mesh.client(s).await;
    let mut conn = Conn::open(entry).await;
    for i in 0..6 {
        let (status, body, error) = conn.send("POST", Bytes::from(vec![7u8; 1 << 20])).await;
        assert_eq!(status, StatusCode::OK, "POST {i}: {body} {error:?}");
    }
    assert_eq!(app.hits.load(Ordering::Relaxed), 6);
    let text = metrics(&client).await;
    assert!(
        total(
            &text,
            "weft_proxy_retries_total",
            "reason=\"connect-failure\""
        ) >= 3.0,
        "every other first try went to the closed port: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_behind_a_request_timeout_answers_504_in_time() {
    let mut mesh = Mesh::new();
    let app = Arc::new(App {
        delay: Duration::from_secs(2),
        ..Arc::into_inner(App::new("slow")).unwrap()
    });
    let endpoint = mesh.endpoint(&app).await;
    let route = Route {
        name: "timeout".into(),
        matches: vec![],
        backends: vec![],
        timeouts: RouteTimeouts {
            request: Some(Duration::from_millis(500)),
            backend_request: None,
        },
        retry: None,
    };
    let s = state(vec![backend("checkout", 1, vec![endpoint])], vec![route]);
    let (_client, entry, _tx) = mesh.client(s).await;
    let mut conn = Conn::open(entry).await;
    let start = Instant::now();
    let (status, _, error) = conn.send("GET", Bytes::new()).await;
    let elapsed = start.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error.as_deref(), Some("timeout"));
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed <= Duration::from_millis(600),
        "answered in {elapsed:?}"
    );
}

/// A gRPC-shaped HTTP/2 server: trailers-only `grpc-status: 14` (UNAVAILABLE)
/// to its first `failures` calls, `grpc-status: 0` after.
async fn grpc_app(failures: u64, hits: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let hits = hits.clone();
                    async move {
                        let n = hits.fetch_add(1, Ordering::Relaxed);
                        let _ = req.into_body().collect().await;
                        let rsp = Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", if n < failures { "14" } else { "0" })
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_retried_on_a_configured_grpc_status() {
    let mut mesh = Mesh::new();
    let hits = Arc::new(AtomicU64::new(0));
    let app = grpc_app(2, hits.clone()).await;
    let server = server_proxy(mesh.ca.mesh_tls(SERVER_ID), app).await;
    let endpoint = Endpoint {
        addr: server.inbound_addr,
        identity: Some(SERVER_ID.parse().unwrap()),
        zone: None,
    };
    mesh.servers.push(server);
    let mut route = retry_route(2, &[]);
    route.retry.as_mut().unwrap().on = RetryOn::new(
        [weft_api::policy::RetryCondition::Grpc(
            weft_api::policy::GrpcCode::from_code(14).unwrap(),
        )],
        &[],
    );
    let s = state(vec![backend("checkout", 1, vec![endpoint])], vec![route]);
    let (client, entry, _tx) = mesh.client(s).await;
    let tcp = TcpStream::connect(entry).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://checkout/shop.v1.Checkout/PlaceOrder")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(
        rsp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("0"),
        "{rsp:?}"
    );
    assert_eq!(
        hits.load(Ordering::Relaxed),
        3,
        "two UNAVAILABLE answers, then OK"
    );
    let text = metrics(&client).await;
    assert_eq!(
        total(&text, "weft_proxy_retries_total", "reason=\"grpc\""),
        2.0,
        "{text}"
    );
}
