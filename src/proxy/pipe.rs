//! The byte pipe: copies both directions between two streams until both
//! are done, honouring half-close, with an idle timeout and byte counters.
//!
//! When one side finishes sending (EOF, or a TLS close_notify), the other
//! side's write half is shut down and the opposite direction keeps flowing,
//! so a client that half-closes still receives the whole response. An error
//! in either direction (a reset) ends both.
//!
//! Both sides are read as `AsyncBufRead` and written from the reader's own
//! buffer, so a direction needs no buffer of its own. The proxy reads both
//! sides through [`super::pooled::Pooled`], whose buffer an idle connection
//! does not hold.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Why a pipe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished sending.
    Complete,
    /// Nothing moved in either direction for the idle timeout.
    IdleTimeout,
    /// The client side failed (reset, TLS error, ...).
    ClientError(String),
    /// The server side failed.
    ServerError(String),
    /// Shut down by the proxy (drain deadline, reauthorization).
    Cancelled,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Complete => f.write_str("complete"),
            CloseReason::IdleTimeout => f.write_str("idle_timeout"),
            CloseReason::ClientError(e) => write!(f, "client_error: {e}"),
            CloseReason::ServerError(e) => write!(f, "server_error: {e}"),
            CloseReason::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// What a finished pipe moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeOutcome {
    /// Bytes from the client to the server.
    pub upstream_bytes: u64,
    /// Bytes from the server to the client.
    pub downstream_bytes: u64,
    /// Why it ended.
    pub reason: CloseReason,
}

/// `ready!` for [`Copy::poll`], whose pending value is `Ok(Poll::Pending)`.
macro_rules! ready_or_return {
    ($poll:expr) => {
        match $poll {
            Poll::Ready(value) => value,
            Poll::Pending => return Ok(Poll::Pending),
        }
    };
}

/// Which side failed, to report the right close reason.
enum Side {
    Client,
    Server,
}

/// Pipe `client` and `server` until both directions end, either fails, the
/// idle timeout passes, or `cancel` resolves. `on_bytes` is called with
/// (upstream, downstream) deltas as bytes move, for live metrics.
pub async fn pipe<C, S>(
    mut client: C,
    mut server: S,
    idle_timeout: Duration,
    cancel: impl Future<Output = ()>,
    on_bytes: &(dyn Fn(u64, u64) + Sync),
) -> PipeOutcome
where
    C: AsyncBufRead + AsyncWrite + Unpin,
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let mut upstream = Copy::default();
    let mut downstream = Copy::default();

    let both = std::future::poll_fn(|cx| {
        let moved = |up: u64, down: u64| {
            on_bytes(up, down);
            last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        };
        let up = upstream
            .poll(cx, &mut client, &mut server, &mut |n| moved(n, 0))
            .map_err(|e| match e {
                CopyError::Read(e) => (Side::Client, e),
                CopyError::Write(e) => (Side::Server, e),
            })?;
        let down = downstream
            .poll(cx, &mut server, &mut client, &mut |n| moved(0, n))
            .map_err(|e| match e {
                CopyError::Read(e) => (Side::Server, e),
                CopyError::Write(e) => (Side::Client, e),
            })?;
        match (up, down) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    });
    let idle = idle_watchdog(&last_activity, start, idle_timeout);

    let reason = tokio::select! {
        result = both => match result {
            Ok(()) => CloseReason::Complete,
            Err((Side::Client, e)) => CloseReason::ClientError(e.to_string()),
            Err((Side::Server, e)) => CloseReason::ServerError(e.to_string()),
        },
        _ = idle => CloseReason::IdleTimeout,
        _ = cancel => CloseReason::Cancelled,
    };
    if matches!(reason, CloseReason::IdleTimeout | CloseReason::Cancelled) {
        // Closed by us, not by a peer: say so properly (TLS close_notify,
        // then FIN) rather than just dropping the sockets.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = tokio::join!(client.shutdown(), server.shutdown());
        })
        .await;
    }
    PipeOutcome {
        upstream_bytes: upstream.bytes,
        downstream_bytes: downstream.bytes,
        reason,
    }
}

