//! The admin surface over real sockets: readiness follows our certificate,
//! `/certs` reports our chain, peer certificate expiry is exported per
//! listener, and `[[watch]]` exports the expiry of files, folders and TLS
//! endpoints, following changes.

mod common;

use std::time::Duration;

use common::*;
use time::Duration as TimeDuration;

/// The proxy's config with `extra` before one listener `api` admitting the
/// frontend; the certificate `server.crt` is the caller's to issue.
fn config(pki: &Pki, extra: &str) -> String {
    format!(
        "{}\n{extra}\n{}",
        pki.identity_toml("server"),
        inbound_table("api", echo_backend(), &allow_spiffe("ns/web/sa/frontend"))
    )
}

fn not_after(der: &[u8]) -> i64 {
    portcullis::inspect::summarize_der(der).unwrap().not_after
}

#[test]
fn readyz_is_503_with_an_expired_cert_and_200_once_a_valid_one_lands() {
    let pki = Pki::new();
    pki.issue_files(
        "server",
        &Leaf {
            not_before_offset: TimeDuration::hours(-2),
            not_after_offset: TimeDuration::hours(-1),
            ..server_leaf()
        },
    );
    let config = config(&pki, "");
    let proxy = Proxy::start_unready(pki.dir.path(), &config);
    let (status, body) = http_get(proxy.admin, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("expired"), "{body}");
    assert_eq!(http_get(proxy.admin, "/healthz").unwrap().0, 200);

    let fresh = pki.intermediate.issue(&server_leaf());
    write_private(&pki.path("server.key.tmp"), &fresh.key_pem);
    std::fs::rename(pki.path("server.key.tmp"), pki.path("server.key")).unwrap();
    std::fs::write(pki.path("server.crt.tmp"), &fresh.chain_pem).unwrap();
    std::fs::rename(pki.path("server.crt.tmp"), pki.path("server.crt")).unwrap();
    wait_for("readyz 200", Duration::from_secs(10), || {
        matches!(http_get(proxy.admin, "/readyz"), Ok((200, _)))
    });
}

#[test]
fn certs_endpoint_lists_our_chain_and_bundle_without_keys() {
    let pki = Pki::new();
    let (issued, _, _) = pki.issue_files("server", &server_leaf());
    let config = config(&pki, "");
    let proxy = Proxy::start(pki.dir.path(), &config);
    let (status, body) = http_get(proxy.admin, "/certs").unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let certs = json["certificates"].as_array().unwrap();
    let roles: Vec<&str> = certs.iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["leaf", "intermediate", "trust"]);
    assert_eq!(
        certs[0]["spiffe_id"],
        "spiffe://example.org/ns/api/sa/server"
    );
    assert_eq!(certs[0]["not_after"], not_after(&issued.cert_der));
    let left = certs[0]["seconds_left"].as_i64().unwrap();
    assert!(left > 3000 && left <= 3600, "{left}");
    assert!(!body.contains("PRIVATE"));
}

