//! End-to-end tests of durable (qos 1) delivery (protocol section 7.1): the offline backlog and
//! its hand-over to live pushes, resume by `last_seq` or by the device's stored ack, acks per
//! device and per app, ttl, the inbox cap, the poison guard, idempotency keys, `sync`, and a
//! push to 1,000 users. Raw TCP binary frames, plus WebSocket JSON where it says so.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tether_core::AppId;
use tether_proto::{Ack, Binding, Body, Code, Connected, Frame, PayloadKind, Push, Sync, Synced};
use tether_server::config::{AppConfig, Secret, StoreBackend};
use tether_server::{Config, Node};
use tokio::time::{Instant, timeout};

const OTHER: &str = "other";
const OTHER_SECRET: &str = "other-secret-0123456789";
const OTHER_KEY: &str = "other-api-key-0123456789";

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(150);

// ---------------------------------------------------------------------------------------------
// Helpers: the API side

/// What the API answered for one user of a durable push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    id: u64,
    seq: u64,
}

fn payload(n: u64) -> String {
    format!(r#"{{"n":{n}}}"#)
}

fn msg_id(reply: &Value) -> u64 {
    reply["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no decimal string id in {reply}"))
}

/// A qos 1 push of `{"n":n}` to `user` of the demo app; `extra` adds request fields.
async fn push_extra(http: &Http, user: &str, n: u64, extra: &str) -> Value {
    let payload = payload(n);
    http.push(&format!(
        r#"{{"users":["{user}"],"payload":{payload},"qos":1{extra}}}"#
    ))
    .await
}

/// The id and `user`'s seq in a durable push's answer.
fn sent(reply: &Value, user: &str) -> Sent {
    let seq = reply["seqs"][user].as_u64();
    let seq = seq.unwrap_or_else(|| panic!("no seq for {user} in {reply}"));
    let id = msg_id(reply);
    Sent { id, seq }
}

async fn push(http: &Http, user: &str, n: u64) -> Sent {
    let reply = push_extra(http, user, n, "").await;
    assert_eq!(reply["duplicate"], false, "{reply}");
    sent(&reply, user)
}

/// `n` pushes `{"n":1}` .. `{"n":n}` to `user`, one after the other; asserts seqs `first..`.
async fn push_many(http: &Http, user: &str, n: u64, first_seq: u64) -> Vec<Sent> {
    let mut sent = Vec::new();
    for i in 1..=n {
        let s = push(http, user, i).await;
        assert_eq!(s.seq, first_seq + i - 1, "seqs of an inbox are consecutive");
        sent.push(s);
    }
    sent
}

