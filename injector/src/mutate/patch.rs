//! The JSON patch: explicit `add` operations (containers inserted at their
//! index, volumes appended, annotations set), so that applying it to the pod
//! as the API server sent it changes nothing else, even fields this crate's
//! Kubernetes types do not know.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde_json::{Value, json};

/// What the injector adds to a pod.
#[derive(Debug, Default)]
pub(super) struct Additions {
    /// Inserted at the front of `initContainers`, in this order.
    pub init_containers: Vec<Container>,
    /// Inserted at the front of `containers`.
    pub container: Option<Container>,
    /// Appended to `volumes`.
    pub volumes: Vec<Volume>,
    /// Set in `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// A JSON pointer token: `~` and `/` escaped.
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn add(path: String, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// The operations that turn `pod` into `pod` plus `additions`.
pub(super) fn build(pod: &Pod, additions: &Additions) -> Result<json_patch::Patch, String> {
    let mut ops = Vec::new();
    if !additions.annotations.is_empty() {
        match &pod.metadata.annotations {
            None => ops.push(add(
                "/metadata/annotations".to_owned(),
                to_value(&additions.annotations)?,
            )),
            Some(_) => {
                for (key, value) in &additions.annotations {
                    ops.push(add(
                        format!("/metadata/annotations/{}", token(key)),
                        Value::String(value.clone()),
                    ));
                }
            }
        }
    }
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    if !additions.init_containers.is_empty() {
        if spec.init_containers.is_none() {
            ops.push(add(
                "/spec/initContainers".to_owned(),
                to_value(&additions.init_containers)?,
            ));
        } else {
            for (i, c) in additions.init_containers.iter().enumerate() {
                ops.push(add(format!("/spec/initContainers/{i}"), to_value(c)?));
            }
        }
    }
    if let Some(c) = &additions.container {
        ops.push(add("/spec/containers/0".to_owned(), to_value(c)?));
    }
    if !additions.volumes.is_empty() {
        if spec.volumes.is_none() {
            ops.push(add(
                "/spec/volumes".to_owned(),
                to_value(&additions.volumes)?,
            ));
        } else {
            for v in &additions.volumes {
                ops.push(add("/spec/volumes/-".to_owned(), to_value(v)?));
            }
        }
    }
    serde_json::from_value(Value::Array(ops)).map_err(|e| format!("cannot build the patch: {e}"))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot serialise an addition: {e}"))
}
