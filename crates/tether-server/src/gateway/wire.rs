//! One interface over the transports: raw TCP and WebSocket.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tether_core::Transport;
use tether_proto::{Code, DecodeError, Frame, binary, json};

use tokio::net::TcpStream;

use super::park::{self, Parked};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::table::Encoding;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
}

impl WireError {
    /// The code to close with, or `None` when the peer is simply gone.
    pub fn code(&self) -> Option<Code> {
        use tokio_tungstenite::tungstenite::Error as E;
        match self {
            WireError::Decode(e) => Some(e.code()),
            WireError::Io(_) => None,
            WireError::Ws(E::Capacity(_)) => Some(Code::FRAME_TOO_LARGE),
            WireError::Ws(E::Protocol(_) | E::Utf8(_)) => Some(Code::PROTOCOL),
            WireError::Ws(_) => None,
        }
    }
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

    /// [`Wire::poll_send`] until everything is written, as a future.
    fn send(
        &mut self,
        frames: &mut VecDeque<Bytes>,
    ) -> impl Future<Output = io::Result<()>> + Send {
        std::future::poll_fn(move |cx| self.poll_send(cx, frames))
    }

    /// Bytes written since the last call.
    fn take_bytes_written(&mut self) -> usize;

    /// Whether a frame was left half-written: then no other frame may follow on this stream.
    fn mid_frame(&self) -> bool;

    /// The next frame to send is the rest of one already begun on the wire (by a direct
    /// write): it counts as half-written until it is out.
    fn set_mid_frame(&mut self) {}

    /// The socket, shared, for writes that bypass the connection's task (raw TCP only).
    fn direct(&self) -> Option<Arc<TcpStream>> {
        None
    }

    /// Whether the wire holds nothing of its own (no frame half read or half written), so
    /// that the connection can wait without its task and a new wire can take over the socket
    /// (raw TCP only; see `super::park`).
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

    /// Closes the connection with `code` (WebSocket: a close frame). Best effort.
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

/// A WebSocket close frame's reason: 125 bytes of payload less the 2-byte code.
const MAX_CLOSE_REASON: usize = 123;

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

/// Frames per vectored write.
const MAX_IOVECS: usize = 64;

/// Smallest read: most frames (pings, acks) are far smaller.
const READ_CHUNK: usize = 512;

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
            ready!(self.stream.poll_read_ready(cx))?;
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
            self.buf.reserve(want.max(READ_CHUNK));
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    return Poll::Ready(if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(DecodeError::Malformed("connection closed inside a frame").into())
                    });
                }
                Ok(n) => self.read += n,
                // Readiness was cleared: the next poll_read_ready registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e.into())),
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
            let written = match self.stream.try_write_vectored(&slices[..n]) {
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

/// WebSocket: one frame per message, binary or JSON text.
#[derive(Debug)]
pub struct WsWire {
    ws: WebSocketStream<TcpStream>,
    encoding: Encoding,
    encoding_fixed: bool,
    max_frame: u32,
    read: usize,
    written: usize,
}

impl WsWire {
    pub fn new(ws: WebSocketStream<TcpStream>, max_frame: u32) -> Self {
        WsWire {
            ws,
            encoding: Encoding::Binary,
            encoding_fixed: false,
            max_frame,
            read: 0,
            written: 0,
        }
    }

    fn fix_encoding(&mut self, encoding: Encoding) {
        if !self.encoding_fixed {
            self.encoding = encoding;
            self.encoding_fixed = true;
        }
    }
}

impl Wire for WsWire {
    fn transport(&self) -> Transport {
        Transport::Ws
    }

    fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, WireError>> {
        loop {
            let Some(message) = ready!(self.ws.poll_next_unpin(cx)) else {
                return Poll::Ready(Ok(None));
            };
            let frame = match message? {
                Message::Binary(bytes) => {
                    self.read += bytes.len();
                    self.fix_encoding(Encoding::Binary);
                    binary::parse(bytes, self.max_frame)
                }
                Message::Text(text) => {
                    self.read += text.len();
                    self.fix_encoding(Encoding::Json);
                    json::decode(text.as_bytes())
                }
                Message::Close(_) => return Poll::Ready(Ok(None)),
                // Control frames: tungstenite answers pings itself; they keep nothing alive
                // here, since the protocol's own heartbeat is what counts.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Poll::Ready(frame.map(Some).map_err(Into::into));
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        // tungstenite keeps message boundaries itself: a message it accepted is written whole
        // (it holds what the socket has not taken yet), so no frame is ever torn here.
        // Sink::poll_ready is not used: it answers Ready while tungstenite still holds bytes.
        while !frames.is_empty() {
            // Hand tungstenite a message only once its buffer is empty, so that the buffer
            // never holds more than one message and the control replies it adds itself.
            ready!(self.ws.poll_flush_unpin(cx)).map_err(io::Error::other)?;
            let Some(frame) = frames.pop_front() else {
                break;
            };
            self.written += frame.len();
            let message = match self.encoding {
                Encoding::Binary => Message::Binary(frame),
                Encoding::Json => Message::Text(Utf8Bytes::try_from(frame).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "a JSON frame is not UTF-8")
                })?),
            };
            self.ws
                .start_send_unpin(message)
                .map_err(io::Error::other)?;
        }
        self.ws.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    fn take_bytes_written(&mut self) -> usize {
        std::mem::take(&mut self.written)
    }

    fn mid_frame(&self) -> bool {
        false
    }

    fn take_bytes_read(&mut self) -> usize {
        std::mem::take(&mut self.read)
    }

    async fn close(&mut self, code: Code, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code.0),
            reason: truncate_utf8(reason, MAX_CLOSE_REASON).to_owned().into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}
