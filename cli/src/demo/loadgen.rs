//! A steady load on the demo's entry service, as its clients would send it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the load generator saw, from its own side.
#[derive(Debug, Default)]
pub struct LoadCounts {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// Sends `GET /` to `target` at `rate` requests per second until `stop`,
/// with at most 256 requests in flight.
pub async fn run(target: SocketAddr, rate: f64, counts: Arc<LoadCounts>, stop: CancellationToken) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let in_flight = Arc::new(Semaphore::new(256));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Ok(uri) = format!("http://{target}/").parse::<http::Uri>() else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (client, uri, counts) = (client.clone(), uri.clone(), counts.clone());
        counts.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let ok = match tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await {
                Ok(Ok(rsp)) => {
                    let success = rsp.status().is_success();
                    success && rsp.into_body().collect().await.is_ok()
                }
                _ => false,
            };
            let counter = if ok { &counts.ok } else { &counts.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
