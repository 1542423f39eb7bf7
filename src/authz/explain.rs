//! `portcullis authz explain`: what a listener would decide for a
//! certificate, rule by rule.
//!
//! The verdict comes from the listener's own verifier
//! ([`InboundVerifier::judge`]) built from the config exactly as `run`
//! builds it: the same chain check against the trust bundle and CRLs, the
//! same identity extraction, the same [`Authorizer`]. Only the per-rule
//! listing is extra, and it runs the same rule checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};

use super::AuthzError;
use crate::identity::authz::RuleOutcome;
use crate::identity::{Authorizer, PeerIdentity, Verdict};
use crate::proxy::inbound::InboundSettings;
use crate::tls::{tls_failure_reason, InboundVerifier};

/// What `authz explain` was asked.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    /// The proxy's config file.
    pub config: PathBuf,
    /// The inbound listener; may be omitted when there is only one.
    pub listener: Option<String>,
    /// The time to verify at, RFC 3339; now when absent.
    pub at: Option<String>,
    /// PEM file with the peer's chain, leaf first.
    pub cert: PathBuf,
    /// For an HTTP listener: the request path to decide by route.
    pub path: Option<String>,
    /// For an HTTP listener: the request method (default GET).
    pub method: Option<String>,
}

/// The outcome of `authz explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    listener: String,
    /// For an HTTP listener: the route that decided (`default`: the
    /// listener's own rules), and whether the handshake admits the peer.
    route: Option<(String, bool)>,
    at: UnixTime,
    presented: usize,
    chain: Result<(), (String, String)>,
    identity: Option<PeerIdentity>,
    authz: Arc<Authorizer>,
    verdict: Option<Verdict>,
    rules: Vec<RuleOutcome>,
    shadow_rules: Option<Vec<RuleOutcome>>,
}

impl Explanation {
    /// True when the listener's rules allow the peer: the exit status is 0
    /// exactly then. A peer denied in audit mode (`would_deny`) is admitted
    /// by the proxy but is not allowed by the rules.
    pub fn allowed(&self) -> bool {
        self.verdict
            .as_ref()
            .is_some_and(|v| v.enforced.is_allowed())
    }

    /// The decision label: `allow`, `deny`, `would_deny`, or `refused`
    /// when the chain itself is refused.
    pub fn decision(&self) -> &'static str {
        match &self.verdict {
            Some(verdict) => verdict.label(),
            None => "refused",
        }
    }
}

/// Verify `request.cert` as the named listener would and explain the verdict.
pub fn explain(request: &ExplainRequest) -> Result<Explanation, AuthzError> {
    let at = parse_at(request.at.as_deref())?;
    let chain = read_chain(&request.cert)?;
    let config = crate::config::load(&request.config).map_err(AuthzError::Config)?;
    let prepared = crate::runtime::prepare(config, &request.config).map_err(AuthzError::Config)?;
    let inbound: Vec<Arc<InboundSettings>> = prepared
        .listeners
        .inbound
        .iter()
        .map(|listener| listener.settings.clone())
        .collect();
    let settings = pick_listener(&inbound, request.listener.as_deref())?;
    let handshake_authz = settings.authz.clone();
    let verifier = InboundVerifier::new(prepared.store.clone(), handshake_authz.clone());
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| AuthzError::Input(format!("{}: no certificate", request.cert.display())))?;
    let judged = verifier.judge(leaf, intermediates, at);
    // An HTTP listener decides each request by route; its handshake only
    // asks whether any rule could allow the peer.
    let (authz, route_label) = match (&settings.http, &request.path) {
        (Some(http), path) => {
            let method = request.method.as_deref().unwrap_or("GET");
            let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|_| {
                AuthzError::Input(format!("--method {method:?} is not an HTTP method"))
            })?;
            let path = path.as_deref().unwrap_or("/");
            if !path.starts_with('/') {
                return Err(AuthzError::Input(format!(
                    "--path {path:?} must start with '/'"
                )));
            }
            let (label, authz) = http.routes.decide(&method, path);
            (Arc::new(authz.clone()), Some(label.to_string()))
        }
        (None, Some(_)) => {
            return Err(AuthzError::Input(format!(
                "listener {:?} is a TCP listener: --path and --method apply to protocol = \"http\"",
                &*settings.name
            )))
        }
        (None, None) => (handshake_authz.clone(), None),
    };
    let (chain_result, identity, verdict, admitted) = match judged {
        Ok((identity, handshake)) => {
            let verdict = authz.authorize(&identity);
            (
                Ok(()),
                Some((*identity).clone()),
                Some(verdict),
                handshake.admitted(),
            )
        }
        Err(refusal) => {
            // The proxy reads no identity from a refused chain; the fields
            // are shown for the reader, marked as unverified.
            let unverified = PeerIdentity::from_der(leaf, authz.extension_oids()).ok();
            let label = tls_failure_reason(&refusal.error).to_string();
            (Err((label, refusal.detail)), unverified, None, false)
        }
    };
    // Rules are consulted only for a chain that verified, as in the proxy.
    let (rules, shadow_rules) = match (&identity, &verdict) {
        (Some(identity), Some(_)) => authz.explain(identity),
        _ => (Vec::new(), None),
    };
    Ok(Explanation {
        listener: settings.name.to_string(),
        route: route_label.map(|label| (label, admitted)),
        at,
        presented: chain.len(),
        chain: chain_result,
        identity,
        authz,
        verdict,
        rules,
        shadow_rules,
    })
}

