//! Hostile clients, faulty backends and resource exhaustion, over real
//! sockets against the real binary: hundreds of silent connections, a client
//! that trickles its ClientHello, resets mid-handshake and mid-stream, a
//! backend that closes at once, backpressure both ways (a backend or a client
//! that never reads), running out of file descriptors, and a 60-second soak
//! (`scripts/soak.py`) through an outbound and an inbound proxy with
//! certificate rotations and reloads. What they found: docs/reliability.md.
//!
//! The simpler cases (one silent client, garbage ClientHello, the connection
//! limit, half-close, idle timeout, backend down, shutdown) are in
//! data_path.rs. Bounds here are generous: these tests check behaviour, not
//! speed. Linux only (they read /proc and set SO_LINGER).
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use common::*;

const MB: u64 = 1024 * 1024;

/// The soak saturates the machine for a minute; it runs alone, the other
/// tests of this file run alongside each other.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner())
}

/// What these tests ask of the proxy beyond [`ApiProxy`].
impl ApiProxy {
    fn pid(&self) -> u32 {
        self.proxy.child.id()
    }

    fn wait_no_open_connections(&self) {
        self.proxy.wait_metric(
            "portcullis_connections_open",
            &["listener=\"api\"", "direction=\"inbound\""],
            0.0,
        );
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.proxy.child.try_wait().unwrap() {
            panic!("portcullis exited ({status}); log:\n{}", self.proxy.logs());
        }
    }
}

/// The bytes of a real TLS ClientHello (one or more records).
fn client_hello(config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("proxy.example.org").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert!(out.len() > 100, "ClientHello of {} bytes", out.len());
    out
}

// ------------------------------------------------------- /proc measurements

/// Resident set size of `pid` in bytes (VmRSS).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/PID/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Samples the RSS of `pid` every 100 ms until dropped; keeps the maximum.
struct RssSampler {
    max: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let max = Arc::new(std::sync::atomic::AtomicU64::new(rss_bytes(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if status.contains("VmRSS:") {
                        m.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler {
            max,
            stop,
            thread: Some(thread),
        }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// CPU time (user + system) `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses;
    // utime and stime are fields 14 and 15, i.e. 12th and 13th after it.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Poll `progress` (bytes moved so far) every 250 ms until it has moved by
/// less than 1 MiB in 3 s (and moved at all: a flood that has not begun is
/// not a stall); returns how long that took (30 s at most). Once
/// the socket buffers on the way are full, writes block; the kernel still
/// lets a few bytes in now and then as it compacts its receive queues, so
/// "stalled" is a slow trickle, not zero.
fn time_until_stalled(what: &str, mut progress: impl FnMut() -> usize) -> Duration {
    let started = Instant::now();
    let mut history: Vec<(Instant, usize)> = vec![(started, 0)];
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = Instant::now();
        let done = progress();
        history.push((now, done));
        let window = history
            .iter()
            .rev()
            .find(|(at, _)| now - *at >= Duration::from_secs(3));
        if let Some((_, before)) = window {
            if done > 0 && done - before < MB as usize {
                return now - started;
            }
        }
        assert!(
            now - started < Duration::from_secs(30),
            "{what} never blocked: {} MiB moved in 30 s",
            done as u64 / MB
        );
    }
}

// ------------------------------------------------------------ socket tricks

#[repr(C)]
struct Linger {
    l_onoff: i32,
    l_linger: i32,
}

extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
}

/// Make the next close of `stream` send a TCP reset (SO_LINGER with a zero
/// timeout) instead of a FIN.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid open socket and a correctly sized `struct linger`.
    let rc = unsafe {
        setsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            (&linger as *const Linger).cast(),
            std::mem::size_of::<Linger>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        std::io::Error::last_os_error()
    );
}

// ----------------------------------------------------------------- backends

/// How one backend connection ended, as the backend saw it.
#[derive(Debug, Clone)]
struct BackendConn {
    ended: Option<(Instant, String)>,
}

/// An echo backend that records, per connection, when and how it ended
/// (EOF or an error).
fn tracked_echo_backend() -> (SocketAddr, Arc<Mutex<Vec<BackendConn>>>) {
    let conns = Arc::new(Mutex::new(Vec::new()));
    let sink = conns.clone();
    let addr = backend(move |mut stream| {
        let index = {
            let mut all = sink.lock().unwrap();
            all.push(BackendConn { ended: None });
            all.len() - 1
        };
        let how = echo_until_eof(&mut stream);
        sink.lock().unwrap()[index].ended = Some((Instant::now(), how));
    });
    (addr, conns)
}

/// A backend that accepts and closes each connection at once; counts them.
fn closing_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    counting_backend(drop)
}

/// A backend that accepts and holds each connection without ever reading.
fn stalled_backend() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let held = Arc::new(Mutex::new(Vec::new()));
    let sink = held.clone();
    let addr = backend(move |stream| sink.lock().unwrap().push(stream));
    (addr, held)
}

