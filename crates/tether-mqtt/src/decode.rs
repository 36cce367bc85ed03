//! Decoding: check, then parse.
//!
//! [`check`] looks at the bytes buffered so far and says whether a whole packet is there,
//! from its fixed header alone: a type or flags that no packet has, a packet before CONNECT,
//! or a remaining length that makes the packet larger than the receiver accepts is refused
//! as soon as those bytes are seen, so a hostile length never makes the reader buffer or
//! allocate anything. The transport may size its read buffer from the length [`check`]
//! answers. [`decode`] splits the packet off the read buffer and parses it: payloads, binary
//! data and passwords are zero-copy slices of it, strings are at most as long as the packet.
//! Any error leaves the stream unusable: MQTT cannot skip a bad packet, the connection closes.
//!
//! `version` is the connection's: `None` before CONNECT (only a CONNECT is accepted then;
//! it carries its own protocol level), then the CONNECT's.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties::{Context, Properties, Property};
use crate::reason::ReasonCode;
use crate::topic;
use crate::wire::{Reader, read_vbi};

/// `Ok(None)` when `buf` does not hold a whole packet yet ("incomplete" is normal, not an
/// error); else the packet's whole length, fixed header included.
///
/// `max_packet` bounds the whole packet, as MQTT 5's Maximum Packet Size does.
pub fn check(
    buf: &[u8],
    version: Option<Version>,
    max_packet: u32,
) -> Result<Option<usize>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;
    let Some((remaining, n)) = read_vbi(&buf[1..])? else {
        return Ok(None);
    };
    let total = 1 + n as u64 + u64::from(remaining);
    if total > u64::from(max_packet) {
        return Err(DecodeError::TooLarge {
            len: total,
            max: max_packet,
        });
    }
    let total = total as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// [`check`], then split the packet off the front of `buf` and parse it.
///
/// `Ok(None)` leaves `buf` untouched. On an error the bad packet may already have been split
/// off; the connection must close either way.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_packet: u32,
) -> Result<Option<Packet>, DecodeError> {
    match check(buf, version, max_packet)? {
        None => Ok(None),
        Some(total) => parse_checked(buf.split_to(total).freeze(), version).map(Some),
    }
}

/// The fixed header's first byte: a packet type this version has, with the flags it requires,
/// and a CONNECT first.
fn check_first_byte(first: u8, version: Option<Version>) -> Result<PacketType, DecodeError> {
    let (type_num, flags) = (first >> 4, first & 0x0F);
    let Some(ty) = PacketType::from_u8(type_num) else {
        return Err(DecodeError::Malformed("packet type 0 is reserved"));
    };
    match version {
        None if ty != PacketType::Connect => {
            return Err(DecodeError::ExpectedConnect {
                packet_type: type_num,
            });
        }
        Some(Version::V311) if ty == PacketType::Auth => {
            return Err(DecodeError::Malformed(
                "packet type 15 is reserved in 3.1.1",
            ));
        }
        _ => {}
    }
    if ty == PacketType::Publish {
        let qos = (flags >> 1) & 0b11;
        if qos == 3 {
            return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
        }
        if qos == 0 && flags & 0b1000 != 0 {
            return Err(DecodeError::Malformed("PUBLISH with DUP set on QoS 0"));
        }
    } else if flags != ty.fixed_flags() {
        return Err(DecodeError::Malformed(
            "reserved flags of the fixed header are not as the packet type requires",
        ));
    }
    Ok(ty)
}

