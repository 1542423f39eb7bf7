//! A PKI made entirely with the `openssl` command line (no rcgen), so the
//! proxy is tested against certificates, keys and CRLs from another
//! implementation: EC P-256 root, an intermediate with pathlen:0, leaves
//! issued through an `openssl ca` database, keys in PKCS#8 and SEC1 form, and
//! a CRL from `openssl ca -gencrl`. Clients are the rustls client from the
//! harness and `openssl s_client`.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

const SERVER_NAME: &str = "proxy.example.org";
const FRONTEND: &str = "spiffe://example.org/ns/web/sa/frontend";
const INTRUDER: &str = "spiffe://example.org/ns/web/sa/intruder";
const FRONTEND_ONLY: &str =
    "[[inbound.allow]]\nspiffe_id = \"spiffe://example.org/ns/web/sa/frontend\"\n";
/// How long any `openssl` invocation may run before it is killed.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// Run `command` (stdin from `input`), killing it after [`COMMAND_LIMIT`].
/// Returns (success, stdout, stderr).
fn run_with_input(command: &mut Command, input: &[u8]) -> (bool, String, String) {
    let done = common::run_with_input(command, input, COMMAND_LIMIT);
    if done.timed_out {
        panic!(
            "{command:?} did not finish in {COMMAND_LIMIT:?}\n{}\n{}",
            done.stdout, done.stderr
        );
    }
    (done.status.success(), done.stdout, done.stderr)
}

/// A PKI built with the `openssl` CLI in a temporary directory, which also
/// holds the proxy's files.
struct OpensslPki {
    dir: tempfile::TempDir,
}

/// Configuration shared by every `openssl` command: `req` defaults, the CA
/// extensions, and an `openssl ca` database for the intermediate.
fn openssl_cnf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
[req]
distinguished_name = req_dn
prompt = no
string_mask = utf8only

[req_dn]
CN = unused

[v3_root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_intermediate]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ca]
default_ca = intermediate_ca

[intermediate_ca]
database = {d}/ca/index.txt
new_certs_dir = {d}/ca/newcerts
certificate = {d}/intermediate.crt
private_key = {d}/intermediate.key
serial = {d}/ca/serial
crlnumber = {d}/ca/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 1
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
crl_extensions = crl_ext

[policy_any]
commonName = optional
organizationName = optional
organizationalUnitName = optional

[crl_ext]
authorityKeyIdentifier = keyid:always
"#
    )
}

