//! The MQTT listener's edges (`docs/mqtt.md`, section 1): MQTT over WebSocket on the WebSocket
//! listener, and MQTT inside TLS (`listen.mqtts`), with clients nobody here wrote: Eclipse Paho
//! for Python (`paho-mqtt`, in the venv `.ci/run` makes from `tests/mqtt/requirements.txt`) and
//! Mosquitto's `mosquitto_sub`, plus raw bytes where a client library would hide the framing.
//!
//! A missing client skips its test, except under `CI=true`, where it fails it.

#[path = "mqtt/clients.rs"]
mod clients;
mod common;

use std::path::PathBuf;
use std::time::Duration;

use clients::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tether_server::{Config, Node};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// `tests/mqtt/paho_inbox.py` as `user` on `port` with `extra` options (`--ws /mqtt`,
/// `--tls ca.pem`): the payloads it printed, once `count` came or `wait_s` passed.
async fn paho_inbox(
    python: &PathBuf,
    port: u16,
    user: &str,
    count: usize,
    wait_s: u32,
    extra: &[&str],
) -> Vec<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mqtt/paho_inbox.py");
    let (port, token, count, wait) = (
        port.to_string(),
        token(user),
        count.to_string(),
        wait_s.to_string(),
    );
    let mut args = vec![script.to_str().expect("path"), &port, &token, &count, &wait];
    args.extend_from_slice(extra);
    let (code, out, err) = run(python, &args).await;
    assert_eq!(code, Some(0), "paho: {err}");
    out.lines().map(str::to_owned).collect()
}

async fn push(http: &Http, user: &str, text: &str) {
    http.push(&format!(
        r#"{{"users":["{user}"],"qos":1,"payload":{{"m":"{text}"}}}}"#
    ))
    .await;
}

/// Durable pushes reach Paho over WebSocket (`ws://host/mqtt`) on `$tether/inbox/demo`, in
/// order; its PUBACKs move the device's cursor, so a reconnect gets only what came after.
#[tokio::test]
async fn a_push_reaches_paho_over_websocket_and_its_pubacks_move_the_cursor() {
    let Some(python) = paho_python() else {
        return;
    };
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let port = node.ws_addr().expect("ws").port();
    push(&http, "wendy", "one").await;
    push(&http, "wendy", "two").await;
    let got = paho_inbox(&python, port, "wendy", 2, 10, &["--ws", "/mqtt"]).await;
    assert_eq!(got, payloads(&["one", "two"]));
    // Acked: nothing comes again (the run waits its 2 s out).
    let got = paho_inbox(&python, port, "wendy", 1, 2, &["--ws", "/mqtt"]).await;
    assert_eq!(got, Vec::<String>::new());
    // 3.1.1 too, and on `/ws` with the `mqtt` subprotocol (Paho offers it).
    push(&http, "wendy", "three").await;
    let got = paho_inbox(&python, port, "wendy", 1, 10, &["--ws", "/ws", "--v311"]).await;
    assert_eq!(got, payloads(&["three"]));
}

/// A CONNECT 3.1.1 of the demo app as `user` (clean session, keep alive 60 s).
fn connect_packet(user: &str, device: &str) -> Vec<u8> {
    connect_311(device, APP, &token(user))
}

/// A raw WebSocket client speaking MQTT bytes.
struct MqttWs {
    ws: Ws,
    read: Vec<u8>,
}

