//! Upstream data: one app's bounded queue, its fixed pool of workers, and the answer that goes
//! back to the sending connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tether_core::{AppId, ConnId, DeviceId, NodeId, Transport, UserId};
use tether_proto::{Body, Code, ErrorBody, Frame, PayloadKind, UpstreamReply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Target;
use super::post::{Outcome, Poster};
use crate::link::{Enqueued, Links};
use crate::metrics::HookMetrics;

/// One upstream frame on its way to the webhook.
#[derive(Debug)]
pub(crate) struct Job {
    pub conn: ConnId,
    pub request: u32,
    pub user: UserId,
    pub device: DeviceId,
    /// The sending connection's transport (`mqtt` for a device's PUBLISH).
    pub transport: Transport,
    pub kind: String,
    pub payload_kind: PayloadKind,
    pub payload: Bytes,
    /// When the frame arrived, in milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// The connection's place among its upstreams in flight, given back when the job ends.
    pub ticket: Ticket,
    /// A will (docs/mqtt.md, section 9): its connection is gone, nobody gets the answer.
    pub will: bool,
}

/// Upstreams in flight per connection, so that one client cannot take an app's whole queue.
///
/// # Invariants
/// A connection has an entry only while it has a [`Ticket`]: the map holds at most as many
/// entries as there are jobs queued or being delivered.
#[derive(Debug)]
pub(crate) struct InFlight {
    max: usize,
    conns: Mutex<HashMap<ConnId, usize>>,
}

/// One upstream of a connection in flight; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Ticket {
    in_flight: Arc<InFlight>,
    conn: ConnId,
}

impl InFlight {
    pub fn new(max: usize) -> Arc<InFlight> {
        Arc::new(InFlight {
            max,
            conns: Mutex::default(),
        })
    }

    /// A place for one more upstream of `conn`, or `Err(max)` when it has `max` already.
    pub fn take(self: &Arc<Self>, conn: ConnId) -> Result<Ticket, usize> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let n = conns.entry(conn).or_insert(0);
        if *n >= self.max {
            return Err(self.max);
        }
        *n += 1;
        Ok(Ticket {
            in_flight: self.clone(),
            conn,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut conns = self
            .in_flight
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = conns.get_mut(&self.conn) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.conn);
            }
        }
    }
}

/// What the webhook receives for one upstream frame.
#[derive(Serialize)]
struct UpstreamBody<'a> {
    #[serde(rename = "type")]
    kind_of_body: &'static str,
    id: &'a str,
    app: &'a str,
    kind: &'a str,
    user: &'a str,
    device: &'a str,
    transport: &'static str,
    conn_id: u64,
    node: &'a str,
    request_id: u32,
    ts_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    will: bool,
}

