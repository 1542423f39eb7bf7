//! The issuing CA as loaded from a CA folder: the intermediate certificate
//! and key (never the root key), the trust bundle and the trust domain.
//! It signs leaves per [`super::policy`] and CRLs.
//!
//! The trust domain is read from the intermediate's URI SAN, the SPIFFE ID
//! of the trust domain itself (`spiffe://example.org`), which `ca init`
//! writes into both CA certificates (allowed for signing certificates by the
//! X.509-SVID specification).

use std::path::PathBuf;

use base64::Engine as _;
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, PublicKeyData,
    RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::files::{self, CaDir};
use super::policy::{self, LeafSpec, PolicyError};
use crate::certs::pem::{self, CertError};
use crate::identity::{PeerIdentity, SpiffeId};

/// Why the CA cannot be loaded or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A certificate or key file is missing or unreadable.
    #[error("{0}")]
    Files(CertError),
    /// A CA file cannot be used.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The signing policy refused.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// rcgen could not sign.
    #[error("cannot sign {what}: {reason}")]
    Sign {
        /// A certificate or a CRL.
        what: &'static str,
        /// rcgen's error.
        reason: String,
    },
}

// By hand rather than `#[from]`: `CertError` already says its cause, and
// chaining it too would print the OS error twice.
impl From<CertError> for AuthorityError {
    fn from(error: CertError) -> Self {
        AuthorityError::Files(error)
    }
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf, DER.
    pub leaf: CertificateDer<'static>,
    /// Leaf then intermediate(s), PEM.
    pub chain_pem: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

/// One revoked serial, for a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    /// Normalised lowercase hex (see `revocation::normalize_serial`).
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

/// The issuing CA. Holds the intermediate key; `Debug` never shows it.
pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The intermediate's subject key identifier, for the CRL's AKI.
    key_id: Option<Vec<u8>>,
    intermediates: Vec<CertificateDer<'static>>,
    intermediates_pem: String,
    bundle: Vec<CertificateDer<'static>>,
    bundle_pem: String,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// PEM-encode one DER object.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// PEM of several certificates.
pub fn certs_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| pem_encode("CERTIFICATE", c)).collect()
}

/// The trust domain a CA certificate names in its URI SAN.
pub fn trust_domain_of(der: &[u8]) -> Option<String> {
    let identity = PeerIdentity::from_der(der, &[]).ok()?;
    let id = identity.spiffe_id?;
    id.path().is_empty().then(|| id.trust_domain().to_string())
}

impl Authority {
    /// Load the intermediate certificate and key and the bundle from `dir`.
    /// The key file must not be readable by group or others, and must be
    /// the key of the certificate.
    pub fn load(dir: &CaDir) -> Result<Authority, AuthorityError> {
        Authority::load_with(dir, false)
    }

    /// As [`Authority::load`]; `insecure_key_permissions` accepts a key file
    /// readable by group or others.
    pub fn load_with(
        dir: &CaDir,
        insecure_key_permissions: bool,
    ) -> Result<Authority, AuthorityError> {
        let cert_path = dir.file(files::INTERMEDIATE_CERT);
        let key_path = dir.file(files::INTERMEDIATE_KEY);
        let invalid = |path: &PathBuf, reason: String| AuthorityError::Invalid {
            path: path.clone(),
            reason,
        };
        let certs = pem::load_certs(&cert_path)?;
        if !insecure_key_permissions {
            pem::check_key_permissions(&key_path)?;
        }
        let key_der = pem::load_key(&key_path)?;
        let key = KeyPair::try_from(&key_der)
            .map_err(|e| invalid(&key_path, format!("unusable private key: {e}")))?;
        let bundle = pem::load_certs(&dir.file(files::BUNDLE))?;
        let intermediate = certs
            .first()
            .ok_or_else(|| invalid(&cert_path, "holds no certificate".into()))?;
        let (_, parsed) = X509Certificate::from_der(intermediate)
            .map_err(|e| invalid(&cert_path, format!("does not parse: {e}")))?;
        if !parsed.is_ca() {
            return Err(invalid(&cert_path, "is not a CA certificate".into()));
        }
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                &key_path,
                format!("is not the key of {}", cert_path.display()),
            ));
        }
        let trust_domain = trust_domain_of(intermediate).ok_or_else(|| {
            invalid(
                &cert_path,
                "names no trust domain (a URI SAN `spiffe://<trust domain>` is expected)".into(),
            )
        })?;
        let not_after =
            OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
                .map_err(|e| invalid(&cert_path, format!("bad notAfter: {e}")))?;
        let key_id = parsed
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => {
                    Some(ski.0.to_vec())
                }
                _ => None,
            });
        let issuer = Issuer::from_ca_cert_der(intermediate, key)
            .map_err(|e| invalid(&cert_path, format!("cannot be used to sign: {e}")))?;
        Ok(Authority {
            trust_domain,
            issuer,
            key_id,
            intermediates_pem: certs_pem(&certs),
            intermediates: certs,
            bundle_pem: certs_pem(&bundle),
            bundle,
            not_after,
        })
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust bundle, PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The trust bundle, DER.
    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// The issuing CA certificate(s), DER, to follow a leaf in a chain.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The intermediate's notAfter.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// True when `id` belongs to this CA's trust domain and names a workload
    /// (non-empty path).
    pub fn admits(&self, id: &SpiffeId) -> bool {
        id.trust_domain() == self.trust_domain && !id.path().is_empty()
    }

    /// Sign a leaf for `public_key` per the signing policy.
    pub fn issue(
        &self,
        spec: &LeafSpec,
        public_key: &impl PublicKeyData,
    ) -> Result<Issued, AuthorityError> {
        let leaf = policy::leaf_params(spec, OffsetDateTime::now_utc(), self.not_after)?;
        let cert = leaf
            .params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| AuthorityError::Sign {
                what: "certificate",
                reason: e.to_string(),
            })?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            leaf: cert.der().clone(),
            serial: leaf.serial,
            not_after: leaf.not_after,
        })
    }

    /// A CRL (PEM) signed by the intermediate listing `revoked`.
    pub fn crl_pem(
        &self,
        revoked: &[RevokedSerial],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        number: u64,
    ) -> Result<String, AuthorityError> {
        let revoked_certs = revoked
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_bytes(&r.serial)),
                revocation_time: r.revoked_at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: match &self.key_id {
                Some(id) => KeyIdMethod::PreSpecified(id.clone()),
                None => KeyIdMethod::Sha256,
            },
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| AuthorityError::Sign {
                what: "CRL",
                reason: e.to_string(),
            })?;
        crl.pem().map_err(|e| AuthorityError::Sign {
            what: "CRL",
            reason: e.to_string(),
        })
    }
}

/// Bytes of a normalised hex serial (odd length gets a leading zero).
fn serial_bytes(hex: &str) -> Vec<u8> {
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_string()
    };
    padded
        .as_bytes()
        .chunks(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_round_trips() {
        assert_eq!(serial_bytes("1"), vec![1]);
        assert_eq!(serial_bytes("abc"), vec![0x0a, 0xbc]);
        assert_eq!(serial_bytes("7fff"), vec![0x7f, 0xff]);
    }

    #[test]
    fn pem_lines_are_64_chars() {
        let pem = pem_encode("CERTIFICATE", &[7u8; 100]);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        let back: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ref().unwrap().as_ref(), &[7u8; 100]);
    }
}
