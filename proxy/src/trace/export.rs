//! The export side: an `opentelemetry-otlp` span exporter (OTLP/gRPC over
//! tonic, TLS for an `https://` collector) and the task that batches the
//! queue into it.

use std::path::Path;
use std::sync::Arc;

use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::mpsc;
use weft_api::consts::otel_env;

use super::{BATCH_INTERVAL, BATCH_MAX, EXPORT_TIMEOUT, TraceConfig, TraceError};
use crate::metrics::Metrics;

/// The PEM CA bundle at `path`, checked to hold at least one certificate;
/// the error says what is wrong.
pub(super) fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| {
        format!("cannot read the collector's CA certificates: {e}; give a readable PEM file")
    })?;
    // At least one certificate, or an error saying there is none.
    weft_api::tls::certs_from_pem(&pem, "the collector's CA file")
        .map(|_| pem)
        .map_err(|e| e.to_string())
}

/// The exporter for `config`: one attempt per batch (a failed batch is
/// dropped and counted, not retried), [`EXPORT_TIMEOUT`], and for an
/// `https://` endpoint TLS verified by the configured CA or the web PKI
/// roots.
pub(super) fn exporter(
    config: &TraceConfig,
) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
    if config.endpoint.starts_with("https://") {
        let tls = tonic::transport::ClientTlsConfig::new();
        let tls = match &config.ca_file {
            Some(path) => {
                let pem = read_ca(path).map_err(|reason| TraceError::CaFile {
                    var: otel_env::EXPORTER_OTLP_CERTIFICATE,
                    path: path.clone(),
                    reason,
                })?;
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tls.with_webpki_roots(),
        };
        builder = builder.with_tls_config(tls);
    }
    let mut exporter = builder.build().map_err(|e| TraceError::Exporter {
        endpoint: config.endpoint.clone(),
        reason: e.to_string(),
    })?;
    exporter.set_resource(&super::resource(config));
    Ok(exporter)
}

/// Batches queued spans and exports them: at most [`BATCH_MAX`] spans, or
/// what came within [`BATCH_INTERVAL`] of a batch's first span. A batch that
/// cannot be exported within [`EXPORT_TIMEOUT`] is dropped (counted), so a
/// slow or dead collector only loses spans.
pub(super) async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    metrics: Arc<Metrics>,
    endpoint: String,
) {
    let mut failures = 0u64;
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH_MAX);
    loop {
        match rx.recv().await {
            Some(span) => batch.push(span),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
        while batch.len() < BATCH_MAX {
            let room = BATCH_MAX - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_MAX));
        let n = spans.len() as u64;
        let error = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
            Ok(Ok(())) => {
                metrics.spans_exported(n);
                continue;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} s", EXPORT_TIMEOUT.as_secs()),
        };
        metrics.spans_dropped("export_failed", n);
        failures += 1;
        // The first failure and then ever more rarely: a dead collector
        // does not flood the log.
        if failures.is_power_of_two() {
            tracing::warn!(%endpoint, spans = n, %error, failures,
                "could not export spans to the collector; dropped them");
        }
    }
}
