//! Reading a CSR the way the CA uses it: only as proof that the caller holds
//! a private key, and as the public key to certify. Its subject, SANs and
//! requested extensions are never looked at; the identity comes from the
//! caller's credential.

use rcgen::SubjectPublicKeyInfo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Smallest RSA key accepted.
const MIN_RSA_BITS: usize = 2048;

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a PEM `CERTIFICATE REQUEST`.
    #[error("not a PEM CERTIFICATE REQUEST ({0})")]
    NotPem(String),
    /// The DER does not parse as PKCS#10.
    #[error("does not parse as PKCS#10: {0}")]
    Parse(String),
    /// The signature does not verify with the CSR's own key.
    #[error("signature does not verify: no proof of possession of the private key")]
    BadSignature,
    /// The key type is not supported, or too weak.
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
}

/// Parse a PEM CSR, verify its self-signature, and return its public key.
pub fn verified_public_key(pem: &str) -> Result<SubjectPublicKeyInfo, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CsrError::NotPem(e.to_string()))?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Parse("trailing bytes after the request".into()));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let spki = &csr.certification_request_info.subject_pki;
    if let Ok(PublicKey::RSA(rsa)) = spki.parsed() {
        if rsa.key_size() < MIN_RSA_BITS {
            return Err(CsrError::UnsupportedKey(format!(
                "RSA {} bits (at least {MIN_RSA_BITS} required)",
                rsa.key_size()
            )));
        }
    }
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| {
        CsrError::UnsupportedKey(format!("{e} (use ECDSA P-256/P-384, Ed25519 or RSA 2048+)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn csr_pem() -> String {
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(vec!["asks-for-this.example".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn accepts_a_good_csr() {
        verified_public_key(&csr_pem()).unwrap();
    }

    #[test]
    fn refuses_garbage_and_tampering() {
        assert!(matches!(
            verified_public_key("hello"),
            Err(CsrError::NotPem(_))
        ));
        let pem = csr_pem();
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        // Flip a bit in the subject public key area (near the middle).
        let middle = der.len() / 2;
        der[middle] ^= 0x01;
        let tampered = crate::ca::authority::pem_encode("CERTIFICATE REQUEST", &der);
        assert!(verified_public_key(&tampered).is_err());
    }
}
