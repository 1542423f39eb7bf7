//! `portcullis check` run as a user runs it: the real binary on real files.
//!
//! Every malformed config must be refused with exit status 1, the file name,
//! the key path and the reason, and without a panic. A valid config passes
//! and prints "ok"; random mutations of a valid config never crash the
//! binary; every example under config/ passes `check --no-files`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{binary, Leaf, Pki};

/// An `[identity]` section for `--no-files` checks: the paths are never read.
const IDENTITY: &str = r#"[identity]
source = "files"
cert = "/etc/portcullis/tls.crt"
key = "/etc/portcullis/tls.key"
trust_bundle = "/etc/portcullis/ca.crt"
"#;

/// What `portcullis check` did.
#[derive(Debug)]
struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `portcullis check [--no-files] -c config` from `/`, so that nothing
/// depends on the test's working directory.
fn check(config: &Path, no_files: bool) -> Checked {
    let mut command = Command::new(binary());
    command.arg("check");
    if no_files {
        command.arg("--no-files");
    }
    let output = command
        .arg("-c")
        .arg(config)
        .current_dir("/")
        .env_remove("RUST_LOG")
        .env_remove("PORTCULLIS_LOG_FORMAT")
        .env_remove("PORTCULLIS_LOG_LEVEL")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("cannot run the portcullis binary");
    Checked {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Write `text` to `dir/name` and return the path.
fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Check that `out` refuses `file` with exactly the `expected` problems, each
/// a (key, reason fragment) pair that must appear on one line as
/// `  key: ...reason...`. Returns a description of every mismatch.
fn refusal_problems(file: &Path, out: &Checked, expected: &[(&str, &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    if out.code != Some(1) {
        problems.push(format!("exit status {:?}, wanted 1", out.code));
    }
    if out.stderr.contains("panicked") {
        problems.push("the binary panicked".to_string());
    }
    if out.stdout.contains(": ok") {
        problems.push("stdout says ok".to_string());
    }
    let n = expected.len();
    let header = format!(
        "{}: {n} error{}",
        file.display(),
        if n == 1 { "" } else { "s" }
    );
    if out.stderr.lines().next() != Some(header.as_str()) {
        problems.push(format!("first line is not {header:?}"));
    }
    for (key, reason) in expected {
        let prefix = format!("  {key}: ");
        let found = out
            .stderr
            .lines()
            .any(|line| line.starts_with(&prefix) && line.contains(reason));
        if !found {
            problems.push(format!("no line `{prefix}...{reason}...`"));
        }
    }
    problems
}

#[track_caller]
fn assert_refused(file: &Path, out: &Checked, expected: &[(&str, &str)]) {
    let problems = refusal_problems(file, out, expected);
    assert!(
        problems.is_empty(),
        "{}:\n  {}\nstderr:\n{}",
        file.display(),
        problems.join("\n  "),
        out.stderr
    );
}

/// A malformed config and the one error it must produce.
struct Case {
    name: &'static str,
    toml: String,
    key: &'static str,
    reason: &'static str,
}

fn case(name: &'static str, toml: &str, key: &'static str, reason: &'static str) -> Case {
    Case {
        name,
        toml: toml.to_string(),
        key,
        reason,
    }
}

/// `IDENTITY` (5 lines) followed by `rest`; line N of `rest` is line N + 5.
fn with_identity(rest: &str) -> String {
    format!("{IDENTITY}{rest}")
}

fn malformed_cases() -> Vec<Case> {
    vec![
        case(
            "syntax-error",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\nspiffe_id = \"spiffe://example.org/ns/web\n",
            ),
            "line 11, column 41 (`spiffe_id = \"spiffe://example.org/ns/web`)",
            "invalid basic string",
        ),
        case(
            "unknown-key",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbakend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\n",
            ),
            "inbound[0].bakend at line 9, column 1 (`bakend = \"127.0.0.1:8080\"`)",
            "unknown field `bakend`, expected one of `name`, `listen`, `backend`",
        ),
        case(
            "missing-listen",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nbackend = \"127.0.0.1:8080\"\nallow_any_authenticated = true\n",
            ),
            "inbound[0].listen at line 6, column 1 (`[[inbound]]`)",
            "missing field `listen`",
        ),
        case(
            "wrong-type",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\nmax_connections = \"many\"\n",
            ),
            "inbound[0].max_connections at line 11, column 19 (`max_connections = \"many\"`)",
            "invalid type: string \"many\", expected usize",
        ),
        case(
            "bad-duration",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\nidle_timeout = \"10 parsecs\"\n",
            ),
            "inbound[0].idle_timeout at line 11, column 16 (`idle_timeout = \"10 parsecs\"`)",
            "invalid value: string \"10 parsecs\", expected a duration",
        ),
        case(
            "listen-not-an-address",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"localhost:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\n",
            ),
            "inbound[0].listen at line 8, column 10 (`listen = \"localhost:8443\"`)",
            "invalid socket address syntax",
        ),
        case(
            "duplicate-names",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\n\
                 [[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8444\"\nbackend = \"127.0.0.1:8081\"\n\
                 allow_any_authenticated = true\n",
            ),
            "inbound[1].name",
            "\"api\" is already used by inbound[0]",
        ),
        case(
            "same-address",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\n\
                 [[inbound]]\nname = \"api2\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8081\"\n\
                 allow_any_authenticated = true\n",
            ),
            "inbound[1].listen",
            "0.0.0.0:8443 is already used by inbound[0].listen",
        ),
        case(
            "same-address-as-admin",
            &with_identity(
                "[admin]\nlisten = \"127.0.0.1:9901\"\n\
                 [[outbound]]\nname = \"pay\"\nlisten = \"127.0.0.1:9901\"\nupstream = \"pay.example.org:8443\"\n\
                 expect = { dns = \"pay.example.org\" }\n",
            ),
            "outbound[0].listen",
            "127.0.0.1:9901 is already used by admin.listen",
        ),
        case(
            "bad-name-characters",
            &with_identity(
                "[[inbound]]\nname = \"my api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\n",
            ),
            "inbound[0].name",
            "\"my api\" may only contain letters, digits, '-' and '_'",
        ),
        case(
            "empty-allow",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n",
            ),
            "inbound[0].allow",
            "no allow rules: this listener would deny every peer",
        ),
        case(
            "allow-any-with-rules",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\n[[inbound.allow]]\ndns = \"web.example.org\"\n",
            ),
            "inbound[0].allow_any_authenticated",
            "the allow rules would never be consulted",
        ),
        case(
            "spiffe-wildcard-trust-domain",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\nspiffe_id = \"spiffe://*.example.org/ns/web/*\"\n",
            ),
            "inbound[0].allow[0].spiffe_id",
            "the trust domain may not contain a wildcard",
        ),
        case(
            "spiffe-http-scheme",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\ndns = \"web.example.org\"\n\
                 [[inbound.allow]]\nspiffe_id = \"http://example.org/ns/web\"\n",
            ),
            "inbound[0].allow[1].spiffe_id",
            "\"http://example.org/ns/web\" does not start with \"spiffe://\"",
        ),
        case(
            "spiffe-bad-path",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\nspiffe_id = \"spiffe://example.org/ns//web\"\n",
            ),
            "inbound[0].allow[0].spiffe_id",
            "path has an empty segment",
        ),
        case(
            "rule-without-fields",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\n",
            ),
            "inbound[0].allow[0]",
            "the rule names no field, so it would match every peer",
        ),
        case(
            "bad-cidr-prefix",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\nip = \"10.0.0.0/33\"\n",
            ),
            "inbound[0].allow[0].ip",
            "\"10.0.0.0/33\": prefix length must be 0..=32",
        ),
        case(
            "bad-ip",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\nip = \"10.0.0/8\"\n",
            ),
            "inbound[0].allow[0].ip",
            "\"10.0.0/8\" is not an IP address or CIDR block",
        ),
        case(
            "bad-extension-oid",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\nextensions = { role = \"admin\" }\n",
            ),
            "inbound[0].allow[0].extensions.\"role\"",
            "\"role\" is not a dotted OID such as \"1.3.6.1.4.1.99999.1\"",
        ),
        case(
            "bad-glob",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\ndns = \"***.example.org\"\n",
            ),
            "inbound[0].allow[0].dns",
            "`***` is not a valid wildcard; use `*` or `**`",
        ),
        case(
            "bad-serial",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 [[inbound.allow]]\nserial = \"0x1g\"\n",
            ),
            "inbound[0].allow[0].serial",
            "\"0x1g\" is not a hex serial number",
        ),
        case(
            "outbound-not-loopback",
            &with_identity(
                "[[outbound]]\nname = \"pay\"\nlisten = \"0.0.0.0:15001\"\nupstream = \"pay.example.org:8443\"\n\
                 expect = { spiffe_id = \"spiffe://example.org/ns/pay/sa/payments\" }\n",
            ),
            "outbound[0].listen",
            "0.0.0.0:15001 is not a loopback address: plaintext would be accepted from the network",
        ),
        case(
            "outbound-empty-expect",
            &with_identity(
                "[[outbound]]\nname = \"pay\"\nlisten = \"127.0.0.1:15001\"\nupstream = \"pay.example.org:8443\"\n\
                 expect = {}\n",
            ),
            "outbound[0].expect",
            "names no identity field: say which upstream identity to expect",
        ),
        case(
            "outbound-bad-server-name",
            &with_identity(
                "[[outbound]]\nname = \"pay\"\nlisten = \"127.0.0.1:15001\"\nupstream = \"10.1.2.3:8443\"\n\
                 server_name = \"not a name\"\nexpect = { dns = \"pay.example.org\" }\n",
            ),
            "outbound[0].server_name",
            "\"not a name\" is not a valid DNS name or IP address",
        ),
        case(
            "backend-without-port",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1\"\n\
                 allow_any_authenticated = true\n",
            ),
            "inbound[0].backend",
            "\"127.0.0.1\": expected host:port",
        ),
        case(
            "backend-empty-port",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"localhost:\"\n\
                 allow_any_authenticated = true\n",
            ),
            "inbound[0].backend",
            "port \"\" is not a number from 1 to 65535",
        ),
        case(
            "unknown-identity-source",
            "[identity]\nsource = \"vault\"\ncert = \"/etc/portcullis/tls.crt\"\n\
             key = \"/etc/portcullis/tls.key\"\ntrust_bundle = \"/etc/portcullis/ca.crt\"\n\
             [[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
             allow_any_authenticated = true\n",
            "identity.source at line 2, column 10 (`source = \"vault\"`)",
            "unknown variant `vault`, expected `files`",
        ),
        case(
            "bad-tls-version",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\ntls_min_version = \"1.1\"\n",
            ),
            "inbound[0].tls_min_version at line 11, column 19 (`tls_min_version = \"1.1\"`)",
            "unknown variant `1.1`, expected `1.2` or `1.3`",
        ),
        case(
            "bad-proxy-protocol",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\nproxy_protocol = \"v1\"\n",
            ),
            "inbound[0].proxy_protocol at line 11, column 18 (`proxy_protocol = \"v1\"`)",
            "unknown variant `v1`, expected `v2`",
        ),
        case(
            "zero-timeout",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 allow_any_authenticated = true\nhandshake_timeout = \"0s\"\n",
            ),
            "inbound[0].handshake_timeout",
            "must be greater than zero",
        ),
        case(
            "no-listeners",
            IDENTITY,
            "(file)",
            "nothing to do: no [[inbound]], [[outbound]] or [[watch]] entry is configured",
        ),
        case(
            "empty-identity-path",
            "[identity]\nsource = \"files\"\ncert = \"\"\nkey = \"/etc/portcullis/tls.key\"\n\
             trust_bundle = \"/etc/portcullis/ca.crt\"\n\
             [[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
             allow_any_authenticated = true\n",
            "identity.cert",
            "path is empty",
        ),
        case(
            "http-key-on-tcp",
            &with_identity(&format!("{HTTP_BASE}route = []\nidentity_headers = [\"spiffe-id\"]\n")),
            "inbound[0].identity_headers",
            "applies only to HTTP listeners; add protocol = \"http\"",
        ),
        case(
            "http-proxy-protocol",
            &with_identity(&format!("{HTTP_BASE}protocol = \"http\"\nproxy_protocol = \"v2\"\n")),
            "inbound[0].proxy_protocol",
            "an HTTP listener passes the peer's identity in headers",
        ),
        case(
            "http-unknown-identity-header",
            &with_identity(&format!("{HTTP_BASE}protocol = \"http\"\nidentity_headers = [\"x-user\"]\n")),
            "inbound[0].identity_headers[0] at line 12, column 21 (`identity_headers = [\"x-user\"]`)",
            "unknown variant `x-user`, expected one of `xfcc`, `client-cert`, `spiffe-id`",
        ),
        case(
            "http-reserved-spiffe-header",
            &with_identity(&format!("{HTTP_BASE}protocol = \"http\"\nspiffe_id_header = \"Host\"\n")),
            "inbound[0].spiffe_id_header",
            "\"host\" is a header with another meaning",
        ),
        case(
            "http-route-path",
            &with_identity(&format!(
                "{HTTP_BASE}protocol = \"http\"\n[[inbound.route]]\npath = \"admin/**\"\n"
            )),
            "inbound[0].route[0].path",
            "must start with '/'",
        ),
        case(
            "http-route-method",
            &with_identity(&format!(
                "{HTTP_BASE}protocol = \"http\"\n[[inbound.route]]\npath = \"/admin/**\"\nmethods = [\"post\"]\n"
            )),
            "inbound[0].route[0].methods[0]",
            "\"post\" is not an HTTP method",
        ),
        case(
            "http-route-rule",
            &with_identity(&format!(
                "{HTTP_BASE}protocol = \"http\"\n[[inbound.route]]\npath = \"/a\"\n[[inbound.route.allow]]\nip = \"nope\"\n"
            )),
            "inbound[0].route[0].allow[0].ip",
            "is not an IP address",
        ),
        case(
            "http-header-limit",
            &with_identity(&format!("{HTTP_BASE}protocol = \"http\"\n[inbound.http]\nmax_header_bytes = 100\n")),
            "inbound[0].http.max_header_bytes",
            "must be from 8192 to 1048576",
        ),
        case(
            "audit-without-rules-is-fine-but-a-bad-shadow-rule-is-not",
            &with_identity(
                "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
                 authz_mode = \"audit\"\n[[inbound.shadow_allow]]\n",
            ),
            "inbound[0].shadow_allow[0]",
            "the rule names no field",
        ),
    ]
}

