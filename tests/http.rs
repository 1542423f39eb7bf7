//! The HTTP-aware listener (`protocol = "http"`) with real clients: curl
//! over HTTP/1.1 and HTTP/2, Python's `http.client`, and httpx with h2. The
//! backend (hyper, in this test) answers every request with the headers it
//! received, so the tests see exactly what the application would see:
//! identity headers for SPIFFE, DNS-only and CN-only certificates, never a
//! header the client tried to spoof, per-route decisions on one keep-alive
//! connection and one HTTP/2 connection, a WebSocket-style upgrade, 100 MB
//! each way, and a reload of routes under load.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

const FRONTEND: &str = "ns/web/sa/frontend";

/// What the backend saw of every request: its header lines, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// A hyper HTTP/1.1 (and h2c) backend on its own runtime:
/// - `GET /bytes/N` streams N bytes of a known pattern;
/// - `POST /sha256` answers the SHA-256 of the body and its length;
/// - an `Upgrade` request is answered 101 and the connection then echoes;
/// - anything else is answered with the request's headers, one
///   `name: value` per line, which are also recorded in `Seen`.
fn backend() -> (SocketAddr, Seen) {
    backend_speaking(false)
}

/// [`backend`] speaking HTTP/2 with prior knowledge (h2c) when `h2c`.
fn backend_speaking(h2c: bool) -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let record = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let record = record.clone();
                        async move { Ok::<_, Infallible>(answer(request, record).await) }
                    });
                    let io = TokioIo::new(stream);
                    if h2c {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .with_upgrades()
                            .await;
                    }
                });
            }
        });
    });
    (addr, seen)
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(mut request: Request<Incoming>, seen: Seen) -> Response<Body> {
    let path = request.uri().path().to_string();
    if request.headers().contains_key(hyper::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: usize = n.parse().unwrap();
        return Response::new(PatternBody { sent: 0, total }.boxed());
    }
    if path == "/sha256" {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut length = 0usize;
        let mut body = request.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                context.update(data);
                length += data.len();
            }
        }
        let hex: String = context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        return Response::new(Full::new(Bytes::from(format!("{hex} {length}"))).boxed());
    }
    let (parts, mut body) = request.into_parts();
    // Read the body, as a real application would, so the connection can
    // carry the next request.
    while let Some(Ok(_)) = body.frame().await {}
    let request = Request::from_parts(parts, ());
    let lines: Vec<String> = request
        .headers()
        .iter()
        .map(|(k, v)| format!("{}: {}", k.as_str(), String::from_utf8_lossy(v.as_bytes())))
        .collect();
    seen.lock().unwrap().push(lines.join("\n"));
    let body = format!("{} {}\n{}\n", request.method(), path, lines.join("\n"));
    Response::new(Full::new(Bytes::from(body)).boxed())
}

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// A body of `total` bytes of [`pattern`], made as it is read.
struct PatternBody {
    sent: usize,
    total: usize,
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.total {
            return std::task::Poll::Ready(None);
        }
        let len = 65536.min(self.total - self.sent);
        let chunk = pattern(self.sent, len);
        self.sent += len;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

/// A proxy with one HTTP listener `api` in front of a fresh [`backend`].
struct Fixture {
    pki: Pki,
    proxy: Proxy,
    addr: SocketAddr,
    backend: SocketAddr,
    seen: Seen,
}

impl Fixture {
    fn new(listener_body: &str) -> Fixture {
        let pki = Pki::new();
        let (backend, seen) = backend();
        let config = inbound_config(
            &pki,
            backend,
            "",
            &format!("protocol = \"http\"\n{listener_body}"),
        );
        let proxy = Proxy::start(pki.dir.path(), &config);
        let addr = proxy.inbound("api");
        Fixture {
            pki,
            proxy,
            addr,
            backend,
            seen,
        }
    }

    /// Issue `spec` and write `name.crt` (chain) and `name.key`.
    fn client(&self, name: &str, spec: &Leaf) -> (Issued, PathBuf, PathBuf) {
        self.pki.issue_files(name, spec)
    }

