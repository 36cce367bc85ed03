//! Both encodings, every op: round trips, partial streams, hostile input.

mod common;

use bytes::{Bytes, BytesMut};
use common::{Payloads, frame};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::value::RawValue;
use tether_proto::{Body, DEFAULT_MAX_FRAME, DecodeError, Frame, Op, PayloadKind, binary, json};

/// Decode every whole frame in `buf`, stopping at the first incomplete one or error.
fn drain(buf: &mut BytesMut, max_frame: u32) -> (Vec<Frame>, Option<DecodeError>) {
    let mut out = Vec::new();
    loop {
        match binary::decode(buf, max_frame) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// What a frame becomes after a trip through JSON: a kind-json payload that is not JSON text
/// travels as base64 and comes back binary; surrounding whitespace of a JSON payload is dropped.
fn json_normalised(mut frame: Frame) -> Frame {
    let (kind, payload) = match &mut frame.body {
        Body::Push(p) => (&mut p.kind, &mut p.payload),
        Body::Publication(p) => (&mut p.kind, &mut p.payload),
        Body::Upstream(u) => (&mut u.payload_kind, &mut u.payload),
        Body::UpstreamReply(u) => (&mut u.kind, &mut u.payload),
        _ => return frame,
    };
    if *kind == PayloadKind::Json {
        let raw = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
            .map(|raw| raw.get().to_owned());
        match raw {
            Some(raw) => *payload = Bytes::from(raw),
            None => *kind = PayloadKind::Binary,
        }
    }
    frame
}

proptest! {
    #[test]
    fn binary_round_trip(frame in frame(Payloads::Any)) {
        let bytes = binary::encode_to_bytes(&frame);
        prop_assert_eq!(bytes.len(), binary::encoded_len(&frame));
        prop_assert_eq!(binary::check(&bytes, u32::MAX), Ok(Some(bytes.len())));
        prop_assert_eq!(&binary::parse(bytes.clone(), u32::MAX)?, &frame);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(binary::decode(&mut buf, u32::MAX)?, Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn json_round_trip(frame in frame(Payloads::JsonRoundTrip)) {
        let text = json::encode(&frame);
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("not JSON: {e}: {text}")))?;
        prop_assert_eq!(value["op"].as_str(), Some(frame.op().name()));
        prop_assert_eq!(json::decode(text.as_bytes())?, frame);
    }

    #[test]
    fn binary_to_json_to_binary(frame in frame(Payloads::Any)) {
        let via_json = json::decode(json::encode(&frame).as_bytes())?;
        let expected = json_normalised(frame);
        prop_assert_eq!(&via_json, &expected);
        let bytes = binary::encode_to_bytes(&via_json);
        prop_assert_eq!(binary::parse(bytes, u32::MAX)?, expected);
    }

    #[test]
    fn stream_split_anywhere(
        frames in vec(frame(Payloads::Any), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            binary::encode(f, &mut wire);
        }
        let wire = wire.freeze();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for to in cuts {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            let (decoded, err) = drain(&mut buf, u32::MAX);
            prop_assert_eq!(err, None);
            got.extend(decoded);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..256),
        max in prop_oneof![0..64u32, Just(DEFAULT_MAX_FRAME), Just(u32::MAX)],
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = drain(&mut buf, max);
        let _ = binary::parse(Bytes::from(bytes.clone()), max);
        let _ = json::decode(&bytes);
    }

    /// Random bytes behind a plausible header reach the body parsers.
    #[test]
    fn arbitrary_bodies_never_panic(op in 0..20u8, id in any::<u32>(), body in vec(any::<u8>(), 0..128)) {
        let mut v = Vec::with_capacity(12 + body.len());
        v.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        v.extend_from_slice(&[1, op, 0, 0]);
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&body);
        if let Ok(f) = binary::parse(Bytes::from(v), u32::MAX) {
            prop_assert_eq!(binary::parse(binary::encode_to_bytes(&f), u32::MAX)?, f);
        }
    }

    #[test]
    fn too_large_before_buffering(len in (DEFAULT_MAX_FRAME + 1)..=u32::MAX) {
        // Only the prefix has arrived: nothing else is buffered, yet the frame is refused.
        let prefix = len.to_be_bytes();
        let expected = DecodeError::TooLarge { len: u64::from(len), max: DEFAULT_MAX_FRAME };
        prop_assert_eq!(binary::check(&prefix, DEFAULT_MAX_FRAME), Err(expected.clone()));
        let mut buf = BytesMut::from(&prefix[..]);
        prop_assert_eq!(binary::decode(&mut buf, DEFAULT_MAX_FRAME), Err(expected));
        prop_assert_eq!(buf.len(), 4);
    }
}

#[test]
fn too_large_needs_only_the_prefix() {
    // Three bytes of prefix: still incomplete, not yet an error.
    let prefix = (DEFAULT_MAX_FRAME + 1).to_be_bytes();
    assert_eq!(binary::check(&prefix[..3], DEFAULT_MAX_FRAME), Ok(None));
    // The fourth byte is enough to refuse it, with the code the server closes with.
    let err = binary::check(&prefix, DEFAULT_MAX_FRAME).unwrap_err();
    assert_eq!(err.code(), tether_proto::Code::FRAME_TOO_LARGE);
    // A frame of exactly max_frame is accepted.
    let frame = Frame::new(
        1,
        tether_proto::Push {
            app: "a".into(),
            msg_id: 1,
            seq: 0,
            qos: 0,
            created_ms: 0,
            kind: PayloadKind::Binary,
            payload: Bytes::from(vec![7; DEFAULT_MAX_FRAME as usize - 8 - 29]),
        },
    );
    let bytes = binary::encode_to_bytes(&frame);
    assert_eq!(bytes.len(), 4 + DEFAULT_MAX_FRAME as usize);
    assert_eq!(binary::parse(bytes.clone(), DEFAULT_MAX_FRAME), Ok(frame));
    assert_eq!(
        binary::parse(bytes, DEFAULT_MAX_FRAME - 1),
        Err(DecodeError::TooLarge {
            len: u64::from(DEFAULT_MAX_FRAME),
            max: DEFAULT_MAX_FRAME - 1
        })
    );
}

#[test]
fn every_op_has_a_number_and_a_name() {
    for op in Op::ALL {
        assert_eq!(Op::from_u8(op as u8), Some(op));
        assert_eq!(Op::from_name(op.name()), Some(op));
    }
}

/// The JSON examples in the spec decode, and re-encode to exactly the same text.
#[test]
fn spec_examples_are_canonical() {
    let spec = include_str!("../../../docs/protocol.md");
    let start = spec
        .find("### 3.3 Examples")
        .expect("the spec has a JSON examples section");
    let block = spec[start..]
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a json code block");
    let mut ops = Vec::new();
    for line in block.lines().filter(|l| !l.is_empty()) {
        let frame = json::decode(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(json::encode(&frame), line);
        ops.push(frame.op());
    }
    for op in Op::ALL {
        assert!(ops.contains(&op), "no example of {op:?}");
    }
}
