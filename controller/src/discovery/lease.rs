//! Which controller replica writes statuses: a `coordination.k8s.io/v1`
//! Lease in the controller's namespace, held by one replica at a time.
//!
//! Every replica watches the API server and serves `Discovery.Watch` from its
//! own index; only the holder writes routes' and policies' status, so two
//! replicas whose views differ for a moment do not write conflicting
//! conditions back and forth. The election is the one client-go's
//! `leaderelection` runs: a replica takes the Lease when it does not exist,
//! when it has no holder, or when its record has not changed for the Lease's
//! duration *as this replica observed it* (its own clock, never the holder's
//! timestamps, so clock skew between nodes cannot make two holders); every
//! write carries the `resourceVersion` it read, so of two replicas racing for
//! it exactly one succeeds. The holder renews every [`LeaseSettings::renew_every`],
//! steps down when it has not renewed within two thirds of the duration
//! (before any other replica may take over), and releases the Lease when it
//! shuts down, so the next replica takes over at once instead of after the
//! duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The Lease's name.
pub const STATUS_LEASE: &str = "weft-controller-status";

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `spec.holderIdentity`: unique per process.
    pub holder: String,
    /// How long a holder that stops renewing keeps the Lease.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often a replica that does not hold it tries to take it.
    pub retry_every: Duration,
}

impl LeaseSettings {
    /// The status Lease in `namespace`, held 15 s, renewed every 5 s, tried
    /// for every 2 s (client-go's defaults), the holder named after the host
    /// (a pod's name) and a random suffix.
    pub fn new(namespace: impl Into<String>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "weft-controller".to_owned());
        let suffix: u32 = rand::random();
        Self {
            namespace: namespace.into(),
            name: STATUS_LEASE.to_owned(),
            holder: format!("{host}_{suffix:08x}"),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// Starts the election; the receiver says whether this replica holds the
/// Lease now. Runs until `shutdown`, then releases the Lease if held.
pub fn elect(
    client: kube::Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let api = Api::<Lease>::namespaced(client, &settings.namespace);
    tokio::spawn(run(api, settings, tx, shutdown));
    rx
}

/// What this replica last saw of the Lease: its `resourceVersion` and when
/// it saw that version first (by its own clock).
struct Observed {
    version: Option<String>,
    since: Instant,
}

async fn run(
    api: Api<Lease>,
    settings: LeaseSettings,
    held: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut observed: Option<Observed> = None;
    let mut renewed: Option<Instant> = None;
    let renew_deadline = settings.duration.mul_f64(2.0 / 3.0);
    loop {
        let holds = match try_acquire_or_renew(&api, &settings, &mut observed).await {
            Ok(holds) => {
                if holds {
                    renewed = Some(Instant::now());
                }
                holds
            }
            Err(error) => {
                let still = renewed.is_some_and(|at| at.elapsed() < renew_deadline);
                tracing::warn!(
                    lease = %settings.name,
                    namespace = %settings.namespace,
                    %error,
                    holds = still,
                    "cannot read or renew the status Lease; retrying"
                );
                still
            }
        };
        if !holds {
            renewed = None;
        }
        let changed = held.send_if_modified(|h| std::mem::replace(h, holds) != holds);
        if changed {
            tracing::info!(
                lease = %settings.name,
                namespace = %settings.namespace,
                holder = %settings.holder,
                "{}",
                if holds {
                    "this replica holds the status Lease: it writes statuses"
                } else {
                    "this replica does not hold the status Lease: another writes statuses"
                }
            );
        }
        let wait = if holds {
            settings.renew_every
        } else {
            settings.retry_every
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => break,
        }
    }
    if *held.borrow() {
        held.send_replace(false);
        if let Err(error) = release(&api, &settings).await {
            tracing::debug!(%error, "could not release the status Lease; it expires instead");
        }
    }
}

fn spec_now(settings: &LeaseSettings, previous: Option<&LeaseSpec>) -> LeaseSpec {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(&settings.holder);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(settings.holder.clone()),
        lease_duration_seconds: Some(
            i32::try_from(settings.duration.as_secs()).unwrap_or(i32::MAX),
        ),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..LeaseSpec::default()
    }
}

/// One round: whether this replica holds the Lease after it.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let Some(lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec_now(settings, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                *observed = Some(Observed {
                    version: created.metadata.resource_version,
                    since: Instant::now(),
                });
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let version = lease.metadata.resource_version.clone();
    let since = match observed {
        Some(o) if o.version == version => o.since,
        _ => Instant::now(),
    };
    *observed = Some(Observed {
        version: version.clone(),
        since,
    });
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(settings.duration, Duration::from_secs);
    let ours = holder == settings.holder;
    if !ours && !holder.is_empty() && since.elapsed() < duration {
        return Ok(false);
    }
    let mut next = lease;
    next.spec = Some(spec_now(settings, Some(&spec)));
    // `next` keeps the resourceVersion read: of two replicas writing, one
    // gets 409 Conflict.
    match api
        .replace(&settings.name, &PostParams::default(), &next)
        .await
    {
        Ok(updated) => {
            *observed = Some(Observed {
                version: updated.metadata.resource_version,
                since: Instant::now(),
            });
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up: no holder, so another replica takes it at once.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let mut lease = api.get(&settings.name).await?;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(&settings.holder) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(&settings.name, &PostParams::default(), &lease)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(holder: &str) -> LeaseSettings {
        LeaseSettings {
            holder: holder.to_owned(),
            ..LeaseSettings::new("weft-system")
        }
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let first = spec_now(&settings("a"), None);
        assert_eq!(first.holder_identity.as_deref(), Some("a"));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
        let renewed = spec_now(&settings("a"), Some(&first));
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        let taken = spec_now(&settings("b"), Some(&renewed));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.lease_transitions, Some(1));
    }

    #[test]
    fn every_process_has_its_own_holder_name() {
        assert_ne!(
            LeaseSettings::new("x").holder,
            LeaseSettings::new("x").holder
        );
    }
}
