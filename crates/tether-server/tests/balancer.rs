//! Behind a layer-7 load balancer: two nodes of a cluster sharing a real Redis, each setting
//! its affinity cookie (`listen.affinity_cookie`). A client that comes back through the other
//! node (WebSocket with its last seq, SSE with `Last-Event-ID`) resumes there without loss;
//! every answer's cookie names the node that gave it; a draining node expires it; a reload
//! changes it. Then the
//! committed HAProxy configuration (deploy/haproxy/tether.cfg) in front of the two nodes: the
//! cookie brings a client back to its node, and when that node stops, the client comes back
//! through HAProxy to the other one and resumes without loss; SSE too, with its POSTs sent
//! to whichever node HAProxy picks. The committed nginx configuration is checked with
//! `nginx -t`.
//!
//! Without a Redis at `TETHER_TEST_REDIS` (default 127.0.0.1:6379), or without `haproxy` or
//! `nginx` for the tests that run them, these tests are skipped, except under `CI=true`, where
//! they fail.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tether_proto::{Ack, Binding, Frame, binary};
use tether_redis::RedisOptions;
use tether_server::config::{Secret, StoreBackend};
use tether_server::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const COOKIE: &str = "tether_node";
const ADMIN_KEY: &str = "admin-key-0123456789";
/// Upper bound of a wait that goes through the balancer (its health checks, its retries).
const LONG: Duration = Duration::from_secs(10);

/// A node of a cluster in Redis `options` that sets the affinity cookie.
fn config(options: &RedisOptions, id: &str) -> Config {
    let mut config = Config::for_tests();
    config.node.id = id.into();
    config.node.announce_interval = Duration::from_millis(200);
    config.cluster.redis = options.urls.clone();
    config.cluster.prefix = options.prefix.clone();
    config.store.backend = StoreBackend::Redis;
    config.listen.affinity_cookie = COOKIE.into();
    config.gateway.heartbeat_min = Duration::from_millis(200);
    config.admin.key = Some(Secret::new(ADMIN_KEY));
    config
}

/// The value `head`'s `Set-Cookie` gives the affinity cookie, with the rest of its line.
fn affinity(set_cookies: &[String]) -> Option<(String, String)> {
    set_cookies.iter().find_map(|line| {
        let (pair, attributes) = line.split_once(';').unwrap_or((line, ""));
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE).then(|| (value.to_owned(), attributes.trim().to_owned()))
    })
}

// ---------------------------------------------------------------------------------------------
// WebSocket

struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `Set-Cookie` lines of the upgrade's answer.
    set_cookies: Vec<String>,
    node: String,
}

impl Ws {
    /// Upgrades at `addr` (a node, or the balancer) with `cookie`, binds `user` resuming after
    /// `last_seq`, and reads `connected`.
    async fn connect(addr: SocketAddr, cookie: Option<&str>, user: &str, last_seq: u64) -> Ws {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        if let Some(value) = cookie {
            let header = http::HeaderValue::from_str(&format!("{COOKIE}={value}")).unwrap();
            request.headers_mut().insert(http::header::COOKIE, header);
        }
        let (ws, response) = timeout(LONG, tokio_tungstenite::connect_async(request))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket upgrade");
        let set_cookies = response
            .headers()
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let mut client = Ws {
            ws,
            set_cookies,
            node: String::new(),
        };
        let binding = Binding {
            app: APP.into(),
            token: token(user),
            last_seq: Some(last_seq),
        };
        let connect = connect_with("device-1", 0, vec![binding]);
        client.send(&connect).await;
        client.node = expect_connected(client.frame().await).node;
        client
    }

    /// The affinity cookie's value, which must name the node connected to.
    fn cookie(&self) -> String {
        let (value, attributes) = affinity(&self.set_cookies).expect("an affinity cookie");
        assert_eq!(value, self.node, "the cookie names the node");
        assert_eq!(attributes, "Path=/; HttpOnly; SameSite=Lax");
        value
    }

