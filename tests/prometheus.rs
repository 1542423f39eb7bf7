//! Prometheus over real sockets: after allowed, denied and failed
//! connections in both directions, `/metrics` passes `promtool check
//! metrics`, every metric of docs/metrics.md is there and every counter moved
//! by exactly the traffic driven; and a real Prometheus server scraping the
//! admin endpoint returns the notAfter of the certificate in use.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use portcullis::inspect::{summarize_der, CertSummary};
use time::Duration as TimeDuration;

const SIDECAR: &str = "spiffe://example.org/ns/web/sa/sidecar";
const FRONTEND: &str = "spiffe://example.org/ns/web/sa/frontend";

/// Every metric family portcullis exports (docs/metrics.md) and its type.
/// `portcullis_cert_renewal_timestamp_seconds` is left out: it only exists
/// with `[identity] source = "ca"`.
const FAMILIES: &[(&str, &str)] = &[
    ("portcullis_build_info", "gauge"),
    ("portcullis_tls_handshakes_total", "counter"),
    ("portcullis_tls_handshake_duration_seconds", "histogram"),
    ("portcullis_authz_decisions_total", "counter"),
    ("portcullis_connections_open", "gauge"),
    ("portcullis_connections_total", "counter"),
    ("portcullis_connection_errors_total", "counter"),
    ("portcullis_bytes_total", "counter"),
    ("portcullis_cert_expiration_timestamp_seconds", "gauge"),
    ("portcullis_cert_not_before_timestamp_seconds", "gauge"),
    ("portcullis_cert_rotations_total", "counter"),
    ("portcullis_config_reloads_total", "counter"),
    (
        "portcullis_config_last_reload_success_timestamp_seconds",
        "gauge",
    ),
    ("portcullis_reauthorization_closed_total", "counter"),
    (
        "portcullis_peer_cert_expiration_min_timestamp_seconds",
        "gauge",
    ),
    ("portcullis_watch_errors_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_start_time_seconds", "gauge"),
];

/// The bounded values each label may take, per metric.
const BOUNDED: &[(&str, &str, &[&str])] = &[
    (
        "portcullis_tls_handshakes_total",
        "result",
        &[
            "success",
            "timeout",
            "peer_closed",
            "protocol_error",
            "io_error",
            "access_denied",
            "unknown_ca",
            "cert_expired",
            "cert_not_yet_valid",
            "cert_revoked",
            "bad_certificate",
            "decrypt_error",
            "unsupported_certificate",
            "certificate_unknown",
            "no_client_cert",
            "alert_received",
            "incompatible",
        ],
    ),
    (
        "portcullis_tls_handshakes_total",
        "direction",
        &["inbound", "outbound"],
    ),
    (
        "portcullis_connections_total",
        "direction",
        &["inbound", "outbound"],
    ),
    (
        "portcullis_connection_errors_total",
        "reason",
        &[
            "max_connections",
            "connect_failed",
            "handshake_failed",
            "proxy_header",
        ],
    ),
    (
        "portcullis_bytes_total",
        "direction",
        &["upstream", "downstream"],
    ),
    (
        "portcullis_authz_decisions_total",
        "decision",
        &["allow", "deny", "would_deny"],
    ),
    (
        "portcullis_authz_decisions_total",
        "policy",
        &["enforced", "shadow"],
    ),
    (
        "portcullis_cert_expiration_timestamp_seconds",
        "role",
        &["leaf", "intermediate", "trust", "watched"],
    ),
    (
        "portcullis_cert_rotations_total",
        "result",
        &["success", "failure"],
    ),
    (
        "portcullis_config_reloads_total",
        "result",
        &["success", "failure"],
    ),
];

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn summary(der: &[u8]) -> CertSummary {
    summarize_der(der).unwrap()
}

