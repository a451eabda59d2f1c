//! `weft inject` and `weft uninject`: the webhook's mutation applied offline to
//! manifests (what `linkerd inject` and `istioctl kube-inject` do).
//!
//! Multi-document YAML in and out. Pods and the pod templates of Deployments,
//! StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs and
//! CronJobs are changed, `List`s are walked, every other document passes
//! through unchanged. A template has no namespace label to read, so it is
//! injected unless it opts out (`weft.io/inject: disabled`) or names a
//! namespace that is never injected. Only what the mutation adds or removes
//! is rewritten; the rest of each document keeps its order and form.
//! One line per object on stderr says what happened.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use weft_api::consts::{INJECT_ENABLED, INJECT_KEY};
use weft_injector::{Decision, InjectConfig, NamespaceInfo};

/// `weft inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// The manifest: a YAML file (several documents allowed), or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: String,
    /// The mesh's trust anchors (PEM), e.g. the `weft-trust-anchors` ConfigMap's
    /// bundle: `kubectl -n weft-system get configmap weft-trust-anchors -o jsonpath='{.data.*}'`.
    #[arg(long, value_name = "FILE")]
    trust_anchors: PathBuf,
    /// The injector configuration (YAML, the webhook's camelCase keys); the
    /// flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Native sidecar (`true`, Kubernetes 1.29+) or classic sidecar (`false`).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    native_sidecars: Option<bool>,
    /// Image of the proxy.
    #[arg(long, value_name = "IMAGE")]
    proxy_image: Option<String>,
    /// Image of weft-init.
    #[arg(long, value_name = "IMAGE")]
    init_image: Option<String>,
    /// Trust domain of the identities.
    #[arg(long, value_name = "DOMAIN")]
    trust_domain: Option<String>,
    /// The controller's address as proxies dial it (`host:port`).
    #[arg(long, value_name = "HOST:PORT")]
    controller_addr: Option<String>,
    /// The namespace of objects that name none (it is part of the identity).
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

/// `weft uninject`.
#[derive(Debug, clap::Args)]
pub struct UninjectArgs {
    /// The manifest: a YAML file (several documents allowed), or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: String,
}

/// What to do to one pod.
enum Op<'a> {
    Inject {
        config: &'a InjectConfig,
        namespace: &'a str,
    },
    Uninject,
}

/// Runs `weft inject`.
pub fn inject(args: &InjectArgs) -> ExitCode {
    let config = match inject_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft inject: {e:#}");
            return ExitCode::from(2);
        }
    };
    run(
        &args.file,
        &Op::Inject {
            config: &config,
            namespace: &args.namespace,
        },
    )
}

/// Runs `weft uninject`.
pub fn uninject(args: &UninjectArgs) -> ExitCode {
    run(&args.file, &Op::Uninject)
}

fn inject_config(args: &InjectArgs) -> anyhow::Result<InjectConfig> {
    let mut config = match &args.config {
        Some(path) => serde_yaml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("in {}", path.display()))?,
        None => InjectConfig::default(),
    };
    config.trust_anchors_pem = std::fs::read_to_string(&args.trust_anchors).with_context(|| {
        format!(
            "cannot read the trust anchors {}",
            args.trust_anchors.display()
        )
    })?;
    weft_api::tls::TrustAnchors::from_pem(config.trust_anchors_pem.as_bytes())
        .with_context(|| format!("in {}", args.trust_anchors.display()))?;
    let set = |field: &mut String, value: &Option<String>| {
        if let Some(v) = value {
            field.clone_from(v);
        }
    };
    set(&mut config.proxy_image, &args.proxy_image);
    set(&mut config.init_image, &args.init_image);
    set(&mut config.trust_domain, &args.trust_domain);
    set(&mut config.controller_addr, &args.controller_addr);
    if let Some(native) = args.native_sidecars {
        config.native_sidecars = native;
    }
    Ok(config)
}

