//! [`EmbeddedStore`]: the [`Store`](tether_core::Store) on local disk.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use fjall::Readable;
use tether_core::store::{Append, Appended, Cursor, NewMessage, Page};
use tether_core::{
    AppId, Cursors, DeviceId, Inboxes, Seq, StoreError, SubscriptionError, Subscriptions,
    TopicHistory, TopicId, UserId,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::acks::{PendingAcks, apply_ack};
use super::codec;
use super::expiry::Swept;
use super::inbox;
use super::keyspaces::{Counters, Keyspaces, unavailable};
use super::options::EmbeddedOptions;
use super::recovery::Reopen;
use super::request::{Reply, Request, Subscription, Write};
use super::space::Space;
use super::writer::Writer;
use crate::metrics::StoreMetrics;

mod sessions;

/// Work counters since the store opened, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Write batches committed or attempted.
    pub batches: u64,
    /// fsyncs of the journal.
    pub fsyncs: u64,
    /// Messages x users stored.
    pub appends: u64,
    /// Publications stored in topic histories.
    pub publishes: u64,
    /// Times the database was reopened after it failed.
    pub reopens: u64,
}

/// Whether the store takes new messages, and the free space of its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreHealth {
    /// Bytes free on the store's filesystem at the last sample (every second); `None` when it
    /// cannot be read.
    pub free_bytes: Option<u64>,
    /// `store.min_free_bytes`.
    pub reserve_bytes: u64,
    /// What keeps the store from taking new messages, if anything.
    pub problem: Option<StoreProblem>,
}

/// Why the store takes no new messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreProblem {
    /// Free space is within 1 MiB of the reserve: new messages are refused (or about to be)
    /// until space is freed.
    LowSpace,
    /// The database failed a write (a full disk, an I/O error) and is waiting for room to be
    /// reopened.
    Failed,
}

impl StoreProblem {
    /// A line for `/readyz` and the stats.
    pub fn reason(self) -> &'static str {
        match self {
            StoreProblem::LowSpace => {
                "store: the disk is nearly full (free space at store.min_free_bytes)"
            }
            StoreProblem::Failed => "store: a write failed; waiting for disk space to reopen",
        }
    }
}

/// Durable inboxes, topic histories and subscriptions in a fjall database in one directory.
///
/// Writes (`append`, `publish`, `set_subscription`, `note_attempt`) go to one writer thread
/// over a bounded queue that they never wait on: when it is full, they fail at once with
/// [`StoreError::Overloaded`] (the API turns that into a 503), so a burst beyond what the
/// disk takes is refused, not buffered without end. The writer groups everything waiting into
/// one batch and one fsync. An `ack` does not wait for the writer at all: it is recorded in
/// memory (at most `store.queue` cursors, then [`StoreError::Overloaded`]), readable at once,
/// and written with the writer's next batch (see `super::acks`). Reads go to the database directly: small ones (a cursor, a user's
/// subscriptions, a page of at most [`INLINE_READ`] messages) on the calling task, larger ones
/// on tokio's blocking pool.
///
/// A write whose caller is cancelled after it was queued still happens.
///
/// # A full disk
/// A new message (`append`, `publish`) is refused with [`StoreError::Full`] while the free
/// space of the directory's filesystem is below `min_free_bytes` (see `super::space`); acks,
/// attempts and subscriptions still go through, on the reserve. When the database fails a
/// write all the same (fjall then refuses every write: it "poisons" itself), the writer
/// refuses every write with [`StoreError::Unavailable`] until the filesystem has room again,
/// then reopens the database in place; [`EmbeddedStore::health`] tells which. A failed batch
/// was answered with an error, but may still be found on disk after the reopen.
///
/// # Guarantees
/// Those of [`Store`], with [`Durability::Sync`](crate::config::Durability::Sync) meaning "fsynced before `append` returns"
/// (and `publish`, and `set_subscription` when it changed something; not acks). An appended
/// message is readable once `append` returned, and may be readable a moment before (between
/// the batch's commit and the answer), but with [`Durability::Sync`](crate::config::Durability::Sync) never before its fsync;
/// so are publications and subscriptions. With [`Durability::Interval`](crate::config::Durability::Interval) a write is readable
/// once committed.
///
/// An ack is readable (`cursor`, `cursors`) once `ack` returned, before the writer wrote it;
/// it reaches the journal with the writer's next batch (a nudge wakes the writer for the
/// first ack after each batch) and is fsynced with whatever that batch or a later one
/// fsyncs. A crash loses the acks not yet written or not yet fsynced: their devices get
/// those messages again (at-least-once); no message is lost, and a cursor never moves past
/// what its device acked. `ack` reports a bad key and a closed store; a damaged cursor value
/// or a failed batch is found by the writer, which logs it and drops the ack.
///
/// # Shutdown
/// Call [`EmbeddedStore::close`] and wait for it: the writer finishes what is queued, fsyncs,
/// and releases the directory. Dropping the handle without `close` does the same, but in the
/// background: the directory may still be locked for a moment afterwards.
///
/// [`Store`]: tether_core::Store
pub struct EmbeddedStore {
    requests: mpsc::Sender<Request>,
    /// Acks not yet written, shared with the writer.
    acks: Arc<PendingAcks>,
    /// `None` once closed (and while a failed database is reopened): reads then fail, and the
    /// database closes when the last in-flight read ends. Shared with the writer, which swaps
    /// it when it reopens the database.
    reader: Arc<RwLock<Option<Keyspaces>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: Arc<Counters>,
    metrics: StoreMetrics,
    options: EmbeddedOptions,
    /// `None` when the filesystem's free space cannot be read (no reserve then).
    space: Option<Arc<Space>>,
    fatal: CancellationToken,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Log reads of at most this many messages run on the calling task; larger ones on the
/// blocking pool.
///
/// A connect reads a cursor, the user's subscriptions and a first backlog page (64 messages
/// at most): each is a few microseconds from fjall's memtables, its block cache or the page
/// cache, where a hop to the blocking pool and back (two thread wake-ups) cost 20-30 µs of
/// CPU each, and tripled the CPU of a handshake. A read whose blocks are on neither cache
/// waits for the disk on the async worker; the blocking pool would only move that wait.
pub const INLINE_READ: usize = 64;

/// fjall's own default for the table files it keeps open.
pub const DEFAULT_OPEN_FILES: usize = 900;

fn closed() -> StoreError {
    StoreError::Unavailable("the embedded store is closed or being reopened".into())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    ///
    /// Blocks while fjall recovers its journal: from async code, call it on the blocking pool
    /// when the store may be large. Fails if another store has `dir` open.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_files(dir, options, DEFAULT_OPEN_FILES)
    }

