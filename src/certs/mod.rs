//! Where our own certificate comes from: PEM files on disk (watched for
//! changes), or the internal CA (renewed before expiry). A source yields `Credentials`; the
//! TLS layer (`tls::IdentityStore`) turns them into what rustls serves.

pub mod ca_client;
pub mod files;
pub mod pem;
pub mod rotation;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Everything needed to present our identity and verify peers.
#[derive(Debug)]
pub struct Credentials {
    /// Our certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf. Never logged; `Debug` on `PrivateKeyDer` hides it.
    pub key: PrivateKeyDer<'static>,
    /// CA certificates that peers must chain to.
    pub trust_bundle: Vec<CertificateDer<'static>>,
    /// Revocation lists checked for peer chains.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

pub use pem::CertError;

/// An identity source that cannot be used: the config key at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SourceError {
    /// The config key, e.g. `identity.key` or `identity.crls[1]`.
    pub key: String,
    /// What is wrong, naming the file.
    pub message: String,
}