fn run(file: &str, op: &Op<'_>) -> ExitCode {
    let command = match op {
        Op::Inject { .. } => "weft inject",
        Op::Uninject => "weft uninject",
    };
    let text = match read_input(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{command}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        match Yaml::deserialize(doc) {
            Ok(Yaml::Null) => {}
            Ok(v) => docs.push(v),
            Err(e) => {
                eprintln!("{command}: {file} is not YAML: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut refused = 0;
    for doc in &mut docs {
        refused += object(doc, op);
    }
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        match serde_yaml::to_string(doc) {
            Ok(s) => out.push_str(&s),
            Err(e) => {
                eprintln!("{command}: cannot write YAML: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print!("{out}");
    if refused > 0 {
        eprintln!("{command}: {refused} objects were refused and left unchanged");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
    }
}

fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// Handles one document (recursing into Lists); the number refused.
fn object(doc: &mut Yaml, op: &Op<'_>) -> usize {
    let kind = str_at(doc, &["kind"]).unwrap_or("").to_owned();
    let name = str_at(doc, &["metadata", "name"]).unwrap_or("").to_owned();
    let label = format!("{}/{name}", kind.to_lowercase());
    if kind.ends_with("List")
        && let Some(Yaml::Sequence(items)) = doc.get_mut("items")
    {
        return items.iter_mut().map(|item| object(item, op)).sum();
    }
    let template_path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => {
            eprintln!("{label}: unchanged (not a workload)");
            return 0;
        }
    };
    let is_job = kind == "Job" || kind == "CronJob";
    let namespace = str_at(doc, &["metadata", "namespace"]).map(str::to_owned);
    let Some(template) = template_path
        .iter()
        .try_fold(&mut *doc, |v, k| v.get_mut(*k))
    else {
        eprintln!("{label}: unchanged (no pod template)");
        return 0;
    };
    match pod(template, op, is_job, namespace.as_deref()) {
        Ok(summary) => {
            eprintln!("{label}: {summary}");
            0
        }
        Err(message) => {
            eprintln!("{label}: not injected: {message}");
            1
        }
    }
}

/// Injects or uninjects the pod (or pod template) `template` in place: a
/// summary, or the refusal.
fn pod(
    template: &mut Yaml,
    op: &Op<'_>,
    is_job: bool,
    namespace: Option<&str>,
) -> Result<String, String> {
    let metadata = template.get("metadata").cloned().unwrap_or(Yaml::Null);
    let spec = template.get("spec").cloned().unwrap_or(Yaml::Null);
    let original = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": serde_json::to_value(&metadata).map_err(|e| e.to_string())?,
        "spec": serde_json::to_value(&spec).map_err(|e| e.to_string())?,
    });
    let mut original = original;
    if original["metadata"].is_null() {
        original["metadata"] = serde_json::json!({});
    }
    let typed: Pod = serde_json::from_value(original.clone())
        .map_err(|e| format!("the pod spec does not parse: {e}"))?;
    let result: Json = match op {
        Op::Inject {
            config,
            namespace: default_ns,
        } => {
            let mut for_decision = typed;
            if is_job {
                // As the Job controller will create it: owned by a Job.
                for_decision.metadata.owner_references = Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: "batch/v1".into(),
                        kind: "Job".into(),
                        name: "job".into(),
                        ..Default::default()
                    },
                ]);
            }
            let ns = NamespaceInfo {
                name: namespace.unwrap_or(default_ns).to_owned(),
                labels: BTreeMap::from([(INJECT_KEY.to_owned(), INJECT_ENABLED.to_owned())]),
                annotations: BTreeMap::new(),
            };
            match weft_injector::mutate(&for_decision, &ns, config) {
                Decision::Inject(patch) => {
                    let mut doc = original;
                    json_patch::patch(&mut doc, &patch).map_err(|e| e.to_string())?;
                    sync(template, &doc)?;
                    return Ok(format!(
                        "injected ({} sidecar)",
                        if config.native_sidecars {
                            "native"
                        } else {
                            "classic"
                        }
                    ));
                }
                Decision::Skip(skipped) => {
                    return Ok(format!(
                        "unchanged: {} ({})",
                        skipped.reason,
                        skipped.reason.label()
                    ));
                }
                Decision::Deny(message) => return Err(message),
            }
        }
        Op::Uninject => match weft_injector::uninject(&typed) {
            Some(pod) => serde_json::to_value(&pod).map_err(|e| e.to_string())?,
            None => return Ok("unchanged (not injected)".to_owned()),
        },
    };
    sync(template, &result)?;
    Ok("uninjected".to_owned())
}

/// Makes the parts of `template` the mutation touches (annotations, init
/// containers, containers, volumes) equal to `pod`'s, reusing the original
/// YAML of every element that was already there so that it keeps its form.
fn sync(template: &mut Yaml, pod: &Json) -> Result<(), String> {
    let to_yaml = |v: &Json| serde_yaml::to_value(v).map_err(|e| e.to_string());
    let Yaml::Mapping(map) = template else {
        return Err("the pod template is not a mapping".to_owned());
    };
    let metadata = map
        .entry(Yaml::from("metadata"))
        .or_insert_with(|| Yaml::Mapping(serde_yaml::Mapping::new()));
    sync_key(
        metadata,
        "annotations",
        pod["metadata"].get("annotations"),
        &to_yaml,
    )?;
    if metadata
        .as_mapping()
        .is_some_and(serde_yaml::Mapping::is_empty)
    {
        map.remove("metadata");
    }
    let spec = map
        .entry(Yaml::from("spec"))
        .or_insert_with(|| Yaml::Mapping(serde_yaml::Mapping::new()));
    for key in ["initContainers", "containers", "volumes"] {
        sync_key(spec, key, pod["spec"].get(key), &to_yaml)?;
    }
    Ok(())
}

fn sync_key(
    parent: &mut Yaml,
    key: &str,
    want: Option<&Json>,
    to_yaml: &dyn Fn(&Json) -> Result<Yaml, String>,
) -> Result<(), String> {
    let Yaml::Mapping(parent) = parent else {
        return Err(format!("the parent of {key} is not a mapping"));
    };
    let Some(want) = want.filter(|w| !w.is_null()) else {
        parent.remove(key);
        return Ok(());
    };
    let old = parent.get(key).cloned();
    let new = match (want, old) {
        // Annotations: keep the entries that stay, add the new ones.
        (Json::Object(want), Some(Yaml::Mapping(mut old))) => {
            old.retain(|k, _| k.as_str().is_some_and(|k| want.contains_key(k)));
            for (k, v) in want {
                if old.get(k.as_str()).and_then(Yaml::as_str) != v.as_str() {
                    old.insert(Yaml::from(k.as_str()), to_yaml(v)?);
                }
            }
            Yaml::Mapping(old)
        }
        // Containers and volumes: the original element of the same name.
        (Json::Array(want), Some(Yaml::Sequence(old))) => {
            let mut out = Vec::new();
            for w in want {
                let name = w.get("name").and_then(Json::as_str);
                let kept = old
                    .iter()
                    .find(|o| name.is_some() && o.get("name").and_then(Yaml::as_str) == name);
                out.push(match kept {
                    Some(o) => o.clone(),
                    None => to_yaml(w)?,
                });
            }
            Yaml::Sequence(out)
        }
        (want, _) => to_yaml(want)?,
    };
    parent.insert(Yaml::from(key), new);
    Ok(())
}
