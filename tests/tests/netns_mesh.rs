//! The mesh in network namespaces (root only; each test prints why it is
//! skipped otherwise): pods with `weft-init`'s rules and a real `weft-proxy`
//! running as uid 2510, and unmodified apps and clients (curl, redis-cli, a
//! Rust HTTP/2 client, a TLS client) that know nothing of the mesh.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rcgen::SanType;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use weft_api::consts::{PROXY_ERROR_HEADER, PROXY_INBOUND_PORT, PROXY_OUTBOUND_PORT, env};
use weft_tests::apps::{self, SEEN_CLIENT_ID, SEEN_VERSION};
use weft_tests::mesh::sample;
use weft_tests::netns::{Pod, skip_unless_root};
use weft_tests::pki::{LeafSpec, TestCa};
use weft_tests::pods::{Mesh, identity, proxy_metrics};

/// Longest a test server lives, whatever happens to the test.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);
/// The detection timeout the client proxies use here (the default is 10 s).
const DETECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `WEFT_PROXY_DESTINATIONS` naming `pod` as a meshed workload `sa`.
fn destination(pod: &Pod, sa: &str) -> String {
    format!("{}={}", pod.addr(), identity(sa))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A std listener bound inside `pod`, ready for tokio.
fn tokio_listener(pod: &Pod, addr: &str) -> tokio::net::TcpListener {
    pod.tokio_listener(addr.parse().unwrap()).unwrap()
}

/// A TCP connection made from inside `pod` (as root, so it is redirected).
fn tokio_connect(pod: &Pod, addr: SocketAddr) -> tokio::net::TcpStream {
    let tcp = pod
        .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    tcp.set_nonblocking(true).unwrap();
    tokio::net::TcpStream::from_std(tcp).unwrap()
}

/// A metric sample of a pod's proxy, 0 when absent.
fn metric(pod: &Pod, selector: &str) -> f64 {
    sample(&proxy_metrics(pod).unwrap(), selector).unwrap_or(0.0)
}

/// Plain TCP servers in a pod, each on its own port, answering `<tag>` and
/// what they read: line-based, and the server speaks first when `greeting`.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<usize>>,
}

