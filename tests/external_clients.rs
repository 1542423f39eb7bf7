//! Third-party TLS clients through the inbound listener: `curl`,
//! `openssl s_client` and Python's `ssl` module (all OpenSSL underneath, so
//! none of them shares code with the rustls server). Each one talks to a
//! real HTTP backend through the proxy: an allowed SPIFFE ID gets the
//! backend's answer, a denied one and one without a certificate get nothing,
//! and the backend never even sees a connection for them.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const BODY: &str = "hello from backend";
const SERVER_NAME: &str = "proxy.example.org";
const FRONTEND_ONLY: &str =
    "[[inbound.allow]]\nspiffe_id = \"spiffe://example.org/ns/web/sa/frontend\"\n";
/// How long any external client may run before it is killed.
const CLIENT_LIMIT: Duration = Duration::from_secs(20);

/// A tiny HTTP/1.0 backend: reads a request up to the blank line and answers
/// `200 OK` with [`BODY`], then closes. Returns its address and a count of
/// the connections it accepted.
fn http_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    counting_backend(|mut stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let response = format!(
            "HTTP/1.0 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        let _ = stream.write_all(response.as_bytes());
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Drain until the proxy closes, so the close is orderly.
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    })
}

/// Files a client presents: leaf certificate, key, and the intermediate.
struct ClientFiles {
    /// Leaf followed by the intermediate.
    chain: PathBuf,
    key: PathBuf,
    /// Only the intermediate (for `s_client -cert_chain`).
    intermediate: PathBuf,
    /// Only the leaf (for `s_client -cert`).
    leaf: PathBuf,
}

/// A proxy allowing only `ns/web/sa/frontend`, in front of [`http_backend`].
struct Fixture {
    pki: Pki,
    proxy: Proxy,
    port: u16,
    backend_connections: Arc<AtomicUsize>,
    frontend: ClientFiles,
    intruder: ClientFiles,
}

impl Fixture {
    fn new(extra_listener_config: &str) -> Fixture {
        let pki = Pki::new();
        pki.issue_files("server", &server_leaf());
        std::fs::write(pki.path("intermediate.crt"), &pki.intermediate.cert_pem).unwrap();
        let frontend = client_files(&pki, "frontend", "ns/web/sa/frontend");
        let intruder = client_files(&pki, "intruder", "ns/web/sa/intruder");
        let (backend, backend_connections) = http_backend();
        let config = format!(
            "{}{}",
            pki.identity_toml("server"),
            inbound_table(
                "api",
                backend,
                &format!("{extra_listener_config}{FRONTEND_ONLY}")
            )
        );
        let proxy = Proxy::start(pki.dir.path(), &config);
        let port = proxy.inbound("api").port();
        Fixture {
            pki,
            proxy,
            port,
            backend_connections,
            frontend,
            intruder,
        }
    }

    fn root(&self) -> PathBuf {
        self.pki.bundle()
    }

    fn assert_backend_untouched(&self, what: &Ran) {
        assert_eq!(
            self.backend_connections.load(Ordering::SeqCst),
            0,
            "the backend saw a connection; client said:\n{what}\nlog:\n{}",
            self.proxy.logs()
        );
    }
}

fn client_files(pki: &Pki, name: &str, spiffe_path: &str) -> ClientFiles {
    let (issued, chain, key) = pki.issue_files(name, &Leaf::spiffe(spiffe_path));
    let leaf = pki.path(&format!("{name}-leaf.crt"));
    let leaf_pem = issued
        .chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&leaf, leaf_pem).unwrap();
    ClientFiles {
        chain,
        key,
        intermediate: pki.path("intermediate.crt"),
        leaf,
    }
}

/// What an external command did.
struct Ran {
    tool: &'static str,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Did the client report a TLS alert whose description contains `what`?
    /// (All three print OpenSSL's wording, e.g. "tlsv1 alert access denied".)
    fn saw_alert(&self, what: &str) -> bool {
        let text = format!("{}{}", self.stdout, self.stderr).to_lowercase();
        text.contains("alert") && text.contains(what)
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.tool, self.status, self.stdout, self.stderr
        )
    }
}

/// Run `command` with `stdin`, killing it after [`CLIENT_LIMIT`] so a hung
/// client cannot hang the suite.
fn run(tool: &'static str, command: &mut Command, stdin: &[u8]) -> Ran {
    let done = common::run_with_input(command, stdin, CLIENT_LIMIT);
    let ran = Ran {
        tool,
        status: done.status,
        stdout: done.stdout,
        stderr: done.stderr,
    };
    if done.timed_out {
        panic!("{tool} did not finish in {CLIENT_LIMIT:?}; killed\n{ran}");
    }
    ran
}

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: proxy.example.org\r\n\r\n";

