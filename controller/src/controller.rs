//! Starting and stopping a controller: the CA with its issuer (reloaded when
//! its files change), the controller's own certificate (renewed at 70 % of its
//! lifetime and whenever the issuer changes), the gRPC endpoint and the admin
//! server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weft_api::Identity;
use weft_api::consts::alpn;
use weft_api::tls::{Credentials, MeshTls, TrustAnchors};

use crate::audit::{AuditEvent, AuditLog};
use crate::ca::{self, Ca, Issuer};
use crate::discovery::service::{DiscoveryService, Subscribe};
use crate::grpc::{self, IdentityService};
use crate::metrics::Metrics;
use crate::token::TokenVerifier;

/// How long [`Controller::shutdown`] lets in-flight calls finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a controller needs to start (built by `config.rs` from flags).
#[derive(Clone, Debug)]
pub struct Settings {
    pub trust_domain: String,
    /// Where `tls.crt`, `tls.key` and `ca.crt` are.
    pub issuer_dir: PathBuf,
    /// Local mode: generate a root and an issuer there when none exist.
    pub generate_issuer: bool,
    /// How often the issuer files are checked for changes.
    pub issuer_poll: Duration,
    pub cert_lifetime: Duration,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub audit_path: PathBuf,
}

/// What serves `weft.v1.Discovery`: the index the proxies subscribe to, and
/// what the admin `/config` shows about the policy objects behind it.
#[derive(Clone)]
pub struct Discovery {
    pub index: Arc<dyn Subscribe>,
    /// The policy objects and their statuses, as JSON (the policy directory
    /// in local mode).
    pub report: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

/// Whether audit records are also written to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditEcho {
    Off,
    Stdout,
}

/// Why a controller could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the controller's trust domain {0:?} is not valid: {1}")]
    TrustDomain(String, #[source] weft_api::IdentityError),
    #[error("the issuer could not be loaded from {dir}: {source}")]
    Issuer {
        dir: PathBuf,
        #[source]
        source: ca::CaError,
    },
    #[error("the trust anchors could not be used: {0}")]
    Anchors(#[source] weft_api::tls::TlsError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("the controller could not issue its own certificate: {0}")]
    OwnCertificate(String),
    #[error("could not listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running controller.
pub struct Controller {
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    identity: Identity,
    ca: Arc<Ca>,
    tls: Arc<MeshTls>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Loads (or, in local mode, generates) the issuer, issues the controller's
    /// own certificate, binds the listeners and starts serving.
    pub async fn start(
        settings: Settings,
        verifier: Arc<dyn TokenVerifier>,
    ) -> Result<Self, StartError> {
        Self::start_with(settings, verifier, AuditEcho::Off).await
    }

    /// [`Self::start`], echoing each audit record to stdout when `echo` says so
    /// (`--audit-stdout`: the cluster's log pipeline keeps a copy).
    pub async fn start_with(
        settings: Settings,
        verifier: Arc<dyn TokenVerifier>,
        echo: AuditEcho,
    ) -> Result<Self, StartError> {
        Self::start_with_discovery(settings, verifier, echo, None).await
    }

    /// [`Self::start_with`], also serving `weft.v1.Discovery` from
    /// `discovery` (and showing its policy objects in the admin `/config`).
    pub async fn start_with_discovery(
        settings: Settings,
        verifier: Arc<dyn TokenVerifier>,
        echo: AuditEcho,
        discovery: Option<Discovery>,
    ) -> Result<Self, StartError> {
        let identity = weft_api::control::controller_identity(&settings.trust_domain)
            .map_err(|e| StartError::TrustDomain(settings.trust_domain.clone(), e))?;
        let issuer = if settings.generate_issuer {
            ca::load_or_generate(&settings.issuer_dir, &settings.trust_domain)
        } else {
            Issuer::load(&settings.issuer_dir)
        }
        .map_err(|source| StartError::Issuer {
            dir: settings.issuer_dir.clone(),
            source,
        })?;
        let metrics = Arc::new(Metrics::new());
        metrics.set_issuer_expiry(issuer.not_after());
        let anchors =
            TrustAnchors::from_der(issuer.trust_anchors().to_vec()).map_err(StartError::Anchors)?;
        let ca = Arc::new(Ca::new(issuer, settings.cert_lifetime));
        let audit = AuditLog::open(&settings.audit_path)?;
        let audit = Arc::new(match echo {
            AuditEcho::Off => audit,
            AuditEcho::Stdout => audit.echo_to_stdout(),
        });
        let tls = MeshTls::new(anchors);
        let own = renew_own(&ca, &identity, &tls, &audit, &metrics)
            .map_err(StartError::OwnCertificate)?;

        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let grpc_listener = bind("gRPC", settings.grpc_addr).await?;
        let admin_listener = bind("admin", settings.admin_addr).await?;
        let grpc_addr = local_addr(&grpc_listener, settings.grpc_addr);
        let admin_addr = local_addr(&admin_listener, settings.admin_addr);

        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let service = IdentityService::new(ca.clone(), verifier, audit.clone(), metrics.clone());
        let discovery_service = discovery.as_ref().map(|d| {
            (
                DiscoveryService::new(d.index.clone(), metrics.clone(), cancel.clone()),
                crate::discovery::inbound_service::InboundService::new(
                    d.index.clone(),
                    metrics.clone(),
                    cancel.clone(),
                ),
            )
        });
        let server_tls = tls.server_config_with_optional_client_auth(alpn::H2);
        let stop = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = grpc::serve(
                grpc_listener,
                server_tls,
                service,
                discovery_service,
                stop.cancelled_owned(),
            )
            .await
            {
                tracing::error!(error = %e, "the gRPC server failed");
            }
        });
        let stop = cancel.clone();
        let watched = ca.clone();
        let dir = settings.issuer_dir.clone();
        let poll = settings.issuer_poll;
        let reloads = metrics.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = ca::watch_issuer_dir(watched, dir, poll, reloads) => {}
                () = stop.cancelled() => {}
            }
        });
        let stop = cancel.clone();
        let renewal = OwnRenewal {
            ca: ca.clone(),
            identity: identity.clone(),
            tls: tls.clone(),
            audit,
            metrics: metrics.clone(),
        };
        tasks.spawn(async move {
            tokio::select! {
                () = renewal.run(own) => {}
                () = stop.cancelled() => {}
            }
        });
        let stop = cancel.clone();
        let admin = crate::admin::Admin {
            metrics: metrics.clone(),
            tls: tls.clone(),
            policy: discovery.map(|d| d.report),
        };
        tasks.spawn(async move {
            tokio::select! {
                () = admin.serve(admin_listener) => {}
                () = stop.cancelled() => {}
            }
        });
        tracing::info!(%grpc_addr, %admin_addr, %identity, "controller started");
        Ok(Self {
            grpc_addr,
            admin_addr,
            identity,
            ca,
            tls,
            metrics,
            cancel,
            tasks,
        })
    }

    /// The bound gRPC address (useful when started on port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The identity the gRPC endpoint presents.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The controller's own TLS state (its certificate and trust anchors).
    pub fn tls(&self) -> &Arc<MeshTls> {
        &self.tls
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops serving: in-flight calls may finish within [`SHUTDOWN_GRACE`]
    /// (connections that stay open longer are dropped), then every task ends.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
            self.tasks.shutdown().await;
        }
        tracing::info!("controller stopped");
    }
}

