//! One topic's subscribers on this node, sharded so that a publication to a large topic is
//! fanned out by several tasks at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tether_core::{ConnId, Outgoing};

use crate::gateway::table::{ConnHandle, Encoding, Offered};

/// A subscriber: its connection, and the last offset it has (from recovery, or from when it
/// joined): publications up to it are not sent to it again.
#[derive(Debug)]
pub struct Sub {
    pub conn: Arc<ConnHandle>,
    pub after: u64,
}

/// What one pass over subscribers did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reached {
    /// Queued or written.
    pub delivered: u64,
    /// Of those, written to the socket by the fan-out itself, and their bytes.
    pub written: u64,
    pub written_bytes: u64,
    /// Connections whose byte-bounded queue overflowed: they are closing as slow.
    pub overflowed: u64,
    /// Subscribers whose connection was already closed (removed by the caller).
    pub closed: u64,
}

impl Reached {
    pub fn wrote(&mut self, bytes: usize) {
        self.delivered += 1;
        self.written += 1;
        self.written_bytes += bytes as u64;
    }

    pub fn add(&mut self, other: Reached) {
        self.delivered += other.delivered;
        self.written += other.written;
        self.written_bytes += other.written_bytes;
        self.overflowed += other.overflowed;
        self.closed += other.closed;
    }
}

type Shard = RwLock<HashMap<ConnId, Sub>>;

/// The subscribers of one (app, topic) on this node.
///
/// # Invariants
/// `count` is the number of entries over all shards. `fanned` is changed only by the app's
/// fan-out worker: the highest offset it has fanned out, or the topic's head in the store when
/// the topic appeared on this node.
#[derive(Debug)]
pub struct Topic {
    pub fanned: AtomicU64,
    count: AtomicUsize,
    shards: Box<[Shard]>,
}

impl Topic {
    pub fn new(shards: usize, fanned: u64) -> Self {
        Topic {
            fanned: AtomicU64::new(fanned),
            count: AtomicUsize::new(0),
            shards: (0..shards.max(1)).map(|_| RwLock::default()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, conn: ConnId) -> usize {
        (conn.0 as usize) % self.shards.len()
    }

    fn read(&self, i: usize) -> RwLockReadGuard<'_, HashMap<ConnId, Sub>> {
        // Every update is one insert or remove: a panic cannot leave a shard half-changed.
        self.shards[i].read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, HashMap<ConnId, Sub>> {
        self.shards[i].write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber, or moves an existing one's position forward (never back: what it
    /// recovered is not sent again); whether it is new.
    pub fn insert(&self, sub: Sub) -> bool {
        let id = sub.conn.id;
        let mut shard = self.write(self.shard(id));
        if let Some(existing) = shard.get_mut(&id) {
            existing.after = existing.after.max(sub.after);
            return false;
        }
        shard.insert(id, sub);
        drop(shard);
        self.count.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The position of subscriber `conn`, if it is one.
    pub fn position(&self, conn: ConnId) -> Option<u64> {
        self.read(self.shard(conn)).get(&conn).map(|s| s.after)
    }

    /// Removes a subscriber; whether it was there.
    pub fn remove(&self, conn: ConnId) -> bool {
        let gone = self.write(self.shard(conn)).remove(&conn).is_some();
        if gone {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        gone
    }

    /// Hands `msg` (at `offset`; 0 for a live-only publication) to every subscriber of shard
    /// `i` that does not have it yet, writing it directly where allowed (`direct`, see
    /// [`offer`]). Subscribers found closed are removed.
    pub fn deliver_shard(&self, i: usize, offset: u64, msg: &Outgoing, direct: bool) -> Reached {
        let mut reached = Reached::default();
        let mut closed = Vec::new();
        {
            let shard = self.read(i);
            for sub in shard.values() {
                if offset != 0 && offset <= sub.after {
                    continue;
                }
                match offer(&sub.conn, msg, direct) {
                    Offered::Queued => reached.delivered += 1,
                    Offered::Written(n) => reached.wrote(n),
                    Offered::Overflow => reached.overflowed += 1,
                    Offered::Closed => closed.push(sub.conn.id),
                }
            }
        }
        for id in closed {
            if self.remove(id) {
                reached.closed += 1;
            }
        }
        reached
    }

    /// The connections that should get `msg` at `offset`, for a paced fan-out that cannot hold
    /// a shard's lock while it waits.
    pub fn snapshot(&self, offset: u64) -> Vec<Arc<ConnHandle>> {
        let mut out = Vec::with_capacity(self.len());
        for i in 0..self.shards.len() {
            out.extend(
                self.read(i)
                    .values()
                    .filter(|s| offset == 0 || offset > s.after)
                    .map(|s| s.conn.clone()),
            );
        }
        out
    }
}

/// Hands a shared frame to one connection, in the encoding it speaks. With `direct`, a raw
/// TCP connection with nothing else to write gets it written at once by this thread (no
/// wake-up of its task); otherwise it is queued. Fan-outs that are behind queue, so that
/// frames piling up for a connection leave in one write.
pub fn offer(conn: &ConnHandle, msg: &Outgoing, direct: bool) -> Offered {
    let frame = match conn.encoding {
        Encoding::Binary => msg.binary().clone(),
        Encoding::Json => msg.json().clone(),
    };
    if direct {
        conn.offer(frame)
    } else {
        conn.enqueue(frame).into()
    }
}
