//! Errors of the codecs: [`DecodeError`] for both decoders, [`EncodeError`] for the binary
//! encoder's size limits.
//!
//! A `DecodeError` is always fatal to the connection (the stream cannot be resynchronised after a
//! bad frame): the server answers with a `disconnect` carrying [`DecodeError::code`] and the
//! error's message, then closes. The messages are written for the peer's developer to read.

use crate::Code;

/// Why bytes could not be decoded into a frame.
///
/// "Not enough bytes yet" is not an error: [`crate::binary::check`] and
/// [`crate::binary::decode`] answer `Ok(None)` for it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is longer than the receiver accepts (`len` excludes the 4-byte length prefix).
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    /// The bytes do not follow the binary layout.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The binary header's encoding version is not one this side speaks.
    #[error("unsupported encoding version {0} (supported: {v})", v = crate::PROTOCOL_VERSION)]
    UnsupportedVersion(u8),
    /// An op number (binary) or name (JSON) this side does not know.
    #[error("unknown op {0}")]
    UnknownOp(String),
    /// Invalid JSON, or a JSON frame with a missing or ill-typed field (the message names it).
    #[error("invalid JSON frame: {0}")]
    Json(String),
}

impl DecodeError {
    /// The close code a server sends (in a `disconnect`) for this error.
    pub fn code(&self) -> Code {
        match self {
            DecodeError::TooLarge { .. } => Code::FRAME_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => Code::UNSUPPORTED_VERSION,
            DecodeError::UnknownOp(_) => Code::UNKNOWN_OP,
            DecodeError::Malformed(_) | DecodeError::Json(_) => Code::PROTOCOL,
        }
    }
}

/// Why a frame cannot be written in the binary encoding: a field exceeds what its length field
/// can express. The JSON encoding has no such limits.
///
/// Callers validate sizes where the data enters the system (API requests, tokens, config), so
/// this is a bug signal, not a runtime condition; see [`crate::binary::try_encode`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string longer than 65535 bytes.
    #[error("string field `{field}` is {len} bytes long (at most 65535 can be encoded)")]
    StringTooLong { field: &'static str, len: usize },
    /// A list with more than 65535 items.
    #[error("list field `{field}` has {len} items (at most 65535 can be encoded)")]
    ListTooLong { field: &'static str, len: usize },
    /// A frame whose length would not fit the 32-bit length prefix.
    #[error("frame of {len} bytes does not fit the 32-bit length prefix")]
    FrameTooLong { len: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e = DecodeError::TooLarge {
            len: 70_000,
            max: 65_536,
        };
        assert_eq!(e.code(), Code::FRAME_TOO_LARGE);
        assert_eq!(
            e.to_string(),
            "frame of 70000 bytes exceeds the maximum frame size of 65536 bytes"
        );
        let e = DecodeError::UnsupportedVersion(9);
        assert_eq!(e.code(), Code::UNSUPPORTED_VERSION);
        assert_eq!(
            e.to_string(),
            "unsupported encoding version 9 (supported: 1)"
        );
        assert_eq!(DecodeError::UnknownOp("42".into()).code(), Code::UNKNOWN_OP);
        assert_eq!(DecodeError::Malformed("x").code(), Code::PROTOCOL);
        assert_eq!(DecodeError::Json("x".into()).code(), Code::PROTOCOL);
    }
}
