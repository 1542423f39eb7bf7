//! Run a test body in a network namespace of its own, so that the kernel's
//! TCP counters (`/proc/net/netstat`) it reads count only its own sockets.
//!
//! The test binary re-runs itself for that one test under
//! `unshare --net` with the loopback interface up; the inner run sees
//! [`INNER`] set and runs the body. Making a namespace needs root (CI runs
//! as root); elsewhere the body runs in the shared namespace, with a loud
//! note that traffic of other processes may show in the counters.

use std::process::Command;

/// Set (to the test's name) in the environment of the inner run.
const INNER: &str = "PORTCULLIS_TEST_NETNS";

/// Run `body` in a fresh network namespace. `test` is the test function's
/// name, as the test harness filters it.
pub fn in_own_network_namespace(test: &str, body: impl FnOnce()) {
    if std::env::var(INNER).as_deref() == Ok(test) {
        body();
        return;
    }
    let can_unshare = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !can_unshare {
        if super::in_ci() {
            panic!("CI must be able to run `unshare --net` (root and util-linux) for {test}");
        }
        eprintln!(
            "*** NOTE: cannot make a network namespace (not root?); {test} reads the \
             host-wide TCP counters, which other processes' traffic can disturb ***"
        );
        body();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$@\"",
            "sh",
        ])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, test)
        .output()
        .expect("run the test in a network namespace");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "{test} failed in its network namespace ({})",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run in its network namespace:\n{stdout}"
    );
}

/// The kernel's `TcpExt` counter `name` in this network namespace.
pub fn tcp_ext_counter(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("read /proc/net/netstat");
    let mut lines = text.lines();
    while let (Some(header), Some(values)) = (lines.next(), lines.next()) {
        if !header.starts_with("TcpExt:") {
            continue;
        }
        let names = header.split_whitespace();
        if let Some((_, value)) = names
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
        {
            return value.parse().expect("a counter");
        }
    }
    panic!("no TcpExt counter {name} in /proc/net/netstat");
}
