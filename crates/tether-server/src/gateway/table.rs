//! The connection table: every connection of this node that completed its handshake, sharded
//! by connection id so that fan-out from several API workers does not serialise on one lock.
//! It is what the rest of the node knows of the gateway's connections ([`Links`]), and where
//! frames posted to an SSE stream's session find their connection ([`ConnTable::post`]).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::Counter;
use tether_core::{AppId, ConnId, Outgoing, Transport};
use tether_proto::{Code, Frame};

use super::handle::ConnHandle;
use super::outbox::Close;
use crate::link::{Link, Links, Offered};
use crate::metrics::{PushWriteMetrics, TransportMetrics};
use crate::transport::sse::request;
use crate::transport::sse::session::{Posted, Sessions};

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<ConnId, Arc<ConnHandle>>>;

/// Every connection of this node that has completed its handshake.
#[derive(Debug)]
pub struct ConnTable {
    shards: Box<[Shard]>,
    next_id: AtomicU64,
    overflows: Counter,
    deliveries: Counter,
    /// Frames and bytes that pushes wrote to sockets themselves (see
    /// [`Link::write_or_queue`]); what the connection tasks write they count themselves.
    tcp: TransportMetrics,
    ws: TransportMetrics,
    sse: TransportMetrics,
    mqtt: TransportMetrics,
    push_write: PushWriteMetrics,
    /// The SSE streams' sessions, by key.
    sessions: Arc<Sessions>,
}

impl ConnTable {
    pub fn new(overflows: Counter, deliveries: Counter) -> Self {
        ConnTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(first_conn_id()),
            overflows,
            deliveries,
            tcp: TransportMetrics::new(Transport::Tcp),
            ws: TransportMetrics::new(Transport::Ws),
            sse: TransportMetrics::new(Transport::Sse),
            mqtt: TransportMetrics::new(Transport::Mqtt),
            push_write: PushWriteMetrics::new(),
            sessions: Arc::default(),
        }
    }

    /// Where SSE streams open their sessions.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Hands frames posted to SSE session `key` (each with its size) to its connection and
    /// wakes its task (a parked one gets a task again), all or none (see
    /// [`Sessions::post`]).
    pub fn post_frames(&self, key: u128, frames: Vec<(Frame, usize)>) -> Posted {
        let posted = self.sessions.post(key, frames);
        if let Posted::Taken(conn) = posted
            && let Some(conn) = self.handle(conn)
        {
            conn.wake();
        }
        posted
    }

    /// A connection id never used before by this node id, also across restarts: sessions of a
    /// previous incarnation that the registry still holds must not name a new connection.
    pub fn next_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn shard(&self, id: ConnId) -> MutexGuard<'_, HashMap<ConnId, Arc<ConnHandle>>> {
        lock(&self.shards[(id.0 as usize) % SHARDS])
    }

    pub fn insert(&self, conn: Arc<ConnHandle>) {
        self.shard(conn.id).insert(conn.id, conn);
    }

    pub fn remove(&self, id: ConnId) {
        self.shard(id).remove(&id);
    }

    pub fn handle(&self, id: ConnId) -> Option<Arc<ConnHandle>> {
        self.shard(id).get(&id).cloned()
    }

    /// Calls `f` for every connection of shards `range`, holding one shard lock at a time
    /// (`f` only queues a frame or reads a field, so the lock is held briefly).
    pub fn for_each_handle(&self, range: Range<usize>, mut f: impl FnMut(&Arc<ConnHandle>)) {
        for shard in &self.shards[range] {
            lock(shard).values().for_each(&mut f);
        }
    }

    /// Every connection, cloned out of the table one shard at a time.
    pub fn handles(&self) -> Vec<Arc<ConnHandle>> {
        let mut conns = Vec::with_capacity(self.len());
        self.for_each_handle(0..SHARDS, |conn| conns.push(conn.clone()));
        conns
    }

    /// Whether a frame reached its connection, counting overflows.
    fn counted(&self, transport: Transport, offered: Offered) -> bool {
        match offered {
            Offered::Queued => true,
            Offered::Written(n) => {
                let metrics = match transport {
                    Transport::Tcp => &self.tcp,
                    Transport::Ws => &self.ws,
                    Transport::Sse => &self.sse,
                    Transport::Mqtt => &self.mqtt,
                };
                metrics.frames_out.increment(1);
                metrics.bytes_out.increment(n as u64);
                true
            }
            Offered::Closed => false,
            Offered::Overflow => {
                self.overflows.increment(1);
                false
            }
        }
    }
}

