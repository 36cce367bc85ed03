//! MQTT 5 properties (MQTT 5, 2.2.2): a length, then identifier and value pairs.
//!
//! [`Properties`] keeps them as they came, in order, so that a decoded packet encodes back to
//! the same bytes and an absent set costs an empty `Vec`. Each packet allows its own set of
//! identifiers ([`Context`]): any other, or an unknown one, is a malformed packet; one given
//! twice that may appear once, or a value out of its range, is a protocol error.

use bytes::Bytes;

use crate::error::{DecodeError, EncodeError};
use crate::wire::{Out, Reader};

/// One property. The identifiers are MQTT 5's (2.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// 0x01: 0 bytes, 1 UTF-8 text.
    PayloadFormatIndicator(u8),
    /// 0x02: seconds.
    MessageExpiryInterval(u32),
    /// 0x03
    ContentType(String),
    /// 0x08
    ResponseTopic(String),
    /// 0x09
    CorrelationData(Bytes),
    /// 0x0B: 1 to 268,435,455.
    SubscriptionIdentifier(u32),
    /// 0x11: seconds.
    SessionExpiryInterval(u32),
    /// 0x12
    AssignedClientIdentifier(String),
    /// 0x13: seconds.
    ServerKeepAlive(u16),
    /// 0x15
    AuthenticationMethod(String),
    /// 0x16
    AuthenticationData(Bytes),
    /// 0x17: 0 or 1.
    RequestProblemInformation(u8),
    /// 0x18: seconds.
    WillDelayInterval(u32),
    /// 0x19: 0 or 1.
    RequestResponseInformation(u8),
    /// 0x1A
    ResponseInformation(String),
    /// 0x1C
    ServerReference(String),
    /// 0x1F
    ReasonString(String),
    /// 0x21: 1 to 65535.
    ReceiveMaximum(u16),
    /// 0x22
    TopicAliasMaximum(u16),
    /// 0x23: 1 to the receiver's Topic Alias Maximum.
    TopicAlias(u16),
    /// 0x24: 0 or 1.
    MaximumQos(u8),
    /// 0x25: 0 or 1.
    RetainAvailable(u8),
    /// 0x26: a name and a value; may be repeated, and order matters.
    UserProperty(String, String),
    /// 0x27: 1 to 2^32-1 bytes.
    MaximumPacketSize(u32),
    /// 0x28: 0 or 1.
    WildcardSubscriptionAvailable(u8),
    /// 0x29: 0 or 1.
    SubscriptionIdentifierAvailable(u8),
    /// 0x2A: 0 or 1.
    SharedSubscriptionAvailable(u8),
}

impl Property {
    pub fn id(&self) -> u8 {
        use Property::*;
        match self {
            PayloadFormatIndicator(_) => 0x01,
            MessageExpiryInterval(_) => 0x02,
            ContentType(_) => 0x03,
            ResponseTopic(_) => 0x08,
            CorrelationData(_) => 0x09,
            SubscriptionIdentifier(_) => 0x0B,
            SessionExpiryInterval(_) => 0x11,
            AssignedClientIdentifier(_) => 0x12,
            ServerKeepAlive(_) => 0x13,
            AuthenticationMethod(_) => 0x15,
            AuthenticationData(_) => 0x16,
            RequestProblemInformation(_) => 0x17,
            WillDelayInterval(_) => 0x18,
            RequestResponseInformation(_) => 0x19,
            ResponseInformation(_) => 0x1A,
            ServerReference(_) => 0x1C,
            ReasonString(_) => 0x1F,
            ReceiveMaximum(_) => 0x21,
            TopicAliasMaximum(_) => 0x22,
            TopicAlias(_) => 0x23,
            MaximumQos(_) => 0x24,
            RetainAvailable(_) => 0x25,
            UserProperty(..) => 0x26,
            MaximumPacketSize(_) => 0x27,
            WildcardSubscriptionAvailable(_) => 0x28,
            SubscriptionIdentifierAvailable(_) => 0x29,
            SharedSubscriptionAvailable(_) => 0x2A,
        }
    }

