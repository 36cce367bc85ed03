//! Upstream data and presence events, end to end: raw TCP and WebSocket clients, a real node on
//! port 0, and a real HTTP webhook (the business) on port 0.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::receiver::{Answer, Receiver, Seen};
use common::*;
use serde_json::{Value, json};
use tether_proto::{
    Binding, Body, Code, Connected, ErrorBody, Frame, PayloadKind, Upstream, UpstreamReply,
};
use tether_server::config::{AppConfig, Secret};
use tether_server::{Config, Node};

/// Each test uses its own app, so that the metrics (shared by the process) stay apart.
fn app_config(app: &str, webhook: Option<&str>) -> AppConfig {
    let mut config = AppConfig::new(
        app,
        secret(app),
        Secret::new(format!("{app}-key-0123456789")),
    );
    config.webhook = webhook.map(str::to_owned);
    config
}

fn secret(app: &str) -> Secret {
    Secret::new(format!("{app}-secret-0123456789"))
}

/// A test config with `app` (whose webhook is `webhook`) next to the demo app; retries are
/// quick.
fn config(app: &str, webhook: Option<&str>) -> Config {
    let mut config = Config::for_tests();
    config.apps.push(app_config(app, webhook));
    config.webhook.backoff_min = Duration::from_millis(10);
    config.webhook.backoff_max = Duration::from_millis(50);
    config.webhook.timeout = Duration::from_secs(2);
    config
}

/// A TCP client of `app` as `user`.
async fn connect(node: &Node, app: &str, user: &str, device: &str) -> (TcpClient, Connected) {
    let mut client = TcpClient::open(node.tcp_addr().expect("tcp")).await;
    let binding = Binding {
        app: app.into(),
        token: token_for(app, secret(app).expose(), user),
        last_seq: None,
    };
    client.send(&connect_with(device, 0, vec![binding])).await;
    let connected = expect_connected(client.frame().await);
    (client, connected)
}

fn upstream(id: u32, app: &str, kind: &str, payload_kind: PayloadKind, payload: &[u8]) -> Frame {
    Frame::new(
        id,
        Upstream {
            app: app.into(),
            kind: kind.into(),
            payload_kind,
            payload: Bytes::copy_from_slice(payload),
        },
    )
}

fn expect_reply(frame: Frame, id: u32) -> UpstreamReply {
    assert_eq!(frame.id, id, "the reply carries the upstream's request id");
    match frame.body {
        Body::UpstreamReply(r) => r,
        other => panic!("expected upstream_reply, got {other:?}"),
    }
}

