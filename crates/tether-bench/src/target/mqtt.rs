//! A minimal MQTT 3.1.1 client: what a benchmark subscriber and publisher need and nothing
//! more. Out: `CONNECT` (clean session), `SUBSCRIBE` (one topic, qos 0), `PUBLISH` (qos 0),
//! `PINGREQ`. In: `CONNACK`, `SUBACK`, `PUBLISH`; anything else is skipped.
//!
//! Mosquitto takes an anonymous `CONNECT` with the keep-alive off. tether's MQTT listener
//! (`--target tether --mqtt`) wants the app as user name and a token as password, and closes a
//! connection that is silent for 1.5 keep-alives (docs/mqtt.md, section 7): its `CONNECT` is
//! encoded by tether's own codec (`tether-mqtt`), and the subscriber sends `PINGREQ` every half
//! keep-alive.
//!
//! Packet layout (MQTT 3.1.1, section 2): a fixed header (packet type in the high nibble of
//! byte 0, flags in the low one; then the remaining length as a base-128 varint of 1-4 bytes),
//! a variable header, a payload. Strings are a u16 BE length and UTF-8 bytes.

use std::time::Duration;

use crate::tls::Stream;
use anyhow::bail;
use bytes::{BufMut, Bytes, BytesMut};
use tether_core::{AppId, UserId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Item, Target, TetherPublish};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
/// `PINGREQ`, whole: it has no variable part.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MqttError {
    #[error("MQTT remaining length is longer than 4 bytes")]
    BadLength,
    #[error("MQTT packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed MQTT {0}")]
    Malformed(&'static str),
}

/// A fixed header: the packet's type and flags, and where its variable part lies.
#[derive(Debug, PartialEq, Eq)]
pub struct Fixed {
    pub kind: u8,
    pub flags: u8,
    /// Length of the fixed header (1 + the varint).
    pub header: usize,
    /// The remaining length.
    pub body: usize,
}

impl Fixed {
    pub fn total(&self) -> usize {
        self.header + self.body
    }
}

/// Check: the fixed header of the packet at the front of `buf`, once the whole packet is
/// there; `None` while incomplete.
pub fn check(buf: &[u8], max: usize) -> Result<Option<Fixed>, MqttError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0_usize;
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (at - 1));
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at == 5 {
            return Err(MqttError::BadLength);
        }
    }
    if len > max {
        return Err(MqttError::TooLarge(len));
    }
    let fixed = Fixed {
        kind: b0 >> 4,
        flags: b0 & 0x0f,
        header: at,
        body: len,
    };
    Ok((buf.len() >= fixed.total()).then_some(fixed))
}

/// The next whole packet as an [`Item`] (a `PUBLISH` payload, found in place), and its
/// length.
pub fn next(buf: &[u8], max: usize) -> Result<Option<(usize, Item)>, MqttError> {
    let Some(fixed) = check(buf, max)? else {
        return Ok(None);
    };
    let total = fixed.total();
    let item = match fixed.kind {
        PUBLISH => {
            let body = &buf[fixed.header..total];
            let topic_len = body
                .first_chunk::<2>()
                .map(|b| usize::from(u16::from_be_bytes(*b)))
                .ok_or(MqttError::Malformed("PUBLISH without a topic"))?;
            // qos 1 and 2 carry a packet id after the topic.
            let id_len = if fixed.flags & 0x06 != 0 { 2 } else { 0 };
            let start = fixed.header + 2 + topic_len + id_len;
            if start > total {
                return Err(MqttError::Malformed("PUBLISH topic runs past the packet"));
            }
            Item::Payload(start..total)
        }
        _ => Item::Skip,
    };
    Ok(Some((total, item)))
}

fn put_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// `CONNECT`, protocol level 4 (3.1.1), clean session, no will, no credentials.
/// `keep_alive_s` 0 turns keep-alive off.
pub fn connect(out: &mut BytesMut, client_id: &str, keep_alive_s: u16) {
    out.put_u8(CONNECT << 4);
    put_length(out, 10 + 2 + client_id.len());
    put_str(out, b"MQTT");
    out.put_u8(4);
    out.put_u8(0x02);
    out.put_u16(keep_alive_s);
    put_str(out, client_id.as_bytes());
}

/// `SUBSCRIBE` to one topic filter at qos 0.
pub fn subscribe(out: &mut BytesMut, packet_id: u16, topic: &str) {
    // The flags of SUBSCRIBE are fixed at 0b0010.
    out.put_u8(SUBSCRIBE << 4 | 0x02);
    put_length(out, 2 + 2 + topic.len() + 1);
    out.put_u16(packet_id);
    put_str(out, topic.as_bytes());
    out.put_u8(0);
}

