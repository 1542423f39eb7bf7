//! Semantic checks on a parsed configuration: names, addresses, rules.
//!
//! Each check appends a `ConfigError` with the key path; nothing stops at the
//! first problem. File contents (certificates, keys) are checked later, when
//! the runtime objects are built, because they can change without the config.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::ServerName;

use super::rules::{compile_authorizer, compile_http_authz, compile_policy, compile_rule};
use super::schema::{
    AllowRule, AuthzMode, BackendProtocol, Config, HttpLimits, IdentityConfig, IdentityHeaderKind,
    InboundConfig, ListenerProtocol,
};
use super::ConfigError;

/// Longest listener name; names are metric label values.
const MAX_NAME_LEN: usize = 64;
/// Most connections one listener may be configured for.
const MAX_CONNECTIONS: usize = 1_000_000;
/// Longest timeout accepted (keeps timer arithmetic far from overflow).
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

pub(super) fn validate(config: &Config) -> Vec<ConfigError> {
    let mut errors = Errors::default();
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();

    if config.admin.enabled {
        addresses.insert(config.admin.listen, "admin.listen".into());
    }
    let admin = &config.admin;
    if admin.mtls {
        if let Err(rule_errors) = compile_policy(&admin.allow, admin.allow_any_authenticated) {
            for (rule, e) in rule_errors {
                errors.push(
                    format!("admin.allow[{rule}].{}", e.field).replace(".(rule)", ""),
                    e.reason,
                );
            }
        }
        if admin.allow.is_empty() && !admin.allow_any_authenticated {
            errors.push(
                "admin.allow",
                "mtls = true with no allow rules would refuse every scraper; add an [[admin.allow]] rule, or allow_any_authenticated = true",
            );
        }
    } else if !admin.allow.is_empty() || admin.allow_any_authenticated {
        errors.push(
            "admin.allow",
            "allow rules apply only with mtls = true (a plain-HTTP admin endpoint cannot see client certificates)",
        );
    }
    if config.shutdown.drain_timeout > MAX_TIMEOUT {
        errors.push("shutdown.drain_timeout", "must be at most 365 days");
    }
    if config.inbound.is_empty() && config.outbound.is_empty() && config.watch.is_empty() {
        errors.push(
            "(file)",
            "nothing to do: no [[inbound]], [[outbound]] or [[watch]] entry is configured",
        );
    }
    match &config.identity {
        IdentityConfig::Ca(ca) => {
            match ca.url.strip_prefix("https://") {
                None => errors.push(
                    "identity.url",
                    format!("{:?} must start with https://", ca.url),
                ),
                Some(rest) => {
                    let authority = rest.trim_end_matches('/');
                    if authority.contains('/') {
                        errors.push(
                            "identity.url",
                            "give only https://host:port, without a path",
                        );
                    } else if let Some(host) =
                        check_host_port(&mut errors, "identity.url", authority)
                    {
                        let name = ca.server_name.clone().unwrap_or(host);
                        if ServerName::try_from(name.as_str()).is_err() {
                            errors.push(
                                "identity.server_name",
                                format!("{name:?} is not a valid DNS name or IP address"),
                            );
                        }
                    }
                }
            }
            for (key, path) in [
                ("identity.ca_bundle", &ca.ca_bundle),
                ("identity.token_file", &ca.token_file),
            ] {
                if path.as_os_str().is_empty() {
                    errors.push(key, "path is empty");
                }
            }
            if !(ca.renew_at > 0.0 && ca.renew_at < 1.0) {
                errors.push(
                    "identity.renew_at",
                    "must be between 0 and 1 (exclusive), e.g. 0.66",
                );
            }
            if let Some(ttl) = ca.ttl {
                check_timeouts(&mut errors, "identity", &[("ttl", ttl)]);
            }
            check_timeouts(
                &mut errors,
                "identity",
                &[
                    ("retry_max", ca.retry_max),
                    ("bundle_refresh", ca.bundle_refresh),
                ],
            );
        }
        IdentityConfig::Files(files) => {
            for (key, path) in [
                ("identity.cert", &files.cert),
                ("identity.key", &files.key),
                ("identity.trust_bundle", &files.trust_bundle),
            ] {
                if path.as_os_str().is_empty() {
                    errors.push(key, "path is empty");
                }
            }
        }
    }

    if config.admin.peer_table_size > MAX_PEER_TABLE_SIZE {
        errors.push(
            "admin.peer_table_size",
            format!("must be at most {MAX_PEER_TABLE_SIZE} (each entry holds a few hundred bytes)"),
        );
    }

    for (i, inbound) in config.inbound.iter().enumerate() {
        let at = format!("inbound[{i}]");
        check_name(&mut errors, &mut names, &at, &inbound.name);
        check_listen(&mut errors, &mut addresses, &at, inbound.listen);
        check_host_port(&mut errors, &format!("{at}.backend"), &inbound.backend);
        check_timeouts(
            &mut errors,
            &at,
            &[
                ("handshake_timeout", inbound.handshake_timeout),
                ("connect_timeout", inbound.connect_timeout),
                ("idle_timeout", inbound.idle_timeout),
            ],
        );
        check_max_connections(&mut errors, &at, inbound.max_connections);
        check_lingering(
            &mut errors,
            &at,
            inbound.lingering_time,
            inbound.lingering_bytes,
        );
        if let Err(rule_errors) = compile_authorizer(inbound) {
            for (key, reason) in rule_errors {
                errors.push(format!("{at}.{key}"), reason);
            }
        }
        check_http(&mut errors, &at, inbound);
        let audit = inbound.authz_mode == AuthzMode::Audit;
        match (inbound.allow.is_empty(), inbound.allow_any_authenticated) {
            // In audit mode no rules is a way to start: every peer is
            // admitted and reported as would_deny (docs/authz-rollout.md).
            (true, false) if !audit => errors.push(
                format!("{at}.allow"),
                "no allow rules: this listener would deny every peer; add an \
                 [[inbound.allow]] rule, or allow_any_authenticated = true",
            ),
            (false, true) => errors.push(
                format!("{at}.allow_any_authenticated"),
                "is true, so the allow rules would never be consulted; remove one or the other",
            ),
            _ => {}
        }
    }

    for (i, outbound) in config.outbound.iter().enumerate() {
        let at = format!("outbound[{i}]");
        check_name(&mut errors, &mut names, &at, &outbound.name);
        check_listen(&mut errors, &mut addresses, &at, outbound.listen);
        if !outbound.listen.ip().is_loopback() && !outbound.allow_non_loopback {
            errors.push(
                format!("{at}.listen"),
                format!(
                    "{} is not a loopback address: plaintext would be accepted from the network; \
                     use 127.0.0.1, or set allow_non_loopback = true",
                    outbound.listen
                ),
            );
        }
        let host = check_host_port(&mut errors, &format!("{at}.upstream"), &outbound.upstream);
        match &outbound.server_name {
            Some(name) => {
                if ServerName::try_from(name.as_str()).is_err() {
                    errors.push(
                        format!("{at}.server_name"),
                        format!("{name:?} is not a valid DNS name or IP address"),
                    );
                }
            }
            None => {
                if let Some(host) = host {
                    if ServerName::try_from(host.as_str()).is_err() {
                        errors.push(
                            format!("{at}.upstream"),
                            format!(
                                "host {host:?} is not a valid TLS server name; set server_name"
                            ),
                        );
                    }
                }
            }
        }
        check_timeouts(
            &mut errors,
            &at,
            &[
                ("handshake_timeout", outbound.handshake_timeout),
                ("connect_timeout", outbound.connect_timeout),
                ("idle_timeout", outbound.idle_timeout),
            ],
        );
        check_max_connections(&mut errors, &at, outbound.max_connections);
        check_lingering(
            &mut errors,
            &at,
            outbound.lingering_time,
            outbound.lingering_bytes,
        );
        check_expect(&mut errors, &format!("{at}.expect"), &outbound.expect);
    }
    for (i, watch) in config.watch.iter().enumerate() {
        let at = format!("watch[{i}]");
        match (&watch.path, &watch.endpoint) {
            (Some(_), Some(_)) | (None, None) => {
                errors.push(&at, "set exactly one of `path` and `endpoint`")
            }
            (Some(path), None) => {
                if path.as_os_str().is_empty() {
                    errors.push(format!("{at}.path"), "path is empty");
                }
                for (key, set) in [
                    ("server_name", watch.server_name.is_some()),
                    ("client_cert", watch.client_cert.is_some()),
                    ("client_key", watch.client_key.is_some()),
                ] {
                    if set {
                        errors.push(format!("{at}.{key}"), "only applies to `endpoint`");
                    }
                }
            }
            (None, Some(endpoint)) => {
                let host = check_host_port(&mut errors, &format!("{at}.endpoint"), endpoint);
                let name = watch.server_name.clone().or(host);
                if let Some(name) = name {
                    if ServerName::try_from(name.as_str()).is_err() {
                        errors.push(
                            format!("{at}.server_name"),
                            format!("{name:?} is not a valid DNS name or IP address"),
                        );
                    }
                }
                if watch.client_cert.is_some() != watch.client_key.is_some() {
                    errors.push(
                        format!("{at}.client_key"),
                        "set both `client_cert` and `client_key`, or neither",
                    );
                }
            }
        }
        check_timeouts(&mut errors, &at, &[("interval", watch.interval)]);
    }
    errors.0
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

fn check_name<'a>(
    errors: &mut Errors,
    seen: &mut HashMap<&'a str, String>,
    at: &str,
    name: &'a str,
) {
    let key = format!("{at}.name");
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        errors.push(&key, format!("must be 1 to {MAX_NAME_LEN} characters"));
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errors.push(
            &key,
            format!("{name:?} may only contain letters, digits, '-' and '_'"),
        );
    }
    if let Some(first) = seen.insert(name, at.to_string()) {
        errors.push(&key, format!("{name:?} is already used by {first}"));
    }
}

