//! Shared test harness, the one place for what more than one test file
//! needs: a throwaway PKI made with rcgen, the real `portcullis` binary
//! started with every listener on port 0 (the real addresses come from its
//! `--ready-file`), config snippets, backends, rustls clients, and waits.
//! Every test talks to the proxy over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::{Duration as TimeDuration, OffsetDateTime};

pub mod envoy;
pub mod netns;

/// The trust domain used by test certificates.
pub const TD: &str = "example.org";

/// A certificate authority (root, or intermediate under a root).
pub struct Ca {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// PEM of the CA chain above and including this CA, excluding the root.
    pub chain_pem: String,
}

impl Ca {
    /// A self-signed root CA.
    pub fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn, BasicConstraints::Unconstrained, 365);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            params,
            key,
            chain_pem: String::new(),
        }
    }

    /// An intermediate CA signed by `self`.
    pub fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn, BasicConstraints::Constrained(0), 180);
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        Ca {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            params,
            key,
        }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// Issue a leaf certificate.
    pub fn issue(&self, spec: &Leaf) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        if let Some(cn) = &spec.cn {
            name.push(DnType::CommonName, cn.as_str());
        }
        if let Some(o) = &spec.o {
            name.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &spec.ou {
            name.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        params.distinguished_name = name;
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().unwrap()));
        }
        for dns in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.as_str().try_into().unwrap()));
        }
        for ip in &spec.ips {
            params
                .subject_alt_names
                .push(SanType::IpAddress(ip.parse().unwrap()));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now + spec.not_before_offset;
        params.not_after = now + spec.not_after_offset;
        params.serial_number = spec
            .serial
            .map(|s| SerialNumber::from_slice(&s.to_be_bytes()));
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        Issued {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// A CRL signed by this CA revoking `serials`.
    pub fn crl(&self, serials: &[u64]) -> String {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - TimeDuration::minutes(1),
            next_update: now + TimeDuration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&s.to_be_bytes()),
                    revocation_time: now - TimeDuration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer()).unwrap().pem().unwrap()
    }
}

/// A CA certificate named `cn`, valid from a day ago for `days` days.
fn ca_params(cn: &str, constraints: BasicConstraints, days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - TimeDuration::days(1);
    params.not_after = now + TimeDuration::days(days);
    params
}

fn dn(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name
}

/// What to put in a leaf certificate.
#[derive(Clone)]
pub struct Leaf {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<String>,
    pub cn: Option<String>,
    pub o: Option<String>,
    pub ou: Option<String>,
    pub serial: Option<u64>,
    pub not_before_offset: TimeDuration,
    pub not_after_offset: TimeDuration,
}

impl Default for Leaf {
    fn default() -> Self {
        Leaf {
            uris: vec![],
            dns: vec![],
            ips: vec![],
            cn: None,
            o: None,
            ou: None,
            serial: None,
            not_before_offset: TimeDuration::minutes(-5),
            not_after_offset: TimeDuration::hours(1),
        }
    }
}

impl Leaf {
    /// A workload certificate with one SPIFFE ID, e.g. `spiffe("ns/web/sa/frontend")`.
    pub fn spiffe(path: &str) -> Leaf {
        Leaf {
            uris: vec![format!("spiffe://{TD}/{path}")],
            ..Leaf::default()
        }
    }
}

/// An issued leaf.
pub struct Issued {
    pub chain_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl Issued {
    /// A certificate chain (leaf first) and its private key, from PEM.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Issued {
        let cert_der = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .next()
            .expect("a certificate in the chain")
            .unwrap();
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .unwrap()
            .expect("a private key")
            .secret_der()
            .to_vec();
        Issued {
            chain_pem: chain_pem.to_string(),
            cert_der,
            key_pem: key_pem.to_string(),
            key_der,
        }
    }

