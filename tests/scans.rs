//! TLS conformance scans of the inbound listener by third-party scanners:
//! `sslyze` (PyPI) with a client certificate, twice (default TLS 1.3-only
//! config, then `tls_min_version = "1.2"`), and `testssl.sh` (Debian
//! package, command `testssl`) without one, to see what an unauthenticated
//! scanner learns. The findings are summarised in docs/reliability.md.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::*;

const FRONTEND_ID: &str = "spiffe://example.org/ns/web/sa/frontend";
const SERVER_ID: &str = "spiffe://example.org/ns/api/sa/server";
const SERVER_DNS: &str = "proxy.example.org";
const SERVER_CN: &str = "api-server";

/// Upper bound for one scanner run.
const SCAN_LIMIT: Duration = Duration::from_secs(240);

/// A proxy with one inbound listener and the files a scanner needs.
struct Target {
    proxy: Proxy,
    port: u16,
    pki: Pki,
    /// The server leaf's PEM (first certificate of the chain it presents).
    server_chain_pem: String,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// Connections the backend accepted.
    backend_connections: Arc<AtomicUsize>,
}

/// Issue the server's chain (intermediate CA and leaf, both with the
/// Authority Key Identifier extension, as `portcullis ca` issues them) under
/// the test root, and write `server.crt` / `server.key`. Returns the chain.
///
/// The shared harness's certificates carry no AKI, which strict RFC 5280
/// validators such as the one sslyze uses (pyca/cryptography) refuse.
fn write_server_chain(pki: &Pki) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    use time::{Duration as TimeDuration, OffsetDateTime};

    let now = OffsetDateTime::now_utc();
    let name = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let root = Issuer::from_params(&pki.root.params, &pki.root.key);

    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name("Scan Intermediate CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.use_authority_key_identifier_extension = true;
    ca.not_before = now - TimeDuration::days(1);
    ca.not_after = now + TimeDuration::days(30);
    let ca_cert = ca.signed_by(&ca_key, &root).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = name(SERVER_CN);
    leaf.subject_alt_names = vec![
        SanType::URI(SERVER_ID.try_into().unwrap()),
        SanType::DnsName(SERVER_DNS.try_into().unwrap()),
    ];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - TimeDuration::minutes(5);
    leaf.not_after = now + TimeDuration::hours(1);
    let leaf_cert = leaf
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();

    let chain = format!("{}{}", leaf_cert.pem(), ca_cert.pem());
    std::fs::write(pki.path("server.crt"), &chain).unwrap();
    write_private(&pki.path("server.key"), &key.serialize_pem());
    chain
}

fn start(listener_extra: &str) -> Target {
    let pki = Pki::new();
    let server_chain_pem = write_server_chain(&pki);
    // The scanner's certificate is issued straight from the root, so its
    // chain file holds one certificate: sslyze's legacy OpenSSL (used for
    // the SSL 2.0 probe) cannot load a client chain file with more.
    let scanner = pki.root.issue(&Leaf {
        cn: Some("frontend".into()),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    let (client_cert, client_key) = scanner.write(pki.dir.path(), "client");
    let (backend, backend_connections) = counting_backend(|mut stream| {
        let _ = stream.read_to_end(&mut Vec::new());
    });
    let body = format!(
        "handshake_timeout = \"5s\"\n{listener_extra}\n\
         [[inbound.allow]]\nspiffe_id = \"{FRONTEND_ID}\"\n"
    );
    let config = format!(
        "{}{}",
        pki.identity_toml("server"),
        inbound_table("api", backend, &body)
    );
    let proxy = Proxy::start(pki.dir.path(), &config);
    let port = proxy.inbound("api").port();
    Target {
        proxy,
        port,
        server_chain_pem,
        pki,
        client_cert,
        client_key,
        backend_connections,
    }
}

/// The base64 body of each certificate in a PEM text, whitespace removed:
/// equal bodies are equal certificates.
fn pem_bodies(pem: &str) -> Vec<String> {
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|block| block.split("-----END CERTIFICATE-----").next())
        .map(|body| body.chars().filter(|c| !c.is_whitespace()).collect())
        .collect()
}

// ------------------------------------------------------------------- sslyze

/// Run sslyze with the client certificate against the target; returns the
/// scan result object of the one server scanned.
fn sslyze(target: &Target, commands: &[&str]) -> Value {
    let out = target.pki.path("sslyze.json");
    let _ = std::fs::remove_file(&out);
    let mut command = Command::new("sslyze");
    command
        .arg(format!("--json_out={}", out.display()))
        .arg("--quiet")
        .arg("--cert")
        .arg(&target.client_cert)
        .arg("--key")
        .arg(&target.client_key)
        .arg("--certinfo_ca_file")
        .arg(target.pki.bundle())
        .args(["--mozilla_config", "disable"])
        .args(commands)
        // Connect to 127.0.0.1 but use the certificate's name for SNI and
        // hostname validation.
        .arg(format!("{SERVER_DNS}:{}{{127.0.0.1}}", target.port));
    let (ok, stdout, stderr) = run_bounded(command, SCAN_LIMIT);
    assert!(ok, "sslyze failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let text = std::fs::read_to_string(&out).expect("sslyze wrote its JSON");
    let json: Value = serde_json::from_str(&text).expect("sslyze JSON");
    let server = json["server_scan_results"][0].clone();
    assert_eq!(
        server["connectivity_status"], "COMPLETED",
        "sslyze could not connect: {}",
        server["connectivity_error_trace"]
    );
    assert_eq!(server["scan_status"], "COMPLETED", "{server}");
    server["scan_result"].clone()
}

/// The `result` of one sslyze scan command, which must have completed.
fn completed<'a>(scan: &'a Value, command: &str) -> &'a Value {
    let entry = &scan[command];
    assert_eq!(
        entry["status"], "COMPLETED",
        "sslyze {command} did not complete: {} {}",
        entry["error_reason"], entry["error_trace"]
    );
    &entry["result"]
}