/// `GET messages?after=..&limit=..` of the demo app.
async fn messages(http: &Http, user: &str, after: u64) -> Value {
    let path = format!("/v1/apps/{APP}/users/{user}/messages?after={after}&limit=1000");
    let reply = http.get(&path, Some(API_KEY)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

fn listed_seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {page}"))
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// `device`'s acked position in `user`'s inbox of `app`, as presence shows it.
async fn acked(http: &Http, app: &str, key: &str, user: &str, device: &str) -> Option<u64> {
    let reply = http
        .get(&format!("/v1/apps/{app}/users/{user}/presence"), Some(key))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices in {:?}", reply.body))
        .iter()
        .find(|d| d["device"] == device)
        .map(|d| d["acked"].as_u64().expect("acked is a number"))
}

/// Polls presence until `device` shows `seq` acked (never above it); panics after [`WAIT`].
async fn wait_acked(http: &Http, app: &str, key: &str, user: &str, device: &str, seq: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = acked(http, app, key, user, device).await;
        assert!(now.unwrap_or(0) <= seq, "{device} acked {now:?} > {seq}");
        if now == Some(seq) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{device} of {user} in {app} still acked {now:?} after {WAIT:?}, expected {seq}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_demo_acked(http: &Http, user: &str, device: &str, seq: u64) {
    wait_acked(http, APP, API_KEY, user, device, seq).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers: the client side (raw TCP, binary frames)

fn bind(user: &str, last_seq: Option<u64>) -> Binding {
    Binding {
        app: APP.into(),
        token: token(user),
        last_seq,
    }
}

/// Connects over TCP as `device` with `bindings` and waits for `connected`.
async fn open(addr: SocketAddr, device: &str, bindings: Vec<Binding>) -> (TcpClient, Connected) {
    let mut client = TcpClient::open(addr).await;
    client.send(&connect_with(device, 0, bindings)).await;
    let connected = expect_connected(client.frame().await);
    (client, connected)
}

/// Connects `user` of the demo app as `device`, resuming after `last_seq` if given.
async fn open_user(addr: SocketAddr, user: &str, device: &str, last_seq: Option<u64>) -> TcpClient {
    open(addr, device, vec![bind(user, last_seq)]).await.0
}

/// The next `n` frames, each a push.
async fn pushes(client: &mut TcpClient, n: usize) -> Vec<Push> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(expect_push(client.frame().await));
    }
    out
}

/// `(app, seq, payload)` of each push, sorted by app only: each app's order is kept.
fn by_app(mut got: Vec<Push>) -> Vec<(String, u64, String)> {
    got.sort_by(|a, b| a.app.cmp(&b.app));
    let text = |p: &Push| String::from_utf8(p.payload.to_vec()).expect("UTF-8");
    got.iter()
        .map(|p| (p.app.clone(), p.seq, text(p)))
        .collect()
}

fn seqs(pushes: &[Push]) -> Vec<u64> {
    pushes.iter().map(|p| p.seq).collect()
}

/// The push is the durable `{"n":n}` of the demo app the API answered `sent` for.
fn assert_durable(push: &Push, n: u64, sent: Sent) {
    assert_eq!(push.app, APP);
    assert_eq!((push.qos, push.seq, push.msg_id), (1, sent.seq, sent.id));
    assert_eq!(push.kind, PayloadKind::Json);
    assert_eq!(
        push.payload,
        payload(n).as_bytes(),
        "payload of seq {}",
        sent.seq
    );
    assert!(push.created_ms > 0);
}

fn ack_frame(id: u32, app: &str, seq: u64) -> Frame {
    let app = app.into();
    Frame::new(id, Ack { app, seq })
}

async fn ack(client: &mut TcpClient, id: u32, app: &str, seq: u64) {
    client.send(&ack_frame(id, app, seq)).await;
}

/// A ping round trip: everything the client sent before it has been handled.
async fn ping(client: &mut TcpClient, id: u32) {
    client.send(&Frame::new(id, Body::Ping)).await;
    assert_eq!(client.frame().await, Frame::new(id, Body::Pong));
}

fn sync_frame(id: u32, app: &str, after: u64, limit: u32) -> Frame {
    let app = app.into();
    Frame::new(id, Sync { app, after, limit })
}

/// The frames of one `sync` reply: the pushes' seqs, then `synced`, all with request id `id`.
async fn sync_reply(client: &mut TcpClient, id: u32) -> (Vec<u64>, Synced) {
    let mut seqs = Vec::new();
    loop {
        let frame = client.frame().await;
        assert_eq!(frame.id, id, "{frame:?}");
        match frame.body {
            Body::Push(p) => seqs.push(p.seq),
            Body::Synced(s) => return (seqs, s),
            other => panic!("expected push or synced, got {other:?}"),
        }
    }
}

/// Nothing more arrives for a while (no duplicate, no stray frame).
async fn expect_quiet(client: &mut TcpClient) {
    if let Some(got) = client.recv_within(QUIET).await {
        panic!("expected nothing more, got {got:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: WebSocket JSON

/// Connects over WebSocket in JSON as `device` of `user`, with `last_seq` if given.
async fn open_json(node: &Node, user: &str, device: &str, last: Option<u64>) -> WsClient {
    let mut ws = WsClient::open(node).await;
    let binding = json!({"app": APP, "token": token(user), "last_seq": last});
    let connect = json!({"op": "connect", "id": 1, "device": device, "bindings": [binding]});
    ws.send_text(&connect.to_string()).await;
    let connected = ws.json().await;
    assert_eq!(connected["op"], "connected", "{connected}");
    ws
}

/// Every field of `want` has that value in `got` (other fields, such as `created_ms`, are
/// not compared).
fn assert_fields(got: &Value, want: Value) {
    for (field, value) in want.as_object().expect("an object") {
        assert_eq!(&got[field], value, "field {field} of {got}");
    }
}

/// The fields of a durable push in JSON, backlog or live (request id 0), but its payload.
fn live_push(msg_id: &Value, seq: u64) -> Value {
    json!({"op": "push", "id": 0, "app": APP, "msg_id": msg_id, "seq": seq, "qos": 1})
}

async fn ws_quiet(ws: &mut WsClient) {
    if let Ok(got) = timeout(QUIET, futures_util::StreamExt::next(&mut ws.ws)).await {
        panic!("expected nothing more, got {got:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Backlog and live delivery

#[tokio::test]
async fn an_offline_user_gets_the_backlog_in_order_then_live_pushes_without_gap() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let sent = push_many(&http, "alice", 5, 1).await;

    let mut client = open_user(node.tcp_addr().unwrap(), "alice", "phone", None).await;
    let backlog = pushes(&mut client, 5).await;
    for (i, (push, sent)) in backlog.iter().zip(&sent).enumerate() {
        assert_durable(push, i as u64 + 1, *sent);
    }
    for n in 6..=8 {
        let sent = push(&http, "alice", n).await;
        assert_eq!(sent.seq, n);
        assert_durable(&expect_push(client.frame().await), n, sent);
    }
    expect_quiet(&mut client).await;
}

#[tokio::test]
async fn a_json_websocket_client_gets_its_backlog_live_pushes_and_acks() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let first = push_extra(&http, "alice", 1, "").await;
    let binary = http
        .push(r#"{"users":["alice"],"payload_base64":"AP9oaQ==","qos":1}"#)
        .await;
    assert_eq!(
        (&first["seqs"]["alice"], &binary["seqs"]["alice"]),
        (&json!(1), &json!(2))
    );

    let mut ws = open_json(&node, "alice", "web", None).await;
    let one = ws.json().await;
    assert_fields(&one, live_push(&first["id"], 1));
    assert_eq!(one["payload"], json!({"n": 1}));
    let two = ws.json().await;
    assert_fields(&two, live_push(&binary["id"], 2));
    assert_eq!(two["payload_base64"], "AP9oaQ==");

    let live = push_extra(&http, "alice", 3, "").await;
    let three = ws.json().await;
    assert_fields(&three, live_push(&live["id"], 3));
    assert_eq!(three["payload"], json!({"n": 3}));
    ws_quiet(&mut ws).await;

    ws.send_text(r#"{"op":"ack","id":5,"app":"demo","seq":3}"#)
        .await;
    wait_demo_acked(&http, "alice", "web", 3).await;
}

/// Pushes from 4 tasks race the handshake: the binding goes from catching up to live while
/// pushes overtake each other; every seq must still arrive exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_racing_the_connect_arrive_exactly_once_in_order() {
    const TASKS: u64 = 4;
    const EACH: u64 = 15;
    let node = start(Config::for_tests()).await;
    let addr = node.tcp_addr().unwrap();
    for round in 0..3 {
        let user = format!("racer{round}");
        let pushers: Vec<_> = (0..TASKS)
            .map(|t| {
                let (http, user) = (Http::new(&node), user.clone());
                tokio::spawn(async move {
                    let mut sent = Vec::new();
                    for i in 0..EACH {
                        sent.push(push(&http, &user, t * 100 + i).await);
                    }
                    sent
                })
            })
            .collect();
        if round > 0 {
            // Connect a little later: some pushes are in the backlog, others race.
            tokio::time::sleep(Duration::from_millis(5 * round)).await;
        }
        let mut client = open_user(addr, &user, "d", None).await;
        let got = pushes(&mut client, (TASKS * EACH) as usize).await;
        let mut ids = HashMap::new();
        for pusher in pushers {
            let sent = timeout(WAIT, pusher).await.expect("pushes in time");
            ids.extend(sent.expect("pusher").into_iter().map(|s| (s.seq, s.id)));
        }
        let want: Vec<u64> = (1..=TASKS * EACH).collect();
        assert_eq!(seqs(&got), want, "round {round}");
        let got_ids: Vec<u64> = got.iter().map(|p| p.msg_id).collect();
        assert_eq!(got_ids, want.iter().map(|s| ids[s]).collect::<Vec<_>>());
        expect_quiet(&mut client).await;
    }
}

/// A backlog far larger than the outbound queue is sent as the client reads it: a client that
/// is slow to start reading (and has a small socket buffer) is not closed as slow, and a live
/// push meanwhile follows the backlog.
#[tokio::test]
async fn a_backlog_larger_than_the_outbound_queue_is_paced_not_closed_as_slow() {
    let mut config = Config::for_tests();
    config.limits.max_frame = 4096;
    config.limits.max_payload = 2048;
    config.limits.outbound_queue_bytes = 16 * 1024;
    let node = start(config).await;
    let http = Http::new(&node);
    let body = format!(
        r#"{{"users":["alice"],"payload":"{}","qos":1}}"#,
        "x".repeat(1000)
    );
    for _ in 0..4 {
        futures_util::future::join_all((0..50).map(|_| http.push(&body))).await;
    }
    let mut client = TcpClient::open_with_recv_buffer(node.tcp_addr().unwrap(), 4096).await;
    client
        .send(&connect_with("phone", 0, vec![bind("alice", None)]))
        .await;
    expect_connected(client.frame().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A live push while the backlog waits for the client: it comes after the backlog.
    assert_eq!(push(&http, "alice", 201).await.seq, 201);
    let got = pushes(&mut client, 201).await;
    assert_eq!(seqs(&got), (1..=201).collect::<Vec<_>>());
    expect_quiet(&mut client).await;
}

// ---------------------------------------------------------------------------------------------
// Resume and acks

#[tokio::test]
async fn connect_with_last_seq_gets_only_later_seqs() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let sent = push_many(&http, "alice", 6, 1).await;
    let mut client = open_user(node.tcp_addr().unwrap(), "alice", "phone", Some(4)).await;
    let got = pushes(&mut client, 2).await;
    assert_eq!(seqs(&got), [5, 6]);
    assert_durable(&got[0], 5, sent[4]);
    expect_quiet(&mut client).await;
}

#[tokio::test]
async fn without_last_seq_a_device_resumes_after_its_own_last_ack() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    push_many(&http, "alice", 6, 1).await;

    let mut phone = open_user(addr, "alice", "phone", None).await;
    assert_eq!(seqs(&pushes(&mut phone, 6).await), [1, 2, 3, 4, 5, 6]);
    ack(&mut phone, 2, APP, 3).await;
    wait_demo_acked(&http, "alice", "phone", 3).await;
    drop(phone);
    http.wait_presence("alice", 0).await;

    let mut phone = open_user(addr, "alice", "phone", None).await;
    assert_eq!(seqs(&pushes(&mut phone, 3).await), [4, 5, 6]);
    expect_quiet(&mut phone).await;
    // The ack was this device's: a device never seen gets everything.
    let mut tablet = open_user(addr, "alice", "tablet", None).await;
    assert_eq!(seqs(&pushes(&mut tablet, 6).await), [1, 2, 3, 4, 5, 6]);
}

/// With the embedded store, acks wait in memory for the writer's next batch (the store answers
/// without it): a reconnect right after the ack was taken must still resume after it, and so
/// must a restart (the close writes what waits).
#[tokio::test]
async fn with_the_embedded_store_a_reconnect_right_after_an_ack_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = || {
        let mut config = Config::for_tests();
        config.store.backend = StoreBackend::Embedded;
        config.node.data_dir = dir.path().to_owned();
        config
    };
    let node = start(embedded()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    push_many(&http, "alice", 6, 1).await;

    // Each connection acks, ends (its end writes the ack), and the next one reads the cursor
    // at once: the ack may still wait for the store's writer.
    let mut expected: Vec<u64> = (1..=6).collect();
    for acked in [2, 4, 5] {
        let mut phone = open_user(addr, "alice", "phone", None).await;
        assert_eq!(seqs(&pushes(&mut phone, expected.len()).await), expected);
        expect_quiet(&mut phone).await;
        ack(&mut phone, 2, APP, acked).await;
        drop(phone);
        http.wait_presence("alice", 0).await;
        expected = (acked + 1..=6).collect();
    }
    // Acked 5 last; a restart of the node (a clean close) keeps it.
    node.shutdown();
    timeout(WAIT, node.wait()).await.expect("the node stops");
    let node = start(embedded()).await;
    let mut phone = open_user(node.tcp_addr().unwrap(), "alice", "phone", None).await;
    assert_eq!(seqs(&pushes(&mut phone, 1).await), [6]);
    expect_quiet(&mut phone).await;
}

#[tokio::test]
async fn an_ack_beyond_what_was_sent_is_clamped() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    push_many(&http, "alice", 3, 1).await;

    let mut client = open_user(addr, "alice", "phone", None).await;
    assert_eq!(seqs(&pushes(&mut client, 3).await), [1, 2, 3]);
    ack(&mut client, 2, APP, 100).await;
    wait_demo_acked(&http, "alice", "phone", 3).await;
    // A later ping round trip orders after the ack: the position must still not pass 3.
    ping(&mut client, 3).await;
    assert_eq!(acked(&http, APP, API_KEY, "alice", "phone").await, Some(3));
    drop(client);
    http.wait_presence("alice", 0).await;

    // Had the ack counted as 100, the device would skip these.
    push_many(&http, "alice", 2, 4).await;
    let mut client = open_user(addr, "alice", "phone", None).await;
    assert_eq!(seqs(&pushes(&mut client, 2).await), [4, 5]);
    // Resumed at 5 by `last_seq`, sent nothing yet: an ack of 9 does not pass 5, and does not
    // linger to cover seq 6 once it is sent.
    drop(client);
    let mut client = open_user(addr, "alice", "laptop", Some(5)).await;
    ack(&mut client, 2, APP, 9).await;
    ping(&mut client, 3).await;
    let laptop = acked(&http, APP, API_KEY, "alice", "laptop").await;
    assert!(laptop.unwrap_or(0) <= 5, "laptop acked {laptop:?}");
    push(&http, "alice", 6).await;
    assert_eq!(expect_push(client.frame().await).seq, 6);
    ping(&mut client, 4).await;
    let laptop = acked(&http, APP, API_KEY, "alice", "laptop").await;
    assert!(laptop.unwrap_or(0) <= 5, "laptop acked {laptop:?} before 6");
    ack(&mut client, 5, APP, 6).await;
    wait_acked(&http, APP, API_KEY, "alice", "laptop", 6).await;
}

/// A device resumed by `last_seq` pulls older messages with `sync` and acks them: the server
/// sent them on this connection, so the ack must move the device's stored position.
///
/// FAILS against the server as written: a binding resumed from `last_seq` starts with
/// `stored_ack = last_seq` (`InboxState::resuming` in `gateway/inbox.rs`), so an ack up to
/// `last_seq` is never written to the store and the device's position stays behind.
#[tokio::test]
async fn an_ack_up_to_the_connect_s_last_seq_moves_the_device_position() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    push_many(&http, "alice", 5, 1).await;

    let mut client = open_user(addr, "alice", "phone", Some(5)).await;
    client.send(&sync_frame(2, APP, 0, 0)).await;
    let (got, synced) = sync_reply(&mut client, 2).await;
    assert_eq!((got, synced.last, synced.head), (vec![1, 2, 3, 4, 5], 5, 5));
    ack(&mut client, 3, APP, 5).await;
    wait_demo_acked(&http, "alice", "phone", 5).await;
    drop(client);
    http.wait_presence("alice", 0).await;
    let mut client = open_user(addr, "alice", "phone", None).await;
    expect_quiet(&mut client).await;
}

#[tokio::test]
async fn two_devices_of_one_user_each_get_every_message_and_ack_independently() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    push_many(&http, "alice", 2, 1).await;

    let mut phone = open_user(addr, "alice", "phone", None).await;
    let (mut tablet, _) = WsClient::connected(&node, "alice", "tablet", 0).await;
    let reply = push_extra(&http, "alice", 3, "").await;
    assert_eq!(reply["connections"], 2, "{reply}");
    push(&http, "alice", 4).await;
    assert_eq!(seqs(&pushes(&mut phone, 4).await), [1, 2, 3, 4]);
    let mut tablet_seqs = Vec::new();
    for _ in 0..4 {
        tablet_seqs.push(expect_push(tablet.frame().await).seq);
    }
    assert_eq!(tablet_seqs, [1, 2, 3, 4]);

    ack(&mut phone, 2, APP, 4).await;
    tablet.send_frame(&ack_frame(2, APP, 2)).await;
    wait_demo_acked(&http, "alice", "phone", 4).await;
    wait_demo_acked(&http, "alice", "tablet", 2).await;
    let devices = http.presence("alice").await["devices"].clone();
    assert_eq!(
        devices,
        json!([
            {"device": "phone", "acked": 4, "online": true},
            {"device": "tablet", "acked": 2, "online": true},
        ])
    );

    drop(tablet);
    http.wait_presence("alice", 1).await;
    let mut tablet = open_user(addr, "alice", "tablet", None).await;
    assert_eq!(seqs(&pushes(&mut tablet, 2).await), [3, 4]);
    expect_quiet(&mut tablet).await;
    expect_quiet(&mut phone).await;
}

// ---------------------------------------------------------------------------------------------
// Retention: ttl and inbox cap

#[tokio::test]
async fn an_expired_message_is_neither_delivered_nor_listed() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let short = push_extra(&http, "alice", 1, r#","ttl":1"#).await;
    let kept = push(&http, "alice", 2).await;
    assert_eq!((&short["seqs"]["alice"], kept.seq), (&json!(1), 2));
    assert_eq!(listed_seqs(&messages(&http, "alice", 0).await), [1, 2]);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut client = open_user(node.tcp_addr().unwrap(), "alice", "phone", None).await;
    assert_durable(&expect_push(client.frame().await), 2, kept);
    expect_quiet(&mut client).await;
    let page = messages(&http, "alice", 0).await;
    assert_eq!(listed_seqs(&page), [2]);
    assert_eq!(page["head"], 2);
}

#[tokio::test]
async fn the_inbox_cap_keeps_only_the_newest_messages() {
    let mut config = Config::for_tests();
    config.store.inbox_cap = 5;
    let node = start(config).await;
    let http = Http::new(&node);
    let sent = push_many(&http, "alice", 8, 1).await;

    let mut client = open_user(node.tcp_addr().unwrap(), "alice", "phone", None).await;
    let got = pushes(&mut client, 5).await;
    assert_eq!(seqs(&got), [4, 5, 6, 7, 8]);
    assert_durable(&got[0], 4, sent[3]);
    expect_quiet(&mut client).await;
    let page = messages(&http, "alice", 0).await;
    assert_eq!(listed_seqs(&page), [4, 5, 6, 7, 8]);
    assert_eq!((&page["head"], &page["next_after"]), (&json!(8), &json!(8)));
}

// ---------------------------------------------------------------------------------------------
// Poison guard

#[tokio::test]
async fn the_poison_guard_skips_a_message_a_device_never_acks() {
    let mut config = Config::for_tests();
    config.store.max_attempts = 2;
    let node = start(config).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let skipped = |page: &str| metric(page, "tether_poison_skipped_total").unwrap_or(0.0);
    let before = skipped(&http.metrics().await);
    push_many(&http, "alice", 3, 1).await;

    // Receives its backlog, never acks, goes away: `max_attempts` times with seq 1 first.
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let mut client = open_user(addr, "alice", "crashy", None).await;
        firsts.push(expect_push(client.frame().await).seq);
        drop(client);
        http.wait_presence("alice", 0).await;
    }
    assert_eq!(firsts, [1, 1, 2], "each connection's first push");
    wait_demo_acked(&http, "alice", "crashy", 1).await;
    let after = skipped(&http.metrics().await);
    assert!(after > before, "poison_skipped_total {before} -> {after}");

    // Only that device skips it.
    let mut other = open_user(addr, "alice", "healthy", None).await;
    assert_eq!(seqs(&pushes(&mut other, 3).await), [1, 2, 3]);
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys

#[tokio::test]
async fn an_idempotency_key_stores_and_delivers_a_message_once() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let mut client = open_user(node.tcp_addr().unwrap(), "alice", "phone", None).await;

    let first = push_extra(&http, "alice", 1, r#","idempotency_key":"order-1""#).await;
    let again = push_extra(&http, "alice", 1, r#","idempotency_key":"order-1""#).await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["connections"], 1, "{first}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        (&again["id"], &again["seqs"]),
        (&first["id"], &first["seqs"])
    );
    assert_eq!(first["seqs"], json!({"alice": 1}));
    assert_durable(&expect_push(client.frame().await), 1, sent(&first, "alice"));
    expect_quiet(&mut client).await;
    assert_eq!(listed_seqs(&messages(&http, "alice", 0).await), [1]);

    let other = push_extra(&http, "alice", 2, r#","idempotency_key":"order-2""#).await;
    assert_eq!(other["duplicate"], false, "{other}");
    assert_ne!(other["id"], first["id"]);
    assert_eq!(other["seqs"], json!({"alice": 2}));
    assert_durable(&expect_push(client.frame().await), 2, sent(&other, "alice"));
    assert_eq!(listed_seqs(&messages(&http, "alice", 0).await), [1, 2]);

    // Concurrent retries with one key store once.
    let key = r#","idempotency_key":"order-3""#;
    let retries = (0..6).map(|_| push_extra(&http, "alice", 3, key));
    let replies = futures_util::future::join_all(retries).await;
    let fresh: Vec<&Value> = replies.iter().filter(|r| r["duplicate"] == false).collect();
    assert_eq!(fresh.len(), 1, "{replies:?}");
    for reply in &replies {
        assert_eq!(
            (&reply["id"], &reply["seqs"]),
            (&fresh[0]["id"], &json!({"alice": 3}))
        );
    }
    assert_eq!(expect_push(client.frame().await).seq, 3);
    expect_quiet(&mut client).await;
    assert_eq!(listed_seqs(&messages(&http, "alice", 0).await), [1, 2, 3]);
}

// ---------------------------------------------------------------------------------------------
// Sync

#[tokio::test]
async fn sync_answers_pushes_with_the_request_id_then_synced_in_json() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let sent = push_many(&http, "alice", 5, 1).await;
    // Resumed at the head: no backlog, so everything below comes from sync.
    let mut ws = open_json(&node, "alice", "web", Some(5)).await;
    ws_quiet(&mut ws).await;

    for (id, after, limit, want) in [
        (7, 1, 2, vec![2, 3]),
        (8, 3, 0, vec![4, 5]),
        (9, 5, 0, vec![]),
    ] {
        let sync = json!({"op": "sync", "id": id, "app": APP, "after": after, "limit": limit});
        ws.send_text(&sync.to_string()).await;
        for seq in want.iter().copied() {
            let msg_id = sent[seq as usize - 1].id.to_string();
            let push = json!({"op": "push", "id": id, "seq": seq, "msg_id": msg_id});
            let got = ws.json().await;
            assert_fields(&got, push);
            assert_eq!(got["payload"], json!({"n": seq}));
        }
        let synced = ws.json().await;
        let last = want.last().copied().unwrap_or(after);
        assert_eq!(
            synced,
            json!({"op": "synced", "id": id, "app": APP, "last": last, "head": 5})
        );
    }
    ws_quiet(&mut ws).await;
}

#[tokio::test]
async fn sync_pages_hold_at_most_100_and_a_second_sync_is_answered_whole_or_refused() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let body = r#"{"users":["alice"],"payload":{"n":0},"qos":1}"#;
    futures_util::future::join_all((0..120).map(|_| http.push(body))).await;
    let mut client = open_user(node.tcp_addr().unwrap(), "alice", "phone", Some(120)).await;

    client.send(&sync_frame(3, APP, 0, 1000)).await;
    let (got, synced) = sync_reply(&mut client, 3).await;
    assert_eq!(got, (1..=100).collect::<Vec<_>>());
    assert_eq!(
        (synced.last, synced.head, synced.app.as_str()),
        (100, 120, APP)
    );

    // Two syncs back to back: the second is answered in full or refused with 4300, never
    // mixed into the first.
    client.send(&sync_frame(4, APP, 100, 0)).await;
    client.send(&sync_frame(5, APP, 110, 5)).await;
    let (got, synced) = sync_reply(&mut client, 4).await;
    assert_eq!(got, (101..=120).collect::<Vec<_>>());
    assert_eq!((synced.last, synced.head), (120, 120));
    let frame = client.frame().await;
    assert_eq!(frame.id, 5, "{frame:?}");
    match frame.body {
        Body::Error(e) => assert_eq!(e.code, Code::BAD_REQUEST, "{e:?}"),
        Body::Push(p) => {
            assert_eq!(p.seq, 111);
            let (rest, synced) = sync_reply(&mut client, 5).await;
            assert_eq!(rest, [112, 113, 114, 115]);
            assert_eq!((synced.last, synced.head), (115, 120));
        }
        other => panic!("expected the second sync's reply, got {other:?}"),
    }
    expect_quiet(&mut client).await;
}

#[tokio::test]
async fn sync_or_ack_for_an_app_not_bound_gets_error_4300_and_the_connection_stays() {
    let node = start(Config::for_tests()).await;
    let mut client = open_user(node.tcp_addr().unwrap(), "alice", "phone", None).await;
    for frame in [
        sync_frame(6, "elsewhere", 0, 0),
        ack_frame(7, "elsewhere", 1),
    ] {
        let id = frame.id;
        client.send(&frame).await;
        let reply = client.frame().await;
        assert_eq!(reply.id, id);
        match reply.body {
            Body::Error(e) => assert_eq!(e.code, Code::BAD_REQUEST, "{e:?}"),
            other => panic!("expected error 4300, got {other:?}"),
        }
    }
    ping(&mut client, 8).await;
}

// ---------------------------------------------------------------------------------------------
// Fan-out and bindings

#[tokio::test]
async fn a_durable_push_to_1000_users_gives_each_a_seq_and_reaches_those_online() {
    let node = start(Config::for_tests()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let users: Vec<String> = (0..1000).map(|i| format!("u{i:04}")).collect();
    // One inbox already holds a message: seqs are per inbox.
    push(&http, "u0500", 0).await;
    let online = ["u0000", "u0001", "u0500", "u0998", "u0999"];
    let mut clients = Vec::new();
    for user in online {
        let mut client = open_user(addr, user, "phone", None).await;
        if user == "u0500" {
            assert_eq!(expect_push(client.frame().await).seq, 1);
        }
        clients.push(client);
    }

    let body = json!({"users": users, "payload": {"n": 7}, "qos": 1});
    let reply = http.push(&body.to_string()).await;
    assert_eq!(reply["connections"], online.len());
    let seqs = reply["seqs"].as_object().expect("seqs");
    assert_eq!(seqs.len(), 1000);
    for user in &users {
        let want = if user == "u0500" { 2 } else { 1 };
        assert_eq!(seqs[user.as_str()], want, "seq of {user}");
    }
    let id = msg_id(&reply);
    for (user, client) in online.iter().zip(&mut clients) {
        let seq = if *user == "u0500" { 2 } else { 1 };
        assert_durable(&expect_push(client.frame().await), 7, Sent { id, seq });
        expect_quiet(client).await;
    }
}

#[tokio::test]
async fn one_connection_bound_to_two_apps_keeps_their_inboxes_and_acks_apart() {
    let mut config = Config::for_tests();
    config.apps.push(AppConfig::new(
        AppId::from(OTHER),
        Secret::new(OTHER_SECRET),
        Secret::new(OTHER_KEY),
    ));
    let node = start(config).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let push_other = |n: u64| {
        let http = http.clone();
        async move {
            let body = format!(r#"{{"users":["alice"],"payload":{},"qos":1}}"#, payload(n));
            let reply = http
                .post_raw("/v1/apps/other/push", Some(OTHER_KEY), &body)
                .await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            reply.body["seqs"]["alice"].as_u64().expect("seq")
        }
    };
    push_many(&http, "alice", 3, 1).await;
    assert_eq!((push_other(11).await, push_other(12).await), (1, 2));
    let bindings = || {
        let other = Binding {
            app: OTHER.into(),
            token: token_for(OTHER, OTHER_SECRET, "alice"),
            last_seq: None,
        };
        vec![bind("alice", None), other]
    };

    let (mut client, connected) = open(addr, "phone", bindings()).await;
    assert_eq!(connected.bindings.len(), 2);
    let want = |app: &str, seq: u64, n: u64| (app.to_owned(), seq, payload(n));
    let got = by_app(pushes(&mut client, 5).await);
    let other = [want(OTHER, 1, 11), want(OTHER, 2, 12)];
    assert_eq!(
        got[..3],
        [want(APP, 1, 1), want(APP, 2, 2), want(APP, 3, 3)]
    );
    assert_eq!(got[3..], other);

    // A live push to one app comes with that app's next seq.
    assert_eq!(push_other(13).await, 3);
    let live = expect_push(client.frame().await);
    assert_eq!((live.app.as_str(), live.seq), (OTHER, 3));

    ack(&mut client, 2, APP, 3).await;
    ack(&mut client, 3, OTHER, 1).await;
    wait_demo_acked(&http, "alice", "phone", 3).await;
    wait_acked(&http, OTHER, OTHER_KEY, "alice", "phone", 1).await;
    assert_eq!(acked(&http, APP, API_KEY, "alice", "phone").await, Some(3));
    drop(client);
    http.wait_presence("alice", 0).await;

    let (mut client, _) = open(addr, "phone", bindings()).await;
    let got = by_app(pushes(&mut client, 2).await);
    assert_eq!(got, [want(OTHER, 2, 12), want(OTHER, 3, 13)]);
    expect_quiet(&mut client).await;
}
