//! The binary encoding: TCP streams, and WebSocket binary messages (one frame per message,
//! length prefix included).
//!
//! # Layout
//!
//! ```text
//! offset size
//! 0      4    len: u32 BE, number of bytes after this field (8 <= len <= max_frame)
//! 4      1    encoding version = 1 (PROTOCOL_VERSION)
//! 5      1    op (Op as u8)
//! 6      2    flags: u16 BE, reserved, must be 0
//! 8      4    request id: u32 BE
//! 12     ..   body: op-specific, exactly len - 8 bytes
//! ```
//!
//! Body primitives: `u8`; `u16`/`u32`/`u64` big-endian; `str` = u16 BE byte length + UTF-8;
//! `list` = u16 BE count + items. Bodies, in order:
//!
//! | op         | body                                                                        |
//! |------------|-----------------------------------------------------------------------------|
//! | connect    | version u8, device str, heartbeat_ms u32, bindings list of (app str, token str) |
//! | connected  | conn_id u64, node str, heartbeat_ms u32, max_frame u32, bindings list of (app str, user str) |
//! | ping, pong | empty                                                                       |
//! | push       | app str, msg_id u64, seq u64, qos u8, created_ms u64, kind u8, payload = the rest |
//! | ack        | app str, seq u64                                                            |
//! | error      | code u16, message str                                                       |
//! | disconnect | code u16, retry_after_ms u32, reason str                                    |
//! | upstream   | app str, kind str, payload kind u8, payload = the rest                      |
//! | upstream_reply | app str, status u16, kind u8, payload = the rest                        |
//! | subscribe  | app str, topic str, since flag u8 (+ u64 when 1), then token str only when given |
//! | refresh    | app str, token str                                                          |
//! | refreshed, expiring | app str, expires_s u64                                             |
//!
//! `docs/protocol.md` (section 2.3) has every op's body. Bytes left over after a body are an
//! error (except for bodies ending in a payload, which is the rest).
//!
//! # Decoding: check, then parse
//!
//! [`check`] looks at the bytes buffered so far and says whether a whole frame is there. It
//! rejects an oversized frame from its 4-byte prefix alone, so a hostile length never makes the
//! reader buffer or allocate anything. [`decode`] splits the frame off the read buffer and
//! parses it; a push payload is a zero-copy slice of that buffer. List counts are checked against
//! the bytes actually left before any `Vec` is allocated. Any error leaves the stream
//! unusable: there is no resynchronisation, the connection is closed.
//!
//! # Encoding
//!
//! [`encoded_len`] is exact, so [`encode`] reserves once. Strings and lists carry u16 lengths, so
//! a string over 65535 bytes or a list over 65535 items cannot be encoded. Those limits are
//! enforced where data enters the system (API, tokens, config); [`try_encode`] reports a
//! violation as an [`EncodeError`], and [`encode`], meant for frames known to be valid, writes
//! nothing for such a frame rather than a truncated or corrupt one. Nothing here panics.

use bytes::{BufMut, Bytes, BytesMut};

use crate::Code;
use crate::error::{DecodeError, EncodeError};
use crate::frame::{
    Ack, Binding, Body, Bound, Connect, Connected, Disconnect, ErrorBody, Expiring, Frame, Op,
    PROTOCOL_VERSION, PayloadKind, Publication, Push, Recovery, Refresh, Refreshed, Subscribe,
    Subscribed, Sync, Synced, Unsubscribe, Unsubscribed, Upstream, UpstreamReply,
};

/// Size of the length prefix.
pub const PREFIX_LEN: usize = 4;
/// Size of the header after the prefix: version, op, flags, request id.
pub const HEADER_LEN: usize = 8;

