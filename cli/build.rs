//! Embeds the generated CRDs (`deploy/crds/*.yaml`, except its
//! kustomization) into `weft install`, so that its output and the kustomize
//! base carry the same CRDs.

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dir = manifest.join("../deploy/crds");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "yaml")
                        && p.file_name().is_some_and(|n| n != "kustomization.yaml")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut code = String::from("/// The CRD files of `deploy/crds/`: (file name, contents).\n");
    code.push_str("pub const CRD_FILES: &[(&str, &str)] = &[\n");
    for file in &files {
        println!("cargo::rerun-if-changed={}", file.display());
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let _ = writeln!(
            code,
            "    ({name:?}, include_str!({:?})),",
            file.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("crds.rs");
    if let Err(e) = std::fs::write(&out, code) {
        panic!("could not write {}: {e}", out.display());
    }
}
