//! Server-Sent Events as tether writes them: each server frame is one event whose `data:` is
//! the frame in the JSON encoding, and whose `id:`, when the frame moved the client's position,
//! is every position the client holds ([`Positions`]), so that `EventSource` sends them back in
//! `Last-Event-ID` when it reconnects.
//!
//! # The event id
//!
//! A list of entries separated by `,`: `app:seq` for the last seq of an app's inbox that the
//! client holds, `app:topic:offset` for the last offset of a topic it is subscribed to. Apps
//! and topics are percent-encoded (every byte but ASCII letters, digits, `-`, `.`, `_` and `~`),
//! so that `:` and `,` only separate and the id is ASCII: `demo:18,demo:room-1:42`. An empty id
//! holds no position.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use std::borrow::Cow;
use tether_core::{MAX_ID_LEN, validate_id};

/// A comment line: sent when nothing else was for a heartbeat interval, so that proxies keep
/// an idle stream open and a client that has gone is noticed by the write.
pub const KEEPALIVE: &[u8] = b":\n";

/// Most entries an id is read with: a connection's bindings and topics are far fewer.
const MAX_ENTRIES: usize = 1024;

/// The longest id written. Past it, topic entries are left out (the client resubscribes those
/// itself): a reconnect's `Last-Event-ID` must fit the request head.
pub const MAX_EVENT_ID: usize = 8 * 1024;

/// Where a client stands: per app, the last inbox seq it holds; per topic, the last offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Positions {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    app: Box<str>,
    /// `None`: the app's inbox.
    topic: Option<Box<str>>,
    at: u64,
}

impl Entry {
    fn is(&self, app: &str, topic: Option<&str>) -> bool {
        &*self.app == app && self.topic.as_deref() == topic
    }
}

impl Positions {
    /// Reads an event id (see the module docs). The error says what is wrong.
    pub fn parse(id: &str) -> Result<Positions, String> {
        let mut positions = Positions::default();
        if id.is_empty() {
            return Ok(positions);
        }
        for (i, entry) in id.split(',').enumerate() {
            if i == MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} positions"));
            }
            let parts: Vec<&str> = entry.split(':').collect();
            let (app, topic, at) = match parts[..] {
                [app, at] => (app, None, at),
                [app, topic, at] => (app, Some(topic), at),
                _ => {
                    return Err(format!(
                        "entry {} is not app:seq or app:topic:offset",
                        i + 1
                    ));
                }
            };
            let number = |s: &str| {
                (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse::<u64>().ok())
                    .flatten()
            };
            let at = number(at).ok_or_else(|| format!("entry {}: not a position", i + 1))?;
            let app = decode(app).ok_or_else(|| format!("entry {}: bad app", i + 1))?;
            validate_id("app", &app)?;
            let topic = match topic {
                None => None,
                Some(t) => {
                    let t = decode(t).ok_or_else(|| format!("entry {}: bad topic", i + 1))?;
                    validate_id("topic", &t)?;
                    Some(t)
                }
            };
            positions.set(&app, topic.as_deref(), at);
        }
        Ok(positions)
    }

    /// The last seq of `app`'s inbox the client holds.
    pub fn seq(&self, app: &str) -> Option<u64> {
        self.get(app, None)
    }

    /// The last offset of `topic` of `app` the client holds.
    pub fn offset(&self, app: &str, topic: &str) -> Option<u64> {
        self.get(app, Some(topic))
    }

    fn get(&self, app: &str, topic: Option<&str>) -> Option<u64> {
        self.entries.iter().find(|e| e.is(app, topic)).map(|e| e.at)
    }

    /// Every topic position: (app, topic, offset).
    pub fn topics(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.entries
            .iter()
            .filter_map(|e| Some((&*e.app, e.topic.as_deref()?, e.at)))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps only the positions of `apps`.
    pub fn retain_apps(&mut self, apps: &[&str]) {
        self.entries.retain(|e| apps.contains(&&*e.app));
    }

    /// Sets a position; whether it changed.
    pub fn set(&mut self, app: &str, topic: Option<&str>, at: u64) -> bool {
        match self.entries.iter_mut().find(|e| e.is(app, topic)) {
            Some(e) if e.at == at => false,
            Some(e) => {
                e.at = at;
                true
            }
            None => {
                self.entries.push(Entry {
                    app: app.into(),
                    topic: topic.map(Into::into),
                    at,
                });
                true
            }
        }
    }

    /// Moves a position forward to `at` (a position never goes back); whether it moved.
    pub fn advance(&mut self, app: &str, topic: Option<&str>, at: u64) -> bool {
        match self.get(app, topic) {
            Some(now) if now >= at => false,
            _ => self.set(app, topic, at),
        }
    }

    /// Forgets a topic's position; whether there was one.
    pub fn remove(&mut self, app: &str, topic: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !e.is(app, Some(topic)));
        before != self.entries.len()
    }

    /// The id that stands for these positions (see the module docs), at most
    /// [`MAX_EVENT_ID`] bytes: inbox positions first, then topics while they fit.
    pub fn id(&self) -> String {
        let mut id = String::new();
        let inboxes = self.entries.iter().filter(|e| e.topic.is_none());
        let topics = self.entries.iter().filter(|e| e.topic.is_some());
        for entry in inboxes.chain(topics) {
            let mut one = String::new();
            encode(&entry.app, &mut one);
            if let Some(topic) = &entry.topic {
                one.push(':');
                encode(topic, &mut one);
            }
            let _ = write!(one, ":{}", entry.at);
            if id.len() + 1 + one.len() > MAX_EVENT_ID {
                continue;
            }
            if !id.is_empty() {
                id.push(',');
            }
            id.push_str(&one);
        }
        id
    }
}

