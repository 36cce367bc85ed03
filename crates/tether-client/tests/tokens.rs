//! Tokens that end, against a real node on port 0 (tokens of a few seconds, a 2 s warning, no
//! leeway): a token source keeps a connection bound past its first token, a client without
//! one is closed with 4205, a token the server refuses is reported, an application refreshes
//! by hand, an expired token is fetched again and the client reconnects; and subscription
//! tokens: a `token` topic rule refuses a subscribe without one (4305) and takes one with one,
//! again after a reconnect; and a business subscription to a `token` topic outlives the
//! refusal of the client's recovery subscribe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tether_client::{Client, ClientConfig, Code, Event, Push};
use tether_core::{AppId, UserId};
use tether_server::config::{TopicAccess, TopicRule};
use tether_server::{Config, Node};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};

const SECRET: &[u8] = b"demo-secret-0123456789";
const API_KEY: &str = "demo-api-key-0123456789";
/// Longer than the sweep's second plus a token's whole-second rounding.
const STEP: Duration = Duration::from_secs(4);

/// Tokens warned 2 s ahead and closed right at `exp`; `vip.*` needs a token, the rest is open.
fn node_config() -> Config {
    let mut config = Config::for_tests();
    config.gateway.token_warning = Duration::from_secs(2);
    config.gateway.token_leeway = Duration::ZERO;
    config.gateway.shutdown_spread = Duration::from_millis(50);
    config.gateway.shutdown_grace = Duration::from_secs(1);
    config.apps[0].topics = vec![
        TopicRule {
            pattern: "vip.*".into(),
            allow: TopicAccess::Token,
        },
        TopicRule {
            pattern: "*".into(),
            allow: TopicAccess::Open,
        },
    ];
    config
}

async fn start(config: Config) -> Node {
    Node::start(config).await.expect("node starts")
}

fn token(user: &str, ttl: Duration) -> String {
    tether_core::auth::mint(SECRET, &AppId::from("demo"), &UserId::from(user), ttl)
}

fn client_config(node: &Node, user: &str, ttl: Duration) -> ClientConfig {
    let url = format!("tcp://{}", node.tcp_addr().expect("tcp listener"));
    let mut config =
        ClientConfig::new(url, format!("device-{user}")).bind("demo", token(user, ttl));
    config.reconnect.initial = Duration::from_millis(20);
    config.reconnect.max = Duration::from_millis(200);
    config.connect_timeout = Duration::from_secs(1);
    config
}

/// A token source that counts its calls and gives what `give` makes of the call's number
/// (from 1).
fn counting<F>(
    calls: &Arc<AtomicUsize>,
    give: F,
) -> impl Fn(&str) -> GiveFuture + Send + Sync + use<F>
where
    F: Fn(usize) -> Result<String, String> + Send + Sync + 'static,
{
    let calls = calls.clone();
    move |app| {
        assert_eq!(app, "demo");
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(give(n))
    }
}

type GiveFuture = std::future::Ready<Result<String, String>>;

