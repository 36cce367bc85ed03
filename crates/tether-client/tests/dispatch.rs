//! The client with a dispatcher: it connects where the dispatcher says, moves to another node
//! when its node drains, reports the endpoints that failed, and adopts the dispatcher's
//! backoff. Real nodes on port 0 (sharing one registry, as a cluster's nodes do), and a
//! scripted dispatcher where the test must see what the client asks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tether_client::{Client, ClientConfig, ClientError, Code, Event};
use tether_core::{AppId, MemoryRegistry, Registry, UserId};
use tether_server::config::Secret;
use tether_server::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

const SECRET: &[u8] = b"demo-secret-0123456789";
const ADMIN_KEY: &str = "admin-key-0123456789";
const API_KEY: &str = "demo-api-key-0123456789";
const STEP: Duration = Duration::from_secs(3);

fn token(user: &str) -> String {
    tether_core::auth::mint(
        SECRET,
        &AppId::from("demo"),
        &UserId::from(user),
        Duration::from_secs(3600),
    )
}

fn node_config(id: &str) -> Config {
    let mut config = Config::for_tests();
    config.node.id = id.into();
    config.admin.key = Some(Secret::new(ADMIN_KEY));
    config.gateway.drain_spread = Duration::from_millis(100);
    config.gateway.shutdown_grace = Duration::from_secs(1);
    config
}

async fn start_shared(id: &str, registry: &Arc<MemoryRegistry>) -> Node {
    let shared: Arc<dyn Registry> = registry.clone();
    Node::start_with_registry(node_config(id), shared)
        .await
        .expect("node starts")
}

fn dispatched(dispatch: String, user: &str) -> ClientConfig {
    let mut config =
        ClientConfig::dispatched(dispatch, format!("device-{user}")).bind("demo", token(user));
    config.connect_timeout = Duration::from_secs(1);
    config
}

fn dispatch_url(node: &Node) -> String {
    format!("http://{}/v1/dispatch", node.http_addr())
}

