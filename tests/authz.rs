//! Authorization you can try before you enforce it, over real sockets:
//! audit mode, shadow rules, `portcullis authz explain` against the running
//! proxy's own decisions, and `/peers` + `portcullis authz suggest` turning
//! observed traffic into rules that admit exactly what was seen.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn spiffe_rule(path: &str) -> String {
    format!("[[inbound.allow]]\nspiffe_id = \"spiffe://{TD}/{path}\"\n")
}

fn shadow_rule(path: &str) -> String {
    format!("[[inbound.shadow_allow]]\nspiffe_id = \"spiffe://{TD}/{path}\"\n")
}

/// A proxy with one inbound listener `api` whose body is `listener_body`.
struct Fixture {
    pki: Pki,
    proxy: Proxy,
    addr: SocketAddr,
    backend: SocketAddr,
}

impl Fixture {
    fn new(global_extra: &str, listener_body: &str) -> Fixture {
        Fixture::with_admin("", global_extra, listener_body)
    }

    /// With `admin_keys` inside the `[admin]` section.
    fn with_admin(admin_keys: &str, global_extra: &str, listener_body: &str) -> Fixture {
        let pki = Pki::new();
        let backend = echo_backend();
        // Proxy::start puts `[admin]` first, so keys at the very start of
        // the config belong to it.
        let config = format!(
            "{admin_keys}\n{}",
            inbound_config(&pki, backend, global_extra, listener_body)
        );
        let proxy = Proxy::start(pki.dir.path(), &config);
        let addr = proxy.inbound("api");
        Fixture {
            pki,
            proxy,
            addr,
            backend,
        }
    }

    /// A client certificate for `ns/<path>` under the test intermediate.
    fn client(&self, path: &str) -> Issued {
        self.pki.intermediate.issue(&Leaf::spiffe(path))
    }

    fn config(&self, client: &Issued) -> Arc<rustls::ClientConfig> {
        client_config(Some(client), &self.pki.root.cert_pem)
    }

    fn admitted(&self, client: &Issued) -> bool {
        echo_roundtrip(self.addr, self.config(client)).is_ok()
    }

    fn metric(&self, metric: &str, labels: &[&str]) -> f64 {
        metric_value(&self.proxy.metrics(), metric, labels)
    }

    /// Replace the listener's body (same address and backend) and reload
    /// with SIGHUP; waits for the reload to be logged.
    fn reload_listener(&self, listener_body: &str) {
        let before = self.proxy.logs().matches("config reloaded").count();
        self.proxy.rewrite_config(&format!(
            "{}\n{}",
            self.pki.identity_toml("server"),
            inbound_table_on("api", self.addr, self.backend, listener_body)
        ));
        unsafe_kill(self.proxy.child.id(), "HUP");
        wait_for("the reload", Duration::from_secs(10), || {
            self.proxy.logs().matches("config reloaded").count() > before
        });
    }
}

