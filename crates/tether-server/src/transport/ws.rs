//! WebSocket: one tether frame per message, binary or JSON text, over our own framing (see
//! [`tether_proto::ws`]) on the socket the upgrade came in on.
//!
//! Framing the messages here rather than in a WebSocket library keeps everything the
//! connection holds in sight: between messages the wire holds nothing, so an idle WebSocket
//! connection parks like a raw TCP one (see [`Wire::parkable`]), and fan-outs write its frames
//! to the socket directly, each behind its own WebSocket header (see [`Framing::WebSocket`]).
//!
//! `echo`: the test mode in which a connection echoes its messages instead (Autobahn).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tether_core::Transport;
use tether_proto::ws::{self, Opcode, ServerHeader, Utf8Check, WsError};
use tether_proto::{Code, Frame, binary, json};
use tokio::net::TcpStream;

use super::{Carrier, Counts, Framing, MAX_IOVECS, Plain, Wire, WireError, poll_more};
use crate::link::{Binding, Encoding};

mod control;
mod echo;
pub mod stream;

use control::Controls;

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
    /// The UTF-8 check of the text message arriving, fed as its bytes arrive.
    utf8: Utf8Check,
    /// Of the front frame, when it is text and not all there: payload bytes already unmasked
    /// and fed to `utf8`.
    checked: usize,
    /// Control frames (pongs, a close) to write before the next frame that is not the rest
    /// of one already begun.
    control: Controls,
    encoding: Encoding,
    /// The encoding is the connection's (agreed in the upgrade, or set by the first
    /// message): a message in the other is refused.
    encoding_fixed: bool,
    /// The longest binary message: the frame limit plus the binary length prefix (a text
    /// message, a JSON frame, has no prefix: at most `max_frame`).
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
    /// `agreed`: the encoding of the subprotocol agreed in the upgrade, if any.
    pub fn new(
        stream: TcpStream,
        rest: BytesMut,
        max_frame: u32,
        agreed: Option<Encoding>,
    ) -> Self {
        Self::over(Plain::new(stream), rest, max_frame, agreed)
    }
}

impl<C: Carrier> WsWire<C> {
    /// A wire over `carrier`, on which the upgrade has been answered; `rest`: what the client
    /// sent after its request. With a subprotocol `agreed`, the connection speaks its encoding
    /// from the start; without, the client's first message sets it.
    pub fn over(carrier: C, rest: BytesMut, max_frame: u32, agreed: Option<Encoding>) -> Self {
        let mut wire = Self::with(carrier, max_frame, agreed.unwrap_or(Encoding::Binary));
        wire.encoding_fixed = agreed.is_some();
        wire.counts.read = rest.len();
        wire.buf = rest;
        wire
    }

