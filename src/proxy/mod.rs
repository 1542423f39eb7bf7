//! The data path: accept loops, inbound mTLS termination, outbound mTLS
//! origination, the byte pipe and the PROXY protocol header.

pub mod inbound;
pub mod listener;
pub mod outbound;
pub mod pipe;
pub mod proxy_protocol;

use tokio_util::sync::CancellationToken;

use crate::admin::Metrics;

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

/// What every connection handler needs besides its listener's settings.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// Where counters go.
    pub metrics: Metrics,
    /// Cancelled when live connections must close now (drain deadline passed,
    /// listener removed and its drain timeout over).
    pub force_close: CancellationToken,
}