/// Names of the cipher suites sslyze saw accepted for one protocol version.
fn accepted_suites(scan: &Value, command: &str) -> Vec<String> {
    completed(scan, command)["accepted_cipher_suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cipher_suite"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn assert_version_rejected(scan: &Value, command: &str) {
    let result = completed(scan, command);
    assert_eq!(
        result["is_tls_version_supported"], false,
        "{command}: version accepted: {result}"
    );
    assert!(
        accepted_suites(scan, command).is_empty(),
        "{command}: {result}"
    );
}

const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

fn assert_tls13_strong(scan: &Value) {
    let suites = accepted_suites(scan, "tls_1_3_cipher_suites");
    assert!(!suites.is_empty(), "TLS 1.3 not accepted");
    for suite in &suites {
        assert!(
            TLS13_SUITES.contains(&suite.as_str()),
            "unexpected TLS 1.3 suite {suite}"
        );
    }
}

/// No compression, no renegotiation of any kind, and the RFC 5746
/// extension signalled so no client can be talked into insecure
/// renegotiation.
fn assert_no_compression_no_renegotiation(scan: &Value) {
    let compression = completed(scan, "tls_compression");
    assert_eq!(compression["supports_compression"], false, "{compression}");
    let reneg = completed(scan, "session_renegotiation");
    assert_eq!(
        reneg["client_renegotiations_success_count"], 0,
        "client-initiated renegotiation accepted: {reneg}"
    );
    assert_eq!(
        reneg["is_vulnerable_to_client_renegotiation_dos"], false,
        "{reneg}"
    );
    assert_eq!(
        reneg["supports_secure_renegotiation"], true,
        "insecure (legacy) renegotiation: {reneg}"
    );
}

fn assert_certinfo_matches_our_ca(scan: &Value, target: &Target) {
    let info = completed(scan, "certificate_info");
    assert_eq!(info["hostname_used_for_server_name_indication"], SERVER_DNS);
    let deployment = &info["certificate_deployments"][0];
    let received = deployment["received_certificate_chain"].as_array().unwrap();
    let received_pem: String = received
        .iter()
        .map(|c| c["as_pem"].as_str().unwrap())
        .collect();
    // Exactly the chain the proxy was given: leaf, then intermediate.
    assert_eq!(
        pem_bodies(&received_pem),
        pem_bodies(&target.server_chain_pem),
        "presented chain differs from the issued one"
    );
    assert_eq!(deployment["received_chain_has_valid_order"], true);
    let leaf = &received[0];
    assert_eq!(leaf["subject"]["rfc4514_string"], format!("CN={SERVER_CN}"));
    assert_eq!(
        leaf["issuer"]["rfc4514_string"], "CN=Scan Intermediate CA",
        "{leaf}"
    );
    assert_eq!(
        leaf["subject_alternative_name"]["dns_names"],
        serde_json::json!([SERVER_DNS])
    );
    let validations = deployment["path_validation_results"].as_array().unwrap();
    let ours = validations
        .iter()
        .find(|v| v["trust_store"]["name"] == "Supplied CA file")
        .expect("a validation against the supplied CA file");
    assert_eq!(
        ours["was_validation_successful"], true,
        "chain does not verify against our root: {}",
        ours["validation_error"]
    );
    // A private CA: no public trust store validates it.
    for other in validations
        .iter()
        .filter(|v| v["trust_store"]["name"] != "Supplied CA file")
    {
        assert_eq!(
            other["was_validation_successful"], false,
            "{}",
            other["trust_store"]["name"]
        );
    }
    // sslyze lists no URI SANs; the SPIFFE ID is covered by the whole
    // presented chain being byte-for-byte the one issued for SERVER_ID.
}

/// The sslyze scans both configurations get: every protocol version,
/// compression, renegotiation, the certificate and the fallback SCSV.
const BASE_SCAN: &[&str] = &[
    "--sslv2",
    "--sslv3",
    "--tlsv1",
    "--tlsv1_1",
    "--tlsv1_2",
    "--tlsv1_3",
    "--compression",
    "--reneg",
    "--certinfo",
    "--fallback",
];

#[test]
fn sslyze_default_config_accepts_only_tls13_with_strong_settings() {
    if !require_tool("sslyze") {
        return;
    }
    let target = start("");
    let scan = sslyze(
        &target,
        &[
            BASE_SCAN,
            &[
                "--heartbleed",
                "--openssl_ccs",
                "--robot",
                "--elliptic_curves",
                "--resum",
            ],
        ]
        .concat(),
    );
    for command in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
        // TLS 1.3 only by default.
        "tls_1_2_cipher_suites",
    ] {
        assert_version_rejected(&scan, command);
    }
    assert_tls13_strong(&scan);
    assert_no_compression_no_renegotiation(&scan);
    assert_certinfo_matches_our_ca(&scan, &target);

    let heartbleed = completed(&scan, "heartbleed");
    assert_eq!(heartbleed["is_vulnerable_to_heartbleed"], false);
    let ccs = completed(&scan, "openssl_ccs_injection");
    assert_eq!(ccs["is_vulnerable_to_ccs_injection"], false);
    let robot = completed(&scan, "robot")["robot_result"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(robot.starts_with("NOT_VULNERABLE"), "{robot}");
    let fallback = completed(&scan, "tls_fallback_scsv");
    assert_eq!(fallback["supports_fallback_scsv"], true);
    let curves = completed(&scan, "elliptic_curves");
    let names: Vec<&str> = curves["supported_curves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in &names {
        assert!(
            ["X25519", "secp256r1", "secp384r1"].contains(name),
            "unexpected curve {name}"
        );
    }
    let resumption = completed(&scan, "session_resumption");
    eprintln!(
        "sslyze (TLS 1.3 only): suites {:?}, curves {names:?}, robot {robot}, resumption {resumption}",
        accepted_suites(&scan, "tls_1_3_cipher_suites")
    );
    // The allowed scanner was let through to the backend.
    assert!(target.backend_connections.load(Ordering::SeqCst) > 0);
}

#[test]
fn sslyze_tls12_config_accepts_only_ecdhe_aead_suites() {
    if !require_tool("sslyze") {
        return;
    }
    let target = start("tls_min_version = \"1.2\"");
    let scan = sslyze(&target, &[BASE_SCAN, &["--ems", "--resum"]].concat());
    for command in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert_version_rejected(&scan, command);
    }
    let tls12 = accepted_suites(&scan, "tls_1_2_cipher_suites");
    assert!(
        !tls12.is_empty(),
        "TLS 1.2 not accepted with tls_min_version = 1.2"
    );
    for suite in &tls12 {
        let forward_secret = suite.starts_with("TLS_ECDHE_");
        let aead = suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305");
        let weak = ["CBC", "RC4", "3DES", "DES", "NULL", "EXPORT", "anon", "MD5"]
            .iter()
            .any(|w| suite.contains(w));
        assert!(
            forward_secret && aead && !weak,
            "weak TLS 1.2 suite {suite}"
        );
    }
    for suite in completed(&scan, "tls_1_2_cipher_suites")["accepted_cipher_suites"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            suite["ephemeral_key"]["type_name"], "ECDH",
            "{}",
            suite["cipher_suite"]["name"]
        );
    }
    assert_tls13_strong(&scan);
    assert_no_compression_no_renegotiation(&scan);
    assert_certinfo_matches_our_ca(&scan, &target);
    let ems = completed(&scan, "tls_extended_master_secret");
    assert_eq!(ems["supports_ems_extension"], true, "{ems}");
    let fallback = completed(&scan, "tls_fallback_scsv");
    assert_eq!(fallback["supports_fallback_scsv"], true);
    // No session resumption (no session cache, no tickets).
    let resumption = completed(&scan, "session_resumption");
    assert_eq!(
        resumption["session_id_successful_resumptions_count"], 0,
        "{resumption}"
    );
    assert_eq!(
        resumption["tls_ticket_successful_resumptions_count"], 0,
        "{resumption}"
    );
    eprintln!("sslyze (TLS 1.2 allowed): TLS 1.2 suites {tls12:?}; resumption {resumption}");
}

