//! The sending side: HTTP/1.1 keep-alive connections (hyper's connection-level client), one
//! per sender task and driven by it ([`crate::http::Inline`]), each with one request in flight.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Uri};
use tokio::task::JoinSet;

use super::{Args, Shared, json_u64, json_u64_sum};

/// Longest a request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the senders need, fixed for the run.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) http: SocketAddr,
    pub(super) push_uri: Uri,
    pub(super) host: HeaderValue,
    pub(super) auth: HeaderValue,
    pub(super) qos: u8,
    pub(super) users_per_request: u64,
    /// Batches of this many single-user pushes instead (`POST .../push/batch`).
    pub(super) batch: Option<u64>,
    /// Round-robin runs over u0 .. u(space-1).
    pub(super) space: u64,
    pub(super) payload_bytes: usize,
    /// Requests per second: request k is due at `start + k / rate` (`None`: as fast as
    /// possible).
    pub(super) rate: Option<f64>,
    pub(super) start: Instant,
    pub(super) end: Instant,
    pub(super) next_slot: AtomicU64,
    pub(super) next_user: AtomicU64,
}

/// One sender: its own HTTP connection, one request in flight, until the window ends.
pub(super) async fn send_loop(plan: &Plan, shared: &Shared, worker: usize) {
    let mut sender: Option<crate::http::Inline> = None;
    let mut body = Vec::with_capacity(256 + plan.payload_bytes);
    loop {
        if let Some(rate) = plan.rate {
            let slot = plan.next_slot.fetch_add(1, Ordering::Relaxed);
            let due = plan.start + Duration::from_secs_f64(slot as f64 / rate);
            if due >= plan.end {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() >= plan.end {
            return;
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match crate::http::Inline::connect(plan.http).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    Shared::count(&shared.errors, format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let first = plan
            .next_user
            .fetch_add(plan.per_request(), Ordering::Relaxed);
        let t = shared.clock.now_us();
        let expected = build_body(&mut body, plan, first, t, shared.connected);
        let request = Request::builder()
            .method(Method::POST)
            .uri(plan.push_uri.clone())
            .header(header::HOST, plan.host.clone())
            .header(header::AUTHORIZATION, plan.auth.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(Full::new(Bytes::copy_from_slice(&body)))
            .expect("the request's parts are valid");
        let result = tokio::time::timeout(REQUEST_TIMEOUT, s.call(request)).await;
        let took = shared.clock.now_us().saturating_sub(t);
        let in_window = shared.in_window(t);
        let failure = match result {
            Ok(Ok(crate::http::Answer {
                status,
                body: answer,
                ..
            })) if status.is_success() => {
                shared.requests_ok.fetch_add(1, Ordering::Relaxed);
                shared.expected.fetch_add(expected, Ordering::Relaxed);
                if let Some(phase) = shared.phase(t) {
                    shared.api_latency[phase].record_one(worker, took);
                }
                // A batch's pushes that failed alone: counted as errors, not messages (and
                // their deliveries, if they were to connected users, show as missing).
                let failed = match plan.batch {
                    Some(_) => json_u64_sum(&answer, b"\"status\":").1,
                    None => 0,
                };
                if in_window {
                    shared.win_requests_ok.fetch_add(1, Ordering::Relaxed);
                    shared
                        .win_messages
                        .fetch_add(plan.per_request() - failed, Ordering::Relaxed);
                    shared.win_expected.fetch_add(expected, Ordering::Relaxed);
                    let routed = match plan.batch {
                        Some(_) => json_u64_sum(&answer, b"\"connections\":").0,
                        None => json_u64(&answer, b"\"connections\":").unwrap_or(0),
                    };
                    shared.win_routed.fetch_add(routed, Ordering::Relaxed);
                }
                for _ in 0..failed {
                    Shared::count(&shared.errors, "a push of a batch failed".to_owned());
                }
                None
            }
            Ok(Ok(crate::http::Answer {
                status,
                body: answer,
                ..
            })) => Some(crate::http::error_key(status, &answer)),
            Ok(Err(e)) => {
                sender = None;
                Some(format!("http: {e}"))
            }
            Err(_) => {
                sender = None;
                Some("timeout".to_owned())
            }
        };
        if let Some(key) = failure {
            if in_window {
                shared.win_requests_failed.fetch_add(1, Ordering::Relaxed);
            }
            Shared::count(&shared.errors, key);
        }
    }
}

impl Plan {
    /// Messages one request carries.
    pub(super) fn per_request(&self) -> u64 {
        self.batch.unwrap_or(self.users_per_request)
    }
}

/// Writes the push request for users `first ..` (round-robin) sent at `t` into `body`;
/// returns how many of its users are connected.
fn build_body(body: &mut Vec<u8>, plan: &Plan, first: u64, t: u64, connected: u64) -> u64 {
    body.clear();
    if let Some(n) = plan.batch {
        return build_batch(body, plan, n, first, t, connected);
    }
    body.extend_from_slice(b"{\"users\":[");
    let mut expected = 0;
    for i in 0..plan.users_per_request {
        let user = (first + i) % plan.space;
        if user < connected {
            expected += 1;
        }
        if i > 0 {
            body.push(b',');
        }
        // Writing to a Vec cannot fail.
        let _ = write!(body, "\"u{user}\"");
    }
    let _ = write!(body, "],\"qos\":{},\"payload\":", plan.qos);
    write_payload(body, t, plan.payload_bytes);
    body.push(b'}');
    expected
}

/// Writes a batch of `n` single-user pushes to users `first ..` (round-robin) sent at `t`;
/// returns how many of its users are connected.
fn build_batch(body: &mut Vec<u8>, plan: &Plan, n: u64, first: u64, t: u64, connected: u64) -> u64 {
    body.extend_from_slice(b"{\"pushes\":[");
    let mut expected = 0;
    for i in 0..n {
        let user = (first + i) % plan.space;
        if user < connected {
            expected += 1;
        }
        if i > 0 {
            body.push(b',');
        }
        let _ = write!(
            body,
            "{{\"user\":\"u{user}\",\"qos\":{},\"payload\":",
            plan.qos
        );
        write_payload(body, t, plan.payload_bytes);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    expected
}

/// `{"t":<t>,"pad":"xx…"}`, padded to `size` bytes when that is room enough.
fn write_payload(out: &mut Vec<u8>, t: u64, size: usize) {
    let start = out.len();
    let _ = write!(out, "{{\"t\":{t},\"pad\":\"");
    const TAIL: usize = 2; // `"}`
    let pad = size.saturating_sub(out.len() - start + TAIL);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Each user's inbox head (the seq its connection resumes at), read from the API with a few
/// connections at once.
pub(super) async fn inbox_heads(
    args: &Args,
    host: &HeaderValue,
    auth: &HeaderValue,
    connected: u64,
) -> anyhow::Result<Vec<u64>> {
    const PARALLEL: u64 = 16;
    let mut tasks = JoinSet::new();
    for lane in 0..PARALLEL.min(connected) {
        let (http, app) = (args.http, args.app.clone());
        let (host, auth) = (host.clone(), auth.clone());
        tasks.spawn(async move {
            let mut sender = crate::http::connect(http).await?;
            let mut heads = Vec::new();
            for n in (lane..connected).step_by(PARALLEL as usize) {
                let request = Request::builder()
                    .method(Method::GET)
                    .uri(format!("/v1/apps/{app}/users/u{n}/messages?limit=1"))
                    .header(header::HOST, host.clone())
                    .header(header::AUTHORIZATION, auth.clone())
                    .body(Full::new(Bytes::new()))?;
                let crate::http::Answer { status, body, .. } =
                    crate::http::call(&mut sender, request).await?;
                if !status.is_success() {
                    bail!(
                        "GET /v1/apps/{app}/users/u{n}/messages: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let head = json_u64(&body, b"\"head\":")
                    .with_context(|| format!("no head in {}", String::from_utf8_lossy(&body)))?;
                heads.push((n, head));
            }
            anyhow::Ok(heads)
        });
    }
    let mut heads = vec![0; connected as usize];
    while let Some(lane) = tasks.join_next().await {
        for (n, head) in lane?? {
            heads[n as usize] = head;
        }
    }
    Ok(heads)
}

#[cfg(test)]
mod tests {
    use super::super::json_u64;
    use super::*;

    #[test]
    fn payload_has_the_requested_size() {
        for size in [0, 10, 31, 100, 1000] {
            let mut out = Vec::new();
            write_payload(&mut out, 1_763_700_000_000_000, size);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["t"], 1_763_700_000_000_000_u64);
            assert_eq!(out.len(), size.max(31));
            assert_eq!(json_u64(&out, b"{\"t\":"), Some(1_763_700_000_000_000));
        }
    }
}
