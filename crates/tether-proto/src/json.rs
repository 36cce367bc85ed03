//! The JSON encoding: WebSocket text messages, one frame per message, for browsers and
//! debugging.
//!
//! Every frame is one object with `"op"` (the op's name) and `"id"` (the request id; 0 when
//! absent), plus the body's fields under their snake_case names:
//!
//! ```json
//! {"op":"ack","id":3,"app":"demo","seq":17}
//! ```
//!
//! - Unknown fields are ignored (forward compatibility); a known field given twice is an error.
//!   A `null` optional field counts as absent.
//! - A push's `msg_id` is a decimal string (it may exceed 2^53); decoding accepts a number too.
//! - A push whose kind is JSON and whose payload is valid JSON embeds it as-is in `"payload"`
//!   (never re-serialised; surrounding whitespace is dropped). Any other payload goes in
//!   `"payload_base64"` (standard alphabet) and decodes with kind binary.
//! - `disconnect` also carries `"reconnect"`: `"retry"`, `"redispatch"` or `"no"`, derived from
//!   the code's group for browser clients; decoders ignore it.
//!
//! `docs/protocol.md` lists every op's fields and defaults. Callers enforce the maximum message
//! size before calling [`decode`]. Neither function panics.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::error::DecodeError;
use crate::frame::{
    Ack, Binding, Body, Bound, Connect, Connected, Disconnect, ErrorBody, Frame, Op,
    PROTOCOL_VERSION, PayloadKind, Publication, Push, Recovery, Subscribe, Subscribed, Sync,
    Synced, Unsubscribe, Unsubscribed, Upstream, UpstreamReply,
};
use crate::{Code, Group};

/// Standard alphabet; padding optional when decoding (some clients strip it).
const BASE64_IN: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------------
// Decoding

/// Parse one JSON frame.
///
/// Unknown op name: [`DecodeError::UnknownOp`]. Invalid JSON, a missing or ill-typed field:
/// [`DecodeError::Json`], naming the field.
pub fn decode(text: &[u8]) -> Result<Frame, DecodeError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| DecodeError::Json("message is not valid UTF-8".into()))?;
    let f: Fields<'_> = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let op_name: String = f.req(F::Op)?;
    let op = Op::from_name(&op_name).ok_or(DecodeError::UnknownOp(op_name))?;
    let id = f.or(F::Id, 0u32)?;
    let body = match op {
        Op::Connect => Body::Connect(Connect {
            version: f.or(F::Version, PROTOCOL_VERSION)?,
            device: f.req(F::Device)?,
            heartbeat_ms: f.or(F::HeartbeatMs, 0)?,
            bindings: f
                .or(F::Bindings, Vec::<BindingIn>::new())?
                .into_iter()
                .map(|b| Binding {
                    app: b.app,
                    token: b.token,
                    last_seq: b.last_seq,
                })
                .collect(),
        }),
        Op::Connected => Body::Connected(Connected {
            conn_id: f.req(F::ConnId)?,
            node: f.req(F::Node)?,
            heartbeat_ms: f.req(F::HeartbeatMs)?,
            max_frame: f.req(F::MaxFrame)?,
            bindings: f
                .or(F::Bindings, Vec::<BoundIn>::new())?
                .into_iter()
                .map(|b| Bound {
                    app: b.app,
                    user: b.user,
                })
                .collect(),
        }),
        Op::Ping => Body::Ping,
        Op::Pong => Body::Pong,
        Op::Push => {
            let (kind, payload) = payload(&f)?;
            Body::Push(Push {
                app: f.req(F::App)?,
                msg_id: f.req::<MsgId>(F::MsgId)?.0,
                seq: f.or(F::Seq, 0)?,
                qos: f.or(F::Qos, 0)?,
                created_ms: f.or(F::CreatedMs, 0)?,
                kind,
                payload,
            })
        }
        Op::Subscribe => Body::Subscribe(Subscribe {
            app: f.req(F::App)?,
            topic: f.req(F::Topic)?,
            since: f.opt(F::Since)?,
        }),
        Op::Subscribed => Body::Subscribed(Subscribed {
            app: f.req(F::App)?,
            topic: f.req(F::Topic)?,
            offset: f.req(F::Offset)?,
            recovery: {
                let name: String = f.or(F::Recovery, "live".to_owned())?;
                Recovery::from_name(&name)
                    .ok_or_else(|| field_error(F::Recovery, format!("unknown recovery `{name}`")))?
            },
        }),
        Op::Unsubscribe => Body::Unsubscribe(Unsubscribe {
            app: f.req(F::App)?,
            topic: f.req(F::Topic)?,
        }),
        Op::Unsubscribed => Body::Unsubscribed(Unsubscribed {
            app: f.req(F::App)?,
            topic: f.req(F::Topic)?,
        }),
        Op::Publication => {
            let (kind, payload) = payload(&f)?;
            Body::Publication(Publication {
                app: f.req(F::App)?,
                topic: f.req(F::Topic)?,
                offset: f.or(F::Offset, 0)?,
                msg_id: f.req::<MsgId>(F::MsgId)?.0,
                created_ms: f.or(F::CreatedMs, 0)?,
                kind,
                payload,
            })
        }
        Op::Upstream => {
            let (payload_kind, payload) = payload(&f)?;
            Body::Upstream(Upstream {
                app: f.req(F::App)?,
                kind: f.req(F::Kind)?,
                payload_kind,
                payload,
            })
        }
        Op::UpstreamReply => {
            let (kind, payload) = payload(&f)?;
            Body::UpstreamReply(UpstreamReply {
                app: f.req(F::App)?,
                status: f.req(F::Status)?,
                kind,
                payload,
            })
        }
        Op::Ack => Body::Ack(Ack {
            app: f.req(F::App)?,
            seq: f.req(F::Seq)?,
        }),
        Op::Sync => Body::Sync(Sync {
            app: f.req(F::App)?,
            after: f.or(F::After, 0)?,
            limit: f.or(F::Limit, 0)?,
        }),
        Op::Synced => Body::Synced(Synced {
            app: f.req(F::App)?,
            last: f.req(F::Last)?,
            head: f.req(F::Head)?,
        }),
        Op::Error => Body::Error(ErrorBody {
            code: Code(f.req(F::Code)?),
            message: f.or(F::Message, String::new())?,
        }),
        Op::Disconnect => Body::Disconnect(Disconnect {
            code: Code(f.req(F::Code)?),
            reason: f.or(F::Reason, String::new())?,
            retry_after_ms: f.or(F::RetryAfterMs, 0)?,
        }),
    };
    Ok(Frame { id, body })
}