// ---------------------------------------------------------- silent clients

#[test]
fn hundreds_of_silent_connections_do_not_starve_a_legitimate_client() {
    let _shared = shared();
    const SILENT: usize = 300;
    let setup = ApiProxy::start(echo_backend(), "handshake_timeout = \"1s\"", "");
    let sampler = RssSampler::start(setup.pid());

    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(setup.addr).expect("connect a silent client"))
        .collect();
    let all_open = opened.elapsed();

    // A legitimate client keeps doing full handshakes and echoes meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let legit = {
        let (stop, addr, client) = (stop.clone(), setup.addr, setup.client.clone());
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match echo_roundtrip(addr, client.clone()) {
                    Ok(()) => latencies.push(started.elapsed()),
                    Err(e) => failures.push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (latencies, failures)
        })
    };

    // Every silent connection is closed by the handshake timeout.
    let mut first_closed = None;
    for tcp in &mut silent {
        wait_raw_closed(tcp, Duration::from_secs(15));
        first_closed.get_or_insert(Instant::now());
    }
    let all_closed = opened.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (latencies, failures) = legit.join().unwrap();
    let max_rss = sampler.max();
    drop(silent);

    let first = first_closed.unwrap() - opened;
    assert!(
        first >= Duration::from_millis(900),
        "a silent connection was closed after {first:?}, before the 1 s handshake timeout"
    );
    assert!(
        all_closed < all_open + Duration::from_secs(8),
        "the last silent connection closed only after {all_closed:?}"
    );
    assert!(
        failures.is_empty(),
        "legitimate client failed: {failures:?}\n{}",
        setup.proxy.logs()
    );
    assert!(latencies.len() >= 3, "only {} echoes", latencies.len());
    let slowest = latencies.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(2),
        "an echo took {slowest:?}"
    );
    assert!(max_rss < 100 * MB, "proxy RSS reached {} MiB", max_rss / MB);
    setup.proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["listener=\"api\"", "result=\"timeout\""],
        SILENT as f64,
    );
    setup.wait_no_open_connections();
    eprintln!(
        "{SILENT} silent connections: all closed after {all_closed:?}; {} echoes meanwhile, slowest {slowest:?}; max RSS {} MiB",
        latencies.len(),
        max_rss / MB
    );
}

// ----------------------------------------------------------- trickle client

#[test]
fn trickled_client_hello_is_cut_off_at_handshake_timeout() {
    let _shared = shared();
    let setup = ApiProxy::start(echo_backend(), "handshake_timeout = \"1s\"", "");
    let hello = client_hello(setup.client.clone());

    // One byte every 200 ms: every read makes progress, but the whole
    // handshake would take far longer than the limit.
    let mut tcp = TcpStream::connect(setup.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still open after 10 s and {sent} bytes"
        );
        if sent < hello.len() {
            if tcp.write_all(&hello[sent..sent + 1]).is_err() {
                break started.elapsed();
            }
            sent += 1;
        }
        match tcp.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(n) => panic!("the proxy answered {n} bytes to a partial ClientHello"),
            Err(e) if is_read_timeout(&e) => continue,
            Err(_) => break started.elapsed(),
        }
    };
    assert!(sent < hello.len(), "the whole ClientHello went through");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}, before the handshake timeout"
    );
    assert!(
        closed < Duration::from_secs(3),
        "closed only after {closed:?} and {sent} bytes: the limit is per read, not per handshake"
    );
    setup.proxy.wait_metric(
        "portcullis_tls_handshakes_total",
        &["listener=\"api\"", "result=\"timeout\""],
        1.0,
    );
    echo_roundtrip(setup.addr, setup.client.clone()).expect("legitimate client afterwards");
    eprintln!(
        "trickle: closed after {closed:?}, {sent} of {} ClientHello bytes sent",
        hello.len()
    );
}

