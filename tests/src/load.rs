//! Continuous HTTP traffic to one address that counts every request: a
//! keep-alive HTTP/1.1 client, an HTTP/2 client and a client that opens a new
//! connection for every request, each sending its requests one after another
//! until stopped (or for at most [`MAX_RUN`] and [`MAX_REQUESTS`] each).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// No load runs longer than this, stopped or not.
pub const MAX_RUN: Duration = Duration::from_secs(180);
/// No client sends more requests than this.
pub const MAX_REQUESTS: u64 = 1_000_000;
/// A request that takes longer than this failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two requests of one client.
const PAUSE: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug)]
enum Kind {
    KeepAlive,
    Http2,
    NewConnection,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub ok: u64,
    /// The first failures, described.
    pub failures: Vec<String>,
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

/// Running load; [`Load::finish`] stops it and returns the tally.
pub struct Load {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    counters: Arc<Counters>,
}

impl Load {
    /// Starts the three clients against `addr` (an echo app behind proxies).
    pub fn start(addr: SocketAddr) -> Self {
        let stop = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let mut tasks = JoinSet::new();
        for kind in [Kind::KeepAlive, Kind::Http2, Kind::NewConnection] {
            tasks.spawn(client(kind, addr, stop.clone(), counters.clone()));
        }
        Self {
            stop,
            tasks,
            counters,
        }
    }

    /// Requests sent and failed so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.counters.sent.load(Ordering::Relaxed),
            self.counters.failed.load(Ordering::Relaxed),
        )
    }

    /// Waits until `n` requests have been answered (well or not), at most
    /// `timeout`; panics naming the progress when they were not.
    pub async fn wait_answered(&self, n: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = &self.counters;
            let answered = c.ok.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
            if answered >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{answered} of {n} requests answered after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients (each finishes its request in flight).
    pub async fn finish(mut self) -> Tally {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let c = &self.counters;
        Tally {
            sent: c.sent.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            failures: c.failures.lock().expect("not poisoned").clone(),
        }
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn connect(kind: Kind, addr: SocketAddr) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match kind {
        Kind::Http2 => {
            let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H2(tx))
        }
        Kind::KeepAlive | Kind::NewConnection => {
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H1(tx))
        }
    }
}

async fn one(sender: &mut Sender, n: u64) -> Result<(), String> {
    let payload = Bytes::from(format!("request {n}"));
    let req = http::Request::post("http://checkout/echo")
        .body(Full::new(payload.clone()))
        .map_err(|e| e.to_string())?;
    let rsp = match sender {
        Sender::H1(tx) => {
            tx.ready().await.map_err(|e| format!("not ready: {e}"))?;
            tx.send_request(req).await
        }
        Sender::H2(tx) => {
            tx.ready().await.map_err(|e| format!("not ready: {e}"))?;
            tx.send_request(req).await
        }
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = rsp.status();
    let proxy_error = rsp
        .headers()
        .get(weft_api::consts::PROXY_ERROR_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!(
            "status {status} ({proxy_error:?}): {}",
            String::from_utf8_lossy(&body)
        ));
    }
    if body != payload {
        return Err(format!("body {body:?} is not the request's {payload:?}"));
    }
    Ok(())
}

async fn client(kind: Kind, addr: SocketAddr, stop: CancellationToken, c: Arc<Counters>) {
    let started = tokio::time::Instant::now();
    let mut sender: Option<Sender> = None;
    let mut n = 0u64;
    while !stop.is_cancelled() && started.elapsed() < MAX_RUN && n < MAX_REQUESTS {
        n += 1;
        c.sent.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if sender.is_none() || matches!(kind, Kind::NewConnection) {
                sender = Some(connect(kind, addr).await?);
            }
            let s = sender.as_mut().ok_or("no connection")?;
            one(s, n).await
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
        match result {
            Ok(()) => {
                c.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                let mut failures = c.failures.lock().expect("not poisoned");
                if failures.len() < 10 {
                    failures.push(format!("{kind:?} #{n}: {e}"));
                }
                sender = None;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}
