//! `weft.v1.Discovery`: streams a target's snapshots to a proxy.
//!
//! The caller must present a mesh client certificate, and the
//! `caller_identity` it sends must be that certificate's identity (a proxy
//! asks as itself; the identity decides which namespace a short service name
//! is resolved in). A target the mesh does not know (an `ip:port` that is no
//! Service and no pod) is answered `NotFound`: the proxy passes that
//! destination through untouched. Otherwise the stream sends the current
//! snapshot at once, then every new one, until the caller goes away.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use weft_api::Identity;
use weft_api::policy::{DestinationState, DiscoveryRequest, InboundPolicy, InboundRequest, Target};

use super::{ChangedAt, UnknownWorkload};
use weft_api::proto::weft_v1 as pb;

use crate::grpc::ConnInfo;
use crate::metrics::{Metrics, PushStream};

/// Where the service gets a target's snapshots: the controller's index.
pub trait Subscribe: Send + Sync + 'static {
    /// The target's snapshots, as seen by `caller`; `None`: the target is not
    /// in the mesh.
    fn subscribe(
        &self,
        target: &Target,
        caller: &Identity,
    ) -> Option<watch::Receiver<Arc<DestinationState>>>;

    /// As [`Subscribe::subscribe`], with when the change behind each update
    /// reached the index (push latency). By default, never known.
    fn subscribe_timed(
        &self,
        target: &Target,
        caller: &Identity,
    ) -> Option<(watch::Receiver<Arc<DestinationState>>, ChangedAt)> {
        self.subscribe(target, caller)
            .map(|rx| (rx, ChangedAt::default()))
    }

    /// As [`Subscribe::subscribe_inbound`], with when the change behind each
    /// update reached the index. By default, never known.
    fn subscribe_inbound_timed(
        &self,
        request: &InboundRequest,
    ) -> Result<(watch::Receiver<Arc<InboundPolicy>>, ChangedAt), UnknownWorkload> {
        self.subscribe_inbound(request)
            .map(|rx| (rx, ChangedAt::default()))
    }

    /// A workload port's inbound policies (`Inbound.Watch`). Without an
    /// inbound index, no workload is known.
    fn subscribe_inbound(
        &self,
        request: &InboundRequest,
    ) -> Result<watch::Receiver<Arc<InboundPolicy>>, UnknownWorkload> {
        Err(UnknownWorkload {
            workload: request.workload.clone(),
        })
    }

    /// The identity of a workload's pod (its service account).
    fn workload_identity(&self, workload: &str) -> Result<Identity, UnknownWorkload> {
        Err(UnknownWorkload {
            workload: workload.to_owned(),
        })
    }
}

impl Subscribe for super::SharedIndex {
    fn subscribe(
        &self,
        target: &Target,
        caller: &Identity,
    ) -> Option<watch::Receiver<Arc<DestinationState>>> {
        super::SharedIndex::subscribe(self, target, caller).ok()
    }

    fn subscribe_timed(
        &self,
        target: &Target,
        caller: &Identity,
    ) -> Option<(watch::Receiver<Arc<DestinationState>>, ChangedAt)> {
        super::SharedIndex::subscribe_timed(self, target, caller).ok()
    }

    fn subscribe_inbound_timed(
        &self,
        request: &InboundRequest,
    ) -> Result<(watch::Receiver<Arc<InboundPolicy>>, ChangedAt), UnknownWorkload> {
        super::SharedIndex::subscribe_inbound_timed(self, request)
    }

    fn subscribe_inbound(
        &self,
        request: &InboundRequest,
    ) -> Result<watch::Receiver<Arc<InboundPolicy>>, UnknownWorkload> {
        super::SharedIndex::subscribe_inbound(self, request)
    }

    fn workload_identity(&self, workload: &str) -> Result<Identity, UnknownWorkload> {
        super::SharedIndex::workload_identity(self, workload)
    }
}

/// The `weft.v1.Discovery` service.
pub struct DiscoveryService {
    index: Arc<dyn Subscribe>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl DiscoveryService {
    /// Streams end when `stop` is cancelled (the controller shuts down).
    pub fn new(index: Arc<dyn Subscribe>, metrics: Arc<Metrics>, stop: CancellationToken) -> Self {
        Self {
            index,
            metrics,
            stop,
        }
    }

    /// Checks the caller and the request; the receiver of the target's snapshots.
    fn open(
        &self,
        presented: Option<&Identity>,
        request: pb::DiscoveryRequest,
    ) -> Result<
        (
            DiscoveryRequest,
            watch::Receiver<Arc<DestinationState>>,
            ChangedAt,
        ),
        Status,
    > {
        let Some(presented) = presented else {
            return Err(Status::unauthenticated(
                "Discovery.Watch needs a mesh client certificate; get one from Identity.Certify \
                 first and connect with it",
            ));
        };
        let request = DiscoveryRequest::try_from(request)
            .map_err(|e| Status::invalid_argument(format!("invalid DiscoveryRequest: {e}")))?;
        if &request.caller != presented {
            return Err(Status::permission_denied(format!(
                "caller_identity {} is not the identity of the client certificate ({presented}); \
                 ask as the identity you present",
                request.caller
            )));
        }
        let (receiver, changed_at) = self
            .index
            .subscribe_timed(&request.target, &request.caller)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{} is not in the mesh (no Service and no pod has that address); pass it \
                     through",
                    request.target
                ))
            })?;
        Ok((request, receiver, changed_at))
    }
}

