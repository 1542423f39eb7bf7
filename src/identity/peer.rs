//! Peer identity: the fields of a verified leaf certificate that policy can
//! match on.
//!
//! Extraction runs after the chain has been verified, on the leaf only. It
//! parses the certificate once and keeps owned strings, so the result can be
//! logged, put in a PROXY header and matched without touching DER again.

use std::fmt;
use std::net::IpAddr;

use x509_parser::der_parser::ber::BerObjectContent;
use x509_parser::der_parser::der::parse_der;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe::SpiffeId;

/// The identity fields of a peer certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SPIFFE ID: set only when the certificate has exactly one URI SAN
    /// and it is a valid SPIFFE ID (X.509-SVID rule).
    pub spiffe_id: Option<SpiffeId>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// URI SANs.
    pub uris: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Email (RFC 822) SANs.
    pub emails: Vec<String>,
    /// Subject common name (the first, if several).
    pub cn: Option<String>,
    /// Subject organizations.
    pub o: Vec<String>,
    /// Subject organizational units.
    pub ou: Vec<String>,
    /// Issuer distinguished name, e.g. `CN=Example Intermediate, O=Example`.
    pub issuer: String,
    /// Serial number, lowercase hex without separators.
    pub serial: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// Values of the custom extensions that were asked for, by dotted OID.
    pub extensions: Vec<(String, Vec<String>)>,
}

/// Why identity fields could not be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The DER does not parse as an X.509 certificate.
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    /// The subject alternative name extension is malformed or duplicated.
    #[error("subject alternative names do not parse: {0}")]
    BadSan(String),
}

impl PeerIdentity {
    /// Read the identity fields of a DER certificate. `extension_oids` names
    /// the custom extensions (dotted OIDs) whose values policy needs.
    pub fn from_der(der: &[u8], extension_oids: &[String]) -> Result<PeerIdentity, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        Self::from_certificate(&cert, extension_oids)
    }

    fn from_certificate(
        cert: &X509Certificate<'_>,
        extension_oids: &[String],
    ) -> Result<PeerIdentity, IdentityError> {
        let mut identity = PeerIdentity {
            issuer: cert.issuer().to_string(),
            serial: hex(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
            ..PeerIdentity::default()
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadSan(e.to_string()))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(v) => identity.dns.push(v.to_string()),
                    GeneralName::URI(v) => identity.uris.push(v.to_string()),
                    GeneralName::RFC822Name(v) => identity.emails.push(v.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            identity.ips.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        if let [only] = identity.uris.as_slice() {
            identity.spiffe_id = SpiffeId::parse(only).ok();
        }
        let subject = cert.subject();
        identity.cn = subject
            .iter_common_name()
            .find_map(|a| a.as_str().ok())
            .map(str::to_string);
        identity.o = subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .map(str::to_string)
            .collect();
        identity.ou = subject
            .iter_organizational_unit()
            .filter_map(|a| a.as_str().ok())
            .map(str::to_string)
            .collect();
        for wanted in extension_oids {
            let values: Vec<String> = cert
                .extensions()
                .iter()
                .filter(|ext| ext.oid.to_id_string() == *wanted)
                .flat_map(|ext| extension_values(ext.value))
                .collect();
            if !values.is_empty() {
                identity.extensions.push((wanted.clone(), values));
            }
        }
        Ok(identity)
    }

    /// The name to show in logs: SPIFFE ID, else CN, else the first DNS SAN,
    /// else the serial.
    pub fn display_name(&self) -> String {
        if let Some(id) = &self.spiffe_id {
            return id.to_string();
        }
        if let Some(cn) = &self.cn {
            return format!("CN={cn}");
        }
        if let Some(dns) = self.dns.first() {
            return format!("DNS={dns}");
        }
        format!("serial={}", self.serial)
    }

    /// The values of one custom extension, if the certificate had it.
    pub fn extension(&self, oid: &str) -> &[String] {
        self.extensions
            .iter()
            .find(|(o, _)| o == oid)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_name())
    }
}

