//! Expired data leaving the disk. Reads filter expired messages out on their own; this is
//! about space: messages, idempotency records and the cursors of devices long gone must not
//! stay on disk forever. (Inbox records do stay: they keep the head, and seqs are never
//! reused.)
//!
//! Two ways out, both run by the writer thread:
//! - [`expire_front`]: when a batch writes to an inbox, expired messages at its front go in
//!   the same batch (cheap: the writer knows where the front is);
//! - [`Sweeper`]: a pass over every message, idempotency record, cursor and saved session, every
//!   [`SWEEP_EVERY`], in chunks of [`SWEEP_CHUNK`] entries that run while the writer is idle,
//!   each resuming after the last key the previous one looked at. It catches what
//!   `expire_front` cannot: messages behind a live front, inboxes nobody writes to any more,
//!   idempotency keys, and cursors unchanged for `cursor_idle` (`max_ttl`: every message
//!   such a cursor covers has expired, so deleting it changes nothing the device is sent),
//!   and saved sessions past their expiry.
//!
//! Topic histories share the `messages` and `inboxes` keyspaces with inboxes (under keys of
//! their own), so both ways out serve them unchanged.
//!
//! Only the sweep can delete the newest message of an inbox (front expiry runs in a batch that
//! appends to the inbox); when it does, it writes the inbox record that keeps the head in the
//! same batch (see [`super::inbox`]).

use std::ops::Bound;
use std::time::{Duration, Instant};

use fjall::{Keyspace, OwnedWriteBatch, PersistMode, Slice};
use tether_core::StoreError;

use super::inbox::Inbox;
use super::keyspaces::{Keyspaces, unavailable};
use super::{codec, inbox};

/// What one sweep pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Of inboxes and topic histories.
    pub messages: u64,
    pub idempotency_keys: u64,
    /// Device cursors not written for longer than `Retention::cursor_idle`.
    pub cursors: u64,
    /// Saved sessions past their expiry.
    pub sessions: u64,
}

/// How often a sweep pass over the whole store starts. (Unit tests watch the idle sweep, over
/// several chunks, without waiting a minute.)
pub const SWEEP_EVERY: Duration = Duration::from_millis(if cfg!(test) { 200 } else { 60_000 });
/// Entries one sweep chunk looks at, so that a chunk stays short.
pub const SWEEP_CHUNK: usize = if cfg!(test) { 3 } else { 4096 };
/// Pause between two chunks of a pass, so that a pass over a large store reads the disk at a
/// bounded rate (about 200,000 entries a second) instead of all the time the writer is idle.
const SWEEP_PAUSE: Duration = Duration::from_millis(20);
/// A sweep that busy traffic kept from running for a whole extra period runs one chunk per
/// this long between batches.
const SWEEP_STARVED_EVERY: Duration = Duration::from_secs(1);
/// Most expired messages dropped from the front of one inbox in one batch.
const MAX_EXPIRE_STEPS: usize = 64;

/// Deletes (in `batch`) expired messages at the front of an inbox, among those already on
/// disk (up to `disk_head`), at most [`MAX_EXPIRE_STEPS`]; moves `inbox.meta.first` past them
/// and returns how many it deleted. Failing to read the front only ends the step early: the
/// sweep catches up later.
pub fn expire_front(
    messages: &Keyspace,
    batch: &mut OwnedWriteBatch,
    inbox_key: &[u8],
    inbox: &mut Inbox,
    disk_head: u64,
    now_ms: u64,
) -> u64 {
    let mut expired = 0;
    for _ in 0..MAX_EXPIRE_STEPS {
        let first = inbox.meta.first;
        if first > disk_head {
            break;
        }
        let key = codec::message_key(inbox_key, first);
        let expires = match inbox.front_expires {
            Some(e) => Some(e),
            None => match messages.get(&key) {
                Ok(Some(v)) => match codec::message_expires(&v) {
                    Ok(e) => Some(e),
                    Err(_) => break,
                },
                // Gone already: a message is only ever deleted, never written again, so the
                // sweep took it and `first` can move past it.
                Ok(None) => None,
                Err(_) => break,
            },
        };
        match expires {
            Some(e) if e > now_ms => {
                inbox.front_expires = Some(e);
                break;
            }
            Some(_) => {
                batch.remove(messages, key);
                expired += 1;
            }
            None => {}
        }
        inbox.meta.first = first + 1;
        inbox.front_expires = None;
    }
    expired
}

