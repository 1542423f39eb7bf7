//! Interop with an external CA: OpenBao's PKI engine (`bao server -dev` on
//! loopback) issues the proxy's and the clients' certificates, delivered
//! through the `files` identity source as an agent would write them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A dev-mode OpenBao server, killed on drop.
struct Bao {
    child: Child,
    addr: String,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    /// On a `free_port`: `bao` takes its address up front and does not
    /// report one it was given as port 0.
    fn start() -> Bao {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("bao")
            .args(["server", "-dev", "-dev-root-token-id=root"])
            .arg(format!("-dev-listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bao starts");
        let bao = Bao { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bao.run(&["status"]).status.success() {
            assert!(Instant::now() < deadline, "bao dev server not up in 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        bao
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("bao")
            .args(args)
            .env("BAO_ADDR", format!("http://{}", self.addr))
            .env("BAO_TOKEN", "root")
            .output()
            .expect("bao runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A PKI engine with a root and a role for SPIFFE workloads.
    fn setup_pki(&self) -> String {
        self.ok(&["secrets", "enable", "pki"]);
        self.ok(&["secrets", "tune", "-max-lease-ttl=8760h", "pki"]);
        let root = self.ok(&[
            "write",
            "-format=json",
            "pki/root/generate/internal",
            "common_name=OpenBao Test Root",
            "ttl=8760h",
        ]);
        self.ok(&[
            "write",
            "pki/roles/workload",
            "allow_any_name=true",
            "enforce_hostnames=false",
            "allowed_uri_sans=spiffe://example.org/*",
            "require_cn=false",
            "key_type=ec",
            "key_bits=256",
            "max_ttl=2h",
        ]);
        let json: serde_json::Value = serde_json::from_str(&root).unwrap();
        json["data"]["certificate"].as_str().unwrap().to_string()
    }

    /// Issue a leaf: (certificate PEM, private key PEM, serial).
    fn issue(&self, spiffe: &str, dns: Option<&str>) -> (String, String, String) {
        let mut args = vec![
            "write".to_string(),
            "-format=json".into(),
            "pki/issue/workload".into(),
            format!("uri_sans={spiffe}"),
            "ttl=1h".into(),
        ];
        if let Some(dns) = dns {
            args.push(format!("alt_names={dns}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let json: serde_json::Value = serde_json::from_str(&self.ok(&refs)).unwrap();
        let data = &json["data"];
        (
            data["certificate"].as_str().unwrap().to_string(),
            data["private_key"].as_str().unwrap().to_string(),
            data["serial_number"].as_str().unwrap().replace(':', ""),
        )
    }
}

#[test]
fn openbao_issued_certificates_work_through_the_files_source() {
    if !require_tool("bao") {
        return;
    }
    let bao = Bao::start();
    let root_pem = bao.setup_pki();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    // What an agent would write: certificate, key (SEC1 from OpenBao), CA.
    let (cert, key, first_serial) = bao.issue(
        "spiffe://example.org/ns/api/sa/server",
        Some("proxy.example.org"),
    );
    std::fs::write(path("tls.crt"), &cert).unwrap();
    write_private(&path("tls.key"), &key);
    std::fs::write(path("ca.crt"), &root_pem).unwrap();

    let config = format!(
        "[identity]\nsource = \"files\"\ncert = \"tls.crt\"\nkey = \"tls.key\"\ntrust_bundle = \"ca.crt\"\n{}",
        inbound_table("api", echo_backend(), &allow_spiffe("ns/web/sa/frontend"))
    );
    let proxy = Proxy::start(dir.path(), &config);
    let addr = proxy.inbound("api");

    let (c, k, _) = bao.issue("spiffe://example.org/ns/web/sa/frontend", None);
    let frontend = client_config(Some(&Issued::from_pem(&c, &k)), &root_pem);
    echo_roundtrip(addr, frontend.clone()).expect("OpenBao-issued client admitted");

    let (c, k, _) = bao.issue("spiffe://example.org/ns/web/sa/intruder", None);
    let intruder = client_config(Some(&Issued::from_pem(&c, &k)), &root_pem);
    assert!(echo_roundtrip(addr, intruder).is_err());

    // The agent renews: the next handshake presents the new certificate.
    let served = |config| served_serial(addr, "proxy.example.org", config).unwrap_or_default();
    let trim = |s: &str| s.trim_start_matches('0').to_string();
    assert_eq!(trim(&served(&frontend)), trim(&first_serial));
    let (cert, key, second_serial) = bao.issue(
        "spiffe://example.org/ns/api/sa/server",
        Some("proxy.example.org"),
    );
    replace_atomically(&path("tls.key"), &key);
    replace_atomically(&path("tls.crt"), &cert);
    let renewed = wait_until(Duration::from_secs(10), || {
        trim(&served(&frontend)) == trim(&second_serial)
    });
    assert!(renewed, "renewed cert not served:\n{}", proxy.logs());
    echo_roundtrip(addr, frontend).expect("still admitted after renewal");
}
