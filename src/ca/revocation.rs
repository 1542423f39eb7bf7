//! Revocation: `revoked.txt` (append-only, one `<serial-hex> <RFC 3339 time>`
//! per line, written by `portcullis ca revoke`) and the CRL the CA serves,
//! regenerated whenever the file changes and at least every minute.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use time::OffsetDateTime;

use super::authority::{Authority, AuthorityError, RevokedSerial};
use super::files::{self, CaDir, FileError};

/// Longest serial number allowed by RFC 5280 (20 bytes).
const MAX_SERIAL_HEX: usize = 40;
/// A CRL is regenerated at least this often, even when nothing changed.
pub const CRL_MAX_AGE: Duration = Duration::from_secs(60);
/// How far ahead a CRL's nextUpdate is.
pub const CRL_VALIDITY: Duration = Duration::from_secs(4 * 3600);

/// Why a serial number is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Empty (or zero).
    #[error("serial number is empty or zero")]
    Empty,
    /// Not hex.
    #[error("serial number has a non-hex character {0:?} (expected hex digits, optionally separated by colons)")]
    NotHex(char),
    /// Longer than 20 bytes.
    #[error("serial number is longer than 20 bytes")]
    TooLong,
}

/// Normalise a hex serial: lowercase, no colons, leading zeros stripped.
/// `00:AB:cd` becomes `abcd`. Refuses anything else than hex and colons.
pub fn normalize_serial(input: &str) -> Result<String, SerialError> {
    let trimmed = input.trim();
    let digits = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    if let Some(bad) = digits
        .chars()
        .find(|c| !(c.is_ascii_hexdigit() || *c == ':'))
    {
        return Err(SerialError::NotHex(bad));
    }
    let hex: String = digits
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let hex = hex.trim_start_matches('0').to_string();
    if hex.is_empty() {
        return Err(SerialError::Empty);
    }
    if hex.len() > MAX_SERIAL_HEX {
        return Err(SerialError::TooLong);
    }
    Ok(hex)
}

/// Why `ca revoke` failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The serial is malformed.
    #[error("invalid serial {input:?}: {reason}")]
    Serial {
        /// What was given.
        input: String,
        /// Why.
        reason: SerialError,
    },
    /// The folder is not a CA folder.
    #[error("{} is not a CA folder (no {} in it); run `portcullis ca init` first", dir.display(), files::INTERMEDIATE_CERT)]
    NotCa {
        /// The folder.
        dir: PathBuf,
    },
    /// The revocation file cannot be read or appended to.
    #[error(transparent)]
    File(#[from] FileError),
}

/// What `ca revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The serial was appended.
    Added(String),
    /// The serial was already listed; nothing was written.
    AlreadyRevoked(String),
}

/// Append `serial` to the CA's revocation file (`ca revoke`).
pub fn revoke(dir: &CaDir, serial: &str) -> Result<Revoked, RevokeError> {
    let normalized = normalize_serial(serial).map_err(|reason| RevokeError::Serial {
        input: serial.to_string(),
        reason,
    })?;
    if !dir.file(files::INTERMEDIATE_CERT).exists() {
        return Err(RevokeError::NotCa {
            dir: dir.dir().to_path_buf(),
        });
    }
    let path = dir.file(files::REVOKED);
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(FileError::Read { path, error }.into()),
    };
    if parse(&existing).0.iter().any(|r| r.serial == normalized) {
        return Ok(Revoked::AlreadyRevoked(normalized));
    }
    let line = format!(
        "{normalized} {}\n",
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    let write_err = |source| FileError::Write {
        path: path.clone(),
        error: source,
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(write_err)?;
    // One write of one line: appends from concurrent writers do not interleave.
    file.write_all(line.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(Revoked::Added(normalized))
}

/// Parse the revocation file: the entries, and the malformed lines
/// (line number and reason). Blank lines and `#` comments are skipped.
pub fn parse(text: &str) -> (Vec<RevokedSerial>, Vec<(usize, String)>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let serial = parts.next().map(normalize_serial);
        let when = parts.next().map(humantime::parse_rfc3339_weak);
        match (serial, when) {
            (Some(Ok(serial)), Some(Ok(when))) => entries.push(RevokedSerial {
                serial,
                revoked_at: OffsetDateTime::from(when),
            }),
            (Some(Err(e)), _) => bad.push((index + 1, e.to_string())),
            (_, Some(Err(e))) => bad.push((index + 1, format!("bad time: {e}"))),
            _ => bad.push((index + 1, "expected `<serial-hex> <RFC 3339 time>`".into())),
        }
    }
    (entries, bad)
}

/// The current revocation state: the revoked serials and the CRL.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Revoked serials, normalised.
    pub serials: Arc<HashSet<String>>,
    /// The CRL, PEM.
    pub crl_pem: Arc<String>,
}

