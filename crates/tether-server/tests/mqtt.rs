//! MQTT end to end (`docs/mqtt.md`), with clients nobody here wrote: Mosquitto's
//! `mosquitto_sub` / `mosquitto_pub` / `mosquitto_rr` (Debian `mosquitto-clients`),
//! Eclipse Paho for Python (`paho-mqtt`, in the venv `.ci/run` makes from
//! `tests/mqtt/requirements.txt`) and MQTT.js (npm `mqtt`, [`mqttjs`]), against a real node
//! on port 0: one `cargo test --test mqtt` runs all three.
//!
//! A missing client skips its test, except under `CI=true`, where it fails it.

#[path = "mqtt/clients.rs"]
mod clients;
mod common;
#[path = "mqtt/mqttjs.rs"]
mod mqttjs;

use std::path::PathBuf;
use std::time::Duration;

use clients::*;
use common::receiver::{Answer, Receiver};
use common::*;
use tether_proto::{Body, Code};
use tether_server::Node;
use tokio::time::timeout;

fn port(node: &Node) -> String {
    node.mqtt_addr().expect("mqtt listener").port().to_string()
}

/// `mosquitto_sub` of the demo app as `user` on `device`, subscribed to `topic` at `qos`,
/// until `count` messages came or `wait_s` passed; prints each payload on a line.
async fn sub(
    node: &Node,
    version: &str,
    user: &str,
    device: &str,
    topic: &str,
    count: usize,
    wait_s: u32,
) -> (Option<i32>, Vec<String>, String) {
    let bin = tool("mosquitto_sub").expect("checked by the caller");
    let (port, token, count, wait) = (
        port(node),
        token(user),
        count.to_string(),
        wait_s.to_string(),
    );
    let (code, out, err) = run(
        &bin,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-i",
            device,
            "-u",
            APP,
            "-P",
            &token,
            "-t",
            topic,
            "-q",
            "1",
            "-C",
            &count,
            "-W",
            &wait,
            "-F",
            "%p",
        ],
    )
    .await;
    (code, out.lines().map(str::to_owned).collect(), err)
}

async fn push(http: &Http, user: &str, qos: u8, text: &str) {
    http.push(&format!(
        r#"{{"users":["{user}"],"qos":{qos},"payload":{{"m":"{text}"}}}}"#
    ))
    .await;
}

/// Durable pushes sent while a device is away reach it on its next connect, in order, and
/// once acked (PUBACK), never again; a second device of the user acks on its own.
#[tokio::test]
async fn offline_pushes_arrive_in_order_and_once_per_device_with_mosquitto() {
    if tool("mosquitto_sub").is_none() {
        return;
    }
    let node = start(tether_server::Config::for_tests()).await;
    let http = Http::new(&node);
    for version in ["mqttv5", "mqttv311"] {
        let user = format!("alice-{version}");
        for text in ["a", "b", "c"] {
            push(&http, &user, 1, text).await;
        }
        let inbox = "$tether/inbox/demo";
        let (code, got, err) = sub(&node, version, &user, "phone", inbox, 3, 10).await;
        assert_eq!((code, got), (Some(0), payloads(&["a", "b", "c"])), "{err}");
        // Acked: nothing comes again on the next connect, and later pushes do.
        for text in ["d", "e"] {
            push(&http, &user, 1, text).await;
        }
        let (code, got, err) = sub(&node, version, &user, "phone", inbox, 2, 10).await;
        assert_eq!((code, got), (Some(0), payloads(&["d", "e"])), "{err}");
        let (code, got, _) = sub(&node, version, &user, "phone", inbox, 1, 1).await;
        assert_eq!(
            (code, got),
            (Some(27), vec![]),
            "27: timed out with nothing"
        );
        // Another device of the user has acked nothing: it gets all five.
        let (code, got, err) = sub(&node, version, &user, "laptop", inbox, 5, 10).await;
        assert_eq!(
            (code, got),
            (Some(0), payloads(&["a", "b", "c", "d", "e"])),
            "{err}"
        );
    }
}