/// Parse one whole packet, whose fixed header [`check`] accepted.
fn parse_checked(packet: Bytes, version: Option<Version>) -> Result<Packet, DecodeError> {
    let first = packet[0];
    let ty = check_first_byte(first, version)?;
    let (_, n) = read_vbi(&packet[1..])?.ok_or(DecodeError::Malformed("fixed header"))?;
    let mut r = Reader::new(&packet, 1 + n, packet.len());
    // Without a version only a CONNECT gets here (`check_first_byte`), and a CONNECT reads
    // its version from its own protocol level.
    let v = version.unwrap_or(Version::V5);
    let p = match ty {
        PacketType::Connect => Packet::Connect(Box::new(connect(&mut r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack(&mut r, v)?),
        PacketType::Publish => Packet::Publish(publish(&mut r, v, first)?),
        PacketType::PubAck => Packet::PubAck(ack(&mut r, v)?),
        PacketType::PubRec => Packet::PubRec(ack(&mut r, v)?),
        PacketType::PubRel => Packet::PubRel(ack(&mut r, v)?),
        PacketType::PubComp => Packet::PubComp(ack(&mut r, v)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(&mut r, v)?),
        PacketType::SubAck => Packet::SubAck(suback(&mut r, v)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(&mut r, v)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback(&mut r, v)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => {
            let (reason, properties) = reason_and_properties(&mut r, v, Context::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        PacketType::Auth => {
            let (reason, properties) = reason_and_properties(&mut r, v, Context::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
    };
    if !r.is_empty() {
        return Err(DecodeError::Malformed(
            "bytes left over after the packet's fields",
        ));
    }
    Ok(p)
}

fn props(r: &mut Reader<'_>, v: Version, ctx: Context) -> Result<Properties, DecodeError> {
    match v {
        Version::V5 => Properties::read(r, ctx),
        Version::V311 => Ok(Properties::default()),
    }
}

fn packet_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

fn connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        ("MQTT" | "MQIsdp", level) => return Err(DecodeError::UnsupportedVersion { level }),
        _ => return Err(DecodeError::Malformed("protocol name is not MQTT")),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT's reserved flag is set"));
    }
    let clean_start = flags & 0x02 != 0;
    let has_will = flags & 0x04 != 0;
    let will_qos = QoS::from_u8((flags >> 3) & 0b11)
        .ok_or(DecodeError::Malformed("CONNECT with Will QoS 3"))?;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed(
            "CONNECT with Will QoS or Will Retain but no Will",
        ));
    }
    if version == Version::V311 && has_password && !has_username {
        return Err(DecodeError::Malformed(
            "CONNECT with a password but no user name",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = props(r, version, Context::Connect)?;
    let client_id = r.string()?;
    let will = if has_will {
        let properties = props(r, version, Context::Will)?;
        let topic = r.string()?;
        topic_name(&topic, false)?;
        Some(Will {
            qos: will_qos,
            retain: will_retain,
            topic,
            payload: r.binary()?,
            properties,
        })
    } else {
        None
    };
    let username = has_username.then(|| r.string()).transpose()?;
    let password = has_password.then(|| r.binary()).transpose()?;
    Ok(Connect {
        version,
        client_id,
        clean_start,
        keep_alive,
        properties,
        will,
        username,
        password,
    })
}

fn connack(r: &mut Reader<'_>, v: Version) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("CONNACK's reserved flags are set"));
    }
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        code: r.u8()?,
        properties: props(r, v, Context::ConnAck)?,
    })
}

/// A topic name: no wildcards ([MQTT-3.3.2-2]), and not empty unless a Topic Alias stands in.
fn topic_name(name: &str, has_alias: bool) -> Result<(), DecodeError> {
    if topic::has_wildcards(name) {
        return Err(DecodeError::TopicNameInvalid("a topic name holds + or #"));
    }
    if name.is_empty() && !has_alias {
        return Err(DecodeError::TopicNameInvalid(
            "an empty topic name without a topic alias",
        ));
    }
    Ok(())
}

fn publish(r: &mut Reader<'_>, v: Version, first: u8) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((first >> 1) & 0b11).ok_or(DecodeError::Malformed("QoS 3"))?;
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = props(r, v, Context::Publish)?;
    let has_alias = properties
        .find(|p| matches!(p, Property::TopicAlias(_)).then_some(()))
        .is_some();
    topic_name(&topic, has_alias)?;
    Ok(Publish {
        dup: first & 0b1000 != 0,
        qos,
        retain: first & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. MQTT 5 leaves out the reason code when it is success and
/// there are no properties, and the property length when there are none.
fn ack(r: &mut Reader<'_>, v: Version) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    let (reason, properties) = reason_and_properties(r, v, Context::Ack)?;
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

/// An optional reason code then optional properties, to the end of the packet (MQTT 5's
/// acknowledgements, DISCONNECT and AUTH); nothing in 3.1.1.
fn reason_and_properties(
    r: &mut Reader<'_>,
    v: Version,
    ctx: Context,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if v == Version::V311 || r.is_empty() {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let reason = ReasonCode(r.u8()?);
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::read(r, ctx)?
    };
    Ok((reason, properties))
}

fn subscribe(r: &mut Reader<'_>, v: Version) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v, Context::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        // At least 3 bytes a filter: the `Vec` holds at most a third of the packet's length.
        let filter = r.string()?;
        let o = r.u8()?;
        let qos =
            QoS::from_u8(o & 0b11).ok_or(DecodeError::Malformed("subscription with QoS 3"))?;
        let options = match v {
            Version::V311 => {
                if o & 0xFC != 0 {
                    return Err(DecodeError::Malformed(
                        "reserved bits of a subscription's options are set",
                    ));
                }
                SubscribeOptions::qos(qos)
            }
            Version::V5 => {
                if o & 0xC0 != 0 {
                    return Err(DecodeError::Malformed(
                        "reserved bits of a subscription's options are set",
                    ));
                }
                let retain_handling = (o >> 4) & 0b11;
                if retain_handling == 3 {
                    return Err(DecodeError::Protocol("retain handling 3"));
                }
                SubscribeOptions {
                    qos,
                    no_local: o & 0x04 != 0,
                    retain_as_published: o & 0x08 != 0,
                    retain_handling,
                }
            }
        };
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn suback(r: &mut Reader<'_>, v: Version) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v, Context::SubAck)?;
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let c = r.u8()?;
        if v == Version::V311 && !matches!(c, 0 | 1 | 2 | 0x80) {
            return Err(DecodeError::Malformed(
                "SUBACK return code not 0, 1, 2 or 0x80",
            ));
        }
        codes.push(ReasonCode(c));
    }
    if codes.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without a code"));
    }
    Ok(SubAck {
        packet_id,
        properties,
        codes,
    })
}

fn unsubscribe(r: &mut Reader<'_>, v: Version) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v, Context::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn unsuback(r: &mut Reader<'_>, v: Version) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v, Context::UnsubAck)?;
    // 3.1.1's UNSUBACK is the packet id alone: anything after it is left over.
    let mut codes = Vec::new();
    if v == Version::V5 {
        codes.reserve(r.remaining());
        while !r.is_empty() {
            codes.push(ReasonCode(r.u8()?));
        }
    }
    if v == Version::V5 && codes.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK without a code"));
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        codes,
    })
}
