//! End-to-end tests of the HTTP API: authentication, request validation and its error bodies,
//! health and metrics.

mod common;

use base64::Engine;
use common::*;
use serde_json::Value;
use tether_core::AppId;
use tether_server::Config;
use tether_server::config::{AppConfig, Secret};

const OTHER_KEY: &str = "other-api-key-0123456789";

fn config() -> Config {
    let mut config = Config::for_tests();
    config.apps.push(AppConfig::new(
        AppId::from("other"),
        Secret::new("other-secret-0123456789"),
        Secret::new(OTHER_KEY),
    ));
    config.limits.max_payload = 2048;
    config.limits.api_body_bytes = 8192;
    config.limits.max_push_users = 3;
    config
}

const PUSH: &str = "/v1/apps/demo/push";
const OK_BODY: &str = r#"{"users":["alice"],"payload":{"n":1},"qos":0}"#;

/// An error reply: the status, and a JSON body with `error` and `code`.
fn assert_error(reply: &Reply, status: u16) -> String {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert!(
        reply.body["code"].is_string(),
        "no code in {:?}",
        reply.body
    );
    reply.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {:?}", reply.body))
        .to_owned()
}

#[tokio::test]
async fn every_app_route_needs_the_app_s_own_key() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let presence = "/v1/apps/demo/users/alice/presence";
    let kick = "/v1/apps/demo/users/alice/kick";

    for key in [None, Some("no-such-key-0123456789")] {
        let reply = http.post_raw(PUSH, key, OK_BODY).await;
        assert_error(&reply, 401);
        assert_eq!(reply.body["code"], "unauthorized");
        assert_error(&http.get(presence, key).await, 401);
        assert_error(&http.post_raw(kick, key, "").await, 401);
    }
    // Another app's valid key.
    let reply = http.post_raw(PUSH, Some(OTHER_KEY), OK_BODY).await;
    assert_error(&reply, 403);
    assert_eq!(reply.body["code"], "forbidden");
    assert_error(&http.get(presence, Some(OTHER_KEY)).await, 403);
    assert_error(&http.post_raw(kick, Some(OTHER_KEY), "").await, 403);
    // ... which works on its own app.
    let reply = http
        .post_raw("/v1/apps/other/push", Some(OTHER_KEY), OK_BODY)
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["connections"], 0);

    // The right key, and no one online.
    let reply = http.post_raw(PUSH, Some(API_KEY), OK_BODY).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["connections"], 0);
}

