//! Starting the injector's two servers (webhook HTTPS and admin HTTP) and its
//! file watches from [`Parts`], and stopping them ([`Running::shutdown`]). The
//! binary, the tests and the benchmark all start it here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::InjectConfig;
use crate::metrics::Metrics;
use crate::namespaces::{NamespaceIndex, Namespaces};
use crate::reload;
use crate::server::{self, Decide, Webhook};
use crate::tls_reload::ServingCert;

/// What the injector is made of.
pub struct Parts {
    /// The decision: [`server::mutate_decision`] in the binary.
    pub decide: Decide,
    /// The configuration; its `trust_anchors_pem` is replaced by the contents of
    /// `trust_anchors_file` when that is set.
    pub config: InjectConfig,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The anchors bundle, read at start and whenever it changes.
    pub trust_anchors_file: Option<PathBuf>,
    /// How often the certificate, key and anchors files are read for changes.
    pub reload_interval: Duration,
    pub namespaces: Arc<NamespaceIndex>,
    /// The API server asked about namespaces the index does not know.
    pub client: Option<kube::Client>,
    pub metrics: Arc<Metrics>,
    pub listen: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// Why the injector cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}; is another process using the port?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The running injector.
pub struct Running {
    pub webhook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub serving: Arc<ServingCert>,
    pub config: Arc<ArcSwap<InjectConfig>>,
    pub admin: Arc<Admin>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops accepting, lets requests in flight finish, and returns when every
    /// connection has ended.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Binds both listeners and starts serving. A serving certificate or an anchors
/// bundle that cannot be read yet is logged; the injector stays not ready until
/// the watch sees one that loads.
pub async fn start(parts: Parts) -> Result<Running, StartError> {
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let webhook_listener = bind("webhook", parts.listen).await?;
    let admin_listener = bind("admin", parts.admin_addr).await?;
    let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let webhook_addr = local(&webhook_listener, parts.listen);
    let admin_addr = local(&admin_listener, parts.admin_addr);

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = parts.metrics;

    let (serving, loaded) = ServingCert::new(parts.cert_file, parts.key_file, metrics.clone());
    if let Err(error) = loaded {
        tracing::error!(%error, "no serving certificate yet; not ready until one loads");
    }
    let tls = TlsAcceptor::from(serving.server_config()?);
    tracker.spawn(
        serving
            .clone()
            .watch(parts.reload_interval, shutdown.clone()),
    );

    let mut config = parts.config;
    let mut anchors_seen = None;
    if let Some(file) = &parts.trust_anchors_file {
        match reload::read_all(std::slice::from_ref(file))
            .and_then(|c| check_anchors(&c).map(|pem| (c, pem)))
        {
            Ok((contents, pem)) => {
                config.trust_anchors_pem = pem;
                anchors_seen = Some(contents);
            }
            Err(error) => {
                tracing::error!(%error, "no trust anchors yet; not ready until they load");
            }
        }
    }
    let config = Arc::new(ArcSwap::from_pointee(config));
    if let Some(file) = parts.trust_anchors_file {
        let (config, metrics) = (config.clone(), metrics.clone());
        tracker.spawn(reload::watch_files(
            "trust anchors",
            vec![file],
            parts.reload_interval,
            anchors_seen,
            shutdown.clone(),
            move |contents| {
                let checked = check_anchors(contents);
                metrics.trust_anchors_reload(checked.is_ok());
                let pem = checked?;
                let mut next = InjectConfig::clone(&config.load());
                next.trust_anchors_pem = pem;
                config.store(Arc::new(next));
                Ok(())
            },
        ));
    }

    let webhook = Arc::new(Webhook::new(
        parts.decide,
        config.clone(),
        Namespaces::new(parts.namespaces.clone(), parts.client, metrics.clone()),
        metrics.clone(),
    ));
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        serving: serving.clone(),
        namespaces: parts.namespaces,
        config: config.clone(),
    });
    tracker.spawn(server::serve(
        webhook_listener,
        tls,
        webhook,
        shutdown.clone(),
        tracker.clone(),
    ));
    tracker.spawn(
        admin
            .clone()
            .serve(admin_listener, shutdown.clone(), tracker.clone()),
    );
    tracing::info!(%webhook_addr, %admin_addr, "injector serving");
    Ok(Running {
        webhook_addr,
        admin_addr,
        metrics,
        serving,
        config,
        admin,
        shutdown,
        tracker,
    })
}

/// The anchors bundle as text, if it holds at least one valid certificate.
fn check_anchors(contents: &reload::Contents) -> Result<String, String> {
    let bytes = contents.first().map(Vec::as_slice).unwrap_or_default();
    weft_api::tls::TrustAnchors::from_pem(bytes)
        .map_err(|e| format!("the trust anchors bundle does not load: {e}"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| "the trust anchors bundle is not text".into())
}
