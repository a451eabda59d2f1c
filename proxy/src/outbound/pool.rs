//! Connection pools: one multiplexed HTTP/2 connection per peer, shared by
//! every request to it ([`H2Pool`]), and HTTP/1.1 connections to local apps,
//! one request at a time each ([`Http1Pool`]).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::http::Body;
use crate::lock;

/// One peer's entry in the pool.
#[derive(Debug, Default)]
struct Slot {
    /// The connection every request to the peer shares, once it is open.
    conn: Mutex<Option<Conn>>,
    /// Held while a connection is being made, so that concurrent requests
    /// wait for one attempt instead of each making their own.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn open(&self) -> Option<Conn> {
        lock(&self.conn)
            .as_ref()
            .filter(|c| !c.tx.is_closed())
            .cloned()
    }
}

/// A pooled HTTP/2 connection, and how it ended if it failed at the TLS layer.
#[derive(Clone, Debug)]
pub struct Conn {
    pub tx: http2::SendRequest<Body>,
    tls_failure: watch::Receiver<Option<String>>,
}

impl Conn {
    /// The TLS failure that ended this connection, waiting up to `wait` for
    /// the connection's driver to report it. With TLS 1.3 a server that
    /// refuses the client certificate says so only after the client finished
    /// its handshake, so a request can fail before the cause is known.
    pub async fn tls_failure(&self, wait: Duration) -> Option<String> {
        let mut rx = self.tls_failure.clone();
        let seen = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match seen {
            Ok(Ok(cause)) => cause.clone(),
            _ => None,
        }
    }
}

/// A cache of HTTP/2 connections keyed by peer. Concurrent requests to a peer
/// with no connection wait for a single connection attempt.
#[derive(Debug)]
pub struct H2Pool<K> {
    slots: Mutex<HashMap<K, Arc<Slot>>>,
}

impl<K> Default for H2Pool<K> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> H2Pool<K> {
    /// The open connection to `key`, or a new one made by `connect`.
    ///
    /// The common case, an open connection, takes two short locks and no
    /// await. Making a connection is boxed so that the future of every
    /// request stays small (it is part of each client connection's memory).
    pub async fn get<F, Fut, E>(&self, key: &K, connect: F) -> Result<Conn, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Conn, E>>,
    {
        if let Some(conn) = lock(&self.slots).get(key).and_then(|slot| slot.open()) {
            return Ok(conn);
        }
        Box::pin(self.connect(key, connect)).await
    }

    async fn connect<F, Fut, E>(&self, key: &K, connect: F) -> Result<Conn, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Conn, E>>,
    {
        let slot = lock(&self.slots).entry(key.clone()).or_default().clone();
        let _connecting = slot.connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(conn) = slot.open() {
            return Ok(conn);
        }
        let conn = connect().await?;
        *lock(&slot.conn) = Some(conn.clone());
        Ok(conn)
    }
}

/// Starts an HTTP/2 client connection on `io` and drives it in the background.
pub async fn handshake<I>(io: I) -> Result<Conn, hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(crate::http::H2_STREAM_WINDOW)
        .initial_connection_window_size(crate::http::H2_CONNECTION_WINDOW)
        .max_concurrent_reset_streams(1024)
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .handshake(TokioIo::new(io))
        .await?;
    let (failed, tls_failure) = watch::channel(None);
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "HTTP/2 client connection closed with an error");
            if let Some(cause) = crate::transport::tls_cause(&error) {
                failed.send_replace(Some(cause));
            }
        }
    });
    Ok(Conn { tx, tls_failure })
}

/// Why a request over a pooled HTTP/1.1 connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Send(#[source] hyper::Error),
}

/// Idle connections kept per address; a connection that comes back to a full
/// list is closed.
const MAX_IDLE_PER_ADDR: usize = 512;

/// How long a connection may stay idle in an [`Http1Pool`] before it is
/// closed: a burst of concurrent requests leaves as many connections to the
/// app, and they must not stay open (descriptors, a task each) once the burst
/// is over.
pub const HTTP1_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1.1 connections to local apps, by address: each carries one request
/// at a time and goes back to the pool as soon as its response body has been
/// read to the end. Connections idle for [`HTTP1_IDLE_TIMEOUT`] are closed
/// (at the next checkout, and by the sweep [`Http1Pool::new`] starts).
#[derive(Debug, Default)]
pub struct Http1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

#[derive(Debug)]
struct Idle {
    tx: http1::SendRequest<Body>,
    since: tokio::time::Instant,
}

/// A connection taken from an [`Http1Pool`] for one request: an idle one, or
/// one just made.
pub struct Http1Conn {
    tx: http1::SendRequest<Body>,
    reused: bool,
}

