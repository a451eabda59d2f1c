//! The one accept loop of the workspace: every TCP listener of the proxy, the
//! controller and the injector accepts through [`accept_loop`]; the plain
//! HTTP/1.1 admin servers of the controller and the injector are [`serve_http1`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after a failed `accept` (out of file descriptors, ...), so that a
/// listener under descriptor pressure does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `shutdown`, handing each to
/// `handle` in a task that `tracker` waits for at drain. An accept error (out of
/// file descriptors, ...) is logged and retried after a pause: a listener never
/// stops by itself.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, client) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(listener = what, %error, "failed to accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        tracker.spawn(handle(tcp, client));
    }
}

/// Serves plain HTTP/1.1 on `listener` through [`accept_loop`], answering each
/// request with `handle` (a whole response, computed at once: admin endpoints).
pub async fn serve_http1<H>(
    listener: TcpListener,
    what: &'static str,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handle: Arc<H>,
) where
    H: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    accept_loop(listener, what, shutdown, tracker, move |tcp, _| {
        let handle = handle.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let response = handle(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_each_connection_to_the_handler_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let serving = tokio::spawn(accept_loop(
            listener,
            "test",
            shutdown.clone(),
            tracker.clone(),
            move |_tcp, peer| {
                let seen_tx = seen_tx.clone();
                async move {
                    let _ = seen_tx.send(peer);
                }
            },
        ));
        let client = TcpStream::connect(addr).await.expect("connect");
        let peer = seen_rx.recv().await.expect("the handler ran");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        shutdown.cancel();
        serving.await.expect("the loop ends on shutdown");
        tracker.close();
        tracker.wait().await;
    }
}
