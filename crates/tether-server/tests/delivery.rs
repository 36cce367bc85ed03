//! End-to-end delivery tests: pushes through the HTTP API reach raw TCP and WebSocket clients
//! (binary and JSON); presence, kick, slow consumers, graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tether_proto::{Body, Code, Frame, PayloadKind};
use tether_server::Config;
use tokio::time::{Instant, timeout};

fn push_body(user: &str, payload: &str) -> String {
    format!(r#"{{"users":["{user}"],"payload":{payload},"qos":0}}"#)
}

#[tokio::test]
async fn a_tcp_client_receives_a_json_push_with_the_exact_bytes() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;

    let reply = http
        .push(r#"{"users":["alice"],"payload":{"n":1},"qos":0}"#)
        .await;
    assert_eq!(reply["connections"], 1, "{reply}");
    let id: u64 = reply["id"]
        .as_str()
        .expect("the message id is a decimal string")
        .parse()
        .unwrap();

    let push = expect_push(client.frame().await);
    assert_eq!(push.app, APP);
    assert_eq!(push.kind, PayloadKind::Json);
    assert_eq!(&push.payload[..], br#"{"n":1}"#);
    assert_eq!(push.msg_id, id);
    assert_eq!((push.qos, push.seq), (0, 0));
    assert!(push.created_ms > 0);

    // Nobody else is pushed to, and a push to nobody online reaches nobody.
    let reply = http.push(&push_body("bob", "2")).await;
    assert_eq!(reply["connections"], 0);
    assert!(
        client
            .recv_within(Duration::from_millis(50))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_binary_websocket_client_receives_json_and_binary_pushes() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let (mut ws, connected) = WsClient::connected(&node, "alice", "browser", 0).await;
    assert_eq!(connected.bindings[0].user, "alice");

    let reply = http.push(&push_body("alice", r#"{"n":1}"#)).await;
    assert_eq!(reply["connections"], 1);
    let push = expect_push(ws.frame().await);
    assert_eq!(push.kind, PayloadKind::Json);
    assert_eq!(&push.payload[..], br#"{"n":1}"#);

    let reply = http
        .push(r#"{"users":["alice"],"payload_base64":"AAEC/w==","qos":0}"#)
        .await;
    assert_eq!(reply["connections"], 1);
    let push = expect_push(ws.frame().await);
    assert_eq!(push.kind, PayloadKind::Binary);
    assert_eq!(&push.payload[..], &[0, 1, 2, 255]);

    ws.send_frame(&Frame::new(9, Body::Ping)).await;
    assert_eq!(ws.frame().await, Frame::new(9, Body::Pong));
}

#[tokio::test]
async fn a_json_websocket_client_connects_receives_pushes_and_pings() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let mut ws = WsClient::open(&node).await;
    let token = token("alice");
    ws.send_text(&format!(
        r#"{{"op":"connect","id":1,"version":1,"device":"web-1","heartbeat_ms":0,"bindings":[{{"app":"demo","token":"{token}"}}]}}"#
    ))
    .await;
    let connected = ws.json().await;
    assert_eq!(connected["op"], "connected", "{connected}");
    assert_eq!(connected["id"], 1);
    assert_eq!(connected["node"], "tether-1");
    assert_eq!(connected["heartbeat_ms"], 25_000);
    assert_eq!(
        connected["bindings"],
        json!([{"app": "demo", "user": "alice"}])
    );

    let reply = http
        .push(r#"{"users":["alice"],"payload":{"n":1,"tags":["a","b"]},"qos":0}"#)
        .await;
    assert_eq!(reply["connections"], 1);
    let push = ws.json().await;
    assert_eq!(push["op"], "push", "{push}");
    assert_eq!(push["app"], "demo");
    assert_eq!(push["payload"], json!({"n": 1, "tags": ["a", "b"]}));
    assert_eq!(push["msg_id"], reply["id"]);

    let reply = http
        .push(r#"{"users":["alice"],"payload_base64":"AAEC/w==","qos":0}"#)
        .await;
    assert_eq!(reply["connections"], 1);
    let push = ws.json().await;
    assert_eq!(push["op"], "push", "{push}");
    assert_eq!(push["payload_base64"], "AAEC/w==");
    assert!(push.get("payload").is_none_or(Value::is_null), "{push}");

    ws.send_text(r#"{"op":"ping","id":42}"#).await;
    let pong = ws.json().await;
    assert_eq!(pong["op"], "pong", "{pong}");
    assert_eq!(pong["id"], 42);
}

#[tokio::test]
async fn a_push_to_several_users_reaches_every_device() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let (mut a1, _) = TcpClient::connected(addr, "alice", "phone", 0).await;
    let (mut a2, _) = TcpClient::connected(addr, "alice", "tablet", 0).await;
    let (mut b, _) = WsClient::connected(&node, "bob", "browser", 0).await;
    let reply = http
        .push(r#"{"users":["alice","bob","alice","nobody"],"payload":"hi"}"#)
        .await;
    assert_eq!(reply["connections"], 3, "{reply}");
    for push in [
        expect_push(a1.frame().await),
        expect_push(a2.frame().await),
        expect_push(b.frame().await),
    ] {
        assert_eq!(&push.payload[..], br#""hi""#);
    }
    // A user listed twice gets the message once.
    assert!(a1.recv_within(Duration::from_millis(50)).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Presence and kick

#[tokio::test]
async fn presence_lists_each_connection_with_device_and_transport() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let presence = http.presence("alice").await;
    assert_eq!(presence["online"], false);
    assert_eq!(presence["connections"], json!([]));

    let (tcp, tcp_connected) =
        TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
    let (mut ws, ws_connected) = WsClient::connected(&node, "alice", "browser", 0).await;
    let presence = http.presence("alice").await;
    assert_eq!(presence["app"], "demo");
    assert_eq!(presence["user"], "alice");
    assert_eq!(presence["online"], true);
    let mut seen: Vec<(String, String, u64, String)> = presence["connections"]
        .as_array()
        .expect("a list of connections")
        .iter()
        .map(|c| {
            (
                c["device"].as_str().unwrap().to_owned(),
                c["transport"].as_str().unwrap().to_owned(),
                c["conn"].as_u64().unwrap(),
                c["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "browser".into(),
                "ws".into(),
                ws_connected.conn_id,
                "tether-1".into()
            ),
            (
                "phone".into(),
                "tcp".into(),
                tcp_connected.conn_id,
                "tether-1".into()
            ),
        ]
    );
    assert_eq!(http.presence("bob").await["online"], false);

    drop(tcp);
    let _ = timeout(WAIT, ws.ws.close(None)).await;
    let presence = http.wait_presence("alice", 0).await;
    assert_eq!(presence["online"], false);
    assert_eq!(node.connections(), 0);
}

#[tokio::test]
async fn kick_closes_every_connection_of_the_user_with_4207() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let (mut tcp, _) = TcpClient::connected(addr, "alice", "phone", 0).await;
    let (mut ws, _) = WsClient::connected(&node, "alice", "browser", 0).await;
    let (mut bob, _) = TcpClient::connected(addr, "bob", "phone", 0).await;

    assert_eq!(http.kick("alice").await, json!({"kicked": 2}));
    tcp.expect_disconnect(Code::KICKED).await;
    ws.expect_disconnect(Code::KICKED).await;
    http.wait_presence("alice", 0).await;
    assert_eq!(http.presence("alice").await["online"], false);
    assert_eq!(http.kick("alice").await, json!({"kicked": 0}));

    // Others are untouched.
    bob.send(&Frame::new(3, Body::Ping)).await;
    assert_eq!(bob.frame().await, Frame::new(3, Body::Pong));
    assert_eq!(http.presence("bob").await["online"], true);
}

// ---------------------------------------------------------------------------------------------
// Slow consumer

#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_as_slow_with_4001() {
    let mut config = Config::for_tests();
    config.limits.max_frame = 4096;
    config.limits.max_payload = 2048;
    config.limits.api_body_bytes = 8192;
    config.limits.outbound_queue_bytes = 16 * 1024;
    let node = start(config).await;
    let http = Http::new(&node);
    let started = Instant::now();

    let mut slow = TcpClient::open_with_recv_buffer(node.tcp_addr().unwrap(), 4096).await;
    slow.send(&connect_frame("alice", "slow", 0)).await;
    expect_connected(slow.frame().await);

    // Push without reading until the server gives up on the client: the kernel buffers fill,
    // then the connection's queue, then the push reaches nobody.
    let body = push_body("alice", &format!("\"{}\"", "x".repeat(1500)));
    let mut pushes = 0;
    loop {
        let batch = futures_util::future::join_all((0..8).map(|_| http.push(&body))).await;
        pushes += batch.len();
        if batch.iter().any(|r| r["connections"] == 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "still not marked slow after {pushes} pushes"
        );
    }
    assert_eq!(http.push(&body).await["connections"], 0);

    // Now read: what was already in the kernel buffers, then the reason, then EOF.
    let mut delivered = 0;
    let disconnect = loop {
        let frame = slow.frame().await;
        match frame.body {
            Body::Push(_) => delivered += 1,
            Body::Disconnect(d) => break d,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(disconnect.code, Code::SLOW, "{}", disconnect.reason);
    slow.expect_eof().await;
    assert!(delivered < pushes, "{delivered} of {pushes} delivered");
    http.wait_presence("alice", 0).await;

    let metrics = http.metrics().await;
    let overflows = metric(&metrics, "tether_queue_overflows_total").unwrap_or(0.0);
    assert!(
        overflows >= 1.0,
        "tether_queue_overflows_total = {overflows}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// A client whose socket is full is still heard: while the server waits to write to it, it
/// keeps reading the client's pings, so a reader that is merely slow is not mistaken for a
/// silent one.
#[tokio::test]
async fn pings_are_read_while_a_write_waits_on_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = Config::for_tests();
    config.limits.max_frame = 4096;
    config.limits.max_payload = 2048;
    config.limits.api_body_bytes = 8192;
    config.limits.outbound_queue_bytes = 8 * 1024 * 1024;
    config.gateway.heartbeat_min = Duration::from_millis(100);
    config.gateway.heartbeat_missed = 3;
    config.gateway.write_timeout = Duration::from_secs(10);
    let node = start(config).await;
    let http = Http::new(&node);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(node.tcp_addr().unwrap()).await.unwrap();
    stream
        .write_all(&encode(&connect_frame("alice", "slow-reader", 100)))
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    let next_frame = async |stream: &mut tokio::net::tcp::OwnedReadHalf,
                            buf: &mut bytes::BytesMut| loop {
        if let Some(frame) = tether_proto::binary::decode(buf, 1 << 20).unwrap() {
            return Some(frame);
        }
        if stream.read_buf(buf).await.unwrap() == 0 {
            return None;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let connected = timeout(WAIT, next_frame(&mut rd, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expect_connected(connected).heartbeat_ms, 100);

    // Ping every 50 ms from another task, and read nothing until the server's write to us has
    // been blocked for several heartbeat limits (300 ms each).
    let pinger = tokio::spawn(async move {
        for id in 1.. {
            let ping = encode(&Frame::new(id, Body::Ping));
            if wr.write_all(&ping).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let body = push_body("alice", &format!("\"{}\"", "x".repeat(1500)));
    let mut pushes = 0;
    while pushes < 3000 {
        let batch = futures_util::future::join_all((0..10).map(|_| http.push(&body))).await;
        for reply in &batch {
            assert_eq!(
                reply["connections"], 1,
                "the connection was dropped: {reply}"
            );
        }
        pushes += batch.len();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        http.push(&body).await["connections"],
        1,
        "dropped while we did not read"
    );
    pushes += 1;

    // Now read everything: every push arrives and no disconnect comes.
    let mut delivered = 0;
    while delivered < pushes {
        let frame = timeout(WAIT, next_frame(&mut rd, &mut buf))
            .await
            .expect("a frame")
            .expect("the server closed the connection");
        match frame.body {
            Body::Push(_) => delivered += 1,
            Body::Pong => {}
            other => panic!("unexpected {other:?} after {delivered} pushes"),
        }
    }
    pinger.abort();
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test]
async fn shutdown_tells_every_client_to_come_back_later_and_finishes_in_time() {
    let mut config = Config::for_tests();
    let spread = Duration::from_millis(500);
    let grace = Duration::from_secs(2);
    config.gateway.shutdown_spread = spread;
    config.gateway.shutdown_grace = grace;
    let node = start(config).await;
    let http = Http::new(&node);
    let tcp_addr = node.tcp_addr().unwrap();
    let ws_addr = node.ws_addr().unwrap();

    let (mut tcp, _) = TcpClient::connected(tcp_addr, "alice", "phone", 0).await;
    let (mut ws, _) = WsClient::connected(&node, "alice", "browser", 0).await;
    let mut json_ws = WsClient::open(&node).await;
    json_ws
        .send_text(&format!(
            r#"{{"op":"connect","id":1,"device":"web","bindings":[{{"app":"demo","token":"{}"}}]}}"#,
            token("bob")
        ))
        .await;
    assert_eq!(json_ws.json().await["op"], "connected");
    // A client in the middle of its handshake (no connect yet).
    let mut handshaking = TcpClient::open(tcp_addr).await;
    // An HTTP keep-alive connection must not hold the shutdown up either.
    assert_eq!(http.push(&push_body("alice", "1")).await["connections"], 2);
    expect_push(tcp.frame().await);
    expect_push(ws.frame().await);

    node.shutdown();
    let began = Instant::now();

    let d = tcp.expect_disconnect(Code::SHUTDOWN).await;
    assert!(u128::from(d.retry_after_ms) <= spread.as_millis(), "{d:?}");
    let d = ws.expect_disconnect(Code::SHUTDOWN).await;
    assert!(u128::from(d.retry_after_ms) <= spread.as_millis(), "{d:?}");
    let d = json_ws.json().await;
    assert_eq!(d["op"], "disconnect", "{d}");
    assert_eq!(d["code"], 4100);
    assert!(d["retry_after_ms"].as_u64().unwrap() <= spread.as_millis() as u64);
    assert_eq!(d["reconnect"], "redispatch");
    json_ws.expect_close(Code::SHUTDOWN).await;
    handshaking.expect_disconnect(Code::SHUTDOWN).await;

    timeout(grace + Duration::from_millis(500), node.wait())
        .await
        .expect("the node did not stop within its grace period");
    let took = began.elapsed();
    assert!(took < grace, "shutdown took {took:?}");

    // Nothing accepts new connections any more.
    for addr in [tcp_addr, ws_addr] {
        match timeout(WAIT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
            Ok(Ok(_)) => panic!("{addr} still accepts connections after shutdown"),
            Err(_) => panic!("connect to {addr} hung"),
        }
    }
}

#[tokio::test]
async fn a_client_connecting_while_the_node_shuts_down_is_told_too() {
    // The connect frame is already on the wire when the shutdown begins, so the node may pick
    // either the connection or the shutdown first. Whatever it picks, the client must not be
    // left connected to a node that is going away. Repeated because the order is up to the
    // scheduler.
    for round in 0..20 {
        let mut config = Config::for_tests();
        let grace = Duration::from_secs(1);
        config.gateway.shutdown_grace = grace;
        config.gateway.shutdown_spread = Duration::ZERO;
        let node = start(config).await;
        let stream = timeout(
            WAIT,
            tokio::net::TcpStream::connect(node.tcp_addr().unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        let hello = encode(&connect_frame("alice", "phone", 0));
        assert_eq!(stream.try_write(&hello).unwrap(), hello.len());
        node.shutdown();
        let began = Instant::now();
        let mut client = TcpClient::from_stream(stream);

        let mut outcome = Vec::new();
        loop {
            match client.recv_within(grace / 2).await {
                None => panic!(
                    "round {round}: the client is still connected {:?} after the shutdown \
                     began, having seen {outcome:?}",
                    began.elapsed()
                ),
                // Refused before the node looked at it (a reset from the closed listener).
                Some(Err(_)) | Some(Ok(None)) => break,
                Some(Ok(Some(frame))) => match frame.body {
                    Body::Connected(_) => outcome.push("connected"),
                    Body::Disconnect(d) => {
                        assert_eq!(d.code, Code::SHUTDOWN, "round {round}: {d:?}");
                        outcome.push("disconnect");
                    }
                    other => panic!("round {round}: unexpected {other:?}"),
                },
            }
        }
        timeout(grace + Duration::from_millis(500), node.wait())
            .await
            .expect("the node did not stop within its grace period");
        assert!(
            began.elapsed() < grace,
            "round {round}: shutdown took {:?} (the whole grace period), client saw {outcome:?}",
            began.elapsed()
        );
    }
}
