//! End-to-end tests of `POST /v1/apps/{app}/push/batch`: one outcome per push in order,
//! pushes that fail alone, the request's limits, the single push's permissions, and durable
//! pushes stored (fsynced, in one store batch) before the answer.

mod common;

use common::*;
use serde_json::{Value, json};
use tether_core::AppId;
use tether_server::Config;
use tether_server::config::{AppConfig, Secret, StoreBackend};

const BATCH: &str = "/v1/apps/demo/push/batch";
const OTHER_KEY: &str = "other-api-key-0123456789";

fn config() -> Config {
    let mut config = Config::for_tests();
    config.apps.push(AppConfig::new(
        AppId::from("other"),
        Secret::new("other-secret-0123456789"),
        Secret::new(OTHER_KEY),
    ));
    config
}

async fn batch(http: &Http, pushes: Value) -> Reply {
    let body = json!({ "pushes": pushes }).to_string();
    http.post_raw(BATCH, Some(API_KEY), &body).await
}

/// The `results` of a batch that must be answered 200.
async fn results(http: &Http, pushes: Value) -> Vec<Value> {
    let reply = batch(http, pushes).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {:?}", reply.body))
        .clone()
}

fn assert_failed(result: &Value, status: u64, code: &str) {
    assert_eq!(result["status"], status, "{result}");
    assert_eq!(result["code"], code, "{result}");
    assert!(result["error"].is_string(), "{result}");
}

#[tokio::test]
async fn each_push_gets_its_outcome_in_order_and_a_bad_one_fails_alone() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    let (mut alice, _) = TcpClient::connected(addr, "alice", "phone", 30_000).await;

    let got = results(
        &http,
        json!([
            { "user": "alice", "payload": {"n": 0} },
            { "user": "alice", "payload": {"n": 1}, "qos": 1 },
            { "user": "", "payload": {"n": 2} },
            { "user": "bob", "payload": {"n": 3}, "qos": 1 },
            { "user": "alice", "payload_base64": "AAE=", "qos": 1, "ttl": 60 },
            { "user": "alice", "payload": {"n": 5}, "qos": 2 },
            { "user": "alice", "payload": {"n": 6}, "ttl": 60 },
            { "user": "alice", "payload": {"n": 7}, "qos": 1, "ttl": 0 },
            { "user": "alice", "payload": {"n": 8}, "payload_base64": "AA==" },
            { "user": "alice", "payload": {"n": 9} },
        ]),
    )
    .await;
    assert_eq!(got.len(), 10, "one outcome per push: {got:?}");
    // Live: an id and the connections; durable: also the user's seq.
    assert_eq!(got[0]["connections"], 1, "{:?}", got[0]);
    assert!(got[0].get("seq").is_none());
    assert_eq!(
        (&got[1]["seq"], &got[1]["duplicate"]),
        (&json!(1), &json!(false))
    );
    assert_eq!(got[1]["connections"], 1);
    assert_failed(&got[2], 400, "bad_request");
    assert_eq!(
        (&got[3]["seq"], &got[3]["connections"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(
        got[4]["seq"], 2,
        "a user's pushes take seqs in the batch's order"
    );
    for bad in &got[5..9] {
        assert_failed(bad, 400, "bad_request");
    }
    assert_eq!(got[9]["connections"], 1);
    let ids: Vec<&str> = [0, 1, 3, 4, 9]
        .iter()
        .map(|&i| got[i]["id"].as_str().expect("a decimal string id"))
        .collect();
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "each push its own id: {ids:?}");

    // alice's connection gets her pushes in the batch's order.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let push = expect_push(alice.frame().await);
        seen.push((push.msg_id.to_string(), push.qos, push.seq));
    }
    let expected = vec![
        (ids[0].to_owned(), 0, 0),
        (ids[1].to_owned(), 1, 1),
        (ids[3].to_owned(), 1, 2),
        (ids[4].to_owned(), 0, 0),
    ];
    assert_eq!(seen, expected);

    // The durable ones are in the inboxes.
    let inbox = http
        .get("/v1/apps/demo/users/alice/messages", Some(API_KEY))
        .await;
    let held: Vec<&Value> = inbox.body["messages"].as_array().unwrap().iter().collect();
    assert_eq!(held.len(), 2, "{:?}", inbox.body);
    assert_eq!(held[0]["payload"], json!({"n": 1}));
    assert_eq!(held[1]["payload_base64"], "AAE=");
}

#[tokio::test]
async fn an_idempotency_key_works_within_a_batch_and_across_batches() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let keyed = json!({ "user": "carol", "payload": {"n": 1}, "qos": 1, "idempotency_key": "k" });
    let got = results(&http, json!([keyed, keyed])).await;
    assert_eq!(got[0]["duplicate"], false);
    assert_eq!(got[1]["duplicate"], true, "the same key twice stores once");
    assert_eq!(got[0]["id"], got[1]["id"]);
    let again = results(&http, json!([keyed])).await;
    assert_eq!(
        (&again[0]["duplicate"], &again[0]["seq"]),
        (&json!(true), &json!(1))
    );
}