/// A failed copy: the read side or the write side broke.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// One direction of the pipe: read `from` until EOF, write each chunk to
/// `to` straight from `from`'s buffer, then shut down `to`'s write side.
#[derive(Default)]
struct Copy {
    /// `from` reached EOF; `to` is being shut down.
    read_done: bool,
    /// `to` was shut down (or the attempt failed): this direction is over.
    done: bool,
    /// Bytes written since `to` was last flushed.
    needs_flush: bool,
    /// Bytes moved so far.
    bytes: u64,
}

impl Copy {
    /// Move what is ready; `Ready(Ok)` once this direction has ended.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        moved: &mut dyn FnMut(u64),
    ) -> Result<Poll<()>, CopyError>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Ok(Poll::Ready(()));
            }
            if self.read_done {
                // Half-close: pass the EOF on, keep the other direction
                // open. A peer that is already gone cannot be told; that is
                // not an error of this direction.
                let _ = ready_or_return!(Pin::new(&mut *to).poll_shutdown(cx));
                self.done = true;
                continue;
            }
            let chunk = match Pin::new(&mut *from).poll_fill_buf(cx) {
                Poll::Ready(Ok(chunk)) => chunk,
                // A peer that closes TCP without TLS close_notify has still
                // finished sending; treat it as EOF rather than an error.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => &[],
                Poll::Ready(Err(e)) => return Err(CopyError::Read(e)),
                Poll::Pending => {
                    // Nothing more to read for now: push out what was written.
                    if self.needs_flush {
                        ready_or_return!(Pin::new(&mut *to).poll_flush(cx))
                            .map_err(CopyError::Write)?;
                        self.needs_flush = false;
                    }
                    return Ok(Poll::Pending);
                }
            };
            if chunk.is_empty() {
                self.read_done = true;
                continue;
            }
            let n = ready_or_return!(Pin::new(&mut *to).poll_write(cx, chunk))
                .map_err(CopyError::Write)?;
            if n == 0 {
                return Err(CopyError::Write(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *from).consume(n);
            self.needs_flush = true;
            self.bytes += n as u64;
            moved(n as u64);
        }
    }
}

/// Resolves once nothing has moved for `timeout`.
async fn idle_watchdog(last_activity: &AtomicU64, start: Instant, timeout: Duration) {
    loop {
        let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
        // Config caps timeouts far below overflow; never panic regardless.
        let Some(deadline) = start.checked_add(last.saturating_add(timeout)) else {
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::pooled::Pooled;
    use tokio::io::{duplex, AsyncReadExt};

    #[tokio::test]
    async fn copies_both_ways_and_honours_half_close() {
        let (client, mut client_peer) = duplex(64);
        let (server, mut server_peer) = duplex(64);
        let (client, server) = (Pooled::new(client), Pooled::new(server));
        let task = tokio::spawn(async move {
            pipe(
                client,
                server,
                Duration::from_secs(5),
                std::future::pending(),
                &|_, _| {},
            )
            .await
        });
        client_peer.write_all(b"request").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The server answers after the client half-closed.
        server_peer.write_all(b"response").await.unwrap();
        server_peer.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_peer.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"response");
        let outcome = task.await.unwrap();
        assert_eq!(outcome.upstream_bytes, 7);
        assert_eq!(outcome.downstream_bytes, 8);
        assert_eq!(outcome.reason, CloseReason::Complete);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_closes() {
        let (client, _client_peer) = duplex(64);
        let (server, _server_peer) = duplex(64);
        let (client, server) = (Pooled::new(client), Pooled::new(server));
        let outcome = pipe(
            client,
            server,
            Duration::from_secs(30),
            std::future::pending(),
            &|_, _| {},
        )
        .await;
        assert_eq!(outcome.reason, CloseReason::IdleTimeout);
    }
}
