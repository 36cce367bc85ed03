//! Helpers for the end-to-end tests: a node on port 0, raw clients that speak wire bytes (TCP
//! binary frames, WebSocket binary or JSON text), an HTTP client for the API, token minting.
//!
//! Every wait is bounded by [`WAIT`] so that a bug fails a test instead of hanging it.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod receiver;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tether_core::{AppId, UserId, auth};
use tether_proto::{
    Binding, Body, Code, Connect, Connected, Disconnect, Frame, PROTOCOL_VERSION, Push, binary,
};
use tether_server::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const APP: &str = "demo";
pub const SECRET: &str = "demo-secret-0123456789";
pub const API_KEY: &str = "demo-api-key-0123456789";

/// Upper bound of any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(3);

/// Largest frame the test clients accept from the server.
const CLIENT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Starts a node, bounded in time.
pub async fn start(config: Config) -> Node {
    init_tracing();
    timeout(WAIT, Node::start(config))
        .await
        .expect("node start timed out")
        .expect("node start failed")
}

/// A valid token for `user` of the demo app.
pub fn token(user: &str) -> String {
    token_for(APP, SECRET, user)
}

pub fn token_for(app: &str, secret: &str, user: &str) -> String {
    auth::mint(
        secret.as_bytes(),
        &AppId::from(app),
        &UserId::from(user),
        Duration::from_secs(600),
    )
}