// ------------------------------------------------------------------ testssl

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Run testssl.sh (no client certificate) and return its JSON findings as
/// id → finding.
fn testssl(tool: &str, target: &Target, dir: &Path) -> Vec<(String, String, String)> {
    let json = dir.join("testssl.json");
    let _ = std::fs::remove_file(&json);
    let mut command = Command::new(tool);
    command
        .args(["--quiet", "--color", "0", "--warnings", "off"])
        .args(["--nodns", "none"])
        .args(["--connect-timeout", "10", "--openssl-timeout", "10"])
        .arg("--jsonfile")
        .arg(&json)
        .args(["--protocols", "--server-defaults"])
        .arg(format!("127.0.0.1:{}", target.port));
    let (_, stdout, stderr) = run_bounded(command, SCAN_LIMIT);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!("testssl wrote no JSON ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    let findings: Value = serde_json::from_str(&text).expect("testssl JSON");
    findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap_or_default().to_string(),
                f["severity"].as_str().unwrap_or_default().to_string(),
                f["finding"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn testssl_without_client_cert_learns_only_what_tls_reveals() {
    // Debian's package installs the script as `testssl`; upstream calls it
    // `testssl.sh`.
    let tool = if on_path("testssl.sh") {
        "testssl.sh"
    } else {
        "testssl"
    };
    if !require_tool(tool) {
        return;
    }
    let target = start("");
    let findings = testssl(tool, &target, target.pki.dir.path());
    let finding = |id: &str| -> String {
        findings
            .iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, _, f)| f.clone())
            .unwrap_or_else(|| panic!("testssl reported no {id}: {findings:#?}"))
    };
    eprintln!("testssl findings (no client certificate):");
    for (id, severity, text) in &findings {
        if id != "cert" {
            eprintln!("  {id} [{severity}]: {text}");
        }
    }

    // It sees the protocol support: TLS 1.3 and nothing older.
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"] {
        assert_eq!(finding(id), "not offered", "{id}");
    }
    assert!(
        finding("TLS1_3").starts_with("offered"),
        "{}",
        finding("TLS1_3")
    );
    assert_eq!(finding("ALPN"), "not offered");
    // No session resumption to probe.
    assert_eq!(finding("sessionresumption_ticket"), "not supported");

    // The server certificate is what TLS reveals to anyone who completes the
    // key exchange; nothing past it.
    let san = finding("cert_subjectAltName");
    assert!(san.contains(SERVER_ID) && san.contains(SERVER_DNS), "{san}");

    // The backend never received a connection, let alone a byte.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        target.backend_connections.load(Ordering::SeqCst),
        0,
        "an unauthenticated scanner reached the backend"
    );
    // Every handshake failed; the ones that got as far as the certificate
    // request were counted as no_client_cert, and no peer was authorized.
    let metrics = target.proxy.metrics();
    let handshakes = |result: &str| {
        metric_value(
            &metrics,
            "portcullis_tls_handshakes_total",
            &["listener=\"api\"", &format!("result=\"{result}\"")],
        )
    };
    assert_eq!(handshakes("success"), 0.0, "{metrics}");
    assert!(handshakes("no_client_cert") >= 1.0, "{metrics}");
    assert_eq!(
        metric_value(
            &metrics,
            "portcullis_authz_decisions_total",
            &["listener=\"api\"", "decision=\"allow\""]
        ),
        0.0,
        "{metrics}"
    );
    let summary: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_tls_handshakes_total{"))
        .map(str::to_string)
        .collect();
    eprintln!(
        "proxy handshake counters after testssl:\n{}",
        summary.join("\n")
    );
}