// ------------------------------------------------------------------- resets

#[test]
fn resets_mid_handshake_and_mid_stream_leave_nothing_behind() {
    let _shared = shared();
    let (backend, conns) = tracked_echo_backend();
    let mut setup = ApiProxy::start(backend, "", "");

    // Mid-handshake: half a ClientHello, then a reset.
    let hello = client_hello(setup.client.clone());
    let raw = TcpStream::connect(setup.addr).unwrap();
    (&raw).write_all(&hello[..hello.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    reset_on_close(&raw);
    drop(raw);
    setup.proxy.wait_metric(
        "portcullis_connection_errors_total",
        &["listener=\"api\"", "reason=\"handshake_failed\""],
        1.0,
    );
    setup.assert_alive();
    assert!(
        conns.lock().unwrap().is_empty(),
        "a backend connection was made for a failed handshake"
    );
    echo_roundtrip(setup.addr, setup.client.clone()).expect("legitimate client after the reset");

    // Mid-stream: an admitted connection that has echoed, then a reset.
    let before = conns.lock().unwrap().len();
    let mut stream = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    echo(&mut stream, b"about to vanish");
    let index = {
        let all = conns.lock().unwrap();
        assert_eq!(all.len(), before + 1, "backend connections");
        assert!(
            all[before].ended.is_none(),
            "backend connection already ended"
        );
        before
    };
    reset_on_close(&stream.sock);
    let reset_at = Instant::now();
    drop(stream);

    // The backend side of the reset stream is closed promptly.
    let ended = wait_until(Duration::from_secs(5), || {
        conns.lock().unwrap()[index].ended.is_some()
    });
    assert!(
        ended,
        "backend connection still open 5 s after the client reset\n{}",
        setup.proxy.logs()
    );
    let (at, how) = conns.lock().unwrap()[index].ended.clone().unwrap();
    setup.wait_no_open_connections();
    setup.assert_alive();
    setup.proxy.expect_log("close=client_error");
    echo_roundtrip(setup.addr, setup.client.clone()).expect("legitimate client after the reset");
    setup.wait_no_open_connections();
    eprintln!(
        "mid-stream reset: backend saw {how} after {:?}",
        at - reset_at
    );
}

// ----------------------------------------------------------- odd backends

#[test]
fn backend_that_closes_at_once_gives_the_client_a_prompt_close() {
    let _shared = shared();
    let (backend, accepted) = closing_backend();
    let setup = ApiProxy::start(backend, "", "");

    // A client that waits for the backend to speak: a clean TLS close.
    let mut quiet = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    let started = Instant::now();
    let (got, end) = read_until_closed(&mut quiet);
    let took = started.elapsed();
    assert!(got.is_empty(), "unexpected bytes {got:?}");
    assert!(
        end.is_ok(),
        "expected close_notify, got {end:?}\n{}",
        setup.proxy.logs()
    );
    assert!(took < Duration::from_secs(5), "close took {took:?}");
    drop(quiet);

    // A client that sends at once: closed promptly as well, never left hanging.
    let mut eager = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    let _ = eager.write_all(b"anyone there?");
    let _ = eager.flush();
    let started = Instant::now();
    let (got, end) = read_until_closed(&mut eager);
    let took = started.elapsed();
    assert!(got.is_empty(), "unexpected bytes {got:?}");
    if let Err(e) = &end {
        assert!(!is_read_timeout(e), "the client was left hanging");
    }
    assert!(took < Duration::from_secs(5), "close took {took:?}");
    drop(eager);

    assert_eq!(accepted.load(Ordering::SeqCst), 2, "backend connections");
    setup.wait_no_open_connections();
    eprintln!("backend closes at once: eager client's close was {end:?}");
}

#[test]
fn backend_that_never_reads_applies_backpressure_without_buffering() {
    let _shared = shared();
    const TOTAL: usize = 64 * 1024 * 1024;
    let (backend, held) = stalled_backend();
    let setup = ApiProxy::start(backend, "", "");
    let rss_before = rss_bytes(setup.pid());
    let sampler = RssSampler::start(setup.pid());

    let mut stream = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    stream
        .sock
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let socket = stream.sock.try_clone().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));

    // The writer pushes 64 MiB as fast as the proxy takes it.
    let writer = {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            let chunk = vec![0x5au8; 64 * 1024];
            loop {
                let done = accepted.load(Ordering::SeqCst);
                if done >= TOTAL {
                    return None;
                }
                let len = chunk.len().min(TOTAL - done);
                match stream.write(&chunk[..len]) {
                    Ok(0) => return Some(ErrorKind::WriteZero),
                    Ok(n) => accepted.fetch_add(n, Ordering::SeqCst),
                    Err(e) => return Some(e.kind()),
                };
            }
        })
    };

    // Once the socket buffers on the way are full, writes block: less than
    // 1 MiB goes through in 3 s. (The kernel lets a few bytes in now and
    // then as it compacts its receive queues, so a write may return after
    // a long block instead of failing with the timeout.)
    let stalled_at = time_until_stalled("writes", || {
        let done = accepted.load(Ordering::SeqCst);
        assert!(
            !writer.is_finished() || done < TOTAL,
            "all {TOTAL} bytes were accepted although the backend reads nothing"
        );
        done
    });
    let total_accepted = accepted.load(Ordering::SeqCst);
    let max_rss = sampler.max();
    let growth = max_rss.saturating_sub(rss_before);
    drop(sampler);

    assert!(
        total_accepted < TOTAL / 2,
        "{} MiB accepted before the writes stalled",
        total_accepted as u64 / MB
    );
    assert!(
        growth < 100 * MB,
        "proxy RSS grew by {} MiB while the backend stalled",
        growth / MB
    );
    assert_eq!(held.lock().unwrap().len(), 1, "backend connections");

    // Unblock the writer and clean up.
    let _ = socket.shutdown(std::net::Shutdown::Both);
    let ended = writer.join().unwrap();
    assert!(ended.is_some(), "the writer finished all {TOTAL} bytes");
    held.lock().unwrap().clear();
    setup.wait_no_open_connections();
    eprintln!(
        "backpressure: writes stalled after {} MiB of {} MiB (stall detected at {stalled_at:?}); proxy RSS {} -> max {} MiB",
        total_accepted as u64 / MB,
        TOTAL as u64 / MB,
        rss_before / MB,
        max_rss / MB
    );
}

