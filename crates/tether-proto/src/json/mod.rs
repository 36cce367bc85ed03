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
//!
//! # Layout
//!
//! - this module: the format (above), and where [`decode`] and [`encode`] are public.
//! - `decoder.rs`: [`decode`]: one pass over the object's known fields, then the op's body.
//! - `encoder.rs`: [`encode`]: a struct per op for serde, and the frames that carry payloads
//!   written by hand.
//! - `tests.rs`: the unit tests of both directions.

mod decoder;
mod encoder;
#[cfg(test)]
mod tests;

pub use decoder::decode;
pub use encoder::encode;