/// Deletes (in `batch`) the expired message `key`, whose next key on disk is `next`; when it
/// is the last message of its inbox, also writes the record that keeps its seq as the head.
/// Returns how many messages it deleted: 0 when it cannot keep the head, since deleting the
/// message then would let the inbox hand its seq out again.
fn delete_message(
    ks: &Keyspaces,
    batch: &mut OwnedWriteBatch,
    key: &[u8],
    next: Option<&[u8]>,
) -> u64 {
    let kept = codec::split_message_key(key).and_then(|(inbox_key, seq)| {
        let same_inbox = next
            .and_then(|n| codec::split_message_key(n).ok())
            .is_some_and(|(next_inbox, _)| next_inbox == inbox_key);
        if same_inbox {
            Ok(())
        } else {
            inbox::keep_head(ks, batch, inbox_key, seq)
        }
    });
    match kept {
        Ok(()) => {
            batch.remove(&ks.messages, key);
            1
        }
        Err(e) => {
            tracing::warn!("store: the sweep left an expired message: {e}");
            0
        }
    }
}

/// The keyspaces a pass goes through, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Messages,
    Idempotency,
    Cursors,
    Sessions,
}

/// The sweep's progress and pacing.
#[derive(Debug)]
pub struct Sweeper {
    /// While a pass is under way: the keyspace it is in and the last key it looked at.
    at: Option<(Part, Option<Vec<u8>>)>,
    next_pass: Instant,
    last_chunk: Instant,
    /// A cursor not written for this long is deleted (see `Retention::cursor_idle`). The
    /// exceptions to "it covers only expired messages" cost a redelivery, which at-least-once
    /// allows: messages stored before `max_ttl` was lowered, and a client that acked past what
    /// it was sent by resuming from a `last_seq` above the inbox's head.
    cursor_idle_ms: u64,
}

