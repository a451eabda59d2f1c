//! Reads what each check needs from the API server and hands it to `eval`.

use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, Namespace, Pod, PodSpec, SeccompProfile, Secret,
    SecurityContext,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ListParams, PostParams};
use weft_api::consts::{self, install as names};

use super::CheckArgs;
use super::eval::{self, CheckResult};
use crate::install::kube_client;

/// Runs the checks `args` asks for, in order; stops after the first when the
/// API server cannot be reached.
pub async fn run_checks(args: &CheckArgs) -> Vec<CheckResult> {
    let client = match kube_client::client(args.kubeconfig.as_deref()).await {
        Ok(client) => client,
        Err(e) => return vec![eval::api_server(Err(format!("{e:#}").as_str()))],
    };
    let info = match client.apiserver_version().await {
        Ok(info) => info,
        Err(e) => return vec![eval::api_server(Err(error_chain(&e).as_str()))],
    };
    let mut results = vec![eval::api_server(Ok(&info)), eval::version(&info)];
    let ns = args.namespace.as_str();
    let injector_config: Option<ConfigMap> = get(
        &Api::namespaced(client.clone(), ns),
        names::INJECTOR_CONFIGMAP,
    )
    .await;
    let native_configured = injector_config
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(names::INJECTOR_CONFIG_KEY))
        .and_then(|yaml| serde_yaml::from_str::<weft_injector::InjectConfig>(yaml).ok())
        .map(|c| c.native_sidecars);
    // After install, probe in the mesh namespace with an account that exists
    // there; before, in `default`.
    let (probe_ns, account) = if args.pre {
        ("default", None)
    } else {
        (ns, Some(consts::CONTROLLER_SERVICE_ACCOUNT))
    };
    let probe = native_sidecar_probe(&client, probe_ns, account).await;
    results.push(eval::native_sidecars(
        probe.as_ref().map_err(String::as_str),
        native_configured,
    ));
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let present: Vec<String> = match crd_api.list_metadata(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect(),
        Err(_) => Vec::new(),
    };
    results.push(eval::crds(
        eval::GATEWAY_CRDS,
        &[names::GATEWAY_HTTPROUTE_CRD.to_owned()],
        &present,
        "install the Gateway API CRDs (a prerequisite): kubectl apply -f \
         https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.5.1/standard-install.yaml",
    ));
    if args.pre {
        return results;
    }
    results.push(eval::crds(
        eval::WEFT_CRDS,
        &eval::weft_crd_names(),
        &present,
        "run `weft install | kubectl apply -f -` (it carries weft's CRDs)",
    ));
    let now = SystemTime::now();
    let webhook: Option<MutatingWebhookConfiguration> =
        get(&Api::all(client.clone()), names::WEBHOOK_CONFIGURATION).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let serving = get(&secrets, names::INJECTOR_TLS_SECRET).await;
    results.push(eval::webhook(webhook.as_ref(), serving.as_ref(), now));
    let statefulset: Option<StatefulSet> = get(
        &Api::namespaced(client.clone(), ns),
        consts::CONTROLLER_SERVICE_ACCOUNT,
    )
    .await;
    let deployment: Option<Deployment> =
        get(&Api::namespaced(client.clone(), ns), names::INJECTOR_NAME).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let controller_pods = pods_named(&pods, consts::CONTROLLER_SERVICE_ACCOUNT).await;
    let injector_pods = pods_named(&pods, names::INJECTOR_NAME).await;
    results.push(eval::ready(
        eval::CONTROLLER,
        &format!("statefulset/{}", consts::CONTROLLER_SERVICE_ACCOUNT),
        statefulset.map(|s| s.spec.and_then(|s| s.replicas).unwrap_or(1)),
        &controller_pods,
    ));
    results.push(eval::ready(
        eval::INJECTOR,
        &format!("deployment/{}", names::INJECTOR_NAME),
        deployment.map(|d| d.spec.and_then(|s| s.replicas).unwrap_or(1)),
        &injector_pods,
    ));
    let issuer = get(&secrets, names::ISSUER_SECRET).await;
    results.push(eval::issuer(issuer.as_ref(), now));
    let anchors: Option<ConfigMap> = get(
        &Api::namespaced(client.clone(), ns),
        names::TRUST_ANCHORS_CONFIGMAP,
    )
    .await;
    results.push(eval::anchors(anchors.as_ref(), issuer.as_ref(), now));
    results.push(namespaces(&client).await);
    results
}

/// An error and its sources, `: `-separated (kube's own message is terse).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = e.source();
    }
    text
}

async fn get<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.ok().flatten()
}

async fn pods_named(api: &Api<Pod>, name: &str) -> Vec<Pod> {
    let selector = format!("{}={name}", names::NAME_LABEL);
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Dry-run creates a Pod whose first init container is a native sidecar and
/// returns what the API server would have stored.
async fn native_sidecar_probe(
    client: &kube::Client,
    namespace: &str,
    account: Option<&str>,
) -> Result<Pod, String> {
    // Locked down to the `restricted` Pod Security profile, which `weft install`
    // enforces on the mesh namespace: the probe is judged on its sidecar field
    // alone, never refused for its security context.
    let container = |name: &str| Container {
        name: name.to_owned(),
        image: Some("registry.k8s.io/pause:3.10".to_owned()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            run_as_user: Some(i64::from(consts::PROXY_UID)),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("weft-check-native-sidecar".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(vec![Container {
                restart_policy: Some("Always".to_owned()),
                ..container("sidecar")
            }]),
            containers: vec![container("app")],
            service_account_name: account.map(str::to_owned),
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let params = PostParams {
        dry_run: true,
        field_manager: Some(names::FIELD_MANAGER.to_owned()),
    };
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&params, &pod)
        .await
        .map_err(|e| error_chain(&e))
}

async fn namespaces(client: &kube::Client) -> CheckResult {
    let enabled = format!("{}={}", consts::INJECT_KEY, consts::INJECT_ENABLED);
    let namespaces: Vec<Namespace> = match Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(&enabled))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            return CheckResult::fail(
                eval::NAMESPACES,
                format!("could not list namespaces: {e}"),
                "give `weft check` the right to list namespaces and pods",
            );
        }
    };
    let mut pods = Vec::new();
    for ns in namespaces.iter().filter_map(|n| n.metadata.name.as_deref()) {
        if let Ok(list) = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
        {
            pods.extend(list.items);
        }
    }
    // Pods that opted in themselves, in other namespaces.
    if let Ok(list) = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(&enabled))
        .await
    {
        let seen: Vec<&str> = namespaces
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let others: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| !seen.contains(&p.metadata.namespace.as_deref().unwrap_or_default()))
            .collect();
        pods.extend(others);
    }
    eval::namespaces(&namespaces, &pods)
}