/// `PUBLISH` at qos 0 (no packet id), not retained.
pub fn publish(out: &mut BytesMut, topic: &str, payload: &[u8]) {
    out.put_u8(PUBLISH << 4);
    put_length(out, 2 + topic.len() + payload.len());
    put_str(out, topic.as_bytes());
    out.put_slice(payload);
}

/// Reads packets until one of `kind`; returns its variable part.
async fn expect(stream: &mut Stream, buf: &mut BytesMut, kind: u8) -> anyhow::Result<Vec<u8>> {
    loop {
        if let Some(fixed) = check(buf, super::MAX_MESSAGE)? {
            let packet = buf.split_to(fixed.total());
            if fixed.kind == kind {
                return Ok(packet[fixed.header..].to_vec());
            }
            continue;
        }
        buf.reserve(512);
        if stream.read_buf(buf).await? == 0 {
            bail!("closed by the broker");
        }
    }
}

/// Connects as `client_id` (keep-alive off) and subscribes to `topics` at qos 0 (none: the
/// handshake ends at `CONNACK`).
pub async fn handshake(
    stream: &mut Stream,
    buf: &mut BytesMut,
    client_id: &str,
    topics: &[String],
) -> anyhow::Result<()> {
    let mut out = BytesMut::with_capacity(64);
    connect(&mut out, client_id, 0);
    handshake_with(stream, buf, out, topics).await
}

/// `CONNECT` of user `u<n>` to tether's MQTT listener, device `bench-<n>`, with a token minted
/// from the target's secret, encoded by `tether-mqtt`.
pub fn tether_connect(target: &Target, n: u64, out: &mut BytesMut) -> anyhow::Result<()> {
    let app = AppId::new(target.app.clone());
    let token = tether_core::auth::mint(
        target.secret.as_bytes(),
        &app,
        &UserId::new(format!("u{n}")),
        Duration::from_secs(24 * 3600),
    );
    let connect = tether_mqtt::Connect {
        version: tether_mqtt::Version::V311,
        client_id: format!("bench-{n}"),
        clean_start: !target.mqtt_session,
        keep_alive: keep_alive_s(target),
        properties: tether_mqtt::Properties::default(),
        will: None,
        username: Some(target.app.clone()),
        password: Some(Bytes::from(token)),
    };
    let packet = tether_mqtt::Packet::Connect(Box::new(connect));
    tether_mqtt::encode(&packet, tether_mqtt::Version::V311, out)?;
    Ok(())
}

/// The keep-alive a tether subscriber asks for: the target's heartbeat.
fn keep_alive_s(target: &Target) -> u16 {
    target.heartbeat_s.clamp(1, u64::from(u16::MAX)) as u16
}

/// Subscriber `n` of tether over MQTT: `CONNECT`, then the run's topics unless it broadcasts
/// to the app or the run is `--connect-only`. Returns how often to send `PINGREQ`.
pub async fn tether_handshake(
    target: &Target,
    stream: &mut Stream,
    buf: &mut BytesMut,
    n: u64,
) -> anyhow::Result<Duration> {
    let mut out = BytesMut::with_capacity(512);
    tether_connect(target, n, &mut out)?;
    let topics = match target.tether_publish {
        TetherPublish::Topic if !target.connect_only => target.topic_names(),
        _ => Vec::new(),
    };
    handshake_with(stream, buf, out, &topics).await?;
    Ok(Duration::from_secs(u64::from(keep_alive_s(target))) / 2)
}