#[test]
fn peer_cert_expiry_min_is_the_soonest_seen_per_listener() {
    let pki = Pki::new();
    pki.issue_files("server", &server_leaf());
    let config = config(&pki, "");
    let proxy = Proxy::start(pki.dir.path(), &config);
    let addr = proxy.inbound("api");
    let metric = "portcullis_peer_cert_expiration_min_timestamp_seconds";
    assert_eq!(metric_value(&proxy.metrics(), metric, &[]), 0.0);

    let later = pki.intermediate.issue(&Leaf {
        not_after_offset: TimeDuration::hours(5),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    let sooner = pki.intermediate.issue(&Leaf {
        not_after_offset: TimeDuration::hours(2),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    echo_roundtrip(addr, client_config(Some(&later), &pki.root.cert_pem)).unwrap();
    echo_roundtrip(addr, client_config(Some(&sooner), &pki.root.cert_pem)).unwrap();
    echo_roundtrip(addr, client_config(Some(&later), &pki.root.cert_pem)).unwrap();
    let value = metric_value(&proxy.metrics(), metric, &["listener=\"api\""]);
    assert_eq!(value, not_after(&sooner.cert_der) as f64);
}

#[test]
fn watch_exports_files_folders_and_endpoints_and_follows_changes() {
    let pki = Pki::new();
    pki.issue_files("server", &server_leaf());
    let folder = pki.path("watched");
    std::fs::create_dir(&folder).unwrap();
    let one = pki.intermediate.issue(&Leaf {
        cn: Some("one.internal".into()),
        not_after_offset: TimeDuration::days(3),
        ..Leaf::default()
    });
    let two = pki.intermediate.issue(&Leaf {
        cn: Some("two.internal".into()),
        not_after_offset: TimeDuration::days(9),
        ..Leaf::default()
    });
    std::fs::write(folder.join("one.pem"), &one.chain_pem).unwrap();
    std::fs::write(folder.join("two.crt"), &two.chain_pem).unwrap();
    std::fs::write(folder.join("notes.txt"), "not a certificate").unwrap();
    let single = pki.path("single.pem");
    std::fs::write(&single, &one.chain_pem).unwrap();

    // A TLS endpoint to read: another portcullis inbound listener.
    let upstream = Proxy::start(pki.dir.path(), &config(&pki, ""));
    let upstream_addr = upstream.inbound("api");

    let watch = format!(
        "[[watch]]\npath = {folder:?}\ninterval = \"1s\"\n\
         [[watch]]\npath = {single:?}\ninterval = \"1s\"\n\
         [[watch]]\nendpoint = \"{upstream_addr}\"\nserver_name = \"proxy.example.org\"\ninterval = \"1s\"\n"
    );
    let config = config(&pki, &watch);
    let proxy = Proxy::start(pki.dir.path(), &config);
    let expiry = "portcullis_cert_expiration_timestamp_seconds";
    let source = |p: &std::path::Path| format!("source=\"{}\"", p.display());
    wait_for("watched series", Duration::from_secs(10), || {
        let m = proxy.metrics();
        metric_value(
            &m,
            expiry,
            &[
                "role=\"watched\"",
                &source(&folder.join("one.pem")),
                "CN=one.internal",
            ],
        ) > 0.0
            && metric_value(
                &m,
                expiry,
                &[
                    "role=\"watched\"",
                    &format!("source=\"{upstream_addr}\""),
                    "spiffe_id=\"spiffe://example.org/ns/api/sa/server\"",
                ],
            ) > 0.0
    });
    let m = proxy.metrics();
    assert_eq!(
        metric_value(
            &m,
            expiry,
            &[
                "role=\"watched\"",
                &source(&folder.join("one.pem")),
                "CN=one.internal"
            ]
        ),
        not_after(&one.cert_der) as f64
    );
    assert_eq!(
        metric_value(
            &m,
            expiry,
            &[
                "role=\"watched\"",
                &source(&folder.join("two.crt")),
                "CN=two.internal"
            ]
        ),
        not_after(&two.cert_der) as f64
    );
    assert_eq!(
        metric_value(
            &m,
            expiry,
            &["role=\"watched\"", &source(&single), "CN=one.internal"]
        ),
        not_after(&one.cert_der) as f64
    );
    assert!(!m.contains("notes.txt"));
    // Own certificates keep their own source.
    assert!(metric_value(&m, expiry, &["role=\"leaf\"", "source=\"identity\""]) > 0.0);

    // The watched file is renewed: the new expiry replaces the old series.
    let renewed = pki.intermediate.issue(&Leaf {
        cn: Some("one.internal".into()),
        not_after_offset: TimeDuration::days(30),
        serial: Some(0x7777),
        ..Leaf::default()
    });
    std::fs::write(&single, &renewed.chain_pem).unwrap();
    wait_for("renewed series", Duration::from_secs(10), || {
        metric_value(
            &proxy.metrics(),
            expiry,
            &[&source(&single), "serial=\"7777\""],
        ) == not_after(&renewed.cert_der) as f64
    });
    let m = proxy.metrics();
    let series = m
        .lines()
        .filter(|l| l.starts_with(expiry) && l.contains(&source(&single)))
        .count();
    assert_eq!(
        series, 2,
        "leaf and intermediate of the renewed file only:\n{m}"
    );

    // A file deleted from the folder disappears from the metrics.
    std::fs::remove_file(folder.join("two.crt")).unwrap();
    wait_for("removed series", Duration::from_secs(10), || {
        !proxy.metrics().contains("two.crt")
    });

    // A file that turns to garbage is counted as an error, its last values kept.
    std::fs::write(&single, "garbage").unwrap();
    wait_for("watch error", Duration::from_secs(10), || {
        metric_value(
            &proxy.metrics(),
            "portcullis_watch_errors_total",
            &[&source(&single)],
        ) >= 1.0
    });
    assert!(
        metric_value(
            &proxy.metrics(),
            expiry,
            &[&source(&single), "serial=\"7777\""]
        ) > 0.0
    );
}

/// GET over TLS with a client certificate; the HTTP status, or the error.
fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut stream = tls_connect(addr, "proxy.example.org", config).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {response:?}"))?;
    Ok((status, response))
}

#[test]
fn admin_over_mtls_admits_only_allowed_scrapers() {
    let pki = Pki::new();
    pki.issue_files("server", &server_leaf());
    let backend = echo_backend();
    // Written by hand: the admin section is the subject here.
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\nmtls = true\n\
         [[admin.allow]]\nspiffe_id = \"spiffe://example.org/ns/monitoring/sa/prometheus\"\n\n{}\n{}",
        pki.identity_toml("server"),
        inbound_table("api", backend, "allow_any_authenticated = true")
    );
    let path = pki.path("admin-mtls.toml");
    std::fs::write(&path, config).unwrap();
    let proxy = Proxy::launch(&path);
    let admin = proxy.admin;
    let scraper = pki
        .intermediate
        .issue(&Leaf::spiffe("ns/monitoring/sa/prometheus"));
    let scraper = client_config(Some(&scraper), &pki.root.cert_pem);
    // Listening since the ready file was written: no retries needed.
    let (status, body) =
        https_get(admin, "/metrics", scraper).expect("allowed scraper gets /metrics");
    assert_eq!(status, 200);
    assert!(body.contains("portcullis_build_info"));

    let other = pki.intermediate.issue(&Leaf::spiffe("ns/web/sa/frontend"));
    assert!(https_get(
        admin,
        "/metrics",
        client_config(Some(&other), &pki.root.cert_pem)
    )
    .is_err());
    assert!(https_get(admin, "/metrics", client_config(None, &pki.root.cert_pem)).is_err());
    // Plain HTTP gets nothing from an mTLS admin listener.
    assert!(!matches!(http_get(admin, "/metrics"), Ok((200, _))));
}