#[test]
fn audit_mode_admits_a_denied_peer_and_says_would_deny() {
    let fx = Fixture::new(
        "",
        &format!(
            "authz_mode = \"audit\"\n{}",
            spiffe_rule("ns/web/sa/frontend")
        ),
    );
    let frontend = fx.client("ns/web/sa/frontend");
    let intruder = fx.client("ns/web/sa/intruder");
    assert!(fx.admitted(&frontend));
    assert!(
        fx.admitted(&intruder),
        "audit mode lets the denied peer through"
    );
    let enforced = |decision: &str| {
        fx.metric(
            "portcullis_authz_decisions_total",
            &[
                "listener=\"api\"",
                "policy=\"enforced\"",
                &format!("decision=\"{decision}\""),
            ],
        )
    };
    assert_eq!(
        (enforced("allow"), enforced("would_deny"), enforced("deny")),
        (1.0, 1.0, 0.0)
    );
    assert!(
        fx.proxy.wait_for_log(
            "peer would be denied (authz_mode = \"audit\"); admitted",
            Duration::from_secs(5)
        ),
        "{}",
        fx.proxy.logs()
    );
    let line = fx
        .proxy
        .logs()
        .lines()
        .find(|l| l.contains("peer would be denied"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("spiffe://example.org/ns/web/sa/intruder"),
        "{line}"
    );
    assert!(
        line.contains("rule 0: spiffe_id") && line.contains("would_deny"),
        "the same rule-by-rule reason a denial carries: {line}"
    );

    // Chain and trust checks still apply: a foreign CA's client is refused.
    let foreign = Pki::named("Foreign")
        .intermediate
        .issue(&Leaf::spiffe("ns/web/sa/frontend"));
    assert!(
        !fx.admitted(&foreign),
        "an untrusted chain is refused in audit mode"
    );
    assert_eq!(
        fx.metric(
            "portcullis_tls_handshakes_total",
            &["listener=\"api\"", "result=\"unknown_ca\""]
        ),
        1.0
    );
}

#[test]
fn switching_audit_to_enforce_by_reload_drops_no_stream() {
    let audit_body = format!(
        "authz_mode = \"audit\"\n{}",
        spiffe_rule("ns/web/sa/frontend")
    );
    let fx = Fixture::new("", &audit_body);
    let frontend = fx.client("ns/web/sa/frontend");
    let intruder = fx.client("ns/web/sa/intruder");
    // 10 live streams: 5 of the allowed peer, 5 of the audited intruder.
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..10)
        .map(|i| {
            let config = fx.config(if i % 2 == 0 { &frontend } else { &intruder });
            let (addr, stop) = (fx.addr, stop.clone());
            let mut stream = tls_connect(addr, "proxy.example.org", config).unwrap();
            std::thread::spawn(move || -> Result<usize, String> {
                use std::io::{Read, Write};
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    let message = format!("stream {i} round {rounds}\n");
                    stream
                        .write_all(message.as_bytes())
                        .and_then(|_| stream.flush())
                        .map_err(|e| format!("stream {i}: write: {e}"))?;
                    let mut echo = vec![0u8; message.len()];
                    stream
                        .read_exact(&mut echo)
                        .map_err(|e| format!("stream {i}: read after {rounds} rounds: {e}"))?;
                    if echo != message.as_bytes() {
                        return Err(format!("stream {i}: wrong echo"));
                    }
                    rounds += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(rounds)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    fx.reload_listener(&spiffe_rule("ns/web/sa/frontend"));
    std::thread::sleep(Duration::from_millis(500));
    // The next denied peer gets access_denied; the allowed one still gets in.
    let refused = echo_roundtrip(fx.addr, fx.config(&intruder)).unwrap_err();
    assert!(refused.contains("AccessDenied"), "{refused}");
    assert!(fx.admitted(&frontend));
    stop.store(true, Ordering::Relaxed);
    for stream in streams {
        let rounds = stream.join().unwrap().expect("no live stream is dropped");
        assert!(rounds > 5, "each stream kept flowing ({rounds} rounds)");
    }
}

#[test]
fn shadow_rules_are_counted_for_every_combination_and_change_nothing() {
    // Enforced admits a, b, c; the shadow set would admit b, c, d.
    // a: allow/deny, b and c: allow/allow, d: deny/allow, e and f: deny/deny.
    let body = format!(
        "{}{}{}{}{}{}",
        spiffe_rule("ns/t/sa/a"),
        spiffe_rule("ns/t/sa/b"),
        spiffe_rule("ns/t/sa/c"),
        shadow_rule("ns/t/sa/b"),
        shadow_rule("ns/t/sa/c"),
        shadow_rule("ns/t/sa/d"),
    );
    let fx = Fixture::new("", &body);
    let mut outcomes = Vec::new();
    for who in ["a", "b", "c", "d", "e", "f"] {
        let client = fx.client(&format!("ns/t/sa/{who}"));
        outcomes.push((who, fx.admitted(&client)));
    }
    assert_eq!(
        outcomes,
        [
            ("a", true),
            ("b", true),
            ("c", true),
            ("d", false),
            ("e", false),
            ("f", false)
        ],
        "shadow rules never change the outcome"
    );
    let decisions = |policy: &str, decision: &str| {
        fx.metric(
            "portcullis_authz_decisions_total",
            &[
                "listener=\"api\"",
                &format!("policy=\"{policy}\""),
                &format!("decision=\"{decision}\""),
            ],
        )
    };
    assert_eq!(decisions("enforced", "allow"), 3.0);
    assert_eq!(decisions("enforced", "deny"), 3.0);
    assert_eq!(decisions("shadow", "allow"), 3.0);
    assert_eq!(decisions("shadow", "deny"), 3.0);
    let disagreements = |enforced: &str, shadow: &str| {
        fx.metric(
            "portcullis_authz_shadow_disagreements_total",
            &[
                "listener=\"api\"",
                &format!("enforced=\"{enforced}\""),
                &format!("shadow=\"{shadow}\""),
            ],
        )
    };
    assert_eq!(disagreements("allow", "deny"), 1.0);
    assert_eq!(disagreements("deny", "allow"), 1.0);
    assert_eq!(
        fx.metric("portcullis_authz_shadow_disagreements_total", &[]),
        2.0
    );
    // One log line per disagreeing identity, and a second handshake of the
    // same identity within the minute is counted but not logged again.
    let a = fx.client("ns/t/sa/a");
    assert!(fx.admitted(&a));
    assert_eq!(disagreements("allow", "deny"), 2.0);
    let logged = |who: &str| {
        fx.proxy
            .logs()
            .lines()
            .filter(|l| {
                l.contains("shadow rules disagree")
                    && l.contains(&format!("peer_identity=spiffe://example.org/{who} "))
            })
            .count()
    };
    assert_eq!(logged("ns/t/sa/a"), 1, "{}", fx.proxy.logs());
    assert_eq!(logged("ns/t/sa/d"), 1);
}

/// `portcullis authz explain` on `cert`; (exit code, stdout, stderr).
fn explain(config: &Path, cert: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command
        .args(["authz", "explain", "-c"])
        .arg(config)
        .args(extra)
        .arg(cert);
    let done = run_with_input(&mut command, b"", Duration::from_secs(30));
    assert!(!done.timed_out);
    (done.status.code().unwrap_or(-1), done.stdout, done.stderr)
}

#[test]
fn explain_agrees_with_the_running_proxy_for_every_kind_of_certificate() {
    const REVOKED: u64 = 0x7e57;
    let pki = Pki::new();
    let crl = pki.path("intermediate.crl");
    std::fs::write(&crl, pki.intermediate.crl(&[REVOKED])).unwrap();
    let rules = "[[inbound.allow]]\nspiffe_id = \"spiffe://example.org/ns/web/*\"\nou = \"web\"\n\
                 [[inbound.allow]]\ncn = \"batch\"\no = \"Example\"\n";
    let config = inbound_config(
        &pki,
        echo_backend(),
        &format!("crls = [{crl:?}]\n"),
        &format!("{rules}{}", shadow_rule("ns/web/sa/frontend")),
    );
    let proxy = Proxy::start(pki.dir.path(), &config);
    let addr = proxy.inbound("api");
    let foreign = Pki::named("Foreign");
    let web = |path: &str| Leaf {
        ou: Some("web".into()),
        ..Leaf::spiffe(path)
    };
    let cases: Vec<(&str, Issued, bool)> = vec![
        (
            "allowed by SPIFFE ID and OU",
            pki.intermediate.issue(&web("ns/web/sa/frontend")),
            true,
        ),
        (
            "allowed by subject",
            pki.intermediate.issue(&Leaf {
                cn: Some("batch".into()),
                o: Some("Example".into()),
                ..Leaf::default()
            }),
            true,
        ),
        (
            "denied: SPIFFE ID",
            pki.intermediate.issue(&web("ns/db/sa/frontend")),
            false,
        ),
        (
            "denied: OU",
            pki.intermediate.issue(&Leaf {
                ou: Some("ops".into()),
                ..Leaf::spiffe("ns/web/sa/frontend")
            }),
            false,
        ),
        (
            "denied: O",
            pki.intermediate.issue(&Leaf {
                cn: Some("batch".into()),
                o: Some("Other".into()),
                ..Leaf::default()
            }),
            false,
        ),
        (
            "wrong trust domain",
            pki.intermediate.issue(&Leaf {
                uris: vec!["spiffe://other.org/ns/web/sa/frontend".into()],
                ou: Some("web".into()),
                ..Leaf::default()
            }),
            false,
        ),
        (
            "expired",
            pki.intermediate.issue(&Leaf {
                not_before_offset: time::Duration::hours(-3),
                not_after_offset: time::Duration::hours(-1),
                ..web("ns/web/sa/frontend")
            }),
            false,
        ),
        (
            "revoked",
            pki.intermediate.issue(&Leaf {
                serial: Some(REVOKED),
                ..web("ns/web/sa/frontend")
            }),
            false,
        ),
        (
            "foreign CA",
            foreign.intermediate.issue(&web("ns/web/sa/frontend")),
            false,
        ),
    ];
    for (index, (what, issued, expect_allowed)) in cases.iter().enumerate() {
        let running = echo_roundtrip(addr, client_config(Some(issued), &pki.root.cert_pem)).is_ok();
        let chain = pki.path(&format!("case{index}.pem"));
        std::fs::write(&chain, &issued.chain_pem).unwrap();
        let (code, out, err) = explain(&proxy.config_path, &chain, &[]);
        assert_eq!(
            running, *expect_allowed,
            "{what}: the running proxy decided otherwise than expected"
        );
        assert_eq!(
            code,
            if running { 0 } else { 1 },
            "{what}: explain disagrees with the proxy\n{out}{err}"
        );
        let (json_code, json_out, _) = explain(&proxy.config_path, &chain, &["--json"]);
        assert_eq!(json_code, code);
        let json: serde_json::Value = serde_json::from_str(&json_out).expect("--json parses");
        assert_eq!(json["allowed"], serde_json::Value::Bool(running), "{what}");
        assert_eq!(json["listener"], "api");
        assert_eq!(
            json["shadow_rules"].is_array(),
            json["chain"]["verified"] == true
        );
    }
    // The text names every rule and the first field that failed.
    let chain = pki.path("case3.pem");
    let (_, out, _) = explain(&proxy.config_path, &chain, &[]);
    assert!(
        out.contains("allow[0]  no match: ou [\"ops\"] does not match \"web\""),
        "{out}"
    );
    assert!(
        out.contains("allow[1]  no match: cn: peer has none"),
        "{out}"
    );
    assert!(out.contains("shadow_allow[0]  match"), "{out}");
    assert!(out.contains("verdict: deny"), "{out}");
    // --at: the expired certificate was fine two hours ago.
    let two_hours_ago = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - Duration::from_secs(2 * 3600),
    )
    .to_string();
    let (code, out, _) = explain(
        &proxy.config_path,
        &pki.path("case6.pem"),
        &["--at", &two_hours_ago],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = explain(&proxy.config_path, &pki.path("case6.pem"), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("chain: REFUSED (cert_expired)"), "{out}");
}

#[test]
fn explain_refuses_bad_input_with_one_line_and_exit_2() {
    let pki = Pki::new();
    let config = inbound_config(&pki, echo_backend(), "", &spiffe_rule("ns/web/sa/frontend"));
    let config_path = pki.path("proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let (issued, cert, key) = pki.issue_files("client", &Leaf::spiffe("ns/web/sa/frontend"));
    let garbage = pki.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "hello\n").unwrap();
    let cases: Vec<(&str, PathBuf, Vec<&str>, &str)> = vec![
        ("malformed PEM", garbage, vec![], "not valid PEM"),
        (
            "no PEM at all",
            empty,
            vec![],
            "no CERTIFICATE block (found no PEM block at all)",
        ),
        (
            "a key file",
            key,
            vec![],
            "no CERTIFICATE block (found a private key)",
        ),
        (
            "unknown listener",
            cert.clone(),
            vec!["--listener", "nope"],
            "no inbound listener \"nope\"; the config has: api",
        ),
        (
            "bad --at",
            cert.clone(),
            vec!["--at", "tomorrow"],
            "is not an RFC 3339 time",
        ),
    ];
    for (what, file, extra, message) in cases {
        let (code, out, err) = explain(&config_path, &file, &extra);
        assert_eq!(code, 2, "{what}: {out}{err}");
        assert!(err.contains(message), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(out.is_empty(), "{what}");
    }
    // And the same certificate is fine.
    let _ = issued;
    assert_eq!(explain(&config_path, &cert, &[]).0, 0);
}

/// `portcullis authz suggest` with `args`; (exit code, stdout, stderr).
fn suggest(args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command.args(["authz", "suggest"]).args(args);
    let done = run_with_input(&mut command, b"", Duration::from_secs(30));
    assert!(!done.timed_out);
    (done.status.code().unwrap_or(-1), done.stdout, done.stderr)
}

#[test]
fn suggested_rules_admit_exactly_the_identities_seen() {
    // Learn: audit mode, no rules yet, so every peer is admitted and seen.
    let fx = Fixture::new("", "authz_mode = \"audit\"\n");
    let seen: Vec<Issued> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|w| fx.client(&format!("ns/learn/sa/{w}")))
        .collect();
    let subject = fx.pki.intermediate.issue(&Leaf {
        cn: Some("legacy-batch".into()),
        o: Some("Example".into()),
        ..Leaf::default()
    });
    for client in seen.iter().chain([&subject]) {
        assert!(fx.admitted(client));
    }
    let url = format!("http://{}/peers", fx.proxy.admin);
    let (code, rules, err) = suggest(&["--from", &url, "--listener", "api"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rules.matches("[[inbound.allow]]").count(), 6, "{rules}");
    assert!(
        rules.contains("issuer = \"CN=Test Intermediate CA\""),
        "{rules}"
    );

    // Paste them in and enforce.
    fx.reload_listener(&rules);
    for client in seen.iter().chain([&subject]) {
        assert!(fx.admitted(client), "a seen identity is admitted:\n{rules}");
    }
    let stranger = fx.client("ns/learn/sa/stranger");
    assert!(!fx.admitted(&stranger), "an unseen identity is refused");
    // A subject under another trusted issuer is not admitted by the
    // subject rule, which is pinned to the issuer it was seen with.
    let other_issuer = fx
        .pki
        .root
        .intermediate("Second Intermediate CA")
        .issue(&Leaf {
            cn: Some("legacy-batch".into()),
            o: Some("Example".into()),
            ..Leaf::default()
        });
    assert!(!fx.admitted(&other_issuer));

    // --generalize folds the five siblings into one glob and lists them.
    let (code, general, _) = suggest(&["--from", &url, "--listener", "api", "--generalize"]);
    assert_eq!(code, 0);
    assert!(
        general.contains("spiffe_id = \"spiffe://example.org/ns/learn/sa/*\""),
        "{general}"
    );
    assert!(
        general.contains("# covers 6 observed identities"),
        "{general}"
    );
}

#[test]
fn suggest_refuses_garbage_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("peers.json");
    std::fs::write(&garbage, "{\"listeners\": [1, 2]}").unwrap();
    let not_json = dir.path().join("peers.txt");
    std::fs::write(&not_json, "<html>hello</html>").unwrap();
    // A plain HTTP server that answers something other than /peers.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/peers", server.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in server.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
        }
    });
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--from".into(), garbage.display().to_string()],
            "not the JSON of GET /peers",
        ),
        (
            vec!["--from".into(), not_json.display().to_string()],
            "not the JSON of GET /peers",
        ),
        (
            vec!["--from".into(), url],
            "is this a portcullis admin endpoint?",
        ),
        (
            vec!["--from".into(), "https://127.0.0.1:1/peers".into()],
            "only http:// URLs",
        ),
        (
            vec!["--from-log".into(), not_json.display().to_string()],
            "no JSON log line",
        ),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = suggest(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn the_peer_table_stays_within_its_size_and_counts_evictions() {
    const SIZE: usize = 20;
    const IDENTITIES: usize = 60;
    let fx = Fixture::with_admin(
        &format!("peer_table_size = {SIZE}"),
        "",
        "authz_mode = \"audit\"\n",
    );
    for i in 0..IDENTITIES {
        assert!(fx.admitted(&fx.client(&format!("ns/many/sa/peer-{i}"))));
    }
    let (status, body) = http_get(fx.proxy.admin, "/peers").unwrap();
    assert_eq!(status, 200);
    let peers: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = peers["listeners"]["api"].as_array().unwrap();
    assert_eq!(rows.len(), SIZE);
    assert_eq!(peers["evictions"], (IDENTITIES - SIZE) as u64);
    // The least recently seen went first: the last SIZE remain.
    let kept: Vec<&str> = rows
        .iter()
        .map(|r| r["identity"].as_str().unwrap())
        .collect();
    for i in (IDENTITIES - SIZE)..IDENTITIES {
        let id = format!("spiffe://example.org/ns/many/sa/peer-{i}");
        assert!(kept.contains(&id.as_str()), "{id} kept");
    }
    assert_eq!(rows[0]["last_decision"], "would_deny");
    assert_eq!(rows[0]["count"], 1);
    assert_eq!(
        fx.metric("portcullis_peer_table_evictions_total", &[]),
        (IDENTITIES - SIZE) as f64
    );
    assert_eq!(fx.metric("portcullis_peer_table_entries", &[]), SIZE as f64);
}