    fn read(id: u32, r: &mut Reader<'_>) -> Result<Property, DecodeError> {
        use Property::*;
        let flag = |v: u8| {
            if v <= 1 {
                Ok(v)
            } else {
                Err(DecodeError::Protocol(
                    "a property that is 0 or 1 has another value",
                ))
            }
        };
        Ok(match id {
            0x01 => PayloadFormatIndicator(flag(r.u8()?)?),
            0x02 => MessageExpiryInterval(r.u32()?),
            0x03 => ContentType(r.string()?),
            0x08 => ResponseTopic(r.string()?),
            0x09 => CorrelationData(r.binary()?),
            0x0B => match r.vbi()? {
                0 => return Err(DecodeError::Protocol("subscription identifier 0")),
                v => SubscriptionIdentifier(v),
            },
            0x11 => SessionExpiryInterval(r.u32()?),
            0x12 => AssignedClientIdentifier(r.string()?),
            0x13 => ServerKeepAlive(r.u16()?),
            0x15 => AuthenticationMethod(r.string()?),
            0x16 => AuthenticationData(r.binary()?),
            0x17 => RequestProblemInformation(flag(r.u8()?)?),
            0x18 => WillDelayInterval(r.u32()?),
            0x19 => RequestResponseInformation(flag(r.u8()?)?),
            0x1A => ResponseInformation(r.string()?),
            0x1C => ServerReference(r.string()?),
            0x1F => ReasonString(r.string()?),
            0x21 => match r.u16()? {
                0 => return Err(DecodeError::Protocol("receive maximum 0")),
                v => ReceiveMaximum(v),
            },
            0x22 => TopicAliasMaximum(r.u16()?),
            0x23 => match r.u16()? {
                0 => return Err(DecodeError::TopicAliasInvalid("topic alias 0")),
                v => TopicAlias(v),
            },
            0x24 => MaximumQos(flag(r.u8()?)?),
            0x25 => RetainAvailable(flag(r.u8()?)?),
            0x26 => UserProperty(r.string()?, r.string()?),
            0x27 => match r.u32()? {
                0 => return Err(DecodeError::Protocol("maximum packet size 0")),
                v => MaximumPacketSize(v),
            },
            0x28 => WildcardSubscriptionAvailable(flag(r.u8()?)?),
            0x29 => SubscriptionIdentifierAvailable(flag(r.u8()?)?),
            0x2A => SharedSubscriptionAvailable(flag(r.u8()?)?),
            _ => return Err(DecodeError::Malformed("unknown property identifier")),
        })
    }