/// The clients under test.
#[derive(Clone, Copy, Debug)]
enum Tool {
    Curl,
    OpenSsl,
    Python,
}

impl Tool {
    fn program(self) -> &'static str {
        match self {
            Tool::Curl => "curl",
            Tool::OpenSsl => "openssl",
            Tool::Python => "python3",
        }
    }

    /// Connect to the proxy presenting `client` (or no certificate), send an
    /// HTTP request and return what happened. `tls12` caps the client at TLS 1.2.
    fn request(self, fx: &Fixture, client: Option<&ClientFiles>, tls12: bool) -> Ran {
        match self {
            Tool::Curl => curl(fx, client, tls12),
            Tool::OpenSsl => s_client(fx, client, tls12),
            Tool::Python => python(fx, client, tls12),
        }
    }
}

fn curl(fx: &Fixture, client: Option<&ClientFiles>, tls12: bool) -> Ran {
    let port = fx.port;
    let mut cmd = Command::new("curl");
    // -q: ignore ~/.curlrc; --noproxy: never go through an HTTP(S)_PROXY.
    cmd.args(["-q", "--silent", "--show-error", "--max-time", "15"])
        .args(["--noproxy", "*"])
        .arg("--resolve")
        .arg(format!("{SERVER_NAME}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(fx.root());
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.chain).arg("--key").arg(&c.key);
    }
    if tls12 {
        cmd.args(["--tlsv1.2", "--tls-max", "1.2"]);
    }
    cmd.arg(format!("https://{SERVER_NAME}:{port}/"));
    run("curl", &mut cmd, b"")
}

fn s_client(fx: &Fixture, client: Option<&ClientFiles>, tls12: bool) -> Ran {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", fx.port))
        .args(["-servername", SERVER_NAME])
        .args(["-verify_hostname", SERVER_NAME])
        .arg("-verify_return_error")
        .arg("-CAfile")
        .arg(fx.root())
        // -quiet implies -ign_eof: keep reading the answer after stdin ends.
        .arg("-quiet");
    if let Some(c) = client {
        cmd.arg("-cert")
            .arg(&c.leaf)
            .arg("-key")
            .arg(&c.key)
            .arg("-cert_chain")
            .arg(&c.intermediate);
    }
    if tls12 {
        cmd.arg("-tls1_2");
    }
    run("openssl s_client", &mut cmd, REQUEST)
}

const PYTHON_CLIENT: &str = r#"
import socket, ssl, sys
ca, crt, key, port, tls12 = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(cafile=ca)
if crt != "-":
    ctx.load_cert_chain(certfile=crt, keyfile=key)
if tls12 == "1":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
try:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="proxy.example.org") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: proxy.example.org\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
    sys.stdout.write(data.decode("latin-1"))
except Exception as e:
    sys.stderr.write("python client error: %s: %s\n" % (type(e).__name__, e))
    sys.exit(3)
"#;

fn python(fx: &Fixture, client: Option<&ClientFiles>, tls12: bool) -> Ran {
    let dash = Path::new("-");
    let (crt, key) = match client {
        Some(c) => (c.chain.as_path(), c.key.as_path()),
        None => (dash, dash),
    };
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PYTHON_CLIENT)
        .arg(fx.root())
        .arg(crt)
        .arg(key)
        .arg(fx.port.to_string())
        .arg(if tls12 { "1" } else { "0" });
    run("python3 ssl", &mut cmd, b"")
}

/// The allowed SPIFFE ID gets the backend's answer, byte for byte.
fn allowed_gets_the_backend(tool: Tool, listener_extra: &str, tls12: bool) {
    if !require_tool(tool.program()) {
        return;
    }
    let fx = Fixture::new(listener_extra);
    let ran = tool.request(&fx, Some(&fx.frontend), tls12);
    assert!(ran.status.success(), "{ran}\nlog:\n{}", fx.proxy.logs());
    assert!(ran.stdout.contains(BODY), "{ran}");
    if !matches!(tool, Tool::Curl) {
        // curl prints only the body; the others print the whole response.
        assert!(ran.stdout.starts_with("HTTP/1.0 200 OK\r\n"), "{ran}");
    } else {
        assert_eq!(ran.stdout, BODY, "{ran}");
    }
    assert_eq!(fx.backend_connections.load(Ordering::SeqCst), 1);
    fx.proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"allow\""],
        1.0,
    );
    fx.proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["listener=\"api\"", "result=\"success\""],
        1.0,
    );
}

