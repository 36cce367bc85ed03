//! Keys and values of the embedded store, as bytes.
//!
//! # Keys
//! An id is written with its bytes `0x00` and `0x01` escaped (`0x01 0x01`, `0x01 0x02`) and
//! then a `0x00` terminator, so an encoded id never contains the terminator: the inbox prefix
//! `app 0x00 user 0x00` of one inbox is never a prefix of another inbox's keys, whatever the
//! ids hold. [`tether_core::validate_id`] already keeps control characters out of ids, so in
//! practice the escape never fires and keys read as `app 0x00 user 0x00 ...`. The escape keeps
//! byte order, so keys sort as their ids do.
//!
//! A log is an inbox or a topic's history: a head, a first seq and messages, kept by the same
//! code. A log key is the prefix of its message keys and the key of its record:
//!
//! - inbox: `app 0x00 user 0x00`;
//! - topic history: `app 0x00 0x01 0x03 topic 0x00` ([`TOPIC_MARK`] where an inbox has its
//!   user). An escaped id holds `0x01` only as the start of `0x01 0x01` or `0x01 0x02`, so
//!   no escaped user starts with the mark: a topic's log key is never a prefix of an inbox's
//!   keys nor the other way round, and a topic never shares a log with a user of its name.
//!
//! Under a log key, and for the user of an inbox key:
//!
//! - message: `log seq(u64 BE)`, in seq order within a log;
//! - log record: `log`;
//! - cursor: `inbox device` (device escaped, no terminator);
//! - subscription: `inbox topic` (topic escaped, no terminator), in topic order for a user;
//! - idempotency: `app 0x00 key` (the key raw: it is last, and only looked up whole).
//!
//! # Values
//! Each starts with a version byte ([`VERSION`]; [`META_VERSION`] for log records,
//! [`CURSOR_VERSION`] for cursors);
//! integers are big-endian. A value that does not decode is [`StoreError::Corrupt`], never a
//! panic. A subscription's value is the version byte alone.

use bytes::Bytes;
use fjall::Slice;
use tether_core::store::{Appended, Cursor, StoredMessage};
use tether_core::{AppId, DeviceId, MessageId, Seq, StoreError, TopicId, UserId};
use tether_proto::PayloadKind;

/// The format of messages, cursors and idempotency records written by this code.
pub const VERSION: u8 = 1;
/// The format of inbox records written by this code. Version 1 records (same layout) were
/// rewritten by every batch and held the exact head and first; version 2 records are only
/// lower bounds of both (see [`Meta`]). This code reads both, since an exact value is also a
/// lower bound; code that knows only version 1 refuses version 2 as corrupt instead of taking
/// a stale head for the real one and handing out seqs again.
pub const META_VERSION: u8 = 2;
/// The format of cursors written by this code: version 1 and the time of the cursor's last
/// change, which the sweep deletes idle cursors by. This code reads version 1 cursors (no
/// time) too; code that knows only version 1 refuses these as corrupt.
pub const CURSOR_VERSION: u8 = 2;

/// Longest key the store writes. fjall refuses keys past 64 KiB (by panicking); ids are at
/// most 128 bytes, so only an absurd idempotency key gets near this.
pub const MAX_KEY: usize = 4096;

const TERMINATOR: u8 = 0x00;
const ESCAPE: u8 = 0x01;
/// Marks a topic's log key: an escape sequence that escaping never writes.
pub const TOPIC_MARK: [u8; 2] = [ESCAPE, 0x03];

fn put_escaped(out: &mut Vec<u8>, id: &str) {
    for &b in id.as_bytes() {
        match b {
            TERMINATOR => out.extend_from_slice(&[ESCAPE, 0x01]),
            ESCAPE => out.extend_from_slice(&[ESCAPE, 0x02]),
            b => out.push(b),
        }
    }
}

fn put_id(out: &mut Vec<u8>, id: &str) {
    put_escaped(out, id);
    out.push(TERMINATOR);
}

fn unescape(bytes: &[u8]) -> Result<String, StoreError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut it = bytes.iter();
    while let Some(&b) = it.next() {
        match b {
            ESCAPE => match it.next() {
                Some(0x01) => out.push(TERMINATOR),
                Some(0x02) => out.push(ESCAPE),
                _ => return Err(corrupt("bad escape in a key")),
            },
            TERMINATOR => return Err(corrupt("terminator inside an escaped id")),
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| corrupt("an id in a key is not UTF-8"))
}

