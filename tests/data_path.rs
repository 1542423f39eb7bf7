//! The inbound data path over real sockets: half-close, an unreachable
//! backend, handshake and idle timeouts, garbage from the client, the
//! connection limit, the PROXY v2 header, graceful shutdown and byte
//! counters. Every test starts the real binary in front of a real backend.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Deterministic pseudo-random bytes (xorshift64*).
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Wait for the proxy to exit, successfully and less than `within` after
/// `signalled`; returns its log.
fn exits_zero_within(proxy: &mut Proxy, signalled: Instant, within: Duration) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "portcullis still running 10s after SIGTERM; log:\n{}",
            proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let logs = proxy.logs();
    assert!(status.success(), "exit status {status}; log:\n{logs}");
    assert!(took < within, "exited {took:?} after SIGTERM");
    logs
}

// ---------------------------------------------------------------- half-close

/// How the client finishes sending its request.
#[derive(Debug, Clone, Copy)]
enum ClientEnd {
    /// TLS close_notify only; the TCP connection stays fully open.
    CloseNotify,
    /// TLS close_notify, then TCP `shutdown(Write)`.
    CloseNotifyThenTcpShutdown,
    /// TCP `shutdown(Write)` with no close_notify at all.
    TcpShutdownOnly,
}

fn half_close_gets_whole_response(end: ClientEnd) {
    // 1 MiB: far more than any one socket or pipe buffer holds.
    let reply: &'static [u8] = pseudo_random(1024 * 1024, 0x5eed).leak();
    let (backend, seen) = recording_backend(reply);
    let setup = ApiProxy::start(backend, "", "");

    let request = pseudo_random(200 * 1024, 0xfeed);
    let mut stream = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    stream.write_all(&request).unwrap();
    stream.flush().unwrap();
    match end {
        ClientEnd::CloseNotify => {
            stream.conn.send_close_notify();
            stream.flush().unwrap();
        }
        ClientEnd::CloseNotifyThenTcpShutdown => {
            stream.conn.send_close_notify();
            stream.flush().unwrap();
            stream.sock.shutdown(Shutdown::Write).unwrap();
        }
        ClientEnd::TcpShutdownOnly => {
            stream.sock.shutdown(Shutdown::Write).unwrap();
        }
    }

    let (response, result) = read_until_closed(&mut stream);
    assert!(
        result.is_ok(),
        "{end:?}: response did not end with a clean TLS close after {} bytes: {result:?}\n{}",
        response.len(),
        setup.proxy.logs()
    );
    assert_eq!(response.len(), reply.len(), "{end:?}: response length");
    assert!(response == reply, "{end:?}: response bytes differ");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{end:?}: backend connections");
    assert_eq!(seen[0].len(), request.len(), "{end:?}: request length");
    assert!(seen[0] == request, "{end:?}: request bytes differ");
}

#[test]
fn half_close_with_close_notify_still_gets_full_response() {
    half_close_gets_whole_response(ClientEnd::CloseNotify);
}

#[test]
fn half_close_with_close_notify_and_tcp_shutdown_still_gets_full_response() {
    half_close_gets_whole_response(ClientEnd::CloseNotifyThenTcpShutdown);
}

#[test]
fn half_close_with_bare_tcp_shutdown_still_gets_full_response() {
    half_close_gets_whole_response(ClientEnd::TcpShutdownOnly);
}

/// A backend that speaks first: sends `greeting`, half-closes, then records
/// everything the client sends until EOF.
fn greeting_backend(greeting: &'static [u8]) -> (SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.write_all(greeting);
        let _ = stream.shutdown(Shutdown::Write);
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    });
    (addr, seen)
}

