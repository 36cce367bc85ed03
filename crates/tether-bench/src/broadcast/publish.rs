//! The publishing side: one [`Publisher`] per connection, each with one publish in flight,
//! taking its turns from a shared schedule (publish k is due at `start + k / rate`).
//!
//! tether and Nchan answer each publish over HTTP (tether once the fan-out is queued, Nchan
//! once it is done), so several publishers run at once; Mosquitto and the bare writer take
//! fire-and-forget messages on one stream, where a publish is done once the kernel took it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{self, Answer};
use crate::payload::{self, Fields};
use crate::stats::{Clock, Recorder};
use crate::target::{Kind, Target, TetherPublish, bare, mqtt};

/// Longest a publish may take before it counts as failed (and its connection is replaced).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a publisher honours a `Retry-After` for before trying again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One publishing connection.
#[derive(Debug)]
pub struct Publisher {
    conn: Conn,
    /// Request body (tether wraps the payload in JSON) or framed message, reused.
    out: BytesMut,
}

#[derive(Debug)]
enum Conn {
    Http {
        sender: Option<http::Sender>,
        addr: std::net::SocketAddr,
        uri: Uri,
        host: HeaderValue,
        auth: Option<HeaderValue>,
        /// tether: the payload goes inside `{"payload": ..., "qos": 0}`.
        wrap: bool,
        /// tether: the body's `qos` (a topic's publish; a broadcast's takes none).
        qos: Option<u8>,
        /// The answer's field that counts the recipients.
        count_field: &'static [u8],
    },
    Mqtt {
        stream: TcpStream,
        topic: String,
    },
    Bare {
        stream: TcpStream,
    },
}

/// Why a publish failed: the key it is counted under, and how long to back off.
#[derive(Debug)]
pub struct Failure {
    pub key: String,
    pub retry_after: Option<Duration>,
}

impl Publisher {
    pub async fn open(target: &Target) -> anyhow::Result<Publisher> {
        let conn = match target.kind {
            Kind::Tether | Kind::Nchan => {
                let uri = match (target.kind, target.tether_publish) {
                    (Kind::Tether, TetherPublish::Topic) => {
                        format!("/v1/apps/{}/topics/{}/publish", target.app, target.topic)
                    }
                    (Kind::Tether, TetherPublish::Broadcast) => {
                        format!("/v1/apps/{}/broadcast", target.app)
                    }
                    _ => format!("/pub?id={}", target.topic),
                };
                let auth = match target.kind {
                    Kind::Tether => Some(
                        HeaderValue::from_str(&format!("Bearer {}", target.api_key))
                            .context("the API key is not a valid header value")?,
                    ),
                    _ => None,
                };
                Conn::Http {
                    sender: Some(http::connect(target.publish_addr).await?),
                    addr: target.publish_addr,
                    uri: uri.parse()?,
                    host: HeaderValue::from_str(&target.publish_addr.to_string())?,
                    auth,
                    wrap: target.kind == Kind::Tether,
                    qos: (target.tether_publish == TetherPublish::Topic).then_some(target.qos),
                    count_field: match (target.kind, target.tether_publish) {
                        (Kind::Tether, TetherPublish::Broadcast) => b"\"connections\"",
                        _ => b"\"subscribers\"",
                    },
                }
            }
            Kind::Mosquitto => {
                let mut stream = TcpStream::connect(target.publish_addr).await?;
                stream.set_nodelay(true)?;
                let mut out = BytesMut::new();
                mqtt::connect(&mut out, &format!("bench-pub-{}", std::process::id()), 0);
                stream.write_all(&out).await?;
                let mut buf = BytesMut::with_capacity(64);
                loop {
                    if let Some(fixed) = mqtt::check(&buf, 1024)? {
                        if fixed.kind == mqtt::CONNACK && buf.get(fixed.header + 1) == Some(&0) {
                            break;
                        }
                        bail!("the broker refused the publisher's CONNECT");
                    }
                    if stream.read_buf(&mut buf).await? == 0 {
                        bail!("the broker closed the publisher's connection");
                    }
                }
                Conn::Mqtt {
                    stream,
                    topic: target.topic.clone(),
                }
            }
            Kind::Bare => {
                let mut stream = TcpStream::connect(target.publish_addr).await?;
                stream.set_nodelay(true)?;
                stream.write_all(&[bare::PUBLISHER]).await?;
                Conn::Bare { stream }
            }
        };
        Ok(Publisher {
            conn,
            out: BytesMut::with_capacity(4096),
        })
    }

