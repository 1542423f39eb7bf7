//! Inbound authorization over real sockets: the proxy terminates mTLS in
//! front of an echo backend, and each client certificate is admitted or
//! refused exactly as the allow rules say.

mod common;

use common::*;
use time::Duration as TimeDuration;

/// A proxy with the given allow rules in front of an echo backend.
fn proxy_with_rules(pki: &Pki, rules: &str, extra: &str) -> (Proxy, std::net::SocketAddr) {
    let config = inbound_config(pki, echo_backend(), extra, rules);
    let proxy = Proxy::start(pki.dir.path(), &config);
    let addr = proxy.inbound("api");
    (proxy, addr)
}

const FRONTEND_ONLY: &str =
    "[[inbound.allow]]\nspiffe_id = \"spiffe://example.org/ns/web/sa/frontend\"\n";

fn roots(pki: &Pki) -> String {
    pki.root.cert_pem.clone()
}

#[test]
fn allowed_spiffe_id_passes_and_others_are_denied() {
    let pki = Pki::new();
    let (proxy, addr) = proxy_with_rules(&pki, FRONTEND_ONLY, "");

    let frontend = pki.intermediate.issue(&Leaf::spiffe("ns/web/sa/frontend"));
    echo_roundtrip(addr, client_config(Some(&frontend), &roots(&pki))).expect("allowed peer");

    let other = pki.intermediate.issue(&Leaf::spiffe("ns/web/sa/backend"));
    let err = echo_roundtrip(addr, client_config(Some(&other), &roots(&pki))).unwrap_err();
    assert!(
        err.to_lowercase().contains("access"),
        "expected access_denied alert, got {err}"
    );

    proxy.expect_log("peer denied");
    let logs = proxy.logs();
    assert!(
        logs.contains("spiffe://example.org/ns/web/sa/backend"),
        "{logs}"
    );
    assert!(
        logs.contains("listener=\"api\"") || logs.contains("listener=api"),
        "{logs}"
    );

    // Waited for: the proxy counts a refused handshake just after the
    // client has its alert.
    proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"allow\""],
        1.0,
    );
    proxy.wait_metric(
        "portcullis_authz_decisions_total",
        &["listener=\"api\"", "decision=\"deny\""],
        1.0,
    );
    proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["result=\"access_denied\""],
        1.0,
    );
}

#[test]
fn wrong_trust_domain_is_denied() {
    let pki = Pki::new();
    let (_proxy, addr) = proxy_with_rules(&pki, FRONTEND_ONLY, "");
    let foreign = pki.intermediate.issue(&Leaf {
        uris: vec!["spiffe://evil.org/ns/web/sa/frontend".into()],
        ..Leaf::default()
    });
    assert!(echo_roundtrip(addr, client_config(Some(&foreign), &roots(&pki))).is_err());
}

