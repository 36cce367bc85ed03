//! The asker against a real HTTP webhook on port 0, which answers by topic.

use std::sync::Mutex;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tether_core::ConnId;

use super::*;
use crate::config::{AppConfig, Secret, TopicRule};
use crate::webhook::sign;

const SECRET: &str = "chat-secret-0123456789";

/// Every bound on a wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

/// Requests the webhook received, by topic; `false` when one was not signed right.
#[derive(Default)]
struct Seen {
    topics: Mutex<Vec<String>>,
    bad_signature: Mutex<bool>,
}

impl Seen {
    fn count(&self, topic: &str) -> usize {
        let topics = self.topics.lock().unwrap();
        topics.iter().filter(|t| *t == topic).count()
    }
}

/// The business: `yes*` allowed, `no` refused, `brief` allowed with `ttl_ms` 0, `long`
/// allowed for a day, `teapot` 418, `garbage` a 200 that is not an answer, `boom` 500,
/// `slow` never answered (within the tests).
async fn business(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let now = tether_core::now_ms() / 1000;
    let signed = sign::verify(
        SECRET.as_bytes(),
        header(sign::TIMESTAMP_HEADER),
        header(sign::SIGNATURE_HEADER),
        &body,
        now,
        Duration::from_secs(60),
    );
    let json: Value = serde_json::from_slice(&body).unwrap_or_default();
    if signed.is_err()
        || header(sign::EVENT_HEADER) != "subscribe_check"
        || json["id"] != header(sign::DELIVERY_HEADER)
    {
        *seen.bad_signature.lock().unwrap() = true;
    }
    let topic = json["topic"].as_str().unwrap_or("").to_owned();
    seen.topics.lock().unwrap().push(topic.clone());
    let ok = |body: &str| (StatusCode::OK, body.to_owned());
    match topic.as_str() {
        t if t.starts_with("yes") => ok(r#"{"allow":true}"#),
        "no" => ok(r#"{"allow":false,"why":"not a member"}"#),
        "brief" => ok(r#"{"allow":true,"ttl_ms":0}"#),
        "long" => ok(r#"{"allow":true,"ttl_ms":86400000}"#),
        "teapot" => (StatusCode::IM_A_TEAPOT, r#"{"allow":true}"#.to_owned()),
        "garbage" => ok("allowed, I suppose"),
        "boom" => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
        _ => {
            tokio::time::sleep(WAIT * 2).await;
            ok(r#"{"allow":true}"#)
        }
    }
}

/// A webhook on port 0, and the asker of app `chat` pointed at it.
async fn asker(settings: PermissionConfig) -> (Arc<dyn Asker>, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(business))
        .with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut config = Config::for_tests();
    let mut chat = AppConfig::new(
        "chat",
        Secret::new(SECRET),
        Secret::new("chat-api-key-0123456789"),
    );
    chat.webhook = Some(url);
    chat.topics.push(TopicRule {
        pattern: "*".into(),
        allow: TopicAccess::Webhook,
    });
    config.apps.push(chat);
    config.webhook.permission = settings;
    let mut askers = askers(&config).expect("askers");
    assert_eq!(askers.len(), 1, "only `chat` has a webhook rule");
    (askers.remove(&AppId::from("chat")).unwrap(), seen)
}

fn question(user: &str, topic: &str) -> Question {
    Question {
        app: AppId::from("chat"),
        user: UserId::from(user),
        device: tether_core::DeviceId::from("phone"),
        conn: ConnId(7),
        topic: TopicId::from(topic),
    }
}

/// What asking brings: `(verdict, whether the answer was known without asking)`.
async fn ask(asker: &Arc<dyn Asker>, user: &str, topic: &str) -> (Verdict, bool) {
    match asker.ask(question(user, topic)) {
        Asked::Known(verdict) => (verdict, true),
        Asked::Later(answer) => {
            let verdict = tokio::time::timeout(WAIT, answer)
                .await
                .expect("the deadline holds");
            (verdict, false)
        }
    }
}

#[tokio::test]
async fn answers_are_allowed_refused_or_unusable_and_only_answers_are_kept() {
    let (asker, seen) = asker(PermissionConfig::default()).await;
    let cases = [
        ("yes", Verdict::Allowed, true),
        ("no", Verdict::Refused, true),
        ("brief", Verdict::Allowed, false),
        ("teapot", Verdict::Unusable, false),
        ("garbage", Verdict::Unusable, false),
        ("boom", Verdict::Unreachable, false),
    ];
    for (topic, verdict, kept) in cases {
        assert_eq!(
            ask(&asker, "alice", topic).await,
            (verdict, false),
            "{topic}"
        );
        assert_eq!(
            ask(&asker, "alice", topic).await,
            (verdict, kept),
            "{topic}, again"
        );
        let posts = if kept { 1 } else { 2 };
        assert_eq!(seen.count(topic), posts, "{topic}");
    }
    // An answer is the user's: another user is asked about.
    assert_eq!(ask(&asker, "bob", "yes").await, (Verdict::Allowed, false));
    assert_eq!(seen.count("yes"), 2);
    assert!(
        !*seen.bad_signature.lock().unwrap(),
        "every POST signed like the others"
    );
}

#[tokio::test]
async fn a_webhook_that_does_not_answer_in_time_refuses_and_holds_its_place() {
    let settings = PermissionConfig {
        timeout: Duration::from_millis(200),
        concurrency: 1,
        ..PermissionConfig::default()
    };
    let (asker, seen) = asker(settings).await;
    let Asked::Later(mut slow) = asker.ask(question("alice", "slow")) else {
        panic!("nothing is known about `slow`");
    };
    // Polled until its POST is under way, then held unpolled: it keeps the only place.
    let first = tokio::time::timeout(Duration::from_millis(100), &mut slow).await;
    assert!(first.is_err(), "answered already: {first:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.count("slow") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the POST never came"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next question times out waiting for the place, unsent.
    let started = tokio::time::Instant::now();
    assert_eq!(
        ask(&asker, "alice", "yes").await,
        (Verdict::TimedOut, false)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    assert_eq!(seen.count("yes"), 0);
    // Dropping a question gives its place back.
    drop(slow);
    assert_eq!(ask(&asker, "alice", "yes").await, (Verdict::Allowed, false));
    // A webhook that never answers: refused at the deadline, and nothing is kept.
    let started = tokio::time::Instant::now();
    assert_eq!(
        ask(&asker, "alice", "slow").await,
        (Verdict::TimedOut, false)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    assert!(matches!(
        asker.ask(question("alice", "slow")),
        Asked::Later(_)
    ));
    assert_eq!(seen.count("slow"), 2);
}

#[tokio::test]
async fn answers_expire_after_their_lifetime_capped_by_max_ttl() {
    let settings = PermissionConfig {
        allow_ttl: Duration::from_millis(150),
        max_ttl: Duration::from_millis(600),
        ..PermissionConfig::default()
    };
    let (asker, seen) = asker(settings).await;
    assert_eq!(ask(&asker, "alice", "yes").await, (Verdict::Allowed, false));
    assert_eq!(
        ask(&asker, "alice", "long").await,
        (Verdict::Allowed, false)
    );
    assert_eq!(ask(&asker, "alice", "yes").await, (Verdict::Allowed, true));
    assert_eq!(ask(&asker, "alice", "long").await, (Verdict::Allowed, true));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!ask(&asker, "alice", "yes").await.1, "allow_ttl passed");
    assert!(ask(&asker, "alice", "long").await.1, "a day, cut to 600 ms");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(!ask(&asker, "alice", "long").await.1, "max_ttl passed");
    assert_eq!((seen.count("yes"), seen.count("long")), (2, 2));
}

#[tokio::test]
async fn without_a_cache_every_subscribe_asks() {
    let settings = PermissionConfig {
        cache_size: 0,
        ..PermissionConfig::default()
    };
    let (asker, seen) = asker(settings).await;
    for _ in 0..3 {
        assert_eq!(ask(&asker, "alice", "yes").await, (Verdict::Allowed, false));
    }
    assert_eq!(seen.count("yes"), 3);
}

#[test]
fn apps_without_a_webhook_rule_get_no_asker() {
    let mut config = Config::for_tests();
    config.apps[0].webhook = Some("http://127.0.0.1:9/hook".into());
    assert!(
        askers(&config).unwrap().is_empty(),
        "the demo app's rules are `open`"
    );
}

#[test]
fn the_body_names_the_question() {
    let body = body(&question("alice", "room.42"), "n1-5", &NodeId::from("n1"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "subscribe_check");
    assert_eq!(v["id"], "n1-5");
    assert_eq!(
        (
            &v["app"],
            &v["user"],
            &v["topic"],
            &v["device"],
            &v["conn_id"],
            &v["node"]
        ),
        (
            &Value::from("chat"),
            &Value::from("alice"),
            &Value::from("room.42"),
            &Value::from("phone"),
            &Value::from(7),
            &Value::from("n1")
        )
    );
    assert!(v["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
}
