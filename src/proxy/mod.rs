//! The data path: accept loops, inbound mTLS termination, outbound mTLS
//! origination, the byte pipe and the PROXY protocol header.

pub mod inbound;
pub mod listener;
pub mod outbound;
pub mod pipe;
pub mod pooled;
pub mod proxy_protocol;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::admin::Metrics;
use crate::identity::{PeerIdentity, Policy};

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

    /// Close every live connection whose peer `policy` denies; returns the
    /// identities closed.
    pub fn close_denied(&self, policy: &Policy) -> Vec<String> {
        let Ok(map) = self.connections.lock() else {
            return Vec::new();
        };
        map.values()
            .filter(|(identity, _)| !policy.evaluate(identity).is_allowed())
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
