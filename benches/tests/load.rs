//! The load generator against real servers on 127.0.0.1: it keeps its rate,
//! and a server that stalls shows up in the latency (coordinated omission is
//! corrected), not hidden by the generator waiting for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_benches::backend;
use weft_benches::client::Protocol;
use weft_benches::load::{self, LoadSpec, Mode};

async fn fast_backend() -> SocketAddr {
    backend::spawn_on_loopback().await.expect("backend")
}

/// A server that answers every request after `delay`.
async fn slow_backend(delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"slow\n",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn spec(addr: SocketAddr, protocol: Protocol, mode: Mode, connections: usize) -> LoadSpec {
    LoadSpec {
        addr,
        protocol,
        mode,
        connections,
        warmup_ms: 100,
        duration_ms: 1_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_its_rate_on_both_protocols() {
    let addr = fast_backend().await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let r = load::run(&spec(addr, protocol, Mode::Rate(500), 8)).await;
        assert_eq!(r.errors, 0, "{protocol:?}: {r:?}");
        // 500/s for 1 s recorded: allow for scheduling slack at the edges.
        assert!((450..=550).contains(&r.requests), "{protocol:?}: {r:?}");
        assert!(
            r.completed >= r.requests + 40,
            "warm-up counted in completed: {r:?}"
        );
        let l = r.latency_us;
        assert!(l.p50 > 0.0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_sends_as_fast_as_answers_come() {
    let addr = fast_backend().await;
    let r = load::run(&spec(addr, Protocol::Http1, Mode::Max, 4)).await;
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.rps > 500.0, "a local backend answers far faster: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_server_is_charged_for_the_queue_it_causes() {
    // One connection asked for 100 req/s (every 10 ms) against a server that
    // takes 50 ms: requests queue behind each other. Measured from the
    // intended send time, latency grows far past the 50 ms service time.
    let addr = slow_backend(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let r = load::run(&spec(addr, Protocol::Http1, Mode::Rate(100), 1)).await;
    // Bounded: 1.1 s of schedule, 2 s of drain, one request in flight.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(r.requests < 80, "the server answers only ~20/s: {r:?}");
    assert!(r.errors > 0, "what could not be sent is an error: {r:?}");
    assert!(
        r.first_error
            .as_deref()
            .is_some_and(|e| e.contains("not sent")),
        "{r:?}"
    );
    assert!(
        r.latency_us.p50 > 200_000.0,
        "queueing must show in the median: {:?}",
        r.latency_us
    );
    assert!(r.latency_us.max > 500_000.0, "{:?}", r.latency_us);
}