/// An inbound listener that admits any verified peer, to add keys to.
const HTTP_BASE: &str = "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\n\
                         backend = \"127.0.0.1:8080\"\nallow_any_authenticated = true\n";

#[test]
fn malformed_configs_are_refused_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = malformed_cases();
    assert!(cases.len() >= 14);
    let mut failures = Vec::new();
    for case in &cases {
        let path = write_config(dir.path(), &format!("{}.toml", case.name), &case.toml);
        let out = check(&path, true);
        let problems = refusal_problems(&path, &out, &[(case.key, case.reason)]);
        if !problems.is_empty() {
            failures.push(format!(
                "case {}:\n  {}\nstderr:\n{}",
                case.name,
                problems.join("\n  "),
                out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn several_errors_are_all_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = with_identity(
        r#"[admin]
listen = "127.0.0.1:9901"

[[inbound]]
name = "api gateway"
listen = "127.0.0.1:9901"
backend = "backend.local"
max_connections = 0
  [[inbound.allow]]
  spiffe_id = "spiffe://*.example.org/ns/web"
  [[inbound.allow]]
  ip = "10.0.0.0/40"
  extensions = { "1.3.6.1.4.1.99999.1" = "admin", "roles" = "x" }

[[inbound]]
name = "open"
listen = "0.0.0.0:8443"
backend = "127.0.0.1:8080"

[[outbound]]
name = "open"
listen = "0.0.0.0:15001"
upstream = "pay.example.org:8443"
expect = {}
"#,
    );
    let path = write_config(dir.path(), "many.toml", &text);
    let out = check(&path, true);
    assert_refused(
        &path,
        &out,
        &[
            ("inbound[0].name", "\"api gateway\" may only contain"),
            (
                "inbound[0].listen",
                "127.0.0.1:9901 is already used by admin.listen",
            ),
            (
                "inbound[0].backend",
                "\"backend.local\": expected host:port",
            ),
            ("inbound[0].max_connections", "must be from 1 to 1000000"),
            (
                "inbound[0].allow[0].spiffe_id",
                "the trust domain may not contain a wildcard",
            ),
            (
                "inbound[0].allow[1].extensions.\"roles\"",
                "is not a dotted OID",
            ),
            ("inbound[0].allow[1].ip", "prefix length must be 0..=32"),
            ("inbound[1].allow", "no allow rules"),
            ("outbound[0].name", "\"open\" is already used by inbound[1]"),
            ("outbound[0].listen", "is not a loopback address"),
            ("outbound[0].expect", "names no identity field"),
        ],
    );
}

#[test]
fn a_config_file_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let out = check(&path, true);
    assert_refused(&path, &out, &[("(file)", "cannot read: No such file")]);
}

/// A PKI with a server leaf, and a config in the PKI folder naming the files
/// by relative path (resolved against that folder, not the working directory).
fn valid_setup() -> (Pki, PathBuf) {
    let pki = Pki::new();
    pki.issue_files(
        "server",
        &Leaf {
            dns: vec!["api.example.org".into()],
            ..Leaf::spiffe("ns/api/sa/server")
        },
    );
    std::fs::write(pki.path("root.crl"), pki.root.crl(&[7])).unwrap();
    let text = r#"[admin]
listen = "127.0.0.1:9901"

[identity]
source = "files"
cert = "server.crt"
key = "server.key"
trust_bundle = "bundle.crt"
crls = ["root.crl"]

[[inbound]]
name = "api"
listen = "0.0.0.0:8443"
backend = "127.0.0.1:8080"
proxy_protocol = "v2"
  [[inbound.allow]]
  spiffe_id = "spiffe://example.org/ns/web/*"
  [[inbound.allow]]
  dns = "*.ops.example.org"
  ou = "sre"
  [[inbound.allow]]
  ip = "10.0.0.0/8"
  email = "*@example.org"
  issuer = "CN=Test*"
  serial = "7f:3a"
  extensions = { "1.3.6.1.4.1.99999.1" = "admin" }

[[outbound]]
name = "payments"
listen = "127.0.0.1:15001"
upstream = "payments.pay.svc:8443"
expect = { spiffe_id = "spiffe://example.org/ns/pay/sa/payments" }

[shutdown]
drain_timeout = "20s"
"#;
    let path = write_config(pki.dir.path(), "portcullis.toml", text);
    (pki, path)
}

#[test]
fn a_valid_config_with_real_files_passes() {
    let (_pki, path) = valid_setup();
    for no_files in [false, true] {
        let out = check(&path, no_files);
        assert_eq!(
            out.code,
            Some(0),
            "no_files={no_files}: stderr:\n{}",
            out.stderr
        );
        assert_eq!(out.stdout, format!("{}: ok\n", path.display()));
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

/// Replace `from` by `to` in the valid config, then run a full check.
fn check_variant(pki: &Pki, config: &Path, from: &str, to: &str) -> Checked {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(from), "{from:?} not in the valid config");
    let variant = write_config(pki.dir.path(), "variant.toml", &text.replace(from, to));
    check(&variant, false)
}

#[test]
fn a_missing_cert_file_is_named_and_unreadable() {
    let (pki, path) = valid_setup();
    let out = check_variant(&pki, &path, "\"server.crt\"", "\"missing.crt\"");
    let missing = pki.path("missing.crt");
    let variant = pki.path("variant.toml");
    assert_refused(
        &variant,
        &out,
        &[(
            "identity.cert",
            &format!(
                "{}: cannot read: No such file or directory",
                missing.display()
            ),
        )],
    );
    // The same config passes when files are not read.
    assert_eq!(check(&variant, true).code, Some(0));
}

#[test]
fn a_missing_trust_bundle_is_named() {
    let (pki, path) = valid_setup();
    let out = check_variant(&pki, &path, "\"bundle.crt\"", "\"certs/ca.crt\"");
    let missing = pki.path("certs/ca.crt");
    assert_refused(
        &pki.path("variant.toml"),
        &out,
        &[(
            "identity.trust_bundle",
            &format!("{}: cannot read", missing.display()),
        )],
    );
}

#[test]
fn a_garbage_cert_file_is_refused() {
    let (pki, path) = valid_setup();
    std::fs::write(pki.path("garbage.crt"), "this is not a certificate\n").unwrap();
    let out = check_variant(&pki, &path, "\"server.crt\"", "\"garbage.crt\"");
    assert_refused(
        &pki.path("variant.toml"),
        &out,
        &[(
            "identity.cert",
            &format!(
                "{}: no certificate found (a PEM block `-----BEGIN CERTIFICATE-----` was expected)",
                pki.path("garbage.crt").display()
            ),
        )],
    );
}

#[test]
fn a_pem_block_with_garbage_inside_is_refused() {
    let (pki, path) = valid_setup();
    std::fs::write(
        pki.path("junk.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIBaGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = check_variant(&pki, &path, "\"server.crt\"", "\"junk.crt\"");
    assert_refused(
        &pki.path("variant.toml"),
        &out,
        &[("identity.cert", "leaf certificate: does not parse")],
    );
}

#[test]
fn a_garbage_crl_is_refused() {
    let (pki, path) = valid_setup();
    std::fs::write(pki.path("junk.crl"), [0x30, 0x03, 0x01, 0x01, 0x00]).unwrap();
    let out = check_variant(&pki, &path, "\"root.crl\"", "\"junk.crl\"");
    assert_refused(
        &pki.path("variant.toml"),
        &out,
        &[(
            "identity.crls[0]",
            "not a valid certificate revocation list",
        )],
    );
}

#[test]
fn a_key_file_holding_a_certificate_is_refused() {
    let (pki, path) = valid_setup();
    let out = check_variant(&pki, &path, "\"server.key\"", "\"server.crt\"");
    assert_refused(
        &pki.path("variant.toml"),
        &out,
        &[(
            "identity.key",
            &format!("{}: no private key found", pki.path("server.crt").display()),
        )],
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let (pki, path) = valid_setup();
    pki.issue_files("other", &Leaf::spiffe("ns/other/sa/other"));
    let out = check_variant(&pki, &path, "\"server.key\"", "\"other.key\"");
    assert_refused(
        &pki.path("variant.toml"),
        &out,
        &[("identity.key", "does not match the certificate in")],
    );
    assert!(
        out.stderr
            .contains("use the key the certificate was issued for"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (pki, path) = valid_setup();
    let open = pki.path("open.key");
    std::fs::copy(pki.path("server.key"), &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check_variant(&pki, &path, "\"server.key\"", "\"open.key\"");
    assert_refused(
        &pki.path("variant.toml"),
        &out,
        &[("identity.key", &format!("chmod 600 {}", open.display()))],
    );
}

// ---------------------------------------------------------------------------
// Fuzz-ish: random mutations of a valid config never crash the binary.
// ---------------------------------------------------------------------------

/// SplitMix64: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that are meaningful to TOML, to our values, or to UTF-8 decoding.
const INTERESTING: &[u8] = b"\"'[]{}=,.:/*\n#\\ 0129-_ax\xff\xc3";

fn mutate(rng: &mut Rng, text: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        if text.is_empty() {
            text.push(b'[');
        }
        let at = rng.below(text.len());
        match rng.below(3) {
            0 => {
                let len = 1 + rng.below(8);
                let end = (at + len).min(text.len());
                text.drain(at..end);
            }
            1 => {
                let len = 1 + rng.below(40);
                let end = (at + len).min(text.len());
                let copy = text[at..end].to_vec();
                let to = rng.below(text.len() + 1);
                text.splice(to..to, copy);
            }
            _ => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(text.len());
                    text[i] = if rng.below(4) == 0 {
                        rng.next() as u8
                    } else {
                        INTERESTING[rng.below(INTERESTING.len())]
                    };
                }
            }
        }
    }
}

#[test]
fn random_mutations_never_crash_check() {
    let (pki, path) = valid_setup();
    let base = std::fs::read(&path).unwrap();
    let mutant = pki.path("mutant.toml");
    let mut rng = Rng(0x5eed_c0ff_ee00);
    let (mut accepted, mut refused) = (0, 0);
    for iteration in 0..300 {
        let mut text = base.clone();
        mutate(&mut rng, &mut text);
        std::fs::write(&mutant, &text).unwrap();
        // Alternate: config only, and config plus the files it names.
        let out = check(&mutant, iteration % 2 == 0);
        let input = String::from_utf8_lossy(&text);
        assert!(
            matches!(out.code, Some(0) | Some(1)),
            "iteration {iteration}: exit status {:?} (signal?)\ninput:\n{input}\nstderr:\n{}",
            out.code,
            out.stderr
        );
        assert!(
            !out.stderr.contains("panicked"),
            "iteration {iteration}: panic\ninput:\n{input}\nstderr:\n{}",
            out.stderr
        );
        if out.code == Some(0) {
            accepted += 1;
            assert!(out.stdout.ends_with(": ok\n"), "{}", out.stdout);
        } else {
            refused += 1;
            // Every refusal names the file first.
            let first = out.stderr.lines().next().unwrap_or_default();
            assert!(
                first.starts_with(&format!("{}: ", mutant.display())) && first.contains(" error"),
                "iteration {iteration}: first line {first:?}\ninput:\n{input}\nstderr:\n{}",
                out.stderr
            );
        }
    }
    // The mutations must actually break things most of the time.
    assert!(refused > 100, "only {refused} of 300 mutants were refused");
    eprintln!("mutants: {accepted} accepted, {refused} refused");
}

// ---------------------------------------------------------------------------
// The examples and the documentation.
// ---------------------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_config_passes_check() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo().join("config"))
        .expect("config/ folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "expected examples, found {examples:?}");
    let mut failures = Vec::new();
    for example in &examples {
        let out = check(example, true);
        if out.code != Some(0) || out.stderr.contains("panicked") {
            failures.push(format!(
                "{}: {:?}\n{}",
                example.display(),
                out.code,
                out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every field name declared in src/config/schema.rs, plus the `source` tag.
fn schema_keys() -> Vec<String> {
    let schema = std::fs::read_to_string(repo().join("src/config/schema.rs")).unwrap();
    let mut keys: Vec<String> = schema
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub ")?;
            let (name, _) = rest.split_once(':')?;
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
                .then(|| name.to_string())
        })
        .collect();
    keys.push("source".into());
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn every_schema_key_is_documented() {
    let docs = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let keys = schema_keys();
    assert!(keys.len() > 30, "schema parse found only {keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention {missing:?}"
    );
}

// ---------------------------------------------------------------------------
// Known problems: these assert the behaviour we want. Un-ignore once fixed.
// ---------------------------------------------------------------------------

#[test]
fn empty_rule_key_has_no_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "empty-rule.toml",
        &with_identity(
            "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
             [[inbound.allow]]\n",
        ),
    );
    let out = check(&path, true);
    assert_refused(
        &path,
        &out,
        &[("inbound[0].allow[0]", "the rule names no field")],
    );
    assert!(!out.stderr.contains("(rule)"), "{}", out.stderr);
}

#[test]
fn deserialize_errors_name_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let head = "[[inbound]]\nname = \"api\"\n";
    let cases = [
        (
            "listen = \"0.0.0.0:8443\"\nbakend = \"127.0.0.1:8080\"\nallow_any_authenticated = true\n",
            "inbound[0].bakend",
        ),
        (
            "backend = \"127.0.0.1:8080\"\nallow_any_authenticated = true\n",
            "inbound[0].listen",
        ),
        (
            "listen = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\nallow_any_authenticated = true\n\
             max_connections = \"many\"\n",
            "inbound[0].max_connections",
        ),
        (
            "listen = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\nallow_any_authenticated = true\n\
             idle_timeout = \"10 parsecs\"\n",
            "inbound[0].idle_timeout",
        ),
    ];
    for (i, (rest, key)) in cases.iter().enumerate() {
        let path = write_config(
            dir.path(),
            &format!("de-{i}.toml"),
            &with_identity(&format!("{head}{rest}")),
        );
        let out = check(&path, true);
        assert!(
            out.stderr.contains(key),
            "want {key}; stderr:\n{}",
            out.stderr
        );
    }
}

#[test]
fn absurd_max_connections_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "max.toml",
        &with_identity(
            "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
             allow_any_authenticated = true\nmax_connections = 9223372036854775807\n",
        ),
    );
    let out = check(&path, true);
    assert_refused(&path, &out, &[("inbound[0].max_connections", "")]);
}

#[test]
fn absurd_timeouts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "timeout.toml",
        &with_identity(
            "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
             allow_any_authenticated = true\nidle_timeout = \"300000000000years\"\n",
        ),
    );
    let out = check(&path, true);
    assert_refused(&path, &out, &[("inbound[0].idle_timeout", "")]);
}

#[test]
fn wildcard_and_specific_address_on_one_port_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "overlap.toml",
        &with_identity(
            "[[inbound]]\nname = \"api\"\nlisten = \"0.0.0.0:8443\"\nbackend = \"127.0.0.1:8080\"\n\
             allow_any_authenticated = true\n\
             [[outbound]]\nname = \"pay\"\nlisten = \"127.0.0.1:8443\"\nupstream = \"pay.example.org:8443\"\n\
             expect = { dns = \"pay.example.org\" }\n",
        ),
    );
    let out = check(&path, true);
    assert_refused(&path, &out, &[("outbound[0].listen", "0.0.0.0:8443")]);
}

