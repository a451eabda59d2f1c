//! Traces through a proxy pair, received by a real OTLP/gRPC receiver
//! (`weft_api::otlp`): one CLIENT span in the client's proxy and one SERVER
//! span in the server's per request, in one trace, linked parent to child,
//! W3C context continued, B3 converted, sampling obeyed, gRPC calls named
//! with their status (from the trailers too), export over TLS, and requests
//! unaffected by a dead or slow collector.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use weft_api::otlp::{ReceivedSpan, Receiver, SpanKind, StatusCode};
use weft_proxy::trace::{Sampler, TraceConfig};
use weft_tests::apps::{
    EchoMessage, GRPC_CHAT_PATH, GRPC_FAIL, SEEN_B3, SEEN_TRACEPARENT, grpc_echo, grpc_stream,
    http_echo,
};
use weft_tests::mesh::{CLIENT_ID, Pair, SERVER_ID, metrics};
use weft_tests::pki::{LeafSpec, TestCa};

const WAIT: Duration = Duration::from_secs(20);

async fn receiver() -> Receiver {
    Receiver::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
}

/// One HTTP/1.1 GET through `entry` with `headers`: the status and the
/// headers the echo app reports it saw.
async fn get(entry: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(entry).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "checkout");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = tx
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let _ = rsp.into_body().collect().await;
    (status, headers)
}

fn seen<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn of_trace<'a>(spans: &'a [ReceivedSpan], trace: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