    /// [`EmbeddedStore::open`], keeping at most `open_files` table files open at once
    /// (fjall's descriptor cache, at least 10): the node gives the store a share of the
    /// descriptors it keeps out of the gateway's reach (see `crate::descriptors`).
    pub fn open_with_files(
        dir: &Path,
        options: EmbeddedOptions,
        open_files: usize,
    ) -> Result<EmbeddedStore, StoreError> {
        let open_files = open_files.max(10);
        let ks = Keyspaces::open(dir, open_files).map_err(unavailable)?;
        let space = match Space::watch(dir, options.min_free_bytes) {
            Ok(space) => {
                if space.free() < options.min_free_bytes {
                    tracing::warn!(
                        free = space.free(),
                        min_free_bytes = options.min_free_bytes,
                        dir = %dir.display(),
                        "store: less free space than store.min_free_bytes: new messages are \
                         refused until space is freed"
                    );
                }
                Some(space)
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "store: cannot read the free space ({e}); no reserve is kept");
                None
            }
        };
        let counters = Arc::new(Counters::default());
        let reader = Arc::new(RwLock::new(Some(ks.clone())));
        let fatal = CancellationToken::new();
        let reopen = Reopen {
            dir: dir.to_owned(),
            open_files,
            reader: reader.clone(),
            space: space.clone(),
            fatal: fatal.clone(),
        };
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let acks = Arc::new(PendingAcks::new(options.queue));
        let writer = Writer::new(ks, options, counters.clone(), acks.clone());
        let thread = std::thread::Builder::new()
            .name("tether-store-writer".into())
            .spawn(move || writer.run(rx, reopen))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")))?;
        Ok(EmbeddedStore {
            requests: tx,
            acks,
            reader,
            writer: Mutex::new(Some(thread)),
            counters,
            metrics: StoreMetrics::new(),
            options,
            space,
            fatal,
        })
    }

    /// Whether the store takes new messages, and its free space.
    pub fn health(&self) -> StoreHealth {
        let problem = if self.counters.failed.load(Ordering::Relaxed) {
            Some(StoreProblem::Failed)
        } else if self.space.as_ref().is_some_and(|s| !s.has_room()) {
            Some(StoreProblem::LowSpace)
        } else {
            None
        };
        StoreHealth {
            free_bytes: self.space.as_ref().map(|s| s.free()),
            reserve_bytes: self.options.min_free_bytes,
            problem,
        }
    }

    /// Completes when the store gave up reopening its failed database: the node should stop
    /// and be started again (by its supervisor). What was stored stays on disk.
    pub async fn fatal(&self) {
        self.fatal.cancelled().await;
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            fsyncs: self.counters.fsyncs.load(Ordering::Relaxed),
            appends: self.counters.appends.load(Ordering::Relaxed),
            publishes: self.counters.publishes.load(Ordering::Relaxed),
            reopens: self.counters.reopens.load(Ordering::Relaxed),
        }
    }

    /// Bytes the store takes on disk (journal and tables), or `None` once closed or when fjall
    /// cannot tell. Reads file metadata: call it off the async workers.
    pub fn disk_space(&self) -> Option<u64> {
        let reader = self.reader.read().unwrap_or_else(|e| e.into_inner());
        reader.as_ref()?.db.disk_space().ok()
    }

    /// Writes waiting for the writer thread (at most `store.queue`).
    pub fn queued(&self) -> usize {
        self.requests.max_capacity() - self.requests.capacity()
    }

    /// Finishes every write queued before this call, fsyncs, stops the writer and closes the
    /// database. Later calls of any method fail with [`StoreError::Unavailable`]; calling
    /// `close` again does nothing.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        // `send`, not `try_send`: closing must not fail because the queue is full.
        if self.requests.send(Request::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let thread = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // It has answered and is returning; the join only makes sure it is gone.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.reader
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Deletes every message and idempotency key expired at `now_ms`, and every cursor not
    /// written since `now_ms - cursor_idle` (see `Retention`), now, in one pass (the writer
    /// also does this on its own, a chunk at a time, when it is idle); cursors of older code,
    /// which carry no time, get `now_ms`. Holds up writes while it runs: for tests and
    /// maintenance.
    pub async fn sweep_expired(&self, now_ms: u64) -> Result<Swept, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Sweep { now_ms, reply: tx })
            .await
            .map_err(|_| closed())?;
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Queues a write and waits for its answer.
    async fn write<T>(&self, make: impl FnOnce(Reply<T>) -> Write) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let write = make(tx);
        if write.is_message()
            && let Some(space) = &self.space
            && !space.take(write.weight())
        {
            self.metrics.full.increment(1);
            return Err(StoreError::Full(
                "the store's disk is at its reserve (store.min_free_bytes)".into(),
            ));
        }
        match self.requests.try_send(Request::Write(write)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.overloaded.increment(1);
                return Err(StoreError::Overloaded(
                    "the embedded store's write queue is full".into(),
                ));
            }
            Err(TrySendError::Closed(_)) => return Err(closed()),
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the embedded store's writer stopped".into(),
            ))
        })
    }

    /// Up to `limit` live messages of the log (inbox or topic history) `log` after `after`,
    /// and its head.
    async fn read_log(
        &self,
        log: Vec<u8>,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        codec::check_inbox_key(&log)?;
        let read = move |ks: &Keyspaces| {
            // One snapshot for the head and the messages, so that no message is above the head.
            let snapshot = ks.db.snapshot();
            let meta = inbox::recover(&snapshot, ks, &log, false)?.meta;
            let mut messages = Vec::new();
            let start = meta.first.max(after.0.saturating_add(1));
            if limit > 0 && start <= meta.head {
                let range = codec::message_key(&log, start)..=codec::message_key(&log, meta.head);
                for guard in snapshot.range(&ks.messages, range) {
                    let (key, value) = guard.into_inner().map_err(unavailable)?;
                    // Skip an expired message before copying its payload.
                    if codec::message_expires(&value)? <= now_ms {
                        continue;
                    }
                    let (_, seq) = codec::split_message_key(&key)?;
                    messages.push(codec::decode_message(seq, &value)?);
                    if messages.len() == limit {
                        break;
                    }
                }
            }
            Ok(Page {
                messages,
                head: Seq(meta.head),
            })
        };
        if limit <= INLINE_READ {
            self.read_now(read)
        } else {
            self.read_with(read).await
        }
    }

    /// Runs a small read on the calling task (see [`INLINE_READ`]).
    fn read_now<T>(
        &self,
        read: impl FnOnce(&Keyspaces) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let reader = self.reader.read().unwrap_or_else(|e| e.into_inner());
        read(reader.as_ref().ok_or_else(closed)?)
    }

    /// Runs a large read on the blocking pool, off the async workers.
    async fn read_with<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Keyspaces) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let ks = self
            .reader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(closed)?;
        tokio::task::spawn_blocking(move || read(&ks))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store read failed: {e}")))?
    }
}

