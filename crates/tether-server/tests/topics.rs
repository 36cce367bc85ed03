//! Topics, publish, broadcast and rate control, end to end: raw TCP and WebSocket clients, the
//! HTTP API, a real node on port 0.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tether_core::AppId;
use tether_proto::{
    Body, Code, Frame, Publication, Push, Recovery, Subscribe, Subscribed, Unsubscribe,
};
use tether_server::Config;
use tether_server::config::{AppConfig, Secret};
use tokio::time::timeout;

const OTHER: &str = "other";
const OTHER_SECRET: &str = "other-secret-0123456789";
const OTHER_KEY: &str = "other-api-key-0123456789";

fn subscribe(id: u32, topic: &str, since: Option<u64>) -> Frame {
    Frame::new(
        id,
        Subscribe {
            app: APP.into(),
            topic: topic.into(),
            since,
            token: None,
        },
    )
}

fn unsubscribe(id: u32, topic: &str) -> Frame {
    Frame::new(
        id,
        Unsubscribe {
            app: APP.into(),
            topic: topic.into(),
        },
    )
}

fn expect_subscribed(frame: Frame) -> (u32, Subscribed) {
    match frame.body {
        Body::Subscribed(s) => (frame.id, s),
        other => panic!("expected subscribed, got {other:?}"),
    }
}

fn expect_publication(frame: Frame) -> Publication {
    match frame.body {
        Body::Publication(p) => p,
        other => panic!("expected a publication, got {other:?}"),
    }
}

fn expect_error(frame: Frame) -> (u32, Code) {
    match frame.body {
        Body::Error(e) => (frame.id, e.code),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn publish(http: &Http, topic: &str, body: Value) -> Reply {
    http.post_raw(
        &format!("/v1/apps/{APP}/topics/{topic}/publish"),
        Some(API_KEY),
        &body.to_string(),
    )
    .await
}

async fn publish_ok(http: &Http, topic: &str, body: Value) -> Value {
    let reply = publish(http, topic, body).await;
    assert_eq!(reply.status, 200, "publish failed: {:?}", reply.body);
    reply.body
}

/// A TCP client for `user`, subscribed to `topic` (live only).
async fn subscriber(node: &tether_server::Node, user: &str, topic: &str) -> TcpClient {
    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), user, "d", 0).await;
    client.send(&subscribe(1, topic, None)).await;
    let (id, s) = expect_subscribed(client.frame().await);
    assert_eq!((id, s.recovery), (1, Recovery::Live));
    client
}

