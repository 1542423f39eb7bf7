//! A plaintext stream read through a buffer borrowed from a per-thread pool.
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

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// Bytes per read of a plain stream. 16 KiB matches the largest TLS
/// record's plaintext: one read fills one record on the way to a TLS peer.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// Most idle buffers kept per worker thread.
const MAX_POOLED: usize = 64;

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
}

impl<T> Pooled<T> {
    /// Wrap `inner`; no buffer is taken until the first read.
    pub fn new(inner: T) -> Self {
        Pooled {
            inner,
            buffer: None,
            start: 0,
            end: 0,
        }
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

impl<T: AsyncRead + Unpin> AsyncBufRead for Pooled<T> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.start >= this.end {
            this.release();
            let mut buffer = take_buffer();
            let mut read_buf = ReadBuf::new(&mut buffer);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        give_buffer(buffer);
                        return Poll::Ready(Ok(&[]));
                    }
                    this.end = n;
                    this.buffer = Some(buffer);
                }
                Poll::Ready(Err(e)) => {
                    give_buffer(buffer);
                    return Poll::Ready(Err(e));
                }
                // A pending read left the buffer untouched; back to the pool.
                Poll::Pending => {
                    give_buffer(buffer);
                    return Poll::Pending;
                }
            }
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
        // Nothing buffered: read straight into the caller's buffer.
        if self.start >= self.end {
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
}