#[async_trait]
impl Inboxes for EmbeddedStore {
    async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        self.write(|reply| Write::Append(append, reply)).await
    }

    /// One queue entry and one answer for all of them: they join one batch (one fsync).
    async fn append_many(&self, appends: Vec<Append>) -> Vec<Result<Appended, StoreError>> {
        let n = appends.len();
        if n == 0 {
            return Vec::new();
        }
        match self.write(|reply| Write::AppendMany(appends, reply)).await {
            Ok(answers) => answers,
            Err(e) => vec![Err(e); n],
        }
    }

    async fn read(
        &self,
        app: &AppId,
        user: &UserId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        self.read_log(codec::inbox_key(app, user), after, limit, now_ms)
            .await
    }
}

#[async_trait]
impl Cursors for EmbeddedStore {
    async fn ack(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        let cursor = codec::cursor_key(&codec::inbox_key(app, user), device);
        codec::check_key(&cursor)?;
        if self.requests.is_closed() {
            return Err(closed());
        }
        let nudge = self.acks.add(cursor, seq).map_err(|_| {
            self.metrics.overloaded.increment(1);
            StoreError::Overloaded("too many acks wait for the embedded store's writer".into())
        })?;
        // A full queue needs no nudge: the writer takes the acks with its next batch.
        if nudge && let Err(TrySendError::Closed(_)) = self.requests.try_send(Request::Acks) {
            return Err(closed());
        }
        Ok(())
    }

