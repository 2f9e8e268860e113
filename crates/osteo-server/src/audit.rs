//! The audit log: one JSON object per request, appended to `audit.path`, each line carrying the
//! BLAKE3 digest of the line before it, so an edited, removed or reordered line breaks the chain
//! at the first line after it ([`verify`], `osteo audit verify`).
//!
//! A record holds who asked what and with which outcome — time, principal, peer address, RPC,
//! study handle, model, backend, grade, status code, latency — never patient data, DICOM values
//! or identifiers. Every line is written and flushed before the request is answered, and with
//! `audit.fsync = true` (the default) also synced to disk; a record that cannot be written fails
//! the request instead of being lost.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// `prev` of the first record of a log.
pub const GENESIS: &str = "genesis";

/// One audited request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log, from 1.
    pub seq: u64,
    /// UTC time the request finished, RFC 3339 with milliseconds.
    pub time: String,
    /// Who asked (`anonymous` without authentication).
    pub principal: String,
    /// The client's address, `ip:port`.
    pub peer: String,
    /// The RPC, e.g. `Classify`.
    pub rpc: String,
    /// The study handle, or "".
    pub study: String,
    /// The served model's name, `unknown`, or "".
    pub model: String,
    /// The version of the model that answered, or "" (absent in records written before
    /// versions were recorded).
    #[serde(default)]
    pub version: String,
    /// Hex BLAKE3 digest of that version's weights, or "" (absent in records written before
    /// digests were recorded).
    #[serde(default)]
    pub weights_blake3: String,
    /// The backend, `unknown`, or "".
    pub backend: String,
    /// The grade answered, or "".
    pub grade: String,
    /// The gRPC status code, e.g. `Ok`, `NotFound`.
    pub code: String,
    /// Server time for the request in milliseconds.
    pub latency_ms: f64,
    /// Hex BLAKE3 of the previous line (without its newline), or [`GENESIS`].
    pub prev: String,
}

impl Record {
    /// The record of a request to `rpc` by `principal` ("" when none was authenticated) from
    /// `peer` that ended with `code` after `latency_ms`; study, model, backend and grade are
    /// empty until the caller sets what it knows, and the log fills in `seq`, `time` and `prev`.
    pub fn new(
        rpc: &str,
        principal: &str,
        peer: String,
        code: tonic::Code,
        latency_ms: f64,
    ) -> Self {
        Self {
            seq: 0,
            time: String::new(),
            principal: principal.into(),
            peer,
            rpc: rpc.into(),
            study: String::new(),
            model: String::new(),
            version: String::new(),
            weights_blake3: String::new(),
            backend: String::new(),
            grade: String::new(),
            code: format!("{code:?}"),
            latency_ms,
            prev: String::new(),
        }
    }
}

/// Why the audit log cannot be written or does not verify.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The file cannot be opened, read or written.
    #[error("audit log {path}: {message}")]
    Io {
        /// The log's path.
        path: String,
        /// The operating-system error.
        message: String,
    },
    /// A line breaks the chain: it (or a line before it) was changed, removed or reordered.
    #[error("audit log {path}: line {line}: {reason}")]
    Broken {
        /// The log's path.
        path: String,
        /// The first line that does not verify (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The chain position after the last line written.
struct Tail {
    file: File,
    seq: u64,
    prev: String,
}

/// An open audit log.
pub struct AuditLog {
    path: PathBuf,
    fsync: bool,
    tail: Mutex<Tail>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("fsync", &self.fsync)
            .finish()
    }
}

/// Hex BLAKE3 of one line (without its newline).
fn digest(line: &[u8]) -> String {
    blake3::hash(line).to_hex().to_string()
}

impl AuditLog {
    /// Opens (or creates) the log at `path` and continues its chain. A log whose last line is
    /// incomplete (a crash mid-write, or truncation) is refused: run `osteo audit verify`.
    pub fn open(path: &Path, fsync: bool) -> Result<Self, AuditError> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        let (mut seq, mut prev) = (0, GENESIS.to_string());
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if regular && let Some(last) = last_line(&mut file, path)? {
            let record: Record = match serde_json::from_slice(&last) {
                Ok(r) => r,
                Err(e) => {
                    return Err(AuditError::Broken {
                        path: path.display().to_string(),
                        line: newlines(&mut file, path)?,
                        reason: format!("not an audit record: {e}"),
                    });
                }
            };
            seq = record.seq;
            prev = digest(&last);
        }
        Ok(Self {
            path: path.to_path_buf(),
            fsync,
            tail: Mutex::new(Tail { file, seq, prev }),
        })
    }

    /// Appends one record (its `seq`, `time` and `prev` are filled in here). Blocking.
    ///
    /// The chain continues from the log's last line, read at [`AuditLog::open`] from the end of
    /// the file (a log of months is not read whole at start-up).
    pub fn append(&self, mut record: Record) -> Result<(), AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        record.seq = tail.seq + 1;
        record.time = now_rfc3339();
        record.prev = tail.prev.clone();
        let mut line = serde_json::to_vec(&record).map_err(|e| io(&self.path, e))?;
        line.push(b'\n');
        tail.file
            .write_all(&line)
            .and_then(|()| tail.file.flush())
            .map_err(|e| io(&self.path, e))?;
        if self.fsync {
            tail.file.sync_data().map_err(|e| io(&self.path, e))?;
        }
        tail.seq = record.seq;
        tail.prev = digest(&line[..line.len() - 1]);
        Ok(())
    }
}