fn parse_at(at: Option<&str>) -> Result<UnixTime, AuthzError> {
    let Some(text) = at else {
        return Ok(UnixTime::now());
    };
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            AuthzError::Input(format!(
                "--at {text:?} is not an RFC 3339 time such as 2026-12-02T15:00:00Z ({e})"
            ))
        })?;
    let secs = u64::try_from(parsed.unix_timestamp())
        .map_err(|_| AuthzError::Input(format!("--at {text:?} is before 1970")))?;
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        secs,
    )))
}

/// The certificates of a PEM file, leaf first; a file with none (a key, a
/// CSR, garbage) is an error that says what it holds instead.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, AuthzError> {
    let bytes = std::fs::read(path)
        .map_err(|e| AuthzError::Input(format!("{}: cannot read: {e}", path.display())))?;
    let mut certs = Vec::new();
    let mut other = Vec::new();
    for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
        match item {
            Ok(rustls_pemfile::Item::X509Certificate(cert)) => certs.push(cert),
            Ok(rustls_pemfile::Item::Pkcs1Key(_))
            | Ok(rustls_pemfile::Item::Pkcs8Key(_))
            | Ok(rustls_pemfile::Item::Sec1Key(_)) => other.push("a private key"),
            Ok(rustls_pemfile::Item::Crl(_)) => other.push("a CRL"),
            Ok(rustls_pemfile::Item::Csr(_)) => other.push("a certificate request"),
            Ok(_) => other.push("an unsupported PEM block"),
            Err(e) => {
                return Err(AuthzError::Input(format!(
                    "{}: not valid PEM: {e:?}",
                    path.display()
                )))
            }
        }
    }
    if certs.is_empty() {
        let found = if other.is_empty() {
            "no PEM block at all".to_string()
        } else {
            other.join(", ")
        };
        return Err(AuthzError::Input(format!(
            "{}: no CERTIFICATE block (found {found}); pass the peer's certificate chain, leaf first",
            path.display()
        )));
    }
    Ok(certs)
}

fn pick_listener<'a>(
    inbound: &'a [Arc<InboundSettings>],
    name: Option<&str>,
) -> Result<&'a InboundSettings, AuthzError> {
    let names: Vec<&str> = inbound.iter().map(|s| &*s.name).collect();
    match name {
        Some(name) => inbound
            .iter()
            .find(|s| &*s.name == name)
            .map(|s| &**s)
            .ok_or_else(|| {
                AuthzError::Input(format!(
                    "no inbound listener {name:?}; the config has: {}",
                    list(&names)
                ))
            }),
        None => match inbound {
            [only] => Ok(only),
            [] => Err(AuthzError::Input(
                "the config has no [[inbound]] listener to explain".into(),
            )),
            _ => Err(AuthzError::Input(format!(
                "the config has several inbound listeners ({}); name one with --listener",
                list(&names)
            ))),
        },
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn rfc3339(at: UnixTime) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(at.as_secs()),
    )
    .to_string()
}

fn identity_json(identity: &PeerIdentity) -> Value {
    json!({
        "spiffe_id": identity.spiffe_id.as_ref().map(|s| s.as_str()),
        "dns": identity.dns,
        "uri": identity.uris,
        "ip": identity.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "email": identity.emails,
        "cn": identity.cn,
        "o": identity.o,
        "ou": identity.ou,
        "issuer": identity.issuer,
        "serial": identity.serial,
        "not_after": identity.not_after,
        "extensions": identity.extensions.iter().map(|(oid, values)| json!({"oid": oid, "values": values})).collect::<Vec<_>>(),
    })
}

fn rules_json(rules: &[RuleOutcome]) -> Value {
    Value::Array(
        rules
            .iter()
            .map(|r| {
                json!({
                    "index": r.index,
                    "matched": r.result.is_ok(),
                    "failed": r.result.as_ref().err(),
                })
            })
            .collect(),
    )
}

impl Explanation {
    /// The explanation as JSON, for scripts.
    pub fn to_json(&self) -> Value {
        json!({
            "listener": self.listener,
            "route": self.route.as_ref().map(|(label, _)| label),
            "handshake_admits": self.route.as_ref().map(|(_, admits)| admits),
            "at": rfc3339(self.at),
            "mode": self.authz.mode().as_str(),
            "certificates_presented": self.presented,
            "chain": match &self.chain {
                Ok(()) => json!({"verified": true}),
                Err((alert, detail)) => json!({"verified": false, "result": alert, "reason": detail}),
            },
            "identity": self.identity.as_ref().map(identity_json),
            "identity_verified": self.chain.is_ok(),
            "allow_any_authenticated": self.authz.enforced().allows_any_authenticated(),
            "rules": rules_json(&self.rules),
            "shadow_rules": self.shadow_rules.as_deref().map(rules_json),
            "decision": self.decision(),
            "rule": self.verdict.as_ref().and_then(|v| match v.enforced {
                crate::identity::Decision::Allow { rule } => rule,
                crate::identity::Decision::Deny { .. } => None,
            }),
            "shadow_decision": self.verdict.as_ref().and_then(|v| v.shadow_label()),
            "allowed": self.allowed(),
        })
    }

