//! Unit tests of the rule suggestions.

use serde_json::json;

use super::*;

fn peers_json() -> Value {
    json!({
        "size": 100, "entries": 4, "evictions": 0,
        "listeners": {
            "api": [
                {"identity": "CN=batch, O=Example", "kind": "subject",
                 "fields": {"o": "Example", "cn": "batch"}, "issuer": "CN=Test CA",
                 "count": 2, "first_seen": "t0", "last_seen": "t1", "last_decision": "deny"},
                {"identity": "spiffe://example.org/ns/web/sa/a", "kind": "spiffe_id",
                 "fields": {"spiffe_id": "spiffe://example.org/ns/web/sa/a"}, "issuer": "CN=Test CA",
                 "count": 1, "first_seen": "t0", "last_seen": "t1", "last_decision": "would_deny"},
                {"identity": "spiffe://example.org/ns/web/sa/b", "kind": "spiffe_id",
                 "fields": {"spiffe_id": "spiffe://example.org/ns/web/sa/b"}, "issuer": "CN=Test CA",
                 "count": 5, "first_seen": "t0", "last_seen": "t1", "last_decision": "allow"}
            ],
            "admin": [
                {"identity": "spiffe://example.org/ops", "kind": "spiffe_id",
                 "fields": {"spiffe_id": "spiffe://example.org/ops"}, "issuer": "CN=Test CA",
                 "count": 1, "first_seen": "t0", "last_seen": "t1", "last_decision": "allow"}
            ]
        }
    })
}

fn parsed_rules(toml_text: &str) -> Vec<toml::Table> {
    let value: toml::Table = toml::from_str(toml_text).expect("the suggestion is valid TOML");
    value["inbound"]["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_table().unwrap().clone())
        .collect()
}

#[test]
fn one_exact_rule_per_identity_with_the_issuer_for_subjects() {
    let observed = from_peers(&peers_json()).unwrap();
    let text = render("test", &observed, false);
    let only_api: ByListener = observed.into_iter().filter(|(l, _)| l == "api").collect();
    let rules = parsed_rules(&render("test", &only_api, false));
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0]["cn"].as_str(), Some("batch"));
    assert_eq!(rules[0]["o"].as_str(), Some("Example"));
    assert_eq!(rules[0]["issuer"].as_str(), Some("CN=Test CA"));
    assert_eq!(
        rules[1]["spiffe_id"].as_str(),
        Some("spiffe://example.org/ns/web/sa/a")
    );
    assert!(rules[1].get("issuer").is_none());
    assert!(text.contains(
        "# spiffe://example.org/ns/web/sa/b: seen 5 times, last t1, last decision allow"
    ));
    assert!(text.contains("# ---- listener \"admin\": 1 identity observed"));
}

#[test]
fn generalize_folds_siblings_into_one_glob_and_says_what_it_covers() {
    let observed: ByListener = from_peers(&peers_json())
        .unwrap()
        .into_iter()
        .filter(|(l, _)| l == "api")
        .collect();
    let text = render("test", &observed, true);
    let rules = parsed_rules(&text);
    assert_eq!(rules.len(), 2, "{text}");
    assert_eq!(
        rules[0]["spiffe_id"].as_str(),
        Some("spiffe://example.org/ns/web/sa/*")
    );
    assert!(text.contains("# covers 2 observed identities"));
    assert!(text.contains("#   spiffe://example.org/ns/web/sa/a"));
    assert!(text.contains("#   spiffe://example.org/ns/web/sa/b"));
    // A lone ID directly under the trust domain is never folded into a
    // domain-wide glob.
    let admin: ByListener = from_peers(&peers_json())
        .unwrap()
        .into_iter()
        .filter(|(l, _)| l == "admin")
        .collect();
    let rules = parsed_rules(&render("test", &admin, true));
    assert_eq!(
        rules[0]["spiffe_id"].as_str(),
        Some("spiffe://example.org/ops")
    );
}

#[test]
fn garbage_is_a_one_line_error() {
    for garbage in [
        json!({}),
        json!({"listeners": []}),
        json!({"listeners": {"api": [{}]}}),
    ] {
        let error = from_peers(&garbage).unwrap_err().to_string();
        assert!(error.starts_with("not the JSON of GET /peers"), "{error}");
        assert!(!error.contains('\n'));
    }
}

#[test]
fn log_identities_become_rules_and_values_with_stars_are_skipped() {
    assert_eq!(
        fields_of_log_identity("spiffe://example.org/a"),
        Some(vec![("spiffe_id".into(), "spiffe://example.org/a".into())])
    );
    assert_eq!(
        fields_of_log_identity("CN=web"),
        Some(vec![("cn".into(), "web".into())])
    );
    assert_eq!(fields_of_log_identity("nonsense"), None);
    let mut observed = ByListener::new();
    observed.insert(
        "api".into(),
        vec![Observed {
            identity: "CN=we*rd".into(),
            fields: vec![("cn".into(), "we*rd".into())],
            issuer: None,
            count: Some(1),
            last_seen: None,
            last_decision: None,
        }],
    );
    let text = render("log", &observed, false);
    assert!(text.contains("# skipped CN=we*rd"), "{text}");
    assert!(!text.contains("[[inbound.allow]]"));
}