    fn with(carrier: C, max_frame: u32, encoding: Encoding) -> Self {
        WsWire {
            carrier,
            buf: BytesMut::new(),
            fragments: None,
            utf8: Utf8Check::default(),
            checked: 0,
            control: Controls::default(),
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
    ///
    /// Everything a header alone can refuse (sizes, fragments out of order, a message in the
    /// other encoding) is refused before its payload is buffered; a text message's UTF-8 is
    /// checked as its bytes arrive, so that invalid text is refused when it comes (RFC 6455,
    /// 8.1), not when its frame ends.
    fn next_message(&mut self, cx: &Context<'_>) -> Result<Next, WsError> {
        loop {
            let header = match ws::parse_header(&self.buf, self.max_message) {
                Ok(Some(header)) => header,
                Ok(None) => {
                    return Ok(Next::Want(
                        ws::MAX_CLIENT_HEADER.saturating_sub(self.buf.len()),
                    ));
                }
                Err(WsError::TooBig { len, .. }) => {
                    // The opcode's bits: text, or a continuation of text?
                    let text = match self.buf[0] & 0x0F {
                        0x1 => true,
                        0x0 => self.in_text(),
                        _ => false,
                    };
                    return Err(self.too_big(text, len));
                }
                Err(e) => return Err(e),
            };
            let text = match header.opcode {
                Opcode::Text | Opcode::Binary if self.fragments.is_some() => {
                    return Err(WsError::Protocol("a message began inside a fragmented one"));
                }
                Opcode::Continuation if self.fragments.is_none() => {
                    return Err(WsError::Protocol(
                        "a continuation frame with no message to continue",
                    ));
                }
                Opcode::Text | Opcode::Binary
                    if self.encoding_fixed && header.opcode != self.opcode() =>
                {
                    return Err(WsError::UnsupportedData(match self.encoding {
                        Encoding::Json => "a binary message on a connection that speaks JSON",
                        Encoding::Binary => {
                            "a text message on a connection that speaks the binary encoding"
                        }
                    }));
                }
                Opcode::Text => true,
                Opcode::Continuation => self.in_text(),
                _ => false,
            };
            if !header.opcode.is_control() {
                let so_far = self.fragments.as_ref().map_or(0, |(_, m)| m.len());
                // Both at most `max_message`.
                let len = so_far + header.len;
                let max = if text {
                    self.max_frame as usize
                } else {
                    self.max_message
                };
                if len > max {
                    return Err(self.too_big(text, len as u64));
                }
            }
            let whole = header.header_len + header.len;
            if self.buf.len() < whole {
                if text {
                    self.check_arrived(&header)?;
                }
                return Ok(Next::Want(whole - self.buf.len()));
            }
            let mut payload = self.buf.split_to(whole);
            payload.advance(header.header_len);
            let checked = std::mem::take(&mut self.checked);
            ws::unmask_at(&mut payload[checked..], header.mask, checked);
            if text {
                self.utf8.feed(&payload[checked..])?;
                if header.fin {
                    self.utf8.finish()?;
                }
            }
            match header.opcode {
                Opcode::Ping => self.pong(&payload, cx),
                Opcode::Pong => {}
                Opcode::Close => {
                    self.control.push(&ws::close_reply(&payload));
                    return Ok(Next::Closed);
                }
                Opcode::Text | Opcode::Binary if header.fin => {
                    return Ok(Next::Message(header.opcode, payload.freeze()));
                }
                Opcode::Text | Opcode::Binary => self.fragments = Some((header.opcode, payload)),
                Opcode::Continuation => {
                    let (opcode, message) = self.fragments.as_mut().expect("checked above");
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

    /// After this side's close frame, reads and discards what the client still sends until its
    /// close frame or the end of its stream, so that the socket is not dropped with unread
    /// bytes (the kernel would then answer a reset, which can destroy the close frame in the
    /// client's receive buffer before it is read: RFC 6455, 7.1.1). Bounded by the caller in
    /// time, and here in bytes: the rest of the longest message plus [`LINGER_BYTES`].
    async fn linger(&mut self) {
        let mut left = self.max_message + LINGER_BYTES;
        // Of a frame's payload, bytes still to discard.
        let mut skip = 0;
        // Bytes that cannot be framed (the frame refused as a protocol error): only the end of
        // the stream is awaited.
        let mut lost = false;
        let mut buf = std::mem::take(&mut self.buf);
        std::future::poll_fn(|cx| {
            loop {
                loop {
                    let n = skip.min(buf.len());
                    buf.advance(n);
                    skip -= n;
                    if skip > 0 || lost || buf.is_empty() {
                        break;
                    }
                    match ws::parse_header(&buf, usize::MAX >> 1) {
                        Ok(Some(header)) if header.opcode == Opcode::Close => {
                            return Poll::Ready(());
                        }
                        Ok(Some(header)) => {
                            buf.advance(header.header_len);
                            skip = header.len;
                        }
                        Ok(None) => break,
                        Err(_) => lost = true,
                    }
                }
                if lost {
                    buf.clear();
                }
                if left == 0 {
                    return Poll::Ready(());
                }
                let want = left.min(READ_WANT);
                match ready!(self.carrier.poll_read(cx, &mut buf, want)) {
                    Ok(0) | Err(_) => return Poll::Ready(()),
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }

    /// The next whole message (text or binary) from the client, reading as needed; `None`
    /// when it closed the connection (its close frame answered, see [`Next::Closed`]) or went
    /// away between messages.
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<(Opcode, Bytes)>, WireError>> {
        loop {
            let want = match self.next_message(cx)? {
                Next::Message(opcode, payload) => return Poll::Ready(Ok(Some((opcode, payload)))),
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

    /// Unmasks the part of the front frame, text, that arrived since the last call, and checks
    /// its UTF-8.
    fn check_arrived(&mut self, header: &ws::Header) -> Result<(), WsError> {
        let arrived = &mut self.buf[header.header_len..];
        let checked = std::mem::replace(&mut self.checked, arrived.len());
        let new = &mut arrived[checked..];
        ws::unmask_at(new, header.mask, checked);
        self.utf8.feed(new)
    }

    /// Ends the connection once this side's close frame is out (`sent`): shuts the sending
    /// side, then lingers (see [`WsWire::linger`]), for at most [`LINGER_TIME`].
    async fn end(&mut self, sent: bool) {
        self.carrier.shutdown().await;
        if sent {
            let _ = tokio::time::timeout(LINGER_TIME, self.linger()).await;
        }
    }

    /// Whether a message arriving in fragments is text.
    fn in_text(&self) -> bool {
        matches!(self.fragments, Some((Opcode::Text, _)))
    }

    /// The error for a message of `len` bytes over its limit, counted as a tether frame (a
    /// binary message's length prefix excluded), so that its text says what section 7 of the
    /// spec says.
    fn too_big(&self, text: bool, len: u64) -> WsError {
        let prefix = if text { 0 } else { binary::PREFIX_LEN as u64 };
        WsError::TooBig {
            len: len.saturating_sub(prefix),
            max: self.max_frame,
        }
    }

    /// Queues the answer to a ping (see [`Controls::pong`]). The task is woken so that its
    /// next pass writes it (see [`Wire::wants_write`]); while it is still in its handshake,
    /// pongs go out with `connected`.
    fn pong(&mut self, payload: &[u8], cx: &Context<'_>) {
        self.control.pong(payload);
        cx.waker().wake_by_ref();
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
            let taken = left.min(self.control.as_slice().len());
            self.control.written(taken);
            left -= taken;
            if !self.control.is_empty() {
                return;
            }
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

/// How long a closing connection keeps reading what the client still sends (see
/// [`WsWire::linger`]).
const LINGER_TIME: Duration = Duration::from_secs(1);

/// How much a closing connection reads beyond the longest message (see [`WsWire::linger`]).
const LINGER_BYTES: usize = 64 * 1024;

/// Bytes asked of each read while lingering.
const READ_WANT: usize = 16 * 1024;

/// The encoding of the frames that messages with `opcode` carry (text or binary).
fn encoding_of(opcode: Opcode) -> Encoding {
    match opcode {
        Opcode::Text => Encoding::Json,
        _ => Encoding::Binary,
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

    /// A refusal before the first message (drain, shutdown, handshake timeout) is a close
    /// frame alone, whose code and reason any client can read, JSON or binary.
    fn encoding_known(&self) -> bool {
        self.encoding_fixed
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, WireError>> {
        // The answering close of a client's close is written by the task once no direct
        // write can follow it (see `crate::gateway::io`).
        let Some((opcode, payload)) = ready!(self.poll_message(cx))? else {
            return Poll::Ready(Ok(None));
        };
        // The first message sets the encoding, unless the upgrade did; later ones are in it
        // (`next_message` refused the others).
        self.encoding = encoding_of(opcode);
        self.encoding_fixed = true;
        let frame = match self.encoding {
            Encoding::Binary => binary::parse(payload, self.max_frame),
            Encoding::Json => json::decode(&payload),
        };
        Poll::Ready(frame.map(Some).map_err(Into::into))
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
            let pong = Some(self.control.as_slice()).filter(|_| control == 1);
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

    fn resume(
        stream: Arc<TcpStream>,
        rest: C::Rest,
        max_frame: u32,
        encoding: Encoding,
        _: &[Binding],
    ) -> Self {
        // Resumed after its handshake: the encoding is the one its `connect` chose.
        Self::with(C::resume(stream, rest), max_frame, encoding)
    }

    async fn close(&mut self, code: Code, reason: &str) {
        // After the pongs queued.
        self.control.push(&ws::control(
            Opcode::Close,
            &ws::close_payload(code.0, reason),
        ));
        let sent = self.send(&mut VecDeque::new()).await;
        self.end(sent.is_ok()).await;
    }
}
