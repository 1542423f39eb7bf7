//! The byte pipe: copies both directions between two streams until both
//! are done, honouring half-close, with an idle timeout and byte counters.
//!
//! When one side finishes sending (EOF, or a TLS close_notify), the other
//! side's write half is shut down and the opposite direction keeps flowing,
//! so a client that half-closes still receives the whole response. An error
//! in either direction (a reset) ends both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// Bytes per read; one buffer per direction.
const BUFFER_SIZE: usize = 16 * 1024;

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

/// Which side failed, to report the right close reason.
enum Side {
    Client,
    Server,
}

/// Pipe `client` and `server` until both directions end, either fails, the
/// idle timeout passes, or `cancel` resolves. `on_bytes` is called with
/// (upstream, downstream) deltas as bytes move, for live metrics.
pub async fn pipe<C, S>(
    client: C,
    server: S,
    idle_timeout: Duration,
    cancel: impl std::future::Future<Output = ()>,
    on_bytes: &(dyn Fn(u64, u64) + Sync),
) -> PipeOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let upstream = AtomicU64::new(0);
    let downstream = AtomicU64::new(0);

    let copy_up = copy_one_way(
        &mut client_read,
        &mut server_write,
        &upstream,
        &last_activity,
        start,
        |n| on_bytes(n, 0),
    );
    let copy_down = copy_one_way(
        &mut server_read,
        &mut client_write,
        &downstream,
        &last_activity,
        start,
        |n| on_bytes(0, n),
    );
    let both = async {
        tokio::try_join!(
            async {
                copy_up.await.map_err(|e| match e {
                    CopyError::Read(e) => (Side::Client, e),
                    CopyError::Write(e) => (Side::Server, e),
                })
            },
            async {
                copy_down.await.map_err(|e| match e {
                    CopyError::Read(e) => (Side::Server, e),
                    CopyError::Write(e) => (Side::Client, e),
                })
            },
        )
    };
    let idle = idle_watchdog(&last_activity, start, idle_timeout);

    let reason = tokio::select! {
        result = both => match result {
            Ok(_) => CloseReason::Complete,
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
            let _ = tokio::join!(client_write.shutdown(), server_write.shutdown());
        })
        .await;
    }
    PipeOutcome {
        upstream_bytes: upstream.load(Ordering::Relaxed),
        downstream_bytes: downstream.load(Ordering::Relaxed),
        reason,
    }
}

/// A failed copy: the read side or the write side broke.
enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copy `from` to `to` until EOF, then shut down `to`'s write side.
async fn copy_one_way<R, W>(
    from: &mut R,
    to: &mut W,
    counter: &AtomicU64,
    last_activity: &AtomicU64,
    start: Instant,
    on_bytes: impl Fn(u64),
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        // The buffer is held only while bytes are in flight: an idle
        // connection holds none (see `buffers`).
        let (buffer, n) = match read_pooled(from).await {
            Ok(read) => read,
            // A peer that closes TCP without TLS close_notify has still
            // finished sending; treat it as EOF rather than an error.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => (buffers::take(), 0),
            Err(e) => return Err(CopyError::Read(e)),
        };
        if n == 0 {
            buffers::give(buffer);
            // Half-close: pass the EOF on, keep the other direction open.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let written = async {
            to.write_all(&buffer[..n]).await?;
            to.flush().await
        }
        .await;
        buffers::give(buffer);
        written.map_err(CopyError::Write)?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        on_bytes(n as u64);
    }
}

/// Read into a pooled buffer. The buffer is taken for each poll and put
/// back when the read is not ready, which is sound because a pending
/// `poll_read` leaves the buffer untouched.
async fn read_pooled<R: AsyncRead + Unpin>(from: &mut R) -> std::io::Result<(Vec<u8>, usize)> {
    std::future::poll_fn(|cx| {
        let mut buffer = buffers::take();
        let mut read_buf = ReadBuf::new(&mut buffer);
        match Pin::new(&mut *from).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                Poll::Ready(Ok((buffer, n)))
            }
            Poll::Ready(Err(e)) => {
                buffers::give(buffer);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                buffers::give(buffer);
                Poll::Pending
            }
        }
    })
    .await
}

/// A small per-thread pool of copy buffers, so memory follows the number of
/// connections moving bytes, not the number of connections open.
mod buffers {
    use std::cell::RefCell;

    use super::BUFFER_SIZE;

    /// Most idle buffers kept per worker thread.
    const MAX_POOLED: usize = 64;

    thread_local! {
        static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of `BUFFER_SIZE` bytes.
    pub(super) fn take() -> Vec<u8> {
        POOL.with(|pool| pool.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE])
    }

    /// Return a buffer to this thread's pool (dropped when the pool is full).
    pub(super) fn give(buffer: Vec<u8>) {
        if buffer.len() != BUFFER_SIZE {
            return;
        }
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < MAX_POOLED {
                pool.push(buffer);
            }
        });
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
    use tokio::io::{duplex, AsyncReadExt};

    #[tokio::test]
    async fn copies_both_ways_and_honours_half_close() {
        let (client, mut client_peer) = duplex(64);
        let (server, mut server_peer) = duplex(64);
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
