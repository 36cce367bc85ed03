//! The writer thread: the only code that writes to the embedded store.
//!
//! It takes everything waiting in its queue (up to [`MAX_BATCH`] requests), turns it into one
//! fjall write batch, commits it, fsyncs once when the batch holds appends and the store runs
//! with [`Durability::Sync`], and only then answers the requests of the batch: one fsync covers
//! every append that was waiting (group commit). Because it is the only writer, it can keep
//! inbox heads in memory and read-modify-write cursors and idempotency records without locks.
//!
//! An append costs one memtable insert per user: the message key. The inbox record is written
//! only when the message keys alone would no longer say where the inbox stands (see
//! [`super::inbox`]), and the message value is encoded once and shared by every user's key.
//!
//! When idle, it fsyncs what an interval left unsynced and runs the expiry sweep (see
//! [`super::expiry`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fjall::{Database, Keyspace, PersistMode, Slice};
use metrics::{Counter, Histogram, counter, histogram};
use tether_core::store::{Append, Appended, Cursor, count_attempt};
use tether_core::{Seq, StoreError};
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, IdemRecord, Meta};
use super::embedded::{EmbeddedOptions, Swept};
use super::expiry::{Sweeper, expire_front};
use super::inbox;
use crate::config::Durability;

/// Most requests in one batch. Bounds the memory of a batch and the time its first request
/// waits for the last one to be prepared; a burst larger than this becomes several batches.
pub const MAX_BATCH: usize = 4096;
/// Stop taking requests into a batch past this many bytes of messages (payload x users).
const MAX_BATCH_BYTES: usize = 32 << 20;
/// Inboxes whose head the writer remembers; past this, it forgets them all and reloads lazily.
const CACHE_LIMIT: usize = 1 << 18;
/// Most held messages of one inbox the cap deletes in one batch (after the cap was lowered,
/// there can be many); the rest are left below `first`, unreadable, for the sweep.
const MAX_TRIM: u64 = 1024;

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What callers send the writer.
#[derive(Debug)]
pub enum Request {
    Write(Write),
    /// Run a whole sweep pass now, with the given clock (tests and tools).
    Sweep {
        now_ms: u64,
        reply: Reply<Swept>,
    },
    /// Finish what is queued before this, fsync, release the files, and answer.
    Close(oneshot::Sender<()>),
}

/// A request that joins a batch.
#[derive(Debug)]
pub enum Write {
    Append(Append, Reply<Appended>),
    Ack {
        cursor: Vec<u8>,
        seq: Seq,
        reply: Reply<()>,
    },
    NoteAttempt {
        cursor: Vec<u8>,
        seq: Seq,
        reply: Reply<u32>,
    },
}

impl Write {
    /// Bytes this request adds to a batch, roughly.
    fn weight(&self) -> usize {
        match self {
            Write::Append(a, _) => (a.message.payload.len() + 64) * a.users.len().max(1),
            _ => 64,
        }
    }
}

/// Counters shared with the store handle, for [`super::EmbeddedStore::stats`].
#[derive(Debug, Default)]
pub struct Counters {
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub appends: AtomicU64,
}

/// The fjall handles.
#[derive(Clone)]
pub struct Keyspaces {
    pub db: Database,
    pub messages: Keyspace,
    pub inboxes: Keyspace,
    pub cursors: Keyspace,
    pub idempotency: Keyspace,
}

