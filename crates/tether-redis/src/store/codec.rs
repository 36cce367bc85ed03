//! The store's values as bytes (list elements, idempotency records, cursors), and Redis's
//! answers and errors as [`StoreError`]s.

use bytes::Bytes;
use redis::Value;
use tether_core::store::{Cursor, Page, StoredMessage};
use tether_core::{MessageId, Seq, StoreError};
use tether_proto::PayloadKind;

use crate::describe;

/// The format of list elements and idempotency records written by this code.
const VERSION: u8 = 1;

/// `seq | version | expires_ms | kind | id | created_ms`: what precedes a payload.
pub(super) const MESSAGE_HEADER: usize = 8 + 1 + 8 + 1 + 8 + 8;
/// `version | id | created_ms | window_end_ms`.
const RECORD_LEN: usize = 1 + 8 + 8 + 8;

/// What the first call of an idempotency key appends: its message id, creation time and
/// window end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Claim {
    pub(super) id: MessageId,
    pub(super) created_ms: u64,
    pub(super) window_end_ms: u64,
}

/// A list element without its seq (the script puts it in front).
pub(super) fn encode_element(
    id: MessageId,
    created_ms: u64,
    expires_ms: u64,
    kind: PayloadKind,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MESSAGE_HEADER - 8 + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&created_ms.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A list element as the script stored it. The payload is a slice of `value`, not a copy.
pub(super) fn decode_element(value: Vec<u8>) -> Result<StoredMessage, StoreError> {
    let mut r = Reader::new("message", &value);
    let seq = r.u64()?;
    r.version()?;
    let expires_ms = r.u64()?;
    let kind = match r.u8()? {
        0 => PayloadKind::Binary,
        1 => PayloadKind::Json,
        k => return Err(corrupt(format!("message: unknown payload kind {k}"))),
    };
    let id = MessageId(r.u64()?);
    let created_ms = r.u64()?;
    Ok(StoredMessage {
        seq: Seq(seq),
        id,
        created_ms,
        expires_ms,
        kind,
        payload: Bytes::from(value).slice(MESSAGE_HEADER..),
    })
}

/// A read script's answer: the head, then messages in strictly increasing seq order above
/// `after` and up to the head.
pub(super) fn decode_page(answer: Value, after: Seq) -> Result<Page, StoreError> {
    let Value::Array(items) = answer else {
        return Err(unexpected("read", &answer));
    };
    let mut items = items.into_iter();
    let head = match items.next() {
        Some(Value::Int(head)) if head >= 0 => head as u64,
        other => return Err(unexpected("read", &other.unwrap_or(Value::Nil))),
    };
    let mut messages = Vec::with_capacity(items.len());
    let mut last = after.0;
    for item in items {
        let Value::BulkString(value) = item else {
            return Err(unexpected("read", &item));
        };
        let m = decode_element(value)?;
        if m.seq.0 <= last || m.seq.0 > head {
            return Err(corrupt(format!(
                "message: seq {} out of order (after {last}, head {head})",
                m.seq
            )));
        }
        last = m.seq.0;
        messages.push(m);
    }
    Ok(Page {
        messages,
        head: Seq(head),
    })
}

pub(super) fn encode_claim(claim: Claim) -> [u8; RECORD_LEN] {
    let mut out = [0; RECORD_LEN];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&claim.id.0.to_be_bytes());
    out[9..17].copy_from_slice(&claim.created_ms.to_be_bytes());
    out[17..25].copy_from_slice(&claim.window_end_ms.to_be_bytes());
    out
}

pub(super) fn decode_claim(value: &[u8]) -> Result<Claim, StoreError> {
    let mut r = Reader::new("idempotency record", value);
    r.version()?;
    let claim = Claim {
        id: MessageId(r.u64()?),
        created_ms: r.u64()?,
        window_end_ms: r.u64()?,
    };
    r.end()?;
    Ok(claim)
}

/// `acked:attempt_seq:attempts`, each in decimal digits.
pub(super) fn decode_cursor(value: &[u8]) -> Result<Cursor, StoreError> {
    fn number<T: std::str::FromStr>(part: Option<&str>) -> Result<T, StoreError> {
        part.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| corrupt("cursor: not acked:attempt_seq:attempts"))
    }
    let text = std::str::from_utf8(value).map_err(|_| corrupt("cursor: not UTF-8"))?;
    let mut parts = text.split(':');
    let cursor = Cursor {
        acked: Seq(number(parts.next())?),
        attempt_seq: Seq(number(parts.next())?),
        attempts: number(parts.next())?,
    };
    match parts.next() {
        None => Ok(cursor),
        Some(_) => Err(corrupt("cursor: trailing fields")),
    }
}

/// Reads a value front to back; running out of bytes is [`StoreError::Corrupt`].
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Reader { what, bytes }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(corrupt(format!("{}: truncated", self.what)));
        };
        self.bytes = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    fn version(&mut self) -> Result<(), StoreError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(corrupt(format!(
                "{}: unknown format version {v}",
                self.what
            ))),
        }
    }

    fn end(self) -> Result<(), StoreError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(format!("{}: trailing bytes", self.what)))
        }
    }
}

pub(super) fn unavailable(e: &redis::RedisError) -> StoreError {
    StoreError::Unavailable(describe(e))
}

pub(super) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// A Redis error as the store reports it: damaged data (a script's `CORRUPT`, a key of the
/// wrong type, an answer that does not convert) is corrupt; anything else is unavailable.
pub(super) fn redis_error(e: redis::RedisError) -> StoreError {
    match (e.code(), e.kind()) {
        (Some("CORRUPT" | "WRONGTYPE"), _) | (_, redis::ErrorKind::UnexpectedReturnType) => {
            StoreError::Corrupt(describe(&e))
        }
        _ => unavailable(&e),
    }
}

pub(super) fn unexpected(what: &str, answer: &Value) -> StoreError {
    let mut shown = format!("{answer:?}");
    if shown.len() > 120 {
        shown.truncate(shown.floor_char_boundary(120));
        shown.push_str("...");
    }
    corrupt(format!("redis: unexpected answer to {what}: {shown}"))
}

/// `{a, b}` of two integers.
pub(super) fn ints(answer: &Value) -> Option<[i64; 2]> {
    match answer {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(a), Value::Int(b)] => Some([*a, *b]),
            _ => None,
        },
        _ => None,
    }
}
