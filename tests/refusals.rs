//! A refused client must be able to read why.
//!
//! A TLS 1.3 client finishes its side of the handshake before the server
//! has judged its certificate, and often writes its request at once. These
//! tests drive exactly that client (Python's `ssl`, which writes twice and
//! then reads, and `openssl s_client` with a request piped in) through
//! every kind of refusal, 20 times each, and check that every attempt reads
//! the specific alert and that the proxy never answered with a TCP reset
//! (the kernel's `TcpExtTCPAbortOnData` counter, read in a network
//! namespace of the test's own). Refusals that no OpenSSL-based client can
//! provoke (a bad CertificateVerify, junk in the certificate list) are
//! driven by a rustls client that presents a crafted certificate list.
//!
//! Then the lingering close's bounds: clients that never read and never
//! close are cut at `lingering_time`, 2,000 of them do not starve a
//! legitimate client, and a full listener sheds them for a new client.
//! And the verified-chain cache: 10,000 handshakes presenting a copy of a
//! peer's certificate with distinct junk beside it leave the cache as it was.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::netns::{in_own_network_namespace, tcp_ext_counter};
use common::*;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

const ATTEMPTS: usize = 20;
const FRONTEND: &str =
    "[[inbound.allow]]\nspiffe_id = \"spiffe://example.org/ns/web/sa/frontend\"\n";
const REVOKED_SERIAL: u64 = 0x5eed;

/// A proxy with one inbound listener that admits `ns/web/sa/frontend`, a CRL
/// revoking [`REVOKED_SERIAL`], and client files for every refusal kind.
struct Fixture {
    pki: Pki,
    proxy: Proxy,
    addr: SocketAddr,
}

/// Files a client presents: its chain (leaf first), the leaf alone, the
/// intermediates alone, and the key.
struct ClientFiles {
    chain: PathBuf,
    leaf: PathBuf,
    intermediates: PathBuf,
    key: PathBuf,
    issued: Issued,
}

impl Fixture {
    fn new(listener_extra: &str) -> Fixture {
        let pki = Pki::new();
        let crl = pki.path("intermediate.crl");
        std::fs::write(&crl, pki.intermediate.crl(&[REVOKED_SERIAL])).unwrap();
        let config = inbound_config(
            &pki,
            echo_backend(),
            &format!("crls = [{crl:?}]\n"),
            &format!("{listener_extra}\n{FRONTEND}"),
        );
        let proxy = Proxy::start(pki.dir.path(), &config);
        let addr = proxy.inbound("api");
        Fixture { pki, proxy, addr }
    }

    /// Issue `spec` from `ca` and write `name.chain.pem`, `name.leaf.pem`, `name.key`.
    fn client(&self, name: &str, ca: &Ca, spec: &Leaf) -> ClientFiles {
        let issued = ca.issue(spec);
        let chain = self.pki.path(&format!("{name}.chain.pem"));
        let leaf = self.pki.path(&format!("{name}.leaf.pem"));
        let intermediates = self.pki.path(&format!("{name}.intermediates.pem"));
        let key = self.pki.path(&format!("{name}.key"));
        std::fs::write(&chain, &issued.chain_pem).unwrap();
        std::fs::write(&intermediates, &ca.chain_pem).unwrap();
        let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", issued.cert_der.to_vec()));
        std::fs::write(&leaf, leaf_pem).unwrap();
        write_private(&key, &issued.key_pem);
        ClientFiles {
            chain,
            leaf,
            intermediates,
            key,
            issued,
        }
    }

    fn metric(&self, metric: &str, labels: &[&str]) -> f64 {
        metric_value(&self.proxy.metrics(), metric, labels)
    }
}

/// Python's `ssl`: `attempts` connections that each complete the client's
/// side of the handshake, write twice, then read. One line per attempt.
const PYTHON_WRITER: &str = r#"
import socket, ssl, sys
ca, crt, key, port, attempts = sys.argv[1:6]
for _ in range(int(attempts)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca)
    if crt != "-":
        ctx.load_cert_chain(certfile=crt, keyfile=key)
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="proxy.example.org") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: proxy.example.org\r\n\r\n")
                tls.sendall(b"and a second write before reading\n")
                data = tls.recv(4096)
                print("DATA %r" % data)
    except ssl.SSLError as e:
        print("SSLERROR %s" % e)
    except OSError as e:
        print("OSERROR %s: %s" % (type(e).__name__, e))
    sys.stdout.flush()
