//! Least-privilege RBAC for the controller and the injector: each rule carries
//! the reason for each of its verbs, written above it in the YAML.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use weft_api::consts::{self, install as names};

use super::manifests::meta;
use super::options::InstallOptions;
use super::render::{DeployFile, Document, RenderError};

/// One rule and why it is needed.
struct Grant {
    api_group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
    why: &'static str,
}

const CONTROLLER_GRANTS: &[Grant] = &[
    Grant {
        api_group: "",
        resources: &["services", "pods"],
        verbs: &["list", "watch"],
        why: "list, watch: the discovery index (Service -> endpoints -> pod -> service account ->\n\
              identity) is built from a full list and kept current by a watch; it never\n\
              reads a single object, so no get, and never writes one.",
    },
    Grant {
        api_group: "",
        resources: &["namespaces"],
        verbs: &["list", "watch"],
        why: "list, watch: each namespace's config.weft.io/default-inbound-policy, the\n\
              default inbound mode of its pods' ports.",
    },
    Grant {
        api_group: "discovery.k8s.io",
        resources: &["endpointslices"],
        verbs: &["list", "watch"],
        why: "list, watch: the endpoints of each Service, for discovery.",
    },
    Grant {
        api_group: "gateway.networking.k8s.io",
        resources: &["httproutes", "grpcroutes"],
        verbs: &["list", "watch"],
        why: "list, watch: routes attached to Services (GAMMA): matches, traffic split,\n\
              timeouts, retries.",
    },
    Grant {
        api_group: "gateway.networking.k8s.io",
        resources: &["httproutes/status", "grpcroutes/status"],
        verbs: &["patch"],
        why: "patch: the controller reports whether it accepted each route in its status\n\
              (server-side apply of the status subresource only; the spec is never written).",
    },
    Grant {
        api_group: consts::CRD_GROUP,
        resources: &["resiliencepolicies", "authorizationpolicies"],
        verbs: &["list", "watch"],
        why: "list, watch: weft's own policies (retry budget, circuit breaker, timeouts;\n\
              who may call whom).",
    },
    Grant {
        api_group: consts::CRD_GROUP,
        resources: &["resiliencepolicies/status", "authorizationpolicies/status"],
        verbs: &["patch"],
        why: "patch: the controller reports each policy's acceptance in its status\n\
              (server-side apply of the status subresource only).",
    },
    Grant {
        api_group: "authentication.k8s.io",
        resources: &["tokenreviews"],
        verbs: &["create"],
        why: "create: Identity.Certify proves a proxy's identity with a TokenReview of its\n\
              projected ServiceAccount token (audience identity.weft.io).",
    },
];

/// The controller's grants in its own namespace only.
const CONTROLLER_NAMESPACE_GRANTS: &[Grant] = &[Grant {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "update"],
    why: "get, create, update: the Lease weft-controller-status elects the one replica\n\
          that writes statuses; every replica reads it, creates it when missing,\n\
          and renews or takes it over (update, with the resourceVersion read).",
}];

const INJECTOR_GRANTS: &[Grant] = &[Grant {
    api_group: "",
    resources: &["namespaces"],
    verbs: &["get", "list", "watch"],
    why: "list, watch: the labels and config.weft.io/ annotations of every namespace,\n\
          cached, so that an admission needs no API call; get: a namespace created\n\
          moments before its first pod, not yet in the cache. Nothing is written:\n\
          the webhook answers with a patch and the API server applies it.",
}];

/// The service accounts, cluster roles and bindings of both components.
pub fn documents(opts: &InstallOptions) -> Result<Vec<Document>, RenderError> {
    let mut docs = Vec::new();
    for (name, grants) in [
        (consts::CONTROLLER_SERVICE_ACCOUNT, CONTROLLER_GRANTS),
        (names::INJECTOR_NAME, INJECTOR_GRANTS),
    ] {
        let account = ServiceAccount {
            metadata: meta(name, Some(&opts.namespace)),
            // Both components call the API server with this account's token.
            automount_service_account_token: Some(true),
            ..ServiceAccount::default()
        };
        docs.push(Document::new(
            DeployFile::Rbac,
            format!("The identity of {name} towards the API server."),
            &account,
        )?);
        let role = ClusterRole {
            metadata: meta(name, None),
            rules: Some(grants.iter().map(rule).collect()),
            ..ClusterRole::default()
        };
        docs.push(
            Document::new(
                DeployFile::Rbac,
                format!("What {name} may do, and nothing more: each rule says why."),
                &role,
            )?
            .with_rule_comments(grants.iter().map(|g| g.why).collect()),
        );
        let binding = ClusterRoleBinding {
            metadata: meta(name, None),
            role_ref: role_ref("ClusterRole", name),
            subjects: Some(vec![account_subject(name, &opts.namespace)]),
        };
        docs.push(Document::new(
            DeployFile::Rbac,
            format!("Grants the ClusterRole {name} to its service account."),
            &binding,
        )?);
    }
    let name = consts::CONTROLLER_SERVICE_ACCOUNT;
    let role = Role {
        metadata: meta(name, Some(&opts.namespace)),
        rules: Some(CONTROLLER_NAMESPACE_GRANTS.iter().map(rule).collect()),
    };
    docs.push(
        Document::new(
            DeployFile::Rbac,
            format!("What {name} may do in its own namespace only: each rule says why."),
            &role,
        )?
        .with_rule_comments(CONTROLLER_NAMESPACE_GRANTS.iter().map(|g| g.why).collect()),
    );
    let binding = RoleBinding {
        metadata: meta(name, Some(&opts.namespace)),
        role_ref: role_ref("Role", name),
        subjects: Some(vec![account_subject(name, &opts.namespace)]),
    };
    docs.push(Document::new(
        DeployFile::Rbac,
        format!("Grants the Role {name} to its service account."),
        &binding,
    )?);
    Ok(docs)
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

fn account_subject(name: &str, namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".to_owned(),
        name: name.to_owned(),
        namespace: Some(namespace.to_owned()),
        ..Subject::default()
    }
}

fn rule(grant: &Grant) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    PolicyRule {
        api_groups: Some(vec![grant.api_group.to_owned()]),
        resources: Some(strings(grant.resources)),
        verbs: strings(grant.verbs),
        ..PolicyRule::default()
    }
}
