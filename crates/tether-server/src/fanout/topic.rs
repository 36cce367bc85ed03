//! One topic's subscribers on this node, sharded so that a publication to a large topic is
//! fanned out by several tasks at once.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use tether_core::ConnId;

use super::batch::{Batch, Reached, offer_batch};
use crate::link::{Encoding, Link};

/// A subscriber: its connection, and the last offset it has (from recovery, or from when it
/// joined): publications up to it are not sent to it again.
#[derive(Debug)]
pub struct Sub {
    pub conn: Arc<dyn Link>,
    pub after: u64,
}

/// Subscribers by connection id. A table rather than a map: the id is read from the
/// subscriber's link, not stored beside it, so that an entry is no larger than its `Sub`
/// (every subscription of every connection pays for one).
type Shard = RwLock<HashTable<Sub>>;

/// Subscribers whose handles a fan-out reads together before writing to them.
const GROUP: usize = 16;

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
    hasher: RandomState,
}

impl Topic {
    pub fn new(shards: usize, fanned: u64) -> Self {
        Topic {
            fanned: AtomicU64::new(fanned),
            count: AtomicUsize::new(0),
            shards: (0..shards.max(1))
                .map(|_| RwLock::new(HashTable::new()))
                .collect(),
            hasher: RandomState::new(),
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

    fn hash(&self, conn: ConnId) -> u64 {
        self.hasher.hash_one(conn)
    }

    fn read(&self, i: usize) -> RwLockReadGuard<'_, HashTable<Sub>> {
        // Every update is one insert or remove: a panic cannot leave a shard half-changed.
        self.shards[i].read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, HashTable<Sub>> {
        self.shards[i].write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber, or moves an existing one's position forward (never back: what it
    /// recovered is not sent again); whether it is new.
    pub fn insert(&self, sub: Sub) -> bool {
        let id = sub.conn.id();
        let hash = self.hash(id);
        let mut shard = self.write(self.shard(id));
        if let Some(existing) = shard.find_mut(hash, |s| s.conn.id() == id) {
            existing.after = existing.after.max(sub.after);
            return false;
        }
        shard.insert_unique(hash, sub, |s| self.hash(s.conn.id()));
        drop(shard);
        self.count.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The position of subscriber `conn`, if it is one.
    pub fn position(&self, conn: ConnId) -> Option<u64> {
        let hash = self.hash(conn);
        let shard = self.read(self.shard(conn));
        shard.find(hash, |s| s.conn.id() == conn).map(|s| s.after)
    }

    /// Removes a subscriber; whether it was there.
    pub fn remove(&self, conn: ConnId) -> bool {
        let hash = self.hash(conn);
        let mut shard = self.write(self.shard(conn));
        let gone = match shard.find_entry(hash, |s| s.conn.id() == conn) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        };
        drop(shard);
        if gone {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        gone
    }

    /// Hands the publications of `batch` to every subscriber of shard `i`, each the ones it
    /// does not have yet, writing them directly where allowed (`direct`, see [`Link::write_or_queue`]).
    /// Subscribers found closed are removed.
    pub fn deliver_shard(&self, i: usize, batch: &Batch, direct: bool) -> Reached {
        let mut reached = Reached::default();
        let mut closed = Vec::new();
        {
            let shard = self.read(i);
            let mut subs = shard.iter();
            // In groups, each subscriber's handle read (its encoding) before any of the group
            // is written to: the reads are independent, so their cache misses overlap, where
            // one at a time each would stall between two writes (a subscriber's handle is
            // rarely in cache: docs/benchmarks.md, "Against the bare writer again").
            let mut group: [Option<(&Sub, Encoding)>; GROUP] = [None; GROUP];
            loop {
                let mut n = 0;
                // `zip` asks the group for a slot first: no subscriber is taken without one.
                for (slot, sub) in group.iter_mut().zip(subs.by_ref()) {
                    *slot = Some((sub, sub.conn.encoding()));
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                for &(sub, encoding) in group[..n].iter().flatten() {
                    let conn = &*sub.conn;
                    if offer_batch(conn, encoding, batch, sub.after, direct, &mut reached) {
                        closed.push(conn.id());
                    }
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

    /// The connections whose position is below `below` (see [`Batch::needed_below`]), for a
    /// paced fan-out that cannot hold a shard's lock while it waits.
    pub fn snapshot(&self, below: u64) -> Vec<Arc<dyn Link>> {
        let mut out = Vec::with_capacity(self.len());
        for i in 0..self.shards.len() {
            out.extend(
                self.read(i)
                    .iter()
                    .filter(|s| s.after < below)
                    .map(|s| s.conn.clone()),
            );
        }
        out
    }
}
