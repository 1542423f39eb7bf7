//! Remembers peer certificate chains that already passed verification, so a
//! peer that reconnects with the same chain skips the chain's signature
//! checks and the certificate parse.
//!
//! A sidecar's peers reconnect with the same certificate many times between
//! rotations, and verifying the chain is the largest single cost of a full
//! handshake after the key exchange. What may be skipped is exactly what
//! depends only on the bytes presented and the trust material:
//!
//! - an entry is keyed by a SHA-256 of the leaf and every intermediate the
//!   peer sent, so a different chain (even one extra certificate) misses;
//! - an entry belongs to one trust generation ([`TlsMaterial::trust_generation`]):
//!   a new trust bundle, a new CRL or a new own certificate starts afresh;
//! - an entry is used only while `now` lies inside every presented
//!   certificate's validity period, as the full check would require;
//! - only successes are remembered; a failure is verified again next time.
//!
//! What is never skipped: the peer's proof of possession of the key
//! (CertificateVerify, checked by rustls on every handshake) and the policy,
//! which the verifier evaluates on every handshake against the remembered
//! identity.
//!
//! [`TlsMaterial::trust_generation`]: super::TlsMaterial::trust_generation

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::digest;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::PeerIdentity;

/// Entries kept before the cache starts over. Only chains that verified
/// can be added, so a client cannot fill it with junk; at a few hundred
/// bytes per entry this bounds it to about a megabyte.
pub const CAPACITY: usize = 2048;

/// A chain that verified, and what was learnt from it.
#[derive(Debug, Clone)]
struct Verified {
    trust_generation: u64,
    /// The latest notBefore and the earliest notAfter among the presented
    /// certificates, seconds since the Unix epoch.
    valid_from: u64,
    valid_until: u64,
    identity: Arc<PeerIdentity>,
}

/// Verified chains of one verifier (one listener's policy and direction).
#[derive(Debug, Default)]
pub struct ChainCache {
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

/// The cache key of a presented chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainKey([u8; 32]);

impl ChainKey {
    /// Hash the leaf and intermediates, each length-prefixed so that no two
    /// different chains hash the same input.
    pub fn of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Self {
        let mut context = digest::Context::new(&digest::SHA256);
        for cert in std::iter::once(end_entity).chain(intermediates) {
            context.update(&(cert.len() as u64).to_be_bytes());
            context.update(cert.as_ref());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(context.finish().as_ref());
        ChainKey(key)
    }
}

impl ChainCache {
    /// The identity of a chain verified under `trust_generation` that is
    /// still within its validity period at `now`.
    pub fn get(
        &self,
        key: &ChainKey,
        trust_generation: u64,
        now: UnixTime,
    ) -> Option<Arc<PeerIdentity>> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(&key.0)?;
        let now = now.as_secs();
        (entry.trust_generation == trust_generation
            && entry.valid_from <= now
            && now <= entry.valid_until)
            .then(|| entry.identity.clone())
    }

    /// Remember a chain that just verified under `trust_generation`. A chain
    /// whose validity cannot be read is not remembered.
    pub fn insert(
        &self,
        key: ChainKey,
        trust_generation: u64,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        identity: Arc<PeerIdentity>,
    ) {
        let Some((valid_from, valid_until)) = chain_validity(end_entity, intermediates) else {
            return;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        // Entries of older generations can never match again.
        entries.retain(|_, e| e.trust_generation == trust_generation);
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(
            key.0,
            Verified {
                trust_generation,
                valid_from,
                valid_until,
                identity,
            },
        );
    }

    /// Entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The window in which every presented certificate is valid.
fn chain_validity(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<(u64, u64)> {
    let mut from = 0u64;
    let mut until = u64::MAX;
    for der in std::iter::once(end_entity).chain(intermediates) {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let validity = cert.validity();
        from = from.max(u64::try_from(validity.not_before.timestamp()).unwrap_or(0));
        until = until.min(u64::try_from(validity.not_after.timestamp()).ok()?);
    }
    Some((from, until))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use std::time::Duration;

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
        let key = ChainKey::of(&leaf, &[]);
        assert!(cache.get(&key, 1, at(from + 10)).is_none());
        cache.insert(key, 1, &leaf, &[], identity_of(&leaf));
        assert_eq!(cache.len(), 1);

        let found = cache.get(&key, 1, at(from + 10)).expect("a hit");
        assert_eq!(found.dns, vec!["peer.test".to_string()]);
        // Another trust generation (new bundle, new CRL) misses.
        assert!(cache.get(&key, 2, at(from + 10)).is_none());
        // Outside the validity period misses, on both ends.
        assert!(cache.get(&key, 1, at(until + 1)).is_none());
        assert!(cache.get(&key, 1, at(from - 1)).is_none());
        assert!(cache.get(&key, 1, at(until)).is_some());
    }

    #[test]
    fn the_key_covers_every_presented_certificate() {
        let leaf = cert(1_700_000_000, 1_800_000_000);
        let other = cert(1_700_000_000, 1_800_000_000);
        let alone = ChainKey::of(&leaf, &[]);
        assert_eq!(alone, ChainKey::of(&leaf, &[]));
        assert_ne!(alone, ChainKey::of(&other, &[]));
        assert_ne!(alone, ChainKey::of(&leaf, std::slice::from_ref(&other)));
        // Moving bytes between certificates changes the key (length prefix).
        let joined: Vec<u8> = [leaf.as_ref(), other.as_ref()].concat();
        assert_ne!(
            ChainKey::of(&CertificateDer::from(joined), &[]),
            ChainKey::of(&leaf, std::slice::from_ref(&other))
        );
    }

    #[test]
    fn the_earliest_expiry_in_the_chain_bounds_the_entry() {
        let leaf = cert(1_700_000_000, 1_800_000_000);
        let intermediate = cert(1_700_000_500, 1_750_000_000);
        let cache = ChainCache::default();
        let key = ChainKey::of(&leaf, std::slice::from_ref(&intermediate));
        cache.insert(
            key,
            7,
            &leaf,
            std::slice::from_ref(&intermediate),
            identity_of(&leaf),
        );
        assert!(
            cache.get(&key, 7, at(1_700_000_400)).is_none(),
            "before the intermediate"
        );
        assert!(cache.get(&key, 7, at(1_749_999_999)).is_some());
        assert!(
            cache.get(&key, 7, at(1_750_000_001)).is_none(),
            "after the intermediate"
        );
    }

    #[test]
    fn stays_bounded_and_drops_old_generations() {
        let leaf = cert(1_700_000_000, 1_800_000_000);
        let identity = identity_of(&leaf);
        let cache = ChainCache::default();
        for i in 0..(CAPACITY + 10) {
            let fake = CertificateDer::from(format!("chain {i}").into_bytes());
            // Distinct keys; validity read from the real leaf as intermediate.
            cache.insert(ChainKey::of(&fake, &[]), 1, &leaf, &[], identity.clone());
        }
        assert!(cache.len() <= CAPACITY);
        cache.insert(ChainKey::of(&leaf, &[]), 2, &leaf, &[], identity);
        assert_eq!(cache.len(), 1, "entries of generation 1 are gone");
    }

    #[test]
    fn an_unreadable_chain_is_not_remembered() {
        let leaf = cert(1_700_000_000, 1_800_000_000);
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01]);
        let cache = ChainCache::default();
        cache.insert(
            ChainKey::of(&garbage, &[]),
            1,
            &garbage,
            &[],
            identity_of(&leaf),
        );
        assert!(cache.is_empty());
    }
}