impl OpensslPki {
    /// Root (self-signed) and intermediate CA, the `openssl ca` database,
    /// and `bundle.crt` (the root) for the proxy's trust bundle.
    fn new() -> OpensslPki {
        let pki = OpensslPki {
            dir: tempfile::tempdir().unwrap(),
        };
        let dir = pki.dir.path();
        std::fs::create_dir_all(dir.join("ca/newcerts")).unwrap();
        std::fs::write(dir.join("ca/index.txt"), "").unwrap();
        std::fs::write(dir.join("ca/serial"), "1000\n").unwrap();
        std::fs::write(dir.join("ca/crlnumber"), "01\n").unwrap();
        std::fs::write(dir.join("openssl.cnf"), openssl_cnf(dir)).unwrap();

        pki.ec_key("root.key");
        pki.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/O=Portcullis Tests/CN=OpenSSL Test Root CA",
            "-days",
            "365",
            "-sha256",
            "-extensions",
            "v3_root",
            "-out",
            "root.crt",
        ]);
        pki.ec_key("intermediate.key");
        pki.openssl(&[
            "req",
            "-new",
            "-key",
            "intermediate.key",
            "-subj",
            "/O=Portcullis Tests/CN=OpenSSL Test Intermediate CA",
            "-out",
            "intermediate.csr",
        ]);
        pki.openssl(&[
            "x509",
            "-req",
            "-in",
            "intermediate.csr",
            "-CA",
            "root.crt",
            "-CAkey",
            "root.key",
            "-set_serial",
            "0x0200",
            "-days",
            "180",
            "-sha256",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "v3_intermediate",
            "-out",
            "intermediate.crt",
        ]);
        std::fs::copy(dir.join("root.crt"), dir.join("bundle.crt")).unwrap();

        // The intermediate really carries what the test claims it carries.
        let text = pki.openssl(&["x509", "-in", "intermediate.crt", "-noout", "-text"]);
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run `openssl args...` in the PKI directory with its config; panic
    /// with stderr on failure; return stdout.
    fn openssl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("openssl");
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("OPENSSL_CONF", self.path("openssl.cnf"));
        let (ok, stdout, stderr) = run_with_input(&mut cmd, b"");
        assert!(ok, "openssl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// A P-256 key in SEC1 form (`BEGIN EC PRIVATE KEY`), mode 0600.
    fn ec_key(&self, name: &str) {
        self.openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ]);
        self.private(name);
    }

    /// Make a key file readable by the owner only (the proxy insists).
    fn private(&self, name: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.path(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Issue a leaf from the intermediate through the `openssl ca` database.
    ///
    /// Writes `name.sec1.key` (SEC1), `name.key` (PKCS#8, via
    /// `openssl pkcs8 -topk8 -nocrypt`), `name.leaf.crt` (leaf only) and
    /// `name.crt` (leaf + intermediate). `san` is an `subjectAltName` value,
    /// `eku` an `extendedKeyUsage` value.
    fn issue(&self, name: &str, cn: &str, san: &str, eku: &str) {
        let sec1 = format!("{name}.sec1.key");
        let pkcs8 = format!("{name}.key");
        let csr = format!("{name}.csr");
        let ext = format!("{name}.ext");
        let leaf = format!("{name}.leaf.crt");
        self.ec_key(&sec1);
        self.openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", &sec1, "-out", &pkcs8]);
        self.private(&pkcs8);
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &pkcs8,
            "-subj",
            &format!("/O=Portcullis Tests/CN={cn}"),
            "-out",
            &csr,
        ]);
        std::fs::write(
            self.path(&ext),
            format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = {eku}\n\
                 subjectAltName = {san}\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid\n"
            ),
        )
        .unwrap();
        self.openssl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            "openssl.cnf",
            "-extfile",
            &ext,
            "-in",
            &csr,
            "-out",
            &leaf,
        ]);
        let chain = format!(
            "{}{}",
            std::fs::read_to_string(self.path(&leaf)).unwrap(),
            std::fs::read_to_string(self.path("intermediate.crt")).unwrap()
        );
        std::fs::write(self.path(&format!("{name}.crt")), chain).unwrap();
        // openssl itself agrees the chain is good before the proxy sees it.
        self.openssl(&[
            "verify",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "intermediate.crt",
            &leaf,
        ]);
    }

    /// A PKI with the server's certificate and the frontend's.
    fn serving_the_frontend() -> OpensslPki {
        let pki = OpensslPki::new();
        pki.issue_server();
        pki.issue_client("frontend", FRONTEND);
        pki
    }

    /// The proxy's own certificate: DNS and SPIFFE SANs, server+client EKU.
    fn issue_server(&self) {
        self.issue(
            "server",
            "server",
            &format!("DNS:{SERVER_NAME}, URI:spiffe://example.org/ns/api/sa/server"),
            "serverAuth, clientAuth",
        );
    }

    /// A client certificate carrying one SPIFFE ID.
    fn issue_client(&self, name: &str, spiffe_id: &str) {
        self.issue(name, name, &format!("URI:{spiffe_id}"), "clientAuth");
    }

    /// Revoke `name.leaf.crt` in the CA database and write a fresh CRL
    /// (`intermediate.crl`, PEM) with `openssl ca -gencrl`.
    fn revoke_and_gencrl(&self, name: &str) {
        self.openssl(&[
            "ca",
            "-config",
            "openssl.cnf",
            "-revoke",
            &format!("{name}.leaf.crt"),
            "-crl_reason",
            "keyCompromise",
        ]);
        self.openssl(&[
            "ca",
            "-config",
            "openssl.cnf",
            "-gencrl",
            "-out",
            "intermediate.crl",
        ]);
    }

    /// Serial of `name.leaf.crt` as openssl prints it (upper-case hex).
    fn serial(&self, name: &str) -> String {
        let out = self.openssl(&[
            "x509",
            "-in",
            &format!("{name}.leaf.crt"),
            "-noout",
            "-serial",
        ]);
        out.trim().trim_start_matches("serial=").to_string()
    }

    /// The `[identity]` section: our chain, `key_file`, the root as bundle.
    fn identity_toml(&self, key_file: &str, extra: &str) -> String {
        format!(
            "[identity]\nsource = \"files\"\ncert = {:?}\nkey = {:?}\ntrust_bundle = {:?}\n{extra}",
            self.path("server.crt"),
            self.path(key_file),
            self.path("bundle.crt"),
        )
    }

    /// Start a proxy (allowing only the frontend) in front of a line echo
    /// backend; returns it and its inbound address.
    fn start_proxy(&self, key_file: &str, identity_extra: &str) -> (Proxy, SocketAddr) {
        let backend = line_echo_backend();
        let config = format!(
            "{}{}",
            self.identity_toml(key_file, identity_extra),
            inbound_table("api", backend, FRONTEND_ONLY)
        );
        let proxy = Proxy::start(self.dir.path(), &config);
        let addr = proxy.inbound("api");
        (proxy, addr)
    }

    /// The client `frontend` is admitted and the client `refused` is not,
    /// through rustls and through `openssl s_client`: rustls's error says
    /// `rustls_says`, s_client's output `openssl_says`.
    fn admits_frontend_but_not(
        &self,
        addr: SocketAddr,
        refused: &str,
        rustls_says: &str,
        openssl_says: &str,
    ) {
        echo_roundtrip(addr, self.rustls_client("frontend")).expect("allowed peer (rustls)");
        let err = echo_roundtrip(addr, self.rustls_client(refused)).unwrap_err();
        assert!(
            err.to_lowercase().contains(rustls_says),
            "{refused}: expected {rustls_says:?}, got {err}"
        );

        let (ok, stdout, stderr) = self.s_client(addr, "frontend");
        assert!(ok, "s_client as frontend failed\n{stdout}\n{stderr}");
        assert!(stdout.contains("ping-from-openssl"), "{stdout}\n{stderr}");
        let (ok, stdout, stderr) = self.s_client(addr, refused);
        assert!(!ok, "s_client as {refused} succeeded\n{stdout}\n{stderr}");
        assert!(!stdout.contains("ping-from-openssl"), "{stdout}\n{stderr}");
        assert!(stderr.contains(openssl_says), "{stderr}");
    }

    /// A rustls client config presenting `name.crt` / `name.key` and
    /// trusting the openssl root.
    fn rustls_client(&self, name: &str) -> Arc<rustls::ClientConfig> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.path(&format!("{name}.crt")))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        assert_eq!(chain.len(), 2, "leaf + intermediate");
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
        let roots = std::fs::read_to_string(self.path("root.crt")).unwrap();
        let issued = Issued {
            chain_pem: std::fs::read_to_string(self.path(&format!("{name}.crt"))).unwrap(),
            cert_der: chain[0].clone(),
            key_pem: std::fs::read_to_string(self.path(&format!("{name}.key"))).unwrap(),
            key_der: key.secret_der().to_vec(),
        };
        client_config(Some(&issued), &roots)
    }

    /// `openssl s_client` as `name`, sending one line and returning
    /// (success, stdout, stderr). The line backend echoes it and closes, so
    /// s_client (`-quiet`, which keeps reading after stdin ends) exits.
    fn s_client(&self, addr: SocketAddr, name: &str) -> (bool, String, String) {
        let mut cmd = Command::new("openssl");
        cmd.arg("s_client")
            .arg("-connect")
            .arg(addr.to_string())
            .args(["-servername", SERVER_NAME])
            .args(["-verify_hostname", SERVER_NAME])
            .arg("-verify_return_error")
            .arg("-CAfile")
            .arg(self.path("root.crt"))
            .arg("-cert")
            .arg(self.path(&format!("{name}.leaf.crt")))
            .arg("-key")
            .arg(self.path(&format!("{name}.key")))
            .arg("-cert_chain")
            .arg(self.path("intermediate.crt"))
            .arg("-quiet")
            .current_dir(self.dir.path())
            .env("OPENSSL_CONF", self.path("openssl.cnf"));
        run_with_input(&mut cmd, b"ping-from-openssl\n")
    }
}

