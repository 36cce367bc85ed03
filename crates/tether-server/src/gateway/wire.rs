//! One interface over the transports: raw TCP and WebSocket.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tether_core::Transport;
use tether_proto::{Code, DecodeError, Frame, binary};

use tokio::net::TcpStream;

use super::park::{self, Parked};
use super::table::Encoding;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

impl WireError {
    /// The code to close with, or `None` when the peer is simply gone.
    pub fn code(&self) -> Option<Code> {
        match self {
            WireError::Decode(e) => Some(e.code()),
            WireError::Io(_) => None,
        }
    }
}

/// Writes what the socket takes at once of `slices`, like tokio's `try_write_vectored` (a full
/// socket clears its write readiness and gives `WouldBlock`), but with `send(2)` or
/// `sendmsg(2)` rather than `writev(2)`: a socket needs none of the file layer's work, which
/// was about a tenth of the kernel's CPU per write here (see `Socket::try_write`).
pub(super) fn try_send(stream: &TcpStream, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
    stream.try_io(tokio::io::Interest::WRITABLE, || {
        let socket = socket2::SockRef::from(stream);
        match slices {
            [one] => socket.send(one),
            _ => socket.send_vectored(slices),
        }
    })
}

/// What the connection task needs from a transport.
pub(super) trait Wire: Send {
    fn transport(&self) -> Transport;

    /// The encoding frames to this client use (WebSocket: the one its `connect` used).
    fn encoding(&self) -> Encoding;

    /// The next frame from the client; `None` when it closed the connection.
    ///
    /// Poll-based so that waiting for a frame costs the connection no future state: the waker
    /// lives in the socket's registration. Bytes read before `Pending` are kept.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, WireError>>;

    /// [`Wire::poll_recv`] as a future.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Frame>, WireError>> + Send {
        std::future::poll_fn(|cx| self.poll_recv(cx))
    }

    /// Writes queued frames (already encoded for [`Wire::encoding`]) until all are written
    /// (`Ready(Ok)`) or the transport would block (`Pending`, waker registered). Written frames
    /// leave the queue; a frame written in part stays at its front, advanced.
    ///
    /// Poll-based so that the connection task keeps reading while a write waits on the client.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>>;

    /// Whether the wire has bytes of its own to write (a WebSocket pong): the task calls
    /// [`Wire::poll_send`] for them even with no frame queued. A wire that comes to have some
    /// while reading wakes its task, so that the pass after it writes them.
    fn wants_write(&self) -> bool {
        false
    }

    /// [`Wire::poll_send`] until everything is written, as a future.
    fn send(
        &mut self,
        frames: &mut VecDeque<Bytes>,
    ) -> impl Future<Output = io::Result<()>> + Send {
        std::future::poll_fn(move |cx| self.poll_send(cx, frames))
    }

    /// Bytes of queued frames written since the last call: the transport's own framing and
    /// control frames are not counted, so that this is what leaves the queue's budget.
    fn take_bytes_written(&mut self) -> usize;

    /// Whether a frame was left half-written: then no other frame may follow on this stream.
    fn mid_frame(&self) -> bool;

    /// The next frame to send is the rest of one already begun on the wire (by a direct
    /// write): it counts as half-written until it is out.
    fn set_mid_frame(&mut self) {}

    /// The socket, shared, for writes that bypass the connection's task.
    fn direct(&self) -> Option<Arc<TcpStream>> {
        None
    }

    /// Whether the wire holds nothing of its own (no frame half read or half written), so
    /// that the connection can wait without its task and a new wire can take over the socket
    /// (see `super::park`).
    fn parkable(&self) -> bool {
        false
    }

    /// Parks the connection: the task ends and the wire gives its socket up (see
    /// `super::park`). `Err` gives both back when it cannot park after all.
    fn park(self, held: Parked) -> Result<(), (Self, Parked)>
    where
        Self: Sized,
    {
        Err((self, held))
    }

    /// Bytes received since the last call (for metrics).
    fn take_bytes_read(&mut self) -> usize;

    /// Closes the connection with `code` (WebSocket: a close frame), after what
    /// [`Wire::send`] wrote. Best effort.
    fn close(&mut self, code: Code, reason: &str) -> impl Future<Output = ()> + Send;
}

