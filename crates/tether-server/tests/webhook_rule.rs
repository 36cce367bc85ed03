//! The `webhook` topic rule end to end: a real node on port 0, raw clients on TCP (binary) and
//! WebSocket (JSON), and a real HTTP webhook on port 0 playing the business, which checks the
//! signature of every question and answers by topic.

mod common;

use std::time::{Duration, Instant};

use common::receiver::{Answer, Receiver, Seen};
use common::*;
use serde_json::json;
use tether_proto::{Body, Code, Frame, Subscribe, Unsubscribe};
use tether_server::Config;
use tether_server::config::{TopicAccess, TopicRule};

const ADMIN: &str = "admin-key-0123456789abcdef";

/// The business: `room.yes*` allowed, `room.no` refused, anything else never answered (held
/// until the test ends). Every question must be signed with the demo app's secret.
async fn business() -> Receiver {
    Receiver::start(|_, seen: &Seen| {
        seen.assert_signed_with(SECRET);
        assert_eq!(seen.header("x-tether-event"), "subscribe_check");
        match seen.json["topic"].as_str().unwrap_or("") {
            t if t.starts_with("room.yes") => Answer::json(200, r#"{"allow":true}"#),
            "room.no" => Answer::json(200, r#"{"allow":false}"#),
            _ => Answer::Hold,
        }
    })
    .await
}

/// The demo app asking `hook` about `room.*`, with `open.*` open to all, and questions given
/// up after `timeout`.
fn config(hook: &Receiver, timeout: Duration) -> Config {
    let mut config = Config::for_tests();
    let demo = &mut config.apps[0];
    demo.webhook = Some(hook.url.clone());
    demo.topics = [
        ("room.*", TopicAccess::Webhook),
        ("open.*", TopicAccess::Open),
    ]
    .into_iter()
    .map(|(pattern, allow)| TopicRule {
        pattern: pattern.into(),
        allow,
    })
    .collect();
    config.webhook.permission.timeout = timeout;
    config
}

fn subscribe(id: u32, topic: &str) -> Frame {
    Frame::new(
        id,
        Subscribe {
            app: APP.into(),
            topic: topic.into(),
            since: None,
            token: None,
        },
    )
}

/// The answer to request `id`: `Ok(())` for `subscribed`, the code and text of an `error`.
fn answer(frame: Frame, id: u32) -> Result<(), (Code, String)> {
    assert_eq!(frame.id, id, "{frame:?}");
    match frame.body {
        Body::Subscribed(_) => Ok(()),
        Body::Error(e) => Err((e.code, e.message)),
        other => panic!("not an answer to a subscribe: {other:?}"),
    }
}

#[tokio::test]
async fn the_business_allows_and_refuses_and_its_answers_are_kept_for_the_user() {
    let hook = business().await;
    let node = start(config(&hook, Duration::from_secs(2))).await;
    let addr = node.tcp_addr().unwrap();
    let (mut alice, connected) = TcpClient::connected(addr, "alice", "phone", 0).await;

    alice.send(&subscribe(2, "room.yes")).await;
    assert_eq!(answer(alice.frame().await, 2), Ok(()));
    alice.send(&subscribe(3, "room.no")).await;
    let (code, message) = answer(alice.frame().await, 3).unwrap_err();
    assert_eq!(code, Code::FORBIDDEN);
    assert_eq!(
        message,
        "subscribe to room.no refused: the app's webhook refused it"
    );
    // Other rules are not asked about.
    alice.send(&subscribe(4, "open.lobby")).await;
    assert_eq!(answer(alice.frame().await, 4), Ok(()));

    let seen = hook.wait_for(2).await;
    let question = &seen[0].json;
    assert_eq!(question["type"], "subscribe_check");
    assert_eq!(
        (&question["app"], &question["user"], &question["topic"]),
        (&json!(APP), &json!("alice"), &json!("room.yes"))
    );
    assert_eq!(question["device"], "phone");
    assert_eq!(question["conn_id"], connected.conn_id);
    assert_eq!(question["node"], connected.node);

    // Another connection of alice's: both answers are known, the webhook is not asked again.
    let (mut tablet, _) = TcpClient::connected(addr, "alice", "tablet", 0).await;
    tablet.send(&subscribe(5, "room.yes")).await;
    assert_eq!(answer(tablet.frame().await, 5), Ok(()));
    tablet.send(&subscribe(6, "room.no")).await;
    assert_eq!(
        answer(tablet.frame().await, 6).unwrap_err().0,
        Code::FORBIDDEN
    );
    // Bob's answers are his own.
    let (mut bob, _) = TcpClient::connected(addr, "bob", "phone", 0).await;
    bob.send(&subscribe(7, "room.yes")).await;
    assert_eq!(answer(bob.frame().await, 7), Ok(()));
    let seen = hook.settle(3, Duration::from_millis(200)).await;
    assert_eq!(seen[2].json["user"], "bob");

    // The business itself may subscribe anyone, whatever its webhook says.
    let http = Http::new(&node);
    let path = format!("/v1/apps/{APP}/users/alice/topics/room.no");
    let reply = http.post_raw(&path, Some(API_KEY), "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    for client in [&mut alice, &mut tablet] {
        let frame = client.frame().await;
        assert_eq!(frame.id, 0);
        assert!(
            matches!(&frame.body, Body::Subscribed(s) if s.topic == "room.no"),
            "{frame:?}"
        );
    }
    assert_eq!(hook.seen().len(), 3, "the API's subscription asks nothing");

    let page = http.metrics().await;
    let count = |name: &str| metric(&page, name).unwrap_or(0.0);
    // Tests of this binary share the metrics: at least these.
    assert!(count(r#"tether_permission_checks_total{app="demo",result="allowed"}"#) >= 2.0);
    assert!(count(r#"tether_permission_checks_total{app="demo",result="refused"}"#) >= 1.0);
    assert!(count(r#"tether_permission_cache_hits_total{app="demo",result="allowed"}"#) >= 1.0);
    assert!(count(r#"tether_permission_cache_hits_total{app="demo",result="refused"}"#) >= 1.0);
}

#[tokio::test]
async fn a_webhook_that_never_answers_refuses_after_the_timeout_while_the_connection_goes_on() {
    let hook = business().await;
    let timeout = Duration::from_millis(400);
    let node = start(config(&hook, timeout)).await;
    let mut ws = WsClient::open(&node).await;
    let connect = json!({"op": "connect", "id": 1, "device": "web", "bindings": [
        {"app": APP, "token": token("alice")}
    ]});
    ws.send_text(&connect.to_string()).await;
    assert_eq!(ws.json().await["op"], "connected");

    let started = Instant::now();
    ws.send_text(r#"{"op":"subscribe","id":2,"app":"demo","topic":"room.silent"}"#)
        .await;
    hook.wait_for(1).await;
    // While the subscribe waits, the connection reads and answers as usual.
    ws.send_text(r#"{"op":"ping","id":3}"#).await;
    let pong = ws.json().await;
    assert_eq!(
        (&pong["op"], &pong["id"]),
        (&json!("pong"), &json!(3)),
        "{pong}"
    );
    ws.send_text(r#"{"op":"subscribe","id":4,"app":"demo","topic":"open.lobby"}"#)
        .await;
    let subscribed = ws.json().await;
    assert_eq!(
        (&subscribed["op"], &subscribed["id"]),
        (&json!("subscribed"), &json!(4)),
        "{subscribed}"
    );

    let refused = ws.json().await;
    let waited = started.elapsed();
    assert_eq!(
        (&refused["op"], &refused["id"], &refused["code"]),
        (&json!("error"), &json!(2), &json!(4301)),
        "{refused}"
    );
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("permission check timed out"), "{message}");
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(2),
        "refused after {waited:?}"
    );
    // A time-out is not kept: the next subscribe asks again.
    ws.send_text(r#"{"op":"subscribe","id":5,"app":"demo","topic":"room.silent"}"#)
        .await;
    hook.wait_for(2).await;
    let again = ws.json().await;
    assert_eq!(
        (&again["id"], &again["code"]),
        (&json!(5), &json!(4301)),
        "{again}"
    );

    let page = Http::new(&node).metrics().await;
    let timeouts = metric(
        &page,
        r#"tether_permission_checks_total{app="demo",result="timeout"}"#,
    );
    assert!(timeouts >= Some(2.0), "{timeouts:?}");
}

#[tokio::test]
async fn an_unsubscribe_cancels_a_waiting_subscribe_and_a_connection_waits_for_eight_at_most() {
    let hook = business().await;
    let node = start(config(&hook, Duration::from_secs(2))).await;
    let (mut alice, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;

    alice.send(&subscribe(2, "room.held")).await;
    hook.wait_for(1).await;
    let unsubscribe = Unsubscribe {
        app: APP.into(),
        topic: "room.held".into(),
    };
    alice.send(&Frame::new(3, unsubscribe)).await;
    let (code, message) = answer(alice.frame().await, 2).unwrap_err();
    assert_eq!(code, Code::BAD_REQUEST);
    assert!(message.contains("cancelled"), "{message}");
    let frame = alice.frame().await;
    assert!(
        frame.id == 3 && matches!(frame.body, Body::Unsubscribed(_)),
        "{frame:?}"
    );

    // An answer kept from before needs no place among the waiting.
    alice.send(&subscribe(4, "room.yes")).await;
    assert_eq!(answer(alice.frame().await, 4), Ok(()));
    let unsubscribe = Unsubscribe {
        app: APP.into(),
        topic: "room.yes".into(),
    };
    alice.send(&Frame::new(5, unsubscribe)).await;
    assert!(matches!(alice.frame().await.body, Body::Unsubscribed(_)));

    // Eight subscribes wait for their answers; a ninth is refused at once, unasked.
    for id in 10..19 {
        alice.send(&subscribe(id, &format!("room.wait{id}"))).await;
    }
    let (code, message) = answer(alice.frame().await, 18).unwrap_err();
    assert_eq!(code, Code::UNAVAILABLE);
    assert!(message.starts_with("busy"), "{message}");
    hook.settle(10, Duration::from_millis(200)).await;
    alice.send(&subscribe(20, "room.yes")).await;
    assert_eq!(answer(alice.frame().await, 20), Ok(()));
    assert_eq!(hook.seen().len(), 10, "answered from the cache");
}

/// A configuration file: the demo app with `webhook` (if any) and a `webhook` rule for
/// `room.*`, then `more`.
fn file(webhook: Option<&str>, more: &str) -> String {
    let webhook = webhook.map_or(String::new(), |url| format!("webhook = \"{url}\""));
    format!(
        r#"
[listen]
tcp = "127.0.0.1:0"
ws = ""
http = "127.0.0.1:0"
mqtt = ""

[store]
backend = "memory"

[admin]
key = "{ADMIN}"

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"
{webhook}

[[apps.topics]]
pattern = "room.*"
allow = "webhook"

{more}
"#
    )
}

#[tokio::test]
async fn a_reload_forgets_the_kept_answers_and_applies_the_check_settings_at_once() {
    let hook = business().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let write = |text: String| std::fs::write(&path, text).expect("write the configuration");
    write(file(Some(&hook.url), ""));
    let node = start(Config::load(Some(&path)).expect("valid file")).await;
    let addr = node.tcp_addr().unwrap();
    let http = Http::new(&node);
    let subscribed = |mut client: TcpClient, id: u32| async move {
        client.send(&subscribe(id, "room.yes")).await;
        assert_eq!(answer(client.frame().await, id), Ok(()));
        client
    };
    let _phone = subscribed(TcpClient::connected(addr, "alice", "phone", 0).await.0, 2).await;
    let _tablet = subscribed(TcpClient::connected(addr, "alice", "tablet", 0).await.0, 3).await;
    hook.settle(1, Duration::from_millis(100)).await;

    // A `webhook` rule without a webhook to ask is refused, and the old rules stay.
    write(file(None, ""));
    let reply = http.post_raw("/v1/admin/reload", Some(ADMIN), "").await;
    assert_eq!(reply.status, 422, "{:?}", reply.body);
    assert!(
        reply.body.to_string().contains("a `webhook` rule needs"),
        "{:?}",
        reply.body
    );
    let _laptop = subscribed(TcpClient::connected(addr, "alice", "laptop", 0).await.0, 4).await;
    hook.settle(1, Duration::from_millis(100)).await;

    // New check settings apply without a restart, and the answers kept go.
    write(file(
        Some(&hook.url),
        "[webhook.permission]\ntimeout = \"3s\"\n",
    ));
    let reply = http.post_raw("/v1/admin/reload", Some(ADMIN), "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["restart_needed"], json!([]));
    let _watch = subscribed(TcpClient::connected(addr, "alice", "watch", 0).await.0, 5).await;
    hook.settle(2, Duration::from_millis(100)).await;
}
