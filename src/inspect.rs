//! `portcullis cert inspect`: a human-readable summary of every certificate in a PEM file.
//!
//! A PEM file may hold a whole chain (leaf first, then intermediates, maybe
//! the root), so every `CERTIFICATE` block is summarized, in file order.
//! Other blocks (private keys, CSRs, CRLs, ...) are skipped without ever being
//! echoed: the output of `cert inspect` is safe to paste into a ticket even
//! when the file also holds the private key.
//!
//! [`summarize_pem`] does the parsing (no I/O), [`inspect_file`] reads a file
//! and [`render_text`] turns the summaries into text for a terminal. The
//! summaries are also `serde::Serialize`, for JSON output.
//!
//! None of these functions panic, whatever the input: malformed files give an
//! [`InspectError`].

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// One certificate's summary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertSummary {
    /// Subject distinguished name, e.g. `CN=api, O=Example`.
    pub subject: String,
    /// Issuer distinguished name, same format as `subject`.
    pub issuer: String,
    /// Serial number as lowercase hex without colons or DER sign padding
    /// (the same digits `openssl x509 -serial` prints, in lowercase).
    pub serial: String,
    /// Start of validity, unix seconds (UTC).
    pub not_before: i64,
    /// End of validity (inclusive), unix seconds (UTC).
    pub not_after: i64,
    /// DNS name SANs, in certificate order.
    pub dns_sans: Vec<String>,
    /// URI SANs, in certificate order.
    pub uri_sans: Vec<String>,
    /// IP address SANs, formatted as addresses (`10.0.0.1`, `::1`).
    pub ip_sans: Vec<String>,
    /// E-mail (RFC 822 name) SANs, in certificate order.
    pub email_sans: Vec<String>,
    /// The SPIFFE ID, per the X.509-SVID rule: set only when the certificate
    /// has exactly one URI SAN and it starts with `spiffe://`.
    pub spiffe_id: Option<String>,
    /// Public key algorithm and size: `ECDSA P-256`, `ECDSA P-384`,
    /// `RSA 2048`, `Ed25519`, ...
    pub key_type: String,
    /// Whether the basic constraints extension says `CA:TRUE`.
    pub is_ca: bool,
    /// The basic constraints path length constraint, when present.
    pub path_len: Option<u32>,
}

