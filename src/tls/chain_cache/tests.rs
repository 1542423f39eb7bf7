//! Unit tests of the verified-chain cache.

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};

use super::*;

/// A self-signed certificate valid from `from` to `until` (Unix seconds).
fn cert(from: u64, until: u64) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(vec!["peer.test".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from as i64).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(until as i64).unwrap();
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

fn at(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

fn identity_of(der: &CertificateDer<'_>) -> Arc<PeerIdentity> {
    Arc::new(PeerIdentity::from_der(der, &[]).unwrap())
}

#[test]
fn a_verified_chain_is_found_only_under_its_generation_and_validity() {
    let (from, until) = (1_700_000_000, 1_700_086_400);
    let leaf = cert(from, until);
    let cache = ChainCache::default();
    let key = ChainKey::of_leaf(&leaf);
    assert!(cache.get(&key, 1, at(from + 10), &[]).is_none());
    let used = cache.insert(key, 1, &leaf, vec![], identity_of(&leaf));
    assert_eq!(used.entries, Some(1));
    assert_eq!(cache.len(), 1);

    let found = cache.get(&key, 1, at(from + 10), &[]).expect("a hit");
    assert_eq!(found.dns, vec!["peer.test".to_string()]);
    // Another trust generation (new bundle, new CRL) misses.
    assert!(cache.get(&key, 2, at(from + 10), &[]).is_none());
    // Outside the validity period misses, on both ends.
    assert!(cache.get(&key, 1, at(until + 1), &[]).is_none());
    assert!(cache.get(&key, 1, at(from - 1), &[]).is_none());
    assert!(cache.get(&key, 1, at(until), &[]).is_some());
}

#[test]
fn the_key_is_the_leaf_alone() {
    let leaf = cert(1_700_000_000, 1_800_000_000);
    let other = cert(1_700_000_000, 1_800_000_000);
    assert_eq!(ChainKey::of_leaf(&leaf), ChainKey::of_leaf(&leaf));
    assert_ne!(ChainKey::of_leaf(&leaf), ChainKey::of_leaf(&other));
}

#[test]
fn a_hit_needs_every_intermediate_of_the_verified_path() {
    let leaf = cert(1_700_000_000, 1_800_000_000);
    let intermediate = cert(1_700_000_000, 1_800_000_000);
    let unrelated = cert(1_700_000_000, 1_800_000_000);
    let cache = ChainCache::default();
    let key = ChainKey::of_leaf(&leaf);
    cache.insert(
        key,
        1,
        &leaf,
        vec![intermediate.clone()],
        identity_of(&leaf),
    );
    let now = at(1_750_000_000);
    assert!(cache
        .get(&key, 1, now, std::slice::from_ref(&intermediate))
        .is_some());
    // Extra certificates around the path do not matter...
    assert!(cache
        .get(&key, 1, now, &[unrelated.clone(), intermediate.clone()])
        .is_some());
    // ...but without the path's intermediate the chain must be verified again.
    assert!(cache.get(&key, 1, now, &[]).is_none());
    assert!(cache
        .get(&key, 1, now, std::slice::from_ref(&unrelated))
        .is_none());
}

#[test]
fn the_earliest_expiry_in_the_path_bounds_the_entry() {
    let leaf = cert(1_700_000_000, 1_800_000_000);
    let intermediate = cert(1_700_000_500, 1_750_000_000);
    let cache = ChainCache::default();
    let key = ChainKey::of_leaf(&leaf);
    let presented = std::slice::from_ref(&intermediate);
    cache.insert(
        key,
        7,
        &leaf,
        vec![intermediate.clone()],
        identity_of(&leaf),
    );
    assert!(
        cache.get(&key, 7, at(1_700_000_400), presented).is_none(),
        "before the intermediate"
    );
    assert!(cache.get(&key, 7, at(1_749_999_999), presented).is_some());
    assert!(
        cache.get(&key, 7, at(1_750_000_001), presented).is_none(),
        "after the intermediate"
    );
}

#[test]
fn stays_bounded_evicting_one_entry_at_a_time() {
    let leaf = cert(1_700_000_000, 1_800_000_000);
    let identity = identity_of(&leaf);
    let cache = ChainCache::default();
    let mut evicted = 0;
    for i in 0..(CAPACITY + 10) {
        // Distinct keys; validity read from the real leaf.
        let key = ChainKey::of_leaf(&CertificateDer::from(format!("leaf {i}").into_bytes()));
        evicted += cache
            .insert(key, 1, &leaf, vec![], identity.clone())
            .evicted;
    }
    assert_eq!(cache.len(), CAPACITY);
    assert_eq!(evicted, 10);
    // The same key again replaces its entry: nothing evicted.
    let key = ChainKey::of_leaf(&CertificateDer::from(b"leaf 0".to_vec()));
    let again = cache.insert(key, 1, &leaf, vec![], identity.clone());
    assert_eq!((again.evicted, again.entries), (0, Some(CAPACITY)));
    // A new generation drops every entry of the old one.
    cache.insert(ChainKey::of_leaf(&leaf), 2, &leaf, vec![], identity);
    assert_eq!(cache.len(), 1, "entries of generation 1 are gone");
}

#[test]
fn an_unreadable_chain_is_not_remembered() {
    let leaf = cert(1_700_000_000, 1_800_000_000);
    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01]);
    let cache = ChainCache::default();
    let used = cache.insert(
        ChainKey::of_leaf(&garbage),
        1,
        &garbage,
        vec![],
        identity_of(&leaf),
    );
    assert_eq!(used, CacheUse::default());
    assert!(cache.is_empty());
}