async fn next(client: &mut Client) -> Event {
    timeout(STEP, client.recv())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

/// Connects; the connection's id.
async fn connect(config: ClientConfig) -> (Client, u64) {
    let mut client = Client::connect(config).await.expect("connect");
    match next(&mut client).await {
        Event::Connected(c) => (client, c.conn_id),
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn push(http: SocketAddr, user: &str, n: u64) {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/v1/apps/demo/push"))
        .bearer_auth(API_KEY)
        .json(&json!({"users": [user], "payload": n}))
        .send()
        .await
        .expect("push request");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON answer");
    assert!(status.is_success(), "{status}: {answer}");
    assert_eq!(answer["connections"], 1, "{answer}");
}

fn payload(push: &Push) -> u64 {
    std::str::from_utf8(&push.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload {:?}", push.payload))
}

/// The stream's end: a final `Disconnected` with 4205, then nothing.
async fn closed_for_an_expired_token(client: &mut Client, event: Event) {
    match event {
        Event::Disconnected {
            code: Some(Code::TOKEN_EXPIRED),
            reconnecting: false,
            ..
        } => {}
        other => panic!("expected a final 4205, got {other:?}"),
    }
    let end = timeout(STEP, client.recv()).await.expect("the stream ends");
    assert_eq!(end, None);
}

#[tokio::test]
async fn a_token_source_keeps_the_connection_bound_past_its_first_token() {
    let node = start(node_config()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let ttl = Duration::from_secs(3);
    let config = client_config(&node, "alice", ttl)
        .with_token_source(counting(&calls, move |_| Ok(token("alice", ttl))));
    let (mut client, _) = connect(config).await;
    let started = Instant::now();
    let mut refreshed = 0;
    // Every push, up to 8 s in (the first token ends at 3 s), on the same connection: no
    // Disconnected and no Connected in between.
    for n in 1..=4 {
        sleep_until(started + Duration::from_secs(2 * n)).await;
        push(node.http_addr(), "alice", n).await;
        loop {
            match next(&mut client).await {
                Event::Message(m) => {
                    assert_eq!(payload(&m), n);
                    break;
                }
                Event::TokenRefreshed { app, expires_s } => {
                    assert_eq!(app, "demo");
                    assert!(expires_s > tether_core::now_ms() / 1000);
                    refreshed += 1;
                }
                other => panic!("expected a message or a refresh, got {other:?}"),
            }
        }
    }
    assert!(refreshed >= 2, "refreshed {refreshed} times");
    assert!(calls.load(Ordering::SeqCst) >= refreshed);
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn without_a_token_source_the_connection_ends_with_its_token() {
    let node = start(node_config()).await;
    let (mut client, _) = connect(client_config(&node, "bob", Duration::from_secs(2))).await;
    let now_s = tether_core::now_ms() / 1000;
    match next(&mut client).await {
        Event::TokenExpiring { app, expires_s } => {
            assert_eq!(app, "demo");
            assert!(expires_s >= now_s && expires_s <= now_s + 2, "{expires_s}");
        }
        other => panic!("expected TokenExpiring, got {other:?}"),
    }
    let event = next(&mut client).await;
    closed_for_an_expired_token(&mut client, event).await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn a_token_the_server_refuses_is_reported_and_the_connection_ends_at_exp() {
    let node = start(node_config()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let ttl = Duration::from_secs(3);
    let config = client_config(&node, "carol", ttl)
        .with_token_source(counting(&calls, move |_| Ok(token("mallory", ttl))));
    let (mut client, _) = connect(config).await;
    let mut refusals = 0;
    let last = loop {
        match next(&mut client).await {
            Event::RefreshFailed {
                app,
                code,
                message,
                retrying,
            } => {
                assert_eq!((app.as_str(), code), ("demo", Some(Code::TOKEN_REFUSED)));
                assert!(message.contains("another user"), "{message}");
                refusals += 1;
                assert!(refusals == 1 || !retrying, "one retry at most");
            }
            other => break other,
        }
    };
    assert!(refusals >= 1);
    // A source whose token the server refused is not asked again after the close.
    closed_for_an_expired_token(&mut client, last).await;
    assert_eq!(calls.load(Ordering::SeqCst), refusals);
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn an_application_without_a_token_source_refreshes_by_hand() {
    let node = start(node_config()).await;
    let (mut client, _) = connect(client_config(&node, "dan", Duration::from_secs(2))).await;
    let started = Instant::now();
    let Event::TokenExpiring { app, .. } = next(&mut client).await else {
        panic!("expected TokenExpiring");
    };
    let wrong = token("eve", Duration::from_secs(60));
    client.refresh(&app, wrong).expect("refresh");
    assert!(matches!(
        next(&mut client).await,
        Event::RefreshFailed {
            code: Some(Code::TOKEN_REFUSED),
            retrying: false,
            ..
        }
    ));
    client
        .refresh(&app, token("dan", Duration::from_secs(60)))
        .expect("refresh");
    assert!(matches!(
        next(&mut client).await,
        Event::TokenRefreshed { .. }
    ));
    // Past the first token's end, the connection is still there (the next event is not a
    // Disconnected).
    sleep_until(started + Duration::from_secs(4)).await;
    push(node.http_addr(), "dan", 1).await;
    match next(&mut client).await {
        Event::Message(m) => assert_eq!(payload(&m), 1),
        other => panic!("expected the push, got {other:?}"),
    }
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn after_a_4205_close_the_client_fetches_a_token_and_reconnects() {
    let node = start(node_config()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(true));
    let ttl = Duration::from_secs(3);
    let source_down = down.clone();
    let config = client_config(&node, "fay", ttl).with_token_source(counting(&calls, move |_| {
        if source_down.load(Ordering::SeqCst) {
            Err("the backend is down".into())
        } else {
            Ok(token("fay", Duration::from_secs(60)))
        }
    }));
    let (mut client, first) = connect(config).await;
    // The source fails while the connection lives (once, and maybe its one retry).
    loop {
        match next(&mut client).await {
            Event::RefreshFailed {
                code: None,
                retrying,
                message,
                ..
            } => {
                assert!(message.contains("the backend is down"), "{message}");
                if !retrying {
                    break;
                }
            }
            other => panic!("expected a failed fetch, got {other:?}"),
        }
    }
    down.store(false, Ordering::SeqCst);
    match next(&mut client).await {
        Event::Disconnected {
            code: Some(Code::TOKEN_EXPIRED),
            reconnecting: true,
            ..
        } => {}
        other => panic!("expected a 4205 close and a reconnect, got {other:?}"),
    }
    match next(&mut client).await {
        Event::Connected(c) => assert_ne!(c.conn_id, first),
        other => panic!("expected a reconnect, got {other:?}"),
    }
    push(node.http_addr(), "fay", 7).await;
    match next(&mut client).await {
        Event::Message(m) => assert_eq!(payload(&m), 7),
        other => panic!("expected the push, got {other:?}"),
    }
    client.close().await;
    node.shutdown();
    node.wait().await;
}

async fn publish(http: SocketAddr, topic: &str, n: u64) {
    publish_qos(http, topic, n, 0).await;
}

async fn publish_qos(http: SocketAddr, topic: &str, n: u64, qos: u8) {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/v1/apps/demo/topics/{topic}/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"payload": n, "qos": qos}))
        .send()
        .await
        .expect("publish request");
    assert!(response.status().is_success(), "{}", response.status());
}

async fn next_publication(client: &mut Client, topic: &str) -> u64 {
    match next(client).await {
        Event::Publication(p) if p.topic == topic => std::str::from_utf8(&p.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("payload {:?}", p.payload)),
        other => panic!("expected a publication of {topic}, got {other:?}"),
    }
}

async fn subscribed(client: &mut Client, topic: &str) {
    match next(client).await {
        Event::Subscribed { topic: t, .. } if t == topic => {}
        other => panic!("expected Subscribed to {topic}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_subscription_token_opens_a_token_topic_again_after_a_reconnect() {
    let node_a = start(node_config()).await;
    let tcp = node_a.tcp_addr().expect("tcp listener");
    let (mut client, _) = connect(client_config(&node_a, "gus", Duration::from_secs(60))).await;

    client.subscribe("demo", "vip.gold").expect("subscribe");
    match next(&mut client).await {
        Event::SubscribeFailed {
            topic,
            code: Code::FORBIDDEN,
            retrying: false,
            message,
            ..
        } if topic == "vip.gold" => assert!(message.contains("vip.gold"), "{message}"),
        other => panic!("expected a 4305 refusal, got {other:?}"),
    }
    client.subscribe("demo", "vip.silver").expect("subscribe");
    assert!(matches!(
        next(&mut client).await,
        Event::SubscribeFailed {
            code: Code::FORBIDDEN,
            ..
        }
    ));
    let sub = tether_core::auth::mint_subscription(
        SECRET,
        &tether_core::AppId::from("demo"),
        &UserId::from("gus"),
        "vip.gold",
        Duration::from_secs(60),
    );
    client
        .subscribe_with_token("demo", "vip.gold", sub)
        .expect("subscribe");
    subscribed(&mut client, "vip.gold").await;
    publish(node_a.http_addr(), "vip.gold", 1).await;
    assert_eq!(next_publication(&mut client, "vip.gold").await, 1);

    // A new node on the same port: the client resubscribes with the token, and only to the
    // topic it was let into (the refused one is not asked for again).
    node_a.shutdown();
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            reconnecting: true,
            ..
        }
    ));
    node_a.wait().await;
    let mut config = node_config();
    config.listen.tcp = tcp.to_string();
    let node_b = start(config).await;
    loop {
        match next(&mut client).await {
            Event::Connected(_) => break,
            Event::Disconnected {
                reconnecting: true, ..
            } => {}
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
    subscribed(&mut client, "vip.gold").await;
    publish(node_b.http_addr(), "vip.gold", 2).await;
    assert_eq!(next_publication(&mut client, "vip.gold").await, 2);
    if let Ok(event) = timeout(Duration::from_millis(200), client.recv()).await {
        panic!("nothing else should arrive, got {event:?}");
    }
    client.close().await;
    node_b.shutdown();
    node_b.wait().await;
}

/// A TCP proxy between a client and a node, so that a test can cut the client's connection
/// and keep it out while it publishes (as in e2e.rs).
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
                let mut state = shared.lock().expect("proxy state");
                let Some(upstream) = state.upstream else {
                    continue;
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

#[tokio::test]
async fn a_business_subscription_to_a_token_topic_is_recovered_after_a_reconnect() {
    let node = start(node_config()).await;
    let (http, tcp) = (node.http_addr(), node.tcp_addr().expect("tcp listener"));
    let proxy = Proxy::start(tcp).await;
    let mut config = client_config(&node, "ida", Duration::from_secs(3600));
    config.url = format!("tcp://{}", proxy.addr);
    let (mut client, _) = connect(config).await;
    // The business subscribes the user (not checked against the topic rules).
    let response = reqwest::Client::new()
        .post(format!(
            "http://{http}/v1/apps/demo/users/ida/topics/vip.news"
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("subscribe request");
    assert!(response.status().is_success(), "{}", response.status());
    match next(&mut client).await {
        Event::Subscribed {
            topic,
            server_side: true,
            ..
        } if topic == "vip.news" => {}
        other => panic!("expected a server-side Subscribed, got {other:?}"),
    }
    publish_qos(http, "vip.news", 1, 1).await;
    assert_eq!(next_publication(&mut client, "vip.news").await, 1);

    proxy.cut();
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            reconnecting: true,
            ..
        }
    ));
    for n in 2..=3 {
        publish_qos(http, "vip.news", n, 1).await;
    }
    proxy.open(tcp);
    loop {
        match next(&mut client).await {
            Event::Connected(_) => break,
            Event::Disconnected {
                reconnecting: true, ..
            } => {}
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
    // The node re-applies the subscription; the client's subscribe with `since` to recover 2
    // and 3 asks for a topic the connection holds, which the rules do not refuse.
    let mut got = Vec::new();
    while got.len() < 2 {
        match next(&mut client).await {
            Event::Subscribed { topic, .. } if topic == "vip.news" => {}
            Event::Publication(p) if p.topic == "vip.news" => {
                got.push(
                    std::str::from_utf8(&p.payload)
                        .unwrap()
                        .parse::<u64>()
                        .unwrap(),
                );
            }
            other => panic!("expected the subscription and 2..=3, got {other:?}"),
        }
    }
    assert_eq!(got, [2, 3]);
    publish_qos(http, "vip.news", 4, 1).await;
    assert_eq!(next_publication(&mut client, "vip.news").await, 4);
    client.close().await;
    node.shutdown();
    node.wait().await;
}
