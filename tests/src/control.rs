//! A local controller in process (its CA in a temporary state directory,
//! bootstrap tokens issued on demand) and proxy pairs that get their
//! certificates from it with `weft_proxy::identity`, as the sidecars do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use weft_api::Identity;
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_controller::bootstrap::BootstrapTokens;
use weft_controller::ca::{self, TRUST_ANCHORS_FILE};
use weft_controller::{Controller, Settings};
use weft_proxy::ProxyHandle;
use weft_proxy::identity::CertifyConfig;

use crate::mesh::{CLIENT_ID, SERVER_ID, client_proxy, server_proxy};

const TRUST_DOMAIN: &str = "cluster.local";

/// A local controller that can be started, stopped and started again on the
/// same address with the same CA.
pub struct TestControl {
    pub state: tempfile::TempDir,
    pub tokens: Arc<BootstrapTokens>,
    pub settings: Settings,
    /// The identity the controller's gRPC endpoint presents.
    pub identity: Identity,
    pub controller: Option<Controller>,
}

impl TestControl {
    /// Generates the CA and reserves a gRPC address, without starting the
    /// controller: proxies can be given its address and anchors first.
    pub fn prepare(cert_lifetime: Duration) -> Self {
        let state = tempfile::tempdir().expect("a temporary directory");
        let issuer_dir = state.path().join("issuer");
        ca::load_or_generate(&issuer_dir, TRUST_DOMAIN).expect("a local CA");
        let settings = Settings {
            trust_domain: TRUST_DOMAIN.into(),
            issuer_dir,
            generate_issuer: true,
            issuer_poll: Duration::from_millis(100),
            cert_lifetime,
            grpc_addr: free_port(),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            audit_path: state.path().join("audit.log"),
        };
        Self {
            tokens: Arc::new(BootstrapTokens::new(state.path())),
            identity: weft_api::control::controller_identity(TRUST_DOMAIN)
                .expect("a valid trust domain"),
            state,
            settings,
            controller: None,
        }
    }

    /// A started controller.
    pub async fn start(cert_lifetime: Duration) -> Self {
        let mut control = Self::prepare(cert_lifetime);
        control.start_controller().await;
        control
    }

    /// Starts the controller on the reserved address.
    pub async fn start_controller(&mut self) {
        assert!(self.controller.is_none(), "the controller is running");
        let controller = Controller::start(self.settings.clone(), self.tokens.clone())
            .await
            .expect("the controller starts");
        self.controller = Some(controller);
    }

    /// Stops the controller (in-flight calls may finish).
    pub async fn stop_controller(&mut self) {
        self.controller
            .take()
            .expect("the controller is running")
            .shutdown()
            .await;
    }

    pub fn controller(&self) -> &Controller {
        self.controller.as_ref().expect("the controller is running")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.settings.grpc_addr
    }

    pub fn issuer_dir(&self) -> &Path {
        &self.settings.issuer_dir
    }

    /// The controller's trust anchor bundle (PEM).
    pub fn anchors_pem(&self) -> String {
        std::fs::read_to_string(self.issuer_dir().join(TRUST_ANCHORS_FILE)).expect("ca.crt")
    }

    /// Issues a bootstrap token for `identity` and writes it to a file.
    pub fn token_file(&self, identity: &Identity) -> PathBuf {
        let token = self
            .tokens
            .issue(identity, Duration::from_secs(3600))
            .expect("a bootstrap token");
        let path = self.state.path().join(format!(
            "{}.token",
            identity.to_string().replace(['/', ':'], "_")
        ));
        std::fs::write(&path, token.as_str()).expect("write the token file");
        path
    }