    fn write<O: Out>(&self, out: &mut O) -> Result<(), EncodeError> {
        use Property::*;
        out.vbi(u32::from(self.id()));
        match self {
            PayloadFormatIndicator(v)
            | RequestProblemInformation(v)
            | RequestResponseInformation(v)
            | MaximumQos(v)
            | RetainAvailable(v)
            | WildcardSubscriptionAvailable(v)
            | SubscriptionIdentifierAvailable(v)
            | SharedSubscriptionAvailable(v) => out.u8(*v),
            MessageExpiryInterval(v)
            | SessionExpiryInterval(v)
            | WillDelayInterval(v)
            | MaximumPacketSize(v) => out.u32(*v),
            ServerKeepAlive(v) | ReceiveMaximum(v) | TopicAliasMaximum(v) | TopicAlias(v) => {
                out.u16(*v)
            }
            SubscriptionIdentifier(v) => {
                if *v > crate::wire::VBI_MAX {
                    return Err(EncodeError::Invalid(
                        "subscription identifier over 268435455",
                    ));
                }
                out.vbi(*v)
            }
            ContentType(s)
            | ResponseTopic(s)
            | AssignedClientIdentifier(s)
            | AuthenticationMethod(s)
            | ResponseInformation(s)
            | ServerReference(s)
            | ReasonString(s) => out.data("property", s.as_bytes())?,
            CorrelationData(b) | AuthenticationData(b) => out.data("property", b)?,
            UserProperty(k, v) => {
                out.data("user property name", k.as_bytes())?;
                out.data("user property value", v.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Which packet (or the Will of a CONNECT) a property set belongs to: it decides which
/// identifiers are allowed and which may repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

impl Context {
    /// The identifiers allowed here (MQTT 5, 2.2.2.2's table), as a bit mask.
    fn allowed(self) -> u64 {
        const REASON_AND_USER: u64 = mask(&[0x1F, 0x26]);
        match self {
            Context::Connect => mask(&[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16]),
            Context::Will => mask(&[0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26]),
            Context::ConnAck => mask(&[
                0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26, 0x28, 0x29, 0x2A, 0x13, 0x1A,
                0x1C, 0x15, 0x16,
            ]),
            Context::Publish => mask(&[0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03]),
            Context::Ack | Context::SubAck | Context::UnsubAck => REASON_AND_USER,
            Context::Subscribe => mask(&[0x0B, 0x26]),
            Context::Unsubscribe => mask(&[0x26]),
            Context::Disconnect => mask(&[0x11, 0x1F, 0x26, 0x1C]),
            Context::Auth => mask(&[0x15, 0x16, 0x1F, 0x26]),
        }
    }

    /// The identifiers that may appear more than once here.
    fn repeatable(self) -> u64 {
        match self {
            // A message matching several subscriptions carries each one's identifier.
            Context::Publish => mask(&[0x26, 0x0B]),
            _ => mask(&[0x26]),
        }
    }
}

/// A packet's MQTT 5 properties, in the order they were given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<Property>);

impl Properties {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, p: Property) -> &mut Self {
        self.0.push(p);
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = &Property> {
        self.0.iter()
    }

    /// The first property for which `f` answers something.
    pub fn find<'a, T>(&'a self, f: impl FnMut(&'a Property) -> Option<T>) -> Option<T> {
        self.0.iter().find_map(f)
    }

    /// The user properties, in order, as (name, value).
    pub fn user(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|p| match p {
            Property::UserProperty(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }

    /// Read a property length and the properties it covers, checking each against `ctx`.
    pub fn read(r: &mut Reader<'_>, ctx: Context) -> Result<Properties, DecodeError> {
        let len = r.vbi()? as usize;
        let mut r = r.sub(len, "property length runs past the packet")?;
        let mut out = Vec::new();
        let mut seen = 0u64;
        while !r.is_empty() {
            let id = r.vbi()?;
            if id >= 64 || ctx.allowed() & (1 << id) == 0 {
                return Err(DecodeError::Malformed(
                    "property identifier not allowed in this packet",
                ));
            }
            let bit = 1u64 << id;
            if seen & bit != 0 && ctx.repeatable() & bit == 0 {
                return Err(DecodeError::Protocol("property given more than once"));
            }
            seen |= bit;
            // Each property takes at least 2 bytes of the packet, so this `Vec` never holds
            // more entries than half the packet's length.
            out.push(Property::read(id, &mut r)?);
        }
        Ok(Properties(out))
    }

    /// The bytes of the properties, without their length.
    fn body_len(&self) -> Result<usize, EncodeError> {
        let mut c = crate::wire::Count::default();
        for p in &self.0 {
            p.write(&mut c)?;
        }
        Ok(c.0)
    }

    /// The property length and the properties.
    pub fn write<O: Out>(&self, out: &mut O) -> Result<(), EncodeError> {
        let len = self.body_len()?;
        let len = u32::try_from(len)
            .ok()
            .filter(|&l| l <= crate::wire::VBI_MAX)
            .ok_or(EncodeError::PacketTooLarge { len })?;
        out.vbi(len);
        for p in &self.0 {
            p.write(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn read(bytes: &[u8], ctx: Context) -> Result<Properties, DecodeError> {
        let b = Bytes::copy_from_slice(bytes);
        let mut r = Reader::new(&b, 0, b.len());
        let p = Properties::read(&mut r, ctx)?;
        assert!(r.is_empty());
        Ok(p)
    }

    #[test]
    fn each_packet_allows_its_own() {
        // Session Expiry Interval 10 and a user property, in CONNECT.
        let bytes = b"\x0c\x11\x00\x00\x00\x0a\x26\x00\x01k\x00\x01v";
        let p = read(bytes, Context::Connect).unwrap();
        assert_eq!(
            p.0,
            vec![
                Property::SessionExpiryInterval(10),
                Property::UserProperty("k".into(), "v".into())
            ]
        );
        let mut out = BytesMut::new();
        p.write(&mut out).unwrap();
        assert_eq!(&out[..], &bytes[..]);
        // ... but not in PUBLISH.
        assert!(matches!(
            read(bytes, Context::Publish),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn repeats_and_values() {
        // Two Receive Maximums.
        assert_eq!(
            read(b"\x06\x21\x00\x01\x21\x00\x02", Context::Connect),
            Err(DecodeError::Protocol("property given more than once"))
        );
        // Two subscription identifiers in PUBLISH are fine, not in SUBSCRIBE.
        assert!(read(b"\x04\x0b\x01\x0b\x02", Context::Publish).is_ok());
        assert!(read(b"\x04\x0b\x01\x0b\x02", Context::Subscribe).is_err());
        assert!(matches!(
            read(b"\x03\x21\x00\x00", Context::Connect),
            Err(DecodeError::Protocol(_))
        ));
        assert!(matches!(
            read(b"\x03\x23\x00\x00", Context::Publish),
            Err(DecodeError::TopicAliasInvalid(_))
        ));
        assert!(matches!(
            read(b"\x02\x01\x02", Context::Publish),
            Err(DecodeError::Protocol(_))
        ));
        assert!(matches!(
            read(b"\x02\x7f\x00", Context::Publish),
            Err(DecodeError::Malformed(_))
        ));
        // A length past the end.
        assert!(read(b"\x05\x01\x01", Context::Publish).is_err());
    }
}
