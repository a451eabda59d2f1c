//! The Rust code generated from `proto/` is checked in (`src/proto/`) so that
//! building weft needs no protoc. This test regenerates it with protox (a
//! pure-Rust protobuf compiler) and tonic-prost-build into a temporary directory
//! and fails when the checked-in code differs.
//!
//! After editing a `.proto` file, update the checked-in code with
//! `WEFT_UPDATE_PROTO=1 cargo test -p weft-api --test proto_generated`.

mod support;

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
    support::read_files(dir, ".rs")
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
    support::assert_current(
        "api/src/proto",
        &checked_in,
        &fresh,
        "WEFT_UPDATE_PROTO=1 cargo test -p weft-api --test proto_generated",
    );
}
