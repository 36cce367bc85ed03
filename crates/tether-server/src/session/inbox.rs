//! Durable delivery on one connection: each binding's position in its inbox, the backlog a
//! connection catches up on, acks, and `sync` pulls. Plain state and the rules that change it;
//! the gateway applies them under the connection's queue lock, so that ordering a push and
//! queueing it are one step.
//!
//! # How a binding's pushes stay in order
//! A binding is either *live* or *catching up*. Live, a durable push is queued when its seq is
//! the next one ([`InboxState::sent`] + 1), dropped when it was already sent, and a gap (a push
//! overtook another, or pushes came while the connection was being set up) switches the
//! binding to catching up. Catching up, live pushes are not queued, only remembered
//! ([`InboxState::missed`]); the connection's task reads the store after `sent` a page at a
//! time, within the outbound queue's budget, and the binding turns live again once a read
//! reaches the end of the inbox and covers everything missed. Every durable push is stored
//! before it is routed, so whatever the live path skipped, the store has.
//!
//! One store operation runs per connection at a time (see [`super::work`]), so an idle
//! connection pays nothing for any of this.

use std::collections::VecDeque;

use bytes::Bytes;
use tether_core::AppId;
use tether_core::store::{Page, StoredMessage};
use tether_proto::{Frame, Push, Synced};

use crate::link::Encoding;

/// Live pushes one binding may hold while it waits for an earlier seq to arrive.
pub const REORDER_FRAMES: usize = 64;

/// How long a binding waits for a missing seq before it reads the store instead (checked by
/// the heartbeat sweep, so the wait can be up to one sweep period longer).
pub const REORDER_WAIT_MS: u64 = 100;

/// The shortest interval between two ack writes of one binding (ms since the epoch).
pub const ACK_WRITE_EVERY_MS: u64 = 100;

/// Messages read per backlog page.
pub const BACKLOG_PAGE: usize = 64;

/// Most messages one `sync` reply carries.
pub const SYNC_PAGE: usize = 100;

/// Room kept in the queue for a `synced` frame (an app id is at most 128 bytes).
const SYNCED_ROOM: usize = 512;

/// A connection's outbound frames, and the bytes they hold against its limit: queued frames,
/// the batch being written, and pushes held for an earlier seq ([`InboxState::held`]).
#[derive(Debug, Default)]
pub struct Queue {
    pub frames: VecDeque<Bytes>,
    pub bytes: usize,
}

impl Queue {
    /// Appends `frame` and counts its bytes (the caller checked the limit). Returns whether
    /// the task needs waking: one wake-up covers everything queued before the task runs, so
    /// only a frame that finds the queue empty asks for one.
    pub fn push(&mut self, frame: Bytes) -> bool {
        let was_empty = self.frames.is_empty();
        self.bytes += frame.len();
        self.frames.push_back(frame);
        was_empty
    }

    /// Whether `len` more bytes stay within `limit`.
    pub fn fits(&self, len: usize, limit: usize) -> bool {
        self.bytes + len <= limit
    }
}

/// One binding's delivery state on one connection.
///
/// # Invariants
/// `held` is empty while `catching_up`, and holds only seqs above `sent + 1`; `sent <= top`;
/// `stored_ack <= acked`; `acked <= top` once the client acked anything on this connection
/// (before that, `acked` is the stored position, which may be ahead of a client that resumed
/// from an earlier `last_seq`); while `catching_up` is false, `missed <= sent`.
#[derive(Debug, Default, Clone)]
pub struct InboxState {
    /// The highest seq queued by resume or live delivery (starts at the resume position).
    pub sent: u64,
    /// The highest seq sent by any path, `sync` included: acks are clamped to it.
    pub top: u64,
    /// The highest seq the client acked on this connection.
    pub acked: u64,
    /// The highest ack written to the store.
    pub stored_ack: u64,
    /// Live pushes wait for the store to be read.
    pub catching_up: bool,
    /// The highest live seq not queued while catching up.
    pub missed: u64,
    /// The first backlog read of this connection is still to come (the poison guard counts
    /// the message it begins with).
    pub first_page: bool,
    /// Live pushes that overtook an earlier seq, held (at most [`REORDER_FRAMES`], counted in
    /// the queue's bytes) until the earlier one arrives: concurrent API requests for one user
    /// routinely reach a connection out of order, and a store read per overtaking push would
    /// cost more than the push. `None` (one word, no allocation) while pushes arrive in order:
    /// every binding of every connection holds this state.
    pub held: Option<Box<Held>>,
    /// When an ack write last started (ms since the epoch).
    pub ack_written_ms: u64,
}

