//! The transport seam: what turns bytes on a socket into a client's frames and back.
//!
//! A transport is a [`Wire`]. The gateway (`crate::gateway`) gives every wire the same session:
//! the handshake, the bindings, a byte-bounded outbound queue that other roles fill, the
//! delivery service, heartbeats, parking and the goodbye. A wire provides only its framing:
//! reading frames, writing batches of encoded frames, closing with a code, and, if it can hold
//! nothing of its own between frames, parking (waiting without a task) and resuming on the
//! same socket. Adding a transport is adding a module here and an accept loop that builds its
//! wire.
//!
//! - [`tcp`]: raw TCP, a stream of binary frames.
//! - [`ws`]: WebSocket (RFC 6455), one frame per message, binary or JSON text, on framing of
//!   tether's own (see [`tether_proto::ws`]).
//! - [`upgrade`]: the HTTP request that opens a WebSocket connection.
//! - [`mqtt`]: MQTT 3.1.1 and 5.0, translated to and from the session's frames.
//! - [`sse`]: Server-Sent Events, a stream of events and a POST route for what the client
//!   sends, for browsers behind proxies that strip the WebSocket upgrade.
//! - [`accepted`]: what a wire learns once its connection is accepted, for what it keeps of
//!   a device beyond one connection (MQTT's sessions and wills).
//!
//! Under each framing, a [`Carrier`] moves the bytes: [`Plain`], the socket itself, or
//! [`Tls`] over it; for MQTT, also [`ws::stream::WsStream`], binary WebSocket messages over
//! either.

pub mod accepted;
pub mod carrier;
pub mod mqtt;
pub mod sse;
pub mod tcp;
pub mod tls;
pub mod upgrade;
pub mod ws;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tether_core::Transport;
use tether_proto::ws::{ServerHeader, WsError};
use tether_proto::{Code, DecodeError, Frame};
use tokio::net::TcpStream;

use crate::link::{Binding, Encoding};

pub use accepted::{Accepted, Will, Wills};
pub use carrier::{Carrier, Plain};
pub use sse::SseWire;
pub use tcp::TcpWire;
pub use tls::Tls;
pub use ws::WsWire;

/// Why a wire gave no frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A message that is no tether frame: closed with one of tether's codes.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Frames that break WebSocket itself: closed with an RFC 6455 code, no `disconnect`.
    #[error(transparent)]
    WebSocket(#[from] WsError),
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

impl WireError {
    /// The code to close with, or `None` when the peer is simply gone.
    pub fn code(&self) -> Option<Code> {
        match self {
            WireError::Decode(e) => Some(e.code()),
            WireError::WebSocket(e) => Some(e.code()),
            WireError::Io(_) => None,
        }
    }
}

/// How a frame written straight to the socket, past the connection's task (see
/// `crate::gateway::handle::ConnHandle`), is framed on this transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Framing {
    /// As it is: the frames delimit themselves (raw TCP).
    #[default]
    Raw,
    /// As one WebSocket message, behind its header.
    WebSocket,
    /// Not at all: the carrier changes the bytes (TLS encrypts them with a session only the
    /// connection's task holds), so every frame goes through the queue and the task.
    Sealed,
}

impl Framing {
    /// The header that goes before a `len`-byte frame in `encoding`, if any.
    pub fn header(self, encoding: Encoding, len: usize) -> Option<ServerHeader> {
        match self {
            Framing::Raw | Framing::Sealed => None,
            Framing::WebSocket => Some(ServerHeader::new(ws::opcode(encoding), len)),
        }
    }

    /// Whether a frame may be written to the socket past the connection's task.
    pub fn direct(self) -> bool {
        self != Framing::Sealed
    }

    /// `framing`, or [`Framing::Sealed`] over a carrier that changes the bytes.
    fn over<C: Carrier>(self, carrier: &C) -> Framing {
        if carrier.sealed() {
            Framing::Sealed
        } else {
            self
        }
    }
}

