//! The internal CA as users run it: the real `portcullis ca init/issue/
//! token/revoke/serve` binary, a real HTTPS API on a loopback port, a
//! rustls client trusting the CA's bundle, CSRs made with rcgen.
//!
//! The security properties under test: the identity comes only from the
//! credential (token or current certificate), never from the CSR; tokens
//! are single-use; bad credentials and bad CSRs issue nothing; the CA never
//! signs a CA; lifetimes are capped; revocation reaches the CRL.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{binary, free_port, metric_value, parse_http_response, spawn_logged};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, X509Certificate};

const TD: &str = "example.org";

fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

/// `portcullis ARGS` fails and its stderr says `reason`.
fn fails_saying(args: &[&str], reason: &str) {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(stderr(&out).contains(reason), "{}", stderr(&out));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A CA folder made by `ca init` in a temporary folder.
struct TestCa {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl TestCa {
    fn init() -> TestCa {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let out = run(&[
            "ca",
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--trust-domain",
            TD,
        ]);
        assert!(out.status.success(), "ca init failed: {}", stderr(&out));
        TestCa { _tmp: tmp, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn token(&self, id: &str) -> String {
        let out = run(&[
            "ca",
            "token",
            "--dir",
            self.dir.to_str().unwrap(),
            "--spiffe-id",
            id,
        ]);
        assert!(out.status.success(), "ca token failed: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A token signed with this CA's token key but with claims of our choosing.
    fn custom_token(&self, claims: &Value) -> String {
        let jwks: Value = serde_json::from_str(&self.read("jwks.json")).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_string);
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(self.read("token.key").as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn revoke(&self, serial: &str) -> Output {
        run(&[
            "ca",
            "revoke",
            "--dir",
            self.dir.to_str().unwrap(),
            "--serial",
            serial,
        ])
    }

    /// Start `ca serve` with init's ca.toml, `replace` applied to it and
    /// `extra` appended.
    ///
    /// On a `free_port` (and retried when taken meanwhile): `ca serve` does
    /// not report a port-0 address the way `portcullis run --ready-file` does.
    fn serve(&self, replace: &[(&str, &str)], extra: &str) -> Server {
        for _attempt in 0..5 {
            let port = free_port();
            let mut text = self
                .read("ca.toml")
                .replace("127.0.0.1:8500", &format!("127.0.0.1:{port}"));
            for (from, to) in replace {
                assert!(text.contains(from), "ca.toml has no {from:?}");
                text = text.replace(from, to);
            }
            text.push_str(extra);
            let config = self.path(&format!("serve-{port}.toml"));
            std::fs::write(&config, text).unwrap();
            let (child, log) = spawn_logged(
                Command::new(binary())
                    .args(["ca", "serve", "-c"])
                    .arg(&config),
            );
            let mut server = Server {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                bundle_pem: self.read("bundle.crt"),
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if let Ok((200, _)) = server.get("/healthz") {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            let logs = server.logs();
            if !logs.contains("cannot listen") {
                panic!("ca serve did not start; log:\n{logs}");
            }
        }
        panic!("ca serve could not bind a port in 5 attempts");
    }
}

/// A client certificate and its key, PEM.
struct ClientCert {
    chain_pem: String,
    key_pem: String,
}

/// A running `ca serve`; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    bundle_pem: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn certs_from_pem(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

fn key_from_pem(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .unwrap()
        .unwrap()
}

impl Server {
    fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn client_config(&self, client: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs_from_pem(&self.bundle_pem) {
            roots.add(cert).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        Arc::new(match client {
            Some(c) => builder
                .with_client_auth_cert(certs_from_pem(&c.chain_pem), key_from_pem(&c.key_pem))
                .unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    /// One HTTPS request; returns (status, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        client: Option<&ClientCert>,
    ) -> std::io::Result<(u16, String)> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let conn = rustls::ClientConnection::new(
            self.client_config(client),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes())?;
        tls.write_all(body)?;
        tls.flush()?;
        let mut response = Vec::new();
        match tls.read_to_end(&mut response) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
        Ok(parse_http_response(&String::from_utf8_lossy(&response)))
    }

    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.request("GET", path, &[], b"", None)
    }

    /// POST /v1/sign; returns (status, JSON body).
    fn sign(
        &self,
        csr: &str,
        ttl_seconds: Option<u64>,
        token: Option<&str>,
        client: Option<&ClientCert>,
    ) -> (u16, Value) {
        let mut body = json!({ "csr": csr });
        if let Some(ttl) = ttl_seconds {
            body["ttl_seconds"] = json!(ttl);
        }
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let (status, text) = self
            .request(
                "POST",
                "/v1/sign",
                &headers,
                body.to_string().as_bytes(),
                client,
            )
            .unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}; log:\n{}", self.logs()));
        (status, value)
    }

    fn metrics(&self) -> String {
        self.get("/metrics").unwrap().1
    }
}

/// A CSR whose subject and SANs ask for `asks_for` (which the CA must ignore).
fn csr(asks_for: &str) -> (String, String) {
    csr_with(asks_for, |_| {})
}

fn csr_with(asks_for: &str, tweak: impl FnOnce(&mut CertificateParams)) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "please-make-me-admin");
    params.distinguished_name = name;
    params.subject_alt_names = vec![
        SanType::URI(asks_for.try_into().unwrap()),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ];
    tweak(&mut params);
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key.serialize_pem())
}

fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

/// What an issued leaf says.
struct LeafFacts {
    uri_sans: Vec<String>,
    other_sans: usize,
    is_ca: Option<bool>,
    serial: String,
    not_before: i64,
    not_after: i64,
    client_auth: bool,
    server_auth: bool,
}

fn leaf_facts(chain_pem: &str) -> LeafFacts {
    let chain = certs_from_pem(chain_pem);
    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    let mut uri_sans = Vec::new();
    let mut other_sans = 0;
    if let Some(san) = cert.subject_alternative_name().unwrap() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(uri) => uri_sans.push(uri.to_string()),
                _ => other_sans += 1,
            }
        }
    }
    let eku = cert.extended_key_usage().unwrap().map(|e| e.value.clone());
    LeafFacts {
        uri_sans,
        other_sans,
        is_ca: cert.basic_constraints().unwrap().map(|bc| bc.value.ca),
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .trim_start_matches('0')
            .to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
        server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
    }
}

/// Verify `chain_pem` (leaf first) against `bundle_pem` as webpki does for a
/// client certificate; with CRLs, the leaf's revocation status must be known.
fn verify_chain(
    chain_pem: &str,
    bundle_pem: &str,
    crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(bundle_pem) {
        roots.add(cert).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(crls)
    // Only the leaf: the root publishes no CRL for the intermediate. Without
    // allow_unknown_revocation_status, the leaf's status must come from a
    // CRL that the intermediate really signed.
    .only_check_end_entity_revocation()
    .build()
    .unwrap();
    let chain = certs_from_pem(chain_pem);
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

/// A certificate for `who` obtained with a fresh bootstrap token.
fn enrol(ca: &TestCa, server: &Server, who: &str) -> (ClientCert, Value) {
    let (csr_pem, key_pem) = csr(who);
    let (status, body) = server.sign(&csr_pem, None, Some(&ca.token(who)), None);
    assert_eq!(status, 200, "{body}");
    (
        ClientCert {
            chain_pem: body["certificate_chain"].as_str().unwrap().to_string(),
            key_pem,
        },
        body,
    )
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_refuses_to_overwrite_and_writes_keys_0600() {
    let ca = TestCa::init();
    for key in ["root.key", "intermediate.key", "token.key"] {
        assert_eq!(mode(&ca.path(key)), 0o600, "{key}");
    }
    for file in [
        "root.crt",
        "intermediate.crt",
        "bundle.crt",
        "jwks.json",
        "revoked.txt",
        "ca.toml",
    ] {
        assert!(ca.path(file).exists(), "{file} missing");
    }
    assert_eq!(ca.read("revoked.txt"), "");
    assert_eq!(ca.read("bundle.crt"), ca.read("root.crt"));

    let before: Vec<(String, String)> = std::fs::read_dir(&ca.dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    fails_saying(
        &[
            "ca",
            "init",
            "--dir",
            ca.dir.to_str().unwrap(),
            "--trust-domain",
            "other.org",
        ],
        "already holds a CA",
    );
    for (path, contents) in &before {
        assert_eq!(
            &std::fs::read_to_string(path).unwrap(),
            contents,
            "{path} changed"
        );
    }
    assert_eq!(std::fs::read_dir(&ca.dir).unwrap().count(), before.len());

    fails_saying(
        &[
            "ca",
            "init",
            "--dir",
            ca.path("second").to_str().unwrap(),
            "--trust-domain",
            "Not_Valid/.org",
        ],
        "invalid trust domain",
    );
    assert!(!ca.path("second").exists());
}

#[test]
fn offline_issue_chain_verifies_with_only_the_spiffe_uri() {
    let ca = TestCa::init();
    let prefix = ca.path("out/web");
    let out = run(&[
        "ca",
        "issue",
        "--dir",
        ca.dir.to_str().unwrap(),
        "--spiffe-id",
        &id("ns/web/sa/frontend"),
        "--ttl",
        "2h",
        "--out",
        prefix.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let chain = std::fs::read_to_string(ca.path("out/web.crt")).unwrap();
    let bundle = std::fs::read_to_string(ca.path("out/web.bundle.crt")).unwrap();
    assert_eq!(bundle, ca.read("bundle.crt"));
    assert_eq!(mode(&ca.path("out/web.key")), 0o600);
    assert_eq!(certs_from_pem(&chain).len(), 2, "leaf + intermediate");
    verify_chain(&chain, &bundle, vec![]).unwrap();
    let facts = leaf_facts(&chain);
    assert_eq!(facts.uri_sans, vec![id("ns/web/sa/frontend")]);
    assert_eq!(facts.other_sans, 0);
    assert_eq!(facts.is_ca, Some(false), "CA:FALSE written explicitly");
    assert!(facts.client_auth && facts.server_auth);
    let lifetime = facts.not_after - facts.not_before;
    assert!((7200..=7200 + 61).contains(&lifetime), "{lifetime}");
    // The key in PREFIX.key belongs to the certificate.
    let key = key_from_pem(&std::fs::read_to_string(ca.path("out/web.key")).unwrap());
    rustls::sign::CertifiedKey::from_der(
        certs_from_pem(&chain),
        key,
        &rustls::crypto::ring::default_provider(),
    )
    .unwrap();
    // Logged as an offline issuance.
    assert!(ca
        .read("issuance.log")
        .contains("\"credential\":\"offline\""));

    fails_saying(
        &[
            "ca",
            "issue",
            "--dir",
            ca.dir.to_str().unwrap(),
            "--spiffe-id",
            "spiffe://other.org/x",
            "--out",
            ca.path("out/other").to_str().unwrap(),
        ],
        "trust domain",
    );
}

#[test]
fn token_for_a_yields_a_even_when_the_csr_asks_for_b() {
    let ca = TestCa::init();
    // Serving needs only the intermediate: the root key can be offline.
    std::fs::remove_file(ca.path("root.key")).unwrap();
    let server = ca.serve(&[], "");
    let (csr_pem, _) = csr(&id("b"));
    let (status, body) = server.sign(&csr_pem, None, Some(&ca.token(&id("a"))), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffe_id"], id("a"));
    let chain = body["certificate_chain"].as_str().unwrap();
    let facts = leaf_facts(chain);
    assert_eq!(facts.uri_sans, vec![id("a")], "only the token's identity");
    assert_eq!(facts.other_sans, 0, "no DNS SAN copied from the CSR");
    assert_eq!(facts.serial, body["serial"].as_str().unwrap());
    assert_eq!(facts.not_after, body["not_after"].as_i64().unwrap());
    verify_chain(chain, body["trust_bundle"].as_str().unwrap(), vec![]).unwrap();
    let chain_der = certs_from_pem(chain);
    let (_, leaf) = X509Certificate::from_der(&chain_der[0]).unwrap();
    assert!(
        !leaf.subject().to_string().contains("admin"),
        "subject from the CSR must not be copied: {}",
        leaf.subject()
    );
    let log = ca.read("issuance.log");
    let line: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(line["spiffe_id"], id("a"));
    assert_eq!(line["credential"], "token:bootstrap");
    assert_eq!(line["serial"], body["serial"]);
    assert!(line["time"].is_string() && line["not_after"].is_string());
}

#[test]
fn the_same_token_twice_is_replayed() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let token = ca.token(&id("a"));
    let (status, _) = server.sign(&csr(&id("a")).0, None, Some(&token), None);
    assert_eq!(status, 200);
    let log_before = ca.read("issuance.log");
    let (status, body) = server.sign(&csr(&id("a")).0, None, Some(&token), None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "token_replayed");
    assert_eq!(ca.read("issuance.log"), log_before);
}

#[test]
fn bad_tokens_issue_nothing() {
    let ca = TestCa::init();
    let other = TestCa::init();
    let server = ca.serve(&[], "");
    let log_before = ca.read("issuance.log");
    let claims = |aud: &str, exp: u64, jti: &str| json!({"iss": "portcullis-ca", "aud": aud, "sub": id("a"), "iat": now() - 1000, "exp": exp, "jti": jti});
    let cases = [
        (
            "expired",
            ca.custom_token(&claims("portcullis-ca", now() - 300, "j1")),
            "token_expired",
        ),
        ("garbage", "not.a.jwt".to_string(), "bad_token"),
        ("garbage2", "hello".to_string(), "bad_token"),
        ("another CA's key", other.token(&id("a")), "bad_token"),
        (
            "wrong audience",
            ca.custom_token(&claims("someone-else", now() + 300, "j2")),
            "bad_token",
        ),
        (
            "no jti",
            ca.custom_token(&json!({"iss": "portcullis-ca", "aud": "portcullis-ca", "sub": id("a"), "exp": now() + 300})),
            "bad_token",
        ),
        (
            "other trust domain",
            ca.custom_token(&json!({"iss": "portcullis-ca", "aud": "portcullis-ca", "sub": "spiffe://evil.org/a", "exp": now() + 300, "jti": "j3"})),
            "forbidden",
        ),
    ];
    for (what, token, code) in &cases {
        let (status, body) = server.sign(&csr(&id("a")).0, None, Some(token), None);
        assert!((400..500).contains(&status), "{what}: {status} {body}");
        assert_eq!(body["error"], *code, "{what}: {body}");
        assert!(!body["reason"].as_str().unwrap().is_empty());
    }
    let (status, body) = server.sign(&csr(&id("a")).0, None, None, None);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert_eq!(ca.read("issuance.log"), log_before, "nothing was issued");
    // Refusals are logged, without the token.
    let logs = server.logs();
    assert!(logs.contains("token_expired"), "{logs}");
    assert!(!logs.contains(&cases[0].1), "the token must not be logged");
}

#[test]
fn no_credential_is_unauthenticated() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let (status, body) = server.sign(&csr(&id("a")).0, None, None, None);
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthenticated");
}

#[test]
fn a_csr_with_a_bad_signature_is_bad_csr() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let (pem, _) = csr(&id("a"));
    let mut der = rustls_pemfile::csr(&mut pem.as_bytes())
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec();
    // The last byte is inside the signature value.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    let token = ca.token(&id("a"));
    let (status, body) = server.sign(&tampered, None, Some(&token), None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_csr");
    assert!(
        body["reason"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    let (status, body) = server.sign("not a csr", None, Some(&token), None);
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_csr")));
    // A bad CSR does not use up the token.
    let (status, body) = server.sign(&pem, None, Some(&token), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .request("POST", "/v1/sign", &[], b"{\"csr\": 1}", None)
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request"), "{body}");
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn renewal_over_mtls_gives_the_same_identity_and_a_new_serial() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let (cert_a, first) = enrol(&ca, &server, &id("a"));
    let (csr_pem, _) = csr(&id("b"));
    let (status, body) = server.sign(&csr_pem, None, None, Some(&cert_a));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffe_id"], id("a"));
    assert_ne!(body["serial"], first["serial"]);
    let facts = leaf_facts(body["certificate_chain"].as_str().unwrap());
    assert_eq!(facts.uri_sans, vec![id("a")]);
    let line: Value =
        serde_json::from_str(ca.read("issuance.log").lines().last().unwrap()).unwrap();
    assert_eq!(line["credential"], "renewal");
    // A token for the same identity alongside the cert is fine.
    let (status, body) = server.sign(&csr_pem, None, Some(&ca.token(&id("a"))), Some(&cert_a));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffe_id"], id("a"));
}

#[test]
fn renewal_cannot_get_another_identity() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let (cert_a, _) = enrol(&ca, &server, &id("a"));
    let log_before = ca.read("issuance.log");
    let (status, body) = server.sign(
        &csr(&id("b")).0,
        None,
        Some(&ca.token(&id("b"))),
        Some(&cert_a),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "identity_mismatch");
    assert_eq!(ca.read("issuance.log"), log_before);
}

#[test]
fn requested_lifetime_is_capped_at_max_ttl() {
    let ca = TestCa::init();
    let server = ca.serve(
        &[
            ("max_ttl = \"24h\"", "max_ttl = \"2h\""),
            ("default_ttl = \"1h\"", "default_ttl = \"30m\""),
        ],
        "",
    );
    let (status, body) = server.sign(
        &csr(&id("a")).0,
        Some(10 * 3600),
        Some(&ca.token(&id("a"))),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let facts = leaf_facts(body["certificate_chain"].as_str().unwrap());
    let lifetime = facts.not_after - facts.not_before;
    assert!(
        (7200..=7200 + 61).contains(&lifetime),
        "lifetime {lifetime}s"
    );
    assert!(facts.not_after <= now() as i64 + 7200 + 5);
    // No ttl: the default.
    let (status, body) = server.sign(&csr(&id("a")).0, None, Some(&ca.token(&id("a"))), None);
    assert_eq!(status, 200, "{body}");
    let facts = leaf_facts(body["certificate_chain"].as_str().unwrap());
    assert!((1800..=1800 + 61).contains(&(facts.not_after - facts.not_before)));
    // A short request is honoured.
    let (status, body) = server.sign(&csr(&id("a")).0, Some(120), Some(&ca.token(&id("a"))), None);
    assert_eq!(status, 200, "{body}");
    let facts = leaf_facts(body["certificate_chain"].as_str().unwrap());
    assert!((120..=181).contains(&(facts.not_after - facts.not_before)));
}

#[test]
fn the_ca_never_signs_a_ca_certificate() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let (pem, _) = csr_with(&id("a"), |params| {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    });
    let (status, body) = server.sign(&pem, None, Some(&ca.token(&id("a"))), None);
    assert_eq!(status, 200, "{body}");
    let chain = certs_from_pem(body["certificate_chain"].as_str().unwrap());
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("basic constraints present");
    assert!(!bc.value.ca, "CA:TRUE issued");
    let ku = leaf.key_usage().unwrap().expect("key usage present");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
}

#[test]
fn a_revoked_serial_is_in_the_crl_and_cannot_renew() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let (cert_a, body) = enrol(&ca, &server, &id("a"));
    let serial = body["serial"].as_str().unwrap().to_string();

    let (status, crl_pem) = server.get("/v1/crl").unwrap();
    assert_eq!(status, 200);
    let crls: Vec<_> = rustls_pemfile::crls(&mut crl_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    assert_eq!(crls.len(), 1);
    verify_chain(&cert_a.chain_pem, &server.bundle_pem, crls).unwrap();

    // Malformed serials are refused; nothing is written.
    let out = ca.revoke("12:zz");
    assert!(!out.status.success());
    assert_eq!(ca.read("revoked.txt"), "");
    // Upper case with colons is normalised.
    let colons: String = serial
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let out = ca.revoke(&colons);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ca.read("revoked.txt").starts_with(&format!("{serial} ")));

    let (status, crl_pem) = server.get("/v1/crl").unwrap();
    assert_eq!(status, 200);
    let crls: Vec<_> = rustls_pemfile::crls(&mut crl_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let (_, crl) = x509_parser::parse_x509_crl(&crls[0]).unwrap();
    let listed: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| {
            r.raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .trim_start_matches('0')
                .to_string()
        })
        .collect();
    assert_eq!(listed, vec![serial.clone()]);
    assert!(crl.next_update().is_some());
    // webpki, as the proxy uses it, now refuses the certificate.
    let err = verify_chain(&cert_a.chain_pem, &server.bundle_pem, crls).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        ),
        "{err:?}"
    );
    // And the CA refuses to renew it.
    let (status, body) = server.sign(&csr(&id("a")).0, None, None, Some(&cert_a));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
}

#[test]
fn a_kubernetes_service_account_token_maps_to_ns_and_sa() {
    let ca = TestCa::init();
    // The cluster's service-account signing key and its JWKS.
    let cluster_key = KeyPair::generate().unwrap();
    let raw = cluster_key.public_key_raw();
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
        "kid": "cluster-1", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    let jwks_path = ca.path("cluster-jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let extra = format!(
        "\n[[provisioner]]\nname = \"kubernetes\"\nissuer = \"https://kubernetes.default.svc.cluster.local\"\n\
         audience = \"portcullis-ca\"\njwks = {:?}\n\
         identity = \"spiffe://{{trust_domain}}/ns/{{namespace}}/sa/{{serviceaccount}}\"\n",
        jwks_path.display().to_string()
    );
    let server = ca.serve(&[], &extra);
    let claims = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": ["portcullis-ca"],
        "sub": "system:serviceaccount:payments:api",
        "iat": now(), "nbf": now(), "exp": now() + 3600,
        "jti": "6b4f0c2e-1d55-4ad5-9f0a-0c1c2f6b0e2a",
        "kubernetes.io": {
            "namespace": "payments",
            "pod": {"name": "api-7d9f", "uid": "p-uid"},
            "serviceaccount": {"name": "api", "uid": "sa-uid"}
        }
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("cluster-1".into());
    let key =
        jsonwebtoken::EncodingKey::from_ec_pem(cluster_key.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let (status, body) = server.sign(
        &csr(&id("ns/kube-system/sa/admin")).0,
        None,
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffe_id"], id("ns/payments/sa/api"));
    let facts = leaf_facts(body["certificate_chain"].as_str().unwrap());
    assert_eq!(facts.uri_sans, vec![id("ns/payments/sa/api")]);
    let line: Value =
        serde_json::from_str(ca.read("issuance.log").lines().last().unwrap()).unwrap();
    assert_eq!(line["credential"], "token:kubernetes");
    // The CA's own bootstrap tokens still work next to it.
    let (status, _) = server.sign(&csr(&id("x")).0, None, Some(&ca.token(&id("x"))), None);
    assert_eq!(status, 200);
}

#[test]
fn metrics_count_successes_and_failures() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let m = server.metrics();
    assert_eq!(
        metric_value(&m, "portcullis_ca_issued_total", &["result=\"success\""]),
        0.0
    );
    enrol(&ca, &server, &id("a"));
    enrol(&ca, &server, &id("b"));
    server.sign(&csr(&id("a")).0, None, None, None);
    server.sign(&csr(&id("a")).0, None, Some("garbage"), None);
    server.sign("nope", None, Some(&ca.token(&id("a"))), None);
    let m = server.metrics();
    let count = |result: &str| {
        metric_value(
            &m,
            "portcullis_ca_issued_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    assert_eq!(count("success"), 2.0, "{m}");
    assert_eq!(count("unauthenticated"), 1.0, "{m}");
    assert_eq!(count("bad_token"), 1.0, "{m}");
    assert_eq!(count("bad_csr"), 1.0, "{m}");
    assert_eq!(count("token_replayed"), 0.0, "{m}");
}

#[test]
fn bundle_and_health_endpoints() {
    let ca = TestCa::init();
    let server = ca.serve(&[], "");
    let (status, bundle) = server.get("/v1/bundle").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        certs_from_pem(&bundle),
        certs_from_pem(&ca.read("bundle.crt"))
    );
    assert_eq!(server.get("/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(server.get("/nope").unwrap().0, 404);
    assert_eq!(
        server.request("GET", "/v1/sign", &[], b"", None).unwrap().0,
        405
    );
}

#[test]
fn serve_refuses_an_invalid_config_and_a_wrong_trust_domain() {
    let ca = TestCa::init();
    let config = ca.path("bad.toml");
    std::fs::write(
        &config,
        ca.read("ca.toml")
            .replace("max_ttl = \"24h\"", "max_tll = \"24h\""),
    )
    .unwrap();
    fails_saying(&["ca", "serve", "-c", config.to_str().unwrap()], "max_tll");
    std::fs::write(
        &config,
        ca.read("ca.toml").replace(
            "trust_domain = \"example.org\"",
            "trust_domain = \"other.org\"",
        ),
    )
    .unwrap();
    fails_saying(
        &["ca", "serve", "-c", config.to_str().unwrap()],
        "trust_domain",
    );
}
