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

use super::service::{Counted, Subscribe, watch_stream};
use crate::grpc::ConnInfo;
use crate::metrics::Metrics;

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
    ) -> Result<(InboundRequest, watch::Receiver<Arc<InboundPolicy>>), Status> {
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
        let receiver = self
            .index
            .subscribe_inbound(&request)
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok((request, receiver))
    }
}

/// The stream of one `Watch` call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::InboundPolicy, Status>> + Send>>;

/// The port's policy at once, then each new one.
fn policies(
    receiver: watch::Receiver<Arc<InboundPolicy>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> WatchStream {
    let counted = Counted::new(
        metrics,
        Metrics::inbound_subscribed,
        Metrics::inbound_policy_sent,
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
            Ok((request, receiver)) => {
                tracing::debug!(peer = ?remote, workload = %request.workload, port = request.port, "inbound policy stream opened");
                Ok(Response::new(policies(
                    receiver,
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