fn lock(shard: &Shard) -> MutexGuard<'_, HashMap<ConnId, Arc<ConnHandle>>> {
    // Every update is one insert or remove: a panic cannot leave a shard half-changed.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first connection id of this process: the boot time in seconds, shifted past 2^20, so
/// that a restarted node starts above every id its previous incarnation used unless that one
/// opened more than a million connections per second of its life. Below 2^53, so that
/// JavaScript reads it exactly.
fn first_conn_id() -> u64 {
    (tether_core::now_ms() / 1000).max(1) << 20
}

impl Links for ConnTable {
    fn get(&self, id: ConnId) -> Option<Arc<dyn Link>> {
        self.handle(id).map(|conn| conn as Arc<dyn Link>)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn shard_count(&self) -> usize {
        SHARDS
    }

    fn for_each_in(&self, shards: Range<usize>, f: &mut dyn FnMut(&dyn Link)) {
        self.for_each_handle(shards, |conn| f(&**conn));
    }

    fn snapshot(&self, app: Option<&AppId>) -> Vec<Arc<dyn Link>> {
        let mut conns: Vec<Arc<dyn Link>> = Vec::new();
        self.for_each_handle(0..SHARDS, |conn| {
            if app.is_none_or(|app| conn.binding(app.as_str()).is_some()) {
                conns.push(conn.clone());
            }
        });
        conns
    }

    fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize {
        let Some(push) = msg.push() else { return 0 };
        let mut reached = 0;
        // Timed at the first connection reached only: one clock read per push and node.
        let mut accepted = msg.accepted();
        for id in conns {
            let Some(conn) = self.handle(*id) else {
                continue;
            };
            let frame = conn.encoding.frame_of(msg);
            // A transient push is written at once when nothing waits before it, without
            // waking the connection's task, or starting one for a parked connection.
            let offered = if push.qos == 0 {
                conn.write_or_queue(frame)
            } else {
                match conn.binding(&push.app) {
                    Some(binding) => conn.offer_durable(binding, push.seq, frame.clone()).into(),
                    None => Offered::Closed,
                }
            };
            if let Some(at) = accepted
                && matches!(offered, Offered::Written(_) | Offered::Queued)
            {
                let written = matches!(offered, Offered::Written(_));
                self.push_write.reached(at, push.qos, written);
                accepted = None;
            }
            if self.counted(conn.transport, offered) {
                reached += 1;
            }
        }
        self.deliveries.increment(reached as u64);
        reached
    }

    fn disconnect(&self, conns: &[ConnId], code: Code, reason: &str) -> usize {
        conns
            .iter()
            .filter_map(|id| self.handle(*id))
            .filter(|conn| conn.close(Close::new(code, reason)))
            .count()
    }

    fn recheck_inboxes(&self, shards: Range<usize>) {
        self.for_each_handle(shards, |conn| conn.recheck_inboxes());
    }

    fn post(&self, session: u128, body: &[u8]) -> usize {
        let Ok(frames) = request::body_frames(body) else {
            return 0;
        };
        let n = frames.len();
        match self.post_frames(session, frames) {
            Posted::Taken(_) => n,
            Posted::Full | Posted::Unknown => 0,
        }
    }
}
