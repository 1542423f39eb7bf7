//! The `/peers` table under a flood of distinct identities: its memory stops
//! growing once it is full. Measured as this process's resident memory (a
//! test binary of its own, so no other test allocates meanwhile).

use std::sync::Arc;

use portcullis::admin::peers::{PeerTable, DEFAULT_SIZE};
use portcullis::identity::{PeerIdentity, SpiffeId};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn peer(i: usize) -> PeerIdentity {
    let id = format!("spiffe://example.org/ns/flood/sa/peer-{i:08}");
    PeerIdentity {
        spiffe_id: SpiffeId::parse(&id).ok(),
        uris: vec![id],
        issuer: "CN=Test Intermediate CA".into(),
        serial: format!("{i:x}"),
        ..PeerIdentity::default()
    }
}

#[test]
fn fifty_thousand_identities_fill_the_default_table_and_no_more() {
    let table = PeerTable::new(DEFAULT_SIZE);
    let listener: Arc<str> = "api".into();
    let before = rss_kib();
    for i in 0..DEFAULT_SIZE {
        table.record(&listener, &peer(i), "deny", i as i64);
    }
    let full = rss_kib();
    for i in DEFAULT_SIZE..50_000 {
        table.record(&listener, &peer(i), "deny", i as i64);
    }
    let at_50k = rss_kib();
    assert_eq!(table.len(), DEFAULT_SIZE);
    assert_eq!(table.evictions(), (50_000 - DEFAULT_SIZE) as u64);
    // Another 50,000 only replace entries: the table's memory has settled.
    for i in 50_000..100_000 {
        table.record(&listener, &peer(i), "deny", i as i64);
    }
    let at_100k = rss_kib();
    assert_eq!(table.len(), DEFAULT_SIZE);
    println!(
        "peer table ({DEFAULT_SIZE} entries): RSS {before} KiB empty, {full} KiB full, \
         {at_50k} KiB after 50,000 distinct peers, {at_100k} KiB after 100,000"
    );
    assert!(
        at_50k - before < 16 * 1024,
        "50,000 peers took {} KiB",
        at_50k - before
    );
    assert!(
        at_100k <= at_50k + 512,
        "memory kept growing while the table was full: {at_50k} -> {at_100k} KiB"
    );
}
