//! Remembers peer certificates whose chain already passed verification, so
//! a peer that reconnects with the same certificate skips the chain's
//! signature checks and the certificate parse.
//!
//! A sidecar's peers reconnect with the same certificate many times between
//! rotations, and verifying the chain is the largest single cost of a full
//! handshake after the key exchange. What may be skipped is exactly what
//! depends only on the bytes presented and the trust material:
//!
//! - an entry is keyed by a SHA-256 of the leaf alone, and holds the
//!   intermediates of the path that verified; it is used only when the peer
//!   presents every one of them again (so the same path can be built). Extra
//!   certificates in the peer's list do not change the key: whoever holds a
//!   copy of a peer's (public) certificate cannot create entries by adding
//!   junk, and at most one entry exists per leaf that really verified;
//! - an entry belongs to one trust generation ([`TlsMaterial::trust_generation`]):
//!   a new trust bundle, a new CRL or a new own certificate starts afresh;
//! - an entry is used only while `now` lies inside the validity period of
//!   the leaf and of every intermediate of its path, as the full check would
//!   require;
//! - only successes are remembered; a failure is verified again next time.
//!
//! What is never skipped: the check that every presented entry is a
//! certificate, the peer's proof of possession of the key
//! (CertificateVerify, checked by rustls on every handshake) and the policy,
//! which the verifier evaluates on every handshake against the remembered
//! identity.
//!
//! The cache holds at most [`CAPACITY`] entries; when full, one entry chosen
//! at random makes room for the new one (counted as an eviction).
//!
//! [`TlsMaterial::trust_generation`]: super::TlsMaterial::trust_generation

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::digest;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::PeerIdentity;

/// Entries kept at most: one per distinct peer certificate that verified,
/// at about a kilobyte each (identity plus the path's intermediates).
pub const CAPACITY: usize = 2048;

/// A certificate whose chain verified, and what was learnt from it.
#[derive(Debug, Clone)]
struct Verified {
    trust_generation: u64,
    /// The latest notBefore and the earliest notAfter of the leaf and the
    /// path's intermediates, seconds since the Unix epoch.
    valid_from: u64,
    valid_until: u64,
    /// The intermediates of the verified path, leaf side first.
    path: Vec<CertificateDer<'static>>,
    identity: Arc<PeerIdentity>,
}

/// Verified chains of one verifier (one listener's policy and direction).
#[derive(Debug, Default)]
pub struct ChainCache {
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

/// The cache key of a presented leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainKey([u8; 32]);

impl ChainKey {
    /// The SHA-256 of the leaf certificate.
    pub fn of_leaf(end_entity: &CertificateDer<'_>) -> Self {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest::digest(&digest::SHA256, end_entity.as_ref()).as_ref());
        ChainKey(key)
    }
}

/// What one handshake did with the cache, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUse {
    /// The chain was found: no chain verification ran.
    pub hit: bool,
    /// Entries dropped to make room.
    pub evicted: usize,
    /// Entries held after this handshake's insert, when it inserted.
    pub entries: Option<usize>,
}

impl ChainCache {
    /// The identity of a leaf verified under `trust_generation`, when the
    /// peer presented every intermediate of the path that verified and
    /// `now` is within that path's validity.
    pub fn get(
        &self,
        key: &ChainKey,
        trust_generation: u64,
        now: UnixTime,
        presented: &[CertificateDer<'_>],
    ) -> Option<Arc<PeerIdentity>> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(&key.0)?;
        let now = now.as_secs();
        let usable = entry.trust_generation == trust_generation
            && entry.valid_from <= now
            && now <= entry.valid_until
            && entry
                .path
                .iter()
                .all(|cert| presented.iter().any(|p| p.as_ref() == cert.as_ref()));
        usable.then(|| entry.identity.clone())
    }

    /// Remember a leaf whose chain just verified under `trust_generation`
    /// through the intermediates `path`. A chain whose validity cannot be
    /// read is not remembered.
    pub fn insert(
        &self,
        key: ChainKey,
        trust_generation: u64,
        end_entity: &CertificateDer<'_>,
        path: Vec<CertificateDer<'static>>,
        identity: Arc<PeerIdentity>,
    ) -> CacheUse {
        let mut used = CacheUse::default();
        let Some((valid_from, valid_until)) = chain_validity(end_entity, &path) else {
            return used;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return used;
        };
        // Entries of older generations can never match again.
        entries.retain(|_, e| e.trust_generation == trust_generation);
        if entries.len() >= CAPACITY && !entries.contains_key(&key.0) {
            // The map's hasher is randomly seeded, so its first key is a
            // random one.
            if let Some(victim) = entries.keys().next().copied() {
                entries.remove(&victim);
                used.evicted = 1;
            }
        }
        entries.insert(
            key.0,
            Verified {
                trust_generation,
                valid_from,
                valid_until,
                path,
                identity,
            },
        );
        used.entries = Some(entries.len());
        used
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

/// The window in which the leaf and every intermediate of its path are valid.
fn chain_validity(
    end_entity: &CertificateDer<'_>,
    path: &[CertificateDer<'_>],
) -> Option<(u64, u64)> {
    let mut from = 0u64;
    let mut until = u64::MAX;
    for der in std::iter::once(end_entity).chain(path) {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let validity = cert.validity();
        from = from.max(u64::try_from(validity.not_before.timestamp()).unwrap_or(0));
        until = until.min(u64::try_from(validity.not_after.timestamp()).ok()?);
    }
    Some((from, until))
}

#[cfg(test)]
mod tests;
