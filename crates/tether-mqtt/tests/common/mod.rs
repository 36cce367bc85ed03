//! Strategies for valid packets of each version, and byte mutations, shared by the round-trip
//! and fuzz tests.
#![allow(dead_code)]

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::subsequence;
use tether_mqtt::wire::VBI_MAX;
use tether_mqtt::*;

/// A UTF-8 string MQTT allows: no U+0000, with multi-byte characters now and then.
pub fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9/ _.$-]{0,16}",
        1 => "[\\x01-\\x7f\u{e9}\u{4e2d}\u{1f600}]{0,8}",
    ]
}

/// A topic name: not empty, no wildcards.
pub fn topic_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/_.$-]{1,20}"
}

pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn flag() -> impl Strategy<Value = u8> {
    0..=1u8
}

fn property(id: u8) -> BoxedStrategy<Property> {
    use Property::*;
    match id {
        0x01 => flag().prop_map(PayloadFormatIndicator).boxed(),
        0x02 => any::<u32>().prop_map(MessageExpiryInterval).boxed(),
        0x03 => string().prop_map(ContentType).boxed(),
        0x08 => topic_name().prop_map(ResponseTopic).boxed(),
        0x09 => bytes(16).prop_map(CorrelationData).boxed(),
        0x0B => (1..=VBI_MAX).prop_map(SubscriptionIdentifier).boxed(),
        0x11 => any::<u32>().prop_map(SessionExpiryInterval).boxed(),
        0x12 => string().prop_map(AssignedClientIdentifier).boxed(),
        0x13 => any::<u16>().prop_map(ServerKeepAlive).boxed(),
        0x15 => string().prop_map(AuthenticationMethod).boxed(),
        0x16 => bytes(16).prop_map(AuthenticationData).boxed(),
        0x17 => flag().prop_map(RequestProblemInformation).boxed(),
        0x18 => any::<u32>().prop_map(WillDelayInterval).boxed(),
        0x19 => flag().prop_map(RequestResponseInformation).boxed(),
        0x1A => string().prop_map(ResponseInformation).boxed(),
        0x1C => string().prop_map(ServerReference).boxed(),
        0x1F => string().prop_map(ReasonString).boxed(),
        0x21 => (1..=u16::MAX).prop_map(ReceiveMaximum).boxed(),
        0x22 => any::<u16>().prop_map(TopicAliasMaximum).boxed(),
        0x23 => (1..=u16::MAX).prop_map(TopicAlias).boxed(),
        0x24 => flag().prop_map(MaximumQos).boxed(),
        0x25 => flag().prop_map(RetainAvailable).boxed(),
        0x27 => (1..=u32::MAX).prop_map(MaximumPacketSize).boxed(),
        0x28 => flag().prop_map(WildcardSubscriptionAvailable).boxed(),
        0x29 => flag().prop_map(SubscriptionIdentifierAvailable).boxed(),
        0x2A => flag().prop_map(SharedSubscriptionAvailable).boxed(),
        _ => unreachable!("no property {id:#x}"),
    }
}

/// The identifiers each packet allows, but the user property (MQTT 5, 2.2.2.2).
pub const CONNECT: &[u8] = &[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x15, 0x16];
pub const WILL: &[u8] = &[0x18, 0x01, 0x02, 0x03, 0x08, 0x09];
pub const CONNACK: &[u8] = &[
    0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x28, 0x29, 0x2A, 0x13, 0x1A, 0x1C, 0x15, 0x16,
];
pub const PUBLISH: &[u8] = &[0x01, 0x02, 0x23, 0x08, 0x09, 0x0B, 0x03];
pub const ACK: &[u8] = &[0x1F];
pub const SUBSCRIBE: &[u8] = &[0x0B];
pub const NONE: &[u8] = &[];
pub const DISCONNECT: &[u8] = &[0x11, 0x1F, 0x1C];
pub const AUTH: &[u8] = &[0x15, 0x16, 0x1F];

