//! Shared by the tests that keep generated files current (`proto_generated`,
//! `crds_generated`): read a directory's files, and compare them with a fresh
//! generation, naming the first stale file and line.

use std::path::Path;

/// The files of `dir` whose names end with `suffix`, as (name, text), sorted.
pub(crate) fn read_files(dir: &Path, suffix: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .map(|path| {
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is UTF-8 text: {e}", path.display()));
            (name, text)
        })
        .collect();
    files.sort();
    files
}

/// Fails unless `checked_in` equals `fresh` (both sorted by name): `what` names
/// the checked-in directory (`api/src/proto`), `update` the command that
/// rewrites it.
pub(crate) fn assert_current(
    what: &str,
    checked_in: &[(String, String)],
    fresh: &[(String, String)],
    update: &str,
) {
    let names = |files: &[(String, String)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(checked_in),
        names(fresh),
        "the files in {what} differ from what is generated; run `{update}`"
    );
    for ((name, old), (_, new)) in checked_in.iter().zip(fresh) {
        if old != new {
            let line = old
                .lines()
                .zip(new.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| old.lines().count().min(new.lines().count()));
            panic!(
                "{what}/{name} is stale (first difference at line {}); run `{update}`",
                line + 1
            );
        }
    }
}