/// Why a PEM file could not be summarized.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input holds no `CERTIFICATE` PEM block.
    #[error(
        "no CERTIFICATE PEM block in {} (if it is DER, convert it first: \
         openssl x509 -inform der -in FILE)",
        path.display()
    )]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// The PEM structure itself is broken (bad markers, bad base64).
    #[error("malformed PEM in {}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong; never contains decoded block contents.
        reason: String,
    },
    /// A `CERTIFICATE` block does not hold a valid X.509 certificate.
    #[error("certificate #{index} in {} is invalid: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Position of the block among the file's certificates, counting from 1
        /// (the same number [`render_text`] shows).
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Parse every CERTIFICATE block of a PEM byte string (non-certificate blocks
/// such as keys are ignored and never echoed).
///
/// `path` is only used in error messages. Returns the summaries in file
/// order, or an error if the PEM is malformed, any certificate block fails to
/// parse, or there is no certificate at all.
pub fn summarize_pem(pem: &[u8], path: &Path) -> Result<Vec<CertSummary>, InspectError> {
    let mut summaries = Vec::new();
    for block in CertificateDer::pem_slice_iter(pem) {
        let der = block.map_err(|e| InspectError::BadPem {
            path: path.to_path_buf(),
            reason: pem_error_reason(&e),
        })?;
        let index = summaries.len() + 1;
        let summary = summarize_der(&der).map_err(|reason| InspectError::BadCertificate {
            path: path.to_path_buf(),
            index,
            reason,
        })?;
        summaries.push(summary);
    }
    if summaries.is_empty() {
        return Err(InspectError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(summaries)
}

/// Read `path` and summarize every certificate in it (see [`summarize_pem`]).
pub fn inspect_file(path: &Path) -> Result<Vec<CertSummary>, InspectError> {
    let bytes = std::fs::read(path).map_err(|source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    summarize_pem(&bytes, path)
}

/// Render for humans; `now` (unix secs) is passed in so output is testable.
///
/// Shows for each cert: index, subject, issuer, serial, not before / not
/// after as RFC3339 UTC, time left ("expires in 2d 3h", or "EXPIRED 5m ago",
/// or "not yet valid (starts in ...)"), SANs by kind, SPIFFE ID (or "none"),
/// key type, CA yes/no (+ path length).
///
/// Control characters from certificate fields are escaped, so a hostile
/// certificate cannot inject terminal escape sequences.
pub fn render_text(summaries: &[CertSummary], now: i64) -> String {
    let mut out = String::new();
    let total = summaries.len();
    for (i, s) in summaries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(out, "Certificate #{} of {}", i + 1, total);
        let _ = writeln!(out, "  Subject:     {}", or_empty(&s.subject));
        let _ = writeln!(out, "  Issuer:      {}", or_empty(&s.issuer));
        let _ = writeln!(out, "  Serial:      {}", or_empty(&s.serial));
        let _ = writeln!(out, "  Not before:  {}", rfc3339(s.not_before));
        let _ = writeln!(out, "  Not after:   {}", rfc3339(s.not_after));
        let _ = writeln!(out, "  Validity:    {}", validity(s, now));
        let _ = writeln!(out, "  DNS SANs:    {}", list(&s.dns_sans));
        let _ = writeln!(out, "  URI SANs:    {}", list(&s.uri_sans));
        let _ = writeln!(out, "  IP SANs:     {}", list(&s.ip_sans));
        let _ = writeln!(out, "  Email SANs:  {}", list(&s.email_sans));
        let spiffe = s.spiffe_id.as_deref().map_or("none".into(), sanitize);
        let _ = writeln!(out, "  SPIFFE ID:   {spiffe}");
        let _ = writeln!(out, "  Key type:    {}", sanitize(&s.key_type));
        let ca = match (s.is_ca, s.path_len) {
            (true, Some(n)) => format!("yes (path length {n})"),
            (true, None) => "yes (path length unlimited)".to_string(),
            (false, _) => "no".to_string(),
        };
        let _ = writeln!(out, "  CA:          {ca}");
    }
    out
}

/// Summarize one DER certificate; the error is a human-readable reason.
pub fn summarize_der(der: &[u8]) -> Result<CertSummary, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes of trailing data after the certificate",
            rest.len()
        ));
    }

    let mut dns_sans = Vec::new();
    let mut uri_sans = Vec::new();
    let mut ip_sans = Vec::new();
    let mut email_sans = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subject alternative name: {e}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_sans.push((*d).to_string()),
                GeneralName::URI(u) => uri_sans.push((*u).to_string()),
                GeneralName::RFC822Name(m) => email_sans.push((*m).to_string()),
                GeneralName::IPAddress(ip) => ip_sans.push(format_ip(ip)),
                _ => {}
            }
        }
    }

    let spiffe_id = match uri_sans.as_slice() {
        [only] if only.starts_with("spiffe://") => Some(only.clone()),
        _ => None,
    };

    let bc = cert
        .basic_constraints()
        .map_err(|e| format!("basic constraints: {e}"))?;
    let (is_ca, path_len) = match bc {
        Some(bc) => (bc.value.ca, bc.value.path_len_constraint),
        None => (false, None),
    };

    let validity = cert.validity();
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: serial_hex(cert.raw_serial()),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        dns_sans,
        uri_sans,
        ip_sans,
        email_sans,
        spiffe_id,
        key_type: key_type(cert.public_key()),
        is_ca,
        path_len,
    })
}

