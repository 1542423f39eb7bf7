//! A stream read through a buffer borrowed from a per-thread pool.
//!
//! The pipe reads both of its sides as `AsyncBufRead`; a stream becomes one
//! by wrapping it in [`Pooled`]. The buffer is borrowed only while
//! unconsumed bytes sit in it, so an idle connection holds none: memory
//! follows the number of connections moving bytes, not the number open.
//!
//! A TLS stream is itself an `AsyncBufRead` (rustls keeps each decrypted
//! record) and could be piped with no copy, but measured on the benchmark
//! machine that used more CPU time per byte than copying each record into a
//! pooled buffer, despite fewer instructions (docs/benchmarks.md, "Buffer
//! size"), so TLS streams are wrapped too.
//!
//! Under rustls, a socket wrapped in [`Pooled::new`] is read ahead: rustls
//! asks for at most about one record per read, and [`AsyncRead`] fills the
//! pooled buffer with everything waiting (up to four records) in one `recv`
//! and hands it out from memory.
//!
//! A TLS stream yields one record per read; wrapped with [`Pooled::tls`], a
//! read that comes back full-sized (bulk traffic) is followed by more reads
//! into the same buffer until it is full or nothing is waiting, so the
//! other side gets one large write instead of one per TLS record.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of one pooled buffer: four TLS records' plaintext, so that bulk
/// traffic moves in 64 KiB writes (one `sendto` to the backend for four
/// records, four records in one `writev` to a TLS peer).
pub const BUFFER_SIZE: usize = 64 * 1024;

/// A read this large means more is probably waiting: the largest TLS
/// record's plaintext, which is all one read of a TLS stream returns.
const GATHER_THRESHOLD: usize = 16 * 1024;

/// Most idle buffers kept per worker thread (1 MiB).
const MAX_POOLED: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `BUFFER_SIZE` bytes from this thread's pool.
fn take_buffer() -> Vec<u8> {
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUFFER_SIZE])
}

/// Return a buffer to this thread's pool (dropped when the pool is full).
fn give_buffer(buffer: Vec<u8>) {
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

/// A stream whose reads go through a pooled buffer; writes pass through.
#[derive(Debug)]
pub struct Pooled<T> {
    inner: T,
    /// Held only while `start..end` has bytes the reader has not consumed.
    buffer: Option<Vec<u8>>,
    start: usize,
    end: usize,
    /// An error met after bytes were gathered; returned once they are consumed.
    deferred_error: Option<io::Error>,
    /// Reads yield one TLS record at a time: keep reading while they come
    /// back full (see [`Pooled::tls`]).
    gather_records: bool,
}

impl<T> Pooled<T> {
    /// Wrap a plain stream; no buffer is taken until the first read. One
    /// read of a socket already takes everything waiting, up to the buffer.
    pub fn new(inner: T) -> Self {
        Pooled {
            inner,
            buffer: None,
            start: 0,
            end: 0,
            deferred_error: None,
            gather_records: false,
        }
    }

    /// Wrap a TLS stream, whose reads yield at most one record (16 KiB of
    /// plaintext) each: a full record is followed by more reads into the
    /// same buffer, so bulk traffic leaves in buffer-sized writes.
    pub fn tls(inner: T) -> Self {
        let mut pooled = Pooled::new(inner);
        pooled.gather_records = true;
        pooled
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn release(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give_buffer(buffer);
        }
        self.start = 0;
        self.end = 0;
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        self.release();
    }
}

/// What one gathering read found.
enum Gathered {
    /// This many bytes (0: end of stream), and the error that stopped the
    /// gathering after them.
    Bytes(usize, Option<io::Error>),
    /// Failed before any byte.
    Failed(io::Error),
    /// Nothing to read yet; the waker is registered.
    Pending,
}

/// Read into `buffer`; with `records`, keep reading while reads come back
/// full-sized (`GATHER_THRESHOLD` or more: bulk traffic) and the buffer has
/// room, so that several TLS records go out in one write. A small read is
/// handed on at once: interactive traffic never waits for, or pays for, an
/// extra read.
fn gather<T: AsyncRead + Unpin>(
    inner: &mut T,
    cx: &mut Context<'_>,
    buffer: &mut [u8],
    records: bool,
) -> Gathered {
    let mut filled = 0;
    while filled < buffer.len() {
        let mut read_buf = ReadBuf::new(&mut buffer[filled..]);
        match Pin::new(&mut *inner).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                filled += n;
                if !records || n < GATHER_THRESHOLD {
                    break;
                }
            }
            Poll::Ready(Err(e)) if filled == 0 => return Gathered::Failed(e),
            Poll::Ready(Err(e)) => return Gathered::Bytes(filled, Some(e)),
            // Whatever was read is handed on now; the waker stays
            // registered for what comes next.
            Poll::Pending if filled == 0 => return Gathered::Pending,
            Poll::Pending => break,
        }
    }
    Gathered::Bytes(filled, None)
}

