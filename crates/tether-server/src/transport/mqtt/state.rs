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
//! [`MAX_INFLIGHT`], upstreams by [`MAX_UPSTREAMS`], waiting SUBSCRIBEs by
//! [`MAX_WAITING_ACKS`].

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use tether_core::validate_id;
use tether_mqtt::{self as mqtt, Packet, PublishHead, QoS, ReasonCode, Version, reason::v311};
use tether_mqtt::{Properties, Property};
use tether_proto::{self as proto, Body, Code, Frame, PayloadKind};

/// QoS 1 PUBLISHes in flight to a device at most (and at most its Receive Maximum).
pub const MAX_INFLIGHT: u16 = 64;

/// QoS 1 PUBLISHes from a device waiting for their upstream's outcome at most: the CONNACK's
/// Receive Maximum.
pub const MAX_UPSTREAMS: u16 = 32;

/// SUBSCRIBEs and UNSUBSCRIBEs waiting for the session's answers at most; the filters of one
/// past them are refused (0x97 Quota exceeded).
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
#[derive(Debug, Default)]
struct AppInbox {
    app: String,
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

/// A QoS 1 PUBLISH waiting for its PUBACK.
#[derive(Debug, Clone, Copy)]
struct Inflight {
    /// 0 for a push skipped as too large for the device: acked at once.
    packet_id: u16,
    app: u8,
    seq: u64,
    acked: bool,
}

/// A topic the connection is subscribed to, and the name its publications go out on.
#[derive(Debug)]
struct TopicName {
    app: u8,
    topic: String,
    name: String,
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
    },
    Unsub {
        packet_id: u16,
        index: usize,
    },
    Refresh {
        app: u8,
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
    /// What the client asked for as Session Expiry Interval (MQTT 5).
    session_expiry: u32,
    apps: Vec<AppInbox>,
    /// The first app's name, for topic filters without `$tether/topic/`.
    next_packet_id: u16,
    next_req: u32,
    /// QoS 1 PUBLISHes in flight to the device at most.
    receive_max: u16,
    /// The largest packet the device takes.
    max_packet: u32,
    inflight: VecDeque<Inflight>,
    /// A `sync` is under way (the session takes one at a time).
    syncing: bool,
    topics: Vec<TopicName>,
    reqs: Vec<(u32, Req)>,
    acks: Vec<WaitingAck>,
    ups: VecDeque<Up>,
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

impl State {
    fn req(&mut self) -> u32 {
        self.next_req = self.next_req.wrapping_add(1).max(1);
        self.next_req
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            let id = self.next_packet_id;
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    fn app_index(&self, app: &str) -> Option<u8> {
        self.apps.iter().position(|a| a.app == app).map(|i| i as u8)
    }

    fn room(&self) -> usize {
        usize::from(self.receive_max).saturating_sub(self.inflight.len())
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
            Packet::Disconnect(_) => Ok(Flow::Gone),
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

    fn on_connect(
        &mut self,
        c: mqtt::Connect,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        self.version = Some(c.version);
        let props = &c.properties;
        self.problem_info = props
            .find(|p| match p {
                Property::RequestProblemInformation(v) => Some(*v),
                _ => None,
            })
            .is_none_or(|v| v == 1);
        self.session_expiry = props
            .find(|p| match p {
                Property::SessionExpiryInterval(s) => Some(*s),
                _ => None,
            })
            .unwrap_or(0);
        self.receive_max = props
            .find(|p| match p {
                Property::ReceiveMaximum(r) => Some(*r),
                _ => None,
            })
            .unwrap_or(MAX_INFLIGHT)
            .min(MAX_INFLIGHT);
        self.max_packet = props
            .find(|p| match p {
                Property::MaximumPacketSize(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(u32::MAX);
        let mut refuse = |state: &mut State, reason: ReasonCode, v311: Option<u8>, detail| {
            state.connack_refusal(reason, v311, detail, out);
            Err(Fail::new(Code::BAD_BINDINGS, reason, detail))
        };
        if props
            .iter()
            .any(|p| matches!(p, Property::AuthenticationMethod(_)))
        {
            return refuse(
                self,
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                None,
                "enhanced authentication is not taken: the password is the token",
            );
        }
        if c.version == Version::V5
            && let Some(will) = &c.will
        {
            if will.qos == QoS::ExactlyOnce {
                return refuse(self, ReasonCode::QOS_NOT_SUPPORTED, None, "a Will of QoS 2");
            }
            if will.retain {
                return refuse(
                    self,
                    ReasonCode::RETAIN_NOT_SUPPORTED,
                    None,
                    "a retained Will",
                );
            }
            let delayed = will
                .properties
                .iter()
                .any(|p| matches!(p, Property::WillDelayInterval(d) if *d > 0));
            if delayed {
                return refuse(
                    self,
                    ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    None,
                    "a Will Delay Interval is not supported",
                );
            }
        }
        let device = if c.client_id.is_empty() {
            if !c.clean_start {
                return refuse(
                    self,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    Some(v311::IDENTIFIER_REJECTED),
                    "an empty client identifier needs a clean session",
                );
            }
            let id = format!("mqtt-{:016x}", rand::random::<u64>());
            self.assigned = Some(id.clone());
            id
        } else {
            c.client_id
        };
        // The user name lists the apps, the password their tokens, in the same order.
        let username = c.username.unwrap_or_default();
        let password = c
            .password
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default();
        let apps: Vec<&str> = match username.is_empty() {
            true => Vec::new(),
            false => username.split(',').collect(),
        };
        let mut tokens = password.split(',');
        let last_seqs: Vec<(String, u64)> = props
            .user()
            .filter(|(k, _)| *k == "last_seq")
            .filter_map(|(_, v)| {
                let (app, seq) = v.rsplit_once(':')?;
                Some((app.to_string(), seq.parse().ok()?))
            })
            .collect();
        let bindings = apps
            .iter()
            .map(|app| proto::Binding {
                app: app.to_string(),
                token: tokens.next().unwrap_or_default().to_string(),
                last_seq: last_seqs.iter().find(|(a, _)| a == app).map(|(_, s)| *s),
            })
            .collect();
        self.apps = apps
            .iter()
            .map(|app| AppInbox {
                app: app.to_string(),
                ..AppInbox::default()
            })
            .collect();
        // The session closes after `heartbeat_missed` (3) silent heartbeats: a heartbeat of
        // half the keep alive closes after one and a half keep alives, as MQTT says.
        let heartbeat_ms = match c.keep_alive {
            0 => 60_000,
            k => u32::from(k) * 500,
        };
        frames.push_back(Frame::new(
            self.req(),
            proto::Connect {
                version: proto::PROTOCOL_VERSION,
                device,
                heartbeat_ms,
                bindings,
            },
        ));
        Ok(Flow::Go)
    }

    /// A CONNACK that refuses, unless 3.1.1 has no code for it (then the connection just
    /// closes, [MQTT-3.1.4-1]).
    pub(super) fn connack_refusal(
        &mut self,
        reason: ReasonCode,
        v311: Option<u8>,
        detail: &str,
        out: &mut BytesMut,
    ) {
        if self.closing {
            return;
        }
        self.closing = true;
        let version = v(self);
        let code = match version {
            Version::V5 => reason.0,
            Version::V311 => match v311 {
                Some(code) => code,
                None => return,
            },
        };
        let mut properties = Properties::new();
        if version == Version::V5 && self.problem_info && !detail.is_empty() {
            properties.push(Property::ReasonString(detail.to_string()));
        }
        let ack = mqtt::ConnAck {
            session_present: false,
            code,
            properties,
        };
        put(version, &Packet::ConnAck(ack), out);
    }

    /// What the device is told when the wire closes the connection for `fail`.
    pub fn failed(&mut self, fail: &Fail, out: &mut BytesMut) {
        if !self.connected {
            self.connack_refusal(fail.reason, None, fail.detail, out);
        } else {
            self.disconnect(fail.reason, fail.detail, out);
        }
    }

    /// A DISCONNECT (MQTT 5 only: 3.1.1 has none from the server).
    fn disconnect(&mut self, reason: ReasonCode, detail: &str, out: &mut BytesMut) {
        if self.closing {
            return;
        }
        self.closing = true;
        if v(self) != Version::V5 {
            return;
        }
        let mut d = mqtt::Disconnect::new(reason);
        if !detail.is_empty() {
            d.properties
                .push(Property::ReasonString(detail.to_string()));
        }
        put(Version::V5, &Packet::Disconnect(d), out);
    }

    fn on_puback(&mut self, packet_id: u16, frames: &mut VecDeque<Frame>) {
        match self
            .inflight
            .iter_mut()
            .find(|f| f.packet_id == packet_id && !f.acked)
        {
            Some(f) => f.acked = true,
            None => {
                self.unknown_acks += 1;
                return;
            }
        }
        self.settle_window(frames);
    }

    /// Takes the acked run at the front of the window off it, as one cumulative `ack` per
    /// app, then fetches what waited for room.
    fn settle_window(&mut self, frames: &mut VecDeque<Frame>) {
        let mut acked: Vec<(u8, u64)> = Vec::new();
        while let Some(f) = self.inflight.front().filter(|f| f.acked).copied() {
            self.inflight.pop_front();
            match acked.iter_mut().find(|(a, _)| *a == f.app) {
                Some((_, seq)) => *seq = (*seq).max(f.seq),
                None => acked.push((f.app, f.seq)),
            }
        }
        for (app, seq) in acked {
            let app = self.apps[usize::from(app)].app.clone();
            frames.push_back(Frame::new(self.req(), proto::Ack { app, seq }));
        }
        if self.inflight.is_empty() && self.inflight.capacity() > 0 {
            self.inflight = VecDeque::new();
        }
        self.sync_next(frames);
    }

    /// Asks the session for the durable pushes an inbox has not had, if one needs them and
    /// there is room for them in the window.
    fn sync_next(&mut self, frames: &mut VecDeque<Frame>) {
        if self.syncing || self.room() == 0 {
            return;
        }
        let room = self.room() as u32;
        let Some(i) = self.apps.iter().position(AppInbox::wants_sync) else {
            return;
        };
        let req = self.req();
        let app = &mut self.apps[i];
        app.sync_req = req;
        app.sync_got = false;
        self.syncing = true;
        frames.push_back(Frame::new(
            req,
            proto::Sync {
                app: app.app.clone(),
                after: app.sync_after(),
                limit: room,
            },
        ));
    }

    fn on_publish(
        &mut self,
        p: mqtt::Publish,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        let version = v(self);
        if p.qos == QoS::ExactlyOnce {
            return Err(Fail::new(
                Code::PROTOCOL,
                ReasonCode::QOS_NOT_SUPPORTED,
                "QoS 2 is not supported (Maximum QoS 1)",
            ));
        }
        if p.retain && version == Version::V5 {
            return Err(Fail::new(
                Code::PROTOCOL,
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retained messages are not supported",
            ));
        }
        if p.properties
            .iter()
            .any(|p| matches!(p, Property::TopicAlias(_)))
        {
            return Err(Fail::new(
                Code::PROTOCOL,
                ReasonCode::TOPIC_ALIAS_INVALID,
                "topic aliases are not supported (Topic Alias Maximum 0)",
            ));
        }
        let qos1 = p.qos == QoS::AtLeastOnce;
        let invalid = |out: &mut BytesMut| {
            if qos1 {
                let mut ack = mqtt::Ack::new(p.packet_id);
                ack.reason = ReasonCode::TOPIC_NAME_INVALID;
                put(version, &Packet::PubAck(ack), out);
            }
            Ok(Flow::Go)
        };
        if let Some(app) = p.topic.strip_prefix("$tether/refresh/") {
            let Some(app) = self.app_index(app) else {
                return invalid(out);
            };
            let req = self.req();
            self.reqs.push((req, Req::Refresh { app }));
            let token = String::from_utf8_lossy(&p.payload).trim().to_string();
            frames.push_back(Frame::new(
                req,
                proto::Refresh {
                    app: self.apps[usize::from(app)].app.clone(),
                    token,
                },
            ));
            if qos1 {
                put(version, &Packet::PubAck(mqtt::Ack::new(p.packet_id)), out);
            }
            return Ok(Flow::Go);
        }
        let (app, kind) = match p.topic.strip_prefix("$tether/upstream/") {
            Some(rest) => match rest.split_once('/') {
                Some((app, kind)) => match self.app_index(app) {
                    Some(i) => (i, kind.to_string()),
                    None => return invalid(out),
                },
                None => return invalid(out),
            },
            None if p.topic.starts_with('$') => return invalid(out),
            None => (0, p.topic.clone()),
        };
        if validate_id("kind", &kind).is_err() {
            return invalid(out);
        }
        let response = p.properties.find(|q| match q {
            Property::ResponseTopic(t) => Some(t.clone()),
            _ => None,
        });
        let correlation = p.properties.find(|q| match q {
            Property::CorrelationData(d) => Some(d.clone()),
            _ => None,
        });
        let payload_kind = match serde_json::from_slice::<serde::de::IgnoredAny>(&p.payload) {
            Ok(_) => PayloadKind::Json,
            Err(_) => PayloadKind::Binary,
        };
        let req = self.req();
        let reply_sub = self
            .reply_subs
            .iter()
            .any(|s| *s == format!("$tether/reply/{}/{kind}", self.apps[usize::from(app)].app));
        let tracked = qos1 || response.is_some() || reply_sub;
        if tracked {
            if self.ups.len() >= usize::from(MAX_UPSTREAMS) {
                if qos1 {
                    return Err(Fail::new(
                        Code::PROTOCOL,
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        "more QoS 1 PUBLISHes in flight than the Receive Maximum",
                    ));
                }
            } else {
                self.ups.push_back(Up {
                    req,
                    packet_id: if qos1 { p.packet_id } else { 0 },
                    app,
                    kind: kind.clone(),
                    response: response.map(|t| (t, correlation)),
                    done: None,
                });
            }
        }
        frames.push_back(Frame::new(
            req,
            proto::Upstream {
                app: self.apps[usize::from(app)].app.clone(),
                kind,
                payload_kind,
                payload: p.payload,
            },
        ));
        Ok(Flow::Go)
    }

    fn on_subscribe(
        &mut self,
        s: mqtt::Subscribe,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        let version = v(self);
        if s.properties
            .iter()
            .any(|p| matches!(p, Property::SubscriptionIdentifier(_)))
        {
            return Err(Fail::new(
                Code::PROTOCOL,
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not supported",
            ));
        }
        let token = s
            .properties
            .user()
            .find(|(k, _)| *k == "token")
            .map(|(_, t)| t.to_string());
        let busy = self.acks.len() >= MAX_WAITING_ACKS;
        let mut codes = vec![None; s.filters.len()];
        for (index, (filter, options)) in s.filters.into_iter().enumerate() {
            let qos = options.qos.min(QoS::AtLeastOnce);
            let granted = ReasonCode(qos as u8);
            let code = match self.classify(&filter) {
                Filter::Inbox { app, seq_form } => {
                    let a = &mut self.apps[usize::from(app)];
                    a.inbox = match qos {
                        QoS::AtMostOnce => Inbox::Live,
                        _ => Inbox::Durable,
                    };
                    a.seq_form = seq_form;
                    granted
                }
                Filter::Expiring => {
                    self.expiring = true;
                    ReasonCode::GRANTED_QOS_0
                }
                Filter::Reply if self.reply_subs.len() < MAX_REPLY_SUBS => {
                    if !self.reply_subs.contains(&filter) {
                        self.reply_subs.push(filter);
                    }
                    ReasonCode::GRANTED_QOS_0
                }
                Filter::Reply => ReasonCode::QUOTA_EXCEEDED,
                Filter::Refused(code) => code,
                Filter::Topic { .. } if busy => ReasonCode::QUOTA_EXCEEDED,
                Filter::Topic { app, topic } => {
                    let req = self.req();
                    frames.push_back(Frame::new(
                        req,
                        proto::Subscribe {
                            app: self.apps[usize::from(app)].app.clone(),
                            topic: topic.clone(),
                            since: None,
                            token: token.clone(),
                        },
                    ));
                    self.reqs.push((
                        req,
                        Req::Sub {
                            packet_id: s.packet_id,
                            index,
                            qos,
                            app,
                            topic,
                            filter,
                        },
                    ));
                    continue;
                }
            };
            codes[index] = Some(match (version, code.is_error()) {
                (Version::V311, true) => ReasonCode(v311::SUBACK_FAILURE),
                _ => code,
            });
        }
        self.sync_next(frames);
        self.waiting_ack(s.packet_id, false, codes, out);
        Ok(Flow::Go)
    }

    fn on_unsubscribe(
        &mut self,
        u: mqtt::Unsubscribe,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        let busy = self.acks.len() >= MAX_WAITING_ACKS;
        let mut codes = vec![None; u.filters.len()];
        for (index, filter) in u.filters.into_iter().enumerate() {
            codes[index] = Some(match self.classify(&filter) {
                Filter::Inbox { app, .. } => {
                    let a = &mut self.apps[usize::from(app)];
                    let had = a.inbox != Inbox::Off;
                    a.inbox = Inbox::Off;
                    match had {
                        true => ReasonCode::SUCCESS,
                        false => ReasonCode::NO_SUBSCRIPTION_EXISTED,
                    }
                }
                Filter::Expiring => {
                    self.expiring = false;
                    ReasonCode::SUCCESS
                }
                Filter::Reply => {
                    self.reply_subs.retain(|s| *s != filter);
                    ReasonCode::SUCCESS
                }
                Filter::Topic { .. } if busy => ReasonCode::UNSPECIFIED_ERROR,
                Filter::Topic { app, topic } => {
                    if !self.topics.iter().any(|t| t.app == app && t.topic == topic) {
                        ReasonCode::NO_SUBSCRIPTION_EXISTED
                    } else {
                        let req = self.req();
                        frames.push_back(Frame::new(
                            req,
                            proto::Unsubscribe {
                                app: self.apps[usize::from(app)].app.clone(),
                                topic,
                            },
                        ));
                        self.reqs.push((
                            req,
                            Req::Unsub {
                                packet_id: u.packet_id,
                                index,
                            },
                        ));
                        continue;
                    }
                }
                Filter::Refused(_) => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            });
        }
        self.waiting_ack(u.packet_id, true, codes, out);
        Ok(Flow::Go)
    }

    /// What a topic filter names.
    fn classify(&self, filter: &str) -> Filter {
        if let Some(rest) = filter.strip_prefix("$tether/inbox/") {
            let (app, seq_form) = match rest.strip_suffix("/+") {
                Some(app) => (app, true),
                None => (rest, false),
            };
            return match self.app_index(app) {
                Some(app) => Filter::Inbox { app, seq_form },
                None => Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID),
            };
        }
        if filter == "$tether/expiring" {
            return Filter::Expiring;
        }
        if mqtt::topic::is_shared(filter) {
            return Filter::Refused(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        if mqtt::topic::has_wildcards(filter) {
            return Filter::Refused(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        if let Some(rest) = filter.strip_prefix("$tether/reply/") {
            return match rest.split_once('/') {
                Some((app, kind)) if self.app_index(app).is_some() && !kind.is_empty() => {
                    Filter::Reply
                }
                _ => Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID),
            };
        }
        let (app, topic) = match filter.strip_prefix("$tether/topic/") {
            Some(rest) => match rest.split_once('/') {
                Some((app, topic)) => match self.app_index(app) {
                    Some(app) => (app, topic),
                    None => return Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID),
                },
                None => return Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID),
            },
            None if filter.starts_with('$') => {
                return Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID);
            }
            None => (0, filter),
        };
        if validate_id("topic", topic).is_err() {
            return Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID);
        }
        Filter::Topic {
            app,
            topic: topic.to_string(),
        }
    }

    /// Writes the SUBACK or UNSUBACK now if every filter has its code, else keeps it until
    /// the session answered the rest.
    fn waiting_ack(
        &mut self,
        packet_id: u16,
        unsubscribe: bool,
        codes: Vec<Option<ReasonCode>>,
        out: &mut BytesMut,
    ) {
        self.acks.push(WaitingAck {
            packet_id,
            unsubscribe,
            codes,
        });
        self.flush_acks(out);
    }

    fn flush_acks(&mut self, out: &mut BytesMut) {
        let version = v(self);
        while let Some(i) = self
            .acks
            .iter()
            .position(|a| a.codes.iter().all(Option::is_some))
        {
            let a = self.acks.remove(i);
            let codes = a.codes.into_iter().flatten().collect();
            let packet = match a.unsubscribe {
                false => Packet::SubAck(mqtt::SubAck {
                    packet_id: a.packet_id,
                    properties: Properties::new(),
                    codes,
                }),
                true => Packet::UnsubAck(mqtt::UnsubAck {
                    packet_id: a.packet_id,
                    properties: Properties::new(),
                    codes,
                }),
            };
            put(version, &packet, out);
        }
        if self.acks.is_empty() && self.acks.capacity() > 0 {
            self.acks = Vec::new();
        }
    }

    fn answer_filter(&mut self, packet_id: u16, unsubscribe: bool, index: usize, code: ReasonCode) {
        let code = match (v(self), code.is_error(), unsubscribe) {
            (Version::V311, true, false) => ReasonCode(v311::SUBACK_FAILURE),
            _ => code,
        };
        if let Some(a) = self
            .acks
            .iter_mut()
            .find(|a| a.packet_id == packet_id && a.unsubscribe == unsubscribe)
            && let Some(slot) = a.codes.get_mut(index)
        {
            *slot = Some(code);
        }
    }

    fn take_req(&mut self, id: u32) -> Option<Req> {
        let i = self.reqs.iter().position(|(r, _)| *r == id)?;
        Some(self.reqs.swap_remove(i).1)
    }

    /// One frame from the session: packets for the device go to `out`; requests the wire
    /// makes in turn (a `sync`, an `ack`) to `frames`.
    pub fn on_frame(&mut self, frame: Frame, frames: &mut VecDeque<Frame>, out: &mut BytesMut) {
        if self.closing {
            return;
        }
        let id = frame.id;
        match frame.body {
            Body::Connected(c) => self.on_connected(c, out),
            Body::Disconnect(d) => self.on_disconnect(d, out),
            Body::Pong => put(v(self), &Packet::PingResp, out),
            Body::Push(p) => self.on_push(id, p, frames, out),
            Body::Synced(s) => self.on_synced(id, s, frames),
            Body::Publication(p) => self.on_publication(p, out),
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

    fn on_connected(&mut self, c: proto::Connected, out: &mut BytesMut) {
        self.connected = true;
        let version = v(self);
        let mut props = Properties::new();
        if version == Version::V5 {
            if self.session_expiry > 0 {
                // No MQTT session outlives the connection (the inbox's position does).
                props.push(Property::SessionExpiryInterval(0));
            }
            if let Some(id) = &self.assigned {
                props.push(Property::AssignedClientIdentifier(id.clone()));
            }
            let keep_alive = (c.heartbeat_ms / 500).min(u32::from(u16::MAX)) as u16;
            props.push(Property::ServerKeepAlive(keep_alive));
            props.push(Property::ReceiveMaximum(MAX_UPSTREAMS));
            props.push(Property::MaximumPacketSize(c.max_frame));
            props.push(Property::MaximumQos(1));
            props.push(Property::RetainAvailable(0));
            props.push(Property::WildcardSubscriptionAvailable(0));
            props.push(Property::SubscriptionIdentifierAvailable(0));
            props.push(Property::SharedSubscriptionAvailable(0));
            for b in &c.bindings {
                props.push(Property::UserProperty(
                    "user".into(),
                    format!("{}:{}", b.app, b.user),
                ));
            }
            props.push(Property::UserProperty("node".into(), c.node.clone()));
            props.push(Property::UserProperty(
                "conn_id".into(),
                c.conn_id.to_string(),
            ));
        }
        let ack = mqtt::ConnAck {
            session_present: false,
            code: 0,
            properties: props,
        };
        put(version, &Packet::ConnAck(ack), out);
    }

    fn on_disconnect(&mut self, d: proto::Disconnect, out: &mut BytesMut) {
        if self.version.is_none() {
            // No CONNECT was read (a timeout, a first packet that was none): no CONNACK can
            // be written in a version the client reads.
            self.closing = true;
            return;
        }
        if !self.connected {
            let (reason, v311) = connack_code(d.code);
            self.connack_refusal(reason, v311, &d.reason, out);
        } else {
            self.disconnect(disconnect_code(d.code), &d.reason, out);
        }
    }

    fn on_push(
        &mut self,
        id: u32,
        p: proto::Push,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) {
        let Some(ai) = self.app_index(&p.app) else {
            return;
        };
        let a = &mut self.apps[usize::from(ai)];
        if p.qos == 0 || p.seq == 0 {
            if id == 0 && a.inbox != Inbox::Off {
                self.publish_push(ai, &p, QoS::AtMostOnce, out);
            }
            return;
        }
        if id != 0 && id != a.sync_req {
            return;
        }
        match a.inbox {
            Inbox::Off => {
                if id == 0 {
                    a.missed(p.seq);
                }
                return;
            }
            Inbox::Live => {
                if id == 0 {
                    self.publish_push(ai, &p, QoS::AtMostOnce, out);
                }
                return;
            }
            Inbox::Durable => {}
        }
        if p.seq <= a.delivered {
            return;
        }
        let room = usize::from(self.receive_max) > self.inflight.len();
        let a = &mut self.apps[usize::from(ai)];
        if (id == 0 && (a.sync_req != 0 || a.gap_hi > a.delivered)) || !room {
            a.missed(p.seq);
            self.sync_next(frames);
            return;
        }
        if id != 0 {
            a.sync_got = true;
        }
        a.delivered = p.seq;
        self.publish_push(ai, &p, QoS::AtLeastOnce, out);
    }

    /// Publishes a push on its inbox topic; a durable one takes a place in the window.
    fn publish_push(&mut self, app: u8, p: &proto::Push, qos: QoS, out: &mut BytesMut) {
        let version = v(self);
        let a = &self.apps[usize::from(app)];
        let topic = match a.seq_form {
            true => format!("$tether/inbox/{}/{}", a.app, p.seq),
            false => format!("$tether/inbox/{}", a.app),
        };
        let mut props = Properties::new();
        if version == Version::V5 {
            props.push(Property::UserProperty("seq".into(), p.seq.to_string()));
            props.push(Property::UserProperty(
                "msg_id".into(),
                p.msg_id.to_string(),
            ));
            props.push(Property::UserProperty(
                "created_ms".into(),
                p.created_ms.to_string(),
            ));
            json_format(&mut props, p.kind);
        }
        let packet_id = match qos {
            QoS::AtMostOnce => 0,
            _ => self.packet_id(),
        };
        let written = self.publish(out, &topic, qos, packet_id, &props, &p.payload);
        if qos == QoS::AtLeastOnce {
            // One the device cannot take counts as sent and acked (docs/mqtt.md 4.5).
            self.inflight.push_back(Inflight {
                packet_id: if written { packet_id } else { 0 },
                app,
                seq: p.seq,
                acked: !written,
            });
        }
    }

    fn on_synced(&mut self, id: u32, s: proto::Synced, frames: &mut VecDeque<Frame>) {
        let Some(a) = self.apps.iter_mut().find(|a| a.sync_req == id && id != 0) else {
            return;
        };
        a.sync_req = 0;
        self.syncing = false;
        // A device that left the QoS 1 inbox while the sync ran had the sync's pushes
        // dropped: its gap stays as it is, for its next QoS 1 subscribe to fetch.
        if a.inbox == Inbox::Durable {
            if a.sync_got {
                a.gap_hi = a.gap_hi.max(s.head);
            } else {
                // Nothing after `after` is held any more: what was missed expired.
                a.gap_hi = 0;
                a.gap_lo = 0;
            }
        }
        // Entries skipped as too large may have left an acked run at the front.
        self.settle_window(frames);
    }

    fn on_publication(&mut self, p: proto::Publication, out: &mut BytesMut) {
        let Some(app) = self.app_index(&p.app) else {
            return;
        };
        let name = match self
            .topics
            .iter()
            .find(|t| t.app == app && t.topic == p.topic)
        {
            Some(t) => t.name.clone(),
            None => self.topic_name(app, &p.topic),
        };
        let mut props = Properties::new();
        if v(self) == Version::V5 {
            props.push(Property::UserProperty(
                "offset".into(),
                p.offset.to_string(),
            ));
            props.push(Property::UserProperty(
                "msg_id".into(),
                p.msg_id.to_string(),
            ));
            json_format(&mut props, p.kind);
        }
        self.publish0(out, &name, props, &p.payload);
    }

    /// The name a topic's publications go out on when no SUBSCRIBE named it.
    fn topic_name(&self, app: u8, topic: &str) -> String {
        match app == 0 && !topic.starts_with('$') {
            true => topic.to_string(),
            false => format!("$tether/topic/{}/{topic}", self.apps[usize::from(app)].app),
        }
    }

    fn on_subscribed(&mut self, id: u32, s: proto::Subscribed, out: &mut BytesMut) {
        let (app, topic, name, answer) = match self.take_req(id) {
            Some(Req::Sub {
                packet_id,
                index,
                qos,
                app,
                topic,
                filter,
            }) => (app, topic, filter, Some((packet_id, index, qos))),
            Some(other) => {
                self.reqs.push((id, other));
                return;
            }
            None => {
                let Some(app) = self.app_index(&s.app) else {
                    return;
                };
                let name = self.topic_name(app, &s.topic);
                (app, s.topic, name, None)
            }
        };
        match self
            .topics
            .iter_mut()
            .find(|t| t.app == app && t.topic == topic)
        {
            Some(t) => t.name = name,
            None => self.topics.push(TopicName { app, topic, name }),
        }
        if let Some((packet_id, index, qos)) = answer {
            self.answer_filter(packet_id, false, index, ReasonCode(qos as u8));
            self.flush_acks(out);
        }
    }

    fn on_unsubscribed(&mut self, id: u32, u: proto::Unsubscribed, out: &mut BytesMut) {
        if let Some(app) = self.app_index(&u.app) {
            self.topics
                .retain(|t| !(t.app == app && t.topic == u.topic));
        }
        match self.take_req(id) {
            Some(Req::Unsub { packet_id, index }) => {
                self.answer_filter(packet_id, true, index, ReasonCode::SUCCESS);
                self.flush_acks(out);
            }
            Some(other) => self.reqs.push((id, other)),
            None => {}
        }
    }

    fn on_error(
        &mut self,
        id: u32,
        e: proto::ErrorBody,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) {
        if let Some(a) = self.apps.iter_mut().find(|a| a.sync_req == id && id != 0) {
            // The store failed: the next PUBACK or SUBSCRIBE tries again.
            a.sync_req = 0;
            self.syncing = false;
            tracing::debug!(code = %e.code, "an MQTT inbox sync failed");
            return;
        }
        match self.take_req(id) {
            Some(Req::Sub {
                packet_id, index, ..
            }) => {
                let code = match e.code {
                    Code::FORBIDDEN => ReasonCode::NOT_AUTHORIZED,
                    Code::LIMIT => ReasonCode::QUOTA_EXCEEDED,
                    Code::BAD_REQUEST => ReasonCode::TOPIC_FILTER_INVALID,
                    _ => ReasonCode::UNSPECIFIED_ERROR,
                };
                self.answer_filter(packet_id, false, index, code);
                self.flush_acks(out);
            }
            Some(Req::Unsub { packet_id, index }) => {
                self.answer_filter(packet_id, true, index, ReasonCode::UNSPECIFIED_ERROR);
                self.flush_acks(out);
            }
            Some(Req::Refresh { app }) => {
                let topic = format!(
                    "$tether/refresh_refused/{}",
                    self.apps[usize::from(app)].app
                );
                self.publish0(out, &topic, Properties::new(), &Bytes::from(e.message));
            }
            None => {
                let code = match e.code {
                    Code::UNAVAILABLE => ReasonCode::QUOTA_EXCEEDED,
                    Code::NO_WEBHOOK => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    Code::BAD_REQUEST => ReasonCode::QUOTA_EXCEEDED,
                    _ => ReasonCode::UNSPECIFIED_ERROR,
                };
                let body = Bytes::from(e.message);
                self.upstream_done(id, code, e.code.0, PayloadKind::Binary, body, out);
            }
        }
        let _ = frames;
    }

    /// An upstream's outcome: its reply on the response topic (5) or the reply topic (3.1.1),
    /// and the PUBACKs that are now due, in the order their PUBLISHes came.
    fn upstream_done(
        &mut self,
        req: u32,
        code: ReasonCode,
        status: u16,
        kind: PayloadKind,
        payload: Bytes,
        out: &mut BytesMut,
    ) {
        let version = v(self);
        let Some(i) = self
            .ups
            .iter()
            .position(|u| u.req == req && u.done.is_none())
        else {
            return;
        };
        self.ups[i].done = Some(code);
        let (app, up_kind, response) = {
            let u = &mut self.ups[i];
            (u.app, u.kind.clone(), u.response.take())
        };
        match (version, response) {
            (Version::V5, Some((topic, correlation))) => {
                let mut props = Properties::new();
                if let Some(c) = correlation {
                    props.push(Property::CorrelationData(c));
                }
                props.push(Property::UserProperty("status".into(), status.to_string()));
                json_format(&mut props, kind);
                self.publish0(out, &topic, props, &payload);
            }
            _ => {
                let topic = format!(
                    "$tether/reply/{}/{up_kind}",
                    self.apps[usize::from(app)].app
                );
                if self.reply_subs.contains(&topic) {
                    self.publish0(out, &topic, Properties::new(), &payload);
                }
            }
        }
        while let Some(u) = self.ups.front().filter(|u| u.done.is_some()) {
            if u.packet_id != 0 {
                let mut ack = mqtt::Ack::new(u.packet_id);
                ack.reason = u.done.unwrap_or(ReasonCode::SUCCESS);
                put(version, &Packet::PubAck(ack), out);
            }
            self.ups.pop_front();
        }
    }

    fn publish0(&mut self, out: &mut BytesMut, topic: &str, props: Properties, payload: &Bytes) {
        self.publish(out, topic, QoS::AtMostOnce, 0, &props, payload);
    }

    /// Appends a PUBLISH to `out`, unless it is larger than the device takes: `false` then.
    fn publish(
        &mut self,
        out: &mut BytesMut,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        properties: &Properties,
        payload: &Bytes,
    ) -> bool {
        let head = PublishHead {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            properties,
        };
        let mut bytes = BytesMut::new();
        if mqtt::encode_publish_head(v(self), &head, payload.len(), &mut bytes).is_err() {
            return false;
        }
        if (bytes.len() + payload.len()) as u64 > u64::from(self.max_packet) {
            return false;
        }
        out.put(bytes);
        out.put_slice(payload);
        true
    }
}

/// What a topic filter names.
enum Filter {
    Inbox { app: u8, seq_form: bool },
    Expiring,
    Reply,
    Topic { app: u8, topic: String },
    Refused(ReasonCode),
}

fn json_format(props: &mut Properties, kind: PayloadKind) {
    if kind == PayloadKind::Json {
        props.push(Property::PayloadFormatIndicator(1));
        props.push(Property::ContentType("application/json".into()));
    }
}

/// The CONNACK codes (5.0, 3.1.1) of a handshake refusal (docs/mqtt.md, section 3).
fn connack_code(code: Code) -> (ReasonCode, Option<u8>) {
    let unavailable = Some(v311::SERVER_UNAVAILABLE);
    let bad = Some(v311::BAD_USER_NAME_OR_PASSWORD);
    match code {
        Code::UNSUPPORTED_VERSION => (
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            Some(v311::UNACCEPTABLE_PROTOCOL_VERSION),
        ),
        Code::PROTOCOL => (
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            Some(v311::IDENTIFIER_REJECTED),
        ),
        Code::BAD_BINDINGS | Code::UNKNOWN_APP | Code::BAD_TOKEN | Code::TOKEN_EXPIRED => {
            (ReasonCode::BAD_USER_NAME_OR_PASSWORD, bad)
        }
        Code::IP_LIMIT => (ReasonCode::CONNECTION_RATE_EXCEEDED, unavailable),
        Code::CONNECTION_LIMIT => (ReasonCode::SERVER_BUSY, unavailable),
        Code::DRAIN => (ReasonCode::USE_ANOTHER_SERVER, unavailable),
        Code::SHUTDOWN => (ReasonCode::SERVER_UNAVAILABLE, unavailable),
        Code::FRAME_TOO_LARGE => (ReasonCode::PACKET_TOO_LARGE, None),
        Code::HANDSHAKE_TIMEOUT | Code::EXPECTED_CONNECT => (ReasonCode::PROTOCOL_ERROR, None),
        _ => (ReasonCode::UNSPECIFIED_ERROR, unavailable),
    }
}

/// The DISCONNECT reason (5.0) of a close the server makes (docs/mqtt.md, section 11).
fn disconnect_code(code: Code) -> ReasonCode {
    match code {
        Code::KICKED => ReasonCode::ADMINISTRATIVE_ACTION,
        Code::APP_REMOVED => ReasonCode::NOT_AUTHORIZED,
        Code::TOKEN_EXPIRED => ReasonCode::MAXIMUM_CONNECT_TIME,
        Code::DRAIN => ReasonCode::USE_ANOTHER_SERVER,
        Code::SHUTDOWN => ReasonCode::SERVER_SHUTTING_DOWN,
        Code::SLOW => ReasonCode::QUOTA_EXCEEDED,
        Code::HEARTBEAT_TIMEOUT => ReasonCode::KEEP_ALIVE_TIMEOUT,
        Code::PROTOCOL | Code::UNKNOWN_OP | Code::EXPECTED_CONNECT => ReasonCode::PROTOCOL_ERROR,
        Code::FRAME_TOO_LARGE => ReasonCode::PACKET_TOO_LARGE,
        _ => ReasonCode::UNSPECIFIED_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durable(receive_max: u16) -> State {
        State {
            version: Some(Version::V5),
            connected: true,
            receive_max,
            max_packet: u32::MAX,
            apps: vec![AppInbox {
                app: "demo".into(),
                inbox: Inbox::Durable,
                ..AppInbox::default()
            }],
            ..State::default()
        }
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
        assert_eq!(s.inflight.len(), 3);
        s.on_puback(2, &mut frames);
        assert_eq!(acks(&mut frames), Vec::<u64>::new(), "1 is not acked yet");
        s.on_puback(1, &mut frames);
        assert_eq!(acks(&mut frames), [2]);
        s.on_puback(7, &mut frames);
        assert_eq!(s.unknown_acks, 1);
        s.on_puback(3, &mut frames);
        assert_eq!(acks(&mut frames), [3]);
        assert!(s.inflight.is_empty());
    }

    #[test]
    fn pushes_past_the_window_are_pulled_with_sync_once_it_has_room() {
        let (mut s, mut frames, mut out) = (durable(2), VecDeque::new(), BytesMut::new());
        for seq in 1..=4 {
            s.on_frame(push(seq), &mut frames, &mut out);
        }
        assert_eq!(s.inflight.len(), 2, "the window holds 2");
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
        assert_eq!(s.inflight.back().map(|f| f.seq), Some(2));
        let mut reply = push(3);
        reply.id = sync.0;
        s.on_frame(reply, &mut frames, &mut out);
        assert_eq!(s.inflight.back().map(|f| f.seq), Some(3));
    }

    #[test]
    fn nothing_goes_out_on_the_inbox_before_its_subscribe() {
        let mut s = durable(64);
        s.apps[0].inbox = Inbox::Off;
        let (mut frames, mut out) = (VecDeque::new(), BytesMut::new());
        s.on_frame(push(4), &mut frames, &mut out);
        s.on_frame(push(5), &mut frames, &mut out);
        assert!(out.is_empty() && s.inflight.is_empty());
        s.apps[0].inbox = Inbox::Durable;
        s.sync_next(&mut frames);
        match &frames.front().expect("a sync").body {
            Body::Sync(sync) => assert_eq!(sync.after, 3, "from before the first one missed"),
            other => panic!("{other:?}"),
        }
    }
}