fn check_listen(
    errors: &mut Errors,
    seen: &mut HashMap<SocketAddr, String>,
    at: &str,
    listen: SocketAddr,
) {
    // Port 0 asks the kernel for a free port at bind time (tests, several
    // proxies on one host); each such listener gets a port of its own, so
    // it cannot clash with another. The proxy reports the port it got.
    if listen.port() == 0 {
        return;
    }
    let key = format!("{at}.listen");
    // 0.0.0.0:P (or [::]:P) takes port P on every address, so it clashes
    // with any other listener on P.
    let clash = seen.iter().find(|(other, _)| {
        other.port() == listen.port()
            && (**other == listen || other.ip().is_unspecified() || listen.ip().is_unspecified())
    });
    if let Some((other, first)) = clash {
        if *other == listen {
            errors.push(&key, format!("{listen} is already used by {first}"));
        } else {
            errors.push(&key, format!("{listen} overlaps {other} used by {first}"));
        }
    }
    seen.insert(listen, key);
}

/// Check `host:port` (host may be a DNS name, IPv4, or `[IPv6]`); returns the host.
fn check_host_port(errors: &mut Errors, key: &str, value: &str) -> Option<String> {
    match split_host_port(value) {
        Ok((host, _port)) => Some(host),
        Err(reason) => {
            errors.push(key, format!("{value:?}: {reason}"));
            None
        }
    }
}

