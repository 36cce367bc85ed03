//! What an MQTT connection's wire keeps to translate (`docs/mqtt.md`): packets from the
//! device into the session's frames (`connect`, `ping`, `ack`, `subscribe`, `unsubscribe`,
//! `upstream`, `refresh`, `sync`), and the session's frames into packets (CONNACK, PUBLISH,
//! SUBACK, UNSUBACK, PUBACK, PINGRESP, DISCONNECT).
//!
//! The wire is a client of the session like any SDK: the session decides bindings, tokens,
//! topic permissions, durable order, acks and the poison guard; this state only holds what
//! MQTT needs on top: the packet ids of QoS 1 PUBLISHes in flight (a PUBACK is a cumulative
//! `ack` once every earlier one came, 4.2), which inboxes the device subscribed to (pushes
//! before the subscription, or past the in-flight window, are left to a `sync` pull from the
//! session, 4.1 and 4.3), the filter each topic was subscribed with, and the SUBSCRIBEs and
//! upstreams waiting for their answers. Everything is bounded: the window by
//! `mqtt.max_inflight`, upstreams by [`MAX_UPSTREAMS`], waiting SUBSCRIBEs by
//! [`MAX_WAITING_ACKS`].
//!
//! By concern: [`connect`] (CONNECT, CONNACK, the server's DISCONNECTs), [`inbox`] (the durable
//! inbox over QoS 1), [`topics`] (SUBSCRIBE, UNSUBSCRIBE, publications), [`upstream`] (a
//! device's PUBLISH and its outcome), [`session`] (persistent sessions, in the store) and
//! [`will`] (the Will Message, sent when the connection is lost); this file holds the state and
//! routes packets and frames.
//!
//! # On drop
//! Dropping the state of a connection that was connected ends its MQTT session: the session
//! is saved a last time (or forgotten), and the will is sent unless the connection ended with
//! a goodbye ([`will`]). A parked connection keeps its state in its rest, packed with its
//! session and will beside it ([`packed`]): the state dropped when it parks has neither, and
//! the connection's end, parked or not, drops one that has them.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use tether_core::{AppId, validate_id};
use tether_mqtt::{self as mqtt, Packet, PublishHead, QoS, ReasonCode, Version, reason::v311};
use tether_mqtt::{Properties, Property};
use tether_proto::{self as proto, Body, Code, Frame, PayloadKind};

mod connect;
mod inbox;
mod packed;
mod session;
mod topics;
mod upstream;
mod will;

pub use packed::ParkedState;

/// QoS 1 PUBLISHes from a device waiting for their upstream's outcome at most: the CONNACK's
/// Receive Maximum.
pub const MAX_UPSTREAMS: u16 = 32;

/// SUBSCRIBEs and UNSUBSCRIBEs waiting for the session's answers at most: past them the wire
/// reads no more packets until an answer comes (see [`State::reads_more`]), as a server that
/// answers slowly would. Clients commonly send a SUBSCRIBE per topic without waiting for the
/// SUBACKs; refusing those past the limit made them fail at random.
pub const MAX_WAITING_ACKS: usize = 8;

/// `$tether/reply/...` subscriptions (3.1.1's replies) a connection holds at most.
const MAX_REPLY_SUBS: usize = 16;

/// Why the wire closes the connection, and what the device is told.
#[derive(Debug)]
pub struct Fail {
    /// tether's code, for the log and the metrics.
    pub code: Code,
    /// MQTT 5's reason code (a CONNACK before it is connected, a DISCONNECT after).
    pub reason: ReasonCode,
    /// What is logged.
    pub detail: &'static str,
}

impl Fail {
    fn new(code: Code, reason: ReasonCode, detail: &'static str) -> Self {
        Fail {
            code,
            reason,
            detail,
        }
    }

    fn protocol(detail: &'static str) -> Self {
        Fail::new(Code::PROTOCOL, ReasonCode::PROTOCOL_ERROR, detail)
    }
}