"#;

fn python_writes_then_reads(fx: &Fixture, client: Option<&ClientFiles>) -> Vec<String> {
    let (crt, key) = match client {
        Some(c) => (c.chain.clone(), c.key.clone()),
        None => (PathBuf::from("-"), PathBuf::from("-")),
    };
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PYTHON_WRITER)
        .arg(fx.pki.bundle())
        .arg(crt)
        .arg(key)
        .arg(fx.addr.port().to_string())
        .arg(ATTEMPTS.to_string());
    let done = run_with_input(&mut cmd, b"", Duration::from_secs(120));
    assert!(
        !done.timed_out && done.status.success(),
        "python client failed: {}\n{}",
        done.stdout,
        done.stderr
    );
    done.stdout.lines().map(str::to_string).collect()
}

/// `openssl s_client` with an HTTP request piped in, once; its output.
fn s_client_with_request(fx: &Fixture, client: Option<&ClientFiles>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(fx.addr.to_string())
        .args(["-servername", "proxy.example.org"])
        .arg("-CAfile")
        .arg(fx.pki.bundle())
        .arg("-quiet");
    if let Some(c) = client {
        cmd.arg("-cert")
            .arg(&c.leaf)
            .arg("-key")
            .arg(&c.key)
            .arg("-cert_chain")
            .arg(&c.intermediates);
    }
    let done = run_with_input(
        &mut cmd,
        b"GET / HTTP/1.1\r\nHost: proxy.example.org\r\n\r\n",
        Duration::from_secs(20),
    );
    assert!(!done.timed_out, "openssl s_client hung");
    format!("{}{}", done.stdout, done.stderr)
}

/// Every refusal an OpenSSL client can provoke, with the alert text it must read.
fn openssl_refusals(fx: &Fixture) -> Vec<(&'static str, Option<ClientFiles>, &'static str)> {
    let other = Pki::named("Other");
    vec![
        ("no certificate", None, "alert certificate required"),
        (
            "untrusted chain",
            Some(fx.client(
                "untrusted",
                &other.intermediate,
                &Leaf::spiffe("ns/web/sa/frontend"),
            )),
            "alert unknown ca",
        ),
        (
            "expired",
            Some(fx.client(
                "expired",
                &fx.pki.intermediate,
                &Leaf {
                    not_before_offset: time::Duration::hours(-2),
                    not_after_offset: time::Duration::hours(-1),
                    ..Leaf::spiffe("ns/web/sa/frontend")
                },
            )),
            "alert certificate expired",
        ),
        (
            "revoked",
            Some(fx.client(
                "revoked",
                &fx.pki.intermediate,
                &Leaf {
                    serial: Some(REVOKED_SERIAL),
                    ..Leaf::spiffe("ns/web/sa/frontend")
                },
            )),
            "alert certificate revoked",
        ),
        (
            "denied identity",
            Some(fx.client(
                "denied",
                &fx.pki.intermediate,
                &Leaf::spiffe("ns/web/sa/intruder"),
            )),
            "alert access denied",
        ),
    ]
}

/// Presents a fixed certificate list with a fixed key, whatever they are.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A rustls client presenting `chain` and signing with `key_der`, which
/// need not match.
fn crafted_client(
    fx: &Fixture,
    chain: Vec<CertificateDer<'static>>,
    key_der: &[u8],
) -> Arc<rustls::ClientConfig> {
    let key = PrivateKeyDer::try_from(key_der.to_vec()).unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let presented = Arc::new(CertifiedKey::new(chain, signer));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(fx.pki.root.cert_der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_cert_resolver(Arc::new(Present(presented)));
    Arc::new(config)
}

/// Complete the client's side of the handshake, write twice, then read:
/// what the read says (the alert, EOF, data or a reset).
fn rustls_writes_then_reads(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
    let mut stream = match tls_connect(addr, "proxy.example.org", config) {
        Ok(stream) => stream,
        Err(e) => return format!("handshake: {e}"),
    };
    for chunk in [&b"first write"[..], b"second write"] {
        if let Err(e) = stream.write_all(chunk).and_then(|_| stream.flush()) {
            return format!("write: {e}");
        }
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => "EOF".into(),
        Ok(n) => format!("DATA {:?}", &buf[..n]),
        Err(e) => e.to_string(),
    }
}

/// A DER blob that is not a certificate.
fn junk(seed: u64) -> CertificateDer<'static> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let bytes: Vec<u8> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    CertificateDer::from(bytes)
}

