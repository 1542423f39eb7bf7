//! Unit tests of the identity headers and request sanitizing.

use hyper::header::HeaderMap;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

use super::*;

fn config(set: &[IdentityHeader]) -> HeaderConfig {
    HeaderConfig {
        set: set.to_vec(),
        spiffe_id_header: HeaderName::from_static("x-spiffe-id"),
        client_cert_chain: true,
    }
}

fn cert(cn: Option<&str>, uris: &[&str], dns: &[&str]) -> CertificateDer<'static> {
    let mut params = CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        name.push(DnType::OrganizationName, "Example, Inc.");
        name.push(DnType::CommonName, cn);
    }
    params.distinguished_name = name;
    for uri in uris {
        params
            .subject_alt_names
            .push(SanType::URI((*uri).try_into().unwrap()));
    }
    for d in dns {
        params
            .subject_alt_names
            .push(SanType::DnsName((*d).try_into().unwrap()));
    }
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

#[test]
fn spoofed_identity_and_hop_by_hop_headers_are_removed_in_any_case() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("X-Forwarded-Client-Cert", "By=spiffe://evil;Hash=00"),
        ("client-cert", ":AAAA:"),
        ("Client-Cert-Chain", ":AAAA:"),
        ("X-SPIFFE-ID", "spiffe://example.org/admin"),
        ("x-forwarded-for", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
        ("connection", "keep-alive, x-secret"),
        ("x-secret", "hop"),
        ("te", "trailers"),
        ("upgrade", "websocket"),
        ("accept", "*/*"),
    ] {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static(value),
        );
    }
    sanitize_request(&mut headers, &config(&[]), false);
    let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(left, ["accept"]);
}

#[test]
fn an_upgrade_keeps_connection_and_upgrade() {
    let mut headers = HeaderMap::new();
    headers.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        hyper::header::UPGRADE,
        HeaderValue::from_static("websocket"),
    );
    sanitize_request(&mut headers, &config(&[]), true);
    assert_eq!(headers.len(), 2);
}

#[test]
fn xfcc_has_by_hash_subject_uri_and_each_dns() {
    let own = cert(None, &["spiffe://example.org/ns/api/sa/server"], &[]);
    let peer = cert(
        Some("frontend"),
        &["spiffe://example.org/ns/web/sa/frontend"],
        &["a.example.org", "b.example.org"],
    );
    let values = identity_values(
        &config(&[IdentityHeader::Xfcc]),
        std::slice::from_ref(&peer),
        Some(&own),
    );
    let (name, value) = &values.headers[0];
    assert_eq!(name, &XFCC);
    let hash = ring::digest::digest(&ring::digest::SHA256, peer.as_ref());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        value.to_str().unwrap(),
        format!(
            "By=spiffe://example.org/ns/api/sa/server;Hash={hex};\
             Subject=\"CN=frontend,O=Example\\, Inc.\";\
             URI=spiffe://example.org/ns/web/sa/frontend;DNS=a.example.org;DNS=b.example.org"
        )
    );
}

#[test]
fn client_cert_is_an_rfc_9440_byte_sequence_and_the_chain_a_list() {
    let leaf = cert(Some("x"), &[], &[]);
    let intermediate = cert(Some("ca"), &[], &[]);
    let values = identity_values(
        &config(&[IdentityHeader::ClientCert]),
        &[leaf.clone(), intermediate.clone()],
        None,
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(values.headers[0].0, CLIENT_CERT);
    assert_eq!(
        values.headers[0].1.to_str().unwrap(),
        format!(":{}:", b64.encode(&leaf))
    );
    assert_eq!(values.headers[1].0, CLIENT_CERT_CHAIN);
    assert_eq!(
        values.headers[1].1.to_str().unwrap(),
        format!(":{}:", b64.encode(&intermediate))
    );
}

#[test]
fn the_spiffe_id_header_needs_exactly_one_spiffe_uri() {
    let header = config(&[IdentityHeader::SpiffeId]);
    let svid = cert(None, &["spiffe://example.org/ns/web/sa/frontend"], &[]);
    let values = identity_values(&header, std::slice::from_ref(&svid), None);
    assert_eq!(
        values.headers[0].1.to_str().unwrap(),
        "spiffe://example.org/ns/web/sa/frontend"
    );
    let two = cert(
        None,
        &["spiffe://example.org/a", "https://example.org/b"],
        &[],
    );
    assert!(identity_values(&header, std::slice::from_ref(&two), None)
        .headers
        .is_empty());
    let none = cert(Some("cn-only"), &[], &[]);
    assert!(identity_values(&header, std::slice::from_ref(&none), None)
        .headers
        .is_empty());
}

#[test]
fn xfcc_always_has_subject_and_uri_and_quotes_a_value_with_separators() {
    let peer = cert(None, &[], &["evil.example.org;By=spiffe://x"]);
    let values = identity_values(
        &config(&[IdentityHeader::Xfcc]),
        std::slice::from_ref(&peer),
        None,
    );
    let value = values.headers[0].1.to_str().unwrap().to_string();
    assert!(value.starts_with("Hash="), "{value}");
    assert!(
        value.ends_with(";Subject=\"\";URI=;DNS=\"evil.example.org;By=spiffe://x\""),
        "{value}"
    );
}