/// Describe a PEM error without echoing any decoded content.
fn pem_error_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "block \"{}\" has no END line",
            sanitize(&String::from_utf8_lossy(end_marker))
        ),
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".to_string(),
        // The decoder's message may describe the offending bytes of a key
        // block: keep it out of the output.
        pem::Error::Base64Decode(_) => "invalid base64 inside a PEM block".to_string(),
        pem::Error::SectionTooLarge => "a PEM block is larger than 256 MB".to_string(),
        pem::Error::Io(io) => format!("read error: {io}"),
        other => format!("{other}"),
    }
}

/// Lowercase hex of the serial's integer value: DER sign-padding zero bytes
/// are dropped, but at least one byte is kept.
fn serial_hex(raw: &[u8]) -> String {
    let first_non_zero = raw.iter().position(|b| *b != 0);
    let digits = match first_non_zero {
        Some(i) => &raw[i..],
        None => raw.get(..1).unwrap_or(&[]),
    };
    digits.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn format_ip(bytes: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        IpAddr::V4(Ipv4Addr::from(v4)).to_string()
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        IpAddr::V6(Ipv6Addr::from(v6)).to_string()
    } else {
        let hex = bytes.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        format!("<invalid {}-byte IP address {hex}>", bytes.len())
    }
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_ED448: &str = "1.3.101.113";

fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        OID_RSA | OID_RSA_PSS => {
            let name = if alg == OID_RSA { "RSA" } else { "RSA-PSS" };
            match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => format!("{name} {}", modulus_bits(rsa.modulus)),
                _ => format!("{name} (unparsable key)"),
            }
        }
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".to_string(),
                Some("1.3.132.0.34") => "ECDSA P-384".to_string(),
                Some("1.3.132.0.35") => "ECDSA P-521".to_string(),
                Some("1.3.132.0.10") => "ECDSA secp256k1".to_string(),
                Some(other) => format!("ECDSA (curve {other})"),
                None => "ECDSA (unknown curve)".to_string(),
            }
        }
        OID_ED25519 => "Ed25519".to_string(),
        OID_ED448 => "Ed448".to_string(),
        _ => format!("unknown (algorithm {alg})"),
    }
}

/// Bit length of a big-endian unsigned integer (leading zeros ignored).
fn modulus_bits(modulus: &[u8]) -> usize {
    match modulus.iter().position(|b| *b != 0) {
        Some(i) => {
            let significant = modulus.len() - i;
            let top_bits = 8 - modulus[i].leading_zeros() as usize;
            (significant - 1) * 8 + top_bits
        }
        None => 0,
    }
}

/// RFC 3339 UTC timestamp, e.g. `2020-09-13T12:26:40Z`.
fn rfc3339(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("<out of range: {secs} unix seconds>"),
    }
}

fn validity(s: &CertSummary, now: i64) -> String {
    if now < s.not_before {
        let left = s.not_before.abs_diff(now);
        format!("not yet valid (starts in {})", human_duration(left))
    } else if now > s.not_after {
        let ago = now.abs_diff(s.not_after);
        format!("EXPIRED {} ago", human_duration(ago))
    } else {
        let left = s.not_after.abs_diff(now);
        format!("expires in {}", human_duration(left))
    }
}

