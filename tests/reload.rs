//! Configuration reload over real sockets: `POST /reload`, SIGHUP and the
//! file watcher (including the Kubernetes ConfigMap `..data` symlink swap)
//! apply a new config to new connections while live ones keep flowing; an
//! invalid config leaves the running one entirely in force; added listeners
//! serve, removed ones drain; `reauthorize_on_reload` closes exactly the live
//! connections the new policy denies. Every test starts the real binary.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::*;

const FRONTEND: &str = "ns/web/sa/frontend";
const X: &str = "ns/web/sa/x";
const Y: &str = "ns/web/sa/y";
const SERVER_NAME: &str = "proxy.example.org";

/// A PKI with the proxy's own certificate (`server.crt`) and client configs
/// for the three workloads the tests authorize.
struct Setup {
    pki: Pki,
    frontend: Arc<rustls::ClientConfig>,
    x: Arc<rustls::ClientConfig>,
    y: Arc<rustls::ClientConfig>,
}

impl Setup {
    fn new() -> Setup {
        let pki = Pki::new();
        pki.issue_files("server", &server_leaf());
        let client = |path: &str| {
            let issued = pki.intermediate.issue(&Leaf::spiffe(path));
            client_config(Some(&issued), &pki.root.cert_pem)
        };
        Setup {
            frontend: client(FRONTEND),
            x: client(X),
            y: client(Y),
            pki,
        }
    }

    fn identity(&self) -> String {
        self.pki.identity_toml("server")
    }

    /// A whole config file, `[admin]` included, with listener `api` in
    /// front of `backend` admitting the frontend and `allow`: for the tests
    /// that lay out the file themselves.
    fn file_config(&self, backend: SocketAddr, allow: &str) -> String {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
            self.identity(),
            inbound("api", backend, &[FRONTEND, allow], "")
        )
    }
}

/// An `[[inbound]]` table on port 0; `extra` goes into the table itself,
/// then one allow rule per SPIFFE path in `allow`.
fn inbound(name: &str, backend: SocketAddr, allow: &[&str], extra: &str) -> String {
    inbound_on(name, local(0), backend, allow, extra)
}

/// [`inbound`] on `listen`, for the tests about a given address.
fn inbound_on(
    name: &str,
    listen: SocketAddr,
    backend: SocketAddr,
    allow: &[&str],
    extra: &str,
) -> String {
    let rules: String = allow.iter().map(|path| allow_spiffe(path)).collect();
    inbound_table_on(name, listen, backend, &format!("{extra}\n{rules}"))
}

