//! Byte vectors written out by hand from the specifications, and the refusals each bad input
//! gets, with the reason code it maps to.

use bytes::{Bytes, BytesMut};
use tether_mqtt::*;

fn decode_all(bytes: &[u8], v: Option<Version>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, v, 65_536)
}

#[test]
fn the_3_1_1_connect_of_the_specification() {
    // 3.1.1, 3.1.2.10: protocol name, level 4, flags 0xCE (user name, password, Will QoS 1,
    // Will, Clean Session), keep alive 10; then the payload in its order.
    let bytes =
        b"\x10\x1e\x00\x04MQTT\x04\xce\x00\x0a\x00\x01d\x00\x01w\x00\x01m\x00\x04demo\x00\x03tok";
    let Some(Packet::Connect(c)) = decode_all(bytes, None).unwrap() else {
        panic!("not a CONNECT");
    };
    assert_eq!(
        *c,
        Connect {
            version: Version::V311,
            client_id: "d".into(),
            clean_start: true,
            keep_alive: 10,
            properties: Properties::default(),
            will: Some(Will {
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "w".into(),
                payload: Bytes::from_static(b"m"),
                properties: Properties::default(),
            }),
            username: Some("demo".into()),
            password: Some(Bytes::from_static(b"tok")),
        }
    );
    assert_eq!(
        &encode_to_bytes(&Packet::Connect(c), Version::V311).unwrap()[..],
        &bytes[..]
    );
}

#[test]
fn fixed_size_packets() {
    let v = Some(Version::V311);
    assert_eq!(decode_all(b"\xc0\x00", v), Ok(Some(Packet::PingReq)));
    assert_eq!(decode_all(b"\xd0\x00", v), Ok(Some(Packet::PingResp)));
    assert_eq!(
        decode_all(b"\xe0\x00", v),
        Ok(Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::SUCCESS
        ))))
    );
    assert_eq!(
        decode_all(b"\x40\x02\x00\x07", v),
        Ok(Some(Packet::PubAck(Ack::new(7))))
    );
    // A PINGREQ with a body, a 3.1.1 PUBACK with a reason code.
    assert!(decode_all(b"\xc0\x01\x00", v).is_err());
    assert!(decode_all(b"\x40\x03\x00\x07\x00", v).is_err());
}

#[test]
fn mqtt_5_acknowledgements_in_their_short_forms() {
    let v = Some(Version::V5);
    assert_eq!(
        decode_all(b"\x40\x02\x00\x01", v),
        Ok(Some(Packet::PubAck(Ack::new(1))))
    );
    let Ok(Some(Packet::PubAck(a))) = decode_all(b"\x40\x03\x00\x01\x10", v) else {
        panic!()
    };
    assert_eq!(a.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    // Reason code, property length 0.
    let Ok(Some(Packet::PubAck(a))) = decode_all(b"\x40\x04\x00\x01\x87\x00", v) else {
        panic!()
    };
    assert_eq!(a.reason, ReasonCode::NOT_AUTHORIZED);
    let d = Packet::Disconnect(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER));
    assert_eq!(
        &encode_to_bytes(&d, Version::V5).unwrap()[..],
        b"\xe0\x01\x8e"
    );
    assert_eq!(decode_all(b"\xe0\x01\x8e", v), Ok(Some(d)));
    assert_eq!(
        &encode_to_bytes(
            &Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)),
            Version::V5
        )
        .unwrap()[..],
        b"\xe0\x00"
    );
}

