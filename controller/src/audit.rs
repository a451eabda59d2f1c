//! The issuance audit trail: every issuance and refusal, appended as one JSON
//! line, each line carrying the SHA-256 of the line before it (`prev`; the
//! first line carries 64 zeros) and its own sequence number (`seq`, from 1).
//!
//! Editing a line breaks the `prev` of the next one; deleting a line breaks the
//! sequence. The last line has no successor, so a small head file beside the
//! trail (`<trail>.head`: the last `seq` and the hash of that line) is
//! rewritten after each append; a trail that ends before the head's record, or
//! whose record there hashes differently, was cut or edited at its end. The head
//! is one fixed-width line (`<seq, 20 digits> <sha256 hex>`) overwritten in
//! place, so keeping it costs one small write per record.
//! [`verify`] checks all of it and names the first broken line.
//!
//! A trail can also echo each record, as the same single JSON line, to another
//! writer ([`AuditLog::echo_to`]): in Kubernetes the controller echoes to
//! stdout, so the cluster's log pipeline keeps a copy off the node's volume.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weft_api::Identity;
use weft_api::certify::{Refusal, RefusalReason};

use crate::ca::{Issued, rfc3339};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of the trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// When the record was written, RFC 3339.
    pub time: String,
    pub event: AuditEventKind,
    /// The identity certified, or the identity the token proved before a
    /// refusal (absent when the token proved nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Serial number of the issued certificate, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The refusal reason (`token-expired`, `other-identity`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// SHA-256 (hex) of the previous line, without its newline.
    pub prev: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditEventKind {
    Issued,
    Refused,
}

/// What happened, as the controller reports it.
#[derive(Clone, Debug)]
pub enum AuditEvent<'a> {
    Issued(&'a Issued),
    Refused {
        identity: Option<&'a Identity>,
        refusal: &'a Refusal,
    },
}

/// The head file's content: the last record's seq and line hash.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}

impl Head {
    fn encode(&self) -> String {
        format!("{:020} {}\n", self.seq, self.hash)
    }

    fn parse(text: &str) -> Option<Self> {
        let (seq, hash) = text.trim_end().split_once(' ')?;
        let valid_hash = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        Some(Self {
            seq: seq.parse().ok()?,
            hash: valid_hash.then(|| hash.to_owned())?,
        })
    }
}

/// Errors writing or reading the trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("could not {action} the audit trail {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The chain is broken: `line` (1-based) is the first line found wrong.
    #[error("audit trail {path} is broken at line {line}: {problem}")]
    Broken {
        path: PathBuf,
        line: u64,
        problem: String,
    },
}

/// An open trail, appended to by the controller.
pub struct AuditLog {
    path: PathBuf,
    head_path: PathBuf,
    state: Mutex<Tail>,
    echo: Option<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("echo", &self.echo.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Tail {
    file: std::fs::File,
    head: std::fs::File,
    seq: u64,
    hash: String,
}

impl AuditLog {
    /// Opens (or creates) the trail at `path`. An existing trail is verified
    /// first and the chain continues from its last line; a broken trail is an
    /// error (move it aside to start a new one: the old one is evidence).
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |action, source| AuditError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        }
        let (seq, hash) = if path.exists() {
            let records = verify(path)?;
            let text = std::fs::read_to_string(path).map_err(|e| io("read", e))?;
            let last_hash = text
                .lines()
                .last()
                .map_or_else(|| GENESIS.to_owned(), line_hash);
            (records.last().map_or(0, |r| r.seq), last_hash)
        } else {
            (0, GENESIS.to_owned())
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io("open", e))?;
        let head = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(head_path(path))
            .map_err(|e| io("open the head of", e))?;
        let log = Self {
            path: path.to_owned(),
            head_path: head_path(path),
            state: Mutex::new(Tail {
                file,
                head,
                seq,
                hash,
            }),
            echo: None,
        };
        if seq > 0 {
            // A head lagging behind (a crash between the two writes) catches up.
            let mut tail = log.state.lock().unwrap_or_else(|p| p.into_inner());
            log.write_head(&mut tail)?;
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Also writes every record appended from now on to `writer`, as the same
    /// single JSON line (one `write_all` per record, so lines from other
    /// writers of the same stream never split it). A failed echo is logged and
    /// does not fail the append: the trail on disk is the record of truth.
    pub fn echo_to(mut self, writer: Box<dyn Write + Send>) -> Self {
        self.echo = Some(Mutex::new(writer));
        self
    }

    /// Echoes every record to the process's stdout ([`Self::echo_to`]).
    pub fn echo_to_stdout(self) -> Self {
        self.echo_to(Box::new(StdoutLines))
    }

    /// Appends one record.
    pub fn append(
        &self,
        event: &AuditEvent<'_>,
        peer: Option<SocketAddr>,
    ) -> Result<(), AuditError> {
        let mut tail = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut record = AuditRecord {
            seq: tail.seq + 1,
            time: rfc3339(SystemTime::now()),
            event: AuditEventKind::Issued,
            identity: None,
            serial: None,
            not_before: None,
            not_after: None,
            reason: None,
            detail: None,
            peer: peer.map(|p| p.to_string()),
            prev: tail.hash.clone(),
        };
        match event {
            AuditEvent::Issued(issued) => {
                record.identity = Some(issued.identity.to_string());
                record.serial = Some(issued.serial.clone());
                record.not_before = Some(rfc3339(issued.not_before));
                record.not_after = Some(rfc3339(issued.certified.valid_until));
            }
            AuditEvent::Refused { identity, refusal } => {
                record.event = AuditEventKind::Refused;
                record.identity = identity.map(ToString::to_string);
                record.reason = Some(refusal.reason.as_str().to_owned());
                record.detail = Some(refusal.detail.clone());
            }
        }
        let line = serde_json::to_string(&record).expect("an audit record serializes");
        let io = |action, source| AuditError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        tail.file
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| io("append to", e))?;
        tail.seq = record.seq;
        tail.hash = line_hash(&line);
        self.write_head(&mut tail)?;
        if let Some(echo) = &self.echo {
            let mut echo = echo.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = echo
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| echo.flush())
            {
                tracing::warn!(error = %e, seq = record.seq, "could not echo an audit record");
            }
        }
        Ok(())
    }

