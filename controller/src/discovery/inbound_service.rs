//! `weft.v1.Inbound`: streams a workload port's inbound policy to its proxy.
//!
//! The caller must present a mesh client certificate whose identity is the
//! workload's own (the service account of the pod `<namespace>/<pod name>`
//! names): a proxy learns only its own workload's policy. A workload the
//! index does not know (yet) is answered `NotFound`, which the proxy asks
//! again with backoff. Otherwise the stream sends the port's current policy
//! at once, then every change, until the caller goes away.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use weft_api::Identity;
use weft_api::policy::{InboundPolicy, InboundRequest};
use weft_api::proto::weft_v1 as pb;

use super::ChangedAt;
use super::service::{Counted, Subscribe, watch_stream};
use crate::grpc::ConnInfo;
use crate::metrics::{Metrics, PushStream};

/// The `weft.v1.Inbound` service.
pub struct InboundService {
    index: Arc<dyn Subscribe>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl InboundService {
    /// Streams end when `stop` is cancelled (the controller shuts down).
    pub fn new(index: Arc<dyn Subscribe>, metrics: Arc<Metrics>, stop: CancellationToken) -> Self {
        Self {
            index,
            metrics,
            stop,
        }
    }

    /// Checks the caller and the request; the receiver of the port's policies.
    fn open(
        &self,
        presented: Option<&Identity>,
        request: pb::InboundRequest,
    ) -> Result<
        (
            InboundRequest,
            watch::Receiver<Arc<InboundPolicy>>,
            ChangedAt,
        ),
        Status,
    > {
        let Some(presented) = presented else {
            return Err(Status::unauthenticated(
                "Inbound.Watch needs a mesh client certificate; get one from Identity.Certify \
                 first and connect with it",
            ));
        };
        let request = InboundRequest::try_from(request)
            .map_err(|e| Status::invalid_argument(format!("invalid InboundRequest: {e}")))?;
        let owner = self
            .index
            .workload_identity(&request.workload)
            .map_err(|e| Status::not_found(e.to_string()))?;
        if &owner != presented {
            return Err(Status::permission_denied(format!(
                "workload {} runs as {owner}, not as the identity of the client certificate \
                 ({presented}); a proxy may only watch its own workload's policy",
                request.workload
            )));
        }
        let (receiver, changed_at) = self
            .index
            .subscribe_inbound_timed(&request)
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok((request, receiver, changed_at))
    }
}

/// The stream of one `Watch` call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::InboundPolicy, Status>> + Send>>;

/// The port's policy at once, then each new one.
fn policies(
    receiver: watch::Receiver<Arc<InboundPolicy>>,
    changed_at: ChangedAt,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> WatchStream {
    let counted = Counted::new(
        metrics,
        Metrics::inbound_subscribed,
        Metrics::inbound_policy_sent,
        PushStream::Inbound,
        changed_at,
    );
    watch_stream(receiver, counted, stop, |p| pb::InboundPolicy::from(p))
}

#[tonic::async_trait]
impl pb::inbound_server::Inbound for InboundService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::InboundRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let presented = conn.as_ref().and_then(|c| c.identity.clone());
        let remote = conn.map(|c| c.remote);
        match self.open(presented.as_ref(), request.into_inner()) {
            Ok((request, receiver, changed_at)) => {
                tracing::debug!(peer = ?remote, workload = %request.workload, port = request.port, "inbound policy stream opened");
                Ok(Response::new(policies(
                    receiver,
                    changed_at,
                    self.metrics.clone(),
                    self.stop.clone(),
                )))
            }
            Err(status) => {
                tracing::debug!(peer = ?remote, code = ?status.code(), message = status.message(), "inbound policy request refused");
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::discovery::service::tests::{from, push_latency};
    use crate::discovery::{IndexSettings, Resource, SharedIndex};

    fn namespace(mode: &str) -> Resource {
        Resource::Namespace(from(json!({
            "metadata": { "name": "shop",
                          "annotations": { "config.weft.io/default-inbound-policy": mode } },
        })))
    }

    #[tokio::test(start_paused = true)]
    async fn an_index_change_pushed_to_a_workload_is_timed() {
        let stop = CancellationToken::new();
        let index = SharedIndex::new(IndexSettings::default(), stop.clone());
        index.apply(Resource::Pod(from(json!({
            "metadata": { "namespace": "shop", "name": "checkout-a" },
            "spec": { "serviceAccountName": "checkout", "containers": [{
                "name": "app", "ports": [{ "containerPort": 8080 }] }] },
            "status": { "podIP": "10.0.0.1", "podIPs": [{ "ip": "10.0.0.1" }] },
        }))));
        index.apply(namespace("allow-all"));
        index.publish_now();
        let request = InboundRequest {
            workload: "shop/checkout-a".into(),
            port: 8080,
        };
        let (rx, changed_at) = index.subscribe_inbound_timed(&request).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut stream = policies(rx, changed_at, metrics.clone(), stop.clone());
        stream.next().await.unwrap().unwrap();
        assert_eq!(push_latency(&metrics, "inbound").0, 0);

        index.apply(namespace("deny"));
        stream.next().await.unwrap().unwrap();
        let (count, sum) = push_latency(&metrics, "inbound");
        assert_eq!(count, 1);
        assert!(
            (SharedIndex::DEBOUNCE.as_secs_f64()..0.1).contains(&sum),
            "{sum}"
        );
        assert_eq!(push_latency(&metrics, "discovery").0, 0);
        stop.cancel();
    }
}