/// Bytes of a push body before its payload: app length, msg_id, seq, qos, created_ms, kind.
const PUSH_FIXED: usize = 2 + 8 + 8 + 1 + 8 + 1;
/// A publication's body without its app, topic and payload: two string lengths, offset,
/// msg_id, created_ms, kind.
const PUBLICATION_FIXED: usize = 2 + 2 + 8 + 8 + 8 + 1;
/// An upstream's body without its app, kind and payload: two string lengths, payload kind.
const UPSTREAM_FIXED: usize = 2 + 2 + 1;
/// An upstream reply's body without its app and payload: app length, status, kind.
const UPSTREAM_REPLY_FIXED: usize = 2 + 2 + 1;

/// Check, then parse: `Ok(None)` when `buf` does not yet hold a whole frame ("incomplete" is
/// normal, not an error).
///
/// Errors with [`DecodeError::TooLarge`] as soon as the 4-byte prefix is visible and says more
/// than `max_frame`, before anything is buffered or allocated. Returns the whole frame length
/// (prefix included) when complete.
pub fn check(buf: &[u8], max_frame: u32) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len > max_frame {
        return Err(DecodeError::TooLarge {
            len: u64::from(len),
            max: max_frame,
        });
    }
    if (len as usize) < HEADER_LEN {
        return Err(DecodeError::Malformed(
            "length prefix is smaller than the 8-byte header",
        ));
    }
    let total = PREFIX_LEN + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// [`check`], then split the frame off the front of `buf` and parse it (payload zero-copy).