    async fn send(&mut self, frame: &Frame) {
        let message = Message::Binary(encode(frame));
        timeout(WAIT, self.ws.send(message))
            .await
            .expect("send timed out")
            .expect("send");
    }

    async fn frame(&mut self) -> Frame {
        loop {
            let next = timeout(WAIT, self.ws.next())
                .await
                .expect("no frame in time");
            match next {
                Some(Ok(Message::Binary(bytes))) => {
                    return binary::parse(bytes, 1 << 20).expect("a frame");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// The next frames are the durable pushes `seqs`, in order, and nothing follows.
    async fn expect_seqs(&mut self, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            let push = expect_push(self.frame().await);
            assert_eq!((push.qos, push.seq), (1, seq), "{push:?}");
        }
        if let Ok(next) = timeout(Duration::from_millis(200), self.ws.next()).await {
            panic!("expected nothing more, got {next:?}");
        }
    }

    async fn ack(&mut self, seq: u64) {
        let ack = Ack {
            app: APP.into(),
            seq,
        };
        self.send(&Frame::new(9, ack)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// SSE

/// A stream read over raw TCP, as `EventSource` reads it.
struct Sse {
    socket: TcpStream,
    /// What was read and not yet decoded (HTTP/1.1 chunks, when the answer is chunked).
    raw: BytesMut,
    chunked: bool,
    /// The stream's bytes.
    buf: BytesMut,
    head: String,
    session: String,
    node: String,
    last_id: Option<String>,
}

impl Sse {
    /// `GET /v1/sse` at `addr` binding `user`, with `cookie` and `Last-Event-ID`; reads the
    /// head, the session and `connected`. Keep-alives come every 300 ms: a balancer in between
    /// closes its side to the node only when a write to the client that left fails.
    async fn open(
        addr: SocketAddr,
        cookie: Option<&str>,
        user: &str,
        last_id: Option<&str>,
    ) -> Sse {
        let socket = timeout(LONG, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut headers = String::new();
        if let Some(value) = cookie {
            headers += &format!("Cookie: {COOKIE}={value}\r\n");
        }
        if let Some(id) = last_id {
            headers += &format!("Last-Event-ID: {id}\r\n");
        }
        let mut sse = Sse {
            socket,
            raw: BytesMut::new(),
            chunked: false,
            buf: BytesMut::new(),
            head: String::new(),
            session: String::new(),
            node: String::new(),
            last_id: None,
        };
        let request = format!(
            "GET /v1/sse?device=browser&heartbeat_ms=300&app={APP}&token={} HTTP/1.1\r\nHost: x\r\n\
             Accept: text/event-stream\r\n{headers}\r\n",
            token(user)
        );
        sse.socket.write_all(request.as_bytes()).await.unwrap();
        loop {
            if let Some(end) = sse.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = sse.raw.split_to(end + 4);
                sse.head = String::from_utf8(head.to_vec()).unwrap();
                break;
            }
            sse.read().await;
        }
        let lower = sse.head.to_ascii_lowercase();
        sse.chunked = lower.contains("transfer-encoding: chunked");
        sse.decode();
        assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
        let (event, data, _) = sse.event().await;
        assert_eq!(event.as_deref(), Some("session"));
        sse.session = data;
        let connected = sse.frame().await;
        assert_eq!(connected["op"], "connected", "{connected}");
        sse.node = connected["node"].as_str().unwrap().to_owned();
        sse
    }

    /// The affinity cookie's value, which must name the node streaming.
    fn cookie(&self) -> String {
        let set_cookies: Vec<String> = self
            .head
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("set-cookie")
                    .then(|| value.trim().to_owned())
            })
            .collect();
        let (value, _) = affinity(&set_cookies).expect("an affinity cookie");
        assert_eq!(value, self.node, "the cookie names the node");
        value
    }

    async fn read(&mut self) {
        let n = timeout(WAIT, self.socket.read_buf(&mut self.raw))
            .await
            .expect("nothing arrived in time")
            .expect("read");
        assert!(n > 0, "the stream ended; unread: {:?}", self.raw);
    }

    /// Moves what was read into the stream's bytes: whole chunks of a chunked answer.
    fn decode(&mut self) {
        if !self.chunked {
            self.buf.extend_from_slice(&self.raw.split());
            return;
        }
        while let Some(end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..end]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .expect("a chunk size");
            if self.raw.len() < end + 2 + size + 2 {
                return;
            }
            let _ = self.raw.split_to(end + 2);
            self.buf.extend_from_slice(&self.raw.split_to(size));
            let _ = self.raw.split_to(2);
        }
    }

    async fn fill(&mut self) {
        self.read().await;
        self.decode();
    }

    /// The next event: its `event:`, `data:` and `id:`, keep-alives skipped.
    async fn event(&mut self) -> (Option<String>, String, Option<String>) {
        let (mut event, mut data, mut id) = (None, None, None);
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                self.fill().await;
                continue;
            };
            let line = self.buf.split_to(end + 1);
            let line = std::str::from_utf8(&line[..end]).expect("UTF-8 lines");
            if line.is_empty() {
                match data.take() {
                    Some(data) => {
                        if id.is_some() {
                            self.last_id.clone_from(&id);
                        }
                        return (event, data, id);
                    }
                    None => continue,
                }
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "" => {}
                "id" => id = Some(value),
                "event" => event = Some(value),
                "data" => data = Some(value),
                "retry" => {}
                other => panic!("unknown field {other:?}"),
            }
        }
    }

    async fn frame(&mut self) -> Value {
        let (event, data, _) = self.event().await;
        assert_eq!(event, None, "not a message: {data}");
        serde_json::from_str(&data).expect("a JSON frame")
    }

    /// The next events are the durable pushes `seqs`, in order, each with its id, and nothing
    /// follows.
    async fn expect_seqs(&mut self, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            let push = self.frame().await;
            assert_eq!(
                (&push["op"], push["seq"].as_u64()),
                (&json!("push"), Some(seq))
            );
            assert_eq!(self.last_id, Some(format!("{APP}:{seq}")));
        }
        if let Ok(event) = timeout(Duration::from_millis(200), self.event()).await {
            panic!("expected nothing more, got {event:?}");
        }
    }
}

