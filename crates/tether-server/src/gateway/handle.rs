//! One connection as the rest of the node sees it: a [`ConnHandle`], shared by the
//! connection's task, the connection table, and whoever queues frames for it.
//!
//! Producers (pushes, publications, replies, closes) append encoded frames to its byte-bounded
//! queue and wake its task, which writes everything queued in one go; while the task has
//! nothing in hand, a fan-out writes to the socket directly ([`Link::write_or_queue`]). Its
//! durable delivery state changes under the same lock, by the rules of
//! [`crate::session::inbox`]. When it waits for heartbeats and parks: `super::sweep`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tether_core::store::Page;
use tether_core::{ConnId, DeviceId, TopicId, Transport};
use tether_proto::Code;
use tokio::net::TcpStream;

use super::outbox::{Close, Outbox, Socket, rest};
use crate::link::{Binding, Encoding, Enqueued, Link, Offered};
use crate::session::inbox::{self, Backlog, Hold, InboxState, NextWork, Offer, SyncRequest};
use crate::transport::Framing;

/// What a connection is made of once its handshake succeeded.
#[derive(Debug)]
pub struct NewConn {
    pub id: ConnId,
    pub transport: Transport,
    pub encoding: Encoding,
    pub device: DeviceId,
    pub bindings: Vec<Binding>,
    /// Where each binding starts in its inbox (same order as `bindings`).
    pub resume: Vec<InboxState>,
    /// Bytes that may wait in the outbound queue.
    pub queue_limit: usize,
    /// The socket, for fan-outs to write to directly while the task has nothing to write, and
    /// how such a write frames a frame.
    pub direct: Option<(Arc<TcpStream>, Framing)>,
    /// Silence after which the heartbeat sweep closes the connection.
    pub idle_limit: Duration,
    /// Now, by [`super::Gateway::clock_ms`].
    pub now_ms: u64,
}

/// One open connection.
///
/// # Invariants
/// `outbox.queue.bytes <= limit` whenever `close` is `None`; once `close` is set it is never
/// replaced, and no frame is queued after it.
///
/// # Memory
/// Every connection holds one for its whole life, parked or not: rare state (a close, a
/// `sync`) is boxed, limits are 32-bit, and the whole stays within a 256-byte allocation.
#[derive(Debug)]
pub struct ConnHandle {
    pub id: ConnId,
    pub transport: Transport,
    pub encoding: Encoding,
    pub device: DeviceId,
    pub bindings: Box<[Binding]>,
    pub connected_at_ms: u64,
    /// The queue's byte limit (see [`NewConn::queue_limit`]); read through [`Self::limit`].
    limit: u32,
    /// A connection silent for longer than this is closed by the heartbeat sweep (or, kept
    /// alive by the server, gets a keep-alive).
    pub(super) idle_limit: IdleLimit,
    /// When a frame last arrived, in ms of the gateway's clock ([`super::Gateway::clock_ms`]).
    pub(super) last_seen_ms: AtomicU64,
    /// The task holds bytes the client has not taken yet.
    pub(super) writing: AtomicBool,
    /// When the current write last made progress (or began), by the gateway's clock.
    pub(super) progress_ms: AtomicU64,
    outbox: Mutex<Outbox>,
    /// Set when there is something for the task to do (frames queued, a close requested).
    pub(super) ready: AtomicBool,
    /// Some binding holds overtaking pushes (see [`InboxState::held`]): the sweep looks.
    pub(super) held: AtomicBool,
    /// Some binding has an ack not yet written to the store.
    pub(super) ack_pending: AtomicBool,
    /// [`ConnHandle::next_work`] may find something: set with every change that can make
    /// store work (an ack, a `sync`, a binding falling back to the store), so that the task's
    /// many wake-ups for frames alone do not take the queue's lock to learn there is none.
    pub(super) work_hint: AtomicBool,
    /// The connection task, woken when `ready` is set. A waker slot rather than a `Notify`:
    /// waiting on it needs no per-wait node in the task's future.
    pub(super) task: AtomicWaker,
    /// Whether the connection has a task: [`RUNNING`], [`PARK_ASKED`] or [`PARKED`] (see
    /// `super::sweep` and `super::task`).
    pub(super) park: AtomicU8,
}