fn local(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Problems found so far; the test fails at the end with all of them, so one
/// run reports every missing metric and every wrong count.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn finish(self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{} problem(s):\n  - {}\n{context}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

/// One expected value: the sum of the samples of `metric` whose labels
/// contain every `labels` entry (`k="v"`).
struct Want {
    metric: String,
    labels: Vec<String>,
    value: f64,
}

fn want(metric: &str, labels: &[&str], value: f64) -> Want {
    Want {
        metric: metric.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        value,
    }
}

impl Want {
    fn actual(&self, metrics: &str) -> f64 {
        let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        metric_value(metrics, &self.metric, &labels)
    }
}

/// Poll `/metrics` until every expectation holds (counters are bumped by the
/// proxy's connection tasks, a moment after the client sees the outcome) or
/// `timeout` passes. Mismatches go to `report`; returns the last scrape.
fn expect_values(proxy: &Proxy, wants: &[Want], timeout: Duration, report: &mut Report) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = proxy.metrics();
        let wrong: Vec<&Want> = wants
            .iter()
            .filter(|w| w.actual(&metrics) != w.value)
            .collect();
        if wrong.is_empty() {
            return metrics;
        }
        if Instant::now() >= deadline {
            for w in wrong {
                report.check(false, || {
                    format!(
                        "{}{{{}}} = {}, expected {}",
                        w.metric,
                        w.labels.join(","),
                        w.actual(&metrics),
                        w.value
                    )
                });
            }
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The labels of one sample line, unescaped.
fn labels_of(line: &str) -> Vec<(String, String)> {
    let Some(start) = line.find('{') else {
        return Vec::new();
    };
    let mut labels = Vec::new();
    let mut rest = &line[start + 1..];
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((name, value));
        rest = &rest[end..];
        if rest.starts_with('}') {
            break;
        }
    }
    labels
}

/// Sample lines of `metric` (not of longer names sharing its prefix).
fn samples<'a>(metrics: &'a str, metric: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    metrics.lines().filter(move |l| {
        l.strip_prefix(metric)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// `promtool check metrics` on `metrics`: Ok when it exits 0 and prints no
/// lint problem.
fn promtool_check_metrics(metrics: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}\n{said}", output.status))
    }
}

// ------------------------------------------------------------ live /metrics

/// Addresses and files of the proxy under test.
struct Layout {
    /// The one fixed port (`free_port`): outbound `chain` of the same proxy
    /// dials it, so it must be known before the proxy starts. Every other
    /// listener binds port 0.
    api: u16,
    echo: SocketAddr,
    closed_backend: SocketAddr,
    closed_upstream: SocketAddr,
    watched: PathBuf,
    missing: PathBuf,
}

impl Layout {
    /// The config (without `[admin]`): inbound `api` in front of an echo
    /// backend, inbound `down` whose backend is not listening, inbound `tiny`
    /// with room for one connection, outbound `chain` dialing `api` of this
    /// same proxy (so one connection crosses both directions), outbound
    /// `nowhere` whose upstream is not listening, and two `[[watch]]` files,
    /// one of them missing. `api_allow` are the SPIFFE IDs `api` admits.
    fn config(&self, pki: &Pki, api_allow: &[&str]) -> String {
        let allow = |ids: &[&str]| -> String {
            ids.iter()
                .map(|id| format!("[[inbound.allow]]\nspiffe_id = \"{id}\"\n"))
                .collect()
        };
        let expect = format!("{{ spiffe_id = \"{SIDECAR}\" }}");
        let sni = "server_name = \"proxy.example.org\"";
        format!(
            "{identity}\n{api}{down}{tiny}{chain}{nowhere}\n\
             [[watch]]\npath = {watched:?}\ninterval = \"1h\"\n\n\
             [[watch]]\npath = {missing:?}\ninterval = \"1h\"\n",
            identity = pki.identity_toml("proxy"),
            api = inbound_table_on(
                "api",
                local(self.api),
                self.echo,
                &format!("reauthorize_on_reload = true\n{}", allow(api_allow))
            ),
            down = inbound_table("down", self.closed_backend, &allow(&[FRONTEND])),
            tiny = inbound_table(
                "tiny",
                self.echo,
                &format!("max_connections = 1\n{}", allow(&[FRONTEND]))
            ),
            chain = outbound_table("chain", local(self.api), &expect, sni),
            nowhere = outbound_table("nowhere", self.closed_upstream, &expect, sni),
            watched = self.watched,
            missing = self.missing,
        )
    }
}

fn proxy_leaf(serial: u64) -> Leaf {
    Leaf {
        dns: vec!["proxy.example.org".into()],
        serial: Some(serial),
        ..Leaf::spiffe("ns/web/sa/sidecar")
    }
}

#[test]
fn metrics_pass_promtool_and_count_exactly_the_traffic() {
    if !require_tool("promtool") {
        return;
    }
    let pki = Pki::new();
    let (proxy_cert, _, _) = pki.issue_files("proxy", &proxy_leaf(0x5151));
    let config_dir = tempfile::tempdir().unwrap();
    let watched_cert = pki.intermediate.issue(&Leaf {
        cn: Some("watched.internal".into()),
        not_after_offset: TimeDuration::days(5),
        ..Leaf::default()
    });
    let (_closed_backend, closed_backend) = closed_port();
    let (_closed_upstream, closed_upstream) = closed_port();
    let layout = Layout {
        api: free_port(),
        echo: echo_backend(),
        closed_backend,
        closed_upstream,
        watched: pki.path("watched.pem"),
        missing: pki.path("missing.pem"),
    };
    std::fs::write(&layout.watched, &watched_cert.chain_pem).unwrap();
    let proxy = Proxy::start(
        config_dir.path(),
        &layout.config(&pki, &[FRONTEND, SIDECAR]),
    );
    let mut report = Report::default();

    // Clients: an allowed frontend whose certificate expires before the
    // proxy's (so it is the soonest peer expiry), a peer of the same CA with
    // the wrong SPIFFE ID, a frontend from an untrusted CA, and no cert.
    let frontend = pki.intermediate.issue(&Leaf {
        not_after_offset: TimeDuration::minutes(20),
        ..Leaf::spiffe("ns/web/sa/frontend")
    });
    let roots = pki.root.cert_pem.clone();
    let allowed = client_config(Some(&frontend), &roots);
    let intruder = pki.intermediate.issue(&Leaf::spiffe("ns/web/sa/intruder"));
    let stranger = Ca::root("Stranger CA").issue(&Leaf::spiffe("ns/web/sa/frontend"));

    // ---- inbound `api`: 2 allowed, 1 denied, 1 without cert, 1 untrusted.
    for _ in 0..2 {
        echo_roundtrip(local(layout.api), allowed.clone()).expect("allowed peer");
    }
    let denied = echo_roundtrip(local(layout.api), client_config(Some(&intruder), &roots));
    assert!(denied.is_err(), "wrong SPIFFE ID admitted");
    let no_cert = echo_roundtrip(local(layout.api), client_config(None, &roots));
    assert!(no_cert.is_err(), "client without certificate admitted");
    let untrusted = echo_roundtrip(local(layout.api), client_config(Some(&stranger), &roots));
    assert!(untrusted.is_err(), "untrusted CA admitted");

    // ---- outbound `chain` -> inbound `api` of the same proxy.
    let got = plain_exchange(proxy.outbound("chain"), b"hello upstream").unwrap();
    assert_eq!(got, b"hello upstream");

    // ---- inbound `down`: admitted, backend not listening.
    assert!(echo_roundtrip(proxy.inbound("down"), allowed.clone()).is_err());

    // ---- outbound `nowhere`: upstream not listening.
    assert!(plain_exchange(proxy.outbound("nowhere"), b"x")
        .unwrap_or_default()
        .is_empty());

    // ---- inbound `tiny` (max_connections = 1): one silent connection holds
    // the slot, a second is closed at accept, then the first leaves
    // mid-handshake.
    let holder = TcpStream::connect(proxy.inbound("tiny")).unwrap();
    expect_values(
        &proxy,
        &[want(
            "portcullis_connections_open",
            &["listener=\"tiny\""],
            1.0,
        )],
        Duration::from_secs(5),
        &mut report,
    );
    // A connection over max_connections is closed at once.
    let mut refused = TcpStream::connect(proxy.inbound("tiny")).unwrap();
    wait_raw_closed(&mut refused, Duration::from_secs(5));
    expect_values(
        &proxy,
        &[want(
            "portcullis_connection_errors_total",
            &["listener=\"tiny\"", "reason=\"max_connections\""],
            1.0,
        )],
        Duration::from_secs(5),
        &mut report,
    );
    drop(holder);

    // ---- every counter moved by exactly that much.
    let hs = "portcullis_tls_handshakes_total";
    let dur = "portcullis_tls_handshake_duration_seconds_count";
    let authz = "portcullis_authz_decisions_total";
    let conns = "portcullis_connections_total";
    let open = "portcullis_connections_open";
    let errs = "portcullis_connection_errors_total";
    let bytes = "portcullis_bytes_total";
    let (inb, outb) = ("direction=\"inbound\"", "direction=\"outbound\"");
    let (api, down, tiny, chain, nowhere) = (
        "listener=\"api\"",
        "listener=\"down\"",
        "listener=\"tiny\"",
        "listener=\"chain\"",
        "listener=\"nowhere\"",
    );
    // `api` sees 2 direct allowed + 1 from `chain` + 3 refused = 6 handshakes.
    let wants = vec![
        want(hs, &[api, inb, "result=\"success\""], 3.0),
        want(hs, &[api, inb, "result=\"access_denied\""], 1.0),
        want(hs, &[api, inb, "result=\"no_client_cert\""], 1.0),
        want(hs, &[api, inb, "result=\"unknown_ca\""], 1.0),
        want(hs, &[down, inb, "result=\"success\""], 1.0),
        want(hs, &[tiny, inb, "result=\"peer_closed\""], 1.0),
        want(hs, &[chain, outb, "result=\"success\""], 1.0),
        want(hs, &[], 9.0),
        want(dur, &[api, inb], 6.0),
        want(dur, &[down, inb], 1.0),
        want(dur, &[tiny, inb], 1.0),
        want(dur, &[chain, outb], 1.0),
        want(dur, &[], 9.0),
        want(authz, &[api, "decision=\"allow\""], 3.0),
        want(authz, &[api, "decision=\"deny\""], 1.0),
        want(authz, &[down, "decision=\"allow\""], 1.0),
        want(authz, &[chain, "decision=\"allow\""], 1.0),
        want(authz, &[], 6.0),
        want(conns, &[api, inb], 6.0),
        want(conns, &[down, inb], 1.0),
        want(conns, &[tiny, inb], 1.0),
        want(conns, &[chain, outb], 1.0),
        want(conns, &[nowhere, outb], 1.0),
        want(conns, &[], 10.0),
        want(open, &[], 0.0),
        want(errs, &[api, inb, "reason=\"handshake_failed\""], 3.0),
        want(errs, &[down, inb, "reason=\"connect_failed\""], 1.0),
        want(errs, &[tiny, inb, "reason=\"max_connections\""], 1.0),
        want(errs, &[tiny, inb, "reason=\"handshake_failed\""], 1.0),
        want(errs, &[nowhere, outb, "reason=\"connect_failed\""], 1.0),
        want(errs, &[], 7.0),
        // 2 x "ping" and "hello upstream" each way through `api`; the
        // latter also through `chain`.
        want(bytes, &[api, "direction=\"upstream\""], 22.0),
        want(bytes, &[api, "direction=\"downstream\""], 22.0),
        want(bytes, &[chain, "direction=\"upstream\""], 14.0),
        want(bytes, &[chain, "direction=\"downstream\""], 14.0),
        want(bytes, &[], 72.0),
        want(
            "portcullis_build_info",
            &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))],
            1.0,
        ),
        // Soonest peer expiry: the frontend on `api` and `down`, this proxy's
        // own certificate as the upstream of `chain`.
        want(
            "portcullis_peer_cert_expiration_min_timestamp_seconds",
            &[api],
            summary(&frontend.cert_der).not_after as f64,
        ),
        want(
            "portcullis_peer_cert_expiration_min_timestamp_seconds",
            &[down],
            summary(&frontend.cert_der).not_after as f64,
        ),
        want(
            "portcullis_peer_cert_expiration_min_timestamp_seconds",
            &[chain],
            summary(&proxy_cert.cert_der).not_after as f64,
        ),
        want(
            "portcullis_watch_errors_total",
            &[&format!("source=\"{}\"", layout.missing.display())],
            1.0,
        ),
        want("portcullis_watch_errors_total", &[], 1.0),
    ];
    let metrics = expect_values(&proxy, &wants, Duration::from_secs(10), &mut report);
    for listener in [tiny, nowhere] {
        report.check(
            !samples(
                &metrics,
                "portcullis_peer_cert_expiration_min_timestamp_seconds",
            )
            .any(|l| l.contains(listener)),
            || format!("peer expiry exported for {listener}, which saw no peer certificate"),
        );
    }

    // ---- certificate gauges: our chain, bundle and the watched file.
    let cert_series = |role: &str, cert: &CertSummary, source: &str| {
        let labels = [
            format!("role=\"{role}\""),
            format!("subject=\"{}\"", cert.subject),
            format!("serial=\"{}\"", cert.serial),
            format!("spiffe_id=\"{}\"", cert.spiffe_id.as_deref().unwrap_or("")),
            format!("source=\"{source}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        vec![
            want(
                "portcullis_cert_expiration_timestamp_seconds",
                &labels,
                cert.not_after as f64,
            ),
            want(
                "portcullis_cert_not_before_timestamp_seconds",
                &labels,
                cert.not_before as f64,
            ),
        ]
    };
    let leaf = summary(&proxy_cert.cert_der);
    let watched_source = layout.watched.display().to_string();
    let mut cert_wants = Vec::new();
    cert_wants.extend(cert_series("leaf", &leaf, "identity"));
    cert_wants.extend(cert_series(
        "intermediate",
        &summary(&pki.intermediate.cert_der),
        "identity",
    ));
    cert_wants.extend(cert_series(
        "trust",
        &summary(&pki.root.cert_der),
        "identity",
    ));
    cert_wants.extend(cert_series(
        "watched",
        &summary(&watched_cert.cert_der),
        &watched_source,
    ));
    cert_wants.extend(cert_series(
        "watched",
        &summary(&pki.intermediate.cert_der),
        &watched_source,
    ));
    // Exactly those five series, nothing else.
    let count_series =
        |metrics: &str| samples(metrics, "portcullis_cert_expiration_timestamp_seconds").count();
    expect_values(&proxy, &cert_wants, Duration::from_secs(5), &mut report);
    let n = count_series(&proxy.metrics());
    report.check(n == 5, || {
        format!("{n} certificate expiry series, expected 5")
    });

    // ---- rotation: a new certificate installed, then garbage refused.
    let rotated = pki.intermediate.issue(&proxy_leaf(0x5252));
    replace_atomically(&pki.path("proxy.key"), &rotated.key_pem);
    replace_atomically(&pki.path("proxy.crt"), &rotated.chain_pem);
    let mut rotated_wants = vec![want(
        "portcullis_cert_rotations_total",
        &["result=\"success\""],
        1.0,
    )];
    rotated_wants.extend(cert_series("leaf", &summary(&rotated.cert_der), "identity"));
    expect_values(&proxy, &rotated_wants, Duration::from_secs(10), &mut report);
    replace_atomically(
        &pki.path("proxy.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    rotated_wants.push(want(
        "portcullis_cert_rotations_total",
        &["result=\"failure\""],
        1.0,
    ));
    let metrics = expect_values(&proxy, &rotated_wants, Duration::from_secs(10), &mut report);
    report.check(!metrics.contains("serial=\"5151\""), || {
        "the rotated-out certificate still has series".into()
    });
    let n = count_series(&metrics);
    report.check(n == 5, || {
        format!("{n} certificate expiry series after rotation, expected 5")
    });

    // ---- reload: `api` stops admitting the frontend, whose live
    // connection is closed; then a broken config is refused.
    let mut live = tls_connect(local(layout.api), "proxy.example.org", allowed.clone()).unwrap();
    live.write_all(b"live").unwrap();
    let mut buf = [0u8; 4];
    live.read_exact(&mut buf).unwrap();
    let before_reload = unix_now();
    proxy.rewrite_config(&layout.config(&pki, &[SIDECAR]));
    expect_values(
        &proxy,
        &[
            want(
                "portcullis_config_reloads_total",
                &["result=\"success\""],
                1.0,
            ),
            want("portcullis_reauthorization_closed_total", &[api], 1.0),
        ],
        Duration::from_secs(10),
        &mut report,
    );
    report.check(
        wait_closed(&mut live, Duration::from_secs(5)).is_ok(),
        || "the connection of a peer no longer allowed stayed open".into(),
    );
    let last_success = metric_value(
        &proxy.metrics(),
        "portcullis_config_last_reload_success_timestamp_seconds",
        &[],
    );
    report.check(
        last_success >= before_reload as f64 && last_success <= unix_now() as f64,
        || format!("last reload success {last_success}, reload at {before_reload}"),
    );
    proxy.rewrite_config("[identity]\nsource = \"nowhere\"\n");
    let metrics = expect_values(
        &proxy,
        &[
            want(
                "portcullis_config_reloads_total",
                &["result=\"failure\""],
                1.0,
            ),
            want(
                "portcullis_config_reloads_total",
                &["result=\"success\""],
                1.0,
            ),
            want(
                "portcullis_config_last_reload_success_timestamp_seconds",
                &[],
                last_success,
            ),
        ],
        Duration::from_secs(10),
        &mut report,
    );

    // ---- every family present with its type; bounded label values.
    for (family, kind) in FAMILIES {
        report.check(
            metrics.contains(&format!("\n# TYPE {family} {kind}\n")),
            || format!("metric {family} ({kind}) missing"),
        );
    }
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let value = metric_value(&metrics, name, &[]);
        report.check(value > 0.0, || format!("{name} = {value}"));
    }
    for (metric, label, values) in BOUNDED {
        for line in samples(&metrics, metric) {
            for (name, value) in labels_of(line) {
                report.check(name != *label || values.contains(&value.as_str()), || {
                    format!("{metric}: {label}=\"{value}\" is not one of {values:?}")
                });
            }
        }
    }
    if let Err(problem) = promtool_check_metrics(&metrics) {
        report.check(false, || problem);
    }
    report.finish(&format!("/metrics:\n{metrics}\nlog:\n{}", proxy.logs()));
}