/// Pushes held for an earlier seq (see [`InboxState::held`]).
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// (seq, frame), in the order they arrived.
    pub frames: Vec<(u64, Bytes)>,
    /// When the oldest of them arrived (ms since the epoch).
    pub since_ms: u64,
}

/// What offering a live durable push did, and what the connection must do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Nothing: queued behind frames that woke the task already, sent before, remembered
    /// while catching up, or held behind other held pushes.
    Done,
    /// Queued on an empty queue: wake the task.
    Wake,
    /// Held, the first of the binding's held pushes: the sweep must watch its wait.
    Held,
    /// The binding fell back to the store: the task has a read to do.
    CatchUp,
}

/// What a binding's held pushes came to at a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing held.
    None,
    /// Still waiting for the earlier seq.
    Waiting,
    /// Waited too long: the binding reads the store instead.
    Expired,
}

impl InboxState {
    /// A binding that starts at `position` and catches up from there; `stored` is the
    /// device's acked position in the store (the client's `position` may be ahead or behind).
    pub fn resuming(position: u64, stored: u64) -> Self {
        InboxState {
            sent: position,
            top: position,
            acked: stored,
            stored_ack: stored,
            catching_up: true,
            missed: 0,
            first_page: true,
            held: None,
            ack_written_ms: 0,
        }
    }

    /// Offers the live durable push `seq`, encoded as `frame`, within `limit` bytes.
    ///
    /// Queued only when it is the next seq; an older seq was sent already, and a gap (or a
    /// binding still catching up) leaves the push to the backlog read, which finds it in the
    /// store. All of these count as reached: the connection gets the message in order.
    pub fn offer(&mut self, seq: u64, frame: Bytes, queue: &mut Queue, limit: usize) -> Offer {
        if self.catching_up {
            self.missed = self.missed.max(seq);
            return Offer::Done;
        }
        if seq <= self.sent {
            return Offer::Done;
        }
        if seq > self.sent + 1 {
            // Overtaken: hold it for the earlier seq, within the queue's budget, or fall back
            // to the store.
            if queue.fits(frame.len(), limit) && self.held_count() < REORDER_FRAMES {
                let first = self.held.is_none();
                let held = self.held.get_or_insert_with(|| {
                    Box::new(Held {
                        frames: Vec::new(),
                        since_ms: tether_core::now_ms(),
                    })
                });
                queue.bytes += frame.len();
                held.frames.push((seq, frame));
                return if first { Offer::Held } else { Offer::Done };
            }
            self.catch_up(queue, seq);
            return Offer::CatchUp;
        }
        if !queue.fits(frame.len(), limit) {
            // No room (held pushes may be taking it): the store has it, and a backlog read
            // waits for room rather than closing the client as slow.
            self.catch_up(queue, seq);
            return Offer::CatchUp;
        }
        let mut wake = queue.push(frame);
        self.sent = seq;
        if let Some(held) = &mut self.held {
            // Held pushes that now follow on (their bytes are already counted).
            while let Some(i) = held.frames.iter().position(|(s, _)| *s == self.sent + 1) {
                let (s, frame) = held.frames.swap_remove(i);
                queue.frames.push_back(frame);
                self.sent = s;
                wake = true;
            }
            // Anything left is either older than `sent` (already sent: drop it) or still ahead.
            let sent = self.sent;
            let mut freed = 0;
            held.frames.retain(|(s, f)| {
                let keep = *s > sent;
                if !keep {
                    freed += f.len();
                }
                keep
            });
            queue.bytes -= freed;
            if held.frames.is_empty() {
                // Back in order: give the hold's memory back rather than keep it per binding.
                self.held = None;
            }
        }
        self.top = self.top.max(self.sent);
        if wake { Offer::Wake } else { Offer::Done }
    }

    /// How many pushes are held for an earlier seq.
    pub fn held_count(&self) -> usize {
        self.held.as_ref().map_or(0, |held| held.frames.len())
    }

    /// Switches to reading the store, giving up what is held; `seq` is the highest seq known
    /// to be missing.
    fn catch_up(&mut self, queue: &mut Queue, seq: u64) {
        let frames = self.held.take().map(|held| held.frames).unwrap_or_default();
        let held: usize = frames.iter().map(|(_, f)| f.len()).sum();
        let highest = frames.iter().map(|(s, _)| *s).max().unwrap_or(0);
        self.catching_up = true;
        self.missed = self.missed.max(seq).max(highest);
        queue.bytes -= held;
    }