/// Properties of one packet: a subset of its identifiers, each once, then user properties;
/// nothing in 3.1.1.
pub fn properties(v: Version, ids: &'static [u8]) -> BoxedStrategy<Properties> {
    if v == Version::V311 {
        return Just(Properties::default()).boxed();
    }
    (
        subsequence(ids, 0..=ids.len())
            .prop_flat_map(|ids| ids.into_iter().map(property).collect::<Vec<_>>()),
        vec(
            (string(), string()).prop_map(|(k, v)| Property::UserProperty(k, v)),
            0..3,
        ),
    )
        .prop_map(|(mut p, u)| {
            p.extend(u);
            Properties(p)
        })
        .boxed()
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn reason(v: Version) -> BoxedStrategy<ReasonCode> {
    match v {
        Version::V311 => Just(ReasonCode::SUCCESS).boxed(),
        Version::V5 => prop_oneof![Just(0u8), any::<u8>()]
            .prop_map(ReasonCode)
            .boxed(),
    }
}

fn ack(v: Version) -> impl Strategy<Value = Ack> {
    (1..=u16::MAX, reason(v), properties(v, ACK)).prop_map(|(packet_id, reason, properties)| Ack {
        packet_id,
        reason,
        properties,
    })
}

pub fn connect(v: Version) -> impl Strategy<Value = Packet> {
    let will = (
        qos(),
        any::<bool>(),
        topic_name(),
        bytes(32),
        properties(v, WILL),
    )
        .prop_map(|(qos, retain, topic, payload, properties)| Will {
            qos,
            retain,
            topic,
            payload,
            properties,
        });
    (
        string(),
        any::<bool>(),
        any::<u16>(),
        properties(v, CONNECT),
        proptest::option::of(will),
        proptest::option::of(string()),
        proptest::option::of(bytes(64)),
    )
        .prop_map(
            move |(client_id, clean_start, keep_alive, properties, will, username, password)| {
                // 3.1.1 has no password without a user name.
                let username = match (v, &password, username) {
                    (Version::V311, Some(_), None) => Some(String::new()),
                    (_, _, u) => u,
                };
                Packet::Connect(Box::new(Connect {
                    version: v,
                    client_id,
                    clean_start,
                    keep_alive,
                    properties,
                    will,
                    username,
                    password,
                }))
            },
        )
}

pub fn publish(v: Version) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        1..=u16::MAX,
        properties(v, PUBLISH),
        bytes(64),
    )
        .prop_map(
            |(qos, dup, retain, topic, id, properties, payload)| Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
                properties,
                payload,
            },
        )
}

fn options(v: Version) -> BoxedStrategy<SubscribeOptions> {
    match v {
        Version::V311 => qos().prop_map(SubscribeOptions::qos).boxed(),
        Version::V5 => (qos(), any::<bool>(), any::<bool>(), 0..=2u8)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscribeOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed(),
    }
}

fn codes(v: Version, n: std::ops::Range<usize>) -> BoxedStrategy<Vec<ReasonCode>> {
    match v {
        Version::V311 => vec(prop::sample::select(vec![0u8, 1, 2, 0x80]), n)
            .prop_map(|c| c.into_iter().map(ReasonCode).collect())
            .boxed(),
        Version::V5 => vec(any::<u8>().prop_map(ReasonCode), n).boxed(),
    }
}

/// Any packet of version `v`.
pub fn packet(v: Version) -> BoxedStrategy<Packet> {
    let unsuback_codes = match v {
        Version::V311 => Just(Vec::new()).boxed(),
        Version::V5 => codes(v, 1..4),
    };
    let mut s = vec![
        connect(v).boxed(),
        (any::<bool>(), any::<u8>(), properties(v, CONNACK))
            .prop_map(|(session_present, code, properties)| {
                Packet::ConnAck(ConnAck {
                    session_present,
                    code,
                    properties,
                })
            })
            .boxed(),
        publish(v).prop_map(Packet::Publish).boxed(),
        ack(v).prop_map(Packet::PubAck).boxed(),
        ack(v).prop_map(Packet::PubRec).boxed(),
        ack(v).prop_map(Packet::PubRel).boxed(),
        ack(v).prop_map(Packet::PubComp).boxed(),
        (
            1..=u16::MAX,
            properties(v, SUBSCRIBE),
            vec((string(), options(v)), 1..4),
        )
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (1..=u16::MAX, properties(v, ACK), codes(v, 1..4))
            .prop_map(|(packet_id, properties, codes)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    codes,
                })
            })
            .boxed(),
        (1..=u16::MAX, properties(v, NONE), vec(string(), 1..4))
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (1..=u16::MAX, properties(v, ACK), unsuback_codes)
            .prop_map(|(packet_id, properties, codes)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    codes,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (reason(v), properties(v, DISCONNECT))
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
            .boxed(),
    ];
    if v == Version::V5 {
        s.push(
            (reason(v), properties(v, AUTH))
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(s).boxed()
}

pub fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V311), Just(Version::V5)]
}

/// A version and a packet of it.
pub fn versioned_packet() -> impl Strategy<Value = (Version, Packet)> {
    version().prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
}

/// A change to an encoded packet.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

pub fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        if bytes.is_empty() {
            if let Mutation::Insert(_, b) = m {
                bytes.push(*b);
            }
            continue;
        }
        match m {
            Mutation::FlipBit(i, bit) => {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            Mutation::Set(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Mutation::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, *b);
            }
            Mutation::Remove(i) => {
                bytes.remove(i.index(bytes.len()));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }
}
