//! mTLS handshakes per second against a server-side proxy.
//!
//! Every handshake is a full one (session resumption is off): TCP connect, TLS
//! 1.3 with the mesh client certificate (built with `weft_api::tls`, checking
//! that the server proves the bench server identity), then `close_notify` and a
//! read to the end, so that the server has verified the client certificate
//! before the handshake counts. Runs as `weft-benches handshake`.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_api::Identity;
use weft_api::consts::alpn;
use weft_api::tls::{Credentials, MeshTls, TrustAnchors};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeSpec {
    pub addr: SocketAddr,
    pub concurrency: usize,
    pub duration_ms: u64,
    pub client_chain: PathBuf,
    pub client_key: PathBuf,
    pub anchors: PathBuf,
    pub server_identity: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeResult {
    pub handshakes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub per_second: f64,
}

const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the client configuration: mesh credentials, no resumption.
pub fn client_config(spec: &HandshakeSpec) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let anchors = TrustAnchors::from_pem(&fs::read(&spec.anchors)?)?;
    let creds =
        Credentials::from_pem(&fs::read(&spec.client_chain)?, &fs::read(&spec.client_key)?)?;
    let identity: Identity = spec.server_identity.parse()?;
    let tls = MeshTls::new(anchors);
    tls.set_credentials(creds);
    let mut config = (*tls.client_config(&identity, alpn::HTTP1)).clone();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

pub async fn run(spec: &HandshakeSpec) -> anyhow::Result<HandshakeResult> {
    let connector = TlsConnector::from(client_config(spec)?);
    let end = Instant::now() + Duration::from_millis(spec.duration_ms);
    let mut tasks = Vec::new();
    for _ in 0..spec.concurrency.max(1) {
        let connector = connector.clone();
        let addr = spec.addr;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            while Instant::now() < end {
                match tokio::time::timeout(STEP_TIMEOUT, once(&connector, addr)).await {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(error)) => {
                        errors += 1;
                        first_error.get_or_insert(error.to_string());
                    }
                    Err(_) => {
                        errors += 1;
                        first_error.get_or_insert("handshake timed out".to_string());
                    }
                }
            }
            (ok, errors, first_error)
        }));
    }
    let mut result = HandshakeResult {
        handshakes: 0,
        errors: 0,
        first_error: None,
        per_second: 0.0,
    };
    for task in tasks {
        let (ok, errors, first_error) = task.await?;
        result.handshakes += ok;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    let seconds = Duration::from_millis(spec.duration_ms).as_secs_f64();
    result.per_second = result.handshakes as f64 / seconds;
    Ok(result)
}

async fn once(connector: &TlsConnector, addr: SocketAddr) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut tls = connector.connect(name, tcp).await?;
    tls.shutdown().await?;
    let mut sink = [0u8; 512];
    // The server answers our close_notify (or closes) once it has processed
    // the client's certificate and Finished.
    loop {
        match tls.read(&mut sink).await {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            // Some servers close without close_notify: the handshake is done.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
}
