//! Offline validation of Kubernetes manifests against the API's JSON schemas
//! with `kubernetes-validate` (PyPI: `pip install kubernetes-validate`, which
//! ships the schemas of many Kubernetes versions, so no network is needed).
//!
//! [`validate_files`] runs it in strict mode (unknown fields are errors) on
//! files or directories of YAML, once per Kubernetes version, and fails with
//! its output. A missing validator fails under `CI=true` and is reported as
//! a skip ([`crate::skip`], with the install command) otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// API groups served by CRDs (weft's own and the Gateway API), which the
/// validator has no built-in schema for: their objects are not validated here
/// (the CRD tests and the real API server check them).
pub const CRD_GROUPS: &[&str] = &["policy.weft.io", "gateway.networking.k8s.io"];

/// The validator's program name.
pub const VALIDATOR: &str = "kubernetes-validate";

/// What [`validate_files`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// Every file validated against every version.
    Passed { files: usize },
    /// The validator is not installed (and `CI` is not `true`).
    Skipped,
}

/// Validates every YAML file in `paths` (files, or directories whose `.yaml`
/// and `.yml` files are taken, sorted) against each of `versions` (`1.28.0`,
/// `1.33.0`). Each document must be a Kubernetes object the schema knows.
pub fn validate_files(paths: &[impl AsRef<Path>], versions: &[&str]) -> anyhow::Result<Validation> {
    let files = collect(paths)?;
    if files.is_empty() {
        bail!("no YAML files to validate in {:?}", display(paths));
    }
    if Command::new(VALIDATOR).arg("--version").output().is_err() {
        // Panics under CI=true.
        crate::skip::skip(&crate::skip::Reason::tool(
            VALIDATOR,
            format!(
                "pip install kubernetes-validate; schema validation of {} files",
                files.len()
            ),
        ));
        return Ok(Validation::Skipped);
    }
    for version in versions {
        let out = Command::new(VALIDATOR)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .with_context(|| format!("cannot run {VALIDATOR}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The validator only warns (and exits 0) for a kind it has no schema
        // for: that is right for CRD-served groups, and a failure for any other
        // (a mistyped apiVersion or kind would otherwise pass unchecked).
        let unknown: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("WARN") && l.contains("Couldn't find schema"))
            .filter(|l| {
                !CRD_GROUPS
                    .iter()
                    .any(|g| l.contains(&format!("api version {g}/")))
            })
            .collect();
        if !unknown.is_empty() {
            bail!(
                "{VALIDATOR} -k {version} knows no schema for these objects (not a CRD group):\n{}",
                unknown.join("\n")
            );
        }
        if !out.status.success() {
            bail!(
                "{VALIDATOR} -k {version} refused some of {} files (exit {:?}):\n{}{}",
                files.len(),
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(Validation::Passed { files: files.len() })
}

fn display(paths: &[impl AsRef<Path>]) -> Vec<PathBuf> {
    paths.iter().map(|p| p.as_ref().to_path_buf()).collect()
}

fn collect(paths: &[impl AsRef<Path>]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.to_path_buf());
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The validator must refuse what the API server refuses, or passing it
    /// proves nothing.
    #[test]
    fn refuses_an_unknown_field_and_accepts_a_pod() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: i}]\n",
        )
        .unwrap();
        match validate_files(&[&good], &["1.28.0", "1.33.0"]).unwrap() {
            Validation::Skipped => return,
            Validation::Passed { files } => assert_eq!(files, 1),
        }
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: i, colour: red}]\n",
        )
        .unwrap();
        let error = validate_files(&[dir.path()], &["1.33.0"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("colour"), "{error}");
    }
}