///
/// `Ok(None)` leaves `buf` untouched. On an error the bad frame may already have been split off;
/// the connection must close either way. A push payload shares `buf`'s allocation, which stays
/// alive while the payload does.
pub fn decode(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, DecodeError> {
    match check(buf, max_frame)? {
        None => Ok(None),
        Some(total) => parse_checked(buf.split_to(total).freeze()).map(Some),
    }
}

/// Parse exactly one whole frame, prefix included (a WebSocket binary message).
///
/// The prefix must equal `frame.len() - 4`; `max_frame` is enforced too.
pub fn parse(frame: Bytes, max_frame: u32) -> Result<Frame, DecodeError> {
    let Some(body_len) = frame.len().checked_sub(PREFIX_LEN) else {
        return Err(DecodeError::Malformed(
            "message is shorter than the 4-byte length prefix",
        ));
    };
    if body_len as u64 > u64::from(max_frame) {
        return Err(DecodeError::TooLarge {
            len: body_len as u64,
            max: max_frame,
        });
    }
    match check(&frame, max_frame)? {
        Some(total) if total == frame.len() => parse_checked(frame),
        _ => Err(DecodeError::Malformed(
            "length prefix does not match the message length",
        )),
    }
}

/// Parse a frame whose length prefix is known to match its length.
fn parse_checked(frame: Bytes) -> Result<Frame, DecodeError> {
    let mut r = Reader {
        frame: &frame,
        pos: PREFIX_LEN,
    };
    let version = r.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let op_num = r.u8()?;
    let op = Op::from_u8(op_num).ok_or_else(|| DecodeError::UnknownOp(op_num.to_string()))?;
    if r.u16()? != 0 {
        return Err(DecodeError::Malformed("reserved header flags must be 0"));
    }
    let id = r.u32()?;
    let body = match op {
        Op::Connect => Body::Connect(Connect {
            version: r.u8()?,
            device: r.str()?,
            heartbeat_ms: r.u32()?,
            bindings: r.list(|r| {
                Ok(Binding {
                    app: r.str()?,
                    token: r.str()?,
                    last_seq: match r.u8()? {
                        0 => None,
                        1 => Some(r.u64()?),
                        _ => return Err(DecodeError::Malformed("binding has a bad last_seq flag")),
                    },
                })
            })?,
        }),
        Op::Connected => Body::Connected(Connected {
            conn_id: r.u64()?,
            node: r.str()?,
            heartbeat_ms: r.u32()?,
            max_frame: r.u32()?,
            bindings: r.list(|r| {
                Ok(Bound {
                    app: r.str()?,
                    user: r.str()?,
                })
            })?,
        }),
        Op::Ping => Body::Ping,
        Op::Pong => Body::Pong,
        Op::Push => Body::Push(Push {
            app: r.str()?,
            msg_id: r.u64()?,
            seq: r.u64()?,
            qos: r.u8()?,
            created_ms: r.u64()?,
            kind: r.kind()?,
            payload: r.rest(),
        }),
        Op::Subscribe => Body::Subscribe(Subscribe {
            app: r.str()?,
            topic: r.str()?,
            since: match r.u8()? {
                0 => None,
                1 => Some(r.u64()?),
                _ => return Err(DecodeError::Malformed("subscribe has a bad since flag")),
            },
            token: match r.remaining() {
                0 => None,
                _ => Some(r.str()?),
            },
        }),
        Op::Refresh => Body::Refresh(Refresh {
            app: r.str()?,
            token: r.str()?,
        }),
        Op::Refreshed => Body::Refreshed(Refreshed {
            app: r.str()?,
            expires_s: r.u64()?,
        }),
        Op::Expiring => Body::Expiring(Expiring {
            app: r.str()?,
            expires_s: r.u64()?,
        }),
        Op::Subscribed => Body::Subscribed(Subscribed {
            app: r.str()?,
            topic: r.str()?,
            offset: r.u64()?,
            recovery: Recovery::from_u8(r.u8()?)
                .ok_or(DecodeError::Malformed("unknown subscribed recovery"))?,
        }),
        Op::Unsubscribe => Body::Unsubscribe(Unsubscribe {
            app: r.str()?,
            topic: r.str()?,
        }),
        Op::Unsubscribed => Body::Unsubscribed(Unsubscribed {
            app: r.str()?,
            topic: r.str()?,
        }),
        Op::Publication => Body::Publication(Publication {
            app: r.str()?,
            topic: r.str()?,
            offset: r.u64()?,
            msg_id: r.u64()?,
            created_ms: r.u64()?,
            kind: r.kind()?,
            payload: r.rest(),
        }),
        Op::Upstream => Body::Upstream(Upstream {
            app: r.str()?,
            kind: r.str()?,
            payload_kind: r.kind()?,
            payload: r.rest(),
        }),
        Op::UpstreamReply => Body::UpstreamReply(UpstreamReply {
            app: r.str()?,
            status: r.u16()?,
            kind: r.kind()?,
            payload: r.rest(),
        }),
        Op::Ack => Body::Ack(Ack {
            app: r.str()?,
            seq: r.u64()?,
        }),
        Op::Sync => Body::Sync(Sync {
            app: r.str()?,
            after: r.u64()?,
            limit: r.u32()?,
        }),
        Op::Synced => Body::Synced(Synced {
            app: r.str()?,
            last: r.u64()?,
            head: r.u64()?,
        }),
        Op::Error => Body::Error(ErrorBody {
            code: Code(r.u16()?),
            message: r.str()?,
        }),
        Op::Disconnect => Body::Disconnect(Disconnect {
            code: Code(r.u16()?),
            retry_after_ms: r.u32()?,
            reason: r.str()?,
        }),
    };
    if r.pos != frame.len() {
        return Err(DecodeError::Malformed(
            "trailing bytes after the frame body",
        ));
    }
    Ok(Frame { id, body })
}

/// A cursor over one whole frame.
struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.frame.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Malformed("frame body is truncated"));
        }
        let frame: &'a [u8] = self.frame;
        let out = &frame[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::Malformed("string is not valid UTF-8")),
        }
    }

    /// A list of items, each at least 4 bytes long (two `str`s). The count is checked against
    /// the bytes left before anything is allocated, so a hostile count costs nothing.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        const MIN_ITEM: usize = 4;
        let count = self.u16()? as usize;
        if count * MIN_ITEM > self.remaining() {
            return Err(DecodeError::Malformed(
                "list count exceeds the bytes left in the frame",
            ));
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(item(self)?);
        }
        Ok(out)
    }

    fn kind(&mut self) -> Result<PayloadKind, DecodeError> {
        match self.u8()? {
            0 => Ok(PayloadKind::Binary),
            1 => Ok(PayloadKind::Json),
            _ => Err(DecodeError::Malformed("unknown payload kind")),
        }
    }

    /// Everything left, as a zero-copy slice of the frame.
    fn rest(&mut self) -> Bytes {
        let out = self.frame.slice(self.pos..);
        self.pos = self.frame.len();
        out
    }
}