pub fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// Refuses a key fjall would choke on.
pub fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY {
        return Err(StoreError::Unavailable(format!(
            "a key of {} bytes is over the store's limit of {MAX_KEY}",
            key.len()
        )));
    }
    Ok(())
}

/// `app 0x00 user 0x00`: the record key of an inbox, and the prefix of its messages and
/// cursors.
pub fn inbox_key(app: &AppId, user: &UserId) -> Vec<u8> {
    let mut out = Vec::with_capacity(app.as_str().len() + user.as_str().len() + 2 + 8);
    put_inbox_key(&mut out, app, user);
    out
}

/// `app 0x00 0x01 0x03 topic 0x00`: the log key of a topic's history.
pub fn topic_key(app: &AppId, topic: &TopicId) -> Vec<u8> {
    let mut out = Vec::with_capacity(app.as_str().len() + topic.as_str().len() + 4 + 8);
    put_id(&mut out, app.as_str());
    out.extend_from_slice(&TOPIC_MARK);
    put_id(&mut out, topic.as_str());
    out
}

/// Refuses a log (inbox or topic history) whose message keys fjall would choke on.
pub fn check_inbox_key(log: &[u8]) -> Result<(), StoreError> {
    if log.len() + 8 > MAX_KEY {
        return Err(StoreError::Unavailable(format!(
            "a key of {} bytes is over the store's limit of {MAX_KEY}",
            log.len() + 8
        )));
    }
    Ok(())
}

/// Appends the inbox key of (app, user) to `out` (the writer keeps one buffer for them all).
pub fn put_inbox_key(out: &mut Vec<u8>, app: &AppId, user: &UserId) {
    put_id(out, app.as_str());
    put_id(out, user.as_str());
}

/// The message key of `seq` in `inbox`, built in `buf` and copied once into a [`Slice`].
pub fn message_key_slice(buf: &mut Vec<u8>, inbox: &[u8], seq: u64) -> Slice {
    buf.clear();
    buf.extend_from_slice(inbox);
    buf.extend_from_slice(&seq.to_be_bytes());
    Slice::new(buf)
}

pub fn message_key(inbox: &[u8], seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(inbox.len() + 8);
    out.extend_from_slice(inbox);
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// Splits a message key into its inbox key and seq.
pub fn split_message_key(key: &[u8]) -> Result<(&[u8], u64), StoreError> {
    let at = key
        .len()
        .checked_sub(8)
        .ok_or_else(|| corrupt("message key too short"))?;
    let (inbox, seq) = key.split_at(at);
    let seq: [u8; 8] = seq.try_into().map_err(|_| corrupt("message key"))?;
    Ok((inbox, u64::from_be_bytes(seq)))
}

pub fn cursor_key(inbox: &[u8], device: &DeviceId) -> Vec<u8> {
    let mut out = Vec::with_capacity(inbox.len() + device.as_str().len());
    out.extend_from_slice(inbox);
    put_escaped(&mut out, device.as_str());
    out
}

/// The device of a cursor key found under `inbox`.
pub fn cursor_device(inbox: &[u8], key: &[u8]) -> Result<DeviceId, StoreError> {
    let rest = key
        .strip_prefix(inbox)
        .ok_or_else(|| corrupt("cursor key outside its inbox"))?;
    Ok(DeviceId::from(unescape(rest)?.as_str()))
}

/// `inbox topic`: the user of `inbox` is subscribed to `topic`.
pub fn subscription_key(inbox: &[u8], topic: &TopicId) -> Vec<u8> {
    let mut out = Vec::with_capacity(inbox.len() + topic.as_str().len());
    out.extend_from_slice(inbox);
    put_escaped(&mut out, topic.as_str());
    out
}

/// The topic of a subscription key found under `inbox`.
pub fn subscription_topic(inbox: &[u8], key: &[u8]) -> Result<TopicId, StoreError> {
    let rest = key
        .strip_prefix(inbox)
        .ok_or_else(|| corrupt("subscription key outside its user"))?;
    Ok(TopicId::from(unescape(rest)?.as_str()))
}

/// A subscription's value: nothing but the format.
/// A saved session: `version u8 | expires_ms u64 | value`.
pub fn encode_session(value: &[u8], expires_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + value.len());
    out.push(VERSION);
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// A saved session's expiry and value.
pub fn decode_session(stored: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let mut r = Reader::new("saved session", stored)?;
    let expires = r.u64()?;
    Ok((expires, r.rest()))
}

pub fn encode_subscription() -> [u8; 1] {
    [VERSION]
}

pub fn decode_subscription(value: &[u8]) -> Result<(), StoreError> {
    Reader::new("subscription", value)?.end()
}

pub fn idempotency_key(app: &AppId, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(app.as_str().len() + 1 + key.len());
    put_id(&mut out, app.as_str());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Reads a value front to back; running out of bytes is [`StoreError::Corrupt`].
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte.
    fn new(what: &'static str, bytes: &'a [u8]) -> Result<Self, StoreError> {
        Ok(Self::versioned(what, bytes, &[VERSION])?.0)
    }

    /// Checks that the version byte is one of `known`, and returns it.
    fn versioned(
        what: &'static str,
        bytes: &'a [u8],
        known: &[u8],
    ) -> Result<(Self, u8), StoreError> {
        let mut r = Reader { what, bytes };
        match r.u8()? {
            v if known.contains(&v) => Ok((r, v)),
            v => Err(corrupt(format!("{what}: unknown format version {v}"))),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < n {
            return Err(corrupt(format!("{}: truncated", self.what)));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let what = self.what;
        self.take(N)?
            .try_into()
            .map_err(|_| corrupt(format!("{what}: truncated")))
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn end(self) -> Result<(), StoreError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(format!("{}: trailing bytes", self.what)))
        }
    }
}

/// version, kind, id, created_ms, expires_ms: what precedes a message's payload.
const MESSAGE_HEADER: usize = 1 + 1 + 8 + 8 + 8;

/// A message value: everything but its seq, which is in the key.
pub fn encode_message(
    id: MessageId,
    created_ms: u64,
    expires_ms: u64,
    kind: PayloadKind,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MESSAGE_HEADER + payload.len());
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&created_ms.to_be_bytes());
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The expiry of a message value, without copying its payload (the sweep reads only this).
pub fn message_expires(value: &[u8]) -> Result<u64, StoreError> {
    let mut r = Reader::new("message", value)?;
    r.take(1 + 8 + 8)?;
    r.u64()
}