#[tokio::test]
async fn the_batch_has_the_single_push_s_permissions() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let body = json!({ "pushes": [{ "user": "alice", "payload": 1 }] }).to_string();
    for key in [None, Some("no-such-key-0123456789")] {
        let reply = http.post_raw(BATCH, key, &body).await;
        assert_eq!(
            (reply.status, &reply.body["code"]),
            (401, &json!("unauthorized"))
        );
    }
    let reply = http.post_raw(BATCH, Some(OTHER_KEY), &body).await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (403, &json!("forbidden"))
    );
    let other = http
        .post_raw("/v1/apps/other/push/batch", Some(OTHER_KEY), &body)
        .await;
    assert_eq!(other.status, 200, "{:?}", other.body);
}

#[tokio::test]
async fn a_batch_over_its_limits_is_refused_whole() {
    let mut config = config();
    config.limits.max_payload = 2048;
    config.limits.api_body_bytes = 256 * 1024;
    let node = start(config).await;
    let http = Http::new(&node);

    let reply = batch(&http, json!([])).await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (400, &json!("bad_request"))
    );
    let one = json!({ "user": "u", "payload": 1 });
    let reply = batch(&http, Value::Array(vec![one.clone(); 1001])).await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (413, &json!("batch_too_large"))
    );
    assert!(reply.body["error"].as_str().unwrap().contains("1000"));
    let reply = batch(&http, Value::Array(vec![one.clone(); 1000])).await;
    assert_eq!(reply.status, 200, "1000 is allowed: {:?}", reply.body);

    let big = json!({ "user": "u", "payload_base64": "A".repeat(1500 * 4 / 3) });
    let reply = batch(&http, Value::Array(vec![big; 200])).await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (413, &json!("payload_too_large"))
    );
    // A body that is not the request's shape fails whole, with nothing sent.
    for body in [
        r#"{"pushes":[{"user":"u","payload":1,"extra":true}]}"#,
        r#"{"pushes":{"user":"u"}}"#,
        r#"[{"user":"u","payload":1}]"#,
        "not json",
    ] {
        let reply = http.post_raw(BATCH, Some(API_KEY), body).await;
        assert_eq!(
            (reply.status, &reply.body["code"]),
            (400, &json!("bad_request"))
        );
    }
    // One payload over max_payload fails alone.
    let over = json!({ "user": "u", "payload_base64": "A".repeat(2052 * 4 / 3) });
    let got = results(&http, json!([over, one])).await;
    assert_failed(&got[0], 413, "payload_too_large");
    assert!(got[1]["id"].is_string());
}

#[tokio::test]
async fn a_batch_takes_one_request_per_push_from_the_app_s_rate() {
    let mut config = config();
    config.apps[0].requests_per_sec = Some(1);
    config.rate.requests_burst = 5;
    let node = start(config).await;
    let http = Http::new(&node);
    let one = json!({ "user": "u", "payload": 1 });

    let reply = batch(&http, Value::Array(vec![one.clone(); 6])).await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (429, &json!("rate_limited"))
    );
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap()
            .contains("smaller batches")
    );
    assert_eq!(
        results(&http, Value::Array(vec![one.clone(); 5]))
            .await
            .len(),
        5
    );
    // The burst is spent; the rate gives one back a second from now.
    let reply = batch(&http, Value::Array(vec![one.clone(); 2])).await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (429, &json!("rate_limited"))
    );
    // Pushes that fail their own checks take nothing.
    let bad = json!({ "user": "bad\u{1}user", "payload": 1 });
    let got = results(&http, Value::Array(vec![bad; 3])).await;
    assert_failed(&got[0], 400, "bad_request");
}

/// In `sync` mode the store fsyncs before it answers; a batch's durable pushes are written as
/// one store batch, so a batch of 50 costs one write and one fsync, and every push is on disk
/// (readable, counted) when the answer comes.
#[tokio::test]
async fn durable_pushes_of_a_batch_are_stored_and_fsynced_together_before_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config();
    config.store.backend = StoreBackend::Embedded;
    config.node.data_dir = dir.path().to_owned();
    let node = start(config).await;
    let http = Http::new(&node);
    let counter = |page: &str, name: &str| metric(page, name).unwrap_or(0.0);

    let before = http.metrics().await;
    let pushes: Vec<Value> = (0..50)
        .map(|i| json!({ "user": format!("u{}", i % 10), "payload": {"i": i}, "qos": 1 }))
        .collect();
    let got = results(&http, Value::Array(pushes)).await;
    let after = http.metrics().await;
    for (i, result) in got.iter().enumerate() {
        assert_eq!(result["seq"], (i / 10 + 1) as u64, "{i}: {result}");
    }
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(delta("tether_store_appends_total"), 50.0);
    assert_eq!(delta("tether_store_batches_total"), 1.0, "one store batch");
    assert!(
        delta("tether_store_fsyncs_total") >= 1.0,
        "fsynced before the answer"
    );
    for user in 0..10 {
        let inbox = http
            .get(
                &format!("/v1/apps/demo/users/u{user}/messages"),
                Some(API_KEY),
            )
            .await;
        let held: Vec<u64> = inbox.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["payload"]["i"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..5).map(|k| user + 10 * k).collect();
        assert_eq!(held, expected, "u{user}'s inbox in the batch's order");
    }
}
