//! Debian's Prometheus tools, for tests: `promtool check metrics` on an
//! exposition, a real `prometheus` server started on 127.0.0.1 that scrapes
//! given targets each second and answers PromQL, and the check that every
//! family an exposition holds is documented in `docs/metrics.md`.
//!
//! Under `CI=true` a missing tool is a failure; elsewhere the test says why it
//! skips and returns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// `path` if it is installed; `None` (after saying so, [`crate::skip::tool`])
/// when it is not. Under `CI=true` a missing tool panics.
pub fn tool(path: &str) -> Option<PathBuf> {
    let package = match Path::new(path).file_name().and_then(|n| n.to_str()) {
        Some("promtool") | Some("prometheus") => "prometheus",
        Some(other) => other,
        None => path,
    };
    crate::skip::tool(path, &format!("apt-get install {package}"))
}

/// Runs `promtool check metrics` on `text`; the error is promtool's output.
pub async fn promtool_check(promtool: &Path, text: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run promtool")?;
    let mut stdin = child.stdin.take().context("promtool's stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The sample names of the families an OpenMetrics exposition declares
/// (`# TYPE` lines), as `docs/metrics.md` writes them: counters with their
/// `_total` suffix, others by their base name.
pub fn family_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            })
        })
        .collect()
}

/// The families of `text` that `doc` does not name in backquotes.
pub fn undocumented(text: &str, doc: &str) -> Vec<String> {
    family_names(text)
        .into_iter()
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect()
}

/// A Prometheus server on 127.0.0.1, scraping its targets every second, in a
/// temporary directory; killed when dropped.
pub struct Prometheus {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Prometheus {
    /// Starts `binary` scraping `targets` (job `weft`) and waits until it is
    /// ready to answer queries.
    pub async fn start(binary: &Path, targets: &[SocketAddr]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: weft\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let addr = crate::control::free_port();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("start prometheus")?;
        let mut server = Self { addr, dir, child };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready").await {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!("prometheus exited ({status}):\n{}", server.log());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within 30s:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The base URL of its HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The `data.result` of an instant query (an error for a failed query).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let (status, body) =
            http_get(self.addr, &format!("/api/v1/query?query={}", percent(expr))).await?;
        let v: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        anyhow::ensure!(
            status == 200 && v["status"] == "success",
            "query {expr} failed ({status}): {body}"
        );
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query whose result is one sample, if it has one.
    pub async fn scalar(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(expr).await?;
        Ok(result
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse().ok()))
    }

    /// Waits until `expr` evaluates to `want`, querying every 200 ms up to
    /// `within`; the error names the last value seen.
    pub async fn wait_for(&self, expr: &str, want: f64, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.scalar(expr).await?;
            if got == Some(want) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{expr} is {got:?}, not {want}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved kept).
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One plain HTTP/1.1 GET; status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let rsp = tx.send_request(req).await?;
    let status = rsp.status().as_u16();
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_named_as_the_doc_writes_them() {
        let text = "# HELP weft_a A.\n# TYPE weft_a counter\nweft_a_total 1\n# TYPE weft_b histogram\n# TYPE weft_c gauge\n# EOF\n";
        assert_eq!(
            family_names(text),
            ["weft_a_total", "weft_b", "weft_c"].map(String::from)
        );
        assert_eq!(
            undocumented(text, "| `weft_a_total` | `weft_c` |"),
            ["weft_b".to_owned()]
        );
        assert_eq!(percent("sum(a{b=\"c\"})"), "sum%28a%7Bb%3D%22c%22%7D%29");
    }
}