/// The largest non-zero unit, plus the next one when it is non-zero:
/// `2d 3h`, `5m`, `1m 30s`, `0s`.
fn human_duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
    ];
    match parts.iter().position(|(n, _)| *n != 0) {
        None => "0s".to_string(),
        Some(i) => {
            let (n, unit) = parts[i];
            match parts.get(i + 1) {
                Some((m, unit2)) if *m != 0 => format!("{n}{unit} {m}{unit2}"),
                _ => format!("{n}{unit}"),
            }
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items
            .iter()
            .map(|s| sanitize(s))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn or_empty(s: &str) -> String {
    if s.is_empty() {
        "(empty)".to_string()
    } else {
        sanitize(s)
    }
}

/// Escape control characters so certificate contents cannot drive the terminal.
fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, SerialNumber,
        PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    };
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use time::OffsetDateTime;

    const NB: i64 = 1_600_000_000; // 2020-09-13T12:26:40Z
    const NA: i64 = 1_900_000_000; // 2030-03-17T17:46:40Z

    fn ts(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    fn params(cn: &str, nb: i64, na: i64) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = ts(nb);
        p.not_after = ts(na);
        p
    }

    fn path() -> &'static Path {
        Path::new("test.pem")
    }

    /// CA (P-384, pathlen 1) and leaf (P-256) with every SAN kind.
    /// Returns (leaf pem, ca pem, leaf key pem).
    fn chain() -> (String, String, String) {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut ca_params = params("Test CA", NB, NA);
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        ca_params.serial_number = Some(SerialNumber::from(vec![0x01, 0xab]));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf = params("leaf", NB, NA);
        leaf.serial_number = Some(SerialNumber::from(vec![0x00, 0x9f, 0x10]));
        leaf.subject_alt_names = vec![
            SanType::DnsName("api.example.org".try_into().unwrap()),
            SanType::DnsName("*.api.example.org".try_into().unwrap()),
            SanType::URI("spiffe://example.org/ns/web/sa/api".try_into().unwrap()),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SanType::Rfc822Name("ops@example.org".try_into().unwrap()),
        ];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (leaf_cert.pem(), ca_cert.pem(), leaf_key.serialize_pem())
    }

    fn self_signed(
        alg: &'static rcgen::SignatureAlgorithm,
        nb: i64,
        na: i64,
    ) -> (String, CertificateParams) {
        let key = KeyPair::generate_for(alg).unwrap();
        let p = params("single", nb, na);
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), p)
    }

    #[test]
    fn chain_every_field() {
        let (leaf, ca, _) = chain();
        let pem = format!("{leaf}{ca}");
        let s = summarize_pem(pem.as_bytes(), path()).unwrap();
        assert_eq!(s.len(), 2);

        let l = &s[0];
        assert_eq!(l.subject, "CN=leaf");
        assert_eq!(l.issuer, "CN=Test CA, O=Example");
        assert_eq!(l.serial, "9f10");
        assert_eq!(l.not_before, NB);
        assert_eq!(l.not_after, NA);
        assert_eq!(l.dns_sans, vec!["api.example.org", "*.api.example.org"]);
        assert_eq!(l.uri_sans, vec!["spiffe://example.org/ns/web/sa/api"]);
        assert_eq!(l.ip_sans, vec!["10.1.2.3", "::1"]);
        assert_eq!(l.email_sans, vec!["ops@example.org"]);
        assert_eq!(
            l.spiffe_id.as_deref(),
            Some("spiffe://example.org/ns/web/sa/api")
        );
        assert_eq!(l.key_type, "ECDSA P-256");
        assert!(!l.is_ca);
        assert_eq!(l.path_len, None);

        let c = &s[1];
        assert_eq!(c.subject, "CN=Test CA, O=Example");
        assert_eq!(c.issuer, c.subject);
        assert_eq!(c.serial, "01ab");
        assert_eq!((c.not_before, c.not_after), (NB, NA));
        assert!(c.dns_sans.is_empty() && c.uri_sans.is_empty());
        assert!(c.ip_sans.is_empty() && c.email_sans.is_empty());
        assert_eq!(c.spiffe_id, None);
        assert_eq!(c.key_type, "ECDSA P-384");
        assert!(c.is_ca);
        assert_eq!(c.path_len, Some(1));

        let text = render_text(&s, NB + 10);
        for needle in [
            "Certificate #1 of 2",
            "Certificate #2 of 2",
            "Subject:     CN=leaf",
            "Issuer:      CN=Test CA, O=Example",
            "Serial:      9f10",
            "Not before:  2020-09-13T12:26:40Z",
            "Not after:   2030-03-17T17:46:40Z",
            "DNS SANs:    api.example.org, *.api.example.org",
            "URI SANs:    spiffe://example.org/ns/web/sa/api",
            "IP SANs:     10.1.2.3, ::1",
            "Email SANs:  ops@example.org",
            "SPIFFE ID:   spiffe://example.org/ns/web/sa/api",
            "SPIFFE ID:   none",
            "Key type:    ECDSA P-256",
            "Key type:    ECDSA P-384",
            "CA:          no",
            "CA:          yes (path length 1)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // JSON output works too.
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"spiffe_id\":\"spiffe://example.org/ns/web/sa/api\""));
    }

    #[test]
    fn two_uri_sans_is_not_a_spiffe_id() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = params("two", NB, NA);
        p.subject_alt_names = vec![
            SanType::URI("spiffe://example.org/a".try_into().unwrap()),
            SanType::URI("spiffe://example.org/b".try_into().unwrap()),
        ];
        let pem = p.self_signed(&key).unwrap().pem();
        let s = summarize_pem(pem.as_bytes(), path()).unwrap();
        assert_eq!(s[0].uri_sans.len(), 2);
        assert_eq!(s[0].spiffe_id, None);
        assert!(render_text(&s, NB).contains("SPIFFE ID:   none"));
    }

    #[test]
    fn single_non_spiffe_uri_is_not_a_spiffe_id() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = params("uri", NB, NA);
        p.subject_alt_names = vec![SanType::URI("https://example.org/".try_into().unwrap())];
        let pem = p.self_signed(&key).unwrap().pem();
        let s = summarize_pem(pem.as_bytes(), path()).unwrap();
        assert_eq!(s[0].spiffe_id, None);
    }

    #[test]
    fn key_types() {
        for (alg, want) in [
            (&PKCS_ECDSA_P256_SHA256, "ECDSA P-256"),
            (&PKCS_ECDSA_P384_SHA384, "ECDSA P-384"),
            (&PKCS_ED25519, "Ed25519"),
        ] {
            let (pem, _) = self_signed(alg, NB, NA);
            let s = summarize_pem(pem.as_bytes(), path()).unwrap();
            assert_eq!(s[0].key_type, want);
        }
    }

    #[test]
    fn ca_without_path_len() {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut p = params("root", NB, NA);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = p.self_signed(&key).unwrap().pem();
        let s = summarize_pem(pem.as_bytes(), path()).unwrap();
        assert!(s[0].is_ca);
        assert_eq!(s[0].path_len, None);
        assert!(render_text(&s, NB).contains("CA:          yes (path length unlimited)"));
    }

    #[test]
    fn expired_cert() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let nb = now - 10 * 86_400;
        let na = now - 86_400;
        let (pem, _) = self_signed(&PKCS_ECDSA_P256_SHA256, nb, na);
        let s = summarize_pem(pem.as_bytes(), path()).unwrap();
        assert_eq!((s[0].not_before, s[0].not_after), (nb, na));
        assert!(s[0].not_after < now);
        let text = render_text(&s, now);
        assert!(text.contains("Validity:    EXPIRED 1d ago"), "{text}");
    }

    #[test]
    fn render_validity_states() {
        let (pem, _) = self_signed(&PKCS_ECDSA_P256_SHA256, NB, NA);
        let s = summarize_pem(pem.as_bytes(), path()).unwrap();
        let at = |now: i64| render_text(&s, now);

        assert!(at(NA - (2 * 86_400 + 3 * 3_600)).contains("Validity:    expires in 2d 3h"));
        assert!(at(NA - (2 * 86_400 + 3 * 3_600 + 59)).contains("expires in 2d 3h\n"));
        assert!(at(NA).contains("expires in 0s"));
        assert!(at(NA + 300).contains("Validity:    EXPIRED 5m ago"));
        assert!(at(NA + 3_601).contains("EXPIRED 1h ago"));
        assert!(at(NB - 90).contains("Validity:    not yet valid (starts in 1m 30s)"));
        assert!(at(NB - 86_400).contains("not yet valid (starts in 1d)"));
        // Extreme clocks do not panic.
        assert!(at(i64::MIN).contains("not yet valid"));
        assert!(at(i64::MAX).contains("EXPIRED"));
    }

    #[test]
    fn render_edge_values_do_not_panic() {
        let weird = CertSummary {
            subject: "CN=\u{1b}[31mred".into(),
            issuer: String::new(),
            serial: String::new(),
            not_before: i64::MIN,
            not_after: i64::MAX,
            dns_sans: vec!["a\nb".into()],
            uri_sans: vec![],
            ip_sans: vec![],
            email_sans: vec![],
            spiffe_id: None,
            key_type: "x".into(),
            is_ca: false,
            path_len: Some(3),
        };
        let text = render_text(&[weird], 0);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("a\\nb"));
        assert!(text.contains("out of range"));
        assert!(text.contains("Issuer:      (empty)"));
        assert_eq!(render_text(&[], 0), "");
    }

    #[test]
    fn key_blocks_are_ignored_and_never_printed() {
        let (leaf, ca, key) = chain();
        assert!(key.contains("PRIVATE KEY"));
        // Key before, between and after certificates, plus an unknown block.
        let pem = format!(
            "{key}{leaf}{key}\n-----BEGIN SOMETHING ELSE-----\nAAAA\n-----END SOMETHING ELSE-----\n{ca}{key}"
        );
        let s = summarize_pem(pem.as_bytes(), path()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].subject, "CN=leaf");
        assert_eq!(s[1].subject, "CN=Test CA, O=Example");
        let text = render_text(&s, NB);
        assert!(!text.contains("PRIVATE"));
        let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!text.contains(&key_body));

        // A key alone is "no certificates", and the error does not echo it.
        let err = summarize_pem(key.as_bytes(), path()).unwrap_err();
        assert!(matches!(err, InspectError::NoCertificates { .. }), "{err}");
        assert!(!err.to_string().contains("PRIVATE"));
    }

    #[test]
    fn bad_key_block_error_does_not_echo_it() {
        let (leaf, _, _) = chain();
        let pem = format!(
            "{leaf}-----BEGIN PRIVATE KEY-----\nc2VjcmV0IQ==*\n-----END PRIVATE KEY-----\n"
        );
        let err = summarize_pem(pem.as_bytes(), path()).unwrap_err();
        assert!(matches!(err, InspectError::BadPem { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            !msg.contains("c2VjcmV0") && !msg.contains("secret"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_input_is_an_error() {
        for input in [
            &b""[..],
            b"\n\n",
            b"hello world",
            b"\x00\xff\xfe\x30\x82\x01",
            b"-----BEGIN CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(summarize_pem(input, path()).is_err(), "{input:?}");
        }
        assert!(matches!(
            summarize_pem(b"", path()),
            Err(InspectError::NoCertificates { .. })
        ));
        assert!(matches!(
            summarize_pem(
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                path()
            ),
            Err(InspectError::BadPem { .. })
        ));
        assert!(matches!(
            summarize_pem(
                b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
                path()
            ),
            Err(InspectError::BadCertificate { index: 1, .. })
        ));

        // Pseudo-random bytes, with and without PEM armour: errors, no panics.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(summarize_pem(&bytes, path()).is_err());
            let mut armoured = b"-----BEGIN CERTIFICATE-----\n".to_vec();
            armoured.extend_from_slice(&bytes);
            armoured.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
            assert!(summarize_pem(&armoured, path()).is_err());
        }
    }

    #[test]
    fn truncated_der_is_bad_certificate_with_index() {
        let (leaf, ca, _) = chain();
        // Drop one full 64-character base64 line (48 DER bytes) from the
        // middle of the second certificate: still valid base64, broken DER.
        let mut lines: Vec<&str> = ca.lines().collect();
        lines.remove(3);
        let broken_ca = lines.join("\n") + "\n";
        let pem = format!("{leaf}{broken_ca}");
        match summarize_pem(pem.as_bytes(), path()) {
            Err(InspectError::BadCertificate { index, path, .. }) => {
                assert_eq!(index, 2);
                assert_eq!(path, Path::new("test.pem"));
            }
            other => panic!("expected BadCertificate, got {other:?}"),
        }
    }

    #[test]
    fn mutated_certificates_never_panic() {
        let (leaf, _, _) = chain();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = leaf.as_bytes();
        let body_start = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        let body_end = leaf.rfind("-----END").unwrap();
        for pos in body_start..body_end {
            if bytes[pos] == b'\n' || bytes[pos] == b'=' {
                continue;
            }
            for sub in [0usize, 17, 42] {
                let mut m = bytes.to_vec();
                m[pos] = alphabet
                    [(alphabet.iter().position(|a| *a == m[pos]).unwrap_or(0) + 1 + sub) % 64];
                // Any result is fine, as long as there is no panic.
                if let Ok(s) = summarize_pem(&m, path()) {
                    let _ = render_text(&s, NB);
                }
            }
        }
        // Every truncation too.
        for cut in 0..bytes.len() {
            let _ = summarize_pem(&bytes[..cut], path());
        }
    }

    #[test]
    fn inspect_file_reads_and_reports_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (leaf, ca, _) = chain();
        let file = dir.path().join("chain.pem");
        std::fs::write(&file, format!("{leaf}{ca}")).unwrap();
        let s = inspect_file(&file).unwrap();
        assert_eq!(s.len(), 2);

        let missing = dir.path().join("missing.pem");
        let err = inspect_file(&missing).unwrap_err();
        assert!(matches!(err, InspectError::Io { .. }));
        assert!(err.to_string().contains("missing.pem"));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            inspect_file(&empty),
            Err(InspectError::NoCertificates { .. })
        ));
    }

    #[test]
    fn helpers() {
        assert_eq!(serial_hex(&[0x00, 0x80]), "80");
        assert_eq!(serial_hex(&[0x0a, 0xbc]), "0abc");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "");
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01]), 1);
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3_600), "1h");
        assert_eq!(human_duration(3_660), "1h 1m");
        assert_eq!(human_duration(86_400 + 59), "1d");
        assert_eq!(format_ip(&[1, 2, 3]), "<invalid 3-byte IP address 010203>");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    /// Uses the `openssl` CLI to make an RSA certificate (rcgen cannot
    /// generate RSA keys with the ring backend).
    #[test]
    fn openssl_rsa_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let result = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=x", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output();
        let output = match result {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var_os("CI").is_some() {
                    panic!("openssl not found, and CI is set: this test must run in CI");
                }
                eprintln!("*** SKIPPED: openssl not found (install it to run this test) ***");
                return;
            }
            Err(e) => panic!("cannot run openssl: {e}"),
        };
        assert!(
            output.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        let s = inspect_file(&cert).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].key_type, "RSA 2048");
        assert!(s[0].subject.contains("CN=x"), "{}", s[0].subject);
        assert!(s[0].not_after - s[0].not_before <= 86_400 + 1);

        // Key + cert in one file: only the cert comes out, no key material.
        let key_pem = std::fs::read_to_string(&key).unwrap();
        let cert_pem = std::fs::read_to_string(&cert).unwrap();
        let both = dir.path().join("both.pem");
        std::fs::write(&both, format!("{key_pem}{cert_pem}")).unwrap();
        let s2 = inspect_file(&both).unwrap();
        assert_eq!(s2, s);
        let text = render_text(&s2, s2[0].not_before);
        assert!(text.contains("Key type:    RSA 2048"));
        assert!(!text.contains("PRIVATE"));
    }
}