    async fn cursor(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Cursor, StoreError> {
        let key = codec::cursor_key(&codec::inbox_key(app, user), device);
        codec::check_key(&key)?;
        // The pending ack first, the disk second: the writer forgets an ack only once the
        // disk has it (see `super::acks`).
        let pending = self.acks.get(&key);
        let mut cursor =
            self.read_now(|ks| match ks.cursors.get(&key).map_err(unavailable)? {
                Some(v) => codec::decode_cursor(&v),
                None => Ok(Cursor::default()),
            })?;
        if let Some(seq) = pending {
            apply_ack(&mut cursor, seq);
        }
        Ok(cursor)
    }

    async fn cursors(
        &self,
        app: &AppId,
        user: &UserId,
    ) -> Result<Vec<(DeviceId, Cursor)>, StoreError> {
        let inbox = codec::inbox_key(app, user);
        codec::check_key(&inbox)?;
        // As for `cursor`: pending acks first, then the disk.
        let pending = self.acks.with_prefix(&inbox);
        let mut out = self.read_now(|ks| {
            let mut out = Vec::new();
            for guard in ks.cursors.prefix(&inbox) {
                let (key, value) = guard.into_inner().map_err(unavailable)?;
                out.push((
                    codec::cursor_device(&inbox, &key)?,
                    codec::decode_cursor(&value)?,
                ));
            }
            Ok(out)
        })?;
        for (key, seq) in pending {
            let device = codec::cursor_device(&inbox, &key)?;
            match out.iter_mut().find(|(d, _)| *d == device) {
                Some((_, cursor)) => apply_ack(cursor, seq),
                None => {
                    let mut cursor = Cursor::default();
                    apply_ack(&mut cursor, seq);
                    out.push((device, cursor));
                }
            }
        }
        // Keys sort as device ids do; sorting again costs little and does not rely on it.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn note_attempt(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<u32, StoreError> {
        let cursor = codec::cursor_key(&codec::inbox_key(app, user), device);
        self.write(|reply| Write::NoteAttempt { cursor, seq, reply })
            .await
    }
}

#[async_trait]
impl TopicHistory for EmbeddedStore {
    async fn publish(
        &self,
        app: &AppId,
        topic: &TopicId,
        message: NewMessage,
    ) -> Result<Seq, StoreError> {
        let topic = codec::topic_key(app, topic);
        self.write(|reply| Write::Publish {
            topic,
            message,
            reply,
        })
        .await
    }

    async fn history(
        &self,
        app: &AppId,
        topic: &TopicId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        self.read_log(codec::topic_key(app, topic), after, limit, now_ms)
            .await
    }
}

#[async_trait]
impl Subscriptions for EmbeddedStore {
    async fn set_subscription(
        &self,
        app: &AppId,
        user: &UserId,
        topic: &TopicId,
        subscribed: bool,
        max: usize,
    ) -> Result<bool, SubscriptionError> {
        let user = codec::inbox_key(app, user);
        let key = codec::subscription_key(&user, topic);
        let done = self
            .write(|reply| Write::Subscribe {
                user,
                key,
                subscribed,
                max,
                reply,
            })
            .await?;
        match done {
            Subscription::Set { changed } => Ok(changed),
            Subscription::TooMany(n) => Err(SubscriptionError::TooMany(n)),
        }
    }

