//! The one way a test says it cannot run here.
//!
//! A test that needs root, a program, a file or a cluster this machine lacks
//! calls [`skip`] (or [`root`], [`tool`], [`kubeconfig`]) and returns. The skip
//!
//! - is printed as `skipped: <suite> <test>: <reason>` on stderr (the suite is
//!   nextest's binary id, `weft-tests::netns_mesh`);
//! - is a failure under `CI=true` (`.ci/run`), unless the reason is
//!   [`Reason::NoKubeconfig`]: the Kubernetes suites are the only ones that
//!   may skip there, so a CI machine without `iptables` or root cannot turn
//!   the network-namespace suites green;
//! - is appended as `<suite>\t<test>\t<reason>` to the file named by
//!   `$WEFT_SKIP_REPORT` when it is set: `scripts/test` (README.md's test
//!   command) sets it and prints one line naming every suite that skipped and
//!   why.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Names the kubeconfig of a disposable cluster for the suites that need a
/// real API server; without it they skip (also under `CI=true`).
pub const KUBECONFIG_ENV: &str = "WEFT_E2E_KUBECONFIG";
/// Names the file every skip is appended to (`scripts/test` sets it).
pub const REPORT_ENV: &str = "WEFT_SKIP_REPORT";

/// Why a test cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// It needs root (or capabilities root has): what for.
    Root(String),
    /// A program is not installed: its name and how to install it.
    Tool { tool: String, install: String },
    /// Something else this machine lacks (files, a kernel permission), said
    /// with what to do about it.
    Missing(String),
    /// [`KUBECONFIG_ENV`] is not set: the only reason allowed under `CI=true`.
    NoKubeconfig,
}

impl Reason {
    /// [`Reason::Root`].
    pub fn root(what_for: impl Into<String>) -> Self {
        Self::Root(what_for.into())
    }

    /// [`Reason::Tool`]: `install` says how (`apt-get install iproute2`).
    pub fn tool(tool: impl Into<String>, install: impl Into<String>) -> Self {
        Self::Tool {
            tool: tool.into(),
            install: install.into(),
        }
    }

    /// Whether a test may skip for this reason under `CI=true`.
    pub fn allowed_under_ci(&self) -> bool {
        matches!(self, Self::NoKubeconfig)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root(what_for) => write!(f, "it needs root ({what_for}); run the tests as root"),
            Self::Tool { tool, install } => write!(f, "`{tool}` is not installed ({install})"),
            Self::Missing(what) => f.write_str(what),
            Self::NoKubeconfig => write!(
                f,
                "{KUBECONFIG_ENV} is not set; set it to a kubeconfig of a disposable cluster \
                 (kube-apiserver 1.28 or later, tests/README.md) to run it"
            ),
        }
    }
}

/// Whether this run is CI's (`CI=true`, as `.ci/run` has it).
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The running test's suite (nextest's binary id, else `<package>::<test
/// binary>`) and name (nextest's, else the test thread's).
pub fn current_test() -> (String, String) {
    let suite = std::env::var("NEXTEST_BINARY_ID").unwrap_or_else(|_| {
        let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "?".to_owned());
        let binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .map(|stem| match stem.rsplit_once('-') {
                // target/debug/deps/<binary>-<hash>
                Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    name.to_owned()
                }
                _ => stem,
            })
            .unwrap_or_else(|| "?".to_owned());
        format!("{package}::{binary}")
    });
    let test = std::env::var("NEXTEST_TEST_NAME")
        .ok()
        .or_else(|| {
            std::thread::current()
                .name()
                .filter(|name| *name != "main")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned());
    (suite, test)
}

/// Says that the running test skips, and why (see the module's doc). Under
/// `CI=true` it panics instead, unless the reason is [`Reason::NoKubeconfig`].
/// The caller returns after it.
pub fn skip(reason: &Reason) {
    let (suite, test) = current_test();
    let ci = in_ci();
    let report = std::env::var_os(REPORT_ENV).map(PathBuf::from);
    if let Err(failure) = decide(&suite, &test, reason, ci, report.as_deref()) {
        panic!("{failure}");
    }
}

