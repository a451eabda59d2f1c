//! The CRD YAML in `deploy/crds/` is generated from the Rust types of
//! `weft_api::crd` and checked in, so that `kubectl apply -k deploy/crds` needs
//! no Rust. This test renders it afresh and fails when the checked-in files
//! differ; it also has `kubectl kustomize` read the directory.
//!
//! After changing a CRD type, update the files with
//! `WEFT_UPDATE_CRDS=1 cargo test -p weft-api --features k8s --test crds_generated`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use weft_api::consts::{CRD_GROUP, CRD_VERSION};

const HEADER: &str = "# Generated from the Rust types in api/src/crd/ by api/tests/crds_generated.rs.\n\
# Do not edit: run `WEFT_UPDATE_CRDS=1 cargo test -p weft-api --features k8s --test crds_generated`.\n";

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

/// Every file of `deploy/crds/` as it should be: name and text.
fn rendered() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut names = Vec::new();
    for crd in weft_api::crd::crds() {
        let name = format!(
            "{}.yaml",
            crd.metadata.name.as_deref().expect("a CRD has a name")
        );
        let yaml = serde_yaml::to_string(&crd).expect("a CRD renders as YAML");
        files.push((name.clone(), format!("{HEADER}{yaml}")));
        names.push(name);
    }
    let mut kustomization = format!(
        "{HEADER}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for name in &names {
        kustomization.push_str(&format!("  - {name}\n"));
    }
    files.push(("kustomization.yaml".to_owned(), kustomization));
    files
}

fn read_checked_in(dir: &Path) -> Vec<(String, String)> {
    support::read_files(dir, ".yaml")
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = crds_dir();
    let mut fresh = rendered();
    fresh.sort();
    if std::env::var_os("WEFT_UPDATE_CRDS").is_some() {
        std::fs::create_dir_all(&dir).expect("create deploy/crds");
        for (name, _) in read_checked_in(&dir) {
            std::fs::remove_file(dir.join(name)).expect("remove a stale CRD file");
        }
        for (name, text) in &fresh {
            std::fs::write(dir.join(name), text).expect("write a CRD file");
        }
        eprintln!("regenerated {}", dir.display());
        return;
    }
    let checked_in = read_checked_in(&dir);
    support::assert_current(
        "deploy/crds",
        &checked_in,
        &fresh,
        "WEFT_UPDATE_CRDS=1 cargo test -p weft-api --features k8s --test crds_generated",
    );
}

#[test]
fn crds_are_namespaced_with_a_status_subresource_in_the_weft_group() {
    let crds = weft_api::crd::crds();
    assert_eq!(crds.len(), 2);
    for crd in crds {
        let name = crd.metadata.name.clone().expect("a name");
        assert_eq!(crd.spec.group, CRD_GROUP, "{name}");
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        assert!(name.ends_with(&format!(".{CRD_GROUP}")), "{name}");
        let [version] = crd.spec.versions.as_slice() else {
            panic!("{name} has one version");
        };
        assert_eq!(version.name, CRD_VERSION, "{name}");
        let status = version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref());
        assert!(status.is_some(), "{name} has a status subresource");
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Target") && columns.contains(&"Accepted"),
            "{name}: {columns:?}"
        );
    }
}

/// `kubectl kustomize` reads the directory the way `kubectl apply -k` would,
/// so a file missing from the kustomization or YAML it cannot parse fails here.
/// Under `CI=true` a missing kubectl fails the test.
#[test]
fn kubectl_kustomize_builds_the_crds() {
    let output = match Command::new("kubectl")
        .arg("kustomize")
        .arg(crds_dir())
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            // Panics under CI=true.
            weft_tests::skip::skip(&weft_tests::skip::Reason::tool(
                "kubectl",
                format!("{e}; kubectl 1.28 or later, from the Kubernetes project's packages"),
            ));
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/crds failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&stdout)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("kustomize prints YAML"))
        .collect();
    let kinds: Vec<String> = built
        .iter()
        .map(|doc| {
            doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "authorizationpolicies.policy.weft.io",
            "resiliencepolicies.policy.weft.io"
        ],
        "kustomize output"
    );
}

use serde::Deserialize as _;