/// A verified peer whose SPIFFE ID no rule allows gets an alert and no data.
fn denied_gets_nothing(tool: Tool, listener_extra: &str, tls12: bool) {
    if !require_tool(tool.program()) {
        return;
    }
    let fx = Fixture::new(listener_extra);
    let ran = tool.request(&fx, Some(&fx.intruder), tls12);
    assert!(!ran.stdout.contains(BODY), "{ran}");
    assert!(!ran.stderr.contains(BODY), "{ran}");
    assert!(!ran.status.success(), "a denied client must fail\n{ran}");
    assert!(
        ran.saw_alert("access denied"),
        "expected an access_denied alert\n{ran}"
    );
    fx.proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"deny\""],
        1.0,
    );
    fx.proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"allow\""],
        0.0,
    );
    fx.proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["listener=\"api\"", "result=\"access_denied\""],
        1.0,
    );
    fx.proxy
        .expect_log("spiffe://example.org/ns/web/sa/intruder");
    fx.assert_backend_untouched(&ran);
}

/// A client without a certificate gets no data and no authz decision is made.
fn no_cert_gets_nothing(tool: Tool, listener_extra: &str, tls12: bool) {
    if !require_tool(tool.program()) {
        return;
    }
    let fx = Fixture::new(listener_extra);
    let ran = tool.request(&fx, None, tls12);
    assert!(!ran.stdout.contains(BODY), "{ran}");
    assert!(!ran.stderr.contains(BODY), "{ran}");
    assert!(
        !ran.status.success(),
        "a client without a cert must fail\n{ran}"
    );
    assert!(
        ran.saw_alert("certificate required"),
        "expected a certificate_required alert\n{ran}"
    );
    fx.proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["listener=\"api\"", "result=\"no_client_cert\""],
        1.0,
    );
    fx.proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\""],
        0.0,
    );
    fx.assert_backend_untouched(&ran);
}

#[test]
fn curl_allowed_spiffe_id_gets_backend_response() {
    allowed_gets_the_backend(Tool::Curl, "", false);
}

#[test]
fn curl_denied_spiffe_id_gets_nothing() {
    denied_gets_nothing(Tool::Curl, "", false);
}

#[test]
fn curl_without_client_cert_gets_nothing() {
    no_cert_gets_nothing(Tool::Curl, "", false);
}

#[test]
fn openssl_s_client_allowed_spiffe_id_gets_backend_response() {
    allowed_gets_the_backend(Tool::OpenSsl, "", false);
}

#[test]
fn openssl_s_client_denied_spiffe_id_gets_nothing() {
    denied_gets_nothing(Tool::OpenSsl, "", false);
}

#[test]
fn openssl_s_client_without_client_cert_gets_nothing() {
    no_cert_gets_nothing(Tool::OpenSsl, "", false);
}

#[test]
fn python_ssl_allowed_spiffe_id_gets_backend_response() {
    allowed_gets_the_backend(Tool::Python, "", false);
}

#[test]
fn python_ssl_denied_spiffe_id_gets_nothing() {
    denied_gets_nothing(Tool::Python, "", false);
}

#[test]
fn python_ssl_without_client_cert_gets_nothing() {
    no_cert_gets_nothing(Tool::Python, "", false);
}

const ALLOW_TLS12: &str = "tls_min_version = \"1.2\"\n";

/// With `tls_min_version = "1.2"`, TLS 1.2 clients get the same answers; in
/// 1.2 the server rejects the certificate before the handshake completes.
#[test]
fn tls12_clients_are_admitted_and_denied_when_the_listener_allows_1_2() {
    for tool in [Tool::Curl, Tool::OpenSsl, Tool::Python] {
        allowed_gets_the_backend(tool, ALLOW_TLS12, true);
        denied_gets_nothing(tool, ALLOW_TLS12, true);
        no_cert_gets_nothing(tool, ALLOW_TLS12, true);
    }
}

/// The default listener is TLS 1.3 only: a client capped at 1.2 is refused
/// even with an allowed certificate.
#[test]
fn tls12_only_clients_are_refused_by_default() {
    for tool in [Tool::Curl, Tool::OpenSsl, Tool::Python] {
        if !require_tool(tool.program()) {
            continue;
        }
        let fx = Fixture::new("");
        let ran = tool.request(&fx, Some(&fx.frontend), true);
        assert!(!ran.status.success(), "{ran}");
        assert!(!ran.stdout.contains(BODY), "{ran}");
        assert!(
            ran.saw_alert("protocol version"),
            "expected a protocol_version alert\n{ran}"
        );
        fx.proxy.wait_metric(
            "portcullis_tls_handshakes_total",
            &["listener=\"api\"", "result=\"incompatible\""],
            1.0,
        );
        fx.proxy.wait_metric(
            "portcullis_authz_decisions_total",
            &["listener=\"api\""],
            0.0,
        );
        fx.assert_backend_untouched(&ran);
    }
}
