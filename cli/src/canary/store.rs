//! Where a service's HTTPRoute lives: a local policy directory (the files the
//! local controller reloads) or a Kubernetes API server.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams};
use weft_api::crd::{HttpRoute, from_value_strict};
use weft_controller::discovery::local::{Workloads, read_dir as read_files, split_documents};

use super::weights;

/// The field manager of `weft canary` (server-side apply).
pub const FIELD_MANAGER: &str = "weft";

/// A service's route and the Services that could be its backends.
pub struct Loaded {
    pub route: Option<HttpRoute>,
    pub known: Vec<String>,
}

pub enum Store {
    Local { dir: PathBuf },
    Kube { client: kube::Client },
}

impl Store {
    pub async fn load(&self, namespace: &str, service: &str) -> anyhow::Result<Loaded> {
        match self {
            Self::Local { dir } => {
                let docs = read_dir(dir)?;
                let mut known = Vec::new();
                let mut route = None;
                for doc in &docs {
                    match doc.kind() {
                        "Workloads" => {
                            let json = serde_json::to_value(&doc.value)
                                .context("not JSON-compatible YAML")?;
                            let workloads: Workloads =
                                serde_json::from_value(json).with_context(|| {
                                    format!("{} is not a Workloads document", doc.origin())
                                })?;
                            known.extend(
                                workloads
                                    .services
                                    .into_iter()
                                    .filter(|s| s.namespace == namespace)
                                    .map(|s| s.name),
                            );
                        }
                        "HTTPRoute" => {
                            let r = doc.route().with_context(|| doc.origin())?;
                            if r.metadata.namespace.as_deref().unwrap_or("default") == namespace
                                && weights::attaches(&r, service)
                            {
                                if route.is_some() {
                                    bail!(
                                        "{}: a second HTTPRoute attaches to {service:?}; keep one route per service for canaries",
                                        doc.origin()
                                    );
                                }
                                route = Some(r);
                            }
                        }
                        _ => {}
                    }
                }
                if !known.iter().any(|k| k == service) && route.is_none() {
                    bail!(
                        "service {service:?} is not in namespace {namespace:?} of the policy directory {} (its services: {})",
                        dir.display(),
                        known.join(", ")
                    );
                }
                Ok(Loaded { route, known })
            }
            Self::Kube { client } => {
                let services: Api<Service> = Api::namespaced(client.clone(), namespace);
                let known: Vec<String> = services
                    .list_metadata(&ListParams::default())
                    .await
                    .with_context(|| format!("could not list the Services of {namespace:?}"))?
                    .items
                    .into_iter()
                    .filter_map(|s| s.metadata.name)
                    .collect();
                if !known.iter().any(|k| k == service) {
                    bail!("there is no Service {service:?} in namespace {namespace:?}");
                }
                let routes: Api<HttpRoute> = Api::namespaced(client.clone(), namespace);
                let list = routes.list(&ListParams::default()).await.with_context(|| {
                    format!("could not list the HTTPRoutes of {namespace:?} (are the Gateway API CRDs installed?)")
                })?;
                let mut attached = list
                    .items
                    .into_iter()
                    .filter(|r| weights::attaches(r, service));
                let route = attached.next();
                if let Some(second) = attached.next() {
                    bail!(
                        "HTTPRoutes {:?} and {:?} both attach to {service:?}; keep one route per service for canaries",
                        route
                            .as_ref()
                            .and_then(|r| r.metadata.name.clone())
                            .unwrap_or_default(),
                        second.metadata.name.unwrap_or_default()
                    );
                }
                Ok(Loaded { route, known })
            }
        }
    }

    /// Writes `route` (the whole object, as `weights::set` made it).
    pub async fn save(&self, route: &HttpRoute) -> anyhow::Result<String> {
        let name = route.metadata.name.clone().unwrap_or_default();
        let namespace = route
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        match self {
            Self::Local { dir } => save_local(dir, route, &name, &namespace),
            Self::Kube { client } => {
                let mut body = route.clone();
                body.metadata.managed_fields = None;
                body.metadata.resource_version = None;
                body.metadata.uid = None;
                body.metadata.creation_timestamp = None;
                body.metadata.generation = None;
                body.status = None;
                let api: Api<HttpRoute> = Api::namespaced(client.clone(), &namespace);
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .with_context(|| format!("could not apply HTTPRoute {namespace}/{name}"))?;
                Ok(format!("HTTPRoute {namespace}/{name}"))
            }
        }
    }
}