    fn curl(&self, cert: &PathBuf, key: &PathBuf, args: &[&str], path: &str) -> (String, String) {
        let mut command = Command::new("curl");
        command
            .args([
                "-q",
                "--silent",
                "--show-error",
                "--max-time",
                "60",
                "--noproxy",
                "*",
            ])
            .arg("--resolve")
            .arg(format!("proxy.example.org:{}:127.0.0.1", self.addr.port()))
            .arg("--cacert")
            .arg(self.pki.bundle())
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args(args)
            .arg(format!(
                "https://proxy.example.org:{}{path}",
                self.addr.port()
            ));
        let done = run_with_input(&mut command, b"", Duration::from_secs(90));
        assert!(!done.timed_out, "curl hung");
        (done.stdout, done.stderr)
    }

    fn metric(&self, metric: &str, labels: &[&str]) -> f64 {
        metric_value(&self.proxy.metrics(), metric, labels)
    }

    /// `python3 -c script CA CERT KEY PORT`: the client scripts' arguments.
    fn python(&self, script: &str, cert: &PathBuf, key: &PathBuf) -> Command {
        let mut command = Command::new("python3");
        command
            .arg("-c")
            .arg(script)
            .arg(self.pki.bundle())
            .arg(cert)
            .arg(key)
            .arg(self.addr.port().to_string());
        command
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The value of `name` in a header block as the backend echoes it.
fn header<'a>(block: &'a str, name: &str) -> Vec<&'a str> {
    block
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

const ALL_HEADERS: &str = "identity_headers = [\"xfcc\", \"client-cert\", \"spiffe-id\"]\n\
                           client_cert_chain = true\nallow_any_authenticated = true\n";

#[test]
fn identity_headers_for_spiffe_dns_only_and_cn_only_peers() {
    if !require_tool("curl") {
        return;
    }
    let fx = Fixture::new(ALL_HEADERS);
    let by = "By=spiffe://example.org/ns/api/sa/server";
    let intermediate = b64(&fx.pki.intermediate.cert_der);
    let cases = [
        (
            "spiffe",
            Leaf {
                dns: vec!["web.example.org".into()],
                cn: Some("frontend".into()),
                o: Some("Example".into()),
                ..Leaf::spiffe(FRONTEND)
            },
            "Subject=\"O=Example,CN=frontend\";URI=spiffe://example.org/ns/web/sa/frontend;DNS=web.example.org",
            Some("spiffe://example.org/ns/web/sa/frontend"),
        ),
        (
            "dns-only",
            Leaf {
                dns: vec!["db.example.org".into(), "db2.example.org".into()],
                ..Leaf::default()
            },
            "Subject=\"\";URI=;DNS=db.example.org;DNS=db2.example.org",
            None,
        ),
        (
            "cn-only",
            Leaf {
                cn: Some("legacy batch".into()),
                ..Leaf::default()
            },
            "Subject=\"CN=legacy batch\";URI=",
            None,
        ),
    ];
    for (name, spec, details, spiffe) in cases {
        let (issued, cert, key) = fx.client(name, &spec);
        let hash = sha256_hex(&issued.cert_der);
        for version in ["--http1.1", "--http2"] {
            let (out, err) = fx.curl(&cert, &key, &[version], "/whoami");
            assert!(
                out.starts_with("GET /whoami\n"),
                "{name} {version}: {out}{err}"
            );
            assert_eq!(
                header(&out, "x-forwarded-client-cert"),
                [format!("{by};Hash={hash};{details}").as_str()],
                "{name} {version}"
            );
            assert_eq!(
                header(&out, "client-cert"),
                [format!(":{}:", b64(&issued.cert_der)).as_str()],
                "{name} {version}"
            );
            assert_eq!(
                header(&out, "client-cert-chain"),
                [format!(":{intermediate}:").as_str()],
                "{name} {version}"
            );
            let want_spiffe: Vec<&str> = spiffe.into_iter().collect();
            assert_eq!(header(&out, "x-spiffe-id"), want_spiffe, "{name} {version}");
            assert_eq!(header(&out, "x-forwarded-proto"), ["https"]);
            assert_eq!(header(&out, "x-forwarded-for"), ["127.0.0.1"]);
            assert_eq!(header(&out, "forwarded"), ["for=127.0.0.1;proto=https"]);
            assert_eq!(
                header(&out, "host"),
                [format!("proxy.example.org:{}", fx.addr.port()).as_str()],
                "the client's Host (or :authority) reaches the backend"
            );
        }
    }
    assert_eq!(
        fx.metric(
            "portcullis_http_requests_total",
            &[
                "listener=\"api\"",
                "route=\"default\"",
                "code_class=\"2xx\""
            ]
        ),
        6.0
    );
}

/// Python: spoofed identity headers in every spelling over one HTTP/1.1
/// connection with `http.client`, and over HTTP/2 with httpx, once with a
/// 40 KB header so the header block spans CONTINUATION frames.
const SPOOFER: &str = r#"
import http.client, ssl, sys, httpx
ca, crt, key, port = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(crt, key)
spoofs = [
    ("X-Forwarded-Client-Cert", "By=spiffe://evil;Hash=00;URI=spiffe://example.org/ns/admin"),
    ("x-forwarded-client-cert", "evil-lower"),
    ("X-FORWARDED-CLIENT-CERT", "evil-upper"),
    ("Client-Cert", ":ZXZpbA==:"),
    ("CLIENT-CERT-CHAIN", ":ZXZpbA==:"),
    ("X-Spiffe-Id", "spiffe://example.org/ns/admin"),
    ("x-spiffe-id", "spiffe://example.org/ns/evil"),
    ("X-Forwarded-For", "10.6.6.6"),
    ("Forwarded", "for=10.6.6.6"),
    ("X-Forwarded-Proto", "evil"),
]
conn = http.client.HTTPSConnection("proxy.example.org", int(port), context=ctx)
conn._create_connection = lambda *a, **k: __import__("socket").create_connection(("127.0.0.1", int(port)))
for name, value in spoofs:
    conn.putrequest("GET", "/h1")
    conn.putheader(name, value)
    conn.putheader("Connection", "keep-alive, x-spiffe-id")
    conn.endheaders()
    r = conn.getresponse()
    sys.stdout.write("=== h1 %s %d\n%s\n" % (name, r.status, r.read().decode()))
transport = httpx.HTTPTransport(http2=True, verify=ctx)
with httpx.Client(transport=transport, base_url="https://proxy.example.org:%s" % port) as client:
    for pad in (0, 40000):
        headers = [(n.lower(), v) for n, v in spoofs[:1] + spoofs[3:]]
        if pad:
            headers.append(("x-padding", "p" * pad))
        r = client.get("/h2", headers=headers, extensions={"sni_hostname": "proxy.example.org"})
        sys.stdout.write("=== h2 pad=%d %d %s\n%s\n" % (pad, r.status_code, r.http_version, r.text))
"#;

#[test]
fn spoofed_identity_headers_never_reach_the_backend() {
    if !require_tool("python3") {
        return;
    }
    // Once with every identity header set (ours replace the client's), once
    // with only the SPIFFE ID header (the others must simply disappear).
    for (listener, sets_all) in [
        (ALL_HEADERS.to_string(), true),
        (
            "identity_headers = [\"spiffe-id\"]\nallow_any_authenticated = true\n".to_string(),
            false,
        ),
    ] {
        let fx = Fixture::new(&listener);
        let (issued, cert, key) = fx.client("frontend", &Leaf::spiffe(FRONTEND));
        let script = SPOOFER.replace(
            "base_url=\"https://proxy.example.org:%s\" % port",
            "base_url=\"https://127.0.0.1:%s\" % port",
        );
        let mut command = fx.python(&script, &cert, &key);
        let done = run_with_input(&mut command, b"", Duration::from_secs(60));
        assert!(
            done.status.success(),
            "python failed:\n{}\n{}",
            done.stdout,
            done.stderr
        );
        let answers: Vec<&str> = done
            .stdout
            .split("=== ")
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(answers.len(), 12, "{}", done.stdout);
        let hash = sha256_hex(&issued.cert_der);
        for answer in answers {
            assert!(answer.contains(" 200"), "{answer}");
            assert!(
                !answer.to_lowercase().contains("evil"),
                "a spoofed value got through:\n{answer}"
            );
            assert!(!answer.contains("10.6.6.6"), "{answer}");
            assert!(!answer.contains("ns/admin"), "{answer}");
            let xfcc = header(answer, "x-forwarded-client-cert");
            let client_cert = header(answer, "client-cert");
            let chain = header(answer, "client-cert-chain");
            if sets_all {
                assert_eq!(xfcc.len(), 1, "{answer}");
                assert!(xfcc[0].contains(&hash), "{answer}");
                assert_eq!(client_cert.len(), 1, "{answer}");
            } else {
                assert!(
                    xfcc.is_empty() && client_cert.is_empty() && chain.is_empty(),
                    "{answer}"
                );
            }
            assert_eq!(
                header(answer, "x-spiffe-id"),
                ["spiffe://example.org/ns/web/sa/frontend"],
                "{answer}"
            );
            assert_eq!(header(answer, "x-forwarded-for"), ["127.0.0.1"]);
        }
        assert!(
            done.stdout.contains("=== h2 pad=40000 200 HTTP/2"),
            "{}",
            done.stdout
        );
        // What the backend itself recorded agrees.
        for block in fx.seen.lock().unwrap().iter() {
            assert!(!block.to_lowercase().contains("evil"), "{block}");
        }
    }
}

/// GET `url_port` on proxy.example.org with curl presenting `cert`/`key`;
/// the headers the echo backend got.
fn curl_echoed(pki: &Pki, port: u16, cert: &PathBuf, key: &PathBuf) -> Vec<(String, String)> {
    let mut command = Command::new("curl");
    command
        .args([
            "-q",
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "20",
        ])
        .args(["--noproxy", "*"])
        .arg("--resolve")
        .arg(format!("proxy.example.org:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(pki.bundle())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(format!("https://proxy.example.org:{port}/xfcc"));
    let done = run_with_input(&mut command, b"", Duration::from_secs(30));
    assert!(
        done.status.success(),
        "curl: {}{}",
        done.stdout,
        done.stderr
    );
    common::envoy::echoed_headers(&done.stdout)
}

#[test]
fn xfcc_equals_envoys_element_for_element() {
    use common::envoy::{header_echo_backend, header_values, require_envoy, xfcc_elements, Envoy};
    if !require_tool("curl") || require_envoy().is_none() {
        return;
    }
    let pki = Pki::new();
    let (backend, _) = header_echo_backend();
    // portcullis and Envoy present the same server certificate (so `By` is
    // the same) and forward to the same backend.
    let config = inbound_config(
        &pki,
        backend,
        "",
        "protocol = \"http\"\nallow_any_authenticated = true\n",
    );
    let proxy = Proxy::start(pki.dir.path(), &config);
    let envoy = Envoy::start(
        pki.dir.path(),
        &pki.path("server.crt"),
        &pki.path("server.key"),
        &pki.bundle(),
        backend,
    );
    let cases = [
        (
            "spiffe",
            Leaf {
                dns: vec!["frontend.web.svc.cluster.local".into()],
                cn: Some("frontend".into()),
                o: Some("Example Org".into()),
                ..Leaf::spiffe(FRONTEND)
            },
        ),
        (
            "dns-only",
            Leaf {
                dns: vec!["db.example.org".into(), "db2.example.org".into()],
                ..Leaf::default()
            },
        ),
        (
            "cn-only",
            Leaf {
                cn: Some("legacy-client".into()),
                ..Leaf::default()
            },
        ),
        (
            "awkward",
            Leaf {
                uris: vec![
                    "spiffe://example.org/ns/web/sa/frontend".into(),
                    "https://x.example/path".into(),
                ],
                dns: vec!["a.example.org".into(), "b.example.org".into()],
                cn: Some("#quote\"me\\, +x=y;z<w> ".into()),
                o: Some("Acme, Inc.".into()),
                ou: Some("Über".into()),
                ..Leaf::default()
            },
        ),
    ];
    for (name, spec) in cases {
        let (_, cert, key) = pki.issue_files(name, &spec);
        let ours = curl_echoed(&pki, proxy.inbound("api").port(), &cert, &key);
        let theirs = curl_echoed(&pki, envoy.addr.port(), &cert, &key);
        let (ours, theirs) = (
            header_values(&ours, "x-forwarded-client-cert"),
            header_values(&theirs, "x-forwarded-client-cert"),
        );
        assert_eq!(ours.len(), 1, "{name}: {ours:?}");
        assert_eq!(theirs.len(), 1, "{name}: {theirs:?}");
        println!(
            "{name}:\n  portcullis {}\n  envoy      {}",
            ours[0], theirs[0]
        );
        assert_eq!(
            xfcc_elements(ours[0]),
            xfcc_elements(theirs[0]),
            "{name}: portcullis and Envoy disagree"
        );
        assert_eq!(ours[0], theirs[0], "{name}: even byte for byte");
    }
}

const ROUTES: &str = "[[inbound.allow]]\nspiffe_id = \"spiffe://example.org/ns/web/*\"\n\
                      [[inbound.route]]\npath = \"/admin/**\"\nmethods = [\"POST\"]\n\
                      [[inbound.route.allow]]\nspiffe_id = \"spiffe://example.org/ns/web/sa/ops\"\n";

/// Python: on ONE keep-alive connection (`http.client`) and ONE HTTP/2
/// connection (httpx), requests the routes allow and refuse in turn.
const ROUTE_CLIENT: &str = r#"
import http.client, socket, ssl, sys, httpx
ca, crt, key, port = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(crt, key)
plan = [("GET", "/api/a"), ("POST", "/admin/users"), ("GET", "/admin/users"), ("POST", "/api/b"), ("POST", "/admin/x")]
conn = http.client.HTTPSConnection("proxy.example.org", int(port), context=ctx)
conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="proxy.example.org")
sock = conn.sock
for method, path in plan:
    conn.request(method, path, body=b"x" if method == "POST" else None)
    r = conn.getresponse()
    r.read()
    print("h1", method, path, r.status, conn.sock is sock)
transport = httpx.HTTPTransport(http2=True, verify=ctx)
with httpx.Client(transport=transport) as client:
    for method, path in plan:
        r = client.request(method, "https://127.0.0.1:%s%s" % (port, path), content=b"x" if method == "POST" else None,
                           extensions={"sni_hostname": "proxy.example.org"})
        print("h2", method, path, r.status_code, r.http_version, r.text.split("\n")[0][:20])
"#;

fn run_routes(fx: &Fixture, cert: &PathBuf, key: &PathBuf) -> Vec<String> {
    let mut command = fx.python(ROUTE_CLIENT, cert, key);
    let done = run_with_input(&mut command, b"", Duration::from_secs(60));
    assert!(done.status.success(), "{}\n{}", done.stdout, done.stderr);
    done.stdout.lines().map(str::to_string).collect()
}

#[test]
fn routes_decide_each_request_on_one_connection() {
    if !require_tool("python3") {
        return;
    }
    let fx = Fixture::new(ROUTES);
    let (_, cert, key) = fx.client("frontend", &Leaf::spiffe(FRONTEND));
    let lines = run_routes(&fx, &cert, &key);
    let statuses: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], f[3])
        })
        .collect();
    // POST /admin/** is the ops route: the frontend is refused there, and
    // only there; GET /admin/** has no route of its own (listener rules).
    let want = ["200", "403", "200", "200", "403"];
    for (i, (proto, status)) in statuses.iter().enumerate() {
        assert_eq!(*status, want[i % 5], "{}", lines[i]);
        if *proto == "h1" {
            assert!(
                lines[i].ends_with("True"),
                "same keep-alive connection: {}",
                lines[i]
            );
        } else {
            assert!(lines[i].contains("HTTP/2"), "{}", lines[i]);
        }
    }
    assert_eq!(statuses.len(), 10);
    // The refusal body names no rule; the log names listener, route,
    // identity and the failing rule.
    assert!(
        lines.iter().any(|l| l.contains("403 HTTP/2 forbidden")),
        "{lines:?}"
    );
    let logs = fx.proxy.logs();
    let denial = logs
        .lines()
        .find(|l| l.contains("request denied"))
        .expect("a denial is logged");
    for part in [
        "listener=api",
        "route=/admin/**",
        "peer_identity=spiffe://example.org/ns/web/sa/frontend",
        "rule 0: spiffe_id",
    ] {
        assert!(denial.contains(part), "{part} in {denial}");
    }
    // The ops identity may POST there.
    let (_, ops_cert, ops_key) = fx.client("ops", &Leaf::spiffe("ns/web/sa/ops"));
    let ops = run_routes(&fx, &ops_cert, &ops_key);
    assert!(ops.iter().all(|l| l.contains(" 200")), "{ops:?}");
    assert_eq!(
        fx.metric(
            "portcullis_http_requests_total",
            &["route=\"/admin/**\"", "code_class=\"4xx\""]
        ),
        4.0
    );
    assert_eq!(
        fx.metric(
            "portcullis_http_authz_decisions_total",
            &["route=\"/admin/**\"", "decision=\"deny\""]
        ),
        4.0
    );
}