/// A token whose `exp` lies an hour in the past (well beyond any leeway).
pub fn expired_token(user: &str) -> String {
    let now = tether_core::now_ms() / 1000;
    let claims = auth::Claims {
        sub: user.to_owned(),
        exp: now - 3600,
        iat: Some(now - 7200),
        app: Some(APP.to_owned()),
        ..auth::Claims::default()
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}

/// A `connect` frame (request id 1) binding the demo app as `user`.
pub fn connect_frame(user: &str, device: &str, heartbeat_ms: u32) -> Frame {
    connect_with(
        device,
        heartbeat_ms,
        vec![Binding {
            app: APP.into(),
            token: token(user),
            last_seq: None,
        }],
    )
}

pub fn connect_with(device: &str, heartbeat_ms: u32, bindings: Vec<Binding>) -> Frame {
    Frame::new(
        1,
        Connect {
            version: PROTOCOL_VERSION,
            device: device.into(),
            heartbeat_ms,
            bindings,
        },
    )
}

pub fn encode(frame: &Frame) -> Bytes {
    let bytes = binary::encode_to_bytes(frame);
    assert!(!bytes.is_empty(), "test frame not encodable: {frame:?}");
    bytes
}

pub fn expect_connected(frame: Frame) -> Connected {
    match frame.body {
        Body::Connected(c) => {
            assert_eq!(frame.id, 1, "connected answers the connect's request id");
            c
        }
        other => panic!("expected connected, got {other:?}"),
    }
}

pub fn expect_push(frame: Frame) -> Push {
    match frame.body {
        Body::Push(p) => {
            assert_eq!(frame.id, 0, "pushes carry request id 0");
            p
        }
        other => panic!("expected push, got {other:?}"),
    }
}

pub fn expect_disconnect(frame: Frame) -> Disconnect {
    match frame.body {
        Body::Disconnect(d) => d,
        other => panic!("expected disconnect, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TCP

/// A raw TCP client: binary frames, nothing else.
#[derive(Debug)]
pub struct TcpClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl TcpClient {
    pub async fn open(addr: SocketAddr) -> TcpClient {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect failed");
        TcpClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub fn from_stream(stream: TcpStream) -> TcpClient {
        TcpClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens with a small receive buffer, so that a client that does not read fills up fast.
    pub async fn open_with_recv_buffer(addr: SocketAddr, bytes: u32) -> TcpClient {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = timeout(WAIT, socket.connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect failed");
        TcpClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens a connection, sends `connect` for `user` and waits for `connected`.
    pub async fn connected(
        addr: SocketAddr,
        user: &str,
        device: &str,
        heartbeat_ms: u32,
    ) -> (TcpClient, Connected) {
        let mut client = TcpClient::open(addr).await;
        client
            .send(&connect_frame(user, device, heartbeat_ms))
            .await;
        let connected = expect_connected(client.frame().await);
        (client, connected)
    }

    pub async fn send(&mut self, frame: &Frame) {
        self.send_raw(&encode(frame)).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("TCP write timed out")
            .expect("TCP write failed");
    }

    /// The next frame, `Ok(None)` at EOF, `Err` on a reset or a frame that does not decode.
    pub async fn recv(&mut self) -> io::Result<Option<Frame>> {
        loop {
            match binary::decode(&mut self.buf, CLIENT_MAX_FRAME) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("EOF inside a frame ({} bytes buffered)", self.buf.len()),
                    ))
                };
            }
        }
    }

    /// The next frame within `limit`: `None` when nothing arrived in time.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<io::Result<Option<Frame>>> {
        timeout(limit, self.recv()).await.ok()
    }

    /// The next frame; panics on EOF, reset or timeout.
    pub async fn frame(&mut self) -> Frame {
        match timeout(WAIT, self.recv()).await {
            Err(_) => panic!("no frame within {WAIT:?}"),
            Ok(Err(e)) => panic!("connection failed while waiting for a frame: {e}"),
            Ok(Ok(None)) => panic!("connection closed while waiting for a frame"),
            Ok(Ok(Some(frame))) => frame,
        }
    }

    /// Waits for an orderly close (EOF with nothing else before it).
    pub async fn expect_eof(&mut self) {
        match timeout(WAIT, self.recv()).await {
            Err(_) => panic!("connection still open after {WAIT:?}"),
            Ok(Err(e)) => panic!("expected EOF, got an error: {e}"),
            Ok(Ok(Some(frame))) => panic!("expected EOF, got {frame:?}"),
            Ok(Ok(None)) => {}
        }
    }

    /// The next frame must be a `disconnect` with `code`, followed by EOF.
    pub async fn expect_disconnect(&mut self, code: Code) -> Disconnect {
        let d = expect_disconnect(self.frame().await);
        assert_eq!(d.code, code, "disconnect reason: {:?}", d.reason);
        self.expect_eof().await;
        d
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client: binary messages holding binary frames, or text messages holding
/// JSON frames.
#[derive(Debug)]
pub struct WsClient {
    pub ws: Ws,
}

pub fn ws_url(node: &Node) -> String {
    format!("ws://{}/ws", node.ws_addr().expect("ws listener"))
}

impl WsClient {
    pub async fn open(node: &Node) -> WsClient {
        let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(ws_url(node)))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket upgrade failed");
        WsClient { ws }
    }

    /// Opens, sends a binary `connect` for `user`, waits for `connected`.
    pub async fn connected(
        node: &Node,
        user: &str,
        device: &str,
        heartbeat_ms: u32,
    ) -> (WsClient, Connected) {
        let mut client = WsClient::open(node).await;
        client
            .send_frame(&connect_frame(user, device, heartbeat_ms))
            .await;
        let connected = expect_connected(client.frame().await);
        (client, connected)
    }

    pub async fn send(&mut self, message: Message) {
        timeout(WAIT, self.ws.send(message))
            .await
            .expect("WebSocket send timed out")
            .expect("WebSocket send failed");
    }

    /// Queues `n` copies of `message`, then flushes once.
    pub async fn send_many(&mut self, message: Message, n: usize) {
        for _ in 0..n {
            timeout(WAIT, self.ws.feed(message.clone()))
                .await
                .expect("WebSocket send timed out")
                .expect("WebSocket send failed");
        }
        timeout(WAIT, self.ws.flush())
            .await
            .expect("WebSocket flush timed out")
            .expect("WebSocket flush failed");
    }

    pub async fn send_frame(&mut self, frame: &Frame) {
        self.send(Message::Binary(encode(frame))).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    /// The next data or close message; `None` when the stream ended. Panics on timeout.
    pub async fn message(&mut self) -> Option<Result<Message, String>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no WebSocket message within {WAIT:?}"));
            match next {
                None => return None,
                Some(Err(e)) => return Some(Err(e.to_string())),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(m)) => return Some(Ok(m)),
            }
        }
    }

    /// The next message must be a binary frame.
    pub async fn frame(&mut self) -> Frame {
        match self.message().await {
            Some(Ok(Message::Binary(bytes))) => {
                binary::parse(bytes, CLIENT_MAX_FRAME).expect("server frame decodes")
            }
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    /// The next message must be a JSON text frame.
    pub async fn json(&mut self) -> Value {
        match self.message().await {
            Some(Ok(Message::Text(text))) => {
                serde_json::from_str(text.as_str()).expect("server sent invalid JSON")
            }
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next message must be a close frame with `code` (then the stream ends).
    pub async fn expect_close(&mut self, code: Code) {
        match self.message().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(
                    u16::from(frame.code),
                    code.0,
                    "close reason: {}",
                    frame.reason
                );
            }
            other => panic!("expected a close frame with {code}, got {other:?}"),
        }
    }

    /// A binary `disconnect` with `code`, then a close frame with the same code.
    pub async fn expect_disconnect(&mut self, code: Code) -> Disconnect {
        let d = expect_disconnect(self.frame().await);
        assert_eq!(d.code, code, "disconnect reason: {:?}", d.reason);
        self.expect_close(code).await;
        d
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP API

/// The business server's side: the HTTP API.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

/// A response: status and body (JSON when it parses as JSON, else a JSON string).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Http {
    pub fn new(node: &Node) -> Http {
        Http {
            client: reqwest::Client::builder()
                .timeout(WAIT)
                .build()
                .expect("HTTP client"),
            base: format!("http://{}", node.http_addr()),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("HTTP request failed");
        let status = response.status().as_u16();
        let text = response.text().await.expect("HTTP body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, body }
    }

    /// `POST path` with a raw JSON body and an optional API key.
    pub async fn post_raw(&self, path: &str, key: Option<&str>, body: &str) -> Reply {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        self.send(request).await
    }

    /// `DELETE path` with the demo app's API key.
    pub async fn send_delete(&self, path: &str) -> Reply {
        let request = self
            .client
            .delete(format!("{}{path}", self.base))
            .bearer_auth(API_KEY);
        self.send(request).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        self.send(request).await
    }

    /// Pushes a raw JSON request body to the demo app; asserts 200 and returns the body.
    pub async fn push(&self, body: &str) -> Value {
        let reply = self
            .post_raw(&format!("/v1/apps/{APP}/push"), Some(API_KEY), body)
            .await;
        assert_eq!(reply.status, 200, "push failed: {:?}", reply.body);
        reply.body
    }

    pub async fn presence(&self, user: &str) -> Value {
        let reply = self
            .get(
                &format!("/v1/apps/{APP}/users/{user}/presence"),
                Some(API_KEY),
            )
            .await;
        assert_eq!(reply.status, 200, "presence failed: {:?}", reply.body);
        reply.body
    }

    /// Polls presence until `user` has `n` connections; panics after [`WAIT`].
    pub async fn wait_presence(&self, user: &str, n: usize) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let presence = self.presence(user).await;
            let count = presence["connections"].as_array().map_or(0, Vec::len);
            if count == n {
                return presence;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "presence of {user} still {presence} after {WAIT:?}, expected {n} connections"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn kick(&self, user: &str) -> Value {
        let reply = self
            .post_raw(
                &format!("/v1/apps/{APP}/users/{user}/kick"),
                Some(API_KEY),
                "",
            )
            .await;
        assert_eq!(reply.status, 200, "kick failed: {:?}", reply.body);
        reply.body
    }

    pub async fn metrics(&self) -> String {
        let reply = self.get("/metrics", None).await;
        assert_eq!(reply.status, 200);
        match reply.body {
            Value::String(text) => text,
            other => panic!("metrics are not text: {other}"),
        }
    }
}

/// The value of the first sample of `name` (with exactly these `labels`, e.g. `{result="ok"}`,
/// or none) in a Prometheus text page.
pub fn metric(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name_and_labels).then(|| value.parse().ok())?
    })
}