    /// Write `name.crt` and `name.key` (0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.chain_pem).unwrap();
        write_private(&key, &self.key_pem);
        (cert, key)
    }

    /// The chain and key as rustls takes them.
    pub fn rustls_chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = rustls_pemfile::certs(&mut self.chain_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::try_from(self.key_der.clone()).unwrap();
        (chain, key)
    }
}

/// Write a file readable by the owner only.
pub fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A test PKI: root, intermediate, and a directory to write files into.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub root: Ca,
    pub intermediate: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::named("Test")
    }

    /// A PKI whose CA names start with `prefix` (distinct names matter: a
    /// chain is built by matching issuer names).
    pub fn named(prefix: &str) -> Pki {
        let root = Ca::root(&format!("{prefix} Root CA"));
        let intermediate = root.intermediate(&format!("{prefix} Intermediate CA"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bundle.crt"), &root.cert_pem).unwrap();
        Pki {
            dir,
            root,
            intermediate,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The trust bundle file (the root).
    pub fn bundle(&self) -> PathBuf {
        self.path("bundle.crt")
    }

    /// Issue from the intermediate and write `name.crt`/`name.key`.
    pub fn issue_files(&self, name: &str, spec: &Leaf) -> (Issued, PathBuf, PathBuf) {
        let issued = self.intermediate.issue(spec);
        let (cert, key) = issued.write(self.dir.path(), name);
        (issued, cert, key)
    }

    /// The `[identity]` section for a proxy whose cert is `name.crt`.
    pub fn identity_toml(&self, name: &str) -> String {
        format!(
            "[identity]\nsource = \"files\"\ncert = {:?}\nkey = {:?}\ntrust_bundle = {:?}\n",
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
            self.bundle()
        )
    }
}

/// Issue the proxy's own certificate (`server.crt`: DNS `proxy.example.org`,
/// SPIFFE ID `ns/api/sa/server`) and write the config of one inbound
/// listener `api` on port 0 in front of `backend`: `global_extra` goes
/// before the `[[inbound]]` table, `listener_body` inside it (its keys, then
/// its allow rules). The address it gets is `Proxy::inbound("api")`.
pub fn inbound_config(
    pki: &Pki,
    backend: SocketAddr,
    global_extra: &str,
    listener_body: &str,
) -> String {
    pki.issue_files("server", &server_leaf());
    format!(
        "{}\n{global_extra}\n{}",
        pki.identity_toml("server"),
        inbound_table("api", backend, listener_body)
    )
}

/// An `[[inbound]]` table `name` on port 0 in front of `backend`; `body`
/// goes inside it (its keys, then its `[[inbound.allow]]` rules).
pub fn inbound_table(name: &str, backend: SocketAddr, body: &str) -> String {
    inbound_table_on(name, SocketAddr::from(([127, 0, 0, 1], 0)), backend, body)
}

/// [`inbound_table`] on a given address, for the few tests about one.
pub fn inbound_table_on(name: &str, listen: SocketAddr, backend: SocketAddr, body: &str) -> String {
    format!(
        "\n[[inbound]]\nname = \"{name}\"\nlisten = \"{listen}\"\nbackend = \"{backend}\"\n{body}\n"
    )
}

/// An `[[outbound]]` table `name` on port 0 dialing `upstream`, expecting
/// `expect` (an inline table); `body` goes inside it.
pub fn outbound_table(
    name: &str,
    upstream: impl std::fmt::Display,
    expect: &str,
    body: &str,
) -> String {
    format!(
        "\n[[outbound]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
         expect = {expect}\n{body}\n"
    )
}

/// An allow rule admitting `spiffe://example.org/{path}`.
pub fn allow_spiffe(path: &str) -> String {
    format!("[[inbound.allow]]\nspiffe_id = \"spiffe://{TD}/{path}\"\n")
}

/// The proxy's own certificate in [`inbound_config`]: DNS
/// `proxy.example.org`, SPIFFE ID `ns/api/sa/server`.
pub fn server_leaf() -> Leaf {
    Leaf {
        dns: vec!["proxy.example.org".into()],
        ..Leaf::spiffe("ns/api/sa/server")
    }
}

/// A port that was free a moment ago. Chosen at random below the kernel's
/// ephemeral range (32768+), so it cannot collide with a client socket's
/// source port, and checked by binding it.
///
/// Only for a server that must come back on the same address after a
/// restart and cannot report a port-0 address (the CA server in
/// `ca_rotation.rs`, an external tool): between the check and the server's
/// own bind another test may take the port. Everything the proxy binds
/// uses port 0 and the ready file instead; see [`Proxy`].
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id()) << 20;
    let _ = STATE.compare_exchange(0, seed | 1, Ordering::SeqCst, Ordering::SeqCst);
    let step = |mut x: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    loop {
        let previous = STATE
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| Some(step(x)))
            .unwrap_or(1);
        let x = step(previous);
        let port = 20000 + (x % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A loopback address where nothing listens, reserved for as long as the
/// returned socket lives: it is bound but never listening, so a connection
/// is refused and no other test can take the port meanwhile.
pub fn closed_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A running `portcullis run`; killed on drop.
///
/// Every listener the tests give it binds port 0, and the proxy reports the
/// ports it got in its `--ready-file`: no two tests can race for a port.
pub struct Proxy {
    pub child: Child,
    /// The admin listener, as the ready file reports it.
    pub admin: SocketAddr,
    pub log: Arc<Mutex<String>>,
    pub config_path: PathBuf,
    /// Holds the ready file, apart from the config (whose folder is watched).
    ready_dir: tempfile::TempDir,
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

impl Proxy {
    /// Start `portcullis run` with `config` (an `[admin]` section on port 0
    /// is put first) and wait until `/readyz` answers 200.
    pub fn start(dir: &Path, config: &str) -> Proxy {
        let mut proxy = Proxy::start_unready(dir, config);
        proxy.wait_ready();
        proxy
    }

    /// Start `portcullis run` and wait only until every listener is bound
    /// (the proxy may be alive but not ready).
    pub fn start_unready(dir: &Path, config: &str) -> Proxy {
        Proxy::launch(&write_proxy_config(dir, config))
    }

    /// Start `portcullis run` on a config file the caller wrote, `[admin]`
    /// included, and wait until every listener is bound.
    pub fn launch(config_path: &Path) -> Proxy {
        Proxy::launch_with(Command::new(binary()), config_path)
    }

    /// Like [`Proxy::launch`], through `command`, to which the arguments
    /// `run -c CONFIG --ready-file FILE` are added: the binary itself, or a
    /// wrapper such as `sh -c 'ulimit -n 64 && exec "$@"' sh BINARY`.
    pub fn launch_with(mut command: Command, config_path: &Path) -> Proxy {
        let ready_dir = tempfile::tempdir().unwrap();
        let ready_file = ready_dir.path().join("ready.json");
        let (mut child, log) = spawn_logged(
            command
                .args(["run", "-c"])
                .arg(config_path)
                .arg("--ready-file")
                .arg(&ready_file),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        let admin = loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                let bound: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("ready file {text:?}: {e}"));
                break address(&bound["admin"])
                    .unwrap_or_else(|| panic!("the ready file names no admin listener: {text}"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "portcullis exited early ({status}); log:\n{}",
                    log.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "portcullis did not bind its listeners in 15s; log:\n{}",
                    log.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Proxy {
            child,
            admin,
            log,
            config_path: config_path.to_path_buf(),
            ready_dir,
        }
    }

    /// Wait until `/readyz` answers 200.
    pub fn wait_ready(&mut self) {
        if !answers_200(
            &mut self.child,
            self.admin,
            "/readyz",
            Duration::from_secs(15),
        ) {
            panic!("portcullis not ready in 15s; log:\n{}", self.logs());
        }
    }

    /// Where the proxy says its listeners are now: the ready file, which a
    /// reload that moves a listener rewrites before it answers.
    pub fn listeners(&self) -> serde_json::Value {
        let path = self.ready_dir.path().join("ready.json");
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The address of inbound listener `name`.
    pub fn inbound(&self, name: &str) -> SocketAddr {
        self.listener("inbound", name)
    }

    /// The address of outbound listener `name`.
    pub fn outbound(&self, name: &str) -> SocketAddr {
        self.listener("outbound", name)
    }

    fn listener(&self, kind: &str, name: &str) -> SocketAddr {
        let bound = self.listeners();
        address(&bound[kind][name])
            .unwrap_or_else(|| panic!("no {kind} listener {name:?} in {bound}"))
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait (5 s at most) until the log contains `needle`; panics with the
    /// log otherwise.
    pub fn expect_log(&self, needle: &str) {
        if !self.wait_for_log(needle, Duration::from_secs(5)) {
            panic!("{needle:?} not logged in 5s; log:\n{}", self.logs());
        }
    }

    /// Wait until the log contains `needle` (true) or `timeout` passes (false).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs().contains(needle))
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap().1
    }

    /// The sum of `metric{labels}` now (see [`metric_value`]).
    pub fn metric(&self, metric: &str, labels: &[&str]) -> f64 {
        metric_value(&self.metrics(), metric, labels)
    }

    /// Wait until `metric{labels}` equals `want`; panics with the metrics
    /// and the log after 10 s. (Waiting matters even after the client is
    /// done: the proxy counts a failed handshake just after it sends the
    /// alert, so a client can exit a moment before the counter moves.)
    pub fn wait_metric(&self, metric: &str, labels: &[&str], want: f64) {
        let timeout = Duration::from_secs(10);
        if !wait_until(timeout, || self.metric(metric, labels) == want) {
            panic!(
                "{metric}{labels:?} = {}, never {want} in {timeout:?}\n{}\nlog:\n{}",
                self.metric(metric, labels),
                self.metrics(),
                self.logs()
            );
        }
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        unsafe_kill(self.child.id(), "TERM");
    }
}

impl Proxy {
    /// Replace the config file of a proxy started with [`Proxy::start`] by
    /// `body` after the same `[admin]` section (on port 0, as before), the
    /// way config managers do: written aside, then renamed over.
    pub fn rewrite_config(&self, body: &str) {
        replace_atomically(&self.config_path, &format!("{ADMIN_ON_PORT_0}{body}"));
    }
}

/// The `[admin]` section [`Proxy::start`] puts first.
const ADMIN_ON_PORT_0: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";

/// Replace a file the way editors, agents and config managers do: write
/// the new content aside (readable by the owner only, as a key must be),
/// then rename it over the old one, so a reader never sees half of it.
pub fn replace_atomically(path: &Path, contents: &str) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".tmp");
    let aside = PathBuf::from(aside);
    write_private(&aside, contents);
    std::fs::rename(&aside, path).unwrap();
}

/// `"127.0.0.1:8443"` in a ready file.
fn address(value: &serde_json::Value) -> Option<SocketAddr> {
    value.as_str()?.parse().ok()
}

/// Write `config` after an `[admin]` section on port 0 into a new file in
/// `dir`; returns its path.
pub fn write_proxy_config(dir: &Path, config: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("portcullis-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, format!("{ADMIN_ON_PORT_0}{config}")).unwrap();
    path
}

/// Run `portcullis ARGS` to the end; fails the test with its stderr
/// unless it succeeds. Returns its stdout.
pub fn portcullis_ok<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Vec<u8> {
    let mut command = Command::new(binary());
    command.args(args);
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Spawn `command` with `RUST_LOG=info`, stdout discarded and stderr
/// collected line by line (see [`collect_lines`]).
pub fn spawn_logged(command: &mut Command) -> (Child, Arc<Mutex<String>>) {
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let log = collect_lines(child.stderr.take().unwrap());
    (child, log)
}

/// Collect the lines of a child's output as they come, in a thread.
pub fn collect_lines(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// Wait until `check` holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    assert!(wait_until(timeout, check), "timed out waiting for {what}");
}

/// Poll `condition` every 20 ms until it holds (true) or `timeout` passes
/// (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send a signal with the `kill` command (no libc dependency needed).
pub fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Minimal HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, Duration::from_secs(5))
}

/// Minimal HTTP/1.0 POST without a body (a reload may take a while, hence
/// the longer wait); returns (status, body).
pub fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "POST", path, Duration::from_secs(30))
}

fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    read_timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(read_timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(parse_http_response(&response))
}

/// The status (0 when there is none) and body of an HTTP/1.x response.
pub fn parse_http_response(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Poll `GET path` on `addr` until it answers 200 (true), or `child`
/// exits or `timeout` passes (false).
pub fn answers_200(child: &mut Child, addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    wait_until(timeout, || {
        matches!(http_get(addr, path), Ok((200, _))) || matches!(child.try_wait(), Ok(Some(_)))
    }) && matches!(child.try_wait(), Ok(None))
}

/// Sum of every sample of `metric` whose labels contain all `labels` (`k="v"` strings).
pub fn metric_value(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A backend on a loopback port of its own (port 0) that runs `handle` in
/// a thread of its own for every connection it accepts.
pub fn backend(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || handle(stream));
        }
    });
    addr
}

/// Echo what `stream` sends until it half-closes, then close the write
/// side; returns how it ended (`eof`, or the read or write error).
pub fn echo_until_eof(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let how = loop {
        match stream.read(&mut buf) {
            Ok(0) => break "eof".to_string(),
            Ok(n) => {
                if let Err(e) = stream.write_all(&buf[..n]) {
                    break format!("write error: {e}");
                }
            }
            Err(e) => break format!("read error: {e}"),
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Write);
    how
}

/// A TCP echo backend (see [`echo_until_eof`]).
pub fn echo_backend() -> SocketAddr {
    backend(|mut stream| {
        echo_until_eof(&mut stream);
    })
}

/// A backend that records everything it receives per connection and answers
/// `reply` after the client half-closes.
pub fn recording_backend(reply: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let addr = backend(move |mut stream| {
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        sink.lock().unwrap().push(got);
        let _ = stream.write_all(reply);
        let _ = stream.shutdown(std::net::Shutdown::Write);
    });
    (addr, seen)
}

/// A backend that counts the connections it accepts and hands each to
/// `handle`.
pub fn counting_backend(
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let addr = backend(move |stream| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        handle(stream);
    });
    (addr, count)
}

/// Plaintext through an outbound listener: send `message`, half-close,
/// read to the end.
pub fn plain_exchange(addr: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(message)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut got = Vec::new();
    stream.read_to_end(&mut got)?;
    Ok(got)
}

/// Write `data` and read exactly as many bytes back; they must match.
pub fn exchange(stream: &mut Client, data: &[u8]) -> Result<(), String> {
    stream.write_all(data).map_err(|e| format!("write: {e}"))?;
    stream.flush().map_err(|e| format!("flush: {e}"))?;
    let mut back = vec![0u8; data.len()];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("read: {e}"))?;
    if back == data {
        Ok(())
    } else {
        Err(format!(
            "echo differs: sent {:?}, got {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&back)
        ))
    }
}

