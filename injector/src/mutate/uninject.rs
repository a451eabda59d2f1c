//! The reverse of [`super::mutate`], for `weft uninject`: removes weft's
//! containers, volumes and annotations.

use k8s_openapi::api::core::v1::Pod;
use weft_api::consts::{INJECTED_BY_ANNOTATION, inject};

use super::{DEFAULT_CONTAINER_ANNOTATION, decide, prometheus_annotations};

/// Removes what [`super::mutate`] added from a pod spec (for `weft uninject`);
/// `None` when the pod was not injected.
///
/// The scrape annotations go only when all three still hold weft's values,
/// and `kubectl.kubernetes.io/default-container` only when the classic proxy
/// was there and it names the first app container: the injector adds them
/// only where the pod had none.
pub fn uninject(pod: &Pod) -> Option<Pod> {
    if !decide::is_injected(pod) {
        return None;
    }
    let mut pod = pod.clone();
    let ours = |name: &str| name == inject::PROXY_CONTAINER || name == inject::INIT_CONTAINER;
    let mut classic = false;
    if let Some(spec) = pod.spec.as_mut() {
        classic = spec
            .containers
            .iter()
            .any(|c| c.name == inject::PROXY_CONTAINER);
        spec.containers.retain(|c| !ours(&c.name));
        if let Some(init) = spec.init_containers.as_mut() {
            init.retain(|c| !ours(&c.name));
        }
        if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
            spec.init_containers = None;
        }
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| v.name != inject::TOKEN_VOLUME && v.name != inject::INIT_RUN_VOLUME);
        }
        if spec.volumes.as_ref().is_some_and(Vec::is_empty) {
            spec.volumes = None;
        }
    }
    let first_app = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone());
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.remove(INJECTED_BY_ANNOTATION);
        annotations.remove(inject::SKIPPED_ANNOTATION);
        let scrape = prometheus_annotations();
        if scrape.iter().all(|(k, v)| annotations.get(*k) == Some(v)) {
            for (k, _) in scrape {
                annotations.remove(k);
            }
        }
        if classic && annotations.get(DEFAULT_CONTAINER_ANNOTATION) == first_app.as_ref() {
            annotations.remove(DEFAULT_CONTAINER_ANNOTATION);
        }
        if annotations.is_empty() {
            pod.metadata.annotations = None;
        }
    }
    Some(pod)
}
