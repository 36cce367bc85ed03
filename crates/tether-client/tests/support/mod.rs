//! The scripted fake server shared by the fake-server test files: one accepted connection at a
//! time, raw binary frames over TCP, and the client config and helpers they use.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tether_client::{Client, ClientConfig, Code, Event, ReconnectPolicy, Recovery};
use tether_proto::{
    Body, Bound, Connected, Disconnect, ErrorBody, Frame, Op, PayloadKind, Publication, Push,
    Subscribed, Unsubscribed, binary,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

pub const MAX_FRAME: u32 = 64 * 1024;
pub const STEP: Duration = Duration::from_secs(2);

/// One accepted connection of the fake server.
pub struct Peer {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    pub async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = timeout(STEP, listener.accept())
            .await
            .expect("no connection in time")
            .expect("accept");
        Peer {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The next frame, or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = binary::decode(&mut self.buf, MAX_FRAME).expect("decode") {
                return Some(frame);
            }
            let n = timeout(STEP, self.stream.read_buf(&mut self.buf))
                .await
                .expect("no frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let bytes = binary::encode_to_bytes(&frame);
        // The client may have gone already; tests check what the client saw.
        let _ = self.stream.write_all(&bytes).await;
    }

    /// Reads `connect` and answers `connected` with `heartbeat_ms`.
    pub async fn handshake(&mut self, heartbeat_ms: u32) {
        let frame = self.recv().await.expect("connect");
        let Body::Connect(connect) = frame.body else {
            panic!("expected connect, got {:?}", frame.op());
        };
        let connected = Connected {
            conn_id: 7,
            node: "fake".into(),
            heartbeat_ms,
            max_frame: MAX_FRAME,
            bindings: connect
                .bindings
                .iter()
                .map(|b| Bound {
                    app: b.app.clone(),
                    user: "alice".into(),
                })
                .collect(),
        };
        self.send(Frame::new(frame.id, connected)).await;
    }

    /// Reads `connect` and refuses it.
    pub async fn refuse(&mut self, code: Code) {
        let frame = self.recv().await.expect("connect");
        assert_eq!(frame.op(), Op::Connect);
        self.disconnect(code, 0).await;
    }

    pub async fn disconnect(&mut self, code: Code, retry_after_ms: u32) {
        let d = Disconnect {
            code,
            reason: code.label().into(),
            retry_after_ms,
        };
        self.send(Frame::new(0, d)).await;
        let _ = self.stream.shutdown().await;
    }

    pub async fn push(&mut self, seq: u64) {
        let push = Push {
            app: "demo".into(),
            msg_id: 1000 + seq,
            seq,
            qos: 1,
            created_ms: 0,
            kind: PayloadKind::Binary,
            payload: Bytes::from(format!("m{seq}")),
        };
        self.send(Frame::new(0, push)).await;
    }

    /// The next frame within `wait`, `None` if none came (or the stream ended).
    pub async fn within(&mut self, wait: Duration) -> Option<Frame> {
        timeout(wait, self.recv()).await.ok().flatten()
    }

    /// Reads the next frame, which must be a `subscribe` of `topic` in app demo: its id and
    /// `since`.
    pub async fn expect_subscribe(&mut self, topic: &str) -> (u32, Option<u64>) {
        let frame = self.recv().await.expect("subscribe");
        match frame.body {
            Body::Subscribe(s) if s.app == "demo" && s.topic == topic => (frame.id, s.since),
            other => panic!("expected a subscribe to {topic}, got {other:?}"),
        }
    }

    /// Reads the next frame, which must be an `unsubscribe` of `topic`: its id.
    pub async fn expect_unsubscribe(&mut self, topic: &str) -> u32 {
        let frame = self.recv().await.expect("unsubscribe");
        match frame.body {
            Body::Unsubscribe(u) if u.app == "demo" && u.topic == topic => frame.id,
            other => panic!("expected an unsubscribe from {topic}, got {other:?}"),
        }
    }

    /// `subscribed` answering request `id` (0: a server-side subscription).
    pub async fn subscribed(&mut self, id: u32, topic: &str, offset: u64, recovery: Recovery) {
        let subscribed = Subscribed {
            app: "demo".into(),
            topic: topic.into(),
            offset,
            recovery,
        };
        self.send(Frame::new(id, subscribed)).await;
    }

    pub async fn unsubscribed(&mut self, id: u32, topic: &str) {
        let unsubscribed = Unsubscribed {
            app: "demo".into(),
            topic: topic.into(),
        };
        self.send(Frame::new(id, unsubscribed)).await;
    }

    pub async fn error(&mut self, id: u32, code: Code) {
        let error = ErrorBody {
            code,
            message: code.label().into(),
        };
        self.send(Frame::new(id, error)).await;
    }

    /// A publication of `topic` at `offset`, with payload `p{offset}`.
    pub async fn publish(&mut self, topic: &str, offset: u64) {
        let publication = Publication {
            app: "demo".into(),
            topic: topic.into(),
            offset,
            msg_id: 5000 + offset,
            created_ms: 0,
            kind: PayloadKind::Binary,
            payload: Bytes::from(format!("p{offset}")),
        };
        self.send(Frame::new(0, publication)).await;
    }
}

pub async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("tcp://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

pub fn config(url: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url, "device-1").bind("demo", "token");
    config.reconnect = ReconnectPolicy {
        enabled: true,
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    config.connect_timeout = Duration::from_secs(1);
    config
}

pub async fn next(client: &mut Client) -> Event {
    timeout(STEP, client.recv())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

pub fn assert_connected(event: Event) {
    assert!(matches!(event, Event::Connected(_)), "{event:?}");
}

/// The next event, which must be a publication of `topic`: its offset.
pub async fn next_publication(client: &mut Client, topic: &str) -> u64 {
    match next(client).await {
        Event::Publication(p) if p.topic == topic => {
            assert_eq!(p.payload, format!("p{}", p.offset).as_bytes());
            p.offset
        }
        other => panic!("expected a publication of {topic}, got {other:?}"),
    }
}