#[test]
fn missing_untrusted_expired_and_future_certs_are_denied() {
    let pki = Pki::new();
    let (proxy, addr) = proxy_with_rules(&pki, FRONTEND_ONLY, "");

    let err = echo_roundtrip(addr, client_config(None, &roots(&pki))).unwrap_err();
    assert!(!err.is_empty());

    let stranger_ca = Ca::root("Stranger CA");
    let stranger = stranger_ca.issue(&Leaf::spiffe("ns/web/sa/frontend"));
    assert!(echo_roundtrip(addr, client_config(Some(&stranger), &roots(&pki))).is_err());

    let expired = pki.intermediate.issue(&Leaf {
        not_before_offset: TimeDuration::hours(-3),
        not_after_offset: TimeDuration::hours(-1),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    assert!(echo_roundtrip(addr, client_config(Some(&expired), &roots(&pki))).is_err());

    let future = pki.intermediate.issue(&Leaf {
        not_before_offset: TimeDuration::hours(1),
        not_after_offset: TimeDuration::hours(3),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    assert!(echo_roundtrip(addr, client_config(Some(&future), &roots(&pki))).is_err());

    for result in [
        "no_client_cert",
        "unknown_ca",
        "cert_expired",
        "cert_not_yet_valid",
    ] {
        proxy.wait_metric(
            "portcullis_tls_handshakes_total",
            &[&format!("result=\"{result}\"")],
            1.0,
        );
    }
    // Nothing was authorized: no decision counted as allow.
    assert_eq!(
        proxy.metric("portcullis_authz_decisions_total", &["decision=\"allow\""]),
        0.0
    );
}

#[test]
fn revoked_cert_is_denied_when_a_crl_is_configured() {
    let pki = Pki::new();
    let revoked = pki.intermediate.issue(&Leaf {
        serial: Some(0x4242),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    let good = pki.intermediate.issue(&Leaf {
        serial: Some(0x4343),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    std::fs::write(
        pki.path("intermediate.crl"),
        pki.intermediate.crl(&[0x4242]),
    )
    .unwrap();
    let crl_line = format!("crls = [{:?}]\n", pki.path("intermediate.crl"));
    let (proxy, addr) = proxy_with_rules(&pki, FRONTEND_ONLY, &crl_line);
    echo_roundtrip(addr, client_config(Some(&good), &roots(&pki))).expect("unrevoked peer");
    assert!(echo_roundtrip(addr, client_config(Some(&revoked), &roots(&pki))).is_err());
    proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["result=\"cert_revoked\""],
        1.0,
    );
}

#[test]
fn cn_ou_and_dns_rules() {
    let pki = Pki::new();
    let rules = "[[inbound.allow]]\ncn = \"reporter\"\n\
                 [[inbound.allow]]\ndns = \"*.ops.example.org\"\nou = \"sre\"\n";
    let (_proxy, addr) = proxy_with_rules(&pki, rules, "");
    let cfg = |leaf: Leaf| client_config(Some(&pki.intermediate.issue(&leaf)), &roots(&pki));

    assert!(echo_roundtrip(
        addr,
        cfg(Leaf {
            cn: Some("reporter".into()),
            ..Leaf::default()
        })
    )
    .is_ok());
    assert!(echo_roundtrip(
        addr,
        cfg(Leaf {
            cn: Some("reporter2".into()),
            ..Leaf::default()
        })
    )
    .is_err());
    let sre = Leaf {
        dns: vec!["alice.ops.example.org".into()],
        ou: Some("sre".into()),
        ..Leaf::default()
    };
    assert!(echo_roundtrip(addr, cfg(sre.clone())).is_ok());
    // Same DNS name, wrong OU: the rule is an AND.
    assert!(echo_roundtrip(
        addr,
        cfg(Leaf {
            ou: Some("finance".into()),
            ..sre.clone()
        })
    )
    .is_err());
    // One label too deep for `*.ops.example.org`.
    assert!(echo_roundtrip(
        addr,
        cfg(Leaf {
            dns: vec!["a.b.ops.example.org".into()],
            ..sre
        })
    )
    .is_err());
}

#[test]
fn two_uri_sans_are_not_a_spiffe_id() {
    let pki = Pki::new();
    let (proxy, addr) = proxy_with_rules(&pki, FRONTEND_ONLY, "");
    let two = pki.intermediate.issue(&Leaf {
        uris: vec![
            "spiffe://example.org/ns/web/sa/frontend".into(),
            "spiffe://example.org/ns/web/sa/other".into(),
        ],
        ..Leaf::default()
    });
    assert!(echo_roundtrip(addr, client_config(Some(&two), &roots(&pki))).is_err());
    proxy.expect_log("peer has no SPIFFE ID");
}

#[test]
fn allow_any_authenticated_admits_every_verified_peer() {
    let pki = Pki::new();
    let (_proxy, addr) = proxy_with_rules(&pki, "allow_any_authenticated = true\n", "");
    let anyone = pki.intermediate.issue(&Leaf {
        cn: Some("whoever".into()),
        ..Leaf::default()
    });
    echo_roundtrip(addr, client_config(Some(&anyone), &roots(&pki))).expect("verified peer");
    let stranger = Ca::root("Stranger").issue(&Leaf {
        cn: Some("whoever".into()),
        ..Leaf::default()
    });
    assert!(echo_roundtrip(addr, client_config(Some(&stranger), &roots(&pki))).is_err());
}