    async fn subscriptions(&self, app: &AppId, user: &UserId) -> Result<Vec<TopicId>, StoreError> {
        let user = codec::inbox_key(app, user);
        codec::check_key(&user)?;
        self.read_now(|ks| {
            let mut out = Vec::new();
            for guard in ks.subscriptions.prefix(&user) {
                let (key, value) = guard.into_inner().map_err(unavailable)?;
                codec::decode_subscription(&value)?;
                out.push(codec::subscription_topic(&user, &key)?);
            }
            // Keys sort as topics do; as for cursors, sorting again does not rely on it.
            out.sort();
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tether_core::store::NewMessage;
    use tether_core::{MessageId, Retention};
    use tether_proto::PayloadKind;

    use super::*;
    use crate::config::Durability;
    use crate::store::codec::Meta;

    const CURSOR_IDLE: Duration = Duration::from_secs(3600);

    fn store(dir: &Path, inbox_cap: usize) -> EmbeddedStore {
        EmbeddedStore::open(dir, options(inbox_cap)).unwrap()
    }

    fn options(inbox_cap: usize) -> EmbeddedOptions {
        EmbeddedOptions {
            retention: Retention {
                inbox_cap,
                cursor_idle: CURSOR_IDLE,
                ..Retention::default()
            },
            durability: Durability::Interval,
            sync_interval: Duration::from_millis(5),
            queue: 1024,
            min_free_bytes: 0,
        }
    }

    /// Waits (bounded) until the writer wrote every pending ack.
    async fn acks_written(store: &EmbeddedStore) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.acks.is_empty() {
            assert!(std::time::Instant::now() < deadline, "acks never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn keyspaces(store: &EmbeddedStore) -> Keyspaces {
        store.reader.read().unwrap().clone().unwrap()
    }

    fn append(users: &[&str], id: u64) -> Append {
        Append {
            app: AppId::from("app"),
            users: users.iter().map(|u| UserId::from(*u)).collect(),
            message: NewMessage {
                id: MessageId(id),
                created_ms: tether_core::now_ms(),
                expires_ms: tether_core::now_ms() + 3_600_000,
                kind: PayloadKind::Binary,
                payload: Bytes::from_static(b"x"),
            },
            idempotency: None,
        }
    }

    fn is_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::Corrupt(_)))
    }

    #[tokio::test]
    async fn damaged_values_answer_corrupt_and_the_store_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let (app, broken, fine) = (
            AppId::from("app"),
            UserId::from("broken"),
            UserId::from("fine"),
        );
        let phone = DeviceId::from("phone");
        let ks = keyspaces(&store);
        let inbox = codec::inbox_key(&app, &broken);
        ks.inboxes.insert(&inbox, [codec::VERSION, 1, 2]).unwrap();
        ks.cursors
            .insert(codec::cursor_key(&inbox, &phone), [7u8; 3])
            .unwrap();
        drop(ks);

        assert!(is_corrupt(store.read(&app, &broken, Seq(0), 10, 0).await));
        assert!(is_corrupt(store.cursor(&app, &broken, &phone).await));
        assert!(is_corrupt(store.cursors(&app, &broken).await));
        // An ack does not wait for the writer, so it cannot hear of the damage: the writer
        // drops it (a redelivery), and the damaged value stays what reads report.
        store.ack(&app, &broken, &phone, Seq(1)).await.unwrap();
        assert!(is_corrupt(store.cursor(&app, &broken, &phone).await));
        assert!(is_corrupt(
            store.append(append(&["fine", "broken"], 1)).await
        ));
        assert_eq!(
            store.read(&app, &fine, Seq(0), 10, 0).await.unwrap().head,
            Seq(0),
            "an append that fails for one user stores for none"
        );
        let ok = store.append(append(&["fine"], 2)).await.unwrap();
        assert_eq!(ok.seqs[0].1, Seq(1), "the writer is still serving");
        assert!(store.acks.is_empty(), "the dropped ack is not kept");
        assert!(is_corrupt(store.cursor(&app, &broken, &phone).await));
        store.close().await;
    }