/// A backend that writes `total` bytes to each connection as fast as it
/// can (10 s write timeout); counts what the kernel accepted.
fn flooding_backend(total: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let written = Arc::new(AtomicUsize::new(0));
    let sink = written.clone();
    let addr = backend(move |mut stream| {
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut done = 0;
        while done < total {
            match stream.write(&chunk[..chunk.len().min(total - done)]) {
                Ok(n) if n > 0 => {
                    done += n;
                    sink.fetch_add(n, Ordering::SeqCst);
                }
                _ => return,
            }
        }
    });
    (addr, written)
}

#[test]
fn client_that_never_reads_applies_backpressure_to_the_backend() {
    let _shared = shared();
    const TOTAL: usize = 64 * 1024 * 1024;
    let (backend, written) = flooding_backend(TOTAL);
    let setup = ApiProxy::start(backend, "", "");
    let rss_before = rss_bytes(setup.pid());
    let sampler = RssSampler::start(setup.pid());

    // Handshake, then never read: the backend's flood must stall.
    let stream = tls_connect(setup.addr, "proxy.example.org", setup.client.clone())
        .expect("TLS handshake with the proxy");
    let stalled_at = time_until_stalled("the backend's writes", || {
        let done = written.load(Ordering::SeqCst);
        assert!(
            done < TOTAL,
            "the backend wrote all {TOTAL} bytes although the client reads nothing"
        );
        done
    });
    let total_written = written.load(Ordering::SeqCst);
    let max_rss = sampler.max();
    let growth = max_rss.saturating_sub(rss_before);
    drop(sampler);
    assert!(
        total_written < TOTAL / 2,
        "{} MiB written before the backend stalled",
        total_written as u64 / MB
    );
    assert!(
        growth < 100 * MB,
        "proxy RSS grew by {} MiB while the client did not read",
        growth / MB
    );
    drop(stream);
    setup.wait_no_open_connections();
    eprintln!(
        "downstream backpressure: backend stalled after {} MiB of {} MiB (at {stalled_at:?}); proxy RSS {} -> max {} MiB",
        total_written as u64 / MB,
        TOTAL as u64 / MB,
        rss_before / MB,
        max_rss / MB
    );
}

