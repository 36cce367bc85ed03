//! The writer thread: the only code that writes to the embedded store.
//!
//! It takes everything waiting in its queue (up to [`MAX_BATCH`] requests), turns it into one
//! fjall write batch, commits it, fsyncs once (as part of the commit, before the batch is
//! visible) when the batch holds appends, publications or subscription changes and the store
//! runs with [`Durability::Sync`], and only then answers
//! the requests of the batch: one fsync covers every write that was waiting (group commit).
//! Because it is the only writer, it can keep inbox heads in memory and read-modify-write
//! cursors, idempotency records and subscriptions without locks (so a subscription's count
//! check and its write are one step: two subscriptions cannot pass `max` together).
//!
//! An append costs one memtable insert per user: the message key. The inbox record is written
//! only when the message keys alone would no longer say where the inbox stands (see
//! [`super::inbox`]), and the message value is encoded once and shared by every user's key.
//!
//! A topic's history is a log like an inbox (see [`super::codec`]): a publish is an append to
//! one log, with the same seqs, cache, cap (`topic_history` instead of `inbox_cap`), front
//! expiry, records and fsyncs. What this module says of inboxes holds for topic histories.
//!
//! Acks do not come through its queue: they wait in [`PendingAcks`], readable there, and every
//! batch takes those pending into the same fjall batch as the rest (see [`super::acks`]).
//!
//! When idle, it fsyncs what an interval left unsynced and runs the expiry sweep (see
//! [`super::expiry`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fjall::{PersistMode, Slice};
use tether_core::store::{Appended, Cursor, count_attempt};
use tether_core::{Seq, StoreError};
use tokio::sync::{mpsc, oneshot};

use super::acks::{PendingAcks, apply_ack};
use super::codec::{self, IdemRecord};
use super::expiry::Sweeper;
use super::expiry::Swept;
use super::inbox::Inbox;
use super::keyspaces::{Counters, Keyspaces, unavailable};
use super::options::EmbeddedOptions;
use super::recovery::{FAILED_AGAIN_WITHIN, Failed, Reopen, recover};
use super::request::{Reply, Request, Subscription, Write};
use crate::metrics::StoreMetrics;

mod stage;

/// Most requests in one batch. Bounds the memory of a batch and the time its first request
/// waits for the last one to be prepared; a burst larger than this becomes several batches.
pub const MAX_BATCH: usize = 4096;
/// Stop taking requests into a batch past this many bytes of messages (payload x users).
const MAX_BATCH_BYTES: usize = 32 << 20;
/// Inboxes whose head the writer remembers; past this, it forgets them all and reloads lazily.
const CACHE_LIMIT: usize = 1 << 18;
/// Device cursors the writer remembers (100 to 450 bytes each, with the key: at most about
/// 30 MiB); past this, it forgets them all.
const CURSOR_CACHE_LIMIT: usize = 1 << 16;
/// How often an idle writer looks whether fjall poisoned the database in the background.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Longest an ack waits in [`PendingAcks`] when no nudge reached the writer (after a reopen):
/// a safety net, as the first ack after each batch nudges the writer.
const ACKS_WAIT: Duration = Duration::from_millis(50);
/// Most held messages of one inbox the cap deletes in one batch (after the cap was lowered,
/// there can be many); the rest are left below `first`, unreadable, for the sweep.
const MAX_TRIM: u64 = 1024;

/// An inbox (or topic history) in the writer's cache.
#[derive(Debug)]
struct Cached {
    key: Box<[u8]>,
    /// Most messages it holds: `inbox_cap` or `topic_history`.
    cap: u64,
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
    /// Subscription key -> subscribed after the batch, for those the batch changes.
    subscriptions: HashMap<Vec<u8>, bool>,
    /// Inbox key -> the user's subscriptions after the batch, for users the batch touched.
    subscription_counts: HashMap<Vec<u8>, usize>,
    /// Saved session key -> its new value, or `None` to delete it.
    sessions: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Messages x users stored.
    appends: u64,
    /// Publications stored.
    publishes: u64,
}

impl Staged {
    /// Whether the batch holds writes that [`Durability::Sync`] fsyncs before answering:
    /// messages and subscriptions, not cursors.
    fn wants_fsync(&self) -> bool {
        self.appends > 0 || self.publishes > 0 || !self.subscriptions.is_empty()
    }
}