    /// Falls back to the store if what is held waited longer than [`REORDER_WAIT_MS`] at
    /// `now_ms` (the missing push may never come live, e.g. lost between nodes).
    pub fn expire_held(&mut self, queue: &mut Queue, now_ms: u64) -> Hold {
        let Some(held) = &self.held else {
            return Hold::None;
        };
        if now_ms.saturating_sub(held.since_ms) > REORDER_WAIT_MS {
            self.catch_up(queue, 0);
            return Hold::Expired;
        }
        Hold::Waiting
    }

    /// A backlog read failed. Returns whether the connection must close: it must when
    /// messages are known to be missing (the first page of a resume, a gap); a read that only
    /// checked for losses ([`InboxState::recheck`]) is given up instead, so that a store under
    /// load does not also lose the node its connections.
    pub fn read_failed(&mut self) -> bool {
        if self.catching_up && !self.first_page && self.missed <= self.sent {
            self.catching_up = false;
            self.missed = 0;
            return false;
        }
        true
    }

    /// Reads the inbox once more after what was sent: a push routed here may have been lost
    /// between nodes. Returns whether that is new work (a binding catching up reads anyway).
    pub fn recheck(&mut self) -> bool {
        if self.catching_up {
            return false;
        }
        self.catching_up = true;
        self.missed = self.missed.max(self.sent);
        true
    }

    /// The client acked up to `seq` (clamped to what this connection sent). Returns whether
    /// an ack waits to be written.
    pub fn ack(&mut self, seq: u64) -> bool {
        self.acked = self.acked.max(seq.min(self.top));
        self.acked > self.stored_ack
    }

    /// The ack up to `seq` is in the store (or was given up on).
    pub fn ack_stored(&mut self, seq: u64) {
        self.stored_ack = self.stored_ack.max(seq);
    }

    /// Whether an ack waits to be written.
    pub fn ack_pending(&self) -> bool {
        self.acked > self.stored_ack
    }

    /// Queues a backlog page read after `missed_before` was taken, as far as `limit` allows,
    /// and turns live once caught up. Returns how many messages were queued and whether the
    /// task needs waking.
    pub fn apply_backlog(
        &mut self,
        app: &AppId,
        encoding: Encoding,
        missed_before: u64,
        page: Backlog,
        queue: &mut Queue,
        limit: usize,
    ) -> (usize, bool) {
        let mut queued = 0;
        let mut all = true;
        let mut wake = false;
        self.first_page = false;
        if let Some(seq) = page.skipped {
            self.sent = self.sent.max(seq);
            self.top = self.top.max(seq);
            self.acked = self.acked.max(seq);
            self.stored_ack = self.stored_ack.max(seq);
        }
        for m in &page.messages {
            if m.seq.0 <= self.sent {
                continue;
            }
            let frame = push_frame(encoding, 0, app, m);
            if !queue.fits(frame.len(), limit) {
                all = false;
                break;
            }
            wake |= queue.push(frame);
            self.sent = m.seq.0;
            self.top = self.top.max(m.seq.0);
            queued += 1;
        }
        if all && page.complete {
            // Everything missed before the read began was stored before it began: the read
            // returned it, or it expired or was trimmed. Anything missed since needs another
            // read.
            self.sent = self.sent.max(missed_before);
            self.top = self.top.max(self.sent);
            if self.missed <= self.sent {
                self.catching_up = false;
                self.missed = 0;
            }
        }
        (queued, wake)
    }

    /// Queues the pushes of a `sync` reply (request id `request.id`) that fit in `limit`,
    /// leaving room for the `synced` frame, which it returns for the caller to queue last.
    /// Returns how many pushes were queued, whether the task needs waking, and `synced`.
    pub fn apply_sync(
        &mut self,
        request: SyncRequest,
        app: &AppId,
        encoding: Encoding,
        page: &Page,
        queue: &mut Queue,
        limit: usize,
    ) -> (usize, bool, Bytes) {
        let mut last = request.after;
        let mut queued = 0;
        let mut wake = false;
        for m in &page.messages {
            let frame = push_frame(encoding, request.id, app, m);
            if !queue.fits(frame.len() + SYNCED_ROOM, limit) {
                break;
            }
            wake |= queue.push(frame);
            last = m.seq.0;
            queued += 1;
        }
        self.top = self.top.max(last);
        let synced = Frame::new(
            request.id,
            Synced {
                app: app.to_string(),
                last,
                head: page.head.0,
            },
        );
        (queued, wake, encoding.encode(&synced))
    }
}