// ------------------------------------------------- file-descriptor exhaustion

/// Start `portcullis run` under `ulimit -n limit` and wait for readiness.
fn start_with_fd_limit(dir: &Path, config: &str, limit: u32) -> Proxy {
    let path = write_proxy_config(dir, config);
    let mut ulimit = Command::new("sh");
    ulimit
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$@\""))
        .arg("sh")
        .arg(binary());
    let mut proxy = Proxy::launch_with(ulimit, &path);
    proxy.wait_ready();
    proxy
}

#[test]
fn fd_exhaustion_backs_off_without_spinning_and_recovers() {
    let _shared = shared();
    const LIMIT: u32 = 64;
    const SILENT: usize = 100;
    let pki = Pki::new();
    let config = frontend_only_config(&pki, echo_backend(), "handshake_timeout = \"3s\"", "");
    let mut proxy = start_with_fd_limit(pki.dir.path(), &config, LIMIT);
    let addr = proxy.inbound("api");
    let client = frontend_client(&pki);
    let pid = proxy.child.id();
    let idle_fds = open_fds(pid);
    echo_roundtrip(addr, client.clone()).expect("legitimate client before the flood");

    // Far more connections than descriptors: the kernel completes them into
    // the backlog, and accept() fails with EMFILE once the table is full.
    let mut silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(addr).expect("connect a silent client"))
        .collect();
    assert!(
        proxy.wait_for_log("accept failed; pausing", Duration::from_secs(5)),
        "no accept error logged with {SILENT} connections under ulimit -n {LIMIT} ({idle_fds} fds idle)\n{}",
        proxy.logs()
    );
    let saturated_fds = open_fds(pid);

    // Saturated: the accept loop must sleep, not spin.
    let cpu_before = cpu_time(pid);
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_time(pid) - cpu_before;
    let wall = wall.elapsed();
    let errors_logged = proxy.logs().matches("accept failed; pausing").count();
    assert!(
        cpu < wall / 2,
        "portcullis used {cpu:?} of CPU in {wall:?} while out of descriptors: a busy loop"
    );
    assert!(
        errors_logged < 100,
        "{errors_logged} accept errors logged: no backoff"
    );
    if let Some(status) = proxy.child.try_wait().unwrap() {
        panic!("portcullis exited ({status}); log:\n{}", proxy.logs());
    }

    // The handshake timeout frees descriptors wave by wave; all the silent
    // connections are closed by the proxy in the end.
    let flood_started = Instant::now();
    for tcp in &mut silent {
        wait_raw_closed(tcp, Duration::from_secs(60));
    }
    let drained = flood_started.elapsed();
    drop(silent);

    // Recovered: a legitimate client gets through again.
    let recovered = wait_until(Duration::from_secs(10), || {
        echo_roundtrip(addr, client.clone()).is_ok()
    });
    assert!(
        recovered,
        "no legitimate connection after the flood\n{}",
        proxy.logs()
    );
    assert!(
        wait_until(Duration::from_secs(10), || open_fds(pid) <= idle_fds + 2),
        "descriptors not released: {} open, {idle_fds} when idle",
        open_fds(pid)
    );
    eprintln!(
        "fd exhaustion: {idle_fds} fds idle, {saturated_fds} saturated (limit {LIMIT}); CPU {cpu:?} in {wall:?}; {errors_logged} accept errors logged; flood drained {drained:?} later"
    );
}

// --------------------------------------------------------------------- soak

#[test]
fn soak_60_seconds_with_rotations_and_reloads() {
    let _exclusive = exclusive();
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("soak.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/soak.py");
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .args(["--binary", binary()])
        .args(["--duration", "60"])
        .arg("--json-out")
        .arg(&report);
    let (ok, stdout, stderr) = run_bounded(command, Duration::from_secs(150));
    eprintln!("{stdout}");
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no soak report ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        ok,
        "soak failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        report["failures"]
    );
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["connections"].as_u64().unwrap() > 0, "{report}");
    assert!(report["rotations"].as_u64().unwrap() >= 5, "{report}");
    assert!(report["reloads"].as_u64().unwrap() >= 5, "{report}");
    for proxy in ["inbound", "outbound"] {
        let fds = &report["proxies"][proxy]["fds"];
        assert_eq!(fds["end"], fds["baseline"], "{proxy} fds: {fds}");
    }
}
