//! The client against a real node on port 0: pushes over TCP and WebSocket (binary and JSON),
//! graceful shutdown, a refused token, reconnecting to a restarted node, topics recovered
//! across a lost connection and a restart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tether_client::{
    Client, ClientConfig, ClientError, Code, Event, PayloadKind, Push, Recovery, WsEncoding,
};
use tether_core::{AppId, UserId};
use tether_server::{Config, Node};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const SECRET: &[u8] = b"demo-secret-0123456789";
const API_KEY: &str = "demo-api-key-0123456789";
const STEP: Duration = Duration::from_secs(2);

fn node_config() -> Config {
    let mut config = Config::for_tests();
    // Come back quickly after a shutdown, and do not linger.
    config.gateway.shutdown_spread = Duration::from_millis(50);
    config.gateway.shutdown_grace = Duration::from_secs(1);
    config
}

async fn start(config: Config) -> Node {
    Node::start(config).await.expect("node starts")
}

fn token(user: &str) -> String {
    tether_core::auth::mint(
        SECRET,
        &AppId::from("demo"),
        &UserId::from(user),
        // Past the server's 60 s warning: these tests do not expect `expiring`.
        Duration::from_secs(3600),
    )
}

fn client_config(url: String, user: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url, format!("device-{user}")).bind("demo", token(user));
    config.reconnect.initial = Duration::from_millis(20);
    config.reconnect.max = Duration::from_millis(200);
    config.connect_timeout = Duration::from_secs(1);
    config
}

fn tcp_url(node: &Node) -> String {
    format!("tcp://{}", node.tcp_addr().expect("tcp listener"))
}

fn ws_url(node: &Node) -> String {
    format!("ws://{}/ws", node.ws_addr().expect("ws listener"))
}

