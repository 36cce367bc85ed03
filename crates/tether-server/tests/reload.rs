//! Reloading the configuration on a running node (`POST /v1/admin/reload`): apps added and
//! removed, keys rotated, a broken file refused, clients left connected.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;
use tether_proto::{Binding, Body, Code, Frame};
use tether_server::Config;

const ADMIN: &str = "admin-key-0123456789abcdef";
const OLD_KEY: &str = "demo-old-key-0123456789";
const CHAT_SECRET: &str = "chat-secret-0123456789";
const CHAT_KEY: &str = "chat-api-key-0123456789";

/// The node's file: the demo app with its key and `more`, an admin key, listeners on port 0.
fn file(apps: &str) -> String {
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
{apps}
"#
    )
}

const OLD_KEY_ENTRY: &str = r#"api_keys = [{ key = "demo-old-key-0123456789", label = "2025" }]"#;

fn chat_app() -> String {
    format!(
        "[[apps]]\nid = \"chat\"\nsecret = \"{CHAT_SECRET}\"\napi_key = \"{CHAT_KEY}\"\n\
         [[apps.topics]]\npattern = \"*\"\nallow = \"open\"\n"
    )
}

async fn reload(http: &Http) -> Reply {
    http.post_raw("/v1/admin/reload", Some(ADMIN), "").await
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the configuration");
}

async fn push_status(http: &Http, app: &str, key: &str) -> u16 {
    let body = r#"{"users":["alice"],"payload":{"n":1}}"#;
    http.post_raw(&format!("/v1/apps/{app}/push"), Some(key), body)
        .await
        .status
}

#[tokio::test]
async fn a_reload_adds_an_app_and_removes_a_key_while_clients_stay_connected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    write(&path, &file(OLD_KEY_ENTRY));
    let node = start(Config::load(Some(&path)).expect("valid file")).await;
    let http = Http::new(&node);
    let (mut alice, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
    assert_eq!(push_status(&http, APP, OLD_KEY).await, 200);
    expect_push(alice.frame().await);

    // The old key goes, the chat app comes.
    write(&path, &format!("{}\n{}", file(""), chat_app()));
    let reply = reload(&http).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["added"], json!(["chat"]));
    assert_eq!(reply.body["removed"], json!([]));
    assert_eq!(reply.body["restart_needed"], json!([]));

    assert_eq!(push_status(&http, APP, OLD_KEY).await, 401, "a removed key");
    assert_eq!(push_status(&http, APP, API_KEY).await, 200);
    expect_push(alice.frame().await);
    alice.send(&Frame::new(9, Body::Ping)).await;
    assert_eq!(alice.frame().await, Frame::new(9, Body::Pong));

    // The new app takes connections, pushes and publications.
    let mut bob = TcpClient::open(node.tcp_addr().unwrap()).await;
    let bind = Binding {
        app: "chat".into(),
        token: token_for("chat", CHAT_SECRET, "alice"),
        last_seq: None,
    };
    bob.send(&connect_with("laptop", 0, vec![bind])).await;
    expect_connected(bob.frame().await);
    assert_eq!(push_status(&http, "chat", CHAT_KEY).await, 200);
    let push = expect_push(bob.frame().await);
    assert_eq!(push.app, "chat");
    bob.send(&Frame::new(
        3,
        tether_proto::Subscribe {
            app: "chat".into(),
            topic: "room".into(),
            since: None,
            token: None,
        },
    ))
    .await;
    assert!(matches!(bob.frame().await.body, Body::Subscribed(_)));
    let published = http
        .post_raw(
            "/v1/apps/chat/topics/room/publish",
            Some(CHAT_KEY),
            r#"{"payload":{"hi":1}}"#,
        )
        .await;
    assert_eq!(published.status, 200, "{:?}", published.body);
    assert!(matches!(bob.frame().await.body, Body::Publication(_)));

    // Removing the app closes its connections with 4210 and its key stops at once.
    write(&path, &file(""));
    let reply = reload(&http).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        (&reply.body["removed"], &reply.body["closed"]),
        (&json!(["chat"]), &json!(1))
    );
    bob.expect_disconnect(Code::APP_REMOVED).await;
    assert_eq!(push_status(&http, "chat", CHAT_KEY).await, 401);
    alice.send(&Frame::new(10, Body::Ping)).await;
    assert_eq!(alice.frame().await, Frame::new(10, Body::Pong));
}

