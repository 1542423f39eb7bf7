//! The peer table behind `GET /peers`: per listener, the identities of the
//! peers whose chain verified since start, how often and when they were
//! seen, and the last decision on them. `portcullis authz suggest` reads it
//! to write allow rules that admit exactly what was seen.
//!
//! The table is bounded (`admin.peer_table_size`): when full, the least
//! recently seen peer makes room, and the eviction is counted, so a flood
//! of distinct identities costs a bounded amount of memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::identity::PeerIdentity;

/// The default `admin.peer_table_size`.
pub const DEFAULT_SIZE: usize = 10_000;

/// How a peer is named in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// By its SPIFFE ID.
    SpiffeId,
    /// By its subject (CN, O, OU) and issuer; a certificate with no subject
    /// fields is named by its first DNS SAN, else by its serial.
    Subject,
}

impl IdentityKind {
    /// The JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::SpiffeId => "spiffe_id",
            IdentityKind::Subject => "subject",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeerKey {
    listener: Arc<str>,
    identity: String,
}

#[derive(Debug, Clone)]
struct PeerEntry {
    kind: IdentityKind,
    /// The rule fields that name this peer exactly, e.g. `[("cn", "web")]`.
    fields: Vec<(&'static str, String)>,
    issuer: String,
    count: u64,
    first_seen: i64,
    last_seen: i64,
    last_decision: &'static str,
    /// Position in the recency order.
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<PeerKey, PeerEntry>,
    /// Recency order: sequence number to key, oldest first.
    order: BTreeMap<u64, PeerKey>,
    next_seq: u64,
    evictions: u64,
}

/// The bounded table of peers seen, shared by every listener.
#[derive(Debug)]
pub struct PeerTable {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// What [`PeerTable::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// A least recently seen peer was dropped to make room.
    pub evicted: bool,
    /// Peers held now.
    pub entries: usize,
}

impl PeerTable {
    /// A table holding at most `capacity` peers (0: record nothing).
    pub fn new(capacity: usize) -> Self {
        PeerTable {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Remember that `peer` was seen on `listener` at `now` (Unix seconds)
    /// and decided `decision`.
    pub fn record(
        &self,
        listener: &Arc<str>,
        peer: &PeerIdentity,
        decision: &'static str,
        now: i64,
    ) -> Recorded {
        let Ok(mut inner) = self.inner.lock() else {
            return Recorded {
                evicted: false,
                entries: 0,
            };
        };
        if self.capacity == 0 {
            return Recorded {
                evicted: false,
                entries: 0,
            };
        }
        let (kind, identity, fields) = name_of(peer);
        let key = PeerKey {
            listener: listener.clone(),
            identity,
        };
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let mut evicted = false;
        if let Some(entry) = inner.entries.get_mut(&key) {
            let old_seq = entry.seq;
            entry.seq = seq;
            entry.count += 1;
            entry.last_seen = now;
            entry.last_decision = decision;
            inner.order.remove(&old_seq);
        } else {
            if inner.entries.len() >= self.capacity {
                if let Some((_, oldest)) = inner.order.pop_first() {
                    inner.entries.remove(&oldest);
                    inner.evictions += 1;
                    evicted = true;
                }
            }
            inner.entries.insert(
                key.clone(),
                PeerEntry {
                    kind,
                    fields,
                    issuer: peer.issuer.clone(),
                    count: 1,
                    first_seen: now,
                    last_seen: now,
                    last_decision: decision,
                    seq,
                },
            );
        }
        inner.order.insert(seq, key);
        Recorded {
            evicted,
            entries: inner.entries.len(),
        }
    }

    /// Peers held now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }

    /// True when no peer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Peers dropped to make room since start.
    pub fn evictions(&self) -> u64 {
        self.inner.lock().map(|i| i.evictions).unwrap_or(0)
    }

    /// The table as served on `GET /peers`: every listener's peers, sorted
    /// by identity.
    pub fn to_json(&self) -> Value {
        let Ok(inner) = self.inner.lock() else {
            return json!({"error": "peer table unavailable"});
        };
        let mut listeners: BTreeMap<&str, Vec<(&PeerKey, &PeerEntry)>> = BTreeMap::new();
        for (key, entry) in &inner.entries {
            listeners
                .entry(&key.listener)
                .or_default()
                .push((key, entry));
        }
        let listeners: serde_json::Map<String, Value> = listeners
            .into_iter()
            .map(|(listener, mut peers)| {
                peers.sort_by(|a, b| a.0.identity.cmp(&b.0.identity));
                let rows = peers
                    .into_iter()
                    .map(|(key, entry)| {
                        let fields: serde_json::Map<String, Value> = entry
                            .fields
                            .iter()
                            .map(|(name, value)| (name.to_string(), Value::from(value.as_str())))
                            .collect();
                        json!({
                            "identity": key.identity,
                            "kind": entry.kind.as_str(),
                            "fields": fields,
                            "issuer": entry.issuer,
                            "count": entry.count,
                            "first_seen": rfc3339(entry.first_seen),
                            "last_seen": rfc3339(entry.last_seen),
                            "last_decision": entry.last_decision,
                        })
                    })
                    .collect::<Vec<_>>();
                (listener.to_string(), Value::Array(rows))
            })
            .collect();
        json!({
            "size": self.capacity,
            "entries": inner.entries.len(),
            "evictions": inner.evictions,
            "listeners": listeners,
        })
    }
}

/// The table's name for `peer` and the rule fields that name it exactly.
fn name_of(peer: &PeerIdentity) -> (IdentityKind, String, Vec<(&'static str, String)>) {
    if let Some(id) = &peer.spiffe_id {
        return (
            IdentityKind::SpiffeId,
            id.to_string(),
            vec![("spiffe_id", id.to_string())],
        );
    }
    let mut fields = Vec::new();
    if let Some(cn) = &peer.cn {
        fields.push(("cn", cn.clone()));
    }
    if let Some(o) = peer.o.first() {
        fields.push(("o", o.clone()));
    }
    if let Some(ou) = peer.ou.first() {
        fields.push(("ou", ou.clone()));
    }
    if fields.is_empty() {
        match peer.dns.first() {
            Some(dns) => fields.push(("dns", dns.clone())),
            None => fields.push(("serial", peer.serial.clone())),
        }
    }
    let name = fields
        .iter()
        .map(|(field, value)| format!("{}={value}", field.to_ascii_uppercase()))
        .collect::<Vec<_>>()
        .join(", ");
    (IdentityKind::Subject, name, fields)
}

fn rfc3339(unix: i64) -> String {
    let secs = u64::try_from(unix).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

#[cfg(test)]
mod tests;