pub fn unavailable(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

/// What the writer remembers of an inbox between batches.
#[derive(Debug, Clone, Copy)]
pub struct Inbox {
    /// The head is exact, unlike the inbox record's; `first` may lag behind messages the
    /// sweep deleted (front expiry and the cap step over them).
    pub meta: Meta,
    /// The expiry of the message at `meta.first`, when known, so that checking whether the
    /// front expired costs no read.
    pub front_expires: Option<u64>,
}

/// An inbox in the writer's cache.
#[derive(Debug)]
struct Cached {
    key: Box<[u8]>,
    inbox: Inbox,
    /// The inbox has a record in the current format on disk.
    recorded: bool,
    /// While the inbox is in the batch being prepared: its head on disk, before the batch.
    disk_head: Option<u64>,
}

/// A message x user of the batch being prepared.
#[derive(Debug)]
struct StagedMessage {
    /// The inbox's slot in the cache.
    slot: usize,
    seq: u64,
    /// Its value in [`Staged::values`].
    value: usize,
}

/// A batch being prepared. Every key is written at most once per batch: fjall gives all the
/// writes of a batch one sequence number, so two writes of one key would not be ordered.
#[derive(Debug, Default)]
struct Staged {
    /// Cache slots of the inboxes appended to, each once.
    inboxes: Vec<usize>,
    /// In the order appended, so in seq order within an inbox.
    messages: Vec<StagedMessage>,
    /// (value, expires_ms) of each append: one encoding, shared by all its users.
    values: Vec<(Slice, u64)>,
    cursors: HashMap<Vec<u8>, Cursor>,
    idempotency: HashMap<Vec<u8>, IdemRecord>,
    /// Messages x users stored.
    appends: u64,
}

enum Answer {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Count(Reply<u32>, Result<u32, StoreError>),
}

impl Answer {
    /// Sends the answer, or `failed` in place of a success when the batch did not commit.
    fn send(self, failed: Option<&StoreError>) {
        fn pick<T>(r: Result<T, StoreError>, failed: Option<&StoreError>) -> Result<T, StoreError> {
            match (r, failed) {
                (Ok(_), Some(e)) => Err(e.clone()),
                (r, _) => r,
            }
        }
        // A caller that gave up has dropped its receiver: nothing to tell it.
        match self {
            Answer::Append(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Unit(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Count(tx, r) => drop(tx.send(pick(r, failed))),
        }
    }
}

#[derive(Debug)]
struct Metrics {
    batches: Counter,
    fsyncs: Counter,
    appends: Counter,
    batch_requests: Histogram,
    fsync_seconds: Histogram,
    expired_messages: Counter,
    expired_keys: Counter,
}

pub struct Writer {
    ks: Keyspaces,
    options: EmbeddedOptions,
    /// The inbox cache: key -> slot in `slots`. A batch looks each user up once and then
    /// works with slots.
    index: HashMap<Box<[u8]>, usize>,
    slots: Vec<Cached>,
    /// Scratch space for keys, reused by every batch.
    key_buf: Vec<u8>,
    counters: Arc<Counters>,
    metrics: Metrics,
    /// Committed writes not yet fsynced.
    dirty: bool,
    last_sync: Instant,
    sweeper: Sweeper,
}

enum Next {
    Request(Request),
    Idle,
    Closed,
}

impl Writer {
    pub fn new(ks: Keyspaces, options: EmbeddedOptions, counters: Arc<Counters>) -> Self {
        let now = Instant::now();
        Writer {
            ks,
            options,
            index: HashMap::new(),
            slots: Vec::new(),
            key_buf: Vec::new(),
            counters,
            metrics: Metrics {
                batches: counter!("tether_store_batches_total"),
                fsyncs: counter!("tether_store_fsyncs_total"),
                appends: counter!("tether_store_appends_total"),
                batch_requests: histogram!("tether_store_batch_requests"),
                fsync_seconds: histogram!("tether_store_fsync_seconds"),
                expired_messages: counter!("tether_store_expired_deleted_total", "kind" => "message"),
                expired_keys: counter!("tether_store_expired_deleted_total", "kind" => "idempotency"),
            },
            dirty: false,
            last_sync: now,
            sweeper: Sweeper::new(),
        }
    }

    /// The thread's body: serves requests until the last handle is gone or `Close` arrives,
    /// then fsyncs and releases the database before answering `Close`.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        // A runtime of its own, only for "receive, or time out": the writer must wake up for
        // interval fsyncs and the sweep even when no request comes.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("store writer cannot start its timer: {e}");
                return;
            }
        };
        let mut held: Option<Request> = None;
        let close = loop {
            let request = match held.take() {
                Some(r) => r,
                None => match self.next(&rt, &mut rx) {
                    Next::Request(r) => r,
                    Next::Idle => {
                        self.idle();
                        continue;
                    }
                    Next::Closed => break None,
                },
            };
            match request {
                Request::Close(reply) => break Some(reply),
                Request::Sweep { now_ms, reply } => {
                    let swept = self.sweeper.pass(&self.ks, now_ms);
                    if let Ok(swept) = &swept {
                        self.count_swept(swept);
                    }
                    let _ = reply.send(swept);
                }
                Request::Write(first) => {
                    let mut weight = first.weight();
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH && weight < MAX_BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(Request::Write(w)) => {
                                weight += w.weight();
                                batch.push(w);
                            }
                            // Control requests wait for the batch of what came before them.
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_batch(batch);
                    self.after_batch();
                }
            }
        };
        // Requests sent after `Close` fail (their answer channel drops) rather than wait.
        drop(rx);
        if let Err(e) = self.sync() {
            tracing::error!("store: final fsync failed: {e}");
        }
        drop(self);
        drop(rt);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    fn next(&mut self, rt: &tokio::runtime::Runtime, rx: &mut mpsc::Receiver<Request>) -> Next {
        let wait = self.next_wake().saturating_duration_since(Instant::now());
        rt.block_on(async {
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(r)) => Next::Request(r),
                Ok(None) => Next::Closed,
                Err(_) => Next::Idle,
            }
        })
    }

    /// When the writer must wake up if no request comes.
    fn next_wake(&self) -> Instant {
        let sweep = self.sweeper.wake_at();
        if self.dirty {
            sweep.min(self.last_sync + self.options.sync_interval)
        } else {
            sweep
        }
    }

    fn idle(&mut self) {
        self.sync_if_due();
        if self.sweeper.due(Instant::now()) {
            self.sweep_chunk();
        }
    }

    fn after_batch(&mut self) {
        self.sync_if_due();
        if self.sweeper.starved(Instant::now()) {
            self.sweep_chunk();
        }
    }

    fn sweep_chunk(&mut self) {
        match self.sweeper.chunk(&self.ks, tether_core::now_ms()) {
            Ok(swept) => self.count_swept(&swept),
            Err(e) => {
                tracing::warn!("store: expiry sweep failed: {e}");
                self.sweeper.reset();
            }
        }
    }

    fn count_swept(&mut self, swept: &Swept) {
        self.metrics.expired_messages.increment(swept.messages);
        self.metrics.expired_keys.increment(swept.idempotency_keys);
        if swept.messages + swept.idempotency_keys > 0 {
            self.dirty = true;
        }
    }

    fn sync_if_due(&mut self) {
        if self.dirty
            && self.last_sync.elapsed() >= self.options.sync_interval
            && let Err(e) = self.sync()
        {
            tracing::error!("store: interval fsync failed: {e}");
        }
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.ks
            .db
            .persist(PersistMode::SyncData)
            .map_err(unavailable)?;
        self.metrics
            .fsync_seconds
            .record(started.elapsed().as_secs_f64());
        self.metrics.fsyncs.increment(1);
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn write_batch(&mut self, batch: Vec<Write>) {
        if self.slots.len() > CACHE_LIMIT {
            self.forget();
        }
        let now_ms = tether_core::now_ms();
        let requests = batch.len();
        let mut staged = Staged::default();
        let mut answers = Vec::with_capacity(requests);
        for write in batch {
            answers.push(match write {
                Write::Append(append, reply) => {
                    let r = self.stage_append(&mut staged, append);
                    Answer::Append(reply, r)
                }
                Write::Ack { cursor, seq, reply } => {
                    let r = self.stage_cursor(&mut staged, cursor, |c| {
                        if seq > c.acked {
                            c.acked = seq;
                            if c.attempt_seq <= seq {
                                c.attempts = 0;
                            }
                        }
                    });
                    Answer::Unit(reply, r)
                }
                Write::NoteAttempt { cursor, seq, reply } => {
                    let r = self.stage_cursor(&mut staged, cursor, |c| count_attempt(c, seq));
                    Answer::Count(reply, r)
                }
            });
        }
        let result = self.commit(&mut staged, now_ms);
        if let Err(e) = &result {
            tracing::warn!(requests, "store: a batch failed: {e}");
            // What the cache says of these inboxes may not be on disk: read it again.
            self.forget();
        } else {
            for &slot in &staged.inboxes {
                self.slots[slot].disk_head = None;
            }
            self.counters
                .appends
                .fetch_add(staged.appends, Ordering::Relaxed);
            self.metrics.appends.increment(staged.appends);
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.metrics.batches.increment(1);
        self.metrics.batch_requests.record(requests as f64);
        let failed = result.err();
        for answer in answers {
            answer.send(failed.as_ref());
        }
    }

    /// Empties the inbox cache.
    fn forget(&mut self) {
        self.index.clear();
        self.slots.clear();
    }

    /// Loads an inbox into the cache (the only fallible part of an append to it) and returns
    /// its slot.
    fn load(&mut self, key: &[u8]) -> Result<usize, StoreError> {
        if let Some(&slot) = self.index.get(key) {
            return Ok(slot);
        }
        let recovered = inbox::recover(&self.ks.db.snapshot(), &self.ks, key, true)?;
        let slot = self.slots.len();
        self.slots.push(Cached {
            key: key.into(),
            inbox: Inbox {
                meta: recovered.meta,
                front_expires: None,
            },
            recorded: recovered.recorded,
            disk_head: None,
        });
        self.index.insert(key.into(), slot);
        Ok(slot)
    }

    /// Adds an append to the batch, or answers it. Everything that can fail happens before
    /// the first change, so that an append fails whole.
    fn stage_append(&mut self, st: &mut Staged, append: Append) -> Result<Appended, StoreError> {
        let m = &append.message;
        let idem = match &append.idempotency {
            Some(i) => {
                let key = codec::idempotency_key(&append.app, &i.key);
                codec::check_key(&key)?;
                let seen = match st.idempotency.get(&key) {
                    Some(record) => Some(record.clone()),
                    None => match self.ks.idempotency.get(&key).map_err(unavailable)? {
                        Some(v) => Some(codec::decode_idempotency(&v)?),
                        None => None,
                    },
                };
                if let Some(record) = seen
                    && record.expires_ms > m.created_ms
                {
                    let mut first = record.appended;
                    first.duplicate = true;
                    return Ok(first);
                }
                Some((key, i.expires_ms))
            }
            None => None,
        };
        if m.payload.len() > u32::MAX as usize / 2 {
            return Err(StoreError::Unavailable(
                "payload too large for the store".into(),
            ));
        }
        let mut slots = Vec::with_capacity(append.users.len());
        let mut key = std::mem::take(&mut self.key_buf);
        for user in &append.users {
            key.clear();
            codec::put_inbox_key(&mut key, &append.app, user);
            let slot = codec::check_inbox_key(&key).and_then(|()| self.load(&key));
            match slot {
                Ok(slot) => slots.push(slot),
                Err(e) => {
                    self.key_buf = key;
                    return Err(e);
                }
            }
        }
        self.key_buf = key;

        let value = st.values.len();
        st.values.push((
            Slice::from(codec::encode_message(
                m.id,
                m.created_ms,
                m.expires_ms,
                m.kind,
                &m.payload,
            )),
            m.expires_ms,
        ));
        let mut seqs = Vec::with_capacity(append.users.len());
        for (user, slot) in append.users.iter().zip(slots) {
            // A user listed twice gets two seqs: both go through the one cache entry.
            let cached = &mut self.slots[slot];
            if cached.disk_head.is_none() {
                cached.disk_head = Some(cached.inbox.meta.head);
                st.inboxes.push(slot);
            }
            cached.inbox.meta.head += 1;
            let seq = cached.inbox.meta.head;
            st.messages.push(StagedMessage { slot, seq, value });
            seqs.push((user.clone(), Seq(seq)));
        }
        st.appends += append.users.len() as u64;
        let appended = Appended {
            id: m.id,
            created_ms: m.created_ms,
            seqs,
            duplicate: false,
        };
        if let Some((key, expires_ms)) = idem {
            st.idempotency.insert(
                key,
                IdemRecord {
                    expires_ms,
                    appended: appended.clone(),
                },
            );
        }
        Ok(appended)
    }

    fn stage_cursor<T>(
        &mut self,
        st: &mut Staged,
        key: Vec<u8>,
        change: impl FnOnce(&mut Cursor) -> T,
    ) -> Result<T, StoreError> {
        codec::check_key(&key)?;
        if let Some(cursor) = st.cursors.get_mut(&key) {
            return Ok(change(cursor));
        }
        let mut cursor = match self.ks.cursors.get(&key).map_err(unavailable)? {
            Some(v) => codec::decode_cursor(&v)?,
            None => Cursor::default(),
        };
        let out = change(&mut cursor);
        st.cursors.insert(key, cursor);
        Ok(out)
    }

    /// Applies retention to the inboxes of the batch, writes it, and fsyncs it when the
    /// durability mode asks for that before answering.
    fn commit(&mut self, st: &mut Staged, now_ms: u64) -> Result<(), StoreError> {
        let ks = self.ks.clone();
        let mut batch = ks.db.batch().durability(Some(PersistMode::Buffer));
        let cap = self.options.retention.inbox_cap.max(1) as u64;
        let mut expired = 0;
        for &slot in &st.inboxes {
            let cached = &mut self.slots[slot];
            let Some(disk_head) = cached.disk_head else {
                continue;
            };
            let inbox = &mut cached.inbox;
            let old_first = inbox.meta.first;
            let first = old_first.max((inbox.meta.head + 1).saturating_sub(cap));
            // Held messages the cap pushes out (new ones it pushes out are never written), and
            // how far this batch deletes them.
            let pushed_out = first.min(disk_head + 1);
            let deleted_to = pushed_out.min(old_first + MAX_TRIM);
            for seq in old_first..deleted_to {
                let key = codec::message_key_slice(&mut self.key_buf, &cached.key, seq);
                batch.remove(&ks.messages, key);
            }
            inbox.meta.first = first;
            if first > old_first {
                // Its front is gone; the sweep sees to expiry in inboxes at their cap.
                inbox.front_expires = None;
            } else {
                let key = &cached.key;
                expired += expire_front(&ks.messages, &mut batch, key, inbox, disk_head, now_ms);
            }
            // The message keys no longer tell where the inbox stands when `first` passed held
            // messages that stay on disk; an inbox without a current record gets one.
            if !cached.recorded || pushed_out > deleted_to {
                let meta = codec::encode_meta(cached.inbox.meta);
                batch.insert(&ks.inboxes, &*cached.key, meta);
                cached.recorded = true;
            }
        }
        for m in &st.messages {
            let cached = &mut self.slots[m.slot];
            let first = cached.inbox.meta.first;
            if m.seq < first {
                continue;
            }
            let (value, expires) = &st.values[m.value];
            if m.seq == first && cached.disk_head.is_some_and(|d| first > d) {
                cached.inbox.front_expires = Some(*expires);
            }
            let key = codec::message_key_slice(&mut self.key_buf, &cached.key, m.seq);
            batch.insert(&ks.messages, key, value.clone());
        }
        for (key, cursor) in st.cursors.drain() {
            batch.insert(&ks.cursors, key, codec::encode_cursor(cursor));
        }
        for (key, record) in st.idempotency.drain() {
            batch.insert(&ks.idempotency, key, codec::encode_idempotency(&record)?);
        }
        if batch.is_empty() {
            return Ok(());
        }
        batch.commit().map_err(unavailable)?;
        self.metrics.expired_messages.increment(expired);
        if self.options.durability == Durability::Sync && st.appends > 0 {
            self.sync()
        } else {
            // Acks ride along with the next fsync; in interval mode, so does everything.
            self.dirty = true;
            Ok(())
        }
    }
}
