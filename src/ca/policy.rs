//! The signing policy: what every leaf certificate the CA issues looks like,
//! whoever asked for it (`ca serve`, `ca issue`, the CA's own TLS cert).
//!
//! - never a CA: BasicConstraints `CA:FALSE`, written explicitly;
//! - keyUsage digitalSignature only; EKU serverAuth + clientAuth;
//! - URI SAN: the SPIFFE ID only (DNS/IP SANs only where the CA operator
//!   asked for them: `ca issue --dns`, the CA's own server names), never
//!   anything copied from a CSR;
//! - empty subject (so the SAN extension is critical, RFC 5280 §4.2.1.6):
//!   the identity is the SPIFFE ID, there is no CN to confuse with it;
//! - notBefore backdated one minute for clock skew; notAfter
//!   `min(requested or default, max)` and never past the issuer's notAfter;
//! - a random 16-byte positive serial.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::OffsetDateTime;

use crate::identity::SpiffeId;

/// How far notBefore is set in the past, for clients with slow clocks.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// What a leaf certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// The SPIFFE ID (the only URI SAN), if any.
    pub spiffe_id: Option<SpiffeId>,
    /// DNS SANs (validated DNS names).
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Lifetime from now (the policy cap is applied by the caller with [`lifetime`]).
    pub lifetime: Duration,
}

/// Why a leaf cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A SAN value cannot be encoded.
    #[error("invalid {kind} SAN {value:?}: {reason}")]
    BadSan {
        /// `URI` or `DNS`.
        kind: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The certificate would have no identity at all.
    #[error("a certificate needs a SPIFFE ID, a DNS name or an IP address")]
    NoIdentity,
    /// The issuer expires before the certificate would start.
    #[error("the issuing CA has expired (notAfter {0}); rotate the intermediate")]
    IssuerExpired(OffsetDateTime),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// The lifetime to issue: the requested one (or the default), capped at `max`.
pub fn lifetime(requested: Option<Duration>, default: Duration, max: Duration) -> Duration {
    requested.unwrap_or(default).min(max)
}

/// Fill `buf` from the system's secure random generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), PolicyError> {
    crate::tls::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| PolicyError::Random)
}

/// A random 16-byte serial: first byte in 0x40..=0x7f, so the number is
/// positive, never zero, and has no DER sign padding (its hex is always
/// 32 digits, as `cert inspect` and the CRL print it).
pub fn random_serial() -> Result<[u8; 16], PolicyError> {
    let mut serial = [0u8; 16];
    random_bytes(&mut serial)?;
    serial[0] = (serial[0] & 0x3f) | 0x40;
    Ok(serial)
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A leaf ready to be signed, and what it will say.
#[derive(Debug)]
pub struct LeafParams {
    /// The rcgen parameters.
    pub params: CertificateParams,
    /// The serial, lowercase hex.
    pub serial: String,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

/// Build the certificate parameters of a leaf per the policy.
/// `issuer_not_after` caps notAfter.
pub fn leaf_params(
    spec: &LeafSpec,
    now: OffsetDateTime,
    issuer_not_after: OffsetDateTime,
) -> Result<LeafParams, PolicyError> {
    if spec.spiffe_id.is_none() && spec.dns.is_empty() && spec.ips.is_empty() {
        return Err(PolicyError::NoIdentity);
    }
    if issuer_not_after <= now {
        return Err(PolicyError::IssuerExpired(issuer_not_after));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    if let Some(id) = &spec.spiffe_id {
        let uri = id.as_str().try_into().map_err(|e| PolicyError::BadSan {
            kind: "URI",
            value: id.to_string(),
            reason: format!("{e}"),
        })?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    for name in &spec.dns {
        let dns = name.as_str().try_into().map_err(|e| PolicyError::BadSan {
            kind: "DNS",
            value: name.clone(),
            reason: format!("{e}"),
        })?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params
        .subject_alt_names
        .extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let serial = random_serial()?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now - BACKDATE;
    let not_after = (now + spec.lifetime).min(issuer_not_after);
    params.not_after = not_after;
    Ok(LeafParams {
        params,
        serial: hex(&serial),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_is_capped() {
        let h = Duration::from_secs(3600);
        assert_eq!(lifetime(None, h, 24 * h), h);
        assert_eq!(lifetime(Some(2 * h), h, 24 * h), 2 * h);
        assert_eq!(lifetime(Some(48 * h), h, 24 * h), 24 * h);
    }

    #[test]
    fn serials_are_positive_16_bytes_and_differ() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        assert!(a[0] >= 0x40 && a[0] < 0x80);
        assert_eq!(hex(&a).len(), 32);
    }

    #[test]
    fn leaf_never_outlives_its_issuer_and_is_never_a_ca() {
        let now = OffsetDateTime::now_utc();
        let spec = LeafSpec {
            spiffe_id: Some(SpiffeId::parse("spiffe://example.org/a").unwrap()),
            dns: vec![],
            ips: vec![],
            lifetime: Duration::from_secs(86_400),
        };
        let issuer_end = now + Duration::from_secs(600);
        let leaf = leaf_params(&spec, now, issuer_end).unwrap();
        assert_eq!(leaf.not_after, issuer_end);
        assert!(matches!(leaf.params.is_ca, IsCa::ExplicitNoCa));
        assert!(matches!(
            leaf_params(&spec, now, now - Duration::from_secs(1)),
            Err(PolicyError::IssuerExpired(_))
        ));
        let nothing = LeafSpec {
            spiffe_id: None,
            ..spec
        };
        assert!(matches!(
            leaf_params(&nothing, now, issuer_end),
            Err(PolicyError::NoIdentity)
        ));
    }
}