    /// The explanation for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mode = self.authz.mode();
        out.push_str(&format!(
            "listener {} ({mode} mode), verified at {}\n",
            self.listener,
            rfc3339(self.at)
        ));
        match &self.chain {
            Ok(()) => out.push_str(&format!(
                "chain: verified against the trust bundle and CRLs ({} certificate(s) presented)\n",
                self.presented
            )),
            Err((alert, detail)) => out.push_str(&format!("chain: REFUSED ({alert}): {detail}\n")),
        }
        if let Some(identity) = &self.identity {
            let heading = if self.chain.is_ok() {
                "identity:"
            } else {
                "identity (read from the leaf, NOT verified):"
            };
            out.push_str(heading);
            out.push('\n');
            let field = |name: &str, values: Vec<String>| {
                let shown = if values.is_empty() {
                    "-".to_string()
                } else {
                    values.join(", ")
                };
                format!("  {name:<10} {shown}\n")
            };
            out.push_str(&field(
                "spiffe_id",
                identity.spiffe_id.iter().map(|s| s.to_string()).collect(),
            ));
            out.push_str(&field("dns", identity.dns.clone()));
            out.push_str(&field("uri", identity.uris.clone()));
            out.push_str(&field(
                "ip",
                identity.ips.iter().map(|i| i.to_string()).collect(),
            ));
            out.push_str(&field("email", identity.emails.clone()));
            out.push_str(&field("cn", identity.cn.iter().cloned().collect()));
            out.push_str(&field("o", identity.o.clone()));
            out.push_str(&field("ou", identity.ou.clone()));
            out.push_str(&field("issuer", vec![identity.issuer.clone()]));
            out.push_str(&field("serial", vec![identity.serial.clone()]));
            for (oid, values) in &identity.extensions {
                out.push_str(&field(oid, values.clone()));
            }
        }
        if let (Some((route, admits)), true) = (&self.route, self.chain.is_ok()) {
            let whose = if route == crate::http::routes::DEFAULT_ROUTE {
                "no route matches: the listener's own rules decide".to_string()
            } else {
                format!("route {route} decides")
            };
            out.push_str(&format!(
                "HTTP: {whose}; the handshake {} this peer\n",
                if *admits {
                    "admits"
                } else {
                    "refuses (no rule could allow)"
                }
            ));
        }
        if self.chain.is_ok() {
            if self.authz.enforced().allows_any_authenticated() {
                out.push_str("rules: allow_any_authenticated = true (every verified peer)\n");
            } else if self.rules.is_empty() {
                out.push_str("rules: none (deny by default)\n");
            } else {
                let list = match &self.route {
                    Some((route, _)) if route != crate::http::routes::DEFAULT_ROUTE => {
                        "route.allow"
                    }
                    _ => "allow",
                };
                out.push_str("rules:\n");
                out.push_str(&rules_text(list, &self.rules));
            }
            if let Some(shadow) = &self.shadow_rules {
                out.push_str("shadow rules (reported, never enforced):\n");
                out.push_str(&rules_text("shadow_allow", shadow));
            }
        }
        let verdict = match (&self.verdict, self.decision()) {
            (Some(v), "allow") => match v.enforced {
                crate::identity::Decision::Allow { rule: Some(rule) } => {
                    format!("allow (allow[{rule}])")
                }
                _ => "allow (allow_any_authenticated)".to_string(),
            },
            (_, "would_deny") => {
                "would_deny: the rules deny this peer; in audit mode the proxy admits it"
                    .to_string()
            }
            (_, "deny") if self.route.is_some() => {
                "deny: the proxy answers this request 403 forbidden".to_string()
            }
            (_, "deny") => "deny: the proxy refuses this peer with access_denied".to_string(),
            (_, other) => format!("{other}: the proxy refuses this chain before any rule"),
        };
        out.push_str(&format!("verdict: {verdict}\n"));
        if let Some(shadow) = self.verdict.as_ref().and_then(|v| v.shadow_label()) {
            out.push_str(&format!("shadow verdict: {shadow}\n"));
        }
        out
    }
}

fn rules_text(list: &str, rules: &[RuleOutcome]) -> String {
    rules
        .iter()
        .map(|r| match &r.result {
            Ok(()) => format!("  {list}[{}]  match\n", r.index),
            Err(why) => format!("  {list}[{}]  no match: {why}\n", r.index),
        })
        .collect()
}
