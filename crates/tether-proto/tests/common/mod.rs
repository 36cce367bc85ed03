//! Proptest strategies for every frame, shared by the integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;
use tether_proto::{
    Ack, Binding, Body, Bound, Code, Connect, Connected, Disconnect, ErrorBody, Expiring, Frame,
    PayloadKind, Publication, Push, Recovery, Refresh, Refreshed, Subscribe, Subscribed, Sync,
    Synced, Unsubscribe, Unsubscribed, Upstream, UpstreamReply,
};

/// Any string, control characters and non-ASCII included; short, to keep cases fast.
pub fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

/// Arbitrary JSON text, as compact serde_json writes it.
pub fn json_text() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(), inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .prop_map(|v| serde_json::to_vec(&v).unwrap_or_default())
    .prop_filter("non-empty JSON", |v| !v.is_empty())
}

/// How push payloads are generated.
#[derive(Debug, Clone, Copy)]
pub enum Payloads {
    /// Any kind with any bytes: the binary encoding carries them as they are.
    Any,
    /// Kind json only with JSON text: what the JSON encoding round-trips exactly.
    JsonRoundTrip,
}

pub fn push(payloads: Payloads) -> impl Strategy<Value = Push> {
    let bytes = vec(any::<u8>(), 0..48).prop_map(Bytes::from);
    let payload = match payloads {
        Payloads::Any => prop_oneof![
            bytes.clone().prop_map(|b| (PayloadKind::Binary, b)),
            bytes.prop_map(|b| (PayloadKind::Json, b)),
            json_text().prop_map(|b| (PayloadKind::Json, Bytes::from(b))),
        ]
        .boxed(),
        Payloads::JsonRoundTrip => prop_oneof![
            bytes.prop_map(|b| (PayloadKind::Binary, b)),
            json_text().prop_map(|b| (PayloadKind::Json, Bytes::from(b))),
        ]
        .boxed(),
    };
    (
        text(),
        any::<u64>(),
        any::<u64>(),
        any::<u8>(),
        any::<u64>(),
        payload,
    )
        .prop_map(
            |(app, msg_id, seq, qos, created_ms, (kind, payload))| Push {
                app,
                msg_id,
                seq,
                qos,
                created_ms,
                kind,
                payload,
            },
        )
}

pub fn body(payloads: Payloads) -> impl Strategy<Value = Body> {
    let topics = prop_oneof![
        (
            text(),
            text(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(text())
        )
            .prop_map(|(app, topic, since, token)| Body::Subscribe(Subscribe {
                app,
                topic,
                since,
                token
            })),
        (text(), text()).prop_map(|(app, token)| Body::Refresh(Refresh { app, token })),
        (text(), any::<u64>())
            .prop_map(|(app, expires_s)| Body::Refreshed(Refreshed { app, expires_s })),
        (text(), any::<u64>())
            .prop_map(|(app, expires_s)| Body::Expiring(Expiring { app, expires_s })),
        (text(), text(), any::<u64>(), 0..3u8).prop_map(|(app, topic, offset, r)| {
            Body::Subscribed(Subscribed {
                app,
                topic,
                offset,
                recovery: Recovery::from_u8(r).unwrap_or(Recovery::Live),
            })
        }),
        (text(), text()).prop_map(|(app, topic)| Body::Unsubscribe(Unsubscribe { app, topic })),
        (text(), text()).prop_map(|(app, topic)| Body::Unsubscribed(Unsubscribed { app, topic })),
        (push(payloads), text(), any::<u64>()).prop_map(|(p, topic, offset)| {
            Body::Publication(Publication {
                app: p.app,
                topic,
                offset,
                msg_id: p.msg_id,
                created_ms: p.created_ms,
                kind: p.kind,
                payload: p.payload,
            })
        }),
    ];
    let upstream = prop_oneof![
        (push(payloads), text()).prop_map(|(p, kind)| {
            Body::Upstream(Upstream {
                app: p.app,
                kind,
                payload_kind: p.kind,
                payload: p.payload,
            })
        }),
        (push(payloads), any::<u16>()).prop_map(|(p, status)| {
            Body::UpstreamReply(UpstreamReply {
                app: p.app,
                status,
                kind: p.kind,
                payload: p.payload,
            })
        }),
    ];
    let connect = (
        any::<u8>(),
        text(),
        any::<u32>(),
        vec((text(), text(), proptest::option::of(any::<u64>())), 0..4),
    )
        .prop_map(|(version, device, heartbeat_ms, bindings)| {
            Body::Connect(Connect {
                version,
                device,
                heartbeat_ms,
                bindings: bindings
                    .into_iter()
                    .map(|(app, token, last_seq)| Binding {
                        app,
                        token,
                        last_seq,
                    })
                    .collect(),
            })
        });
    let connected = (
        any::<u64>(),
        text(),
        any::<u32>(),
        any::<u32>(),
        vec((text(), text()), 0..4),
    )
        .prop_map(|(conn_id, node, heartbeat_ms, max_frame, bindings)| {
            Body::Connected(Connected {
                conn_id,
                node,
                heartbeat_ms,
                max_frame,
                bindings: bindings
                    .into_iter()
                    .map(|(app, user)| Bound { app, user })
                    .collect(),
            })
        });
    prop_oneof![
        connect,
        connected,
        Just(Body::Ping),
        Just(Body::Pong),
        push(payloads).prop_map(Body::Push),
        (text(), any::<u64>()).prop_map(|(app, seq)| Body::Ack(Ack { app, seq })),
        (text(), any::<u64>(), any::<u32>()).prop_map(|(app, after, limit)| Body::Sync(Sync {
            app,
            after,
            limit
        })),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(app, last, head)| Body::Synced(Synced {
            app,
            last,
            head
        })),
        (any::<u16>(), text()).prop_map(|(code, message)| Body::Error(ErrorBody {
            code: Code(code),
            message
        })),
        (any::<u16>(), text(), any::<u32>()).prop_map(|(code, reason, retry_after_ms)| {
            Body::Disconnect(Disconnect {
                code: Code(code),
                reason,
                retry_after_ms,
            })
        }),
        topics,
        upstream,
    ]
}

pub fn frame(payloads: Payloads) -> impl Strategy<Value = Frame> {
    (any::<u32>(), body(payloads)).prop_map(|(id, body)| Frame { id, body })
}

/// A change to an encoded frame.
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