/// A topic subscription gets the business's publications; wildcards are refused.
#[tokio::test]
async fn topic_publications_reach_mosquitto_sub_and_wildcards_are_refused() {
    if tool("mosquitto_sub").is_none() {
        return;
    }
    let node = start(tether_server::Config::for_tests()).await;
    let http = Http::new(&node);
    let subscriber = {
        let port = port(&node);
        tokio::spawn(async move {
            let bin = tool("mosquitto_sub").expect("checked");
            let token = token("bob");
            run(
                &bin,
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    "mqttv5",
                    "-i",
                    "tv",
                    "-u",
                    APP,
                    "-P",
                    &token,
                    "-t",
                    "room-1",
                    "-q",
                    "1",
                    "-C",
                    "2",
                    "-W",
                    "10",
                    "-F",
                    "%t %p",
                ],
            )
            .await
        })
    };
    http.wait_presence("bob", 1).await;
    // The SUBSCRIBE may still be on its way: publish until the first one lands.
    let publish = |text: &str| format!(r#"{{"qos":0,"payload":{{"m":"{text}"}}}}"#);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = http
            .post_raw(
                "/v1/apps/demo/topics/room-1/publish",
                Some(API_KEY),
                &publish("x"),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        if reply.body["subscribers"].as_u64() == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = http
        .post_raw(
            "/v1/apps/demo/topics/room-1/publish",
            Some(API_KEY),
            &publish("y"),
        )
        .await;
    assert_eq!(reply.status, 200);
    let (code, out, err) = subscriber.await.expect("subscriber");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "room-1 {\"m\":\"x\"}\nroom-1 {\"m\":\"y\"}\n");

    let bin = tool("mosquitto_sub").expect("checked");
    let (port, token) = (port(&node), token("bob"));
    for version in ["mqttv5", "mqttv311"] {
        let (code, _, err) = run(
            &bin,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-i",
                "tv2",
                "-u",
                APP,
                "-P",
                &token,
                "-t",
                "room/#",
                "-C",
                "1",
                "-W",
                "5",
            ],
        )
        .await;
        // mosquitto_sub reports the refusal and exits (0 in 2.0).
        assert!(err.contains("denied"), "{version} ({code:?}): {err}");
    }
}

/// A bad token gets CONNACK "bad user name or password", in both versions.
#[tokio::test]
async fn a_refused_token_gets_bad_user_name_or_password() {
    let Some(bin) = tool("mosquitto_sub") else {
        return;
    };
    let node = start(tether_server::Config::for_tests()).await;
    let port = port(&node);
    for version in ["mqttv5", "mqttv311"] {
        let (code, _, err) = run(
            &bin,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-i",
                "d",
                "-u",
                APP,
                "-P",
                "not-a-token",
                "-t",
                "$tether/inbox/demo",
                "-C",
                "1",
                "-W",
                "5",
            ],
        )
        .await;
        assert_ne!(code, Some(0));
        assert!(
            err.to_lowercase().contains("bad user name or password"),
            "{version}: {err}"
        );
    }
}

