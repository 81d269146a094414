//! A TCP socket shared between a connection's driver and the tasks that publish to it.
//!
//! The driver reads, writes and shuts the socket down as usual; besides, a publisher
//! ([`Hub::publish`](crate::Hub::publish), [`broadcast`](crate::broadcast)) may write a
//! message straight to the socket when the connection has nothing else waiting to be
//! written, instead of queueing it and waking the driver's task to write it (see
//! `Connection::try_send_prepared`). The socket is split: the driver reads through tokio's
//! read half, and the write half is shared (`Arc`), written through `&TcpStream`
//! (`try_write`: tokio's readiness tracking is shared).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A TCP stream whose writing side is shared: reads go through tokio's read half (which
/// knows that a short read drained the socket, and saves the `EAGAIN` read that would tell
/// it), writes through `&TcpStream` (`try_write`, with tokio's shared readiness).
pub(crate) struct SharedTcp {
    read: OwnedReadHalf,
    write: Arc<OwnedWriteHalf>,
}

impl SharedTcp {
    /// Splits `tcp`; the returned writer may write from anywhere, in turn with the driver.
    pub(crate) fn new(tcp: TcpStream) -> (SharedTcp, Arc<OwnedWriteHalf>) {
        let (read, write) = tcp.into_split();
        let write = Arc::new(write);
        (
            SharedTcp {
                read,
                write: write.clone(),
            },
            write,
        )
    }

    /// The socket.
    pub(crate) fn tcp(&self) -> &TcpStream {
        self.read.as_ref()
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl SharedTcp {
    /// Waits until the socket is writable and makes one `try_write*` call through `write`;
    /// stale readiness (`WouldBlock`, which clears it) means waiting again.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let tcp: &TcpStream = self.write.as_ref().as_ref();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match write(tcp) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |tcp| tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What tokio's TcpStream does: shutdown(2) of the writing side, which never blocks.
        let tcp: &TcpStream = self.write.as_ref().as_ref();
        Poll::Ready(socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads, vectored writes and the half-close work through the shared reference, and a
    /// write through another reference to the same socket arrives in order.
    #[tokio::test]
    async fn reads_writes_and_shuts_down_by_reference() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut peer = client.unwrap();
        let (mut shared, writer) = SharedTcp::new(accepted.unwrap().0);

        peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        shared.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        let slices = [io::IoSlice::new(b"he"), io::IoSlice::new(b"llo")];
        let n = shared.write_vectored(&slices).await.unwrap();
        assert_eq!(n, 5);
        assert_eq!(writer.try_write(b", world").unwrap(), 7);
        shared.shutdown().await.unwrap();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello, world");
    }
}