pub fn decode_message(seq: u64, value: &[u8]) -> Result<StoredMessage, StoreError> {
    let mut r = Reader::new("message", value)?;
    let kind = match r.u8()? {
        0 => PayloadKind::Binary,
        1 => PayloadKind::Json,
        k => return Err(corrupt(format!("message: unknown payload kind {k}"))),
    };
    let id = MessageId(r.u64()?);
    let created_ms = r.u64()?;
    let expires_ms = r.u64()?;
    Ok(StoredMessage {
        seq: Seq(seq),
        id,
        created_ms,
        expires_ms,
        kind,
        payload: Bytes::copy_from_slice(r.rest()),
    })
}

/// Where an inbox (or any log: a topic's history too) stands: `head` is the last seq it ever
/// assigned, `first` the lowest seq it may still hold.
///
/// # Invariants
/// `1 <= first <= head + 1`; no message with a seq below `first` is readable (some may still
/// await the sweep), and `head` never goes back.
///
/// The inbox record on disk is a lower bound of both, not their current values: appends do
/// not rewrite it. The real ones are `head = max(record head, seq of the inbox's last message
/// key)` and `first` = the seq of the inbox's first message key at or above the record's
/// `first` (or `head + 1` when there is none); see `super::writer` for when the record must be
/// written so that this stays true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub head: u64,
    pub first: u64,
}

impl Default for Meta {
    fn default() -> Self {
        Meta { head: 0, first: 1 }
    }
}

pub fn encode_meta(meta: Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(META_VERSION);
    out.extend_from_slice(&meta.head.to_be_bytes());
    out.extend_from_slice(&meta.first.to_be_bytes());
    out
}

/// An inbox record, and whether it is in the current format ([`META_VERSION`]).
pub fn decode_meta(value: &[u8]) -> Result<(Meta, bool), StoreError> {
    let (mut r, version) = Reader::versioned("inbox meta", value, &[1, META_VERSION])?;
    let meta = Meta {
        head: r.u64()?,
        first: r.u64()?,
    };
    r.end()?;
    if meta.first == 0 || meta.first > meta.head.saturating_add(1) {
        return Err(corrupt(format!("inbox meta: first {meta:?} out of range")));
    }
    Ok((meta, version == META_VERSION))
}

