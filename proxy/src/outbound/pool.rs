//! One multiplexed HTTP/2 connection per peer, shared by every request to it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::http::Body;

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

/// A poisoned lock only means another request panicked while holding it; the
/// pool's state is a plain value that is valid at every point.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