async fn next(client: &mut Client) -> Event {
    timeout(STEP, client.recv())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

async fn connected_node(client: &mut Client) -> String {
    match next(client).await {
        Event::Connected(c) => c.node,
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn admin_drain(node: &Node) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/drain", node.http_addr()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("drain request");
    assert_eq!(response.status().as_u16(), 202);
}

async fn push(node: &Node, user: &str, n: u64) -> u64 {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/apps/demo/push", node.http_addr()))
        .bearer_auth(API_KEY)
        .json(&json!({"users": [user], "payload": {"n": n}}))
        .send()
        .await
        .expect("push request");
    let answer: Value = response.json().await.expect("JSON answer");
    answer["connections"].as_u64().expect("connections")
}

#[tokio::test]
async fn a_drained_node_s_client_moves_to_another_node_through_the_dispatcher() {
    let registry = Arc::new(MemoryRegistry::new());
    let a = start_shared("tether-a", &registry).await;
    let b = start_shared("tether-b", &registry).await;
    // Whichever node answers, the client is sent to the user's first node.
    let mut client = Client::connect(dispatched(dispatch_url(&a), "alice"))
        .await
        .expect("connect through the dispatcher");
    let first = connected_node(&mut client).await;
    let (home, other) = if first == "tether-a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(push(home, "alice", 1).await, 1);
    assert!(matches!(next(&mut client).await, Event::Message(_)));

    admin_drain(home).await;
    match next(&mut client).await {
        Event::Disconnected {
            code, reconnecting, ..
        } => {
            assert_eq!(code, Some(Code::DRAIN));
            assert!(reconnecting);
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let second = connected_node(&mut client).await;
    assert_ne!(
        second, first,
        "the client moved to the node that does not drain"
    );
    assert_eq!(push(other, "alice", 2).await, 1);
    assert!(matches!(next(&mut client).await, Event::Message(_)));
    client.close().await;
}

#[tokio::test]
async fn a_dispatcher_with_nothing_to_offer_or_a_bad_token_fails_the_connect() {
    let registry = Arc::new(MemoryRegistry::new());
    let node = start_shared("only", &registry).await;
    let mut bad = dispatched(dispatch_url(&node), "alice");
    bad.bindings[0].token = "not-a-token".into();
    match Client::connect(bad).await {
        Err(
            e @ ClientError::Dispatch {
                status: Some(401), ..
            },
        ) => {
            assert!(!e.is_retryable(), "a bad token is not fixed by retrying")
        }
        other => panic!("expected a 401 from the dispatcher, got {other:?}"),
    }
    admin_drain(&node).await;
    match Client::connect(dispatched(dispatch_url(&node), "alice")).await {
        Err(ClientError::Dispatch {
            status: Some(503),
            code,
            ..
        }) if code == "no_endpoints" => {}
        other => panic!("expected no_endpoints, got {other:?}"),
    }
}

/// A dispatcher that answers every request with `answer` and records each request line.
struct FakeDispatcher {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeDispatcher {
    async fn start(answer: Value) -> FakeDispatcher {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = Vec::new();
                // The request head ends with an empty line; GET has no body.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                seen.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or("").to_owned());
                let body = answer.to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        FakeDispatcher { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/dispatch", self.addr)
    }

    /// The query of each request so far, percent-decoded.
    fn queries(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                let target = line.split(' ').nth(1).unwrap_or("");
                let query = target.split_once('?').map_or("", |(_, q)| q);
                query
                    .replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
            })
            .collect()
    }
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn endpoints_are_tried_in_order_and_failures_reported_at_the_next_request() {
    let node = Node::start(node_config("real")).await.expect("node starts");
    let dead = format!("tcp://127.0.0.1:{}", dead_port().await);
    // A TLS endpoint is tried like any other (it fails at the TCP connect here).
    let dead_tls = format!("tls://127.0.0.1:{}", dead_port().await);
    let real = format!("tcp://{}", node.tcp_addr().unwrap());
    let fake = FakeDispatcher::start(json!({
        "endpoints": [
            {"url": dead},
            {"url": "udp://127.0.0.1:9/"},
            {"url": dead_tls},
            {"url": real},
        ],
        "reconnect": {"initial_ms": 20, "max_ms": 40, "jitter": 0.5},
    }))
    .await;
    let mut config = dispatched(fake.url(), "alice");
    // The dispatcher's backoff must win over these.
    config.reconnect.initial = Duration::from_secs(30);
    config.reconnect.max = Duration::from_secs(60);
    let mut client = Client::connect(config)
        .await
        .expect("the last endpoint works");
    assert_eq!(connected_node(&mut client).await, "real");
    assert_eq!(
        fake.queries(),
        ["app=demo"],
        "the first request reports nothing; the app is the first binding's"
    );

    // The node drains: the client asks again, reporting the node it was told to leave (what
    // failed before the connection is forgotten). Every endpoint fails this round (the dead
    // ones, and the real one refuses with 4101), so it asks once more after a delay of the
    // dispatcher's backoff, not the config's 30 s, reporting them all (the unknown scheme
    // was never tried).
    admin_drain(&node).await;
    match next(&mut client).await {
        Event::Disconnected { code, .. } => assert_eq!(code, Some(Code::DRAIN)),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while fake.queries().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client did not ask again: {:?}",
            fake.queries()
        );
        if let Ok(Some(event)) = timeout(Duration::from_millis(20), client.recv()).await {
            assert!(
                matches!(
                    event,
                    Event::Disconnected {
                        reconnecting: true,
                        ..
                    }
                ),
                "{event:?}"
            );
        }
    }
    let queries = fake.queries();
    assert_eq!(queries[1], format!("app=demo&failed={real}"));
    assert_eq!(
        queries[2],
        format!("app=demo&failed={real},{dead},{dead_tls}")
    );
    client.close().await;
}
