//! WebSocket: one tether frame per message, binary or JSON text, over our own framing (see
//! [`tether_proto::ws`]) on the socket the upgrade came in on.
//!
//! Framing the messages here rather than in a WebSocket library keeps everything the
//! connection holds in sight: between messages the wire holds nothing, so an idle WebSocket
//! connection parks like a raw TCP one (see [`Wire::parkable`]), and fan-outs write its frames
//! to the socket directly, each behind its own WebSocket header (see [`Framing::WebSocket`]).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tether_core::Transport;
use tether_proto::ws::{self, Opcode, ServerHeader};
use tether_proto::{Code, DecodeError, Frame, binary, json};
use tokio::net::TcpStream;

use super::{Carrier, Counts, Framing, MAX_IOVECS, Plain, Wire, WireError, poll_more};
use crate::link::Encoding;

/// A WebSocket connection after its upgrade.
///
/// # Memory
/// Like [`super::TcpWire`]: the read buffer exists only while a frame is arriving, and a
/// message in fragments (browsers send theirs whole) only while it is.
#[derive(Debug)]
pub struct WsWire<C = Plain> {
    /// The socket, or TLS over it (`wss://`).
    carrier: C,
    /// Read and not yet taken: the front is the next frame's header.
    buf: BytesMut,
    /// A message arriving in fragments: its opcode and its payload so far.
    fragments: Option<(Opcode, BytesMut)>,
    /// A pong to write before the next frame that is not the rest of one already begun.
    control: Bytes,
    /// Part of `control` is on the wire: it cannot be replaced by a newer one.
    control_begun: bool,
    encoding: Encoding,
    encoding_fixed: bool,
    /// The longest message: the frame limit plus the binary length prefix (JSON frames get
    /// the same budget).
    max_message: usize,
    max_frame: u32,
    /// `partial`: the front frame is the rest of one whose header is on the wire, written as
    /// it is.
    counts: Counts,
    /// Bytes at the start of such a front that are the rest of its header, which the queue's
    /// budget never counted (a write that ended inside a header).
    front_header: u8,
}

impl WsWire {
    /// A wire for a socket whose upgrade has been answered; `rest`: what the client sent after
    /// its request.
    pub fn new(stream: TcpStream, rest: BytesMut, max_frame: u32) -> Self {
        Self::over(Plain::new(stream), rest, max_frame)
    }
}

impl<C: Carrier> WsWire<C> {
    /// A wire over `carrier`, on which the upgrade has been answered; `rest`: what the client
    /// sent after its request.
    pub fn over(carrier: C, rest: BytesMut, max_frame: u32) -> Self {
        let mut wire = Self::with(carrier, max_frame, Encoding::Binary);
        wire.encoding_fixed = false;
        wire.counts.read = rest.len();
        wire.buf = rest;
        wire
    }

    fn with(carrier: C, max_frame: u32, encoding: Encoding) -> Self {
        WsWire {
            carrier,
            buf: BytesMut::new(),
            fragments: None,
            control: Bytes::new(),
            control_begun: false,
            encoding,
            encoding_fixed: true,
            max_message: max_frame as usize + binary::PREFIX_LEN,
            max_frame,
            counts: Counts::default(),
            front_header: 0,
        }
    }

    fn opcode(&self) -> Opcode {
        opcode(self.encoding)
    }