/// The exact number of bytes [`encode`] writes for `frame`, length prefix included.
pub fn encoded_len(frame: &Frame) -> usize {
    let s = |s: &str| 2 + s.len();
    let body = match &frame.body {
        Body::Connect(c) => {
            1 + s(&c.device)
                + 4
                + 2
                + c.bindings
                    .iter()
                    .map(|b| s(&b.app) + s(&b.token) + 1 + if b.last_seq.is_some() { 8 } else { 0 })
                    .sum::<usize>()
        }
        Body::Connected(c) => {
            8 + s(&c.node)
                + 4
                + 4
                + 2
                + c.bindings
                    .iter()
                    .map(|b| s(&b.app) + s(&b.user))
                    .sum::<usize>()
        }
        Body::Ping | Body::Pong => 0,
        Body::Push(p) => PUSH_FIXED + p.app.len() + p.payload.len(),
        Body::Ack(a) => s(&a.app) + 8,
        Body::Sync(q) => s(&q.app) + 8 + 4,
        Body::Synced(q) => s(&q.app) + 8 + 8,
        Body::Subscribe(q) => {
            s(&q.app)
                + s(&q.topic)
                + 1
                + if q.since.is_some() { 8 } else { 0 }
                + q.token.as_deref().map_or(0, s)
        }
        Body::Refresh(q) => s(&q.app) + s(&q.token),
        Body::Refreshed(Refreshed { app, .. }) | Body::Expiring(Expiring { app, .. }) => s(app) + 8,
        Body::Subscribed(q) => s(&q.app) + s(&q.topic) + 8 + 1,
        Body::Unsubscribe(q) => s(&q.app) + s(&q.topic),
        Body::Unsubscribed(q) => s(&q.app) + s(&q.topic),
        Body::Publication(p) => PUBLICATION_FIXED + p.app.len() + p.topic.len() + p.payload.len(),
        Body::Upstream(u) => UPSTREAM_FIXED + u.app.len() + u.kind.len() + u.payload.len(),
        Body::UpstreamReply(u) => UPSTREAM_REPLY_FIXED + u.app.len() + u.payload.len(),
        Body::Error(e) => 2 + s(&e.message),
        Body::Disconnect(d) => 2 + 4 + s(&d.reason),
    };
    PREFIX_LEN + HEADER_LEN + body
}