/// How long a connection may stay silent, in milliseconds, and in the top bit whether the
/// server keeps it alive rather than its client (see [`crate::transport::Wire::keepalive`]):
/// the limit is then the interval of its keep-alives. One `u32`, so that the handle stays
/// within its allocation.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleLimit(u32);

impl IdleLimit {
    const KEPT_ALIVE: u32 = 1 << 31;

    fn new(limit: Duration) -> IdleLimit {
        let ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX);
        IdleLimit(ms.min(Self::KEPT_ALIVE - 1))
    }

    pub(super) fn ms(self) -> u64 {
        u64::from(self.0 & !Self::KEPT_ALIVE)
    }

    pub(super) fn kept_alive(self) -> bool {
        self.0 & Self::KEPT_ALIVE != 0
    }
}

/// The connection has a task serving it.
pub(super) const RUNNING: u8 = 0;
/// The sweep found it idle and asked its task to park.
pub(super) const PARK_ASKED: u8 = 1;
/// No task: the socket and the handle wait for the next event (see `super::task`).
pub(super) const PARKED: u8 = 2;

impl ConnHandle {
    pub fn new(conn: NewConn) -> Self {
        ConnHandle {
            id: conn.id,
            transport: conn.transport,
            encoding: conn.encoding,
            device: conn.device,
            bindings: conn.bindings.into_boxed_slice(),
            connected_at_ms: tether_core::now_ms(),
            limit: u32::try_from(conn.queue_limit).unwrap_or(u32::MAX),
            idle_limit: IdleLimit::new(conn.idle_limit),
            last_seen_ms: AtomicU64::new(conn.now_ms),
            writing: AtomicBool::new(false),
            progress_ms: AtomicU64::new(conn.now_ms),
            outbox: Mutex::new(Outbox {
                inboxes: conn.resume.into_boxed_slice(),
                in_flight: true,
                socket: conn
                    .direct
                    .as_ref()
                    .map_or(Socket::None, |(stream, _)| Socket::Live(stream.clone())),
                framing: conn.direct.map_or(Framing::Raw, |(_, framing)| framing),
                ..Outbox::default()
            }),
            ready: AtomicBool::new(false),
            held: AtomicBool::new(false),
            ack_pending: AtomicBool::new(false),
            // Every binding starts by reading its backlog.
            work_hint: AtomicBool::new(true),
            task: AtomicWaker::new(),
            park: AtomicU8::new(RUNNING),
        }
    }

    /// The handle of a connection the server keeps alive (see
    /// [`crate::transport::Wire::keepalive`]), every `idle_limit` in which nothing was written.
    pub fn kept_alive(mut self) -> Self {
        self.idle_limit.0 |= IdleLimit::KEPT_ALIVE;
        self
    }

    pub(super) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding this lock cannot leave the queue inconsistent (every update
        // is a single push or swap), so a poisoned lock is still usable.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Queues an encoded frame. Never blocks.
    pub fn enqueue(&self, frame: Bytes) -> Enqueued {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return Enqueued::Closed;
        }
        let (enqueued, wake) = self.push_locked(&mut outbox, frame);
        drop(outbox);
        if wake {
            self.wake();
        }
        enqueued
    }

    /// Queues `frame` on an open connection's locked queue, or closes it as slow past the byte
    /// limit. Returns whether the task must be woken (the caller does it after unlocking).
    fn push_locked(&self, outbox: &mut Outbox, frame: Bytes) -> (Enqueued, bool) {
        if !outbox.queue.fits(frame.len(), self.limit()) {
            outbox.drop_queue();
            outbox.close = Some(Box::new(Close::at_once(
                Code::SLOW,
                format!("more than {} bytes waiting to be read", self.limit()),
            )));
            return (Enqueued::Overflow, true);
        }
        let wake = outbox.queue.push(frame);
        (Enqueued::Queued, wake)
    }

