//! Hostile clients on both listeners a client reaches: the client proxy's
//! upstream listener (plain TCP from the app) and the server proxy's inbound
//! listener (mesh mTLS, with a valid client identity). Each test attacks one
//! way, checks that the proxy cuts or bounds it, and that a normal client is
//! still served.
//!
//! The proxies run in the test process, so memory is the process's resident
//! set (`/proc/self/status`): its peak during the attack (`VmHWM`, reset
//! through `/proc/self/clear_refs` first) less its size before.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_api::consts::alpn;
use weft_api::tls::MeshTls;
use weft_tests::apps;
use weft_tests::mesh::{CLIENT_ID, Pair, SERVER_ID};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

#[derive(Clone, Copy, Debug)]
enum Listener {
    /// The client proxy's upstream listener, as the app reaches it.
    Outbound,
    /// The server proxy's inbound listener, as a mesh peer reaches it.
    Inbound,
}

/// Opens connections to one listener of a pair as a hostile client would.
struct Dialer {
    listener: Listener,
    entry: SocketAddr,
    inbound: SocketAddr,
    tls: Arc<MeshTls>,
}

impl Dialer {
    fn new(pair: &Pair, listener: Listener) -> Self {
        Self {
            listener,
            entry: pair.entry,
            inbound: pair.server.inbound_addr,
            tls: pair.ca.mesh_tls(CLIENT_ID),
        }
    }

    /// Plain TCP to the upstream listener (HTTP/1 or prior-knowledge HTTP/2,
    /// as the client then writes), or mesh mTLS offering `alpn` to the
    /// inbound listener.
    async fn dial(&self, alpn: &'static [u8]) -> Conn {
        match self.listener {
            Listener::Outbound => Box::new(TcpStream::connect(self.entry).await.unwrap()),
            Listener::Inbound => {
                let server: weft_api::Identity = SERVER_ID.parse().unwrap();
                let config = self.tls.client_config(&server, alpn);
                let tcp = TcpStream::connect(self.inbound).await.unwrap();
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::try_from("checkout").unwrap(), tcp)
                    .await
                    .unwrap();
                Box::new(tls)
            }
        }
    }
}

/// One HTTP/1.1 GET through the pair, as a normal client of the app.
async fn get(entry: SocketAddr) -> StatusCode {
    let tcp = TcpStream::connect(entry).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = tx
        .send_request(
            Request::get("/")
                .header("host", "checkout")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = rsp.status();
    rsp.into_body().collect().await.unwrap();
    status
}

/// A normal client is served, within a generous bound; returns how long it took.
async fn normal_client_served(entry: SocketAddr) -> Duration {
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), get(entry))
        .await
        .expect("a normal client is served");
    assert_eq!(status, StatusCode::OK);
    started.elapsed()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends a GET on a raw HTTP/1.1 connection and reads the whole response
/// (`Content-Length` or chunked, without trailers); returns its status.
async fn exchange(conn: &mut Conn) -> u16 {
    conn.write_all(b"GET / HTTP/1.1\r\nhost: checkout\r\n\r\n")
        .await
        .unwrap();
    conn.flush().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let mut body = buf.split_off(head_end);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let done = |body: &[u8]| match length {
        Some(len) => body.len() >= len,
        None => !head.contains("transfer-encoding: chunked") || body.ends_with(b"0\r\n\r\n"),
    };
    while !done(&body) {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in the middle of a response");
        body.extend_from_slice(&chunk[..n]);
    }
    status
}

/// Reads until the peer closes (or fails the connection); returns what came.
async fn read_to_close<R: AsyncRead + Unpin>(rd: &mut R) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The test process's resident memory in KiB: `VmRSS` or `VmHWM` (its peak).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The peak resident memory from now on, less what it is now.
struct Memory {
    before_kib: u64,
}

impl Memory {
    fn start() -> Self {
        // "5" resets the peak (VmHWM) to the current size; if the kernel
        // refuses, the peak so far stands (the bound is then only looser).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Self {
            before_kib: status_kib("VmRSS:"),
        }
    }

    fn growth_kib(&self) -> u64 {
        status_kib("VmHWM:").saturating_sub(self.before_kib)
    }
}

