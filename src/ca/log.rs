//! The issuance log: one JSON line per certificate issued, appended to a
//! file opened in append mode (never truncated, never rewritten).
//!
//! `{"time":"2025-01-02T03:04:05Z","serial":"5f…","spiffe_id":"spiffe://…",
//!   "credential":"token:bootstrap","not_after":"2025-01-02T04:04:05Z"}`
//!
//! `credential` is `token:<provisioner>`, `renewal` (mTLS with the
//! caller's current certificate) or `offline` (`ca issue`). Refusals are not
//! in this file (they go to the process log and to metrics).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use time::OffsetDateTime;

use super::files::FileError;

/// One issuance.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// The identity issued.
    pub spiffe_id: String,
    /// How the caller authenticated.
    pub credential: String,
    /// notAfter, RFC 3339 UTC.
    pub not_after: String,
}

/// RFC 3339 (seconds, UTC) of a time.
pub fn rfc3339(time: OffsetDateTime) -> String {
    let system = SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(time.unix_timestamp()).unwrap_or(0));
    humantime::format_rfc3339_seconds(system).to_string()
}

impl Entry {
    /// An entry timestamped now.
    pub fn now(
        serial: &str,
        spiffe_id: &str,
        credential: &str,
        not_after: OffsetDateTime,
    ) -> Entry {
        Entry {
            time: rfc3339(OffsetDateTime::now_utc()),
            serial: serial.to_string(),
            spiffe_id: spiffe_id.to_string(),
            credential: credential.to_string(),
            not_after: rfc3339(not_after),
        }
    }
}

/// The open log file.
#[derive(Debug)]
pub struct IssuanceLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl IssuanceLog {
    /// Open (or create) the log for appending.
    pub fn open(path: &Path) -> Result<IssuanceLog, FileError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| FileError::Write {
                path: path.to_path_buf(),
                error: source,
            })?;
        Ok(IssuanceLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Append one entry as one line, in one write, flushed to disk.
    pub fn record(&self, entry: &Entry) -> Result<(), FileError> {
        let err = |source| FileError::Write {
            path: self.path.clone(),
            error: source,
        };
        let mut line =
            serde_json::to_string(entry).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes()).map_err(err)?;
        file.sync_data().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuance.log");
        std::fs::write(&path, "existing\n").unwrap();
        let log = IssuanceLog::open(&path).unwrap();
        let when = OffsetDateTime::from_unix_timestamp(0).unwrap();
        log.record(&Entry::now("ab", "spiffe://example.org/a", "renewal", when))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "existing");
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["serial"], "ab");
        assert_eq!(v["credential"], "renewal");
        assert_eq!(v["not_after"], "1970-01-01T00:00:00Z");
    }
}
