//! Outbound origination over real sockets: a local plaintext client talks
//! to an outbound listener, which dials an mTLS upstream (another portcullis
//! inbound listener) and checks the upstream's identity.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// An inbound proxy ("payments") in front of an echo backend, admitting
/// the frontend's SPIFFE ID. Returns the proxy and its TLS address.
fn upstream(pki: &Pki) -> (Proxy, SocketAddr) {
    pki.issue_files("payments", &payments_leaf());
    let config = format!(
        "{}{}",
        pki.identity_toml("payments"),
        inbound_table("payments", echo_backend(), &allow_spiffe("ns/web/*"))
    );
    let proxy = Proxy::start(pki.dir.path(), &config);
    let addr = proxy.inbound("payments");
    (proxy, addr)
}

fn plain_echo(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    plain_exchange(addr, b"hello upstream")
}

#[test]
fn expected_spiffe_id_connects() {
    let pki = Pki::new();
    let (_up, up_addr) = upstream(&pki);
    let (out, out_addr) = frontend_outbound(
        &pki,
        up_addr,
        "{ spiffe_id = \"spiffe://example.org/ns/pay/sa/payments\" }",
    );
    assert_eq!(plain_echo(out_addr).unwrap(), b"hello upstream");
    let metrics = out.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            "portcullis_tls_handshakes_total",
            &["direction=\"outbound\"", "result=\"success\""]
        ),
        1.0
    );
}

#[test]
fn expected_dns_name_connects() {
    let pki = Pki::new();
    let (_up, up_addr) = upstream(&pki);
    let (_out, out_addr) = frontend_outbound(&pki, up_addr, "{ dns = \"payments.pay.svc\" }");
    assert_eq!(plain_echo(out_addr).unwrap(), b"hello upstream");
}

#[test]
fn unexpected_upstream_identity_is_refused() {
    let pki = Pki::new();
    let (up, up_addr) = upstream(&pki);
    let (out, out_addr) = frontend_outbound(
        &pki,
        up_addr,
        "{ spiffe_id = \"spiffe://example.org/ns/pay/sa/ledger\" }",
    );
    let got = plain_echo(out_addr).unwrap_or_default();
    assert!(got.is_empty(), "no upstream data may flow, got {got:?}");
    out.expect_log("upstream identity not as expected");
    assert!(out
        .logs()
        .contains("spiffe://example.org/ns/pay/sa/payments"));
    let metrics = out.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            "portcullis_tls_handshakes_total",
            &["direction=\"outbound\"", "result=\"access_denied\""]
        ),
        1.0,
        "{metrics}"
    );
    // The upstream never admitted a connection to its backend.
    let up_metrics = up.metrics();
    assert_eq!(
        metric_value(
            &up_metrics,
            "portcullis_bytes_total",
            &["direction=\"upstream\""]
        ),
        0.0
    );
}

#[test]
fn upstream_from_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::named("Other");
    let (_up, up_addr) = upstream(&other);
    let (out, out_addr) = frontend_outbound(
        &pki,
        up_addr,
        "{ spiffe_id = \"spiffe://example.org/ns/pay/sa/payments\" }",
    );
    assert!(plain_echo(out_addr).unwrap_or_default().is_empty());
    let metrics = out.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            "portcullis_tls_handshakes_total",
            &["direction=\"outbound\"", "result=\"unknown_ca\""]
        ),
        1.0,
        "{}",
        out.logs()
    );
}

#[test]
fn upstream_down_closes_the_client() {
    let pki = Pki::new();
    let (_reserved, closed) = closed_port();
    let (out, out_addr) = frontend_outbound(
        &pki,
        closed,
        "{ spiffe_id = \"spiffe://example.org/ns/pay/sa/payments\" }",
    );
    assert!(plain_echo(out_addr).unwrap_or_default().is_empty());
    out.expect_log("upstream unreachable");
    assert_eq!(
        metric_value(
            &out.metrics(),
            "portcullis_connection_errors_total",
            &["reason=\"connect_failed\""]
        ),
        1.0
    );
}

/// Deterministic pseudo-random bytes (xorshift), so the receiver can check
/// every byte without holding 100 MB twice.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[test]
fn chained_inbound_and_outbound_carry_100_mb_intact() {
    const TOTAL: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let pki = Pki::new();
    let (up, up_addr) = upstream(&pki);
    let (out, out_addr) = frontend_outbound(
        &pki,
        up_addr,
        "{ spiffe_id = \"spiffe://example.org/ns/pay/sa/payments\" }",
    );
    let stream = TcpStream::connect(out_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut pattern = Pattern(0x9e3779b97f4a7c15);
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0;
        while sent < TOTAL {
            pattern.fill(&mut buf);
            writer.write_all(&buf).unwrap();
            sent += CHUNK;
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let mut expected = Pattern(0x9e3779b97f4a7c15);
    let mut want = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut received = 0usize;
    while received < TOTAL {
        expected.fill(&mut want);
        reader.read_exact(&mut got).unwrap();
        assert!(got == want, "corrupted data at offset {received}");
        received += CHUNK;
    }
    // After the full echo the chain closes cleanly: EOF, no extra bytes.
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert!(tail.is_empty());
    sender.join().unwrap();
    for proxy in [&out, &up] {
        let metrics = proxy.metrics();
        assert_eq!(
            metric_value(
                &metrics,
                "portcullis_bytes_total",
                &["direction=\"upstream\""]
            ),
            TOTAL as f64
        );
    }
}