/// Percent-encodes `s` into `out`: every byte but ASCII letters, digits, `-`, `.`, `_`, `~`.
fn encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Reads what [`encode`] wrote (any percent-encoded UTF-8); `None` for a bad escape or bytes
/// that are not UTF-8. At most [`MAX_ID_LEN`] bytes decoded.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len().min(MAX_ID_LEN));
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if out.len() > MAX_ID_LEN {
            return None;
        }
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = |b: Option<u8>| (b? as char).to_digit(16);
        let (hi, lo) = (hex(bytes.next())?, hex(bytes.next())?);
        out.push((hi * 16 + lo) as u8);
    }
    String::from_utf8(out).ok()
}

/// What the SSE wire needs to know of a server frame: the fields that move positions, name the
/// session, or decide how a refusal is answered. Read from the frame's JSON (the payload is
/// skipped, not kept).
#[derive(Debug, Default, Deserialize)]
pub struct Head<'a> {
    #[serde(borrow)]
    pub op: Cow<'a, str>,
    #[serde(borrow, default)]
    pub app: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub topic: Option<Cow<'a, str>>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub qos: Option<u8>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(borrow, default)]
    pub recovery: Option<Cow<'a, str>>,
    #[serde(default)]
    pub conn_id: Option<u64>,
    #[serde(borrow, default)]
    pub node: Option<Cow<'a, str>>,
    #[serde(default)]
    pub heartbeat_ms: Option<u32>,
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub retry_after_ms: Option<u32>,
}

/// The ops whose frames the wire reads: the JSON encoder writes `op` first, so the others are
/// told apart without parsing them.
const READ: [&str; 6] = [
    "push",
    "publication",
    "subscribed",
    "unsubscribed",
    "connected",
    "disconnect",
];

/// The fields of `frame` (a server frame in the JSON encoding) that the wire acts on, or
/// `None` for a frame it does not read.
pub fn head(frame: &[u8]) -> Option<Head<'_>> {
    let read = READ.iter().any(|op| {
        frame
            .strip_prefix(b"{\"op\":\"")
            .and_then(|rest| rest.strip_prefix(op.as_bytes()))
            .is_some_and(|rest| rest.first() == Some(&b'"'))
    });
    if !read {
        return None;
    }
    serde_json::from_slice(frame).ok()
}