/// What a packet from the device came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on reading.
    Go,
    /// The device said goodbye (DISCONNECT).
    Gone,
}

/// How a device takes an app's inbox (`$tether/inbox/{app}`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Inbox {
    /// Not subscribed: pushes are not sent (durable ones are left to a later `sync`).
    #[default]
    Off,
    /// QoS 0: live pushes, as QoS 0.
    Live,
    /// QoS 1: durable delivery, PUBACKs ack.
    Durable,
}

/// One binding's inbox as this connection delivers it.
#[derive(Debug)]
struct AppInbox {
    /// The app, once the connection is accepted the binding's own (shared, see
    /// [`State::share_apps`]).
    app: AppId,
    inbox: Inbox,
    /// The `$tether/inbox/{app}/+` form: the seq is the topic's last level.
    seq_form: bool,
    /// The highest seq published to the device (or skipped as too large for it).
    delivered: u64,
    /// The lowest durable seq not published while nothing was (where a `sync` starts).
    gap_lo: u64,
    /// The highest durable seq not published: above `delivered`, a `sync` must fetch it.
    gap_hi: u64,
    /// The request id of this app's `sync` under way (0: none).
    sync_req: u32,
    /// That `sync` brought pushes.
    sync_got: bool,
}

impl AppInbox {
    fn new(app: AppId) -> Self {
        AppInbox {
            app,
            inbox: Inbox::Off,
            seq_form: false,
            delivered: 0,
            gap_lo: 0,
            gap_hi: 0,
            sync_req: 0,
            sync_got: false,
        }
    }

    fn missed(&mut self, seq: u64) {
        if self.delivered == 0 && (self.gap_lo == 0 || seq < self.gap_lo) {
            self.gap_lo = seq;
        }
        self.gap_hi = self.gap_hi.max(seq);
    }

    fn wants_sync(&self) -> bool {
        self.inbox == Inbox::Durable && self.sync_req == 0 && self.gap_hi > self.delivered
    }

    fn sync_after(&self) -> u64 {
        match self.delivered {
            0 => self.gap_lo.saturating_sub(1),
            d => d,
        }
    }
}

/// A QoS 1 PUBLISH waiting for its PUBACK: a durable push (its seq), or a publication of a
/// topic subscribed at QoS 1 (its offset).
#[derive(Debug, Clone, Copy)]
struct Inflight {
    /// 0 for a push skipped as too large for the device: acked at once.
    packet_id: u16,
    app: u8,
    /// 0: the inbox's; otherwise the [`TopicName::id`] of the topic.
    topic: u16,
    /// The push's seq, or the publication's offset.
    seq: u64,
    acked: bool,
}

/// A topic the connection is subscribed to, and the name its publications go out on.
#[derive(Debug)]
struct TopicName {
    app: u8,
    topic: String,
    /// The filter the device subscribed with, when it is not [`State::topic_name`]'s.
    name: Option<String>,
    /// The device subscribed to it (not the business, through the API): part of its session.
    own: bool,
    /// The QoS granted.
    qos: QoS,
    /// What the connection's QoS 1 window entries call it (never 0).
    id: u16,
    /// A QoS 1 publication of it was not sent (the window was full, or it did not follow
    /// `offset`): a recovery from `offset` fetches what was missed.
    gap: bool,
    /// That recovery is under way.
    recovering: bool,
    /// The offset of the last publication sent (QoS 0: where a resumed session recovers from).
    offset: u64,
    /// QoS 1: the offset up to which the device acked every publication (where a resumed
    /// session recovers from).
    acked: u64,
}

/// A request whose answer the wire waits for, by request id.
#[derive(Debug)]
enum Req {
    Sub {
        packet_id: u16,
        index: usize,
        qos: QoS,
        app: u8,
        topic: String,
        filter: String,
        /// Recovering from this offset (a session's topic).
        since: Option<u64>,
    },
    Unsub {
        packet_id: u16,
        index: usize,
    },
    Refresh {
        app: u8,
    },
    /// A `subscribe` with `since` to a topic held, to fetch the QoS 1 publications not sent.
    Recover {
        id: u16,
    },
}

