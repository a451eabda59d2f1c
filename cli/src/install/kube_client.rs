//! The Kubernetes client of `weft install --apply` and `weft check`.

use std::path::Path;

use anyhow::Context;

/// A client from `kubeconfig`, or else from KUBECONFIG, `~/.kube/config` or
/// the in-cluster configuration.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    // kube's HTTPS client uses the process-wide rustls provider.
    let _ = rustls_provider();
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("could not read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("the kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration found (set KUBECONFIG, pass --kubeconfig, or run in a cluster)",
        )?,
    };
    kube::Client::try_from(config).context("could not build the Kubernetes client")
}

fn rustls_provider() -> Result<(), std::sync::Arc<rustls::crypto::CryptoProvider>> {
    rustls::crypto::aws_lc_rs::default_provider().install_default()
}