#[test]
fn backend_half_close_keeps_the_client_direction_open() {
    let (backend, seen) = greeting_backend(b"220 hello, send your data\r\n");
    let setup = ApiProxy::start(backend, "", "");
    let mut stream = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");

    // The backend's EOF reaches the client as a clean TLS close.
    let (greeting, end) = read_until_closed(&mut stream);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(greeting, b"220 hello, send your data\r\n");

    // The client can still send, and the backend still receives.
    let upload = pseudo_random(300 * 1024, 99);
    stream.write_all(&upload).unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let arrived = wait_until(Duration::from_secs(5), || {
        seen.lock().unwrap().len() >= upload.len()
    });
    assert!(
        arrived,
        "backend got {} of {} bytes\n{}",
        seen.lock().unwrap().len(),
        upload.len(),
        setup.proxy.logs()
    );
    assert!(*seen.lock().unwrap() == upload, "upload bytes differ");
    setup.proxy.expect_log("close=complete");
}

// -------------------------------------------------------------- backend down

#[test]
fn backend_down_closes_client_cleanly() {
    let (_reserved, closed) = closed_port();
    let setup = ApiProxy::start(closed, "", "");
    let mut stream = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("the handshake itself succeeds");
    let started = Instant::now();
    let (got, result) = read_until_closed(&mut stream);
    let took = started.elapsed();
    assert!(got.is_empty(), "unexpected bytes {got:?}");
    assert!(
        result.is_ok(),
        "expected a clean TLS close (close_notify + EOF), got {result:?}"
    );
    // The read timeout is 10 s; a refused connect takes milliseconds.
    assert!(took < Duration::from_secs(5), "close took {took:?}");

    setup.proxy.expect_log("backend unreachable");
    setup.proxy.wait_metric(
        "portcullis_connection_errors_total",
        &["listener=\"api\"", "reason=\"connect_failed\""],
        1.0,
    );
}

// --------------------------------------------------------- handshake timeout

#[test]
fn silent_client_is_closed_at_handshake_timeout() {
    let setup = ApiProxy::start(echo_backend(), "handshake_timeout = \"500ms\"", "");
    let mut silent = TcpStream::connect(setup.addr).unwrap();
    let connected = Instant::now();
    // A slow client: the first record header of a ClientHello promising 512
    // bytes, then nothing. The limit covers the whole handshake.
    let mut slow = TcpStream::connect(setup.addr).unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let slow_connected = Instant::now();

    // A legitimate client is served while the silent one hangs around.
    echo_roundtrip(setup.addr, setup.client.clone()).expect("legitimate client");

    wait_raw_closed(&mut silent, Duration::from_secs(10));
    let took = connected.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "closed after {took:?}, before the handshake timeout"
    );
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");

    wait_raw_closed(&mut slow, Duration::from_secs(10));
    let took = slow_connected.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "slow client closed after {took:?}, before the handshake timeout"
    );
    assert!(
        took < Duration::from_secs(5),
        "slow client closed after {took:?}"
    );

    setup.proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["listener=\"api\"", "result=\"timeout\""],
        2.0,
    );
    setup.proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["listener=\"api\"", "result=\"success\""],
        1.0,
    );
    // And the listener still serves after the timeout fired.
    echo_roundtrip(setup.addr, setup.client.clone()).expect("client after the timeout");
}

// ------------------------------------------------------ garbage ClientHello