    #[tokio::test]
    async fn an_ack_is_read_back_at_once_and_written_without_an_answer_from_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (app, user) = (AppId::from("app"), UserId::from("u"));
        let (phone, tablet) = (DeviceId::from("phone"), DeviceId::from("tablet"));
        let store = store(dir.path(), 10);
        // Nudged or not, the writer is on another thread: reads must not depend on it.
        for seq in 1..=50 {
            store.ack(&app, &user, &phone, Seq(seq)).await.unwrap();
            assert_eq!(
                store.cursor(&app, &user, &phone).await.unwrap().acked,
                Seq(seq)
            );
        }
        store.ack(&app, &user, &tablet, Seq(3)).await.unwrap();
        store.ack(&app, &user, &phone, Seq(7)).await.unwrap();
        let all = store.cursors(&app, &user).await.unwrap();
        assert_eq!(
            all.iter()
                .map(|(d, c)| (d.as_str(), c.acked.0))
                .collect::<Vec<_>>(),
            vec![("phone", 50), ("tablet", 3)],
            "a lower ack is ignored, a new device is listed"
        );
        // The writer takes pending acks on its own (its nudge), then they are on disk.
        acks_written(&store).await;
        let ks = keyspaces(&store);
        let on_disk = ks
            .cursors
            .get(codec::cursor_key(&codec::inbox_key(&app, &user), &phone));
        let on_disk = codec::decode_cursor(&on_disk.unwrap().expect("written")).unwrap();
        assert_eq!(on_disk.acked, Seq(50));
        drop(ks);
        store.close().await;
        let store = EmbeddedStore::open(dir.path(), options(10)).unwrap();
        assert_eq!(
            store.cursor(&app, &user, &phone).await.unwrap().acked,
            Seq(50)
        );
        assert_eq!(
            store.cursor(&app, &user, &tablet).await.unwrap().acked,
            Seq(3)
        );
        store.close().await;
    }

