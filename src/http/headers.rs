//! The identity headers an HTTP listener hands to the application, and the
//! headers it never lets a client send.
//!
//! A client can never claim an identity: every header portcullis sets is
//! first removed from the request, in whatever case or spelling it came
//! (header names are case-insensitive, and hyper hands them over
//! lowercased), and so are hop-by-hop headers and the headers a
//! `Connection` header names.
//!
//! - `xfcc`: `X-Forwarded-Client-Cert` as Envoy writes it with
//!   `forward_client_cert_details: SANITIZE_SET` and subject, URI and DNS
//!   details: `By=<our URI SAN>;Hash=<SHA-256 of the peer's leaf, hex>;
//!   Subject="<RFC 2253 subject>";URI=<peer URI SAN>;DNS=<each DNS SAN>`.
//! - `client-cert`: RFC 9440 `Client-Cert` (the leaf, as a structured-field
//!   byte sequence `:base64:`) and, when asked, `Client-Cert-Chain` (the
//!   intermediates the peer sent, a list of byte sequences).
//! - `spiffe-id`: the peer's SPIFFE ID, alone, in a header whose name is
//!   configurable (`x-spiffe-id` by default).

use base64::Engine;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Which identity headers a listener sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityHeader {
    /// `X-Forwarded-Client-Cert`, Envoy's format.
    Xfcc,
    /// RFC 9440 `Client-Cert` (and `Client-Cert-Chain` when configured).
    ClientCert,
    /// The SPIFFE ID alone.
    SpiffeId,
}

/// `X-Forwarded-Client-Cert`.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// RFC 9440 `Client-Cert`.
pub const CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
/// RFC 9440 `Client-Cert-Chain`.
pub const CLIENT_CERT_CHAIN: HeaderName = HeaderName::from_static("client-cert-chain");

/// Headers that describe the connection, not the message (RFC 9110 7.6.1),
/// never forwarded either way.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// What a listener writes into each request, computed once per connection
/// (the peer does not change between requests of one connection).
#[derive(Debug, Clone, Default)]
pub struct IdentityValues {
    /// Header name and value pairs to set.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The configuration of a listener's identity headers.
#[derive(Debug, Clone)]
pub struct HeaderConfig {
    /// Which headers to set.
    pub set: Vec<IdentityHeader>,
    /// The name of the SPIFFE ID header.
    pub spiffe_id_header: HeaderName,
    /// Also send `Client-Cert-Chain`.
    pub client_cert_chain: bool,
}

impl HeaderConfig {
    /// Every header name a client must never be able to send: all identity
    /// headers this listener could set, whether or not it sets them.
    pub fn reserved(&self) -> [HeaderName; 4] {
        [
            XFCC,
            CLIENT_CERT,
            CLIENT_CERT_CHAIN,
            self.spiffe_id_header.clone(),
        ]
    }
}

/// Remove from `headers` everything a client must not pass to the backend:
/// hop-by-hop headers, the headers `Connection` names (unless `keep` says
/// the request is an upgrade, whose `Connection: upgrade` and `Upgrade` must
/// pass), every identity header, and forwarding headers (replaced by ours).
pub fn sanitize_request(headers: &mut HeaderMap, config: &HeaderConfig, upgrade: bool) {
    remove_connection_headers(headers, upgrade);
    for name in config.reserved() {
        headers.remove(&name);
    }
    for name in ["x-forwarded-for", "x-forwarded-proto", "forwarded"] {
        headers.remove(name);
    }
}

/// Remove hop-by-hop headers from a response (keeping `Connection` and
/// `Upgrade` of a 101 answer to an upgrade).
pub fn sanitize_response(headers: &mut HeaderMap, upgrade: bool) {
    remove_connection_headers(headers, upgrade);
}

fn remove_connection_headers(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if upgrade && name == hyper::header::UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    for name in HOP_BY_HOP {
        if upgrade && name == "connection" {
            continue;
        }
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(hyper::header::UPGRADE);
    }
}

/// The identity header values for a peer that presented `chain` (leaf
/// first) to a proxy whose own leaf is `own_leaf`.
pub fn identity_values(
    config: &HeaderConfig,
    chain: &[CertificateDer<'_>],
    own_leaf: Option<&CertificateDer<'_>>,
) -> IdentityValues {
    let Some(leaf) = chain.first() else {
        return IdentityValues::default();
    };
    let Ok((_, parsed)) = X509Certificate::from_der(leaf.as_ref()) else {
        return IdentityValues::default();
    };
    let peer = Sans::of(&parsed);
    let mut headers = Vec::new();
    for kind in &config.set {
        match kind {
            IdentityHeader::Xfcc => {
                let by = own_leaf
                    .and_then(|der| X509Certificate::from_der(der.as_ref()).ok())
                    .map(|(_, own)| Sans::of(&own).uris)
                    .unwrap_or_default();
                let value = xfcc(&by, leaf, &rfc2253(&parsed), &peer);
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.push((XFCC, value));
                }
            }
            IdentityHeader::ClientCert => {
                let b64 = base64::engine::general_purpose::STANDARD;
                if let Ok(value) = HeaderValue::from_str(&format!(":{}:", b64.encode(leaf))) {
                    headers.push((CLIENT_CERT, value));
                }
                if config.client_cert_chain && chain.len() > 1 {
                    let list = chain[1..]
                        .iter()
                        .map(|c| format!(":{}:", b64.encode(c)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    if let Ok(value) = HeaderValue::from_str(&list) {
                        headers.push((CLIENT_CERT_CHAIN, value));
                    }
                }
            }
            IdentityHeader::SpiffeId => {
                let spiffe = peer
                    .uris
                    .iter()
                    .filter(|u| u.starts_with("spiffe://"))
                    .collect::<Vec<_>>();
                // An X.509-SVID has exactly one URI SAN; anything else has
                // no SPIFFE ID, and then no header is set.
                if let ([id], 1) = (spiffe.as_slice(), peer.uris.len()) {
                    if let Ok(value) = HeaderValue::from_str(id) {
                        headers.push((config.spiffe_id_header.clone(), value));
                    }
                }
            }
        }
    }
    IdentityValues { headers }
}

/// The forwarding headers of a connection from `ip`: portcullis is the
/// first hop the application can trust, so the TCP peer of the mTLS
/// connection is the caller (whatever the client claimed was removed by
/// [`sanitize_request`]).
pub fn forwarding_values(ip: std::net::IpAddr) -> Vec<(HeaderName, HeaderValue)> {
    let forwarded = match ip {
        std::net::IpAddr::V4(v4) => format!("for={v4};proto=https"),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=https"),
    };
    let mut headers = Vec::with_capacity(3);
    if let Ok(value) = HeaderValue::from_str(&ip.to_string()) {
        headers.push((HeaderName::from_static("x-forwarded-for"), value));
    }
    headers.push((
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    ));
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.push((HeaderName::from_static("forwarded"), value));
    }
    headers
}

/// The subject alternative names XFCC reports.
#[derive(Debug, Default)]
struct Sans {
    uris: Vec<String>,
    dns: Vec<String>,
}

impl Sans {
    fn of(cert: &X509Certificate<'_>) -> Sans {
        use x509_parser::extensions::GeneralName;
        let mut sans = Sans::default();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::URI(uri) => sans.uris.push(uri.to_string()),
                    GeneralName::DNSName(dns) => sans.dns.push(dns.to_string()),
                    _ => {}
                }
            }
        }
        sans
    }
}