fn drain_timeout(value: &str) -> String {
    format!("\n[shutdown]\ndrain_timeout = \"{value}\"\n")
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `POST /reload` on the admin port.
fn post_reload(proxy: &Proxy) -> (u16, String) {
    http_post(proxy.admin, "/reload").expect("POST /reload")
}

/// Reload and insist on success; returns the summary of changes.
fn reload_ok(proxy: &Proxy) -> String {
    let (status, body) = post_reload(proxy);
    assert_eq!(status, 200, "POST /reload: {body}\nlog:\n{}", proxy.logs());
    assert!(body.starts_with("reloaded: "), "{body}");
    body
}

/// Reload and insist that `change` (e.g. `added inbound b`) took effect. The
/// file watcher may have applied the new file just before the POST (whose
/// answer then says `no changes`): its `config reloaded` log line counts too.
fn reload_reports(proxy: &Proxy, change: &str) -> String {
    let answer = reload_ok(proxy);
    if !answer.contains(change) {
        let logged = |log: String| {
            log.lines()
                .any(|l| l.contains("config reloaded") && l.contains(change))
        };
        assert!(
            wait_until(Duration::from_secs(2), || logged(proxy.logs())),
            "no reload reported {change:?}; answer: {answer}\nlog:\n{}",
            proxy.logs()
        );
    }
    answer
}

fn reloads(proxy: &Proxy, result: &str) -> f64 {
    proxy.metric(
        "portcullis_config_reloads_total",
        &[&format!("result=\"{result}\"")],
    )
}

fn last_success(proxy: &Proxy) -> f64 {
    proxy.metric(
        "portcullis_config_last_reload_success_timestamp_seconds",
        &[],
    )
}

/// A new connection completes a full echo round trip.
fn admitted(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> bool {
    echo_roundtrip(addr, client.clone()).is_ok()
}

/// A connection that completed the handshake and one echo round trip.
fn open(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> Client {
    let mut stream = tls_connect(addr, SERVER_NAME, client.clone()).expect("TLS handshake");
    echo(&mut stream, b"hello");
    stream
}

/// Connecting to `addr` is refused (nothing listens there).
fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

/// Start `portcullis run -c path` (the file carries its own `[admin]`) and
/// wait until `/readyz` answers 200.
fn start_at(path: &Path) -> Proxy {
    let mut proxy = Proxy::launch(path);
    proxy.wait_ready();
    proxy
}

// ------------------------------------------------------------ under load

const STREAMS: usize = 20;
const RELOADS: usize = 100;

#[test]
fn reload_under_load() {
    let setup = Setup::new();
    let backend = echo_backend();
    let config = |extra: &str| {
        format!(
            "{}{}",
            setup.identity(),
            inbound("api", backend, &[FRONTEND, extra], "")
        )
    };
    let (config_a, config_b) = (config(X), config(Y));
    let proxy = Proxy::start(setup.pki.dir.path(), &config_a);
    let listen = proxy.inbound("api");
    assert!(admitted(listen, &setup.x) && !admitted(listen, &setup.y));

    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let ready = Arc::new(Barrier::new(STREAMS + 1));
    let streams: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (client, stop, problems, ready) = (
                setup.frontend.clone(),
                stop.clone(),
                problems.clone(),
                ready.clone(),
            );
            std::thread::spawn(move || -> u64 {
                let first = tls_connect(listen, SERVER_NAME, client)
                    .map_err(|e| format!("connect: {e}"))
                    .and_then(|mut s| exchange(&mut s, b"first").map(|()| s));
                ready.wait();
                let mut stream = match first {
                    Ok(stream) => stream,
                    Err(e) => {
                        problems.lock().unwrap().push(format!("stream {i}: {e}"));
                        return 0;
                    }
                };
                let mut echoed = 1;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    let message = format!("stream {i} message {echoed}");
                    if let Err(e) = exchange(&mut stream, message.as_bytes()) {
                        problems
                            .lock()
                            .unwrap()
                            .push(format!("stream {i} broke after {echoed} echoes: {e}"));
                        return echoed;
                    }
                    echoed += 1;
                }
                echoed
            })
        })
        .collect();
    ready.wait();
    assert!(
        problems.lock().unwrap().is_empty(),
        "{:?}",
        problems.lock().unwrap()
    );

    let churn = {
        let (client, stop) = (setup.frontend.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match echo_roundtrip(listen, client.clone()) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };

    let started = Instant::now();
    for i in 0..RELOADS {
        // B, A, B, ...: x is admitted under A only, y under B only.
        let b = i % 2 == 0;
        proxy.rewrite_config(if b { &config_b } else { &config_a });
        reload_ok(&proxy);
        let x = admitted(listen, &setup.x);
        let y = admitted(listen, &setup.y);
        assert_eq!(
            (x, y),
            (!b, b),
            "after reload {i} to config {}: x admitted {x}, y admitted {y}",
            if b { "B" } else { "A" }
        );
    }
    let reloading = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let echoed: Vec<u64> = streams.into_iter().map(|t| t.join().unwrap()).collect();
    let (new_ok, new_failed) = churn.join().unwrap();
    eprintln!(
        "{RELOADS} reloads in {reloading:?}; long-lived echoes {echoed:?}; {new_ok} new connections"
    );

    let problems = problems.lock().unwrap();
    assert!(
        problems.is_empty(),
        "broken long-lived streams: {problems:?}"
    );
    assert!(
        echoed.iter().all(|&n| n >= 10),
        "a long-lived stream barely echoed: {echoed:?}"
    );
    assert!(
        new_failed.is_empty(),
        "{} of {} new frontend connections failed: {:?}",
        new_failed.len(),
        new_failed.len() as u64 + new_ok,
        &new_failed[..new_failed.len().min(5)]
    );
    assert!(new_ok >= 10, "only {new_ok} new frontend connections");
    // The file watcher may have reloaded too; the 100 POSTs all succeeded.
    assert!(reloads(&proxy, "success") >= RELOADS as f64);
    assert_eq!(reloads(&proxy, "failure"), 0.0);
    // Port 0, unchanged in the file: the listener kept the port it got.
    assert_eq!(proxy.inbound("api"), listen);
}

// ------------------------------------------------------- invalid configs

#[test]
fn invalid_configs_keep_the_old_one() {
    let setup = Setup::new();
    let backend = echo_backend();
    let listener = inbound("api", backend, &[FRONTEND], "");
    let good = format!("{}{listener}", setup.identity());
    let proxy = Proxy::start(setup.pki.dir.path(), &good);
    let listen = proxy.inbound("api");

    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = blocker.local_addr().unwrap();
    let missing = setup.pki.path("no-such-dir").join("server.crt");
    let missing_identity = format!(
        "[identity]\nsource = \"files\"\ncert = {:?}\nkey = {:?}\ntrust_bundle = {:?}\n",
        missing,
        setup.pki.path("server.key"),
        setup.pki.bundle()
    );
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "TOML syntax error",
            format!("{good}\n[[inbound\n"),
            vec!["line ".into(), "[[inbound".into()],
        ),
        (
            "unknown key",
            format!(
                "{}{}",
                setup.identity(),
                inbound("api", backend, &[FRONTEND], "colour = \"blue\"")
            ),
            vec!["unknown field `colour`".into()],
        ),
        (
            "bad glob",
            format!("{good}[[inbound.allow]]\ndns = \"a***\"\n"),
            vec!["inbound[0].allow[1].dns".into(), "a***".into()],
        ),
        (
            "missing cert file",
            format!("{missing_identity}{listener}"),
            vec!["identity".into(), missing.display().to_string()],
        ),
        (
            "listener on a port in use",
            format!(
                "{good}{}",
                inbound_on("extra", blocked, backend, &[FRONTEND], "")
            ),
            vec!["\"extra\"".into(), blocked.to_string(), "in use".into()],
        ),
    ];

    // A wrongly successful reload would move the timestamp (whole seconds).
    std::thread::sleep(Duration::from_millis(1100));
    let stamp = last_success(&proxy);
    assert!(stamp > 0.0);
    let mut failures = reloads(&proxy, "failure");
    assert_eq!(failures, 0.0);
    for (what, body, reasons) in cases {
        proxy.rewrite_config(&body);
        // The file watcher sees the new content and tries it: one failure.
        assert!(
            wait_until(Duration::from_secs(5), || reloads(&proxy, "failure")
                == failures + 1.0),
            "{what}: the file watcher did not try the new file\n{}",
            proxy.logs()
        );
        failures += 1.0;

        let (status, answer) = post_reload(&proxy);
        assert_eq!(status, 422, "{what}: {answer}");
        assert!(
            answer.starts_with("reload failed; the running config stays in force"),
            "{what}: {answer}"
        );
        for reason in &reasons {
            assert!(
                answer.contains(reason.as_str()),
                "{what}: the answer does not name {reason:?}:\n{answer}"
            );
        }
        assert_eq!(reloads(&proxy, "failure"), failures + 1.0, "{what}");
        failures += 1.0;
        assert_eq!(reloads(&proxy, "success"), 0.0, "{what}");
        assert_eq!(last_success(&proxy), stamp, "{what}");
        echo_roundtrip(listen, setup.frontend.clone())
            .unwrap_or_else(|e| panic!("{what}: the old listener stopped serving: {e}"));
    }
    // The blocked port is still ours: nothing half-started on it.
    drop(blocker);
    assert!(refused(blocked), "a listener was started on {blocked}");

    // A good file again: the watcher or the POST applies it.
    proxy.rewrite_config(&good);
    reload_ok(&proxy);
    assert!(reloads(&proxy, "success") >= 1.0);
    assert!(last_success(&proxy) > stamp);
    assert_eq!(reloads(&proxy, "failure"), failures);
}

