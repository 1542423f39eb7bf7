//! The proxy's `ca` identity source end to end: a real `portcullis ca
//! serve` on loopback, proxies whose certificates live a few seconds, and
//! traffic that must not notice the rotations, the CA going away, or the CA
//! coming back.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TD: &str = "example.org";

/// `portcullis ca init` in a temp dir, and `ca serve` on a free port: a
/// fixed one (`free_port`), because the tests stop the CA and start it again
/// on the address the proxies were configured with.
struct CaServer {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl CaServer {
    fn init(root: &Path) -> CaServer {
        let dir = root.join("ca");
        portcullis_ok([
            "ca",
            "init",
            "--trust-domain",
            TD,
            "--dir",
            dir.to_str().unwrap(),
        ]);
        let port = free_port();
        let config = std::fs::read_to_string(dir.join("ca.toml")).unwrap();
        let config = config
            .replace(
                "listen = \"127.0.0.1:8500\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace("max_ttl = \"24h\"", "max_ttl = \"1h\"");
        std::fs::write(dir.join("ca.toml"), config).unwrap();
        let mut ca = CaServer {
            dir,
            port,
            child: None,
        };
        ca.start();
        ca
    }

    fn start(&mut self) {
        let child = Command::new(binary())
            .args(["ca", "serve", "-c"])
            .arg(self.dir.join("ca.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "CA did not start");
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `portcullis ca ARGS --dir DIR`, which must succeed; its stdout.
    fn ca(&self, args: &[&str]) -> Vec<u8> {
        let dir = self.dir.to_str().unwrap();
        portcullis_ok(["ca"].iter().chain(args).chain(&["--dir", dir]))
    }

    fn token(&self, spiffe_id: &str, file: &Path) {
        let token = self.ca(&["token", "--spiffe-id", spiffe_id]);
        std::fs::write(file, token).unwrap();
    }

    /// Offline issuance; returns the client credentials for a rustls client.
    fn issue(&self, spiffe_id: &str, prefix: &Path) -> Issued {
        let out = prefix.to_str().unwrap();
        self.ca(&[
            "issue",
            "--ttl",
            "1h",
            "--spiffe-id",
            spiffe_id,
            "--out",
            out,
        ]);
        Issued::from_pem(
            &std::fs::read_to_string(prefix.with_extension("crt")).unwrap(),
            &std::fs::read_to_string(prefix.with_extension("key")).unwrap(),
        )
    }

    fn bundle_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("bundle.crt")).unwrap()
    }

    fn identity_toml(&self, token: &Path, ttl: &str) -> String {
        format!(
            "[identity]\nsource = \"ca\"\nurl = \"https://127.0.0.1:{}\"\nca_bundle = {:?}\n\
             token_file = {token:?}\nttl = \"{ttl}\"\nrenew_at = 0.5\nretry_max = \"1s\"\nbundle_refresh = \"2s\"\n",
            self.port,
            self.dir.join("bundle.crt"),
        )
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rotations(proxy: &Proxy) -> f64 {
    metric_value(
        &proxy.metrics(),
        "portcullis_cert_rotations_total",
        &["result=\"success\""],
    )
}

/// A proxy with `identity` (TOML) and one inbound listener `api` in front
/// of an echo backend admitting the frontend; returns it and where `api` is.
fn api_proxy(dir: &Path, identity: &str) -> (Proxy, SocketAddr) {
    let listener = inbound_table("api", echo_backend(), &allow_spiffe("ns/web/sa/frontend"));
    let proxy = Proxy::start(dir, &format!("{identity}{listener}"));
    let addr = proxy.inbound("api");
    (proxy, addr)
}

#[test]
fn rotations_under_traffic_break_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CaServer::init(tmp.path());
    let api_token = tmp.path().join("api.token");
    let web_token = tmp.path().join("web.token");
    ca.token("spiffe://example.org/ns/api/sa/server", &api_token);
    ca.token("spiffe://example.org/ns/web/sa/frontend", &web_token);

    // Inbound "api" in front of an echo backend, admitting the frontend.
    let (inbound, in_addr) = api_proxy(tmp.path(), &ca.identity_toml(&api_token, "4s"));
    // Outbound "frontend" dialing it, expecting the api identity.
    let outbound = Proxy::start(
        tmp.path(),
        &format!(
            "{}{}",
            ca.identity_toml(&web_token, "4s"),
            outbound_table(
                "api",
                in_addr,
                "{ spiffe_id = \"spiffe://example.org/ns/api/sa/server\" }",
                "server_name = \"localhost\""
            )
        ),
    );
    let out_addr = outbound.outbound("api");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let exchanges = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    // Long-lived streams through outbound -> inbound -> backend.
    for id in 0..8 {
        let (stop, failures, exchanges) = (stop.clone(), failures.clone(), exchanges.clone());
        threads.push(std::thread::spawn(move || {
            let mut stream = TcpStream::connect(out_addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("stream {id} message {n}\n");
                let mut back = vec![0u8; msg.len()];
                let ok = stream.write_all(msg.as_bytes()).is_ok()
                    && stream.read_exact(&mut back).is_ok()
                    && back == msg.as_bytes();
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                exchanges.fetch_add(1, Ordering::Relaxed);
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    // New connections (full mTLS handshake on both hops) all the time.
    {
        let (stop, failures, exchanges) = (stop.clone(), failures.clone(), exchanges.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = plain_exchange(out_addr, b"fresh").is_ok_and(|got| got == b"fresh");
                if ok {
                    exchanges.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }

    // Watch the inbound proxy's certificate change at least 5 times.
    let observer = ca.issue(
        "spiffe://example.org/ns/web/sa/frontend",
        &tmp.path().join("observer"),
    );
    let observer = client_config_any_name(Some(&observer), &ca.bundle_pem());
    let mut serials = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while serials.len() < 6 || rotations(&inbound) < 6.0 || rotations(&outbound) < 6.0 {
        assert!(
            Instant::now() < deadline,
            "too few rotations: {serials:?}\n{}",
            inbound.logs()
        );
        if let Some(serial) = served_serial(in_addr, "localhost", &observer) {
            serials.insert(serial);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "broken streams or failed connections"
    );
    assert!(exchanges.load(Ordering::Relaxed) > 100);
    for proxy in [&inbound, &outbound] {
        let m = proxy.metrics();
        assert_eq!(
            metric_value(
                &m,
                "portcullis_cert_rotations_total",
                &["result=\"failure\""]
            ),
            0.0
        );
        assert_eq!(
            metric_value(&m, "portcullis_tls_handshakes_total", &[]),
            metric_value(
                &m,
                "portcullis_tls_handshakes_total",
                &["result=\"success\""]
            ),
            "every handshake succeeded:\n{m}"
        );
        assert!(metric_value(&m, "portcullis_cert_renewal_timestamp_seconds", &[]) > 0.0);
    }
}

#[test]
fn ca_outage_keeps_serving_until_expiry_then_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = CaServer::init(tmp.path());
    let token = tmp.path().join("api.token");
    ca.token("spiffe://example.org/ns/api/sa/server", &token);
    let (proxy, addr) = api_proxy(tmp.path(), &ca.identity_toml(&token, "6s"));
    let client = ca.issue(
        "spiffe://example.org/ns/web/sa/frontend",
        &tmp.path().join("c"),
    );
    let client = client_config_any_name(Some(&client), &ca.bundle_pem());
    echo_roundtrip(addr, client.clone()).unwrap();

    ca.stop();
    // Past the renewal point the proxy keeps serving with what it has.
    std::thread::sleep(Duration::from_secs(4));
    assert!(matches!(http_get(proxy.admin, "/readyz"), Ok((200, _))));
    echo_roundtrip(addr, client.clone()).expect("still serving on the current certificate");
    assert!(proxy
        .logs()
        .contains("certificate renewal failed; keeping the current certificate"));

    // Once it expires, readiness fails with the reason.
    wait_for(
        "readiness to fail",
        Duration::from_secs(15),
        || matches!(http_get(proxy.admin, "/readyz"), Ok((503, body)) if body.contains("expired")),
    );

    // The CA comes back (and the orchestrator has rotated the token, as the
    // kubelet does for projected tokens): the proxy recovers by itself.
    ca.token("spiffe://example.org/ns/api/sa/server", &token);
    ca.start();
    wait_for("readiness to recover", Duration::from_secs(15), || {
        matches!(http_get(proxy.admin, "/readyz"), Ok((200, _)))
    });
    echo_roundtrip(addr, client).expect("serving again");
}

#[test]
fn a_revoked_peer_is_refused_by_an_inbound_proxy_with_the_crl() {
    if !require_tool("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = CaServer::init(tmp.path());
    // The inbound proxy uses offline-issued files and the CA's CRL.
    let server = tmp.path().join("server");
    ca.issue("spiffe://example.org/ns/api/sa/server", &server);
    let fetch_crl = || {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(ca.dir.join("bundle.crt"))
            .arg(format!("https://localhost:{}/v1/crl", ca.port))
            .arg("-o")
            .arg(tmp.path().join("ca.crl.tmp"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(tmp.path().join("ca.crl.tmp"), tmp.path().join("ca.crl")).unwrap();
    };
    fetch_crl();
    let (proxy, addr) = api_proxy(
        tmp.path(),
        "[identity]\nsource = \"files\"\ncert = \"server.crt\"\nkey = \"server.key\"\n\
         trust_bundle = \"server.bundle.crt\"\ncrls = [\"ca.crl\"]\n",
    );
    let victim = ca.issue(
        "spiffe://example.org/ns/web/sa/frontend",
        &tmp.path().join("victim"),
    );
    let bystander = ca.issue(
        "spiffe://example.org/ns/web/sa/frontend",
        &tmp.path().join("bystander"),
    );
    let victim_cfg = client_config_any_name(Some(&victim), &ca.bundle_pem());
    let bystander_cfg = client_config_any_name(Some(&bystander), &ca.bundle_pem());
    echo_roundtrip(addr, victim_cfg.clone()).expect("admitted before revocation");

    let serial = portcullis::inspect::summarize_der(&victim.cert_der)
        .unwrap()
        .serial;
    ca.ca(&["revoke", "--serial", &serial]);
    // The CA rebuilds its CRL when revoked.txt changes; fetch until listed.
    wait_for(
        "the CRL to list the serial",
        Duration::from_secs(90),
        || {
            fetch_crl();
            let crl = std::fs::read(tmp.path().join("ca.crl")).unwrap();
            let crl = portcullis_crl_serials(&crl);
            crl.iter()
                .any(|s| s.trim_start_matches('0') == serial.trim_start_matches('0'))
        },
    );
    wait_for(
        "the proxy to refuse the revoked peer",
        Duration::from_secs(15),
        || echo_roundtrip(addr, victim_cfg.clone()).is_err(),
    );
    echo_roundtrip(addr, bystander_cfg).expect("an unrevoked peer is still admitted");
    assert!(
        metric_value(
            &proxy.metrics(),
            "portcullis_tls_handshakes_total",
            &["result=\"cert_revoked\""]
        ) >= 1.0
    );
}

/// Serials (lowercase hex) listed in a PEM or DER CRL, read with x509-parser.
fn portcullis_crl_serials(bytes: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{CertificateRevocationList, FromDer};
    let der = if bytes.starts_with(b"-----") {
        match x509_parser::pem::parse_x509_pem(bytes) {
            Ok((_, pem)) => pem.contents,
            Err(_) => return Vec::new(),
        }
    } else {
        bytes.to_vec()
    };
    match CertificateRevocationList::from_der(&der) {
        Ok((_, crl)) => crl
            .iter_revoked_certificates()
            .map(|r| portcullis::identity::peer::hex(r.raw_serial()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_new_root_added_to_the_ca_bundle_is_trusted_after_refresh() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = CaServer::init(tmp.path());
    let token = tmp.path().join("api.token");
    ca.token("spiffe://example.org/ns/api/sa/server", &token);
    let (proxy, addr) = api_proxy(tmp.path(), &ca.identity_toml(&token, "1h"));
    // A peer whose chain leads to a root the proxy does not trust yet.
    let next_root = Ca::root("Next Root CA");
    let peer = next_root.issue(&Leaf::spiffe("ns/web/sa/frontend"));
    let roots = format!("{}{}", ca.bundle_pem(), next_root.cert_pem);
    assert!(echo_roundtrip(addr, client_config_any_name(Some(&peer), &roots)).is_err());

    // CA rotation, step one: the new root joins the CA's bundle.
    ca.stop();
    std::fs::write(ca.dir.join("bundle.crt"), &roots).unwrap();
    ca.start();
    wait_for(
        "the proxy to fetch the new bundle",
        Duration::from_secs(20),
        || {
            let (_, body) = http_get(proxy.admin, "/certs").unwrap();
            body.matches("\"role\":\"trust\"").count() == 2
        },
    );
    echo_roundtrip(addr, client_config_any_name(Some(&peer), &roots))
        .expect("a peer under the new root is admitted");
    assert!(proxy.logs().contains("trust bundle refreshed from the CA"));
}