#[test]
fn every_refusal_reaches_a_client_that_writes_first_without_a_reset() {
    in_own_network_namespace(
        "every_refusal_reaches_a_client_that_writes_first_without_a_reset",
        every_refusal_reaches_the_client,
    );
}

fn every_refusal_reaches_the_client() {
    if !require_tool("python3") || !require_tool("openssl") {
        return;
    }
    let fx = Fixture::new("");
    let resets_before = tcp_ext_counter("TCPAbortOnData");

    for (kind, client, alert) in openssl_refusals(&fx) {
        let lines = python_writes_then_reads(&fx, client.as_ref());
        assert_eq!(lines.len(), ATTEMPTS, "{kind}: {lines:#?}");
        for line in &lines {
            assert!(
                line.starts_with("SSLERROR") && line.contains(alert),
                "{kind}: python expected {alert:?}, got {line:?} (all: {lines:#?})"
            );
        }
        for attempt in 0..ATTEMPTS {
            let out = s_client_with_request(&fx, client.as_ref());
            assert!(
                out.contains(alert),
                "{kind}: openssl s_client attempt {attempt} expected {alert:?}:\n{out}"
            );
        }
    }

    // A bad CertificateVerify: the frontend's real chain, signed with another key.
    let frontend = fx.client(
        "frontend",
        &fx.pki.intermediate,
        &Leaf::spiffe("ns/web/sa/frontend"),
    );
    let (chain, _) = frontend.issued.rustls_chain_and_key();
    let stranger = rcgen::KeyPair::generate().unwrap();
    let forged = crafted_client(&fx, chain.clone(), &stranger.serialize_der());
    // Junk after a valid chain, with the right key.
    let mut with_junk = chain.clone();
    with_junk.push(junk(1));
    let junk_config = crafted_client(&fx, with_junk, &frontend.issued.key_der);
    for (kind, config, alert) in [
        ("bad CertificateVerify", forged, "DecryptError"),
        ("junk entry", junk_config, "BadCertificate"),
    ] {
        for attempt in 0..ATTEMPTS {
            let read = rustls_writes_then_reads(fx.addr, config.clone());
            assert!(
                read.contains("received fatal alert") && read.contains(alert),
                "{kind}: attempt {attempt} expected {alert}, read {read:?}"
            );
        }
    }
    let resets = tcp_ext_counter("TCPAbortOnData") - resets_before;
    assert_eq!(resets, 0, "the proxy reset {resets} connections");

    // The frontend itself still gets through. (After the counter: this test
    // client closes without close_notify while the proxy still passes the
    // backend's EOF back as close_notify, and a closed socket that receives
    // data answers with a reset that the kernel also counts as
    // TCPAbortOnData. Normal half-close, nothing lost, and not a refusal.)
    echo_roundtrip(
        fx.addr,
        client_config(Some(&frontend.issued), &fx.pki.root.cert_pem),
    )
    .expect("the allowed client is served");

    // What the proxy counted agrees with what the clients read.
    let per_kind = (2 * ATTEMPTS) as f64;
    for (result, want) in [
        ("no_client_cert", per_kind),
        ("unknown_ca", per_kind),
        ("cert_expired", per_kind),
        ("cert_revoked", per_kind),
        ("access_denied", per_kind),
        ("decrypt_error", ATTEMPTS as f64),
        ("bad_certificate", ATTEMPTS as f64),
    ] {
        let label = format!("result=\"{result}\"");
        assert_eq!(
            fx.metric("portcullis_tls_handshakes_total", &[&label]),
            want,
            "handshakes with {label}"
        );
    }
    let logs = fx.proxy.logs();
    assert!(
        logs.contains("entry 3 of the peer's certificate list is not a certificate"),
        "the junk entry is logged as such:\n{logs}"
    );
    // Every refused client closed after reading: each lingering close ended
    // with the peer's close, none at a limit.
    let refused = 7.0 * ATTEMPTS as f64 + 5.0 * ATTEMPTS as f64;
    let wait_until = Instant::now() + Duration::from_secs(10);
    while fx.metric("portcullis_lingering_closes_total", &[]) < refused
        && Instant::now() < wait_until
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        fx.metric(
            "portcullis_lingering_closes_total",
            &["end=\"peer_closed\""]
        ),
        refused,
        "{}",
        fx.proxy.metrics()
    );
}

