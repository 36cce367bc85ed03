//! The client side end to end against local servers: the real bare writer, and minimal fake
//! MQTT and WebSocket servers that speak just enough of each protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::*;
use crate::broadcast::publish::Publisher;
use crate::payload::{self, Fields};
use crate::stats::Clock;
use crate::subscribers::{self, Collector, Snapshot};

pub(super) fn target(kind: Kind, addr: SocketAddr) -> Target {
    Target {
        kind,
        addrs: vec![addr],
        publish_addr: addr,
        topic: "bench".into(),
        app: "demo".into(),
        secret: String::new(),
        api_key: String::new(),
        tether_publish: TetherPublish::Topic,
        qos: 0,
        topics: 1,
        heartbeat_s: 60,
        sources: 0,
        tls: None,
        mqtt: false,
        connect_only: false,
        wait_connected: false,
        mqtt_session: false,
    }
}

fn message(clock: &Clock, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let fields = Fields {
        t: clock.now_us(),
        n,
        s: 1,
    };
    payload::write(&mut out, fields, 100);
    out
}

/// Waits until `done` holds for the collector's snapshot (at most 5 s), and returns it.
async fn wait_for(c: &Collector, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snap = c.snapshot();
        if done(&snap) || Instant::now() > deadline {
            return snap;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_writer_delivers_every_message_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || crate::bare_writer::serve(listener, 2));
    let t = Arc::new(target(Kind::Bare, addr));
    let clock = Clock::new();
    let c = Arc::new(Collector::new(clock));
    subscribers::open(
        t.clone(),
        0..20,
        0,
        c.clone(),
        Duration::from_secs(5),
        false,
    )
    .await;
    assert_eq!(c.connected(), 20);
    // The writer registers a subscriber once it has read its first byte.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = Publisher::open(&t).await.unwrap();
    for n in 0..5 {
        p.publish(&message(&clock, n)).await.unwrap();
    }
    let snap = wait_for(&c, |s| s.distinct >= 100).await;
    assert_eq!(snap.distinct, 100);
    assert_eq!((snap.duplicates, snap.unparsed), (0, 0));
    assert_eq!(snap.slot(1).len(), 100);
}

/// Reads one MQTT packet, which must be of `kind`.
async fn read_packet(s: &mut tokio::net::TcpStream, buf: &mut BytesMut, kind: u8) {
    loop {
        if let Some(f) = mqtt::check(buf, 1 << 16).unwrap() {
            assert_eq!(f.kind, kind);
            let _ = buf.split_to(f.total());
            return;
        }
        assert!(s.read_buf(buf).await.unwrap() > 0);
    }
}

/// A broker that accepts one client, answers CONNECT and SUBSCRIBE, then sends `messages`.
async fn fake_broker(listener: TcpListener, messages: Vec<Vec<u8>>) {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    read_packet(&mut s, &mut buf, mqtt::CONNECT).await;
    s.write_all(&[0x20, 2, 0, 0]).await.unwrap();
    read_packet(&mut s, &mut buf, mqtt::SUBSCRIBE).await;
    s.write_all(&[0x90, 3, 0, 1, 0]).await.unwrap();
    let mut out = BytesMut::new();
    for m in &messages {
        mqtt::publish(&mut out, "bench", m);
    }
    s.write_all(&out).await.unwrap();
    // Hold the connection until the test is done.
    let _ = s.read_buf(&mut buf).await;
}

#[tokio::test]
async fn mqtt_subscriber_reads_publishes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = Arc::new(target(Kind::Mosquitto, listener.local_addr().unwrap()));
    let clock = Clock::new();
    let messages = (0..3).map(|n| message(&clock, n)).collect();
    tokio::spawn(fake_broker(listener, messages));
    let c = Arc::new(Collector::new(clock));
    subscribers::open(t, 0..1, 0, c.clone(), Duration::from_secs(5), false).await;
    let snap = wait_for(&c, |s| s.distinct >= 3).await;
    assert_eq!((snap.connected, snap.distinct, snap.duplicates), (1, 3, 0));
}

#[tokio::test]
async fn websocket_subscriber_answers_pings_and_reads_messages() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = Arc::new(target(Kind::Nchan, listener.local_addr().unwrap()));
    let clock = Clock::new();
    let m = message(&clock, 7);
    let (pong_tx, pong_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(s.read_buf(&mut buf).await.unwrap() > 0);
        }
        let head = String::from_utf8(buf.to_vec()).unwrap();
        assert!(head.starts_with("GET /sub?id=bench HTTP/1.1\r\n"), "{head}");
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        let mut frames = vec![0x89, 2, b'h', b'i', 0x81, m.len() as u8];
        frames.extend_from_slice(&m);
        s.write_all(&frames).await.unwrap();
        let mut pong = [0_u8; 8];
        s.read_exact(&mut pong).await.unwrap();
        let _ = pong_tx.send(pong);
        let _ = s.read_buf(&mut buf).await;
    });
    let c = Arc::new(Collector::new(clock));
    subscribers::open(t, 0..1, 0, c.clone(), Duration::from_secs(5), false).await;
    let snap = wait_for(&c, |s| s.distinct >= 1).await;
    assert_eq!((snap.connected, snap.distinct), (1, 1));
    let pong = tokio::time::timeout(Duration::from_secs(5), pong_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong.to_vec(), ws::client_frame(0xA, b"hi"));
}
