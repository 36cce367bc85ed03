//! Acks accepted but not yet written: what lets an ack return without a trip through the
//! writer thread, and a cursor read still see it.
//!
//! An ack is a cursor write that is never fsynced on its own and whose answer nobody acts on
//! (a lost ack costs a redelivery, which at-least-once allows). Sending each one to the writer
//! and waiting for its answer cost a queue entry, often a wake-up of the writer thread, and
//! always a wake-up of the caller's task when the answer came back (and, in a batch with
//! messages, the caller waited for their fsync). Instead, [`PendingAcks::add`] records the
//! ack here, under a mutex, and returns; the writer takes every pending ack into its next
//! batch ([`PendingAcks::take`]) and forgets those it committed ([`PendingAcks::written`]).
//! Only the first ack after each take nudges the writer (an entry in its queue, with no
//! answer): one wake-up per batch at most, none when the writer has other work queued.
//!
//! # Guarantees
//! - Read your acks: a cursor read that begins after [`PendingAcks::add`] returned sees the
//!   ack. Readers look here first, then on disk, and apply what they found here to what the
//!   disk says ([`apply_ack`], the writer's own rule); the writer removes an entry only after
//!   the batch that wrote it is committed (and so visible), so a reader that no longer finds
//!   it here finds it on disk.
//! - An ack moves a cursor forward only, and only as far as the client acked: an entry holds
//!   the highest seq acked for its cursor, and both the writer and readers merge it with
//!   [`apply_ack`], which ignores a lower seq.
//! - No message is lost: an ack never deletes a message, and an ack lost in a crash (still
//!   here, or committed but not fsynced) only means a redelivery, as it always did.
//! - Bounded: at most `limit` cursors wait here (`store.queue`, the bound the writer's queue
//!   had for them); past that, an ack for another cursor fails with
//!   [`StoreError::Overloaded`], as a full queue did.
//!
//! What changed for callers: an ack no longer reports what only the writer finds (a damaged
//! cursor value, a failed batch); the writer logs those and drops the ack (a redelivery).

use std::collections::BTreeMap;
use std::sync::Mutex;

use tether_core::Seq;
use tether_core::store::Cursor;

/// The writer's rule for an ack up to `seq`: forward only, and moving past the poison guard's
/// message resets its count.
pub fn apply_ack(cursor: &mut Cursor, seq: Seq) {
    if seq > cursor.acked {
        cursor.acked = seq;
        if cursor.attempt_seq <= seq {
            cursor.attempts = 0;
        }
    }
}

/// Pending acks, shared by the store's handle (which adds and reads) and its writer (which
/// takes and forgets).
#[derive(Debug)]
pub struct PendingAcks {
    state: Mutex<State>,
    limit: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Cursor key -> the highest seq acked and not yet committed. Ordered, so that a user's
    /// cursors are one range (cursor keys begin with the inbox key).
    seqs: BTreeMap<Vec<u8>, Seq>,
    /// An ack nudged the writer since its last take.
    nudged: bool,
}

/// Why [`PendingAcks::add`] refused an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany;

impl PendingAcks {
    pub fn new(limit: usize) -> Self {
        PendingAcks {
            state: Mutex::new(State::default()),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing here panics while holding the lock; a poisoned one still holds whole maps.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an ack up to `seq` of cursor `key`. Returns whether the caller must nudge the
    /// writer (the first ack since its last take).
    pub fn add(&self, key: Vec<u8>, seq: Seq) -> Result<bool, TooMany> {
        let mut state = self.lock();
        let len = state.seqs.len();
        match state.seqs.get_mut(&key) {
            Some(pending) => *pending = (*pending).max(seq),
            None if len >= self.limit => return Err(TooMany),
            None => {
                state.seqs.insert(key, seq);
            }
        }
        Ok(!std::mem::replace(&mut state.nudged, true))
    }

    /// The pending ack of cursor `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<Seq> {
        self.lock().seqs.get(key).copied()
    }

    /// The pending acks of every cursor whose key begins with `prefix` (an inbox key).
    pub fn with_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Seq)> {
        self.lock()
            .seqs
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, &s)| (k.clone(), s))
            .collect()
    }

    /// Whether any ack waits.
    pub fn is_empty(&self) -> bool {
        self.lock().seqs.is_empty()
    }

    /// Every pending ack, for the writer's next batch; they stay here, readable, until
    /// [`PendingAcks::written`]. The next ack nudges the writer again.
    pub fn take(&self) -> Vec<(Vec<u8>, Seq)> {
        let mut state = self.lock();
        state.nudged = false;
        state.seqs.iter().map(|(k, &s)| (k.clone(), s)).collect()
    }

    /// Forgets the acks of `taken` that were not raised since: their batch is committed (or
    /// failed, and they are given up on).
    pub fn written(&self, taken: &[(Vec<u8>, Seq)]) {
        if taken.is_empty() {
            return;
        }
        let mut state = self.lock();
        for (key, seq) in taken {
            if state.seqs.get(key) == Some(seq) {
                state.seqs.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_keep_the_highest_seq_nudge_once_per_take_and_stay_until_written() {
        let acks = PendingAcks::new(2);
        assert_eq!(acks.add(b"a\0u\0d1".to_vec(), Seq(5)), Ok(true));
        assert_eq!(acks.add(b"a\0u\0d1".to_vec(), Seq(3)), Ok(false));
        assert_eq!(acks.get(b"a\0u\0d1"), Some(Seq(5)), "never lowered");
        assert_eq!(acks.add(b"a\0u\0d2".to_vec(), Seq(1)), Ok(false));
        assert_eq!(acks.add(b"a\0v\0d".to_vec(), Seq(1)), Err(TooMany));

        let taken = acks.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(
            acks.get(b"a\0u\0d1"),
            Some(Seq(5)),
            "readable while written"
        );
        // Raised while the batch was written: stays for the next one, and nudges.
        assert_eq!(acks.add(b"a\0u\0d2".to_vec(), Seq(4)), Ok(true));
        assert_eq!(acks.with_prefix(b"a\0u\0").len(), 2);
        acks.written(&taken);
        assert_eq!(acks.get(b"a\0u\0d1"), None);
        assert_eq!(
            acks.with_prefix(b"a\0u\0"),
            vec![(b"a\0u\0d2".to_vec(), Seq(4))]
        );
        assert!(acks.with_prefix(b"a\0v\0").is_empty());
    }

    #[test]
    fn an_ack_moves_a_cursor_forward_only_and_past_the_guard_resets_its_count() {
        let mut c = Cursor {
            acked: Seq(5),
            attempt_seq: Seq(7),
            attempts: 2,
        };
        apply_ack(&mut c, Seq(4));
        assert_eq!(c.acked, Seq(5));
        apply_ack(&mut c, Seq(6));
        assert_eq!((c.acked, c.attempts), (Seq(6), 2));
        apply_ack(&mut c, Seq(7));
        assert_eq!((c.acked, c.attempts), (Seq(7), 0));
    }
}
