//! [`MemoryStore`]: the store seam in memory, exact and immediate.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Append, Appended, Cursor, Cursors, Inboxes, NewMessage, Page, Retention, SavedSessions,
    StoreError, StoredMessage, SubscriptionError, Subscriptions, TopicHistory, check_session_size,
    count_attempt,
};
use crate::{AppId, DeviceId, Seq, TopicId, UserId};

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

/// A page of `log`, or an empty one (head 0) for a log never written.
fn page(log: Option<&Log>, after: Seq, limit: usize, now_ms: u64) -> Page {
    match log {
        Some(log) => log.page(after, limit, now_ms),
        None => Page {
            messages: Vec::new(),
            head: Seq::ZERO,
        },
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
    /// Saved sessions: (app, user, device) -> (value, expires_ms). An expired one is removed
    /// when a save or a read meets it.
    saved: HashMap<(AppId, UserId, DeviceId), (Bytes, u64)>,
    saves: u64,
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
impl Inboxes for MemoryStore {
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
        let inbox = state.inboxes.get(&(app.clone(), user.clone()));
        Ok(page(inbox.map(|i| &i.log), after, limit, now_ms))
    }
}

#[async_trait]
impl Cursors for MemoryStore {
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
}

#[async_trait]
impl TopicHistory for MemoryStore {
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
        let history = state.topics.get(&(app.clone(), topic.clone()));
        Ok(page(history, after, limit, now_ms))
    }
}

#[async_trait]
impl Subscriptions for MemoryStore {
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

#[async_trait]
impl SavedSessions for MemoryStore {
    async fn save_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        value: Bytes,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        check_session_size(&value)?;
        let mut state = self.state();
        // Every 256th save sweeps the expired ones, so that they cannot pile up.
        state.saves = state.saves.wrapping_add(1);
        if state.saves.is_multiple_of(256) {
            let now = crate::now_ms();
            state.saved.retain(|_, (_, expires)| *expires > now);
        }
        let key = (app.clone(), user.clone(), device.clone());
        state.saved.insert(key, (value, expires_ms));
        Ok(())
    }

    async fn saved_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let mut state = self.state();
        let key = (app.clone(), user.clone(), device.clone());
        match state.saved.get(&key) {
            Some((value, expires)) if *expires > now_ms => Ok(Some(value.clone())),
            Some(_) => {
                state.saved.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn forget_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<(), StoreError> {
        let key = (app.clone(), user.clone(), device.clone());
        self.state().saved.remove(&key);
        Ok(())
    }
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