/// Whether `frame` can be written in the binary encoding: every string at most 65535 bytes,
/// every list at most 65535 items, the whole frame within the 32-bit length prefix.
pub fn validate(frame: &Frame) -> Result<(), EncodeError> {
    fn s(field: &'static str, v: &str) -> Result<(), EncodeError> {
        match u16::try_from(v.len()) {
            Ok(_) => Ok(()),
            Err(_) => Err(EncodeError::StringTooLong {
                field,
                len: v.len(),
            }),
        }
    }
    fn list(field: &'static str, len: usize) -> Result<(), EncodeError> {
        match u16::try_from(len) {
            Ok(_) => Ok(()),
            Err(_) => Err(EncodeError::ListTooLong { field, len }),
        }
    }
    match &frame.body {
        Body::Connect(c) => {
            s("device", &c.device)?;
            list("bindings", c.bindings.len())?;
            for b in &c.bindings {
                s("bindings.app", &b.app)?;
                s("bindings.token", &b.token)?;
            }
        }
        Body::Connected(c) => {
            s("node", &c.node)?;
            list("bindings", c.bindings.len())?;
            for b in &c.bindings {
                s("bindings.app", &b.app)?;
                s("bindings.user", &b.user)?;
            }
        }
        Body::Ping | Body::Pong => {}
        Body::Push(p) => s("app", &p.app)?,
        Body::Ack(a) => s("app", &a.app)?,
        Body::Sync(q) => s("app", &q.app)?,
        Body::Synced(q) => s("app", &q.app)?,
        Body::Subscribe(Subscribe {
            app, topic, token, ..
        }) => {
            s("app", app)?;
            s("topic", topic)?;
            if let Some(token) = token {
                s("token", token)?;
            }
        }
        Body::Refresh(q) => {
            s("app", &q.app)?;
            s("token", &q.token)?;
        }
        Body::Refreshed(Refreshed { app, .. }) | Body::Expiring(Expiring { app, .. }) => {
            s("app", app)?
        }
        Body::Subscribed(Subscribed { app, topic, .. })
        | Body::Unsubscribe(Unsubscribe { app, topic })
        | Body::Unsubscribed(Unsubscribed { app, topic })
        | Body::Publication(Publication { app, topic, .. }) => {
            s("app", app)?;
            s("topic", topic)?;
        }
        Body::Upstream(u) => {
            s("app", &u.app)?;
            s("kind", &u.kind)?;
        }
        Body::UpstreamReply(u) => s("app", &u.app)?,
        Body::Error(e) => s("message", &e.message)?,
        Body::Disconnect(d) => s("reason", &d.reason)?,
    }
    let len = encoded_len(frame);
    if u32::try_from(len - PREFIX_LEN).is_err() {
        return Err(EncodeError::FrameTooLong { len });
    }
    Ok(())
}

/// Append `frame` to `dst`, or leave `dst` untouched and say why it cannot be encoded.
pub fn try_encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
    validate(frame)?;
    write(frame, dst);
    Ok(())
}

/// Append `frame` to `dst`, reserving [`encoded_len`] once.
///
/// For frames known to be valid (sizes checked where the data entered the system). A frame that
/// [`validate`] rejects is not written at all, so `dst` never holds a truncated or corrupt
/// frame; use [`try_encode`] to learn about it.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    // Ignoring the error is the documented contract; try_encode is the checked variant.
    let _ = try_encode(frame, dst);
}

/// [`encode`] into a fresh buffer of exactly the right size (empty if the frame is not
/// encodable).
pub fn encode_to_bytes(frame: &Frame) -> Bytes {
    let mut dst = BytesMut::new();
    encode(frame, &mut dst);
    dst.freeze()
}