    /// The connection is over: closes the socket now rather than when the last handle goes
    /// (a paced fan-out or a queued job may hold one for a while).
    pub fn release_socket(&self) {
        self.outbox().socket.shutdown();
    }

    /// Runs `f` on the socket under the queue's lock, so that no direct write is under way
    /// (parking and resuming switch it between tokio's reactor and the parked-socket poller).
    pub fn with_socket<R>(&self, f: impl FnOnce(&mut Socket) -> R) -> R {
        f(&mut self.outbox().socket)
    }

    /// The task has written everything it took: fan-outs may write directly again.
    pub fn writer_idle(&self) {
        self.outbox().in_flight = false;
    }

    /// Asks the connection to close. The first close wins; later ones are ignored.
    pub fn close(&self, close: Close) -> bool {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return false;
        }
        outbox.close = Some(Box::new(close));
        drop(outbox);
        self.wake();
        true
    }

    /// Gives up on writing what is queued: the client stopped reading. A close already asked
    /// for keeps its code (a kicked client is not told to come back); otherwise it closes as
    /// slow.
    pub fn abandon(&self, reason: &str) -> bool {
        let mut outbox = self.outbox();
        match &mut outbox.close {
            Some(close) if !close.flush => return false,
            Some(close) => close.flush = false,
            None => outbox.close = Some(Box::new(Close::at_once(Code::SLOW, reason))),
        }
        outbox.drop_queue();
        drop(outbox);
        self.wake();
        true
    }

    /// Marks the connection finished: nothing more is queued (pushes count it as not reached)
    /// and what was queued is dropped.
    /// Returns the rest of a frame a direct write began, if one is queued: it must go out
    /// before the `disconnect`.
    pub fn finish(&self) -> Option<Bytes> {
        let mut outbox = self.outbox();
        let rest = if std::mem::take(&mut outbox.tail) {
            outbox.queue.frames.pop_front()
        } else {
            None
        };
        outbox.queue.frames = VecDeque::new();
        outbox.queue.bytes = 0;
        if outbox.close.is_none() {
            outbox.close = Some(Box::new(Close::at_once(
                Code::INTERNAL,
                "connection finished",
            )));
        }
        rest
    }

    pub(super) fn wake(&self) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Ready when there is something to write or a close to act on (then call [`Self::take`]).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ready.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.task.register(cx.waker());
        // A wake between the check and the registration would otherwise be missed.
        if self.ready.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Moves every queued frame to the back of `into` and returns the close request, if any.
    /// When the close does not flush, the queue is dropped instead.
    pub fn take(&self, into: &mut VecDeque<Bytes>) -> Option<Close> {
        self.take_batch(into).0
    }

    /// [`ConnHandle::take`], also saying whether the first frame moved is the rest of a frame
    /// already begun on the wire (by a direct write).
    pub fn take_batch(&self, into: &mut VecDeque<Bytes>) -> (Option<Close>, bool) {
        self.take_writing(into, false)
    }

    /// [`ConnHandle::take_batch`] for a task about to write; with `claim`, even when nothing
    /// is queued (bytes of the wire's own, a WebSocket pong): no direct write may go to the
    /// socket until [`ConnHandle::writer_idle`].
    pub fn take_writing(&self, into: &mut VecDeque<Bytes>, claim: bool) -> (Option<Close>, bool) {
        let mut outbox = self.outbox();
        let tail = std::mem::take(&mut outbox.tail) && !outbox.queue.frames.is_empty();
        if claim || !outbox.queue.frames.is_empty() {
            outbox.in_flight = true;
        }
        match &outbox.close {
            Some(close) if !close.flush => {
                let rest = if tail {
                    outbox.queue.frames.pop_front()
                } else {
                    None
                };
                outbox.queue.frames = VecDeque::new();
                into.extend(rest);
            }
            // The outbox starts again from an empty deque (no allocation) rather than getting
            // `into`'s: a burst's capacity is freed once it is written, not kept for the
            // connection's life.
            _ if into.is_empty() => *into = std::mem::take(&mut outbox.queue.frames),
            _ => into.append(&mut outbox.queue.frames),
        }
        (outbox.close.as_deref().cloned(), tail)
    }

    /// Reports `n` bytes written at `now_ms`, freeing that much of the queue's budget.
    pub fn written(&self, n: usize, now_ms: u64) {
        let mut outbox = self.outbox();
        debug_assert!(
            outbox.queue.bytes >= n || outbox.close.is_some(),
            "wrote bytes never queued"
        );
        outbox.queue.bytes = outbox.queue.bytes.saturating_sub(n);
        drop(outbox);
        self.progress_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The task starts (`true`) or finishes (`false`) a write that waits on the client.
    pub fn set_writing(&self, writing: bool, now_ms: u64) {
        // Only the connection's task writes these. The start time is stored before the flag
        // (release), and the sweep reads the flag first (acquire): it never sees a write that
        // has begun with the progress time of an earlier one.
        if writing {
            self.progress_ms.store(now_ms, Ordering::Relaxed);
        }
        self.writing.store(writing, Ordering::Release);
    }

    /// Every topic of the connection, forgetting them: for its end.
    pub fn take_topics(&self) -> Vec<(usize, TopicId)> {
        self.outbox()
            .topics
            .take()
            .into_iter()
            .map(|(b, t)| (b as usize, t))
            .collect()
    }

    /// A copy of binding `binding`'s delivery state (for tests and stats).
    pub fn inbox(&self, binding: usize) -> Option<InboxState> {
        self.outbox().inboxes.get(binding).cloned()
    }
}