impl Servers {
    fn start(pod: &Pod, ports: &[u16], greeting: bool) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let listener = pod
                    .enter(|| TcpListener::bind(("0.0.0.0", port)))
                    .unwrap()
                    .unwrap();
                listener.set_nonblocking(true).unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || serve_lines(listener, port, greeting, &stop))
            })
            .collect();
        Servers { stop, threads }
    }

    /// Stops the servers; returns how many connections each served.
    fn stop(self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

fn serve_lines(listener: TcpListener, port: u16, greeting: bool, stop: &AtomicBool) -> usize {
    let deadline = Instant::now() + SERVER_LIFETIME;
    let mut served = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Ok((mut tcp, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        served += 1;
        let _ = tcp.set_nonblocking(false);
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        if greeting {
            let _ = tcp.write_all(b"220 weft-test ready\r\n");
            let mut line = String::new();
            let _ = BufReader::new(&tcp).read_line(&mut line);
            let _ = write!(tcp, "250 got {}\r\n", line.trim_end());
        } else {
            let mut message = String::new();
            let _ = tcp.read_to_string(&mut message);
            let _ = write!(tcp, "app-{port} got {message}");
        }
    }
    served
}

/// `weft-tcp-probe` (an unmodified client) run in `pod`; returns its output
/// and how long it took.
fn probe(pod: &Pod, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = pod
        .command(env!("CARGO_BIN_EXE_weft-tcp-probe"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, start.elapsed())
}

/// tcpdump on every port of the bridge (the pods' veths), writing every TCP
/// packet to a file.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(mesh: &Mesh) -> Capture {
        let file = mesh.dir().join("bridge.pcap");
        let log = mesh.dir().join("tcpdump.log");
        let child = mesh
            .net
            .bridge_command("tcpdump")
            .args([
                "-i",
                "any",
                "--immediate-mode",
                "-U",
                "-n",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg("tcp or udp port 9")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tcpdump runs (apt-get install tcpdump)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            assert!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Capture { child, file }
    }

    /// Stops the capture once it holds everything that crossed the bridge
    /// before this call, and returns the raw pcap bytes. tcpdump writes packets
    /// in the order they were tapped (--immediate-mode, -U), so a UDP datagram
    /// sent from `from` to `to` now (not intercepted: the mesh takes TCP only)
    /// appears in the file after every packet before it.
    fn stop(mut self, from: &Pod, to: std::net::Ipv4Addr) -> Vec<u8> {
        let marker = format!("weft-capture-end-{}", std::process::id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let pcap = loop {
            from.enter(|| {
                std::net::UdpSocket::bind("0.0.0.0:0")
                    .and_then(|udp| udp.send_to(marker.as_bytes(), (to, 9)))
            })
            .unwrap()
            .unwrap();
            let pcap = std::fs::read(&self.file).unwrap_or_default();
            if contains(&pcap, marker.as_bytes()) {
                break pcap;
            }
            assert!(
                Instant::now() < deadline,
                "tcpdump never wrote the end marker"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
        pcap
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_an_h2_client_reach_the_other_pod_over_mtls_with_the_client_identity() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("h2").unwrap();
    let b = mesh.meshed_pod("b", &[]).unwrap();
    let a = mesh
        .meshed_pod("a", &[(env::DESTINATIONS, &destination(&b, "b"))])
        .unwrap();
    apps::http_echo_on(tokio_listener(&b, "0.0.0.0:8080"));
    let capture = Capture::start(&mesh);

    // curl, unmodified, in pod A (HTTP/1.1).
    let url = format!("http://{}:8080/plaintext-path-marker", b.addr());
    let curl = a
        .run(a.command("curl").args([
            "-sS",
            "-i",
            "--max-time",
            "10",
            "-d",
            "plaintext-body-marker",
            &url,
        ]))
        .unwrap();
    let text = stdout(&curl);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = format!("{SEEN_CLIENT_ID}: {}", identity("a"));
    assert!(text.contains(&seen), "{text}");
    assert!(text.ends_with("plaintext-body-marker"), "{text}");

    // A Rust HTTP/2 client (prior knowledge), connecting from pod A.
    let tcp = tokio_connect(&a, SocketAddr::new(b.addr().into(), 8080));
    let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}:8080/h2-path-marker", b.addr()))
        .body(Full::new(Bytes::from_static(b"h2-body-marker")))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.version(), Version::HTTP_2);
    assert_eq!(rsp.headers()[SEEN_CLIENT_ID], identity("a").as_str());
    assert_eq!(rsp.headers()[SEEN_VERSION], "HTTP/2.0");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "h2-body-marker");

    // What crossed the bridge was TLS, never the plaintext.
    let pcap = capture.stop(&a, b.addr());
    for marker in [
        "plaintext-path-marker",
        "plaintext-body-marker",
        "h2-path-marker",
        "h2-body-marker",
    ] {
        assert!(
            !contains(&pcap, marker.as_bytes()),
            "{marker} in clear on the bridge"
        );
    }
    assert!(
        contains(&pcap, &[0x16, 0x03, 0x01]),
        "no TLS ClientHello captured"
    );
    assert!(
        contains(&pcap, &[0x17, 0x03, 0x03]),
        "no TLS application data captured"
    );
    assert!(
        contains(&pcap, &b.addr().octets()),
        "nothing to pod B captured"
    );

    // Pod B's proxy took both requests from pod A's identity, over one
    // pooled mTLS connection with the post-quantum hybrid key exchange.
    let requests = format!(
        "weft_requests_total{{direction=\"inbound\",status_code=\"200\",tls=\"true\",peer_identity=\"{}\"}}",
        identity("a")
    );
    assert_eq!(metric(&b, &requests), 2.0, "{}", proxy_metrics(&b).unwrap());
    let handshakes = "weft_tls_handshakes_total{direction=\"inbound\",kx_group=\"X25519MLKEM768\"}";
    assert_eq!(metric(&b, handshakes), 1.0);
}

#[test]
fn pod_b_proxy_forwards_three_app_ports_to_the_original_port() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("ports").unwrap();
    let b = mesh.meshed_pod("b", &[]).unwrap();
    let a = mesh
        .meshed_pod("a", &[(env::DESTINATIONS, &destination(&b, "b"))])
        .unwrap();
    let ports = [8080, 9090, 5432];
    let apps = Servers::start(&b, &ports, false);

    for port in ports {
        let target = format!("{}:{port}", b.addr());
        let (out, _) = probe(&a, &[&target, "hello"]);
        assert_eq!(stdout(&out), format!("app-{port} got hello"), "{out:?}");
    }
    assert_eq!(apps.stop(), [1, 1, 1]);
}

#[test]
fn server_speaks_first_works_on_an_opaque_port_and_after_the_detection_timeout() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("first").unwrap();
    let b = mesh.meshed_pod("b", &[]).unwrap();
    let timeout = DETECT_TIMEOUT.as_secs().to_string();
    let a = mesh
        .meshed_pod(
            "a",
            &[
                (env::DESTINATIONS, &destination(&b, "b")),
                (env::DETECT_TIMEOUT, &timeout),
                (env::OPAQUE_PORTS, "2526,6379"),
            ],
        )
        .unwrap();

    // An SMTP-like server: it greets, the client waits for the greeting.
    let banners = Servers::start(&b, &[2525, 2526], true);
    let expected = "220 weft-test ready\r\n250 got HELO a\r\n";
    let opaque = format!("{}:2526", b.addr());
    let (out, took) = probe(&a, &["--server-first", &opaque, "HELO a"]);
    assert_eq!(stdout(&out), expected, "{out:?}");
    assert!(
        took < DETECT_TIMEOUT,
        "opaque port waited for detection: {took:?}"
    );

    let detected =
        "weft_protocol_detect_total{direction=\"outbound\",protocol=\"opaque\",timed_out=\"true\"}";
    assert_eq!(metric(&a, detected), 0.0);
    let detecting = format!("{}:2525", b.addr());
    let (out, took) = probe(&a, &["--server-first", &detecting, "HELO a"]);
    assert_eq!(stdout(&out), expected, "{out:?}");
    assert!(
        took >= DETECT_TIMEOUT,
        "greeting before the detection timeout: {took:?}"
    );
    assert_eq!(metric(&a, detected), 1.0);
    assert_eq!(banners.stop(), [1, 1]);

    // Debian's redis-server, on an opaque port and on a detected one.
    for port in ["6379", "6380"] {
        b.spawn(
            b.command("redis-server")
                .args([
                    "--port",
                    port,
                    "--bind",
                    "0.0.0.0",
                    "--protected-mode",
                    "no",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                ])
                .arg(mesh.dir())
                .stdout(Stdio::null()),
        )
        .expect("redis-server runs (apt-get install redis-server)");
    }
    for port in ["6379", "6380"] {
        // Ready when it answers locally (loopback is not redirected).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stdout(
            &b.command("redis-cli")
                .args(["-p", port, "PING"])
                .output()
                .unwrap(),
        )
        .contains("PONG")
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let host = b.addr().to_string();
        let cli = |args: &[&str]| {
            let out = a
                .run(
                    a.command("redis-cli")
                        .args(["-h", &host, "-p", port])
                        .args(args),
                )
                .unwrap();
            stdout(&out).trim().to_owned()
        };
        assert_eq!(cli(&["SET", "mesh", port]), "OK");
        assert_eq!(cli(&["GET", "mesh"]), port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_originated_tls_passes_through_unchanged() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("apptls").unwrap();
    let b = mesh.meshed_pod("b", &[]).unwrap();
    let a = mesh
        .meshed_pod("a", &[(env::DESTINATIONS, &destination(&b, "b"))])
        .unwrap();

    // The app's own PKI, unrelated to the mesh's.
    let app_ca = TestCa::new("app");
    let leaf = app_ca.issue_spec(&LeafSpec {
        sans: vec![SanType::DnsName("app.test".try_into().unwrap())],
        ..LeafSpec::identity("spiffe://unused/ns/x/sa/y")
    });
    let (chain, key) = leaf.der();
    let server = rustls::ServerConfig::builder_with_provider(weft_api::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio_listener(&b, "0.0.0.0:8443");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
        let mut tls = tokio::io::BufReader::new(tls);
        let mut line = String::new();
        tls.read_line(&mut line).await.unwrap();
        let answer = format!("tls app (sni {sni}) got {line}");
        tls.get_mut().write_all(answer.as_bytes()).await.unwrap();
        tls.get_mut().shutdown().await.unwrap();
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(app_ca.root_der()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(weft_api::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio_connect(&a, SocketAddr::new(b.addr().into(), 8443));
    // The handshake verifies the app's own certificate: no proxy terminated it.
    let mut tls = connector
        .connect(ServerName::try_from("app.test").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"hello over app tls\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "tls app (sni app.test) got hello over app tls\n");

    let detected =
        "weft_protocol_detect_total{direction=\"outbound\",protocol=\"tls\",timed_out=\"false\"}";
    assert_eq!(metric(&a, detected), 1.0);
}

#[test]
fn a_destination_outside_the_mesh_is_passed_through() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("outside").unwrap();
    let c = mesh.plain_pod("c").unwrap();
    let a = mesh.meshed_pod("a", &[]).unwrap();
    let apps = Servers::start(&c, &[8080], false);

    let target = format!("{}:8080", c.addr());
    let (out, _) = probe(&a, &[&target, "plain"]);
    assert_eq!(stdout(&out), "app-8080 got plain", "{out:?}");
    assert_eq!(apps.stop(), [1]);
    let passed = "weft_tcp_open_total{direction=\"outbound\",tls=\"false\",peer_identity=\"\"}";
    assert_eq!(metric(&a, passed), 1.0);
}

#[test]
fn connections_to_the_proxys_own_ports_are_refused() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("loop").unwrap();
    let b = mesh.meshed_pod("b", &[]).unwrap();
    let a = mesh
        .meshed_pod("a", &[(env::DESTINATIONS, &destination(&b, "b"))])
        .unwrap();
    let c = mesh.plain_pod("c").unwrap();

    // The app dials its own proxy's outbound port, or another pod's proxy
    // port: the outbound proxy refuses instead of looping.
    for target in [
        format!("127.0.0.1:{PROXY_OUTBOUND_PORT}"),
        format!("{}:{PROXY_INBOUND_PORT}", b.addr()),
    ] {
        let (out, _) = probe(&a, &[&target, "loop"]);
        assert_eq!(stdout(&out), "", "{target}: {out:?}");
    }
    let refused = "weft_outbound_refused_total{direction=\"outbound\",reason=\"loop\"}";
    assert_eq!(metric(&a, refused), 2.0);

    // A client outside the mesh dialling the inbound port directly.
    let (out, _) = probe(&c, &[&format!("{}:{PROXY_INBOUND_PORT}", b.addr()), "loop"]);
    assert_eq!(stdout(&out), "", "{out:?}");
    let refused = "weft_inbound_refused_total{direction=\"inbound\",reason=\"loop\"}";
    assert_eq!(metric(&b, refused), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_identity_than_the_map_names_is_refused() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("mismatch").unwrap();
    let b = mesh.meshed_pod("b", &[]).unwrap();
    // Pod A expects workload `c` at pod B's address.
    let a = mesh
        .meshed_pod("a", &[(env::DESTINATIONS, &destination(&b, "c"))])
        .unwrap();
    apps::http_echo_on(tokio_listener(&b, "0.0.0.0:8080"));

    let url = format!("http://{}:8080/", b.addr());
    let curl = a
        .run(
            a.command("curl")
                .args(["-sS", "-i", "--max-time", "10", &url]),
        )
        .unwrap();
    let text = stdout(&curl);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        text.contains(&format!("{PROXY_ERROR_HEADER}: identity-mismatch")),
        "{text}"
    );
    assert!(
        !text.contains(SEEN_CLIENT_ID),
        "the app was reached: {text}"
    );
}

/// IPv6 through the real proxy: pod addresses are IPv4 only (198.18.0.0/15),
/// so an extra rule redirects IPv6 loopback port 7000 to the outbound port,
/// as `weft-init`'s rule does for other destinations. The proxy's `[::1]`
/// listener reads the IPv6 original destination and passes it through.
#[test]
fn ipv6_connections_reach_the_proxy_and_keep_their_original_destination() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("ipv6").unwrap();
    let a = mesh.meshed_pod("a", &[]).unwrap();
    a.run(a.command("ip6tables-nft").args([
        "-t",
        "nat",
        "-I",
        "OUTPUT",
        "1",
        "-p",
        "tcp",
        "-d",
        "::1",
        "--dport",
        "7000",
        "-m",
        "owner",
        "!",
        "--uid-owner",
        "2510",
        "-j",
        "REDIRECT",
        "--to-ports",
        &PROXY_OUTBOUND_PORT.to_string(),
    ]))
    .unwrap();
    let listener = a
        .enter(|| TcpListener::bind("[::1]:7000"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = AtomicBool::new(false);
    let (out, served) = std::thread::scope(|s| {
        let server = s.spawn(|| serve_lines(listener, 7000, false, &stop));
        let (out, _) = probe(&a, &["[::1]:7000", "over ipv6"]);
        stop.store(true, Ordering::Relaxed);
        (out, server.join().unwrap())
    });
    assert_eq!(stdout(&out), "app-7000 got over ipv6", "{out:?}");
    assert_eq!(served, 1);
    let passed = "weft_tcp_open_total{direction=\"outbound\",tls=\"false\",peer_identity=\"\"}";
    assert_eq!(metric(&a, passed), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_inbound_modes_decide_what_reaches_a_pod_through_interception() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("modes").unwrap();
    let strict = mesh
        .meshed_pod("strict", &[(env::DEFAULT_INBOUND_POLICY, "mesh-only")])
        .unwrap();
    let open = mesh.meshed_pod("open", &[]).unwrap();
    let destinations = format!(
        "{} {}",
        destination(&strict, "strict"),
        destination(&open, "open")
    );
    let meshed = mesh
        .meshed_pod("meshed", &[(env::DESTINATIONS, &destinations)])
        .unwrap();
    let plain = mesh.plain_pod("plain").unwrap();
    apps::http_echo_on(tokio_listener(&strict, "0.0.0.0:8080"));
    apps::http_echo_on(tokio_listener(&open, "0.0.0.0:8080"));
    let spoofed = "spiffe://cluster.local/ns/default/sa/admin";
    let curl = |pod: &Pod, target: &Pod| {
        let url = format!("http://{}:8080/orders", target.addr());
        let out = pod
            .run(pod.command("curl").args([
                "-sS",
                "-i",
                "--max-time",
                "10",
                "-H",
                &format!("weft-client-id: {spoofed}"),
                &url,
            ]))
            .unwrap();
        stdout(&out)
    };

    // mesh-only: the meshed caller gets through with its verified identity,
    // the plaintext caller gets 403 from the proxy.
    let text = curl(&meshed, &strict);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("{SEEN_CLIENT_ID}: {}", identity("meshed"))),
        "{text}"
    );
    let text = curl(&plain, &strict);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(
        text.contains(&format!("{PROXY_ERROR_HEADER}: unauthorized")),
        "{text}"
    );
    assert!(!text.contains(SEEN_CLIENT_ID), "reached the app: {text}");

    // allow-all (the default): the plaintext caller reaches the app, without
    // the identity it claimed.
    let text = curl(&plain, &open);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains(spoofed),
        "the spoofed id reached the app: {text}"
    );

    let metrics = proxy_metrics(&strict).unwrap();
    let denied = "weft_inbound_authz_total{decision=\"denied\",policy=\"default:mesh-only\",tls=\"false\",peer_identity=\"\",port=\"8080\"}";
    assert_eq!(sample(&metrics, denied), Some(1.0), "{metrics}");
    let allowed = format!(
        "weft_inbound_authz_total{{decision=\"allowed\",policy=\"default:mesh-only\",tls=\"true\",peer_identity=\"{}\",port=\"8080\"}}",
        identity("meshed")
    );
    assert_eq!(sample(&metrics, &allowed), Some(1.0), "{metrics}");
    assert!(
        mesh.proxy_log("strict")
            .contains("denied an inbound request"),
        "{}",
        mesh.proxy_log("strict")
    );
}
