//! Server-Sent Events: a stream of the server's frames as events, on the socket of a
//! `GET /v1/sse` request, and a companion `POST /v1/sse/<session>` route that takes what the
//! client sends; for browsers behind proxies that strip the WebSocket upgrade. Both are served
//! on the WebSocket listener (`crate::gateway` routes its requests).
//!
//! - this module: [`SseWire`], the stream.
//! - [`event`]: events, and the positions their ids carry ([`event::Positions`]).
//! - [`request`]: the requests: heads, routes, a stream's `connect`, a POST's frames.
//! - [`session`]: the sessions POSTs are for, and their ids.
//!
//! The wire reads no frame from its socket: its client's frames are the `connect` (and
//! subscribes) made from the stream's request, then the frames POSTed to its session, which
//! the POST route leaves in the [`session::Session`] and wakes the connection for. What it
//! writes is events: every frame queued for the client becomes one (see [`event`]), written
//! through the wire (never directly by a fan-out: the `id:` is this client's alone), and a
//! frame with no bytes, which the heartbeat sweep queues when nothing was written for an
//! interval, becomes a comment line that keeps proxies from closing the stream.
//!
//! The response head is written with the first event, so that a `connect` refused for good
//! (a bad token, an unknown app) is answered with an HTTP error status, which stops
//! `EventSource` (it never reconnects after one), while a refusal that asks the client to come
//! back (a drain, a limit) is a `200` stream with its `disconnect` event, after which
//! `EventSource` reconnects by itself.
//!
//! # Memory
//! Between events the wire holds its session (shared with the POST route) and the client's
//! positions, and it parks with them (its [`SseRest`]): no buffer of its own while idle. The
//! events of a write are built in one buffer, allocated while they are being written.

pub mod event;
pub mod request;
pub mod session;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tether_core::{ConnId, Transport};
use tether_proto::{Body, Code, DecodeError, Frame, Group};
use tokio::net::TcpStream;

use super::{Carrier, Counts, Framing, Plain, Wire, WireError};
use crate::link::{Binding, Encoding};
use event::{Head, Positions};
use session::Session;

/// Events built at once into the write buffer, at least one: beyond this, the next write
/// builds more.
const CHUNK: usize = 16 * 1024;

/// A stream's response head before its first event.
#[derive(Debug)]
struct Start {
    /// Header lines the answer carries besides its own (CORS), each ending in CRLF.
    headers: String,
    /// The client's silence allowed, in heartbeats, for the socket's user timeout.
    heartbeat_missed: u32,
}

/// An SSE stream.
#[derive(Debug)]
pub struct SseWire<C = Plain> {
    carrier: C,
    session: Arc<Session>,
    positions: Positions,
    /// Until the first event is written.
    start: Option<Box<Start>>,
    /// Frames made from the request, not yet handed out: `connect`, then its subscribes.
    made: VecDeque<Frame>,
    /// Events being written, from `sent` on.
    out: BytesMut,
    sent: usize,
    /// For each frame whose event is in `out`: where the event ends, and the frame's length
    /// (what leaves the queue's budget once the event is out).
    events: VecDeque<(usize, usize)>,
    /// The request was answered with an error status: nothing more is written.
    refused: bool,
    counts: Counts,
}

/// What a parked stream keeps.
#[derive(Debug)]
pub struct SseRest<R> {
    carrier: R,
    session: Arc<Session>,
    positions: Positions,
}

/// What a stream is opened with.
#[derive(Debug)]
pub struct Opened {
    pub session: Arc<Session>,
    /// The frames of its request (`connect` first) and where the client stands.
    pub frames: Vec<Frame>,
    pub positions: Positions,
    /// Header lines for the answer (CORS), each ending in CRLF.
    pub headers: String,
    pub heartbeat_missed: u32,
}

impl SseWire {
    pub fn new(stream: TcpStream, opened: Opened) -> Self {
        Self::over(Plain::new(stream), opened)
    }
}

