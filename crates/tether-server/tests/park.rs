//! Parked connections: an idle connection (raw TCP or WebSocket) gives up its task and gets one
//! back on its next event (the client sends, a push cannot be written directly, a close), with nothing
//! lost on the way.

mod common;

use std::time::Duration;

use common::*;
use tether_proto::{Ack, Body, Code, Frame};
use tether_server::{Config, Node};
use tokio::time::Instant;

/// Parks after 100 ms of silence; the sweep runs every 50 ms.
fn config() -> Config {
    let mut config = Config::for_tests();
    config.gateway.heartbeat_min = Duration::from_millis(200);
    config.gateway.park_after = Duration::from_millis(100);
    config
}

/// Waits until exactly `n` connections are parked; panics after [`WAIT`].
async fn wait_parked(node: &Node, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let parked = node.parked_connections();
        if parked == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{parked} connections parked after {WAIT:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the node holds `n` connections: a closed one is gone from its table.
async fn wait_connections(node: &Node, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let held = node.connections();
        if held == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{held} connections held after {WAIT:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn payload_of(frame: Frame) -> String {
    String::from_utf8(expect_push(frame).payload.to_vec()).expect("UTF-8 payload")
}

#[tokio::test]
async fn a_parked_connection_gets_pushes_answers_pings_and_acks_and_stays_served() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let (mut tcp, _) = TcpClient::connected(addr, "alice", "phone", 5_000).await;
    let (mut ws, _) = WsClient::connected(&node, "alice", "browser", 5_000).await;
    wait_parked(&node, 2).await;

    // A push to a parked connection is written by the pushing side (behind a WebSocket
    // header for the browser); they stay parked.
    http.push(r#"{"users":["alice"],"payload":"one"}"#).await;
    assert!(payload_of(tcp.frame().await).contains("one"));
    assert!(payload_of(ws.frame().await).contains("one"));
    assert_eq!(
        node.parked_connections(),
        2,
        "a transient push started a task"
    );

    // A ping wakes it: only a task answers it (with a pong), and the task parks again once
    // idle.
    tcp.send(&Frame::new(7, Body::Ping)).await;
    assert_eq!(tcp.frame().await, Frame::new(7, Body::Pong));
    ws.send_frame(&Frame::new(7, Body::Ping)).await;
    assert_eq!(ws.frame().await, Frame::new(7, Body::Pong));
    wait_parked(&node, 2).await;

    // A durable push and its ack, which is written to the store by the woken task.
    let answer = http
        .push(r#"{"users":["alice"],"payload":"two","qos":1}"#)
        .await;
    let seq = answer["seqs"]["alice"].as_u64().expect("a seq for alice");
    let push = expect_push(tcp.frame().await);
    assert_eq!(push.seq, seq);
    assert_eq!(expect_push(ws.frame().await).seq, seq);
    wait_parked(&node, 2).await;
    tcp.send(&Frame::new(
        8,
        Ack {
            app: APP.into(),
            seq,
        },
    ))
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let presence = http.presence("alice").await;
        let acked = presence["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|d| d["device"] == "phone")
            .and_then(|d| d["acked"].as_u64());
        if acked == Some(seq) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "phone acked {acked:?}, expected {seq}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Parked through several sweeps, still one connection each, both still served.
    wait_parked(&node, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.connections(), 2);
    http.push(r#"{"users":["alice"],"payload":"three"}"#).await;
    assert!(payload_of(tcp.frame().await).contains("three"));
    assert!(payload_of(ws.frame().await).contains("three"));
}

#[tokio::test]
async fn a_parked_connection_is_closed_by_a_kick_its_heartbeat_or_its_client() {
    let mut config = config();
    // Two slots: a parked connection must keep its own and give it back when it ends.
    config.limits.max_connections = 2;
    let node = start(config).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();

    // A kick reaches a parked connection.
    let (mut kicked, _) = TcpClient::connected(addr, "alice", "phone", 5_000).await;
    // Its client never pings: the heartbeat limit (3 x 200 ms) closes it while parked.
    let (mut silent, _) = TcpClient::connected(addr, "bob", "phone", 200).await;
    wait_parked(&node, 2).await;
    http.kick("alice").await;
    kicked.expect_disconnect(Code::KICKED).await;
    silent.expect_disconnect(Code::HEARTBEAT_TIMEOUT).await;
    drop((kicked, silent));

    // A client that goes away while parked is forgotten, and its slot comes back.
    let (gone, _) = TcpClient::connected(addr, "carol", "phone", 5_000).await;
    let (_stays, _) = TcpClient::connected(addr, "dave", "phone", 5_000).await;
    wait_parked(&node, 2).await;
    drop(gone);
    wait_connections(&node, 1).await;
    let (mut again, _) = TcpClient::connected(addr, "erin", "phone", 5_000).await;
    again.send(&Frame::new(9, Body::Ping)).await;
    assert_eq!(again.frame().await, Frame::new(9, Body::Pong));
}

#[tokio::test]
async fn a_push_the_socket_cannot_take_whole_wakes_a_parked_connection() {
    let node = start(config()).await;
    let http = Http::new(&node);
    // A small receive buffer that the client does not read at first: the direct write takes
    // only part of the pushes, the rest waits in the queue for a new task.
    let mut client = TcpClient::open_with_recv_buffer(node.tcp_addr().unwrap(), 4096).await;
    client.send(&connect_frame("alice", "phone", 5_000)).await;
    expect_connected(client.frame().await);
    wait_parked(&node, 1).await;
    let big = "x".repeat(8_000);
    for i in 0..20 {
        http.push(&format!(r#"{{"users":["alice"],"payload":"{i}:{big}"}}"#))
            .await;
    }
    for i in 0..20 {
        let payload = payload_of(client.frame().await);
        assert!(
            payload.starts_with(&format!("\"{i}:")),
            "push {i} out of order"
        );
        assert_eq!(payload.len(), big.len() + format!("\"{i}:\"").len());
    }
    // All written: it parks again.
    wait_parked(&node, 1).await;
}

#[tokio::test]
async fn a_connection_parks_right_after_its_handshake_its_heartbeats_and_its_subscribes() {
    // The sweep would wait a minute: parking sooner is the task's own doing.
    let mut config = config();
    config.gateway.park_after = Duration::from_secs(60);
    let node = start(config).await;
    let addr = node.tcp_addr().unwrap();
    let (mut tcp, _) = TcpClient::connected(addr, "alice", "phone", 5_000).await;
    wait_parked(&node, 1).await;

    // The pong comes from a woken task, which parks again at once.
    tcp.send(&Frame::new(7, Body::Ping)).await;
    assert_eq!(tcp.frame().await, Frame::new(7, Body::Pong));
    wait_parked(&node, 1).await;

    // So does a subscribe: the fan-out's `subscribed` reaches the parked connection without
    // waking it, and so do the topic's publications.
    tcp.send(&Frame::new(
        8,
        Body::Subscribe(tether_proto::Subscribe {
            app: APP.into(),
            topic: "news".into(),
            since: None,
            token: None,
        }),
    ))
    .await;
    let reply = tcp.frame().await;
    assert!(matches!(reply.body, Body::Subscribed(_)), "{reply:?}");
    assert_eq!(reply.id, 8);
    wait_parked(&node, 1).await;
    let http = Http::new(&node);
    let published = http
        .post_raw(
            &format!("/v1/apps/{APP}/topics/news/publish"),
            Some(API_KEY),
            r#"{"payload":"headline"}"#,
        )
        .await;
    assert_eq!(published.status, 200, "{:?}", published.body);
    match tcp.frame().await.body {
        Body::Publication(p) => {
            assert!(
                String::from_utf8_lossy(&p.payload).contains("headline"),
                "{p:?}"
            );
        }
        other => panic!("expected the publication, got {other:?}"),
    }
    wait_parked(&node, 1).await;

    // Anything else (an ack) keeps the task until the sweep finds it idle.
    tcp.send(&Frame::new(
        9,
        Ack {
            app: APP.into(),
            seq: 0,
        },
    ))
    .await;
    wait_parked(&node, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.parked_connections(), 0, "parked without being asked");

    // Parking at once is off with parking itself.
    let mut config = Config::for_tests();
    config.gateway.park_after = Duration::ZERO;
    let node = start(config).await;
    let addr = node.tcp_addr().unwrap();
    let (mut tcp, _) = TcpClient::connected(addr, "bob", "phone", 5_000).await;
    tcp.send(&Frame::new(7, Body::Ping)).await;
    assert_eq!(tcp.frame().await, Frame::new(7, Body::Pong));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.parked_connections(), 0);
}

/// The next WebSocket message of any kind, control frames included.
async fn next_raw(ws: &mut WsClient) -> tokio_tungstenite::tungstenite::Message {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, ws.ws.next())
        .await
        .expect("no WebSocket message in time")
        .expect("the stream ended")
        .expect("a WebSocket error")
}

#[tokio::test]
async fn a_parked_websocket_answers_control_frames_and_reads_fragmented_messages() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame as WsFrame, FrameHeader};

    let node = start(config()).await;
    let http = Http::new(&node);
    // JSON over text messages: the encoding the connect chose must survive parking.
    let mut ws = WsClient::open(&node).await;
    ws.send_text(&format!(
        r#"{{"op":"connect","id":1,"version":1,"device":"browser","heartbeat_ms":5000,"bindings":[{{"app":"{APP}","token":"{}"}}]}}"#,
        token("alice")
    ))
    .await;
    let connected = ws.json().await;
    assert_eq!(connected["op"], "connected", "{connected}");
    wait_parked(&node, 1).await;

    // A push written directly goes out as a text message.
    http.push(r#"{"users":["alice"],"payload":"one"}"#).await;
    let push = ws.json().await;
    assert_eq!(push["op"], "push", "{push}");
    assert_eq!(
        node.parked_connections(),
        1,
        "a transient push started a task"
    );

    // A WebSocket ping wakes it and gets its pong, with the same payload.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await;
    match next_raw(&mut ws).await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    wait_parked(&node, 1).await;

    // A message in three fragments with a ping between them is one frame.
    let ping = r#"{"op":"ping","id":42}"#.as_bytes();
    let parts = [&ping[..5], &ping[5..12], &ping[12..]];
    let fragment = |opcode: OpCode, fin: bool, part: &[u8]| {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            ..FrameHeader::default()
        };
        Message::Frame(WsFrame::from_payload(header, part.to_vec().into()))
    };
    let messages = [
        fragment(OpCode::Data(Data::Text), false, parts[0]),
        Message::Ping(b"p".to_vec().into()),
        fragment(OpCode::Data(Data::Continue), false, parts[1]),
        fragment(OpCode::Data(Data::Continue), true, parts[2]),
    ];
    for message in messages {
        ws.ws.feed(message).await.expect("feed");
    }
    ws.ws.flush().await.expect("flush");
    let mut replies = vec![next_raw(&mut ws).await, next_raw(&mut ws).await];
    replies.sort_by_key(|m| matches!(m, Message::Text(_)));
    assert!(
        matches!(&replies[0], Message::Pong(p) if &p[..] == b"p"),
        "{replies:?}"
    );
    let pong = match &replies[1] {
        Message::Text(text) => serde_json::from_str::<serde_json::Value>(text.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    };
    assert_eq!(
        (&pong["op"], &pong["id"]),
        (&"pong".into(), &42.into()),
        "{pong}"
    );
    wait_parked(&node, 1).await;

    // A kick reaches it parked: a disconnect, then a close frame with the same code.
    http.kick("alice").await;
    let disconnect = ws.json().await;
    assert_eq!(disconnect["op"], "disconnect", "{disconnect}");
    ws.expect_close(Code::KICKED).await;
}

#[tokio::test]
async fn a_websocket_client_that_closes_gets_its_close_back_parked_or_not_yet_connected() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let node = start(config()).await;
    let close = || {
        Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
    };
    // Before its `connect`, too.
    let mut early = WsClient::open(&node).await;
    early.send(close()).await;
    match next_raw(&mut early).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }

    let (mut ws, _) = WsClient::connected(&node, "alice", "browser", 5_000).await;
    wait_parked(&node, 1).await;
    ws.send(close()).await;
    match next_raw(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    wait_connections(&node, 0).await;
}

/// A client that does not wait for the upgrade's answer: its first frame arrives with its
/// request, is kept, and is answered. Written by hand, with a masked frame, as a browser would.
#[tokio::test]
async fn a_websocket_frame_sent_with_the_upgrade_request_is_not_lost() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    let node = start(config()).await;
    let mut socket = tokio::net::TcpStream::connect(node.ws_addr().unwrap())
        .await
        .unwrap();
    let connect = encode(&connect_frame("alice", "raw", 5_000));
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut request =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    request.push(0x82);
    assert!(connect.len() >= 126 && connect.len() <= 0xFFFF);
    request.push(0x80 | 126);
    request.extend_from_slice(&(connect.len() as u16).to_be_bytes());
    request.extend_from_slice(&mask);
    request.extend(connect.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&request).await.unwrap();

    // The answer's head, then one binary message: `connected`.
    let mut got = Vec::new();
    let head_end = loop {
        let mut buf = [0u8; 1024];
        let n = timeout(WAIT, socket.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let mut message = got[head_end..].to_vec();
    let whole = loop {
        if message.len() >= 2 {
            let len = match message[1] {
                126 if message.len() >= 4 => {
                    Some(4 + usize::from(u16::from_be_bytes([message[2], message[3]])))
                }
                126 => None,
                n => Some(2 + usize::from(n)),
            };
            if let Some(len) = len.filter(|len| message.len() >= *len) {
                break len;
            }
        }
        let mut buf = [0u8; 1024];
        let n = timeout(WAIT, socket.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before connected");
        message.extend_from_slice(&buf[..n]);
    };
    assert_eq!(message[0], 0x82, "a whole binary message");
    let header = if message[1] == 126 { 4 } else { 2 };
    let frame = tether_proto::binary::parse(
        bytes::Bytes::copy_from_slice(&message[header..whole]),
        1 << 20,
    )
    .unwrap();
    expect_connected(frame);
}
