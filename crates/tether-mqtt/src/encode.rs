//! Encoding: every packet of both versions, into a `BytesMut` (the transport's outbox).
//!
//! Each packet is written by one function generic over [`Out`]: run once over a byte
//! [`Count`] it gives the exact length ([`encoded_len`]), so [`encode`] reserves once and
//! writes the fixed header and the body in one go. A field too long for its length, a packet
//! over 268,435,455 bytes, or a packet the version does not have is an [`EncodeError`], and
//! nothing is written: never a truncated or corrupt packet.
//!
//! [`encode_publish_head`] writes a PUBLISH without its payload: a fan-out writes the head
//! per connection (QoS 1 PUBLISHes differ only in their packet id) and shares the payload's
//! bytes among all of them.

use bytes::{Bytes, BytesMut};

use crate::error::EncodeError;
use crate::packet::*;
use crate::properties::Properties;
use crate::wire::{Count, Out};

/// A PUBLISH without its payload.
#[derive(Debug, Clone, Copy)]
pub struct PublishHead<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    /// Ignored (not written) for QoS 0.
    pub packet_id: u16,
    pub properties: &'a Properties,
}

impl<'a> PublishHead<'a> {
    pub fn of(p: &'a Publish) -> Self {
        Self {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            properties: &p.properties,
        }
    }

    fn first_byte(&self) -> u8 {
        (PacketType::Publish as u8) << 4
            | u8::from(self.dup) << 3
            | (self.qos as u8) << 1
            | u8::from(self.retain)
    }

    /// The variable header: topic, packet id, properties.
    fn write<O: Out>(&self, v: Version, out: &mut O) -> Result<(), EncodeError> {
        out.data("topic", self.topic.as_bytes())?;
        if self.qos != QoS::AtMostOnce {
            out.u16(self.packet_id);
        }
        if v == Version::V5 {
            self.properties.write(out)?;
        }
        Ok(())
    }
}

/// Write `head` (fixed header and variable header) of a PUBLISH whose payload is
/// `payload_len` bytes; the caller sends the payload right after it.
pub fn encode_publish_head(
    v: Version,
    head: &PublishHead<'_>,
    payload_len: usize,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut c = Count::default();
    head.write(v, &mut c)?;
    let remaining = remaining_length(c.0 + payload_len)?;
    out.reserve(1 + crate::wire::vbi_len(remaining) + c.0);
    out.u8(head.first_byte());
    out.vbi(remaining);
    head.write(v, out)
}

/// The exact number of bytes [`encode`] writes for `p`.
pub fn encoded_len(p: &Packet, v: Version) -> Result<usize, EncodeError> {
    let mut c = Count::default();
    body(p, v, &mut c)?;
    let remaining = remaining_length(c.0)?;
    Ok(1 + crate::wire::vbi_len(remaining) + c.0)
}

/// Append `p`, encoded for version `v`, to `out`. A CONNECT is written in its own version.
pub fn encode(p: &Packet, v: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v = match p {
        Packet::Connect(c) => c.version,
        _ => v,
    };
    let mut c = Count::default();
    body(p, v, &mut c)?;
    let remaining = remaining_length(c.0)?;
    out.reserve(1 + crate::wire::vbi_len(remaining) + c.0);
    out.u8(first_byte(p));
    out.vbi(remaining);
    body(p, v, out)
}

/// [`encode`] into a new buffer of exactly the packet's length.
pub fn encode_to_bytes(p: &Packet, v: Version) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out)?;
    Ok(out.freeze())
}

fn remaining_length(len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len)
        .ok()
        .filter(|&l| l <= crate::wire::VBI_MAX)
        .ok_or(EncodeError::PacketTooLarge { len })
}

fn first_byte(p: &Packet) -> u8 {
    match p {
        Packet::Publish(p) => PublishHead::of(p).first_byte(),
        _ => {
            let ty = p.packet_type();
            (ty as u8) << 4 | ty.fixed_flags()
        }
    }
}

/// Everything after the fixed header.
fn body<O: Out>(p: &Packet, v: Version, out: &mut O) -> Result<(), EncodeError> {
    match p {
        Packet::Connect(c) => connect(c, out),
        Packet::ConnAck(c) => {
            out.u8(u8::from(c.session_present));
            out.u8(c.code);
            if v == Version::V5 {
                c.properties.write(out)?;
            }
            Ok(())
        }
        Packet::Publish(p) => {
            PublishHead::of(p).write(v, out)?;
            out.put(&p.payload);
            Ok(())
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            out.u16(a.packet_id);
            reason_and_properties(v, a.reason, &a.properties, out)
        }
        Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(EncodeError::Invalid("SUBSCRIBE without a topic filter"));
            }
            out.u16(s.packet_id);
            if v == Version::V5 {
                s.properties.write(out)?;
            }
            for (filter, o) in &s.filters {
                out.data("topic filter", filter.as_bytes())?;
                let mut byte = o.qos as u8;
                if v == Version::V5 {
                    byte |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling & 0b11) << 4;
                }
                out.u8(byte);
            }
            Ok(())
        }
        Packet::SubAck(s) => {
            if s.codes.is_empty() {
                return Err(EncodeError::Invalid("SUBACK without a code"));
            }
            out.u16(s.packet_id);
            if v == Version::V5 {
                s.properties.write(out)?;
            }
            for c in &s.codes {
                out.u8(c.0);
            }
            Ok(())
        }
        Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(EncodeError::Invalid("UNSUBSCRIBE without a topic filter"));
            }
            out.u16(u.packet_id);
            if v == Version::V5 {
                u.properties.write(out)?;
            }
            for f in &u.filters {
                out.data("topic filter", f.as_bytes())?;
            }
            Ok(())
        }
        Packet::UnsubAck(u) => {
            out.u16(u.packet_id);
            if v == Version::V5 {
                u.properties.write(out)?;
                for c in &u.codes {
                    out.u8(c.0);
                }
            }
            Ok(())
        }
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => reason_and_properties(v, d.reason, &d.properties, out),
        Packet::Auth(a) => {
            if v == Version::V311 {
                return Err(EncodeError::Invalid("AUTH does not exist in MQTT 3.1.1"));
            }
            reason_and_properties(v, a.reason, &a.properties, out)
        }
    }
}

/// MQTT 5's optional reason code and properties, in their shortest form: nothing for success
/// without properties, the code alone without properties.
fn reason_and_properties<O: Out>(
    v: Version,
    reason: crate::ReasonCode,
    properties: &Properties,
    out: &mut O,
) -> Result<(), EncodeError> {
    if v == Version::V311 || (reason.0 == 0 && properties.is_empty()) {
        return Ok(());
    }
    out.u8(reason.0);
    if !properties.is_empty() {
        properties.write(out)?;
    }
    Ok(())
}

fn connect<O: Out>(c: &Connect, out: &mut O) -> Result<(), EncodeError> {
    let v = c.version;
    out.data("protocol name", b"MQTT")?;
    out.u8(v.level());
    if v == Version::V311 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::Invalid(
            "a 3.1.1 CONNECT cannot have a password without a user name",
        ));
    }
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    out.u8(flags);
    out.u16(c.keep_alive);
    if v == Version::V5 {
        c.properties.write(out)?;
    }
    out.data("client identifier", c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        if v == Version::V5 {
            w.properties.write(out)?;
        }
        out.data("will topic", w.topic.as_bytes())?;
        out.data("will payload", &w.payload)?;
    }
    if let Some(u) = &c.username {
        out.data("user name", u.as_bytes())?;
    }
    if let Some(p) = &c.password {
        out.data("password", p)?;
    }
    Ok(())
}
