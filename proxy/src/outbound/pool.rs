//! One multiplexed HTTP/2 connection per peer, shared by every request to it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::Body;

type Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;

/// A cache of HTTP/2 connections keyed by peer. Concurrent requests to a peer
/// with no connection wait for a single connection attempt.
#[derive(Debug)]
pub struct H2Pool<K> {
    slots: Mutex<HashMap<K, Slot>>,
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
    pub async fn get<F, Fut, E>(&self, key: &K, connect: F) -> Result<http2::SendRequest<Body>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<http2::SendRequest<Body>, E>>,
    {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        let mut current = slot.lock().await;
        if let Some(tx) = current.as_ref()
            && !tx.is_closed()
        {
            return Ok(tx.clone());
        }
        let tx = connect().await?;
        *current = Some(tx.clone());
        Ok(tx)
    }
}

/// Starts an HTTP/2 client connection on `io` and drives it in the background.
pub async fn handshake<I>(io: I) -> Result<http2::SendRequest<Body>, hyper::Error>
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
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "HTTP/2 client connection closed with an error");
        }
    });
    Ok(tx)
}