impl<T: AsyncRead + Unpin> AsyncBufRead for Pooled<T> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.start >= this.end {
            this.release();
            // An error that ended the last gathering read, after the bytes
            // before it were handed out.
            if let Some(error) = this.deferred_error.take() {
                return Poll::Ready(Err(error));
            }
            let mut buffer = take_buffer();
            let filled = match gather(&mut this.inner, cx, &mut buffer, this.gather_records) {
                Gathered::Bytes(n, deferred) => {
                    this.deferred_error = deferred;
                    n
                }
                Gathered::Failed(e) => {
                    give_buffer(buffer);
                    return Poll::Ready(Err(e));
                }
                Gathered::Pending => {
                    give_buffer(buffer);
                    return Poll::Pending;
                }
            };
            if filled == 0 {
                give_buffer(buffer);
                return Poll::Ready(Ok(&[]));
            }
            this.end = filled;
            this.buffer = Some(buffer);
        }
        match &this.buffer {
            Some(buffer) => Poll::Ready(Ok(&buffer[this.start..this.end])),
            None => Poll::Ready(Ok(&[])),
        }
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.start = this.start.saturating_add(amount).min(this.end);
        if this.start >= this.end {
            this.release();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Pooled<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Nothing buffered and the caller can take a whole buffer's worth:
        // read straight into the caller's buffer.
        if self.start >= self.end && self.deferred_error.is_none() && out.remaining() >= BUFFER_SIZE
        {
            return Pin::new(&mut self.inner).poll_read(cx, out);
        }
        let available = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(available)) => available,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Pooled<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn holds_a_buffer_only_while_bytes_are_unconsumed() {
        let (stream, mut peer) = duplex(64);
        let mut pooled = Pooled::new(stream);
        assert!(pooled.buffer.is_none());
        peer.write_all(b"hello").await.unwrap();
        let chunk = pooled.fill_buf().await.unwrap().to_vec();
        assert_eq!(chunk, b"hello");
        assert!(pooled.buffer.is_some());
        Pin::new(&mut pooled).consume(2);
        assert_eq!(pooled.fill_buf().await.unwrap(), b"llo");
        Pin::new(&mut pooled).consume(3);
        assert!(pooled.buffer.is_none(), "a drained reader holds no buffer");
        // Mixed with plain reads, and EOF.
        peer.write_all(b"world").await.unwrap();
        drop(peer);
        let mut rest = Vec::new();
        pooled.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"world");
        assert!(pooled.fill_buf().await.unwrap().is_empty());
        assert!(pooled.buffer.is_none());
    }

    /// Reads come from a script: each step is one `poll_read` outcome.
    enum Step {
        Bytes(usize),
        Pending,
        Fail,
    }

    struct Scripted {
        steps: std::collections::VecDeque<Step>,
        reads: usize,
    }

    impl Scripted {
        fn new(steps: Vec<Step>) -> Self {
            Scripted {
                steps: steps.into(),
                reads: 0,
            }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            match self.steps.pop_front() {
                Some(Step::Bytes(n)) => {
                    let n = n.min(buf.remaining());
                    buf.put_slice(&vec![b'x'; n]);
                    Poll::Ready(Ok(()))
                }
                Some(Step::Pending) => Poll::Pending,
                Some(Step::Fail) => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
                None => Poll::Ready(Ok(())),
            }
        }
    }

    fn fill(pooled: &mut Pooled<Scripted>) -> Poll<io::Result<usize>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        Pin::new(pooled)
            .poll_fill_buf(&mut cx)
            .map_ok(|chunk| chunk.len())
    }

    #[test]
    fn full_sized_reads_are_gathered_until_nothing_waits() {
        let record = GATHER_THRESHOLD;
        let mut pooled = Pooled::tls(Scripted::new(vec![
            Step::Bytes(record),
            Step::Bytes(record),
            Step::Bytes(record),
            Step::Pending,
            Step::Bytes(100),
        ]));
        let Poll::Ready(Ok(n)) = fill(&mut pooled) else {
            panic!("three records were ready");
        };
        assert_eq!(n, 3 * record, "one chunk for the three records");
        assert_eq!(pooled.get_ref().reads, 4, "read until nothing waited");
        Pin::new(&mut pooled).consume(n);
        assert!(matches!(fill(&mut pooled), Poll::Ready(Ok(100))));
    }

    #[test]
    fn gathering_stops_when_the_buffer_is_full() {
        let mut pooled = Pooled::tls(Scripted::new(
            (0..6).map(|_| Step::Bytes(GATHER_THRESHOLD)).collect(),
        ));
        assert!(matches!(fill(&mut pooled), Poll::Ready(Ok(BUFFER_SIZE))));
        assert_eq!(pooled.get_ref().reads, BUFFER_SIZE / GATHER_THRESHOLD);
    }

    #[test]
    fn a_plain_stream_is_read_once_per_fill() {
        let mut pooled = Pooled::new(Scripted::new(vec![
            Step::Bytes(GATHER_THRESHOLD),
            Step::Bytes(GATHER_THRESHOLD),
        ]));
        assert!(matches!(
            fill(&mut pooled),
            Poll::Ready(Ok(GATHER_THRESHOLD))
        ));
        assert_eq!(
            pooled.get_ref().reads,
            1,
            "a socket read took all there was"
        );
    }

    #[test]
    fn a_small_read_is_handed_on_without_another_read() {
        let mut pooled = Pooled::tls(Scripted::new(vec![Step::Bytes(64), Step::Bytes(64)]));
        assert!(matches!(fill(&mut pooled), Poll::Ready(Ok(64))));
        assert_eq!(
            pooled.get_ref().reads,
            1,
            "interactive traffic pays no extra read"
        );
    }

    #[test]
    fn an_error_after_gathered_bytes_comes_once_they_are_consumed() {
        let mut pooled = Pooled::tls(Scripted::new(vec![
            Step::Bytes(GATHER_THRESHOLD),
            Step::Fail,
        ]));
        let Poll::Ready(Ok(n)) = fill(&mut pooled) else {
            panic!("the bytes before the error come first");
        };
        assert_eq!(n, GATHER_THRESHOLD);
        Pin::new(&mut pooled).consume(n);
        match fill(&mut pooled) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected the deferred reset, got {other:?}"),
        }
        assert!(pooled.buffer.is_none());
    }

    #[test]
    fn end_of_stream_after_gathered_bytes_follows_them() {
        let mut pooled = Pooled::tls(Scripted::new(vec![Step::Bytes(GATHER_THRESHOLD)]));
        assert!(matches!(
            fill(&mut pooled),
            Poll::Ready(Ok(GATHER_THRESHOLD))
        ));
        Pin::new(&mut pooled).consume(GATHER_THRESHOLD);
        assert!(matches!(fill(&mut pooled), Poll::Ready(Ok(0))));
        assert!(pooled.buffer.is_none());
    }

    #[test]
    fn small_reads_are_served_from_one_read_ahead() {
        let mut pooled = Pooled::new(Scripted::new(vec![Step::Bytes(3 * GATHER_THRESHOLD)]));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut total = 0;
        // Like rustls: at most a record's worth per read.
        let mut record = vec![0u8; GATHER_THRESHOLD + 64];
        while total < 3 * GATHER_THRESHOLD {
            let mut out = ReadBuf::new(&mut record);
            let Poll::Ready(Ok(())) = Pin::new(&mut pooled).poll_read(&mut cx, &mut out) else {
                panic!("bytes were buffered");
            };
            total += out.filled().len();
        }
        assert_eq!(total, 3 * GATHER_THRESHOLD);
        assert_eq!(
            pooled.get_ref().reads,
            1,
            "one read of the socket served them all"
        );
        assert!(pooled.buffer.is_none(), "drained: the buffer went back");
    }

    #[test]
    fn a_read_as_large_as_the_buffer_bypasses_it() {
        let mut pooled = Pooled::new(Scripted::new(vec![Step::Bytes(BUFFER_SIZE)]));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut big = vec![0u8; BUFFER_SIZE];
        let mut out = ReadBuf::new(&mut big);
        assert!(Pin::new(&mut pooled)
            .poll_read(&mut cx, &mut out)
            .is_ready());
        assert_eq!(out.filled().len(), BUFFER_SIZE);
        assert!(pooled.buffer.is_none(), "no copy through the pool");
    }
}