/// Open a plaintext connection that sends a request a TLS server must
/// refuse (decode_error), then never reads and never closes.
fn silent_refused_client(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: proxy.example.org\r\n\r\n")
        .unwrap();
    stream
}

fn wait_for_metric(fx: &Fixture, metric: &str, labels: &[&str], want: f64, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let value = fx.metric(metric, labels);
        if value >= want || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clients_that_never_read_are_cut_at_the_lingering_bound_and_starve_nobody() {
    const SILENT: usize = 2000;
    // Long enough that all of them linger at once even on a loaded machine.
    let fx = Fixture::new("lingering_time = \"20s\"\n");
    let frontend = fx.client(
        "frontend",
        &fx.pki.intermediate,
        &Leaf::spiffe("ns/web/sa/frontend"),
    );
    let allowed = client_config(Some(&frontend.issued), &fx.pki.root.cert_pem);
    // Some refused TLS clients that write and never read, too.
    let no_cert = client_config(None, &fx.pki.root.cert_pem);
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut stream = tls_connect(fx.addr, "proxy.example.org", no_cert.clone()).unwrap();
        stream.write_all(b"a request nobody reads").unwrap();
        stream.flush().unwrap();
        held.push(stream.sock);
    }
    let opened = Instant::now();
    // In batches the accept queue can hold, each accepted before the next,
    // so no SYN waits for a retransmit on a busy machine.
    let mut silent: Vec<TcpStream> = Vec::with_capacity(SILENT);
    for _ in 0..(SILENT / 250) {
        silent.extend((0..250).map(|_| silent_refused_client(fx.addr)));
        wait_for_metric(
            &fx,
            "portcullis_connections_open",
            &["listener=\"api\""],
            (silent.len() + held.len()) as f64,
            Duration::from_secs(10),
        );
    }
    let lingering = wait_for_metric(
        &fx,
        "portcullis_connections_open",
        &["listener=\"api\""],
        (SILENT + held.len()) as f64,
        Duration::from_secs(20),
    );
    // All of them are lingering at once (the bound is 20 s; opening them
    // takes a fraction of that), and a legitimate client is served meanwhile.
    assert_eq!(
        lingering,
        (SILENT + held.len()) as f64,
        "every silent client lingers at once (opened in {:?})",
        opened.elapsed()
    );
    echo_roundtrip(fx.addr, allowed.clone()).expect("a legitimate client is served");

    // Each is closed at the bound: counted as a time_limit end.
    let total = (SILENT + held.len()) as f64;
    let ended = wait_for_metric(
        &fx,
        "portcullis_lingering_closes_total",
        &["end=\"time_limit\""],
        total,
        Duration::from_secs(60),
    );
    assert_eq!(ended, total, "{}", fx.proxy.metrics());
    assert_eq!(
        fx.metric("portcullis_connections_open", &["listener=\"api\""]),
        0.0
    );
    // The proxy's side is closed: after our FIN, the socket is gone.
    let mut probe = silent.into_iter().next().unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = probe.read_to_end(&mut rest);
    echo_roundtrip(fx.addr, allowed).expect("still served afterwards");
    drop(held);
}

