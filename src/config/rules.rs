//! From the config file's allow rules to the policy engine's input.
//!
//! `identity::policy` is the lower layer and knows nothing of the TOML
//! schema; this is the one place a config `AllowRule` becomes an
//! `identity::policy::RuleSpec`, so validation, start-up and reload compile
//! exactly the same rules.

use super::schema::{AllowRule, AuthzMode, InboundConfig, RouteConfig};
use crate::identity::policy::{Policy, Rule, RuleError, RuleSpec};
use crate::identity::{Authorizer, Mode};

impl From<&AllowRule> for RuleSpec {
    fn from(rule: &AllowRule) -> RuleSpec {
        // Destructured without `..` so that a field added to the schema and
        // not here is a compile error, not a silently ignored rule field.
        let AllowRule {
            spiffe_id,
            dns,
            uri,
            ip,
            email,
            cn,
            o,
            ou,
            issuer,
            serial,
            extensions,
        } = rule;
        RuleSpec {
            spiffe_id: spiffe_id.clone(),
            dns: dns.clone(),
            uri: uri.clone(),
            ip: ip.clone(),
            email: email.clone(),
            cn: cn.clone(),
            o: o.clone(),
            ou: ou.clone(),
            issuer: issuer.clone(),
            serial: serial.clone(),
            extensions: extensions.clone(),
        }
    }
}

/// Compile a listener's `allow` list (inbound, or the mTLS admin endpoint).
/// On error, the rule index and field of every bad value.
pub fn compile_policy(
    allow: &[AllowRule],
    allow_any_authenticated: bool,
) -> Result<Policy, Vec<(usize, RuleError)>> {
    let specs: Vec<RuleSpec> = allow.iter().map(RuleSpec::from).collect();
    Policy::compile(&specs, allow_any_authenticated)
}

/// Compile an inbound listener's authorization: its `allow` rules in its
/// `authz_mode`, and its `shadow_allow` rules if it has any. On error, the
/// key of every bad value (`allow[1].ip`, `shadow_allow[0]`).
pub fn compile_authorizer(inbound: &InboundConfig) -> Result<Authorizer, Vec<(String, String)>> {
    let keyed = |list: &str, errors: Vec<(usize, RuleError)>| -> Vec<(String, String)> {
        errors
            .into_iter()
            .map(|(rule, e)| {
                let key = if e.field == "(rule)" {
                    format!("{list}[{rule}]")
                } else {
                    format!("{list}[{rule}].{}", e.field)
                };
                (key, e.reason)
            })
            .collect()
    };
    let enforced = compile_policy(&inbound.allow, inbound.allow_any_authenticated)
        .map_err(|e| keyed("allow", e));
    let shadow = if inbound.shadow_allow.is_empty() {
        Ok(None)
    } else {
        compile_policy(&inbound.shadow_allow, false)
            .map(Some)
            .map_err(|e| keyed("shadow_allow", e))
    };
    let mode = match inbound.authz_mode {
        AuthzMode::Enforce => Mode::Enforce,
        AuthzMode::Audit => Mode::Audit,
    };
    match (enforced, shadow) {
        (Ok(enforced), Ok(shadow)) => Ok(Authorizer::new(enforced, mode, shadow)),
        (enforced, shadow) => Err(enforced
            .err()
            .into_iter()
            .chain(shadow.err())
            .flatten()
            .collect()),
    }
}

/// The authorization of an HTTP listener: the handshake admits a peer that
/// the listener's rules or any route's rules could allow (a peer no request
/// could ever be allowed for is refused with `access_denied`, as on a TCP
/// listener); then each request is decided by its route, or by the
/// listener's rules when no route matches. Routes run in the listener's
/// `authz_mode`.
pub struct HttpAuthz {
    /// What the TLS handshake asks.
    pub handshake: Authorizer,
    /// The listener's own rules, for requests no route matches.
    pub listener: Authorizer,
    /// Each route's rules, in order, with the route.
    pub routes: Vec<(RouteConfig, Authorizer)>,
}

/// Compile an HTTP listener's rules; errors as [`compile_authorizer`]'s.
pub fn compile_http_authz(inbound: &InboundConfig) -> Result<HttpAuthz, Vec<(String, String)>> {
    let listener = compile_authorizer(inbound)?;
    let mode = listener.mode();
    let mut errors = Vec::new();
    let mut routes = Vec::new();
    for (index, route) in inbound.route.iter().enumerate() {
        match compile_policy(&route.allow, route.allow_any_authenticated) {
            Ok(policy) => routes.push((route.clone(), Authorizer::new(policy, mode, None))),
            Err(e) => errors.extend(e.into_iter().map(|(rule, e)| {
                (
                    format!("route[{index}].allow[{rule}].{}", e.field),
                    e.reason,
                )
            })),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut every_rule: Vec<AllowRule> = inbound.allow.clone();
    every_rule.extend(inbound.route.iter().flat_map(|r| r.allow.iter().cloned()));
    let any =
        inbound.allow_any_authenticated || inbound.route.iter().any(|r| r.allow_any_authenticated);
    let union = compile_policy(&every_rule, any).map_err(|e| {
        e.into_iter()
            .map(|(rule, e)| (format!("allow[{rule}].{}", e.field), e.reason))
            .collect::<Vec<_>>()
    })?;
    let shadow = listener.shadow().cloned();
    Ok(HttpAuthz {
        handshake: Authorizer::new(union, mode, shadow),
        listener,
        routes,
    })
}

/// Compile an outbound `expect` rule.
pub fn compile_rule(rule: &AllowRule) -> Result<Rule, Vec<RuleError>> {
    Rule::compile(&RuleSpec::from(rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_carried_over() {
        let mut rule = AllowRule {
            spiffe_id: Some("spiffe://example.org/a".into()),
            dns: Some("a.example.org".into()),
            uri: Some("https://a".into()),
            ip: Some("10.0.0.0/8".into()),
            email: Some("a@example.org".into()),
            cn: Some("a".into()),
            o: Some("O".into()),
            ou: Some("OU".into()),
            issuer: Some("CN=I".into()),
            serial: Some("01".into()),
            ..AllowRule::default()
        };
        rule.extensions.insert("1.2.3".into(), "x".into());
        let spec = RuleSpec::from(&rule);
        assert_eq!(
            spec,
            RuleSpec {
                spiffe_id: rule.spiffe_id.clone(),
                dns: rule.dns.clone(),
                uri: rule.uri.clone(),
                ip: rule.ip.clone(),
                email: rule.email.clone(),
                cn: rule.cn.clone(),
                o: rule.o.clone(),
                ou: rule.ou.clone(),
                issuer: rule.issuer.clone(),
                serial: rule.serial.clone(),
                extensions: rule.extensions.clone(),
            }
        );
    }

    #[test]
    fn errors_keep_the_rule_index() {
        let good = AllowRule {
            dns: Some("a.example.org".into()),
            ..AllowRule::default()
        };
        let bad = AllowRule {
            ip: Some("not-an-ip".into()),
            ..AllowRule::default()
        };
        let errors = compile_policy(&[good.clone(), bad.clone()], false).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 1);
        assert_eq!(errors[0].1.field, "ip");
        assert!(compile_rule(&good).is_ok());
        assert!(compile_rule(&bad).is_err());
    }
}
