//! End-to-end protocol tests of the gateway: a real node on port 0, raw wire bytes.
//!
//! Handshake (negotiation, refusals and their codes), frame-size limit, heartbeats, connection
//! limits.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::Value;
use tether_proto::{Binding, Body, Code, Connect, Frame, PROTOCOL_VERSION};
use tether_server::Config;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn heartbeat_proposals_are_clamped_and_zero_means_default() {
    let node = start(Config::for_tests()).await;
    let addr = node.tcp_addr().unwrap();
    let defaults = Config::for_tests().gateway;

    let (_a, connected) = TcpClient::connected(addr, "alice", "phone", 1).await;
    assert_eq!(
        u128::from(connected.heartbeat_ms),
        defaults.heartbeat_min.as_millis()
    );
    assert_eq!(connected.max_frame, Config::for_tests().limits.max_frame);
    assert_eq!(connected.node, "tether-1");
    assert_eq!(connected.bindings.len(), 1);
    assert_eq!(connected.bindings[0].app, APP);
    assert_eq!(connected.bindings[0].user, "alice");

    let (_b, connected) = TcpClient::connected(addr, "bob", "phone", 0).await;
    assert_eq!(
        u128::from(connected.heartbeat_ms),
        defaults.heartbeat_default.as_millis()
    );

    let (_c, connected) = TcpClient::connected(addr, "carol", "phone", u32::MAX).await;
    assert_eq!(
        u128::from(connected.heartbeat_ms),
        defaults.heartbeat_max.as_millis()
    );
    assert_eq!(node.connections(), 3);
}

// ---------------------------------------------------------------------------------------------
// Handshake timeout, on tokio's paused clock with the real 10 s default.

#[tokio::test(start_paused = true)]
async fn no_connect_within_the_handshake_timeout_closes_with_4003() {
    let node = start(Config::for_tests()).await;
    let handshake_timeout = Config::for_tests().gateway.handshake_timeout;
    let started = Instant::now();
    let mut client = TcpClient::open(node.tcp_addr().unwrap()).await;

    // Just before the deadline the connection is still open and silent.
    tokio::time::sleep(handshake_timeout - Duration::from_millis(100)).await;
    match client.stream.try_read(&mut [0; 16]) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("closed before the handshake timeout: {other:?}"),
    }

    // The clock auto-advances while the runtime is idle; 60 virtual seconds bound the wait.
    let frame = timeout(Duration::from_secs(60), client.recv())
        .await
        .expect("no disconnect at all")
        .expect("read failed")
        .expect("closed without a disconnect frame");
    let elapsed = started.elapsed();
    let d = expect_disconnect(frame);
    assert_eq!(d.code, Code::HANDSHAKE_TIMEOUT, "{}", d.reason);
    assert!(
        elapsed >= handshake_timeout && elapsed < handshake_timeout + Duration::from_secs(1),
        "closed after {elapsed:?} of virtual time"
    );
    let eof = timeout(Duration::from_secs(60), client.recv()).await;
    assert!(matches!(eof, Ok(Ok(None))), "expected EOF, got {eof:?}");
}

#[tokio::test(start_paused = true)]
async fn a_websocket_without_connect_is_closed_with_4003() {
    let node = start(Config::for_tests()).await;
    let handshake_timeout = Config::for_tests().gateway.handshake_timeout;
    let started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&node))
        .await
        .expect("upgrade");
    let first = timeout(
        Duration::from_secs(60),
        futures_util::StreamExt::next(&mut ws),
    )
    .await
    .expect("no disconnect at all");
    let elapsed = started.elapsed();
    // Its encoding unknown, the client is told in the close frame alone, which a JSON client
    // reads as well as a binary one.
    let Some(Ok(Message::Close(Some(close)))) = first else {
        panic!("expected a close frame, got {first:?}");
    };
    assert_eq!(u16::from(close.code), Code::HANDSHAKE_TIMEOUT.0);
    assert_eq!(
        close.reason.as_str(),
        "no connect frame within the handshake timeout"
    );
    assert!(
        elapsed >= handshake_timeout && elapsed < handshake_timeout + Duration::from_secs(1),
        "closed after {elapsed:?} of virtual time"
    );
}

// ---------------------------------------------------------------------------------------------
// Refused handshakes: each gets a disconnect with its own code, then the connection closes.

async fn refused(node: &tether_server::Node, frame: &Frame, code: Code) {
    let mut client = TcpClient::open(node.tcp_addr().unwrap()).await;
    client.send(frame).await;
    let d = client.expect_disconnect(code).await;
    assert_eq!(d.retry_after_ms, 0);
    assert!(!d.reason.is_empty());
}

