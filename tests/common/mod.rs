//! Shared test harness: a throwaway PKI made with rcgen, the real
//! `portcullis` binary started on loopback ports, backends, and rustls
//! clients. Every test talks to the proxy over real sockets.
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
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - TimeDuration::days(1);
        params.not_after = OffsetDateTime::now_utc() + TimeDuration::days(365);
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
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - TimeDuration::days(1);
        params.not_after = OffsetDateTime::now_utc() + TimeDuration::days(180);
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
        let mut child = command
            .args(["run", "-c"])
            .arg(config_path)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = collect_lines(child.stderr.take().unwrap());
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
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("portcullis exited early ({status}); log:\n{}", self.logs());
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!("portcullis not ready in 15s; log:\n{}", self.logs());
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

    /// Wait until the log contains `needle` (true) or `timeout` passes (false).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs().contains(needle))
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap().1
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
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
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

/// A TCP echo backend on a free port, running in a thread per connection.
/// Echoes until the client half-closes, then closes its write side.
pub fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// A backend that records everything it receives per connection and answers
/// `reply` after the client half-closes.
pub fn recording_backend(reply: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let _ = stream.read_to_end(&mut got);
                sink.lock().unwrap().push(got);
                let _ = stream.write_all(reply);
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, seen)
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
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
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
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
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