/// The stream of one `Watch` call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::DestinationState, Status>> + Send>>;

/// Counts a stream in its subscribers gauge while it lives, each message it
/// sends, and the push latency of each update (`Discovery.Watch`'s or
/// `Inbound.Watch`'s metrics).
pub(crate) struct Counted {
    metrics: Arc<Metrics>,
    subscribed: fn(&Metrics, i64),
    sent: fn(&Metrics),
    stream: PushStream,
    changed_at: ChangedAt,
}

impl Counted {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        subscribed: fn(&Metrics, i64),
        sent: fn(&Metrics),
        stream: PushStream,
        changed_at: ChangedAt,
    ) -> Self {
        subscribed(&metrics, 1);
        Self {
            metrics,
            subscribed,
            sent,
            stream,
            changed_at,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.subscribed)(&self.metrics, -1);
    }
}

/// The stream of a `watch`: the current value at once, then each new one
/// (as `to_wire` makes it); ends when the sender goes or `stop` is cancelled.
pub(crate) fn watch_stream<T, W>(
    receiver: watch::Receiver<Arc<T>>,
    counted: Counted,
    stop: CancellationToken,
    to_wire: fn(&T) -> W,
) -> Pin<Box<dyn Stream<Item = Result<W, Status>> + Send>>
where
    T: Send + Sync + 'static,
    W: Send + 'static,
{
    Box::pin(futures::stream::unfold(
        (receiver, true, counted),
        move |(mut receiver, first, counted)| {
            let stop = stop.clone();
            async move {
                if !first {
                    tokio::select! {
                        changed = receiver.changed() => changed.ok()?,
                        () = stop.cancelled() => return None,
                    }
                }
                let value = receiver.borrow_and_update().clone();
                let message = to_wire(&value);
                (counted.sent)(&counted.metrics);
                // The first message is the state at subscription, not a push.
                if !first && let Some(at) = counted.changed_at.get() {
                    counted.metrics.pushed(counted.stream, at.elapsed());
                }
                Some((Ok(message), (receiver, false, counted)))
            }
        },
    ))
}

/// The current snapshot at once, then each new one; ends when the index drops
/// the target.
fn snapshots(
    receiver: watch::Receiver<Arc<DestinationState>>,
    changed_at: ChangedAt,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> WatchStream {
    let counted = Counted::new(
        metrics,
        Metrics::discovery_subscribed,
        Metrics::discovery_snapshot_sent,
        PushStream::Discovery,
        changed_at,
    );
    watch_stream(receiver, counted, stop, |s| pb::DestinationState::from(s))
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::DiscoveryRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let presented = conn.as_ref().and_then(|c| c.identity.clone());
        let remote = conn.map(|c| c.remote);
        match self.open(presented.as_ref(), request.into_inner()) {
            Ok((request, receiver, changed_at)) => {
                tracing::debug!(peer = ?remote, caller = %request.caller, target = %request.target, "discovery stream opened");
                Ok(Response::new(snapshots(
                    receiver,
                    changed_at,
                    self.metrics.clone(),
                    self.stop.clone(),
                )))
            }
            Err(status) => {
                tracing::debug!(peer = ?remote, code = ?status.code(), message = status.message(), "discovery request refused");
                Err(status)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::discovery::{IndexSettings, Resource, SharedIndex};

    pub(crate) fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("a valid object")
    }

    fn service(cluster_ip: &str) -> Resource {
        Resource::Service(from(json!({
            "metadata": { "namespace": "shop", "name": "checkout" },
            "spec": { "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                      "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] },
        })))
    }

    fn slice(ip: &str) -> Resource {
        Resource::EndpointSlice(from(json!({
            "metadata": { "namespace": "shop", "name": "checkout-abcde",
                          "labels": { "kubernetes.io/service-name": "checkout" } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": [{ "addresses": [ip], "conditions": { "ready": true } }],
        })))
    }

    /// The `_count` and `_sum` of the stream's push latency.
    pub(crate) fn push_latency(metrics: &Metrics, stream: &str) -> (u64, f64) {
        let text = metrics.encode();
        let sample = |suffix: &str| {
            let prefix =
                format!("weft_controller_push_latency_seconds_{suffix}{{stream=\"{stream}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {prefix}in {text}"))
                .to_owned()
        };
        (
            sample("count").parse().unwrap(),
            sample("sum").parse().unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_index_change_pushed_to_a_subscriber_is_timed() {
        let stop = CancellationToken::new();
        let index = SharedIndex::new(IndexSettings::default(), stop.clone());
        index.apply(service("10.96.0.10"));
        index.apply(slice("10.0.0.1"));
        index.publish_now();
        let caller = Identity::new("cluster.local", "shop", "web").unwrap();
        let (rx, changed_at) = index
            .subscribe_timed(&"checkout:80".parse().unwrap(), &caller)
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut stream = snapshots(rx, changed_at, metrics.clone(), stop.clone());

        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            push_latency(&metrics, "discovery").0,
            0,
            "the state at subscription is not a push"
        );

        index.apply(slice("10.0.0.2"));
        let pushed = stream.next().await.unwrap().unwrap();
        assert!(pushed.version > first.version);
        let (count, sum) = push_latency(&metrics, "discovery");
        assert_eq!(count, 1);
        // The paused clock moves only through the debounce.
        assert!(
            (SharedIndex::DEBOUNCE.as_secs_f64()..0.1).contains(&sum),
            "{sum}"
        );
        stop.cancel();
    }
}