fn binding(app: &str, token: String) -> Binding {
    Binding {
        app: app.into(),
        token,
        last_seq: None,
    }
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused_with_4204() {
    let node = start(Config::for_tests()).await;
    let forged = token_for(APP, "not-the-demo-secret-000", "alice");
    let frame = connect_with("phone", 0, vec![binding(APP, forged)]);
    refused(&node, &frame, Code::BAD_TOKEN).await;
    let frame = connect_with("phone", 0, vec![binding(APP, "not.a.jwt".into())]);
    refused(&node, &frame, Code::BAD_TOKEN).await;
}

#[tokio::test]
async fn an_expired_token_is_refused_with_4205() {
    let node = start(Config::for_tests()).await;
    let frame = connect_with("phone", 0, vec![binding(APP, expired_token("alice"))]);
    refused(&node, &frame, Code::TOKEN_EXPIRED).await;
}

#[tokio::test]
async fn an_unknown_app_is_refused_with_4206() {
    let node = start(Config::for_tests()).await;
    let frame = connect_with("phone", 0, vec![binding("nope", token("alice"))]);
    refused(&node, &frame, Code::UNKNOWN_APP).await;
}

#[tokio::test]
async fn a_first_frame_other_than_connect_is_refused_with_4208() {
    let node = start(Config::for_tests()).await;
    refused(&node, &Frame::new(7, Body::Ping), Code::EXPECTED_CONNECT).await;
}

#[tokio::test]
async fn a_connect_sent_twice_closes_with_4208() {
    let node = start(Config::for_tests()).await;
    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
    client.send(&connect_frame("alice", "phone", 0)).await;
    client.expect_disconnect(Code::EXPECTED_CONNECT).await;
}

#[tokio::test]
async fn zero_bindings_or_too_many_are_refused_with_4209() {
    let node = start(Config::for_tests()).await;
    refused(&node, &connect_with("phone", 0, vec![]), Code::BAD_BINDINGS).await;
    let max = Config::for_tests().limits.max_bindings;
    let many = (0..=max).map(|_| binding(APP, token("alice"))).collect();
    refused(&node, &connect_with("phone", 0, many), Code::BAD_BINDINGS).await;
}

#[tokio::test]
async fn an_unsupported_version_is_refused_with_4202() {
    let node = start(Config::for_tests()).await;
    // The version field of `connect`.
    let frame = Frame::new(
        1,
        Connect {
            version: PROTOCOL_VERSION + 1,
            device: "phone".into(),
            heartbeat_ms: 0,
            bindings: vec![binding(APP, token("alice"))],
        },
    );
    refused(&node, &frame, Code::UNSUPPORTED_VERSION).await;

    // The encoding version in the binary header.
    let mut bytes = encode(&connect_frame("alice", "phone", 0)).to_vec();
    bytes[4] = PROTOCOL_VERSION + 1;
    let mut client = TcpClient::open(node.tcp_addr().unwrap()).await;
    client.send_raw(&bytes).await;
    client.expect_disconnect(Code::UNSUPPORTED_VERSION).await;
}

#[tokio::test]
async fn refusals_over_json_websocket_carry_the_code_in_the_frame_and_the_close() {
    let node = start(Config::for_tests()).await;
    let mut ws = WsClient::open(&node).await;
    let forged = token_for(APP, "not-the-demo-secret-000", "alice");
    ws.send_text(&format!(
        r#"{{"op":"connect","id":1,"device":"web","bindings":[{{"app":"demo","token":"{forged}"}}]}}"#
    ))
    .await;
    let d: Value = ws.json().await;
    assert_eq!(d["op"], "disconnect");
    assert_eq!(d["code"], 4204);
    assert_eq!(d["reconnect"], "no");
    ws.expect_close(Code::BAD_TOKEN).await;
}

// ---------------------------------------------------------------------------------------------
// Frame size

#[tokio::test]
async fn an_oversized_length_prefix_alone_closes_with_4201() {
    let node = start(Config::for_tests()).await;
    let max = Config::for_tests().limits.max_frame;

    // Before the handshake: the prefix alone, no body will ever come.
    let mut client = TcpClient::open(node.tcp_addr().unwrap()).await;
    client.send_raw(&(max + 1).to_be_bytes()).await;
    client.expect_disconnect(Code::FRAME_TOO_LARGE).await;

    // After the handshake, the same.
    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
    client.send_raw(&u32::MAX.to_be_bytes()).await;
    client.expect_disconnect(Code::FRAME_TOO_LARGE).await;

    // A frame of exactly max_frame is not refused for its size (it is a malformed ping).
    let mut client = TcpClient::open(node.tcp_addr().unwrap()).await;
    let mut frame = encode(&Frame::new(1, Body::Ping)).to_vec();
    frame[..4].copy_from_slice(&max.to_be_bytes());
    frame.resize(max as usize + 4, 0);
    client.send_raw(&frame).await;
    client.expect_disconnect(Code::PROTOCOL).await;
}

#[tokio::test]
async fn an_oversized_websocket_message_closes_the_connection() {
    let node = start(Config::for_tests()).await;
    let max = Config::for_tests().limits.max_frame as usize;
    let (mut ws, _) = WsClient::connected(&node, "alice", "browser", 0).await;
    let _ = timeout(WAIT, ws.ws.send(Message::binary(vec![0u8; max + 4 + 1]))).await;
    // A WebSocket-level refusal (RFC 6455's 1009): a close frame, no `disconnect` before it.
    ws.expect_close(Code::WS_TOO_BIG).await;
    match ws.message().await {
        None | Some(Err(_)) => {}
        Some(Ok(other)) => panic!("expected the end of the stream, got {other:?}"),
    }
    let deadline = Instant::now() + WAIT;
    while node.connections() != 0 {
        assert!(Instant::now() < deadline, "the connection is still open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Heartbeats

#[tokio::test]
async fn a_silent_client_times_out_with_4002_and_a_pinging_one_stays() {
    let mut config = Config::for_tests();
    config.gateway.heartbeat_min = Duration::from_millis(100);
    config.gateway.heartbeat_missed = 3;
    let node = start(config).await;
    let addr = node.tcp_addr().unwrap();

    let silent = async {
        let (mut client, connected) = TcpClient::connected(addr, "alice", "silent", 100).await;
        assert_eq!(connected.heartbeat_ms, 100);
        let since = Instant::now();
        client.expect_disconnect(Code::HEARTBEAT_TIMEOUT).await;
        since.elapsed()
    };
    let pinging = async {
        let (mut client, _) = TcpClient::connected(addr, "bob", "pinging", 100).await;
        let since = Instant::now();
        let mut id = 100;
        while since.elapsed() < Duration::from_millis(900) {
            id += 1;
            client.send(&Frame::new(id, Body::Ping)).await;
            let pong = client.frame().await;
            assert_eq!(pong, Frame::new(id, Body::Pong));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client
    };
    let (silent_for, mut pinging) = tokio::join!(silent, pinging);
    assert!(
        silent_for >= Duration::from_millis(280) && silent_for <= Duration::from_millis(650),
        "a silent client was closed after {silent_for:?}, expected ~300 ms"
    );
    // Still served after three times the idle limit.
    pinging.send(&Frame::new(1, Body::Ping)).await;
    assert_eq!(pinging.frame().await, Frame::new(1, Body::Pong));
    assert_eq!(node.connections(), 1);
}

// ---------------------------------------------------------------------------------------------
// Connection limits

#[tokio::test]
async fn the_global_connection_limit_refuses_with_4102() {
    let mut config = Config::for_tests();
    config.limits.max_connections = 2;
    let node = start(config).await;
    let addr = node.tcp_addr().unwrap();
    let (_a, _) = TcpClient::connected(addr, "alice", "one", 0).await;
    let (b, _) = TcpClient::connected(addr, "bob", "two", 0).await;

    let mut third = TcpClient::open(addr).await;
    let d = third.expect_disconnect(Code::CONNECTION_LIMIT).await;
    assert!(d.retry_after_ms > 0);

    // The WebSocket listener shares the limit: the upgrade is refused with 503.
    match tokio_tungstenite::connect_async(ws_url(&node)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503)
        }
        other => panic!("expected a refused upgrade, got {other:?}"),
    }

    // A slot comes back when a connection closes.
    drop(b);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut client = TcpClient::open(addr).await;
        client.send(&connect_frame("carol", "three", 0)).await;
        match client.frame().await.body {
            Body::Connected(_) => break,
            Body::Disconnect(d) if d.code == Code::CONNECTION_LIMIT => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_per_ip_limit_refuses_with_4004() {
    let mut config = Config::for_tests();
    config.limits.max_connections_per_ip = 1;
    let node = start(config).await;
    let addr = node.tcp_addr().unwrap();
    let (_a, _) = TcpClient::connected(addr, "alice", "one", 0).await;

    let mut second = TcpClient::open(addr).await;
    second.expect_disconnect(Code::IP_LIMIT).await;

    match tokio_tungstenite::connect_async(ws_url(&node)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => panic!("expected a refused upgrade, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_client_that_already_sent_connect_still_reads_the_reason() {
    // Real clients send `connect` right after the TCP handshake, before the server has decided
    // anything: the refusal must still reach them (not be lost to a reset).
    let mut config = Config::for_tests();
    config.limits.max_connections_per_ip = 1;
    let node = start(config).await;
    let addr = node.tcp_addr().unwrap();
    let (_a, _) = TcpClient::connected(addr, "alice", "one", 0).await;
    for _ in 0..20 {
        let mut client = TcpClient::open(addr).await;
        client.send(&connect_frame("bob", "two", 0)).await;
        match timeout(WAIT, client.recv()).await {
            Ok(Ok(Some(frame))) => assert_eq!(expect_disconnect(frame).code, Code::IP_LIMIT),
            other => panic!("the refusal was lost: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames a connected client must not send

#[tokio::test]
async fn bad_frames_after_the_handshake_close_with_their_code() {
    let node = start(Config::for_tests()).await;
    let addr = node.tcp_addr().unwrap();

    // An op number nobody knows.
    let (mut client, _) = TcpClient::connected(addr, "alice", "phone", 0).await;
    let mut frame = encode(&Frame::new(2, Body::Ping)).to_vec();
    frame[5] = 99;
    client.send_raw(&frame).await;
    client.expect_disconnect(Code::UNKNOWN_OP).await;

    // Reserved flags set.
    let (mut client, _) = TcpClient::connected(addr, "alice", "phone", 0).await;
    let mut frame = encode(&Frame::new(2, Body::Ping)).to_vec();
    frame[7] = 1;
    client.send_raw(&frame).await;
    client.expect_disconnect(Code::PROTOCOL).await;

    // An op only servers send.
    let (mut client, connected) = TcpClient::connected(addr, "alice", "phone", 0).await;
    client.send(&Frame::new(2, connected)).await;
    client.expect_disconnect(Code::PROTOCOL).await;

    // JSON that does not parse, and an unknown op name.
    for (text, code) in [
        ("{\"op\":\"ping\"", Code::PROTOCOL),
        (r#"{"op":"teleport","id":1}"#, Code::UNKNOWN_OP),
    ] {
        let mut ws = WsClient::open(&node).await;
        ws.send_text(&format!(
            r#"{{"op":"connect","id":1,"device":"web","bindings":[{{"app":"demo","token":"{}"}}]}}"#,
            token("alice")
        ))
        .await;
        assert_eq!(ws.json().await["op"], "connected");
        ws.send_text(text).await;
        let d = ws.json().await;
        assert_eq!(d["op"], "disconnect", "{d}");
        assert_eq!(d["code"], code.0, "{d}");
        ws.expect_close(code).await;
    }
}

#[tokio::test]
async fn an_ack_for_an_app_not_bound_is_an_error_and_the_connection_stays() {
    let node = start(Config::for_tests()).await;
    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
    client
        .send(&Frame::new(
            5,
            tether_proto::Ack {
                app: "other".into(),
                seq: 1,
            },
        ))
        .await;
    let frame = client.frame().await;
    assert_eq!(frame.id, 5);
    let Body::Error(error) = frame.body else {
        panic!("expected an error, got {frame:?}");
    };
    assert_eq!(error.code, Code::BAD_REQUEST);
    client.send(&Frame::new(6, Body::Ping)).await;
    assert_eq!(client.frame().await, Frame::new(6, Body::Pong));
}

// ---------------------------------------------------------------------------------------------
// WebSocket encodings: a connection keeps the encoding its `connect` (or its subprotocol) set.

/// A binary-`connect` client that then sends a text message is closed with 1003 (RFC 6455:
/// data of a type the endpoint does not take), in a close frame alone: it is never answered
/// in the other encoding, and its message is never read as the other one.
#[tokio::test]
async fn a_binary_websocket_client_that_sends_text_is_closed_with_1003() {
    let node = start(Config::for_tests()).await;
    let (mut ws, _) = WsClient::connected(&node, "alice", "browser", 0).await;
    ws.send_text(r#"{"op":"ping","id":5}"#).await;
    ws.expect_close(Code::WS_UNSUPPORTED_DATA).await;
    assert!(ws.message().await.is_none(), "the stream goes on");
}

/// The same the other way round: a JSON client that sends one binary message.
#[tokio::test]
async fn a_json_websocket_client_that_sends_binary_is_closed_with_1003() {
    let node = start(Config::for_tests()).await;
    let mut ws = WsClient::open(&node).await;
    ws.send_text(&format!(
        r#"{{"op":"connect","id":1,"device":"web","bindings":[{{"app":"demo","token":"{}"}}]}}"#,
        token("alice")
    ))
    .await;
    assert_eq!(ws.json().await["op"], "connected");
    ws.send_frame(&Frame::new(5, Body::Ping)).await;
    ws.expect_close(Code::WS_UNSUPPORTED_DATA).await;
    assert!(ws.message().await.is_none(), "the stream goes on");
}
