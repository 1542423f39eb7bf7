//! The HTTP-aware listener (`protocol = "http"`) against hostile clients,
//! over real sockets. The client side speaks raw bytes (HTTP/1.1 text or
//! hand-built HTTP/2 frames) over a rustls mTLS stream; the backend is a
//! plain TCP server of the test's own that records every byte it receives
//! on every connection, so each test asserts exactly what reached the
//! application:
//!
//! - request smuggling over HTTP/1.1: malformed framing (differing duplicate
//!   Content-Length, an obfuscated Transfer-Encoding, obs-fold, NUL/DEL/CR in
//!   a value, ...) is answered 400 and a transfer coding besides a lone
//!   `chunked` 501, the backend getting nothing; a request with both
//!   Content-Length and Transfer-Encoding is read as chunked (RFC 9112 6.3),
//!   reaches the backend as one request framed by chunked alone, and the
//!   client connection is closed after the answer, so whatever followed on
//!   it is never read as a request; bare-LF line endings are accepted and
//!   reach the backend as CRLF;
//! - header limits: a head over `max_header_bytes` and one with more than
//!   `max_headers` fields are answered 431, the backend gets nothing;
//! - slowloris: a head sent one byte every 500 ms is cut at
//!   `header_read_timeout` while a legitimate client keeps being served;
//! - HTTP/2 rapid reset (CVE-2023-44487): thousands of HEADERS+RST_STREAM
//!   on several connections end in GOAWAY (or a close), memory stays
//!   bounded, and a legitimate client is served afterwards; resets paced
//!   under `max_pending_reset_streams` leave no memory or descriptors
//!   behind;
//! - an unreachable backend is 502 on a connection that stays usable, a
//!   backend that never answers is 504 after `backend_timeout`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const FRONTEND: &str = "ns/web/sa/frontend";
const HOST: &str = "proxy.example.org";

// ---------------------------------------------------------------------------
// The recording backend
// ---------------------------------------------------------------------------

/// What the backend does with a request it has read in full.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answer `200 OK` with the body `ok\n` (keep-alive).
    Answer,
    /// Never answer (read and record until the proxy closes).
    Silent,
}

/// One request as the backend parsed it: the head exactly as received and
/// the body (de-chunked when it came chunked).
#[derive(Clone, Debug)]
struct BackendRequest {
    head: String,
    body: Vec<u8>,
}

impl BackendRequest {
    /// The request target of the request line.
    fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    /// The values of header `name` (lowercase), in order.
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// Everything one backend connection received.
#[derive(Default)]
struct ConnRecord {
    bytes: Vec<u8>,
    requests: Vec<BackendRequest>,
}

/// A TCP backend that records every byte per connection.
struct Backend {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<ConnRecord>>>>>,
}

impl Backend {
    fn start(mode: Mode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Mutex<ConnRecord>>>>> = Arc::default();
        let all = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let record = Arc::new(Mutex::new(ConnRecord::default()));
                all.lock().unwrap().push(record.clone());
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        let n = match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&chunk[..n]);
                        let mut answers = 0;
                        {
                            let mut record = record.lock().unwrap();
                            record.bytes.extend_from_slice(&chunk[..n]);
                            while let Some((request, used)) = parse_request(&pending) {
                                pending.drain(..used);
                                record.requests.push(request);
                                answers += 1;
                            }
                        }
                        if mode == Mode::Answer {
                            for _ in 0..answers {
                                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                                if stream.write_all(reply).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Backend { addr, conns }
    }

    /// Bytes received on all connections together.
    fn total_bytes(&self) -> usize {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().bytes.len())
            .sum()
    }