/// The CLIENT and SERVER spans of `trace`, once both arrived.
async fn pair_of(receiver: &Receiver, trace: &str) -> (ReceivedSpan, ReceivedSpan) {
    let spans = receiver
        .wait_for(|spans| of_trace(spans, trace).len() >= 2, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:#?}", receiver.spans()));
    let spans = of_trace(&spans, trace);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans.iter().find(|s| s.kind == SpanKind::Client).unwrap();
    let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    ((*client).clone(), (*server).clone())
}

/// (trace id, parent id, sampled flag) of a `traceparent`.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent:?}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_is_a_client_span_and_a_server_span_in_one_trace() {
    let receiver = receiver().await;
    let pair = Pair::traced(
        http_echo().await,
        false,
        Some(TraceConfig::new(receiver.endpoint())),
    )
    .await;
    let (status, seen_by_app) = get(pair.entry, "/orders/7", &[]).await;
    assert_eq!(status, 200);
    let (trace, app_parent, flags) = parts(seen(&seen_by_app, SEEN_TRACEPARENT));
    assert_eq!(flags, "01");
    let (client, server) = pair_of(&receiver, &trace).await;

    assert_eq!(
        client.parent_span_id, None,
        "a new trace starts at the client's proxy"
    );
    assert_eq!(server.parent_span_id.as_deref(), Some(&*client.span_id));
    assert_eq!(
        app_parent, server.span_id,
        "the app's spans would be children of the server span"
    );
    for span in [&client, &server] {
        assert_eq!(
            span.attribute("weft.client.identity"),
            Some(CLIENT_ID),
            "{span:#?}"
        );
        assert_eq!(
            span.attribute("weft.server.identity"),
            Some(SERVER_ID),
            "{span:#?}"
        );
        assert_eq!(span.attribute("weft.mtls"), Some("true"), "{span:#?}");
        assert_eq!(span.attribute("http.request.method"), Some("GET"));
        assert_eq!(span.attribute("url.path"), Some("/orders/7"));
        assert_eq!(span.attribute("http.response.status_code"), Some("200"));
        assert_eq!(span.status, StatusCode::Unset);
        assert_eq!(span.service_name, "weft-proxy");
        assert!(span.end_unix_ns >= span.start_unix_ns);
    }
    assert_eq!(client.attribute("weft.direction"), Some("outbound"));
    assert_eq!(server.attribute("weft.direction"), Some("inbound"));
    assert_eq!(client.attribute("weft.backend"), Some("checkout"));
    assert_eq!(
        client.attribute("weft.endpoint"),
        Some(&*pair.server.inbound_addr.to_string())
    );
    assert!(
        client.start_unix_ns <= server.start_unix_ns && server.end_unix_ns <= client.end_unix_ns,
        "the server span lies within the client span: {client:#?} {server:#?}"
    );
    let text = metrics(&pair.client).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("weft_proxy_spans_exported_total ")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_context_is_continued_and_b3_is_converted() {
    let receiver = receiver().await;
    let pair = Pair::traced(
        http_echo().await,
        false,
        Some(TraceConfig::new(receiver.endpoint())),
    )
    .await;

    // W3C, sampled: the trace continues under the caller's span.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    let (status, app) = get(
        pair.entry,
        "/",
        &[("traceparent", &incoming), ("tracestate", "vendor=opaque")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(parts(seen(&app, SEEN_TRACEPARENT)).0, trace);
    let (client, server) = pair_of(&receiver, trace).await;
    assert_eq!(client.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(server.parent_span_id.as_deref(), Some(&*client.span_id));

    // W3C, not sampled: no span, the decision passed on.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let (_, app) = get(
        pair.entry,
        "/",
        &[(
            "traceparent",
            &format!("00-{unsampled}-b7ad6b7169203331-00"),
        )],
    )
    .await;
    let (t, _, flags) = parts(seen(&app, SEEN_TRACEPARENT));
    assert_eq!((t.as_str(), flags.as_str()), (unsampled, "00"));

    // B3 single, then B3 multi: converted to traceparent, the B3 headers gone.
    let single = "80f198ee56343ba864fe8b2a57d3eff7";
    let (_, app) = get(
        pair.entry,
        "/",
        &[("b3", &format!("{single}-e457b5a2e4d86bd1-1"))],
    )
    .await;
    assert_eq!(parts(seen(&app, SEEN_TRACEPARENT)).0, single);
    assert_eq!(seen(&app, SEEN_B3), "", "the app sees traceparent, not b3");
    let (client, _) = pair_of(&receiver, single).await;
    assert_eq!(client.parent_span_id.as_deref(), Some("e457b5a2e4d86bd1"));

    let multi = "463ac35c9f6413ad";
    let (_, app) = get(
        pair.entry,
        "/",
        &[
            ("x-b3-traceid", multi),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let padded = format!("0000000000000000{multi}");
    assert_eq!(parts(seen(&app, SEEN_TRACEPARENT)).0, padded);
    assert_eq!(seen(&app, SEEN_B3), "");
    let (client, _) = pair_of(&receiver, &padded).await;
    assert_eq!(client.parent_span_id.as_deref(), Some("a2fb4a1d1a96d312"));

    // Every span that arrived is of the sampled traces: none of the unsampled one.
    let spans = receiver.spans();
    assert!(of_trace(&spans, unsampled).is_empty(), "{spans:#?}");
    assert_eq!(spans.len(), 6, "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_ratio_samples_no_new_trace_and_tracing_off_touches_nothing() {
    let receiver = receiver().await;
    let mut config = TraceConfig::new(receiver.endpoint());
    config.sampler = Sampler {
        parent_based: true,
        ratio: 0.0,
    };
    let pair = Pair::traced(http_echo().await, false, Some(config)).await;
    let mut unsampled = Vec::new();
    for _ in 0..20 {
        let (status, app) = get(pair.entry, "/", &[]).await;
        assert_eq!(status, 200);
        let (trace, _, flags) = parts(seen(&app, SEEN_TRACEPARENT));
        assert_eq!(flags, "00", "a new trace is not sampled, and says so");
        unsampled.push(trace);
    }
    // A sampled caller is followed (parent-based): its spans arrive, and
    // they are the only ones.
    let marker = "5b8aa5a2d2c872e8321cf37308d69df2";
    get(
        pair.entry,
        "/",
        &[("traceparent", &format!("00-{marker}-051581bf3cb55c13-01"))],
    )
    .await;
    pair_of(&receiver, marker).await;
    let spans = receiver.spans();
    assert!(spans.iter().all(|s| s.trace_id == marker), "{spans:#?}");

    // Tracing off: the app gets no traceparent the client did not send.
    let plain = Pair::new(http_echo().await, false).await;
    let (status, app) = get(plain.entry, "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(seen(&app, SEEN_TRACEPARENT), "");
    let text = metrics(&plain.client).await;
    assert!(
        text.lines()
            .any(|l| l == "weft_proxy_spans_exported_total 0"),
        "{text}"
    );
}

/// `requests` GETs from 16 concurrent keep-alive clients: how many got 200.
async fn load(entry: SocketAddr, requests: u64) -> u64 {
    let ok = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (ok, next) = (ok.clone(), next.clone());
        tasks.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(entry).await.unwrap();
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let req = http::Request::get("/")
                    .header("host", "checkout")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                if let Ok(rsp) = tx.send_request(req).await
                    && rsp.status() == 200
                    && rsp.into_body().collect().await.is_ok()
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    ok.load(Ordering::Relaxed)
}

/// Waits for `series` (a selector, `weft_tests::mesh::sample`) to show a value above zero on `proxy`'s `/metrics`.
async fn wait_positive(proxy: &weft_proxy::ProxyHandle, series: &str) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = metrics(proxy).await;
        let value = weft_tests::mesh::sample(&text, series);
        if let Some(v) = value.filter(|v| *v > 0.0) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never went above 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_slow_collector_fails_no_request_and_the_lost_spans_are_counted() {
    const REQUESTS: u64 = 2_000;
    let dropped = "weft_proxy_spans_dropped_total{reason=\"export_failed\"}";

    // Dead: the receiver stopped before the first export.
    let dead = receiver().await;
    let endpoint = dead.endpoint();
    dead.stop();
    drop(dead);
    let pair = Pair::traced(http_echo().await, false, Some(TraceConfig::new(endpoint))).await;
    assert_eq!(
        load(pair.entry, REQUESTS).await,
        REQUESTS,
        "every request succeeds"
    );
    let lost = wait_positive(&pair.client, dropped).await;
    eprintln!(
        "dead collector: {REQUESTS}/{REQUESTS} requests ok, {lost} client-side spans dropped"
    );

    // Slow: every export answered after the export timeout.
    let slow = receiver().await;
    slow.set_delay(Duration::from_secs(30));
    let pair = Pair::traced(
        http_echo().await,
        false,
        Some(TraceConfig::new(slow.endpoint())),
    )
    .await;
    assert_eq!(
        load(pair.entry, REQUESTS).await,
        REQUESTS,
        "every request succeeds"
    );
    let lost = wait_positive(&pair.server, dropped).await;
    eprintln!(
        "slow collector: {REQUESTS}/{REQUESTS} requests ok, {lost} server-side spans dropped"
    );
}

/// One chat on `channel` in the trace `trace`: `messages` sent one at a time,
/// each reply awaited, then the client's side closed. The gRPC status the
/// call ended with.
async fn chat(
    channel: &tonic::transport::Channel,
    path: &'static str,
    trace: &str,
    messages: &[&[u8]],
) -> tonic::Code {
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoMessage>(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-b9c7c989f97918e1-01").parse().unwrap(),
    );
    let mut replies = match grpc_stream(channel.clone(), path, request).await {
        Ok(replies) => replies,
        Err(status) => return status.code(),
    };
    for (seq, data) in messages.iter().enumerate() {
        let sent = EchoMessage {
            seq: seq as u64,
            data: data.to_vec(),
        };
        tx.send(sent.clone()).await.unwrap();
        match replies.next().await {
            Some(Ok(reply)) => assert_eq!(reply, sent),
            Some(Err(status)) => return status.code(),
            None => panic!("the stream ended before the reply to {seq}"),
        }
    }
    drop(tx);
    match replies.next().await {
        None => tonic::Code::Ok,
        Some(Err(status)) => status.code(),
        Some(Ok(extra)) => panic!("an unasked-for reply: {extra:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_rpc_spans_with_the_status_of_their_trailers() {
    let receiver = receiver().await;
    let pair = Pair::traced(
        grpc_echo().await,
        false,
        Some(TraceConfig::new(receiver.endpoint())),
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", pair.entry))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // OK and INTERNAL come in trailers after the replies; UNIMPLEMENTED is a
    // trailers-only response (the status in the head).
    let ok = "0af7651916cd43dd8448eb211c800001";
    let internal = "0af7651916cd43dd8448eb211c800002";
    let unimplemented = "0af7651916cd43dd8448eb211c800003";
    assert_eq!(
        chat(&channel, GRPC_CHAT_PATH, ok, &[b"a", b"b"]).await,
        tonic::Code::Ok
    );
    assert_eq!(
        chat(&channel, GRPC_CHAT_PATH, internal, &[b"a", GRPC_FAIL]).await,
        tonic::Code::Internal
    );
    assert_eq!(
        chat(&channel, "/weft.test.Echo/Nope", unimplemented, &[b"a"]).await,
        tonic::Code::Unimplemented
    );
    for (trace, method, code, status) in [
        (ok, "Chat", "0", StatusCode::Unset),
        (internal, "Chat", "13", StatusCode::Error),
        (unimplemented, "Nope", "12", StatusCode::Error),
    ] {
        let (client, server) = pair_of(&receiver, trace).await;
        for span in [&client, &server] {
            assert_eq!(span.name, format!("weft.test.Echo/{method}"), "{span:#?}");
            assert_eq!(span.attribute("rpc.system"), Some("grpc"), "{span:#?}");
            assert_eq!(span.attribute("rpc.service"), Some("weft.test.Echo"));
            assert_eq!(span.attribute("rpc.method"), Some(method));
            assert_eq!(
                span.attribute("rpc.grpc.status_code"),
                Some(code),
                "{span:#?}"
            );
            assert_eq!(span.attribute("http.response.status_code"), Some("200"));
            assert_eq!(span.status, status, "{span:#?}");
            if status == StatusCode::Error {
                assert_eq!(span.attribute("error.type"), Some(code), "{span:#?}");
            }
        }
        assert_eq!(server.parent_span_id.as_deref(), Some(&*client.span_id));
        assert!(
            client.start_unix_ns <= server.start_unix_ns
                && server.end_unix_ns <= client.end_unix_ns,
            "a streamed call's spans end with its trailers: {client:#?} {server:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_tls_verified_by_the_given_ca() {
    let ca = TestCa::new("collector");
    let mut spec = LeafSpec::identity("spiffe://cluster.local/ns/observability/sa/collector");
    spec.sans = vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())];
    let leaf = ca.issue_spec(&spec);
    let receiver = Receiver::start_tls(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        leaf.chain_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
    )
    .await
    .unwrap();
    assert!(receiver.endpoint().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("collector-ca.pem");
    std::fs::write(&ca_file, ca.anchors_pem()).unwrap();
    // As the proxy reads it from its environment.
    let config = TraceConfig::from_env(|var| match var {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(receiver.endpoint()),
        "OTEL_EXPORTER_OTLP_CERTIFICATE" => Some(ca_file.display().to_string()),
        _ => None,
    })
    .unwrap()
    .unwrap();
    let pair = Pair::traced(http_echo().await, false, Some(config.clone())).await;
    let (status, app) = get(pair.entry, "/over-tls", &[]).await;
    assert_eq!(status, 200);
    let (trace, _, _) = parts(seen(&app, SEEN_TRACEPARENT));
    let (client, server) = pair_of(&receiver, &trace).await;
    assert_eq!(client.attribute("url.path"), Some("/over-tls"));
    assert_eq!(server.attribute("url.path"), Some("/over-tls"));

    // Without the CA (the web PKI roots) the collector is not trusted: the
    // spans are dropped, counted, and the requests still succeed.
    let untrusted = TraceConfig {
        ca_file: None,
        ..config
    };
    let pair = Pair::traced(http_echo().await, false, Some(untrusted)).await;
    let before = receiver.spans().len();
    assert_eq!(get(pair.entry, "/", &[]).await.0, 200);
    wait_positive(
        &pair.client,
        "weft_proxy_spans_dropped_total{reason=\"export_failed\"}",
    )
    .await;
    assert_eq!(receiver.spans().len(), before, "{:#?}", receiver.spans());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_spans_without_failing_requests() {
    const REQUESTS: u64 = 2_000;
    let slow = receiver().await;
    // Every export answered 3 s late (within the 5 s export timeout): the
    // exporter is busy while the load runs, so a small queue fills, whatever
    // the machine's speed.
    slow.set_delay(Duration::from_secs(3));
    let mut config = TraceConfig::new(slow.endpoint());
    config.queue_capacity = 64;
    let pair = Pair::traced(http_echo().await, false, Some(config)).await;
    assert_eq!(
        load(pair.entry, REQUESTS).await,
        REQUESTS,
        "every request succeeds"
    );
    let lost = wait_positive(
        &pair.client,
        "weft_proxy_spans_dropped_total{reason=\"queue_full\"}",
    )
    .await;
    // The spans that were queued still arrive.
    slow.wait_for(|spans| !spans.is_empty(), WAIT)
        .await
        .unwrap();
    eprintln!("queue of 64: {REQUESTS}/{REQUESTS} requests ok, {lost} client-side spans dropped");
}
