//! `portcullis ca issue`: offline issuance by the intermediate, for
//! bootstrapping and tests. Same signing policy as `ca serve` (the SPIFFE ID
//! must be in the CA's trust domain), plus the DNS SANs the operator names;
//! the lifetime is capped only by the intermediate's expiry (whoever runs
//! this holds the CA key anyway). The issuance is logged (`offline`) in the
//! CA folder's issuance log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::KeyPair;

use super::authority::{Authority, AuthorityError};
use super::files::{self, CaDir, FileError};
use super::log::{Entry, IssuanceLog};
use super::policy::LeafSpec;
use crate::identity::SpiffeId;

/// Why `ca issue` failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The SPIFFE ID is invalid or outside the trust domain.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    BadId {
        /// What was given.
        id: String,
        /// Why.
        reason: String,
    },
    /// A DNS name is invalid.
    #[error("invalid DNS name {0:?}")]
    BadDns(String),
    /// The lifetime is zero.
    #[error("--ttl must be longer than zero")]
    Ttl,
    /// The CA cannot be loaded or cannot sign.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The key cannot be generated.
    #[error("cannot generate a key: {0}")]
    Key(String),
    /// A file cannot be written.
    #[error(transparent)]
    File(#[from] FileError),
}

/// The files `ca issue` wrote, and what it issued.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    /// PREFIX.crt: leaf then intermediate.
    pub cert: PathBuf,
    /// PREFIX.key (0600).
    pub key: PathBuf,
    /// PREFIX.bundle.crt: the trust bundle.
    pub bundle: PathBuf,
    /// Serial, lowercase hex.
    pub serial: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Issue a certificate for `spiffe_id` (plus `dns` SANs) valid for `ttl`,
/// writing PREFIX.key, PREFIX.crt and PREFIX.bundle.crt.
pub fn issue(
    dir: &CaDir,
    spiffe_id: &str,
    dns: &[String],
    ttl: Duration,
    out: &Path,
) -> Result<IssuedFiles, IssueError> {
    if ttl.is_zero() {
        return Err(IssueError::Ttl);
    }
    let id = SpiffeId::parse(spiffe_id).map_err(|e| IssueError::BadId {
        id: spiffe_id.into(),
        reason: e.to_string(),
    })?;
    for name in dns {
        if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() {
            return Err(IssueError::BadDns(name.clone()));
        }
    }
    let authority = Authority::load(dir)?;
    if !authority.admits(&id) {
        return Err(IssueError::BadId {
            id: spiffe_id.into(),
            reason: format!(
                "not a workload ID in this CA's trust domain {}",
                authority.trust_domain()
            ),
        });
    }
    let key = KeyPair::generate().map_err(|e| IssueError::Key(e.to_string()))?;
    let spec = LeafSpec {
        spiffe_id: Some(id.clone()),
        dns: dns.to_vec(),
        ips: vec![],
        lifetime: ttl,
    };
    let issued = authority.issue(&spec, &key)?;
    let files = IssuedFiles {
        cert: with_suffix(out, ".crt"),
        key: with_suffix(out, ".key"),
        bundle: with_suffix(out, ".bundle.crt"),
        serial: issued.serial.clone(),
        not_after: super::log::rfc3339(issued.not_after),
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        files::create_private_dir(parent)?;
    }
    // Key first: a watcher never sees a certificate without its key.
    files::write_atomic(&files.key, key.serialize_pem().as_bytes(), true)?;
    files::write_atomic(&files.cert, issued.chain_pem.as_bytes(), false)?;
    files::write_atomic(&files.bundle, authority.bundle_pem().as_bytes(), false)?;
    IssuanceLog::open(&dir.file(files::ISSUANCE_LOG))?.record(&Entry::now(
        &issued.serial,
        id.as_str(),
        "offline",
        issued.not_after,
    ))?;
    Ok(files)
}
