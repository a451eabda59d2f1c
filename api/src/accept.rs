//! The one accept loop of the workspace: every TCP listener of the proxy, the
//! controller and the injector accepts through [`accept_loop`] (the tonic
//! servers through [`incoming`], which feeds them from it); the plain
//! HTTP/1.1 admin servers of the controller and the injector are [`serve_http1`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The first pause after an `accept` that failed for want of resources (out
/// of file descriptors, of socket buffers, of memory): the listener does not
/// spin while the process is at its limit.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// The longest pause: each failure in a row doubles the pause up to this, so a
/// process that stays at its limit tries about once a second, and accepts
/// again within about that long once descriptors free up.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A run of failures is logged when it starts and then at most this often
/// (with the count of failures in between), and its end once.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Errors of one pending connection (it was reset or aborted before it was
/// accepted, ...) are retried at once, but no more than this many in a row:
/// beyond it they are backed off like any other, so that no error spins.
const IMMEDIATE_RETRIES: u32 = 32;

/// What a failed `accept` says about the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptFailure {
    /// The pending connection failed (`ECONNABORTED`, `ECONNRESET`,
    /// `EPROTO`, network errors the kernel reports at accept, `EINTR`, ...);
    /// the next one may well succeed.
    Connection,
    /// The process or the system is out of a resource: `EMFILE` (the
    /// open-files limit), `ENFILE`, `ENOBUFS`, `ENOMEM`.
    Resources,
    /// Anything else: not expected of a listening socket.
    Other,
}

impl AcceptFailure {
    /// Classifies an error of `accept(2)`.
    pub fn of(error: &std::io::Error) -> Self {
        use nix::errno::Errno;
        use std::io::ErrorKind;
        if let Some(code) = error.raw_os_error() {
            return match Errno::from_raw(code) {
                Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => Self::Resources,
                Errno::ECONNABORTED
                | Errno::ECONNRESET
                | Errno::EPROTO
                | Errno::EPERM
                | Errno::EINTR
                | Errno::EAGAIN
                | Errno::ETIMEDOUT
                | Errno::ENETDOWN
                | Errno::ENETUNREACH
                | Errno::EHOSTDOWN
                | Errno::EHOSTUNREACH
                | Errno::ENOPROTOOPT
                | Errno::EOPNOTSUPP => Self::Connection,
                _ => Self::Other,
            };
        }
        match error.kind() {
            ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock => Self::Connection,
            ErrorKind::OutOfMemory => Self::Resources,
            _ => Self::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Resources => "out of resources",
            Self::Other => "unexpected",
        }
    }
}

/// The state of a listener's run of failed accepts: how long to pause next,
/// and when to log.
#[derive(Debug)]
struct Failures {
    /// Failures since the last accepted connection.
    count: u64,
    /// Connection failures in a row retried at once.
    immediate: u32,
    started: Option<Instant>,
    pause: Duration,
    last_logged: Option<Instant>,
    /// Failures since the last log line.
    unlogged: u64,
}

/// What to do after a failed accept.
#[derive(Debug, PartialEq, Eq)]
struct Retry {
    /// `None`: at once.
    pause: Option<Duration>,
    /// Log this failure, with this many failures left unlogged before it.
    log: Option<u64>,
}

impl Failures {
    fn new() -> Self {
        Self {
            count: 0,
            immediate: 0,
            started: None,
            pause: Duration::ZERO,
            last_logged: None,
            unlogged: 0,
        }
    }

    fn failed(&mut self, failure: AcceptFailure, now: Instant) -> Retry {
        self.count += 1;
        self.started.get_or_insert(now);
        let pause = if failure == AcceptFailure::Connection && self.immediate < IMMEDIATE_RETRIES {
            self.immediate += 1;
            None
        } else {
            self.pause = (self.pause * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
            Some(self.pause)
        };
        // A connection's own failure is retried quietly (debug); only a run
        // that backs off is worth a warning, once per interval.
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL);
        let log = if pause.is_some() && due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        };
        Retry { pause, log }
    }

    /// A connection was accepted: the run (if any) ends. Returns how many
    /// failures it had and how long it lasted, when it backed off.
    fn accepted(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let run = self.started.map(|at| (self.count, now.duration_since(at)));
        let backed_off = self.pause > Duration::ZERO;
        *self = Self::new();
        run.filter(|_| backed_off)
    }
}