/// Durable delivery: [`crate::session::inbox`]'s rules, applied under the queue's lock, and
/// the flags that tell the task and the sweep what they have to do.
impl ConnHandle {
    /// Offers the live durable push `seq` of binding `binding`, encoded as `frame` (see
    /// [`InboxState::offer`]). Counts as reached whether queued, held, or left to the store.
    pub fn offer_durable(&self, binding: usize, seq: u64, frame: Bytes) -> Enqueued {
        let limit = self.limit();
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return Enqueued::Closed;
        }
        let Outbox { queue, inboxes, .. } = &mut *outbox;
        let Some(inbox) = inboxes.get_mut(binding) else {
            return Enqueued::Closed;
        };
        let offer = inbox.offer(seq, frame, queue, limit);
        // The flags change under the lock, with the state they stand for: the sweep reads and
        // clears `held` under it.
        match offer {
            Offer::Done | Offer::Wake => {}
            Offer::Held => self.held.store(true, Ordering::Relaxed),
            Offer::CatchUp => self.work_hint.store(true, Ordering::Release),
        }
        drop(outbox);
        if matches!(offer, Offer::Wake | Offer::CatchUp) {
            self.wake();
        }
        Enqueued::Queued
    }

    /// A backlog read of `binding` failed. Returns whether the connection must close (see
    /// [`InboxState::read_failed`]).
    pub fn backlog_failed(&self, binding: usize) -> bool {
        self.outbox()
            .inboxes
            .get_mut(binding)
            .is_none_or(InboxState::read_failed)
    }

    /// Reads every binding's inbox once more after what it was sent: a push routed here may
    /// have been lost between nodes. A binding that is catching up already reads anyway.
    pub fn recheck_inboxes(&self) {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return;
        }
        let mut any = false;
        for inbox in outbox.inboxes.iter_mut() {
            any |= inbox.recheck();
        }
        drop(outbox);
        if any {
            self.work_hint.store(true, Ordering::Release);
            self.wake();
        }
    }

    /// Bindings that held overtaking pushes for longer than [`inbox::REORDER_WAIT_MS`] read
    /// the store instead (the missing push may never come live, e.g. lost between nodes).
    pub(super) fn expire_held(&self, now_ms: u64) {
        if !self.held.load(Ordering::Relaxed) {
            return;
        }
        let mut outbox = self.outbox();
        let Outbox { queue, inboxes, .. } = &mut *outbox;
        let mut still_held = false;
        let mut expired = false;
        for inbox in inboxes.iter_mut() {
            match inbox.expire_held(queue, now_ms) {
                Hold::None => {}
                Hold::Waiting => still_held = true,
                Hold::Expired => expired = true,
            }
        }
        self.held.store(still_held, Ordering::Relaxed);
        if expired {
            self.work_hint.store(true, Ordering::Release);
        }
        drop(outbox);
        if expired {
            self.wake();
        }
    }

    /// The client acked binding `binding` up to `seq` (clamped to what this connection sent).
    pub fn ack(&self, binding: usize, seq: u64) {
        let mut outbox = self.outbox();
        if let Some(inbox) = outbox.inboxes.get_mut(binding)
            && inbox.ack(seq)
        {
            self.ack_pending.store(true, Ordering::Relaxed);
            self.work_hint.store(true, Ordering::Release);
        }
    }

    /// Acks recorded and not yet written to the store: (binding, seq). For the connection's
    /// last act, so that an ack followed by a close is not lost.
    pub fn unstored_acks(&self) -> Vec<(usize, u64)> {
        let outbox = self.outbox();
        outbox
            .inboxes
            .iter()
            .enumerate()
            .filter(|(_, i)| i.ack_pending())
            .map(|(binding, i)| (binding, i.acked))
            .collect()
    }

    /// Binding `binding`'s ack up to `seq` is in the store (or was given up on).
    pub fn ack_stored(&self, binding: usize, seq: u64) {
        let mut outbox = self.outbox();
        if let Some(inbox) = outbox.inboxes.get_mut(binding) {
            inbox.ack_stored(seq);
        }
        if !outbox.inboxes.iter().any(InboxState::ack_pending) {
            self.ack_pending.store(false, Ordering::Relaxed);
        }
    }

    /// Queues a `sync` for the task. `false` when one is already waiting or being answered.
    pub fn request_sync(&self, request: SyncRequest) -> bool {
        let mut outbox = self.outbox();
        if outbox.sync_busy {
            return false;
        }
        outbox.sync_busy = true;
        outbox.sync = Some(Box::new(request));
        self.work_hint.store(true, Ordering::Release);
        true
    }

    /// A `sync` could not be answered; another may be asked.
    pub fn sync_failed(&self) {
        self.outbox().sync_busy = false;
    }

    /// The store operation the task should start, if any (see [`inbox::next_work`]).
    pub fn next_work(&self, now_ms: u64) -> Option<NextWork> {
        // Cleared before the lock: a change made after this under the lock sets it again.
        if !self.work_hint.swap(false, Ordering::AcqRel) {
            return None;
        }
        let limit = self.limit();
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return None;
        }
        let Outbox {
            queue,
            inboxes,
            sync,
            ..
        } = &mut *outbox;
        let next = inbox::next_work(inboxes, sync, queue.bytes, limit, now_ms);
        // Work handed out may be followed by more; work that waits (for room in the queue, or
        // for an ack's write interval) is looked at again at a later wake.
        let deferred =
            || sync.is_some() || inboxes.iter().any(|i| i.catching_up || i.ack_pending());
        if next.is_some() || deferred() {
            self.work_hint.store(true, Ordering::Release);
        }
        next
    }

    /// Queues a backlog page of binding `binding` (see [`InboxState::apply_backlog`]). Returns
    /// how many messages were queued.
    pub fn apply_backlog(&self, binding: usize, missed_before: u64, page: Backlog) -> usize {
        let limit = self.limit();
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return 0;
        }
        let Some(Binding { app, .. }) = self.bindings.get(binding) else {
            return 0;
        };
        let Outbox { queue, inboxes, .. } = &mut *outbox;
        let (queued, wake) =
            inboxes[binding].apply_backlog(app, self.encoding, missed_before, page, queue, limit);
        drop(outbox);
        if wake {
            self.wake();
        }
        queued
    }

    /// Queues a `sync` reply: the page's pushes with the request's id, as many as fit in the
    /// byte limit, then `synced`. Returns how many pushes were queued.
    pub fn apply_sync(&self, request: SyncRequest, page: &Page) -> usize {
        let limit = self.limit();
        let mut outbox = self.outbox();
        outbox.sync_busy = false;
        if outbox.close.is_some() {
            return 0;
        }
        let Some(Binding { app, .. }) = self.bindings.get(request.binding) else {
            return 0;
        };
        let Outbox { queue, inboxes, .. } = &mut *outbox;
        let (queued, wake, synced) =
            inboxes[request.binding].apply_sync(request, app, self.encoding, page, queue, limit);
        let (_, woke) = self.push_locked(&mut outbox, synced);
        drop(outbox);
        if wake || woke {
            self.wake();
        }
        queued
    }
}

