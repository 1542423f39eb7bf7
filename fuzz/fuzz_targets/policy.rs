//! Authorization policy: a few allow rules (every field an arbitrary string)
//! and a peer identity, compiled then evaluated; plus `Glob` on arbitrary
//! pattern/value pairs.
//!
//! Properties checked, beyond "never panics":
//! - a decision names the first rule that admits the peer, and every rule
//!   before it really refuses the peer; a denial means every rule refuses;
//! - `allow_any_authenticated` admits everyone;
//! - a glob compiles exactly when it is non-empty and has no `***`;
//! - a glob without wildcards matches exactly itself (ASCII case aside for
//!   DNS-like fields) and nothing else;
//! - `p*` matches `p` followed by anything non-empty, and `*p` (with a
//!   separator) matches `v p` exactly when `v` is one non-empty segment.
#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis::identity::glob::Glob;
use portcullis::identity::peer::hex;
use portcullis::identity::policy::{Policy, Rule, RuleSpec};
use portcullis::identity::{Decision, PeerIdentity, SpiffeId};

/// An extension OID: mostly ones the peer may carry, sometimes anything.
#[derive(Arbitrary, Debug, Clone)]
enum Oid {
    Role,
    Team,
    Other(String),
}

impl Oid {
    fn text(&self) -> String {
        match self {
            Oid::Role => "1.3.6.1.4.1.99999.1".into(),
            Oid::Team => "1.3.6.1.4.1.99999.2".into(),
            Oid::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzRule {
    spiffe_id: Option<String>,
    dns: Option<String>,
    uri: Option<String>,
    ip: Option<String>,
    email: Option<String>,
    cn: Option<String>,
    o: Option<String>,
    ou: Option<String>,
    issuer: Option<String>,
    serial: Option<String>,
    extensions: Vec<(Oid, String)>,
}

impl FuzzRule {
    fn to_rule(&self) -> RuleSpec {
        RuleSpec {
            spiffe_id: self.spiffe_id.clone(),
            dns: self.dns.clone(),
            uri: self.uri.clone(),
            ip: self.ip.clone(),
            email: self.email.clone(),
            cn: self.cn.clone(),
            o: self.o.clone(),
            ou: self.ou.clone(),
            issuer: self.issuer.clone(),
            serial: self.serial.clone(),
            extensions: self
                .extensions
                .iter()
                .map(|(oid, value)| (oid.text(), value.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzPeer {
    spiffe_id: Option<String>,
    dns: Vec<String>,
    uris: Vec<String>,
    ips: Vec<IpAddr>,
    emails: Vec<String>,
    cn: Option<String>,
    o: Vec<String>,
    ou: Vec<String>,
    issuer: String,
    serial: Vec<u8>,
    extensions: Vec<(Oid, Vec<String>)>,
}

impl FuzzPeer {
    fn to_peer(&self) -> PeerIdentity {
        let mut extensions: Vec<(String, Vec<String>)> = Vec::new();
        for (oid, values) in &self.extensions {
            if !values.is_empty() && !extensions.iter().any(|(o, _)| *o == oid.text()) {
                extensions.push((oid.text(), values.clone()));
            }
        }
        PeerIdentity {
            spiffe_id: self
                .spiffe_id
                .as_deref()
                .and_then(|s| SpiffeId::parse(s).ok()),
            dns: self.dns.clone(),
            uris: self.uris.clone(),
            ips: self.ips.clone(),
            emails: self.emails.clone(),
            cn: self.cn.clone(),
            o: self.o.clone(),
            ou: self.ou.clone(),
            issuer: self.issuer.clone(),
            serial: hex(&self.serial),
            not_after: 0,
            extensions,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Separator {
    None,
    Dot,
    Slash,
    At,
    Other(char),
}

impl Separator {
    fn get(self) -> Option<char> {
        match self {
            Separator::None => None,
            Separator::Dot => Some('.'),
            Separator::Slash => Some('/'),
            Separator::At => Some('@'),
            Separator::Other(c) => Some(c),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct GlobCase {
    pattern: String,
    value: String,
    separator: Separator,
    case_insensitive: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<FuzzRule>,
    allow_any_authenticated: bool,
    peer: FuzzPeer,
    globs: Vec<GlobCase>,
}

fuzz_target!(|input: Input| {
    check_policy(&input);
    for case in input.globs.iter().take(8) {
        check_glob(case);
    }
});

fn check_policy(input: &Input) {
    let rules: Vec<RuleSpec> = input.rules.iter().take(6).map(FuzzRule::to_rule).collect();
    let peer = input.peer.to_peer();
    let policy = match Policy::compile(&rules, input.allow_any_authenticated) {
        Ok(policy) => policy,
        Err(errors) => {
            assert!(!errors.is_empty());
            for (index, error) in &errors {
                assert!(*index < rules.len());
                assert!(Rule::compile(&rules[*index]).is_err(), "{error}");
                let _ = error.to_string();
            }
            return;
        }
    };
    let oids = policy.extension_oids();
    assert!(
        oids.windows(2).all(|w| w[0] < w[1]),
        "not sorted/deduped: {oids:?}"
    );
    assert_eq!(
        policy.denies_everyone(),
        rules.is_empty() && !input.allow_any_authenticated
    );
    let compiled: Vec<Rule> = rules
        .iter()
        .map(|r| Rule::compile(r).expect("compiled in the policy, so compiles alone"))
        .collect();
    let decision = policy.evaluate(&peer);
    let _ = peer.display_name();
    match decision {
        Decision::Allow { rule: None } => assert!(input.allow_any_authenticated),
        Decision::Allow { rule: Some(i) } => {
            assert!(!input.allow_any_authenticated);
            assert!(i < compiled.len());
            assert!(compiled[i].check(&peer).is_ok());
            for earlier in &compiled[..i] {
                assert!(earlier.check(&peer).is_err());
            }
        }
        Decision::Deny { reason } => {
            assert!(!input.allow_any_authenticated);
            assert!(!reason.is_empty());
            for rule in &compiled {
                assert!(rule.check(&peer).is_err());
            }
        }
    }
}

fn check_glob(case: &GlobCase) {
    let GlobCase {
        pattern,
        value,
        separator,
        case_insensitive: ci,
    } = case;
    let sep = separator.get();
    let glob = Glob::new(pattern, sep, *ci);
    let valid = !pattern.is_empty() && !pattern.contains("***");
    assert_eq!(glob.is_ok(), valid, "{pattern:?}: {glob:?}");
    let Ok(glob) = glob else { return };
    assert_eq!(glob.as_str(), pattern);
    let _ = glob.matches(value);
    let literal = !pattern.contains('*');
    assert_eq!(glob.is_literal(), literal, "{pattern:?}");
    if !literal {
        return;
    }
    // No wildcard: matches exactly itself.
    let equal = |a: &str, b: &str| {
        if *ci {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    assert!(glob.matches(pattern), "{pattern:?} does not match itself");
    assert_eq!(
        glob.matches(value),
        equal(pattern, value),
        "literal {pattern:?} vs {value:?} (ci={ci})"
    );
    let longer = format!("{pattern}{value}");
    assert_eq!(
        glob.matches(&longer),
        value.is_empty(),
        "{pattern:?} vs {longer:?}"
    );

    // `p*`: p followed by anything non-empty (any separator included).
    let star = format!("{pattern}*");
    let trailing = Glob::new(&star, sep, *ci).expect("p* compiles");
    assert_eq!(
        trailing.matches(&longer),
        !value.is_empty() || sep.is_none(),
        "{star:?} vs {longer:?} (sep={sep:?})"
    );
    assert!(!trailing.matches(""), "{star:?} matches the empty value");

    // `*p` with a separator: one non-empty segment, then p.
    if let Some(s) = sep {
        let leading_src = format!("*{pattern}");
        let leading = Glob::new(&leading_src, sep, *ci).expect("*p compiles");
        let candidate = format!("{value}{pattern}");
        let lowered = if *ci {
            value.to_ascii_lowercase()
        } else {
            value.clone()
        };
        let expected = !value.is_empty() && !lowered.contains(s);
        assert_eq!(
            leading.matches(&candidate),
            expected,
            "{leading_src:?} vs {candidate:?} (sep={s:?}, ci={ci})"
        );
    }
}