/// A SUBACK or UNSUBACK waiting for its filters' answers.
#[derive(Debug)]
struct WaitingAck {
    packet_id: u16,
    unsubscribe: bool,
    codes: Vec<Option<ReasonCode>>,
}

/// An upstream waiting for its outcome.
#[derive(Debug)]
struct Up {
    req: u32,
    /// The PUBLISH's packet id (QoS 1), or 0 (QoS 0: no PUBACK).
    packet_id: u16,
    app: u8,
    kind: String,
    /// MQTT 5's Response Topic and Correlation Data.
    response: Option<(String, Option<Bytes>)>,
    done: Option<ReasonCode>,
}

/// What an MQTT connection has under way: the QoS 1 window, and the requests, SUBACKs and
/// upstreams waiting for the session's answers. Empty on nearly every idle connection (a
/// connection does not park while it waits for an answer, see [`State::waiting`]), so it is
/// boxed apart and only while something is in it: an idle connection keeps a smaller state
/// ([`State::compact`]).
#[derive(Debug, Default)]
struct Pending {
    inflight: VecDeque<Inflight>,
    reqs: Vec<(u32, Req)>,
    acks: Vec<WaitingAck>,
    ups: VecDeque<Up>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.inflight.is_empty()
            && self.reqs.is_empty()
            && self.acks.is_empty()
            && self.ups.is_empty()
    }
}

/// What [`State::pending`] reads when nothing is under way.
static NOTHING_PENDING: Pending = Pending {
    inflight: VecDeque::new(),
    reqs: Vec::new(),
    acks: Vec::new(),
    ups: VecDeque::new(),
};

/// The translation state of one MQTT connection (kept while it is parked).
#[derive(Debug, Default)]
pub struct State {
    /// `None` until CONNECT.
    pub version: Option<Version>,
    /// CONNACK 0x00 went out.
    pub connected: bool,
    /// A CONNACK refusal or a DISCONNECT went out: nothing more is written.
    pub closing: bool,
    /// The client id given to a device that came without one.
    assigned: Option<String>,
    /// MQTT 5's Request Problem Information (reason strings on refusals).
    problem_info: bool,
    /// What the client asked for as Session Expiry Interval (MQTT 5); once accepted, what
    /// the session gets (capped by `mqtt.max_session_expiry`).
    session_expiry: u32,
    /// CONNECT's Clean Start (3.1.1: Clean Session).
    clean_start: bool,
    /// The CONNACK says the Session Expiry Interval used: lower than asked.
    expiry_lowered: bool,
    /// A persistent session's store and what was read of it ([`session`]).
    kept: Option<Box<session::Kept>>,
    /// The Will Message ([`will`]).
    will: Option<Box<will::Left>>,
    apps: Vec<AppInbox>,
    /// The first app's name, for topic filters without `$tether/topic/`.
    next_packet_id: u16,
    next_req: u32,
    /// QoS 1 PUBLISHes in flight to the device at most.
    receive_max: u16,
    /// The largest packet the device takes.
    max_packet: u32,
    /// The QoS 1 window and what waits for the session's answers, while any of it is there.
    pending: Option<Box<Pending>>,
    /// A `sync` is under way (the session takes one at a time).
    syncing: bool,
    topics: Vec<TopicName>,
    /// 3.1.1 devices' `$tether/reply/{app}/{kind}` subscriptions.
    reply_subs: Vec<String>,
    /// The device subscribed to `$tether/expiring`.
    expiring: bool,
    /// PUBACKs for nothing in flight.
    pub unknown_acks: u64,
}

fn v(state: &State) -> Version {
    state.version.unwrap_or(Version::V5)
}