/// `mosquitto_rr` publishes with a Response Topic and Correlation Data (MQTT 5): the
/// webhook gets the upstream, the device gets its answer.
#[tokio::test]
async fn an_upstream_round_trip_with_mosquitto_rr() {
    let Some(bin) = tool("mosquitto_rr") else {
        return;
    };
    let hook = Receiver::start(|_, _| Answer::json(200, r#"{"pong":1}"#)).await;
    let mut config = tether_server::Config::for_tests();
    config.apps[0].webhook = Some(hook.url.clone());
    let node = start(config).await;
    let (port, token) = (port(&node), token("carol"));
    let (code, out, err) = run(
        &bin,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "sensor",
            "-u",
            APP,
            "-P",
            &token,
            "-t",
            "ping",
            "-e",
            "replies/sensor",
            "-m",
            r#"{"n":1}"#,
            "-W",
            "10",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), r#"{"pong":1}"#);
    let seen = hook.seen();
    let body = &seen.last().expect("the webhook was called").json;
    assert_eq!(body["kind"], "ping", "{body}");
    assert_eq!(body["user"], "carol", "{body}");
}

/// A push reaches the user's MQTT device and the same user's WebSocket client; each acks
/// on its own.
#[tokio::test]
async fn a_push_reaches_an_mqtt_device_and_a_websocket_client_of_the_user() {
    if tool("mosquitto_sub").is_none() {
        return;
    }
    let node = start(tether_server::Config::for_tests()).await;
    let http = Http::new(&node);
    let mut ws = WsClient::open(&node).await;
    ws.send_frame(&connect_frame("dave", "browser", 0)).await;
    assert!(matches!(ws.frame().await.body, Body::Connected(_)));
    push(&http, "dave", 1, "hello").await;
    let pushed = expect_push(ws.frame().await);
    assert_eq!(pushed.seq, 1);
    let (code, got, err) = sub(
        &node,
        "mqttv5",
        "dave",
        "watch",
        "$tether/inbox/demo",
        1,
        10,
    )
    .await;
    assert_eq!((code, got), (Some(0), payloads(&["hello"])), "{err}");
    // The MQTT device acked; the browser did not, and a reconnect gets it again.
    drop(ws);
    let mut ws = WsClient::open(&node).await;
    ws.send_frame(&connect_frame("dave", "browser", 0)).await;
    assert!(matches!(ws.frame().await.body, Body::Connected(_)));
    assert_eq!(expect_push(ws.frame().await).seq, 1);
    let (code, got, _) = sub(&node, "mqttv5", "dave", "watch", "$tether/inbox/demo", 1, 1).await;
    assert_eq!((code, got), (Some(27), vec![]));
}

/// The business kicks the user: an MQTT 5 client is told 0x98 Administrative action; a
/// refused QoS 2 PUBLISH gets 0x9B (paho-mqtt).
#[tokio::test]
async fn kick_and_refusals_reach_paho() {
    let Some(python) = paho_python() else {
        return;
    };
    let node = start(tether_server::Config::for_tests()).await;
    let http = Http::new(&node);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mqtt/paho_client.py");
    let script = script.to_str().expect("path").to_owned();
    let (port, token) = (port(&node), token("erin"));
    let client = {
        let (python, script, port, token) =
            (python.clone(), script.clone(), port.clone(), token.clone());
        tokio::spawn(
            async move { run(&python, &[&script, "wait-disconnect", &port, &token]).await },
        )
    };
    http.wait_presence("erin", 1).await;
    http.kick("erin").await;
    let (code, out, err) = client.await.expect("paho");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "disconnected 152", "0x98 Administrative action");

    let (code, out, err) = run(&python, &[&script, "qos2", &port, &token]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "disconnected 155", "0x9B QoS not supported");
    let _ = Code::KICKED;
}

/// A device that connects again while its first connection still lives takes that one's
/// place: paho's MQTT 5 connection is told 0x8E Session taken over, and the inbox goes to the
/// new one (mosquitto_sub with the same client id).
#[tokio::test]
async fn a_reconnecting_device_takes_over_from_paho() {
    let Some(python) = paho_python() else {
        return;
    };
    if tool("mosquitto_sub").is_none() {
        return;
    }
    let node = start(tether_server::Config::for_tests()).await;
    let http = Http::new(&node);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mqtt/paho_client.py");
    let script = script.to_str().expect("path").to_owned();
    let (port, token) = (port(&node), token("tom"));
    let first =
        tokio::spawn(
            async move { run(&python, &[&script, "wait-disconnect", &port, &token]).await },
        );
    http.wait_presence("tom", 1).await;
    let second = {
        let node_sub = async {
            // paho's client id for that mode.
            let inbox = "$tether/inbox/demo";
            sub(&node, "mqttv5", "tom", "paho-wait-disconnect", inbox, 1, 10).await
        };
        let pushed = async {
            let (code, out, err) = first.await.expect("paho");
            assert_eq!(code, Some(0), "{err}");
            assert_eq!(out.trim(), "disconnected 142", "0x8E Session taken over");
            http.wait_presence("tom", 1).await;
            push(&http, "tom", 1, "to the new one").await;
        };
        tokio::join!(node_sub, pushed).0
    };
    let (code, got, err) = second;
    assert_eq!(
        (code, got),
        (Some(0), payloads(&["to the new one"])),
        "{err}"
    );
}

/// Bad input closes the connection with the right answer, never a panic: a level the server
/// does not speak gets its CONNACK (5.0: 0x84; 3.1's level 3: 3.1.1's 0x01), a first packet
/// that is not CONNECT and a reserved packet type get a close.
#[tokio::test]
async fn bad_input_gets_its_code_and_a_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start(tether_server::Config::for_tests()).await;
    let addr = node.mqtt_addr().expect("mqtt");
    let answer = |bytes: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut got = Vec::new();
        timeout(WAIT, s.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .expect("read");
        got
    };
    // CONNECT, protocol name MQTT, level 6.
    let level6 = b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x01a";
    assert_eq!(answer(level6).await, b"\x20\x03\x00\x84\x00");
    let level3 = b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01a";
    assert_eq!(answer(level3).await, b"\x20\x02\x00\x01");
    // A PUBLISH first; a packet of type 0.
    assert_eq!(answer(b"\x30\x03\x00\x01a").await, b"");
    assert_eq!(answer(b"\x00\x00").await, b"");
    // The node is still serving.
    let http = Http::new(&node);
    assert_eq!(http.get("/healthz", None).await.status, 200);
}