/// The number of newlines in a log: the line numbers of an error found at its end (counted
/// only on that failure path).
fn newlines(file: &mut File, path: &Path) -> Result<usize, AuditError> {
    file.seek(SeekFrom::Start(0)).map_err(|e| io(path, e))?;
    let mut n = 0;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let read = file.read(&mut buf).map_err(|e| io(path, e))?;
        if read == 0 {
            return Ok(n);
        }
        n += buf[..read].iter().filter(|b| **b == b'\n').count();
    }
}

/// The last line of a log (without its newline), read backwards from the end in growing
/// windows; `None` for an empty file. A last line without its newline (truncation, or a crash
/// mid-write) is refused: the chain must not continue from it.
fn last_line(file: &mut File, path: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    let len = file.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
    if len == 0 {
        return Ok(None);
    }
    let mut window: u64 = 4096;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).map_err(|e| io(path, e))?;
        let mut tail = Vec::with_capacity((len - start) as usize);
        (&mut *file)
            .take(len - start)
            .read_to_end(&mut tail)
            .map_err(|e| io(path, e))?;
        if tail.last() != Some(&b'\n') {
            return Err(AuditError::Broken {
                path: path.display().to_string(),
                line: newlines(file, path)? + 1,
                reason: "the last line is incomplete (truncated or a crash mid-write); verify \
                         the log with `osteo audit verify`, then archive it and start a new one"
                    .into(),
            });
        }
        let body = &tail[..tail.len() - 1];
        match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => return Ok(Some(body[i + 1..].to_vec())),
            None if start == 0 => return Ok(Some(body.to_vec())),
            None => window *= 4,
        }
    }
}

/// Checks a whole log: every line a record, `seq` counting from 1, each `prev` the digest of the
/// line before. Returns the number of records, or the first line that breaks the chain.
pub fn verify(path: &Path) -> Result<u64, AuditError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let mut reader = BufReader::new(file);
    let broken = |line: usize, reason: String| AuditError::Broken {
        path: path.display().to_string(),
        line,
        reason,
    };
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| io(path, e))?;
        if read == 0 {
            return Ok(n);
        }
        let line_no = n as usize + 1;
        if buf.last() != Some(&b'\n') {
            return Err(broken(
                line_no,
                "the line is incomplete: the log was truncated".into(),
            ));
        }
        let line = &buf[..buf.len() - 1];
        let record: Record = serde_json::from_slice(line)
            .map_err(|e| broken(line_no, format!("not an audit record: {e}")))?;
        if record.prev != prev {
            return Err(broken(
                line_no,
                "its prev digest does not match the line before: this line or the one before \
                 was changed, or lines were removed or reordered"
                    .into(),
            ));
        }
        if record.seq != n + 1 {
            return Err(broken(
                line_no,
                format!(
                    "sequence number {} where {} was expected",
                    record.seq,
                    n + 1
                ),
            ));
        }
        prev = digest(line);
        n += 1;
    }
}

/// The current UTC time as RFC 3339 with milliseconds.
fn now_rfc3339() -> String {
    osteo_core::utc::Utc::now().rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rpc: &str) -> Record {
        Record::new(rpc, "anonymous", "127.0.0.1:1".into(), tonic::Code::Ok, 1.0)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    fn broken_line(path: &Path) -> usize {
        match verify(path) {
            Err(AuditError::Broken { line, .. }) => line,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn the_chain_survives_a_restart_and_catches_every_tampering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, true).expect("open");
        for rpc in ["UploadStudy", "Classify", "GetStudy"] {
            log.append(record(rpc)).expect("append");
        }
        drop(log);
        // A restart continues the chain.
        let log = AuditLog::open(&path, false).expect("reopen");
        log.append(record("DeleteStudy")).expect("append");
        log.append(record("ListModels")).expect("append");
        drop(log);
        assert_eq!(verify(&path).expect("intact"), 5);
        let good = lines(&path);
        assert!(good[0].contains("\"prev\":\"genesis\""), "{}", good[0]);

        let edited = dir.path().join("edited.jsonl");
        let mut l = good.clone();
        l[1] = l[1].replace("\"Classify\"", "\"Explain\"");
        write(&edited, &l);
        assert_eq!(broken_line(&edited), 3, "the line after the edit breaks");

        let removed = dir.path().join("removed.jsonl");
        let mut l = good.clone();
        l.remove(2);
        write(&removed, &l);
        assert_eq!(broken_line(&removed), 3);

        let reordered = dir.path().join("reordered.jsonl");
        let mut l = good.clone();
        l.swap(3, 4);
        write(&reordered, &l);
        assert_eq!(broken_line(&reordered), 4);

        let truncated = dir.path().join("truncated.jsonl");
        let text = std::fs::read(&path).expect("read");
        std::fs::write(&truncated, &text[..text.len() - 20]).expect("write");
        assert_eq!(broken_line(&truncated), 5);
        assert!(
            matches!(
                AuditLog::open(&truncated, true),
                Err(AuditError::Broken { line: 5, .. })
            ),
            "a truncated log is not continued"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }
}
