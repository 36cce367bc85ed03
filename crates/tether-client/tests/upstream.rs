//! `Client::upstream` against a real node on port 0 and a real HTTP webhook on port 0: answers
//! pair with their calls on every transport, refusals are errors, a lost connection fails what
//! was sent on it, and calls made while disconnected go out after the reconnect.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::routing::post;
use serde_json::{Value, json};
use tether_client::{Client, ClientConfig, ClientError, Code, Event, PayloadKind, WsEncoding};
use tether_core::{AppId, UserId};
use tether_server::config::{AppConfig, Secret};
use tether_server::{Config, Node};
use tokio::sync::watch;
use tokio::time::timeout;

const HOOKED: &str = "hooked";
const HOOKED_SECRET: &str = "hooked-secret-0123456789";
const STEP: Duration = Duration::from_secs(3);

/// A webhook that answers 200 with `{"echo": <the upstream's body>}`, once `open` is true.
struct Webhook {
    url: String,
    /// Kept: dropping it would let held requests through.
    _open: watch::Sender<bool>,
    seen: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct HookState {
    open: watch::Receiver<bool>,
    seen: Arc<watch::Sender<usize>>,
}

impl Webhook {
    async fn start(open: bool) -> Webhook {
        let (open_tx, open_rx) = watch::channel(open);
        let (seen_tx, seen_rx) = watch::channel(0);
        let state = HookState {
            open: open_rx,
            seen: Arc::new(seen_tx),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new().route("/hook", post(echo)).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Webhook {
            url,
            _open: open_tx,
            seen: seen_rx,
            task,
        }
    }

    async fn wait_seen(&mut self, n: usize) {
        timeout(STEP, self.seen.wait_for(|s| *s >= n))
            .await
            .expect("the webhook got nothing")
            .unwrap();
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(State(state): State<HookState>, body: Bytes) -> impl axum::response::IntoResponse {
    state.seen.send_modify(|n| *n += 1);
    let mut open = state.open.clone();
    let _ = open.wait_for(|o| *o).await;
    let got: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = json!({"echo": got["payload"], "b64": got["payload_base64"], "kind": got["kind"]});
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
}

fn node_config(webhook: &str) -> Config {
    let mut config = Config::for_tests();
    let mut app = AppConfig::new(
        HOOKED,
        Secret::new(HOOKED_SECRET),
        Secret::new("hooked-api-key-0123456789"),
    );
    app.webhook = Some(webhook.to_owned());
    config.apps.push(app);
    config.gateway.shutdown_spread = Duration::from_millis(50);
    config.gateway.shutdown_grace = Duration::from_secs(1);
    config
}

fn token(app: &str, secret: &[u8], user: &str) -> String {
    tether_core::auth::mint(
        secret,
        &AppId::from(app),
        &UserId::from(user),
        // Past the server's 60 s warning: these tests do not expect `expiring`.
        Duration::from_secs(3600),
    )
}

/// A client of both apps: `demo` (no webhook) and `hooked`.
fn client_config(url: String, user: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url, format!("device-{user}"))
        .bind("demo", token("demo", b"demo-secret-0123456789", user))
        .bind(HOOKED, token(HOOKED, HOOKED_SECRET.as_bytes(), user));
    config.reconnect.initial = Duration::from_millis(20);
    config.reconnect.max = Duration::from_millis(200);
    config.connect_timeout = Duration::from_secs(1);
    config
}

async fn next(client: &mut Client) -> Event {
    timeout(STEP, client.recv())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

async fn round_trips(url: String, ws_encoding: WsEncoding) {
    let hook = Webhook::start(true).await;
    let node = Node::start(node_config(&hook.url)).await.unwrap();
    let url = url.replace("NODE_TCP", &node.tcp_addr().unwrap().to_string());
    let url = url.replace("NODE_WS", &node.ws_addr().unwrap().to_string());
    let mut config = client_config(url, "alice");
    config.ws_encoding = ws_encoding;
    let mut client = Client::connect(config).await.expect("connect");
    assert!(matches!(next(&mut client).await, Event::Connected(_)));

    // Several at once: each resolves to the answer to its own payload.
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let payload = json!({"n": i}).to_string();
            client.upstream(HOOKED, "score", PayloadKind::Json, payload)
        })
        .collect();
    let answers = timeout(STEP, futures_util::future::join_all(calls))
        .await
        .expect("answers in time");
    for (i, answer) in answers.into_iter().enumerate() {
        let reply = answer.expect("answered");
        assert_eq!((reply.app.as_str(), reply.status), (HOOKED, 200));
        assert_eq!(reply.kind, PayloadKind::Json);
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(
            body,
            json!({"echo": {"n": i}, "b64": null, "kind": "score"})
        );
    }
    // Bytes go as bytes.
    let reply = timeout(
        STEP,
        client.upstream(HOOKED, "blob", PayloadKind::Binary, &b"\x00\xff"[..]),
    )
    .await
    .unwrap()
    .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["b64"], "AP8=", "{body}");
    assert_eq!(
        body["echo"],
        Value::Null,
        "binary is sent as payload_base64"
    );

