//! Reading certificates, keys and CRLs from PEM (or DER) files, with errors
//! that name the file and say what was found instead.

use std::io;
use std::path::{Path, PathBuf};

use rustls_pemfile::Item;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// A certificate, key or CRL file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not valid PEM.
    #[error("{path}: not valid PEM: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The file holds no item of the kind wanted.
    #[error("{path}: no {wanted} found (a PEM block `-----BEGIN {pem_label}-----` was expected)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What was looked for, e.g. "certificate".
        wanted: &'static str,
        /// The PEM label expected.
        pem_label: &'static str,
    },
    /// A key file holds more than one private key.
    #[error("{path}: holds {count} private keys; exactly one is expected")]
    SeveralKeys {
        /// The file.
        path: PathBuf,
        /// How many keys were found.
        count: usize,
    },
    /// The key file may be read by other users.
    #[error("{path}: private key file is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// The permission bits.
        mode: u32,
    },
    /// The material is readable but unusable (key mismatch, bad certificate, ...).
    #[error("{what}: {reason}")]
    Invalid {
        /// Which part of the credentials is at fault.
        part: Part,
        /// Which object, in words.
        what: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// The parts of a set of credentials, to say which one is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Our certificate chain.
    Chain,
    /// Our private key (or the key/certificate pairing).
    Key,
    /// The trust bundle.
    TrustBundle,
    /// The revocation lists.
    Crls,
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_items(path: &Path, bytes: &[u8]) -> Result<Vec<Item>, CertError> {
    let mut reader = bytes;
    rustls_pemfile::read_all(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Every certificate in a PEM file, in file order; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read(path)?;
    let certs: Vec<_> = pem_items(path, &bytes)?
        .into_iter()
        .filter_map(|item| match item {
            Item::X509Certificate(der) => Some(der),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(CertError::Missing {
            path: path.to_path_buf(),
            wanted: "certificate",
            pem_label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The one private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = read(path)?;
    let mut keys: Vec<PrivateKeyDer<'static>> = pem_items(path, &bytes)?
        .into_iter()
        .filter_map(|item| match item {
            Item::Pkcs8Key(k) => Some(PrivateKeyDer::Pkcs8(k)),
            Item::Sec1Key(k) => Some(PrivateKeyDer::Sec1(k)),
            Item::Pkcs1Key(k) => Some(PrivateKeyDer::Pkcs1(k)),
            _ => None,
        })
        .collect();
    match keys.len() {
        0 => Err(CertError::Missing {
            path: path.to_path_buf(),
            wanted: "private key",
            pem_label: "PRIVATE KEY",
        }),
        1 => Ok(keys.remove(0)),
        count => Err(CertError::SeveralKeys {
            path: path.to_path_buf(),
            count,
        }),
    }
}

/// Refuse a private key file that group or others may read.
#[cfg(unix)]
pub fn check_key_permissions(path: &Path) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CertError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Refuse a private key file that group or others may read.
#[cfg(not(unix))]
pub fn check_key_permissions(_path: &Path) -> Result<(), CertError> {
    Ok(())
}

/// Every CRL in a file: PEM `X509 CRL` blocks, or one DER CRL.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, CertError> {
    let bytes = read(path)?;
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls: Vec<_> = pem_items(path, &bytes)?
        .into_iter()
        .filter_map(|item| match item {
            Item::Crl(der) => Some(der),
            _ => None,
        })
        .collect();
    if crls.is_empty() {
        return Err(CertError::Missing {
            path: path.to_path_buf(),
            wanted: "certificate revocation list",
            pem_label: "X509 CRL",
        });
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(contents: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents).unwrap();
        f
    }

    #[test]
    fn missing_and_empty_files_are_clear_errors() {
        let err = load_certs(Path::new("/nonexistent/x.pem")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/x.pem: cannot read"),
            "{err}"
        );
        let empty = file(b"");
        let err = load_certs(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no certificate found"), "{err}");
        let err = load_key(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no private key found"), "{err}");
    }

    #[test]
    fn reads_certs_and_one_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let certs = file(format!("{}{}", cert.pem(), cert.pem()).as_bytes());
        assert_eq!(load_certs(certs.path()).unwrap().len(), 2);
        let keyfile = file(key.serialize_pem().as_bytes());
        assert!(matches!(
            load_key(keyfile.path()).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        let two = file(format!("{}{}", key.serialize_pem(), key.serialize_pem()).as_bytes());
        assert!(matches!(
            load_key(two.path()),
            Err(CertError::SeveralKeys { count: 2, .. })
        ));
    }

    #[test]
    fn group_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let f = file(b"x");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = check_key_permissions(f.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        check_key_permissions(f.path()).unwrap();
    }
}