/// A cursor as last changed at `changed_ms` (ms since the epoch).
pub fn encode_cursor(cursor: Cursor, changed_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(29);
    out.push(CURSOR_VERSION);
    out.extend_from_slice(&cursor.acked.0.to_be_bytes());
    out.extend_from_slice(&cursor.attempt_seq.0.to_be_bytes());
    out.extend_from_slice(&cursor.attempts.to_be_bytes());
    out.extend_from_slice(&changed_ms.to_be_bytes());
    out
}

pub fn decode_cursor(value: &[u8]) -> Result<Cursor, StoreError> {
    decode_cursor_changed(value).map(|(cursor, _)| cursor)
}

/// A cursor and when it last changed (`None` for a version 1 cursor, which does not say).
pub fn decode_cursor_changed(value: &[u8]) -> Result<(Cursor, Option<u64>), StoreError> {
    let (mut r, version) = Reader::versioned("cursor", value, &[VERSION, CURSOR_VERSION])?;
    let cursor = Cursor {
        acked: Seq(r.u64()?),
        attempt_seq: Seq(r.u64()?),
        attempts: r.u32()?,
    };
    let changed = match version {
        CURSOR_VERSION => Some(r.u64()?),
        _ => None,
    };
    r.end()?;
    Ok((cursor, changed))
}

/// An idempotency record: until `expires_ms`, the key answers `appended` (with `duplicate`
/// set by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemRecord {
    pub expires_ms: u64,
    pub appended: Appended,
}

