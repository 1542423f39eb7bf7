//! Unit tests of the authorizer: modes, shadow rules, labels, explain.

use super::*;
use crate::identity::policy::RuleSpec;
use crate::identity::SpiffeId;

fn peer(path: &str) -> PeerIdentity {
    PeerIdentity {
        spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{path}")).ok(),
        uris: vec![format!("spiffe://example.org/{path}")],
        ..PeerIdentity::default()
    }
}

fn policy(ids: &[&str]) -> Policy {
    let specs: Vec<RuleSpec> = ids
        .iter()
        .map(|id| RuleSpec {
            spiffe_id: Some(format!("spiffe://example.org/{id}")),
            ..RuleSpec::default()
        })
        .collect();
    Policy::compile(&specs, false).unwrap()
}

#[test]
fn enforce_refuses_and_audit_admits_a_denied_peer_with_the_same_reason() {
    let enforce = Authorizer::new(policy(&["web"]), Mode::Enforce, None);
    let audit = Authorizer::new(policy(&["web"]), Mode::Audit, None);
    let intruder = peer("intruder");

    let refused = enforce.authorize(&intruder);
    assert!(!refused.admitted());
    assert_eq!(refused.label(), "deny");
    let audited = audit.authorize(&intruder);
    assert!(audited.admitted());
    assert_eq!(audited.label(), "would_deny");
    assert_eq!(refused.deny_reason(), audited.deny_reason());
    assert!(audited.deny_reason().unwrap().contains("rule 0: spiffe_id"));

    for authz in [&enforce, &audit] {
        let allowed = authz.authorize(&peer("web"));
        assert!(allowed.admitted());
        assert_eq!(allowed.label(), "allow");
        assert_eq!(allowed.deny_reason(), None);
    }
}

#[test]
fn shadow_rules_never_change_the_outcome_and_report_disagreement() {
    // Enforced admits web and api; the shadow set would admit web and batch.
    let authz = Authorizer::new(
        policy(&["web", "api"]),
        Mode::Enforce,
        Some(policy(&["web", "batch"])),
    );
    let cases = [
        ("web", "allow", "allow", None),
        ("api", "allow", "deny", Some(("allow", "deny"))),
        ("batch", "deny", "allow", Some(("deny", "allow"))),
        ("other", "deny", "deny", None),
    ];
    for (who, enforced, shadow, disagreement) in cases {
        let verdict = authz.authorize(&peer(who));
        assert_eq!(verdict.label(), enforced, "{who}");
        assert_eq!(verdict.admitted(), enforced == "allow", "{who}");
        assert_eq!(verdict.shadow_label(), Some(shadow), "{who}");
        assert_eq!(verdict.disagreement(), disagreement, "{who}");
    }
    // In audit mode the enforced label of a disagreement is would_deny.
    let audit = Authorizer::new(policy(&["web"]), Mode::Audit, Some(policy(&["batch"])));
    assert_eq!(
        audit.authorize(&peer("batch")).disagreement(),
        Some(("would_deny", "allow"))
    );
    // Without shadow rules there is nothing to compare.
    let plain = Authorizer::enforcing(policy(&["web"]));
    assert_eq!(plain.authorize(&peer("api")).shadow_label(), None);
    assert_eq!(plain.authorize(&peer("api")).disagreement(), None);
}

#[test]
fn explain_lists_every_rule_with_the_first_failing_field() {
    let spec = |id: &str, dns: &str| RuleSpec {
        spiffe_id: Some(format!("spiffe://example.org/{id}")),
        dns: Some(dns.to_string()),
        ..RuleSpec::default()
    };
    let enforced =
        Policy::compile(&[spec("other", "x.test"), spec("web", "x.test")], false).unwrap();
    let authz = Authorizer::new(enforced, Mode::Enforce, Some(policy(&["web"])));
    let (rules, shadow) = authz.explain(&peer("web"));
    assert_eq!(rules.len(), 2);
    assert!(rules[0]
        .result
        .as_ref()
        .unwrap_err()
        .starts_with("spiffe_id"));
    // The SPIFFE ID matches, so the first failing field is dns.
    assert!(rules[1].result.as_ref().unwrap_err().starts_with("dns"));
    let shadow = shadow.unwrap();
    assert_eq!(shadow.len(), 1);
    assert_eq!(shadow[0].result, Ok(()));
}

#[test]
fn extension_oids_cover_enforced_and_shadow_rules() {
    let with_oid = |oid: &str| {
        let mut spec = RuleSpec::default();
        spec.extensions.insert(oid.to_string(), "x".to_string());
        Policy::compile(&[spec], false).unwrap()
    };
    let authz = Authorizer::new(with_oid("1.2.3"), Mode::Audit, Some(with_oid("1.2.4")));
    assert_eq!(authz.extension_oids(), ["1.2.3", "1.2.4"]);
}
