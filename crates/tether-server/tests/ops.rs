//! Operations, end to end: the dispatcher over nodes sharing one registry, readiness, the drain
//! (spread closes, refused newcomers), the admin API's key and stats.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tether_core::{Membership, MemoryRegistry, Registry};
use tether_proto::{Binding, Code};
use tether_server::config::{AppConfig, Secret, StoreBackend};
use tether_server::{Config, Node};
use tokio::time::{Instant, timeout};

const ADMIN_KEY: &str = "admin-key-0123456789";

fn config(id: &str) -> Config {
    let mut config = Config::for_tests();
    config.node.id = id.into();
    config.admin.key = Some(Secret::new(ADMIN_KEY));
    config
}

async fn start_shared(id: &str, registry: &Arc<MemoryRegistry>) -> Node {
    init_tracing();
    let shared: Arc<dyn Registry> = registry.clone();
    timeout(WAIT, Node::start_with_registry(config(id), shared))
        .await
        .expect("node start timed out")
        .expect("node start failed")
}

/// The dispatcher's answer for `user`, asked with the user's own token.
async fn dispatch(http: &Http, user: &str, failed: &[&str]) -> Reply {
    let mut path = format!("/v1/dispatch?app={APP}&user={user}");
    if !failed.is_empty() {
        path.push_str(&format!("&failed={}", failed.join(",")));
    }
    http.get(&path, Some(&token(user))).await
}

fn urls(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["url"].as_str().expect("url").to_owned())
        .collect()
}