impl Http1Pool {
    /// A pool whose idle connections are swept every
    /// `HTTP1_IDLE_TIMEOUT / 2` by a task that ends with the pool (it holds
    /// only a weak reference). Must be called on a tokio runtime.
    pub fn new() -> Arc<Self> {
        let pool = Arc::new(Self::default());
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let period = HTTP1_IDLE_TIMEOUT / 2;
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(pool) = weak.upgrade() else {
                    return;
                };
                pool.expire_idle(tokio::time::Instant::now());
            }
        });
        pool
    }

    /// Closes the connections idle for [`HTTP1_IDLE_TIMEOUT`] at `now`;
    /// how many.
    pub fn expire_idle(&self, now: tokio::time::Instant) -> usize {
        let mut idle = lock(&self.idle);
        let mut closed = 0;
        idle.retain(|_, list| {
            let before = list.len();
            list.retain(|c| now.duration_since(c.since) < HTTP1_IDLE_TIMEOUT);
            closed += before - list.len();
            !list.is_empty()
        });
        closed
    }

    /// Sends `req` to `addr` on an idle connection, or a new one. A request
    /// that a reused connection could not write (the app closed it while it
    /// was idle) is sent once more on a new connection. A connection whose
    /// response upgrades it (101) is not reused.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<ReturnOnEnd>, Http1Error> {
        let conn = self.connection(addr).await?;
        self.send_on(addr, conn, req).await
    }

    /// An idle connection to `addr`, or a new one: taken before the request
    /// is sent, so that a failure to connect leaves the request (and its
    /// body) untouched.
    pub async fn connection(&self, addr: SocketAddr) -> Result<Http1Conn, Http1Error> {
        Ok(match self.checkout(addr) {
            Some(tx) => Http1Conn { tx, reused: true },
            None => Http1Conn {
                tx: Box::pin(connect_http1(addr)).await?,
                reused: false,
            },
        })
    }

    /// Sends `req` on `conn`, a connection to `addr` from [`Self::connection`],
    /// as [`Self::send`] does.
    pub async fn send_on(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut conn: Http1Conn,
        mut req: Request<Body>,
    ) -> Result<Response<ReturnOnEnd>, Http1Error> {
        loop {
            match conn.tx.try_send_request(req).await {
                Ok(rsp) => {
                    let back = (rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (Arc::downgrade(self), addr, conn.tx));
                    return Ok(rsp.map(|inner| ReturnOnEnd { inner, back }));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if conn.reused => {
                        req = unsent;
                        conn = self.connection(addr).await?;
                    }
                    _ => return Err(Http1Error::Send(error.into_error())),
                },
            }
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&addr)?;
        // Connections the app closed while idle, or idle too long, are
        // dropped here.
        let now = tokio::time::Instant::now();
        while let Some(c) = list.pop() {
            if c.tx.is_ready() && now.duration_since(c.since) < HTTP1_IDLE_TIMEOUT {
                return Some(c.tx);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, tx: http1::SendRequest<Body>) {
        let mut idle = lock(&self.idle);
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(Idle {
                tx,
                since: tokio::time::Instant::now(),
            });
        }
    }
}

/// A response body from the app that gives its connection back to the pool
/// once it has been read to the end (a body dropped before that leaves the
/// connection to close).
pub struct ReturnOnEnd {
    inner: Incoming,
    back: Option<(
        std::sync::Weak<Http1Pool>,
        SocketAddr,
        http1::SendRequest<Body>,
    )>,
}

impl std::fmt::Debug for ReturnOnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReturnOnEnd").finish_non_exhaustive()
    }
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        let Some((pool, addr, mut tx)) = self.back.take() else {
            return;
        };
        let Some(pool) = pool.upgrade() else {
            return;
        };
        // Usually hyper has made the connection ready by the time its body
        // ends; otherwise wait for it off the request's path.
        if tx.is_ready() {
            pool.put(addr, tx);
        } else {
            tokio::spawn(async move {
                if tx.ready().await.is_ok() {
                    pool.put(addr, tx);
                }
            });
        }
    }
}

impl hyper::body::Body for ReturnOnEnd {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => self.give_back(),
            std::task::Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                self.give_back();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ReturnOnEnd {
    fn drop(&mut self) {
        // An empty body may never be polled: it ended all the same.
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}

async fn connect_http1(addr: SocketAddr) -> Result<http1::SendRequest<Body>, Http1Error> {
    let tcp = crate::transport::connect_tcp(addr)
        .await
        .map_err(Http1Error::Connect)?;
    handshake_http1(tcp).await.map_err(Http1Error::Handshake)
}

/// An HTTP/1.1 client connection on `io`, driven by a task of its own, that
/// hands its socket over when a response upgrades it (101).
pub async fn handshake_http1<T>(io: T) -> Result<http1::SendRequest<Body>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (tx, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "HTTP/1.1 client connection closed with an error");
        }
    });
    Ok(tx)
}