pub fn encode_idempotency(record: &IdemRecord) -> Result<Vec<u8>, StoreError> {
    let a = &record.appended;
    let users = u32::try_from(a.seqs.len())
        .map_err(|_| StoreError::Unavailable("too many users for one append".into()))?;
    let mut out = Vec::with_capacity(
        29 + a
            .seqs
            .iter()
            .map(|(u, _)| 10 + u.as_str().len())
            .sum::<usize>(),
    );
    out.push(VERSION);
    out.extend_from_slice(&record.expires_ms.to_be_bytes());
    out.extend_from_slice(&a.id.0.to_be_bytes());
    out.extend_from_slice(&a.created_ms.to_be_bytes());
    out.extend_from_slice(&users.to_be_bytes());
    for (user, seq) in &a.seqs {
        let len = u16::try_from(user.as_str().len())
            .map_err(|_| StoreError::Unavailable("a user id over 64 KiB".into()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(user.as_str().as_bytes());
        out.extend_from_slice(&seq.0.to_be_bytes());
    }
    Ok(out)
}

/// The expiry of an idempotency value (the sweep reads only this).
pub fn idempotency_expires(value: &[u8]) -> Result<u64, StoreError> {
    Reader::new("idempotency record", value)?.u64()
}

pub fn decode_idempotency(value: &[u8]) -> Result<IdemRecord, StoreError> {
    let mut r = Reader::new("idempotency record", value)?;
    let expires_ms = r.u64()?;
    let id = MessageId(r.u64()?);
    let created_ms = r.u64()?;
    let count = r.u32()? as usize;
    // Each entry takes at least 10 bytes: a damaged count must not size a huge allocation.
    let mut seqs = Vec::with_capacity(count.min(r.bytes.len() / 10));
    for _ in 0..count {
        let len = r.u16()? as usize;
        let user = std::str::from_utf8(r.take(len)?)
            .map_err(|_| corrupt("idempotency record: a user id is not UTF-8"))?;
        seqs.push((UserId::from(user), Seq(r.u64()?)));
    }
    r.end()?;
    Ok(IdemRecord {
        expires_ms,
        appended: Appended {
            id,
            created_ms,
            seqs,
            duplicate: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record() -> IdemRecord {
        IdemRecord {
            expires_ms: 99,
            appended: Appended {
                id: MessageId(7),
                created_ms: 5,
                seqs: vec![(UserId::from("alice"), Seq(3)), (UserId::from("b"), Seq(1))],
                duplicate: false,
            },
        }
    }

    #[test]
    fn values_round_trip() {
        let m = encode_message(MessageId(9), 10, 20, PayloadKind::Json, b"{}");
        let back = decode_message(4, &m).unwrap();
        assert_eq!(
            (
                back.seq,
                back.id,
                back.created_ms,
                back.expires_ms,
                back.kind
            ),
            (Seq(4), MessageId(9), 10, 20, PayloadKind::Json)
        );
        assert_eq!(&back.payload[..], b"{}");
        assert_eq!(message_expires(&m).unwrap(), 20);

        let meta = Meta { head: 8, first: 3 };
        assert_eq!(decode_meta(&encode_meta(meta)).unwrap(), (meta, true));
        let mut old = encode_meta(meta);
        old[0] = 1;
        assert_eq!(
            decode_meta(&old).unwrap(),
            (meta, false),
            "version 1 records still read"
        );

        let cursor = Cursor {
            acked: Seq(4),
            attempt_seq: Seq(5),
            attempts: 2,
        };
        assert_eq!(
            decode_cursor_changed(&encode_cursor(cursor, 77)).unwrap(),
            (cursor, Some(77))
        );
        // Version 1: the same fields, no time.
        let mut old = encode_cursor(cursor, 77);
        old[0] = VERSION;
        old.truncate(old.len() - 8);
        assert_eq!(
            decode_cursor_changed(&old).unwrap(),
            (cursor, None),
            "version 1 cursors still read"
        );
        old.extend_from_slice(&[0; 8]);
        assert!(matches!(decode_cursor(&old), Err(StoreError::Corrupt(_))));
        let mut newer = encode_cursor(cursor, 77);
        newer[0] = CURSOR_VERSION + 1;
        assert!(matches!(decode_cursor(&newer), Err(StoreError::Corrupt(_))));

        let bytes = encode_idempotency(&record()).unwrap();
        assert_eq!(decode_idempotency(&bytes).unwrap(), record());
        assert_eq!(idempotency_expires(&bytes).unwrap(), 99);
    }

    #[test]
    fn truncated_values_are_corrupt() {
        let is_corrupt = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Corrupt(_)));
        // A message's payload is whatever follows its header, so only a cut header shows.
        let message = encode_message(MessageId(9), 10, 20, PayloadKind::Json, b"{}");
        for len in 0..MESSAGE_HEADER {
            assert!(is_corrupt(decode_message(1, &message[..len]).map(drop)));
            assert!(is_corrupt(message_expires(&message[..len]).map(drop)));
        }
        let meta = encode_meta(Meta { head: 1, first: 1 });
        let cursor = encode_cursor(Cursor::default(), 1);
        let idem = encode_idempotency(&record()).unwrap();
        for len in 0..meta.len() {
            assert!(
                is_corrupt(decode_meta(&meta[..len]).map(drop)),
                "meta cut at {len}"
            );
        }
        for len in 0..cursor.len() {
            assert!(
                is_corrupt(decode_cursor(&cursor[..len]).map(drop)),
                "cursor cut at {len}"
            );
        }
        for len in 0..idem.len() {
            assert!(
                is_corrupt(decode_idempotency(&idem[..len]).map(drop)),
                "record cut at {len}"
            );
        }
        let mut longer = meta.clone();
        longer.push(0);
        assert!(is_corrupt(decode_meta(&longer).map(drop)), "trailing bytes");
    }

    #[test]
    fn unknown_versions_and_kinds_are_corrupt() {
        let mut m = encode_message(MessageId(1), 1, 2, PayloadKind::Binary, b"x");
        m[1] = 9;
        assert!(matches!(decode_message(1, &m), Err(StoreError::Corrupt(_))));
        m[0] = 2;
        assert!(matches!(message_expires(&m), Err(StoreError::Corrupt(_))));
        let mut meta = encode_meta(Meta { head: 1, first: 1 });
        meta[0] = 3;
        assert!(matches!(decode_meta(&meta), Err(StoreError::Corrupt(_))));
        let meta = encode_meta(Meta { head: 1, first: 5 });
        assert!(
            matches!(decode_meta(&meta), Err(StoreError::Corrupt(_))),
            "first past head + 1"
        );
    }

    #[test]
    fn inbox_keys_are_prefix_free() {
        let key = |a: &str, u: &str| inbox_key(&AppId::from(a), &UserId::from(u));
        assert_eq!(key("a", "b"), b"a\0b\0");
        // Ids that would collide with naive separators do not.
        let pairs = [
            ("a", "b\0c"),
            ("a\0b", "c"),
            ("a", "b"),
            ("a", "b\x01"),
            ("a\x01", "b"),
        ];
        for (i, x) in pairs.iter().enumerate() {
            for (j, y) in pairs.iter().enumerate() {
                if i != j {
                    assert!(!key(y.0, y.1).starts_with(&key(x.0, x.1)), "{x:?} / {y:?}");
                }
            }
        }
        let inbox = key("a", "b");
        for device in ["phone", "p\0x", "\x01", ""] {
            let k = cursor_key(&inbox, &DeviceId::from(device));
            assert_eq!(cursor_device(&inbox, &k).unwrap().as_str(), device);
        }
        let mk = message_key(&inbox, 258);
        assert_eq!(split_message_key(&mk).unwrap(), (&inbox[..], 258));
    }

    #[test]
    fn topic_logs_and_inboxes_are_prefix_free() {
        let ids = ["a", "b", "", "\0", "\x01", "\x01\x03", "\x03", "a\0b"];
        let mut keys = Vec::new();
        for app in ["x", "x\0"] {
            for id in ids {
                keys.push(inbox_key(&AppId::from(app), &UserId::from(id)));
                keys.push(topic_key(&AppId::from(app), &TopicId::from(id)));
            }
        }
        assert_eq!(
            topic_key(&AppId::from("a"), &TopicId::from("b")),
            b"a\0\x01\x03b\0"
        );
        for (i, x) in keys.iter().enumerate() {
            for (j, y) in keys.iter().enumerate() {
                if i != j {
                    assert!(!y.starts_with(x), "{x:?} is a prefix of {y:?}");
                }
            }
        }
        let log = topic_key(&AppId::from("a"), &TopicId::from("b"));
        assert_eq!(
            split_message_key(&message_key(&log, 9)).unwrap(),
            (&log[..], 9)
        );
    }

    #[test]
    fn subscription_keys_round_trip() {
        let inbox = inbox_key(&AppId::from("a"), &UserId::from("u"));
        for topic in ["news", "n\0x", "\x01", ""] {
            let key = subscription_key(&inbox, &TopicId::from(topic));
            assert_eq!(subscription_topic(&inbox, &key).unwrap().as_str(), topic);
        }
        let other = inbox_key(&AppId::from("a"), &UserId::from("v"));
        let key = subscription_key(&inbox, &TopicId::from("news"));
        assert!(matches!(
            subscription_topic(&other, &key),
            Err(StoreError::Corrupt(_))
        ));
        decode_subscription(&encode_subscription()).unwrap();
        for bad in [&[][..], &[VERSION, 0], &[2]] {
            assert!(matches!(
                decode_subscription(bad),
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn escaping_keeps_order() {
        let ids = ["", "\0", "\0a", "\x01", "\x01\0", "\x02", "a", "a\0", "ab"];
        let mut encoded: Vec<(Vec<u8>, &str)> = ids
            .iter()
            .map(|id| {
                let mut out = Vec::new();
                put_escaped(&mut out, id);
                (out, *id)
            })
            .collect();
        encoded.sort();
        let order: Vec<&str> = encoded.iter().map(|(_, id)| *id).collect();
        assert_eq!(order, ids);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_message(1, &bytes);
            let _ = message_expires(&bytes);
            let _ = decode_meta(&bytes);
            let _ = decode_cursor(&bytes);
            let _ = decode_idempotency(&bytes);
            let _ = idempotency_expires(&bytes);
            let _ = split_message_key(&bytes);
            let _ = cursor_device(b"", &bytes);
            let _ = subscription_topic(b"", &bytes);
            let _ = decode_subscription(&bytes);
        }

        #[test]
        fn damaged_versioned_values_decode_or_are_corrupt(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            if let Some(b) = bytes.first_mut() {
                *b = VERSION;
            }
            let mut meta = bytes.clone();
            if let Some(b) = meta.first_mut() {
                *b = META_VERSION;
            }
            let mut cursor = bytes.clone();
            if let Some(b) = cursor.first_mut() {
                *b = CURSOR_VERSION;
            }
            for result in [
                decode_message(1, &bytes).map(drop),
                decode_meta(&bytes).map(drop),
                decode_meta(&meta).map(drop),
                decode_cursor(&bytes).map(drop),
                decode_cursor(&cursor).map(drop),
                decode_idempotency(&bytes).map(drop),
            ] {
                if let Err(e) = result {
                    prop_assert!(matches!(e, StoreError::Corrupt(_)));
                }
            }
        }

        #[test]
        fn ids_round_trip_through_cursor_keys(device in ".{0,40}") {
            let inbox = inbox_key(&AppId::from("a"), &UserId::from("u"));
            let key = cursor_key(&inbox, &DeviceId::from(device.as_str()));
            let back = cursor_device(&inbox, &key).unwrap();
            prop_assert_eq!(back.as_str(), device.as_str());
        }
    }
}