impl Sweeper {
    pub fn new(cursor_idle: Duration) -> Self {
        let now = Instant::now();
        Sweeper {
            at: None,
            next_pass: now + SWEEP_EVERY,
            last_chunk: now,
            cursor_idle_ms: u64::try_from(cursor_idle.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// When an idle writer should wake up to run the next chunk.
    pub fn wake_at(&self) -> Instant {
        match self.at {
            Some(_) => self.last_chunk + SWEEP_PAUSE,
            None => self.next_pass,
        }
    }

    /// Whether an idle writer should run a chunk now.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.wake_at()
    }

    /// Whether a busy writer should run a chunk between batches anyway: the pass is a whole
    /// period late.
    pub fn starved(&self, now: Instant) -> bool {
        now >= self.next_pass + SWEEP_EVERY && now >= self.last_chunk + SWEEP_STARVED_EVERY
    }

    /// Gives up the pass under way (after an error) and tries again a period later.
    pub fn reset(&mut self) {
        self.at = None;
        self.next_pass = Instant::now() + SWEEP_EVERY;
    }

    /// One bounded step: looks at up to [`SWEEP_CHUNK`] entries after where the last step
    /// stopped and deletes the expired ones, in a batch of their own (handed to the OS, not
    /// fsynced: a lost delete is redone by the next pass).
    ///
    /// Cursors: one unchanged for `cursor_idle` is deleted. One written by older code, which
    /// does not say when it changed, is written again with the current time, so that its
    /// clock starts now.
    pub fn chunk(&mut self, ks: &Keyspaces, now_ms: u64) -> Result<Swept, StoreError> {
        self.last_chunk = Instant::now();
        let (part, after) = self.at.take().unwrap_or((Part::Messages, None));
        let keyspace = match part {
            Part::Messages => &ks.messages,
            Part::Idempotency => &ks.idempotency,
            Part::Cursors => &ks.cursors,
            Part::Sessions => &ks.sessions,
        };
        let mut iter = match after {
            Some(k) => keyspace.range::<Vec<u8>, _>((Bound::Excluded(k), Bound::Unbounded)),
            None => keyspace.iter(),
        };
        let mut batch = ks.db.batch().durability(Some(PersistMode::Buffer));
        let mut seen = 0;
        let mut last = None;
        let mut deleted = 0;
        // An expired message not deleted yet: whether it is the last of its inbox on disk,
        // which decides whether its inbox record must keep its seq, shows only with the next
        // key (past the chunk's end too).
        let mut pending: Option<Slice> = None;
        while seen < SWEEP_CHUNK {
            let Some(guard) = iter.next() else {
                break;
            };
            let (key, value) = guard.into_inner().map_err(unavailable)?;
            seen += 1;
            if let Some(expired) = pending.take() {
                deleted += delete_message(ks, &mut batch, &expired, Some(&key));
            }
            match part {
                Part::Messages => match codec::message_expires(&value) {
                    Ok(e) if e <= now_ms => pending = Some(key.clone()),
                    Ok(_) => {}
                    // Left in place for a human to look at; reads of it answer `Corrupt`.
                    Err(e) => tracing::warn!("store: the sweep skipped a message: {e}"),
                },
                Part::Idempotency => match codec::idempotency_expires(&value) {
                    Ok(e) if e <= now_ms => {
                        batch.remove(keyspace, key.clone());
                        deleted += 1;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("store: the sweep skipped a record: {e}"),
                },
                Part::Cursors => match codec::decode_cursor_changed(&value) {
                    Ok((_, Some(changed)))
                        if changed.saturating_add(self.cursor_idle_ms) <= now_ms =>
                    {
                        batch.remove(keyspace, key.clone());
                        deleted += 1;
                    }
                    Ok((cursor, None)) => {
                        batch.insert(keyspace, key.clone(), codec::encode_cursor(cursor, now_ms));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("store: the sweep skipped a cursor: {e}"),
                },
                Part::Sessions => match codec::decode_session(&value) {
                    Ok((expires, _)) if expires <= now_ms => {
                        batch.remove(keyspace, key.clone());
                        deleted += 1;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("store: the sweep skipped a saved session: {e}"),
                },
            }
            last = Some(key.to_vec());
        }
        if let Some(expired) = pending.take() {
            let next = iter
                .next()
                .map(|g| g.key())
                .transpose()
                .map_err(unavailable)?;
            deleted += delete_message(ks, &mut batch, &expired, next.as_deref());
        }
        if !batch.is_empty() {
            batch.commit().map_err(unavailable)?;
        }
        self.at = if seen == SWEEP_CHUNK {
            Some((part, last))
        } else {
            match part {
                Part::Messages => Some((Part::Idempotency, None)),
                Part::Idempotency => Some((Part::Cursors, None)),
                Part::Cursors => Some((Part::Sessions, None)),
                Part::Sessions => {
                    self.next_pass = Instant::now() + SWEEP_EVERY;
                    None
                }
            }
        };
        let mut swept = Swept::default();
        match part {
            Part::Messages => swept.messages = deleted,
            Part::Idempotency => swept.idempotency_keys = deleted,
            Part::Cursors => swept.cursors = deleted,
            Part::Sessions => swept.sessions = deleted,
        }
        Ok(swept)
    }

    /// A whole pass from the start, now.
    pub fn pass(&mut self, ks: &Keyspaces, now_ms: u64) -> Result<Swept, StoreError> {
        self.at = None;
        let mut total = Swept::default();
        loop {
            let swept = self.chunk(ks, now_ms)?;
            total.messages += swept.messages;
            total.idempotency_keys += swept.idempotency_keys;
            total.cursors += swept.cursors;
            total.sessions += swept.sessions;
            if self.at.is_none() {
                return Ok(total);
            }
        }
    }
}