    /// What a sidecar of `identity` is given to ask for its certificate.
    pub fn certify_config(&self, identity: &Identity) -> CertifyConfig {
        CertifyConfig {
            controller_addr: self.grpc_addr().to_string(),
            controller_identity: self.identity.clone(),
            identity: identity.clone(),
            token_file: self.token_file(identity),
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

/// One sidecar: the proxy, its TLS state, and its identity tasks.
pub struct Sidecar {
    pub proxy: ProxyHandle,
    pub tls: Arc<MeshTls>,
}

impl Sidecar {
    /// Successful and failed `Identity.Certify` calls so far.
    pub async fn certify_counts(&self) -> (f64, f64) {
        let text = crate::mesh::metrics(&self.proxy).await;
        let count = |result: &str| {
            crate::mesh::sample(
                &text,
                &format!("weft_identity_certify_total{{result=\"{result}\"}}"),
            )
            .unwrap_or(0.0)
        };
        (count("ok"), count("error"))
    }

    /// The expiry of the certificate the proxy serves with, if it has one.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.tls.credentials().map(|c| c.not_after())
    }

    /// `GET /ready` on the admin server: the status code.
    pub async fn ready_status(&self) -> u16 {
        admin_get(self.proxy.admin_addr, "/ready").await
    }
}

/// app client -> client sidecar -> mTLS -> server sidecar -> app, both
/// sidecars certified by the controller and watching `anchors_file`.
pub struct IdentityPair {
    pub client: Sidecar,
    pub server: Sidecar,
    /// The client proxy's upstream listener.
    pub entry: SocketAddr,
    /// The anchors file both sidecars reload.
    pub anchors_file: PathBuf,
    pub stop: CancellationToken,
}

impl IdentityPair {
    /// Starts both proxies (not ready until certified) in front of `app`.
    /// Their anchors start as the controller's bundle, copied to a file of
    /// their own that is checked every `anchors_reload`.
    pub async fn start(control: &TestControl, app: SocketAddr, anchors_reload: Duration) -> Self {
        let anchors_file = control.state.path().join("proxy-anchors.pem");
        std::fs::write(&anchors_file, control.anchors_pem()).expect("write the anchors");
        let stop = CancellationToken::new();
        let sidecar = |tls: Arc<MeshTls>, proxy: ProxyHandle, id: &str| {
            let identity: Identity = id.parse().expect("a valid identity");
            tokio::spawn(weft_proxy::identity::run(
                control.certify_config(&identity),
                tls.clone(),
                proxy.metrics.clone(),
                stop.clone(),
            ));
            tokio::spawn(weft_proxy::identity::watch_trust_anchors(
                anchors_file.clone(),
                tls.clone(),
                anchors_reload,
                stop.clone(),
            ));
            Sidecar { proxy, tls }
        };
        let server_tls = anchors_tls(&anchors_file);
        let server = server_proxy(server_tls.clone(), app).await;
        let server = sidecar(server_tls, server, SERVER_ID);
        let client_tls = anchors_tls(&anchors_file);
        let client = client_proxy(
            client_tls.clone(),
            "checkout",
            server.proxy.inbound_addr,
            SERVER_ID,
            false,
        )
        .await;
        let client = sidecar(client_tls, client, CLIENT_ID);
        let entry = client
            .proxy
            .upstream_addr("checkout")
            .expect("upstream bound");
        Self {
            client,
            server,
            entry,
            anchors_file,
            stop,
        }
    }

    /// Waits until both sidecars are ready; panics after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for side in [&self.client, &self.server] {
            while side.ready_status().await != 200 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a sidecar was not ready after {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Stops the identity tasks and both proxies.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.client.proxy.shutdown(Duration::from_secs(1)).await;
        self.server.proxy.shutdown(Duration::from_secs(1)).await;
    }
}

/// A `MeshTls` without credentials, trusting the anchors in `path`.
pub fn anchors_tls(path: &Path) -> Arc<MeshTls> {
    let pem = std::fs::read(path).expect("read the anchors");
    MeshTls::new(TrustAnchors::from_pem(&pem).expect("valid anchors"))
}

/// A GET on an admin server; returns the status code (0 when unreachable).
pub async fn admin_get(addr: SocketAddr, path: &str) -> u16 {
    admin_request(addr, http::Method::GET, path).await
}

/// A GET of an admin server's `/metrics`: the text, empty when unreachable.
pub async fn admin_metrics(addr: SocketAddr) -> String {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let Ok((mut tx, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return String::new();
    };
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a request");
    let Ok(rsp) = tx.send_request(req).await else {
        return String::new();
    };
    match http_body_util::BodyExt::collect(rsp.into_body()).await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    }
}

/// A POST on an admin server; returns the status code (0 when unreachable).
pub async fn admin_post(addr: SocketAddr, path: &str) -> u16 {
    admin_request(addr, http::Method::POST, path).await
}

async fn admin_request(addr: SocketAddr, method: http::Method, path: &str) -> u16 {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let Ok((mut tx, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return 0;
    };
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a request");
    match tx.send_request(req).await {
        Ok(rsp) => rsp.status().as_u16(),
        Err(_) => 0,
    }
}