impl Positions {
    /// Moves the positions by what `head` delivers: a durable push, a durable publication, a
    /// subscription (live from its offset unless it recovers), an unsubscription. Whether they
    /// changed.
    pub fn apply(&mut self, head: &Head<'_>) -> bool {
        let Some(app) = head.app.as_deref() else {
            return false;
        };
        let topic = head.topic.as_deref();
        match (&*head.op, topic) {
            ("push", None) if head.qos == Some(1) => match head.seq {
                Some(seq) if seq > 0 => self.advance(app, None, seq),
                _ => false,
            },
            ("publication", Some(topic)) => match head.offset {
                Some(offset) if offset > 0 => self.advance(app, Some(topic), offset),
                _ => false,
            },
            // A recovery's publications follow it and move the position themselves.
            ("subscribed", Some(topic)) if head.recovery.as_deref() != Some("complete") => {
                self.set(app, Some(topic), head.offset.unwrap_or(0))
            }
            ("unsubscribed", Some(topic)) => self.remove(app, topic),
            _ => false,
        }
    }
}

/// Appends one event: an `id:` line when given, then `frame` as its `data:` (a JSON text, whose
/// line breaks, only ever whitespace between tokens, become spaces so that it stays one line).
pub fn push_event(out: &mut BytesMut, id: Option<&str>, frame: &[u8]) {
    out.reserve(frame.len() + id.map_or(0, |id| id.len() + 5) + 8);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"data: ");
    if frame.iter().any(|&b| b == b'\n' || b == b'\r') {
        out.extend(
            frame
                .iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
    } else {
        out.put_slice(frame);
    }
    out.put_slice(b"\n\n");
}

/// Appends the event that names the session, for the client's POSTs: `event: session`.
pub fn session_event(out: &mut BytesMut, session: &str) {
    out.put_slice(b"event: session\ndata: ");
    out.put_slice(session.as_bytes());
    out.put_slice(b"\n\n");
}