/// A push's, publication's or upstream's payload: embedded JSON in `payload`, or bytes in
/// `payload_base64`.
fn payload(f: &Fields<'_>) -> Result<(PayloadKind, Bytes), DecodeError> {
    match (f.raw(F::Payload), f.opt::<String>(F::PayloadBase64)?) {
        (Some(raw), None) => Ok((PayloadKind::Json, Bytes::copy_from_slice(raw.as_bytes()))),
        (None, Some(b64)) => match BASE64_IN.decode(b64) {
            Ok(bytes) => Ok((PayloadKind::Binary, Bytes::from(bytes))),
            Err(e) => Err(field_error(F::PayloadBase64, e)),
        },
        (Some(_), Some(_)) => Err(DecodeError::Json(
            "both `payload` and `payload_base64` are present".into(),
        )),
        (None, None) => Err(DecodeError::Json(
            "missing field `payload` (or `payload_base64`)".into(),
        )),
    }
}

/// Every field name any op uses. The decoder keeps the raw text of these and skips the rest.
#[derive(Debug, Clone, Copy)]
enum F {
    Op,
    Id,
    Version,
    Device,
    HeartbeatMs,
    Bindings,
    ConnId,
    Node,
    MaxFrame,
    App,
    MsgId,
    Seq,
    Qos,
    CreatedMs,
    Payload,
    PayloadBase64,
    Code,
    Message,
    Reason,
    RetryAfterMs,
    After,
    Limit,
    Last,
    Head,
    Topic,
    Since,
    Offset,
    Recovery,
    Kind,
    Status,
}