/// Appends `packet` to `out`. Packets are built from checked data: one that cannot be
/// encoded is a bug, logged and dropped.
fn put(version: Version, packet: &Packet, out: &mut BytesMut) {
    if let Err(e) = mqtt::encode(packet, version, out) {
        tracing::warn!(error = %e, "cannot encode an MQTT packet");
    }
}

/// The properties that say a payload is JSON.
fn json_format(props: &mut Properties, kind: PayloadKind) {
    if kind == PayloadKind::Json {
        props.push(Property::PayloadFormatIndicator(1));
        props.push(Property::ContentType("application/json".into()));
    }
}

impl State {
    fn pending(&self) -> &Pending {
        self.pending.as_deref().unwrap_or(&NOTHING_PENDING)
    }

    fn pending_mut(&mut self) -> &mut Pending {
        self.pending.get_or_insert_default()
    }

    fn req(&mut self) -> u32 {
        self.next_req = self.next_req.wrapping_add(1).max(1);
        self.next_req
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            let id = self.next_packet_id;
            if !self.pending().inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    /// A [`TopicName::id`] that no topic held and no entry of the window names (an entry of
    /// a topic unsubscribed may still wait for its PUBACK).
    fn topic_id(&self) -> u16 {
        (1..=u16::MAX)
            .find(|id| {
                !self.topics.iter().any(|t| t.id == *id)
                    && !self.pending().inflight.iter().any(|f| f.topic == *id)
            })
            .unwrap_or(u16::MAX)
    }

    fn app_index(&self, app: &str) -> Option<u8> {
        self.apps
            .iter()
            .position(|a| a.app.as_str() == app)
            .map(|i| i as u8)
    }

    /// At most `max` QoS 1 PUBLISHes in flight (`mqtt.max_inflight`), whatever the device's
    /// Receive Maximum allows.
    pub fn limit_inflight(&mut self, max: u16) {
        self.receive_max = self.receive_max.min(max.max(1));
    }

    fn room(&self) -> usize {
        usize::from(self.receive_max).saturating_sub(self.pending().inflight.len())
    }

    /// One packet from the device: frames for the session go to `frames`, packets the wire
    /// answers itself to `out`.
    pub fn on_packet(
        &mut self,
        packet: Packet,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        match packet {
            Packet::Connect(c) if self.version.is_none() => self.on_connect(*c, frames, out),
            Packet::Connect(_) => Err(Fail::protocol("a second CONNECT")),
            _ if !self.connected => Err(Fail::protocol("a packet before CONNACK")),
            Packet::PingReq => {
                let id = self.req();
                frames.push_back(Frame::new(id, Body::Ping));
                Ok(Flow::Go)
            }
            Packet::PubAck(ack) => {
                self.on_puback(ack.packet_id, frames);
                Ok(Flow::Go)
            }
            Packet::Publish(p) => self.on_publish(p, frames, out),
            Packet::Subscribe(s) => self.on_subscribe(s, frames, out),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, frames, out),
            Packet::Disconnect(d) => self.on_goodbye(d),
            Packet::PubRel(rel) if v(self) == Version::V5 => {
                let mut ack = mqtt::Ack::new(rel.packet_id);
                ack.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                put(Version::V5, &Packet::PubComp(ack), out);
                Ok(Flow::Go)
            }
            Packet::PubRel(_) => Err(Fail::protocol("PUBREL: no QoS 2 is accepted")),
            Packet::PubRec(_) | Packet::PubComp(_) => Err(Fail::protocol(
                "PUBREC or PUBCOMP: the server sends no QoS 2",
            )),
            Packet::Auth(_) => Err(Fail::protocol("AUTH: enhanced authentication is not taken")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Fail::protocol("a packet only servers send"))
            }
        }
    }

    /// Gives back the room the lists hold beyond their elements, when the connection parks:
    /// the waiting lists (requests, SUBACKs, upstreams, the window) are usually empty then,
    /// and a list that grew keeps room for up to twice its elements. An idle connection keeps
    /// only what it uses (`docs/mqtt.md`, section 1, "Memory").
    pub fn compact(&mut self) {
        self.apps.shrink_to_fit();
        self.topics.shrink_to_fit();
        self.reply_subs.shrink_to_fit();
        match &mut self.pending {
            Some(p) if p.is_empty() => self.pending = None,
            Some(p) => {
                p.inflight.shrink_to_fit();
                p.reqs.shrink_to_fit();
                p.acks.shrink_to_fit();
                p.ups.shrink_to_fit();
            }
            None => {}
        }
    }

    /// Takes each app's id from the accepted connection's bindings (the same apps, in the same
    /// order) rather than keeping a copy of its own: one allocation less per connection.
    pub fn share_apps(&mut self, bindings: &[crate::link::Binding]) {
        for (a, b) in self.apps.iter_mut().zip(bindings) {
            if a.app == b.app {
                a.app = b.app.clone();
            }
        }
    }

    /// Whether the wire waits for an answer of the session's (a SUBACK's, an UNSUBACK's, an
    /// upstream's outcome, a `sync`'s pushes, a refresh): it comes as a queued frame, which
    /// would wake a parked connection at once.
    pub fn waiting(&self) -> bool {
        let p = self.pending();
        !p.reqs.is_empty() || !p.acks.is_empty() || !p.ups.is_empty() || self.syncing
    }

    /// Whether the wire may read the device's next packet: not while [`MAX_WAITING_ACKS`]
    /// SUBACKs and UNSUBACKs wait for the session's answers, whose arrival wakes the
    /// connection's task again. The device's packets wait in the socket meanwhile.
    pub fn reads_more(&self) -> bool {
        self.pending().acks.len() < MAX_WAITING_ACKS
    }

    fn take_req(&mut self, id: u32) -> Option<Req> {
        let i = self.pending().reqs.iter().position(|(r, _)| *r == id)?;
        Some(self.pending_mut().reqs.swap_remove(i).1)
    }

    /// One frame from the session: packets for the device go to `out`; requests the wire
    /// makes in turn (a `sync`, an `ack`) to `frames`.
    pub fn on_frame(&mut self, frame: Frame, frames: &mut VecDeque<Frame>, out: &mut BytesMut) {
        if self.closing {
            return;
        }
        let id = frame.id;
        match frame.body {
            Body::Connected(c) => self.on_connected(c, frames, out),
            Body::Disconnect(d) => {
                self.ending(d.code);
                self.on_disconnect(d, out)
            }
            Body::Pong => put(v(self), &Packet::PingResp, out),
            Body::Push(p) => self.on_push(id, p, frames, out),
            Body::Synced(s) => self.on_synced(id, s, frames),
            Body::Publication(p) => self.on_publication(p, frames, out),
            Body::Subscribed(s) => self.on_subscribed(id, s, out),
            Body::Unsubscribed(u) => self.on_unsubscribed(id, u, out),
            Body::Error(e) => self.on_error(id, e, frames, out),
            Body::UpstreamReply(r) => {
                let code = match r.status {
                    200..=299 => ReasonCode::SUCCESS,
                    400..=499 => ReasonCode::NOT_AUTHORIZED,
                    _ => ReasonCode::UNSPECIFIED_ERROR,
                };
                self.upstream_done(id, code, r.status, r.kind, r.payload, out);
            }
            Body::Refreshed(r) => {
                if let Some(Req::Refresh { app }) = self.take_req(id) {
                    let topic = format!("$tether/refreshed/{}", self.apps[usize::from(app)].app);
                    let payload = Bytes::from(r.expires_s.to_string());
                    self.publish0(out, &topic, Properties::new(), &payload);
                }
            }
            Body::Expiring(e) if self.expiring => {
                let topic = format!("$tether/expiring/{}", e.app);
                let payload = Bytes::from(e.expires_s.to_string());
                self.publish0(out, &topic, Properties::new(), &payload);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn durable(receive_max: u16) -> State {
        let mut s = State::default();
        s.version = Some(Version::V5);
        s.connected = true;
        s.receive_max = receive_max;
        s.max_packet = u32::MAX;
        s.apps = vec![AppInbox {
            inbox: Inbox::Durable,
            ..AppInbox::new("demo".into())
        }];
        s
    }

    fn push(seq: u64) -> Frame {
        Frame::new(
            0,
            proto::Push {
                app: "demo".into(),
                msg_id: seq,
                seq,
                qos: 1,
                created_ms: 0,
                kind: PayloadKind::Binary,
                payload: Bytes::from_static(b"x"),
            },
        )
    }

    fn acks(frames: &mut VecDeque<Frame>) -> Vec<u64> {
        frames
            .drain(..)
            .filter_map(|f| match f.body {
                Body::Ack(a) => Some(a.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pubacks_out_of_order_ack_only_the_run_at_the_front() {
        let (mut s, mut frames, mut out) = (durable(64), VecDeque::new(), BytesMut::new());
        for seq in 1..=3 {
            s.on_frame(push(seq), &mut frames, &mut out);
        }
        assert_eq!(s.pending().inflight.len(), 3);
        s.on_puback(2, &mut frames);
        assert_eq!(acks(&mut frames), Vec::<u64>::new(), "1 is not acked yet");
        s.on_puback(1, &mut frames);
        assert_eq!(acks(&mut frames), [2]);
        s.on_puback(7, &mut frames);
        assert_eq!(s.unknown_acks, 1);
        s.on_puback(3, &mut frames);
        assert_eq!(acks(&mut frames), [3]);
        assert!(s.pending().inflight.is_empty());
    }

    #[test]
    fn pushes_past_the_window_are_pulled_with_sync_once_it_has_room() {
        let (mut s, mut frames, mut out) = (durable(2), VecDeque::new(), BytesMut::new());
        for seq in 1..=4 {
            s.on_frame(push(seq), &mut frames, &mut out);
        }
        assert_eq!(s.pending().inflight.len(), 2, "the window holds 2");
        assert!(frames.is_empty(), "no room: no sync yet");
        s.on_puback(1, &mut frames);
        let sync = frames
            .iter()
            .find_map(|f| match &f.body {
                Body::Sync(sync) => Some((f.id, sync.after, sync.limit)),
                _ => None,
            })
            .expect("a sync for what did not fit");
        assert_eq!((sync.1, sync.2), (2, 1));
        // A live push behind the gap waits for the sync, which brings 3 first.
        s.on_frame(push(5), &mut frames, &mut out);
        assert_eq!(s.pending().inflight.back().map(|f| f.seq), Some(2));
        let mut reply = push(3);
        reply.id = sync.0;
        s.on_frame(reply, &mut frames, &mut out);
        assert_eq!(s.pending().inflight.back().map(|f| f.seq), Some(3));
    }

    #[test]
    fn nothing_goes_out_on_the_inbox_before_its_subscribe() {
        let mut s = durable(64);
        s.apps[0].inbox = Inbox::Off;
        let (mut frames, mut out) = (VecDeque::new(), BytesMut::new());
        s.on_frame(push(4), &mut frames, &mut out);
        s.on_frame(push(5), &mut frames, &mut out);
        assert!(out.is_empty() && s.pending().inflight.is_empty());
        s.apps[0].inbox = Inbox::Durable;
        s.sync_next(&mut frames);
        match &frames.front().expect("a sync").body {
            Body::Sync(sync) => assert_eq!(sync.after, 3, "from before the first one missed"),
            other => panic!("{other:?}"),
        }
    }

    /// A device subscribes to `topic` the way most do (3.1.1, one SUBSCRIBE, qos 0) and the
    /// session answers.
    pub(super) fn subscribe(s: &mut State, packet_id: u16, topic: &str) {
        let (mut frames, mut out) = (VecDeque::new(), BytesMut::new());
        let req = ask_subscribe(s, &mut frames, &mut out, packet_id, topic, QoS::AtMostOnce);
        answer_subscribe(s, &mut frames, &mut out, req, topic, 0);
    }

    /// The device's SUBSCRIBE to `topic` at `qos`; returns the request it makes of the session.
    pub(super) fn ask_subscribe(
        s: &mut State,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
        packet_id: u16,
        topic: &str,
        qos: QoS,
    ) -> u32 {
        let packet = mqtt::Subscribe {
            packet_id,
            properties: Properties::new(),
            filters: vec![(topic.into(), mqtt::SubscribeOptions::qos(qos))],
        };
        s.on_subscribe(packet, frames, out).unwrap();
        frames.pop_front().expect("a subscribe for the session").id
    }

    /// The session's `subscribed` for request `req`, live from `offset`: the SUBACK goes out.
    fn answer_subscribe(
        s: &mut State,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
        req: u32,
        topic: &str,
        offset: u64,
    ) {
        let answer = proto::Subscribed {
            app: "demo".into(),
            topic: topic.into(),
            offset,
            recovery: proto::Recovery::Live,
        };
        s.on_frame(Frame::new(req, answer), frames, out);
        assert!(!out.is_empty(), "a SUBACK");
    }

    fn publication(offset: u64) -> Frame {
        Frame::new(
            0,
            proto::Publication {
                app: "demo".into(),
                topic: "room".into(),
                offset,
                msg_id: offset,
                created_ms: 0,
                kind: PayloadKind::Binary,
                payload: Bytes::from_static(b"x"),
            },
        )
    }

    /// QoS 1 publications of a topic subscribed at QoS 1 go out in the window, in offset
    /// order; those past it are fetched again from the history once PUBACKs make room, and the
    /// session keeps the offset the device acked.
    #[test]
    fn qos1_publications_past_the_window_are_recovered_in_order() {
        let mut s = durable(2);
        s.apps[0].inbox = Inbox::Off;
        let (mut frames, mut out) = (VecDeque::new(), BytesMut::new());
        let req = ask_subscribe(&mut s, &mut frames, &mut out, 9, "room", QoS::AtLeastOnce);
        answer_subscribe(&mut s, &mut frames, &mut out, req, "room", 10);
        for offset in 11..=14 {
            s.on_frame(publication(offset), &mut frames, &mut out);
        }
        let sent: Vec<u64> = s.pending().inflight.iter().map(|f| f.seq).collect();
        assert_eq!(sent, [11, 12], "the window holds 2");
        assert!(frames.is_empty(), "no room: no recovery yet");
        let first = s.pending().inflight[0].packet_id;
        s.on_puback(first, &mut frames);
        assert!(
            acks(&mut frames.clone()).is_empty(),
            "a topic's PUBACK is no tether ack"
        );
        let (recovery, since) = frames
            .iter()
            .find_map(|f| match &f.body {
                Body::Subscribe(sub) if sub.topic == "room" => Some((f.id, sub.since)),
                _ => None,
            })
            .expect("a recovery for what did not fit");
        frames.clear();
        assert_eq!(since, Some(12), "after the last one sent");
        // A live one behind the gap is not sent before it.
        s.on_frame(publication(15), &mut frames, &mut out);
        assert_eq!(s.pending().inflight.back().map(|f| f.seq), Some(12));
        let complete = proto::Subscribed {
            app: "demo".into(),
            topic: "room".into(),
            offset: 15,
            recovery: proto::Recovery::Complete,
        };
        s.on_frame(Frame::new(recovery, complete), &mut frames, &mut out);
        for offset in 13..=15 {
            s.on_frame(publication(offset), &mut frames, &mut out);
        }
        let sent: Vec<u64> = s.pending().inflight.iter().map(|f| f.seq).collect();
        assert_eq!(sent, [12, 13], "in order, within the window");
        let ids: Vec<u16> = s.pending().inflight.iter().map(|f| f.packet_id).collect();
        for id in ids {
            s.on_puback(id, &mut frames);
        }
        let t = &s.topics[0];
        assert_eq!((t.acked, t.offset, t.gap), (13, 13, true));
        let stored: serde_json::Value = serde_json::from_slice(&s.stored(0)).unwrap();
        assert_eq!(
            stored["t"][0]["o"], 13,
            "the session resumes after what was acked"
        );
        // The next recovery fetches 14 and 15.
        let since = frames.iter().find_map(|f| match &f.body {
            Body::Subscribe(sub) => sub.since,
            _ => None,
        });
        assert_eq!(since, Some(13));
    }

    #[test]
    fn an_accepted_connection_keeps_no_copy_of_its_apps_ids() {
        let mut s = durable(64);
        let bindings = [crate::link::Binding::new("demo".into(), "u".into(), 0)];
        s.share_apps(&bindings);
        assert!(std::ptr::eq(
            s.apps[0].app.as_str(),
            bindings[0].app.as_str()
        ));
    }

    #[test]
    fn a_subscribe_keeps_the_wire_waiting_until_its_suback() {
        // The wire does not park while it waits: the answer comes as a queued frame, which
        // would wake the connection again at once.
        let mut s = durable(64);
        s.version = Some(Version::V311);
        assert!(!s.waiting());
        let (mut frames, mut out) = (VecDeque::new(), BytesMut::new());
        let req = ask_subscribe(&mut s, &mut frames, &mut out, 1, "t0", QoS::AtMostOnce);
        assert!(s.waiting(), "the SUBACK waits for `subscribed`");
        answer_subscribe(&mut s, &mut frames, &mut out, req, "t0", 0);
        assert!(!s.waiting(), "answered: nothing left to wait for");
    }

    #[test]
    fn a_parked_connection_keeps_a_small_state_without_spare_room() {
        // The state is what an idle MQTT connection keeps beside a TCP one (boxed in its
        // parked rest). It was 256 bytes (a 272-byte chunk of glibc's) until the window and
        // the waiting lists moved to `Pending`, boxed only while something is under way: 152
        // bytes, a 160-byte chunk. It may not grow: whatever is added should go behind an
        // `Option<Box<..>>` unless most connections use it (the session's expiry and
        // clean-start flags are the next to move there).
        let size = size_of::<State>();
        eprintln!("State: {size} bytes");
        assert!(size <= 152, "State grew to {size} bytes");

        let mut s = durable(64);
        s.version = Some(Version::V311);
        subscribe(&mut s, 1, "t0");
        subscribe(&mut s, 2, "$tether/topic/demo/t1");
        assert_eq!(s.topics.len(), 2);
        s.compact();
        assert!(
            s.pending.is_none(),
            "nothing under way, nothing kept for it"
        );
        assert_eq!(s.topics.capacity(), 2, "no spare room");
        // A filter that is the topic itself is not kept twice; one that is not is kept for
        // the publications' name.
        assert!(s.topics[0].name.is_none());
        assert_eq!(s.topics[1].name.as_deref(), Some("$tether/topic/demo/t1"));
        let (mut frames, mut out) = (VecDeque::new(), BytesMut::new());
        for (i, topic) in ["t0", "t1"].into_iter().enumerate() {
            let publication = proto::Publication {
                app: "demo".into(),
                topic: topic.into(),
                offset: 1,
                msg_id: 1,
                created_ms: 0,
                kind: PayloadKind::Binary,
                payload: Bytes::from_static(b"x"),
            };
            s.on_frame(Frame::new(0, publication), &mut frames, &mut out);
            let Ok(Some(Packet::Publish(p))) =
                mqtt::decode(&mut out, Some(Version::V311), u32::MAX)
            else {
                panic!("a PUBLISH");
            };
            let want = ["t0", "$tether/topic/demo/t1"][i];
            assert_eq!(p.topic, want);
        }
    }
}