// ------------------------------------------------ added/removed listeners

#[test]
fn added_listener_serves_and_removed_listener_drains() {
    let setup = Setup::new();
    let backend = echo_backend();
    let drain = drain_timeout("30s");
    let a = inbound("a", backend, &[FRONTEND], "");
    let b = inbound("b", backend, &[FRONTEND], "");
    let identity = setup.identity();
    let proxy = Proxy::start(setup.pki.dir.path(), &format!("{identity}{drain}{a}"));
    let pa = proxy.inbound("a");
    assert!(proxy.listeners()["inbound"].get("b").is_none());

    proxy.rewrite_config(&format!("{identity}{drain}{a}{b}"));
    reload_reports(&proxy, "added inbound b");
    // The reload told the ready file where b went, and kept a's port.
    let pb = proxy.inbound("b");
    assert_eq!(proxy.inbound("a"), pa);
    echo_roundtrip(pb, setup.frontend.clone()).expect("added listener b serves");
    echo_roundtrip(pa, setup.frontend.clone()).expect("listener a still serves");

    let mut live = open(pa, &setup.frontend);
    proxy.rewrite_config(&format!("{identity}{drain}{b}"));
    reload_reports(&proxy, "removed inbound a");
    let reloaded = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || refused(pa)),
        "new connections to the removed listener's port are not refused"
    );
    assert!(reloaded.elapsed() < Duration::from_secs(2));

    // The live connection drains: it keeps working well past the reload.
    for i in 0..8 {
        echo(&mut live, format!("draining {i}").as_bytes());
        std::thread::sleep(Duration::from_millis(200));
    }
    echo_roundtrip(pb, setup.frontend.clone()).expect("listener b still serves");
    assert!(proxy.listeners()["inbound"].get("a").is_none());
    assert_eq!(
        metric_value(
            &proxy.metrics(),
            "portcullis_connections_open",
            &["listener=\"a\""]
        ),
        1.0
    );
}