/// Names of [`F`], in order.
const NAMES: [&str; 30] = [
    "op",
    "id",
    "version",
    "device",
    "heartbeat_ms",
    "bindings",
    "conn_id",
    "node",
    "max_frame",
    "app",
    "msg_id",
    "seq",
    "qos",
    "created_ms",
    "payload",
    "payload_base64",
    "code",
    "message",
    "reason",
    "retry_after_ms",
    "after",
    "limit",
    "last",
    "head",
    "topic",
    "since",
    "offset",
    "recovery",
    "kind",
    "status",
];

impl F {
    fn name(self) -> &'static str {
        NAMES[self as usize]
    }
}

/// The known fields of one object, as raw JSON text borrowed from the input.
///
/// One pass over the input, no allocation for keys or skipped values; each field is then
/// deserialised on its own, so an error can name it.
struct Fields<'a> {
    raw: [Option<&'a RawValue>; NAMES.len()],
}

impl<'a> Fields<'a> {
    /// The raw text of a field, `null` included.
    fn raw(&self, f: F) -> Option<&'a str> {
        self.raw[f as usize].map(RawValue::get)
    }

    fn opt<T: DeserializeOwned>(&self, f: F) -> Result<Option<T>, DecodeError> {
        match self.raw(f) {
            None | Some("null") => Ok(None),
            Some(raw) => serde_json::from_str(raw)
                .map(Some)
                .map_err(|e| field_error(f, without_position(&e))),
        }
    }

    fn req<T: DeserializeOwned>(&self, f: F) -> Result<T, DecodeError> {
        self.opt(f)?
            .ok_or_else(|| DecodeError::Json(format!("missing field `{}`", f.name())))
    }

    fn or<T: DeserializeOwned>(&self, f: F, default: T) -> Result<T, DecodeError> {
        Ok(self.opt(f)?.unwrap_or(default))
    }
}

fn field_error(f: F, e: impl fmt::Display) -> DecodeError {
    DecodeError::Json(format!("field `{}`: {e}", f.name()))
}