async fn next(client: &mut Client) -> Event {
    timeout(STEP, client.recv())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

async fn next_message(client: &mut Client) -> Push {
    match next(client).await {
        Event::Message(push) => push,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Connects and checks the first event: connected, bound as `user`.
async fn connect(config: ClientConfig, user: &str) -> Client {
    let mut client = Client::connect(config).await.expect("connect");
    match next(&mut client).await {
        Event::Connected(c) => {
            assert_eq!(c.bindings.len(), 1);
            assert_eq!(
                (c.bindings[0].app.as_str(), c.bindings[0].user.as_str()),
                ("demo", user)
            );
        }
        other => panic!("expected Connected, got {other:?}"),
    }
    client
}

/// Pushes through the HTTP API; returns the number of connections it reached.
async fn push(http: SocketAddr, body: Value) -> u64 {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/v1/apps/demo/push"))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("push request");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON answer");
    assert!(status.is_success(), "{status}: {answer}");
    assert!(answer["id"].is_string(), "{answer}");
    answer["connections"].as_u64().expect("connections")
}

/// A JSON payload comes back as the same JSON; a base64 payload as the raw bytes.
async fn receives_json_and_binary(client: &mut Client, http: SocketAddr, user: &str) {
    let payload = json!({"hello": "world", "n": [1, 2, 3]});
    let reached = push(http, json!({"users": [user], "payload": payload, "qos": 0})).await;
    assert_eq!(reached, 1);
    let msg = next_message(client).await;
    assert_eq!((msg.app.as_str(), msg.seq, msg.qos), ("demo", 0, 0));
    assert_eq!(msg.kind, PayloadKind::Json);
    let got: Value = serde_json::from_slice(&msg.payload).expect("JSON payload");
    assert_eq!(got, payload);

    // 0x00 0x01 0x02 0xff
    push(http, json!({"users": [user], "payload_base64": "AAEC/w=="})).await;
    let msg = next_message(client).await;
    assert_eq!(msg.kind, PayloadKind::Binary);
    assert_eq!(&msg.payload[..], [0u8, 1, 2, 255]);
}

#[tokio::test]
async fn tcp_client_receives_pushes() {
    let node = start(node_config()).await;
    let mut client = connect(client_config(tcp_url(&node), "alice"), "alice").await;
    receives_json_and_binary(&mut client, node.http_addr(), "alice").await;
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn ws_binary_client_receives_pushes() {
    let node = start(node_config()).await;
    let mut client = connect(client_config(ws_url(&node), "bob"), "bob").await;
    receives_json_and_binary(&mut client, node.http_addr(), "bob").await;
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn ws_json_client_receives_pushes() {
    let node = start(node_config()).await;
    let mut config = client_config(ws_url(&node), "carol");
    config.ws_encoding = WsEncoding::Json;
    let mut client = connect(config, "carol").await;
    receives_json_and_binary(&mut client, node.http_addr(), "carol").await;
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn shutdown_tells_the_client_to_reconnect() {
    let node = start(node_config()).await;
    let mut client = connect(client_config(tcp_url(&node), "dave"), "dave").await;
    node.shutdown();
    match next(&mut client).await {
        Event::Disconnected {
            code, reconnecting, ..
        } => {
            assert_eq!(code, Some(Code::SHUTDOWN));
            assert!(reconnecting);
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    client.close().await;
    node.wait().await;
}

#[tokio::test]
async fn a_bad_token_is_refused_without_retrying() {
    let node = start(node_config()).await;
    let mut config = client_config(tcp_url(&node), "eve");
    config.bindings[0].token = tether_core::auth::mint(
        b"not-the-secret-0123456789",
        &AppId::from("demo"),
        &UserId::from("eve"),
        Duration::from_secs(60),
    );
    let err = Client::connect(config).await.expect_err("bad token");
    assert_eq!(err.code(), Some(Code::BAD_TOKEN), "{err}");
    assert!(!err.is_retryable());
    assert!(matches!(err, ClientError::Rejected { .. }));
    assert_eq!(node.connections(), 0);
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn reconnects_to_a_restarted_node() {
    let node_a = start(node_config()).await;
    let tcp = node_a.tcp_addr().expect("tcp listener");
    let mut client = connect(client_config(tcp_url(&node_a), "frank"), "frank").await;
    node_a.shutdown();
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            code: Some(Code::SHUTDOWN),
            reconnecting: true,
            ..
        }
    ));
    node_a.wait().await;

    // Node B on the same port. Until it listens, attempts fail and are reported.
    let mut config = node_config();
    config.listen.tcp = tcp.to_string();
    config.node.id = "node-b".into();
    let node_b = start(config).await;
    let connected = loop {
        match next(&mut client).await {
            Event::Connected(c) => break c,
            Event::Disconnected {
                reconnecting: true, ..
            } => {}
            other => panic!("expected a reconnect, got {other:?}"),
        }
    };
    assert_eq!(connected.node, "node-b");
    assert_eq!(connected.bindings[0].user, "frank");
    let reached = push(
        node_b.http_addr(),
        json!({"users": ["frank"], "payload": "again"}),
    )
    .await;
    assert_eq!(reached, 1);
    assert_eq!(&next_message(&mut client).await.payload[..], b"\"again\"");
    client.close().await;
    node_b.shutdown();
    node_b.wait().await;
}

/// Waits until presence shows `device` acked at `seq` in `user`'s inbox.
async fn wait_for_ack(http: SocketAddr, user: &str, device: &str, seq: u64) {
    let url = format!("http://{http}/v1/apps/demo/users/{user}/presence");
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let presence: Value = reqwest::Client::new()
            .get(&url)
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("presence")
            .json()
            .await
            .expect("JSON presence");
        let acked = presence["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["device"] == device))
            .and_then(|d| d["acked"].as_u64());
        if acked == Some(seq) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never showed {device} acked at {seq}: {presence}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn durable_messages_resume_after_the_device_s_last_ack() {
    let node = start(node_config()).await;
    let http = node.http_addr();
    for n in 1..=3 {
        push(http, json!({"users": ["gina"], "payload": n, "qos": 1})).await;
    }
    let mut client = connect(client_config(tcp_url(&node), "gina"), "gina").await;
    for seq in 1..=3 {
        let msg = next_message(&mut client).await;
        assert_eq!((msg.seq, msg.qos), (seq, 1), "the backlog, in order");
        assert_eq!(msg.payload, seq.to_string().as_bytes());
    }
    client.ack("demo", 3).expect("ack");
    client.close().await;
    wait_for_ack(http, "gina", "device-gina", 3).await;

    for n in 4..=5 {
        push(http, json!({"users": ["gina"], "payload": n, "qos": 1})).await;
    }
    // The same device again, in a new client: only what it has not acked.
    let mut client = connect(client_config(tcp_url(&node), "gina"), "gina").await;
    for seq in 4..=5 {
        assert_eq!(next_message(&mut client).await.seq, seq);
    }
    assert!(
        timeout(Duration::from_millis(200), client.recv())
            .await
            .is_err(),
        "nothing else arrives"
    );
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn after_a_restart_the_client_resumes_after_what_it_received_without_duplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = |tcp: &str| {
        let mut config = node_config();
        config.node.data_dir = dir.path().to_owned();
        config.store.backend = tether_server::config::StoreBackend::Embedded;
        config.listen.tcp = tcp.to_owned();
        config
    };
    let node_a = start(embedded("127.0.0.1:0")).await;
    let tcp = node_a.tcp_addr().expect("tcp listener");
    for n in 1..=3 {
        push(
            node_a.http_addr(),
            json!({"users": ["hana"], "payload": n, "qos": 1}),
        )
        .await;
    }
    let mut client = connect(client_config(tcp_url(&node_a), "hana"), "hana").await;
    for seq in 1..=3 {
        assert_eq!(next_message(&mut client).await.seq, seq);
    }
    // Nothing acked: the stored cursor stays at 0, so only the client's own last_seq keeps
    // these from coming again.
    node_a.shutdown();
    node_a.wait().await;

    let node_b = start(embedded(&tcp.to_string())).await;
    loop {
        match next(&mut client).await {
            Event::Connected(_) => break,
            Event::Disconnected {
                reconnecting: true, ..
            } => {}
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
    push(
        node_b.http_addr(),
        json!({"users": ["hana"], "payload": 4, "qos": 1}),
    )
    .await;
    let msg = next_message(&mut client).await;
    assert_eq!(
        msg.seq, 4,
        "the inbox survived the restart and nothing came twice"
    );
    client.close().await;
    node_b.shutdown();
    node_b.wait().await;
}

/// A TCP proxy between a client and a node, so that a test can cut the client's connection,
/// keep it out while it publishes, and point it at another node.
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    /// Where new connections go; `None`: they are closed at once.
    upstream: Option<SocketAddr>,
    links: Vec<JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ProxyState {
            upstream: Some(upstream),
            links: Vec::new(),
        }));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // Under the lock, so that a `cut` cannot miss a link being made.
                let mut state = shared.lock().expect("proxy state");
                let Some(upstream) = state.upstream else {
                    continue; // `client` dropped: closed
                };
                state.links.push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Drops every connection and closes new ones until [`Proxy::open`].
    fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.upstream = None;
        for link in state.links.drain(..) {
            link.abort();
        }
    }

    fn open(&self, upstream: SocketAddr) {
        self.state.lock().expect("proxy state").upstream = Some(upstream);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Publishes `n` (a JSON number) to `topic` with `qos`; returns its offset (0 for qos 0).
async fn publish(http: SocketAddr, topic: &str, n: u64, qos: u8) -> u64 {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/v1/apps/demo/topics/{topic}/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"payload": n, "qos": qos}))
        .send()
        .await
        .expect("publish request");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON answer");
    assert!(status.is_success(), "{status}: {answer}");
    answer["offset"].as_u64().unwrap_or(0)
}

/// The next event, which must be a publication of `topic`: (offset, payload as a number).
async fn next_publication(client: &mut Client, topic: &str) -> (u64, u64) {
    match next(client).await {
        Event::Publication(p) if p.app == "demo" && p.topic == topic => {
            assert_eq!(p.kind, PayloadKind::Json);
            let n = std::str::from_utf8(&p.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("payload {:?}", p.payload));
            (p.offset, n)
        }
        other => panic!("expected a publication of {topic}, got {other:?}"),
    }
}

/// Skips failed reconnect attempts until the client is connected again.
async fn wait_reconnected(client: &mut Client) {
    loop {
        match next(client).await {
            Event::Connected(_) => return,
            Event::Disconnected {
                reconnecting: true, ..
            } => {}
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
}

async fn assert_quiet(client: &mut Client) {
    if let Ok(event) = timeout(Duration::from_millis(200), client.recv()).await {
        panic!("nothing else should arrive, got {event:?}");
    }
}

#[tokio::test]
async fn topic_publications_missed_while_disconnected_arrive_in_order_once() {
    let node = start(node_config()).await;
    let http = node.http_addr();
    let proxy = Proxy::start(node.tcp_addr().expect("tcp listener")).await;
    let mut client = connect(client_config(proxy.url(), "ines"), "ines").await;
    client.subscribe("demo", "room-1").expect("subscribe");
    match next(&mut client).await {
        Event::Subscribed {
            topic,
            offset: 0,
            recovery: Recovery::Live,
            since: None,
            server_side: false,
            ..
        } if topic == "room-1" => {}
        other => panic!("expected Subscribed, got {other:?}"),
    }
    assert_eq!(publish(http, "room-1", 1, 1).await, 1);
    assert_eq!(next_publication(&mut client, "room-1").await, (1, 1));

    proxy.cut();
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            reconnecting: true,
            ..
        }
    ));
    for n in 2..=4 {
        assert_eq!(publish(http, "room-1", n, 1).await, n);
    }
    proxy.open(node.tcp_addr().expect("tcp listener"));
    wait_reconnected(&mut client).await;
    match next(&mut client).await {
        Event::Subscribed {
            offset: 4,
            recovery: Recovery::Complete,
            since: Some(1),
            ..
        } => {}
        other => panic!("expected a complete recovery, got {other:?}"),
    }
    for n in 2..=4 {
        assert_eq!(next_publication(&mut client, "room-1").await, (n, n));
    }
    assert_eq!(publish(http, "room-1", 5, 1).await, 5);
    assert_eq!(next_publication(&mut client, "room-1").await, (5, 5));
    publish(http, "room-1", 6, 0).await;
    assert_eq!(next_publication(&mut client, "room-1").await, (0, 6));
    assert_quiet(&mut client).await;
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn a_history_that_no_longer_reaches_back_is_reported_too_old() {
    let mut config = node_config();
    config.store.topic_history = 2;
    let node = start(config).await;
    let http = node.http_addr();
    let proxy = Proxy::start(node.tcp_addr().expect("tcp listener")).await;
    let mut client = connect(client_config(proxy.url(), "jack"), "jack").await;
    client.subscribe("demo", "room-2").expect("subscribe");
    assert!(matches!(next(&mut client).await, Event::Subscribed { .. }));
    publish(http, "room-2", 1, 1).await;
    assert_eq!(next_publication(&mut client, "room-2").await, (1, 1));

    proxy.cut();
    for n in 2..=5 {
        publish(http, "room-2", n, 1).await;
    }
    proxy.open(node.tcp_addr().expect("tcp listener"));
    wait_reconnected(&mut client).await;
    // The history keeps 4 and 5 only: 2 and 3 are gone, so nothing is recovered.
    match next(&mut client).await {
        Event::Subscribed {
            offset: 5,
            recovery: Recovery::TooOld,
            since: Some(1),
            ..
        } => {}
        other => panic!("expected too_old, got {other:?}"),
    }
    publish(http, "room-2", 6, 1).await;
    assert_eq!(next_publication(&mut client, "room-2").await, (6, 6));
    assert_quiet(&mut client).await;
    client.close().await;
    node.shutdown();
    node.wait().await;
}

/// Subscribes `user` to `topic` through the API (a server-side subscription).
async fn subscribe_user(http: SocketAddr, user: &str, topic: &str) {
    let response = reqwest::Client::new()
        .post(format!(
            "http://{http}/v1/apps/demo/users/{user}/topics/{topic}"
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("subscribe request");
    let status = response.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        response.text().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn a_server_side_topic_is_recovered_after_a_node_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = || {
        let mut config = node_config();
        config.node.data_dir = dir.path().to_owned();
        config.store.backend = tether_server::config::StoreBackend::Embedded;
        config
    };
    let node_a = start(embedded()).await;
    let proxy = Proxy::start(node_a.tcp_addr().expect("tcp listener")).await;
    let mut client = connect(client_config(proxy.url(), "kim"), "kim").await;
    subscribe_user(node_a.http_addr(), "kim", "news").await;
    match next(&mut client).await {
        Event::Subscribed {
            topic,
            recovery: Recovery::Live,
            server_side: true,
            ..
        } if topic == "news" => {}
        other => panic!("expected a server-side Subscribed, got {other:?}"),
    }
    publish(node_a.http_addr(), "news", 1, 1).await;
    assert_eq!(next_publication(&mut client, "news").await, (1, 1));

    proxy.cut();
    node_a.shutdown();
    node_a.wait().await;
    let node_b = start(embedded()).await;
    for n in 2..=3 {
        publish(node_b.http_addr(), "news", n, 1).await;
    }
    proxy.open(node_b.tcp_addr().expect("tcp listener"));
    wait_reconnected(&mut client).await;
    // The node re-applies the subscription live from 3; the client recovers 2 and 3 with one
    // subscribe of its own, and the application sees that subscribe's answer only.
    match next(&mut client).await {
        Event::Subscribed {
            offset: 3,
            recovery: Recovery::Complete,
            since: Some(1),
            server_side: true,
            ..
        } => {}
        other => panic!("expected a complete recovery, got {other:?}"),
    }
    for n in 2..=3 {
        assert_eq!(next_publication(&mut client, "news").await, (n, n));
    }
    publish(node_b.http_addr(), "news", 4, 1).await;
    assert_eq!(next_publication(&mut client, "news").await, (4, 4));
    assert_quiet(&mut client).await;
    client.close().await;
    node_b.shutdown();
    node_b.wait().await;
}
