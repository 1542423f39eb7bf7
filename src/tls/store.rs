//! The identity store: our current certificate, key and trust material behind
//! one `ArcSwap`.
//!
//! Every rustls config built by portcullis reads its certificate and trust
//! anchors from here at handshake time, so installing new credentials takes
//! effect on the next handshake and never touches live connections. New
//! material is fully validated before it is installed; a bad update leaves
//! the old material in force.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use webpki::OwnedCertRevocationList;

use crate::certs::pem::Part;
use crate::certs::{CertError, Credentials};

/// One consistent set of identity and trust material.
pub struct TlsMaterial {
    /// Our chain and signing key, as rustls presents them.
    pub certified_key: Arc<CertifiedKey>,
    /// The trust bundle as trust anchors.
    pub roots: Arc<RootCertStore>,
    /// The trust bundle as loaded (for metrics and `/certs`).
    pub trust_bundle: Vec<CertificateDer<'static>>,
    /// Revocation lists, parsed.
    pub crls: Vec<webpki::CertRevocationList<'static>>,
    /// Revocation lists as loaded.
    pub crl_ders: Vec<CertificateRevocationListDer<'static>>,
    /// Our leaf's notBefore, seconds since the Unix epoch.
    pub leaf_not_before: i64,
    /// When this material was built, seconds since the Unix epoch. CAs
    /// backdate notBefore, so the usable lifetime starts here.
    pub obtained_at: i64,
    /// Our leaf's expiry, seconds since the Unix epoch.
    pub leaf_not_after: i64,
    /// Different for every material built: what a peer chain verified
    /// against (trust bundle, CRLs) may differ between two generations, so
    /// caches of verification results are keyed by it.
    pub trust_generation: u64,
}

/// The next [`TlsMaterial::trust_generation`].
fn next_trust_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("chain_len", &self.certified_key.cert.len())
            .field("trust_anchors", &self.roots.len())
            .field("crls", &self.crls.len())
            .field("leaf_not_after", &self.leaf_not_after)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Validate credentials and build the rustls objects from them.
    pub fn build(
        credentials: Credentials,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, CertError> {
        let Credentials {
            chain,
            key,
            trust_bundle,
            crls,
        } = credentials;
        let leaf = chain.first().ok_or_else(|| CertError::Invalid {
            part: Part::Chain,
            what: "certificate chain".into(),
            reason: "is empty".into(),
        })?;
        let (leaf_not_before, leaf_not_after) = leaf_validity(leaf)?;
        let certified_key =
            CertifiedKey::from_der(chain, key, provider).map_err(|e| CertError::Invalid {
                part: Part::Key,
                what: "certificate and key".into(),
                reason: format!("{e}: the key is not the one the certificate was issued for"),
            })?;
        let trust = Trust::build(trust_bundle, crls)?;
        Ok(TlsMaterial {
            certified_key: Arc::new(certified_key),
            roots: trust.roots,
            trust_bundle: trust.bundle,
            crls: trust.crls,
            crl_ders: trust.crl_ders,
            leaf_not_before,
            leaf_not_after,
            obtained_at: unix_now(),
            trust_generation: next_trust_generation(),
        })
    }

    /// The same certificate and key with a new trust bundle (CRLs kept).
    pub fn with_trust_bundle(
        &self,
        trust_bundle: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<TlsMaterial, CertError> {
        let trust = Trust::build(trust_bundle, crls)?;
        Ok(TlsMaterial {
            certified_key: self.certified_key.clone(),
            roots: trust.roots,
            trust_bundle: trust.bundle,
            crls: trust.crls,
            crl_ders: trust.crl_ders,
            leaf_not_before: self.leaf_not_before,
            leaf_not_after: self.leaf_not_after,
            obtained_at: self.obtained_at,
            trust_generation: next_trust_generation(),
        })
    }

    /// True while our leaf certificate has not expired.
    pub fn leaf_is_valid(&self, now: UnixTime) -> bool {
        i64::try_from(now.as_secs()).is_ok_and(|now| now <= self.leaf_not_after)
    }
}

/// Trust anchors and CRLs.
struct Trust {
    bundle: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    crl_ders: Vec<CertificateRevocationListDer<'static>>,
}

impl Trust {
    fn build(
        trust_bundle: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Trust, CertError> {
        let mut roots = RootCertStore::empty();
        for (index, cert) in trust_bundle.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| CertError::Invalid {
                part: Part::TrustBundle,
                what: format!("trust bundle certificate #{}", index + 1),
                reason: format!("cannot be used as a trust anchor ({e})"),
            })?;
        }
        if roots.is_empty() {
            return Err(CertError::Invalid {
                part: Part::TrustBundle,
                what: "trust bundle".into(),
                reason: "holds no trust anchor".into(),
            });
        }
        let roots = Arc::new(roots);
        let parsed_crls = parse_crls(&crls)?;
        Ok(Trust {
            bundle: trust_bundle,
            roots,
            crls: parsed_crls,
            crl_ders: crls,
        })
    }
}

fn leaf_validity(leaf: &CertificateDer<'_>) -> Result<(i64, i64), CertError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| CertError::Invalid {
        part: Part::Chain,
        what: "leaf certificate".into(),
        reason: format!("does not parse: {e}"),
    })?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Parse DER CRLs (also used to check each CRL file on its own).
pub fn parse_crls(
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Vec<webpki::CertRevocationList<'static>>, CertError> {
    crls.iter()
        .enumerate()
        .map(|(index, der)| {
            OwnedCertRevocationList::from_der(der)
                .map(webpki::CertRevocationList::from)
                .map_err(|e| CertError::Invalid {
                    part: Part::Crls,
                    what: format!("CRL #{}", index + 1),
                    reason: format!("not a valid certificate revocation list ({e:?})"),
                })
        })
        .collect()
}

/// The current `TlsMaterial`, swappable without locks.
#[derive(Debug)]
pub struct IdentityStore {
    current: ArcSwap<TlsMaterial>,
    provider: Arc<CryptoProvider>,
}

impl IdentityStore {
    /// A store holding `material`.
    pub fn new(material: TlsMaterial, provider: Arc<CryptoProvider>) -> Self {
        IdentityStore {
            current: ArcSwap::from_pointee(material),
            provider,
        }
    }

    /// The material in force now (one atomic load).
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.load_full()
    }

    /// The crypto provider every config uses.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Install material that was already built and validated.
    pub fn install_material(&self, material: TlsMaterial) -> Arc<TlsMaterial> {
        let material = Arc::new(material);
        self.current.store(material.clone());
        material
    }

    /// Keep our certificate, trust a new bundle; on error the old one stays.
    pub fn replace_trust_bundle(
        &self,
        trust_bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<TlsMaterial>, CertError> {
        let current = self.current();
        let material = current.with_trust_bundle(trust_bundle, current.crl_ders.clone())?;
        Ok(self.install_material(material))
    }

    /// Validate and install new credentials; on error the old ones stay.
    pub fn install(&self, credentials: Credentials) -> Result<Arc<TlsMaterial>, CertError> {
        let material = Arc::new(TlsMaterial::build(credentials, &self.provider)?);
        self.current.store(material.clone());
        Ok(material)
    }
}

/// The crypto provider portcullis uses everywhere: aws-lc-rs, chosen over
/// ring by measurement on the data path (docs/benchmarks.md, "Crypto
/// provider").
pub fn default_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
