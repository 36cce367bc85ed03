//! Errors of the codec: [`DecodeError`] for bytes that are no packet, [`EncodeError`] for a
//! packet that cannot be written.
//!
//! A `DecodeError` is fatal to the connection: MQTT has no way to skip a bad packet. The
//! transport answers with [`DecodeError::reason_code`] (a CONNACK when the error is in the
//! CONNECT, a DISCONNECT after it, MQTT 5 only; see [`DecodeError::connack_v311`] for 3.1.1)
//! and closes. The messages are written for the peer's developer to read.

use crate::ReasonCode;

/// Why bytes could not be decoded into a packet.
///
/// "Not enough bytes yet" is not an error: [`crate::check`] and [`crate::decode`] answer
/// `Ok(None)` for it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet (fixed header included) is longer than the receiver accepts; known from
    /// the fixed header, before the packet is buffered.
    #[error("packet of {len} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    /// The bytes do not follow the packet's layout (MQTT's "Malformed Packet").
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed bytes that break a rule of the protocol (MQTT 5's "Protocol Error").
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A CONNECT of a protocol level this codec does not speak (4 is 3.1.1, 5 is 5.0; 3 is
    /// 3.1's `MQIsdp`).
    #[error("unsupported protocol level {level} (supported: 4 for MQTT 3.1.1, 5 for MQTT 5.0)")]
    UnsupportedVersion { level: u8 },
    /// The first packet of a connection is not a CONNECT.
    #[error("the first packet must be CONNECT, not packet type {packet_type}")]
    ExpectedConnect { packet_type: u8 },
    /// A PUBLISH (or Will) topic name with a wildcard, or empty without a topic alias.
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
    /// A Topic Alias of 0.
    #[error("invalid topic alias: {0}")]
    TopicAliasInvalid(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code for a CONNACK or DISCONNECT answering this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) | DecodeError::ExpectedConnect { .. } => {
                ReasonCode::PROTOCOL_ERROR
            }
            DecodeError::UnsupportedVersion { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::TopicAliasInvalid(_) => ReasonCode::TOPIC_ALIAS_INVALID,
        }
    }

    /// What to answer a CONNECT that failed with this error, if anything: `Some((version,
    /// code))` to write a CONNACK of that version with that code (for 3.1.1 a return code),
    /// `None` to close without a word.
    ///
    /// An unsupported level below 5 gets the 3.1.1 CONNACK 0x01 (what a 3.1 client reads), a
    /// level above 5 MQTT 5's 0x84. A first packet that is not CONNECT gets nothing
    /// ([MQTT-3.1.0-1]), and other errors need the CONNECT's own version, which the caller
    /// knows only if it decoded that far: see [`DecodeError::connack_v311`].
    pub fn connack_for_unknown_version(&self) -> Option<(crate::Version, u8)> {
        match self {
            DecodeError::UnsupportedVersion { level } if *level < 5 => Some((
                crate::Version::V311,
                crate::reason::v311::UNACCEPTABLE_PROTOCOL_VERSION,
            )),
            DecodeError::UnsupportedVersion { .. } => Some((
                crate::Version::V5,
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION.0,
            )),
            _ => None,
        }
    }

    /// The 3.1.1 CONNACK return code for this error in a 3.1.1 CONNECT: only an unsupported
    /// version has one (0x01); 3.1.1 closes without CONNACK for everything else
    /// ([MQTT-3.1.4-1]).
    pub fn connack_v311(&self) -> Option<u8> {
        match self {
            DecodeError::UnsupportedVersion { .. } => {
                Some(crate::reason::v311::UNACCEPTABLE_PROTOCOL_VERSION)
            }
            _ => None,
        }
    }
}

/// Why a packet cannot be encoded: a field exceeds what its length can express, or the packet
/// does not exist in the version asked for.
///
/// Callers build packets from validated data, so this is a bug signal, not a runtime
/// condition; nothing is written for such a packet.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or binary field longer than 65535 bytes.
    #[error("field `{field}` is {len} bytes long (at most 65535 can be encoded)")]
    FieldTooLong { field: &'static str, len: usize },
    /// A packet whose remaining length is over 268,435,455 bytes.
    #[error("packet with a remaining length of {len} bytes (at most 268435455 can be encoded)")]
    PacketTooLarge { len: usize },
    /// A packet that cannot be written as given (AUTH in 3.1.1, a SUBSCRIBE without filters).
    #[error("cannot encode: {0}")]
    Invalid(&'static str),
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
        assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
        assert_eq!(
            e.to_string(),
            "packet of 70000 bytes exceeds the maximum packet size of 65536 bytes"
        );
        assert_eq!(
            DecodeError::Malformed("x").reason_code(),
            ReasonCode::MALFORMED_PACKET
        );
        assert_eq!(
            DecodeError::Protocol("x").reason_code(),
            ReasonCode::PROTOCOL_ERROR
        );
        let v3 = DecodeError::UnsupportedVersion { level: 3 };
        assert_eq!(
            v3.connack_for_unknown_version(),
            Some((crate::Version::V311, 0x01))
        );
        let v6 = DecodeError::UnsupportedVersion { level: 6 };
        assert_eq!(
            v6.connack_for_unknown_version(),
            Some((crate::Version::V5, 0x84))
        );
        assert_eq!(
            DecodeError::ExpectedConnect { packet_type: 3 }.connack_for_unknown_version(),
            None
        );
        assert_eq!(DecodeError::Malformed("x").connack_v311(), None);
    }
}
