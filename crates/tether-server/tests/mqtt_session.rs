//! MQTT persistent sessions and wills end to end (`docs/mqtt.md` 4.4 and 9), with clients
//! nobody here wrote: Mosquitto's `mosquitto_sub` (Debian `mosquitto-clients`) and Eclipse
//! Paho for Python (`paho-mqtt`, in the venv `.ci/run` makes from
//! `tests/mqtt/requirements.txt`), against real nodes on port 0.
//!
//! A missing client skips its test, except under `CI=true`, where it fails it.

#[path = "mqtt/clients.rs"]
mod clients;
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clients::*;
use common::receiver::{Answer, Receiver};
use common::*;
use tether_server::config::StoreBackend;
use tether_server::{Config, Node};
use tokio::process::Command;
use tokio::time::timeout;

fn port(node: &Node) -> String {
    node.mqtt_addr().expect("mqtt listener").port().to_string()
}

/// `mosquitto_sub` of the demo app as `user`, with `extra` arguments.
fn sub_args(node: &Node, user: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["-h", "127.0.0.1", "-p", &port(node), "-u", APP, "-P"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(token(user));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn mosquitto_sub(node: &Node, user: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let bin = tool("mosquitto_sub").expect("checked by the caller");
    let args = sub_args(node, user, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&bin, &args).await
}

/// Publishes `text` to `topic` of the demo app; returns the publication's offset.
async fn publish(http: &Http, topic: &str, text: &str) -> u64 {
    let reply = http
        .post_raw(
            &format!("/v1/apps/{APP}/topics/{topic}/publish"),
            Some(API_KEY),
            &format!(r#"{{"qos":1,"payload":{{"m":"{text}"}}}}"#),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["offset"].as_u64().expect("an offset")
}

/// Two nodes sharing one store (embedded: one data directory, one node at a time), so that a
/// session saved on the first is resumed on the second.
fn embedded_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_tests();
    config.store.backend = StoreBackend::Embedded;
    config.node.data_dir = dir.to_path_buf();
    config
}

/// Paho (MQTT 5): a device subscribes with Clean Start 1 and a Session Expiry Interval, and
/// disconnects; a durable push and two publications come while it is away; it reconnects
/// with Clean Start 0 and subscribes to nothing: Session Present 1, and what it missed
/// arrives. The node in between restarts on the same store (the session lives in the
/// store, not the node). A clean start then forgets the session.
#[tokio::test]
async fn a_paho_session_resumes_with_its_subscriptions_on_the_next_node() {
    let Some(python) = paho_python() else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mqtt/paho_client.py");
    let script = script.to_str().expect("path").to_owned();
    let dir = tempfile::tempdir().expect("data dir");
    let token = token("sam");

    let node = start(embedded_config(dir.path())).await;
    let p = port(&node);
    let (code, out, err) = run(&python, &[&script, "session-start", &p, &token, "dev-s"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "present 0\nsubscribed 1 1\n");
    let http = Http::new(&node);
    http.push(r#"{"users":["sam"],"qos":1,"payload":{"m":"p1"}}"#)
        .await;
    publish(&http, "room-s", "a").await;
    publish(&http, "room-s", "b").await;
    node.shutdown();
    timeout(WAIT, node.wait()).await.expect("the node stops");

    let node = start(embedded_config(dir.path())).await;
    let p = port(&node);
    let (code, out, err) = run(
        &python,
        &[&script, "session-resume", &p, &token, "dev-s", "3"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"present 1"), "{out}");
    lines[1..].sort_unstable();
    assert_eq!(
        lines[1..],
        [
            r#"$tether/inbox/demo {"m":"p1"}"#,
            r#"room-s {"m":"a"}"#,
            r#"room-s {"m":"b"}"#,
        ],
        "{out}"
    );
    // The offsets moved with the publications: nothing comes twice.
    let http = Http::new(&node);
    publish(&http, "room-s", "c").await;
    let (code, out, err) = run(
        &python,
        &[&script, "session-resume", &p, &token, "dev-s", "1"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "present 1\nroom-s {\"m\":\"c\"}\n");

    // Clean Start 1 forgets it.
    let (code, out, err) = run(&python, &[&script, "session-start", &p, &token, "dev-s"]).await;
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "present 0\nsubscribed 1 1\n"),
        "{err}"
    );
}

/// A node that stops while a device with a persistent session is connected writes the
/// session's last state (the offsets its publications moved) before it closes the store: the
/// device resumes on the next node after what it was sent, with nothing twice (paho; the
/// topic at QoS 0, whose offset is the last publication sent rather than the last acked).
#[tokio::test]
async fn a_graceful_stop_keeps_the_last_state_of_a_connected_session() {
    let Some(python) = paho_python() else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mqtt/paho_client.py");
    let script = script.to_str().expect("path").to_owned();
    let dir = tempfile::tempdir().expect("data dir");
    let token = token("stan");

    let node = start(embedded_config(dir.path())).await;
    let http = Http::new(&node);
    let held = {
        let (python, script, p, token) =
            (python.clone(), script.clone(), port(&node), token.clone());
        tokio::spawn(
            async move { run(&python, &[&script, "session-hold", &p, &token, "dev-h"]).await },
        )
    };
    // Subscribed once the business sees the topic's subscriber.
    one_subscriber(&http, "room-s").await;
    publish(&http, "room-s", "a").await;
    publish(&http, "room-s", "b").await;
    node.shutdown();
    timeout(WAIT, node.wait()).await.expect("the node stops");
    let (code, out, err) = held.await.expect("paho");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "present 0\nsubscribed 1 0\nroom-s {\"m\":\"a\"}\nroom-s {\"m\":\"b\"}\ndisconnected 139\n",
        "both publications, then 0x8B Server shutting down"
    );

    let node = start(embedded_config(dir.path())).await;
    let http = Http::new(&node);
    publish(&http, "room-s", "c").await;
    let (code, out, err) = run(
        &python,
        &[
            &script,
            "session-resume",
            &port(&node),
            &token,
            "dev-h",
            "1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out, "present 1\nroom-s {\"m\":\"c\"}\n",
        "c alone: a and b were sent"
    );
}

/// A topic subscribed at QoS 1 gets its qos 1 publications as QoS 1, in order and each
/// once, within the device's Receive Maximum (2 here, with PUBACKs 50 ms late) and the node's
/// `mqtt.max_inflight` (1 in the second run): what did not fit is fetched again from the
/// topic's history as PUBACKs make room (paho).
#[tokio::test]
async fn qos1_publications_respect_the_window_of_a_slow_device() {
    let Some(python) = paho_python() else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mqtt/paho_client.py");
    let script = script.to_str().expect("path").to_owned();
    for (max_inflight, window) in [(64, "2"), (1, "1")] {
        let mut config = Config::for_tests();
        config.mqtt.max_inflight = max_inflight;
        let node = start(config).await;
        let http = Http::new(&node);
        let before = http.metrics().await;
        let device = {
            let (python, script) = (python.clone(), script.clone());
            let (p, token) = (port(&node), token("quinn"));
            tokio::spawn(
                async move { run(&python, &[&script, "slow-acks", &p, &token, "8"]).await },
            )
        };
        one_subscriber(&http, "room-q").await;
        let texts = ["a", "b", "c", "d", "e", "f", "g", "h"];
        for text in texts {
            publish(&http, "room-q", text).await;
        }
        let (code, out, err) = device.await.expect("paho");
        assert_eq!(code, Some(0), "{out}{err}");
        let expected: Vec<String> = texts
            .iter()
            .map(|t| format!("1 {{\"m\":\"{t}\"}}"))
            .collect();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("subscribed 1"), "{out}");
        let got: Vec<&str> = lines.by_ref().take(texts.len()).collect();
        assert_eq!(got, expected, "all eight, QoS 1, in order, once");
        let in_flight = format!("in flight {window}");
        assert_eq!(
            lines.next(),
            Some(in_flight.as_str()),
            "never more than the window"
        );
        let recovered =
            |page: &str| metric(page, "tether_mqtt_topic_recoveries_total").unwrap_or(0.0);
        assert!(
            recovered(&http.metrics().await) > recovered(&before),
            "what did not fit was fetched again"
        );
    }
}

/// mosquitto_sub with `-c` (3.1.1 clean session 0, and MQTT 5 Clean Start 0 with an
/// expiry): the publications of a topic sent while it was away come on its next connect; a
/// connection without `-c` starts clean.
#[tokio::test]
async fn mosquitto_sub_with_a_persistent_session_gets_what_it_missed() {
    if tool("mosquitto_sub").is_none() {
        return;
    }
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    for (version, device, topic) in [
        ("mqttv311", "persist-3", "room-m3"),
        ("mqttv5", "persist-5", "room-m5"),
    ] {
        let (code, out, err) = mosquitto_sub(
            &node,
            "mo",
            &[
                "-V", version, "-c", "-i", device, "-t", topic, "-q", "1", "-W", "1",
            ],
        )
        .await;
        assert_eq!((code, out.as_str()), (Some(27), ""), "{version}: {err}");
        publish(&http, topic, "x").await;
        publish(&http, topic, "y").await;
        let (code, out, err) = mosquitto_sub(
            &node,
            "mo",
            &[
                "-V", version, "-c", "-i", device, "-t", topic, "-q", "1", "-C", "2", "-W", "10",
            ],
        )
        .await;
        assert_eq!(code, Some(0), "{version}: {err}");
        assert_eq!(out, "{\"m\":\"x\"}\n{\"m\":\"y\"}\n", "{version}");
        // Without -c: a clean session, live publications only.
        publish(&http, topic, "z").await;
        let (code, out, err) = mosquitto_sub(
            &node,
            "mo",
            &[
                "-V", version, "-i", device, "-t", topic, "-q", "1", "-W", "1",
            ],
        )
        .await;
        assert_eq!((code, out.as_str()), (Some(27), ""), "{version}: {err}");
    }
}

/// Spawns `mosquitto_sub` with a will and returns it once the node has its connection.
async fn with_will(
    node: &Node,
    http: &Http,
    user: &str,
    payload: &str,
    extra: &[&str],
) -> tokio::process::Child {
    let bin = tool("mosquitto_sub").expect("checked by the caller");
    let mut args = vec![
        "-V",
        "mqttv5",
        "-i",
        user,
        "--will-topic",
        "gone",
        "--will-payload",
        payload,
        "-t",
        "$tether/inbox/demo",
        "-q",
        "1",
    ];
    args.extend_from_slice(extra);
    let args = sub_args(node, user, &args);
    let child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_sub");
    http.wait_presence(user, 1).await;
    child
}

/// A device killed without DISCONNECT has its will sent to the app's webhook as an upstream
/// of `kind` = the will topic, with `"will": true`; one that says goodbye (DISCONNECT 0x00),
/// or that the business kicks, has none sent.
#[tokio::test]
async fn a_will_reaches_the_webhook_when_the_device_is_killed_and_only_then() {
    if tool("mosquitto_sub").is_none() {
        return;
    }
    let hook = Receiver::start(|_, _| Answer::json(200, "{}")).await;
    let mut config = Config::for_tests();
    config.apps[0].webhook = Some(hook.url.clone());
    let node = start(config).await;
    let http = Http::new(&node);

    // A goodbye: mosquitto_sub -C 1 disconnects after its message.
    let mut clean = with_will(&node, &http, "w-clean", r#"{"bye":"clean"}"#, &["-C", "1"]).await;
    http.push(r#"{"users":["w-clean"],"qos":1,"payload":{}}"#)
        .await;
    let status = timeout(RUN, clean.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(0));
    // A kick: the server's doing.
    let _kicked = with_will(&node, &http, "w-kicked", r#"{"bye":"kicked"}"#, &[]).await;
    http.kick("w-kicked").await;
    http.wait_presence("w-kicked", 0).await;
    // Killed: the connection is lost.
    let mut lost = with_will(&node, &http, "w-lost", r#"{"bye":"lost"}"#, &[]).await;
    lost.kill().await.expect("kill");

    let wills = || {
        hook.seen()
            .into_iter()
            .filter(|s| s.json["type"] == "upstream")
            .map(|s| s.json)
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while wills().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no will reached the webhook"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything else would have come by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wills = wills();
    assert_eq!(wills.len(), 1, "{wills:?}");
    let will = &wills[0];
    assert_eq!(will["kind"], "gone", "{will}");
    assert_eq!(will["will"], true, "{will}");
    assert_eq!(will["user"], "w-lost", "{will}");
    assert_eq!(will["device"], "w-lost", "{will}");
    assert_eq!(will["payload"]["bye"], "lost", "{will}");
}

/// Waits (at most `WAIT`) until app `demo`'s `topic` has one subscriber, as the business sees it.
async fn one_subscriber(http: &Http, topic: &str) {
    let path = format!("/v1/apps/demo/topics/{topic}");
    let subscribed = async {
        loop {
            let reply = http.get(&path, Some(API_KEY)).await;
            if reply.body["subscribers"].as_u64() == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, subscribed).await.expect("subscribed in time");
}

/// A device whose new connection comes while the old one is still open (it switched
/// networks) resumes after the old one's last acks: the old connection's acks are written at
/// most every 100 ms while it lives, and the new one reads where the device stands only once
/// the old one ended and wrote the rest (docs/mqtt.md 4.4).
#[tokio::test]
async fn a_new_connection_resumes_after_the_last_acks_of_the_one_it_replaces() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.mqtt_addr().expect("mqtt");
    for text in ["a", "b"] {
        http.push(&format!(
            r#"{{"users":["vera"],"qos":1,"payload":{{"m":"{text}"}}}}"#
        ))
        .await;
    }
    let subscribe = packet(0x82, b"\x00\x07\x00\x12$tether/inbox/demo\x01");
    let mut read = Vec::new();
    let open = || async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut both = connect_311("kettle", APP, &token("vera"));
        both.extend_from_slice(&subscribe);
        s.write_all(&both).await.expect("write");
        s
    };
    let mut old = open().await;
    let got = read_packets(&mut old, &mut read, 4).await;
    assert_eq!(got[0], (0x20, vec![0, 0]), "CONNACK accepted");
    assert_eq!(got[1], (0x90, vec![0, 7, 1]), "SUBACK QoS 1");
    let topic = b"\x00\x12$tether/inbox/demo";
    for ((first, body), text) in got[2..].iter().zip(["a", "b"]) {
        assert_eq!(*first, 0x32, "PUBLISH QoS 1");
        assert!(body.ends_with(format!(r#"{{"m":"{text}"}}"#).as_bytes()));
        // Each PUBACK apart, a PINGREQ behind it: the first is written at once, the second
        // waits for the ack writes' interval.
        let id = [body[topic.len()], body[topic.len() + 1]];
        old.write_all(&[0x40, 0x02, id[0], id[1], 0xC0, 0x00])
            .await
            .expect("PUBACK");
        let pong = read_packets(&mut old, &mut read, 1).await;
        assert_eq!(pong, vec![(0xD0, vec![])], "PINGRESP");
    }
    let mut new = open().await;
    let mut fresh = Vec::new();
    let got = read_packets(&mut new, &mut fresh, 2).await;
    assert_eq!(got, vec![(0x20, vec![0, 0]), (0x90, vec![0, 7, 1])]);
    let mut rest = Vec::new();
    let closed = timeout(WAIT, old.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the old connection is closed without a packet (3.1.1): {closed:?} {rest:?}"
    );
    http.push(r#"{"users":["vera"],"qos":1,"payload":{"m":"c"}}"#)
        .await;
    let (first, body) = read_packets(&mut new, &mut fresh, 1).await.remove(0);
    assert_eq!(first, 0x32, "PUBLISH QoS 1");
    assert!(
        body.ends_with(br#"{"m":"c"}"#),
        "the first PUBLISH is the new push, not an acked one again: {}",
        String::from_utf8_lossy(&body)
    );
}
