//! Unit tests of the peer table.

use super::*;
use crate::identity::SpiffeId;

fn spiffe(path: &str) -> PeerIdentity {
    PeerIdentity {
        spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{path}")).ok(),
        issuer: "CN=Test Intermediate CA".into(),
        ..PeerIdentity::default()
    }
}

#[test]
fn counts_and_remembers_first_and_last_sight_per_listener() {
    let table = PeerTable::new(10);
    let (api, web): (Arc<str>, Arc<str>) = ("api".into(), "web".into());
    table.record(&api, &spiffe("a"), "allow", 100);
    table.record(&api, &spiffe("a"), "would_deny", 160);
    table.record(&web, &spiffe("a"), "allow", 170);
    assert_eq!(table.len(), 2);
    let json = table.to_json();
    let row = &json["listeners"]["api"][0];
    assert_eq!(row["identity"], "spiffe://example.org/a");
    assert_eq!(row["kind"], "spiffe_id");
    assert_eq!(row["fields"]["spiffe_id"], "spiffe://example.org/a");
    assert_eq!(row["count"], 2);
    assert_eq!(row["first_seen"], "1970-01-01T00:01:40Z");
    assert_eq!(row["last_seen"], "1970-01-01T00:02:40Z");
    assert_eq!(row["last_decision"], "would_deny");
    assert_eq!(json["listeners"]["web"][0]["count"], 1);
}

#[test]
fn evicts_the_least_recently_seen_and_counts_it() {
    let table = PeerTable::new(3);
    let api: Arc<str> = "api".into();
    for (i, who) in ["a", "b", "c"].iter().enumerate() {
        table.record(&api, &spiffe(who), "allow", i as i64);
    }
    // "a" is seen again, so "b" is now the least recently seen.
    table.record(&api, &spiffe("a"), "allow", 10);
    let done = table.record(&api, &spiffe("d"), "allow", 11);
    assert_eq!(
        done,
        Recorded {
            evicted: true,
            entries: 3
        }
    );
    let names: Vec<String> = table.to_json()["listeners"]["api"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["identity"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "spiffe://example.org/a",
            "spiffe://example.org/c",
            "spiffe://example.org/d"
        ]
    );
    assert_eq!(table.evictions(), 1);
}

#[test]
fn stays_within_its_size_under_a_flood_of_distinct_identities() {
    let table = PeerTable::new(1000);
    let api: Arc<str> = "api".into();
    for i in 0..50_000 {
        table.record(&api, &spiffe(&format!("flood/{i}")), "deny", i);
    }
    assert_eq!(table.len(), 1000);
    assert_eq!(table.evictions(), 49_000);
    let inner = table.inner.lock().unwrap();
    assert_eq!(inner.order.len(), 1000, "the recency index is bounded too");
}

#[test]
fn names_subject_peers_by_their_subject_fields() {
    let table = PeerTable::new(10);
    let api: Arc<str> = "api".into();
    let subject = PeerIdentity {
        cn: Some("batch".into()),
        o: vec!["Example".into()],
        issuer: "CN=Other CA".into(),
        ..PeerIdentity::default()
    };
    let dns_only = PeerIdentity {
        dns: vec!["db.example.org".into()],
        ..PeerIdentity::default()
    };
    table.record(&api, &subject, "deny", 1);
    table.record(&api, &dns_only, "deny", 1);
    let json = table.to_json();
    let rows = json["listeners"]["api"].as_array().unwrap();
    assert_eq!(rows[0]["identity"], "CN=batch, O=Example");
    assert_eq!(rows[0]["kind"], "subject");
    assert_eq!(rows[0]["fields"]["cn"], "batch");
    assert_eq!(rows[0]["issuer"], "CN=Other CA");
    assert_eq!(rows[1]["identity"], "DNS=db.example.org");
}

#[test]
fn a_zero_size_table_records_nothing() {
    let table = PeerTable::new(0);
    table.record(&"api".into(), &spiffe("a"), "allow", 1);
    assert!(table.is_empty());
}
