//! Newtype ids, so that an app id is never passed where a user id is expected.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// String ids are `Arc<str>`: the same app, node or user id is held by many connections and
/// sessions, and cloning one is a reference-count increment rather than an allocation.
macro_rules! string_id {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                $name(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.into())
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    )*};
}

string_id! {
    /// A tenant (a product).
    AppId;
    /// A user inside an app.
    UserId;
    /// A client-chosen id, stable across reconnects of one install.
    DeviceId;
    /// A tether node.
    NodeId;
    /// A topic of an app (a room, a channel); validated like the other ids.
    TopicId;
}

/// Largest length of an app, user or device id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id from untrusted input: 1..=128 bytes, no control characters.
pub fn validate_id(kind: &'static str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(format!("{kind} is longer than {MAX_ID_LEN} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{kind} contains a control character"));
    }
    Ok(())
}

/// At most [`MAX_ID_LEN`] bytes of `s`, cut on a character boundary: what an error message
/// may echo of an id a client sent, however long it was.
pub fn echo_id(s: &str) -> &str {
    if s.len() <= MAX_ID_LEN {
        return s;
    }
    let mut end = MAX_ID_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A connection, unique within its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position in one (app, user) inbox: the first message is 1, and each append takes the next
/// number, with no gaps. 0 means "before the first message".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A message id: unique across nodes and roughly time-ordered.
///
/// Layout (snowflake): 41 bits of milliseconds since 2025-01-01, 10 bits of node number, 12 bits
/// of sequence within the millisecond. Serialised as a decimal string in JSON, because it
/// exceeds 2^53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

const EPOCH_MS: u64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z

/// Generates [`MessageId`]s for one node without a lock.
///
/// # Invariants
/// Ids from one generator are strictly increasing. When more than 4096 ids are asked for in one
/// millisecond, the generator borrows from the next millisecond rather than repeating.
#[derive(Debug)]
pub struct MessageIdGen {
    node_bits: u64,
    /// (ms since EPOCH_MS) << 12 | sequence, of the last id handed out.
    last: AtomicU64,
}

impl MessageIdGen {
    /// `node` is reduced to 10 bits; distinct nodes of one cluster should have distinct numbers.
    pub fn new(node: u16) -> Self {
        MessageIdGen {
            node_bits: u64::from(node & 0x3ff),
            last: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> MessageId {
        let now = crate::now_ms().saturating_sub(EPOCH_MS) << 12;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = if now > prev { now } else { prev + 1 };
            match self.last.compare_exchange_weak(
                prev,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let ms = candidate >> 12;
                    let seq = candidate & 0xfff;
                    return MessageId((ms << 22) | (self.node_bits << 12) | seq);
                }
                Err(actual) => prev = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_increase_and_carry_the_node() {
        let ids = MessageIdGen::new(5);
        let mut last = ids.next();
        for _ in 0..10_000 {
            let id = ids.next();
            assert!(id > last, "{id} after {last}");
            assert_eq!((id.0 >> 12) & 0x3ff, 5);
            last = id;
        }
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("user", "alice").is_ok());
        assert!(validate_id("user", "").is_err());
        assert!(validate_id("user", &"x".repeat(129)).is_err());
        assert!(validate_id("user", "a\nb").is_err());
    }

    #[test]
    fn an_echoed_id_is_cut_on_a_character_boundary() {
        assert_eq!(echo_id("alice"), "alice");
        let long = format!("{}é", "x".repeat(MAX_ID_LEN - 1));
        assert_eq!(echo_id(&long), "x".repeat(MAX_ID_LEN - 1));
        assert_eq!(echo_id(&"y".repeat(500)).len(), MAX_ID_LEN);
    }
}