/// What [`skip`] does, without reading the environment: `Err` (the failure's
/// message) when the skip is not allowed; else it prints the skip and appends
/// it to `report`.
pub fn decide(
    suite: &str,
    test: &str,
    reason: &Reason,
    ci: bool,
    report: Option<&Path>,
) -> Result<(), String> {
    if ci && !reason.allowed_under_ci() {
        return Err(format!(
            "{suite} {test} cannot skip under CI=true: {reason} \
             (only a missing {KUBECONFIG_ENV} may skip there)"
        ));
    }
    // Written to stderr directly, not through `eprintln!`, which the test
    // harness captures: a skip must be visible.
    let _ = writeln!(std::io::stderr(), "skipped: {suite} {test}: {reason}");
    if let Some(path) = report {
        let line = report_line(suite, test, reason);
        // One write of one line in append mode: lines from tests running in
        // parallel processes do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(e) = written {
            return Err(format!(
                "{suite} {test} skipped ({reason}) and cannot record it in {} \
                 (${REPORT_ENV}): {e}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The report's line for a skip: `<suite>\t<test>\t<reason>\n`, with tabs
/// and line breaks inside the fields turned into spaces.
pub fn report_line(suite: &str, test: &str, reason: &Reason) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    format!(
        "{}\t{}\t{}\n",
        clean(suite),
        clean(test),
        clean(&reason.to_string())
    )
}

/// `true` when the test runs as root; else it skips ([`skip`]) with
/// [`Reason::Root`] and returns `false`.
pub fn root(what_for: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(&Reason::root(what_for));
    false
}

/// The program `tool` (an absolute path, or a name looked up in `PATH`); when
/// it is missing the test skips ([`skip`]) with [`Reason::Tool`] and gets
/// `None`. `install` says how to install it (`apt-get install strace`).
pub fn tool(tool: &str, install: &str) -> Option<PathBuf> {
    let found = find_program(tool);
    if found.is_none() {
        skip(&Reason::tool(tool, install));
    }
    found
}

/// The program `name`: an absolute or relative path if it is a file, else
/// the first file of that name in a `PATH` directory.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The kubeconfig [`KUBECONFIG_ENV`] names; without it the test skips
/// ([`skip`], allowed under `CI=true`) and gets `None`.
pub fn kubeconfig() -> Option<PathBuf> {
    let path = std::env::var_os(KUBECONFIG_ENV).map(PathBuf::from);
    if path.is_none() {
        skip(&Reason::NoKubeconfig);
    }
    path
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;
    use std::process::Command;

    #[test]
    fn only_a_missing_kubeconfig_may_skip_under_ci() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("skips");
        for reason in [
            Reason::root("network namespaces"),
            Reason::tool("iptables", "apt-get install iptables"),
            Reason::Missing("the Gateway API CRDs are missing".into()),
        ] {
            let failure = decide("s::t", "a_test", &reason, true, Some(&report)).unwrap_err();
            assert!(failure.contains("cannot skip under CI=true"), "{failure}");
            assert!(failure.contains(&reason.to_string()), "{failure}");
            assert!(decide("s::t", "a_test", &reason, false, None).is_ok());
        }
        assert!(!report.exists(), "a refused skip is not recorded");
        decide("s::k", "k_test", &Reason::NoKubeconfig, true, Some(&report)).unwrap();
        decide("s::t", "a_test", &Reason::root("x"), false, Some(&report)).unwrap();
        let lines = std::fs::read_to_string(&report).unwrap();
        assert_eq!(
            lines,
            format!(
                "s::k\tk_test\t{}\ns::t\ta_test\tit needs root (x); run the tests as root\n",
                Reason::NoKubeconfig
            )
        );
    }

    #[test]
    fn report_lines_keep_three_fields() {
        let line = report_line("a\tb", "c\nd", &Reason::Missing("e\tf\ng".into()));
        assert_eq!(line, "a b\tc d\te f g\n");
    }

    /// Run by [`a_missing_tool_fails_under_ci_and_is_reported_elsewhere`] in
    /// a child process; does nothing in a normal run.
    #[test]
    fn child_skips_for_a_missing_tool() {
        if std::env::var_os("WEFT_SKIP_CHILD").is_none() {
            return;
        }
        assert!(tool("weft-no-such-tool", "apt-get install nothing").is_none());
    }

    /// The real [`tool`] in a child test process: `CI=true` turns the skip
    /// into a failure naming the tool; without it the test passes and its
    /// skip is in `$WEFT_SKIP_REPORT`.
    #[test]
    fn a_missing_tool_fails_under_ci_and_is_reported_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("skips");
        let child = |ci: bool| {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args(["--exact", "skip::tests::child_skips_for_a_missing_tool"])
                .args(["--nocapture", "--test-threads", "1"])
                .env("WEFT_SKIP_CHILD", "1")
                .env(REPORT_ENV, &report)
                .env_remove("NEXTEST_TEST_NAME");
            if ci {
                cmd.env("CI", "true");
            } else {
                cmd.env_remove("CI");
            }
            cmd.output().unwrap()
        };
        let out = child(true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "CI=true: a skip must fail: {stderr}");
        assert!(
            stderr.contains("cannot skip under CI=true")
                && stderr.contains("`weft-no-such-tool` is not installed"),
            "{stderr}"
        );
        assert!(!report.exists());

        let out = child(false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "no CI: the test skips: {stderr}");
        assert!(stderr.contains("skipped: "), "{stderr}");
        let lines = std::fs::read_to_string(&report).unwrap();
        let fields: Vec<&str> = lines.trim_end().split('\t').collect();
        assert_eq!(fields.len(), 3, "{lines:?}");
        assert!(fields[0].starts_with("weft-tests"), "{lines:?}");
        assert_eq!(fields[1], "skip::tests::child_skips_for_a_missing_tool");
        assert!(fields[2].contains("weft-no-such-tool"), "{lines:?}");
    }
}