// ---- slowloris ------------------------------------------------------------

/// The header timeout of the slowloris tests' proxies.
const SLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a request line at once (so that protocol detection, which has its own
/// timeout, is done), then the headers a byte a second, reading meanwhile.
/// Returns how long after the request's first byte the proxy closed the
/// connection, and what it answered.
async fn trickle(conn: &mut Conn) -> (Duration, Vec<u8>) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let started = Instant::now();
    wr.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    wr.flush().await.unwrap();
    let writer = async {
        for byte in
            b"host: checkout\r\nx-slow: a byte a second, far longer than the timeout\r\n\r\n"
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(&[*byte]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let cut = async {
        tokio::select! {
            got = read_to_close(&mut rd) => got,
            () = writer => unreachable!("the writer never ends"),
        }
    };
    let got = tokio::time::timeout(SLOW_HEADER_TIMEOUT + Duration::from_secs(30), cut)
        .await
        .expect("the proxy cuts a client that sends its headers a byte a second");
    (started.elapsed(), got)
}

fn assert_cut_after_timeout((after, got): (Duration, Vec<u8>), what: &str) {
    eprintln!("{what}: cut {after:?} after the request's first byte");
    assert!(
        after >= SLOW_HEADER_TIMEOUT,
        "{what}: cut after {after:?}, before the header timeout ({SLOW_HEADER_TIMEOUT:?}) \
         since the request's first byte"
    );
    assert!(
        find(&got, b" 200 ").is_none(),
        "{what}: the slow request was served: {:?}",
        String::from_utf8_lossy(&got)
    );
}

async fn slowloris_is_cut_and_idle_keep_alive_stays(listener: Listener) {
    let pair = Pair::configured(apps::http_echo().await, false, &|c| {
        c.header_timeout = SLOW_HEADER_TIMEOUT;
    })
    .await;
    let dialer = Dialer::new(&pair, listener);
    // Two keep-alive connections, served once, then idle.
    let mut idle_a = dialer.dial(alpn::HTTP1).await;
    let mut idle_b = dialer.dial(alpn::HTTP1).await;
    assert_eq!(exchange(&mut idle_a).await, 200);
    assert_eq!(exchange(&mut idle_b).await, 200);
    let idle_since = Instant::now();

    // A new connection trickling its head is cut a header timeout after its
    // first byte.
    let mut slow = dialer.dial(alpn::HTTP1).await;
    assert_cut_after_timeout(trickle(&mut slow).await, "a new slow connection");
    assert!(idle_since.elapsed() > SLOW_HEADER_TIMEOUT);

    // A keep-alive connection idle for longer than the header timeout is
    // still open, and its trickling head is cut a header timeout after that
    // head's first byte, not after the end of the previous response.
    assert_cut_after_timeout(
        trickle(&mut idle_a).await,
        "a slow request on an idle keep-alive connection",
    );
    // The other one, idle all along, serves its next request.
    assert!(idle_since.elapsed() > 2 * SLOW_HEADER_TIMEOUT);
    assert_eq!(exchange(&mut idle_b).await, 200);
    normal_client_served(pair.entry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_and_idle_keep_alive_stays_outbound() {
    slowloris_is_cut_and_idle_keep_alive_stays(Listener::Outbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_and_idle_keep_alive_stays_inbound() {
    slowloris_is_cut_and_idle_keep_alive_stays(Listener::Inbound).await;
}

/// Slow clients held open at once.
const SLOW_CLIENTS: usize = 1_000;

async fn thousand_slow_clients_do_not_stop_a_normal_one(listener: Listener) {
    // A header timeout longer than the test: every slow client stays.
    let pair = Pair::configured(apps::http_echo().await, false, &|c| {
        c.header_timeout = Duration::from_secs(600);
    })
    .await;
    let dialer = Arc::new(Dialer::new(&pair, listener));
    let memory = Memory::start();
    let opening = Instant::now();
    // At most this many handshakes at once (the inbound listener's take CPU).
    let dials = Arc::new(tokio::sync::Semaphore::new(32));
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(SLOW_CLIENTS);
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..SLOW_CLIENTS {
        let dialer = dialer.clone();
        let dials = dials.clone();
        let opened = opened_tx.clone();
        slow.spawn(async move {
            let permit = dials.acquire().await.unwrap();
            let mut conn = dialer.dial(alpn::HTTP1).await;
            conn.write_all(b"GET / HTTP/1.1\r\nhost: checkout\r\nx-slow: ")
                .await
                .unwrap();
            conn.flush().await.unwrap();
            drop(permit);
            opened.send(()).await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if conn.write_all(b"a").await.is_err() || conn.flush().await.is_err() {
                    return;
                }
            }
        });
    }
    drop(opened_tx);
    for n in 0..SLOW_CLIENTS {
        tokio::time::timeout(Duration::from_secs(240), opened_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {n} slow clients connected"))
            .unwrap_or_else(|| panic!("a slow client failed after {n} connected"));
    }
    eprintln!(
        "{SLOW_CLIENTS} slow clients connected in {:?}",
        opening.elapsed()
    );
    let served_in = normal_client_served(pair.entry).await;
    let growth = memory.growth_kib();
    assert!(
        slow.try_join_next().is_none(),
        "every slow client is still connected"
    );
    eprintln!(
        "a normal client served in {served_in:?} beside {SLOW_CLIENTS} slow ones; \
         peak memory growth {growth} KiB"
    );
    // Both ends of every connection are in this process (and TLS state on
    // the inbound): measured about 20 MiB upstream and 52 MiB inbound.
    assert!(
        growth < 256 * 1024,
        "{SLOW_CLIENTS} slow clients grew memory by {growth} KiB"
    );
    slow.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_slow_clients_do_not_stop_a_normal_one_outbound() {
    thousand_slow_clients_do_not_stop_a_normal_one(Listener::Outbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_slow_clients_do_not_stop_a_normal_one_inbound() {
    thousand_slow_clients_do_not_stop_a_normal_one(Listener::Inbound).await;
}

// ---- oversized heads -----------------------------------------------------

/// A request whose headers are 100 KB (25 lines of 4,000 bytes).
fn hundred_kb_of_headers() -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nhost: checkout\r\n".to_vec();
    for i in 0..25 {
        head.extend_from_slice(format!("x-big-{i:02}: ").as_bytes());
        head.extend(std::iter::repeat_n(b'a', 4_000 - 12));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A request with 10,000 header lines (60 KB, under the size limit).
fn ten_thousand_header_lines() -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nhost: checkout\r\n".to_vec();
    for _ in 0..10_000 {
        head.extend_from_slice(b"x: 1\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Writes `head` while reading; returns what the proxy answered before
/// closing (it may close before reading all of it).
async fn answer_to(conn: Conn, head: &[u8]) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let write = async {
        if wr.write_all(head).await.is_ok() {
            let _ = wr.flush().await;
        }
    };
    let ((), got) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(write, read_to_close(&mut rd))
    })
    .await
    .expect("the proxy answers an oversized head and closes");
    got
}

/// Oversized heads sent on this many connections, one after another.
const OVERSIZED_ROUNDS: usize = 20;

async fn oversized_heads_get_431(listener: Listener) {
    let pair = Pair::new(apps::http_echo().await, false).await;
    let dialer = Dialer::new(&pair, listener);
    let big = hundred_kb_of_headers();
    let many = ten_thousand_header_lines();
    let memory = Memory::start();
    let started = Instant::now();
    for _ in 0..OVERSIZED_ROUNDS {
        for (what, head) in [("100 KB of headers", &big), ("10,000 header lines", &many)] {
            let got = answer_to(dialer.dial(alpn::HTTP1).await, head).await;
            assert!(
                got.starts_with(b"HTTP/1.1 431 "),
                "{what}: {:?}",
                String::from_utf8_lossy(&got[..got.len().min(200)])
            );
        }
    }
    let growth = memory.growth_kib();
    eprintln!(
        "{} oversized heads answered 431 in {:?}; peak memory growth {growth} KiB",
        2 * OVERSIZED_ROUNDS,
        started.elapsed()
    );
    assert!(
        growth < 64 * 1024,
        "memory grew by {growth} KiB for heads that were refused"
    );
    let mut conn = dialer.dial(alpn::HTTP1).await;
    assert_eq!(exchange(&mut conn).await, 200);
    normal_client_served(pair.entry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_outbound() {
    oversized_heads_get_431(Listener::Outbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_inbound() {
    oversized_heads_get_431(Listener::Inbound).await;
}

// ---- HTTP/2 frames by hand -------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK block for `GET http://checkout/`: the static table's
/// `:method GET`, `:scheme http` and `:path /`, and `:authority` as a literal
/// without indexing.
fn request_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 8];
    block.extend_from_slice(b"checkout");
    block
}

/// An HPACK literal field without indexing, with a new name (short strings).
fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, u8::try_from(name.len()).unwrap()];
    out.extend_from_slice(name);
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value);
    out
}

/// Opens an HTTP/2 connection: the preface and empty SETTINGS.
async fn h2_open(dialer: &Dialer) -> Conn {
    let mut conn = dialer.dial(alpn::H2).await;
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    conn.write_all(&hello).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

/// Reads frames until a GOAWAY; returns its error code, or `None` if the
/// connection closed first.
async fn goaway<R: AsyncRead + Unpin>(rd: &mut R) -> Option<u32> {
    let mut head = [0u8; 9];
    loop {
        rd.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]);
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        rd.read_exact(&mut payload).await.ok()?;
        if head[3] == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
    }
}

/// Writes `batch()` over and over (at most `batches` times) until the proxy
/// sends GOAWAY; returns its code and how many batches were written.
async fn flood_until_goaway(
    conn: Conn,
    batches: usize,
    mut batch: impl FnMut() -> Vec<u8>,
) -> (Option<u32>, usize) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let mut written = 0;
    let writer = async {
        while written < batches {
            let bytes = batch();
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            written += 1;
        }
        std::future::pending::<()>().await;
    };
    let code = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            code = goaway(&mut rd) => code,
            () = writer => unreachable!("the writer never ends"),
        }
    })
    .await
    .expect("the proxy answers the flood with GOAWAY or closes");
    (code, written)
}

async fn rapid_reset_gets_goaway(listener: Listener) {
    let pair = Pair::new(apps::http_echo().await, false).await;
    let dialer = Dialer::new(&pair, listener);
    let memory = Memory::start();
    let started = Instant::now();
    let conn = h2_open(&dialer).await;
    let block = request_block();
    let mut next: u32 = 1;
    // Each batch opens 100 streams and cancels each at once.
    let (code, batches) = flood_until_goaway(conn, 1_000, move || {
        let mut out = Vec::new();
        for _ in 0..100 {
            frame(&mut out, HEADERS, END_HEADERS | END_STREAM, next, &block);
            frame(&mut out, RST_STREAM, 0, next, &CANCEL.to_be_bytes());
            next += 2;
        }
        out
    })
    .await;
    let growth = memory.growth_kib();
    eprintln!(
        "rapid reset: GOAWAY {code:?} after at most {} streams, {:?}; peak memory growth {growth} KiB",
        batches * 100,
        started.elapsed()
    );
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert!(growth < 128 * 1024, "memory grew by {growth} KiB");
    let served_in = normal_client_served(pair.entry).await;
    eprintln!("then a normal client served in {served_in:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_outbound() {
    rapid_reset_gets_goaway(Listener::Outbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_inbound() {
    rapid_reset_gets_goaway(Listener::Inbound).await;
}

async fn continuation_flood_gets_goaway(listener: Listener) {
    let pair = Pair::new(apps::http_echo().await, false).await;
    let dialer = Dialer::new(&pair, listener);
    let memory = Memory::start();
    let started = Instant::now();
    let mut conn = h2_open(&dialer).await;
    // A HEADERS frame that never ends its header block...
    let mut first = Vec::new();
    frame(&mut first, HEADERS, END_STREAM, 1, &request_block());
    conn.write_all(&first).await.unwrap();
    // ...then CONTINUATION frames, 100 a batch, none ending it.
    let field = literal(b"x-flood", b"continuation");
    let (code, batches) = flood_until_goaway(conn, 100, move || {
        let mut out = Vec::new();
        for _ in 0..100 {
            frame(&mut out, CONTINUATION, 0, 1, &field);
        }
        out
    })
    .await;
    let growth = memory.growth_kib();
    eprintln!(
        "CONTINUATION flood: GOAWAY {code:?} after at most {} frames, {:?}; peak memory growth {growth} KiB",
        batches * 100,
        started.elapsed()
    );
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert!(growth < 64 * 1024, "memory grew by {growth} KiB");
    let served_in = normal_client_served(pair.entry).await;
    eprintln!("then a normal client served in {served_in:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_gets_goaway_outbound() {
    continuation_flood_gets_goaway(Listener::Outbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_gets_goaway_inbound() {
    continuation_flood_gets_goaway(Listener::Inbound).await;
}

// ---- a client that never reads ----------------------------------------------

/// An app (HTTP/1.1 and HTTP/2) that answers every request with an endless
/// body of 64 KiB chunks, counting the bytes its server has taken.
async fn firehose() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let counter = counter.clone();
                    async move {
                        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                        let body = futures::stream::repeat_with(move || {
                            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            Ok::<_, Infallible>(Frame::data(chunk.clone()))
                        });
                        Ok::<_, Infallible>(Response::new(StreamBody::new(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, produced)
}

/// More than the proxies' windows and buffers plus the kernel's socket
/// buffers on the way (up to 32 MiB a receiving socket here): an app that
/// got this far past a client that reads nothing is buffered without bound.
const UNBOUNDED: u64 = 512 * 1024 * 1024;

/// Waits until the app stops producing (no progress for two seconds);
/// returns how many bytes it produced.
async fn produced_until_stalled(produced: &AtomicU64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = 0;
    let mut still = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = produced.load(Ordering::Relaxed);
        assert!(
            now < UNBOUNDED,
            "the app has sent {now} bytes to a client that reads nothing"
        );
        if now > 0 && now == last {
            still += 1;
            if still == 20 {
                return now;
            }
        } else {
            still = 0;
            last = now;
        }
        assert!(
            Instant::now() < deadline,
            "the app never stopped: {now} bytes"
        );
    }
}

async fn non_reading_client_is_bounded(listener: Listener) {
    let (app, produced) = firehose().await;
    let pair = Pair::new(app, false).await;
    let dialer = Dialer::new(&pair, listener);
    let memory = Memory::start();
    let mut conn = dialer.dial(alpn::HTTP1).await;
    conn.write_all(b"GET / HTTP/1.1\r\nhost: checkout\r\n\r\n")
        .await
        .unwrap();
    conn.flush().await.unwrap();
    // Never read.
    let stalled = produced_until_stalled(&produced).await;
    let growth = memory.growth_kib();
    eprintln!(
        "a client that reads nothing: the app stalled after {stalled} bytes; \
         peak memory growth {growth} KiB"
    );
    assert!(
        growth < 64 * 1024,
        "memory grew by {growth} KiB for a client that reads nothing"
    );
    normal_client_served_beside(&pair).await;
    drop(conn);
}

/// While the stalled response holds its windows, another client is served:
/// it gets the firehose's head (its body is endless) without delay.
async fn normal_client_served_beside(pair: &Pair) {
    let tcp = TcpStream::connect(pair.entry).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = tokio::time::timeout(
        Duration::from_secs(30),
        tx.send_request(
            Request::get("/")
                .header("host", "checkout")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        ),
    )
    .await
    .expect("a normal client is answered")
    .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let mut body = rsp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("its body flows")
        .unwrap()
        .unwrap();
    assert!(frame.is_data());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_client_is_bounded_outbound() {
    non_reading_client_is_bounded(Listener::Outbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_client_is_bounded_inbound() {
    non_reading_client_is_bounded(Listener::Inbound).await;
}
