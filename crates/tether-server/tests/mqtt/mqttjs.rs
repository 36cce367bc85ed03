//! The same behaviours with MQTT.js (npm `mqtt`, the client of browsers and Node services),
//! pinned in `tests/mqtt/js/package-lock.json` and installed by `.ci/run` (`npm ci`). Each
//! test runs `tests/mqtt/js/client.mjs` in one of its modes (one connection of one device
//! each) against a real node on port 0, and checks the lines it prints.
//!
//! Without Node or the installed package the tests are skipped, except under `CI=true`, where
//! they fail.

use std::path::PathBuf;
use std::time::Duration;

use super::{port, push};
use crate::clients::{RUN, run, tool};
use crate::common::receiver::{Answer, Receiver};
use crate::common::*;
use tether_server::Node;

/// `node` and the client script, or `None` (skip) when either is missing outside CI.
fn mqttjs() -> Option<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mqtt/js");
    let script = dir.join("client.mjs").to_str().expect("path").to_owned();
    let node = tool("node")?;
    if !dir.join("node_modules/mqtt/package.json").is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "MQTT.js is needed under CI=true: `npm ci` in {} (.ci/run does it)",
            dir.display()
        );
        eprintln!("skipped: MQTT.js is not installed (`npm ci` in tests/mqtt/js)");
        return None;
    }
    Some((node, script))
}

/// Runs one mode of the client to its end: its exit code and the lines it printed.
async fn client(mode: &str, node: &Node, user: &str, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let (bin, script) = mqttjs().expect("checked by the caller");
    let (port, token) = (port(node), token(user));
    let mut all = vec![script.as_str(), mode, &port, &token];
    all.extend_from_slice(args);
    let (code, out, err) = run(&bin, &all).await;
    if !err.trim().is_empty() {
        eprintln!("{mode} ({code:?}): {err}");
    }
    (code, out.lines().map(str::to_owned).collect())
}

