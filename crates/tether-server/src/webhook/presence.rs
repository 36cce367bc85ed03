//! Online / offline events: who has connections on this node, and the flusher that sends the
//! events to the app's webhook in batches.
//!
//! # Guarantees
//! At least once while the node runs, possibly late: a batch is retried until the webhook
//! answers a status below 500. Exceptions, each counted: an event that finds the app's queue
//! full is dropped (`tether_webhook_dropped_total{kind="presence"}`), a batch the webhook
//! refuses with a 4xx is not sent again, and what is still queued when the node exits is lost
//! (the node tries to send it during its shutdown grace period).
//!
//! Every event has `seq`, strictly increasing over all the events of the node, so that for one
//! user a later transition always has a higher `seq`: the business orders a user's events by
//! it, whatever order the POSTs arrive in. It is `max(previous + 1, now_ms * 1000)`, so it
//! keeps increasing across restarts of the node (unless its clock goes back). It is per node:
//! compare it only between events with the same `node`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tether_core::{ConnId, DeviceId, UserId};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Target;
use super::post::{Outcome, Poster};
use crate::metrics::HookMetrics;

/// Shards of the per-user connection counts: a reconnect storm takes many locks, not one.
const SHARDS: usize = 16;

/// An online or offline transition of one user on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub online: bool,
    pub user: UserId,
    /// The connection that made the transition: the user's first one, or its last one.
    pub device: DeviceId,
    pub conn: ConnId,
    pub seq: u64,
    pub ts_ms: u64,
}

/// Event sequence numbers of the node (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct SeqGen(AtomicU64);

impl SeqGen {
    pub fn next(&self, now_ms: u64) -> u64 {
        let floor = now_ms.saturating_mul(1000);
        let mut prev = self.0.load(Ordering::Relaxed);
        loop {
            let next = prev.saturating_add(1).max(floor);
            match self
                .0
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }
}

/// One app's users with connections on this node, and its bounded event queue.
#[derive(Debug)]
pub(crate) struct Presence {
    shards: Box<[Mutex<HashMap<UserId, usize>>]>,
    hasher: std::collections::hash_map::RandomState,
    events: mpsc::Sender<Event>,
    seq: Arc<SeqGen>,
    metrics: HookMetrics,
}

impl Presence {
    pub fn new(events: mpsc::Sender<Event>, seq: Arc<SeqGen>, metrics: HookMetrics) -> Self {
        Presence {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            events,
            seq,
            metrics,
        }
    }

    fn shard(&self, user: &UserId) -> &Mutex<HashMap<UserId, usize>> {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    /// A connection of `user` opened: `online` when it is the user's first on this node.
    /// The event queue's depth and capacity, and the metrics: for the admin stats.
    pub fn queue(&self) -> (usize, usize, &HookMetrics) {
        let capacity = self.events.max_capacity();
        (capacity - self.events.capacity(), capacity, &self.metrics)
    }

    pub fn connected(&self, user: &UserId, device: &DeviceId, conn: ConnId) {
        let mut shard = self.shard(user).lock().unwrap_or_else(|e| e.into_inner());
        let n = shard.entry(user.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            // Under the lock: the user's events take their seqs in the order of the counts.
            self.emit(true, user, device, conn);
        }
    }

    /// A connection of `user` closed: `offline` when it was the user's last on this node.
    pub fn disconnected(&self, user: &UserId, device: &DeviceId, conn: ConnId) {
        let mut shard = self.shard(user).lock().unwrap_or_else(|e| e.into_inner());
        let Some(n) = shard.get_mut(user) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            shard.remove(user);
            self.emit(false, user, device, conn);
        }
    }