enum Answer {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    Many(
        Reply<Vec<Result<Appended, StoreError>>>,
        Vec<Result<Appended, StoreError>>,
    ),
    Seq(Reply<Seq>, Result<Seq, StoreError>),
    Count(Reply<u32>, Result<u32, StoreError>),
    Subscription(Reply<Subscription>, Result<Subscription, StoreError>),
    Done(Reply<()>, Result<(), StoreError>),
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
            // A batch that did not commit stored none of them.
            Answer::Many(tx, rs) => drop(tx.send(match failed {
                Some(e) => Err(e.clone()),
                None => Ok(rs),
            })),
            Answer::Seq(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Count(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Subscription(tx, r) => drop(tx.send(pick(r, failed))),
            Answer::Done(tx, r) => drop(tx.send(pick(r, failed))),
        }
    }
}

pub struct Writer {
    ks: Keyspaces,
    options: EmbeddedOptions,
    /// The inbox cache: key -> slot in `slots`. A batch looks each user up once and then
    /// works with slots.
    index: HashMap<Box<[u8]>, usize>,
    slots: Vec<Cached>,
    /// Cursors as the last committed batch left them, so that an ack (a read-modify-write)
    /// costs no read of the store: acks come about as often as messages when each device gets
    /// few messages. Only the writer writes cursors, so what it remembers stays true; the
    /// sweep (also the writer) may delete one it still holds, after `cursor_idle` without a
    /// change, and the device's next ack then writes it back whole, moved forward.
    cursors: HashMap<Vec<u8>, Cursor>,
    /// Scratch space for keys, reused by every batch.
    key_buf: Vec<u8>,
    counters: Arc<Counters>,
    /// Acks accepted by the handle, for the next batch.
    acks: Arc<PendingAcks>,
    metrics: StoreMetrics,
    /// Committed writes not yet fsynced.
    dirty: bool,
    last_sync: Instant,
    sweeper: Sweeper,
    /// Why the database failed, once fjall refuses every write: the writer then stops serving
    /// and recovers.
    failure: Option<String>,
}

pub(super) enum Next {
    Request(Request),
    Idle,
    Closed,
}

/// Why [`Writer::serve`] returned.
enum Stop {
    /// `Close` (with its answer), or the last handle is gone.
    Close(Option<oneshot::Sender<()>>),
    /// The database failed and refuses every write; the cause, for the log.
    Failed(String),
}

impl Writer {
    pub fn new(
        ks: Keyspaces,
        options: EmbeddedOptions,
        counters: Arc<Counters>,
        acks: Arc<PendingAcks>,
    ) -> Self {
        let now = Instant::now();
        let metrics = StoreMetrics::new();
        metrics.writable.set(1.0);
        Writer {
            ks,
            options,
            index: HashMap::new(),
            slots: Vec::new(),
            cursors: HashMap::new(),
            key_buf: Vec::new(),
            counters,
            acks,
            metrics,
            dirty: false,
            last_sync: now,
            sweeper: Sweeper::new(options.retention.cursor_idle),
            failure: None,
        }
    }