    /// The next whole message in `buf`, answering pings on the way, or how many more bytes
    /// it needs at least, or [`Next::Closed`] when the client sent a close frame.
    fn next_message(&mut self, cx: &Context<'_>) -> Result<Next, DecodeError> {
        loop {
            let Some(header) = ws::parse_header(&self.buf, self.max_message)? else {
                return Ok(Next::Want(
                    ws::MAX_CLIENT_HEADER.saturating_sub(self.buf.len()),
                ));
            };
            let whole = header.header_len + header.len;
            if self.buf.len() < whole {
                return Ok(Next::Want(whole - self.buf.len()));
            }
            let mut payload = self.buf.split_to(whole);
            payload.advance(header.header_len);
            ws::unmask(&mut payload, header.mask);
            match header.opcode {
                Opcode::Ping => self.pong(&payload, cx),
                Opcode::Pong => {}
                Opcode::Close => {
                    self.queue_control(&ws::close_reply(&payload));
                    return Ok(Next::Closed);
                }
                Opcode::Text | Opcode::Binary if self.fragments.is_some() => {
                    return Err(DecodeError::Malformed(
                        "websocket: a message began inside a fragmented one",
                    ));
                }
                Opcode::Text | Opcode::Binary if header.fin => {
                    return Ok(Next::Message(header.opcode, payload.freeze()));
                }
                Opcode::Text | Opcode::Binary => self.fragments = Some((header.opcode, payload)),
                Opcode::Continuation => {
                    let Some((opcode, message)) = &mut self.fragments else {
                        return Err(DecodeError::Malformed(
                            "websocket: a continuation frame with no message to continue",
                        ));
                    };
                    let len = message.len() + payload.len();
                    if len > self.max_message {
                        return Err(DecodeError::TooLarge {
                            len: len as u64,
                            max: self.max_frame,
                        });
                    }
                    message.extend_from_slice(&payload);
                    if header.fin {
                        let opcode = *opcode;
                        let (_, message) = self.fragments.take().expect("checked above");
                        return Ok(Next::Message(opcode, message.freeze()));
                    }
                }
            }
        }
    }

    /// Queues the answer to a ping. Only the latest ping is answered (RFC 6455, 5.5.3) unless
    /// an earlier pong is already part written. The task is woken so that its next pass writes
    /// the pong (see [`Wire::wants_write`]); while it is still in its handshake, the pong goes
    /// out with `connected`.
    fn pong(&mut self, payload: &[u8], cx: &Context<'_>) {
        if !self.control_begun {
            self.control = ws::control(Opcode::Pong, payload).into();
            cx.waker().wake_by_ref();
        }
    }

    /// Queues a control frame after what is queued already if that is part written, else in
    /// its place (an unanswered ping's pong needs no sending once the client closes).
    fn queue_control(&mut self, frame: &[u8]) {
        self.control = if self.control_begun {
            [&self.control[..], frame].concat().into()
        } else {
            Bytes::copy_from_slice(frame)
        };
    }

    /// Takes `written` bytes of a write off the front of what it held: the rest of the front
    /// frame (if begun), then the pong, then frames each behind a header.
    /// Counts the queued bytes among them in `written` (headers and pongs are not queued).
    fn consume(&mut self, frames: &mut VecDeque<Bytes>, mut left: usize) {
        if self.counts.partial
            && let Some(front) = frames.front_mut()
        {
            let taken = left.min(front.len());
            let header = taken.min(usize::from(self.front_header));
            // At most `front_header`, a u8.
            self.front_header -= header as u8;
            self.counts.written += taken - header;
            if left < front.len() {
                front.advance(left);
                return;
            }
            left -= front.len();
            frames.pop_front();
            self.counts.partial = false;
        }
        if !self.control.is_empty() {
            if left < self.control.len() {
                self.control.advance(left);
                self.control_begun |= left > 0;
                return;
            }
            left -= self.control.len();
            self.control = Bytes::new();
            self.control_begun = false;
        }
        let opcode = self.opcode();
        while left > 0 {
            let Some(front) = frames.front_mut() else {
                return;
            };
            let header = ServerHeader::new(opcode, front.len());
            let header = header.as_bytes();
            if left >= header.len() + front.len() {
                left -= header.len() + front.len();
                self.counts.written += front.len();
                frames.pop_front();
                continue;
            }
            // Torn: the rest goes out as it is, before anything else.
            if left < header.len() {
                // Inside the header (a full socket buffer at exactly that point): rare enough
                // to pay a copy.
                let mut rest = BytesMut::with_capacity(header.len() - left + front.len());
                rest.extend_from_slice(&header[left..]);
                rest.extend_from_slice(front);
                *front = rest.freeze();
                // At most a header's 10 bytes.
                self.front_header = (header.len() - left) as u8;
            } else {
                front.advance(left - header.len());
                self.counts.written += left - header.len();
            }
            self.counts.partial = true;
            return;
        }
    }
}

/// The opcode of the messages that carry frames in `encoding`.
pub fn opcode(encoding: Encoding) -> Opcode {
    match encoding {
        Encoding::Binary => Opcode::Binary,
        Encoding::Json => Opcode::Text,
    }
}

