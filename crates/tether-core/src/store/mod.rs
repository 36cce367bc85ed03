//! The store seam: durable per-user inboxes, device cursors, topic histories, idempotency keys
//! and server-side subscriptions.
//!
//! An inbox belongs to one (app, user). Appending gives each message the inbox's next seq;
//! devices ack cumulatively, and the store keeps one cursor per (device, inbox). Messages leave
//! an inbox when they expire (per-message ttl) or when the inbox passes its cap (oldest first);
//! an ack does not delete, because other devices of the user may not have the message yet.
//!
//! A topic's history is a log of the same shape, keyed (app, topic): each publication takes the
//! next offset, and the history keeps the newest [`Retention::topic_history`] publications that
//! have not expired. The store also remembers the topics the business subscribed each user to,
//! so that the user's later connections join them too.
//!
//! The store also keeps what a transport remembers of a device between its connections (MQTT's
//! persistent sessions): one small value per (app, user, device), with an expiry.
//!
//! The seam is five traits, each with its guarantees: [`Inboxes`], [`Cursors`],
//! [`TopicHistory`], [`Subscriptions`] and [`SavedSessions`]; [`Store`] is all five, what a
//! node is given. A part that needs one of them takes only that one.
//!
//! Backends: [`MemoryStore`] (tests, and nodes that need no durability; in [`memory`]), the
//! embedded store in the server crate (`tether serve`'s default), Redis with the cluster mode.
//! All of them pass `contract::store_contract` (the `testing` feature).

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;
use tether_proto::PayloadKind;

use crate::{AppId, DeviceId, MessageId, Seq, TopicId, UserId};

pub mod memory;

pub use memory::MemoryStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or refused the write; nothing was stored. The caller may
    /// retry (with the same idempotency key).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store is taking no more work right now (its queue is full); nothing was stored.
    #[error("store overloaded: {0}")]
    Overloaded(String),
    /// The store keeps its last free space for what is already stored (acks, expiry) and
    /// takes no new messages until space is freed; nothing was stored.
    #[error("store full: {0}")]
    Full(String),
    /// Stored data could not be read back: a bug or a damaged store.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

/// A message as an inbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: Seq,
    pub id: MessageId,
    /// When the message was accepted, ms since the epoch.
    pub created_ms: u64,
    /// From this instant (ms since the epoch) on, the message is never returned.
    pub expires_ms: u64,
    pub kind: PayloadKind,
    pub payload: Bytes,
}

/// A message to append: everything but the seq, which the store assigns per inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: MessageId,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub kind: PayloadKind,
    pub payload: Bytes,
}

impl NewMessage {
    pub fn stored(&self, seq: Seq) -> StoredMessage {
        StoredMessage {
            seq,
            id: self.id,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            kind: self.kind,
            payload: self.payload.clone(),
        }
    }
}

/// One message for one or more users of an app.
#[derive(Debug, Clone)]
pub struct Append {
    pub app: AppId,
    /// Distinct users; each gets the message in its own inbox.
    pub users: Vec<UserId>,
    pub message: NewMessage,
    /// Makes a retried append a no-op that answers the first append's result.
    pub idempotency: Option<Idempotency>,
}

/// An idempotency key of an app, remembered until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub expires_ms: u64,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The message id and creation time (the first append's, for a duplicate).
    pub id: MessageId,
    pub created_ms: u64,
    /// Each user's seq for the message, in the order of the append's users.
    pub seqs: Vec<(UserId, Seq)>,
    /// The idempotency key was seen before: nothing was stored, and this is the first answer.
    pub duplicate: bool,
}

/// A slice of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Live messages after the requested seq, in seq order. Seqs skip over messages that
    /// expired or were trimmed by the cap.
    pub messages: Vec<StoredMessage>,
    /// The last seq the inbox ever assigned (0 if none), whether or not it is still held.
    pub head: Seq,
}

/// Where one device stands in one inbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Everything up to here is acked.
    pub acked: Seq,
    /// The message a backlog last began with, and how many backlogs in a row began with it
    /// (the poison guard's count; see [`Cursors::note_attempt`]).
    pub attempt_seq: Seq,
    pub attempts: u32,
}

/// Every seam of the store: what a node holds durably. Implemented for every type that
/// implements the five parts, so a backend implements those and `Arc<dyn Store>` serves as each
/// of them (`Arc<dyn Store>` upcasts to `Arc<dyn Inboxes>` and the others).
pub trait Store:
    Inboxes + Cursors + TopicHistory + Subscriptions + SavedSessions + Send + Sync + Debug + 'static
{
}