#[test]
fn removed_listener_closes_live_connections_after_drain_timeout() {
    let setup = Setup::new();
    let backend = echo_backend();
    let drain = drain_timeout("1s");
    let a = inbound("a", backend, &[FRONTEND], "");
    let b = inbound("b", backend, &[FRONTEND], "");
    let identity = setup.identity();
    let proxy = Proxy::start(setup.pki.dir.path(), &format!("{identity}{drain}{a}{b}"));
    let (pa, pb) = (proxy.inbound("a"), proxy.inbound("b"));

    let mut live = open(pa, &setup.frontend);
    // Measured from before the file changes: whichever trigger applies it,
    // the drain starts after this.
    let reloaded = Instant::now();
    proxy.rewrite_config(&format!("{identity}{drain}{b}"));
    reload_reports(&proxy, "removed inbound a");
    echo(&mut live, b"still draining");
    let closed = wait_closed(&mut live, Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("live connection on the removed listener: {e}"));
    let after = reloaded.elapsed();
    assert!(
        after >= Duration::from_millis(950),
        "closed {after:?} after the reload, before the 1s drain timeout"
    );
    assert!(closed < Duration::from_secs(6));
    assert!(refused(pa));
    echo_roundtrip(pb, setup.frontend.clone()).expect("listener b still serves");
}

// ------------------------------------------------------ changed listener

