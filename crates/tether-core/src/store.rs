//! The store seam: durable per-user inboxes, device cursors, and idempotency keys.
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
//! Backends: [`MemoryStore`] (tests, and nodes that need no durability), the embedded store in
//! the server crate (`tether serve`'s default), Redis with the cluster mode. All of them pass
//! [`crate::contract::store_contract`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tether_proto::PayloadKind;

use crate::{AppId, DeviceId, MessageId, Seq, TopicId, UserId};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or refused the write; nothing was stored. The caller may
    /// retry (with the same idempotency key).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store is taking no more work right now (its queue is full); nothing was stored.
    #[error("store overloaded: {0}")]
    Overloaded(String),
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
    /// (the poison guard's count; see [`Store::note_attempt`]).
    pub attempt_seq: Seq,
    pub attempts: u32,
}

/// Durable inboxes.
///
/// # Guarantees every backend gives
/// - `append` is atomic per inbox and all-or-nothing per call when it returns `Ok` (a failed
///   call may have appended to none of the users). Seqs are strictly increasing and gapless per
///   (app, user), also across restarts, and never reused, even after every message expired.
/// - When `append` returns `Ok`, the message is as durable as the backend's mode promises (the
///   embedded store: on disk, fsynced, unless configured to fsync on an interval).
/// - Appends of one inbox are visible to `read` in seq order: when `read` returns seq `n`, every
///   earlier seq that is still held is returned by a read after a lower seq.
/// - Expired messages are never returned. Cursors only move forward.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Appends `append.message` to the inbox of each of `append.users` and returns their seqs.
    ///
    /// With an idempotency key that was appended before and has not expired, nothing is stored
    /// and the first call's [`Appended`] comes back with `duplicate: true`. Two concurrent
    /// calls with one key store once. An inbox over the cap drops its oldest messages.
    async fn append(&self, append: Append) -> Result<Appended, StoreError>;

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

    /// Records that `device` has everything of (app, user) up to `seq`. A lower seq than the
    /// cursor's is ignored. Moving past the poison guard's message resets its count.
    ///
    /// Acks are cheap and may be less durable than appends: a lost ack means a redelivery,
    /// which at-least-once allows.
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

    /// Appends `message` to the history of (app, topic) and returns its offset.
    ///
    /// Offsets follow the same rules as inbox seqs: strictly increasing and gapless per
    /// (app, topic), across restarts too, never reused. Durable as `append` is. A history over
    /// [`Retention::topic_history`] drops its oldest publications.
    async fn publish(
        &self,
        app: &AppId,
        topic: &TopicId,
        message: NewMessage,
    ) -> Result<Seq, StoreError>;

    /// Up to `limit` publications of (app, topic) with an offset above `after` that have not
    /// expired at `now_ms`, in offset order, and the last offset assigned (`Page::head`). The
    /// same visibility guarantee as [`Store::read`]: every earlier offset still held is
    /// returned by a read after a lower offset.
    async fn history(
        &self,
        app: &AppId,
        topic: &TopicId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError>;

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

type InboxKey = (AppId, UserId);

/// One log of messages with gapless seqs: an inbox's messages, or a topic's history.
#[derive(Debug, Default)]
struct Log {
    head: Seq,
    messages: VecDeque<StoredMessage>,
}

impl Log {
    /// Appends `message` with the next seq, dropping expired messages from the front and the
    /// oldest past `cap`.
    fn push(&mut self, message: &NewMessage, cap: usize) -> Seq {
        let now = message.created_ms;
        self.head = self.head.next();
        while self.messages.front().is_some_and(|m| m.expires_ms <= now) {
            self.messages.pop_front();
        }
        self.messages.push_back(message.stored(self.head));
        while self.messages.len() > cap {
            self.messages.pop_front();
        }
        self.head
    }

    /// Up to `limit` live messages after `after`, and the head.
    fn page(&self, after: Seq, limit: usize, now_ms: u64) -> Page {
        let start = self.messages.partition_point(|m| m.seq <= after);
        Page {
            messages: self
                .messages
                .range(start..)
                .filter(|m| m.expires_ms > now_ms)
                .take(limit)
                .cloned()
                .collect(),
            head: self.head,
        }
    }
}

#[derive(Debug, Default)]
struct Inbox {
    log: Log,
    cursors: BTreeMap<DeviceId, Cursor>,
}

type IdemKey = (AppId, String);

#[derive(Debug, Default)]
struct State {
    inboxes: HashMap<InboxKey, Inbox>,
    topics: HashMap<(AppId, TopicId), Log>,
    /// Server-side subscriptions; no key maps to an empty set.
    subscriptions: HashMap<InboxKey, BTreeSet<TopicId>>,
    /// Key -> (expiry, first answer).
    idempotency: HashMap<IdemKey, (u64, Appended)>,
    /// Keys in the order they were stored, to forget expired ones without a scan (the window
    /// is one setting, so this is also roughly expiry order).
    idempotency_order: VecDeque<(u64, IdemKey)>,
}

/// The in-memory store: exact and immediate, gone when the process exits.
#[derive(Debug, Default)]
pub struct MemoryStore {
    retention: Retention,
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new(retention: Retention) -> Self {
        MemoryStore {
            retention,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        let now = append.message.created_ms;
        let mut state = self.state();
        if let Some(idem) = &append.idempotency {
            let key = (append.app.clone(), idem.key.clone());
            if let Some((expires, first)) = state.idempotency.get(&key)
                && *expires > now
            {
                let mut first = first.clone();
                first.duplicate = true;
                return Ok(first);
            }
        }
        let cap = self.retention.inbox_cap.max(1);
        let mut seqs = Vec::with_capacity(append.users.len());
        for user in &append.users {
            let inbox = state
                .inboxes
                .entry((append.app.clone(), user.clone()))
                .or_default();
            seqs.push((user.clone(), inbox.log.push(&append.message, cap)));
        }
        let appended = Appended {
            id: append.message.id,
            created_ms: append.message.created_ms,
            seqs,
            duplicate: false,
        };
        if let Some(idem) = append.idempotency {
            while let Some((expires, _)) = state.idempotency_order.front()
                && *expires <= now
            {
                let (_, key) = state.idempotency_order.pop_front().expect("front exists");
                if state.idempotency.get(&key).is_some_and(|(e, _)| *e <= now) {
                    state.idempotency.remove(&key);
                }
            }
            let key = (append.app, idem.key);
            state
                .idempotency_order
                .push_back((idem.expires_ms, key.clone()));
            state
                .idempotency
                .insert(key, (idem.expires_ms, appended.clone()));
        }
        Ok(appended)
    }

    async fn read(
        &self,
        app: &AppId,
        user: &UserId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        let state = self.state();
        let Some(inbox) = state.inboxes.get(&(app.clone(), user.clone())) else {
            return Ok(Page {
                messages: Vec::new(),
                head: Seq::ZERO,
            });
        };
        Ok(inbox.log.page(after, limit, now_ms))
    }

    async fn ack(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let inbox = state
            .inboxes
            .entry((app.clone(), user.clone()))
            .or_default();
        let cursor = inbox.cursors.entry(device.clone()).or_default();
        if seq > cursor.acked {
            cursor.acked = seq;
            if cursor.attempt_seq <= seq {
                cursor.attempts = 0;
            }
        }
        Ok(())
    }

    async fn cursor(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Cursor, StoreError> {
        let state = self.state();
        Ok(state
            .inboxes
            .get(&(app.clone(), user.clone()))
            .and_then(|inbox| inbox.cursors.get(device).copied())
            .unwrap_or_default())
    }

    async fn cursors(
        &self,
        app: &AppId,
        user: &UserId,
    ) -> Result<Vec<(DeviceId, Cursor)>, StoreError> {
        let state = self.state();
        Ok(state
            .inboxes
            .get(&(app.clone(), user.clone()))
            .map(|inbox| inbox.cursors.iter().map(|(d, c)| (d.clone(), *c)).collect())
            .unwrap_or_default())
    }

    async fn note_attempt(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<u32, StoreError> {
        let mut state = self.state();
        let inbox = state
            .inboxes
            .entry((app.clone(), user.clone()))
            .or_default();
        let cursor = inbox.cursors.entry(device.clone()).or_default();
        Ok(count_attempt(cursor, seq))
    }

    async fn publish(
        &self,
        app: &AppId,
        topic: &TopicId,
        message: NewMessage,
    ) -> Result<Seq, StoreError> {
        let cap = self.retention.topic_history.max(1);
        let mut state = self.state();
        let history = state
            .topics
            .entry((app.clone(), topic.clone()))
            .or_default();
        Ok(history.push(&message, cap))
    }

    async fn history(
        &self,
        app: &AppId,
        topic: &TopicId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        let state = self.state();
        let Some(history) = state.topics.get(&(app.clone(), topic.clone())) else {
            return Ok(Page {
                messages: Vec::new(),
                head: Seq::ZERO,
            });
        };
        Ok(history.page(after, limit, now_ms))
    }

    async fn set_subscription(
        &self,
        app: &AppId,
        user: &UserId,
        topic: &TopicId,
        subscribed: bool,
        max: usize,
    ) -> Result<bool, SubscriptionError> {
        let mut state = self.state();
        let key = (app.clone(), user.clone());
        if !subscribed {
            let Some(topics) = state.subscriptions.get_mut(&key) else {
                return Ok(false);
            };
            let changed = topics.remove(topic);
            if topics.is_empty() {
                state.subscriptions.remove(&key);
            }
            return Ok(changed);
        }
        let topics = state.subscriptions.entry(key).or_default();
        if topics.contains(topic) {
            return Ok(false);
        }
        if topics.len() >= max {
            let n = topics.len();
            if topics.is_empty() {
                state.subscriptions.remove(&(app.clone(), user.clone()));
            }
            return Err(SubscriptionError::TooMany(n));
        }
        topics.insert(topic.clone());
        Ok(true)
    }

    async fn subscriptions(&self, app: &AppId, user: &UserId) -> Result<Vec<TopicId>, StoreError> {
        let state = self.state();
        Ok(state
            .subscriptions
            .get(&(app.clone(), user.clone()))
            .map(|topics| topics.iter().cloned().collect())
            .unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_contract() {
        let store = MemoryStore::new(Retention {
            inbox_cap: crate::contract::CONTRACT_INBOX_CAP,
            topic_history: crate::contract::CONTRACT_TOPIC_HISTORY,
            ..Retention::default()
        });
        crate::contract::store_contract(&store).await;
    }
}
