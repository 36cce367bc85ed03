//! tether's wire protocol. `docs/protocol.md` is the specification; this crate implements it.
//!
//! # Layout
//!
//! - [`frame`]: the frame model shared by both encodings ([`Frame`], [`Body`], [`Op`]).
//! - [`code`]: numbered close/error codes and their groups ([`Code`], [`Group`]).
//! - [`binary`]: the binary encoding (TCP, WebSocket binary messages): check, then parse.
//! - [`json`]: the JSON encoding (WebSocket text messages).
//! - [`ws`]: WebSocket framing, the server's side (RFC 6455 frame headers, masking).
//! - [`error`]: [`DecodeError`] (every decoder) and [`EncodeError`] (frames too large to encode).
//!
//! No sockets here: the codec is benchmarked and fuzzed on its own.

pub mod binary;
pub mod code;
pub mod error;
pub mod frame;
pub mod json;
pub mod ws;

pub use code::{Code, Group};
pub use error::{DecodeError, EncodeError};
pub use frame::*;