/// [`exchange`], failing the test on any problem.
pub fn echo(stream: &mut Client, data: &[u8]) {
    if let Err(e) = exchange(stream, data) {
        panic!("echo through the proxy: {e}");
    }
}

/// A read that gave up because of the socket's read timeout: the peer never
/// closed.
pub fn is_read_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Read until EOF or an error; returns what was read and how it ended.
pub fn read_until_closed(reader: &mut impl Read) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Read a raw TCP stream until the proxy closes it (EOF or reset); panics
/// when the read timeout (`limit`) passes first. Returns how long it took.
pub fn wait_raw_closed(tcp: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    tcp.set_read_timeout(Some(limit)).unwrap();
    let (_, end) = read_until_closed(tcp);
    if let Err(e) = &end {
        assert!(
            !is_read_timeout(e),
            "the proxy did not close the connection within {limit:?}"
        );
    }
    started.elapsed()
}

/// Wait until the proxy closes `stream` (EOF or an error other than the read
/// timeout); returns how long that took, or an error if it stayed open for
/// `limit` or sent data.
pub fn wait_closed(stream: &mut Client, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    stream.sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(0) => Ok(started.elapsed()),
        Ok(n) => Err(format!("unexpected {n} bytes from the proxy")),
        Err(e) if is_read_timeout(&e) => Err(format!("still open after {limit:?}")),
        Err(_) => Ok(started.elapsed()),
    }
}