    /// Overwrites the head file in place (fixed width, one write).
    fn write_head(&self, tail: &mut Tail) -> Result<(), AuditError> {
        use std::os::unix::fs::FileExt;
        let head = Head {
            seq: tail.seq,
            hash: tail.hash.clone(),
        }
        .encode();
        tail.head
            .write_all_at(head.as_bytes(), 0)
            .map_err(|source| AuditError::Io {
                action: "write the head of",
                path: self.head_path.clone(),
                source,
            })
    }
}

/// Stdout, locked for each whole line.
struct StdoutLines;

impl Write for StdoutLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// The head file beside a trail.
pub fn head_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".head");
    path.with_file_name(name)
}

fn line_hash(line: &str) -> String {
    Sha256::digest(line.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads and verifies the trail at `path` (and its head file, when present).
pub fn verify(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let io = |action, source| AuditError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|e| io("read", e))?;
    let head = match std::fs::read_to_string(head_path(path)) {
        // Created with the trail, written with its first record.
        Ok(text) if text.is_empty() => None,
        Ok(text) => Some(Head::parse(&text).ok_or_else(|| AuditError::Broken {
            path: path.to_owned(),
            line: 0,
            problem: format!(
                "its head file {} is corrupt (expected `<seq> <sha256>`)",
                head_path(path).display()
            ),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("read the head of", e)),
    };
    verify_text(&text, head.as_ref().map(|h| (h.seq, h.hash.as_str()))).map_err(
        |(line, problem)| AuditError::Broken {
            path: path.to_owned(),
            line,
            problem,
        },
    )
}

/// Verifies the lines of a trail; on failure, the first broken line (1-based)
/// and what is wrong with it.
fn verify_text(text: &str, head: Option<(u64, &str)>) -> Result<Vec<AuditRecord>, (u64, String)> {
    let mut records = Vec::new();
    let mut prev_hash = GENESIS.to_owned();
    let mut hashes = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index as u64 + 1;
        let record: AuditRecord = serde_json::from_str(line).map_err(|e| {
            (
                number,
                format!("it is not a valid audit record ({e}); it was edited or cut"),
            )
        })?;
        if record.seq != number {
            let problem = if record.seq > number {
                format!(
                    "it carries seq {} where {number} was expected: {} line(s) before it were deleted",
                    record.seq,
                    record.seq - number
                )
            } else {
                format!(
                    "it carries seq {} where {number} was expected: it was edited, or lines were \
                     duplicated",
                    record.seq
                )
            };
            return Err((number, problem));
        }
        if record.prev != prev_hash {
            let problem = if number == 1 {
                "it does not start the chain (its prev is not the genesis hash): it was edited"
                    .to_owned()
            } else {
                format!(
                    "line {} was edited: its hash no longer matches the prev hash that line {number} \
                     recorded",
                    number - 1
                )
            };
            return Err((number.saturating_sub(1).max(1), problem));
        }
        prev_hash = line_hash(line);
        hashes.push(prev_hash.clone());
        records.push(record);
    }
    if let Some((seq, hash)) = head {
        let count = records.len() as u64;
        if seq > count {
            return Err((
                count + 1,
                format!(
                    "the trail ends after line {count} but its head records {seq} lines: line(s) \
                     {}..={seq} were deleted",
                    count + 1
                ),
            ));
        }
        if seq > 0 && hashes[seq as usize - 1] != hash {
            return Err((
                seq,
                format!("line {seq} was edited: its hash no longer matches the trail's head"),
            ));
        }
    }
    Ok(records)
}

impl AuditRecord {
    /// The refusal reason, when this record is a refusal with a known reason.
    pub fn refusal_reason(&self) -> Option<RefusalReason> {
        self.reason.as_deref().and_then(|r| r.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_trail(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let id = Identity::new("cluster.local", "shop", "checkout").unwrap();
        for i in 0..n {
            let refusal = Refusal::new(RefusalReason::OtherIdentity, format!("attempt {i}"));
            log.append(
                &AuditEvent::Refused {
                    identity: Some(&id),
                    refusal: &refusal,
                },
                None,
            )
            .unwrap();
        }
        (dir, path)
    }

    fn broken_line(path: &Path) -> (u64, String) {
        match verify(path) {
            Err(AuditError::Broken { line, problem, .. }) => (line, problem),
            other => panic!("expected a broken trail, got {other:?}"),
        }
    }

    fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        edit(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn intact_trail_verifies_and_reopens_continuing_the_chain() {
        let (_dir, path) = sample_trail(3);
        assert_eq!(verify(&path).unwrap().len(), 3);
        let log = AuditLog::open(&path).unwrap();
        let refusal = Refusal::new(RefusalReason::BadCsr, "x");
        log.append(
            &AuditEvent::Refused {
                identity: None,
                refusal: &refusal,
            },
            Some("127.0.0.1:1".parse().unwrap()),
        )
        .unwrap();
        let records = verify(&path).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[3].peer.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(records[3].refusal_reason(), Some(RefusalReason::BadCsr));
    }

    #[test]
    fn an_edited_line_is_named() {
        for target in [0usize, 2, 4] {
            let (_dir, path) = sample_trail(5);
            rewrite(&path, |lines| {
                lines[target] = lines[target].replace("attempt", "attempX");
            });
            let (line, problem) = broken_line(&path);
            assert_eq!(line, target as u64 + 1, "{problem}");
            assert!(problem.contains("edited"), "{problem}");
            assert!(
                AuditLog::open(&path).is_err(),
                "a broken trail is not continued"
            );
        }
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_record_is_echoed_as_the_same_json_line() {
        let (_dir, path) = sample_trail(2);
        let echoed = Shared::default();
        let log = AuditLog::open(&path)
            .unwrap()
            .echo_to(Box::new(echoed.clone()));
        let id = Identity::new("cluster.local", "shop", "web").unwrap();
        let refusal = Refusal::new(RefusalReason::OtherIdentity, "echo me");
        for _ in 0..2 {
            log.append(
                &AuditEvent::Refused {
                    identity: Some(&id),
                    refusal: &refusal,
                },
                None,
            )
            .unwrap();
        }
        let echoed = String::from_utf8(echoed.0.lock().unwrap().clone()).unwrap();
        let trail = std::fs::read_to_string(&path).unwrap();
        let last_two: Vec<&str> = trail.lines().skip(2).collect();
        assert_eq!(echoed.lines().collect::<Vec<_>>(), last_two);
        for line in echoed.lines() {
            let record: AuditRecord = serde_json::from_str(line).unwrap();
            assert_eq!(record.identity.as_deref(), Some(id.to_string().as_str()));
        }
        assert_eq!(verify(&path).unwrap().len(), 4);
    }

    #[test]
    fn a_deleted_line_is_named() {
        for target in [0usize, 2, 4] {
            let (_dir, path) = sample_trail(5);
            rewrite(&path, |lines| {
                lines.remove(target);
            });
            let (line, problem) = broken_line(&path);
            assert_eq!(line, target as u64 + 1, "{problem}");
            assert!(problem.contains("deleted"), "{problem}");
        }
    }
}