#[test]
fn an_upgrade_passes_through_as_raw_bytes() {
    let fx = Fixture::new(ALL_HEADERS);
    let (issued, _, _) = fx.client("frontend", &Leaf::spiffe(FRONTEND));
    let mut config = (*client_config(Some(&issued), &fx.pki.root.cert_pem)).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut stream = tls_connect(fx.addr, "proxy.example.org", Arc::new(config)).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: proxy.example.org\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in [
        &b"hello over the upgraded connection"[..],
        &[0u8, 1, 2, 255][..],
    ] {
        stream.write_all(message).unwrap();
        stream.flush().unwrap();
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).unwrap();
        assert_eq!(echo, message);
    }
}

fn proxy_rss_kib(proxy: &Proxy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_hundred_megabytes_each_way_stream_with_bounded_memory() {
    if !require_tool("curl") {
        return;
    }
    const SIZE: usize = 100 * 1024 * 1024;
    let fx = Fixture::new(ALL_HEADERS);
    let (_, cert, key) = fx.client("frontend", &Leaf::spiffe(FRONTEND));
    let upload = fx.pki.path("upload.bin");
    let data = pattern(7, SIZE);
    std::fs::write(&upload, &data).unwrap();
    let rss_before = proxy_rss_kib(&fx.proxy);
    for version in ["--http1.1", "--http2"] {
        let (out, err) = fx.curl(
            &cert,
            &key,
            &[version, "--data-binary", &format!("@{}", upload.display())],
            "/sha256",
        );
        assert_eq!(
            out,
            format!("{} {SIZE}", sha256_hex(&data)),
            "{version} upload: {err}"
        );
        let download = fx.pki.path("download.bin");
        let (_, err) = fx.curl(
            &cert,
            &key,
            &[version, "--output", &download.display().to_string()],
            &format!("/bytes/{SIZE}"),
        );
        let got = std::fs::read(&download).unwrap();
        assert_eq!(got.len(), SIZE, "{version} download: {err}");
        assert!(got == pattern(0, SIZE), "{version}: the download is intact");
    }
    let grown = proxy_rss_kib(&fx.proxy).saturating_sub(rss_before);
    println!("proxy RSS grew by {grown} KiB over 400 MB streamed");
    assert!(
        grown < 64 * 1024,
        "the proxy buffered: RSS grew by {grown} KiB"
    );
}

#[test]
fn an_h2c_backend_gets_the_requests() {
    if !require_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let (backend, seen) = backend_speaking(true);
    let config = inbound_config(
        &pki,
        backend,
        "",
        &format!("protocol = \"http\"\nbackend_protocol = \"h2c\"\n{ALL_HEADERS}"),
    );
    let proxy = Proxy::start(pki.dir.path(), &config);
    let fx = Fixture {
        addr: proxy.inbound("api"),
        backend,
        seen,
        proxy,
        pki,
    };
    let (_, cert, key) = fx.client("frontend", &Leaf::spiffe(FRONTEND));
    for version in ["--http1.1", "--http2"] {
        let (out, err) = fx.curl(&cert, &key, &[version], "/over-h2c");
        assert!(out.starts_with("GET /over-h2c\n"), "{version}: {out}{err}");
        assert_eq!(
            header(&out, "x-spiffe-id"),
            ["spiffe://example.org/ns/web/sa/frontend"]
        );
    }
    assert_eq!(fx.seen.lock().unwrap().len(), 2);
}

/// Python: keep-alive requests as fast as possible on 4 connections for
/// `seconds`; prints `ok N errors M statuses {...}`.
const LOAD: &str = r#"
import http.client, socket, ssl, sys, threading, time, collections
ca, crt, key, port, seconds = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(crt, key)
counts = collections.Counter()
def run():
    conn = http.client.HTTPSConnection("proxy.example.org", int(port), context=ctx)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="proxy.example.org")
    end = time.time() + float(seconds)
    while time.time() < end:
        try:
            conn.request("GET", "/admin/load")
            r = conn.getresponse(); r.read()
            counts[r.status] += 1
        except Exception as e:
            counts["error " + type(e).__name__] += 1
            return
