//! What carries a wire's bytes: the socket itself ([`Plain`]), or TLS over it
//! ([`super::tls::Tls`]). A wire frames messages; its carrier reads and writes their bytes, so
//! that every framing runs over every carrier.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Smallest read: most frames (pings, acks) are far smaller.
pub(super) const READ_CHUNK: usize = 512;

/// Reads and writes the bytes of one connection.
///
/// # Contract
/// Like [`super::Wire`]'s: poll-based, wakers in the socket's registration, bounded buffers.
pub trait Carrier: Send + Sized + 'static {
    /// What the carrier leaves behind while its connection is parked (see
    /// [`super::Wire::Rest`]).
    type Rest: Send + 'static;

    /// Reads what there is into `buf`, with room for `want` bytes at least: `Ready(Ok(0))` at
    /// the end of the stream, `Pending` (waker registered) while there is nothing to read.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
    ) -> Poll<io::Result<usize>>;

    /// Takes what it can of `slices` (`Ready(Ok(n))`, `n > 0`), or `Pending` (waker registered)
    /// while it can take nothing. Bytes taken may still wait in the carrier: see
    /// [`Carrier::poll_flush`].
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;

    /// Writes out what the carrier took and still holds; `Ready` once it holds nothing.
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Whether the carrier holds bytes to write (TLS records, a TLS alert): the connection's
    /// task must call [`Carrier::poll_flush`] for them.
    fn unflushed(&self) -> bool {
        false
    }

    /// Whether the carrier holds bytes of its own, read or to write, so that its connection
    /// cannot park (see [`Carrier::park`]).
    fn busy(&self) -> bool {
        self.unflushed()
    }

    /// The socket, shared with the connection's handle: for parking, and, unless the carrier
    /// is [`Carrier::sealed`], for writes that bypass the connection's task.
    fn socket(&self) -> Arc<TcpStream>;

    /// Whether the carrier changes the bytes (TLS), so that nothing may be written to the
    /// socket past it.
    fn sealed(&self) -> bool {
        false
    }

    /// Ends the sending side: what is unflushed goes first (best effort), then the FIN.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;

    /// Gives the carrier up while its connection is parked, keeping only its
    /// [`Carrier::Rest`]. Called only when it is not [`Carrier::busy`].
    fn park(self) -> Self::Rest;

    /// The carrier again, on the socket of a connection that parked with `rest`.
    fn resume(stream: Arc<TcpStream>, rest: Self::Rest) -> Self;
}

/// The socket itself.
#[derive(Debug)]
pub struct Plain(
    /// Shared with the connection's handle, which writes to it directly while the task has
    /// nothing to write (see [`super::Wire::direct`]).
    pub(super) Arc<TcpStream>,
);

impl Plain {
    pub fn new(stream: TcpStream) -> Self {
        Plain(Arc::new(stream))
    }
}

impl Carrier for Plain {
    type Rest = ();

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            buf.reserve(want.max(READ_CHUNK));
            match self.0.try_read_buf(buf) {
                // Readiness was cleared: the next poll_read_ready registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                read => return Poll::Ready(read),
            }
        }
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match try_send(&self.0, slices) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                // Readiness was cleared: the next poll_write_ready registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
    }

    fn socket(&self) -> Arc<TcpStream> {
        self.0.clone()
    }

    async fn shutdown(&mut self) {
        shutdown_write(&self.0);
    }

    fn park(self) {}

    fn resume(stream: Arc<TcpStream>, (): ()) -> Self {
        Plain(stream)
    }
}

/// Writes what the socket takes at once of `slices`, like tokio's `try_write_vectored` (a full
/// socket clears its write readiness and gives `WouldBlock`), but with `send(2)` or
/// `sendmsg(2)` rather than `writev(2)`: a socket needs none of the file layer's work, which
/// was about a tenth of the kernel's CPU per write here (see `docs/benchmarks.md`).
pub(super) fn try_send(stream: &TcpStream, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
    stream.try_io(tokio::io::Interest::WRITABLE, || {
        let socket = socket2::SockRef::from(stream);
        match slices {
            [one] => socket.send(one),
            _ => socket.send_vectored(slices),
        }
    })
}

/// Ends the sending side of a socket that a connection's handle shares (so no `&mut` for
/// tokio's shutdown): the same FIN through the socket itself.
pub(super) fn shutdown_write(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

/// A carrier as tokio's `AsyncRead` and `AsyncWrite`, for what reads and writes it before its
/// wire exists (a WebSocket upgrade inside TLS). Bytes it read that its reader did not take
/// come back from [`AsIo::unread`].
#[derive(Debug)]
pub struct AsIo<'a, C> {
    carrier: &'a mut C,
    read: BytesMut,
}

impl<'a, C: Carrier> AsIo<'a, C> {
    pub fn new(carrier: &'a mut C) -> Self {
        AsIo {
            carrier,
            read: BytesMut::new(),
        }
    }

    /// What was read and not taken.
    pub fn unread(self) -> BytesMut {
        self.read
    }
}

impl<C: Carrier> tokio::io::AsyncRead for AsIo<'_, C> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty()
            && ready!(this.carrier.poll_read(cx, &mut this.read, READ_CHUNK))? == 0
        {
            return Poll::Ready(Ok(()));
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<C: Carrier> tokio::io::AsyncWrite for AsIo<'_, C> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(this.carrier.poll_write(cx, &[io::IoSlice::new(buf)]))?;
        // The upgrade's answer is small: it goes out before the next read waits.
        ready!(this.carrier.poll_flush(cx))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().carrier.poll_flush(cx)
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().carrier.poll_flush(cx)
    }
}