/// Write a frame [`validate`] accepted.
fn write(frame: &Frame, dst: &mut BytesMut) {
    let len = encoded_len(frame);
    dst.reserve(len);
    // validate() checked that this fits.
    dst.put_u32((len - PREFIX_LEN) as u32);
    dst.put_u8(PROTOCOL_VERSION);
    dst.put_u8(frame.op() as u8);
    dst.put_u16(0);
    dst.put_u32(frame.id);
    let put_str = |dst: &mut BytesMut, s: &str| {
        dst.put_u16(s.len() as u16);
        dst.put_slice(s.as_bytes());
    };
    match &frame.body {
        Body::Connect(c) => {
            dst.put_u8(c.version);
            put_str(dst, &c.device);
            dst.put_u32(c.heartbeat_ms);
            dst.put_u16(c.bindings.len() as u16);
            for b in &c.bindings {
                put_str(dst, &b.app);
                put_str(dst, &b.token);
                match b.last_seq {
                    None => dst.put_u8(0),
                    Some(seq) => {
                        dst.put_u8(1);
                        dst.put_u64(seq);
                    }
                }
            }
        }
        Body::Connected(c) => {
            dst.put_u64(c.conn_id);
            put_str(dst, &c.node);
            dst.put_u32(c.heartbeat_ms);
            dst.put_u32(c.max_frame);
            dst.put_u16(c.bindings.len() as u16);
            for b in &c.bindings {
                put_str(dst, &b.app);
                put_str(dst, &b.user);
            }
        }
        Body::Ping | Body::Pong => {}
        Body::Push(p) => {
            put_str(dst, &p.app);
            dst.put_u64(p.msg_id);
            dst.put_u64(p.seq);
            dst.put_u8(p.qos);
            dst.put_u64(p.created_ms);
            dst.put_u8(p.kind as u8);
            dst.put_slice(&p.payload);
        }
        Body::Ack(a) => {
            put_str(dst, &a.app);
            dst.put_u64(a.seq);
        }
        Body::Sync(q) => {
            put_str(dst, &q.app);
            dst.put_u64(q.after);
            dst.put_u32(q.limit);
        }
        Body::Synced(q) => {
            put_str(dst, &q.app);
            dst.put_u64(q.last);
            dst.put_u64(q.head);
        }
        Body::Subscribe(q) => {
            put_str(dst, &q.app);
            put_str(dst, &q.topic);
            match q.since {
                None => dst.put_u8(0),
                Some(offset) => {
                    dst.put_u8(1);
                    dst.put_u64(offset);
                }
            }
            if let Some(token) = &q.token {
                put_str(dst, token);
            }
        }
        Body::Refresh(q) => {
            put_str(dst, &q.app);
            put_str(dst, &q.token);
        }
        Body::Refreshed(Refreshed { app, expires_s })
        | Body::Expiring(Expiring { app, expires_s }) => {
            put_str(dst, app);
            dst.put_u64(*expires_s);
        }
        Body::Subscribed(q) => {
            put_str(dst, &q.app);
            put_str(dst, &q.topic);
            dst.put_u64(q.offset);
            dst.put_u8(q.recovery as u8);
        }
        Body::Unsubscribe(Unsubscribe { app, topic })
        | Body::Unsubscribed(Unsubscribed { app, topic }) => {
            put_str(dst, app);
            put_str(dst, topic);
        }
        Body::Publication(p) => {
            put_str(dst, &p.app);
            put_str(dst, &p.topic);
            dst.put_u64(p.offset);
            dst.put_u64(p.msg_id);
            dst.put_u64(p.created_ms);
            dst.put_u8(p.kind as u8);
            dst.put_slice(&p.payload);
        }
        Body::Upstream(u) => {
            put_str(dst, &u.app);
            put_str(dst, &u.kind);
            dst.put_u8(u.payload_kind as u8);
            dst.put_slice(&u.payload);
        }
        Body::UpstreamReply(u) => {
            put_str(dst, &u.app);
            dst.put_u16(u.status);
            dst.put_u8(u.kind as u8);
            dst.put_slice(&u.payload);
        }
        Body::Error(e) => {
            dst.put_u16(e.code.0);
            put_str(dst, &e.message);
        }
        Body::Disconnect(d) => {
            dst.put_u16(d.code.0);
            dst.put_u32(d.retry_after_ms);
            put_str(dst, &d.reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = crate::DEFAULT_MAX_FRAME;

    fn header(len: u32, version: u8, op: u8, flags: u16, id: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_be_bytes());
        v.push(version);
        v.push(op);
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v
    }

    /// A frame with a correct prefix around `body`.
    fn raw(op: u8, body: &[u8]) -> Bytes {
        let mut v = header((HEADER_LEN + body.len()) as u32, 1, op, 0, 9);
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    fn push(payload: &'static [u8]) -> Frame {
        Frame::new(
            0,
            Push {
                app: "demo".into(),
                msg_id: 42,
                seq: 7,
                qos: 1,
                created_ms: 1_763_700_000_000,
                kind: PayloadKind::Json,
                payload: Bytes::from_static(payload),
            },
        )
    }

    #[test]
    fn ping_layout_is_exact() {
        let bytes = encode_to_bytes(&Frame::new(0x0102_0304, Body::Ping));
        assert_eq!(
            &bytes[..],
            &[0, 0, 0, 8, 1, Op::Ping as u8, 0, 0, 1, 2, 3, 4]
        );
        assert_eq!(
            parse(bytes, MAX).unwrap(),
            Frame::new(0x0102_0304, Body::Ping)
        );
    }

    #[test]
    fn push_layout_and_zero_copy_payload() {
        let frame = push(b"{\"a\":1}");
        let bytes = encode_to_bytes(&frame);
        assert_eq!(bytes.len(), encoded_len(&frame));
        assert_eq!(bytes.len(), 12 + 2 + 4 + 8 + 8 + 1 + 8 + 1 + 7);
        let mut buf = BytesMut::from(&bytes[..]);
        let start = buf.as_ptr() as usize;
        let decoded = decode(&mut buf, MAX).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(decoded, frame);
        let Body::Push(p) = decoded.body else {
            unreachable!()
        };
        // The payload points into the read buffer: no copy.
        assert_eq!(p.payload.as_ptr() as usize, start + bytes.len() - 7);
    }

    #[test]
    fn incomplete_is_not_an_error() {
        let bytes = encode_to_bytes(&push(b"[1,2,3]"));
        for n in 0..bytes.len() {
            assert_eq!(check(&bytes[..n], MAX), Ok(None), "prefix of {n} bytes");
            let mut buf = BytesMut::from(&bytes[..n]);
            assert_eq!(decode(&mut buf, MAX), Ok(None));
            assert_eq!(buf.len(), n, "incomplete input must stay buffered");
        }
        assert_eq!(check(&bytes, MAX), Ok(Some(bytes.len())));
    }

    #[test]
    fn too_large_from_the_prefix_alone() {
        let prefix = 70_000u32.to_be_bytes();
        let expected = DecodeError::TooLarge {
            len: 70_000,
            max: MAX,
        };
        assert_eq!(check(&prefix, MAX), Err(expected.clone()));
        let mut buf = BytesMut::from(&prefix[..]);
        assert_eq!(decode(&mut buf, MAX), Err(expected));
        assert_eq!(
            check(&u32::MAX.to_be_bytes(), MAX),
            Err(DecodeError::TooLarge {
                len: u64::from(u32::MAX),
                max: MAX
            })
        );
        // Exactly max_frame is fine.
        assert_eq!(check(&MAX.to_be_bytes(), MAX), Ok(None));
    }

    #[test]
    fn prefix_below_header_is_malformed() {
        for len in 0..HEADER_LEN as u32 {
            assert!(matches!(
                check(&len.to_be_bytes(), MAX),
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn wrong_version() {
        let mut v = header(8, 2, Op::Ping as u8, 0, 1);
        assert_eq!(
            parse(Bytes::from(v.clone()), MAX),
            Err(DecodeError::UnsupportedVersion(2))
        );
        v[4] = 0;
        assert_eq!(
            parse(Bytes::from(v), MAX),
            Err(DecodeError::UnsupportedVersion(0))
        );
    }

    #[test]
    fn unknown_op() {
        for op in [0u8, 21, 200, 255] {
            let v = header(8, 1, op, 0, 1);
            assert_eq!(
                parse(Bytes::from(v), MAX),
                Err(DecodeError::UnknownOp(op.to_string()))
            );
        }
    }

    #[test]
    fn nonzero_flags() {
        for flags in [1u16, 0x8000] {
            let v = header(8, 1, Op::Ping as u8, flags, 1);
            assert!(matches!(
                parse(Bytes::from(v), MAX),
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn parse_prefix_mismatch() {
        let good = encode_to_bytes(&Frame::new(1, Body::Pong));
        // One byte too many in the message.
        let mut v = good.to_vec();
        v.push(0);
        assert!(matches!(
            parse(Bytes::from(v), MAX),
            Err(DecodeError::Malformed(_))
        ));
        // One byte too few.
        let v = good[..good.len() - 1].to_vec();
        assert!(matches!(
            parse(Bytes::from(v), MAX),
            Err(DecodeError::Malformed(_))
        ));
        // Shorter than a prefix.
        assert!(matches!(
            parse(Bytes::from_static(&[0, 0]), MAX),
            Err(DecodeError::Malformed(_))
        ));
        // Longer than max_frame, whatever the prefix says.
        let mut v = header(8, 1, Op::Pong as u8, 0, 1);
        v.resize(100, 0);
        assert_eq!(
            parse(Bytes::from(v), 50),
            Err(DecodeError::TooLarge { len: 96, max: 50 })
        );
    }

    #[test]
    fn hostile_list_count_allocates_nothing() {
        // connect with a bindings count of 65535 and no items behind it.
        let mut body = vec![1, 0, 1, b'd', 0, 0, 0, 0];
        body.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            parse(raw(Op::Connect as u8, &body), MAX),
            Err(DecodeError::Malformed(
                "list count exceeds the bytes left in the frame"
            ))
        );
        // A count that fits the bytes left but whose items are malformed is still an error.
        let mut body = vec![0; 8];
        body.extend_from_slice(&2u16.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0, 0, 9, 0, 0]);
        assert!(matches!(
            parse(raw(Op::Connected as u8, &body), MAX),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn bad_utf8() {
        let mut body = vec![0, 2, 0xC3, 0x28];
        body.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(
            parse(raw(Op::Ack as u8, &body), MAX),
            Err(DecodeError::Malformed("string is not valid UTF-8"))
        );
    }

    #[test]
    fn truncated_and_trailing() {
        // ack with a string length running past the end.
        assert!(matches!(
            parse(raw(Op::Ack as u8, &[0, 50, b'a']), MAX),
            Err(DecodeError::Malformed("frame body is truncated"))
        ));
        // ping with a body.
        assert_eq!(
            parse(raw(Op::Ping as u8, &[0]), MAX),
            Err(DecodeError::Malformed(
                "trailing bytes after the frame body"
            ))
        );
    }

    #[test]
    fn unknown_payload_kind() {
        let mut bytes = encode_to_bytes(&push(b"x")).to_vec();
        let kind_at = 12 + 2 + 4 + 8 + 8 + 1 + 8;
        assert_eq!(bytes[kind_at], 1);
        bytes[kind_at] = 2;
        assert_eq!(
            parse(Bytes::from(bytes), MAX),
            Err(DecodeError::Malformed("unknown payload kind"))
        );
    }

    #[test]
    fn oversized_fields_are_refused_not_truncated() {
        let long = "x".repeat(usize::from(u16::MAX) + 1);
        let frame = Frame::new(
            1,
            ErrorBody {
                code: Code::BAD_REQUEST,
                message: long,
            },
        );
        let mut dst = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            try_encode(&frame, &mut dst),
            Err(EncodeError::StringTooLong {
                field: "message",
                len: 65_536
            })
        );
        encode(&frame, &mut dst);
        assert_eq!(&dst[..], b"keep");
        assert!(encode_to_bytes(&frame).is_empty());

        let binding = Binding {
            app: "a".into(),
            token: "t".into(),
            last_seq: None,
        };
        let frame = Frame::new(
            1,
            Connect {
                version: 1,
                device: "d".into(),
                heartbeat_ms: 0,
                bindings: vec![binding; 65_536],
            },
        );
        assert_eq!(
            validate(&frame),
            Err(EncodeError::ListTooLong {
                field: "bindings",
                len: 65_536
            })
        );
    }

    #[test]
    fn largest_string_round_trips() {
        let frame = Frame::new(
            3,
            Ack {
                app: "é".repeat(usize::from(u16::MAX) / 2) + "x",
                seq: u64::MAX,
            },
        );
        let bytes = encode_to_bytes(&frame);
        assert_eq!(bytes.len(), encoded_len(&frame));
        assert_eq!(parse(bytes, u32::MAX).unwrap(), frame);
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let frames = [
            Frame::new(1, Body::Ping),
            push(b"{}"),
            Frame::new(
                2,
                Disconnect {
                    code: Code::SLOW,
                    reason: "slow".into(),
                    retry_after_ms: 500,
                },
            ),
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            encode(f, &mut buf);
        }
        for f in &frames {
            assert_eq!(decode(&mut buf, MAX).unwrap().as_ref(), Some(f));
        }
        assert_eq!(decode(&mut buf, MAX), Ok(None));
    }
}