#[test]
fn garbage_client_hello_is_closed_and_proxy_keeps_serving() {
    let setup = ApiProxy::start(echo_backend(), "", "");

    let mut garbage = pseudo_random(1024, 0xbad_c0de);
    // Not a TLS record content type (0x14..=0x18), so this is no TLS at all.
    garbage[0] = 0x00;
    let mut raw = TcpStream::connect(setup.addr).unwrap();
    // The proxy may close before reading everything; a failed write is fine.
    let _ = raw.write_all(&garbage);
    let took = wait_raw_closed(&mut raw, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");

    // Plain HTTP sent to the TLS port: also closed.
    let mut http = TcpStream::connect(setup.addr).unwrap();
    let _ = http.write_all(b"GET / HTTP/1.1\r\nHost: proxy.example.org\r\n\r\n");
    let took = wait_raw_closed(&mut http, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");

    echo_roundtrip(setup.addr, setup.client.clone()).expect("legitimate client afterwards");

    setup.proxy.wait_metric(
        "portcullis_connection_errors_total",
        &["listener=\"api\"", "reason=\"handshake_failed\""],
        2.0,
    );
    assert_eq!(
        setup.proxy.metric(
            "portcullis_tls_handshakes_total",
            &["listener=\"api\"", "result=\"success\""]
        ),
        1.0
    );
}

// ---------------------------------------------------------- max_connections

#[test]
fn max_connections_closes_extra_connections_at_accept() {
    let setup = ApiProxy::start(echo_backend(), "max_connections = 2", "");
    let mut first = setup.admitted();
    let mut second = setup.admitted();

    let started = Instant::now();
    let third = tls_connect(setup.addr, "proxy.example.org", setup.client.clone());
    let took = started.elapsed();
    match third {
        Ok(mut stream) => {
            // The handshake can only have "completed" if the proxy spoke
            // TLS, which it must not; make sure no data flows either.
            let _ = stream.write_all(b"x");
            let _ = stream.flush();
            let mut buf = [0u8; 1];
            panic!(
                "third connection completed a handshake (read: {:?})",
                stream.read(&mut buf)
            );
        }
        Err(e) => assert!(!is_read_timeout(&e), "third connection hung: {e}"),
    }
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");

    // A raw third connection gets EOF or a reset too.
    let mut raw = TcpStream::connect(setup.addr).unwrap();
    let took = wait_raw_closed(&mut raw, Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");

    assert!(
        setup.proxy.metric(
            "portcullis_connection_errors_total",
            &["listener=\"api\"", "reason=\"max_connections\""]
        ) >= 1.0,
        "{}",
        setup.proxy.metrics()
    );
    setup.proxy.expect_log("max_connections reached");

    // The two held connections are unaffected.
    echo(&mut first, b"still here");
    echo(&mut second, b"me too");

    // Release one cleanly; a new connection then gets in.
    first.conn.send_close_notify();
    first.flush().unwrap();
    let (_, end) = read_until_closed(&mut first);
    assert!(end.is_ok(), "released connection: {end:?}");
    drop(first);
    let admitted = wait_until(Duration::from_secs(5), || {
        echo_roundtrip(setup.addr, setup.client.clone()).is_ok()
    });
    assert!(
        admitted,
        "no new connection after one was released\n{}",
        setup.proxy.logs()
    );
    echo(&mut second, b"and still");
}

// ---------------------------------------------------------- PROXY protocol

/// A parsed PROXY protocol v2 header (IPv4 only, which is all we expect).
#[derive(Debug)]
struct ProxyHeader {
    version_command: u8,
    family: u8,
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: Vec<(u8, Vec<u8>)>,
    /// Length of the whole header, fixed part included.
    len: usize,
}

const PP2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Split `data` into type-length-value triples; errors when lengths overrun.
fn parse_tlvs(mut data: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut tlvs = Vec::new();
    while !data.is_empty() {
        if data.len() < 3 {
            return Err(format!("truncated TLV header: {data:?}"));
        }
        let kind = data[0];
        let len = usize::from(u16::from_be_bytes([data[1], data[2]]));
        let value = data
            .get(3..3 + len)
            .ok_or_else(|| format!("TLV {kind:#04x} of {len} bytes overruns its container"))?;
        tlvs.push((kind, value.to_vec()));
        data = &data[3 + len..];
    }
    Ok(tlvs)
}

fn parse_proxy_v2(data: &[u8]) -> Result<ProxyHeader, String> {
    if data.len() < 16 {
        return Err(format!("only {} bytes", data.len()));
    }
    if &data[..12] != PP2_SIGNATURE {
        return Err(format!("bad signature {:?}", &data[..12]));
    }
    let version_command = data[12];
    let family = data[13];
    let body_len = usize::from(u16::from_be_bytes([data[14], data[15]]));
    let body = data.get(16..16 + body_len).ok_or_else(|| {
        format!(
            "header says {body_len} body bytes, have {}",
            data.len() - 16
        )
    })?;
    if family != 0x11 {
        return Err(format!("family {family:#04x}, expected TCP over IPv4"));
    }
    if body.len() < 12 {
        return Err("IPv4 address block truncated".into());
    }
    let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    Ok(ProxyHeader {
        version_command,
        family,
        source: SocketAddr::from((ip(&body[0..4]), port(&body[8..10]))),
        destination: SocketAddr::from((ip(&body[4..8]), port(&body[10..12]))),
        tlvs: parse_tlvs(&body[12..])?,
        len: 16 + body_len,
    })
}

fn tlv(tlvs: &[(u8, Vec<u8>)], kind: u8) -> Option<&[u8]> {
    tlvs.iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

#[test]
fn proxy_protocol_v2_header_precedes_the_payload() {
    let (backend, seen) = recording_backend(b"done");
    let setup = ApiProxy::start(backend, "proxy_protocol = \"v2\"", "");

    let mut stream = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    let client_addr = stream.sock.local_addr().unwrap();
    let payload = b"GET /whoami HTTP/1.1\r\nHost: api\r\n\r\n";
    stream.write_all(payload).unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let (answer, end) = read_until_closed(&mut stream);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(answer, b"done");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let received = &seen[0];
    let header = parse_proxy_v2(received).unwrap_or_else(|e| {
        panic!("not a PROXY v2 header ({e}): {received:?}");
    });
    assert_eq!(header.version_command, 0x21, "version 2, command PROXY");
    assert_eq!(header.family, 0x11, "TCP over IPv4");
    assert_eq!(header.source, client_addr, "source is the client's socket");
    assert_eq!(
        header.destination, setup.addr,
        "destination is the listener"
    );

    let spiffe = tlv(&header.tlvs, 0xE0).expect("SPIFFE ID TLV 0xE0");
    assert_eq!(spiffe, FRONTEND_ID.as_bytes());
    let authority = tlv(&header.tlvs, 0x02).expect("authority (SNI) TLV 0x02");
    assert_eq!(authority, b"proxy.example.org");

    let ssl = tlv(&header.tlvs, 0x20).expect("SSL TLV 0x20");
    assert!(ssl.len() >= 5, "SSL TLV too short: {ssl:?}");
    assert_eq!(ssl[0] & 0x03, 0x03, "PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN");
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verify result: verified");
    let sub = parse_tlvs(&ssl[5..]).expect("SSL sub-TLVs");
    assert_eq!(tlv(&sub, 0x21), Some(&b"TLSv1.3"[..]), "{sub:?}");
    assert_eq!(tlv(&sub, 0x22), Some(&b"frontend"[..]), "{sub:?}");

    // TLV types come in ascending order, each at most once.
    let kinds: Vec<u8> = header.tlvs.iter().map(|(k, _)| *k).collect();
    let mut sorted = kinds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(kinds, sorted);

    assert_eq!(
        &received[header.len..],
        payload,
        "the payload follows the header exactly"
    );
}

// -------------------------------------------------------- graceful shutdown

#[test]
fn graceful_shutdown_drains_live_connection_then_exits_zero() {
    let mut setup = ApiProxy::start(echo_backend(), "", "[shutdown]\ndrain_timeout = \"10s\"\n");
    let mut live = setup.admitted();
    echo(&mut live, b"mid-stream");

    let signalled = Instant::now();
    setup.proxy.terminate();
    setup.proxy.expect_log("stopped accepting");

    // New connections: refused at connect, or closed at once.
    match TcpStream::connect_timeout(&setup.addr, Duration::from_secs(2)) {
        Err(_) => {}
        Ok(mut tcp) => {
            let took = wait_raw_closed(&mut tcp, Duration::from_secs(10));
            assert!(took < Duration::from_secs(2), "took {took:?}");
        }
    }
    assert!(
        echo_roundtrip(setup.addr, setup.client.clone()).is_err(),
        "a new connection was served after SIGTERM"
    );

    // The live connection keeps working after the signal.
    echo(&mut live, b"after the signal");
    echo(&mut live, &pseudo_random(64 * 1024, 7));
    assert!(
        setup.proxy.child.try_wait().unwrap().is_none(),
        "exited while a connection was live"
    );

    // The client finishes; the proxy closes its side and exits.
    live.conn.send_close_notify();
    live.flush().unwrap();
    let (_, end) = read_until_closed(&mut live);
    assert!(end.is_ok(), "{end:?}");
    let logs = exits_zero_within(&mut setup.proxy, signalled, Duration::from_secs(8));
    assert!(!logs.contains("drain timeout passed"), "{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
}

#[test]
fn graceful_shutdown_closes_idle_connection_at_drain_timeout() {
    let mut setup = ApiProxy::start(echo_backend(), "", "[shutdown]\ndrain_timeout = \"1s\"\n");
    let mut idle = setup.admitted();

    let signalled = Instant::now();
    setup.proxy.terminate();

    idle.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (got, end) = read_until_closed(&mut idle);
    let closed = signalled.elapsed();
    assert!(got.is_empty(), "unexpected bytes {got:?}");
    if let Err(e) = &end {
        assert!(!is_read_timeout(e), "idle connection never closed");
    }
    assert!(
        closed >= Duration::from_millis(900),
        "closed {closed:?} after SIGTERM, before the drain timeout"
    );

    let logs = exits_zero_within(&mut setup.proxy, signalled, Duration::from_secs(5));
    assert!(logs.contains("drain timeout passed"), "{logs}");
    assert!(logs.contains("close=cancelled"), "{logs}");
}

// ------------------------------------------------------------- idle timeout

#[test]
fn idle_connection_is_closed_after_idle_timeout() {
    let setup = ApiProxy::start(echo_backend(), "idle_timeout = \"1s\"", "");

    // Admitted (the handshake finished) but never sends a byte.
    let mut silent = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    let started = Instant::now();
    let (got, end) = read_until_closed(&mut silent);
    let took = started.elapsed();
    assert!(got.is_empty(), "unexpected bytes {got:?}");
    if let Err(e) = &end {
        assert!(!is_read_timeout(e), "idle connection never closed");
    }
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the idle timeout"
    );
    setup.proxy.expect_log("close=idle_timeout");
    let logs = setup.proxy.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("close=idle_timeout"))
        .unwrap();
    assert!(line.contains("connection closed"), "{line}");
    assert!(line.contains(FRONTEND_ID), "{line}");
}

#[test]
fn traffic_keeps_a_connection_past_the_idle_timeout() {
    let setup = ApiProxy::start(echo_backend(), "idle_timeout = \"1s\"", "");
    let mut busy = setup.admitted();
    // 2.5 s of traffic every 200 ms: never idle for the 1 s limit.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        echo(&mut busy, b"tick");
        std::thread::sleep(Duration::from_millis(200));
    }
    echo(&mut busy, b"still open");
    assert!(!setup.proxy.logs().contains("close=idle_timeout"));
}

// ------------------------------------------------------------ byte counters

#[test]
fn byte_and_connection_metrics_count_one_echo() {
    let setup = ApiProxy::start(echo_backend(), "", "");
    let mut stream = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    echo(&mut stream, &pseudo_random(10_000, 42));
    assert_eq!(
        setup.proxy.metric(
            "portcullis_connections_open",
            &["listener=\"api\"", "direction=\"inbound\""]
        ),
        1.0
    );
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let (rest, end) = read_until_closed(&mut stream);
    assert!(end.is_ok() && rest.is_empty(), "{rest:?} {end:?}");
    drop(stream);

    setup.proxy.wait_metric(
        "portcullis_connections_open",
        &["listener=\"api\"", "direction=\"inbound\""],
        0.0,
    );
    let metrics = setup.proxy.metrics();
    for direction in ["upstream", "downstream"] {
        assert_eq!(
            metric_value(
                &metrics,
                "portcullis_bytes_total",
                &["listener=\"api\"", &format!("direction=\"{direction}\"")]
            ),
            10_000.0,
            "{direction}\n{metrics}"
        );
    }
    assert_eq!(
        metric_value(
            &metrics,
            "portcullis_connections_total",
            &["listener=\"api\"", "direction=\"inbound\""]
        ),
        1.0,
        "{metrics}"
    );
    setup.proxy.expect_log("close=complete");
    let logs = setup.proxy.logs();
    assert!(logs.contains("bytes_up=10000"), "{logs}");
    assert!(logs.contains("bytes_down=10000"), "{logs}");
}