#[tokio::test]
async fn subscribe_publish_and_unsubscribe_over_tcp() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let mut client = subscriber(&node, "alice", "room-1").await;

    let reply = publish_ok(&http, "room-1", json!({"payload": {"n": 1}})).await;
    assert_eq!(reply["subscribers"], 1, "{reply}");
    assert_eq!(reply["offset"], Value::Null, "qos 0 is not kept");
    let p = expect_publication(client.frame().await);
    assert_eq!((p.app.as_str(), p.topic.as_str()), (APP, "room-1"));
    assert_eq!(&p.payload[..], br#"{"n":1}"#);
    assert_eq!(p.offset, 0);
    assert_eq!(p.msg_id.to_string(), reply["id"].as_str().unwrap());

    // Another topic does not reach it.
    publish_ok(&http, "room-2", json!({"payload": 2})).await;
    client.send(&unsubscribe(7, "room-1")).await;
    let frame = client.frame().await;
    assert_eq!(frame.id, 7);
    assert!(matches!(frame.body, Body::Unsubscribed(_)), "{frame:?}");
    let reply = publish_ok(&http, "room-1", json!({"payload": 3})).await;
    assert_eq!(reply["subscribers"], 0);
    assert!(
        client
            .recv_within(Duration::from_millis(100))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn subscribe_and_publish_over_websocket_json() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let mut ws = WsClient::open(&node).await;
    let connect = tether_proto::json::encode(&connect_frame("alice", "browser", 0));
    ws.send_text(&connect).await;
    assert_eq!(ws.json().await["op"], "connected");
    ws.send_text(r#"{"op":"subscribe","id":3,"app":"demo","topic":"news"}"#)
        .await;
    let reply = ws.json().await;
    assert_eq!(
        (reply["op"].as_str(), reply["id"].as_u64()),
        (Some("subscribed"), Some(3))
    );
    assert_eq!(reply["recovery"], "live");

    publish_ok(
        &http,
        "news",
        json!({"payload": {"headline": "hi"}, "qos": 1}),
    )
    .await;
    let p = ws.json().await;
    assert_eq!(p["op"], "publication");
    assert_eq!(p["topic"], "news");
    assert_eq!(p["offset"], 1);
    assert_eq!(p["payload"], json!({"headline": "hi"}));

    ws.send_text(r#"{"op":"unsubscribe","id":4,"app":"demo","topic":"news"}"#)
        .await;
    let reply = ws.json().await;
    assert_eq!(
        (reply["op"].as_str(), reply["id"].as_u64()),
        (Some("unsubscribed"), Some(4))
    );
}

#[tokio::test]
async fn a_publish_to_1000_subscribers_arrives_exactly_once_at_each() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (mut client, _) = TcpClient::connected(addr, &format!("u{i}"), "d", 0).await;
        client.send(&subscribe(1, "big", None)).await;
        expect_subscribed(client.frame().await);
        tasks.push(client);
    }
    let info = http
        .get(&format!("/v1/apps/{APP}/topics/big"), Some(API_KEY))
        .await;
    assert_eq!(info.body["subscribers"], 1000, "{:?}", info.body);
    for n in 1..=5 {
        let reply = publish_ok(&http, "big", json!({"payload": n, "qos": 1})).await;
        assert_eq!(reply["offset"], n);
    }
    let readers = tasks.into_iter().map(|mut client| {
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for _ in 0..5 {
                offsets.push(expect_publication(client.frame().await).offset);
            }
            // Nothing more: no duplicate.
            assert!(
                client
                    .recv_within(Duration::from_millis(20))
                    .await
                    .is_none()
            );
            offsets
        })
    });
    for reader in readers {
        assert_eq!(reader.await.unwrap(), vec![1, 2, 3, 4, 5]);
    }
}

#[tokio::test]
async fn concurrent_durable_publishes_reach_a_subscriber_in_offset_order() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let mut client = subscriber(&node, "alice", "busy").await;
    let mut sends = Vec::new();
    for worker in 0..16 {
        let http = http.clone();
        sends.push(tokio::spawn(async move {
            for n in 0..25 {
                publish_ok(&http, "busy", json!({"payload": [worker, n], "qos": 1})).await;
            }
        }));
    }
    for send in sends {
        send.await.unwrap();
    }
    for offset in 1..=400 {
        assert_eq!(expect_publication(client.frame().await).offset, offset);
    }
    assert!(
        client
            .recv_within(Duration::from_millis(50))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_resubscribe_with_its_offset_gets_what_it_missed_then_live() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    for n in 1..=5 {
        publish_ok(&http, "feed", json!({"payload": n, "qos": 1})).await;
    }
    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "d", 0).await;
    client.send(&subscribe(2, "feed", Some(2))).await;
    let (id, s) = expect_subscribed(client.frame().await);
    assert_eq!((id, s.recovery, s.offset), (2, Recovery::Complete, 5));
    for offset in 3..=5 {
        let p = expect_publication(client.frame().await);
        assert_eq!(
            (p.offset, p.payload.to_vec()),
            (offset, offset.to_string().into_bytes())
        );
    }
    publish_ok(&http, "feed", json!({"payload": 6, "qos": 1})).await;
    assert_eq!(expect_publication(client.frame().await).offset, 6);

    // Up to date: nothing to recover.
    let (mut other, _) = TcpClient::connected(node.tcp_addr().unwrap(), "bob", "d", 0).await;
    other.send(&subscribe(3, "feed", Some(6))).await;
    let (_, s) = expect_subscribed(other.frame().await);
    assert_eq!((s.recovery, s.offset), (Recovery::Complete, 6));
    publish_ok(&http, "feed", json!({"payload": 7, "qos": 1})).await;
    assert_eq!(expect_publication(other.frame().await).offset, 7);
    assert_eq!(expect_publication(client.frame().await).offset, 7);
}