/// The serial (hex) of the certificate the server at `addr` presents now,
/// or None when the handshake fails.
pub fn served_serial(
    addr: SocketAddr,
    server_name: &str,
    client: &Arc<rustls::ClientConfig>,
) -> Option<String> {
    let stream = tls_connect(addr, server_name, client.clone()).ok()?;
    let der = stream.conn.peer_certificates()?.first()?.clone();
    Some(portcullis::inspect::summarize_der(&der).ok()?.serial)
}

/// The SPIFFE ID of the frontend workload most tests admit.
pub const FRONTEND_ID: &str = "spiffe://example.org/ns/web/sa/frontend";

/// A client config presenting a frontend certificate of `pki` (SPIFFE ID
/// [`FRONTEND_ID`], CN `frontend`).
pub fn frontend_client(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let frontend = pki.intermediate.issue(&Leaf {
        cn: Some("frontend".into()),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    client_config(Some(&frontend), &pki.root.cert_pem)
}

/// [`inbound_config`] whose listener `api` admits only the frontend.
pub fn frontend_only_config(
    pki: &Pki,
    backend: SocketAddr,
    listener_extra: &str,
    global_extra: &str,
) -> String {
    let body = format!("{listener_extra}\n{}", allow_spiffe("ns/web/sa/frontend"));
    inbound_config(pki, backend, global_extra, &body)
}

/// The payments workload's certificate: DNS `payments.pay.svc`, SPIFFE ID
/// `ns/pay/sa/payments`.
pub fn payments_leaf() -> Leaf {
    Leaf {
        dns: vec!["payments.pay.svc".into()],
        ..Leaf::spiffe("ns/pay/sa/payments")
    }
}

/// A proxy with the frontend's identity (`frontend.crt`, issued here) and
/// one outbound listener `payments` dialing `upstream` as
/// `payments.pay.svc` and expecting `expect` (an inline table). Returns it
/// and where the listener is.
pub fn frontend_outbound(pki: &Pki, upstream: SocketAddr, expect: &str) -> (Proxy, SocketAddr) {
    pki.issue_files("frontend", &Leaf::spiffe("ns/web/sa/frontend"));
    let config = format!(
        "{}{}",
        pki.identity_toml("frontend"),
        outbound_table(
            "payments",
            upstream,
            expect,
            "server_name = \"payments.pay.svc\""
        )
    );
    let proxy = Proxy::start(pki.dir.path(), &config);
    let addr = proxy.outbound("payments");
    (proxy, addr)
}

/// A running proxy with one inbound listener `api` admitting only the
/// frontend, and a client config for the frontend.
pub struct ApiProxy {
    pub proxy: Proxy,
    /// Where `api` is bound.
    pub addr: SocketAddr,
    pub client: Arc<rustls::ClientConfig>,
    pub pki: Pki,
}

impl ApiProxy {
    /// Start it in front of `backend`: `listener_extra` goes into the
    /// `[[inbound]]` table, `global_extra` before it (e.g. `[shutdown]`).
    pub fn start(backend: SocketAddr, listener_extra: &str, global_extra: &str) -> ApiProxy {
        let pki = Pki::new();
        let config = frontend_only_config(&pki, backend, listener_extra, global_extra);
        let proxy = Proxy::start(pki.dir.path(), &config);
        let addr = proxy.inbound("api");
        ApiProxy {
            proxy,
            addr,
            client: frontend_client(&pki),
            pki,
        }
    }

    /// An established, admitted connection: handshake plus one echo round trip.
    pub fn admitted(&self) -> Client {
        let mut stream = tls_connect(self.addr, "proxy.example.org", self.client.clone())
            .expect("TLS handshake with the proxy");
        echo(&mut stream, b"hello");
        stream
    }
}

/// A rustls client config presenting `client` (if any) and trusting `roots_pem`.
pub fn client_config(client: Option<&Issued>, roots_pem: &str) -> Arc<rustls::ClientConfig> {
    client_config_on(rustls::crypto::ring::default_provider(), client, roots_pem)
}

/// [`client_config`] on a chosen crypto provider (TLS 1.3 only).
pub fn client_config_on(
    provider: rustls::crypto::CryptoProvider,
    client: Option<&Issued>,
    roots_pem: &str,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(provider);
    let roots = root_store(roots_pem);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(issued) => {
            let (chain, key) = issued.rustls_chain_and_key();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// The certificates of `roots_pem` as trust anchors.
fn root_store(roots_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A blocking TLS client connection to the proxy.
pub type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connect and complete the handshake, then prove the connection works by
/// exchanging one message. Returns the stream or the error seen.
pub fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Client> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Connect, send `ping`, read the echo. Ok(()) only when the echo comes back:
/// in TLS 1.3 a server's rejection of the client certificate arrives after
/// the client thinks the handshake is done, so a round trip is the proof.
pub fn echo_roundtrip(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let mut stream = tls_connect(addr, "proxy.example.org", config).map_err(|e| e.to_string())?;
    stream.write_all(b"ping").map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
    if &buf == b"ping" {
        Ok(())
    } else {
        Err(format!("unexpected echo {buf:?}"))
    }
}

/// True when the test must not skip a missing external tool.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Is `tool` on PATH? In CI a missing tool fails the test; elsewhere the
/// caller skips loudly.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if in_ci() {
            panic!("{tool} is required in CI but was not found on PATH");
        }
        eprintln!("*** SKIPPED: {tool} not found on PATH (set CI=1 to make this a failure) ***");
    }
    found
}

/// Like `client_config`, but the server's chain is verified without a host
/// name check: for servers that carry only a SPIFFE ID, as CA-issued
/// certificates do. The chain must still lead to `roots_pem`.
pub fn client_config_any_name(
    client: Option<&Issued>,
    roots_pem: &str,
) -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);
    impl rustls::client::danger::ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            use rustls::{CertificateError as C, Error as E};
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(E::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
    let base = client_config(client, roots_pem);
    let roots = root_store(roots_pem);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let mut config = (*base).clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyName(verifier)));
    Arc::new(config)
}

/// What a command run by [`run_with_input`] did.
pub struct Finished {
    pub status: std::process::ExitStatus,
    /// Killed at the time limit.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run `command` with `input` on its stdin (then closed), killing it after
/// `limit` so a hung tool cannot hang the suite.
pub fn run_with_input(command: &mut Command, input: &[u8], limit: Duration) -> Finished {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let bytes = input.to_vec();
    let writer = std::thread::spawn(move || {
        // Dropping `stdin` afterwards closes the child's input.
        let _ = stdin.write_all(&bytes);
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break (status, false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break (child.wait().unwrap(), true);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Finished {
        status,
        timed_out,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Run `command` to completion with no input, failing the test if it is
/// still running after `limit`; returns (success, stdout, stderr).
pub fn run_bounded(mut command: Command, limit: Duration) -> (bool, String, String) {
    let done = run_with_input(&mut command, &[], limit);
    if done.timed_out {
        panic!(
            "{command:?} still running after {limit:?}; stdout:\n{}\nstderr:\n{}",
            done.stdout, done.stderr
        );
    }
    (done.status.success(), done.stdout, done.stderr)
}
