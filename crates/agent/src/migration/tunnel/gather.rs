//! Reads of a TLS stream gathered into large ones.
//!
//! A TLS stream hands out one record (at most 16 KiB) per read, and the tunnel writes what
//! it read to QEMU's socket in one system call each: a read that takes every record
//! already received, up to the caller's buffer, makes those writes 256 KiB instead of
//! 16 KiB (thousands of system calls fewer per migration). Under the TLS stream, a
//! [`tokio::io::BufReader`] does the same for its reads from the TCP socket (rustls reads
//! 4 KiB at a time).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Room left in the caller's buffer below which a read stops gathering (a record).
const MIN_ROOM: usize = 16 * 1024;

/// `inner` whose reads take everything ready at once; writes go straight through.
pub(super) struct Gather<S> {
    inner: S,
    /// An error met after some bytes were read: answered by the next read.
    error: Option<io::Error>,
}

impl<S> Gather<S> {
    pub(super) fn new(inner: S) -> Self {
        Self { inner, error: None }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gather<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        let start = buf.filled().len();
        loop {
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                // The end of the stream (seen again by the next read); then a full buffer.
                Poll::Ready(Ok(())) if buf.filled().len() == before => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) if buf.remaining() < MIN_ROOM => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) if buf.filled().len() > start => {
                    this.error = Some(e);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Nothing more yet: what was read goes now (the waker stays registered).
                Poll::Pending if buf.filled().len() > start => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gather<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small writes already received come out in one read; the end and an error after
    /// some bytes are still seen.
    #[tokio::test]
    async fn ready_pieces_come_out_together() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        for _ in 0..8 {
            tx.write_all(&[7u8; 1000]).await.expect("write");
        }
        // A duplex read hands out what is buffered: make it a piece at a time.
        let mut reader = Gather::new(Pieces(rx));
        let mut buf = vec![0u8; 64 * 1024];
        let n = reader.read(&mut buf).await.expect("read");
        assert_eq!(n, 8000, "every piece ready was gathered");
        drop(tx);
        assert_eq!(reader.read(&mut buf).await.expect("end"), 0);
    }

    /// A reader that hands out at most 1000 bytes per read, as a TLS stream one record.
    struct Pieces<R>(R);

    impl<R: AsyncRead + Unpin> AsyncRead for Pieces<R> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let mut small = [0u8; 1000];
            let mut piece = ReadBuf::new(&mut small[..buf.remaining().min(1000)]);
            let polled = Pin::new(&mut self.get_mut().0).poll_read(cx, &mut piece);
            if let Poll::Ready(Ok(())) = polled {
                buf.put_slice(piece.filled());
            }
            polled
        }
    }
}
