//! The client against a real node on port 0: pushes over TCP and WebSocket (binary and JSON),
//! graceful shutdown, a refused token, reconnecting to a restarted node.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tether_client::{
    Client, ClientConfig, ClientError, Code, Event, PayloadKind, Push, WsEncoding,
};
use tether_core::{AppId, UserId};
use tether_server::{Config, Node};
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
        Duration::from_secs(60),
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