// -------------------------------------------------- a real Prometheus server

/// A `prometheus` server on loopback; killed on drop.
struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Start Prometheus scraping `target` every second, with our alerting
    /// rules loaded, and wait until it is ready.
    fn start(target: SocketAddr) -> PrometheusServer {
        let dir = tempfile::tempdir().unwrap();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/rules.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: portcullis\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A fixed port: prometheus does not report one given as port 0.
        let addr = local(free_port());
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("cannot start prometheus");
        let mut server = PrometheusServer {
            child,
            addr,
            log,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        if !answers_200(
            &mut self.child,
            self.addr,
            "/-/ready",
            Duration::from_secs(30),
        ) {
            panic!("prometheus not ready in 30s; log:\n{}", self.logs());
        }
    }

    /// `GET /api/v1/<what>?query=<query>`, parsed.
    fn api(&self, what: &str, query: &str) -> serde_json::Value {
        let path = format!("/api/v1/{what}?query={}", url_encode(query));
        let (status, body) = http_get(self.addr, &path).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// The instant vector `query` returns, once it has at least one sample.
    fn query_until_found(&self, query: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.api("query", query);
            assert_eq!(answer["status"], "success", "{answer}");
            let result = answer["data"]["result"].as_array().cloned();
            if let Some(result) = result.filter(|r| !r.is_empty()) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "no result for {query} within {timeout:?}; prometheus log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encode everything but unreserved characters (RFC 3986).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The float value of one instant-vector sample (`[time, "value"]`).
fn sample_value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}

#[test]
fn prometheus_scrapes_the_not_after_of_the_certificate_in_use() {
    if !require_tool("prometheus") {
        return;
    }
    let pki = Pki::new();
    let (issued, _, _) = pki.issue_files("proxy", &proxy_leaf(0x6161));
    let config = format!(
        "{}{}",
        pki.identity_toml("proxy"),
        inbound_table("api", echo_backend(), &allow_spiffe("ns/web/sa/frontend"))
    );
    let proxy = Proxy::start(pki.dir.path(), &config);
    let prometheus = PrometheusServer::start(proxy.admin);
    let leaf = summary(&issued.cert_der);

    let found = prometheus.query_until_found(
        "portcullis_cert_expiration_timestamp_seconds{role=\"leaf\"}",
        Duration::from_secs(30),
    );
    assert_eq!(found.len(), 1, "one leaf certificate: {found:?}");
    let labels = &found[0]["metric"];
    assert_eq!(labels["serial"], leaf.serial.as_str(), "{labels}");
    assert_eq!(labels["spiffe_id"], SIDECAR, "{labels}");
    assert_eq!(labels["source"], "identity", "{labels}");
    assert_eq!(labels["job"], "portcullis", "{labels}");
    assert_eq!(labels["instance"], proxy.admin.to_string(), "{labels}");
    assert_eq!(sample_value(&found[0]), leaf.not_after as f64);

    // The same scrape brought notBefore, and `time()` arithmetic as the
    // alerting rules use it gives the seconds left.
    let not_before = prometheus.query_until_found(
        "portcullis_cert_not_before_timestamp_seconds{role=\"leaf\"}",
        Duration::from_secs(5),
    );
    assert_eq!(sample_value(&not_before[0]), leaf.not_before as f64);
    let left = prometheus.query_until_found(
        "portcullis_cert_expiration_timestamp_seconds{role=\"leaf\"} - time()",
        Duration::from_secs(5),
    );
    let expected_left = (leaf.not_after - unix_now()) as f64;
    assert!(
        (sample_value(&left[0]) - expected_left).abs() < 60.0,
        "{left:?} vs {expected_left}"
    );

    // Our alerting rules load into a real server and evaluate without error
    // against real series.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(prometheus.addr, "/api/v1/rules").unwrap();
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<&serde_json::Value> = answer["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert!(rules.len() >= 10, "rules not loaded: {body}");
        let bad: Vec<&&serde_json::Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
        if bad.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not healthy: {bad:?}\nprometheus log:\n{}",
            prometheus.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Nothing fires for a healthy proxy with a fresh certificate.
    let alerts = prometheus.api("query", "ALERTS");
    assert_eq!(
        alerts["data"]["result"].as_array().map(Vec::len),
        Some(0),
        "{alerts}"
    );
}