/// One backlog page.
#[derive(Debug)]
pub struct Backlog {
    pub messages: Vec<StoredMessage>,
    /// The read reached the end of the inbox.
    pub complete: bool,
    /// The poison guard skipped this message (and acked it for the device).
    pub skipped: Option<u64>,
}

/// A `sync` waiting for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncRequest {
    pub id: u32,
    pub binding: usize,
    pub after: u64,
    pub limit: usize,
}

/// A store operation a connection's task should run next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextWork {
    /// Write binding `binding`'s ack up to `seq`.
    Ack { binding: usize, seq: u64 },
    /// Answer a `sync`.
    Sync(SyncRequest),
    /// Read binding `binding`'s backlog after `after`.
    Backlog {
        binding: usize,
        after: u64,
        first_page: bool,
        missed_before: u64,
    },
}

/// The store operation a connection with `inboxes` and a waiting `sync` should start, if any,
/// with `queued` bytes of its `limit` in use. Reads wait until the queue is at most half full,
/// so a backlog never pushes a connection over its limit.
///
/// Acks are written at most once per [`ACK_WRITE_EVERY_MS`] per binding (a client acking
/// every few messages would otherwise cost a store write per few messages); the heartbeat
/// sweep wakes the task for the ones that waited, and the connection's end writes the rest.
pub fn next_work(
    inboxes: &mut [InboxState],
    sync: &mut Option<Box<SyncRequest>>,
    queued: usize,
    limit: usize,
    now_ms: u64,
) -> Option<NextWork> {
    if let Some((binding, inbox)) = inboxes.iter_mut().enumerate().find(|(_, i)| {
        i.ack_pending() && now_ms >= i.ack_written_ms.saturating_add(ACK_WRITE_EVERY_MS)
    }) {
        inbox.ack_written_ms = now_ms;
        return Some(NextWork::Ack {
            binding,
            seq: inbox.acked,
        });
    }
    if queued > limit / 2 {
        return None;
    }
    if let Some(request) = sync.take() {
        return Some(NextWork::Sync(*request));
    }
    inboxes
        .iter()
        .enumerate()
        .find(|(_, i)| i.catching_up)
        .map(|(binding, i)| NextWork::Backlog {
            binding,
            after: i.sent,
            first_page: i.first_page,
            missed_before: i.missed,
        })
}

