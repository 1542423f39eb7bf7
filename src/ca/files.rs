//! The files of a CA folder: their names, and writing them atomically with
//! private files (keys) at mode 0600 from the moment they exist.
//!
//! A CA folder made by `portcullis ca init` holds:
//!
//! | file | what | needed by `serve` |
//! |---|---|---|
//! | `root.crt` | the root CA certificate | no |
//! | `root.key` | the root key (0600); may be moved offline | no |
//! | `intermediate.crt` | the issuing CA, signed by the root | yes |
//! | `intermediate.key` | the issuing key (0600) | yes |
//! | `bundle.crt` | the trust bundle: the root(s) | yes |
//! | `token.key` | the bootstrap token signing key, ES256 (0600) | no (`ca token` only) |
//! | `jwks.json` | the public key set of `token.key` | yes (via ca.toml) |
//! | `revoked.txt` | revoked serials, one per line, append-only | yes |
//! | `ca.toml` | a ready-to-use `ca serve` configuration | yes |
//! | `issuance.log` | JSON lines, one per certificate issued | written |

use std::io::Write;
use std::path::{Path, PathBuf};

/// Root CA certificate.
pub const ROOT_CERT: &str = "root.crt";
/// Root CA key.
pub const ROOT_KEY: &str = "root.key";
/// Issuing (intermediate) CA certificate.
pub const INTERMEDIATE_CERT: &str = "intermediate.crt";
/// Issuing (intermediate) CA key.
pub const INTERMEDIATE_KEY: &str = "intermediate.key";
/// Trust bundle (the roots).
pub const BUNDLE: &str = "bundle.crt";
/// Bootstrap token signing key.
pub const TOKEN_KEY: &str = "token.key";
/// Public key set of the token signing key.
pub const JWKS: &str = "jwks.json";
/// Revoked serials.
pub const REVOKED: &str = "revoked.txt";
/// The `ca serve` configuration written by `ca init`.
pub const CONFIG: &str = "ca.toml";
/// Default issuance log.
pub const ISSUANCE_LOG: &str = "issuance.log";

/// Every file `ca init` writes, in the order it writes them.
pub const INIT_FILES: [&str; 9] = [
    ROOT_KEY,
    ROOT_CERT,
    INTERMEDIATE_KEY,
    INTERMEDIATE_CERT,
    BUNDLE,
    TOKEN_KEY,
    JWKS,
    REVOKED,
    CONFIG,
];

/// A CA folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaDir {
    dir: PathBuf,
}

impl CaDir {
    /// The CA in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> CaDir {
        CaDir { dir: dir.into() }
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one of the CA's files (see the constants in this module).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA files that already exist in the folder.
    pub fn existing_files(&self) -> Vec<PathBuf> {
        INIT_FILES
            .iter()
            .map(|name| self.file(name))
            .filter(|path| path.exists())
            .collect()
    }
}

/// A CA file that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Writing failed.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not chained, so it is said once).
        error: std::io::Error,
    },
    /// Reading failed.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not chained, so it is said once).
        error: std::io::Error,
    },
    /// A folder cannot be created.
    #[error("cannot create folder {}: {error}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The OS error (in the message, not chained, so it is said once).
        error: std::io::Error,
    },
}

/// Read a text file, with the path in the error.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|error| FileError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// Create `dir` (and parents) if missing; a new folder is made 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|error| FileError::CreateDir {
        path: dir.to_path_buf(),
        error,
    })
}

/// Write `contents` to `path` atomically: a temporary file in the same
/// folder (mode 0600 for `private`, 0644 otherwise, from creation), flushed
/// to disk, then renamed over `path`. Readers see the old file or the new
/// one, never a partial one, and a key is never readable by others.
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<(), FileError> {
    let err = |error| FileError::Write {
        path: path.to_path_buf(),
        error,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replace_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write_atomic(&path, b"one", true).unwrap();
        write_atomic(&path, b"two", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let public = dir.path().join("c.crt");
        write_atomic(&public, b"x", false).unwrap();
        let mode = std::fs::metadata(&public).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