/// `SEQ PAYLOAD` lines, as the `inbox` mode prints them.
fn seqs(items: &[(u64, &str)]) -> Vec<String> {
    items
        .iter()
        .map(|(seq, text)| format!(r#"{seq} {{"m":"{text}"}}"#))
        .collect()
}

/// Polls presence until `user` has `n` connections, longer than [`WAIT`]: Node takes a while
/// to start on a busy machine.
async fn wait_connected(http: &Http, user: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + RUN;
    loop {
        let presence = http.presence(user).await;
        if presence["connections"].as_array().map_or(0, Vec::len) == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} never had {n} connections: {presence}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Durable pushes sent while the device is away reach it when it comes back, in seq order;
/// once MQTT.js has PUBACKed them they never come again, and later ones do.
#[tokio::test]
async fn offline_pushes_reach_mqttjs_in_order_and_once_after_its_acks() {
    if mqttjs().is_none() {
        return;
    }
    let node = start(tether_server::Config::for_tests()).await;
    let http = Http::new(&node);
    for version in ["5", "4"] {
        let user = format!("alice-js{version}");
        let inbox = |count: &'static str, wait: &'static str| {
            let (node, user) = (&node, user.clone());
            async move { client("inbox", node, &user, &[version, "phone", count, wait]).await }
        };
        // Online once, with an empty inbox; then away.
        assert_eq!(inbox("1", "500").await, (Some(0), vec![]), "v{version}");
        for text in ["a", "b", "c"] {
            push(&http, &user, 1, text).await;
        }
        let expected = seqs(&[(1, "a"), (2, "b"), (3, "c")]);
        assert_eq!(inbox("3", "10000").await, (Some(0), expected), "v{version}");
        // Acked: nothing comes again, however long the device waits.
        assert_eq!(inbox("1", "1500").await, (Some(0), vec![]), "v{version}");
        for text in ["d", "e"] {
            push(&http, &user, 1, text).await;
        }
        let expected = seqs(&[(4, "d"), (5, "e")]);
        assert_eq!(inbox("2", "10000").await, (Some(0), expected), "v{version}");
    }
}

/// A topic subscription gets the business's publications; in the same SUBSCRIBE, a wildcard
/// filter is refused on its own (5.0: 0xA2; 3.1.1: 0x80) and the other filter still holds.
#[tokio::test]
async fn topic_publications_reach_mqttjs_and_a_wildcard_is_refused_alone() {
    if mqttjs().is_none() {
        return;
    }
    let node = start(tether_server::Config::for_tests()).await;
    let http = Http::new(&node);
    for (version, refused) in [("5", 0xA2), ("4", 0x80)] {
        let topic = format!("room-js{version}");
        let subscriber = {
            let (node, topic) = (&node, topic.clone());
            async move { client("topic", node, "bob", &[version, "tv", &topic, "2"]).await }
        };
        let publisher = async {
            let path = format!("/v1/apps/demo/topics/{topic}/publish");
            let publish = |text: &str| format!(r#"{{"qos":0,"payload":{{"m":"{text}"}}}}"#);
            // The SUBSCRIBE may still be on its way: publish until the first one lands.
            let deadline = tokio::time::Instant::now() + RUN;
            loop {
                let reply = http.post_raw(&path, Some(API_KEY), &publish("x")).await;
                assert_eq!(reply.status, 200, "{:?}", reply.body);
                if reply.body["subscribers"].as_u64() == Some(1) {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "never subscribed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let reply = http.post_raw(&path, Some(API_KEY), &publish("y")).await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
        };
        let ((code, lines), ()) = tokio::join!(subscriber, publisher);
        // The server may send a subscription's PUBLISHes before its SUBACK (MQTT 5.0, 3.8.4),
        // and does while the SUBACK waits for the last filter's answer: the SUBACK's line
        // may come anywhere, the publications in order.
        let (granted, publications): (Vec<String>, Vec<String>) =
            lines.into_iter().partition(|l| l.starts_with("granted "));
        assert_eq!(
            (code, granted, publications),
            (
                Some(0),
                vec![format!("granted 1 {refused}")],
                vec![
                    format!(r#"{topic} {{"m":"x"}}"#),
                    format!(r#"{topic} {{"m":"y"}}"#),
                ]
            ),
            "v{version}"
        );
    }
}

/// An MQTT 5 PUBLISH with a Response Topic and Correlation Data is an upstream: the webhook
/// gets it, MQTT.js gets PUBACK 0x00 and the webhook's answer on its response topic, with its
/// correlation data and the HTTP status.
#[tokio::test]
async fn an_upstream_round_trip_with_a_response_topic_in_mqttjs() {
    if mqttjs().is_none() {
        return;
    }
    let hook = Receiver::start(|_, _| Answer::json(200, r#"{"pong":1}"#)).await;
    let mut config = tether_server::Config::for_tests();
    config.apps[0].webhook = Some(hook.url.clone());
    let node = start(config).await;
    let (code, mut lines) = client("rr", &node, "carol", &[]).await;
    // The PUBACK and the reply travel apart: either may come first.
    lines.sort();
    assert_eq!(
        (code, lines),
        (
            Some(0),
            vec![
                "puback 0".to_owned(),
                r#"reply {"pong":1} c-1 200"#.to_owned()
            ]
        )
    );
    let seen = hook.seen();
    let body = &seen.last().expect("the webhook was called").json;
    assert_eq!(body["kind"], "ping", "{body}");
    assert_eq!(body["user"], "carol", "{body}");
    assert_eq!(body["device"], "js-sensor", "{body}");
}

/// The business kicks the user: MQTT.js is told DISCONNECT 0x98 Administrative action.
#[tokio::test]
async fn a_kick_reaches_mqttjs_as_administrative_action() {
    if mqttjs().is_none() {
        return;
    }
    let node = start(tether_server::Config::for_tests()).await;
    let http = Http::new(&node);
    let device = client("kick", &node, "erin", &[]);
    let kick = async {
        wait_connected(&http, "erin", 1).await;
        http.kick("erin").await;
    };
    let ((code, lines), ()) = tokio::join!(device, kick);
    // The kick follows the connection's presence, not its SUBACK: `subscribed` may come first.
    let after_suback: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .skip_while(|l| *l == "subscribed")
        .collect();
    assert_eq!(
        (code, after_suback),
        (Some(0), vec!["disconnected 152"]),
        "{lines:?}"
    );
}

/// A token that does not verify gets CONNACK "bad user name or password" in both versions:
/// 0x86 in MQTT 5, 4 in 3.1.1, which MQTT.js reports as the error's code.
#[tokio::test]
async fn a_refused_token_gets_bad_user_name_or_password_in_mqttjs() {
    if mqttjs().is_none() {
        return;
    }
    let node = start(tether_server::Config::for_tests()).await;
    for (version, expected) in [("5", "refused 134"), ("4", "refused 4")] {
        let (bin, script) = mqttjs().expect("checked");
        let port = port(&node);
        let (code, out, err) =
            run(&bin, &[&script, "refused", &port, "not-a-token", version]).await;
        assert_eq!((code, out.trim()), (Some(0), expected), "v{version}: {err}");
    }
}
