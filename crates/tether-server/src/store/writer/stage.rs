//! The writer's staging: loading an inbox or topic history into its cache, staging a batch's
//! appends, publications, subscriptions and cursors, and committing the batch as one fjall
//! write batch (see the parent module for when it is synced and answered).

use std::time::Instant;

use fjall::{PersistMode, Slice};
use tether_core::store::{Append, Appended, Cursor, NewMessage};
use tether_core::{Seq, StoreError};

use super::super::codec::{self, IdemRecord};
use super::super::expiry::expire_front;
use super::super::inbox::{self, Inbox};
use super::super::keyspaces::unavailable;
use super::super::request::Subscription;
use super::{Cached, MAX_TRIM, Staged, StagedMessage, Writer};
use crate::config::Durability;

impl Writer {
    /// Loads an inbox or topic history holding at most `cap` messages into the cache (the only
    /// fallible part of an append to it) and returns its slot. A key is always loaded with
    /// the same cap: inbox and topic keys never meet.
    pub(super) fn load(&mut self, key: &[u8], cap: usize) -> Result<usize, StoreError> {
        if let Some(&slot) = self.index.get(key) {
            return Ok(slot);
        }
        let recovered = inbox::recover(&self.ks.db.snapshot(), &self.ks, key, true)?;
        let slot = self.slots.len();
        self.slots.push(Cached {
            key: key.into(),
            cap: cap.max(1) as u64,
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
    pub(super) fn stage_append(
        &mut self,
        st: &mut Staged,
        append: Append,
    ) -> Result<Appended, StoreError> {
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
        check_payload(m)?;
        let cap = self.options.retention.inbox_cap;
        let mut slots = Vec::with_capacity(append.users.len());
        let mut key = std::mem::take(&mut self.key_buf);
        for user in &append.users {
            key.clear();
            codec::put_inbox_key(&mut key, &append.app, user);
            let slot = codec::check_inbox_key(&key).and_then(|()| self.load(&key, cap));
            match slot {
                Ok(slot) => slots.push(slot),
                Err(e) => {
                    self.key_buf = key;
                    return Err(e);
                }
            }
        }
        self.key_buf = key;

        let value = stage_value(st, m);
        let mut seqs = Vec::with_capacity(append.users.len());
        for (user, slot) in append.users.iter().zip(slots) {
            // A user listed twice gets two seqs: both go through the one cache entry.
            let seq = self.stage_message(st, slot, value);
            seqs.push((user.clone(), seq));
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

    /// Adds a publication to the batch, or answers it (before any change, like an append).
    pub(super) fn stage_publish(
        &mut self,
        st: &mut Staged,
        topic: &[u8],
        message: &NewMessage,
    ) -> Result<Seq, StoreError> {
        check_payload(message)?;
        codec::check_inbox_key(topic)?;
        let slot = self.load(topic, self.options.retention.topic_history)?;
        let value = stage_value(st, message);
        let offset = self.stage_message(st, slot, value);
        st.publishes += 1;
        Ok(offset)
    }

    /// Gives the message `value` of the batch the next seq of the log in `slot`.
    pub(super) fn stage_message(&mut self, st: &mut Staged, slot: usize, value: usize) -> Seq {
        let cached = &mut self.slots[slot];
        if cached.disk_head.is_none() {
            cached.disk_head = Some(cached.inbox.meta.head);
            st.inboxes.push(slot);
        }
        cached.inbox.meta.head += 1;
        let seq = cached.inbox.meta.head;
        st.messages.push(StagedMessage { slot, seq, value });
        Seq(seq)
    }

    /// Adds a subscription change to the batch: reads what the disk and the batch say of the
    /// subscription and of the user's count, and decides. The count is a scan of the user's
    /// subscription keys, once per batch that touches the user.
    pub(super) fn stage_subscription(
        &mut self,
        st: &mut Staged,
        user: Vec<u8>,
        key: Vec<u8>,
        subscribed: bool,
        max: usize,
    ) -> Result<Subscription, StoreError> {
        codec::check_key(&key)?;
        let held = match st.subscriptions.get(&key) {
            Some(&held) => held,
            None => match self.ks.subscriptions.get(&key).map_err(unavailable)? {
                Some(v) => codec::decode_subscription(&v).map(|()| true)?,
                None => false,
            },
        };
        if held == subscribed {
            return Ok(Subscription::Set { changed: false });
        }
        let count = match st.subscription_counts.get(&user) {
            Some(&n) => n,
            None => {
                let mut n = 0;
                for guard in self.ks.subscriptions.prefix(&user) {
                    guard.key().map_err(unavailable)?;
                    n += 1;
                }
                n
            }
        };
        let count = if subscribed {
            if count >= max {
                return Ok(Subscription::TooMany(count));
            }
            count + 1
        } else {
            // The key exists, so the count is at least 1.
            count.saturating_sub(1)
        };
        st.subscription_counts.insert(user, count);
        st.subscriptions.insert(key, subscribed);
        Ok(Subscription::Set { changed: true })
    }

    pub(super) fn stage_cursor<T>(
        &mut self,
        st: &mut Staged,
        key: Vec<u8>,
        change: impl FnOnce(&mut Cursor) -> T,
    ) -> Result<T, StoreError> {
        codec::check_key(&key)?;
        if let Some(cursor) = st.cursors.get_mut(&key) {
            return Ok(change(cursor));
        }
        let mut cursor = match self.cursors.get(&key) {
            Some(&cursor) => cursor,
            None => match self.ks.cursors.get(&key).map_err(unavailable)? {
                Some(v) => codec::decode_cursor(&v)?,
                None => Cursor::default(),
            },
        };
        let out = change(&mut cursor);
        st.cursors.insert(key, cursor);
        Ok(out)
    }

    /// Applies retention to the inboxes of the batch, writes it, and fsyncs it when the
    /// durability mode asks for that before answering.
    ///
    /// The fsync is part of the commit: fjall writes a batch to its journal, persists the
    /// journal in the batch's mode, and only then inserts the batch into the memtables and
    /// makes it visible (`fjall::WriteBatch::commit`). So no read, a connection's backlog
    /// included, sees a message before it is on disk: a message sent before its fsync could
    /// otherwise vanish on power loss and its seq be given to another, which a client that had
    /// the first would then skip.
    pub(super) fn commit(&mut self, st: &mut Staged, now_ms: u64) -> Result<(), StoreError> {
        let ks = self.ks.clone();
        let sync_now = self.options.durability == Durability::Sync && st.wants_fsync();
        let mode = if sync_now {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        };
        let mut batch = ks.db.batch().durability(Some(mode));
        let mut expired = 0;
        for &slot in &st.inboxes {
            let cached = &mut self.slots[slot];
            let Some(disk_head) = cached.disk_head else {
                continue;
            };
            let inbox = &mut cached.inbox;
            let old_first = inbox.meta.first;
            let first = old_first.max((inbox.meta.head + 1).saturating_sub(cached.cap));
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
        for (key, cursor) in &st.cursors {
            batch.insert(
                &ks.cursors,
                key.as_slice(),
                codec::encode_cursor(*cursor, now_ms),
            );
        }
        for (key, record) in st.idempotency.drain() {
            batch.insert(&ks.idempotency, key, codec::encode_idempotency(&record)?);
        }
        for (key, value) in st.sessions.drain() {
            match value {
                Some(value) => batch.insert(&ks.sessions, key, value),
                None => batch.remove(&ks.sessions, key),
            }
        }
        for (key, subscribed) in st.subscriptions.drain() {
            if subscribed {
                batch.insert(&ks.subscriptions, key, codec::encode_subscription());
            } else {
                batch.remove(&ks.subscriptions, key);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        batch.commit().map_err(unavailable)?;
        self.metrics.expired_messages.increment(expired);
        if sync_now {
            self.synced(started);
        } else {
            // Acks ride along with the next fsync; in interval mode, so does everything.
            self.dirty = true;
        }
        Ok(())
    }
}

fn check_payload(m: &NewMessage) -> Result<(), StoreError> {
    if m.payload.len() > u32::MAX as usize / 2 {
        return Err(StoreError::Unavailable(
            "payload too large for the store".into(),
        ));
    }
    Ok(())
}

/// Encodes a message once for the batch (an append shares it between its users) and returns
/// its index in [`Staged::values`].
fn stage_value(st: &mut Staged, m: &NewMessage) -> usize {
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
    st.values.len() - 1
}