/// Raw TCP: a stream of binary frames.
///
/// # Memory
/// The read buffer is allocated only while a frame is arriving and released as soon as it is
/// empty again, so an idle connection holds no buffer at all.
#[derive(Debug)]
pub struct TcpWire {
    /// Shared with the connection's handle, which writes to it directly while this side has
    /// nothing to write (see [`super::table::ConnHandle::offer`]).
    stream: Arc<TcpStream>,
    buf: BytesMut,
    max_frame: u32,
    read: usize,
    written: usize,
    /// The front frame of the last write is partly on the wire.
    partial: bool,
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Slices per vectored write.
pub(super) const MAX_IOVECS: usize = 64;

/// Smallest read: most frames (pings, acks) are far smaller.
const READ_CHUNK: usize = 512;

/// Reads what `stream` has into `buf`, with room for `want` bytes at least (and never less
/// than [`READ_CHUNK`]): `Ready(Ok(0))` at the end of the stream, `Pending` (waker registered)
/// while there is nothing to read.
pub(super) fn poll_read(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        buf.reserve(want.max(READ_CHUNK));
        match stream.try_read_buf(buf) {
            // Readiness was cleared: the next poll_read_ready registers the waker.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            read => return Poll::Ready(read),
        }
    }
}

impl TcpWire {
    pub fn new(stream: TcpStream, max_frame: u32) -> Self {
        Self::resume(Arc::new(stream), max_frame)
    }

    /// A wire for a parked connection's socket, which its old wire left with no frame half
    /// read or half written.
    pub fn resume(stream: Arc<TcpStream>, max_frame: u32) -> Self {
        TcpWire {
            stream,
            buf: BytesMut::new(),
            max_frame,
            read: 0,
            written: 0,
            partial: false,
        }
    }
}

impl Wire for TcpWire {
    fn transport(&self) -> Transport {
        Transport::Tcp
    }

    fn encoding(&self) -> Encoding {
        Encoding::Binary
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, WireError>> {
        loop {
            if let Some(frame) = binary::decode(&mut self.buf, self.max_frame)? {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.buf.is_empty() {
                // Drop our reference to the last read's allocation while idle.
                self.buf = BytesMut::new();
            }
            // A whole frame's length is known once its prefix is here (and was checked
            // against max_frame by decode above): read up to the end of it.
            let want = match binary::check(&self.buf, self.max_frame)? {
                None if self.buf.len() >= binary::PREFIX_LEN => {
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    (len as usize + binary::PREFIX_LEN).saturating_sub(self.buf.len())
                }
                _ => READ_CHUNK,
            };
            match ready!(poll_read(&self.stream, cx, &mut self.buf, want))? {
                0 => {
                    return Poll::Ready(if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(DecodeError::Malformed("connection closed inside a frame").into())
                    });
                }
                n => self.read += n,
            }
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        while !frames.is_empty() {
            // Many frames, one syscall.
            let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
            let n = frames
                .iter()
                .zip(slices.iter_mut())
                .map(|(frame, slice)| *slice = io::IoSlice::new(frame))
                .count();
            ready!(self.stream.poll_write_ready(cx))?;
            let written = match try_send(&self.stream, &slices[..n]) {
                Ok(written) => written,
                // Readiness was cleared: the next poll_write_ready registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += written;
            let mut left = written;
            while let Some(front) = frames.front_mut() {
                if left < front.len() {
                    front.advance(left);
                    self.partial = left > 0;
                    break;
                }
                left -= front.len();
                frames.pop_front();
                self.partial = false;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn take_bytes_written(&mut self) -> usize {
        std::mem::take(&mut self.written)
    }

    fn mid_frame(&self) -> bool {
        self.partial
    }

    fn set_mid_frame(&mut self) {
        self.partial = true;
    }

    fn direct(&self) -> Option<Arc<TcpStream>> {
        Some(self.stream.clone())
    }

    fn parkable(&self) -> bool {
        self.buf.is_empty() && !self.partial
    }

    fn park(self, held: Parked) -> Result<(), (Self, Parked)> {
        let max_frame = self.max_frame;
        // Dropped first: the socket can leave tokio's reactor only once the handle's is the
        // last reference to it.
        drop(self);
        park::park(held).map_err(|(stream, held)| (TcpWire::resume(stream, max_frame), held))
    }

    fn take_bytes_read(&mut self) -> usize {
        std::mem::take(&mut self.read)
    }

    async fn close(&mut self, _code: Code, _reason: &str) {
        // The stream is shared with the connection's handle, so no `&mut` shutdown: the same
        // FIN through the socket itself.
        let _ = socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write);
    }
}