#[test]
fn a_packet_before_connect_is_refused_from_its_first_byte() {
    // PUBLISH, and an HTTP request to the MQTT port ('G' is 0x47: type 4, flags 7).
    for bytes in [&b"\x30"[..], b"GET / HTTP/1.1\r\n"] {
        let e = check(bytes, None, 65_536).unwrap_err();
        assert!(matches!(e, DecodeError::ExpectedConnect { .. }), "{e}");
        assert_eq!(e.connack_for_unknown_version(), None);
    }
    // After CONNECT the same HTTP bytes have bad flags.
    assert!(matches!(
        check(b"GET", Some(Version::V311), 65_536),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn an_oversized_packet_is_refused_before_its_body() {
    // PUBLISH with a remaining length of 268,435,455: five bytes seen, nothing buffered.
    let e = check(b"\x32\xff\xff\xff\x7f", Some(Version::V5), 65_536).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooLarge {
            len: 268_435_460,
            max: 65_536
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // A fifth length byte; a length not in its shortest form.
    assert!(matches!(
        check(b"\x30\xff\xff\xff\xff\x01", Some(Version::V5), u32::MAX),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        check(b"\xc0\x80\x00", Some(Version::V5), u32::MAX),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn protocol_levels() {
    // 3.1's MQIsdp, level 3: a 3.1.1 CONNACK 0x01.
    let e = decode_all(b"\x10\x0c\x00\x06MQIsdp\x03\x02\x00\x3c", None).unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedVersion { level: 3 });
    assert_eq!(e.connack_for_unknown_version(), Some((Version::V311, 0x01)));
    // Level 6: MQTT 5's 0x84.
    let e = decode_all(b"\x10\x0a\x00\x04MQTT\x06\x02\x00\x3c", None).unwrap_err();
    assert_eq!(e.connack_for_unknown_version(), Some((Version::V5, 0x84)));
    // Another protocol's name.
    assert!(matches!(
        decode_all(b"\x10\x0a\x00\x04HTTP\x04\x02\x00\x3c", None),
        Err(DecodeError::Malformed(_))
    ));
    // The reserved CONNECT flag.
    assert!(matches!(
        decode_all(b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01d", None),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn bad_fields_and_their_reason_codes() {
    let v5 = Some(Version::V5);
    // A topic name with a wildcard: 0x90.
    let e = decode_all(b"\x30\x05\x00\x01+\x00x", v5).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
    // A topic name holding U+0000: malformed.
    let e = decode_all(b"\x30\x06\x00\x02a\x00\x00x", v5).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    // SUBSCRIBE with flags 0000 instead of 0010.
    let e = decode_all(b"\x80\x07\x00\x01\x00\x00\x01a\x01", v5).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    // SUBSCRIBE with retain handling 3: protocol error.
    let e = decode_all(b"\x82\x07\x00\x01\x00\x00\x01a\x31", v5).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // 3.1.1 SUBSCRIBE options with reserved bits.
    assert!(decode_all(b"\x82\x06\x00\x01\x00\x01a\x05", Some(Version::V311)).is_err());
    // A QoS 1 PUBLISH with packet id 0.
    let e = decode_all(b"\x32\x06\x00\x01a\x00\x00\x00", v5).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    // AUTH does not exist in 3.1.1.
    assert!(decode_all(b"\xf0\x00", Some(Version::V311)).is_err());
    assert_eq!(
        decode_all(b"\xf0\x00", v5),
        Ok(Some(Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default()
        })))
    );
    // Packet type 0.
    assert!(check(b"\x00\x00", v5, 10).is_err());
}

#[test]
fn a_publish_head_and_its_payload_make_the_packet() {
    let mut properties = Properties::new();
    properties.push(Property::UserProperty("seq".into(), "18".into()));
    let p = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "$tether/inbox/demo".into(),
        packet_id: 9,
        properties,
        payload: Bytes::from_static(b"{\"text\":\"hi\"}"),
    };
    for v in [Version::V311, Version::V5] {
        let mut out = BytesMut::new();
        encode_publish_head(v, &PublishHead::of(&p), p.payload.len(), &mut out).unwrap();
        out.extend_from_slice(&p.payload);
        assert_eq!(
            out.freeze(),
            encode_to_bytes(&Packet::Publish(p.clone()), v).unwrap()
        );
    }
}