struct Cached {
    stamp: Option<(SystemTime, u64)>,
    generated: Instant,
    snapshot: Snapshot,
}

/// The revocation file, read again and the CRL re-signed when the file
/// changes (size or mtime) or when the CRL is older than [`CRL_MAX_AGE`].
pub struct Revocations {
    path: PathBuf,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Result<Option<(SystemTime, u64)>, FileError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some((
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Read {
            path: path.to_path_buf(),
            error: source,
        }),
    }
}

/// Why the revocation state cannot be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The file cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The CRL cannot be signed.
    #[error(transparent)]
    Sign(#[from] AuthorityError),
}

impl Revocations {
    /// Revocations from `path` (a missing file means none).
    pub fn new(path: PathBuf) -> Revocations {
        Revocations {
            path,
            cached: Mutex::new(None),
        }
    }

    /// The current state, regenerated first if the file changed or the CRL
    /// is older than [`CRL_MAX_AGE`]. On error the previous state (if any)
    /// stays, and the error is returned.
    pub fn current(&self, authority: &Authority) -> Result<Snapshot, RefreshError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let now_stamp = stamp(&self.path)?;
        if let Some(c) = cached.as_ref() {
            if c.stamp == now_stamp && c.generated.elapsed() < CRL_MAX_AGE {
                return Ok(c.snapshot.clone());
            }
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(FileError::Read {
                    path: self.path.clone(),
                    error: source,
                }
                .into())
            }
        };
        let (entries, bad) = parse(&text);
        for (line, reason) in bad {
            tracing::warn!(file = %self.path.display(), line, %reason, "ignoring a malformed revocation line");
        }
        let now = OffsetDateTime::now_utc();
        let number = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        let crl_pem = authority.crl_pem(&entries, now, now + CRL_VALIDITY, number)?;
        let snapshot = Snapshot {
            serials: Arc::new(entries.into_iter().map(|e| e.serial).collect()),
            crl_pem: Arc::new(crl_pem),
        };
        *cached = Some(Cached {
            stamp: now_stamp,
            generated: Instant::now(),
            snapshot: snapshot.clone(),
        });
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_normalised() {
        assert_eq!(normalize_serial("00:AB:cd").unwrap(), "abcd");
        assert_eq!(normalize_serial("0x0001").unwrap(), "1");
        assert_eq!(normalize_serial(" 7F ").unwrap(), "7f");
        assert_eq!(normalize_serial("0"), Err(SerialError::Empty));
        assert_eq!(normalize_serial(""), Err(SerialError::Empty));
        assert_eq!(normalize_serial("12g4"), Err(SerialError::NotHex('g')));
        assert_eq!(normalize_serial("ab-cd"), Err(SerialError::NotHex('-')));
        assert_eq!(normalize_serial(&"f".repeat(41)), Err(SerialError::TooLong));
        assert!(normalize_serial(&"f".repeat(40)).is_ok());
    }

    #[test]
    fn revocation_file_parses_and_reports_bad_lines() {
        let text = "# comment\n\nab 2024-01-02T03:04:05Z\nzz 2024-01-02T03:04:05Z\ncd\n";
        let (entries, bad) = parse(text);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].serial, "ab");
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![4, 5]);
    }
}
