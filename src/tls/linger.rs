//! Lingering close: after we refuse a TLS peer with a fatal alert, make sure
//! the peer can read the alert.
//!
//! A TLS 1.3 client considers its side of the handshake done before the
//! server has judged its certificate, so it often writes its request right
//! away. If the server then closes the socket with that request still
//! unread, the kernel answers with a TCP reset, and a reset makes the
//! client's kernel drop whatever it had not yet read, the alert included:
//! the user sees "connection reset" instead of "access denied". So after
//! the alert we do what nginx's `lingering_close` does: send FIN (shut down
//! our write side), then read and discard what the peer still sends until
//! it closes too, for at most [`LingerLimits::time`] and
//! [`LingerLimits::bytes`]. Only then is the socket closed, with nothing
//! unread, so no reset is sent.
//!
//! A lingering connection is bounded, and it still holds its place under
//! the listener's `max_connections`; when the listener is full, the accept
//! loop calls [`LingerGate::shed`] and every lingering close ends at once,
//! so refused peers can never crowd out new ones.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// How long, and how much, to read from a refused peer before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LingerLimits {
    /// Longest time to wait for the peer to close; zero closes at once.
    pub time: Duration,
    /// Most bytes to read and discard.
    pub bytes: usize,
}

impl LingerLimits {
    /// The defaults: nginx's `lingering_timeout` (5 s), and 64 KiB, a few
    /// TLS records more than a client writes before it reads.
    pub const DEFAULT: LingerLimits = LingerLimits {
        time: Duration::from_secs(5),
        bytes: 64 * 1024,
    };
}

impl Default for LingerLimits {
    fn default() -> Self {
        LingerLimits::DEFAULT
    }
}

/// How a lingering close ended; the `end` label of
/// `portcullis_lingering_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LingerEnd {
    /// The peer closed its side: the clean end.
    PeerClosed,
    /// The peer sent more than [`LingerLimits::bytes`].
    ByteLimit,
    /// The peer neither closed nor stopped within [`LingerLimits::time`].
    TimeLimit,
    /// The listener was full and needed the place.
    Shed,
    /// Reading or shutting down failed (typically a reset from the peer).
    IoError,
}

impl LingerEnd {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LingerEnd::PeerClosed => "peer_closed",
            LingerEnd::ByteLimit => "byte_limit",
            LingerEnd::TimeLimit => "time_limit",
            LingerEnd::Shed => "shed",
            LingerEnd::IoError => "io_error",
        }
    }
}

/// The lingering closes of one listener: how many there are, and a way to
/// end them all when the listener needs their places.
#[derive(Debug, Default)]
pub struct LingerGate {
    lingering: AtomicUsize,
    shed: Notify,
}

impl LingerGate {
    /// Connections lingering now.
    pub fn lingering(&self) -> usize {
        self.lingering.load(Ordering::Relaxed)
    }

    /// End every lingering close now.
    pub fn shed(&self) {
        self.shed.notify_waiters();
    }
}

/// Counts a lingering close for as long as it lives.
struct Lingering<'a>(&'a LingerGate);

impl<'a> Lingering<'a> {
    fn enter(gate: &'a LingerGate) -> Self {
        gate.lingering.fetch_add(1, Ordering::Relaxed);
        Lingering(gate)
    }
}

impl Drop for Lingering<'_> {
    fn drop(&mut self) {
        self.0.lingering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Close the socket of a handshake that failed with `error`: when we sent
/// a fatal alert (and not when the peer sent one, closed, or the socket
/// failed), linger so the peer can read it ([`close_after_alert`]); else
/// just drop it. `None` when there was no alert to linger for.
pub async fn close_failed_handshake<S>(
    error: &std::io::Error,
    io: S,
    limits: LingerLimits,
    gate: &LingerGate,
) -> Option<LingerEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let sent_alert = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| !matches!(tls, rustls::Error::AlertReceived(_)));
    if sent_alert {
        Some(close_after_alert(io, limits, gate).await)
    } else {
        None
    }
}

/// Close `io` after a fatal alert was written to it: flush, send FIN, read
/// and discard until the peer closes or a limit is reached, then drop it.
pub async fn close_after_alert<S>(mut io: S, limits: LingerLimits, gate: &LingerGate) -> LingerEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Shutting down flushes first; after it the peer has the alert and EOF.
    if io.shutdown().await.is_err() {
        return LingerEnd::IoError;
    }
    if limits.time.is_zero() {
        return LingerEnd::TimeLimit;
    }
    let _counted = Lingering::enter(gate);
    let shed = gate.shed.notified();
    tokio::pin!(shed);
    // Registered before the first read, so a shed that comes while we wait
    // for the peer is never missed.
    shed.as_mut().enable();
    let deadline = tokio::time::sleep(limits.time);
    tokio::pin!(deadline);
    let mut discarded = 0usize;
    let mut buffer = [0u8; 4096];
    loop {
        tokio::select! {
            _ = &mut shed => return LingerEnd::Shed,
            _ = &mut deadline => return LingerEnd::TimeLimit,
            read = io.read(&mut buffer) => match read {
                Ok(0) => return LingerEnd::PeerClosed,
                Ok(n) => {
                    discarded += n;
                    if discarded > limits.bytes {
                        return LingerEnd::ByteLimit;
                    }
                }
                Err(_) => return LingerEnd::IoError,
            },
        }
    }
}

#[cfg(test)]
mod tests;