#[test]
fn port_zero_listeners_are_accepted_and_never_clash() {
    // Port 0: the kernel picks a free port per listener at bind time.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "port0.toml",
        &with_identity(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[inbound]]\nname = \"a\"\nlisten = \"0.0.0.0:0\"\nbackend = \"127.0.0.1:8080\"\n\
             allow_any_authenticated = true\n\
             [[inbound]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nbackend = \"127.0.0.1:8080\"\n\
             allow_any_authenticated = true\n\
             [[outbound]]\nname = \"pay\"\nlisten = \"127.0.0.1:0\"\nupstream = \"pay.example.org:8443\"\n\
             expect = { dns = \"pay.example.org\" }\n",
        ),
    );
    let out = check(&path, true);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}

#[test]
fn file_content_errors_name_the_file_and_key() {
    let (pki, path) = valid_setup();
    let junk_pem = "-----BEGIN CERTIFICATE-----\nMAMBAQA=\n-----END CERTIFICATE-----\n";
    std::fs::write(pki.path("junk.crt"), junk_pem).unwrap();
    std::fs::write(pki.path("junk.crl"), [0x30, 0x03, 0x01, 0x01, 0x00]).unwrap();
    pki.issue_files("other", &Leaf::spiffe("ns/other/sa/other"));
    let cases = [
        (
            "\"server.crt\"",
            "\"junk.crt\"",
            "identity.cert",
            "junk.crt",
        ),
        (
            "\"bundle.crt\"",
            "\"junk.crt\"",
            "identity.trust_bundle",
            "junk.crt",
        ),
        (
            "\"root.crl\"",
            "\"junk.crl\"",
            "identity.crls[0]",
            "junk.crl",
        ),
        (
            "\"server.key\"",
            "\"other.key\"",
            "identity.key",
            "other.key",
        ),
    ];
    for (from, to, key, file) in cases {
        let out = check_variant(&pki, &path, from, to);
        assert_refused(
            &pki.path("variant.toml"),
            &out,
            &[(key, &pki.path(file).display().to_string())],
        );
    }
}