    /// Publishes one message. `Ok(Some(n))`: the server says it reached `n` subscribers.
    pub async fn publish(&mut self, message: &[u8]) -> Result<Option<u64>, Failure> {
        let io = |e: std::io::Error| Failure {
            key: format!("io: {e}"),
            retry_after: None,
        };
        match &mut self.conn {
            Conn::Http {
                sender,
                addr,
                uri,
                host,
                auth,
                wrap,
                qos,
                count_field,
            } => {
                let body = if *wrap {
                    self.out.clear();
                    self.out.extend_from_slice(b"{\"payload\":");
                    self.out.extend_from_slice(message);
                    match qos {
                        Some(1) => self.out.extend_from_slice(b",\"qos\":1"),
                        Some(_) => self.out.extend_from_slice(b",\"qos\":0"),
                        None => {}
                    }
                    self.out.extend_from_slice(b"}");
                    Bytes::copy_from_slice(&self.out)
                } else {
                    Bytes::copy_from_slice(message)
                };
                let mut request = Request::builder()
                    .method(Method::POST)
                    .uri(uri.clone())
                    .header(header::HOST, host.clone())
                    .header(header::ACCEPT, HeaderValue::from_static("application/json"));
                if *wrap {
                    request = request.header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                if let Some(auth) = auth {
                    request = request.header(header::AUTHORIZATION, auth.clone());
                }
                let request = request
                    .body(Full::new(body))
                    .expect("the request's parts are valid");
                let s = match sender {
                    Some(s) => s,
                    None => sender.insert(http::connect(*addr).await.map_err(|e| Failure {
                        key: format!("connect: {e}"),
                        retry_after: Some(Duration::from_millis(100)),
                    })?),
                };
                match tokio::time::timeout(PUBLISH_TIMEOUT, http::call(s, request)).await {
                    Ok(Ok(Answer { status, body, .. })) if status.is_success() => {
                        Ok(payload::json_u64(&body, count_field))
                    }
                    Ok(Ok(Answer {
                        status,
                        body,
                        retry_after,
                    })) => Err(Failure {
                        key: http::error_key(status, &body),
                        retry_after: retry_after.or(Some(Duration::from_millis(100))),
                    }),
                    Ok(Err(e)) => {
                        *sender = None;
                        Err(Failure {
                            key: format!("http: {e}"),
                            retry_after: None,
                        })
                    }
                    Err(_) => {
                        *sender = None;
                        Err(Failure {
                            key: "timeout".into(),
                            retry_after: None,
                        })
                    }
                }
            }
            Conn::Mqtt { stream, topic } => {
                self.out.clear();
                mqtt::publish(&mut self.out, topic, message);
                stream.write_all(&self.out).await.map_err(io)?;
                Ok(None)
            }
            Conn::Bare { stream } => {
                let mut framed = Vec::with_capacity(4 + message.len());
                bare::frame(&mut framed, message);
                stream.write_all(&framed).await.map_err(io)?;
                Ok(None)
            }
        }
    }
}

/// One step's schedule: `rate` publishes per second from `start` to `end`; those sent from
/// `measure_from` on carry the step's slot.
#[derive(Debug)]
pub struct Schedule {
    pub rate: f64,
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
    pub slot: u8,
    pub payload_bytes: usize,
    pub next: AtomicU64,
}

/// What the publishers of one step counted.
#[derive(Debug)]
pub struct Counts {
    /// Publishes answered (or written), whole step.
    pub accepted: AtomicU64,
    /// Of those, sent in the measured window.
    pub accepted_in_window: AtomicU64,
    pub failed_in_window: AtomicU64,
    /// Sum of the subscriber counts the server's answers gave, for the window's publishes.
    pub routed: AtomicU64,
    pub answered_with_count: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Time to the server's answer, µs (HTTP targets), window only.
    pub latency: Recorder,
}

impl Counts {
    pub fn new() -> Self {
        Counts {
            accepted: AtomicU64::new(0),
            accepted_in_window: AtomicU64::new(0),
            failed_in_window: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            answered_with_count: AtomicU64::new(0),
            errors: Mutex::default(),
            latency: Recorder::new(4),
        }
    }
}

/// Publishes on `schedule` until it ends; returns the publisher for the next step.
pub async fn publish_loop(
    mut publisher: Publisher,
    schedule: &Schedule,
    clock: &Clock,
    numbers: &AtomicU64,
    counts: &Counts,
    lane: usize,
) -> Publisher {
    let mut message = Vec::with_capacity(schedule.payload_bytes + 64);
    loop {
        let k = schedule.next.fetch_add(1, Ordering::Relaxed);
        let due = schedule.start + Duration::from_secs_f64(k as f64 / schedule.rate);
        if due >= schedule.end {
            return publisher;
        }
        tokio::time::sleep_until(due.into()).await;
        let measured = Instant::now() >= schedule.measure_from;
        let t = clock.now_us();
        let fields = Fields {
            t,
            n: numbers.fetch_add(1, Ordering::Relaxed),
            s: if measured { schedule.slot } else { 0 },
        };
        payload::write(&mut message, fields, schedule.payload_bytes);
        match publisher.publish(&message).await {
            Ok(routed) => {
                counts.accepted.fetch_add(1, Ordering::Relaxed);
                if measured {
                    counts.accepted_in_window.fetch_add(1, Ordering::Relaxed);
                    counts
                        .latency
                        .record_one(lane, clock.now_us().saturating_sub(t));
                    if let Some(n) = routed {
                        counts.routed.fetch_add(n, Ordering::Relaxed);
                        counts.answered_with_count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(failure) => {
                if measured {
                    counts.failed_in_window.fetch_add(1, Ordering::Relaxed);
                }
                *counts
                    .errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(failure.key)
                    .or_default() += 1;
                if let Some(wait) = failure.retry_after {
                    tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
                }
            }
        }
    }
}