    /// Connections accepted.
    fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Every complete request received, connection after connection.
    fn requests(&self) -> Vec<BackendRequest> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| c.lock().unwrap().requests.clone())
            .collect()
    }

    /// Everything received, each connection's bytes in turn (for messages
    /// and for searching).
    fn all_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for conn in self.conns.lock().unwrap().iter() {
            all.extend_from_slice(&conn.lock().unwrap().bytes);
            all.extend_from_slice(b"\n---\n");
        }
        all
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A complete chunked body at the start of `buf`: its data and the bytes
/// it used (chunk-size lines, data, the last chunk, trailers, empty line).
fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let line_end = at + find(&buf[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[at..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines, if any, then the empty line.
            loop {
                let end = at + find(&buf[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((body, at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// One complete HTTP/1.1 request at the start of `buf` (as the proxy
/// writes them: CRLF, Content-Length or chunked) and the bytes it used.
fn parse_request(buf: &[u8]) -> Option<(BackendRequest, usize)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let request = BackendRequest {
        head,
        body: Vec::new(),
    };
    let chunked = request
        .header("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (body, used) = dechunk(&buf[head_end..])?;
        return Some((BackendRequest { body, ..request }, head_end + used));
    }
    let length = request
        .header("content-length")
        .first()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < head_end + length {
        return None;
    }
    let body = buf[head_end..head_end + length].to_vec();
    Some((BackendRequest { body, ..request }, head_end + length))
}

// ---------------------------------------------------------------------------
// The proxy and the clients
// ---------------------------------------------------------------------------

/// A proxy with one HTTP listener admitting the frontend, with `limits`
/// (lines of `[inbound.http]`), in front of `backend`; and the frontend's
/// certificate.
struct Fixture {
    pki: Pki,
    issued: Issued,
    proxy: Proxy,
    addr: SocketAddr,
}

impl Fixture {
    fn new(backend: SocketAddr, limits: &str) -> Fixture {
        let pki = Pki::new();
        let issued = pki.intermediate.issue(&Leaf::spiffe(FRONTEND));
        let body = format!(
            "protocol = \"http\"\n[inbound.http]\n{limits}\n{}",
            allow_spiffe(FRONTEND)
        );
        let config = inbound_config(&pki, backend, "", &body);
        let proxy = Proxy::start(pki.dir.path(), &config);
        let addr = proxy.inbound("api");
        Fixture {
            pki,
            issued,
            proxy,
            addr,
        }
    }

    /// The frontend's client config offering `alpn` only.
    fn tls(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let base = client_config(Some(&self.issued), &self.pki.root.cert_pem);
        let mut config = (*base).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    fn h1(&self) -> H1 {
        H1::open(self.addr, self.tls(b"http/1.1"))
    }

    fn h2(&self) -> H2 {
        H2::open(self.addr, self.tls(b"h2"))
    }
}

/// A response as the client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// An HTTP/1.1 client connection speaking raw bytes.
struct H1 {
    stream: Client,
    buf: Vec<u8>,
}

impl H1 {
    fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> H1 {
        let stream = tls_connect(addr, HOST, config).expect("TLS handshake with the proxy");
        assert_eq!(
            stream.conn.alpn_protocol(),
            Some(&b"http/1.1"[..]),
            "ALPN http/1.1 negotiated"
        );
        H1 {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write `bytes` (one TLS record up to 16 KiB) and flush.
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Read more bytes into the buffer: false at EOF or on an error (a
    /// close without close_notify, a reset, the 10 s read timeout).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, or None when the connection ends first.
    fn response(&mut self) -> Option<Resp> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let parsed = BackendRequest {
            head: head.clone(),
            body: vec![],
        };
        let length = parsed
            .header("content-length")
            .first()
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = !parsed.header("transfer-encoding").is_empty();
        let (body, body_end) = if chunked {
            loop {
                if let Some((body, used)) = dechunk(&self.buf[head_end..]) {
                    break (body, head_end + used);
                }
                if !self.fill() {
                    break (self.buf[head_end..].to_vec(), self.buf.len());
                }
            }
        } else {
            let length = length.unwrap_or(0);
            while self.buf.len() < head_end + length {
                if !self.fill() {
                    break;
                }
            }
            let end = (head_end + length).min(self.buf.len());
            (self.buf[head_end..end].to_vec(), end)
        };
        self.buf.drain(..body_end);
        Some(Resp { status, head, body })
    }

    /// Send one GET and read its response.
    fn get(&mut self, path: &str) -> Option<Resp> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .ok()?;
        self.response()
    }

    /// Does the proxy end the connection within `limit` (EOF or an error
    /// other than our read timeout), without sending anything more?
    /// Returns what it sent meanwhile, if anything, as an error.
    fn closed_within(&mut self, limit: Duration) -> Result<bool, String> {
        if !self.buf.is_empty() {
            return Err(format!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
        self.stream.sock.set_read_timeout(Some(limit)).unwrap();
        let mut chunk = [0u8; 4096];
        let result = match self.stream.read(&mut chunk) {
            Ok(0) => Ok(true),
            Ok(n) => Err(format!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            )),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(_) => Ok(true),
        };
        self.stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        result
    }
}

/// What happened to one attack, for the table printed by each test.
fn outcome(response: &Option<Resp>) -> String {
    match response {
        Some(r) => r.status.to_string(),
        None => "closed, no response".into(),
    }
}

// ---------------------------------------------------------------------------
// 1. Request smuggling over HTTP/1.1
// ---------------------------------------------------------------------------

/// Malformed framing or header syntax: the proxy answers 400 itself (hyper's
/// parser refuses the head) and the backend never sees a byte. A transfer
/// coding other than a lone `chunked` is answered 501, the backend again
/// seeing nothing.
#[test]
fn malformed_framing_is_refused_400_and_never_reaches_the_backend() {
    let backend = Backend::start(Mode::Answer);
    let fixture = Fixture::new(backend.addr, "");
    let post = |headers: &str, body: &str| -> Vec<u8> {
        format!("POST /attack HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n{body}").into_bytes()
    };
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "duplicate differing Content-Length",
            post("Content-Length: 5\r\nContent-Length: 41\r\n", &format!("hello{smuggled}")),
        ),
        (
            "Transfer-Encoding: xchunked",
            post("Transfer-Encoding: xchunked\r\n", &format!("0\r\n\r\n{smuggled}")),
        ),
        (
            "Transfer-Encoding: xchunked + Content-Length",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n",
                &format!("0\r\n\r\n{smuggled}"),
            ),
        ),
        (
            "Transfer-Encoding : chunked (space before colon)",
            post(
                "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n",
                &format!("0\r\n\r\n{smuggled}"),
            ),
        ),
        (
            "Transfer-Encoding: chunked, identity (chunked not last)",
            post("Transfer-Encoding: chunked, identity\r\n", &format!("0\r\n\r\n{smuggled}")),
        ),
        (
            "Transfer-Encoding: chunked then a second TE: identity",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &format!("0\r\n\r\n{smuggled}"),
            ),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!(
                "POST /attack HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "obs-fold (header continued on a line starting with a space)",
            post("X-Folded: first\r\n second\r\n", ""),
        ),
        (
            "obs-fold continuing Transfer-Encoding",
            post(
                "Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n",
                &format!("0\r\n\r\n{smuggled}"),
            ),
        ),
        ("NUL in a header value", post("X-Bad: a\0b\r\n", "")),
        ("DEL (0x7f) in a header value", post("X-Bad: a\x7fb\r\n", "")),
        ("bare CR in a header value", post("X-Bad: a\rX-Injected: b\r\n", "")),
        ("space in a header name", post("X Bad: v\r\n", "")),
        ("Content-Length not a number", post("Content-Length: +5\r\n", "hello")),
        ("Content-Length list with differing values", post("Content-Length: 5, 6\r\n", "hello!")),
    ];
    let mut cases: Vec<(&str, Vec<u8>, u16)> = cases
        .into_iter()
        .map(|(name, bytes)| (name, bytes, 400))
        .collect();
    // Transfer codings hyper does not decode (it undoes only the final
    // chunked): the proxy answers 501 (RFC 9112 6.1) rather than hand the
    // backend coded bytes as the body.
    cases.extend([
        (
            "Transfer-Encoding: gzip, chunked",
            post(
                "Transfer-Encoding: gzip, chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            501,
        ),
        (
            "Transfer-Encoding: chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            501,
        ),
        (
            "Transfer-Encoding: identity then a second TE: chunked",
            post(
                "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            501,
        ),
    ]);
    let mut table = vec![format!(
        "{:<58} | {:<22} | backend bytes",
        "attack", "client got"
    )];
    let mut failures = Vec::new();
    for (name, bytes, want) in &cases {
        let mut client = fixture.h1();
        let _ = client.send(bytes);
        let response = client.response();
        // Whatever the proxy forwards, it forwards before it answers; the
        // short pause covers a connection it might open in the background.
        std::thread::sleep(Duration::from_millis(200));
        let got = backend.total_bytes();
        let closed = response.is_none() || client.closed_within(Duration::from_secs(5)) == Ok(true);
        table.push(format!(
            "{name:<58} | {:<22} | {got}",
            format!(
                "{}{}",
                outcome(&response),
                if closed { ", closed" } else { "" }
            )
        ));
        let refused = matches!(&response, Some(r) if r.status == *want)
            || (*want == 400 && response.is_none());
        if !refused || got != 0 {
            failures.push(format!(
                "{name}: client got {:?}; backend got {:?}",
                response,
                String::from_utf8_lossy(&backend.all_bytes())
            ));
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    assert_eq!(backend.connections(), 0, "the backend was never dialed");

    // The same listener forwards a well-formed request: the zero bytes above
    // are refusals, not a broken path.
    let mut client = fixture.h1();
    let response = client.get("/fine").expect("a response");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"ok\n");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path(), "/fine");
}

/// A request with both Content-Length and Transfer-Encoding: chunked, in
/// either order and either way round (CL.TE, TE.CL). hyper reads it as
/// chunked (Transfer-Encoding overrides Content-Length, RFC 9112 6.3), drops
/// the Content-Length and closes the connection after answering (6.1's
/// alternative to a 400). So the backend gets exactly one request, framed
/// by chunked alone, and what the attacker queued behind it is never read
/// as a request.
#[test]
fn content_length_with_transfer_encoding_is_read_as_chunked_and_the_connection_closed() {
    let backend = Backend::start(Mode::Answer);
    let fixture = Fixture::new(backend.addr, "");
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    // CL.TE: a Content-Length reader sees one POST whose body holds the GET;
    // a chunked reader sees an empty POST, then GET /smuggled.
    let clte_body = format!("0\r\n\r\n{smuggled}");
    // TE.CL: a Content-Length reader takes the chunk-size line as the body
    // and then reads GET /smuggled as a request; a chunked reader sees the
    // GET as the body's data.
    let size_line = format!("{:x}\r\n", smuggled.len());
    let tecl_body = format!("{size_line}{smuggled}\r\n0\r\n\r\n");
    let cases: Vec<(&str, String, String, Vec<u8>)> = vec![
        (
            "CL.TE (Content-Length first)",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                clte_body.len()
            ),
            clte_body.clone(),
            vec![],
        ),
        (
            "CL.TE (Transfer-Encoding first)",
            format!(
                "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                clte_body.len()
            ),
            clte_body.clone(),
            vec![],
        ),
        (
            "TE.CL (Transfer-Encoding first)",
            format!(
                "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                size_line.len()
            ),
            tecl_body.clone(),
            smuggled.clone().into_bytes(),
        ),
        (
            "TE.CL (Content-Length first)",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                size_line.len()
            ),
            tecl_body.clone(),
            smuggled.clone().into_bytes(),
        ),
    ];
    let mut table = vec![format!(
        "{:<34} | {:<16} | backend requests (path, framing, body bytes)",
        "attack", "client got"
    )];
    for (i, (name, headers, body, expected_body)) in cases.iter().enumerate() {
        let path = format!("/both-{i}");
        let request = format!("POST {path} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n{body}");
        let before = backend.requests().len();
        let mut client = fixture.h1();
        client.send(request.as_bytes()).unwrap();
        let response = client.response();
        let closed = client.closed_within(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(200));
        let requests: Vec<BackendRequest> = backend.requests().split_off(before);
        table.push(format!(
            "{name:<34} | {:<16} | {}",
            format!(
                "{}{}",
                outcome(&response),
                if closed == Ok(true) { ", closed" } else { "" }
            ),
            requests
                .iter()
                .map(|r| format!(
                    "{} te={:?} cl={:?} body={}",
                    r.path(),
                    r.header("transfer-encoding"),
                    r.header("content-length"),
                    r.body.len()
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(response.status, 200, "{name}: {response:?}");
        assert_eq!(
            closed,
            Ok(true),
            "{name}: the proxy must close the connection after a request with both \
             Content-Length and Transfer-Encoding (RFC 9112 6.1)"
        );
        assert_eq!(
            requests.len(),
            1,
            "{name}: the backend must get exactly one request; got {requests:?}"
        );
        let forwarded = &requests[0];
        assert_eq!(forwarded.path(), path, "{name}");
        assert!(
            forwarded.header("content-length").is_empty(),
            "{name}: forwarded with a Content-Length beside chunked: {:?}",
            forwarded.head
        );
        assert_eq!(
            forwarded.header("transfer-encoding"),
            vec!["chunked".to_string()],
            "{name}: {:?}",
            forwarded.head
        );
        assert_eq!(
            &forwarded.body, expected_body,
            "{name}: the body as chunked framed it"
        );
        assert!(
            !backend.requests().iter().any(|r| r.path() == "/smuggled"),
            "{name}: the smuggled request reached the backend as a request"
        );
    }
    eprintln!("{}", table.join("\n"));
    // CL.TE leaves the smuggled bytes unread on a closed connection: they
    // never reach the backend, not even as body data.
    let all = backend.all_bytes();
    let as_body = cases.iter().filter(|c| !c.3.is_empty()).count();
    assert_eq!(
        all.windows(14).filter(|w| w == b"GET /smuggled ").count(),
        as_body,
        "GET /smuggled reached the backend only inside TE.CL bodies: {}",
        String::from_utf8_lossy(&all)
    );
}

/// Bare LF line endings (RFC 9112 2.2 lets a recipient accept them, and
/// hyper's parser does): the request is answered and reaches the backend
/// re-serialized with CRLF, header for header, so the backend cannot read
/// it differently.
#[test]
fn bare_lf_line_endings_reach_the_backend_as_crlf() {
    let backend = Backend::start(Mode::Answer);
    let fixture = Fixture::new(backend.addr, "");
    let cases: Vec<(&str, String)> = vec![
        (
            "bare LF everywhere",
            format!("GET /lf-0 HTTP/1.1\nHost: {HOST}\nX-Test: lf\n\n"),
        ),
        (
            "bare LF inside a CRLF head",
            format!("GET /lf-1 HTTP/1.1\r\nHost: {HOST}\nX-Test: lf\r\n\r\n"),
        ),
        (
            "bare LF in a Content-Length request",
            format!("POST /lf-2 HTTP/1.1\nHost: {HOST}\nX-Test: lf\nContent-Length: 5\n\nhello"),
        ),
    ];
    let mut table = vec![format!(
        "{:<36} | {:<10} | backend got",
        "attack", "client got"
    )];
    for (name, request) in &cases {
        let before = backend.requests().len();
        let mut client = fixture.h1();
        client.send(request.as_bytes()).unwrap();
        let response = client.response();
        std::thread::sleep(Duration::from_millis(200));
        let requests: Vec<BackendRequest> = backend.requests().split_off(before);
        table.push(format!(
            "{name:<36} | {:<10} | {:?}",
            outcome(&response),
            requests.iter().map(|r| r.head.clone()).collect::<Vec<_>>()
        ));
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(response.status, 200, "{name}: {response:?}");
        assert_eq!(requests.len(), 1, "{name}: {requests:?}");
        let forwarded = &requests[0];
        let bare_lf = forwarded
            .head
            .as_bytes()
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r')
            || forwarded.head.starts_with('\n');
        assert!(
            !bare_lf,
            "{name}: a bare LF reached the backend: {:?}",
            forwarded.head
        );
        assert_eq!(forwarded.header("x-test"), vec!["lf".to_string()], "{name}");
        assert_eq!(forwarded.header("host"), vec![HOST.to_string()], "{name}");
        if name.contains("Content-Length") {
            assert_eq!(forwarded.body, b"hello", "{name}");
        }
        // The connection stays usable.
        let again = client.get("/after").expect("a second response");
        assert_eq!(again.status, 200, "{name}: {again:?}");
    }
    eprintln!("{}", table.join("\n"));
}

// ---------------------------------------------------------------------------
// 2. Header limits
// ---------------------------------------------------------------------------

#[test]
fn oversized_heads_are_refused_431_and_never_reach_the_backend() {
    let backend = Backend::start(Mode::Answer);
    let fixture = Fixture::new(backend.addr, "max_header_bytes = 8192\nmax_headers = 100\n");
    let head_of = |headers: &str| format!("GET /limits HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n");
    let big = |n: usize| format!("X-Big: {}\r\n", "a".repeat(n));
    let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    // Each head goes out in one write, one TLS record (under 16 KiB): the
    // proxy reads the whole record, so its close is never a reset that could
    // swallow the 431.
    let cases = [
        (
            "head of 12,000 bytes (max_header_bytes 8192)",
            head_of(&big(12_000)),
            431,
        ),
        (
            "150 header fields (max_headers 100)",
            head_of(&many(150)),
            431,
        ),
        (
            "101 header fields with Host (max_headers 100)",
            head_of(&many(100)),
            431,
        ),
        ("control: head of 6,000 bytes", head_of(&big(6_000)), 200),
        ("control: 90 header fields", head_of(&many(89)), 200),
    ];
    let mut table = vec![format!(
        "{:<48} | {:<10} | backend bytes",
        "request", "client got"
    )];
    for (name, head, want) in &cases {
        let before = backend.total_bytes();
        let mut client = fixture.h1();
        client.send(head.as_bytes()).unwrap();
        let response = client.response();
        std::thread::sleep(Duration::from_millis(200));
        let got = backend.total_bytes() - before;
        table.push(format!("{name:<48} | {:<10} | {got}", outcome(&response)));
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(response.status, *want, "{name}: {response:?}");
        if *want == 431 {
            assert_eq!(got, 0, "{name}: the backend got {got} bytes");
        } else {
            assert!(
                got > head.len() / 2,
                "{name}: the backend got only {got} bytes"
            );
        }
    }
    eprintln!("{}", table.join("\n"));
    let all = backend.all_bytes();
    assert!(
        find(&all, b"x-h99:").is_none(),
        "a refused head reached the backend"
    );
    assert!(
        find(&all, &[b'a'; 7_000]).is_none(),
        "the 12,000-byte head reached the backend"
    );
    assert_eq!(backend.requests().len(), 2, "only the two controls");
}

// ---------------------------------------------------------------------------
// 3. Slowloris
// ---------------------------------------------------------------------------

/// Send a request head one byte every 500 ms (never finishing it) until the
/// proxy closes the connection; returns how long that took and whether the
/// proxy answered anything first.
fn slowloris(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> (Duration, String) {
    let mut client = H1::open(addr, config);
    let started = Instant::now();
    client
        .stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let prefix = format!("GET /slow HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ");
    let mut bytes = prefix
        .into_bytes()
        .into_iter()
        .chain(std::iter::repeat(b'a'));
    let mut answered = String::new();
    let mut chunk = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(30) {
        let byte = [bytes.next().unwrap()];
        if client.send(&byte).is_err() {
            return (started.elapsed(), answered);
        }
        match client.stream.read(&mut chunk) {
            Ok(0) => return (started.elapsed(), answered),
            Ok(n) => answered.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (started.elapsed(), answered),
        }
    }
    (started.elapsed(), answered)
}

#[test]
fn slowloris_is_cut_at_header_read_timeout_while_others_are_served() {
    let backend = Backend::start(Mode::Answer);
    let fixture = Fixture::new(backend.addr, "header_read_timeout = \"2s\"\n");
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let legit = {
        let (done, served) = (done.clone(), served.clone());
        let (addr, config) = (fixture.addr, fixture.tls(b"http/1.1"));
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let mut client = H1::open(addr, config.clone());
                match client.get("/legit") {
                    Some(r) if r.status == 200 => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            failures
        })
    };
    let attackers: Vec<_> = (0..10)
        .map(|_| {
            let (addr, config) = (fixture.addr, fixture.tls(b"http/1.1"));
            std::thread::spawn(move || slowloris(addr, config))
        })
        .collect();
    let results: Vec<(Duration, String)> =
        attackers.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let failures = legit.join().unwrap();
    eprintln!(
        "slowloris: connections closed after {:?}; proxy sent before closing: {:?}; \
         legitimate requests served meanwhile: {}",
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        results.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        served.load(Ordering::SeqCst)
    );
    for (took, _) in &results {
        assert!(
            *took < Duration::from_secs(6),
            "a slowloris connection lived {took:?} with header_read_timeout = 2s"
        );
        assert!(
            *took >= Duration::from_millis(1500),
            "closed after {took:?}, before header_read_timeout"
        );
    }
    assert!(
        failures.is_empty(),
        "legitimate requests failed: {failures:?}"
    );
    assert!(
        served.load(Ordering::SeqCst) >= 5,
        "only {} legitimate requests served",
        served.load(Ordering::SeqCst)
    );
    assert!(
        find(&backend.all_bytes(), b"/slow").is_none(),
        "a slowloris head reached the backend"
    );
}

// ---------------------------------------------------------------------------
// 4. HTTP/2 rapid reset
// ---------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block for `GET https://proxy.example.org{path}`: static-table
/// indexes for :method GET (2) and :scheme https (7), literals without
/// indexing (plain, not Huffman) for :path (name 4) and :authority (name 1).
fn get_block(path: &str) -> Vec<u8> {
    assert!(path.len() < 127);
    let mut block = vec![0x82, 0x87, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, HOST.len() as u8]);
    block.extend_from_slice(HOST.as_bytes());
    block
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// An HTTP/2 client connection of hand-built frames.
struct H2 {
    stream: Client,
    buf: Vec<u8>,
}

/// How reading frames ended.
#[derive(Debug, PartialEq)]
enum H2Read {
    /// Nothing more arrived within the wait.
    Quiet,
    /// The connection ended (EOF, reset, or an error).
    Closed,
}

impl H2 {
    fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> H2 {
        let mut stream = tls_connect(addr, HOST, config).expect("TLS handshake with the proxy");
        assert_eq!(
            stream.conn.alpn_protocol(),
            Some(&b"h2"[..]),
            "ALPN h2 negotiated"
        );
        stream
            .sock
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).unwrap();
        stream.flush().unwrap();
        H2 {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Read the frames that arrive within `wait` (acknowledging SETTINGS);
    /// stops early at a GOAWAY or when the connection ends.
    fn frames(&mut self, wait: Duration, out: &mut Vec<Frame>) -> H2Read {
        self.stream.sock.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 16 * 1024];
        let result = loop {
            while self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() < 9 + len {
                    break;
                }
                let f = Frame {
                    kind: self.buf[3],
                    flags: self.buf[4],
                    stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
                    payload: self.buf[9..9 + len].to_vec(),
                };
                self.buf.drain(..9 + len);
                if f.kind == SETTINGS && f.flags & ACK == 0 {
                    let _ = self.send(&frame(SETTINGS, ACK, 0, &[]));
                }
                out.push(f);
            }
            if out.iter().any(|f| f.kind == GOAWAY) {
                break H2Read::Quiet;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => break H2Read::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break H2Read::Quiet
                }
                Err(_) => break H2Read::Closed,
            }
        };
        self.stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        result
    }

    /// One GET on stream `id`; the `:status` of the answer when it is one
    /// the static table indexes (h2 encodes 200 as index 8, 0x88).
    fn get(&mut self, id: u32, path: &str) -> Result<u8, String> {
        self.send(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block(path),
        ))
        .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut frames = Vec::new();
        while Instant::now() < deadline {
            let read = self.frames(Duration::from_millis(200), &mut frames);
            if let Some(headers) = frames.iter().find(|f| f.kind == HEADERS && f.stream == id) {
                return Ok(headers.payload[0]);
            }
            if let Some(f) = frames
                .iter()
                .find(|f| f.kind == GOAWAY || f.kind == RST_STREAM)
            {
                return Err(format!("{f:?}"));
            }
            if read == H2Read::Closed {
                return Err("connection closed".into());
            }
        }
        Err(format!("no answer in 10s; frames: {frames:?}"))
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What one rapid-reset connection achieved.
#[derive(Debug)]
struct RapidReset {
    streams_sent: u32,
    goaway: Option<(u32, u32)>,
    closed: bool,
    #[allow(dead_code)] // printed
    took: Duration,
}

/// Open an h2 connection and send HEADERS + RST_STREAM(CANCEL) for up to
/// `streams` streams, in batches of 100, as fast as the socket takes them,
/// until the proxy sends GOAWAY or closes; then wait up to 10 s for either.
fn rapid_reset(addr: SocketAddr, config: Arc<rustls::ClientConfig>, streams: u32) -> RapidReset {
    let wait = Duration::from_secs(10);
    rapid_reset_in(addr, config, streams, 100, Duration::from_millis(1), wait)
}

/// [`rapid_reset`] in batches of `batch` streams, reading what the proxy
/// sent for up to `pause` between batches; at the end, waiting up to `wait`
/// for a GOAWAY or a close.
fn rapid_reset_in(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    streams: u32,
    batch: u32,
    pause: Duration,
    wait: Duration,
) -> RapidReset {
    let started = Instant::now();
    let mut client = H2::open(addr, config);
    let mut frames = Vec::new();
    let mut sent = 0u32;
    let mut closed = false;
    let block = get_block("/reset");
    'attack: while sent < streams {
        let mut frames_out = Vec::with_capacity(batch as usize * 50);
        for _ in 0..batch.min(streams - sent) {
            let id = 2 * sent + 1;
            frames_out.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            frames_out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            sent += 1;
        }
        if client.send(&frames_out).is_err() {
            closed = true;
            break 'attack;
        }
        match client.frames(pause, &mut frames) {
            H2Read::Closed => {
                closed = true;
                break 'attack;
            }
            H2Read::Quiet if frames.iter().any(|f| f.kind == GOAWAY) => break 'attack,
            H2Read::Quiet => {}
        }
    }
    let deadline = Instant::now() + wait;
    while !closed && !frames.iter().any(|f| f.kind == GOAWAY) && Instant::now() < deadline {
        if client.frames(Duration::from_millis(200), &mut frames) == H2Read::Closed {
            closed = true;
        }
    }
    let goaway = frames.iter().find(|f| f.kind == GOAWAY).map(|f| {
        (
            u32::from_be_bytes(f.payload[0..4].try_into().unwrap()) & 0x7fff_ffff,
            u32::from_be_bytes(f.payload[4..8].try_into().unwrap()),
        )
    });
    RapidReset {
        streams_sent: sent,
        goaway,
        closed,
        took: started.elapsed(),
    }
}

#[test]
fn http2_rapid_reset_ends_in_goaway_with_bounded_memory() {
    let backend = Backend::start(Mode::Answer);
    let mut fixture = Fixture::new(
        backend.addr,
        "max_concurrent_streams = 100\nmax_pending_reset_streams = 20\n",
    );
    let pid = fixture.proxy.child.id();

    // A legitimate HTTP/2 request first: the hand-built frames work.
    let mut legit = fixture.h2();
    assert_eq!(
        legit.get(1, "/before"),
        Ok(0x88),
        ":status 200 before the attack"
    );
    drop(legit);
    let baseline = rss_kib(pid);

    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Four attacking connections at once, each willing to send 10,000 streams.
    let attacks: Vec<_> = (0..4)
        .map(|_| {
            let (addr, config) = (fixture.addr, fixture.tls(b"h2"));
            std::thread::spawn(move || rapid_reset(addr, config, 10_000))
        })
        .collect();
    let results: Vec<RapidReset> = attacks.into_iter().map(|t| t.join().unwrap()).collect();
    // Then one more, after the others, alone.
    let alone = rapid_reset(fixture.addr, fixture.tls(b"h2"), 10_000);
    std::thread::sleep(Duration::from_millis(500));
    sampling.store(false, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "rapid reset: {results:#?}\nalone: {alone:#?}\nproxy RSS: {baseline} KiB before, \
         peak {peak} KiB; backend: {} connections, {} requests",
        backend.connections(),
        backend.requests().len()
    );
    for result in results.iter().chain([&alone]) {
        assert!(
            result.goaway.is_some() || result.closed,
            "the proxy neither sent GOAWAY nor closed: {result:?}"
        );
        assert!(
            result.streams_sent > 20,
            "the attack stopped below max_pending_reset_streams: {result:?}"
        );
    }
    assert!(
        peak < baseline + 100 * 1024 && peak < 256 * 1024,
        "proxy RSS grew from {baseline} KiB to {peak} KiB"
    );
    assert!(
        fixture.proxy.child.try_wait().unwrap().is_none(),
        "the proxy exited; log:\n{}",
        fixture.proxy.logs()
    );

    // A legitimate client is served afterwards, over HTTP/2 and HTTP/1.1.
    let mut legit = fixture.h2();
    assert_eq!(
        legit.get(1, "/after"),
        Ok(0x88),
        ":status 200 after the attack"
    );
    assert_eq!(
        legit.get(3, "/after-again"),
        Ok(0x88),
        "and again on the same connection"
    );
    let response = fixture.h1().get("/after-h1").expect("a response");
    assert_eq!(response.status, 200, "{response:?}");
    let paths: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .collect();
    for path in ["/before", "/after", "/after-again", "/after-h1"] {
        assert!(
            paths.iter().any(|p| p == path),
            "{path} did not reach the backend: {paths:?}"
        );
    }
    // The GOAWAY, when there is one, is ENHANCE_YOUR_CALM (0xb) or a
    // protocol error, never NO_ERROR for an attack.
    for (_, code) in results.iter().chain([&alone]).filter_map(|r| r.goaway) {
        assert_ne!(code, 0, "GOAWAY NO_ERROR for a rapid-reset attack");
    }
}

// ---------------------------------------------------------------------------
// 5. Backend failures
// ---------------------------------------------------------------------------

#[test]
fn backend_down_is_502_on_a_connection_that_stays_usable() {
    let (_reserved, down) = closed_port();
    let fixture = Fixture::new(down, "backend_timeout = \"5s\"\n");
    let mut client = fixture.h1();
    let started = Instant::now();
    for path in ["/first", "/second", "/third"] {
        let response = client
            .get(path)
            .unwrap_or_else(|| panic!("{path}: the connection ended instead of a 502"));
        eprintln!(
            "backend down, {path}: {} {:?}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.status, 502, "{path}: {response:?}");
        assert_eq!(response.body, b"bad gateway\n");
        assert!(
            !response
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{path}: the proxy closes after a 502: {:?}",
            response.head
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        client.closed_within(Duration::from_millis(500)),
        Ok(false),
        "still open"
    );
}

#[test]
fn backend_that_never_answers_is_504_after_backend_timeout() {
    let backend = Backend::start(Mode::Silent);
    let fixture = Fixture::new(backend.addr, "backend_timeout = \"1s\"\n");
    let mut client = fixture.h1();
    for path in ["/slow-backend", "/slow-backend-again"] {
        let started = Instant::now();
        let response = client
            .get(path)
            .unwrap_or_else(|| panic!("{path}: the connection ended instead of a 504"));
        let took = started.elapsed();
        eprintln!("silent backend, {path}: {} after {took:?}", response.status);
        assert_eq!(response.status, 504, "{path}: {response:?}");
        assert_eq!(response.body, b"gateway timeout\n");
        assert!(
            took >= Duration::from_millis(900),
            "504 after only {took:?}"
        );
        assert!(took < Duration::from_secs(10), "504 only after {took:?}");
    }
    // The backend did get both requests (the timeout is about its answer).
    let paths: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .collect();
    assert_eq!(paths, ["/slow-backend", "/slow-backend-again"]);
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The same attack paced one stream at a time, so the proxy accepts each
/// stream before its reset arrives and `max_pending_reset_streams` never
/// fills: h2 then has no reason to send GOAWAY (what happens is printed),
/// but nothing may pile up: memory and open descriptors come back, and the
/// proxy keeps serving.
#[test]
fn http2_resets_paced_under_the_limit_leave_nothing_behind() {
    let backend = Backend::start(Mode::Answer);
    let fixture = Fixture::new(backend.addr, "");
    let pid = fixture.proxy.child.id();
    let mut legit = fixture.h2();
    assert_eq!(
        legit.get(1, "/before"),
        Ok(0x88),
        ":status 200 before the attack"
    );
    let (rss_before, fds_before) = (rss_kib(pid), open_fds(pid));
    let conns_before = backend.connections();
    let started = Instant::now();
    let result = rapid_reset_in(
        fixture.addr,
        fixture.tls(b"h2"),
        1_000,
        1,
        Duration::from_millis(1),
        Duration::from_millis(500),
    );
    let took = started.elapsed();
    let fds_settled = wait_until(Duration::from_secs(10), || open_fds(pid) <= fds_before + 10);
    let (rss_after, fds_after) = (rss_kib(pid), open_fds(pid));
    eprintln!(
        "paced reset: {result:?} in {took:?}; proxy RSS {rss_before} -> {rss_after} KiB, \
         open fds {fds_before} -> {fds_after}; backend connections opened meanwhile: {}, \
         requests it received in all: {}",
        backend.connections() - conns_before,
        backend.requests().len()
    );
    assert!(
        fds_settled,
        "the proxy holds {fds_after} descriptors, {fds_before} before"
    );
    assert!(
        rss_after < rss_before + 100 * 1024,
        "proxy RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The legitimate connection opened before the attack still works, and
    // so does a new one.
    assert_eq!(
        legit.get(3, "/during"),
        Ok(0x88),
        "the earlier connection still served"
    );
    assert_eq!(
        fixture.h2().get(1, "/after"),
        Ok(0x88),
        "a new connection served"
    );
}
