//! Who may subscribe, and how long a token holds, end to end: a real node, raw clients on
//! TCP (binary) and WebSocket (JSON), the rules from the configuration.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tether_core::{AppId, UserId, auth};
use tether_proto::{Binding, Body, Code, Frame, Refresh, Subscribe};
use tether_server::Config;
use tether_server::config::{TopicAccess, TopicRule};
use tokio_tungstenite::tungstenite::Message;

/// The demo app with rules `open.*` open, `user.{user}` user, `vip.*` token, and tokens that
/// end `token_warning` after they warn, with no leeway.
fn config(token_warning: Duration) -> Config {
    let mut config = Config::for_tests();
    config.gateway.token_leeway = Duration::ZERO;
    config.gateway.token_warning = token_warning;
    config.apps[0].topics = [
        ("open.*", TopicAccess::Open),
        ("user.{user}", TopicAccess::User),
        ("vip.*", TopicAccess::Token),
    ]
    .into_iter()
    .map(|(pattern, allow)| TopicRule {
        pattern: pattern.into(),
        allow,
    })
    .collect();
    config
}

/// A connection token for `user` of the demo app, valid for `ttl`, listing `topics`.
fn token_with(user: &str, ttl: Duration, topics: Option<Vec<String>>) -> String {
    let now = tether_core::now_ms() / 1000;
    auth::sign(
        SECRET.as_bytes(),
        &auth::Claims {
            sub: user.into(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            topics,
            ..auth::Claims::default()
        },
    )
}

fn connect_as(token: String) -> Frame {
    connect_with(
        "phone",
        0,
        vec![Binding {
            app: APP.into(),
            token,
            last_seq: None,
        }],
    )
}

fn subscribe(id: u32, topic: &str, token: Option<String>) -> Frame {
    Frame::new(
        id,
        Subscribe {
            app: APP.into(),
            topic: topic.into(),
            since: None,
            token,
        },
    )
}

fn refresh(id: u32, token: String) -> Frame {
    Frame::new(
        id,
        Refresh {
            app: APP.into(),
            token,
        },
    )
}

/// The `disconnect` that ends a token: it comes up to a second (the sweep) after `exp`, which
/// may be more than [`WAIT`] after the test's last frame.
async fn expect_token_end(client: &mut TcpClient) -> tether_proto::Disconnect {
    let frame = client
        .recv_within(Duration::from_secs(6))
        .await
        .expect("no disconnect within 6 s")
        .expect("read failed")
        .expect("closed without a disconnect");
    let d = expect_disconnect(frame);
    assert_eq!(d.code, Code::TOKEN_EXPIRED, "{}", d.reason);
    d
}

/// The reply to request `id`: `Ok(())` for `subscribed`, the code of an `error`.
fn answer(frame: Frame, id: u32) -> Result<(), (Code, String)> {
    assert_eq!(frame.id, id, "{frame:?}");
    match frame.body {
        Body::Subscribed(_) => Ok(()),
        Body::Error(e) => Err((e.code, e.message)),
        other => panic!("not an answer to a subscribe: {other:?}"),
    }
}

#[tokio::test]
async fn subscribes_are_allowed_and_refused_by_each_rule_over_tcp() {
    let node = start(config(Duration::from_secs(60))).await;
    let mut alice = TcpClient::open(node.tcp_addr().unwrap()).await;
    let grants = Some(vec!["vip.gold".to_owned(), "vip.club.*".to_owned()]);
    alice
        .send(&connect_as(token_with(
            "alice",
            Duration::from_secs(600),
            grants,
        )))
        .await;
    expect_connected(alice.frame().await);

    let ttl = Duration::from_secs(60);
    let alice_id = UserId::from("alice");
    let demo = AppId::from(APP);
    let for_alice = auth::mint_subscription(SECRET.as_bytes(), &demo, &alice_id, "vip.silver", ttl);
    let for_bob = auth::mint_subscription(
        SECRET.as_bytes(),
        &demo,
        &UserId::from("bob"),
        "vip.bronze",
        ttl,
    );
    let cases: [(&str, Option<String>, Option<&str>); 9] = [
        ("open.lobby", None, None),
        ("user.alice", None, None),
        ("user.bob", None, Some("no topic rule of the app allows it")),
        ("vip.gold", None, None),
        ("vip.club.7", None, None),
        (
            "vip.silver",
            None,
            Some("the token does not grant this topic"),
        ),
        ("vip.silver", Some(for_alice), None),
        ("vip.bronze", Some(for_bob), Some("bad subscription token")),
        (
            "admins-only",
            None,
            Some("no topic rule of the app allows it"),
        ),
    ];
    for (i, (topic, token, refusal)) in cases.into_iter().enumerate() {
        let id = 10 + i as u32;
        alice.send(&subscribe(id, topic, token)).await;
        match (answer(alice.frame().await, id), refusal) {
            (Ok(()), None) => {}
            (Err((code, message)), Some(why)) => {
                assert_eq!(code, Code::FORBIDDEN, "{topic}: {message}");
                assert!(message.contains(why), "{topic}: {message}");
                assert!(message.contains(topic), "{topic}: {message}");
            }
            (got, want) => panic!("{topic}: got {got:?}, wanted refusal {want:?}"),
        }
    }

    // The connection stays open after refusals, and the business may subscribe anyone.
    let http = Http::new(&node);
    let path = format!("/v1/apps/{APP}/users/alice/topics/admins-only");
    let reply = http.post_raw(&path, Some(API_KEY), "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let frame = alice.frame().await;
    assert_eq!(frame.id, 0);
    assert!(
        matches!(&frame.body, Body::Subscribed(s) if s.topic == "admins-only"),
        "{frame:?}"
    );
    // Holding it, the client may ask for it again (to recover what it missed).
    alice.send(&subscribe(30, "admins-only", None)).await;
    assert_eq!(answer(alice.frame().await, 30), Ok(()));

    let forbidden = metric(
        &http.metrics().await,
        "tether_requests_refused_total{op=\"subscribe\",code=\"forbidden\"}",
    );
    // Tests of this binary share the metrics: at least these four.
    assert!(forbidden >= Some(4.0), "{forbidden:?}");
}

#[tokio::test]
async fn a_json_client_is_refused_with_4305_and_may_carry_a_subscription_token() {
    let node = start(config(Duration::from_secs(60))).await;
    let mut ws = WsClient::open(&node).await;
    let connect = json!({"op": "connect", "id": 1, "device": "web", "bindings": [
        {"app": APP, "token": token("alice")}
    ]});
    ws.send_text(&connect.to_string()).await;
    assert_eq!(ws.json().await["op"], "connected");

    ws.send_text(r#"{"op":"subscribe","id":2,"app":"demo","topic":"vip.gold"}"#)
        .await;
    let refused = ws.json().await;
    assert_eq!(
        (&refused["op"], &refused["id"], &refused["code"]),
        (&json!("error"), &json!(2), &json!(4305)),
        "{refused}"
    );

    let token = auth::mint_subscription(
        SECRET.as_bytes(),
        &AppId::from(APP),
        &UserId::from("alice"),
        "vip.gold",
        Duration::from_secs(60),
    );
    let with_token = json!({"op": "subscribe", "id": 3, "app": APP, "topic": "vip.gold",
        "token": token});
    ws.send_text(&with_token.to_string()).await;
    let subscribed = ws.json().await;
    assert_eq!(
        (&subscribed["op"], &subscribed["id"]),
        (&json!("subscribed"), &json!(3))
    );
}

#[tokio::test]
async fn a_live_connection_is_warned_then_closed_when_its_token_ends() {
    let node = start(config(Duration::from_secs(2))).await;
    let http = Http::new(&node);
    let mut alice = TcpClient::open(node.tcp_addr().unwrap()).await;
    let started = Instant::now();
    alice
        .send(&connect_as(token_with(
            "alice",
            Duration::from_secs(3),
            None,
        )))
        .await;
    expect_connected(alice.frame().await);

    // Warned once, about 2 s before the end.
    let warning = alice.frame().await;
    let Body::Expiring(expiring) = &warning.body else {
        panic!("expected `expiring`, got {warning:?}");
    };
    assert_eq!((warning.id, expiring.app.as_str()), (0, APP));
    let now_s = tether_core::now_ms() / 1000;
    assert!(expiring.expires_s >= now_s && expiring.expires_s <= now_s + 3);

    // Pushes still arrive until then...
    let push = r#"{"users":["alice"],"payload":{"n":1},"qos":0}"#;
    assert_eq!(http.push(push).await["connections"], 1);
    expect_push(alice.frame().await);

    // ...and the token's end closes the connection, within the sweep's second.
    let d = expect_token_end(&mut alice).await;
    assert!(d.reason.contains("expired"), "{}", d.reason);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(6),
        "closed after {after:?}"
    );
    alice.expect_eof().await;
}

#[tokio::test]
async fn a_refresh_in_time_keeps_the_connection_and_one_for_another_user_does_not() {
    let node = start(config(Duration::from_secs(2))).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let short = || token_with("alice", Duration::from_secs(3), None);

    // Refreshed in time: alive past the first token's end.
    let mut kept = TcpClient::open(addr).await;
    kept.send(&connect_as(short())).await;
    expect_connected(kept.frame().await);
    assert!(matches!(kept.frame().await.body, Body::Expiring(_)));
    kept.send(&refresh(
        5,
        token_with("alice", Duration::from_secs(600), None),
    ))
    .await;
    let frame = kept.frame().await;
    let Body::Refreshed(refreshed) = &frame.body else {
        panic!("expected `refreshed`, got {frame:?}");
    };
    assert_eq!(frame.id, 5);
    assert!(refreshed.expires_s > tether_core::now_ms() / 1000 + 500);

    // Refused: another user's token (and a forged one); the first token still ends it.
    let mut cut = TcpClient::open(addr).await;
    cut.send(&connect_as(short())).await;
    expect_connected(cut.frame().await);
    assert!(matches!(cut.frame().await.body, Body::Expiring(_)));
    let bob = token_with("bob", Duration::from_secs(600), None);
    let forged = auth::mint(
        b"not-the-app-secret-0123",
        &AppId::from(APP),
        &UserId::from("alice"),
        Duration::from_secs(600),
    );
    for (id, token, why) in [
        (6, bob, "the token is for another user"),
        (7, forged, "bad signature"),
    ] {
        cut.send(&refresh(id, token)).await;
        let frame = cut.frame().await;
        match frame.body {
            Body::Error(e) if frame.id == id => {
                assert_eq!(e.code, Code::TOKEN_REFUSED, "{}", e.message);
                assert!(e.message.ends_with(why), "{}", e.message);
            }
            other => panic!("expected error 4306, got {other:?}"),
        }
    }
    expect_token_end(&mut cut).await;

    // The refreshed one is still there and gets pushes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        http.push(r#"{"users":["alice"],"payload":{"n":2},"qos":0}"#)
            .await["connections"],
        1
    );
    expect_push(kept.frame().await);
}

#[tokio::test]
async fn a_json_client_refreshes_with_a_text_frame() {
    let node = start(config(Duration::from_secs(60))).await;
    let mut ws = WsClient::open(&node).await;
    let connect = json!({"op": "connect", "id": 1, "device": "web", "bindings": [
        {"app": APP, "token": token_with("alice", Duration::from_secs(30), None)}
    ]});
    ws.send_text(&connect.to_string()).await;
    assert_eq!(ws.json().await["op"], "connected");
    // Less than the warning left: warned at once.
    let expiring = ws.json().await;
    assert_eq!(expiring["op"], "expiring", "{expiring}");
    let refresh = json!({"op": "refresh", "id": 2, "app": APP,
        "token": token_with("alice", Duration::from_secs(3600), None)});
    ws.send(Message::text(refresh.to_string())).await;
    let refreshed: Value = ws.json().await;
    assert_eq!(
        (&refreshed["op"], &refreshed["id"], &refreshed["app"]),
        (&json!("refreshed"), &json!(2), &json!(APP)),
        "{refreshed}"
    );
    assert!(refreshed["expires_s"].as_u64().unwrap() > tether_core::now_ms() / 1000 + 3000);
}