/// Writes `connect`, waits for an accepting `CONNACK`, then subscribes to `topics`.
async fn handshake_with(
    stream: &mut Stream,
    buf: &mut BytesMut,
    mut out: BytesMut,
    topics: &[String],
) -> anyhow::Result<()> {
    stream.write_all(&out).await?;
    let connack = expect(stream, buf, CONNACK).await?;
    match connack.get(1) {
        Some(0) => {}
        Some(code) => bail!("CONNACK refused: return code {code}"),
        None => bail!("short CONNACK"),
    }
    if topics.is_empty() {
        return Ok(());
    }
    // One SUBSCRIBE per topic, like a client joining rooms one by one, all sent before the
    // first SUBACK is read.
    out.clear();
    for (i, topic) in topics.iter().enumerate() {
        subscribe(&mut out, i as u16 + 1, topic);
    }
    stream.write_all(&out).await?;
    for _ in topics {
        let suback = expect(stream, buf, SUBACK).await?;
        match suback.get(2) {
            Some(0) => {}
            Some(code) => bail!("SUBACK refused: return code {code:#x}"),
            None => bail!("short SUBACK"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Kind;

    #[test]
    fn connect_bytes() {
        let mut out = BytesMut::new();
        connect(&mut out, "bench-1", 0);
        let expected: &[u8] = &[
            0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 7, b'b', b'e', b'n', b'c',
            b'h', b'-', b'1',
        ];
        assert_eq!(&out[..], expected);
        assert_eq!(check(&out, 1000).unwrap().unwrap().total(), out.len());
    }

    #[test]
    fn tether_connect_carries_the_app_and_a_token_that_verifies() {
        let mut target =
            crate::target::tests::target(Kind::Tether, "127.0.0.1:7483".parse().unwrap());
        target.mqtt = true;
        target.secret = "bench-secret".into();
        let mut out = BytesMut::new();
        tether_connect(&target, 7, &mut out).unwrap();
        let packet = tether_mqtt::decode(&mut out, None, 4096).unwrap().unwrap();
        let tether_mqtt::Packet::Connect(c) = packet else {
            panic!("not a CONNECT: {packet:?}");
        };
        assert_eq!(c.version, tether_mqtt::Version::V311);
        assert_eq!(
            (c.client_id.as_str(), c.clean_start, c.keep_alive),
            ("bench-7", true, 60)
        );
        assert_eq!(c.username.as_deref(), Some("demo"));
        let token = std::str::from_utf8(c.password.as_deref().unwrap()).unwrap();
        let app = AppId::new("demo".to_owned());
        let user = tether_core::auth::verify(b"bench-secret", &app, token, Duration::ZERO);
        assert_eq!(user.unwrap().as_str(), "u7");
        assert!(out.is_empty());
    }

    #[test]
    fn subscribe_bytes() {
        let mut out = BytesMut::new();
        subscribe(&mut out, 1, "bench");
        assert_eq!(
            &out[..],
            &[0x82, 10, 0, 1, 0, 5, b'b', b'e', b'n', b'c', b'h', 0]
        );
    }

    #[test]
    fn remaining_length_varint() {
        for (len, bytes) in [
            (0_usize, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (268_435_455, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = BytesMut::new();
            put_length(&mut out, len);
            assert_eq!(&out[..], &bytes[..], "{len}");
            let mut packet = vec![PUBLISH << 4];
            packet.extend(&bytes);
            packet.resize(1 + bytes.len() + len.min(100), 0);
            let fixed = check(&packet, usize::MAX).unwrap();
            if len <= 100 {
                let fixed = fixed.unwrap();
                assert_eq!((fixed.header, fixed.body), (1 + bytes.len(), len));
            } else {
                assert_eq!(fixed, None, "incomplete");
            }
        }
        assert_eq!(
            check(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
            Err(MqttError::BadLength)
        );
        assert_eq!(check(&[0x30, 0x80], 10), Ok(None));
        assert_eq!(
            check(&[0x30, 0x80, 0x01], 10),
            Err(MqttError::TooLarge(128))
        );
    }

    #[test]
    fn publish_round_trip() {
        let payload = vec![b'p'; 300];
        let mut out = BytesMut::new();
        publish(&mut out, "bench", &payload);
        publish(&mut out, "t", b"second");
        let (len, item) = next(&out, 1000).unwrap().unwrap();
        assert_eq!(item, Item::Payload(len - 300..len));
        assert_eq!(&out[len - 300..len], &payload[..]);
        let rest = &out[len..];
        let (len2, item) = next(rest, 1000).unwrap().unwrap();
        assert_eq!(
            (len2, item),
            (rest.len(), Item::Payload(rest.len() - 6..rest.len()))
        );
        assert_eq!(next(&out[..len - 1], 1000).unwrap(), None);
    }

    #[test]
    fn qos1_publish_skips_the_packet_id() {
        // PUBLISH qos 1: topic "a", packet id 7, payload "xy".
        let packet = [0x32, 7, 0, 1, b'a', 0, 7, b'x', b'y'];
        assert_eq!(next(&packet, 100).unwrap(), Some((9, Item::Payload(7..9))));
        let bad = [0x30, 2, 0, 9];
        assert!(matches!(next(&bad, 100), Err(MqttError::Malformed(_))));
        let pingresp = [0xd0, 0];
        assert_eq!(next(&pingresp, 100).unwrap(), Some((2, Item::Skip)));
    }
}