fn nodes_of(reply: &Reply) -> Vec<String> {
    reply.body["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["node"].as_str().expect("node").to_owned())
        .collect()
}

fn own_endpoints(node: &Node) -> Vec<String> {
    vec![
        format!("tcp://{}", node.tcp_addr().unwrap()),
        format!("ws://{}/ws", node.ws_addr().unwrap()),
    ]
}

async fn drain(http: &Http, key: Option<&str>) -> Reply {
    http.post_raw("/v1/admin/drain", key, "").await
}

#[tokio::test]
async fn one_node_dispatches_to_itself_for_a_client_with_a_token() {
    let node = start(config("solo")).await;
    let http = Http::new(&node);

    let reply = dispatch(&http, "alice", &[]).await;
    assert_eq!(urls(&reply), own_endpoints(&node));
    assert_eq!(nodes_of(&reply), ["solo", "solo"]);
    assert_eq!(reply.body["endpoints"][0]["transport"], "tcp");
    assert_eq!(reply.body["endpoints"][1]["transport"], "ws");
    assert_eq!(reply.body["user"], "alice");
    let reconnect = &reply.body["reconnect"];
    assert_eq!(
        (
            reconnect["initial_ms"].as_u64(),
            reconnect["max_ms"].as_u64(),
            reconnect["jitter"].as_f64()
        ),
        (Some(500), Some(30_000), Some(1.0)),
        "the configured backoff: {reconnect}"
    );

    // The token may come as a query parameter, and names the user when none is given.
    let reply = http
        .get(
            &format!("/v1/dispatch?app={APP}&token={}", token("bob")),
            None,
        )
        .await;
    assert_eq!(urls(&reply).len(), 2);
    assert_eq!(reply.body["user"], "bob");
    let reply = http
        .get(
            &format!("/v1/dispatch?app={APP}&transport=ws"),
            Some(&token("bob")),
        )
        .await;
    assert_eq!(urls(&reply), own_endpoints(&node)[1..]);

    // Without a valid token of the app for that user, nothing about the nodes is told.
    let no_token = http
        .get(&format!("/v1/dispatch?app={APP}&user=alice"), None)
        .await;
    assert_eq!(no_token.status, 401, "{:?}", no_token.body);
    let forged = http
        .get(
            &format!("/v1/dispatch?app={APP}&user=alice"),
            Some(&token_for(APP, "not-the-secret-0123456", "alice")),
        )
        .await;
    assert_eq!(
        (forged.status, forged.body["code"].as_str()),
        (401, Some("bad_token"))
    );
    let expired = http
        .get(
            &format!("/v1/dispatch?app={APP}&user=alice"),
            Some(&expired_token("alice")),
        )
        .await;
    assert_eq!(
        (expired.status, expired.body["code"].as_str()),
        (401, Some("token_expired"))
    );
    let other_user = http
        .get(
            &format!("/v1/dispatch?app={APP}&user=alice"),
            Some(&token("bob")),
        )
        .await;
    assert_eq!(other_user.status, 403, "{:?}", other_user.body);
    let unknown_app = http
        .get("/v1/dispatch?app=nope&user=alice", Some(&token("alice")))
        .await;
    assert_eq!(unknown_app.status, 404);
    let bad_transport = http
        .get(
            &format!("/v1/dispatch?app={APP}&transport=udp"),
            Some(&token("bob")),
        )
        .await;
    assert_eq!(bad_transport.status, 400);
    let too_many: Vec<String> = (0..33).map(|i| format!("tcp://h:{}", i + 1)).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_eq!(dispatch(&http, "alice", &too_many).await.status, 400);

    // Every endpoint failed: nothing to offer, and the client is told to come back later.
    let own = own_endpoints(&node);
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    let none = dispatch(&http, "alice", &own).await;
    assert_eq!(
        (none.status, none.body["code"].as_str()),
        (503, Some("no_endpoints"))
    );
}

/// Pages add parameters of their own (a cache-buster): the dispatcher ignores what it does not
/// know.
#[tokio::test]
async fn the_dispatcher_ignores_parameters_it_does_not_know() {
    let node = start(config("solo")).await;
    let http = Http::new(&node);
    let path = format!("/v1/dispatch?app={APP}&user=alice&_=1765100000000");
    let reply = http.get(&path, Some(&token("alice"))).await;
    assert_eq!(urls(&reply), own_endpoints(&node));
}

#[tokio::test]
async fn nodes_sharing_a_registry_agree_on_each_user_s_order_and_skip_failed_and_draining() {
    let registry = Arc::new(MemoryRegistry::new());
    let a = start_shared("tether-a", &registry).await;
    let b = start_shared("tether-b", &registry).await;
    let (http_a, http_b) = (Http::new(&a), Http::new(&b));

    let mut first_choice = std::collections::BTreeMap::<String, usize>::new();
    for u in 0..40 {
        let user = format!("user-{u}");
        let from_a = dispatch(&http_a, &user, &[]).await;
        let from_b = dispatch(&http_b, &user, &[]).await;
        assert_eq!(
            urls(&from_a),
            urls(&from_b),
            "{user}: every node answers the same"
        );
        assert_eq!(
            urls(&from_a),
            urls(&dispatch(&http_a, &user, &[]).await),
            "{user}: the same answer every time"
        );
        let nodes = nodes_of(&from_a);
        assert_eq!(nodes.len(), 4, "two endpoints of each of two nodes");
        assert_eq!(nodes[0], nodes[1], "a node's endpoints stay together");
        assert_ne!(nodes[1], nodes[2]);
        *first_choice.entry(nodes[0].clone()).or_default() += 1;
    }
    assert_eq!(
        first_choice.len(),
        2,
        "users spread over both nodes: {first_choice:?}"
    );

    // A failed endpoint is left out; the rest keep their order.
    let all = urls(&dispatch(&http_a, "alice", &[]).await);
    let without_first = urls(&dispatch(&http_a, "alice", &[&all[0]]).await);
    assert_eq!(without_first, all[1..]);
    let without_two = urls(&dispatch(&http_a, "alice", &[&all[0], &all[2]]).await);
    assert_eq!(without_two, [all[1].clone(), all[3].clone()]);

    // Node b drains: every dispatcher stops offering it at once.
    assert_eq!(drain(&http_b, Some(ADMIN_KEY)).await.status, 202);
    for http in [&http_a, &http_b] {
        for user in ["alice", "bob", "carol"] {
            let reply = dispatch(http, user, &[]).await;
            assert_eq!(urls(&reply), own_endpoints(&a), "{user}");
        }
    }
    let a_urls = own_endpoints(&a);
    let a_urls: Vec<&str> = a_urls.iter().map(String::as_str).collect();
    assert_eq!(dispatch(&http_a, "alice", &a_urls).await.status, 503);

    // A node that shuts down withdraws at once rather than waiting for its announcement to
    // expire.
    b.shutdown();
    timeout(WAIT, b.wait()).await.expect("b stops");
    let ids: Vec<String> = registry
        .nodes(tether_core::now_ms())
        .await
        .unwrap()
        .iter()
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(ids, ["tether-a"]);
}

#[tokio::test]
async fn the_admin_api_needs_its_key_and_is_off_without_one() {
    let mut off = Config::for_tests();
    off.admin.key = None;
    let node = start(off).await;
    let http = Http::new(&node);
    for reply in [
        drain(&http, Some(ADMIN_KEY)).await,
        http.get("/v1/admin/stats", Some(ADMIN_KEY)).await,
        http.get("/v1/admin/nodes", Some(ADMIN_KEY)).await,
    ] {
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (404, Some("admin_disabled"))
        );
    }
    assert_eq!(http.get("/readyz", None).await.status, 200, "still ready");

    let node = start(config("keyed")).await;
    let http = Http::new(&node);
    for (key, status) in [
        (None, 401),
        (Some("wrong-key-0123456789"), 403),
        (Some(API_KEY), 403),
    ] {
        assert_eq!(drain(&http, key).await.status, status, "drain with {key:?}");
        assert_eq!(
            http.get("/v1/admin/stats", key).await.status,
            status,
            "stats with {key:?}"
        );
        assert_eq!(
            http.get("/v1/admin/nodes", key).await.status,
            status,
            "nodes with {key:?}"
        );
    }
    assert_eq!(
        http.get("/readyz", None).await.status,
        200,
        "a refused drain drains nothing"
    );
    assert_eq!(
        http.get("/v1/admin/stats", Some(ADMIN_KEY)).await.status,
        200
    );
    // All-in-one, the node list is this node, as it announced itself.
    let reply = http.get("/v1/admin/nodes", Some(ADMIN_KEY)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let nodes = reply.body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{:?}", reply.body);
    assert_eq!(nodes[0]["id"], reply.body["node"]);
    // Every endpoint the node advertises, MQTT's included (the dispatcher hands those only
    // to devices that ask for them).
    let mut endpoints = own_endpoints(&node);
    endpoints.push(format!("mqtt://{}", node.mqtt_addr().unwrap()));
    endpoints.push(format!("ws://{}/mqtt", node.ws_addr().unwrap()));
    assert_eq!(nodes[0]["endpoints"], json!(endpoints));
    assert_eq!(
        (&nodes[0]["state"], &nodes[0]["alive"]),
        (&json!("serving"), &json!(true))
    );
}

#[tokio::test]
async fn a_drain_turns_readiness_off_spreads_its_closes_and_refuses_newcomers() {
    let mut config = config("drained");
    let window = Duration::from_millis(1600);
    config.gateway.drain_spread = window;
    let node = start(config).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    assert_eq!(http.get("/readyz", None).await.status, 200);

    let mut tcp = Vec::new();
    for i in 0..7 {
        tcp.push(
            TcpClient::connected(addr, &format!("u{i}"), "phone", 0)
                .await
                .0,
        );
    }
    let (ws, _) = WsClient::connected(&node, "w", "browser", 0).await;
    http.wait_presence("w", 1).await;
    assert_eq!(node.connections(), 8);

    let began = Instant::now();
    let reply = drain(&http, Some(ADMIN_KEY)).await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(
        (
            reply.body["began"].as_bool(),
            reply.body["connections"].as_u64()
        ),
        (Some(true), Some(8))
    );
    assert_eq!(reply.body["spread_ms"].as_u64(), Some(1600));
    assert_eq!(http.get("/readyz", None).await.status, 503);
    assert_eq!(http.get("/healthz", None).await.status, 200, "still alive");
    let again = drain(&http, Some(ADMIN_KEY)).await;
    assert_eq!(
        (again.status, again.body["began"].as_bool()),
        (202, Some(false)),
        "draining again starts nothing new"
    );

    // Newcomers are refused with "reconnect elsewhere", on both transports.
    let mut late = TcpClient::open(addr).await;
    late.expect_disconnect(Code::DRAIN).await;
    let mut late_ws = WsClient::open(&node).await;
    // Before its first message: the close frame alone, readable whatever its encoding.
    late_ws.expect_close(Code::DRAIN).await;

    // Every client is told to go elsewhere, one after another over the window.
    let mut waits = Vec::new();
    for mut client in tcp {
        waits.push(tokio::spawn(async move {
            client.expect_disconnect(Code::DRAIN).await;
            began.elapsed()
        }));
    }
    waits.push(tokio::spawn(async move {
        let mut ws = ws;
        ws.expect_disconnect(Code::DRAIN).await;
        began.elapsed()
    }));
    let mut times = Vec::new();
    for wait in waits {
        times.push(wait.await.expect("every client gets disconnect 4101"));
    }
    times.sort();
    // Eight closes due at 0, 200, ..., 1400 ms.
    let (first, last) = (times[0], times[7]);
    assert!(
        last - first >= Duration::from_millis(1000),
        "closes not spread: {times:?}"
    );
    assert!(
        times
            .iter()
            .filter(|t| **t < Duration::from_millis(500))
            .count()
            <= 4,
        "too many closes at the start: {times:?}"
    );
    assert!(last < window + Duration::from_secs(1), "{times:?}");
    let deadline = Instant::now() + WAIT;
    while node.connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "connections left after the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The API keeps serving through a drain.
    let pushed = http.push(r#"{"users":["u1"],"payload":"late"}"#).await;
    assert_eq!(pushed["connections"], 0);
}

#[tokio::test]
async fn stats_count_connections_by_app_and_transport_and_show_queues_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("stats");
    config.store.backend = StoreBackend::Embedded;
    config.node.data_dir = dir.path().to_owned();
    config.apps.push(AppConfig::new(
        "shop",
        Secret::new("shop-secret-0123456789"),
        Secret::new("shop-api-key-0123456789"),
    ));
    // One delivery a second: a broadcast to three connections keeps the worker busy, and
    // the broadcasts after it wait in the queue.
    config.rate.deliveries_per_sec = 1;
    config.rate.deliveries_burst = 1;
    config.rate.fanout_queue = 8;
    let node = start(config).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();

    let (_alice, _) = TcpClient::connected(addr, "alice", "phone", 0).await;
    let (_ws, _) = WsClient::connected(&node, "carol", "browser", 0).await;
    let mut both = TcpClient::open(addr).await;
    both.send(&connect_with(
        "tablet",
        0,
        vec![
            Binding {
                app: APP.into(),
                token: token("bob"),
                last_seq: None,
            },
            Binding {
                app: "shop".into(),
                token: token_for("shop", "shop-secret-0123456789", "bob"),
                last_seq: None,
            },
        ],
    ))
    .await;
    expect_connected(both.frame().await);
    let stored = http
        .push(r#"{"users":["nobody"],"payload":{"kept":true},"qos":1}"#)
        .await;
    assert_eq!(stored["seqs"]["nobody"], 1);
    for _ in 0..3 {
        let reply = http
            .post_raw(
                &format!("/v1/apps/{APP}/broadcast"),
                Some(API_KEY),
                r#"{"payload":{"b":1}}"#,
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }

    let reply = http.get("/v1/admin/stats", Some(ADMIN_KEY)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let s = &reply.body;
    assert_eq!(s["node"], "stats");
    assert_eq!(
        (s["ready"].as_bool(), s["draining"].as_bool()),
        (Some(true), Some(false))
    );
    let c = &s["connections"];
    assert_eq!(
        (c["total"].as_u64(), c["tcp"].as_u64(), c["ws"].as_u64()),
        (Some(3), Some(2), Some(1)),
        "{c}"
    );
    assert_eq!(c["sse"].as_u64(), Some(0), "{c}");
    assert_eq!(
        c["by_app"]["demo"],
        serde_json::json!({"tcp": 2, "ws": 1, "sse": 0, "mqtt": 0})
    );
    assert_eq!(
        c["by_app"]["shop"],
        serde_json::json!({"tcp": 1, "ws": 0, "sse": 0, "mqtt": 0})
    );
    let o = &s["outbound"];
    assert!(o["queued_bytes"].is_u64() && o["over_half"].is_u64(), "{o}");
    assert_eq!(o["limit_bytes"].as_u64(), Some(256 * 1024));
    let demo = &s["fanout"]["demo"];
    assert_eq!(demo["capacity"].as_u64(), Some(8));
    assert!(
        demo["queued"].as_u64().unwrap() >= 1,
        "broadcasts wait behind the paced one: {demo}"
    );
    assert_eq!(s["fanout"]["shop"]["queued"].as_u64(), Some(0));
    let store = &s["store"];
    assert_eq!(store["backend"], "embedded");
    assert!(store["disk_bytes"].as_u64().unwrap() > 0, "{store}");
    assert!(store["appends"].as_u64().unwrap() >= 1, "{store}");
    assert!(store["queued_writes"].is_u64(), "{store}");
    let endpoints: Vec<Value> = s["endpoints"].as_array().unwrap().clone();
    let mut announced = own_endpoints(&node);
    announced.extend([
        format!("mqtt://{}", node.mqtt_addr().unwrap()),
        format!("ws://{}/mqtt", node.ws_addr().unwrap()),
    ]);
    assert_eq!(endpoints, announced);
}

#[tokio::test]
async fn advertised_endpoints_replace_the_listener_addresses() {
    let mut config = config("advertised");
    config.node.advertise_tcp = vec![
        "tcp://push.example.com:7400".into(),
        "tcp://push.example.com:443".into(),
    ];
    config.node.advertise_ws = vec!["wss://push.example.com/ws".into()];
    let node = start(config).await;
    let reply = dispatch(&Http::new(&node), "alice", &[]).await;
    assert_eq!(
        urls(&reply),
        [
            "tcp://push.example.com:7400",
            "tcp://push.example.com:443",
            "wss://push.example.com/ws"
        ]
    );
}

#[tokio::test]
async fn a_shutdown_spreads_its_closes_too_and_ends_within_the_grace_period() {
    let mut config = config("stopping");
    let spread = Duration::from_millis(800);
    let grace = Duration::from_secs(3);
    config.gateway.shutdown_spread = spread;
    config.gateway.shutdown_grace = grace;
    let node = start(config).await;
    let addr = node.tcp_addr().unwrap();
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(
            TcpClient::connected(addr, &format!("u{i}"), "phone", 0)
                .await
                .0,
        );
    }

    node.shutdown();
    let began = Instant::now();
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let d = client.expect_disconnect(Code::SHUTDOWN).await;
                (began.elapsed(), d.retry_after_ms)
            })
        })
        .collect();
    let mut times = Vec::new();
    for wait in waits {
        let (at, retry_after_ms) = wait.await.expect("every client gets disconnect 4100");
        assert!(u128::from(retry_after_ms) <= spread.as_millis());
        times.push(at);
    }
    times.sort();
    // Five closes due at 0, 160, ..., 640 ms.
    assert!(
        times[4] - times[0] >= Duration::from_millis(400),
        "closes not spread: {times:?}"
    );
    timeout(grace, node.wait())
        .await
        .expect("the node stops within its grace period");
    assert!(began.elapsed() < grace);
}
