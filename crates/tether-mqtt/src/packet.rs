//! The packet model: one type per MQTT control packet, shared by 3.1.1 and 5.0.
//!
//! Fields that exist only in MQTT 5 (properties, reason codes on acknowledgements) are empty
//! or [`ReasonCode::SUCCESS`] in a 3.1.1 packet, and are not written when one is encoded as
//! 3.1.1. Decoded strings are owned; payloads, binary data and passwords share the read
//! buffer's allocation.

use bytes::Bytes;

use crate::{Properties, ReasonCode};

/// The protocol versions this codec speaks, by their CONNECT protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Version {
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// Quality of service: at most once, at least once, exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `None` for 3, which is malformed wherever a QoS goes.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The control packet types, by their number in the fixed header's high nibble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    /// MQTT 5 only; 15 is reserved in 3.1.1.
    Auth = 15,
}

impl PacketType {
    /// `None` for 0, which is reserved in both versions.
    pub fn from_u8(v: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match v {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The fixed header's flags this type must carry (PUBLISH's are its own, see
    /// [`Publish`]): `0010` for PUBREL, SUBSCRIBE and UNSUBSCRIBE, `0000` for the rest
    /// ([MQTT-2.2.2-1]).
    pub fn fixed_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    pub fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            PingReq => "PINGREQ",
            PingResp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Boxed: by far the largest, and one per connection.
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT: the client's first packet. Its own protocol level says which version the
/// connection speaks, so it decodes without knowing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    /// Clean Session (3.1.1) or Clean Start (5).
    pub clean_start: bool,
    /// Seconds; 0 turns the keep-alive off.
    pub keep_alive: u16,
    pub properties: Properties,
    pub will: Option<Will>,
    pub username: Option<String>,
    /// Binary data, not a string: tether's tokens go here.
    pub password: Option<Bytes>,
}

/// The Will of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    pub payload: Bytes,
    pub properties: Properties,
}

/// CONNACK. `code` is an MQTT 5 reason code, or a 3.1.1 return code (see
/// [`crate::reason::v311`]): the version decides how it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Only with QoS 1 or 2 ([MQTT-3.3.1-2] of 5.0).
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// No wildcards; empty only with an MQTT 5 Topic Alias.
    pub topic: String,
    /// 0 for QoS 0 (and not written), else 1 to 65535.
    pub packet_id: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id, and in MQTT 5 a reason code and
/// properties (both may be left out on the wire when they are success and none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    /// A successful acknowledgement of `packet_id`, with no properties.
    pub fn new(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }
}

/// The options byte of each SUBSCRIBE filter. 3.1.1 has only the QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub qos: QoS,
    /// MQTT 5: do not send the client its own publications.
    pub no_local: bool,
    /// MQTT 5: keep the RETAIN flag as published.
    pub retain_as_published: bool,
    /// MQTT 5: 0 send retained messages at subscribe, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

impl SubscribeOptions {
    /// Only a QoS, the other options at their defaults (what 3.1.1 has).
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// SUBSCRIBE: one or more topic filters, each with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<(String, SubscribeOptions)>,
}

/// SUBACK: one code per filter, in order. In 3.1.1 a code is the granted QoS (0 to 2) or
/// 0x80 (failure); in MQTT 5 a reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE: one or more topic filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<String>,
}

/// UNSUBACK. 3.1.1's has only the packet id (`codes` empty); MQTT 5's one code per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub codes: Vec<ReasonCode>,
}

/// DISCONNECT. 3.1.1's is empty (and only sent by clients); MQTT 5's has a reason code and
/// properties, both left out on the wire when they are "normal disconnection" and none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: Properties::default(),
        }
    }
}

/// AUTH (MQTT 5 only): tether refuses enhanced authentication, but decodes it to say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}
