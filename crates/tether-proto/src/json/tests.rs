//! Unit tests of the JSON encoding: the documented examples, the field rules, escaping.

use bytes::Bytes;

use super::encoder::{push_json_str, push_u64};
use super::*;
use crate::Code;
use crate::error::DecodeError;
use crate::frame::{
    Ack, Binding, Body, Bound, Connect, Connected, Disconnect, ErrorBody, Frame, PayloadKind, Push,
};

fn dec(s: &str) -> Result<Frame, DecodeError> {
    decode(s.as_bytes())
}

fn json_err(s: &str) -> String {
    match dec(s) {
        Err(DecodeError::Json(m)) => m,
        other => panic!("expected a Json error for {s}, got {other:?}"),
    }
}

fn push(kind: PayloadKind, payload: &'static [u8]) -> Frame {
    Frame::new(
        0,
        Push {
            app: "demo".into(),
            msg_id: 123_456_789_012_345_678,
            seq: 0,
            qos: 0,
            created_ms: 1_763_700_000_000,
            kind,
            payload: Bytes::from_static(payload),
        },
    )
}

#[test]
fn documented_examples() {
    assert_eq!(
        dec(
            r#"{"op":"connect","id":1,"version":1,"device":"d1","heartbeat_ms":30000,"bindings":[{"app":"demo","token":"t"}]}"#
        ),
        Ok(Frame::new(
            1,
            Connect {
                version: 1,
                device: "d1".into(),
                heartbeat_ms: 30_000,
                bindings: vec![Binding {
                    app: "demo".into(),
                    token: "t".into(),
                    last_seq: None,
                }],
            }
        ))
    );
    let connected = Frame::new(
        1,
        Connected {
            conn_id: 7,
            node: "n1".into(),
            heartbeat_ms: 30_000,
            max_frame: 65_536,
            bindings: vec![Bound {
                app: "demo".into(),
                user: "alice".into(),
            }],
        },
    );
    assert_eq!(
        encode(&connected),
        r#"{"op":"connected","id":1,"conn_id":7,"node":"n1","heartbeat_ms":30000,"max_frame":65536,"bindings":[{"app":"demo","user":"alice"}]}"#
    );
    assert_eq!(
        encode(&Frame::new(2, Body::Ping)),
        r#"{"op":"ping","id":2}"#
    );
    assert_eq!(
        dec(r#"{"op":"pong","id":2}"#),
        Ok(Frame::new(2, Body::Pong))
    );
    assert_eq!(
        encode(&Frame::new(
            3,
            Ack {
                app: "demo".into(),
                seq: 17
            }
        )),
        r#"{"op":"ack","id":3,"app":"demo","seq":17}"#
    );
    assert_eq!(
        encode(&Frame::new(
            3,
            ErrorBody {
                code: Code::BAD_REQUEST,
                message: "not bound".into()
            }
        )),
        r#"{"op":"error","id":3,"code":4300,"message":"not bound"}"#
    );
    assert_eq!(
        encode(&Frame::new(
            0,
            Disconnect {
                code: Code::SLOW,
                reason: "slow".into(),
                retry_after_ms: 0
            }
        )),
        r#"{"op":"disconnect","id":0,"code":4001,"reason":"slow","retry_after_ms":0,"reconnect":"retry"}"#
    );
}

#[test]
fn push_json_payload_is_embedded() {
    let frame = push(PayloadKind::Json, br#"{"text":"hi","n":[1,2]}"#);
    let text = encode(&frame);
    assert_eq!(
        text,
        r#"{"op":"push","id":0,"app":"demo","msg_id":"123456789012345678","seq":0,"qos":0,"created_ms":1763700000000,"payload":{"text":"hi","n":[1,2]}}"#
    );
    assert_eq!(dec(&text), Ok(frame));
}

#[test]
fn push_binary_or_invalid_json_goes_base64() {
    let frame = push(PayloadKind::Binary, b"\x00\xffhi");
    let text = encode(&frame);
    assert!(text.ends_with(r#","payload_base64":"AP9oaQ=="}"#), "{text}");
    assert_eq!(dec(&text), Ok(frame));

    // Kind json but not JSON: sent as base64, decoded as binary.
    let text = encode(&push(PayloadKind::Json, b"{not json"));
    assert!(text.contains("payload_base64"));
    assert_eq!(dec(&text), Ok(push(PayloadKind::Binary, b"{not json")));
}

#[test]
fn msg_id_string_or_number() {
    let base = r#"{"op":"push","app":"a","payload":1,"msg_id":"#;
    for (v, ok) in [
        ("18446744073709551615", true),
        (r#""18446744073709551615""#, true),
        (r#""18446744073709551616""#, false),
        (r#""+1""#, false),
        (r#""""#, false),
        ("-1", false),
        ("1.5", false),
    ] {
        let r = dec(&format!("{base}{v}}}"));
        assert_eq!(r.is_ok(), ok, "{v}: {r:?}");
        if let Err(e) = r {
            assert!(e.to_string().contains("`msg_id`"), "{e}");
        }
    }
}

#[test]
fn defaults_and_required_fields() {
    assert_eq!(
        dec(r#"{"op":"connect","device":"d"}"#),
        Ok(Frame::new(
            0,
            Connect {
                version: 1,
                device: "d".into(),
                heartbeat_ms: 0,
                bindings: vec![],
            }
        ))
    );
    assert_eq!(json_err(r#"{"op":"connect"}"#), "missing field `device`");
    assert_eq!(json_err(r#"{"op":"ack","seq":1}"#), "missing field `app`");
    assert_eq!(json_err(r#"{"op":"ack","app":"a"}"#), "missing field `seq`");
    assert_eq!(
        json_err(r#"{"op":"ack","app":"a","seq":"x"}"#),
        r#"field `seq`: invalid type: string "x", expected u64"#
    );
    assert_eq!(
        json_err(r#"{"op":"connect","device":"d","version":256}"#),
        "field `version`: invalid value: integer `256`, expected u8"
    );
    assert!(
        json_err(r#"{"op":"connect","device":"d","bindings":[{"app":"a"}]}"#)
            .starts_with("field `bindings`: missing field `token`")
    );
    assert_eq!(json_err(r#"{"id":1}"#), "missing field `op`");
    assert_eq!(
        json_err(r#"{"op":"ping","id":-1}"#).split(':').next(),
        Some("field `id`")
    );
}

#[test]
fn unknown_fields_ignored_known_duplicates_rejected() {
    assert_eq!(
        dec(r#"{"extra":{"deep":[1,2,{"x":null}]},"op":"ping","id":5,"reconnect":"no"}"#),
        Ok(Frame::new(5, Body::Ping))
    );
    assert_eq!(
        dec(r#"{"op":"ping","id":null}"#),
        Ok(Frame::new(0, Body::Ping))
    );
    assert!(json_err(r#"{"op":"ping","op":"pong"}"#).contains("duplicate field `op`"));
}

#[test]
fn unknown_op_and_not_an_object() {
    assert_eq!(
        dec(r#"{"op":"teleport","id":1}"#),
        Err(DecodeError::UnknownOp("teleport".into()))
    );
    for bad in [
        "",
        "[]",
        "5",
        "null",
        "{",
        r#"{"op":"ping"} x"#,
        "\u{feff}{}",
    ] {
        assert!(matches!(dec(bad), Err(DecodeError::Json(_))), "{bad:?}");
    }
    assert_eq!(
        decode(b"{\"op\":\"ping\xff\"}"),
        Err(DecodeError::Json("message is not valid UTF-8".into()))
    );
}

#[test]
fn push_payload_rules() {
    let both = r#"{"op":"push","app":"a","msg_id":"1","payload":1,"payload_base64":"AA=="}"#;
    assert!(json_err(both).contains("both"));
    let none = r#"{"op":"push","app":"a","msg_id":"1"}"#;
    assert!(json_err(none).contains("`payload`"));
    let bad = r#"{"op":"push","app":"a","msg_id":"1","payload_base64":"***"}"#;
    assert!(json_err(bad).starts_with("field `payload_base64`"));
    // A null payload is a JSON payload, not an absent one.
    let null = dec(r#"{"op":"push","app":"a","msg_id":"1","payload":null}"#).unwrap();
    let Body::Push(p) = null.body else {
        unreachable!()
    };
    assert_eq!((p.kind, &p.payload[..]), (PayloadKind::Json, &b"null"[..]));
    // Unpadded base64 is accepted.
    let unpadded = dec(r#"{"op":"push","app":"a","msg_id":"1","payload_base64":"QQ"}"#);
    let Body::Push(p) = unpadded.unwrap().body else {
        unreachable!()
    };
    assert_eq!(&p.payload[..], b"A");
}

#[test]
fn strings_are_escaped() {
    let app = "q\"b\\n\n\r\t\u{8}\u{c}\u{1}\u{1f}é😀/\u{7f}";
    let mut s = String::new();
    push_json_str(&mut s, app);
    assert_eq!(serde_json::from_str::<String>(&s).unwrap(), app);
    assert_eq!(s, serde_json::to_string(app).unwrap());
}

#[test]
fn numbers() {
    for n in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
        let mut s = String::new();
        push_u64(&mut s, n);
        assert_eq!(s, n.to_string());
    }
}
