//! JSON text to a [`Frame`]: the known fields of one object in one pass, then the op's body.

use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::Code;
use crate::error::DecodeError;
use crate::frame::{
    Ack, Binding, Body, Bound, Connect, Connected, Disconnect, ErrorBody, Expiring, Frame, Op,
    PROTOCOL_VERSION, PayloadKind, Publication, Push, Recovery, Refresh, Refreshed, Subscribe,
    Subscribed, Sync, Synced, Unsubscribe, Unsubscribed, Upstream, UpstreamReply,
};

/// Standard alphabet; padding optional when decoding (some clients strip it).
const BASE64_IN: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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
            token: f.opt(F::Token)?,
        }),
        Op::Refresh => Body::Refresh(Refresh {
            app: f.req(F::App)?,
            token: f.req(F::Token)?,
        }),
        Op::Refreshed => Body::Refreshed(Refreshed {
            app: f.req(F::App)?,
            expires_s: f.req(F::ExpiresS)?,
        }),
        Op::Expiring => Body::Expiring(Expiring {
            app: f.req(F::App)?,
            expires_s: f.req(F::ExpiresS)?,
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
    Token,
    ExpiresS,
}

/// Names of [`F`], in order.
const NAMES: [&str; 32] = [
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
    "token",
    "expires_s",
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