/// Accepts connections on `listener` until `shutdown`, handing each to
/// `handle` in a task that `tracker` waits for at drain. A listener never stops
/// by itself: an `accept` that fails for want of resources (out of file
/// descriptors: `EMFILE`, ...) or for a reason not expected pauses the loop,
/// from [`ACCEPT_BACKOFF_MIN`] doubling to [`ACCEPT_BACKOFF_MAX`] while the
/// failures last, so that a process at its open-files limit does not spin and
/// keeps serving the connections it has; the failure of one pending connection
/// (`ECONNABORTED`, ...) is retried at once. A run of failures is logged as it
/// starts, then at most every [`ACCEPT_ERROR_LOG_INTERVAL`], and when accepting
/// succeeds again.
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
    let mut failures = Failures::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, client)) => {
                if let Some((count, lasted)) = failures.accepted(Instant::now()) {
                    tracing::info!(
                        listener = what,
                        failures = count,
                        failing_for_ms = u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
                        "accepting connections again"
                    );
                }
                tracker.spawn(handle(tcp, client));
            }
            Err(error) => {
                let failure = AcceptFailure::of(&error);
                let retry = failures.failed(failure, Instant::now());
                match (retry.pause, retry.log) {
                    (Some(pause), Some(unlogged)) => tracing::warn!(
                        listener = what,
                        %error,
                        kind = failure.label(),
                        failures = failures.count,
                        unlogged,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        "failed to accept a connection; backing off"
                    ),
                    (None, _) => tracing::debug!(
                        listener = what,
                        %error,
                        "a pending connection failed before it was accepted; retrying"
                    ),
                    (Some(_), None) => {}
                }
                if let Some(pause) = retry.pause {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

/// The connections of `listener`, accepted by [`accept_loop`] and made ready
/// by `prepare` (a TLS handshake, ...; `None` drops the connection) in their
/// own tasks, as a stream for `tonic`'s `serve_with_incoming`: tonic's own
/// accept loop retries a failed accept at once (it would spin out of file
/// descriptors). Accepting stops at `shutdown` or when the stream is dropped.
pub fn incoming<F, Fut, IO>(
    listener: TcpListener,
    what: &'static str,
    shutdown: CancellationToken,
    mut prepare: F,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<IO>>
where
    F: FnMut(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
    IO: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let served = tx.clone();
    let accepting = accept_loop(
        listener,
        what,
        shutdown,
        TaskTracker::new(),
        move |tcp, peer| {
            let ready = prepare(tcp, peer);
            let tx = tx.clone();
            async move {
                if let Some(io) = ready.await {
                    let _ = tx.send(Ok(io)).await;
                }
            }
        },
    );
    tokio::spawn(async move {
        tokio::select! {
            () = accepting => {}
            () = served.closed() => {}
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
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
    fn os(errno: nix::errno::Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno as i32)
    }

    #[test]
    fn running_out_of_descriptors_is_a_lack_of_resources_and_an_aborted_connection_is_not() {
        use nix::errno::Errno;
        for errno in [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM] {
            assert_eq!(
                AcceptFailure::of(&os(errno)),
                AcceptFailure::Resources,
                "{errno}"
            );
        }
        for errno in [
            Errno::ECONNABORTED,
            Errno::ECONNRESET,
            Errno::EPROTO,
            Errno::EINTR,
        ] {
            assert_eq!(
                AcceptFailure::of(&os(errno)),
                AcceptFailure::Connection,
                "{errno}"
            );
        }
        assert_eq!(AcceptFailure::of(&os(Errno::EBADF)), AcceptFailure::Other);
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(AcceptFailure::of(&aborted), AcceptFailure::Connection);
    }

    #[test]
    fn the_pause_doubles_to_the_maximum_and_the_log_is_rate_limited() {
        let start = Instant::now();
        let mut failures = Failures::new();
        let first = failures.failed(AcceptFailure::Resources, start);
        assert_eq!(
            first,
            Retry {
                pause: Some(ACCEPT_BACKOFF_MIN),
                log: Some(0)
            }
        );
        let mut pauses = vec![ACCEPT_BACKOFF_MIN];
        let mut logged = 1;
        // Ten seconds of failures, one every 100 ms.
        for i in 1..100 {
            let retry = failures.failed(
                AcceptFailure::Resources,
                start + Duration::from_millis(100 * i),
            );
            pauses.push(retry.pause.expect("backs off"));
            if let Some(unlogged) = retry.log {
                logged += 1;
                assert_eq!(unlogged, 49, "the line counts the failures not logged");
            }
        }
        assert_eq!(
            &pauses[..6],
            [50, 100, 200, 400, 800, 1000].map(Duration::from_millis)
        );
        assert!(pauses[6..].iter().all(|&p| p == ACCEPT_BACKOFF_MAX));
        assert_eq!(logged, 2, "at 0 s and 5 s");
        let (count, lasted) = failures
            .accepted(start + Duration::from_secs(10))
            .expect("the run is reported");
        assert_eq!((count, lasted), (100, Duration::from_secs(10)));
        // A new run starts from the shortest pause again.
        let retry = failures.failed(AcceptFailure::Resources, start + Duration::from_secs(11));
        assert_eq!(
            retry,
            Retry {
                pause: Some(ACCEPT_BACKOFF_MIN),
                log: Some(0)
            }
        );
    }

    #[test]
    fn a_failed_pending_connection_is_retried_at_once_but_not_forever() {
        let now = Instant::now();
        let mut failures = Failures::new();
        for _ in 0..IMMEDIATE_RETRIES {
            let retry = failures.failed(AcceptFailure::Connection, now);
            assert_eq!(
                retry,
                Retry {
                    pause: None,
                    log: None
                }
            );
        }
        let retry = failures.failed(AcceptFailure::Connection, now);
        assert_eq!(
            retry.pause,
            Some(ACCEPT_BACKOFF_MIN),
            "a run of them backs off"
        );
        assert!(failures.accepted(now).is_some());
        failures.failed(AcceptFailure::Connection, now);
        assert!(
            failures.accepted(now).is_none(),
            "nothing to report: no pause"
        );
    }

    #[tokio::test]
    async fn incoming_feeds_prepared_connections_and_stops_when_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let mut stream = incoming(listener, "test", shutdown.clone(), |tcp, peer| async move {
            Some((tcp, peer))
        });
        let client = TcpStream::connect(addr).await.expect("connect");
        let (_, peer) = tokio_stream::StreamExt::next(&mut stream)
            .await
            .expect("a connection")
            .expect("accepted");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        drop(stream);
        // The listener closes: connecting is refused, eventually.
        let refused = async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("the listener closes once the stream is dropped");
    }
}
