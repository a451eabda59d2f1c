//! The Rust code generated from `proto/` is checked in (`src/proto/`) so that
//! building weft needs no protoc. This test regenerates it with protox (a
//! pure-Rust protobuf compiler) and tonic-prost-build into a temporary directory
//! and fails when the checked-in code differs.
//!
//! After editing a `.proto` file, update the checked-in code with
//! `WEFT_UPDATE_PROTO=1 cargo test -p weft-api --test proto_generated`.

use std::path::{Path, PathBuf};

/// The protocol files, relative to `proto/`.
const PROTOS: &[&str] = &[
    "weft/v1/identity.proto",
    "weft/v1/discovery.proto",
    "weft/v1/inbound.proto",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Generates the Rust code for every file of [`PROTOS`] into `out_dir`.
fn generate(out_dir: &Path) {
    let proto_dir = crate_dir().join("proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    let fds = protox::compile(&files, [&proto_dir]).expect("the .proto files compile");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .compile_fds(fds)
        .expect("tonic-prost-build generates code");
}

fn generated_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("the output directory is readable")
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("generated code is UTF-8");
            (name, text)
        })
        .filter(|(name, _)| name.ends_with(".rs"))
        .collect();
    files.sort();
    files
}

#[test]
fn checked_in_code_matches_the_protos() {
    let checked_in_dir = crate_dir().join("src/proto");
    if std::env::var_os("WEFT_UPDATE_PROTO").is_some() {
        for (name, _) in generated_files(&checked_in_dir) {
            std::fs::remove_file(checked_in_dir.join(name)).expect("remove stale generated code");
        }
        generate(&checked_in_dir);
        eprintln!("regenerated {}", checked_in_dir.display());
        return;
    }
    let fresh_dir = tempfile::tempdir().expect("a temporary directory");
    generate(fresh_dir.path());
    let fresh = generated_files(fresh_dir.path());
    let checked_in = generated_files(&checked_in_dir);
    assert!(!fresh.is_empty(), "generation produced no file");
    let names = |files: &[(String, String)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&checked_in),
        names(&fresh),
        "the generated files in api/src/proto differ from the protos; run \
         `WEFT_UPDATE_PROTO=1 cargo test -p weft-api --test proto_generated`"
    );
    for ((name, old), (_, new)) in checked_in.iter().zip(&fresh) {
        if old != new {
            let line = old
                .lines()
                .zip(new.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| old.lines().count().min(new.lines().count()));
            panic!(
                "api/src/proto/{name} is stale (first difference at line {}); run \
                 `WEFT_UPDATE_PROTO=1 cargo test -p weft-api --test proto_generated`",
                line + 1
            );
        }
    }
}