    #[tokio::test]
    async fn acks_accepted_right_before_a_close_are_on_disk_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let app = AppId::from("app");
        let phone = DeviceId::from("phone");
        let store = store(dir.path(), 10);
        for i in 0..20 {
            let user = UserId::from(format!("u{i}").as_str());
            store.ack(&app, &user, &phone, Seq(i + 1)).await.unwrap();
        }
        store.close().await;
        assert!(matches!(
            store.ack(&app, &UserId::from("u0"), &phone, Seq(30)).await,
            Err(StoreError::Unavailable(_))
        ));
        let store = EmbeddedStore::open(dir.path(), options(10)).unwrap();
        for i in 0..20 {
            let user = UserId::from(format!("u{i}").as_str());
            let acked = store.cursor(&app, &user, &phone).await.unwrap().acked;
            assert_eq!(acked, Seq(i + 1));
        }
        store.close().await;
    }

    #[tokio::test]
    async fn damaged_topic_and_subscription_values_answer_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let app = AppId::from("app");
        let (broken, fine) = (TopicId::from("broken"), TopicId::from("fine"));
        let (alice, bob) = (UserId::from("alice"), UserId::from("bob"));
        let ks = keyspaces(&store);
        ks.inboxes
            .insert(codec::topic_key(&app, &broken), [codec::META_VERSION, 1])
            .unwrap();
        let alice_key = codec::inbox_key(&app, &alice);
        ks.subscriptions
            .insert(codec::subscription_key(&alice_key, &broken), [9u8])
            .unwrap();
        drop(ks);
        let message = append(&["x"], 1).message;

        assert!(is_corrupt(
            store.history(&app, &broken, Seq(0), 10, 0).await
        ));
        assert!(is_corrupt(
            store.publish(&app, &broken, message.clone()).await
        ));
        assert!(is_corrupt(store.subscriptions(&app, &alice).await));
        let set = store
            .set_subscription(&app, &alice, &broken, false, 10)
            .await;
        assert!(
            matches!(set, Err(SubscriptionError::Store(StoreError::Corrupt(_)))),
            "{set:?}"
        );
        assert_eq!(
            store.publish(&app, &fine, message).await.unwrap(),
            Seq(1),
            "the writer is still serving"
        );
        assert!(
            store
                .set_subscription(&app, &bob, &fine, true, 10)
                .await
                .unwrap()
        );
        store.close().await;
    }

    #[tokio::test]
    async fn the_sweep_deletes_cursors_idle_for_cursor_idle_and_dates_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 100);
        let ks = keyspaces(&store);
        let (app, user) = (AppId::from("app"), UserId::from("u"));
        let (phone, tablet) = (DeviceId::from("phone"), DeviceId::from("tablet"));
        let inbox = codec::inbox_key(&app, &user);
        let changed = |device: &DeviceId| {
            let value = ks
                .cursors
                .get(codec::cursor_key(&inbox, device))
                .unwrap()
                .unwrap();
            codec::decode_cursor_changed(&value).unwrap().1
        };
        let idle = CURSOR_IDLE.as_millis() as u64;
        store.ack(&app, &user, &phone, Seq(5)).await.unwrap();
        acks_written(&store).await;
        let p = changed(&phone).expect("cursors are dated");
        // A cursor written by code that did not date cursors (format version 1), strictly
        // later: the writer's own idle sweep may date it before this test's sweep does.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let tablet_cursor = Cursor {
            acked: Seq(3),
            ..Cursor::default()
        };
        let mut old = codec::encode_cursor(tablet_cursor, 0);
        old[0] = codec::VERSION;
        old.truncate(old.len() - 8);
        ks.cursors
            .insert(codec::cursor_key(&inbox, &tablet), old)
            .unwrap();

        // Not idle long enough: both stay, and the tablet's is dated.
        assert_eq!(store.sweep_expired(p + idle - 1).await.unwrap().cursors, 0);
        let t = changed(&tablet).expect("the sweep dates old cursors");
        assert!(t > p);
        assert_eq!(store.cursors(&app, &user).await.unwrap().len(), 2);

        // Idle long enough for the phone's, not for the tablet's.
        assert_eq!(store.sweep_expired(p + idle).await.unwrap().cursors, 1);
        let left = store.cursors(&app, &user).await.unwrap();
        assert_eq!(left, vec![(tablet.clone(), tablet_cursor)]);
        let phone_now = store.cursor(&app, &user, &phone).await.unwrap();
        assert_eq!(phone_now, Cursor::default());
        assert_eq!(store.sweep_expired(t + idle).await.unwrap().cursors, 1);
        assert!(store.cursors(&app, &user).await.unwrap().is_empty());

        // A device that comes back acks as before, forward only.
        store.ack(&app, &user, &phone, Seq(9)).await.unwrap();
        let phone_now = store.cursor(&app, &user, &phone).await.unwrap();
        assert_eq!(phone_now.acked, Seq(9));
        store.close().await;
    }

    #[tokio::test]
    async fn the_cap_leaves_only_the_newest_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 5);
        // Many appends share batches: those the cap pushes out within one are never written.
        let results =
            futures_util::future::join_all((0..300).map(|i| store.append(append(&["u"], i)))).await;
        assert!(results.iter().all(Result::is_ok));
        for i in 300..310 {
            store.append(append(&["u"], i)).await.unwrap();
        }
        let ks = keyspaces(&store);
        let inbox = codec::inbox_key(&AppId::from("app"), &UserId::from("u"));
        let on_disk: Vec<u64> = ks
            .messages
            .prefix(&inbox)
            .map(|g| codec::split_message_key(&g.key().unwrap()).unwrap().1)
            .collect();
        assert_eq!(on_disk, vec![306, 307, 308, 309, 310]);
        let (record, current) =
            codec::decode_meta(&ks.inboxes.get(&inbox).unwrap().unwrap()).unwrap();
        assert!(current);
        assert!(
            record.head <= 310 && record.first <= 306,
            "the record is a lower bound: {record:?}"
        );
        let recovered = inbox::recover(&ks.db.snapshot(), &ks, &inbox, true).unwrap();
        assert_eq!(
            recovered.meta,
            Meta {
                head: 310,
                first: 306
            }
        );
        drop(ks);
        store.close().await;
    }

    #[tokio::test]
    async fn a_lower_cap_after_a_restart_trims_on_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 50);
        for i in 0..50 {
            store.append(append(&["u"], i)).await.unwrap();
        }
        store.close().await;
        drop(store);
        let store = self::store(dir.path(), 3);
        let (app, user) = (AppId::from("app"), UserId::from("u"));
        store.append(append(&["u"], 50)).await.unwrap();
        let page = store.read(&app, &user, Seq(0), 100, 0).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
            vec![49, 50, 51]
        );
        store.close().await;
    }

    #[tokio::test]
    async fn the_idle_writer_sweeps_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        // One message per inbox, so that no later append drops them from an inbox's front.
        for i in 0..10 {
            let mut a = append(&[format!("u{i}").as_str()], i);
            a.message.expires_ms = a.message.created_ms + 100;
            a.idempotency = Some(tether_core::store::Idempotency {
                key: format!("k{i}"),
                expires_ms: a.message.created_ms + 100,
            });
            store.append(a).await.unwrap();
        }
        store.append(append(&["stays"], 10)).await.unwrap();
        let ks = keyspaces(&store);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = (ks.messages.iter().count(), ks.idempotency.iter().count());
            if left == (1, 0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sweep left {left:?} (messages, keys)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(ks);
        store.close().await;
    }

    async fn head(store: &EmbeddedStore, user: &str) -> (u64, Vec<u64>) {
        let page = store
            .read(&AppId::from("app"), &UserId::from(user), Seq(0), 10_000, 0)
            .await
            .unwrap();
        (page.head.0, page.messages.iter().map(|m| m.seq.0).collect())
    }

    #[tokio::test]
    async fn heads_outlive_a_sweep_that_empties_inboxes_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 100);
        let now = tether_core::now_ms();
        let short = |users: &[&str], id| {
            let mut a = append(users, id);
            a.message.expires_ms = now + 1_000;
            a
        };
        // Inboxes of 1 to 7 messages that all expire, so that the sweep's chunks (3 entries
        // in unit tests) end before, at and after the last message of one inbox or another.
        for n in 1..=7u64 {
            for i in 0..n {
                store.append(short(&[&format!("u{n}")], i)).await.unwrap();
            }
        }
        // An inbox whose newest message expires and whose older one does not.
        store.append(append(&["mixed"], 100)).await.unwrap();
        store.append(short(&["mixed"], 101)).await.unwrap();

        let swept = store.sweep_expired(now + 1_000).await.unwrap();
        assert_eq!(swept.messages, 28 + 1);
        for n in 1..=7u64 {
            assert_eq!(head(&store, &format!("u{n}")).await, (n, vec![]));
        }
        assert_eq!(head(&store, "mixed").await, (2, vec![1]));
        store.close().await;
        drop(store);

        // With a cold cache, the head comes back from the disk alone.
        let store = self::store(dir.path(), 100);
        for n in 1..=7u64 {
            let user = format!("u{n}");
            assert_eq!(head(&store, &user).await, (n, vec![]));
            let next = store.append(append(&[&user], 200)).await.unwrap();
            assert_eq!(next.seqs[0].1, Seq(n + 1), "{user}'s seqs continue");
        }
        let next = store.append(append(&["mixed"], 201)).await.unwrap();
        assert_eq!(next.seqs[0].1, Seq(3));
        assert_eq!(head(&store, "mixed").await, (3, vec![1, 3]));
        store.close().await;
    }

    #[tokio::test]
    async fn a_cap_lowered_past_one_batch_of_trimming_stays_trimmed_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 2000);
        // In chunks below the queue's bound (1024), so that none is refused as overloaded.
        for chunk in (0..1100u64).collect::<Vec<_>>().chunks(500) {
            let results = futures_util::future::join_all(
                chunk.iter().map(|&i| store.append(append(&["u"], i))),
            )
            .await;
            assert!(results.iter().all(Result::is_ok));
        }
        store.close().await;
        drop(store);
        // The cap pushes out 1,098 held messages, more than one batch deletes: the rest stay on
        // disk below `first`, and the inbox record must say so.
        let store = self::store(dir.path(), 3);
        store.append(append(&["u"], 1100)).await.unwrap();
        assert_eq!(head(&store, "u").await, (1101, vec![1099, 1100, 1101]));
        store.close().await;
        drop(store);
        let store = self::store(dir.path(), 3);
        assert_eq!(head(&store, "u").await, (1101, vec![1099, 1100, 1101]));
        store.append(append(&["u"], 1101)).await.unwrap();
        assert_eq!(head(&store, "u").await, (1102, vec![1100, 1101, 1102]));
        store.close().await;
    }

    #[tokio::test]
    async fn records_of_older_code_read_and_unknown_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 100);
        for i in 0..3 {
            store.append(append(&["old", "new"], i)).await.unwrap();
        }
        let ks = keyspaces(&store);
        let app = AppId::from("app");
        // A version 1 record, as code that rewrote it with every batch left it: exact, with a
        // head past the last message key (later messages expired and were swept).
        let old = codec::inbox_key(&app, &UserId::from("old"));
        let mut v1 = codec::encode_meta(Meta { head: 7, first: 2 });
        v1[0] = 1;
        ks.inboxes.insert(&old, v1).unwrap();
        let new = codec::inbox_key(&app, &UserId::from("new"));
        let mut v3 = codec::encode_meta(Meta { head: 3, first: 1 });
        v3[0] = 3;
        ks.inboxes.insert(&new, v3).unwrap();
        drop(ks);
        store.close().await;
        drop(store);

        let store = self::store(dir.path(), 100);
        assert_eq!(head(&store, "old").await, (7, vec![2, 3]));
        let next = store.append(append(&["old"], 3)).await.unwrap();
        assert_eq!(next.seqs[0].1, Seq(8));
        let ks = keyspaces(&store);
        let (_, current) = codec::decode_meta(&ks.inboxes.get(&old).unwrap().unwrap()).unwrap();
        assert!(
            current,
            "the writer rewrote the record in the current format"
        );
        drop(ks);
        let user = UserId::from("new");
        assert!(is_corrupt(store.read(&app, &user, Seq(0), 10, 0).await));
        assert!(is_corrupt(store.append(append(&["new"], 4)).await));
        store.close().await;
    }
}
