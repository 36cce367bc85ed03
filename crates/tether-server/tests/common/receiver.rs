//! A business webhook for the tests: a real HTTP server on port 0 that records every request
//! and answers as the test scripts it (a status and body per request, or hold the request
//! until released).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::WAIT;

/// How the webhook answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status, content type and body.
    Reply(u16, &'static str, String),
    /// Wait until [`Receiver::release`], then answer 200 `{}`.
    Hold,
}

impl Answer {
    pub fn json(status: u16, body: &str) -> Answer {
        Answer::Reply(status, "application/json", body.to_owned())
    }
}

/// A request the webhook received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub json: Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// Recomputes the signature the way the README tells a business to, and checks the
    /// timestamp is within a minute of now.
    pub fn assert_signed_with(&self, secret: &str) {
        let timestamp = self.header("x-tether-timestamp");
        let ts: u64 = timestamp.parse().expect("a numeric timestamp");
        let now = tether_core::now_ms() / 1000;
        assert!(ts.abs_diff(now) <= 60, "timestamp {ts} is not now ({now})");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC key");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            self.header("x-tether-signature"),
            format!("v1={expected}"),
            "signature of {:?}",
            self.body
        );
        assert_eq!(self.header("x-tether-delivery"), self.json["id"]);
        assert_eq!(self.header("content-type"), "application/json");
    }
}

type Script = Box<dyn Fn(usize, &Seen) -> Answer + Send + Sync>;

struct Shared {
    seen: Mutex<Vec<Seen>>,
    count: watch::Sender<usize>,
    released: watch::Sender<bool>,
    script: Script,
}

/// The webhook server; stops when dropped.
pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// A webhook whose answer to the `n`th request (from 0) is `script(n, request)`.
    pub async fn start(script: impl Fn(usize, &Seen) -> Answer + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            released: watch::channel(false).0,
            script: Box::new(script),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, shared, task }
    }

    /// A webhook that always answers 200 with `{"ok":true}`.
    pub async fn ok() -> Self {
        Self::start(|_, _| Answer::json(200, r#"{"ok":true}"#)).await
    }

    /// Lets held requests (and later ones) through.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; panics after [`WAIT`].
    pub async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let mut count = self.shared.count.subscribe();
        tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} webhook requests after {WAIT:?}, expected {n}",
                    self.seen().len()
                )
            })
            .expect("receiver alive");
        self.seen()
    }

    /// Asserts no further request arrives within `quiet`, and returns them all.
    pub async fn settle(&self, n: usize, quiet: Duration) -> Vec<Seen> {
        self.wait_for(n).await;
        tokio::time::sleep(quiet).await;
        let seen = self.seen();
        assert_eq!(seen.len(), n, "unexpected requests: {seen:#?}");
        seen
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let seen = Seen {
        headers,
        body,
        json,
    };
    let n = {
        let mut all = shared.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    shared.count.send_replace(n + 1);
    match (shared.script)(n, &seen) {
        Answer::Reply(status, content_type, body) => (
            StatusCode::from_u16(status).expect("status"),
            [(header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response(),
        Answer::Hold => {
            let mut released = shared.released.subscribe();
            let _ = released.wait_for(|r| *r).await;
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response()
        }
    }
}