fn local_addr(listener: &TcpListener, asked: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(asked)
}

/// Issues the controller's own certificate (recorded like any other) and
/// installs it; returns its expiry.
fn renew_own(
    ca: &Ca,
    identity: &Identity,
    tls: &MeshTls,
    audit: &AuditLog,
    metrics: &Metrics,
) -> Result<SystemTime, String> {
    let (key, csr) = ca::new_key_and_csr(identity).map_err(|e| e.to_string())?;
    let issued = ca.sign(&csr, identity).map_err(|e| e.to_string())?;
    audit
        .append(&AuditEvent::Issued(&issued), None)
        .map_err(|e| e.to_string())?;
    metrics.issued();
    let credentials =
        Credentials::from_der(issued.certified.full_chain(), key).map_err(|e| e.to_string())?;
    tls.set_credentials(credentials);
    Ok(issued.certified.valid_until)
}

struct OwnRenewal {
    ca: Arc<Ca>,
    identity: Identity,
    tls: Arc<MeshTls>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
}

impl OwnRenewal {
    /// Renews at 70 % of the remaining lifetime, and at once when the issuer
    /// changes (new anchors are installed first). Failures retry with backoff.
    async fn run(self, mut valid_until: SystemTime) {
        let mut issuer_changes = self.ca.subscribe();
        let mut backoff = Duration::from_millis(200);
        loop {
            let remaining = valid_until
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let wait = remaining.mul_f64(0.7);
            tokio::select! {
                biased;
                changed = issuer_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let issuer = issuer_changes.borrow_and_update().clone();
                    self.metrics.set_issuer_expiry(issuer.not_after());
                    match TrustAnchors::from_der(issuer.trust_anchors().to_vec()) {
                        Ok(anchors) => self.tls.set_trust_anchors(anchors),
                        Err(e) => tracing::error!(error = %e, "the new trust anchors are unusable"),
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            match renew_own(
                &self.ca,
                &self.identity,
                &self.tls,
                &self.audit,
                &self.metrics,
            ) {
                Ok(until) => {
                    valid_until = until;
                    backoff = Duration::from_millis(200);
                    tracing::debug!(valid_until = %ca::rfc3339(until), "controller certificate renewed");
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "could not renew the controller's certificate");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    // Retry soon: treat the current certificate as due.
                    valid_until = SystemTime::now();
                }
            }
        }
    }
}