impl MqttWs {
    /// Opens `path` on the node's WebSocket listener offering `protocols`; the subprotocol
    /// the server answered.
    async fn open(node: &Node, path: &str, protocols: &str) -> (MqttWs, Option<String>) {
        let url = format!("ws://{}{path}", node.ws_addr().expect("ws"));
        let mut request = url.into_client_request().expect("request");
        if !protocols.is_empty() {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
        }
        let (ws, response) = timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("upgrade in time")
            .expect("upgrade");
        let agreed = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().expect("ascii").to_owned());
        (
            MqttWs {
                ws,
                read: Vec::new(),
            },
            agreed,
        )
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.ws.send(Message::binary(bytes.to_vec())))
            .await
            .expect("send in time")
            .expect("send");
    }

    /// The next `n` packets, from however many messages they come in.
    async fn packets(&mut self, n: usize) -> Vec<(u8, Vec<u8>)> {
        let mut got = split_packets(&mut self.read);
        while got.len() < n {
            let message = timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("open")
                .expect("a message");
            match message {
                Message::Binary(bytes) => self.read.extend_from_slice(&bytes),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("not a binary message: {other:?}"),
            }
            got.extend(split_packets(&mut self.read));
        }
        assert_eq!(got.len(), n, "{got:?}");
        got
    }
}