/// A backend answering each line it receives with `prefix` + the line.
fn prefix_backend(prefix: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if writer
                                .write_all(format!("{prefix}{line}").as_bytes())
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Send one line and read one line back.
fn ask(stream: &mut Client, line: &str) -> String {
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.last() != Some(&b'\n') {
        stream.read_exact(&mut byte).expect("read the answer");
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap().trim_end().to_string()
}

#[test]
fn changed_listener_applies_to_new_connections_only() {
    let setup = Setup::new();
    let (one, two) = (prefix_backend("one:"), prefix_backend("two:"));
    let identity = setup.identity();
    let proxy = Proxy::start(
        setup.pki.dir.path(),
        &format!("{identity}{}", inbound("api", one, &[FRONTEND], "")),
    );
    let listen = proxy.inbound("api");

    let mut before = tls_connect(listen, SERVER_NAME, setup.frontend.clone()).unwrap();
    assert_eq!(ask(&mut before, "hello"), "one:hello");

    proxy.rewrite_config(&format!(
        "{identity}{}",
        inbound("api", two, &[FRONTEND], "")
    ));
    reload_reports(&proxy, "changed inbound api");

    assert_eq!(ask(&mut before, "again"), "one:again");
    let mut after = tls_connect(listen, SERVER_NAME, setup.frontend.clone()).unwrap();
    assert_eq!(ask(&mut after, "hello"), "two:hello");
    assert_eq!(ask(&mut before, "still"), "one:still");
    assert_eq!(ask(&mut after, "still"), "two:still");
}

// ------------------------------------------------------ reauthorization

struct Reauthorized {
    proxy: Proxy,
    setup: Setup,
    listen: SocketAddr,
    xs: Vec<Client>,
    ys: Vec<Client>,
}

/// A listener allowing x and y with 3 live x and 2 live y connections, then
/// reloaded with a policy allowing only y.
fn live_x_and_y_then_allow_only_y(reauthorize: bool) -> Reauthorized {
    let setup = Setup::new();
    let backend = echo_backend();
    let extra = if reauthorize {
        "reauthorize_on_reload = true"
    } else {
        ""
    };
    let identity = setup.identity();
    let proxy = Proxy::start(
        setup.pki.dir.path(),
        &format!("{identity}{}", inbound("api", backend, &[X, Y], extra)),
    );
    let listen = proxy.inbound("api");
    let xs: Vec<Client> = (0..3).map(|_| open(listen, &setup.x)).collect();
    let ys: Vec<Client> = (0..2).map(|_| open(listen, &setup.y)).collect();
    proxy.rewrite_config(&format!(
        "{identity}{}",
        inbound("api", backend, &[Y], extra)
    ));
    reload_reports(
        &proxy,
        if reauthorize {
            "reauthorized inbound api: closed 3"
        } else {
            "changed inbound api"
        },
    );
    Reauthorized {
        proxy,
        setup,
        listen,
        xs,
        ys,
    }
}

fn reauthorization_closed(proxy: &Proxy) -> f64 {
    metric_value(
        &proxy.metrics(),
        "portcullis_reauthorization_closed_total",
        &["listener=\"api\""],
    )
}

#[test]
fn reauthorize_on_reload() {
    let mut run = live_x_and_y_then_allow_only_y(true);
    for (i, x) in run.xs.iter_mut().enumerate() {
        wait_closed(x, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("x connection {i} denied by the new policy: {e}"));
    }
    for (i, y) in run.ys.iter_mut().enumerate() {
        echo(y, format!("y {i} after the reload").as_bytes());
    }
    assert!(!admitted(run.listen, &run.setup.x));
    assert!(admitted(run.listen, &run.setup.y));
    assert_eq!(reauthorization_closed(&run.proxy), 3.0);
    std::thread::sleep(Duration::from_millis(300));
    for (i, y) in run.ys.iter_mut().enumerate() {
        echo(y, format!("y {i} still").as_bytes());
    }
    assert!(
        run.proxy.wait_for_log(
            "the reloaded policy no longer allows this peer",
            Duration::from_secs(2)
        ),
        "{}",
        run.proxy.logs()
    );
}

#[test]
fn without_reauthorize_live_connections_survive_a_stricter_policy() {
    let mut run = live_x_and_y_then_allow_only_y(false);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !run.proxy.logs().contains("reauthorized"),
        "{}",
        run.proxy.logs()
    );
    for (i, x) in run.xs.iter_mut().enumerate() {
        echo(x, format!("x {i} after the reload").as_bytes());
    }
    for (i, y) in run.ys.iter_mut().enumerate() {
        echo(y, format!("y {i} after the reload").as_bytes());
    }
    assert!(!admitted(run.listen, &run.setup.x), "new x must be denied");
    assert!(admitted(run.listen, &run.setup.y));
    assert_eq!(reauthorization_closed(&run.proxy), 0.0);
}

// ------------------------------------------------------- file triggers

#[test]
fn configmap_symlink_swap() {
    let setup = Setup::new();
    let backend = echo_backend();
    let config = |allow: &str| setup.file_config(backend, allow);
    // The layout kubelet gives a mounted ConfigMap.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_a")).unwrap();
    std::fs::write(root.join("..2026_a/config.toml"), config(X)).unwrap();
    std::os::unix::fs::symlink("..2026_a", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", root.join("config.toml")).unwrap();

    let proxy = start_at(&root.join("config.toml"));
    let listen = proxy.inbound("api");
    assert!(admitted(listen, &setup.x) && !admitted(listen, &setup.y));
    assert_eq!(reloads(&proxy, "success"), 0.0);

    // kubelet's update: a new timestamped folder, `..data` swapped by an
    // atomic rename of a fresh symlink, the old folder removed.
    std::fs::create_dir(root.join("..2026_b")).unwrap();
    std::fs::write(root.join("..2026_b/config.toml"), config(Y)).unwrap();
    std::os::unix::fs::symlink("..2026_b", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_a")).unwrap();

    assert!(
        wait_until(Duration::from_secs(10), || admitted(listen, &setup.y)
            && !admitted(listen, &setup.x)),
        "the swapped ConfigMap was not applied within 10s; log:\n{}",
        proxy.logs()
    );
    assert!(reloads(&proxy, "success") >= 1.0);
    assert_eq!(reloads(&proxy, "failure"), 0.0);
    assert!(admitted(listen, &setup.frontend));
}

#[test]
fn sighup_reloads() {
    let setup = Setup::new();
    let backend = echo_backend();
    let config = |allow: &str| setup.file_config(backend, allow);
    // The proxy reads `watched/config.toml`, a symlink to a file in another
    // folder: the watcher sees no event for a change there, so only the
    // SIGHUP can apply it.
    let watched = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("config.toml");
    std::fs::write(&target, config(X)).unwrap();
    let path = watched.path().join("config.toml");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let proxy = start_at(&path);
    let listen = proxy.inbound("api");
    assert!(admitted(listen, &setup.x) && !admitted(listen, &setup.y));

    replace_atomically(&target, &config(Y));
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        admitted(listen, &setup.x) && !admitted(listen, &setup.y),
        "the change was applied without a SIGHUP"
    );
    assert_eq!(reloads(&proxy, "success"), 0.0);

    unsafe_kill(proxy.child.id(), "HUP");
    assert!(
        wait_until(Duration::from_secs(5), || admitted(listen, &setup.y)
            && !admitted(listen, &setup.x)),
        "SIGHUP did not apply the new policy; log:\n{}",
        proxy.logs()
    );
    assert_eq!(reloads(&proxy, "success"), 1.0);
    assert!(
        wait_until(Duration::from_secs(2), || proxy.logs().lines().any(|l| {
            l.contains("config reloaded")
                && l.contains("SIGHUP")
                && l.contains("changed inbound api")
        })),
        "{}",
        proxy.logs()
    );
    assert!(admitted(listen, &setup.frontend));
}

// ------------------------------------------------------------ limits

#[test]
fn moving_a_listener_onto_an_address_freed_in_the_same_reload_fails() {
    let setup = Setup::new();
    let backend = echo_backend();
    let identity = setup.identity();
    let a_on = |listen| inbound_on("a", listen, backend, &[FRONTEND], "");
    let b = inbound("b", backend, &[FRONTEND], "");
    let proxy = Proxy::start(
        setup.pki.dir.path(),
        &format!("{identity}{}{b}", a_on(local(0))),
    );
    let (pa, pb) = (proxy.inbound("a"), proxy.inbound("b"));

    // Remove b and move a onto b's address at once: a's new socket is bound
    // before b's is released, so the reload fails and nothing changes.
    proxy.rewrite_config(&format!("{identity}{}", a_on(pb)));
    let (status, answer) = post_reload(&proxy);
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains(&pb.to_string()), "{answer}");
    echo_roundtrip(pa, setup.frontend.clone()).expect("a still on its old port");
    echo_roundtrip(pb, setup.frontend.clone()).expect("b still serves");

    // In two steps it works: free the address, then take it. Writing the
    // port a got into the file keeps a's socket.
    proxy.rewrite_config(&format!("{identity}{}", a_on(pa)));
    let answer = reload_reports(&proxy, "removed inbound b");
    assert!(!answer.contains("added inbound a"), "{answer}");
    assert_eq!(proxy.inbound("a"), pa);
    proxy.rewrite_config(&format!("{identity}{}", a_on(pb)));
    reload_reports(&proxy, "added inbound a");
    assert_eq!(proxy.inbound("a"), pb);
    echo_roundtrip(pb, setup.frontend.clone()).expect("a on its new port");
    assert!(wait_until(Duration::from_secs(2), || refused(pa)));
}