/// One XFCC element as Envoy writes it (checked against Envoy 1.40 by
/// tests/envoy_reference.rs and tests/http.rs): `By=` for each of our URI
/// SANs, `Hash=` (hex SHA-256 of the peer's leaf), `Subject="..."` (always,
/// `""` when empty; RFC 2253, whose own escaping already covers `"`, `,`
/// and `;`), `URI=` for each URI SAN (one empty `URI=` when there is none),
/// and `DNS=` for each DNS SAN. Envoy writes By, URI and DNS values bare
/// even when they hold `;`, `,`, `=` or `"`; portcullis quotes such a value
/// (the one deliberate difference), so a certificate cannot smuggle extra
/// elements into the header.
fn xfcc(by: &[String], leaf: &CertificateDer<'_>, subject: &str, peer: &Sans) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut parts = Vec::new();
    for uri in by {
        parts.push(format!("By={}", xfcc_value(uri)));
    }
    parts.push(format!("Hash={hex}"));
    parts.push(format!("Subject=\"{subject}\""));
    if peer.uris.is_empty() {
        parts.push("URI=".to_string());
    }
    for uri in &peer.uris {
        parts.push(format!("URI={}", xfcc_value(uri)));
    }
    for dns in &peer.dns {
        parts.push(format!("DNS={}", xfcc_value(dns)));
    }
    parts.join(";")
}

/// A value as XFCC writes it: quoted when it holds a separator.
fn xfcc_value(value: &str) -> String {
    if value.contains([',', ';', '=', '"']) {
        format!("\"{}\"", escape_quoted(value))
    } else {
        value.to_string()
    }
}

fn escape_quoted(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The subject as RFC 2253 writes it, the way OpenSSL and BoringSSL print
/// it (and so Envoy): the last RDN first, `,` between RDNs, `+` between the
/// members of one RDN (also reversed), `\` before `, + " \ < > ;`, a leading
/// `#` or space and a trailing space, and every byte above 0x7f as `\XX`.
pub fn rfc2253(cert: &X509Certificate<'_>) -> String {
    use x509_parser::x509::AttributeTypeAndValue;
    fn short_name(attr: &AttributeTypeAndValue<'_>) -> String {
        let oid = attr.attr_type().to_id_string();
        let name = match oid.as_str() {
            "2.5.4.3" => "CN",
            "2.5.4.4" => "SN",
            "2.5.4.42" => "GN",
            "2.5.4.12" => "title",
            "2.5.4.5" => "serialNumber",
            "2.5.4.9" => "street",
            "2.5.4.7" => "L",
            "2.5.4.8" => "ST",
            "2.5.4.6" => "C",
            "2.5.4.10" => "O",
            "2.5.4.11" => "OU",
            "0.9.2342.19200300.100.1.25" => "DC",
            "0.9.2342.19200300.100.1.1" => "UID",
            "1.2.840.113549.1.9.1" => "emailAddress",
            _ => return oid,
        };
        name.to_string()
    }
    fn escape(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let last = value.chars().count().saturating_sub(1);
        for (i, c) in value.chars().enumerate() {
            let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                || (i == 0 && (c == '#' || c == ' '))
                || (i == last && c == ' ');
            if special {
                out.push('\\');
                out.push(c);
            } else if c.is_ascii() {
                out.push(c);
            } else {
                let mut utf8 = [0u8; 4];
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    out.push_str(&format!("\\{byte:02X}"));
                }
            }
        }
        out
    }
    cert.subject()
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|rdn| {
            rdn.iter()
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .map(|attr| {
                    let value = attr.as_str().map(escape).unwrap_or_else(|_| {
                        let hex: String = attr
                            .attr_value()
                            .data
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        format!("#{hex}")
                    });
                    format!("{}={value}", short_name(attr))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
