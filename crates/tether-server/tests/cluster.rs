//! The cluster mode, end to end: three nodes in this process sharing a real Redis (registry,
//! router and store), each test under a key prefix of its own. Pushes, topics, broadcasts,
//! server-side subscriptions, presence and MQTT's session takeover cross nodes; a Redis
//! restart is survived; the admin node list shows every node.
//!
//! Without a Redis at `TETHER_TEST_REDIS` (default 127.0.0.1:6379) these tests are skipped,
//! except under `CI=true`, where they fail.

#[path = "mqtt/clients.rs"]
mod clients;
mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tether_proto::{Body, Code, Frame, Publication, Recovery, Subscribe};
use tether_redis::RedisOptions;
use tether_redis::testing::RedisServer;
use tether_server::config::StoreBackend;
use tether_server::{Config, Node};
use tokio::time::Instant;

/// A node of a cluster in Redis `options`.
fn config(options: &RedisOptions, id: &str) -> Config {
    let mut config = Config::for_tests();
    config.node.id = id.into();
    config.node.announce_interval = Duration::from_millis(200);
    config.cluster.redis = options.urls.clone();
    config.cluster.prefix = options.prefix.clone();
    config.store.backend = StoreBackend::Redis;
    config
}

/// `n` nodes sharing a fresh prefix of the test Redis, or `None` when there is none (outside
/// CI).
async fn cluster(test: &str, n: usize) -> Option<(Vec<Node>, Vec<Http>)> {
    let options = tether_redis::testing::options(test).await?;
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(start(config(&options, &format!("{test}-{i}"))).await);
    }
    let http = nodes.iter().map(Http::new).collect();
    Some((nodes, http))
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

async fn subscriber(node: &Node, user: &str, topic: &str) -> TcpClient {
    let (mut client, _) = TcpClient::connected(node.tcp_addr().unwrap(), user, "d", 0).await;
    client.send(&subscribe(1, topic)).await;
    match client.frame().await.body {
        Body::Subscribed(s) => assert_eq!(s.recovery, Recovery::Live),
        other => panic!("expected subscribed, got {other:?}"),
    }
    client
}

fn expect_publication(frame: Frame) -> Publication {
    match frame.body {
        Body::Publication(p) => p,
        other => panic!("expected a publication, got {other:?}"),
    }
}

async fn post_ok(http: &Http, path: &str, body: Value) -> Value {
    let reply = http.post_raw(path, Some(API_KEY), &body.to_string()).await;
    assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    reply.body
}

async fn quiet(client: &mut TcpClient) {
    if let Some(frame) = client.recv_within(Duration::from_millis(150)).await {
        panic!("expected nothing more, got {frame:?}");
    }
}