#[tokio::test]
async fn a_broken_reload_keeps_the_old_configuration_and_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    write(&path, &file(OLD_KEY_ENTRY));
    let node = start(Config::load(Some(&path)).expect("valid file")).await;
    let http = Http::new(&node);
    let (mut alice, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;

    let broken = file("api_keys = [{ key = \"short\" }]\nwebhok = \"http://x\"").replace(
        "backend = \"memory\"",
        "backend = \"memory\"\ntopic_history = \"lots\"",
    );
    write(&path, &broken);
    let reply = reload(&http).await;
    assert_eq!(reply.status, 422, "{:?}", reply.body);
    let problems: Vec<String> = reply.body["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    for key in [
        "store.topic_history",
        "apps[0].webhok",
        "apps[0].api_keys[0].key",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(key)),
            "{key} not in {problems:?}"
        );
    }
    // The old keys still work and the client is still there.
    assert_eq!(push_status(&http, APP, OLD_KEY).await, 200);
    expect_push(alice.frame().await);

    // Without the admin key: refused.
    let anonymous = http.post_raw("/v1/admin/reload", None, "").await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test]
async fn a_reload_reports_what_needs_a_restart_and_applies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    write(&path, &file(""));
    let node = start(Config::load(Some(&path)).expect("valid file")).await;
    let http = Http::new(&node);

    let changed = file(OLD_KEY_ENTRY).replace(
        "[admin]",
        "[limits]\nmax_topics = 7\n\n[mqtt]\nmax_inflight = 8\n\n[admin]",
    );
    write(&path, &changed);
    let reply = reload(&http).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["restart_needed"], json!(["limits", "mqtt"]));
    assert_eq!(push_status(&http, APP, OLD_KEY).await, 200, "applied");
}

#[tokio::test]
async fn a_reload_applies_the_access_lists_to_new_connections_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    write(&path, &file(""));
    let node = start(Config::load(Some(&path)).expect("valid file")).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let (mut alice, _) = TcpClient::connected(addr, "alice", "phone", 0).await;

    let denied = file("").replace(
        "[store]",
        "[listen.tcp_access]\ndeny = [\"127.0.0.0/8\"]\n\n[store]",
    );
    write(&path, &denied);
    let reply = reload(&http).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["restart_needed"], json!([]));

    // A new connection meets the list; the one already there stays.
    let mut refused = TcpClient::open(addr).await;
    let _ = tokio::io::AsyncWriteExt::write_all(
        &mut refused.stream,
        &encode(&connect_frame("bob", "laptop", 0)),
    )
    .await;
    match tokio::time::timeout(WAIT, refused.recv()).await {
        Err(_) => panic!("a denied connection is still open"),
        Ok(Ok(Some(frame))) => panic!("a denied client was answered {frame:?}"),
        Ok(Ok(None) | Err(_)) => {}
    }
    alice.send(&Frame::new(4, Body::Ping)).await;
    assert_eq!(alice.frame().await, Frame::new(4, Body::Pong));

    // The HTTP API's address lists reload too: a list that still lets this client in, then
    // one that shuts it out from the next request on (the reload's own answer comes first).
    let api_listed = |entries: &str| {
        file("").replace(
            "[store]",
            &format!("[listen.http_access]\n{entries}\n\n[store]"),
        )
    };
    write(&path, &api_listed(r#"allow = ["127.0.0.1", "::1"]"#));
    let reply = reload(&http).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["restart_needed"], json!([]));
    assert_eq!(push_status(&http, APP, API_KEY).await, 200);
    write(&path, &api_listed(r#"deny = ["127.0.0.0/8", "::1"]"#));
    let reply = reload(&http).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["restart_needed"], json!([]));
    let refused = http
        .post_raw(&format!("/v1/apps/{APP}/push"), Some(API_KEY), "{}")
        .await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(refused.body["code"], "forbidden");
}
