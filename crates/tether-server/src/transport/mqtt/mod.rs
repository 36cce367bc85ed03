//! MQTT 3.1.1 and 5.0 (`docs/mqtt.md`): a stream of MQTT control packets, over the socket
//! itself or over TLS (`mqtts://`).
//!
//! The wire translates: a packet from the device becomes the session's frames (CONNECT a
//! `connect`, PINGREQ a `ping`, PUBACKs `ack`s, SUBSCRIBE `subscribe`s, PUBLISH an
//! `upstream`), and the session's frames, queued for this connection in the binary encoding,
//! become packets as they are written ([`state`]). So the handshake, bindings, tokens, topic
//! permissions, durable order, acks, the poison guard, heartbeats, limits and closes are the
//! session's and the gateway's, unchanged. Frames are never written past the task
//! ([`Framing::Sealed`]): each one is translated on the way out.
//!
//! # Memory
//! The read buffer exists only while a packet is arriving (sized from its fixed header, see
//! [`tether_mqtt::check`]); the write buffer only while a translated packet is being written.
//! Parked, a connection keeps its carrier's rest and the translation state: packed into one
//! byte string when nothing is under way, its persistent session and will beside it
//! ([`ParkedState`]); otherwise boxed, its lists without spare room ([`State::compact`]; the
//! state's size is pinned by a test). It does not park while it waits for an answer of the
//! session's ([`Wire::parkable`] below).

pub mod state;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tether_core::Transport;
use tether_mqtt::{DecodeError as MqttError, Version};
use tether_proto::{Code, DecodeError, Frame, binary};
use tokio::net::TcpStream;

use super::carrier::READ_CHUNK;
use super::{Accepted, Carrier, Counts, Framing, Plain, Wire, WireError, poll_more};
use crate::link::{Binding, Encoding};
use crate::metrics::mqtt::mqtt as metrics;
use state::{Fail, Flow, ParkedState, State};

/// The most bytes of the wire's own answers held before it stops reading requests.
const OUT_LIMIT: usize = 64 * 1024;

/// MQTT over raw TCP or TLS.
#[derive(Debug)]
pub struct MqttWire<C = Plain> {
    carrier: C,
    /// Bytes read and not yet a whole packet.
    buf: BytesMut,
    /// Packets to write: the translation of the frame being written, or the wire's own
    /// answers (SUBACK, PUBACK, refusals).
    out: BytesMut,
    /// Frames made from one packet, handed to the session one at a time.
    frames: VecDeque<Frame>,
    max_packet: u32,
    counts: Counts,
    state: Box<State>,
    /// The device sent DISCONNECT.
    gone: bool,
}

/// What a parked MQTT connection keeps.
#[derive(Debug)]
pub struct MqttRest<R> {
    carrier: R,
    state: ParkedState,
}

impl MqttWire {
    pub fn new(stream: TcpStream, max_packet: u32) -> Self {
        Self::over(Plain::new(stream), max_packet)
    }
}

impl<C: Carrier> MqttWire<C> {
    /// A wire over `carrier`, whose handshake (if it has one) is done.
    pub fn over(carrier: C, max_packet: u32) -> Self {
        Self::with_state(carrier, max_packet, Box::default())
    }

    fn with_state(carrier: C, max_packet: u32, state: Box<State>) -> Self {
        MqttWire {
            carrier,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            frames: VecDeque::new(),
            max_packet,
            counts: Counts::default(),
            state,
            gone: false,
        }
    }

    /// PUBACKs the device sent for nothing in flight, since the last call.
    pub fn take_unknown_acks(&mut self) -> u64 {
        std::mem::take(&mut self.state.unknown_acks)
    }

    /// Counts the packets written to `out` from `from` on (`tether_mqtt_*`).
    fn count_out(&self, from: usize) {
        if let Some(written) = self.out.get(from..).filter(|w| !w.is_empty()) {
            metrics().packets_out(written, self.state.version);
        }
    }

    /// The connection closes for `fail`: the device is told (a CONNACK or a DISCONNECT, as
    /// its version has them), and the gateway gets the error to close with.
    fn fail(&mut self, fail: Fail) -> WireError {
        tracing::debug!(code = %fail.code, reason = fail.reason.0, detail = fail.detail, "mqtt: closing");
        let from = self.out.len();
        self.state.failed(&fail, &mut self.out);
        if self.out.len() == from {
            // 3.1.1: closed without a word.
            metrics().closed(fail.reason.0);
        }
        self.count_out(from);
        let error = match fail.code {
            Code::FRAME_TOO_LARGE => DecodeError::TooLarge {
                len: 0,
                max: self.max_packet,
            },
            _ => DecodeError::Malformed(fail.detail),
        };
        error.into()
    }