/// Split `host:port`, `[v6]:port`. Used by the proxy to dial, too.
pub fn split_host_port(value: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after IPv6 address".to_string())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "expected host:port".to_string())?;
        (host, port)
    } else {
        value
            .rsplit_once(':')
            .ok_or_else(|| "expected host:port".to_string())?
    };
    if host.is_empty() {
        return Err("host is empty".into());
    }
    if host.contains(':') && !value.starts_with('[') {
        return Err("write IPv6 addresses as [addr]:port".into());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port 0 is not allowed".into());
    }
    Ok((host.to_string(), port))
}

fn check_timeouts(errors: &mut Errors, at: &str, timeouts: &[(&str, Duration)]) {
    for (name, value) in timeouts {
        if value.is_zero() {
            errors.push(format!("{at}.{name}"), "must be greater than zero");
        } else if *value > MAX_TIMEOUT {
            errors.push(format!("{at}.{name}"), "must be at most 365 days");
        }
    }
}

fn check_max_connections(errors: &mut Errors, at: &str, value: usize) {
    if value == 0 || value > MAX_CONNECTIONS {
        errors.push(
            format!("{at}.max_connections"),
            format!("must be from 1 to {MAX_CONNECTIONS}"),
        );
    }
}

/// Check the keys of an HTTP listener, and that a TCP listener uses none.
fn check_http(errors: &mut Errors, at: &str, inbound: &InboundConfig) {
    if inbound.protocol == ListenerProtocol::Tcp {
        let http_only: [(&str, bool); 6] = [
            (
                "backend_protocol",
                inbound.backend_protocol != BackendProtocol::Http1,
            ),
            (
                "identity_headers",
                inbound.identity_headers != [IdentityHeaderKind::Xfcc],
            ),
            (
                "spiffe_id_header",
                inbound.spiffe_id_header != "x-spiffe-id",
            ),
            ("client_cert_chain", inbound.client_cert_chain),
            ("route", !inbound.route.is_empty()),
            ("http", inbound.http != HttpLimits::default()),
        ];
        for (key, set) in http_only {
            if set {
                errors.push(
                    format!("{at}.{key}"),
                    "applies only to HTTP listeners; add protocol = \"http\"",
                );
            }
        }
        return;
    }
    if inbound.proxy_protocol.is_some() {
        errors.push(
            format!("{at}.proxy_protocol"),
            "an HTTP listener passes the peer's identity in headers (identity_headers), not in a PROXY header",
        );
    }
    match hyper::header::HeaderName::from_bytes(inbound.spiffe_id_header.as_bytes()) {
        Ok(name) => {
            let reserved = [
                "host",
                "content-length",
                "transfer-encoding",
                "connection",
                "x-forwarded-client-cert",
                "client-cert",
                "client-cert-chain",
                "x-forwarded-for",
                "forwarded",
            ];
            if reserved.contains(&name.as_str()) {
                errors.push(
                    format!("{at}.spiffe_id_header"),
                    format!(
                        "{:?} is a header with another meaning; choose another name",
                        name.as_str()
                    ),
                );
            }
        }
        Err(_) => errors.push(
            format!("{at}.spiffe_id_header"),
            format!("{:?} is not a valid header name", inbound.spiffe_id_header),
        ),
    }
    // Route rules (the listener's own are checked with the TCP rules).
    if let Err(rule_errors) = compile_http_authz(inbound) {
        for (key, reason) in rule_errors {
            if key.starts_with("route[") {
                errors.push(format!("{at}.{key}"), reason);
            }
        }
    }
    let mut seen = Vec::new();
    for kind in &inbound.identity_headers {
        if seen.contains(kind) {
            errors.push(
                format!("{at}.identity_headers"),
                format!("{kind:?} is listed twice"),
            );
        }
        seen.push(*kind);
    }
    for (index, route) in inbound.route.iter().enumerate() {
        let key = format!("{at}.route[{index}]");
        if !route.path.starts_with('/') {
            errors.push(format!("{key}.path"), "must start with '/'");
        } else if let Err(e) = crate::identity::glob::Glob::new(&route.path, Some('/'), false) {
            errors.push(format!("{key}.path"), e.to_string());
        }
        for (m, method) in route.methods.iter().enumerate() {
            let token = !method.is_empty()
                && method
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            if !token {
                errors.push(
                    format!("{key}.methods[{m}]"),
                    format!(
                        "{method:?} is not an HTTP method such as \"GET\" or \"POST\" (upper case)"
                    ),
                );
            }
        }
        if route.allow_any_authenticated && !route.allow.is_empty() {
            errors.push(
                format!("{key}.allow_any_authenticated"),
                "is true, so the route's allow rules would never be consulted; remove one or the other",
            );
        }
    }
    let limits = &inbound.http;
    if !(8 * 1024..=1024 * 1024).contains(&limits.max_header_bytes) {
        errors.push(
            format!("{at}.http.max_header_bytes"),
            "must be from 8192 to 1048576",
        );
    }
    if !(1..=1000).contains(&limits.max_headers) {
        errors.push(format!("{at}.http.max_headers"), "must be from 1 to 1000");
    }
    if !(1..=10_000).contains(&limits.max_concurrent_streams) {
        errors.push(
            format!("{at}.http.max_concurrent_streams"),
            "must be from 1 to 10000",
        );
    }
    if limits.max_pending_reset_streams > 10_000 {
        errors.push(
            format!("{at}.http.max_pending_reset_streams"),
            "must be at most 10000",
        );
    }
    check_timeouts(
        errors,
        &format!("{at}.http"),
        &[
            ("header_read_timeout", limits.header_read_timeout),
            ("backend_timeout", limits.backend_timeout),
        ],
    );
}