impl Job {
    /// The POST body: the payload embedded when it is JSON text of kind JSON, else base64
    /// (the protocol's JSON encoding does the same).
    fn body(&self, app: &AppId, node: &NodeId, id: &str) -> Bytes {
        let json = match self.payload_kind {
            PayloadKind::Json => std::str::from_utf8(&self.payload)
                .ok()
                .and_then(|s| serde_json::from_str::<&RawValue>(s).ok()),
            PayloadKind::Binary => None,
        };
        let payload_base64 = match json {
            Some(_) => None,
            None => Some(base64::engine::general_purpose::STANDARD.encode(&self.payload)),
        };
        let body = UpstreamBody {
            kind_of_body: "upstream",
            id,
            app: app.as_str(),
            kind: &self.kind,
            user: self.user.as_str(),
            device: self.device.as_str(),
            transport: self.transport.as_str(),
            conn_id: self.conn.0,
            node: node.as_str(),
            request_id: self.request,
            ts_ms: self.received_ms,
            payload: json,
            payload_base64,
            will: self.will,
        };
        // Serialising borrowed strings and raw JSON cannot fail.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// One of an app's upstream workers. The pool shares one receiver: a worker takes the next
/// job when it is free, so a slow delivery holds one worker, not the queue.
#[derive(Debug)]
pub(crate) struct Worker {
    pub target: Arc<Target>,
    pub poster: Arc<Poster>,
    pub links: Arc<dyn Links>,
    pub jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    pub metrics: HookMetrics,
    pub retries: u32,
    /// Once cancelled, the worker ends when the queue is empty.
    pub finishing: CancellationToken,
    /// Ends the worker at once, abandoning its delivery.
    pub stop: CancellationToken,
}

impl Worker {
    pub async fn run(self) {
        while let Some(job) = self.next().await {
            self.metrics.queued.decrement(1.0);
            self.deliver(job).await;
        }
    }

    async fn next(&self) -> Option<Job> {
        let mut jobs = tokio::select! {
            biased;
            () = self.stop.cancelled() => return None,
            jobs = self.jobs.lock() => jobs,
        };
        tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            job = jobs.recv() => job,
            () = self.finishing.cancelled() => None,
        }
    }

    async fn deliver(&self, job: Job) {
        let t = &self.target;
        let delivery = t.post("upstream", |id| job.body(&t.app, &t.node, id));
        let outcome = self
            .poster
            .deliver(
                &delivery,
                Some(self.retries),
                &self.stop,
                &self.metrics.retries,
            )
            .await;
        let body = match outcome {
            Outcome::Stopped => return,
            Outcome::Answered(answer) => {
                if answer.is_success() {
                    self.metrics.sent.increment(1);
                } else {
                    self.metrics.failed.increment(1);
                    debug!(app = %t.app, delivery = %delivery.id, status = answer.status, "upstream refused");
                }
                match answer.body {
                    Some(payload) => Body::UpstreamReply(UpstreamReply {
                        app: t.app.to_string(),
                        status: answer.status,
                        kind: if answer.json {
                            PayloadKind::Json
                        } else {
                            PayloadKind::Binary
                        },
                        payload,
                    }),
                    None => Body::Error(ErrorBody {
                        code: Code::UPSTREAM_FAILED,
                        message: format!(
                            "the webhook answered {} with a body larger than {} bytes",
                            answer.status, self.poster.max_body
                        ),
                    }),
                }
            }
            Outcome::Unreachable(reason) => {
                self.metrics.failed.increment(1);
                debug!(app = %t.app, delivery = %delivery.id, %reason, "upstream undelivered");
                Body::Error(ErrorBody {
                    code: Code::UPSTREAM_FAILED,
                    message: format!(
                        "the app's webhook did not answer ({} attempts); it may or may not \
                         have received the data",
                        self.retries + 1
                    ),
                })
            }
        };
        // The place is free before the client can see the answer and send the next one.
        let Job {
            conn,
            request,
            ticket,
            will,
            ..
        } = job;
        drop(ticket);
        if will {
            return;
        }
        let reached = self.links.get(conn).is_some_and(|handle| {
            let frame = handle.encoding().encode(&Frame { id: request, body });
            handle.enqueue(frame) == Enqueued::Queued
        });
        if !reached {
            self.metrics.replies_lost.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_bounded_per_connection_and_given_back() {
        let in_flight = InFlight::new(2);
        let a1 = in_flight.take(ConnId(1)).unwrap();
        let a2 = in_flight.take(ConnId(1)).unwrap();
        assert_eq!(in_flight.take(ConnId(1)).err(), Some(2));
        let b1 = in_flight.take(ConnId(2)).unwrap();
        drop(a1);
        let a3 = in_flight.take(ConnId(1)).unwrap();
        drop((a2, a3, b1));
        assert_eq!(in_flight.len(), 0, "entries leave with their last ticket");
    }

    #[test]
    fn body_embeds_json_and_encodes_the_rest() {
        let job = |kind, payload: &'static [u8]| Job {
            conn: ConnId(7),
            request: 5,
            user: UserId::from("alice"),
            device: DeviceId::from("d1"),
            transport: Transport::Mqtt,
            kind: "chat".into(),
            payload_kind: kind,
            payload: Bytes::from_static(payload),
            received_ms: 1_763_700_000_000,
            ticket: InFlight::new(1).take(ConnId(7)).unwrap(),
            will: false,
        };
        let (app, node) = (AppId::from("demo"), NodeId::from("n1"));
        let body = job(PayloadKind::Json, br#" {"text":"hi"} "#).body(&app, &node, "n1-1");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"type":"upstream","id":"n1-1","app":"demo","kind":"chat","user":"alice","device":"d1","transport":"mqtt","conn_id":7,"node":"n1","request_id":5,"ts_ms":1763700000000,"payload":{"text":"hi"}}"#
        );
        let body = job(PayloadKind::Json, b"{not json").body(&app, &node, "n1-2");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["payload_base64"], "e25vdCBqc29u");
        assert!(v.get("payload").is_none());
        let body = job(PayloadKind::Binary, b"\x00\x01").body(&app, &node, "n1-3");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["payload_base64"], "AAE=");
    }
}