    /// Bytes that are no packet: the codec's error, answered as its version can be.
    fn undecodable(&mut self, e: MqttError, level: Option<u8>) -> WireError {
        if self.state.version.is_none() {
            // A CONNECT that failed: its protocol level, if it got that far, says which
            // CONNACK the client reads.
            if let Some((version, code)) = e.connack_for_unknown_version() {
                self.state.version = Some(version);
                let reason = tether_mqtt::ReasonCode(code);
                let detail = "unsupported protocol version";
                let from = self.out.len();
                self.state
                    .connack_refusal(reason, Some(code), detail, &mut self.out);
                self.count_out(from);
                return DecodeError::UnsupportedVersion(code).into();
            }
            if matches!(e, MqttError::ExpectedConnect { .. }) {
                self.state.closing = true;
                metrics().closed(tether_mqtt::ReasonCode::PROTOCOL_ERROR.0);
                return DecodeError::Malformed("the first packet must be CONNECT").into();
            }
            match level {
                Some(5) => self.state.version = Some(Version::V5),
                Some(4) => self.state.version = Some(Version::V311),
                _ => {
                    self.state.closing = true;
                    metrics().closed(tether_mqtt::ReasonCode::MALFORMED_PACKET.0);
                    return DecodeError::Malformed("malformed CONNECT").into();
                }
            }
        }
        let code = match e {
            MqttError::TooLarge { .. } => Code::FRAME_TOO_LARGE,
            _ => Code::PROTOCOL,
        };
        let detail = match e {
            MqttError::TooLarge { .. } => "packet too large",
            MqttError::Malformed(d) | MqttError::Protocol(d) => d,
            MqttError::TopicNameInvalid(d) | MqttError::TopicAliasInvalid(d) => d,
            _ => "malformed packet",
        };
        tracing::debug!(error = %e, "mqtt: undecodable packet");
        self.fail(Fail {
            code,
            reason: e.reason_code(),
            detail,
        })
    }
}

/// The protocol level of the CONNECT at the front of `buf`, once its bytes are there.
fn connect_level(buf: &[u8]) -> Option<u8> {
    let (_, n) = tether_mqtt::wire::read_vbi(buf.get(1..)?).ok()??;
    let at = 1 + n;
    let name_len = usize::from(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]));
    buf.get(at + 2 + name_len).copied()
}

impl<C: Carrier> Wire for MqttWire<C> {
    type Rest = MqttRest<C::Rest>;

    fn transport(&self) -> Transport {
        Transport::Mqtt
    }