    // Refusals.
    let err = timeout(
        STEP,
        client.upstream("demo", "chat", PayloadKind::Json, "{}"),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Upstream { code, .. } if *code == Code::NO_WEBHOOK),
        "{err}"
    );
    assert!(!err.is_retryable());
    let err = client
        .upstream("nope", "chat", PayloadKind::Json, "{}")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotBound(_)), "{err}");
    let err = client
        .upstream(HOOKED, "", PayloadKind::Json, "{}")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidKind { .. }), "{err}");
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn upstream_over_tcp() {
    round_trips("tcp://NODE_TCP".into(), WsEncoding::Binary).await;
}

#[tokio::test]
async fn upstream_over_websocket_binary() {
    round_trips("ws://NODE_WS/ws".into(), WsEncoding::Binary).await;
}

#[tokio::test]
async fn upstream_over_websocket_json() {
    round_trips("ws://NODE_WS/ws".into(), WsEncoding::Json).await;
}

#[tokio::test]
async fn a_lost_connection_fails_what_was_sent_and_later_calls_go_after_the_reconnect() {
    // Node A's webhook never answers.
    let mut held = Webhook::start(false).await;
    let node_a = Node::start(node_config(&held.url)).await.unwrap();
    let tcp = node_a.tcp_addr().unwrap();
    let mut client = Client::connect(client_config(format!("tcp://{tcp}"), "bob"))
        .await
        .unwrap();
    assert!(matches!(next(&mut client).await, Event::Connected(_)));
    let sent = tokio::spawn(client.upstream(HOOKED, "chat", PayloadKind::Json, "1"));
    held.wait_seen(1).await;

    node_a.shutdown();
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            reconnecting: true,
            ..
        }
    ));
    let err = timeout(STEP, sent).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost(_)), "{err}");
    assert!(err.is_retryable());
    node_a.wait().await;

    // A call made while the client is disconnected waits for the next connection.
    let later = tokio::spawn(client.upstream(HOOKED, "chat", PayloadKind::Json, "2"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!later.is_finished());
    let hook = Webhook::start(true).await;
    let mut config = node_config(&hook.url);
    config.listen.tcp = tcp.to_string();
    let node_b = Node::start(config).await.unwrap();
    loop {
        match next(&mut client).await {
            Event::Connected(_) => break,
            Event::Disconnected {
                reconnecting: true, ..
            } => {}
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
    let reply = timeout(STEP, later).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.status, 200);
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body, json!({"echo": 2, "b64": null, "kind": "chat"}));

    // Kicked: the client gives up, and calls fail at once.
    let kicked = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/apps/{HOOKED}/users/bob/kick",
            node_b.http_addr()
        ))
        .bearer_auth("hooked-api-key-0123456789")
        .send()
        .await
        .unwrap();
    assert!(kicked.status().is_success());
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            reconnecting: false,
            ..
        }
    ));
    assert!(timeout(STEP, client.recv()).await.unwrap().is_none());
    let err = timeout(
        STEP,
        client.upstream(HOOKED, "chat", PayloadKind::Json, "3"),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err}");
    node_b.shutdown();
    node_b.wait().await;
}
