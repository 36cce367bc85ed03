//! tether over binary TCP: the subscriber handshake (`connect`, then `subscribe`) and an
//! allocation-free reader for `publication` and `push` payloads.

use std::time::Duration;

use anyhow::bail;
use bytes::{Bytes, BytesMut};
use tether_core::AppId;
use tether_proto::binary::{self, HEADER_LEN, PREFIX_LEN};
use tether_proto::{Body, Frame, Op, Subscribe};
use tokio::io::AsyncWriteExt;

use super::{Item, Target, TetherPublish};
use crate::connections::{connect_frame, negotiated_heartbeat, read_tcp};
use crate::tls::Stream;

/// Connects user `u<n>`, subscribes to the topic (unless the run broadcasts to the app), and
/// returns the ping to send and how often.
pub async fn handshake(
    target: &Target,
    stream: &mut Stream,
    buf: &mut BytesMut,
    n: u64,
) -> anyhow::Result<(Duration, Bytes)> {
    let app = AppId::new(target.app.clone());
    let heartbeat = Duration::from_secs(target.heartbeat_s);
    let connect = connect_frame(&app, &target.secret, n, heartbeat, None);
    let mut out = binary::encode_to_bytes(&connect).to_vec();
    let topics = match target.tether_publish {
        TetherPublish::Topic => target.topic_names(),
        TetherPublish::Broadcast => Vec::new(),
    };
    // Pipelined: the server reads the subscribes once `connect` is through. Unless asked to
    // wait for `connected`, as an MQTT client waits for CONNACK.
    let subscribes = subscribes(&target.app, &topics);
    if !target.wait_connected {
        out.extend(subscribes.iter().flatten());
    }
    stream.write_all(&out).await?;
    stream.flush().await?;
    let heartbeat = negotiated_heartbeat(read_tcp(stream, buf).await?)?;
    if target.wait_connected && !subscribes.is_empty() {
        stream.write_all(&subscribes.concat()).await?;
        stream.flush().await?;
    }
    let mut waiting = topics.len();
    while waiting > 0 {
        waiting -= subscribed(read_tcp(stream, buf).await?)?;
    }
    let ping = binary::encode_to_bytes(&Frame::new(3, Body::Ping));
    Ok((heartbeat / 2, ping))
}

/// The encoded `subscribe` frames (request ids from 2) of `app` to each of `topics`.
pub fn subscribes(app: &str, topics: &[String]) -> Vec<Bytes> {
    topics
        .iter()
        .zip(2..)
        .map(|(topic, id)| {
            let subscribe = Subscribe {
                app: app.to_owned(),
                topic: topic.clone(),
                since: None,
                token: None,
            };
            binary::encode_to_bytes(&Frame::new(id, subscribe))
        })
        .collect()
}

/// How many subscriptions `reply` confirms (1 or 0), or why the subscribe failed.
pub fn subscribed(reply: Body) -> anyhow::Result<usize> {
    match reply {
        Body::Subscribed(_) => Ok(1),
        Body::Error(e) => bail!("subscribe refused: {} {}", e.code, e.message),
        Body::Disconnect(d) => bail!("disconnected: {} {}", d.code, d.reason),
        // Publications may not come before `subscribed`; anything else is noise.
        _ => Ok(0),
    }
}

/// Bytes of a publication body between its topic and its payload: offset, msg_id, created_ms,
/// kind.
const PUBLICATION_FIXED: usize = 8 + 8 + 8 + 1;
/// Bytes of a push body between its app and its payload: msg_id, seq, qos, created_ms, kind.
const PUSH_FIXED: usize = 8 + 8 + 1 + 8 + 1;

/// The next frame in `buf`. `publication` and `push` payloads are located without parsing the
/// rest of the frame (no string allocation per message); other frames go through the codec.
pub fn next(buf: &[u8]) -> anyhow::Result<Option<(usize, Item)>> {
    let Some(total) = binary::check(buf, tether_proto::DEFAULT_MAX_FRAME)? else {
        return Ok(None);
    };
    let frame = &buf[..total];
    let body = PREFIX_LEN + HEADER_LEN;
    let op = Op::from_u8(frame[PREFIX_LEN + 1]);
    let payload = match op {
        Some(Op::Publication) => skip_str(frame, body)
            .and_then(|at| skip_str(frame, at))
            .map(|at| at + PUBLICATION_FIXED),
        Some(Op::Push) => skip_str(frame, body).map(|at| at + PUSH_FIXED),
        _ => None,
    };
    if let Some(start) = payload.filter(|&start| start <= total) {
        return Ok(Some((total, Item::Payload(start..total))));
    }
    let parsed = binary::parse(
        Bytes::copy_from_slice(frame),
        tether_proto::DEFAULT_MAX_FRAME,
    )?;
    let item = match parsed.body {
        Body::Disconnect(d) => Item::Closed(format!("disconnect {} {}", d.code, d.reason)),
        Body::Error(e) => Item::Notice(format!("error {}", e.code)),
        Body::Publication(_) | Body::Push(_) => bail!("truncated {:?} frame", parsed.body.op()),
        _ => Item::Skip,
    };
    Ok(Some((total, item)))
}

/// The position after the `str` (u16 BE length + bytes) at `at`.
fn skip_str(frame: &[u8], at: usize) -> Option<usize> {
    let len = u16::from_be_bytes(*frame.get(at..)?.first_chunk::<2>()?);
    Some(at + 2 + usize::from(len))
}

#[cfg(test)]
mod tests {
    use tether_proto::{Disconnect, PayloadKind, Publication, Push};

    use super::*;

    fn encoded(frame: &Frame) -> Vec<u8> {
        binary::encode_to_bytes(frame).to_vec()
    }

    #[test]
    fn finds_publication_and_push_payloads() {
        let publication = Frame::new(
            0,
            Publication {
                app: "demo".into(),
                topic: "room-1".into(),
                offset: 41,
                msg_id: 7,
                created_ms: 1_763_700_000_000,
                kind: PayloadKind::Json,
                payload: Bytes::from_static(br#"{"t":1}"#),
            },
        );
        let push = Frame::new(
            0,
            Push {
                app: "demo".into(),
                msg_id: 8,
                seq: 0,
                qos: 0,
                created_ms: 1,
                kind: PayloadKind::Binary,
                payload: Bytes::from_static(b"xyz"),
            },
        );
        let mut stream = encoded(&publication);
        stream.extend(encoded(&push));
        let (len, item) = next(&stream).unwrap().unwrap();
        let Item::Payload(range) = item else {
            panic!("{item:?}")
        };
        assert_eq!(&stream[range], br#"{"t":1}"#);
        let rest = &stream[len..];
        let (len2, item) = next(rest).unwrap().unwrap();
        assert_eq!(len2, rest.len());
        assert_eq!(item, Item::Payload(len2 - 3..len2));
        // Incomplete: needs more bytes.
        assert_eq!(next(&stream[..len - 1]).unwrap(), None);
    }

    #[test]
    fn other_frames() {
        let bye = Frame::new(
            0,
            Disconnect {
                code: tether_proto::Code(4001),
                reason: "slow".into(),
                retry_after_ms: 0,
            },
        );
        let (_, item) = next(&encoded(&bye)).unwrap().unwrap();
        assert!(matches!(item, Item::Closed(r) if r.contains("slow")));
        let (_, item) = next(&encoded(&Frame::new(3, Body::Pong))).unwrap().unwrap();
        assert_eq!(item, Item::Skip);
    }
}