impl<C: Carrier> SseWire<C> {
    /// A stream over `carrier` whose request (read whole, nothing after it) was `opened`.
    pub fn over(carrier: C, opened: Opened) -> Self {
        SseWire {
            start: Some(Box::new(Start {
                headers: opened.headers,
                heartbeat_missed: opened.heartbeat_missed,
            })),
            made: opened.frames.into(),
            ..Self::resumed(carrier, opened.session, opened.positions)
        }
    }

    fn resumed(carrier: C, session: Arc<Session>, positions: Positions) -> Self {
        SseWire {
            carrier,
            session,
            positions,
            start: None,
            made: VecDeque::new(),
            out: BytesMut::new(),
            sent: 0,
            events: VecDeque::new(),
            refused: false,
            counts: Counts::default(),
        }
    }

    /// Notes what a frame of the client's says of where it stands: a subscribe with `since`
    /// holds that offset until the subscription's answer tells more.
    fn note_inbound(&mut self, frame: &Frame) {
        if let Body::Subscribe(s) = &frame.body
            && let Some(since) = s.since
            && self.positions.offset(&s.app, &s.topic).is_none()
        {
            self.positions.set(&s.app, Some(&s.topic), since);
        }
    }

    /// Builds events from the front of `frames` into `out` (at least one frame's worth, at
    /// most about [`CHUNK`]).
    fn fill(&mut self, frames: &mut VecDeque<Bytes>) {
        while let Some(frame) = frames.front() {
            if self.out.len() >= CHUNK {
                return;
            }
            let len = frame.len();
            if let Some(frame) = frames.pop_front() {
                self.event(&frame);
            }
            self.events.push_back((self.out.len(), len));
        }
    }

    /// Appends `frame`'s event to `out`, after the response head if it is the first.
    fn event(&mut self, frame: &[u8]) {
        if self.refused {
            return;
        }
        let head = event::head(frame);
        if let Some(start) = self.start.take() {
            self.respond(&start, head.as_ref());
            if self.refused {
                return;
            }
        }
        if frame.is_empty() {
            self.out.put_slice(event::KEEPALIVE);
            return;
        }
        let Some(head) = head else {
            event::push_event(&mut self.out, None, frame);
            return;
        };
        match &*head.op {
            "connected" => self.connected(&head),
            "disconnect" => match head.retry_after_ms {
                Some(ms) if ms > 0 => event::retry(&mut self.out, ms),
                _ => {}
            },
            _ => {}
        }
        let id = self.positions.apply(&head).then(|| self.positions.id());
        event::push_event(&mut self.out, id.as_deref(), frame);
    }

    /// Writes the response head: an error status for a first frame that refuses the client
    /// for good (the answer is then complete), else `200` and the stream.
    fn respond(&mut self, start: &Start, head: Option<&Head<'_>>) {
        let refusal = head
            .filter(|h| h.op == "disconnect")
            .and_then(|h| Some((Code(h.code?), h.reason.as_deref().unwrap_or(""))))
            .filter(|(code, _)| code.group() == Group::DoNotReconnect);
        let out = &mut self.out;
        if let Some((code, reason)) = refusal {
            let status = refusal_status(code);
            let body = serde_json::json!({ "error": reason, "code": code.label() }).to_string();
            out.put_slice(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Cache-Control: no-store\r\nConnection: close\r\n{}\r\n",
                    body.len(),
                    start.headers
                )
                .as_bytes(),
            );
            out.put_slice(body.as_bytes());
            self.refused = true;
            return;
        }
        out.put_slice(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                 X-Accel-Buffering: no\r\nConnection: close\r\n{}\r\n",
                start.headers
            )
            .as_bytes(),
        );
        if let Some(head) = head
            && head.op == "connected"
            && let Some(ms) = head.heartbeat_ms
        {
            // A client that vanished without a word is found once the keep-alives written to
            // it stay unacknowledged this long, not at TCP's own timeout (many minutes).
            let timeout = Duration::from_millis(u64::from(ms) * u64::from(start.heartbeat_missed));
            let socket = self.carrier.socket();
            let _ = socket2::SockRef::from(&*socket).set_tcp_user_timeout(Some(timeout));
        }
    }

    /// The handshake succeeded: posts go to the connection, and the client learns its session
    /// in an event before `connected`.
    fn connected(&mut self, head: &Head<'_>) {
        let (Some(conn), Some(node)) = (head.conn_id, head.node.as_deref()) else {
            return;
        };
        self.session.connected(ConnId(conn));
        event::session_event(&mut self.out, &session::id(node, self.session.key()));
    }

    /// Takes `written` bytes of `out` as written, counting the frames whose events are out.
    fn consume(&mut self, written: usize) {
        self.sent += written;
        while let Some(&(end, len)) = self.events.front() {
            if end > self.sent {
                break;
            }
            self.counts.written += len;
            self.events.pop_front();
        }
        if self.sent == self.out.len() {
            // Nothing is kept between writes.
            self.out = BytesMut::new();
            self.sent = 0;
            self.events = VecDeque::new();
        }
    }
}