/// An echo backend that also closes the connection once it has echoed a
/// newline, so a client that never half-closes (`s_client -quiet`) ends.
fn line_echo_backend() -> SocketAddr {
    backend(|mut stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    if buf[..n].contains(&b'\n') {
                        break;
                    }
                }
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
    })
}

fn skip_without_openssl() -> bool {
    !require_tool("openssl")
}

#[test]
fn openssl_made_pki_admits_allowed_and_denies_other_spiffe_ids() {
    if skip_without_openssl() {
        return;
    }
    let pki = OpensslPki::serving_the_frontend();
    pki.issue_client("intruder", INTRUDER);
    let key = std::fs::read_to_string(pki.path("server.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    let (proxy, addr) = pki.start_proxy("server.key", "");

    pki.admits_frontend_but_not(addr, "intruder", "access", "access denied");

    proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"allow\""],
        2.0,
    );
    proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"deny\""],
        2.0,
    );
    assert!(proxy.logs().contains(INTRUDER), "{}", proxy.logs());
}

#[test]
fn proxy_reads_a_sec1_ec_private_key() {
    if skip_without_openssl() {
        return;
    }
    let pki = OpensslPki::serving_the_frontend();
    let key = std::fs::read_to_string(pki.path("server.sec1.key")).unwrap();
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
    let (_proxy, addr) = pki.start_proxy("server.sec1.key", "");

    echo_roundtrip(addr, pki.rustls_client("frontend")).expect("allowed peer (rustls)");
    let (ok, stdout, stderr) = pki.s_client(addr, "frontend");
    assert!(ok, "s_client failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("ping-from-openssl"), "{stdout}\n{stderr}");
}

/// `[identity] crls` with a CRL from `openssl ca -gencrl` (PEM, or DER after
/// `openssl crl -outform DER`): the revoked client is refused, a client with
/// the same SPIFFE ID that is not revoked passes.
fn crl_refuses_revoked_client(der: bool) {
    if skip_without_openssl() {
        return;
    }
    let pki = OpensslPki::serving_the_frontend();
    pki.issue_client("revoked", FRONTEND);
    pki.revoke_and_gencrl("revoked");

    let crl_text = pki.openssl(&["crl", "-in", "intermediate.crl", "-noout", "-text"]);
    let serial = pki.serial("revoked");
    assert!(
        crl_text.contains(&format!("Serial Number: {serial}")),
        "revoked serial {serial} not in CRL:\n{crl_text}"
    );
    assert!(
        !crl_text.contains(&format!("Serial Number: {}", pki.serial("frontend"))),
        "{crl_text}"
    );
    let crl_file = if der {
        pki.openssl(&[
            "crl",
            "-in",
            "intermediate.crl",
            "-outform",
            "DER",
            "-out",
            "intermediate.crl.der",
        ]);
        "intermediate.crl.der"
    } else {
        "intermediate.crl"
    };
    // Control: without the CRL the "revoked" certificate is a good one, so
    // the refusal below comes from the CRL and nothing else.
    {
        let (_plain, addr) = pki.start_proxy("server.key", "");
        echo_roundtrip(addr, pki.rustls_client("revoked")).expect("revoked cert without CRL");
    }

    let crls = format!("crls = [{:?}]\n", pki.path(crl_file));
    let (proxy, addr) = pki.start_proxy("server.key", &crls);

    pki.admits_frontend_but_not(addr, "revoked", "revoked", "certificate revoked");

    proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["listener=\"api\"", "result=\"cert_revoked\""],
        2.0,
    );
    proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"allow\""],
        2.0,
    );
    // A revoked certificate is refused before any policy decision.
    proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"deny\""],
        0.0,
    );
}

#[test]
fn openssl_ca_crl_refuses_the_revoked_client_only() {
    crl_refuses_revoked_client(false);
}

#[test]
fn openssl_ca_crl_in_der_form_is_read() {
    crl_refuses_revoked_client(true);
}