    fn emit(&self, online: bool, user: &UserId, device: &DeviceId, conn: ConnId) {
        let ts_ms = tether_core::now_ms();
        let event = Event {
            online,
            user: user.clone(),
            device: device.clone(),
            conn,
            seq: self.seq.next(ts_ms),
            ts_ms,
        };
        match self.events.try_send(event) {
            Ok(()) => self.metrics.queued.increment(1.0),
            Err(_) => self.metrics.dropped.increment(1),
        }
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// What the webhook receives: one POST per batch.
#[derive(Serialize)]
struct PresenceBody<'a> {
    #[serde(rename = "type")]
    kind_of_body: &'static str,
    id: &'a str,
    app: &'a str,
    node: &'a str,
    events: Vec<EventOut<'a>>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    event: &'static str,
    user: &'a str,
    device: &'a str,
    conn_id: u64,
    seq: u64,
    ts_ms: u64,
}

fn body(target: &Target, id: &str, events: &[Event]) -> Bytes {
    let body = PresenceBody {
        kind_of_body: "presence",
        id,
        app: target.app.as_str(),
        node: target.node.as_str(),
        events: events
            .iter()
            .map(|e| EventOut {
                event: if e.online { "online" } else { "offline" },
                user: e.user.as_str(),
                device: e.device.as_str(),
                conn_id: e.conn.0,
                seq: e.seq,
                ts_ms: e.ts_ms,
            })
            .collect(),
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// One app's flusher: takes events off the queue in batches of at most `batch` (waiting at
/// most `interval` after a batch's first event for more), and delivers one batch at a time,
/// so that the business sees at most one presence POST per app in flight from a node.
#[derive(Debug)]
pub(crate) struct Flusher {
    pub target: Arc<Target>,
    pub poster: Arc<Poster>,
    pub events: mpsc::Receiver<Event>,
    pub batch: usize,
    pub interval: Duration,
    pub metrics: HookMetrics,
    /// Once cancelled, send what is queued without waiting, then end.
    pub finishing: CancellationToken,
    pub stop: CancellationToken,
}

impl Flusher {
    pub async fn run(mut self) {
        let mut batch = Vec::new();
        while self.fill(&mut batch).await {
            self.metrics.queued.decrement(batch.len() as f64);
            self.send(&batch).await;
            batch.clear();
        }
    }

    /// Waits for a batch; false when the flusher should end.
    async fn fill(&mut self, batch: &mut Vec<Event>) -> bool {
        let first = tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            event = self.events.recv() => event,
            () = self.finishing.cancelled() => None,
        };
        let Some(first) = first else {
            return false;
        };
        batch.push(first);
        let deadline = Instant::now() + self.interval;
        while batch.len() < self.batch {
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(event) => batch.push(event),
                    None => break,
                },
                () = sleep_until(deadline) => break,
                () = self.finishing.cancelled() => break,
            }
        }
        true
    }

    async fn send(&self, batch: &[Event]) {
        let t = &self.target;
        let delivery = t.post("presence", |id| body(t, id, batch));
        let n = batch.len() as u64;
        match self
            .poster
            .deliver(&delivery, None, &self.stop, &self.metrics.retries)
            .await
        {
            Outcome::Answered(answer) if answer.is_success() => self.metrics.sent.increment(n),
            Outcome::Answered(answer) => {
                warn!(app = %t.app, delivery = %delivery.id, status = answer.status, events = n,
                    "the webhook refused presence events; they are not sent again");
                self.metrics.failed.increment(n);
            }
            Outcome::Unreachable(_) | Outcome::Stopped => self.metrics.failed.increment(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(queue: usize) -> (Presence, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(queue);
        let metrics = HookMetrics::new("presence-unit", "presence");
        (Presence::new(tx, Arc::default(), metrics), rx)
    }

    #[test]
    fn first_connection_and_last_disconnection_only() {
        let (p, mut rx) = presence(16);
        let (alice, bob) = (UserId::from("alice"), UserId::from("bob"));
        let d = DeviceId::from("d");
        p.connected(&alice, &d, ConnId(1));
        p.connected(&alice, &d, ConnId(2));
        p.connected(&bob, &d, ConnId(3));
        p.disconnected(&alice, &d, ConnId(1));
        p.disconnected(&alice, &d, ConnId(2));
        p.connected(&alice, &d, ConnId(4));
        // A close the tracker never saw open (not counted) changes nothing.
        p.disconnected(&UserId::from("carol"), &d, ConnId(5));
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push((e.online, e.user.to_string(), e.conn.0, e.seq));
        }
        let summary: Vec<_> = got
            .iter()
            .map(|(o, u, c, _)| (*o, u.as_str(), *c))
            .collect();
        assert_eq!(
            summary,
            [
                (true, "alice", 1),
                (true, "bob", 3),
                (false, "alice", 2),
                (true, "alice", 4)
            ]
        );
        assert!(got.windows(2).all(|w| w[0].3 < w[1].3), "{got:?}");
        assert_eq!(p.users(), 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (p, mut rx) = presence(2);
        let d = DeviceId::from("d");
        for i in 0..5 {
            p.connected(&UserId::from(format!("u{i}").as_str()), &d, ConnId(i));
        }
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 2, "the queue holds two; three were dropped");
        // The counts still follow the connections: the users are known to be online.
        assert_eq!(p.users(), 5);
    }

    #[test]
    fn seqs_increase_and_follow_the_clock() {
        let seq = SeqGen::default();
        let a = seq.next(1_000);
        assert_eq!(a, 1_000_000);
        assert_eq!(seq.next(1_000), 1_000_001);
        assert_eq!(
            seq.next(999),
            1_000_002,
            "a clock going back does not go back"
        );
        assert_eq!(seq.next(2_000), 2_000_000);
    }
}