#[tokio::test]
async fn a_push_through_one_node_reaches_the_user_on_another() {
    let Some((nodes, http)) = cluster("push", 3).await else {
        return;
    };
    let (mut alice, _) = TcpClient::connected(nodes[0].tcp_addr().unwrap(), "alice", "d", 0).await;
    http[1].wait_presence("alice", 1).await;

    let reply = http[1]
        .push(r#"{"users":["alice"],"payload":{"n":1}}"#)
        .await;
    assert_eq!(reply["connections"], 1, "{reply}");
    let push = expect_push(alice.frame().await);
    assert_eq!((push.qos, &push.payload[..]), (0, &br#"{"n":1}"#[..]));

    // Durable: stored in Redis, seq from the shared inbox, delivered through node 0.
    for n in 1..=3 {
        let reply = http[2]
            .push(&format!(
                r#"{{"users":["alice"],"qos":1,"payload":{{"n":{n}}}}}"#
            ))
            .await;
        assert_eq!(reply["seqs"]["alice"], n, "{reply}");
    }
    for n in 1..=3 {
        let push = expect_push(alice.frame().await);
        assert_eq!((push.qos, push.seq), (1, n));
    }
    quiet(&mut alice).await;
}

#[tokio::test]
async fn a_topic_with_subscribers_on_three_nodes_gets_each_publish_once_per_subscriber() {
    let Some((nodes, http)) = cluster("topic", 3).await else {
        return;
    };
    let mut subs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            subs.push(subscriber(node, &format!("u{i}{j}"), "room").await);
        }
    }
    // Publishes through every node, durable and live, interleaved.
    let mut offsets = Vec::new();
    for n in 0..9u64 {
        let qos = n % 2;
        let reply = post_ok(
            &http[(n % 3) as usize],
            &format!("/v1/apps/{APP}/topics/room/publish"),
            json!({"qos": qos, "payload": {"n": n}}),
        )
        .await;
        assert_eq!(reply["subscribers"], 2, "this node's own: {reply}");
        assert_eq!(reply["nodes"], 2, "sent once to each other node: {reply}");
        if qos == 1 {
            offsets.push(reply["offset"].as_u64().unwrap());
        }
    }
    assert_eq!(offsets, [1, 2, 3, 4]);
    for sub in &mut subs {
        let mut got = Vec::new();
        for _ in 0..9 {
            let p = expect_publication(sub.frame().await);
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            got.push((v["n"].as_u64().unwrap(), p.offset));
        }
        let durable: Vec<u64> = got.iter().filter(|(_, o)| *o != 0).map(|g| g.1).collect();
        assert_eq!(
            durable,
            [1, 2, 3, 4],
            "offsets in order, each once: {got:?}"
        );
        let mut ns: Vec<u64> = got.iter().map(|g| g.0).collect();
        ns.sort_unstable();
        assert_eq!(
            ns,
            (0..9).collect::<Vec<_>>(),
            "every publication once: {got:?}"
        );
        quiet(sub).await;
    }
}

#[tokio::test]
async fn presence_and_broadcast_span_the_cluster() {
    let Some((nodes, http)) = cluster("presence", 3).await else {
        return;
    };
    let (mut a, _) = TcpClient::connected(nodes[0].tcp_addr().unwrap(), "bob", "phone", 0).await;
    let (mut c, _) = TcpClient::connected(nodes[2].tcp_addr().unwrap(), "bob", "laptop", 0).await;
    let presence = http[1].wait_presence("bob", 2).await;
    let mut seen: Vec<(String, String)> = presence["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["node"].as_str().unwrap().to_owned(),
                c["device"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("presence-0".into(), "phone".into()),
            ("presence-2".into(), "laptop".into())
        ]
    );

    let reply = post_ok(
        &http[1],
        &format!("/v1/apps/{APP}/broadcast"),
        json!({"payload": "all"}),
    )
    .await;
    assert_eq!(reply["connections"], 2, "counted across nodes: {reply}");
    for client in [&mut a, &mut c] {
        let push = expect_push(client.frame().await);
        assert_eq!(&push.payload[..], br#""all""#);
    }

    // Leaving is cluster-wide too.
    drop(a);
    http[1].wait_presence("bob", 1).await;
}

#[tokio::test]
async fn a_server_side_subscription_reaches_the_users_connections_on_every_node() {
    let Some((nodes, http)) = cluster("subs", 3).await else {
        return;
    };
    let (mut a, _) = TcpClient::connected(nodes[0].tcp_addr().unwrap(), "carol", "a", 0).await;
    let (mut b, _) = TcpClient::connected(nodes[1].tcp_addr().unwrap(), "carol", "b", 0).await;
    http[2].wait_presence("carol", 2).await;

    let reply = post_ok(
        &http[2],
        &format!("/v1/apps/{APP}/users/carol/topics/news"),
        json!({}),
    )
    .await;
    assert_eq!(reply["connections"], 2, "{reply}");
    for client in [&mut a, &mut b] {
        match client.frame().await.body {
            Body::Subscribed(s) => {
                assert_eq!((s.topic.as_str(), s.recovery), ("news", Recovery::Live))
            }
            other => panic!("expected subscribed, got {other:?}"),
        }
    }
    post_ok(
        &http[2],
        &format!("/v1/apps/{APP}/topics/news/publish"),
        json!({"qos": 1, "payload": 1}),
    )
    .await;
    for client in [&mut a, &mut b] {
        assert_eq!(expect_publication(client.frame().await).offset, 1);
    }

    // A later connection on the third node joins it from the store.
    let (mut c, _) = TcpClient::connected(nodes[2].tcp_addr().unwrap(), "carol", "c", 0).await;
    match c.frame().await.body {
        Body::Subscribed(s) => assert_eq!(s.topic.as_str(), "news"),
        other => panic!("expected subscribed, got {other:?}"),
    }

    let reply = http[0]
        .send_delete(&format!("/v1/apps/{APP}/users/carol/topics/news"))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["connections"], 3, "{:?}", reply.body);
    for client in [&mut a, &mut b, &mut c] {
        assert!(
            matches!(client.frame().await.body, Body::Unsubscribed(_)),
            "unsubscribed everywhere"
        );
    }
}

/// Options for a Redis server of the test's own.
fn own(redis: &RedisServer) -> RedisOptions {
    let mut options = RedisOptions::standalone(format!("redis://127.0.0.1:{}", redis.port()));
    options.timeout = Duration::from_millis(500);
    options
}

#[tokio::test]
async fn after_a_redis_restart_connections_stay_and_presence_comes_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let options = own(&redis);
    let a = start(config(&options, "restart-a")).await;
    let b = start(config(&options, "restart-b")).await;
    let http_b = Http::new(&b);
    let (mut dave, _) = TcpClient::connected(a.tcp_addr().unwrap(), "dave", "d", 0).await;
    http_b.wait_presence("dave", 1).await;

    // Redis goes away and comes back empty.
    redis.down();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = http_b
        .get(
            &format!("/v1/apps/{APP}/users/dave/presence"),
            Some(API_KEY),
        )
        .await;
    assert_eq!(
        reply.status, 503,
        "what needs Redis is refused clearly: {:?}",
        reply.body
    );
    assert!(redis.up(), "redis-server restarts");

    // The connection was kept; the nodes register their sessions again within seconds (the
    // first requests may still fail while the clients reconnect).
    let began = Instant::now();
    loop {
        let reply = http_b
            .get(
                &format!("/v1/apps/{APP}/users/dave/presence"),
                Some(API_KEY),
            )
            .await;
        if reply.status == 200
            && reply.body["connections"]
                .as_array()
                .is_some_and(|c| c.len() == 1)
        {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "presence still {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "presence back after {took:?}"
    );
    eprintln!("presence back {took:?} after Redis restarted");
    // Node-to-node messages flow again once the nodes' listening connections are back.
    loop {
        let reply = http_b.push(r#"{"users":["dave"],"payload":"back"}"#).await;
        if reply["connections"] == 1 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "pushes still do not route: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let push = expect_push(dave.frame().await);
    assert_eq!(&push.payload[..], br#""back""#);
    eprintln!(
        "pushes route again {:?} after Redis restarted",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_drained_node_hands_its_clients_to_the_others() {
    let Some(options) = tether_redis::testing::options("drain").await else {
        return;
    };
    let admin = "admin-key-0123456789";
    let mut nodes = Vec::new();
    for id in ["drain-a", "drain-b"] {
        let mut config = config(&options, id);
        config.admin.key = Some(tether_server::config::Secret::new(admin));
        config.gateway.drain_spread = Duration::from_millis(100);
        nodes.push(start(config).await);
    }
    let http_a = Http::new(&nodes[0]);
    let http_b = Http::new(&nodes[1]);
    let (mut erin, _) = TcpClient::connected(nodes[0].tcp_addr().unwrap(), "erin", "d", 0).await;
    for n in 1..=2 {
        http_b
            .push(&format!(r#"{{"users":["erin"],"qos":1,"payload":{n}}}"#))
            .await;
    }
    for n in 1..=2 {
        assert_eq!(expect_push(erin.frame().await).seq, n);
    }

    let reply = http_a.post_raw("/v1/admin/drain", Some(admin), "").await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    erin.expect_disconnect(Code::DRAIN).await;
    // The dispatcher (asked anywhere) now offers the other node only.
    let reply = http_a
        .get(
            &format!("/v1/dispatch?app={APP}&user=erin"),
            Some(&token("erin")),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let offered: Vec<&str> = reply.body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    assert!(offered.iter().all(|n| *n == "drain-b"), "{offered:?}");

    // Messages pushed meanwhile wait in the store; the client resumes on the other node.
    http_a
        .push(r#"{"users":["erin"],"qos":1,"payload":3}"#)
        .await;
    let (mut erin, _) = TcpClient::connected(nodes[1].tcp_addr().unwrap(), "erin", "d", 0).await;
    let push = expect_push(erin.frame().await);
    assert!(
        push.seq >= 1 && push.seq <= 3,
        "resumed from the device's position: {push:?}"
    );
    let mut last = push.seq;
    while last < 3 {
        last = expect_push(erin.frame().await).seq;
    }
    assert_eq!(last, 3);
}

#[tokio::test]
async fn after_the_router_loses_its_connection_stored_messages_it_missed_arrive() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let options = own(&redis);
    let a = start(config(&options, "lost-a")).await;
    let http = Http::new(&a);
    let (mut gus, _) = TcpClient::connected(a.tcp_addr().unwrap(), "gus", "d", 0).await;
    let reply = http.push(r#"{"users":["gus"],"qos":1,"payload":1}"#).await;
    assert_eq!(reply["seqs"]["gus"], 1);
    assert_eq!(expect_push(gus.frame().await).seq, 1);

    // A message stored but never routed (as when pub/sub lost it): written to the inbox by
    // another store, behind the node's back.
    let store = tether_redis::RedisStore::connect(
        &options,
        tether_core::Retention {
            inbox_cap: 1000,
            topic_history: 1000,
            ..tether_core::Retention::default()
        },
    )
    .await
    .unwrap();
    let now = tether_core::now_ms();
    let appended = tether_core::Inboxes::append(
        &store,
        tether_core::store::Append {
            app: APP.into(),
            users: vec!["gus".into()],
            message: tether_core::store::NewMessage {
                id: tether_core::MessageId(77),
                created_ms: now,
                expires_ms: now + 60_000,
                kind: tether_proto::PayloadKind::Json,
                payload: bytes::Bytes::from_static(b"2"),
            },
            idempotency: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(appended.seqs[0].1.0, 2);
    quiet(&mut gus).await;

    // The node's pub/sub connection drops; once it is back, the node reads what it may have
    // missed.
    let mut raw = tether_redis::Redis::connect(&options).await.unwrap();
    let killed: i64 = tether_redis::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(killed >= 1, "the router's listener was connected");
    let push = expect_push(gus.frame().await);
    assert_eq!((push.seq, &push.payload[..]), (2, &b"2"[..]));
}

#[tokio::test]
async fn a_node_restarted_under_the_same_id_forgets_what_its_previous_run_left() {
    let Some(options) = tether_redis::testing::options("rerun").await else {
        return;
    };
    // A previous run of "rerun-0" that was killed: its announcement still holds, and it left
    // alice's session on its connection 1.
    let registry = tether_redis::RedisRegistry::connect(&options)
        .await
        .unwrap();
    let now = tether_core::now_ms();
    tether_core::Membership::announce(
        &registry,
        tether_core::NodeInfo {
            id: "rerun-0".into(),
            endpoints: vec!["tcp://127.0.0.1:1".into()],
            connections: 1,
            max_connections: 10,
            draining: false,
            zone: String::new(),
            expires_ms: now + 60_000,
        },
    )
    .await
    .unwrap();
    tether_core::Sessions::register(
        &registry,
        tether_core::Session {
            app: APP.into(),
            user: "alice".into(),
            node: "rerun-0".into(),
            conn: tether_core::ConnId(1),
            device: "old".into(),
            transport: tether_core::Transport::Tcp,
            connected_at_ms: 1,
        },
    )
    .await
    .unwrap();

    let node = start(config(&options, "rerun-0")).await;
    let other = start(config(&options, "rerun-1")).await;
    let http = Http::new(&other);
    let (mut bob, connected) = TcpClient::connected(node.tcp_addr().unwrap(), "bob", "d", 0).await;
    assert_ne!(connected.conn_id, 1, "connection ids do not start over");
    http.wait_presence("bob", 1).await;
    let alice = http.presence("alice").await;
    assert_eq!(
        alice["connections"],
        json!([]),
        "the previous run's session is gone"
    );
    let reply = http
        .push(r#"{"users":["alice"],"payload":"for alice"}"#)
        .await;
    assert_eq!(reply["connections"], 0, "{reply}");
    quiet(&mut bob).await;
}

/// `GET /v1/admin/nodes` on `http`: asserts 200 and returns the answer.
async fn admin_nodes(http: &Http, admin: &str) -> Value {
    let reply = http.get("/v1/admin/nodes", Some(admin)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

/// The answer's nodes by id.
fn listed(answer: &Value) -> Vec<(&str, &Value)> {
    answer["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect()
}

#[tokio::test]
async fn the_admin_node_list_shows_every_node_its_state_and_whether_it_still_announces() {
    let Some(options) = tether_redis::testing::options("nodes").await else {
        return;
    };
    let admin = "admin-key-0123456789";
    let mut nodes = Vec::new();
    for id in ["nodes-a", "nodes-b"] {
        let mut config = config(&options, id);
        config.admin.key = Some(tether_server::config::Secret::new(admin));
        // Reaps (one per announcement) seldom enough that an expired node can be seen.
        config.node.announce_interval = Duration::from_secs(1);
        config.gateway.drain_spread = Duration::from_millis(100);
        nodes.push(start(config).await);
    }
    let http = [Http::new(&nodes[0]), Http::new(&nodes[1])];

    // Asked either node: both, with what each advertises, serving and alive.
    for (i, http) in http.iter().enumerate() {
        let answer = admin_nodes(http, admin).await;
        assert_eq!(answer["node"], ["nodes-a", "nodes-b"][i], "{answer}");
        let got = listed(&answer);
        assert_eq!(
            got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            ["nodes-a", "nodes-b"]
        );
        for ((_, n), node) in got.iter().zip(&nodes) {
            let endpoints = [
                format!("tcp://{}", node.tcp_addr().unwrap()),
                format!("ws://{}/ws", node.ws_addr().unwrap()),
                format!("mqtt://{}", node.mqtt_addr().unwrap()),
                format!("ws://{}/mqtt", node.ws_addr().unwrap()),
            ];
            assert_eq!(n["endpoints"], json!(endpoints), "{n}");
            assert_eq!(n["state"], "serving", "{n}");
            assert_eq!(n["alive"], true, "{n}");
            assert_eq!(n["connections"], 0, "{n}");
            assert!(n["expires_ms"].as_u64().unwrap() > answer["now_ms"].as_u64().unwrap());
        }
    }
    assert_eq!(
        http[0].get("/v1/admin/nodes", None).await.status,
        401,
        "the admin key is needed"
    );

    // A connection on b shows in its count from its next announcement on.
    let (_bob, _) = TcpClient::connected(nodes[1].tcp_addr().unwrap(), "bob", "d", 0).await;
    let deadline = Instant::now() + 3 * WAIT;
    loop {
        let answer = admin_nodes(&http[0], admin).await;
        if listed(&answer)[1].1["connections"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b's connection not counted: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // b drains: a, asked, lists it draining at once (the drain is announced before any close).
    let reply = http[1].post_raw("/v1/admin/drain", Some(admin), "").await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let answer = admin_nodes(&http[0], admin).await;
    let b = listed(&answer)[1].1.clone();
    assert_eq!(
        (&b["state"], &b["alive"]),
        (&json!("draining"), &json!(true)),
        "{b}"
    );

    // A node that stopped announcing (a crash: no withdrawal) is listed as not alive until a
    // live node reaps it. Its expired announcement is written as its last one would have
    // been; a reap may take it before the list is read, so the write is repeated until one
    // read sees it.
    let registry = tether_redis::RedisRegistry::connect(&options)
        .await
        .unwrap();
    let dead = |expires_ms| tether_core::NodeInfo {
        id: "nodes-dead".into(),
        endpoints: vec!["tcp://127.0.0.1:1".into()],
        connections: 7,
        max_connections: 10,
        draining: false,
        zone: "eu-1".into(),
        expires_ms,
    };
    let mut seen = None;
    for _ in 0..20 {
        let expired = tether_core::now_ms() - 1;
        // Refused while a reap holds the node (it took the previous write): write it again.
        if tether_core::Membership::announce(&registry, dead(expired))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let answer = admin_nodes(&http[0], admin).await;
        if let Some((_, n)) = listed(&answer)
            .into_iter()
            .find(|(id, _)| *id == "nodes-dead")
        {
            seen = Some(n.clone());
            break;
        }
    }
    let n = seen.expect("the dead node listed before a reap took it, in 20 tries");
    assert_eq!(n["alive"], false, "{n}");
    assert_eq!(
        (&n["connections"], &n["zone"]),
        (&json!(7), &json!("eu-1")),
        "{n}"
    );
    // Reaped at a live node's next announcement.
    let deadline = Instant::now() + 3 * WAIT;
    loop {
        let answer = admin_nodes(&http[0], admin).await;
        if listed(&answer).iter().all(|(id, _)| *id != "nodes-dead") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node was not reaped: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A clean shutdown withdraws b: it leaves the list at once.
    let b = nodes.pop().unwrap();
    b.shutdown();
    tokio::time::timeout(3 * WAIT, b.wait())
        .await
        .expect("b shuts down");
    let answer = admin_nodes(&http[0], admin).await;
    assert_eq!(
        listed(&answer)
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        ["nodes-a"],
        "{answer}"
    );
}

/// An MQTT 3.1.1 connection of the demo app as `user` with client id `device`, its CONNACK
/// read (accepted).
async fn mqtt_connected(node: &Node, user: &str, device: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let packet = clients::connect_311(device, APP, &token(user));
    let addr = node.mqtt_addr().expect("an MQTT listener");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&packet).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("read");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    s
}

/// MQTT's takeover crosses nodes: a device that connects again through another node closes
/// its older connection on the first (3.1.1: a close without a packet), found in the registry
/// and closed through the router; presence then shows the new one alone.
#[tokio::test]
async fn an_mqtt_device_reconnecting_through_another_node_takes_the_old_connection_s_place() {
    use tokio::io::AsyncReadExt;
    let Some((nodes, http)) = cluster("takeover", 2).await else {
        return;
    };
    let mut first = mqtt_connected(&nodes[0], "tina", "sensor-1").await;
    http[1].wait_presence("tina", 1).await;
    let _second = mqtt_connected(&nodes[1], "tina", "sensor-1").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, first.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the first is closed: {read:?} {rest:?}"
    );
    let presence = http[0].wait_presence("tina", 1).await;
    assert_eq!(
        presence["connections"][0]["node"], "takeover-1",
        "{presence}"
    );
}