/// What a connection needs from a transport.
///
/// # Contract
/// - Reads and writes are poll-based, so that a connection waiting for a frame or for a slow
///   client holds no future state of its own: its wakers live in the socket's registration.
/// - A wire never buffers more than one frame being read and the frames it was handed to
///   write; everything else waits in the connection's byte-bounded queue.
/// - Bad input is an error with a close code ([`WireError::code`]), never a panic.
pub trait Wire: Send + Sized + 'static {
    /// What the wire leaves behind while its connection waits without a task, to resume
    /// from: its carrier's (`()` for a plain socket, which holds all there is; a TLS
    /// session). [`std::convert::Infallible`] for a wire that never parks.
    type Rest: Send + 'static;

    fn transport(&self) -> Transport;

    /// The encoding frames to this client use (WebSocket: the one its `connect` used).
    fn encoding(&self) -> Encoding;

    /// Whether the client's encoding is known (WebSocket: once its first message came). Until
    /// then a `disconnect` could come in an encoding the client cannot read, so a wire that
    /// can say why in its close ([`Wire::close`]) is closed without one.
    fn encoding_known(&self) -> bool {
        true
    }

    /// The next frame from the client; `None` when it closed the connection.
    ///
    /// Bytes read before `Pending` are kept.
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

    /// Whether the server keeps the connection alive rather than its client (SSE: a client
    /// that has no way to send on the connection). The heartbeat sweep then queues an empty
    /// frame, which the wire writes as its keep-alive, when nothing was written for a heartbeat
    /// interval, and never closes the connection for the client's silence: a client that went
    /// away is found by the writes.
    fn keepalive(&self) -> bool {
        false
    }

    /// [`Wire::poll_send`] until everything is written, as a future.
    fn send(
        &mut self,
        frames: &mut VecDeque<Bytes>,
    ) -> impl Future<Output = io::Result<()>> + Send {
        std::future::poll_fn(move |cx| self.poll_send(cx, frames))
    }

    /// What the wire counts of its traffic.
    fn counts(&mut self) -> &mut Counts;

    /// Bytes of queued frames written since the last call: the transport's own framing and
    /// control frames are not counted, so that this is what leaves the queue's budget.
    fn take_bytes_written(&mut self) -> usize {
        std::mem::take(&mut self.counts().written)
    }

    /// Bytes received since the last call (for metrics).
    fn take_bytes_read(&mut self) -> usize {
        std::mem::take(&mut self.counts().read)
    }

    /// Whether a frame was left half-written: then no other frame may follow on this stream.
    fn mid_frame(&mut self) -> bool {
        self.counts().partial
    }

    /// The next frame to send is the rest of one already begun on the wire (by a direct
    /// write): it counts as half-written until it is out.
    fn set_mid_frame(&mut self) {
        self.counts().partial = true;
    }

    /// The socket, shared (for parking, and for writes that bypass the connection's task),
    /// and how such a write must frame a frame ([`Framing::Sealed`]: it may not).
    fn direct(&self) -> Option<(Arc<TcpStream>, Framing)> {
        None
    }

    /// Whether the wire holds nothing of its own (no frame half read or half written), so
    /// that its connection may wait without a task (see [`Wire::park`]).
    fn parkable(&self) -> bool {
        false
    }

    /// Gives the wire up while its connection waits without a task, keeping only its
    /// [`Wire::Rest`]; the socket stays with the connection. `Err` when it cannot
    /// ([`Wire::parkable`] is false).
    fn park(self) -> Result<Self::Rest, Self>;

    /// The wire again, on the socket of a connection that parked from it with `rest`,
    /// speaking `encoding`, with the connection's `bindings` (MQTT shares their app ids).
    fn resume(
        stream: Arc<TcpStream>,
        rest: Self::Rest,
        max_frame: u32,
        encoding: Encoding,
        bindings: &[Binding],
    ) -> Self;

    /// Closes the connection with `code` (WebSocket: a close frame), after what
    /// [`Wire::send`] wrote. Best effort.
    fn close(&mut self, code: Code, reason: &str) -> impl Future<Output = ()> + Send;

    /// Whether a new connection takes the place of the older ones of its device (same user
    /// and app, this transport), which are closed with 4211 `taken_over`: MQTT's session
    /// takeover (docs/mqtt.md 4.4). tether's own clients may hold several connections of a
    /// device at once.
    fn takes_over(&self) -> bool {
        false
    }

    /// The handshake accepted the connection; `connected` is written next. A wire that keeps
    /// something of its device beyond a connection (MQTT's sessions) reads it here. It never
    /// refuses: what it cannot read, it goes on without.
    fn accepted(&mut self, _: &Accepted<'_>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a wire counts of its traffic.
#[derive(Debug, Default)]
pub struct Counts {
    /// Bytes received since they were last taken.
    read: usize,
    /// Bytes of queued frames written since they were last taken.
    written: usize,
    /// The front frame of the last write is partly on the wire.
    partial: bool,
}

/// Slices per vectored write.
const MAX_IOVECS: usize = 64;

/// Reads more of the client's bytes into `buf` (see [`Carrier::poll_read`]), counting them: `Ok(true)`
/// when some came. At the end of the stream, `Ok(false)` when it ended `between` frames,
/// otherwise the error that it ended inside one (`cut` says inside what).
fn poll_more<C: Carrier>(
    carrier: &mut C,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
    counts: &mut Counts,
    (between, cut): (bool, &'static str),
) -> Poll<Result<bool, WireError>> {
    let read = ready!(carrier.poll_read(cx, buf, want)).map_err(|e| {
        // A WebSocket stream's framing error: closed with its code, not taken as gone.
        match ws::stream::ws_error(&e) {
            Some(ws) => WireError::WebSocket(ws),
            None => WireError::Io(e),
        }
    })?;
    match read {
        0 if between => Poll::Ready(Ok(false)),
        0 => Poll::Ready(Err(DecodeError::Malformed(cut).into())),
        n => {
            counts.read += n;
            Poll::Ready(Ok(true))
        }
    }
}
