//! `portcullis dev` as a newcomer uses it: start it, copy the printed
//! commands, run them verbatim.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Dev {
    child: std::process::Child,
    printed: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `portcullis dev` with every listener on port 0; returns it and
/// the mTLS port it printed.
fn start_dev(dir: &std::path::Path, extra: &[&str]) -> (Dev, u16) {
    let mut child = Command::new(binary())
        .arg("dev")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("stop with Ctrl-C") {
                let _ = tx.send(printed.clone());
            }
        }
    });
    let printed = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("portcullis dev printed its instructions");
    // "portcullis dev is running: mTLS on 127.0.0.1:PORT -> ..."
    let port = printed
        .split_once("mTLS on ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|listen| listen.parse::<std::net::SocketAddr>().ok())
        .map(|listen| listen.port())
        .unwrap_or_else(|| panic!("no mTLS address in:\n{printed}"));
    assert_ne!(port, 0, "{printed}");
    (Dev { child, printed }, port)
}

/// The command printed on the line after `label:`.
fn printed_command(printed: &str, label: &str) -> String {
    let mut lines = printed.lines();
    lines.find(|l| l.trim() == label);
    lines.next().expect("command line").trim().to_string()
}

fn sh(command: &str) -> std::process::Output {
    Command::new("timeout")
        .arg("20")
        .arg("sh")
        .arg("-c")
        .arg(command)
        .output()
        .unwrap()
}

#[test]
fn printed_commands_work_verbatim_and_need_the_client_cert() {
    if !require_tool("curl") || !require_tool("python3") || !require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev_dir = dir.path().join("dev");
    let (dev, _port) = start_dev(&dev_dir, &[]);

    let curl = printed_command(&dev.printed, "curl:");
    let out = sh(&curl);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{curl}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        body.contains("hello from the portcullis dev backend"),
        "{body}"
    );

    let python = printed_command(&dev.printed, "python:");
    let out = sh(&python);
    assert!(
        out.status.success(),
        "{python}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the portcullis dev backend"));

    let openssl = printed_command(&dev.printed, "openssl:");
    let out = sh(&format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {openssl}"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from the portcullis dev backend"),
        "{openssl}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same curl without the client certificate is refused.
    let without_cert = curl
        .replace(
            &format!("--cert {}", dev_dir.join("client.crt").display()),
            "",
        )
        .replace(
            &format!("--key {}", dev_dir.join("client.key").display()),
            "",
        );
    assert_ne!(without_cert, curl);
    let out = sh(&without_cert);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello from"));

    // Keys are private; the CA is reused on the next start.
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "proxy.key", "client.key"] {
        let mode = std::fs::metadata(dev_dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} mode {mode:o}");
    }
    let ca_before = std::fs::read(dev_dir.join("ca.crt")).unwrap();
    drop(dev);
    let (_again, _) = start_dev(&dev_dir, &[]);
    assert_eq!(std::fs::read(dev_dir.join("ca.crt")).unwrap(), ca_before);
}

#[test]
fn forward_puts_mtls_in_front_of_a_local_port() {
    let (backend, seen) = recording_backend(b"from my service");
    let dir = tempfile::tempdir().unwrap();
    let dev_dir = dir.path().join("dev");
    let (_dev, port) = start_dev(&dev_dir, &["--forward", &backend.to_string()]);
    let ca = std::fs::read_to_string(dev_dir.join("ca.crt")).unwrap();
    let client = Issued::from_pem(
        &std::fs::read_to_string(dev_dir.join("client.crt")).unwrap(),
        &std::fs::read_to_string(dev_dir.join("client.key")).unwrap(),
    );
    let mut stream = tls_connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "localhost",
        client_config(Some(&client), &ca),
    )
    .unwrap();
    use std::io::{Read, Write};
    stream.write_all(b"to my service").unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert_eq!(got, b"from my service");
    assert_eq!(
        seen.lock().unwrap().first().map(Vec::as_slice),
        Some(&b"to my service"[..])
    );
}