async fn push(http: &Http, user: &str, n: u64) {
    let body = json!({"users": [user], "qos": 1, "payload": {"n": n}});
    let reply = http.push(&body.to_string()).await;
    assert_eq!(reply["seqs"][user], n, "{reply}");
}

async fn wait_offline(http: &Http, user: &str) {
    let deadline = Instant::now() + LONG;
    while http.presence(user).await["connections"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
    {
        assert!(Instant::now() < deadline, "{user} still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Through another node, directly

#[tokio::test]
async fn a_client_that_comes_back_through_the_other_node_resumes_without_loss() {
    let Some(options) = tether_redis::testing::options("lb-direct").await else {
        return;
    };
    let a = start(config(&options, "lb-direct-a")).await;
    let b = start(config(&options, "lb-direct-b")).await;
    let (http_a, http_b) = (Http::new(&a), Http::new(&b));

    // WebSocket: on A, three pushes received and acked, then the connection dies.
    let a_ws = a.ws_addr().unwrap();
    let mut ws = Ws::connect(a_ws, None, "walker", 0).await;
    assert_eq!(ws.cookie(), "lb-direct-a");
    for n in 1..=3 {
        push(&http_b, "walker", n).await;
    }
    ws.expect_seqs(1..=3).await;
    ws.ack(3).await;
    drop(ws);
    wait_offline(&http_b, "walker").await;
    for n in 4..=6 {
        push(&http_a, "walker", n).await;
    }
    // Back through B with A's cookie (which B ignores) and the last seq held.
    let mut ws = Ws::connect(b.ws_addr().unwrap(), Some("lb-direct-a"), "walker", 3).await;
    assert_eq!(ws.cookie(), "lb-direct-b");
    ws.expect_seqs(4..=6).await;

    // SSE: on B, two pushes, then the stream dies; back through A with its Last-Event-ID.
    let mut sse = Sse::open(b.ws_addr().unwrap(), None, "reader", None).await;
    assert_eq!(sse.cookie(), "lb-direct-b");
    for n in 1..=2 {
        push(&http_a, "reader", n).await;
    }
    sse.expect_seqs(1..=2).await;
    let last = sse.last_id.clone().unwrap();
    drop(sse);
    wait_offline(&http_a, "reader").await;
    for n in 3..=5 {
        push(&http_b, "reader", n).await;
    }
    let mut sse = Sse::open(a_ws, Some("lb-direct-b"), "reader", Some(&last)).await;
    assert_eq!(sse.cookie(), "lb-direct-a");
    sse.expect_seqs(3..=5).await;

    // A draining node sends nobody back to itself: its answers expire the cookie.
    let reply = http_a
        .post_raw("/v1/admin/drain", Some(ADMIN_KEY), "")
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let (mut socket, head) = raw_upgrade(a_ws).await;
    let expired = format!("set-cookie: {COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax\r\n");
    assert!(
        head.to_ascii_lowercase()
            .contains(&expired.to_ascii_lowercase()),
        "{head}"
    );
    let _ = socket.shutdown().await;

    // A reload changes the cookie, without a restart, for the next upgrade.
    let mut reloaded = config(&options, "lb-direct-b");
    reloaded.listen.affinity_cookie = "lb".into();
    reloaded.listen.affinity_cookie_secure = true;
    let applied = b.apply(reloaded).expect("the reload applies");
    assert!(applied.restart_needed.is_empty(), "{applied:?}");
    let (_socket, head) = raw_upgrade(b.ws_addr().unwrap()).await;
    let line = "Set-Cookie: lb=lb-direct-b; Path=/; HttpOnly; SameSite=Lax; Secure\r\n";
    assert!(head.contains(line), "{head}");
    a.shutdown();
    b.shutdown();
}

/// A WebSocket upgrade written by hand: the socket and the answer's head.
async fn raw_upgrade(addr: SocketAddr) -> (TcpStream, String) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(WAIT, socket.read_buf(&mut buf))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering");
    }
    (socket, String::from_utf8_lossy(&buf).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Through HAProxy

/// Whether `tool` is installed; under `CI=true` a missing one fails the test.
fn have(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is needed by this test (`.ci/run` installs it)"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// HAProxy running the committed configuration in front of `nodes`, in the foreground; killed
/// when dropped.
async fn haproxy(nodes: [&Node; 2], ids: [&str; 2]) -> (tokio::process::Child, SocketAddr) {
    let bind = free_addr();
    let mut command = tokio::process::Command::new("haproxy");
    command
        .arg("-db")
        .arg("-f")
        .arg(deploy("haproxy/tether.cfg"))
        .env("TETHER_LB_BIND", bind.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (i, node) in nodes.iter().enumerate() {
        let n = i + 1;
        command
            .env(format!("TETHER_{n}_ID"), ids[i])
            .env(
                format!("TETHER_{n}_WS"),
                node.ws_addr().unwrap().to_string(),
            )
            .env(format!("TETHER_{n}_HTTP"), node.http_addr().to_string());
    }
    let child = command.spawn().expect("run haproxy");
    let deadline = Instant::now() + LONG;
    while TcpStream::connect(bind).await.is_err() {
        assert!(Instant::now() < deadline, "haproxy is not listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, bind)
}

#[tokio::test]
async fn behind_haproxy_the_cookie_brings_a_client_back_and_a_stopped_node_loses_nothing() {
    if !have("haproxy") {
        return;
    }
    let Some(options) = tether_redis::testing::options("lb-haproxy").await else {
        return;
    };
    let ids = ["lb-haproxy-a", "lb-haproxy-b"];
    let a = start(config(&options, ids[0])).await;
    let b = start(config(&options, ids[1])).await;
    let (_haproxy, lb) = haproxy([&a, &b], ids).await;
    let http = Http::new(&b);

    // Without a cookie, clients spread over both nodes (least connections).
    let mut first = Ws::connect(lb, None, "walker", 0).await;
    let mine = first.cookie();
    let other = Ws::connect(lb, None, "stranger", 0).await;
    assert_ne!(
        other.cookie(),
        mine,
        "a second client goes to the other node"
    );
    // With it, a returning client always comes back to its node.
    for n in 1..=3 {
        push(&http, "walker", n).await;
    }
    first.expect_seqs(1..=3).await;
    first.ack(3).await;
    drop(first);
    // Two clients that carry the walker's cookie load its node: least connections alone
    // would now send everyone to the other one.
    let mut pinned = Vec::new();
    for user in ["holder-1", "holder-2"] {
        let holder = Ws::connect(lb, Some(&mine), user, 0).await;
        assert_eq!(holder.node, mine, "the cookie brings the client back");
        pinned.push(holder);
    }
    for _ in 0..4 {
        let again = Ws::connect(lb, Some(&mine), "walker", 3).await;
        assert_eq!(again.node, mine, "the cookie brings the client back");
    }
    drop(pinned);

    // SSE through HAProxy too: its stream on the other node (by that node's cookie), and its
    // POSTs to whichever node HAProxy picks.
    let theirs = other.cookie();
    drop(other);
    let mut sse = Sse::open(lb, Some(&theirs), "reader", None).await;
    assert_eq!(sse.cookie(), theirs);
    push(&http, "reader", 1).await;
    sse.expect_seqs(1..=1).await;
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    for _ in 0..2 {
        let posted = client
            .post(format!("http://{lb}/v1/sse/{}", sse.session))
            .header("content-type", "application/json")
            .body(json!({"op": "ping", "id": 7}).to_string())
            .send()
            .await
            .expect("POST through haproxy");
        assert_eq!(posted.status().as_u16(), 202);
        assert_eq!(sse.frame().await, json!({"op": "pong", "id": 7}));
    }

    // The walker's node stops while pushes wait; the walker comes back through HAProxy with
    // its cookie and last seq, lands on the other node, and gets exactly what it missed.
    let (stopping, staying) = if mine == ids[0] { (a, b) } else { (b, a) };
    let http = Http::new(&staying);
    let survivor = if mine == ids[0] { ids[1] } else { ids[0] };
    let gone = stopping.ws_addr().unwrap();
    stopping.shutdown();
    // Its listeners close at once (the rest of a graceful shutdown takes its time).
    let deadline = Instant::now() + LONG;
    while TcpStream::connect(gone).await.is_ok() {
        assert!(Instant::now() < deadline, "the node still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 4..=6 {
        push(&http, "walker", n).await;
    }
    let mut back = Ws::connect(lb, Some(&mine), "walker", 3).await;
    assert_eq!(back.node, survivor);
    assert_eq!(
        back.cookie(),
        survivor,
        "the new node's cookie replaces the old"
    );
    back.expect_seqs(4..=6).await;

    // A stream that drops comes back through HAProxy with its Last-Event-ID and a cookie
    // naming the stopped node (as a reader that had been there would), and misses nothing.
    let last = sse.last_id.clone().unwrap();
    drop(sse);
    wait_offline(&http, "reader").await;
    for n in 2..=3 {
        push(&http, "reader", n).await;
    }
    let mut sse = Sse::open(lb, Some(&mine), "reader", Some(&last)).await;
    assert_eq!(sse.node, survivor);
    sse.expect_seqs(2..=3).await;
    staying.shutdown();
}

/// The committed nginx configuration reads (`nginx -t`), in an `http` block as nginx.conf
/// includes it.
#[tokio::test]
async fn the_nginx_configuration_is_valid() {
    if !have("nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("nginx.conf");
    let conf = deploy("nginx/tether.conf");
    std::fs::write(
        &main,
        format!(
            "pid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\n\
             http {{\n    access_log off;\n    include {conf};\n}}\n",
            dir = dir.path().display(),
            conf = conf.display()
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&main)
        .output();
    let output = timeout(LONG, output)
        .await
        .expect("nginx -t in time")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("test is successful"), "{text}");
}