/// MQTT over WebSocket is a byte stream: a packet may span messages and a message may hold
/// several packets; a PUBACK moves the cursor; a text message is closed with 1003.
#[tokio::test]
async fn mqtt_packets_span_websocket_messages_and_share_them() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    // At `/ws`, `mqtt` offered before tether's own: MQTT.
    let (mut client, agreed) = MqttWs::open(&node, "/ws", "mqtt, tether.binary").await;
    assert_eq!(agreed.as_deref(), Some("mqtt"));
    let connect = connect_packet("xavier", "raw-ws");
    let subscribe = packet(0x82, b"\x00\x07\x00\x12$tether/inbox/demo\x01");
    // The CONNECT in two messages, its tail sharing the second with the SUBSCRIBE.
    client.send(&connect[..5]).await;
    let mut second = connect[5..].to_vec();
    second.extend_from_slice(&subscribe);
    client.send(&second).await;
    let answers = client.packets(2).await;
    assert_eq!(answers[0], (0x20, vec![0, 0]), "CONNACK accepted");
    assert_eq!(answers[1], (0x90, vec![0, 7, 1]), "SUBACK QoS 1");
    push(&http, "xavier", "hi").await;
    let (first, body) = client.packets(1).await.remove(0);
    assert_eq!(first, 0x32, "PUBLISH QoS 1");
    let topic = b"\x00\x12$tether/inbox/demo";
    assert_eq!(&body[..topic.len()], topic);
    let id = [body[topic.len()], body[topic.len() + 1]];
    assert_eq!(&body[topic.len() + 2..], br#"{"m":"hi"}"#);
    // The PUBACK, a byte at a time across three messages, then a PINGREQ.
    client.send(&[0x40]).await;
    client.send(&[0x02, id[0]]).await;
    client.send(&[id[1], 0xC0, 0x00]).await;
    assert_eq!(client.packets(1).await, vec![(0xD0, vec![])], "PINGRESP");
    // A WebSocket ping between packets is answered with its pong, and is no MQTT byte.
    client.send(&[0xC0]).await;
    timeout(
        WAIT,
        client
            .ws
            .send(Message::Ping(b"are you there".to_vec().into())),
    )
    .await
    .expect("send in time")
    .expect("send");
    client.send(&[0x00]).await;
    let pong = timeout(WAIT, client.ws.next())
        .await
        .expect("a pong in time")
        .expect("open")
        .expect("a message");
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
    assert_eq!(client.packets(1).await, vec![(0xD0, vec![])], "PINGRESP");
    // A text message is not MQTT's.
    timeout(WAIT, client.ws.send(Message::text("hello")))
        .await
        .expect("send in time")
        .expect("send");
    let closed = loop {
        match timeout(WAIT, client.ws.next()).await.expect("in time") {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(closed, Some(CloseCode::Unsupported));

    // Acked: the same device, at `/mqtt` with no subprotocol offered, gets nothing again.
    let (mut client, agreed) = MqttWs::open(&node, "/mqtt", "").await;
    assert_eq!(agreed, None);
    let mut both = connect_packet("xavier", "raw-ws");
    both.extend_from_slice(&subscribe);
    client.send(&both).await;
    assert_eq!(client.packets(2).await[1], (0x90, vec![0, 7, 1]));
    push(&http, "xavier", "again").await;
    let (first, body) = client.packets(1).await.remove(0);
    assert_eq!(first, 0x32);
    assert!(body.ends_with(br#"{"m":"again"}"#), "{body:?}");
}

/// A certificate authority of the test's own, and a server certificate it signed for
/// `localhost` and 127.0.0.1, written as `ca.pem`, `cert.pem` and `key.pem` in `dir`.
fn certificates(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "mqtt test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(names)
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("cert.pem", cert.pem()),
        ("key.pem", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write a PEM file");
    }
}

/// A node with `listen.mqtts` and `listen.wss`, serving the certificate in `dir`.
fn tls_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_tests();
    config.listen.mqtts = "127.0.0.1:0".into();
    config.listen.wss = "127.0.0.1:0".into();
    config.tls.cert = Some(dir.join("cert.pem"));
    config.tls.key = Some(dir.join("key.pem"));
    config
}

/// `listen.mqtts` serves MQTT inside TLS with `[tls]`'s certificate: `mosquitto_sub
/// --cafile` gets a durable push, and its PUBACK moves the cursor; Paho does over `mqtts://`
/// and over `wss://.../mqtt`. A client that does not trust the certificate gets nothing.
#[tokio::test]
async fn mqtts_serves_mosquitto_sub_and_paho_with_the_tls_certificate() {
    let Some(sub) = tool("mosquitto_sub") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    certificates(dir.path());
    let node = start(tls_config(dir.path())).await;
    let http = Http::new(&node);
    let port = node.mqtts_addr().expect("mqtts").port().to_string();
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().expect("path");
    let token = token("tess");
    let mosquitto = |cafile: &'static str| {
        let (sub, port, token, ca) = (sub.clone(), port.clone(), token.clone(), ca.to_owned());
        async move {
            let cafile = if cafile.is_empty() {
                ca
            } else {
                cafile.to_owned()
            };
            #[rustfmt::skip]
            let args = [
                "-h", "localhost", "-p", &port, "--cafile", &cafile, "-V", "mqttv311",
                "-i", "tls-device", "-u", APP, "-P", &token, "-t", "$tether/inbox/demo",
                "-q", "1", "-C", "1", "-W", "3", "-F", "%p",
            ];
            run(&sub, &args).await
        }
    };
    push(&http, "tess", "secret").await;
    let (code, out, err) = mosquitto("").await;
    assert_eq!((code, out.trim()), (Some(0), r#"{"m":"secret"}"#), "{err}");
    // Acked: nothing more within its 3 s (mosquitto_sub's timeout exits 27).
    let (code, out, _) = mosquitto("").await;
    assert_eq!((code, out.as_str()), (Some(27), ""));
    // A CA file that is not the server's: the handshake fails, nothing is read.
    let (code, out, _) = mosquitto("/etc/ssl/certs/ca-certificates.crt").await;
    assert_ne!(code, Some(0));
    assert_eq!(out, "");

    let Some(python) = paho_python() else {
        return;
    };
    let mqtts = node.mqtts_addr().expect("mqtts").port();
    // Another user: Paho's device is new, and would get the inbox from its start.
    push(&http, "tina", "paho").await;
    let got = paho_inbox(&python, mqtts, "tina", 1, 10, &["--tls", ca]).await;
    assert_eq!(got, payloads(&["paho"]));
    let wss = node.wss_addr().expect("wss").port();
    push(&http, "tina", "wss").await;
    let got = paho_inbox(&python, wss, "tina", 1, 10, &["--tls", ca, "--ws", "/mqtt"]).await;
    assert_eq!(got, payloads(&["wss"]));
}

/// The MQTT metrics count what crosses the wire: packets by type both ways, accepted
/// connections by version, refusals by packet and reason code, unknown PUBACKs.
#[tokio::test]
async fn mqtt_metrics_count_packets_refusals_and_unknown_acks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let before = http.metrics().await;
    let mut s = tokio::net::TcpStream::connect(node.mqtt_addr().expect("mqtt"))
        .await
        .expect("connect");
    let mut bytes = connect_packet("mona", "metered");
    // A wildcard filter (refused: SUBACK 0x80), a PUBACK for nothing, a PINGREQ.
    bytes.extend_from_slice(&packet(0x82, b"\x00\x02\x00\x03a/#\x01"));
    bytes.extend_from_slice(b"\x40\x02\x03\xe7\xc0\x00");
    s.write_all(&bytes).await.expect("write");
    let mut read = Vec::new();
    let answers = loop {
        let mut chunk = [0u8; 256];
        let n = timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("answers in time")
            .expect("read");
        assert!(n > 0, "closed early: {read:?}");
        read.extend_from_slice(&chunk[..n]);
        let mut copy = read.clone();
        let packets = split_packets(&mut copy);
        if packets.len() == 3 {
            break packets;
        }
    };
    assert_eq!(answers[1], (0x90, vec![0, 2, 0x80]), "SUBACK failure");
    assert_eq!(answers[2], (0xD0, vec![]), "PINGRESP");
    let after = http.metrics().await;
    let grew = |name: &str| {
        let at = |page: &str| metric(page, name).unwrap_or(0.0);
        at(&after) - at(&before)
    };
    // Other tests of this binary may add to them too: at least ours.
    assert!(grew(r#"tether_mqtt_connections_total{version="3.1.1"}"#) >= 1.0);
    assert!(grew(r#"tether_mqtt_packets_in_total{type="SUBSCRIBE"}"#) >= 1.0);
    assert!(grew(r#"tether_mqtt_packets_in_total{type="PUBACK"}"#) >= 1.0);
    assert!(grew(r#"tether_mqtt_packets_out_total{type="PINGRESP"}"#) >= 1.0);
    assert!(grew(r#"tether_mqtt_refused_total{packet="SUBACK",code="0x80"}"#) >= 1.0);
    assert!(grew("tether_mqtt_unknown_acks_total") >= 1.0);
}

/// The dispatcher hands MQTT's endpoints (`mqtt://`, `ws://.../mqtt`, or
/// `node.advertise_mqtt`) to a device that asks with `transport=mqtt`, and to no other.
#[tokio::test]
async fn the_dispatcher_hands_mqtt_endpoints_only_to_devices_that_ask() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let urls = |reply: Reply| -> Vec<(String, String)> {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().expect("a string").to_owned();
                (s("url"), s("transport"))
            })
            .collect()
    };
    let ask = |transport: &'static str| {
        let http = &http;
        async move {
            let path = format!("/v1/dispatch?app={APP}{transport}");
            http.get(&path, Some(&token("dora"))).await
        }
    };
    let (mqtt, ws) = (node.mqtt_addr().unwrap(), node.ws_addr().unwrap());
    assert_eq!(
        urls(ask("&transport=mqtt").await),
        [
            (format!("mqtt://{mqtt}"), "mqtt".to_owned()),
            (format!("ws://{ws}/mqtt"), "mqtt".to_owned()),
        ]
    );
    let plain = urls(ask("").await);
    assert!(
        plain.iter().all(|(_, t)| t == "tcp" || t == "ws"),
        "{plain:?}"
    );

    let mut config = Config::for_tests();
    config.node.advertise_mqtt = vec![
        "mqtts://push.example.com:8883".into(),
        "wss://push.example.com/mqtt".into(),
    ];
    let node = start(config).await;
    let reply = Http::new(&node)
        .get(
            &format!("/v1/dispatch?app={APP}&transport=mqtt"),
            Some(&token("dora")),
        )
        .await;
    assert_eq!(
        urls(reply),
        [
            (
                "mqtts://push.example.com:8883".to_owned(),
                "mqtt".to_owned()
            ),
            ("wss://push.example.com/mqtt".to_owned(), "mqtt".to_owned()),
        ]
    );
}

/// A device's PUBLISH reaches the app's webhook with `"transport": "mqtt"`, over WebSocket too.
#[tokio::test]
async fn an_upstream_from_an_mqtt_device_says_so_in_the_webhook_body() {
    use common::receiver::{Answer, Receiver};
    let hook = Receiver::start(|_, _| Answer::json(200, "{}")).await;
    let mut config = Config::for_tests();
    config.apps[0].webhook = Some(hook.url.clone());
    let node = start(config).await;
    let (mut client, _) = MqttWs::open(&node, "/mqtt", "mqtt").await;
    let mut bytes = connect_packet("uma", "ws-sensor");
    // PUBLISH QoS 1 to `telemetry`, packet id 9.
    bytes.extend_from_slice(&packet(0x32, b"\x00\x09telemetry\x00\x09{\"t\":21}"));
    client.send(&bytes).await;
    let answers = client.packets(2).await;
    assert_eq!(answers[0], (0x20, vec![0, 0]));
    assert_eq!(
        answers[1],
        (0x40, vec![0, 9]),
        "PUBACK once the webhook took it"
    );
    let seen = hook.wait_for(1).await;
    let body = &seen[0].json;
    assert_eq!(
        (
            &body["transport"],
            &body["kind"],
            &body["device"],
            &body["payload"]
        ),
        (
            &serde_json::json!("mqtt"),
            &serde_json::json!("telemetry"),
            &serde_json::json!("ws-sensor"),
            &serde_json::json!({"t": 21})
        ),
        "{body}"
    );
}

/// An idle MQTT-over-WebSocket connection parks (its stream holds nothing between messages),
/// and wakes for a push and for the device's next packet.
#[tokio::test]
async fn an_idle_mqtt_websocket_connection_parks_and_wakes() {
    let mut config = Config::for_tests();
    config.gateway.park_after = Duration::from_millis(100);
    let node = start(config).await;
    let http = Http::new(&node);
    let (mut client, _) = MqttWs::open(&node, "/mqtt", "mqtt").await;
    let mut bytes = connect_packet("pat", "parker");
    bytes.extend_from_slice(&packet(0x82, b"\x00\x01\x00\x12$tether/inbox/demo\x01"));
    client.send(&bytes).await;
    assert_eq!(client.packets(2).await[1], (0x90, vec![0, 1, 1]));
    let parked = async {
        while node.parked_connections() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, parked).await.expect("parked in time");
    push(&http, "pat", "wake").await;
    let (first, body) = client.packets(1).await.remove(0);
    assert_eq!(first, 0x32);
    assert!(body.ends_with(br#"{"m":"wake"}"#), "{body:?}");
    let id = &body[20..22];
    client.send(&[0x40, 0x02, id[0], id[1], 0xC0, 0x00]).await;
    assert_eq!(client.packets(1).await, vec![(0xD0, vec![])], "PINGRESP");
}

/// A second MQTT connection with the client id of a live one takes its place (3.1.1: the
/// first is closed without a packet); the same client id under another user is another
/// device and closes nothing, and neither does a tether WebSocket client of the same device.
#[tokio::test]
async fn a_second_connection_of_a_client_id_takes_the_first_ones_place() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.mqtt_addr().expect("mqtt");
    let before = http.metrics().await;
    let open = |user: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(&connect_packet(user, "boiler"))
            .await
            .expect("write");
        let mut connack = [0u8; 4];
        timeout(WAIT, s.read_exact(&mut connack))
            .await
            .expect("CONNACK in time")
            .expect("read");
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
        s
    };
    let mut first = open("tess").await;
    let mut ws = WsClient::open(&node).await;
    ws.send_frame(&connect_frame("tess", "boiler", 0)).await;
    assert!(matches!(
        ws.frame().await.body,
        tether_proto::Body::Connected(_)
    ));
    http.wait_presence("tess", 2).await;
    let mut second = open("tess").await;
    let mut rest = Vec::new();
    let read = timeout(WAIT, first.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the first is closed without a packet (3.1.1): {read:?} {rest:?}"
    );
    // The second and the WebSocket client stay; another user's `boiler` closes neither.
    let mut other = open("ursula").await;
    http.wait_presence("tess", 2).await;
    for s in [&mut second, &mut other] {
        s.write_all(b"\xc0\x00").await.expect("PINGREQ");
        let mut pong = [0u8; 2];
        timeout(WAIT, s.read_exact(&mut pong))
            .await
            .expect("PINGRESP in time")
            .expect("read");
        assert_eq!(pong, [0xD0, 0], "still connected");
    }
    let taken = |page: &str| metric(page, r#"tether_disconnects_total{code="taken_over"}"#);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let grew = taken(&http.metrics().await).unwrap_or(0.0) - taken(&before).unwrap_or(0.0);
        if grew == 1.0 {
            break;
        }
        assert!(grew < 1.0, "one taken over, not {grew}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "not counted in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(ws);
}

/// MQTT over WebSocket lingers after its close frame as tether's own WebSocket connections do
/// (RFC 6455, 7.1.1): a device that still sends after the server closed (here a kick, which
/// 3.1.1 gets as a close alone) is read on, and sees the close frame and a clean end of the
/// stream, never a reset.
#[tokio::test]
async fn an_mqtt_websocket_close_waits_for_the_device_to_answer() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let (mut client, _) = MqttWs::open(&node, "/mqtt", "mqtt").await;
    client.send(&connect_packet("lin", "lingerer")).await;
    assert_eq!(client.packets(1).await[0], (0x20, vec![0, 0]), "CONNACK");
    http.kick("lin").await;
    // The device has not read the close yet and sends on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send(&[0xC0, 0x00]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.connections(), 1, "the server reads on after its close");
    let mut closed = None;
    loop {
        match timeout(WAIT, client.ws.next()).await.expect("in time") {
            Some(Ok(Message::Close(frame))) => closed = frame.map(|f| f.code),
            Some(Ok(other)) => panic!("after the kick: {other:?}"),
            Some(Err(e)) => panic!("not a clean end: {e}"),
            None => break,
        }
    }
    assert_eq!(closed, Some(CloseCode::Normal));
    let gone = async {
        while node.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, gone)
        .await
        .expect("closed once the device answered");
}

/// A device that sends a SUBSCRIBE per topic without waiting for the SUBACKs, as clients
/// joining rooms one by one do, gets every topic: past the SUBSCRIBEs that may wait for the
/// session at once (8), the connection reads the next only once an answer came, rather than
/// refusing it (which made pipelined subscribes fail at random).
#[tokio::test]
async fn twelve_subscribes_sent_at_once_are_all_granted_in_order() {
    use tokio::io::AsyncWriteExt;
    let node = start(Config::for_tests()).await;
    let mut s = tokio::net::TcpStream::connect(node.mqtt_addr().expect("mqtt"))
        .await
        .expect("connect");
    let mut bytes = connect_packet("rooms", "joiner");
    for id in 1..=12u8 {
        let topic = format!("room-{id}");
        let mut body = vec![0, id, 0, topic.len() as u8];
        body.extend_from_slice(topic.as_bytes());
        body.push(0x00);
        bytes.extend_from_slice(&packet(0x82, &body));
    }
    s.write_all(&bytes).await.expect("write");
    let mut read = Vec::new();
    let got = read_packets(&mut s, &mut read, 13).await;
    assert_eq!(got[0], (0x20, vec![0, 0]), "CONNACK accepted");
    for (id, suback) in (1..=12u8).zip(&got[1..]) {
        assert_eq!(
            *suback,
            (0x90, vec![0, id, 0x00]),
            "SUBACK {id}: granted QoS 0"
        );
    }
}