#[tokio::test]
async fn a_subscriber_behind_the_history_is_told_it_is_too_old() {
    let mut config = Config::for_tests();
    config.store.topic_history = 3;
    let node = start(config).await;
    let http = Http::new(&node);
    for n in 1..=6 {
        publish_ok(&http, "feed", json!({"payload": n, "qos": 1})).await;
    }
    let info = http
        .get(&format!("/v1/apps/{APP}/topics/feed"), Some(API_KEY))
        .await;
    assert_eq!(
        (info.body["offset"].as_u64(), info.body["earliest"].as_u64()),
        (Some(6), Some(4))
    );

    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "d", 0).await;
    // 3 is the oldest one a recovery can start after: 4, 5, 6 are held.
    client.send(&subscribe(1, "feed", Some(3))).await;
    let (_, s) = expect_subscribed(client.frame().await);
    assert_eq!((s.recovery, s.offset), (Recovery::Complete, 6));
    for offset in 4..=6 {
        assert_eq!(expect_publication(client.frame().await).offset, offset);
    }
    // 2 would need 3, which is gone.
    client.send(&subscribe(2, "feed", Some(2))).await;
    let (id, s) = expect_subscribed(client.frame().await);
    assert_eq!((id, s.recovery, s.offset), (2, Recovery::TooOld, 6));
    // Nothing recovered, live continues.
    publish_ok(&http, "feed", json!({"payload": 7, "qos": 1})).await;
    assert_eq!(expect_publication(client.frame().await).offset, 7);
}

#[tokio::test]
async fn server_side_subscriptions_apply_to_connections_now_and_later() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let (mut phone, _) = TcpClient::connected(addr, "alice", "phone", 0).await;
    let path = format!("/v1/apps/{APP}/users/alice/topics/alerts");
    let reply = http.post_raw(&path, Some(API_KEY), "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        (
            reply.body["changed"].as_bool(),
            reply.body["connections"].as_u64()
        ),
        (Some(true), Some(1))
    );
    let (id, s) = expect_subscribed(phone.frame().await);
    assert_eq!((id, s.topic.as_str()), (0, "alerts"));

    // A later connection of the same user joins at connect.
    let (mut laptop, _) = TcpClient::connected(addr, "alice", "laptop", 0).await;
    let (id, _) = expect_subscribed(laptop.frame().await);
    assert_eq!(id, 0);
    // Another user does not.
    let (mut bob, _) = TcpClient::connected(addr, "bob", "phone", 0).await;

    let reply = publish_ok(&http, "alerts", json!({"payload": "fire"})).await;
    assert_eq!(reply["subscribers"], 2);
    expect_publication(phone.frame().await);
    expect_publication(laptop.frame().await);
    assert!(bob.recv_within(Duration::from_millis(50)).await.is_none());

    let list = http
        .get(&format!("/v1/apps/{APP}/users/alice/topics"), Some(API_KEY))
        .await;
    assert_eq!(list.body["topics"], json!(["alerts"]));

    let reply = reqwest::Client::new()
        .delete(format!("http://{}{path}", node.http_addr()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    for client in [&mut phone, &mut laptop] {
        let frame = client.frame().await;
        assert_eq!(frame.id, 0);
        assert!(matches!(frame.body, Body::Unsubscribed(_)), "{frame:?}");
    }
    let reply = publish_ok(&http, "alerts", json!({"payload": "again"})).await;
    assert_eq!(reply["subscribers"], 0);
    let list = http
        .get(&format!("/v1/apps/{APP}/users/alice/topics"), Some(API_KEY))
        .await;
    assert_eq!(list.body["topics"], json!([]));
}

#[tokio::test]
async fn topic_limits_and_bad_requests_get_errors_and_keep_the_connection() {
    let mut config = Config::for_tests();
    config.limits.max_topics = 2;
    let node = start(config).await;
    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "d", 0).await;
    for (id, topic) in [(1, "a"), (2, "b")] {
        client.send(&subscribe(id, topic, None)).await;
        expect_subscribed(client.frame().await);
    }
    client.send(&subscribe(3, "c", None)).await;
    assert_eq!(expect_error(client.frame().await), (3, Code::LIMIT));
    // Subscribing again to one it has is not a new topic.
    client.send(&subscribe(4, "a", None)).await;
    assert_eq!(expect_subscribed(client.frame().await).0, 4);

    client.send(&subscribe(5, &"x".repeat(129), None)).await;
    assert_eq!(expect_error(client.frame().await), (5, Code::BAD_REQUEST));
    let mut wrong_app = subscribe(6, "a", None);
    if let Body::Subscribe(s) = &mut wrong_app.body {
        s.app = "nope".into();
    }
    client.send(&wrong_app).await;
    assert_eq!(expect_error(client.frame().await), (6, Code::BAD_REQUEST));

    // Leaving one makes room.
    client.send(&unsubscribe(7, "b")).await;
    assert_eq!(client.frame().await.id, 7);
    client.send(&subscribe(8, "c", None)).await;
    assert_eq!(expect_subscribed(client.frame().await).0, 8);
}

