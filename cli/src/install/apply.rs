//! `weft install --apply`: server-side apply of every document, in order,
//! with the field manager `weft` (forcing conflicts: `weft install` owns
//! these objects).

use anyhow::Context;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use weft_api::consts::install::FIELD_MANAGER;

use super::render::Document;

pub async fn apply_all(client: &kube::Client, docs: &[Document]) -> anyhow::Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for doc in docs {
        let object: DynamicObject = serde_json::to_value(&doc.body)
            .and_then(serde_json::from_value)
            .with_context(|| format!("{} {} is not a Kubernetes object", doc.kind(), doc.name()))?;
        let types = object
            .types
            .as_ref()
            .with_context(|| format!("{} has no apiVersion or kind", doc.name()))?;
        let gvk = GroupVersionKind::try_from(types)
            .with_context(|| format!("{} {}: bad apiVersion", doc.kind(), doc.name()))?;
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| {
                format!(
                    "the API server does not serve {}/{} {} (is a CRD missing?)",
                    gvk.group, gvk.version, gvk.kind
                )
            })?;
        let api: Api<DynamicObject> = match (&caps.scope, object.metadata.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        let name = doc.name();
        api.patch(name, &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("could not apply {} {name}", doc.kind()))?;
        eprintln!("applied {} {name}", doc.kind());
    }
    Ok(())
}
