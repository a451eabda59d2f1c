//! What the webhook knows of namespaces. An AdmissionReview names the pod's
//! namespace but carries none of its labels or annotations, so the injector
//! keeps an index of every Namespace, fed by a watch ([`watch`]) in the binary
//! and by [`NamespaceIndex::apply`] / [`NamespaceIndex::delete`] /
//! [`NamespaceIndex::reset`] in tests and benchmarks. A namespace the index does
//! not know (created just before its first pod, or the watch not yet synced) is
//! read once from the API server ([`Namespaces::lookup`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;

use crate::metrics::Metrics;
use crate::mutate::NamespaceInfo;

/// How long the one GET of an unknown namespace may take (the API server's
/// webhook timeout is the real bound; this leaves it room to answer).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Namespaces by name.
#[derive(Debug, Default)]
pub struct NamespaceIndex {
    by_name: RwLock<HashMap<String, Arc<NamespaceInfo>>>,
    synced: AtomicBool,
    metrics: Option<Arc<Metrics>>,
}

impl NamespaceIndex {
    /// An empty index, not yet synced, that reports its size into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    /// Adds or replaces a namespace.
    pub fn apply(&self, namespace: &Namespace) {
        self.apply_info(info_from(namespace));
    }

    /// Adds or replaces a namespace given as the domain type.
    pub fn apply_info(&self, info: NamespaceInfo) {
        let mut map = self.write();
        map.insert(info.name.clone(), Arc::new(info));
        self.report(map.len());
    }

    /// Forgets a namespace.
    pub fn delete(&self, name: &str) {
        let mut map = self.write();
        map.remove(name);
        self.report(map.len());
    }

    /// Replaces the whole index (a watch's initial list) and marks it synced.
    pub fn reset(&self, namespaces: impl IntoIterator<Item = NamespaceInfo>) {
        let fresh: HashMap<_, _> = namespaces
            .into_iter()
            .map(|info| (info.name.clone(), Arc::new(info)))
            .collect();
        let mut map = self.write();
        *map = fresh;
        self.report(map.len());
        self.synced.store(true, Ordering::Release);
    }

    pub fn get(&self, name: &str) -> Option<Arc<NamespaceInfo>> {
        self.by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Whether the index has been filled from a complete list at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<NamespaceInfo>>> {
        self.by_name.write().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, len: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.set_namespaces(len);
        }
    }
}

/// The domain view of a Namespace.
pub fn info_from(namespace: &Namespace) -> NamespaceInfo {
    let meta = &namespace.metadata;
    NamespaceInfo {
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
    }
}

/// Why a pod's namespace cannot be known.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "namespace {name:?} is not in the injector's index and there is no API server to ask; \
         is the namespace watch running?"
    )]
    NotIndexed { name: String },
    #[error("namespace {name:?} does not exist on the API server")]
    NotFound { name: String },
    #[error(
        "namespace {name:?} is not in the injector's index and reading it from the API server failed: \
         {reason}; check the injector's RBAC (get, list, watch on namespaces) and its logs"
    )]
    Lookup { name: String, reason: String },
}

/// The index, plus the API server to ask about namespaces it does not know.
pub struct Namespaces {
    pub index: Arc<NamespaceIndex>,
    client: Option<kube::Client>,
    metrics: Arc<Metrics>,
}

impl Namespaces {
    /// `client` is `None` in tests and benchmarks: the index is all there is.
    pub fn new(
        index: Arc<NamespaceIndex>,
        client: Option<kube::Client>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            index,
            client,
            metrics,
        }
    }

    /// The namespace `name`, from the index, else read once from the API
    /// server (and then kept in the index).
    pub async fn lookup(&self, name: &str) -> Result<Arc<NamespaceInfo>, NamespaceError> {
        if let Some(info) = self.index.get(name) {
            return Ok(info);
        }
        let Some(client) = &self.client else {
            return Err(NamespaceError::NotIndexed { name: name.into() });
        };
        let api: kube::Api<Namespace> = kube::Api::all(client.clone());
        let failed = |reason: String| NamespaceError::Lookup {
            name: name.into(),
            reason,
        };
        let got = tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name))
            .await
            .map_err(|_| failed(format!("no answer within {LOOKUP_TIMEOUT:?}")));
        match got {
            Ok(Ok(Some(namespace))) => {
                self.metrics.namespace_lookup("found");
                let info = Arc::new(info_from(&namespace));
                self.index.apply_info((*info).clone());
                Ok(info)
            }
            Ok(Ok(None)) => {
                self.metrics.namespace_lookup("not-found");
                Err(NamespaceError::NotFound { name: name.into() })
            }
            Ok(Err(e)) => {
                self.metrics.namespace_lookup("failed");
                Err(failed(e.to_string()))
            }
            Err(e) => {
                self.metrics.namespace_lookup("failed");
                Err(e)
            }
        }
    }
}

/// Keeps `index` equal to the cluster's Namespaces until the task is dropped:
/// a list (which marks the index synced), then a watch, relisted with backoff
/// after errors (which are logged).
pub async fn watch(client: kube::Client, index: Arc<NamespaceIndex>) {
    let api: kube::Api<Namespace> = kube::Api::all(client);
    let events = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    let mut initial: Vec<NamespaceInfo> = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(ns)) => index.apply(&ns),
            Ok(watcher::Event::Delete(ns)) => {
                index.delete(ns.metadata.name.as_deref().unwrap_or_default());
            }
            Ok(watcher::Event::Init) => initial.clear(),
            Ok(watcher::Event::InitApply(ns)) => initial.push(info_from(&ns)),
            Ok(watcher::Event::InitDone) => {
                let count = initial.len();
                index.reset(std::mem::take(&mut initial));
                tracing::info!(namespaces = count, "namespace index synced");
            }
            Err(error) => {
                tracing::warn!(%error, "namespace watch failed; retrying with backoff");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ns(name: &str, label: Option<&str>) -> Namespace {
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.into());
        namespace.metadata.labels = label
            .map(|v| BTreeMap::from([(weft_api::consts::INJECT_KEY.to_string(), v.to_string())]));
        namespace
    }

    #[test]
    fn apply_delete_reset_and_sync() {
        let metrics = Arc::new(Metrics::new());
        let index = NamespaceIndex::new(metrics.clone());
        assert!(!index.is_synced());
        index.apply(&ns("shop", Some("enabled")));
        let shop = index.get("shop").expect("applied");
        assert_eq!(shop.labels[weft_api::consts::INJECT_KEY], "enabled");
        index.apply(&ns("shop", None));
        assert!(index.get("shop").expect("replaced").labels.is_empty());
        index.delete("shop");
        assert!(index.get("shop").is_none());
        index.reset([info_from(&ns("a", None)), info_from(&ns("b", None))]);
        assert!(index.is_synced());
        assert!(index.get("a").is_some() && index.get("b").is_some());
        assert!(metrics.encode().contains("weft_injector_namespaces 2"));
    }

    #[tokio::test]
    async fn unknown_namespace_without_an_api_server_is_an_error_naming_it() {
        let metrics = Arc::new(Metrics::new());
        let namespaces = Namespaces::new(
            Arc::new(NamespaceIndex::new(metrics.clone())),
            None,
            metrics,
        );
        let error = namespaces.lookup("ghost").await.expect_err("unknown");
        assert!(error.to_string().contains("\"ghost\""), "{error}");
    }
}