threads = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
print(dict(counts))
"#;

#[test]
fn reloading_routes_under_load_drops_no_connection() {
    if !require_tool("python3") {
        return;
    }
    let fx = Fixture::new(ALL_HEADERS);
    let (_, cert, key) = fx.client("frontend", &Leaf::spiffe(FRONTEND));
    let mut command = fx.python(LOAD, &cert, &key);
    command.arg("4");
    let load =
        std::thread::spawn(move || run_with_input(&mut command, b"", Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(1500));
    // Close /admin/** to everyone but ops; live connections carry on.
    let before = fx.proxy.logs().matches("config reloaded").count();
    fx.proxy.rewrite_config(&format!(
        "{}\n{}",
        fx.pki.identity_toml("server"),
        inbound_table_on(
            "api",
            fx.addr,
            fx.backend,
            &format!("protocol = \"http\"\n{ROUTES}"),
        )
    ));
    wait_for("the reload", Duration::from_secs(10), || {
        fx.proxy.logs().matches("config reloaded").count() > before
    });
    let done = load.join().unwrap();
    assert!(done.status.success(), "{}{}", done.stdout, done.stderr);
    let counts = done.stdout.trim();
    assert!(!counts.contains("error"), "a connection broke: {counts}");
    assert!(counts.contains("200:"), "{counts}");
    // New connections follow the new routes (GET /admin/** has no route, so
    // the listener's rules apply; POST would be the ops route's).
    let (out, _) = fx.curl(
        &cert,
        &key,
        &["-X", "POST", "-w", " %{http_code}"],
        "/admin/x",
    );
    assert!(out.ends_with(" 403"), "{out}");
}

#[test]
fn explain_agrees_with_the_running_listener_route_by_route() {
    if !require_tool("curl") {
        return;
    }
    let fx = Fixture::new(ROUTES);
    let cases = [
        ("frontend", FRONTEND, "GET", "/api/a", true),
        ("frontend", FRONTEND, "POST", "/admin/users", false),
        ("frontend", FRONTEND, "GET", "/admin/users", true),
        ("ops", "ns/web/sa/ops", "POST", "/admin/users", true),
        ("ops", "ns/web/sa/ops", "GET", "/api/a", true),
    ];
    for (name, path, method, url, allowed) in cases {
        let (_, cert, key) = fx.client(name, &Leaf::spiffe(path));
        let (out, err) = fx.curl(
            &cert,
            &key,
            &["-X", method, "-o", "/dev/null", "-w", "%{http_code}"],
            url,
        );
        let running = out == "200";
        assert_eq!(running, allowed, "{name} {method} {url}: {out}{err}");
        let mut command = Command::new(binary());
        command
            .args(["authz", "explain", "-c"])
            .arg(&fx.proxy.config_path)
            .args(["--path", url, "--method", method, "--json"])
            .arg(&cert);
        let done = run_with_input(&mut command, b"", Duration::from_secs(30));
        assert_eq!(
            done.status.code(),
            Some(if running { 0 } else { 1 }),
            "{name} {method} {url}: {}{}",
            done.stdout,
            done.stderr
        );
        let json: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
        let route = if url.starts_with("/admin") && method == "POST" {
            "/admin/**"
        } else {
            "default"
        };
        assert_eq!(json["route"], route, "{name} {method} {url}");
        assert_eq!(json["handshake_admits"], true);
    }
}

#[test]
fn audit_mode_forwards_a_request_its_route_would_refuse() {
    if !require_tool("curl") {
        return;
    }
    let fx = Fixture::new(&format!("authz_mode = \"audit\"\n{ROUTES}"));
    let (_, cert, key) = fx.client("frontend", &Leaf::spiffe(FRONTEND));
    let (out, err) = fx.curl(&cert, &key, &["-X", "POST", "-d", "x"], "/admin/users");
    assert!(
        out.starts_with("POST /admin/users\n"),
        "forwarded: {out}{err}"
    );
    assert_eq!(
        fx.metric(
            "portcullis_http_authz_decisions_total",
            &["route=\"/admin/**\"", "decision=\"would_deny\""]
        ),
        1.0
    );
    assert!(fx.proxy.wait_for_log(
        "request would be denied (authz_mode = \"audit\"); forwarded",
        Duration::from_secs(5)
    ));
    // A peer no rule could allow is still admitted by the handshake in
    // audit mode, and its requests are reported.
    let (_, other, other_key) = fx.client("batch", &Leaf::spiffe("ns/batch/sa/report"));
    let (out, _) = fx.curl(&other, &other_key, &[], "/api/a");
    assert!(out.starts_with("GET /api/a\n"), "{out}");
}
