//! Key exchange over real sockets: portcullis prefers the post-quantum hybrid
//! X25519MLKEM768 and falls back to X25519 for classical peers, inbound and
//! outbound.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::NamedGroup;

const FRONTEND: &str = "spiffe://example.org/ns/web/sa/frontend";

/// An inbound proxy in front of an echo backend admitting the frontend.
fn inbound(pki: &Pki) -> (Proxy, SocketAddr) {
    let allow = format!("[[inbound.allow]]\nspiffe_id = \"{FRONTEND}\"\n");
    let config = inbound_config(pki, echo_backend(), "", &allow);
    let proxy = Proxy::start(pki.dir.path(), &config);
    let addr = proxy.inbound("api");
    (proxy, addr)
}

/// A client config on `provider` presenting the frontend's certificate.
fn client_on(provider: rustls::crypto::CryptoProvider, pki: &Pki) -> Arc<rustls::ClientConfig> {
    let frontend = pki.intermediate.issue(&Leaf::spiffe("ns/web/sa/frontend"));
    client_config_on(provider, Some(&frontend), &pki.root.cert_pem)
}

/// Handshake with the proxy, echo one message, return the group used.
fn negotiated_group(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> NamedGroup {
    let mut tls = tls_connect(addr, "proxy.example.org", config).unwrap();
    tls.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    tls.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    tls.conn
        .negotiated_key_exchange_group()
        .expect("a TLS 1.3 handshake used a group")
        .name()
}

#[test]
fn inbound_uses_the_hybrid_group_when_the_client_offers_it() {
    let pki = Pki::new();
    let (_proxy, addr) = inbound(&pki);
    // rustls on aws-lc-rs with post-quantum preferred: offers
    // X25519MLKEM768 first, with an X25519 share beside it.
    let hybrid = client_on(rustls::crypto::aws_lc_rs::default_provider(), &pki);
    assert_eq!(negotiated_group(addr, hybrid), NamedGroup::X25519MLKEM768);
    // rustls on ring knows no ML-KEM: X25519, as before.
    let classical = client_on(rustls::crypto::ring::default_provider(), &pki);
    assert_eq!(negotiated_group(addr, classical), NamedGroup::X25519);
}

/// A one-connection TLS upstream on `provider` with the payments identity;
/// sends back the group it negotiated.
fn upstream_on(
    provider: rustls::crypto::CryptoProvider,
    pki: &Pki,
) -> (SocketAddr, mpsc::Receiver<Option<NamedGroup>>) {
    let issued = pki.intermediate.issue(&payments_leaf());
    let (chain, key) = issued.rustls_chain_and_key();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut message = [0u8; 4];
        if tls.read_exact(&mut message).is_ok() {
            let group = tls.conn.negotiated_key_exchange_group().map(|g| g.name());
            let _ = tls.write_all(&message);
            let _ = tls.flush();
            let _ = sender.send(group);
        }
    });
    (addr, receiver)
}

/// An outbound proxy dialing `upstream`; one plaintext echo through it.
fn through_outbound(pki: &Pki, upstream: SocketAddr) -> Proxy {
    let (proxy, addr) = frontend_outbound(
        pki,
        upstream,
        "{ spiffe_id = \"spiffe://example.org/ns/pay/sa/payments\" }",
    );
    assert_eq!(plain_exchange(addr, b"ping").unwrap(), b"ping");
    proxy
}

#[test]
fn outbound_offers_the_hybrid_group_and_falls_back_to_x25519() {
    let pki = Pki::new();
    let (addr, group) = upstream_on(rustls::crypto::aws_lc_rs::default_provider(), &pki);
    let _proxy = through_outbound(&pki, addr);
    let group = group.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(group, Some(NamedGroup::X25519MLKEM768));

    let pki = Pki::new();
    let (addr, group) = upstream_on(rustls::crypto::ring::default_provider(), &pki);
    let _proxy = through_outbound(&pki, addr);
    let group = group.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(group, Some(NamedGroup::X25519));
}