/// One YAML document of the policy directory and where it came from.
struct Doc {
    file: PathBuf,
    index: usize,
    value: serde_json::Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
    }

    fn origin(&self) -> String {
        format!("{} (document {})", self.file.display(), self.index + 1)
    }

    fn route(&self) -> anyhow::Result<HttpRoute> {
        Ok(from_value_strict::<HttpRoute>(self.value.clone())?)
    }
}

/// The documents of every YAML file of `dir`, read as the local controller
/// reads them; empty documents are left out.
fn read_documents(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<serde_json::Value>)>> {
    let files = read_files(dir)
        .with_context(|| format!("cannot read the policy directory {}", dir.display()))?;
    files
        .into_iter()
        .map(|(file, bytes)| {
            let docs = split_documents(&bytes).map_err(|(doc, problem)| {
                let at = doc.map_or_else(String::new, |i| format!(" (document {})", i + 1));
                anyhow::anyhow!("{}{at}: {problem}", file.display())
            })?;
            let docs = docs.into_iter().filter(|d| !d.is_null()).collect();
            Ok((file, docs))
        })
        .collect()
}

fn read_dir(dir: &Path) -> anyhow::Result<Vec<Doc>> {
    let mut out = Vec::new();
    for (file, docs) in read_documents(dir)? {
        for (index, value) in docs.into_iter().enumerate() {
            out.push(Doc {
                file: file.clone(),
                index,
                value,
            });
        }
    }
    Ok(out)
}

/// Replaces the route's document in the file that holds it (or writes a new
/// file), through a temporary file and a rename, so that the controller's
/// reload never reads half a file.
fn save_local(
    dir: &Path,
    route: &HttpRoute,
    name: &str,
    namespace: &str,
) -> anyhow::Result<String> {
    let value = serde_json::to_value(route).context("cannot encode the HTTPRoute")?;
    let is_this = |doc: &serde_json::Value| {
        doc.get("kind").and_then(|k| k.as_str()) == Some("HTTPRoute")
            && doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                == Some(name)
            && doc
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                == namespace
    };
    let mut target = None;
    for (file, mut docs) in read_documents(dir)? {
        if let Some(doc) = docs.iter_mut().find(|d| is_this(d)) {
            *doc = value.clone();
            target = Some((file, docs));
            break;
        }
    }
    let (file, docs) = target.unwrap_or_else(|| (dir.join(format!("{name}.yaml")), vec![value]));
    let mut text = String::new();
    for doc in &docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(doc).context("cannot encode YAML")?);
    }
    let tmp = file.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(file.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::weights::{Known, Weight, set};

    const POLICY: &str = r#"apiVersion: local.weft.io/v1alpha1
kind: Workloads
services:
  - name: checkout
    ports: [80]
  - name: checkout-v1
    ports: [80]
  - name: checkout-v2
    ports: [80]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: checkout-split
spec:
  parentRefs:
    - {group: "", kind: Service, name: checkout}
  rules:
    - backendRefs:
        - {name: checkout-v1, port: 80, weight: 90}
        - {name: checkout-v2, port: 80, weight: 10}
"#;

    #[tokio::test]
    async fn a_local_change_rewrites_the_route_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mesh.yaml"), POLICY).expect("write");
        let store = Store::Local {
            dir: dir.path().to_owned(),
        };
        let loaded = store.load("default", "checkout").await.expect("load");
        assert_eq!(loaded.known.len(), 3);
        let weights: Vec<Weight> = vec![
            "checkout-v1=50".parse().expect("w"),
            "checkout-v2=50".parse().expect("w"),
        ];
        let route = set(
            "checkout",
            "default",
            loaded.route.as_ref(),
            &weights,
            &Known(&loaded.known),
        )
        .expect("set");
        let written = store.save(&route).await.expect("save");
        assert!(written.ends_with("mesh.yaml"), "{written}");
        let again = store.load("default", "checkout").await.expect("reload");
        assert_eq!(
            weights::current(again.route.as_ref().expect("route")),
            vec![("checkout-v1".into(), 50.0), ("checkout-v2".into(), 50.0)]
        );
        assert_eq!(again.known.len(), 3, "the Workloads document is kept");
        let err = store
            .load("default", "nothing")
            .await
            .err()
            .expect("unknown service");
        assert!(err.to_string().contains("checkout-v1"), "{err}");
    }
}