/// Appends a `retry:` field: how long `EventSource` waits before it reconnects.
pub fn retry(out: &mut BytesMut, ms: u32) {
    out.put_slice(format!("retry: {ms}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use tether_proto::{
        Body, Code, Disconnect, Frame, PayloadKind, Publication, Push, Recovery, Subscribed,
        Unsubscribed, json,
    };

    use super::*;

    fn frame(body: impl Into<Body>) -> Vec<u8> {
        json::encode(&Frame::new(0, body)).into_bytes()
    }

    fn push(app: &str, qos: u8, seq: u64, payload: &str) -> Vec<u8> {
        frame(Push {
            app: app.into(),
            msg_id: 1,
            seq,
            qos,
            created_ms: 5,
            kind: PayloadKind::Json,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        })
    }

    fn publication(topic: &str, offset: u64) -> Vec<u8> {
        frame(Publication {
            app: "demo".into(),
            topic: topic.into(),
            offset,
            msg_id: 2,
            created_ms: 5,
            kind: PayloadKind::Binary,
            payload: Bytes::from_static(b"\x00\x01"),
        })
    }

    fn subscribed(topic: &str, offset: u64, recovery: Recovery) -> Vec<u8> {
        frame(Subscribed {
            app: "demo".into(),
            topic: topic.into(),
            offset,
            recovery,
        })
    }

    fn apply(positions: &mut Positions, frame: &[u8]) -> bool {
        head(frame).is_some_and(|h| positions.apply(&h))
    }

    #[test]
    fn durable_pushes_and_publications_move_the_id_and_the_rest_do_not() {
        let mut p = Positions::default();
        assert!(
            !apply(&mut p, &push("demo", 0, 0, "{}")),
            "qos 0 has no position"
        );
        assert!(apply(
            &mut p,
            &push("demo", 1, 18, r#"{"op":"push","seq":99}"#)
        ));
        assert!(!apply(&mut p, &push("demo", 1, 17, "1")), "never back");
        assert!(apply(&mut p, &subscribed("room-1", 40, Recovery::Live)));
        assert!(!apply(&mut p, &subscribed("room:2", 7, Recovery::Complete)));
        assert!(apply(&mut p, &publication("room-1", 42)));
        assert!(!apply(&mut p, &publication("room-1", 0)), "live only");
        assert!(apply(&mut p, &publication("room:2", 3)));
        assert_eq!(p.id(), "demo:18,demo:room-1:42,demo:room%3A2:3");
        assert_eq!(Positions::parse(&p.id()), Ok(p.clone()));
        let unsubscribed = frame(Unsubscribed {
            app: "demo".into(),
            topic: "room-1".into(),
        });
        assert!(apply(&mut p, &unsubscribed));
        assert_eq!(p.id(), "demo:18,demo:room%3A2:3");
        let error = frame(tether_proto::ErrorBody {
            code: Code::BAD_REQUEST,
            message: "x".into(),
        });
        assert!(head(&error).is_none(), "not read at all");
        let disconnect = frame(Disconnect {
            code: Code::DRAIN,
            reason: "d".into(),
            retry_after_ms: 700,
        });
        let head = head(&disconnect).expect("read");
        assert_eq!((head.code, head.retry_after_ms), (Some(4101), Some(700)));
    }

    #[test]
    fn bad_ids_say_what_is_wrong() {
        for (id, wrong) in [
            ("demo", "not app:seq"),
            ("demo:x", "not a position"),
            ("demo:-1", "not a position"),
            ("demo:99999999999999999999", "not a position"),
            ("%zz:1", "bad app"),
            ("%FF:1", "bad app"),
            (":1", "app must not be empty"),
            ("a:b:c:1", "not app:seq"),
            ("a:%0A:1", "topic contains a control character"),
        ] {
            let e = Positions::parse(id).expect_err(id);
            assert!(e.contains(wrong), "{id}: {e}");
        }
        assert_eq!(Positions::parse(""), Ok(Positions::default()));
    }

    #[test]
    fn line_breaks_in_a_frame_never_end_its_data_line() {
        let frame = push("demo", 1, 1, "{\"a\":\r\n 1}");
        let mut out = BytesMut::new();
        push_event(&mut out, Some("demo:1"), &frame);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.matches('\n').count(), 3, "{text:?}");
        assert!(!text.contains('\r'));
        let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["payload"]["a"], 1);
    }

    #[test]
    fn a_long_id_leaves_topics_out_rather_than_grow_past_its_bound() {
        let mut p = Positions::default();
        p.set("demo", None, 5);
        for i in 0..200 {
            p.set("demo", Some(&format!("{i}-{}", "t".repeat(100))), 1);
        }
        let id = p.id();
        assert!(id.len() <= MAX_EVENT_ID, "{}", id.len());
        assert!(id.starts_with("demo:5,"));
    }

    fn id_text() -> impl Strategy<Value = String> {
        "[a-z0-9%:,~é\\-\\.]{0,40}"
    }

    proptest! {
        /// Any text is read or refused, never a panic; what is read writes back the same.
        #[test]
        fn any_id_parses_or_is_refused(id in id_text()) {
            if let Ok(p) = Positions::parse(&id) {
                let again = Positions::parse(&p.id()).map(|q| q.id());
                prop_assert_eq!(again, Ok(p.id()));
            }
        }

        /// Any bytes as an id, Unicode included.
        #[test]
        fn any_string_is_safe(id in any::<String>()) {
            let _ = Positions::parse(&id);
        }

        /// Positions with any ids survive their event id.
        #[test]
        fn positions_round_trip(
            entries in proptest::collection::vec(
                ("[^\\p{Cc}]{1,20}", proptest::option::of("[^\\p{Cc}]{1,20}"), any::<u64>()),
                0..8,
            )
        ) {
            let mut p = Positions::default();
            for (app, topic, at) in &entries {
                p.set(app, topic.as_deref(), *at);
            }
            let id = p.id();
            prop_assert!(id.is_ascii() && !id.contains('\n') && !id.contains('\r'));
            let back = Positions::parse(&id).unwrap();
            // Inbox positions are written first: compare as sets.
            for (app, topic, _) in &entries {
                prop_assert_eq!(back.get(app, topic.as_deref()), p.get(app, topic.as_deref()));
            }
        }
    }
}