/// The HTTP status of a `connect` refused for good: 401 for a token, 404 for an app, 403 for
/// a kick, 400 for the rest of the request.
fn refusal_status(code: Code) -> &'static str {
    match code {
        Code::BAD_TOKEN | Code::TOKEN_EXPIRED => "401 Unauthorized",
        Code::UNKNOWN_APP | Code::APP_REMOVED => "404 Not Found",
        Code::KICKED => "403 Forbidden",
        _ => "400 Bad Request",
    }
}

impl<C: Carrier> Wire for SseWire<C> {
    type Rest = SseRest<C::Rest>;

    fn transport(&self) -> Transport {
        Transport::Sse
    }

    fn encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, WireError>> {
        if let Some(frame) = self.made.pop_front() {
            self.note_inbound(&frame);
            return Poll::Ready(Ok(Some(frame)));
        }
        if let Some((frame, size)) = self.session.take() {
            self.counts.read += size;
            self.note_inbound(&frame);
            return Poll::Ready(Ok(Some(frame)));
        }
        // The socket only tells that the client went away: it sends nothing after its request.
        let mut buf = BytesMut::new();
        match ready!(self.carrier.poll_read(cx, &mut buf, 1))? {
            0 => Poll::Ready(Ok(None)),
            _ => Poll::Ready(Err(DecodeError::Malformed(
                "an SSE stream takes nothing after its request: POST to its session",
            )
            .into())),
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.sent == self.out.len() {
                self.fill(frames);
                if self.out.is_empty() {
                    break;
                }
            }
            let slice = [io::IoSlice::new(&self.out[self.sent..])];
            let written = ready!(self.carrier.poll_write(cx, &slice))?;
            self.consume(written);
        }
        self.carrier.poll_flush(cx)
    }

    fn wants_write(&self) -> bool {
        self.sent < self.out.len() || self.carrier.unflushed()
    }

    fn keepalive(&self) -> bool {
        true
    }

    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }

    fn direct(&self) -> Option<(Arc<TcpStream>, Framing)> {
        // Events carry this client's ids: every frame goes through the wire.
        Some((self.carrier.socket(), Framing::Sealed))
    }

    fn parkable(&self) -> bool {
        self.start.is_none()
            && self.out.is_empty()
            && self.made.is_empty()
            && !self.counts.partial
            && !self.carrier.busy()
            && self.session.is_empty()
    }

    fn park(self) -> Result<Self::Rest, Self> {
        if !self.parkable() {
            return Err(self);
        }
        Ok(SseRest {
            carrier: self.carrier.park(),
            session: self.session,
            positions: self.positions,
        })
    }

    fn resume(
        stream: Arc<TcpStream>,
        rest: Self::Rest,
        _: u32,
        _: Encoding,
        _: &[Binding],
    ) -> Self {
        Self::resumed(
            C::resume(stream, rest.carrier),
            rest.session,
            rest.positions,
        )
    }

    async fn close(&mut self, _code: Code, _reason: &str) {
        // The `disconnect` event went out with `send`; the stream ends with the connection.
        self.carrier.shutdown().await;
    }
}
