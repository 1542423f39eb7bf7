//! The `files` identity source over real sockets: a certificate replaced on
//! disk is served on the next handshake while an open connection keeps
//! working, and a bad replacement leaves the old certificate in force.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// The proxy's certificate (see `common::server_leaf`) with `serial`.
fn serial_leaf(serial: u64) -> Leaf {
    Leaf {
        serial: Some(serial),
        ..server_leaf()
    }
}

fn start(pki: &Pki) -> (Proxy, SocketAddr) {
    pki.issue_files("server", &serial_leaf(0x1001));
    let config = format!(
        "{}{}",
        pki.identity_toml("server"),
        inbound_table("api", echo_backend(), &allow_spiffe("ns/web/sa/frontend"))
    );
    let proxy = Proxy::start(pki.dir.path(), &config);
    let addr = proxy.inbound("api");
    (proxy, addr)
}

#[test]
fn replaced_cert_is_served_next_handshake_and_open_connection_survives() {
    let pki = Pki::new();
    let (proxy, addr) = start(&pki);
    let frontend = pki.intermediate.issue(&Leaf::spiffe("ns/web/sa/frontend"));
    let client = client_config(Some(&frontend), &pki.root.cert_pem);
    assert_eq!(
        served_serial(addr, "proxy.example.org", &client).unwrap_or_default(),
        "1001"
    );

    let mut live = tls_connect(addr, "proxy.example.org", client.clone()).unwrap();
    echo(&mut live, b"before rotation");

    let next = pki.intermediate.issue(&serial_leaf(0x2002));
    // Key first, then certificate: in between, the pair does not match and
    // must be refused without disturbing anything.
    replace_atomically(&pki.path("server.key"), &next.key_pem);
    replace_atomically(&pki.path("server.crt"), &next.chain_pem);

    let served = wait_until(Duration::from_secs(10), || {
        served_serial(addr, "proxy.example.org", &client).as_deref() == Some("2002")
    });
    assert!(served, "new cert not served; log:\n{}", proxy.logs());
    // The connection opened before the rotation still works.
    echo(&mut live, b"after rotation");
    let metrics = proxy.metrics();
    assert!(
        metric_value(
            &metrics,
            "portcullis_cert_rotations_total",
            &["result=\"success\""]
        ) >= 1.0
    );
    assert!(
        metrics.contains("serial=\"2002\"") && !metrics.contains("serial=\"1001\""),
        "cert metrics must follow the rotation:\n{metrics}"
    );
}

#[test]
fn bad_replacement_keeps_the_old_cert() {
    let pki = Pki::new();
    let (proxy, addr) = start(&pki);
    let frontend = pki.intermediate.issue(&Leaf::spiffe("ns/web/sa/frontend"));
    let client = client_config(Some(&frontend), &pki.root.cert_pem);

    replace_atomically(
        &pki.path("server.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    assert!(
        proxy.wait_for_log(
            "cannot be used; keeping the current certificate",
            Duration::from_secs(10)
        ),
        "{}",
        proxy.logs()
    );
    assert_eq!(
        served_serial(addr, "proxy.example.org", &client).unwrap_or_default(),
        "1001"
    );
    echo_roundtrip(addr, client.clone()).expect("old cert still serves");
    let metrics = proxy.metrics();
    assert!(
        metric_value(
            &metrics,
            "portcullis_cert_rotations_total",
            &["result=\"failure\""]
        ) >= 1.0
    );
    // No private key material ever reaches the logs.
    assert!(!proxy.logs().contains("PRIVATE KEY"));
}

/// A client that was admitted (so its verified chain is remembered) is
/// refused once its CA leaves the trust bundle: remembered verifications
/// do not outlive the trust material they were made under.
#[test]
fn a_client_admitted_before_is_refused_once_its_ca_leaves_the_bundle() {
    let pki = Pki::new();
    let other = Pki::named("Other");
    // Trust both roots at first.
    std::fs::write(
        pki.bundle(),
        format!("{}{}", pki.root.cert_pem, other.root.cert_pem),
    )
    .unwrap();
    let (proxy, addr) = start(&pki);
    let ours = pki.intermediate.issue(&Leaf::spiffe("ns/web/sa/frontend"));
    let theirs = other
        .intermediate
        .issue(&Leaf::spiffe("ns/web/sa/frontend"));
    let ours_cfg = client_config(Some(&ours), &pki.root.cert_pem);
    let theirs_cfg = client_config(Some(&theirs), &pki.root.cert_pem);
    for _ in 0..3 {
        echo_roundtrip(addr, theirs_cfg.clone()).expect("admitted while its root is trusted");
    }

    replace_atomically(&pki.bundle(), &pki.root.cert_pem);
    let refused = wait_until(Duration::from_secs(10), || {
        echo_roundtrip(addr, theirs_cfg.clone()).is_err()
    });
    assert!(
        refused,
        "still admitted after its root left the bundle; log:\n{}",
        proxy.logs()
    );
    // Refused from now on, every time; the other client is unaffected.
    for _ in 0..3 {
        assert!(echo_roundtrip(addr, theirs_cfg.clone()).is_err());
        echo_roundtrip(addr, ours_cfg.clone()).expect("a trusted client is still admitted");
    }
    assert!(
        metric_value(
            &proxy.metrics(),
            "portcullis_tls_handshakes_total",
            &["result=\"unknown_ca\""]
        ) >= 3.0,
        "{}",
        proxy.metrics()
    );
}
