//! MQTT 3.1.1 and 5.0 control packets, decoded and encoded, for tether's MQTT transport.
//! `docs/mqtt.md` is how tether maps them onto its sessions; this crate is only the wire.
//!
//! # Layout
//!
//! - [`packet`]: the packet model shared by both versions ([`Packet`], [`Publish`], ...).
//! - [`properties`]: MQTT 5 properties ([`Property`], [`Properties`]) and where each may go.
//! - [`reason`]: reason codes ([`ReasonCode`]) and their 3.1.1 CONNACK return codes.
//! - [`decode`]: check, then parse: [`check`] sizes a packet from its fixed header before a
//!   byte of its body is buffered; [`decode`] splits it off a `BytesMut` (payloads zero-copy).
//! - [`encode`]: [`encode`] and [`encoded_len`] (exact), and [`encode_publish_head`], the
//!   head of a PUBLISH without its payload, so that a fan-out shares the payload's bytes.
//! - [`topic`]: topic name and filter rules (wildcards, `$share/`), for the session to apply.
//! - [`wire`]: the primitives (variable byte integers, UTF-8 strings, binary data).
//! - [`error`]: [`DecodeError`] (each maps to a [`ReasonCode`]) and [`EncodeError`].
//!
//! No sockets and no runtime: the transport owns a bounded read buffer and an outbox of bytes,
//! and this crate reads from the one and writes into the other, so it is benchmarked and fuzzed
//! on its own.

pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod topic;
pub mod wire;

pub use decode::{check, decode};
pub use encode::{PublishHead, encode, encode_publish_head, encode_to_bytes, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::{Properties, Property};
pub use reason::ReasonCode;

/// The largest remaining length a fixed header can express (4 bytes of 7 bits).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