impl<T> Store for T where
    T: Inboxes
        + Cursors
        + TopicHistory
        + Subscriptions
        + SavedSessions
        + Send
        + Sync
        + Debug
        + 'static
{
}

/// Durable per-user inboxes.
///
/// # Guarantees every backend gives
/// - `append` is atomic per inbox and all-or-nothing per call when it returns `Ok` (a failed
///   call may have appended to none of the users). Seqs are strictly increasing and gapless per
///   (app, user), also across restarts, and never reused, even after every message expired.
/// - When `append` returns `Ok`, the message is as durable as the backend's mode promises (the
///   embedded store: on disk, fsynced, unless configured to fsync on an interval).
/// - Appends of one inbox are visible to `read` in seq order: when `read` returns seq `n`, every
///   earlier seq that is still held is returned by a read after a lower seq.
/// - Expired messages are never returned.
#[async_trait]
pub trait Inboxes: Send + Sync + Debug + 'static {
    /// Appends `append.message` to the inbox of each of `append.users` and returns their seqs.
    ///
    /// With an idempotency key that was appended before and has not expired, nothing is stored
    /// and the first call's [`Appended`] comes back with `duplicate: true`. Two concurrent
    /// calls with one key store once. An inbox over the cap drops its oldest messages.
    async fn append(&self, append: Append) -> Result<Appended, StoreError>;

    /// Each of `appends` as if by [`Inboxes::append`], one answer per append, in their order;
    /// for callers with many appends at once (a batch push), so that a backend can write them
    /// together (the embedded store: one queue entry, one batch, one fsync).
    ///
    /// Each append keeps every guarantee of [`Inboxes::append`] on its own: one can fail while
    /// the others succeed. Two appends of one inbox take their seqs in the order given. When
    /// this returns, every `Ok` append is as durable as `append` promises.
    ///
    /// The default appends them one after another.
    async fn append_many(&self, appends: Vec<Append>) -> Vec<Result<Appended, StoreError>> {
        let mut answers = Vec::with_capacity(appends.len());
        for append in appends {
            answers.push(self.append(append).await);
        }
        answers
    }

    /// Up to `limit` messages of (app, user) with a seq above `after` that have not expired at
    /// `now_ms`, in seq order, and the inbox head.
    async fn read(
        &self,
        app: &AppId,
        user: &UserId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError>;
}