/// What the fan-out, the webhooks and the delivery service see of a connection.
impl Link for ConnHandle {
    fn id(&self) -> ConnId {
        self.id
    }

    fn device(&self) -> &DeviceId {
        &self.device
    }

    fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    fn transport(&self) -> Transport {
        self.transport
    }

    fn connected_at_ms(&self) -> u64 {
        self.connected_at_ms
    }

    fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn queue_limit(&self) -> usize {
        self.limit()
    }

    fn queued_bytes(&self) -> usize {
        self.outbox().queue.bytes
    }

    fn enqueue(&self, frame: Bytes) -> Enqueued {
        ConnHandle::enqueue(self, frame)
    }

    /// For fan-outs and live pushes: the caller's thread pays the write, and the connection's task is not
    /// woken at all, which is most of a delivery's user-space cost. A write the socket takes in
    /// part leaves the rest at the front of the queue for the task. `frame` is cloned only
    /// when some of it is queued: a shared frame's reference count is one more cache line
    /// that every fan-out thread would otherwise write per delivery.
    fn write_or_queue(&self, frame: &Bytes) -> Offered {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return Offered::Closed;
        }
        let mut queued = None;
        let header = outbox.framing.header(self.encoding, frame.len());
        let header = header.as_ref().map_or(&[][..], |h| h.as_bytes());
        // The whole frame must fit the budget, so that the rest of a partial write can always
        // be queued (held durable pushes count in `bytes` while the queue is empty); with its
        // header, which the rest of a write torn inside it carries.
        if outbox.framing.direct()
            && !outbox.in_flight
            && outbox.queue.frames.is_empty()
            && outbox.queue.fits(header.len() + frame.len(), self.limit())
        {
            match outbox.socket.try_write(header, frame) {
                // Counted like the task's writes: the frame's bytes, not the header's.
                Some(Ok(n)) if n == header.len() + frame.len() => {
                    return Offered::Written(frame.len());
                }
                // Only the rest waits, and nothing may go before it.
                Some(Ok(n)) if n > 0 => {
                    outbox.tail = true;
                    queued = Some(rest(header, frame, n));
                }
                // No socket; a full socket buffer, or an error the task will meet on its next
                // write.
                None | Some(Ok(_) | Err(_)) => {}
            }
        }
        let frame = queued.unwrap_or_else(|| frame.clone());
        let (enqueued, wake) = self.push_locked(&mut outbox, frame);
        drop(outbox);
        if wake {
            self.wake();
        }
        enqueued.into()
    }

    fn queue_shared(&self, frame: &Bytes) -> Offered {
        if self.is_parked() {
            self.write_or_queue(frame)
        } else {
            ConnHandle::enqueue(self, frame.clone()).into()
        }
    }

    fn is_closed(&self) -> bool {
        self.outbox().close.is_some()
    }

    fn add_topic(&self, binding: usize, topic: &TopicId, max: usize) -> Result<bool, usize> {
        let mut outbox = self.outbox();
        let binding = binding as u8;
        if outbox.topics.contains(binding, topic) {
            return Ok(false);
        }
        if outbox.topics.len() >= max {
            return Err(outbox.topics.len());
        }
        outbox.topics.push(binding, topic.clone());
        Ok(true)
    }

    fn remove_topic(&self, binding: usize, topic: &TopicId) -> bool {
        u8::try_from(binding).is_ok_and(|binding| self.outbox().topics.remove(binding, topic))
    }

    fn has_topic(&self, binding: usize, topic: &TopicId) -> bool {
        u8::try_from(binding).is_ok_and(|binding| self.outbox().topics.contains(binding, topic))
    }
}

#[cfg(test)]
mod tests;
