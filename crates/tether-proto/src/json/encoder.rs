//! A [`Frame`] to JSON text: a struct per op for serde, and the frames that carry a payload
//! written by hand.

use base64::Engine as _;
use base64::engine::general_purpose;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::Group;
use crate::frame::{
    Body, Expiring, Frame, PayloadKind, Publication, Push, Refreshed, Unsubscribe, Unsubscribed,
    Upstream, UpstreamReply,
};

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
                token: q.token.as_deref(),
            },
        }),
        Body::Refresh(q) => to_string(Out {
            op,
            id,
            body: RefreshOut {
                app: &q.app,
                token: &q.token,
            },
        }),
        Body::Refreshed(Refreshed { app, expires_s })
        | Body::Expiring(Expiring { app, expires_s }) => to_string(Out {
            op,
            id,
            body: ExpiresOut {
                app,
                expires_s: *expires_s,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

#[derive(Serialize)]
struct RefreshOut<'a> {
    app: &'a str,
    token: &'a str,
}

#[derive(Serialize)]
struct ExpiresOut<'a> {
    app: &'a str,
    expires_s: u64,
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

pub(super) fn push_u64(out: &mut String, mut n: u64) {
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
pub(super) fn push_json_str(out: &mut String, s: &str) {
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