#[tokio::test]
async fn bad_qos_ttl_and_idempotency_keys_get_400() {
    let node = start(config()).await;
    let http = Http::new(&node);
    for (body, needle) in [
        (r#"{"users":["alice"],"payload":1,"qos":2}"#, "qos"),
        (
            r#"{"users":["alice"],"payload":1,"qos":0,"ttl":5}"#,
            "durable",
        ),
        (
            r#"{"users":["alice"],"payload":1,"qos":0,"idempotency_key":"k"}"#,
            "durable",
        ),
        (r#"{"users":["alice"],"payload":1,"qos":1,"ttl":0}"#, "ttl"),
        (
            r#"{"users":["alice"],"payload":1,"qos":1,"ttl":999999999}"#,
            "ttl",
        ),
        (
            r#"{"users":["alice"],"payload":1,"qos":1,"idempotency_key":""}"#,
            "idempotency_key",
        ),
    ] {
        let reply = http.post_raw(PUSH, Some(API_KEY), body).await;
        let message = assert_error(&reply, 400);
        assert!(message.contains(needle), "{body}: {message}");
    }
    let long_key = format!(
        r#"{{"users":["alice"],"payload":1,"qos":1,"idempotency_key":"{}"}}"#,
        "k".repeat(257)
    );
    assert_error(&http.post_raw(PUSH, Some(API_KEY), &long_key).await, 400);
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_json_error() {
    let node = start(config()).await;
    let http = Http::new(&node);
    for body in [
        r#"{"users":["alice"],"payload":"#,
        "not json",
        r#"{"users":"alice","payload":1}"#,
        r#"{"users":["alice"],"payload":1,"colour":"red"}"#,
        // Exactly one of payload and payload_base64.
        r#"{"users":["alice"]}"#,
        r#"{"users":["alice"],"payload":1,"payload_base64":"AA=="}"#,
        r#"{"users":["alice"],"payload_base64":"not base64!"}"#,
        // Users: 1 to max_push_users (3 here), each a valid id.
        r#"{"users":[],"payload":1}"#,
        r#"{"users":["a","b","c","d"],"payload":1}"#,
        r#"{"users":[""],"payload":1}"#,
    ] {
        let reply = http.post_raw(PUSH, Some(API_KEY), body).await;
        assert_eq!(reply.status, 400, "{body}: {:?}", reply.body);
        assert!(
            reply.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["code"], "bad_request", "{body}");
    }
    // Three users is fine.
    let reply = http
        .post_raw(
            PUSH,
            Some(API_KEY),
            r#"{"users":["a","b","c"],"payload":1}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[tokio::test]
async fn payloads_and_bodies_over_their_limits_get_413() {
    let node = start(config()).await;
    let http = Http::new(&node);
    // The payload limit (2048), in a body under the body limit (8192).
    let payload = format!("\"{}\"", "x".repeat(2048));
    let body = format!(r#"{{"users":["alice"],"payload":{payload}}}"#);
    let reply = http.post_raw(PUSH, Some(API_KEY), &body).await;
    assert_error(&reply, 413);
    assert_eq!(reply.body["code"], "payload_too_large");
    // Binary payloads count their decoded bytes: 2049 of them.
    let b64 = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 2049]);
    let body = format!(r#"{{"users":["alice"],"payload_base64":"{b64}"}}"#);
    assert_error(&http.post_raw(PUSH, Some(API_KEY), &body).await, 413);
    // Exactly at the limit is fine.
    let payload = format!("\"{}\"", "x".repeat(2046));
    let body = format!(r#"{{"users":["alice"],"payload":{payload}}}"#);
    let reply = http.post_raw(PUSH, Some(API_KEY), &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // A body over the body limit: the same code, in our words rather than the HTTP stack's.
    let body = format!(r#"{{"users":["alice"],"payload":"{}"}}"#, "x".repeat(9000));
    let reply = http.post_raw(PUSH, Some(API_KEY), &body).await;
    let error = assert_error(&reply, 413);
    assert_eq!(reply.body["code"], "payload_too_large");
    assert!(error.contains("limits.api_body_bytes"), "{error}");
}

#[tokio::test]
async fn error_texts_say_what_is_wrong_in_tether_s_words() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let body = r#"{"users":["alice"],"payload_base64":"not base64!"}"#;
    let error = assert_error(&http.post_raw(PUSH, Some(API_KEY), body).await, 400);
    assert!(
        error.starts_with("payload_base64 is not standard base64"),
        "{error}"
    );
    assert!(!error.contains("symbol"), "the decoder's words: {error}");
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let node = start(config()).await;
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let url = format!("http://{}{PUSH}", node.http_addr());
    let body = r#"{"users":["alice"],"payload":1}"#;
    for (authorization, status) in [
        (format!("bearer {API_KEY}"), 200),
        (format!("BEARER {API_KEY}"), 200),
        (format!("Basic {API_KEY}"), 401),
        (API_KEY.to_owned(), 401),
    ] {
        let response = client
            .post(&url)
            .header("authorization", &authorization)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("HTTP request");
        assert_eq!(response.status().as_u16(), status, "{authorization}");
    }
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let reply = http.get("/healthz", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, Value::String("ok\n".into()));

    // One handshake, so that the counters have something to show.
    let (_client, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
    let page = http.metrics().await;
    assert!(
        page.contains("tether_connections{transport=\"tcp\"}"),
        "{page}"
    );
    let ok = metric(&page, "tether_handshakes_total{result=\"ok\"}");
    assert!(ok.is_some_and(|n| n >= 1.0), "{page}");
}

/// `curl -d` sends `application/x-www-form-urlencoded`; a valid JSON body must still be taken.
#[tokio::test]
async fn a_json_body_is_read_whatever_its_content_type() {
    let node = start(config()).await;
    let reply = reqwest::Client::new()
        .post(format!("http://{}{PUSH}", node.http_addr()))
        .bearer_auth(API_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(OK_BODY)
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(reply.status(), 200);
    let body: Value = reply.json().await.expect("JSON answer");
    assert_eq!(body["connections"], 0);
    assert!(body["id"].is_string());
}

/// Bytes and frames in are counted from the handshake on.
#[tokio::test]
async fn inbound_frames_and_bytes_are_counted() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let before = metric(
        &http.metrics().await,
        "tether_bytes_in_total{transport=\"tcp\"}",
    )
    .unwrap_or(0.0);
    let (mut client, _) =
        TcpClient::connected(node.tcp_addr().unwrap(), "metrics-user", "d1", 30_000).await;
    client
        .send(&tether_proto::Frame::new(7, tether_proto::Body::Ping))
        .await;
    assert_eq!(client.frame().await.body, tether_proto::Body::Pong);
    let after = metric(
        &http.metrics().await,
        "tether_bytes_in_total{transport=\"tcp\"}",
    )
    .unwrap_or(0.0);
    assert!(after > before, "bytes in did not grow: {before} -> {after}");
}

/// A request without a valid key is answered from its head: the server does not wait for (or
/// buffer) a body that a stranger announces.
#[tokio::test]
async fn an_unauthorized_request_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start(config()).await;
    let mut stream = tokio::net::TcpStream::connect(node.http_addr())
        .await
        .unwrap();
    let head = format!(
        "POST {PUSH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 4000000\r\n\r\n{{\"users\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut answer))
        .await
        .expect("no answer while the body is still missing")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test]
async fn a_kick_with_a_device_closes_that_device_only() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let addr = node.tcp_addr().unwrap();
    // A device id with what a query must escape.
    let (mut phone, _) = TcpClient::connected(addr, "alice", "phone 1/é&x", 0).await;
    let (mut laptop, _) = TcpClient::connected(addr, "alice", "laptop", 0).await;
    http.wait_presence("alice", 2).await;
    let kick = "/v1/apps/demo/users/alice/kick";

    // Bad device ids and unknown parameters are refused; nothing is closed.
    for query in ["?device=", "?device=a%01b", "?devices=phone"] {
        let reply = http
            .post_raw(&format!("{kick}{query}"), Some(API_KEY), "")
            .await;
        assert_error(&reply, 400);
    }
    let reply = http
        .post_raw(&format!("{kick}?device=tablet"), Some(API_KEY), "")
        .await;
    assert_eq!(
        (reply.status, &reply.body["kicked"]),
        (200, &Value::from(0))
    );

    let reply = http
        .post_raw(
            &format!("{kick}?device=phone%201%2F%C3%A9%26x"),
            Some(API_KEY),
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["kicked"], 1);
    phone.expect_disconnect(tether_proto::Code::KICKED).await;
    let presence = http.wait_presence("alice", 1).await;
    assert_eq!(presence["connections"][0]["device"], "laptop", "{presence}");
    // The other device still gets what is pushed.
    http.push(OK_BODY).await;
    expect_push(laptop.frame().await);

    // Without a device, every connection of the user.
    assert_eq!(http.kick("alice").await["kicked"], 1);
    laptop.expect_disconnect(tether_proto::Code::KICKED).await;
}