fn expect_error(frame: Frame, id: u32) -> ErrorBody {
    assert_eq!(frame.id, id, "the error carries the upstream's request id");
    match frame.body {
        Body::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn metric_value(node: &Node, name_and_labels: &str) -> f64 {
    let page = Http::new(node).metrics().await;
    metric(&page, name_and_labels).unwrap_or(0.0)
}

#[tokio::test]
async fn upstream_round_trip_over_tcp_signed() {
    let app = "up-tcp";
    let hook = Receiver::start(|_, seen| {
        // The business echoes what it was sent, to show the answer is its own.
        let reply = json!({"ok": true, "got": seen.json["payload"]});
        Answer::json(200, &reply.to_string())
    })
    .await;
    let node = start(config(app, Some(&hook.url))).await;
    let (mut client, connected) = connect(&node, app, "alice", "phone-1").await;

    let payload = br#"{"to":"bob","text":"hi"}"#;
    client
        .send(&upstream(7, app, "chat", PayloadKind::Json, payload))
        .await;
    let reply = expect_reply(client.frame().await, 7);
    assert_eq!(reply.app, app);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.kind, PayloadKind::Json);
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        body,
        json!({"ok": true, "got": {"to": "bob", "text": "hi"}})
    );

    let seen = hook.wait_for(1).await;
    let post = &seen[0];
    post.assert_signed_with(secret(app).expose());
    assert_eq!(post.header("x-tether-event"), "upstream");
    let now = tether_core::now_ms();
    let ts = post.json["ts_ms"].as_u64().unwrap();
    assert!(ts <= now && now - ts < 10_000, "ts_ms {ts}");
    let id = post.json["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("tether-1-"), "{id}");
    assert_eq!(
        post.json,
        json!({
            "type": "upstream",
            "id": id,
            "app": app,
            "kind": "chat",
            "user": "alice",
            "device": "phone-1",
            "transport": "tcp",
            "conn_id": connected.conn_id,
            "node": "tether-1",
            "request_id": 7,
            "ts_ms": ts,
            "payload": {"to": "bob", "text": "hi"},
        })
    );
    assert_eq!(
        metric_value(
            &node,
            &format!("tether_webhook_sent_total{{app=\"{app}\",kind=\"upstream\"}}")
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn upstream_round_trip_over_websocket_json() {
    let app = "up-ws";
    let hook = Receiver::start(|n, _| match n {
        0 => Answer::Reply(200, "text/plain", "thanks".into()),
        _ => Answer::json(201, r#"{"id":42}"#),
    })
    .await;
    let node = start(config(app, Some(&hook.url))).await;
    let mut client = WsClient::open(&node).await;
    let connect = json!({
        "op": "connect", "id": 1, "device": "browser-1",
        "bindings": [{"app": app, "token": token_for(app, secret(app).expose(), "bob")}],
    });
    client.send_text(&connect.to_string()).await;
    assert_eq!(client.json().await["op"], "connected");

    // Bytes travel as base64 both ways; a text answer comes back as bytes.
    let up =
        json!({"op": "upstream", "id": 2, "app": app, "kind": "blob", "payload_base64": "AAEC"});
    client.send_text(&up.to_string()).await;
    let reply = client.json().await;
    assert_eq!(
        reply,
        json!({"op": "upstream_reply", "id": 2, "app": app, "status": 200, "payload_base64": "dGhhbmtz"})
    );
    // JSON is embedded both ways.
    let up =
        json!({"op": "upstream", "id": 3, "app": app, "kind": "score", "payload": {"points": 10}});
    client.send_text(&up.to_string()).await;
    let reply = client.json().await;
    assert_eq!(
        reply,
        json!({"op": "upstream_reply", "id": 3, "app": app, "status": 201, "payload": {"id": 42}})
    );

    let seen = hook.wait_for(2).await;
    for post in &seen {
        post.assert_signed_with(secret(app).expose());
        assert_eq!(post.json["user"], "bob");
        assert_eq!(post.json["device"], "browser-1");
    }
    assert_eq!(seen[0].json["payload_base64"], "AAEC");
    assert!(seen[0].json.get("payload").is_none());
    assert_eq!(seen[1].json["payload"], json!({"points": 10}));
    assert_ne!(seen[0].json["id"], seen[1].json["id"]);
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let app = "up-retry";
    let hook = Receiver::start(|n, _| match n {
        0 | 1 => Answer::json(500, r#"{"error":"database down"}"#),
        _ => Answer::json(200, r#"{"stored":true}"#),
    })
    .await;
    let mut with_admin = config(app, Some(&hook.url));
    with_admin.admin.key = Some(Secret::new("admin-key-0123456789"));
    let node = start(with_admin).await;
    let (mut client, _) = connect(&node, app, "alice", "d1").await;
    client
        .send(&upstream(3, app, "chat", PayloadKind::Binary, b"\x01\x02"))
        .await;
    let reply = expect_reply(client.frame().await, 3);
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.payload[..], br#"{"stored":true}"#);

    let seen = hook.settle(3, Duration::from_millis(200)).await;
    let ids: Vec<&Value> = seen.iter().map(|s| &s.json["id"]).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery id: {ids:?}"
    );
    for post in &seen {
        // Each attempt is signed on its own, with its own timestamp.
        post.assert_signed_with(secret(app).expose());
        assert_eq!(post.body, seen[0].body, "the same body every time");
    }
    let labels = format!("{{app=\"{app}\",kind=\"upstream\"}}");
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_retries_total{labels}")).await,
        2.0
    );
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_sent_total{labels}")).await,
        1.0
    );
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_failed_total{labels}")).await,
        0.0
    );
    // The admin stats show the same.
    let stats = Http::new(&node)
        .get("/v1/admin/stats", Some("admin-key-0123456789"))
        .await;
    assert_eq!(stats.status, 200, "{:?}", stats.body);
    let hooks = stats.body["webhooks"].as_array().expect("webhooks");
    let up = hooks
        .iter()
        .find(|h| h["app"] == app && h["kind"] == "upstream")
        .expect("the app's upstream queue");
    assert_eq!(
        (
            up["sent"].as_u64(),
            up["failed"].as_u64(),
            up["queued"].as_u64()
        ),
        (Some(1), Some(0), Some(0))
    );
    assert!(up["capacity"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test]
async fn client_errors_are_answered_and_not_retried() {
    let app = "up-4xx";
    let hook = Receiver::start(|_, _| Answer::json(422, r#"{"error":"text too long"}"#)).await;
    let node = start(config(app, Some(&hook.url))).await;
    let (mut client, _) = connect(&node, app, "alice", "d1").await;
    client
        .send(&upstream(4, app, "chat", PayloadKind::Json, b"{}"))
        .await;
    let reply = expect_reply(client.frame().await, 4);
    assert_eq!(reply.status, 422);
    assert_eq!(&reply.payload[..], br#"{"error":"text too long"}"#);
    // Well past the backoff: nothing came again.
    hook.settle(1, Duration::from_millis(300)).await;
    let labels = format!("{{app=\"{app}\",kind=\"upstream\"}}");
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_retries_total{labels}")).await,
        0.0
    );
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_failed_total{labels}")).await,
        1.0
    );
}

#[tokio::test]
async fn exhausted_retries_answer_the_last_status_or_upstream_failed() {
    // A webhook that keeps failing: the client gets its last 5xx after 1 + retries attempts.
    let app = "up-exhaust";
    let hook = Receiver::start(|_, _| Answer::json(503, r#"{"busy":true}"#)).await;
    let mut cfg = config(app, Some(&hook.url));
    cfg.webhook.retries = 2;
    // A webhook nobody listens on: the client gets 4304.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    cfg.apps.push(app_config("up-dead", Some(&dead_url)));
    let node = start(cfg).await;

    let (mut client, _) = connect(&node, app, "alice", "d1").await;
    client
        .send(&upstream(5, app, "chat", PayloadKind::Json, b"{}"))
        .await;
    let reply = expect_reply(client.frame().await, 5);
    assert_eq!(reply.status, 503);
    hook.settle(3, Duration::from_millis(200)).await;

    let (mut client, _) = connect(&node, "up-dead", "alice", "d1").await;
    client
        .send(&upstream(6, "up-dead", "chat", PayloadKind::Json, b"{}"))
        .await;
    let e = expect_error(client.frame().await, 6);
    assert_eq!(e.code, Code::UPSTREAM_FAILED, "{}", e.message);
    assert!(e.message.contains("3 attempts"), "{}", e.message);
    let labels = "{app=\"up-dead\",kind=\"upstream\"}";
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_retries_total{labels}")).await,
        2.0
    );
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_failed_total{labels}")).await,
        1.0
    );
}

#[tokio::test]
async fn a_full_queue_answers_busy_and_a_connection_is_limited() {
    let app = "up-busy";
    let hook = Receiver::start(|_, _| Answer::Hold).await;
    let mut cfg = config(app, Some(&hook.url));
    cfg.webhook.workers = 1;
    cfg.webhook.queue = 1;
    cfg.webhook.max_in_flight = 2;
    let node = start(cfg).await;
    let (mut a, _) = connect(&node, app, "alice", "d1").await;
    let (mut b, _) = connect(&node, app, "bob", "d2").await;

    // The one worker holds the first (the webhook does not answer)...
    a.send(&upstream(1, app, "chat", PayloadKind::Json, b"1"))
        .await;
    hook.wait_for(1).await;
    // ...the second waits in the queue of one...
    a.send(&upstream(2, app, "chat", PayloadKind::Json, b"2"))
        .await;
    // ...a third from the same connection passes its limit of two in flight...
    a.send(&upstream(3, app, "chat", PayloadKind::Json, b"3"))
        .await;
    let e = expect_error(a.frame().await, 3);
    assert_eq!(e.code, Code::LIMIT, "{}", e.message);
    // ...and one from another connection finds the queue full: busy, retry later.
    b.send(&upstream(9, app, "chat", PayloadKind::Json, b"9"))
        .await;
    let e = expect_error(b.frame().await, 9);
    assert_eq!(e.code, Code::UNAVAILABLE, "{}", e.message);
    assert!(e.message.contains("busy"), "{}", e.message);
    let labels = format!("{{app=\"{app}\",kind=\"upstream\"}}");
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_dropped_total{labels}")).await,
        1.0
    );
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_limited_total{labels}")).await,
        1.0
    );
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_queued{labels}")).await,
        1.0
    );

    // Once the webhook answers, both waiting upstreams are answered, in turn.
    hook.release();
    assert_eq!(expect_reply(a.frame().await, 1).status, 200);
    assert_eq!(expect_reply(a.frame().await, 2).status, 200);
    // The places are free again.
    b.send(&upstream(10, app, "chat", PayloadKind::Json, b"10"))
        .await;
    assert_eq!(expect_reply(b.frame().await, 10).status, 200);
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_queued{labels}")).await,
        0.0
    );
}

#[tokio::test]
async fn bad_upstreams_and_apps_without_a_webhook_get_clear_errors() {
    let app = "up-bad";
    let hook = Receiver::ok().await;
    let node = start(config(app, Some(&hook.url))).await;

    // The demo app has no webhook.
    let (mut demo, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "d0", 0).await;
    demo.send(&upstream(1, APP, "chat", PayloadKind::Json, b"{}"))
        .await;
    let e = expect_error(demo.frame().await, 1);
    assert_eq!(e.code, Code::NO_WEBHOOK);
    assert_eq!(
        e.message,
        "no webhook configured for app demo: it takes no upstream data"
    );

    let (mut client, _) = connect(&node, app, "alice", "d1").await;
    let max = Config::for_tests().limits.max_payload;
    for (id, frame, code, needle) in [
        (
            2,
            upstream(2, APP, "chat", PayloadKind::Json, b"{}"),
            Code::BAD_REQUEST,
            "has not bound",
        ),
        (
            3,
            upstream(3, app, "", PayloadKind::Json, b"{}"),
            Code::BAD_REQUEST,
            "must not be empty",
        ),
        (
            4,
            upstream(4, app, "a\nb", PayloadKind::Json, b"{}"),
            Code::BAD_REQUEST,
            "control character",
        ),
        (
            5,
            upstream(5, app, &"k".repeat(129), PayloadKind::Json, b"{}"),
            Code::BAD_REQUEST,
            "longer than 128",
        ),
        (
            6,
            upstream(6, app, "blob", PayloadKind::Binary, &vec![0; max + 1]),
            Code::BAD_REQUEST,
            "larger than the limit",
        ),
    ] {
        client.send(&frame).await;
        let e = expect_error(client.frame().await, id);
        assert_eq!(e.code, code, "{}", e.message);
        assert!(
            e.message.contains(needle),
            "{needle:?} not in {:?}",
            e.message
        );
    }
    // The connection is still fine, and a payload of exactly the limit goes through.
    client
        .send(&upstream(
            7,
            app,
            "blob",
            PayloadKind::Binary,
            &vec![0; max],
        ))
        .await;
    assert_eq!(expect_reply(client.frame().await, 7).status, 200);
    let seen = hook.settle(1, Duration::from_millis(100)).await;
    assert_eq!(seen[0].json["request_id"], 7);
}

#[tokio::test]
async fn the_answer_of_a_closed_connection_is_dropped_and_the_data_still_delivered() {
    let app = "up-gone";
    let hook = Receiver::start(|_, _| Answer::Hold).await;
    let node = start(config(app, Some(&hook.url))).await;
    let (mut client, _) = connect(&node, app, "alice", "d1").await;
    client
        .send(&upstream(1, app, "chat", PayloadKind::Json, b"{}"))
        .await;
    hook.wait_for(1).await;
    drop(client);
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hook.release();
    let labels = format!("{{app=\"{app}\",kind=\"upstream\"}}");
    let lost = format!("tether_webhook_replies_lost_total{labels}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric_value(&node, &lost).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the answer was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_sent_total{labels}")).await,
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Presence events

/// The events of the webhook's successful POSTs, in order: (event, user, seq).
fn delivered_events(
    seen: &[Seen],
    answered_ok: impl Fn(usize) -> bool,
) -> Vec<(String, String, u64)> {
    seen.iter()
        .enumerate()
        .filter(|(n, _)| answered_ok(*n))
        .flat_map(|(_, post)| post.json["events"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["user"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn presence_config(app: &str, webhook: &str) -> Config {
    let mut cfg = config(app, Some(webhook));
    if let Some(a) = cfg.apps.iter_mut().find(|a| a.id.as_str() == app) {
        a.presence_events = true;
    }
    cfg
}

#[tokio::test]
async fn presence_events_are_batched_retried_and_delivered() {
    let app = "presence";
    // The business fails the first three POSTs.
    let hook = Receiver::start(|n, _| match n {
        0..=2 => Answer::json(500, "{}"),
        _ => Answer::json(200, "{}"),
    })
    .await;
    let mut cfg = presence_config(app, &hook.url);
    cfg.webhook.events_batch = 3;
    // Long enough for the three connects below to share the first batch, even on a slow
    // machine: that batch goes when it is full, not on this timer.
    cfg.webhook.events_interval = Duration::from_secs(1);
    let node = start(cfg).await;

    // Three users come online quickly: one batch of three (it is full, it goes at once).
    let (alice1, _) = connect(&node, app, "alice", "phone").await;
    let (bob, _) = connect(&node, app, "bob", "phone").await;
    let (carol, c_carol) = connect(&node, app, "carol", "tablet").await;
    // A second connection of alice is no event; neither is closing one of her two.
    let (alice2, c_alice2) = connect(&node, app, "alice", "laptop").await;
    drop(alice1);
    // Closing her last one is; so is carol's only one.
    let seen = hook.wait_for(4).await;
    assert_eq!(
        seen[0].json["events"].as_array().unwrap().len(),
        3,
        "{:#?}",
        seen[0].json
    );
    drop(alice2);
    drop(carol);

    let deadline = tokio::time::Instant::now() + WAIT;
    let events = loop {
        let events = delivered_events(&hook.seen(), |n| n >= 3);
        if events.len() >= 5 {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered so far: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen = hook.seen();
    for post in &seen {
        post.assert_signed_with(secret(app).expose());
        assert_eq!(post.header("x-tether-event"), "presence");
        assert_eq!(post.json["type"], "presence");
        assert_eq!(post.json["app"], app);
        assert_eq!(post.json["node"], "tether-1");
    }
    // The failed POSTs were the same batch, retried (same delivery id).
    let first_id = &seen[0].json["id"];
    assert!(seen[..4].iter().all(|s| s.json["id"] == *first_id));

    let mut kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|(e, u, _)| (e.as_str(), u.as_str()))
        .collect();
    assert_eq!(
        &kinds[..3],
        [("online", "alice"), ("online", "bob"), ("online", "carol")]
    );
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            ("offline", "alice"),
            ("offline", "carol"),
            ("online", "alice"),
            ("online", "bob"),
            ("online", "carol")
        ]
    );
    // The business orders a user's events by seq.
    let seq = |event: &str, user: &str| {
        events
            .iter()
            .find(|(e, u, _)| e == event && u == user)
            .unwrap()
            .2
    };
    assert!(seq("online", "alice") < seq("offline", "alice"));
    assert!(seq("online", "carol") < seq("offline", "carol"));
    // Each event names the connection that made the transition.
    let all: Vec<Value> = seen[3..]
        .iter()
        .flat_map(|p| p.json["events"].as_array().cloned().unwrap())
        .collect();
    let offline_alice = all
        .iter()
        .find(|e| e["event"] == "offline" && e["user"] == "alice")
        .unwrap();
    assert_eq!(offline_alice["conn_id"], c_alice2.conn_id);
    assert_eq!(offline_alice["device"], "laptop");
    let offline_carol = all
        .iter()
        .find(|e| e["event"] == "offline" && e["user"] == "carol")
        .unwrap();
    assert_eq!(offline_carol["conn_id"], c_carol.conn_id);
    assert!(offline_carol["ts_ms"].as_u64().unwrap() > 0);
    drop(bob);

    let labels = format!("{{app=\"{app}\",kind=\"presence\"}}");
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_retries_total{labels}")).await,
        3.0
    );
    assert!(metric_value(&node, &format!("tether_webhook_sent_total{labels}")).await >= 5.0);
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_dropped_total{labels}")).await,
        0.0
    );
}

#[tokio::test]
async fn a_reconnect_storm_is_bounded_by_the_queue_and_counted() {
    let app = "presence-storm";
    let hook = Receiver::start(|_, _| Answer::Hold).await;
    let mut cfg = presence_config(app, &hook.url);
    cfg.webhook.events_batch = 1;
    cfg.webhook.events_queue = 2;
    let node = start(cfg).await;
    // The first event is taken by the flusher, whose POST the webhook holds.
    let mut clients = vec![connect(&node, app, "u0", "d").await.0];
    hook.wait_for(1).await;
    // Two more wait in the queue; the next three find it full and are dropped.
    for i in 1..6 {
        clients.push(connect(&node, app, &format!("u{i}"), "d").await.0);
    }
    let labels = format!("{{app=\"{app}\",kind=\"presence\"}}");
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_dropped_total{labels}")).await,
        3.0
    );
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_queued{labels}")).await,
        2.0
    );
    hook.release();
    let seen = hook.settle(3, Duration::from_millis(200)).await;
    let users: Vec<&str> = seen
        .iter()
        .map(|s| s.json["events"][0]["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["u0", "u1", "u2"]);
    assert_eq!(
        metric_value(&node, &format!("tether_webhook_sent_total{labels}")).await,
        3.0
    );
}

#[tokio::test]
async fn shutdown_sends_the_offline_events_it_causes() {
    let app = "presence-stop";
    let hook = Receiver::ok().await;
    let mut cfg = presence_config(app, &hook.url);
    // Far longer than the test: only the shutdown can make the flusher send early.
    cfg.webhook.events_interval = Duration::from_secs(30);
    cfg.gateway.shutdown_spread = Duration::ZERO;
    let node = start(cfg).await;
    let (mut client, _) = connect(&node, app, "alice", "d").await;
    node.shutdown();
    client.expect_disconnect(Code::SHUTDOWN).await;
    tokio::time::timeout(WAIT, node.wait())
        .await
        .expect("node stopped");
    let seen = hook.wait_for(1).await;
    let events = delivered_events(&seen, |_| true);
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|(e, u, _)| (e.as_str(), u.as_str()))
        .collect();
    assert_eq!(kinds, [("online", "alice"), ("offline", "alice")]);
}