/// The push frame of a stored message, with request id `id` (0 for backlog and live pushes).
pub fn push_frame(encoding: Encoding, id: u32, app: &AppId, m: &StoredMessage) -> Bytes {
    encoding.encode(&Frame::new(
        id,
        Push {
            app: app.to_string(),
            msg_id: m.id.0,
            seq: m.seq.0,
            qos: 1,
            created_ms: m.created_ms,
            kind: m.kind,
            payload: m.payload.clone(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(sent: u64) -> InboxState {
        let mut inbox = InboxState::resuming(sent, sent);
        inbox.catching_up = false;
        inbox.first_page = false;
        inbox
    }

    fn frame(seq: u64) -> Bytes {
        Bytes::from(vec![seq as u8; 10])
    }

    #[test]
    fn a_bindings_delivery_state_stays_small() {
        // One per binding of every connection, in a boxed slice: one binding's fits glibc's
        // 80-byte chunk (64 bytes and the chunk's header).
        let size = size_of::<InboxState>();
        assert!(size <= 64, "InboxState grew to {size} bytes");
    }

    #[test]
    fn pushes_in_order_are_queued_and_only_the_first_on_an_empty_queue_wakes() {
        let (mut inbox, mut queue) = (live(0), Queue::default());
        assert_eq!(inbox.offer(1, frame(1), &mut queue, 1000), Offer::Wake);
        assert_eq!(inbox.offer(2, frame(2), &mut queue, 1000), Offer::Done);
        assert_eq!(inbox.offer(2, frame(2), &mut queue, 1000), Offer::Done);
        assert_eq!((queue.frames.len(), queue.bytes, inbox.sent), (2, 20, 2));
    }

    #[test]
    fn an_overtaking_push_is_held_then_released_in_order_and_counted_once() {
        let (mut inbox, mut queue) = (live(0), Queue::default());
        assert_eq!(inbox.offer(3, frame(3), &mut queue, 1000), Offer::Held);
        assert_eq!(inbox.offer(2, frame(2), &mut queue, 1000), Offer::Done);
        assert!(queue.frames.is_empty());
        assert_eq!(queue.bytes, 20, "held pushes count against the limit");
        assert_eq!(inbox.offer(1, frame(1), &mut queue, 1000), Offer::Wake);
        let order: Vec<u8> = queue.frames.iter().map(|f| f[0]).collect();
        assert_eq!(order, [1, 2, 3]);
        assert_eq!((queue.bytes, inbox.sent), (30, 3));
        assert!(
            inbox.held.is_none(),
            "back in order, the hold is given back"
        );
    }

    #[test]
    fn a_push_with_no_room_or_a_held_one_past_its_wait_falls_back_to_the_store() {
        let (mut inbox, mut queue) = (live(0), Queue::default());
        assert_eq!(inbox.offer(1, frame(1), &mut queue, 5), Offer::CatchUp);
        assert!(inbox.catching_up && inbox.missed == 1 && queue.bytes == 0);

        let (mut inbox, mut queue) = (live(0), Queue::default());
        inbox.offer(4, frame(4), &mut queue, 1000);
        let since = inbox.held.as_ref().expect("held").since_ms;
        assert_eq!(inbox.expire_held(&mut queue, since), Hold::Waiting);
        let late = since + REORDER_WAIT_MS + 1;
        assert_eq!(inbox.expire_held(&mut queue, late), Hold::Expired);
        assert_eq!((inbox.missed, queue.bytes), (4, 0));
        assert_eq!(inbox.expire_held(&mut queue, late), Hold::None);
    }

    #[test]
    fn a_complete_backlog_read_turns_live_unless_something_was_missed_since() {
        let app = AppId::from("a");
        let message = |seq: u64| StoredMessage {
            seq: tether_core::Seq(seq),
            id: tether_core::MessageId(seq),
            created_ms: 0,
            expires_ms: u64::MAX,
            kind: tether_proto::PayloadKind::Json,
            payload: Bytes::from_static(b"{}"),
        };
        let page = |seqs: &[u64]| Backlog {
            messages: seqs.iter().map(|s| message(*s)).collect(),
            complete: true,
            skipped: None,
        };
        let mut inbox = InboxState::resuming(0, 0);
        let mut queue = Queue::default();
        inbox.missed = 3;
        let (queued, wake) =
            inbox.apply_backlog(&app, Encoding::Json, 3, page(&[1, 2]), &mut queue, 4096);
        assert_eq!((queued, wake), (2, true));
        assert!(
            !inbox.catching_up,
            "3 expired or was trimmed: it was stored before"
        );
        assert_eq!(inbox.sent, 3);

        let mut inbox = InboxState::resuming(0, 0);
        inbox.missed = 5;
        inbox.apply_backlog(&app, Encoding::Json, 3, page(&[1]), &mut queue, 4096);
        assert!(inbox.catching_up, "5 came live after the read began");
    }

    #[test]
    fn acks_are_written_at_most_once_per_interval_and_reads_wait_for_room() {
        let mut inbox = InboxState::resuming(10, 0);
        inbox.catching_up = false;
        let mut inboxes = [inbox];
        assert!(inboxes[0].ack(7));
        let mut sync = None;
        let first = next_work(&mut inboxes, &mut sync, 0, 100, 1_000);
        assert_eq!(first, Some(NextWork::Ack { binding: 0, seq: 7 }));
        assert_eq!(next_work(&mut inboxes, &mut sync, 0, 100, 1_050), None);
        assert!(inboxes[0].ack(12), "clamped to what was sent");
        assert_eq!(inboxes[0].acked, 10);
        let due = next_work(&mut inboxes, &mut sync, 0, 100, 1_100);
        assert_eq!(
            due,
            Some(NextWork::Ack {
                binding: 0,
                seq: 10
            })
        );
        inboxes[0].ack_stored(10);
        inboxes[0].recheck();
        assert_eq!(next_work(&mut inboxes, &mut sync, 51, 100, 2_000), None);
        assert!(matches!(
            next_work(&mut inboxes, &mut sync, 50, 100, 2_000),
            Some(NextWork::Backlog { after: 10, .. })
        ));
    }
}
