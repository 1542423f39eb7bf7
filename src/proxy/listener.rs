//! The accept loop shared by inbound and outbound listeners: connection
//! limit, accept-error backoff, and task tracking for graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Direction;
use crate::admin::metrics::{reason, Metrics};
use crate::tls::linger::LingerGate;

/// Longest pause after repeated accept errors (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long a connection that arrives at a full listener waits for the
/// places of shed lingering closes before it is refused.
const SHED_WAIT: Duration = Duration::from_millis(100);

/// An accept loop's fixed parts.
#[derive(Debug, Clone)]
pub struct AcceptLoop {
    /// Listener name, for logs and metrics.
    pub name: Arc<str>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// At most this many connections are handled at once.
    pub limit: Arc<Semaphore>,
    /// Cancelled to stop accepting (shutdown, listener removed).
    pub stop_accepting: CancellationToken,
    /// Tracks live connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Metrics.
    pub metrics: Metrics,
    /// The listener's lingering closes, shed when the listener is full.
    pub linger: Arc<LingerGate>,
}

impl AcceptLoop {
    /// Accept until `stop_accepting` is cancelled, handing each connection to
    /// `handle` in its own tracked task. A connection over the limit is
    /// closed at once rather than left waiting in the backlog.
    pub async fn run<F, Fut>(self, listener: TcpListener, handle: F)
    where
        F: Fn(TcpStream, SocketAddr) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut backoff = Duration::from_millis(5);
        let direction = self.direction.as_str();
        loop {
            let accepted = tokio::select! {
                _ = self.stop_accepting.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(5);
                    pair
                }
                Err(error) => {
                    tracing::warn!(listener = %self.name, %error, backoff_ms = backoff.as_millis() as u64, "accept failed; pausing");
                    tokio::select! {
                        _ = self.stop_accepting.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            let Some(permit) = self.place().await else {
                self.metrics
                    .connection_errors
                    .with_label_values(&[&self.name, direction, reason::MAX_CONNECTIONS])
                    .inc();
                tracing::warn!(listener = %self.name, %peer, "connection refused: max_connections reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            // Boxed so the task does not hold the connection future twice
            // (once captured, once awaited): it lives as long as the connection.
            let connection = Box::pin(handle(stream, peer));
            self.tracker.spawn(async move {
                connection.await;
                drop(permit);
            });
        }
        tracing::info!(listener = %self.name, "stopped accepting");
    }

    /// A place under the connection limit. At the limit, refused peers
    /// that are still lingering give theirs up first: a refused peer must
    /// never keep a new one out.
    async fn place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = self.limit.clone().try_acquire_owned() {
            return Some(permit);
        }
        if self.linger.lingering() == 0 {
            return None;
        }
        self.linger.shed();
        tokio::time::timeout(SHED_WAIT, self.limit.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}