/// serde_json's message without its " at line 1 column 7", which would point into the field's
/// own text rather than the message.
fn without_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if e.line() == 0 {
        return msg;
    }
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match msg.strip_suffix(&suffix) {
        Some(m) => m.to_owned(),
        None => msg,
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields {
            raw: [None; NAMES.len()],
        };
        while let Some(Key(known)) = map.next_key()? {
            match known {
                Some(i) => {
                    if fields.raw[i].is_some() {
                        return Err(de::Error::custom(format_args!(
                            "duplicate field `{}`",
                            NAMES[i]
                        )));
                    }
                    fields.raw[i] = Some(map.next_value()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// An object key: the index of a known field name, or `None` for a key to skip.
struct Key(Option<usize>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(NAMES.iter().position(|n| *n == v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[derive(Deserialize)]
struct BindingIn {
    app: String,
    token: String,
    #[serde(default)]
    last_seq: Option<u64>,
}

#[derive(Deserialize)]
struct BoundIn {
    app: String,
    user: String,
}

/// A u64 given as a decimal string (what the encoder writes) or as a number.
struct MsgId(u64);

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MsgIdVisitor;
        impl Visitor<'_> for MsgIdVisitor {
            type Value = MsgId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string or a non-negative integer below 2^64")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MsgId, E> {
                Ok(MsgId(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MsgId, E> {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::invalid_value(de::Unexpected::Str(v), &self));
                }
                v.parse()
                    .map(MsgId)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(MsgIdVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Write one frame as a JSON object.
pub fn encode(frame: &Frame) -> String {
    let id = frame.id;
    let op = frame.op().name();
    match &frame.body {
        Body::Push(p) => encode_push(id, p),
        Body::Connect(c) => to_string(Out {
            op,
            id,
            body: ConnectOut {
                version: c.version,
                device: &c.device,
                heartbeat_ms: c.heartbeat_ms,
                bindings: c
                    .bindings
                    .iter()
                    .map(|b| BindingOut {
                        app: &b.app,
                        token: &b.token,
                        last_seq: b.last_seq,
                    })
                    .collect(),
            },
        }),
        Body::Connected(c) => to_string(Out {
            op,
            id,
            body: ConnectedOut {
                conn_id: c.conn_id,
                node: &c.node,
                heartbeat_ms: c.heartbeat_ms,
                max_frame: c.max_frame,
                bindings: c
                    .bindings
                    .iter()
                    .map(|b| BoundOut {
                        app: &b.app,
                        user: &b.user,
                    })
                    .collect(),
            },
        }),
        Body::Ping | Body::Pong => to_string(Out {
            op,
            id,
            body: Empty {},
        }),
        Body::Ack(a) => to_string(Out {
            op,
            id,
            body: AckOut {
                app: &a.app,
                seq: a.seq,
            },
        }),
        Body::Sync(q) => to_string(Out {
            op,
            id,
            body: SyncOut {
                app: &q.app,
                after: q.after,
                limit: q.limit,
            },
        }),
        Body::Synced(q) => to_string(Out {
            op,
            id,
            body: SyncedOut {
                app: &q.app,
                last: q.last,
                head: q.head,
            },
        }),
        Body::Subscribe(q) => to_string(Out {
            op,
            id,
            body: SubscribeOut {
                app: &q.app,
                topic: &q.topic,
                since: q.since,
            },
        }),
        Body::Subscribed(q) => to_string(Out {
            op,
            id,
            body: SubscribedOut {
                app: &q.app,
                topic: &q.topic,
                offset: q.offset,
                recovery: q.recovery.name(),
            },
        }),
        Body::Unsubscribe(Unsubscribe { app, topic })
        | Body::Unsubscribed(Unsubscribed { app, topic }) => to_string(Out {
            op,
            id,
            body: TopicOut { app, topic },
        }),
        Body::Publication(p) => encode_publication(id, p),
        Body::Upstream(u) => encode_upstream(id, u),
        Body::UpstreamReply(u) => encode_upstream_reply(id, u),
        Body::Error(e) => to_string(Out {
            op,
            id,
            body: ErrorOut {
                code: e.code.0,
                message: &e.message,
            },
        }),
        Body::Disconnect(d) => to_string(Out {
            op,
            id,
            body: DisconnectOut {
                code: d.code.0,
                reason: &d.reason,
                retry_after_ms: d.retry_after_ms,
                reconnect: match d.code.group() {
                    Group::Reconnect => "retry",
                    Group::ReconnectElsewhere => "redispatch",
                    Group::DoNotReconnect | Group::RequestError => "no",
                },
            },
        }),
    }
}

/// serde_json cannot fail on these structs (string keys, no floats, no custom serializers); the
/// fallback keeps `encode` total anyway.
fn to_string(v: impl Serialize) -> String {
    serde_json::to_string(&v).unwrap_or_else(|_| {
        r#"{"op":"error","id":0,"code":4000,"message":"frame could not be encoded"}"#.to_owned()
    })
}

#[derive(Serialize)]
struct Out<'a, B> {
    op: &'a str,
    id: u32,
    #[serde(flatten)]
    body: B,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct ConnectOut<'a> {
    version: u8,
    device: &'a str,
    heartbeat_ms: u32,
    bindings: Vec<BindingOut<'a>>,
}

#[derive(Serialize)]
struct BindingOut<'a> {
    app: &'a str,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seq: Option<u64>,
}

#[derive(Serialize)]
struct ConnectedOut<'a> {
    conn_id: u64,
    node: &'a str,
    heartbeat_ms: u32,
    max_frame: u32,
    bindings: Vec<BoundOut<'a>>,
}

#[derive(Serialize)]
struct BoundOut<'a> {
    app: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct AckOut<'a> {
    app: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct SyncOut<'a> {
    app: &'a str,
    after: u64,
    limit: u32,
}

#[derive(Serialize)]
struct SyncedOut<'a> {
    app: &'a str,
    last: u64,
    head: u64,
}

#[derive(Serialize)]
struct SubscribeOut<'a> {
    app: &'a str,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<u64>,
}

#[derive(Serialize)]
struct SubscribedOut<'a> {
    app: &'a str,
    topic: &'a str,
    offset: u64,
    recovery: &'static str,
}

#[derive(Serialize)]
struct TopicOut<'a> {
    app: &'a str,
    topic: &'a str,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    code: u16,
    message: &'a str,
}

#[derive(Serialize)]
struct DisconnectOut<'a> {
    code: u16,
    reason: &'a str,
    retry_after_ms: u32,
    reconnect: &'static str,
}

/// The fan-out path: one encode shared by every recipient, written by hand into one buffer.
fn encode_push(id: u32, p: &Push) -> String {
    let mut out = String::with_capacity(128 + p.app.len() + payload_room(p.kind, &p.payload));
    out.push_str(r#"{"op":"push","id":"#);
    push_u64(&mut out, u64::from(id));
    out.push_str(r#","app":"#);
    push_json_str(&mut out, &p.app);
    out.push_str(r#","msg_id":""#);
    push_u64(&mut out, p.msg_id);
    out.push_str(r#"","seq":"#);
    push_u64(&mut out, p.seq);
    out.push_str(r#","qos":"#);
    push_u64(&mut out, u64::from(p.qos));
    out.push_str(r#","created_ms":"#);
    push_u64(&mut out, p.created_ms);
    push_payload(&mut out, p.kind, &p.payload);
    out.push('}');
    out
}

/// Like [`encode_push`]: a topic's fan-out encodes once for every subscriber.
fn encode_publication(id: u32, p: &Publication) -> String {
    let mut out =
        String::with_capacity(160 + p.app.len() + p.topic.len() + payload_room(p.kind, &p.payload));
    out.push_str(r#"{"op":"publication","id":"#);
    push_u64(&mut out, u64::from(id));
    out.push_str(r#","app":"#);
    push_json_str(&mut out, &p.app);
    out.push_str(r#","topic":"#);
    push_json_str(&mut out, &p.topic);
    out.push_str(r#","offset":"#);
    push_u64(&mut out, p.offset);
    out.push_str(r#","msg_id":""#);
    push_u64(&mut out, p.msg_id);
    out.push_str(r#"","created_ms":"#);
    push_u64(&mut out, p.created_ms);
    push_payload(&mut out, p.kind, &p.payload);
    out.push('}');
    out
}

/// Upstream frames carry payloads too: written by hand like a push.
fn encode_upstream(id: u32, u: &Upstream) -> String {
    let mut out = String::with_capacity(
        64 + u.app.len() + u.kind.len() + payload_room(u.payload_kind, &u.payload),
    );
    out.push_str(r#"{"op":"upstream","id":"#);
    push_u64(&mut out, u64::from(id));
    out.push_str(r#","app":"#);
    push_json_str(&mut out, &u.app);
    out.push_str(r#","kind":"#);
    push_json_str(&mut out, &u.kind);
    push_payload(&mut out, u.payload_kind, &u.payload);
    out.push('}');
    out
}

fn encode_upstream_reply(id: u32, u: &UpstreamReply) -> String {
    let mut out = String::with_capacity(80 + u.app.len() + payload_room(u.kind, &u.payload));
    out.push_str(r#"{"op":"upstream_reply","id":"#);
    push_u64(&mut out, u64::from(id));
    out.push_str(r#","app":"#);
    push_json_str(&mut out, &u.app);
    out.push_str(r#","status":"#);
    push_u64(&mut out, u64::from(u.status));
    push_payload(&mut out, u.kind, &u.payload);
    out.push('}');
    out
}

/// A payload's bytes as embedded JSON, or else base64 (the size estimate is an upper bound).
fn payload_room(kind: PayloadKind, payload: &[u8]) -> usize {
    match kind {
        PayloadKind::Json => payload.len(),
        PayloadKind::Binary => payload.len().div_ceil(3) * 4,
    }
}

/// Appends `,"payload":<json>` when the payload is valid JSON of kind JSON, or else
/// `,"payload_base64":"..."`.
fn push_payload(out: &mut String, kind: PayloadKind, payload: &[u8]) {
    let json = match kind {
        PayloadKind::Json => std::str::from_utf8(payload)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok()),
        PayloadKind::Binary => None,
    };
    match json {
        Some(raw) => {
            out.push_str(r#","payload":"#);
            out.push_str(raw.get());
        }
        None => {
            out.push_str(r#","payload_base64":""#);
            general_purpose::STANDARD.encode_string(payload, out);
            out.push('"');
        }
    }
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

/// Append `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `b` is ASCII, so `i` is a char boundary.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<Frame, DecodeError> {
        decode(s.as_bytes())
    }

    fn json_err(s: &str) -> String {
        match dec(s) {
            Err(DecodeError::Json(m)) => m,
            other => panic!("expected a Json error for {s}, got {other:?}"),
        }
    }

    fn push(kind: PayloadKind, payload: &'static [u8]) -> Frame {
        Frame::new(
            0,
            Push {
                app: "demo".into(),
                msg_id: 123_456_789_012_345_678,
                seq: 0,
                qos: 0,
                created_ms: 1_763_700_000_000,
                kind,
                payload: Bytes::from_static(payload),
            },
        )
    }

    #[test]
    fn documented_examples() {
        assert_eq!(
            dec(
                r#"{"op":"connect","id":1,"version":1,"device":"d1","heartbeat_ms":30000,"bindings":[{"app":"demo","token":"t"}]}"#
            ),
            Ok(Frame::new(
                1,
                Connect {
                    version: 1,
                    device: "d1".into(),
                    heartbeat_ms: 30_000,
                    bindings: vec![Binding {
                        app: "demo".into(),
                        token: "t".into(),
                        last_seq: None,
                    }],
                }
            ))
        );
        let connected = Frame::new(
            1,
            Connected {
                conn_id: 7,
                node: "n1".into(),
                heartbeat_ms: 30_000,
                max_frame: 65_536,
                bindings: vec![Bound {
                    app: "demo".into(),
                    user: "alice".into(),
                }],
            },
        );
        assert_eq!(
            encode(&connected),
            r#"{"op":"connected","id":1,"conn_id":7,"node":"n1","heartbeat_ms":30000,"max_frame":65536,"bindings":[{"app":"demo","user":"alice"}]}"#
        );
        assert_eq!(
            encode(&Frame::new(2, Body::Ping)),
            r#"{"op":"ping","id":2}"#
        );
        assert_eq!(
            dec(r#"{"op":"pong","id":2}"#),
            Ok(Frame::new(2, Body::Pong))
        );
        assert_eq!(
            encode(&Frame::new(
                3,
                Ack {
                    app: "demo".into(),
                    seq: 17
                }
            )),
            r#"{"op":"ack","id":3,"app":"demo","seq":17}"#
        );
        assert_eq!(
            encode(&Frame::new(
                3,
                ErrorBody {
                    code: Code::BAD_REQUEST,
                    message: "not bound".into()
                }
            )),
            r#"{"op":"error","id":3,"code":4300,"message":"not bound"}"#
        );
        assert_eq!(
            encode(&Frame::new(
                0,
                Disconnect {
                    code: Code::SLOW,
                    reason: "slow".into(),
                    retry_after_ms: 0
                }
            )),
            r#"{"op":"disconnect","id":0,"code":4001,"reason":"slow","retry_after_ms":0,"reconnect":"retry"}"#
        );
    }

    #[test]
    fn push_json_payload_is_embedded() {
        let frame = push(PayloadKind::Json, br#"{"text":"hi","n":[1,2]}"#);
        let text = encode(&frame);
        assert_eq!(
            text,
            r#"{"op":"push","id":0,"app":"demo","msg_id":"123456789012345678","seq":0,"qos":0,"created_ms":1763700000000,"payload":{"text":"hi","n":[1,2]}}"#
        );
        assert_eq!(dec(&text), Ok(frame));
    }

    #[test]
    fn push_binary_or_invalid_json_goes_base64() {
        let frame = push(PayloadKind::Binary, b"\x00\xffhi");
        let text = encode(&frame);
        assert!(text.ends_with(r#","payload_base64":"AP9oaQ=="}"#), "{text}");
        assert_eq!(dec(&text), Ok(frame));

        // Kind json but not JSON: sent as base64, decoded as binary.
        let text = encode(&push(PayloadKind::Json, b"{not json"));
        assert!(text.contains("payload_base64"));
        assert_eq!(dec(&text), Ok(push(PayloadKind::Binary, b"{not json")));
    }

    #[test]
    fn msg_id_string_or_number() {
        let base = r#"{"op":"push","app":"a","payload":1,"msg_id":"#;
        for (v, ok) in [
            ("18446744073709551615", true),
            (r#""18446744073709551615""#, true),
            (r#""18446744073709551616""#, false),
            (r#""+1""#, false),
            (r#""""#, false),
            ("-1", false),
            ("1.5", false),
        ] {
            let r = dec(&format!("{base}{v}}}"));
            assert_eq!(r.is_ok(), ok, "{v}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("`msg_id`"), "{e}");
            }
        }
    }

    #[test]
    fn defaults_and_required_fields() {
        assert_eq!(
            dec(r#"{"op":"connect","device":"d"}"#),
            Ok(Frame::new(
                0,
                Connect {
                    version: 1,
                    device: "d".into(),
                    heartbeat_ms: 0,
                    bindings: vec![],
                }
            ))
        );
        assert_eq!(json_err(r#"{"op":"connect"}"#), "missing field `device`");
        assert_eq!(json_err(r#"{"op":"ack","seq":1}"#), "missing field `app`");
        assert_eq!(json_err(r#"{"op":"ack","app":"a"}"#), "missing field `seq`");
        assert_eq!(
            json_err(r#"{"op":"ack","app":"a","seq":"x"}"#),
            r#"field `seq`: invalid type: string "x", expected u64"#
        );
        assert_eq!(
            json_err(r#"{"op":"connect","device":"d","version":256}"#),
            "field `version`: invalid value: integer `256`, expected u8"
        );
        assert!(
            json_err(r#"{"op":"connect","device":"d","bindings":[{"app":"a"}]}"#)
                .starts_with("field `bindings`: missing field `token`")
        );
        assert_eq!(json_err(r#"{"id":1}"#), "missing field `op`");
        assert_eq!(
            json_err(r#"{"op":"ping","id":-1}"#).split(':').next(),
            Some("field `id`")
        );
    }

    #[test]
    fn unknown_fields_ignored_known_duplicates_rejected() {
        assert_eq!(
            dec(r#"{"extra":{"deep":[1,2,{"x":null}]},"op":"ping","id":5,"reconnect":"no"}"#),
            Ok(Frame::new(5, Body::Ping))
        );
        assert_eq!(
            dec(r#"{"op":"ping","id":null}"#),
            Ok(Frame::new(0, Body::Ping))
        );
        assert!(json_err(r#"{"op":"ping","op":"pong"}"#).contains("duplicate field `op`"));
    }

    #[test]
    fn unknown_op_and_not_an_object() {
        assert_eq!(
            dec(r#"{"op":"teleport","id":1}"#),
            Err(DecodeError::UnknownOp("teleport".into()))
        );
        for bad in [
            "",
            "[]",
            "5",
            "null",
            "{",
            r#"{"op":"ping"} x"#,
            "\u{feff}{}",
        ] {
            assert!(matches!(dec(bad), Err(DecodeError::Json(_))), "{bad:?}");
        }
        assert_eq!(
            decode(b"{\"op\":\"ping\xff\"}"),
            Err(DecodeError::Json("message is not valid UTF-8".into()))
        );
    }

    #[test]
    fn push_payload_rules() {
        let both = r#"{"op":"push","app":"a","msg_id":"1","payload":1,"payload_base64":"AA=="}"#;
        assert!(json_err(both).contains("both"));
        let none = r#"{"op":"push","app":"a","msg_id":"1"}"#;
        assert!(json_err(none).contains("`payload`"));
        let bad = r#"{"op":"push","app":"a","msg_id":"1","payload_base64":"***"}"#;
        assert!(json_err(bad).starts_with("field `payload_base64`"));
        // A null payload is a JSON payload, not an absent one.
        let null = dec(r#"{"op":"push","app":"a","msg_id":"1","payload":null}"#).unwrap();
        let Body::Push(p) = null.body else {
            unreachable!()
        };
        assert_eq!((p.kind, &p.payload[..]), (PayloadKind::Json, &b"null"[..]));
        // Unpadded base64 is accepted.
        let unpadded = dec(r#"{"op":"push","app":"a","msg_id":"1","payload_base64":"QQ"}"#);
        let Body::Push(p) = unpadded.unwrap().body else {
            unreachable!()
        };
        assert_eq!(&p.payload[..], b"A");
    }

    #[test]
    fn strings_are_escaped() {
        let app = "q\"b\\n\n\r\t\u{8}\u{c}\u{1}\u{1f}é😀/\u{7f}";
        let mut s = String::new();
        push_json_str(&mut s, app);
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), app);
        assert_eq!(s, serde_json::to_string(app).unwrap());
    }

    #[test]
    fn numbers() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
}
