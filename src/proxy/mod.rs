//! The data path: accept loops, inbound mTLS termination, outbound mTLS
//! origination, the byte pipe and the PROXY protocol header.

pub mod inbound;
pub mod listener;
pub mod outbound;
pub mod pipe;
pub mod pooled;
pub mod proxy_protocol;
pub mod verdicts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::admin::peers::PeerTable;
use crate::admin::Metrics;
use crate::identity::{Authorizer, PeerIdentity};
use crate::tls::linger::{close_failed_handshake, LingerGate, LingerLimits};
use crate::tls::HandshakeRecord;

/// Which way a listener carries traffic; used as the `direction` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// mTLS in, plaintext to the local backend.
    Inbound,
    /// Plaintext in on loopback, mTLS to the upstream.
    Outbound,
}

impl Direction {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What every connection of one listener needs besides the listener's settings.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// Where counters go.
    pub metrics: Metrics,
    /// Cancelled when this listener's live connections must close now
    /// (shutdown drain deadline passed, listener removed and drained).
    pub force_close: CancellationToken,
    /// The listener's live authorized connections, for reauthorization.
    pub live: Arc<LiveConnections>,
    /// The listener's lingering closes, ended when the listener is full.
    pub linger: Arc<LingerGate>,
    /// When each peer's shadow disagreement was last logged.
    pub disagreements: Arc<verdicts::DisagreementLog>,
    /// The peers seen (`GET /peers`).
    pub peers: Arc<PeerTable>,
}

impl ConnectionContext {
    /// Count what the handshake did with the verified-chain cache.
    pub fn count_chain_cache(&self, name: &str, direction: Direction, record: &HandshakeRecord) {
        let Some(used) = record.chain_cache else {
            return;
        };
        let labels = [name, direction.as_str()];
        let result = if used.hit { "hit" } else { "miss" };
        self.metrics
            .chain_cache_lookups
            .with_label_values(&[name, direction.as_str(), result])
            .inc();
        if used.evicted > 0 {
            self.metrics
                .chain_cache_evictions
                .with_label_values(&labels)
                .inc_by(used.evicted as u64);
        }
        if let Some(entries) = used.entries {
            self.metrics
                .chain_cache_entries
                .with_label_values(&labels)
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
        }
    }

    /// Close the socket of a handshake that failed with `error`; when we
    /// sent a fatal TLS alert, linger so the peer can read it (see
    /// [`crate::tls::linger`]) and count how the lingering close ended.
    pub async fn close_refused<S>(
        &self,
        error: &std::io::Error,
        socket: S,
        limits: LingerLimits,
        name: &str,
        direction: Direction,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if let Some(end) = close_failed_handshake(error, socket, limits, &self.linger).await {
            self.metrics
                .lingering_closes
                .with_label_values(&[name, direction.as_str(), end.as_str()])
                .inc();
        }
    }
}

/// The live, authorized connections of a listener with their peer identity,
/// so that a policy change can close the ones it no longer allows.
#[derive(Debug, Default)]
pub struct LiveConnections {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, (Arc<PeerIdentity>, CancellationToken)>>,
}

/// Removes a connection from its registry when dropped.
#[derive(Debug)]
pub struct LiveGuard {
    registry: Arc<LiveConnections>,
    id: u64,
}

impl LiveConnections {
    /// Track a connection until the returned guard is dropped; cancelling
    /// `close` must end the connection.
    pub fn register(
        self: &Arc<Self>,
        identity: Arc<PeerIdentity>,
        close: CancellationToken,
    ) -> LiveGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.connections.lock() {
            map.insert(id, (identity, close));
        }
        LiveGuard {
            registry: self.clone(),
            id,
        }
    }

    /// Close every live connection whose peer `authz` no longer admits
    /// (in audit mode it admits everyone); returns the identities closed.
    pub fn close_denied(&self, authz: &Authorizer) -> Vec<String> {
        let Ok(map) = self.connections.lock() else {
            return Vec::new();
        };
        map.values()
            .filter(|(identity, _)| !authz.authorize(identity).admitted())
            .map(|(identity, close)| {
                close.cancel();
                identity.display_name()
            })
            .collect()
    }

    /// How many connections are tracked.
    pub fn len(&self) -> usize {
        self.connections.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when none are tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.connections.lock() {
            map.remove(&self.id);
        }
    }
}