/// Largest `admin.peer_table_size`: about a few hundred megabytes at most.
const MAX_PEER_TABLE_SIZE: usize = 1_000_000;

/// Longest lingering close accepted: a refused peer may hold its place
/// under `max_connections` for at most this long.
const MAX_LINGERING_TIME: Duration = Duration::from_secs(60);
/// Most bytes a lingering close may read.
const MAX_LINGERING_BYTES: usize = 16 * 1024 * 1024;

fn check_lingering(errors: &mut Errors, at: &str, time: Duration, bytes: usize) {
    if time > MAX_LINGERING_TIME {
        errors.push(
            format!("{at}.lingering_time"),
            "must be at most 60s (a refused peer holds a connection slot while it lingers)",
        );
    }
    if bytes > MAX_LINGERING_BYTES {
        errors.push(
            format!("{at}.lingering_bytes"),
            format!("must be at most {MAX_LINGERING_BYTES}"),
        );
    }
}

fn check_expect(errors: &mut Errors, key: &str, expect: &AllowRule) {
    if let Err(rule_errors) = compile_rule(expect) {
        for e in rule_errors {
            let reason = if e.field == "(rule)" {
                "names no identity field: say which upstream identity to expect, \
                 e.g. expect = { spiffe_id = \"spiffe://example.org/ns/pay/sa/payments\" }"
                    .to_string()
            } else {
                e.reason
            };
            errors.push(format!("{key}.{}", e.field).replace(".(rule)", ""), reason);
        }
    }
}