    /// The thread's body: serves requests until the last handle is gone or `Close` arrives,
    /// then fsyncs and releases the database before answering `Close`. When the database
    /// fails (see [`Keyspaces::poisoned`]), it refuses writes until the filesystem has room
    /// again, then reopens the database (see [`recover`]) and serves on.
    pub fn run(self, mut rx: mpsc::Receiver<Request>, reopen: Reopen) {
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
        let mut writer = self;
        // Failures soon after a reopen in a row: each makes the next reopen wait for more room.
        let mut reopened_at: Option<Instant> = None;
        let mut streak = 0;
        let close = loop {
            match writer.serve(&rt, &mut rx, &mut held) {
                Stop::Close(close) => {
                    // Requests sent after `Close` fail (their answer channel drops) rather
                    // than wait; an ack sees the channel closed and is refused. Then the acks
                    // accepted before are written with the final fsync.
                    drop(rx);
                    writer.write_batch(Vec::new());
                    if let Err(e) = writer.sync() {
                        tracing::error!("store: final fsync failed: {e}");
                    }
                    drop(writer);
                    break close;
                }
                Stop::Failed(cause) => {
                    let Writer {
                        options,
                        counters,
                        acks,
                        ks,
                        ..
                    } = writer;
                    // The failed database's handles go, or it could not be opened again.
                    drop(ks);
                    let soon = reopened_at.is_some_and(|t| t.elapsed() < FAILED_AGAIN_WITHIN);
                    streak = if soon { streak + 1 } else { 0 };
                    let failed = Failed {
                        cause: &cause,
                        streak,
                    };
                    match recover(&rt, &mut rx, &mut held, &reopen, &counters, failed) {
                        Ok(ks) => {
                            reopened_at = Some(Instant::now());
                            writer = Writer::new(ks, options, counters, acks);
                        }
                        Err(close) => {
                            drop(rx);
                            break close;
                        }
                    }
                }
            }
        };
        drop(rt);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    /// Serves requests until `Close`, the last handle, or a failure of the database.
    fn serve(
        &mut self,
        rt: &tokio::runtime::Runtime,
        rx: &mut mpsc::Receiver<Request>,
        held: &mut Option<Request>,
    ) -> Stop {
        loop {
            if let Some(cause) = self.failure.take() {
                return Stop::Failed(cause);
            }
            let request = match held.take() {
                Some(r) => r,
                None => match self.next(rt, rx) {
                    Next::Request(r) => r,
                    Next::Idle => {
                        self.idle();
                        continue;
                    }
                    Next::Closed => return Stop::Close(None),
                },
            };
            match request {
                Request::Close(reply) => return Stop::Close(Some(reply)),
                Request::Sweep { now_ms, reply } => {
                    let swept = self.sweeper.pass(&self.ks, now_ms);
                    match &swept {
                        Ok(swept) => self.count_swept(swept),
                        Err(e) => self.check_failed(e),
                    }
                    let _ = reply.send(swept);
                }
                Request::Write(first) => self.batch(rx, held, Some(first)),
                Request::Acks => self.batch(rx, held, None),
            }
        }
    }

    /// Writes `first` (if any), what waits in the queue behind it, and the pending acks, as
    /// one batch.
    fn batch(
        &mut self,
        rx: &mut mpsc::Receiver<Request>,
        held: &mut Option<Request>,
        first: Option<Write>,
    ) {
        let mut weight = first.as_ref().map_or(0, Write::weight);
        let mut batch: Vec<Write> = first.into_iter().collect();
        while batch.len() < MAX_BATCH && weight < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(Request::Write(w)) => {
                    weight += w.weight();
                    batch.push(w);
                }
                // This batch takes the pending acks: the nudge is answered.
                Ok(Request::Acks) => {}
                // Control requests wait for the batch of what came before them.
                Ok(other) => {
                    *held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        self.write_batch(batch);
        self.after_batch();
    }

    /// After an error of the database: notes a failure when fjall now refuses every write.
    fn check_failed(&mut self, e: &StoreError) {
        if self.failure.is_none() && self.ks.poisoned() {
            self.failure = Some(e.to_string());
            // Readiness tells at once, before the batch's callers hear of it.
            self.counters.failed.store(true, Ordering::Relaxed);
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

    /// When the writer must wake up if no request comes: at least every [`PROBE_EVERY`].
    fn next_wake(&self) -> Instant {
        let mut sweep = self.sweeper.wake_at().min(Instant::now() + PROBE_EVERY);
        if !self.acks.is_empty() {
            sweep = sweep.min(Instant::now() + ACKS_WAIT);
        }
        if self.dirty {
            sweep.min(self.last_sync + self.options.sync_interval)
        } else {
            sweep
        }
    }

    fn idle(&mut self) {
        if !self.acks.is_empty() {
            self.write_batch(Vec::new());
        }
        self.sync_if_due();
        if self.sweeper.due(Instant::now()) {
            self.sweep_chunk();
        }
        // fjall's background flushes and compactions poison the database when they fail,
        // with no write of ours failing: look, so that readiness tells before a write fails.
        if self.failure.is_none() && self.ks.poisoned() {
            self.failure = Some("a background flush or compaction failed".into());
            self.counters.failed.store(true, Ordering::Relaxed);
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
                self.check_failed(&e);
            }
        }
    }

    fn count_swept(&mut self, swept: &Swept) {
        self.metrics.expired_messages.increment(swept.messages);
        self.metrics.expired_keys.increment(swept.idempotency_keys);
        self.metrics.expired_cursors.increment(swept.cursors);
        if swept.messages + swept.idempotency_keys + swept.cursors + swept.sessions > 0 {
            self.dirty = true;
        }
    }

    fn sync_if_due(&mut self) {
        if self.dirty
            && self.last_sync.elapsed() >= self.options.sync_interval
            && let Err(e) = self.sync()
        {
            tracing::error!("store: interval fsync failed: {e}");
            self.check_failed(&e);
        }
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.ks
            .db
            .persist(PersistMode::SyncData)
            .map_err(unavailable)?;
        self.synced(started);
        Ok(())
    }

    /// Counts an fsync that began at `started` and clears what waited for one.
    fn synced(&mut self, started: Instant) {
        self.metrics
            .fsync_seconds
            .record(started.elapsed().as_secs_f64());
        self.metrics.fsyncs.increment(1);
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// Writes `batch` and the pending acks as one fjall batch, then answers the requests.
    fn write_batch(&mut self, batch: Vec<Write>) {
        let acks = self.acks.take();
        if batch.is_empty() && acks.is_empty() {
            return;
        }
        if self.slots.len() > CACHE_LIMIT {
            self.forget();
        }
        let now_ms = tether_core::now_ms();
        let requests = batch.len() + acks.len();
        let mut staged = Staged::default();
        // Acks first: they were accepted before anything of this batch was taken from the
        // queue (a device's `note_attempt` after its ack sees the ack, as it did when both
        // came through the queue in order).
        let mut dropped = Vec::new();
        for (cursor, seq) in &acks {
            let staged_ack = self.stage_cursor(&mut staged, cursor.clone(), |c| apply_ack(c, *seq));
            if let Err(e) = staged_ack {
                // Nobody waits for an ack's answer: the device gets a redelivery.
                tracing::warn!(ack = seq.0, "store: an ack is dropped: {e}");
                dropped.push((cursor.clone(), *seq));
            }
        }
        let mut answers = Vec::with_capacity(batch.len());
        for write in batch {
            answers.push(match write {
                Write::Append(append, reply) => {
                    let r = self.stage_append(&mut staged, append);
                    Answer::Append(reply, r)
                }
                Write::AppendMany(appends, reply) => {
                    let rs = appends
                        .into_iter()
                        .map(|append| self.stage_append(&mut staged, append))
                        .collect();
                    Answer::Many(reply, rs)
                }
                Write::Publish {
                    topic,
                    message,
                    reply,
                } => {
                    let r = self.stage_publish(&mut staged, &topic, &message);
                    Answer::Seq(reply, r)
                }
                Write::NoteAttempt { cursor, seq, reply } => {
                    let r = self.stage_cursor(&mut staged, cursor, |c| count_attempt(c, seq));
                    Answer::Count(reply, r)
                }
                Write::Subscribe {
                    user,
                    key,
                    subscribed,
                    max,
                    reply,
                } => {
                    let r = self.stage_subscription(&mut staged, user, key, subscribed, max);
                    Answer::Subscription(reply, r)
                }
                Write::Session { key, value, reply } => {
                    let r = codec::check_key(&key).map(|()| {
                        staged.sessions.insert(key, value);
                    });
                    Answer::Done(reply, r)
                }
            });
        }
        let result = self.commit(&mut staged, now_ms);
        if let Err(e) = &result {
            tracing::warn!(requests, "store: a batch failed: {e}");
            // What the cache says of these inboxes may not be on disk: read it again.
            self.forget();
            self.check_failed(e);
        } else {
            for &slot in &staged.inboxes {
                self.slots[slot].disk_head = None;
            }
            if self.cursors.len() + staged.cursors.len() > CURSOR_CACHE_LIMIT {
                self.cursors.clear();
            }
            self.cursors.extend(staged.cursors.drain());
            self.counters
                .appends
                .fetch_add(staged.appends, Ordering::Relaxed);
            self.metrics.appends.increment(staged.appends);
            self.counters
                .publishes
                .fetch_add(staged.publishes, Ordering::Relaxed);
            self.metrics.publishes.increment(staged.publishes);
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.metrics.batches.increment(1);
        self.metrics.batch_requests.record(requests as f64);
        // Committed: readable on disk now. A batch that failed keeps its acks pending (they
        // stay readable, and the next batch, or the reopened writer, writes them: `apply_ack`
        // only moves forward), but for those that could not be staged at all (a damaged
        // cursor), which would fail again: given up on, a redelivery.
        match &result {
            Ok(()) => self.acks.written(&acks),
            Err(_) => self.acks.written(&dropped),
        }
        let failed = result.err();
        for answer in answers {
            answer.send(failed.as_ref());
        }
    }

    /// Empties the inbox and cursor caches.
    fn forget(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.cursors.clear();
    }
}
