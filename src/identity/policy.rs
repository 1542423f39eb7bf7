//! Authorization policy: deny by default, a list of allow rules.
//!
//! A rule matches when every field it names matches (AND); a peer is allowed
//! when any rule matches (OR). `allow_any_authenticated` admits every peer
//! whose chain verified and must be written explicitly. A denial carries the
//! reason for each rule, so the log line says exactly what failed.
//!
//! The engine takes its rules as [`RuleSpec`], its own input type, not the
//! config schema's `AllowRule`: identity is the lower layer, and the same
//! engine serves the handshake, HTTP routes, shadow rules and `authz
//! explain`, which do not all start from a config file. `config` converts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::glob::Glob;
use super::peer::PeerIdentity;
use super::spiffe::SpiffeId;

/// One allow rule before compilation: the identity fields a peer must match,
/// as the operator wrote them. Every field named must match (AND); an absent
/// field is not checked.
///
/// Values are exact strings or simple globs (see docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSpec {
    /// The peer's SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Any DNS SAN.
    pub dns: Option<String>,
    /// Any URI SAN.
    pub uri: Option<String>,
    /// Any IP SAN: an address or a CIDR block.
    pub ip: Option<String>,
    /// Any email SAN.
    pub email: Option<String>,
    /// Subject common name.
    pub cn: Option<String>,
    /// Any subject organization.
    pub o: Option<String>,
    /// Any subject organizational unit.
    pub ou: Option<String>,
    /// Issuer distinguished name, as `cert inspect` prints it.
    pub issuer: Option<String>,
    /// Serial number in hex; `:` separators and leading zeros are ignored.
    pub serial: Option<String>,
    /// Custom extensions: dotted OID to expected value.
    pub extensions: BTreeMap<String, String>,
}

/// The compiled allow rules of one listener (or one outbound expectation).
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    allow_any_authenticated: bool,
    extension_oids: Vec<String>,
}

/// One compiled allow rule.
#[derive(Debug, Clone)]
pub struct Rule {
    matchers: Vec<FieldMatcher>,
}

#[derive(Debug, Clone)]
enum FieldMatcher {
    SpiffeId(Glob),
    Dns(Glob),
    Uri(Glob),
    Ip(IpPattern),
    Email(Glob),
    Cn(Glob),
    O(Glob),
    Ou(Glob),
    Issuer(Glob),
    Serial(String),
    Extension { oid: String, value: Glob },
}

/// An IP address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPattern {
    network: IpAddr,
    prefix: u8,
}

/// The outcome of evaluating a policy for a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted by the rule at this index, or by `allow_any_authenticated` (None).
    Allow {
        /// Index of the first matching rule.
        rule: Option<usize>,
    },
    /// No rule matched.
    Deny {
        /// Why each rule failed, e.g. `rule 0: spiffe_id "spiffe://a/x" does not match "spiffe://a/y"`.
        reason: String,
    },
}