    fn encoding(&self) -> Encoding {
        Encoding::Binary
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, WireError>> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.gone {
                return Poll::Ready(Ok(None));
            }
            if self.state.closing {
                // Told why already; the gateway closes after what is being written.
                return Poll::Pending;
            }
            if !self.state.reads_more() {
                // Subscribes wait for their answers: the next packet is read once one comes
                // (a queued frame, which wakes the task).
                return Poll::Pending;
            }
            if self.out.len() >= OUT_LIMIT {
                // The wire's own answers (PUBACK, PUBCOMP, SUBACK...) are not in the
                // connection's budgeted outbox: a client that sends requests without reading
                // their answers is not read from until `poll_send` has written them, which
                // wakes the task again. Its own socket buffer then fills, not our memory.
                return Poll::Pending;
            }
            let version = self.state.version;
            let level = match version {
                None => connect_level(&self.buf),
                Some(_) => None,
            };
            match tether_mqtt::decode(&mut self.buf, version, self.max_packet) {
                Ok(Some(packet)) => {
                    let had_out = !self.out.is_empty();
                    let from = self.out.len();
                    metrics().packet_in(packet.packet_type());
                    let flow = self
                        .state
                        .on_packet(packet, &mut self.frames, &mut self.out);
                    self.count_out(from);
                    metrics().unknown_acks(self.take_unknown_acks());
                    match flow {
                        Ok(Flow::Go) => {}
                        Ok(Flow::Gone) => self.gone = true,
                        Err(fail) => return Poll::Ready(Err(self.fail(fail))),
                    }
                    if !had_out && !self.out.is_empty() {
                        // Answers of the wire's own: the task's next pass writes them.
                        cx.waker().wake_by_ref();
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(self.undecodable(e, level))),
            }
            if self.buf.is_empty() {
                // Drop our reference to the last read's allocation while idle.
                self.buf = BytesMut::new();
            }
            // A packet's whole length is known from its fixed header: read up to its end.
            let want = match self
                .buf
                .get(1..)
                .and_then(|b| tether_mqtt::wire::read_vbi(b).ok().flatten())
            {
                Some((remaining, n)) => (1 + n + remaining as usize).saturating_sub(self.buf.len()),
                None => READ_CHUNK,
            };
            let end = (self.buf.is_empty(), "connection closed inside a packet");
            let (carrier, buf, counts) = (&mut self.carrier, &mut self.buf, &mut self.counts);
            if !ready!(poll_more(carrier, cx, buf, want.max(1), counts, end))? {
                return Poll::Ready(Ok(None));
            }
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        loop {
            while !self.out.is_empty() {
                let slice = [io::IoSlice::new(&self.out)];
                let n = ready!(self.carrier.poll_write(cx, &slice))?;
                self.out.advance(n);
            }
            let Some(frame) = frames.pop_front() else {
                break;
            };
            // The frame leaves the queue's budget here; its translation is the wire's.
            self.counts.written += frame.len();
            if frame.is_empty() {
                continue;
            }
            let waiting = self.frames.len();
            let from = self.out.len();
            match binary::parse(frame, u32::MAX) {
                Ok(frame) => self.state.on_frame(frame, &mut self.frames, &mut self.out),
                Err(e) => tracing::warn!(error = %e, "mqtt: a queued frame does not decode"),
            }
            self.count_out(from);
            if self.frames.len() > waiting {
                // Requests of the wire's own (a `sync`, an `ack`): the task reads them next.
                cx.waker().wake_by_ref();
            }
        }
        if self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        self.carrier.poll_flush(cx)
    }

    fn wants_write(&self) -> bool {
        !self.out.is_empty() || self.carrier.unflushed()
    }

    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }

    fn direct(&self) -> Option<(Arc<TcpStream>, Framing)> {
        Some((self.carrier.socket(), Framing::Sealed))
    }

    /// Also not while the wire waits for an answer of the session's ([`State::waiting`]):
    /// unlike a raw TCP connection's, it is never written past the task ([`Framing::Sealed`]),
    /// so it is queued and would wake a parked connection within milliseconds. A SUBSCRIBE
    /// answered that way cost a second wake and a second task per subscribed connection, and
    /// the heap kept most of it (about 0.7 KiB per idle subscribed connection,
    /// `docs/benchmarks.md`).
    fn parkable(&self) -> bool {
        self.buf.is_empty()
            && self.out.is_empty()
            && self.frames.is_empty()
            && !self.gone
            && !self.carrier.busy()
            && !self.state.waiting()
    }

    fn park(self) -> Result<Self::Rest, Self> {
        if self.parkable() {
            Ok(MqttRest {
                carrier: self.carrier.park(),
                state: ParkedState::park(self.state),
            })
        } else {
            Err(self)
        }
    }

    fn resume(
        stream: Arc<TcpStream>,
        rest: Self::Rest,
        max_frame: u32,
        _: Encoding,
        bindings: &[Binding],
    ) -> Self {
        let state = rest.state.resume(bindings);
        let lost = state.is_none();
        let mut wire = Self::with_state(
            C::resume(stream, rest.carrier),
            max_frame,
            state.unwrap_or_default(),
        );
        // A state that did not unpack (a bug, logged): the connection ends as if lost.
        wire.gone = lost;
        wire
    }

    fn takes_over(&self) -> bool {
        true
    }

    async fn accepted(&mut self, accepted: &Accepted<'_>) {
        self.state.share_apps(accepted.bindings);
        // The device's will and persistent session (docs/mqtt.md 4.4 and 9).
        self.state.limit_inflight(accepted.max_inflight);
        self.state.arm_will(accepted);
        self.state.load_session(accepted).await;
    }

    async fn close(&mut self, _code: Code, _reason: &str) {
        // What a failure wrote (a CONNACK, a DISCONNECT) goes out first, when the socket
        // takes it.
        let out = std::mem::take(&mut self.out);
        if !out.is_empty() {
            let mut frames = VecDeque::new();
            self.out = out;
            let _ = std::future::poll_fn(|cx| self.poll_send(cx, &mut frames)).await;
        }
        self.carrier.shutdown().await;
    }
}