/// Custom extensions carry roles or groups as a DER string or a SEQUENCE/SET
/// of strings; anything else is matched as lowercase hex of the raw value.
fn extension_values(raw: &[u8]) -> Vec<String> {
    let Ok((_, object)) = parse_der(raw) else {
        return vec![hex(raw)];
    };
    if let Ok(text) = object.as_str() {
        return vec![text.to_string()];
    }
    match &object.content {
        BerObjectContent::Sequence(items) | BerObjectContent::Set(items) => {
            let strings: Vec<String> = items
                .iter()
                .filter_map(|item| item.as_str().ok())
                .map(str::to_string)
                .collect();
            if strings.len() == items.len() && !strings.is_empty() {
                strings
            } else {
                vec![hex(raw)]
            }
        }
        _ => vec![hex(raw)],
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Lowercase hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, SanType};

    fn cert_der(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_every_field() {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "frontend");
        dn.push(DnType::OrganizationName, "Example");
        dn.push(DnType::OrganizationalUnitName, "sre");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::URI(
                "spiffe://example.org/ns/web/sa/frontend"
                    .try_into()
                    .unwrap(),
            ),
            SanType::DnsName("web.example.org".try_into().unwrap()),
            SanType::IpAddress("10.1.2.3".parse().unwrap()),
            SanType::Rfc822Name("ops@example.org".try_into().unwrap()),
        ];
        params.serial_number = Some(vec![0x01, 0xab].into());
        // A UTF8String role, and a SEQUENCE of two strings.
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, 1],
                vec![0x0c, 0x05, b'a', b'd', b'm', b'i', b'n'],
            ),
            CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, 2],
                vec![0x30, 0x06, 0x0c, 0x01, b'x', 0x0c, 0x01, b'y'],
            ),
        ];
        let der = cert_der(params);
        let oids = vec![
            "1.3.6.1.4.1.99999.1".to_string(),
            "1.3.6.1.4.1.99999.2".to_string(),
            "1.3.6.1.4.1.99999.3".to_string(),
        ];
        let id = PeerIdentity::from_der(&der, &oids).unwrap();
        assert_eq!(
            id.spiffe_id.as_ref().map(|s| s.as_str()),
            Some("spiffe://example.org/ns/web/sa/frontend")
        );
        assert_eq!(id.dns, vec!["web.example.org"]);
        assert_eq!(id.ips, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(id.emails, vec!["ops@example.org"]);
        assert_eq!(id.cn.as_deref(), Some("frontend"));
        assert_eq!(id.o, vec!["Example"]);
        assert_eq!(id.ou, vec!["sre"]);
        assert_eq!(id.serial, "01ab");
        assert!(id.issuer.contains("CN=frontend"), "{}", id.issuer);
        assert_eq!(id.extension("1.3.6.1.4.1.99999.1"), ["admin"]);
        assert_eq!(id.extension("1.3.6.1.4.1.99999.2"), ["x", "y"]);
        assert!(id.extension("1.3.6.1.4.1.99999.3").is_empty());
        assert_eq!(id.display_name(), "spiffe://example.org/ns/web/sa/frontend");
    }

    #[test]
    fn two_uri_sans_are_not_a_spiffe_id() {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI("spiffe://example.org/a".try_into().unwrap()),
            SanType::URI("spiffe://example.org/b".try_into().unwrap()),
        ];
        let id = PeerIdentity::from_der(&cert_der(params), &[]).unwrap();
        assert_eq!(id.spiffe_id, None);
        assert_eq!(id.uris.len(), 2);
    }

    #[test]
    fn invalid_spiffe_uri_is_not_a_spiffe_id() {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://Example.org/a/../b".try_into().unwrap(),
        )];
        let id = PeerIdentity::from_der(&cert_der(params), &[]).unwrap();
        assert_eq!(id.spiffe_id, None);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(PeerIdentity::from_der(b"not a certificate", &[]).is_err());
        assert!(PeerIdentity::from_der(&[], &[]).is_err());
    }
}
