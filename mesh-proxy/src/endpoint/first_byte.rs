//! An edge connection's first bytes, within a deadline. The gateway's listeners tell HTTP/1.1 from
//! HTTP/2 by what a client sends first; a client that sends nothing would otherwise hold its
//! connection, and a slot under the connection cap, for ever (HTTP/1.1's header-read timeout only
//! starts once HTTP/1.1 is chosen). Once a byte has arrived, the protocol's own timeouts take over.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A byte stream whose reads fail with `TimedOut` if nothing has arrived `within` its start.
#[derive(Debug)]
pub(crate) struct FirstByteDeadline<I> {
    io: I,
    /// Until the first byte.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<I> FirstByteDeadline<I> {
    pub(crate) fn new(io: I, within: Duration) -> Self {
        Self { io, deadline: Some(Box::pin(tokio::time::sleep(within))) }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = &mut this.deadline else { return polled };
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.deadline = None;
                polled
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request within the header-read timeout")))
            }
            _ => polled,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_and_a_first_byte_lifts_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut silent = FirstByteDeadline::new(server, Duration::from_secs(1));
        let error = silent.read(&mut [0u8; 8]).await.err().map(|e| e.kind());
        assert_eq!(error, Some(io::ErrorKind::TimedOut));
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = FirstByteDeadline::new(server, Duration::from_secs(1));
        client.write_all(b"P").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(talking.read(&mut [0u8; 8]).await.ok(), Some(1));
        // Past the deadline, a quiet connection is the protocol's business, not this one's.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pending = tokio::time::timeout(Duration::from_secs(5), talking.read(&mut [0u8; 8])).await;
        assert!(pending.is_err(), "no deadline after the first byte");
    }
}