/// What [`WsWire::next_message`] found.
enum Next {
    /// A whole message.
    Message(Opcode, Bytes),
    /// Not enough bytes: at least this many more are needed.
    Want(usize),
    /// The client sent a close frame (answered).
    Closed,
}

impl<C: Carrier> Wire for WsWire<C> {
    type Rest = C::Rest;

    fn transport(&self) -> Transport {
        Transport::Ws
    }

    fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, WireError>> {
        loop {
            let want = match self.next_message(cx)? {
                Next::Message(opcode, payload) => {
                    let encoding = match opcode {
                        Opcode::Text => Encoding::Json,
                        _ => Encoding::Binary,
                    };
                    if !self.encoding_fixed {
                        self.encoding = encoding;
                        self.encoding_fixed = true;
                    }
                    let frame = match encoding {
                        Encoding::Binary => binary::parse(payload, self.max_frame),
                        Encoding::Json => json::decode(&payload),
                    };
                    return Poll::Ready(frame.map(Some).map_err(Into::into));
                }
                // The answering close is written by the task once no direct write can follow it
                // (see `crate::gateway::io`).
                Next::Closed => return Poll::Ready(Ok(None)),
                Next::Want(want) => want,
            };
            if self.buf.is_empty() {
                // Drop our reference to the last read's allocation while idle.
                self.buf = BytesMut::new();
            }
            // A client that goes without a close frame between messages has simply gone;
            // inside one, its message is cut.
            let between = self.buf.is_empty() && self.fragments.is_none();
            let end = (between, "connection closed inside a message");
            let (carrier, buf, counts) = (&mut self.carrier, &mut self.buf, &mut self.counts);
            if !ready!(poll_more(carrier, cx, buf, want, counts, end))? {
                return Poll::Ready(Ok(None));
            }
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        let opcode = self.opcode();
        while !frames.is_empty() || !self.control.is_empty() {
            // Many messages, one syscall: the rest of a frame begun, the pong, then each frame
            // behind its header.
            let raw = usize::from(self.counts.partial && !frames.is_empty());
            let control = usize::from(!self.control.is_empty());
            let headed = (frames.len() - raw).min((MAX_IOVECS - raw - control) / 2);
            let mut headers = [ServerHeader::new(opcode, 0); MAX_IOVECS / 2];
            for (header, frame) in headers.iter_mut().zip(frames.iter().skip(raw)) {
                *header = ServerHeader::new(opcode, frame.len());
            }
            let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
            let first = frames.iter().take(raw).map(|rest| &rest[..]);
            let pong = Some(&self.control[..]).filter(|_| control == 1);
            let headed = headers
                .iter()
                .zip(frames.iter().skip(raw))
                .take(headed)
                .flat_map(|(header, frame)| [header.as_bytes(), &frame[..]]);
            let n = first
                .chain(pong)
                .chain(headed)
                .zip(slices.iter_mut())
                .map(|(bytes, slice)| *slice = io::IoSlice::new(bytes))
                .count();
            let written = ready!(self.carrier.poll_write(cx, &slices[..n]))?;
            self.consume(frames, written);
        }
        self.carrier.poll_flush(cx)
    }

    fn wants_write(&self) -> bool {
        !self.control.is_empty() || self.carrier.unflushed()
    }

    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }

    fn direct(&self) -> Option<(Arc<TcpStream>, Framing)> {
        Some((
            self.carrier.socket(),
            Framing::WebSocket.over(&self.carrier),
        ))
    }

    fn parkable(&self) -> bool {
        self.buf.is_empty()
            && self.fragments.is_none()
            && self.control.is_empty()
            && !self.counts.partial
            && !self.carrier.busy()
    }

    fn park(self) -> Result<C::Rest, Self> {
        if self.parkable() {
            Ok(self.carrier.park())
        } else {
            Err(self)
        }
    }

    fn resume(stream: Arc<TcpStream>, rest: C::Rest, max_frame: u32, encoding: Encoding) -> Self {
        // Resumed after its handshake: the encoding is the one its `connect` chose.
        Self::with(C::resume(stream, rest), max_frame, encoding)
    }

    async fn close(&mut self, code: Code, reason: &str) {
        // A pong part written goes out first.
        self.queue_control(&ws::control(
            Opcode::Close,
            &ws::close_payload(code.0, reason),
        ));
        let _ = self.send(&mut VecDeque::new()).await;
        self.carrier.shutdown().await;
    }
}