#[tokio::test]
async fn a_broadcast_reaches_every_connection_of_its_app_only() {
    let mut config = Config::for_tests();
    config.apps.push(AppConfig::new(
        AppId::from(OTHER),
        Secret::new(OTHER_SECRET),
        Secret::new(OTHER_KEY),
    ));
    let node = start(config).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let (mut demo_a, _) = TcpClient::connected(addr, "a", "d", 0).await;
    let (mut demo_b, _) = TcpClient::connected(addr, "b", "d", 0).await;
    let mut other = TcpClient::open(addr).await;
    other
        .send(&connect_with(
            "d",
            0,
            vec![tether_proto::Binding {
                app: OTHER.into(),
                token: token_for(OTHER, OTHER_SECRET, "c"),
                last_seq: None,
            }],
        ))
        .await;
    expect_connected(other.frame().await);
    let mut both = TcpClient::open(addr).await;
    both.send(&connect_with(
        "d",
        0,
        vec![
            tether_proto::Binding {
                app: APP.into(),
                token: token("d"),
                last_seq: None,
            },
            tether_proto::Binding {
                app: OTHER.into(),
                token: token_for(OTHER, OTHER_SECRET, "d"),
                last_seq: None,
            },
        ],
    ))
    .await;
    expect_connected(both.frame().await);

    let reply = http
        .post_raw(
            &format!("/v1/apps/{APP}/broadcast"),
            Some(API_KEY),
            r#"{"payload":{"all":true}}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["connections"], 3);
    for client in [&mut demo_a, &mut demo_b, &mut both] {
        let push: Push = expect_push(client.frame().await);
        assert_eq!(
            (push.app.as_str(), &push.payload[..]),
            (APP, &br#"{"all":true}"#[..])
        );
        assert!(
            client
                .recv_within(Duration::from_millis(30))
                .await
                .is_none(),
            "once only"
        );
    }
    assert!(other.recv_within(Duration::from_millis(50)).await.is_none());
}

#[tokio::test]
async fn over_the_request_rate_the_api_answers_429_with_retry_after() {
    let mut config = Config::for_tests();
    config.rate.requests_per_sec = 2;
    config.rate.requests_burst = 3;
    let node = start(config).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/apps/{APP}/topics/t/publish", node.http_addr());
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let reply = client
            .post(&url)
            .bearer_auth(API_KEY)
            .body(r#"{"payload":1}"#)
            .send()
            .await
            .unwrap();
        statuses.push(reply.status().as_u16());
        if reply.status() == 429 {
            retry_after = reply
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = reply.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Pushes count against the same limit.
    let push = Http::new(&node)
        .post_raw(
            &format!("/v1/apps/{APP}/push"),
            Some(API_KEY),
            r#"{"users":["a"],"payload":1}"#,
        )
        .await;
    assert_eq!(push.status, 429);
    let page = Http::new(&node).metrics().await;
    assert!(metric(&page, "tether_rate_limited_total").unwrap_or(0.0) >= 3.0);
}

#[tokio::test]
async fn subscribers_that_stop_reading_are_closed_and_memory_stays_bounded() {
    let mut config = Config::for_tests();
    config.limits.outbound_queue_bytes = 256 * 1024;
    let node = start(config).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    // 90 readers and 10 clients that never read, with small socket buffers.
    let mut readers = Vec::new();
    for i in 0..90 {
        readers.push(subscriber(&node, &format!("r{i}"), "flood").await);
    }
    let mut stalled = Vec::new();
    for i in 0..10 {
        let mut client = TcpClient::open_with_recv_buffer(addr, 4096).await;
        client.send(&connect_frame(&format!("s{i}"), "d", 0)).await;
        expect_connected(client.frame().await);
        client.send(&subscribe(1, "flood", None)).await;
        expect_subscribed(client.frame().await);
        stalled.push(client);
    }
    // Readers count publications until the end marker.
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    match timeout(Duration::from_secs(10), client.recv()).await {
                        Ok(Ok(Some(Frame {
                            body: Body::Publication(p),
                            ..
                        }))) => {
                            if &p.payload[..] == b"\"end\"" {
                                return (n, client);
                            }
                            n += 1;
                        }
                        other => panic!("a reader stopped at {n}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    // Publish 4 KB messages until the stalled subscribers are dropped: the kernel's buffers
    // fill, then each one's 256 KiB queue, then it is closed as slow and leaves the topic.
    let payload = "x".repeat(4000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut published = 0u64;
    loop {
        for _ in 0..20 {
            publish_ok(&http, "flood", json!({ "payload": payload })).await;
        }
        published += 20;
        let info = http
            .get(&format!("/v1/apps/{APP}/topics/flood"), Some(API_KEY))
            .await;
        if info.body["subscribers"] == 90 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {published} publications: {:?}",
            info.body
        );
    }
    publish_ok(&http, "flood", json!({ "payload": "end" })).await;
    let mut kept = Vec::new();
    for reader in readers {
        let (n, client) = reader.await.unwrap();
        assert_eq!(n, published, "every reader got every publication");
        kept.push(client);
    }
    let page = http.metrics().await;
    assert!(metric(&page, "tether_queue_overflows_total").unwrap_or(0.0) >= 10.0);
    drop((stalled, kept));
}

#[tokio::test]
async fn history_and_server_side_subscriptions_survive_a_restart_of_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = Config::for_tests();
        config.store.backend = tether_server::config::StoreBackend::Embedded;
        config.node.data_dir = dir.path().to_owned();
        config
    };
    let node = start(config()).await;
    let http = Http::new(&node);
    for n in 1..=3 {
        let reply = publish_ok(&http, "log", json!({"payload": n, "qos": 1})).await;
        assert_eq!(reply["offset"], n);
    }
    let reply = http
        .post_raw(
            &format!("/v1/apps/{APP}/users/alice/topics/log"),
            Some(API_KEY),
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    node.shutdown();
    node.wait().await;

    let node = start(config()).await;
    let http = Http::new(&node);
    // alice joins "log" at connect (the store remembered it), live from offset 3.
    let (mut alice, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "d", 0).await;
    let (id, s) = expect_subscribed(alice.frame().await);
    assert_eq!((id, s.topic.as_str(), s.offset), (0, "log", 3));
    // bob resumes after offset 1.
    let (mut bob, _) = TcpClient::connected(node.tcp_addr().unwrap(), "bob", "d", 0).await;
    bob.send(&subscribe(1, "log", Some(1))).await;
    let (_, s) = expect_subscribed(bob.frame().await);
    assert_eq!((s.recovery, s.offset), (Recovery::Complete, 3));
    assert_eq!(expect_publication(bob.frame().await).offset, 2);
    assert_eq!(expect_publication(bob.frame().await).offset, 3);
    // Offsets continue after the restart.
    let reply = publish_ok(&http, "log", json!({"payload": 4, "qos": 1})).await;
    assert_eq!(reply["offset"], 4);
    assert_eq!(expect_publication(alice.frame().await).offset, 4);
    assert_eq!(expect_publication(bob.frame().await).offset, 4);
}

/// Fan-outs write to idle TCP sockets directly; a socket that takes a frame in part leaves the
/// rest to the connection's task. Whatever happens, the client reads whole frames: the
/// publications it got, then `disconnect` 4001, then EOF.
#[tokio::test]
async fn a_stalled_subscriber_reads_whole_frames_then_its_disconnect() {
    let mut config = Config::for_tests();
    config.limits.max_frame = 16 * 1024;
    config.limits.max_payload = 8 * 1024;
    config.limits.api_body_bytes = 32 * 1024;
    config.limits.outbound_queue_bytes = 64 * 1024;
    let node = start(config).await;
    let http = Http::new(&node);
    let mut client = TcpClient::open_with_recv_buffer(node.tcp_addr().unwrap(), 4096).await;
    client.send(&connect_frame("slow", "d", 0)).await;
    expect_connected(client.frame().await);
    client.send(&subscribe(1, "odd", None)).await;
    expect_subscribed(client.frame().await);

    // 3,001-byte payloads do not divide the socket buffers: writes end inside frames.
    let payload = "y".repeat(3001);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut published = 0;
    loop {
        publish_ok(&http, "odd", json!({ "payload": payload })).await;
        published += 1;
        let info = http
            .get(&format!("/v1/apps/{APP}/topics/odd"), Some(API_KEY))
            .await;
        if info.body["subscribers"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never closed as slow"
        );
    }
    let mut received = 0;
    loop {
        match timeout(WAIT, client.recv()).await {
            Ok(Ok(Some(frame))) => match frame.body {
                Body::Publication(p) => {
                    assert_eq!(p.payload.len(), 3003, "a whole publication");
                    received += 1;
                }
                Body::Disconnect(d) => {
                    assert_eq!(d.code, Code::SLOW, "{}", d.reason);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("after {received} publications: {other:?}"),
        }
    }
    client.expect_eof().await;
    assert!(received < published, "{received} of {published}");
}

/// A subscriber that stops reading, with its kernel's default receive buffer, is closed as
/// slow after at most what the path holds: tether's queue (`limits.outbound_queue_bytes`),
/// the server socket's send buffer (`gateway.socket_send_buffer`, doubled by Linux) and the
/// client's receive window. Without the cap the kernel's autotuning let the server's socket
/// take megabytes first. A reader of the same topic gets every publication.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_closed_within_the_capped_buffers() {
    let config = Config::for_tests();
    let queue = config.limits.outbound_queue_bytes;
    let send_buffer = config.gateway.socket_send_buffer;
    assert!(
        send_buffer > 0,
        "the gateway's send buffer is capped by default"
    );
    let node = start(config).await;
    let http = Http::new(&node);
    let mut reader = subscriber(&node, "reader", "fast").await;
    let mut stuck = subscriber(&node, "stuck", "fast").await;
    let reading = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            match timeout(Duration::from_secs(10), reader.recv()).await {
                Ok(Ok(Some(Frame {
                    body: Body::Publication(p),
                    ..
                }))) => {
                    if &p.payload[..] == b"\"end\"" {
                        return n;
                    }
                    n += 1;
                }
                other => panic!("the reader stopped at {n}: {other:?}"),
            }
        }
    });

    // 1 KiB qos 1 publications, 32 at a time, until the stuck subscriber leaves the topic.
    let payload = "x".repeat(1000);
    let body = json!({ "payload": payload, "qos": 1 });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut published = 0u64;
    loop {
        let batch = (0..32).map(|_| publish_ok(&http, "fast", body.clone()));
        futures_util::future::join_all(batch).await;
        published += 32;
        let info = http
            .get(&format!("/v1/apps/{APP}/topics/fast"), Some(API_KEY))
            .await;
        if info.body["subscribers"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not closed after {published} publications: {:?}",
            info.body
        );
    }
    // Each publication is about 1 KiB on the wire. Linux's doubled send buffer, the client's
    // untuned receive window (128 KiB by default) and the queue, with room to spare; the
    // kernel's autotuning alone lets the server's socket take up to 4 MiB.
    let bound = (queue + 2 * send_buffer + 512 * 1024) as u64 / 1024;
    assert!(
        published <= bound,
        "closed only after {published} publications of 1 KiB (bound {bound})"
    );
    publish_ok(&http, "fast", json!({ "payload": "end" })).await;
    assert_eq!(
        reading.await.unwrap(),
        published,
        "the reader got everything"
    );

    // What the stuck client finds once it reads again: the publications that were in the
    // buffers, then its `disconnect` 4001 if the buffers had room for it, then the end.
    let mut received = 0u64;
    loop {
        match timeout(WAIT, stuck.recv()).await {
            Ok(Ok(Some(Frame {
                body: Body::Publication(p),
                ..
            }))) => {
                assert_eq!(p.payload.len(), 1002, "a whole publication");
                received += 1;
            }
            Ok(Ok(Some(Frame {
                body: Body::Disconnect(d),
                ..
            }))) => {
                assert_eq!(d.code, Code::SLOW, "{}", d.reason);
                stuck.expect_eof().await;
                break;
            }
            // Closed without a `disconnect`, or reset.
            Ok(Ok(None) | Err(_)) => break,
            other => panic!("after {received} publications: {other:?}"),
        }
    }
    assert!(received < published, "{received} of {published}");
}