impl Decision {
    /// True for `Allow`.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// A field of an allow rule that does not compile; `field` is the key name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The key within the rule, e.g. `spiffe_id` or `extensions."1.2.3"`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl Policy {
    /// Compile a listener's rules. On error, returns the rule index and field
    /// of every bad value.
    pub fn compile(
        rules: &[RuleSpec],
        allow_any_authenticated: bool,
    ) -> Result<Policy, Vec<(usize, RuleError)>> {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut errors = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            match Rule::compile(rule) {
                Ok(rule) => compiled.push(rule),
                Err(errs) => errors.extend(errs.into_iter().map(|e| (index, e))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut extension_oids: Vec<String> = rules
            .iter()
            .flat_map(|r| r.extensions.keys().cloned())
            .collect();
        extension_oids.sort();
        extension_oids.dedup();
        Ok(Policy {
            rules: compiled,
            allow_any_authenticated,
            extension_oids,
        })
    }

    /// The custom extension OIDs that identity extraction must read.
    pub fn extension_oids(&self) -> &[String] {
        &self.extension_oids
    }

    /// The compiled rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True when every peer whose chain verifies is admitted.
    pub fn allows_any_authenticated(&self) -> bool {
        self.allow_any_authenticated
    }

    /// True when no peer can ever be admitted (no rules, no allow-any).
    pub fn denies_everyone(&self) -> bool {
        self.rules.is_empty() && !self.allow_any_authenticated
    }

    /// Decide whether `peer` is admitted.
    pub fn evaluate(&self, peer: &PeerIdentity) -> Decision {
        if self.allow_any_authenticated {
            return Decision::Allow { rule: None };
        }
        if self.rules.is_empty() {
            return Decision::Deny {
                reason: "no allow rules configured (deny by default)".into(),
            };
        }
        let mut reasons = Vec::with_capacity(self.rules.len());
        for (index, rule) in self.rules.iter().enumerate() {
            match rule.check(peer) {
                Ok(()) => return Decision::Allow { rule: Some(index) },
                Err(why) => reasons.push(format!("rule {index}: {why}")),
            }
        }
        Decision::Deny {
            reason: reasons.join("; "),
        }
    }
}

impl Rule {
    /// Compile one rule; every field is checked so all errors are reported.
    pub fn compile(rule: &RuleSpec) -> Result<Rule, Vec<RuleError>> {
        let mut matchers = Vec::new();
        let mut errors = Vec::new();
        let mut glob = |field: &str, value: &Option<String>, sep: Option<char>, ci: bool| {
            compile_glob(&mut errors, field, value.as_deref()?, sep, ci)
        };
        if let Some(g) = glob("spiffe_id", &rule.spiffe_id, Some('/'), false) {
            matchers.push(FieldMatcher::SpiffeId(g));
        }
        if let Some(g) = glob("dns", &rule.dns, Some('.'), true) {
            matchers.push(FieldMatcher::Dns(g));
        }
        if let Some(g) = glob("uri", &rule.uri, Some('/'), false) {
            matchers.push(FieldMatcher::Uri(g));
        }
        if let Some(g) = glob("email", &rule.email, Some('@'), false) {
            matchers.push(FieldMatcher::Email(g));
        }
        if let Some(g) = glob("cn", &rule.cn, None, false) {
            matchers.push(FieldMatcher::Cn(g));
        }
        if let Some(g) = glob("o", &rule.o, None, false) {
            matchers.push(FieldMatcher::O(g));
        }
        if let Some(g) = glob("ou", &rule.ou, None, false) {
            matchers.push(FieldMatcher::Ou(g));
        }
        if let Some(g) = glob("issuer", &rule.issuer, None, false) {
            matchers.push(FieldMatcher::Issuer(g));
        }
        for (oid, value) in &rule.extensions {
            let field = format!("extensions.\"{oid}\"");
            if !is_dotted_oid(oid) {
                errors.push(RuleError {
                    field,
                    reason: format!("{oid:?} is not a dotted OID such as \"1.3.6.1.4.1.99999.1\""),
                });
                continue;
            }
            if let Some(g) = compile_glob(&mut errors, &field, value, None, false) {
                matchers.push(FieldMatcher::Extension {
                    oid: oid.clone(),
                    value: g,
                });
            }
        }
        if let Some(spiffe) = &rule.spiffe_id {
            if let Err(reason) = check_spiffe_pattern(spiffe) {
                errors.push(RuleError {
                    field: "spiffe_id".into(),
                    reason,
                });
            }
        }
        if let Some(ip) = &rule.ip {
            match IpPattern::parse(ip) {
                Ok(p) => matchers.push(FieldMatcher::Ip(p)),
                Err(reason) => errors.push(RuleError {
                    field: "ip".into(),
                    reason,
                }),
            }
        }
        if let Some(serial) = &rule.serial {
            let normalised: String = serial
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if normalised.is_empty() || !normalised.chars().all(|c| c.is_ascii_hexdigit()) {
                errors.push(RuleError {
                    field: "serial".into(),
                    reason: format!("{serial:?} is not a hex serial number"),
                });
            } else {
                matchers.push(FieldMatcher::Serial(
                    normalised.trim_start_matches('0').to_string(),
                ));
            }
        }
        if errors.is_empty() && matchers.is_empty() {
            errors.push(RuleError {
                field: "(rule)".into(),
                reason: "the rule names no field, so it would match every peer; \
                         write allow_any_authenticated = true if that is meant"
                    .into(),
            });
        }
        if errors.is_empty() {
            Ok(Rule { matchers })
        } else {
            Err(errors)
        }
    }

    /// Ok when every field matches, else the first mismatch.
    pub fn check(&self, peer: &PeerIdentity) -> Result<(), String> {
        for matcher in &self.matchers {
            matcher.check(peer)?;
        }
        Ok(())
    }
}

impl FieldMatcher {
    fn check(&self, peer: &PeerIdentity) -> Result<(), String> {
        fn any<'a>(
            name: &str,
            glob: &Glob,
            mut values: impl Iterator<Item = &'a str>,
            all: &[String],
        ) -> Result<(), String> {
            if values.any(|v| glob.matches(v)) {
                Ok(())
            } else if all.is_empty() {
                Err(format!("{name}: peer has none, wanted {:?}", glob.as_str()))
            } else {
                Err(format!("{name} {all:?} does not match {:?}", glob.as_str()))
            }
        }
        match self {
            FieldMatcher::SpiffeId(g) => match &peer.spiffe_id {
                Some(id) if g.matches(id.as_str()) => Ok(()),
                Some(id) => Err(format!(
                    "spiffe_id {:?} does not match {:?}",
                    id.as_str(),
                    g.as_str()
                )),
                None => Err(format!(
                    "spiffe_id: peer has no SPIFFE ID (needs exactly one spiffe:// URI SAN), wanted {:?}",
                    g.as_str()
                )),
            },
            FieldMatcher::Dns(g) => any("dns", g, peer.dns.iter().map(String::as_str), &peer.dns),
            FieldMatcher::Uri(g) => any("uri", g, peer.uris.iter().map(String::as_str), &peer.uris),
            FieldMatcher::Email(g) => {
                any("email", g, peer.emails.iter().map(String::as_str), &peer.emails)
            }
            FieldMatcher::O(g) => any("o", g, peer.o.iter().map(String::as_str), &peer.o),
            FieldMatcher::Ou(g) => any("ou", g, peer.ou.iter().map(String::as_str), &peer.ou),
            FieldMatcher::Cn(g) => {
                let all: Vec<String> = peer.cn.iter().cloned().collect();
                any("cn", g, peer.cn.as_deref().into_iter(), &all)
            }
            FieldMatcher::Issuer(g) => {
                if g.matches(&peer.issuer) {
                    Ok(())
                } else {
                    Err(format!(
                        "issuer {:?} does not match {:?}",
                        peer.issuer,
                        g.as_str()
                    ))
                }
            }
            FieldMatcher::Serial(want) => {
                if peer.serial.trim_start_matches('0') == want {
                    Ok(())
                } else {
                    Err(format!("serial {} is not {want}", peer.serial))
                }
            }
            FieldMatcher::Ip(p) => {
                if peer.ips.iter().any(|ip| p.contains(*ip)) {
                    Ok(())
                } else {
                    Err(format!("ip {:?} not in {p}", peer.ips))
                }
            }
            FieldMatcher::Extension { oid, value } => {
                let values = peer.extension(oid);
                any(
                    &format!("extension {oid}"),
                    value,
                    values.iter().map(String::as_str),
                    values,
                )
            }
        }
    }
}

fn compile_glob(
    errors: &mut Vec<RuleError>,
    field: &str,
    value: &str,
    separator: Option<char>,
    case_insensitive: bool,
) -> Option<Glob> {
    match Glob::new(value, separator, case_insensitive) {
        Ok(g) => Some(g),
        Err(e) => {
            errors.push(RuleError {
                field: field.into(),
                reason: format!("{value:?}: {e}"),
            });
            None
        }
    }
}

/// A SPIFFE pattern must name a fixed scheme and trust domain; only the path
/// may have wildcards, so a glob can never widen trust to another domain.
fn check_spiffe_pattern(pattern: &str) -> Result<(), String> {
    let Some(rest) = pattern.strip_prefix("spiffe://") else {
        return Err(format!("{pattern:?} does not start with \"spiffe://\""));
    };
    let trust_domain = rest.split('/').next().unwrap_or_default();
    if trust_domain.contains('*') {
        return Err(format!(
            "{pattern:?}: the trust domain may not contain a wildcard"
        ));
    }
    if pattern.contains('*') {
        // Validate the literal parts by substituting a legal segment.
        let probe = pattern.replace("**", "x").replace('*', "x");
        SpiffeId::parse(&probe).map_err(|e| format!("{pattern:?}: {e}"))?;
    } else {
        SpiffeId::parse(pattern).map_err(|e| format!("{pattern:?}: {e}"))?;
    }
    Ok(())
}

fn is_dotted_oid(oid: &str) -> bool {
    let parts: Vec<&str> = oid.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.chars().all(|c| c.is_ascii_digit()))
}