/// Where each device stands in each inbox: one [`Cursor`] per (app, user, device).
///
/// # Guarantees every backend gives
/// - Cursors only move forward.
/// - Acks are cheap and may be less durable than appends: a lost ack means a redelivery, which
///   at-least-once allows.
#[async_trait]
pub trait Cursors: Send + Sync + Debug + 'static {
    /// Records that `device` has everything of (app, user) up to `seq`. A lower seq than the
    /// cursor's is ignored. Moving past the poison guard's message resets its count.
    async fn ack(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<(), StoreError>;

    /// The cursor of `device` in (app, user); a device never seen has the default cursor.
    async fn cursor(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Cursor, StoreError>;

    /// Every device cursor of (app, user), sorted by device.
    async fn cursors(
        &self,
        app: &AppId,
        user: &UserId,
    ) -> Result<Vec<(DeviceId, Cursor)>, StoreError>;

    /// Counts one more delivery attempt of `seq` to `device` as the first message of a backlog
    /// and returns the count: 1 when the last attempt recorded was of another seq, one more
    /// than before when it was of this one.
    async fn note_attempt(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<u32, StoreError>;
}

/// Durable topic histories: per (app, topic), a log of the same shape as an inbox.
///
/// # Guarantees every backend gives
/// - Offsets follow the rules of inbox seqs: strictly increasing and gapless per (app, topic),
///   also across restarts, and never reused, even after every publication expired.
/// - When `publish` returns `Ok`, the publication is as durable as an [`Inboxes::append`].
/// - `history` has the visibility of [`Inboxes::read`]: every earlier offset still held is
///   returned by a read after a lower offset.
/// - Expired publications are never returned. A topic and a user's inbox never share a log,
///   whatever their ids.
#[async_trait]
pub trait TopicHistory: Send + Sync + Debug + 'static {
    /// Appends `message` to the history of (app, topic) and returns its offset. A history over
    /// [`Retention::topic_history`] drops its oldest publications.
    async fn publish(
        &self,
        app: &AppId,
        topic: &TopicId,
        message: NewMessage,
    ) -> Result<Seq, StoreError>;

    /// Up to `limit` publications of (app, topic) with an offset above `after` that have not
    /// expired at `now_ms`, in offset order, and the last offset assigned (`Page::head`).
    async fn history(
        &self,
        app: &AppId,
        topic: &TopicId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError>;
}

/// The topics the business subscribed each user to, so that the user's later connections join
/// them too.
///
/// # Guarantees every backend gives
/// - `set_subscription` is atomic per user: concurrent subscriptions cannot pass `max`
///   together.
#[async_trait]
pub trait Subscriptions: Send + Sync + Debug + 'static {
    /// Records that the business subscribed (`subscribed: true`) or unsubscribed `user` to
    /// `topic`. Returns whether this changed anything. Refuses a subscription beyond `max`
    /// topics for the user with [`SubscriptionError::TooMany`].
    async fn set_subscription(
        &self,
        app: &AppId,
        user: &UserId,
        topic: &TopicId,
        subscribed: bool,
        max: usize,
    ) -> Result<bool, SubscriptionError>;

    /// The topics the business subscribed `user` to, sorted.
    async fn subscriptions(&self, app: &AppId, user: &UserId) -> Result<Vec<TopicId>, StoreError>;
}

/// The largest value [`SavedSessions::save_session`] takes.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;

/// What a transport remembers of a device between its connections: MQTT's persistent sessions
/// (its subscriptions and where each stands, docs/mqtt.md 4.4), so that a device that comes
/// back, to this node or another, resumes them. One opaque value per (app, user, device), which
/// the transport encodes; the store only keeps it until its expiry.
///
/// # Guarantees every backend gives
/// - `save_session` replaces the value whole: the last save wins. It is as durable as an ack
///   ([`Cursors::ack`]): a crash may lose the last saves, never return a mix of two.
/// - A value is never returned at or after its `expires_ms`, and is deleted some time after
///   it (a backend's sweep or the key's own ttl): stored sessions do not pile up.
/// - A value over [`MAX_SESSION_BYTES`] is refused with [`StoreError::Unavailable`]: nothing is stored, the old value stays.
#[async_trait]
pub trait SavedSessions: Send + Sync + Debug + 'static {
    /// Keeps `value` for (app, user, device) until `expires_ms` (ms since the epoch).
    async fn save_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        value: Bytes,
        expires_ms: u64,
    ) -> Result<(), StoreError>;

    /// The value saved for (app, user, device), unless it expired at `now_ms` or none was.
    async fn saved_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<Option<Bytes>, StoreError>;

    /// Forgets the value of (app, user, device), if there is one.
    async fn forget_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<(), StoreError>;
}

/// Refuses a session value larger than [`MAX_SESSION_BYTES`] (every backend checks it first).
pub fn check_session_size(value: &[u8]) -> Result<(), StoreError> {
    match value.len() {
        n if n > MAX_SESSION_BYTES => Err(StoreError::Unavailable(format!(
            "a saved session of {n} bytes is larger than {MAX_SESSION_BYTES}"
        ))),
        _ => Ok(()),
    }
}

/// Why a server-side subscription was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscriptionError {
    #[error("the user already has {0} topics")]
    TooMany(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Retention settings a store applies on its own.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Most messages one inbox holds; appending past it drops the oldest.
    pub inbox_cap: usize,
    /// Most publications one topic's history holds; publishing past it drops the oldest.
    pub topic_history: usize,
    /// A device's cursor not written (by an ack or an attempt count) for this long may be
    /// forgotten: the server's `store.max_ttl`, after which every message it covers has
    /// expired, so a device that comes back without it is sent nothing it had. The embedded
    /// store deletes such cursors one by one, the Redis store a user's cursors together once
    /// none of them was written for this long; the in-memory store keeps them while it lives.
    pub cursor_idle: std::time::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            inbox_cap: 1000,
            topic_history: 1000,
            cursor_idle: std::time::Duration::from_secs(30 * 86_400),
        }
    }
}

/// The poison guard's bookkeeping, shared by backends: one more attempt of `seq`.
pub fn count_attempt(cursor: &mut Cursor, seq: Seq) -> u32 {
    if cursor.attempt_seq == seq {
        cursor.attempts = cursor.attempts.saturating_add(1);
    } else {
        cursor.attempt_seq = seq;
        cursor.attempts = 1;
    }
    cursor.attempts
}
