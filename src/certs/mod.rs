//! Where our own certificate comes from: PEM files on disk (watched for
//! changes) today; the internal CA later. A source yields `Credentials`; the
//! TLS layer (`tls::IdentityStore`) turns them into what rustls serves.

pub mod files;
pub mod pem;

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