impl IpPattern {
    /// Parse `10.0.0.1`, `10.0.0.0/8`, `::1` or `fd00::/8`.
    pub fn parse(text: &str) -> Result<IpPattern, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: prefix length must be 0..={max}")),
            },
        };
        Ok(IpPattern { network, prefix })
    }

    /// Is `ip` inside this block? IPv4 never matches an IPv6 block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerIdentity {
        PeerIdentity {
            spiffe_id: SpiffeId::parse("spiffe://example.org/ns/web/sa/frontend").ok(),
            dns: vec!["web.ops.example.org".into()],
            uris: vec!["spiffe://example.org/ns/web/sa/frontend".into()],
            ips: vec!["10.1.2.3".parse().unwrap()],
            emails: vec!["dev@example.org".into()],
            cn: Some("frontend".into()),
            o: vec!["Example".into()],
            ou: vec!["sre".into(), "web".into()],
            issuer: "CN=Example Intermediate".into(),
            serial: "00ab12".into(),
            not_after: 0,
            extensions: vec![("1.2.3.4".into(), vec!["admin".into()])],
        }
    }

    fn rule(f: impl FnOnce(&mut RuleSpec)) -> RuleSpec {
        let mut r = RuleSpec::default();
        f(&mut r);
        r
    }

    #[test]
    fn deny_by_default() {
        let p = Policy::compile(&[], false).unwrap();
        assert!(p.denies_everyone());
        assert!(!p.evaluate(&peer()).is_allowed());
        let any = Policy::compile(&[], true).unwrap();
        assert_eq!(any.evaluate(&peer()), Decision::Allow { rule: None });
    }

    #[test]
    fn and_within_or_across() {
        let rules = vec![
            rule(|r| {
                r.dns = Some("*.ops.example.org".into());
                r.ou = Some("finance".into());
            }),
            rule(|r| {
                r.dns = Some("*.ops.example.org".into());
                r.ou = Some("sre".into());
            }),
        ];
        let p = Policy::compile(&rules, false).unwrap();
        assert_eq!(p.evaluate(&peer()), Decision::Allow { rule: Some(1) });
        let only_first = Policy::compile(&rules[..1], false).unwrap();
        match only_first.evaluate(&peer()) {
            Decision::Deny { reason } => {
                assert!(reason.contains("rule 0: ou"), "{reason}");
                assert!(reason.contains("finance"), "{reason}");
            }
            other => panic!("expected deny, got {other:?}"),
        }
    }

    #[test]
    fn every_field_matches() {
        let rules = [
            rule(|r| r.spiffe_id = Some("spiffe://example.org/ns/web/*".into())),
            rule(|r| r.uri = Some("spiffe://example.org/ns/*/sa/frontend".into())),
            rule(|r| r.ip = Some("10.0.0.0/8".into())),
            rule(|r| r.email = Some("*@example.org".into())),
            rule(|r| r.cn = Some("front*".into())),
            rule(|r| r.o = Some("Example".into())),
            rule(|r| r.issuer = Some("CN=Example *".into())),
            rule(|r| r.serial = Some("AB:12".into())),
            rule(|r| {
                r.extensions.insert("1.2.3.4".into(), "admin".into());
            }),
        ];
        for r in rules {
            let p = Policy::compile(std::slice::from_ref(&r), false).unwrap();
            assert!(p.evaluate(&peer()).is_allowed(), "{r:?}");
        }
    }

    #[test]
    fn mismatches_deny_with_reason() {
        let cases = [
            (
                rule(|r| r.spiffe_id = Some("spiffe://example.org/ns/pay/*".into())),
                "spiffe_id",
            ),
            (
                rule(|r| r.spiffe_id = Some("spiffe://other.org/ns/web/sa/frontend".into())),
                "spiffe_id",
            ),
            (rule(|r| r.ip = Some("192.168.0.0/16".into())), "ip"),
            (rule(|r| r.dns = Some("*.example.org".into())), "dns"),
            (rule(|r| r.serial = Some("ff".into())), "serial"),
            (
                rule(|r| {
                    r.extensions.insert("1.2.3.4".into(), "root".into());
                }),
                "extension 1.2.3.4",
            ),
        ];
        for (r, field) in cases {
            let p = Policy::compile(std::slice::from_ref(&r), false).unwrap();
            match p.evaluate(&peer()) {
                Decision::Deny { reason } => assert!(reason.contains(field), "{reason}"),
                other => panic!("{r:?}: expected deny, got {other:?}"),
            }
        }
    }

    #[test]
    fn peer_without_spiffe_id_is_denied_by_spiffe_rule() {
        let mut p = peer();
        p.spiffe_id = None;
        let policy = Policy::compile(
            &[rule(|r| {
                r.spiffe_id = Some("spiffe://example.org/ns/web/*".into())
            })],
            false,
        )
        .unwrap();
        assert!(!policy.evaluate(&p).is_allowed());
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = [
            rule(|_| {}),
            rule(|r| r.spiffe_id = Some("spiffe://*.org/a".into())),
            rule(|r| r.spiffe_id = Some("http://example.org/a".into())),
            rule(|r| r.spiffe_id = Some("spiffe://example.org/a//b".into())),
            rule(|r| r.dns = Some("".into())),
            rule(|r| r.dns = Some("a***".into())),
            rule(|r| r.ip = Some("10.0.0.0/33".into())),
            rule(|r| r.ip = Some("not-an-ip".into())),
            rule(|r| r.serial = Some("xyz".into())),
            rule(|r| {
                r.extensions.insert("role".into(), "admin".into());
            }),
        ];
        for r in bad {
            assert!(
                Policy::compile(std::slice::from_ref(&r), false).is_err(),
                "{r:?}"
            );
        }
    }

    #[test]
    fn ip_patterns() {
        let p = IpPattern::parse("10.0.0.0/8").unwrap();
        assert!(p.contains("10.255.0.1".parse().unwrap()));
        assert!(!p.contains("11.0.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let all = IpPattern::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6 = IpPattern::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(IpPattern::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
    }
}