#[test]
fn a_full_listener_sheds_lingering_refusals_for_a_new_client() {
    const LIMIT: usize = 50;
    let fx = Fixture::new(&format!(
        "lingering_time = \"30s\"\nmax_connections = {LIMIT}\n"
    ));
    let frontend = fx.client(
        "frontend",
        &fx.pki.intermediate,
        &Leaf::spiffe("ns/web/sa/frontend"),
    );
    let _silent: Vec<TcpStream> = (0..LIMIT).map(|_| silent_refused_client(fx.addr)).collect();
    let lingering = wait_for_metric(
        &fx,
        "portcullis_connections_open",
        &["listener=\"api\""],
        LIMIT as f64,
        Duration::from_secs(20),
    );
    assert_eq!(
        lingering, LIMIT as f64,
        "the listener is full of lingering refusals"
    );
    // Accepted is not yet refused: give the last ones time to send their alert.
    std::thread::sleep(Duration::from_millis(300));
    echo_roundtrip(
        fx.addr,
        client_config(Some(&frontend.issued), &fx.pki.root.cert_pem),
    )
    .expect("a new client gets a place");
    assert!(fx.metric("portcullis_lingering_closes_total", &["end=\"shed\""]) >= 1.0);
    assert_eq!(
        fx.metric(
            "portcullis_connection_errors_total",
            &["reason=\"max_connections\""]
        ),
        0.0
    );
}

#[test]
fn junk_beside_a_copied_certificate_never_grows_the_chain_cache() {
    const ATTACKS: usize = 10_000;
    const THREADS: usize = 4;
    let fx = Arc::new(Fixture::new(""));
    let frontend = fx.client(
        "frontend",
        &fx.pki.intermediate,
        &Leaf::spiffe("ns/web/sa/frontend"),
    );
    let allowed = client_config(Some(&frontend.issued), &fx.pki.root.cert_pem);
    let lookups = |result: &str| {
        fx.metric(
            "portcullis_chain_cache_lookups_total",
            &["listener=\"api\"", &format!("result=\"{result}\"")],
        )
    };
    for _ in 0..5 {
        echo_roundtrip(fx.addr, allowed.clone()).unwrap();
    }
    let (hits, misses) = (lookups("hit"), lookups("miss"));
    assert_eq!((hits, misses), (4.0, 1.0));
    let entries = |fx: &Fixture| {
        fx.metric(
            "portcullis_chain_cache_entries",
            &["listener=\"api\"", "direction=\"inbound\""],
        )
    };
    assert_eq!(entries(&fx), 1.0);

    // The attacker holds the frontend's public chain but not its key. Half
    // the attempts add a random blob, half a distinct real certificate (so
    // it parses) beside the chain, with or without the real intermediate.
    let (chain, _) = frontend.issued.rustls_chain_and_key();
    let attacker_key = rcgen::KeyPair::generate().unwrap().serialize_der();
    let workers: Vec<_> = (0..THREADS)
        .map(|worker| {
            let (fx, chain, attacker_key) = (fx.clone(), chain.clone(), attacker_key.clone());
            std::thread::spawn(move || {
                let filler_key = rcgen::KeyPair::generate().unwrap();
                let mut refused = 0;
                for i in (worker..ATTACKS).step_by(THREADS) {
                    let extra = if i % 2 == 0 {
                        junk(i as u64)
                    } else {
                        let mut params =
                            rcgen::CertificateParams::new(vec![format!("filler-{i}.test")])
                                .unwrap();
                        params.serial_number = Some(rcgen::SerialNumber::from(i as u64 + 1));
                        params.self_signed(&filler_key).unwrap().der().clone()
                    };
                    let presented = if i % 4 < 2 {
                        vec![chain[0].clone(), extra, chain[1].clone()]
                    } else {
                        vec![chain[0].clone(), extra]
                    };
                    let read = rustls_writes_then_reads(
                        fx.addr,
                        crafted_client(&fx, presented, &attacker_key),
                    );
                    if read.contains("received fatal alert") {
                        refused += 1;
                    } else {
                        panic!("attempt {i} was not refused with an alert: {read}");
                    }
                }
                refused
            })
        })
        .collect();
    let refused: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(refused, ATTACKS);

    assert_eq!(
        entries(&fx),
        1.0,
        "the cache holds the frontend's entry only"
    );
    assert_eq!(
        fx.metric("portcullis_chain_cache_evictions_total", &[]),
        0.0
    );
    let misses_during = lookups("miss") - misses;
    let (hits, misses) = (lookups("hit"), lookups("miss"));
    for _ in 0..5 {
        echo_roundtrip(fx.addr, allowed.clone()).unwrap();
    }
    assert_eq!(
        (lookups("hit") - hits, lookups("miss") - misses),
        (5.0, 0.0),
        "the frontend still hits the cache every time"
    );
    // Only the attempts without the real intermediate missed (and failed).
    assert_eq!(misses_during, (ATTACKS / 4) as f64);
}
