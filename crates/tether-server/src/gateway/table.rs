//! The connection table and each connection's outbound queue.
//!
//! The table is sharded by connection id so that fan-out from several API workers does not
//! serialise on one lock. Each connection's [`ConnHandle`] owns a byte-bounded outbound queue:
//! producers (pushes, pongs, disconnects) append encoded frames and wake the connection's task,
//! which writes everything queued in one go (one vectored write for many frames).

use std::collections::{HashMap, VecDeque};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;

use bytes::{Bytes, BytesMut};
use metrics::Counter;
use std::task::{Context, Poll, Waker};
use tether_core::store::Page;
use tether_core::{AppId, ConnId, DeviceId, Outgoing, TopicId, Transport, UserId};
use tether_proto::ws::ServerHeader;
use tether_proto::{Code, Disconnect, Frame, Synced};

use crate::metrics::TransportMetrics;

use super::inbox::{
    ACK_WRITE_EVERY_MS, Backlog, InboxState, REORDER_FRAMES, REORDER_WAIT_MS, SyncRequest,
    push_frame,
};

use futures_util::task::AtomicWaker;

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Json,
}

impl Encoding {
    pub fn encode(self, frame: &Frame) -> Bytes {
        match self {
            Encoding::Binary => tether_proto::binary::encode_to_bytes(frame),
            Encoding::Json => Bytes::from(tether_proto::json::encode(frame)),
        }
    }
}

/// Why and how a connection is being closed by the server.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: Code,
    pub reason: String,
    pub retry_after_ms: u32,
    /// Write what is already queued before the `disconnect` (false when the client is slow:
    /// the queue was dropped to bound memory).
    pub flush: bool,
}

impl Close {
    pub fn frame(&self) -> Frame {
        Frame::new(
            0,
            Disconnect {
                code: self.code,
                reason: self.reason.clone(),
                retry_after_ms: self.retry_after_ms,
            },
        )
    }
}

/// A frame handed to a connection by a fan-out: queued for its task, or written at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// In the queue, or in part on the wire with the rest queued.
    Queued,
    /// Written to the socket whole, by the caller's thread: `n` bytes of frame (a WebSocket
    /// message's header besides).
    Written(usize),
    Closed,
    Overflow,
}

impl From<Enqueued> for Offered {
    fn from(e: Enqueued) -> Offered {
        match e {
            Enqueued::Queued => Offered::Queued,
            Enqueued::Closed => Offered::Closed,
            Enqueued::Overflow => Offered::Overflow,
        }
    }
}

/// What happened to a frame offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The connection is closing; the frame was dropped.
    Closed,
    /// The queue passed its byte limit: the connection is now closing as slow.
    Overflow,
}

/// A connection's socket, which fan-outs write to directly.
#[derive(Debug, Default)]
pub enum Socket {
    /// None (yet, or any more).
    #[default]
    None,
    /// Registered with tokio's reactor: the connection's task reads it.
    Live(Arc<TcpStream>),
    /// The connection is parked: the socket waits in the gateway's parked-socket poller rather
    /// than tokio's reactor, which would keep a registration of about 300 bytes for it (see
    /// `super::park`).
    Parked(std::net::TcpStream),
}

impl Socket {
    /// Writes what the socket takes at once of `header` then `frame`, never waiting.
    ///
    /// With `send(2)` (`sendmsg(2)` with a header) rather than `write(2)`: a socket needs none
    /// of the file layer's work (`vfs_write`'s checks, the position lock lookup), which was
    /// about a tenth of a fan-out's CPU per delivery here (`docs/benchmarks.md`).
    fn try_write(&self, header: &[u8], frame: &[u8]) -> Option<std::io::Result<usize>> {
        let send = |socket: socket2::SockRef<'_>| {
            if header.is_empty() {
                socket.send(frame)
            } else {
                let slices = [std::io::IoSlice::new(header), std::io::IoSlice::new(frame)];
                socket.send_vectored(&slices)
            }
        };
        match self {
            Socket::None => None,
            // Through tokio, so that a full socket clears its write readiness.
            Socket::Live(stream) => Some(stream.try_io(tokio::io::Interest::WRITABLE, || {
                send(socket2::SockRef::from(&**stream))
            })),
            // Non-blocking: the `dup` shares the flag with tokio's descriptor.
            Socket::Parked(stream) => Some(send(socket2::SockRef::from(stream))),
        }
    }
}

#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes accepted and not yet written: queued plus the batch being written.
    bytes: usize,
    /// Boxed, like `sync`: rare, and an idle connection's handle is kept small (see
    /// [`ConnHandle`]).
    close: Option<Box<Close>>,
    /// Durable delivery state, one per binding, in the order of [`ConnHandle::bindings`].
    /// Under the queue's lock, so that ordering a push and queueing it are one step.
    inboxes: Box<[InboxState]>,
    /// A `sync` waiting for the task.
    sync: Option<Box<SyncRequest>>,
    /// A `sync` is waiting or being answered.
    sync_busy: bool,
    /// The topics this connection is subscribed to, or asked to be: (binding, topic). Kept
    /// for the per-connection limit and for leaving every topic when the connection ends.
    topics: Vec<(u8, TopicId)>,
    /// The task holds frames it has not finished writing (or has not started yet: true until
    /// the task says it is idle, so that nothing is written before `connected`). A direct
    /// write needs this false and an empty queue.
    in_flight: bool,
    /// The front of `frames` is the rest of a frame a direct write began: it must be written
    /// before anything else, and is kept when the queue is dropped.
    tail: bool,
    /// See [`NewConn::direct`]. Under the queue's lock: a direct write and a parking task
    /// switching the socket out of tokio's reactor must not meet.
    socket: Socket,
}

/// Drops what is queued for a connection that is closing, except the rest of a frame already
/// begun on the wire: a client must be able to read the `disconnect` behind it.
fn drop_queue(outbox: &mut Outbox) {
    if outbox.tail {
        outbox.frames.truncate(1);
    } else {
        outbox.frames = VecDeque::new();
    }
}

/// A store operation the connection's task should run next.
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

/// What a connection is made of once its handshake succeeded.
#[derive(Debug)]
pub struct NewConn {
    pub id: ConnId,
    pub transport: Transport,
    pub encoding: Encoding,
    pub device: DeviceId,
    pub bindings: Vec<(AppId, UserId)>,
    /// Where each binding starts in its inbox (same order as `bindings`).
    pub resume: Vec<InboxState>,
    /// Bytes that may wait in the outbound queue.
    pub queue_limit: usize,
    /// The socket, for fan-outs to write to directly while the task has nothing to write.
    pub direct: Option<Arc<TcpStream>>,
    /// Silence after which the heartbeat sweep closes the connection.
    pub idle_limit: Duration,
    /// Now, by [`super::Gateway::clock_ms`].
    pub now_ms: u64,
}

/// Appends `frame` to a connection's queue and counts its bytes (the caller checked the limit).
/// Returns whether the task needs waking: one wake-up covers everything queued before the task
/// runs, so only a frame that finds the queue empty asks for one.
fn queue_frame(frames: &mut VecDeque<Bytes>, bytes: &mut usize, frame: Bytes) -> bool {
    let was_empty = frames.is_empty();
    *bytes += frame.len();
    frames.push_back(frame);
    was_empty
}

/// One connection as the rest of the node sees it.
///
/// # Invariants
/// `outbox.bytes <= limit` whenever `close` is `None`; once `close` is set it is never
/// replaced, and no frame is queued after it.
#[derive(Debug)]
pub struct ConnHandle {
    pub id: ConnId,
    pub transport: Transport,
    pub encoding: Encoding,
    pub device: DeviceId,
    pub bindings: Box<[(AppId, UserId)]>,
    pub connected_at_ms: u64,
    /// The queue's byte limit (see [`NewConn::queue_limit`]); read through [`Self::limit`].
    limit: u32,
    /// A connection silent for longer than this is closed by the heartbeat sweep.
    idle_limit_ms: u32,
    /// When a frame last arrived, in ms of the gateway's clock ([`super::Gateway::clock_ms`]).
    last_seen_ms: AtomicU64,
    /// The task holds bytes the client has not taken yet.
    writing: AtomicBool,
    /// When the current write last made progress (or began), by the gateway's clock.
    progress_ms: AtomicU64,
    outbox: Mutex<Outbox>,
    /// Set when there is something for the task to do (frames queued, a close requested).
    ready: AtomicBool,
    /// Some binding holds overtaking pushes (see [`InboxState::held`]): the sweep looks.
    held: AtomicBool,
    /// Some binding has an ack not yet written to the store.
    ack_pending: AtomicBool,
    /// [`ConnHandle::next_work`] may find something: set with every change that can make
    /// store work (an ack, a `sync`, a binding falling back to the store), so that the task's
    /// many wake-ups for frames alone do not take the queue's lock to learn there is none.
    work_hint: AtomicBool,
    /// The connection task, woken when `ready` is set. A waker slot rather than a `Notify`:
    /// waiting on it needs no per-wait node in the task's future.
    task: AtomicWaker,
    /// Whether the connection has a task: [`RUNNING`], [`PARK_ASKED`] or [`PARKED`] (see
    /// `super::park`).
    park: AtomicU8,
}

/// The connection has a task serving it.
const RUNNING: u8 = 0;
/// The sweep found it idle and asked its task to park.
const PARK_ASKED: u8 = 1;
/// No task: the socket and this handle wait for the next event (see `super::park`).
const PARKED: u8 = 2;

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
            idle_limit_ms: u32::try_from(conn.idle_limit.as_millis()).unwrap_or(u32::MAX),
            last_seen_ms: AtomicU64::new(conn.now_ms),
            writing: AtomicBool::new(false),
            progress_ms: AtomicU64::new(conn.now_ms),
            outbox: Mutex::new(Outbox {
                inboxes: conn.resume.into_boxed_slice(),
                in_flight: true,
                socket: conn.direct.map_or(Socket::None, Socket::Live),
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

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding this lock cannot leave the queue inconsistent (every update
        // is a single push or swap), so a poisoned lock is still usable.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether frames may reach this connection joined back to back in one buffer: a raw TCP
    /// stream of binary frames (a WebSocket message carries exactly one frame).
    pub fn takes_joined_frames(&self) -> bool {
        self.transport == Transport::Tcp && self.encoding == Encoding::Binary
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

    /// Writes `frame` to the socket at once when nothing else is waiting to be written on this
    /// connection, or queues it like [`ConnHandle::enqueue`].
    ///
    /// For fan-outs: the caller's thread pays the write, and the connection's task is not
    /// woken at all, which is most of a delivery's user-space cost. A write the socket takes in
    /// part leaves the rest at the front of the queue for the task. `frame` is cloned only
    /// when some of it is queued: a shared frame's reference count is one more cache line
    /// that every fan-out thread would otherwise write per delivery.
    pub fn offer(&self, frame: &Bytes) -> Offered {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return Offered::Closed;
        }
        let mut queued = None;
        // A WebSocket message per frame, behind its header.
        let header = (self.transport == Transport::Ws)
            .then(|| ServerHeader::new(super::ws::opcode(self.encoding), frame.len()));
        let header = header.as_ref().map_or(&[][..], ServerHeader::as_bytes);
        // The whole frame must fit the budget, so that the rest of a partial write can always
        // be queued (held durable pushes count in `bytes` while the queue is empty); with its
        // header, which the rest of a write torn inside it carries.
        if !outbox.in_flight
            && outbox.frames.is_empty()
            && outbox.bytes + header.len() + frame.len() <= self.limit()
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

    /// The connection is over: closes the socket now rather than when the last handle goes
    /// (a paced fan-out or a queued job may hold one for a while).
    pub fn release_socket(&self) {
        let outbox = self.outbox();
        let _ = match &outbox.socket {
            Socket::None => Ok(()),
            Socket::Live(stream) => socket2::SockRef::from(&**stream).shutdown(Shutdown::Both),
            Socket::Parked(stream) => socket2::SockRef::from(stream).shutdown(Shutdown::Both),
        };
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

    /// Queues `frame` on an open connection's locked queue, or closes it as slow past the byte
    /// limit. Returns whether the task must be woken (the caller does it after unlocking).
    fn push_locked(&self, outbox: &mut Outbox, frame: Bytes) -> (Enqueued, bool) {
        if outbox.bytes + frame.len() > self.limit() {
            drop_queue(outbox);
            outbox.close = Some(Box::new(Close {
                code: Code::SLOW,
                reason: format!("more than {} bytes waiting to be read", self.limit()),
                retry_after_ms: 0,
                flush: false,
            }));
            return (Enqueued::Overflow, true);
        }
        let wake = queue_frame(&mut outbox.frames, &mut outbox.bytes, frame);
        (Enqueued::Queued, wake)
    }

    /// The index of the binding for `app`, if the connection has one.
    pub fn binding(&self, app: &str) -> Option<usize> {
        self.bindings.iter().position(|(a, _)| a.as_str() == app)
    }

    /// Offers the live durable push `seq` of binding `binding`, encoded as `frame`.
    ///
    /// Queued only when it is the binding's next seq; an older seq was sent already, and a gap
    /// (or a binding still catching up) leaves the push to the backlog read, which finds it in
    /// the store. All of these count as reached: the connection gets the message in order.
    pub fn offer_durable(&self, binding: usize, seq: u64, frame: Bytes) -> Enqueued {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return Enqueued::Closed;
        }
        let Some(inbox) = outbox.inboxes.get_mut(binding) else {
            return Enqueued::Closed;
        };
        if inbox.catching_up {
            inbox.missed = inbox.missed.max(seq);
            return Enqueued::Queued;
        }
        if seq <= inbox.sent {
            return Enqueued::Queued;
        }
        if seq > inbox.sent + 1 {
            // Overtaken: hold it for the earlier seq, within the queue's budget, or fall back
            // to the store.
            let fits = outbox.bytes + frame.len() <= self.limit();
            let inbox = &mut outbox.inboxes[binding];
            if fits && inbox.held.len() < REORDER_FRAMES {
                if inbox.held.is_empty() {
                    inbox.held_since_ms = tether_core::now_ms();
                    self.held.store(true, Ordering::Relaxed);
                }
                let len = frame.len();
                inbox.held.push((seq, frame));
                outbox.bytes += len;
                return Enqueued::Queued;
            }
            self.catch_up_locked(&mut outbox, binding, seq);
            drop(outbox);
            self.wake();
            return Enqueued::Queued;
        }
        let Outbox {
            frames,
            bytes,
            inboxes,
            ..
        } = &mut *outbox;
        let inbox = &mut inboxes[binding];
        if *bytes + frame.len() > self.limit() {
            // No room (held pushes may be taking it): the store has it, and a backlog read
            // waits for room rather than closing the client as slow.
            self.catch_up_locked(&mut outbox, binding, seq);
            drop(outbox);
            self.wake();
            return Enqueued::Queued;
        }
        let mut wake = queue_frame(frames, bytes, frame);
        inbox.sent = seq;
        // Held pushes that now follow on (their bytes are already counted).
        while let Some(i) = inbox.held.iter().position(|(s, _)| *s == inbox.sent + 1) {
            let (s, frame) = inbox.held.swap_remove(i);
            frames.push_back(frame);
            inbox.sent = s;
            wake = true;
        }
        inbox.top = inbox.top.max(inbox.sent);
        if !inbox.held.is_empty() {
            // Anything left is either older than `sent` (already sent: drop it) or still ahead.
            let sent = inbox.sent;
            let mut freed = 0;
            inbox.held.retain(|(s, f)| {
                let keep = *s > sent;
                if !keep {
                    freed += f.len();
                }
                keep
            });
            *bytes -= freed;
        }
        if inbox.held.is_empty() && inbox.held.capacity() > 0 {
            // Back in order: give the hold's memory back rather than keep it per connection.
            inbox.held = Vec::new();
        }
        drop(outbox);
        if wake {
            self.wake();
        }
        Enqueued::Queued
    }

    /// Switches binding `binding` to reading the store, giving up what it held; `seq` is the
    /// highest seq known to be missing.
    fn catch_up_locked(&self, outbox: &mut Outbox, binding: usize, seq: u64) {
        self.work_hint.store(true, Ordering::Release);
        let inbox = &mut outbox.inboxes[binding];
        let held: usize = inbox.held.iter().map(|(_, f)| f.len()).sum();
        let highest = inbox.held.iter().map(|(s, _)| *s).max().unwrap_or(0);
        inbox.held = Vec::new();
        inbox.catching_up = true;
        inbox.missed = inbox.missed.max(seq).max(highest);
        outbox.bytes -= held;
    }

    /// A backlog read of `binding` failed. Returns whether the connection must close: it must
    /// when messages are known to be missing (the first page of a resume, a gap); a read that
    /// only checked for losses ([`ConnHandle::recheck_inboxes`]) is given up instead, so that a
    /// store under load does not also lose the node its connections.
    pub fn backlog_failed(&self, binding: usize) -> bool {
        let mut outbox = self.outbox();
        let Some(inbox) = outbox.inboxes.get_mut(binding) else {
            return true;
        };
        if inbox.catching_up && !inbox.first_page && inbox.missed <= inbox.sent {
            inbox.catching_up = false;
            inbox.missed = 0;
            return false;
        }
        true
    }

    /// Reads every binding's inbox once more after what it was sent: a push routed here may
    /// have been lost between nodes. A binding that is catching up already reads anyway.
    pub fn recheck_inboxes(&self) {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return;
        }
        let mut any = false;
        for inbox in outbox.inboxes.iter_mut().filter(|i| !i.catching_up) {
            inbox.catching_up = true;
            inbox.missed = inbox.missed.max(inbox.sent);
            any = true;
        }
        drop(outbox);
        if any {
            self.work_hint.store(true, Ordering::Release);
            self.wake();
        }
    }

    /// Bindings that held overtaking pushes for longer than [`REORDER_WAIT_MS`] read the store
    /// instead (the missing push may never come live, e.g. lost between nodes).
    fn expire_held(&self, now_ms: u64) {
        if !self.held.load(Ordering::Relaxed) {
            return;
        }
        let mut outbox = self.outbox();
        let mut still_held = false;
        let mut woke = false;
        for binding in 0..outbox.inboxes.len() {
            let inbox = &outbox.inboxes[binding];
            if inbox.held.is_empty() {
                continue;
            }
            if now_ms.saturating_sub(inbox.held_since_ms) > REORDER_WAIT_MS {
                self.catch_up_locked(&mut outbox, binding, 0);
                woke = true;
            } else {
                still_held = true;
            }
        }
        self.held.store(still_held, Ordering::Relaxed);
        drop(outbox);
        if woke {
            self.wake();
        }
    }

    /// The client acked binding `binding` up to `seq` (clamped to what this connection sent).
    pub fn ack(&self, binding: usize, seq: u64) {
        let mut outbox = self.outbox();
        if let Some(inbox) = outbox.inboxes.get_mut(binding) {
            inbox.acked = inbox.acked.max(seq.min(inbox.top));
            if inbox.acked > inbox.stored_ack {
                self.ack_pending.store(true, Ordering::Relaxed);
                self.work_hint.store(true, Ordering::Release);
            }
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
            .filter(|(_, i)| i.acked > i.stored_ack)
            .map(|(binding, i)| (binding, i.acked))
            .collect()
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

    /// The store operation the task should start, if any. Reads wait until the queue is at
    /// most half full, so a backlog never pushes a connection over its limit.
    ///
    /// Acks are written at most once per [`ACK_WRITE_EVERY_MS`] per binding (a client acking
    /// every few messages would otherwise cost a store write per few messages); the heartbeat
    /// sweep wakes the task for the ones that waited, and the connection's end writes the rest.
    pub fn next_work(&self, now_ms: u64) -> Option<NextWork> {
        // Cleared before the lock: a change made after this under the lock sets it again.
        if !self.work_hint.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut outbox = self.outbox();
        let next = Self::next_work_locked(&mut outbox, now_ms, self.limit());
        let deferred = || {
            outbox.close.is_none()
                && (outbox.sync.is_some()
                    || outbox
                        .inboxes
                        .iter()
                        .any(|i| i.catching_up || i.acked > i.stored_ack))
        };
        // Work handed out may be followed by more; work that waits (for room in the queue, or
        // for an ack's write interval) is looked at again at a later wake.
        if next.is_some() || deferred() {
            self.work_hint.store(true, Ordering::Release);
        }
        next
    }

    fn next_work_locked(outbox: &mut Outbox, now_ms: u64, limit: usize) -> Option<NextWork> {
        if outbox.close.is_some() {
            return None;
        }
        if let Some((binding, inbox)) = outbox.inboxes.iter_mut().enumerate().find(|(_, i)| {
            i.acked > i.stored_ack && now_ms >= i.ack_written_ms.saturating_add(ACK_WRITE_EVERY_MS)
        }) {
            inbox.ack_written_ms = now_ms;
            return Some(NextWork::Ack {
                binding,
                seq: inbox.acked,
            });
        }
        if outbox.bytes > limit / 2 {
            return None;
        }
        if let Some(request) = outbox.sync.take() {
            return Some(NextWork::Sync(*request));
        }
        outbox
            .inboxes
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

    /// Queues a backlog page of binding `binding` read after `missed_before` was taken, as far
    /// as the byte limit allows, and turns the binding live once it has caught up. Returns how
    /// many messages were queued.
    pub fn apply_backlog(&self, binding: usize, missed_before: u64, page: Backlog) -> usize {
        let mut outbox = self.outbox();
        if outbox.close.is_some() {
            return 0;
        }
        let Some((app, _)) = self.bindings.get(binding) else {
            return 0;
        };
        let mut queued = 0;
        let mut all = true;
        let mut wake = false;
        {
            let Outbox {
                frames,
                bytes,
                inboxes,
                ..
            } = &mut *outbox;
            let inbox = &mut inboxes[binding];
            inbox.first_page = false;
            if let Some(seq) = page.skipped {
                inbox.sent = inbox.sent.max(seq);
                inbox.top = inbox.top.max(seq);
                inbox.acked = inbox.acked.max(seq);
                inbox.stored_ack = inbox.stored_ack.max(seq);
            }
            for m in &page.messages {
                if m.seq.0 <= inbox.sent {
                    continue;
                }
                let frame = push_frame(self.encoding, 0, app, m);
                if *bytes + frame.len() > self.limit() {
                    all = false;
                    break;
                }
                wake |= queue_frame(frames, bytes, frame);
                inbox.sent = m.seq.0;
                inbox.top = inbox.top.max(m.seq.0);
                queued += 1;
            }
            if all && page.complete {
                // Everything missed before the read began was stored before it began: the read
                // returned it, or it expired or was trimmed. Anything missed since needs
                // another read.
                inbox.sent = inbox.sent.max(missed_before);
                inbox.top = inbox.top.max(inbox.sent);
                if inbox.missed <= inbox.sent {
                    inbox.catching_up = false;
                    inbox.missed = 0;
                }
            }
        }
        drop(outbox);
        if wake {
            self.wake();
        }
        queued
    }

    /// Binding `binding`'s ack up to `seq` is in the store (or was given up on).
    pub fn ack_stored(&self, binding: usize, seq: u64) {
        let mut outbox = self.outbox();
        if let Some(inbox) = outbox.inboxes.get_mut(binding) {
            inbox.stored_ack = inbox.stored_ack.max(seq);
        }
        if outbox.inboxes.iter().all(|i| i.acked <= i.stored_ack) {
            self.ack_pending.store(false, Ordering::Relaxed);
        }
    }

    /// Queues a `sync` reply: the page's pushes with the request's id, as many as fit in the
    /// byte limit, then `synced`. Returns how many pushes were queued.
    pub fn apply_sync(&self, request: SyncRequest, page: &Page) -> usize {
        // Room kept for the `synced` frame (an app id is at most 128 bytes).
        const SYNCED_ROOM: usize = 512;
        let mut outbox = self.outbox();
        outbox.sync_busy = false;
        if outbox.close.is_some() {
            return 0;
        }
        let Some((app, _)) = self.bindings.get(request.binding) else {
            return 0;
        };
        let mut last = request.after;
        let mut queued = 0;
        let mut wake = false;
        for m in &page.messages {
            let frame = push_frame(self.encoding, request.id, app, m);
            if outbox.bytes + frame.len() + SYNCED_ROOM > self.limit() {
                break;
            }
            let (_, w) = self.push_locked(&mut outbox, frame);
            wake |= w;
            last = m.seq.0;
            queued += 1;
        }
        let inbox = &mut outbox.inboxes[request.binding];
        inbox.top = inbox.top.max(last);
        let synced = Frame::new(
            request.id,
            Synced {
                app: app.to_string(),
                last,
                head: page.head.0,
            },
        );
        let (_, w) = self.push_locked(&mut outbox, self.encoding.encode(&synced));
        drop(outbox);
        if wake || w {
            self.wake();
        }
        queued
    }

    /// A `sync` could not be answered; another may be asked.
    pub fn sync_failed(&self) {
        self.outbox().sync_busy = false;
    }

    /// Records that binding `binding` subscribes to `topic`: `Ok(true)` if new, `Ok(false)` if
    /// it already was, `Err(n)` when the connection already has `max` topics.
    pub fn add_topic(&self, binding: usize, topic: &TopicId, max: usize) -> Result<bool, usize> {
        let mut outbox = self.outbox();
        let binding = binding as u8;
        if outbox
            .topics
            .iter()
            .any(|(b, t)| *b == binding && t == topic)
        {
            return Ok(false);
        }
        if outbox.topics.len() >= max {
            return Err(outbox.topics.len());
        }
        // Most connections have a few topics: grow one at a time rather than by doubling.
        outbox.topics.reserve_exact(1);
        outbox.topics.push((binding, topic.clone()));
        Ok(true)
    }

    /// Forgets binding `binding`'s subscription to `topic`; whether it had one.
    pub fn remove_topic(&self, binding: usize, topic: &TopicId) -> bool {
        let mut outbox = self.outbox();
        let before = outbox.topics.len();
        outbox
            .topics
            .retain(|(b, t)| !(*b as usize == binding && t == topic));
        before != outbox.topics.len()
    }

    /// Whether binding `binding` is subscribed to `topic` (or asked to be).
    pub fn has_topic(&self, binding: usize, topic: &TopicId) -> bool {
        self.outbox()
            .topics
            .iter()
            .any(|(b, t)| *b as usize == binding && t == topic)
    }

    /// Every topic of the connection, forgetting them: for its end.
    pub fn take_topics(&self) -> Vec<(usize, TopicId)> {
        std::mem::take(&mut self.outbox().topics)
            .into_iter()
            .map(|(b, t)| (b as usize, t))
            .collect()
    }

    /// Whether the connection is closing or closed: nothing more will be queued.
    pub fn is_closed(&self) -> bool {
        self.outbox().close.is_some()
    }

    /// The byte limit of the outbound queue.
    pub fn queue_limit(&self) -> usize {
        self.limit()
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Bytes queued and not yet written (the batch being written included).
    pub fn queued_bytes(&self) -> usize {
        self.outbox().bytes
    }

    /// A copy of binding `binding`'s delivery state (for tests and stats).
    pub fn inbox(&self, binding: usize) -> Option<InboxState> {
        self.outbox().inboxes.get(binding).cloned()
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

    fn wake(&self) {
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
        let tail = std::mem::take(&mut outbox.tail) && !outbox.frames.is_empty();
        if claim || !outbox.frames.is_empty() {
            outbox.in_flight = true;
        }
        match &outbox.close {
            Some(close) if !close.flush => {
                let rest = if tail {
                    outbox.frames.pop_front()
                } else {
                    None
                };
                outbox.frames = VecDeque::new();
                into.extend(rest);
            }
            // The outbox starts again from an empty deque (no allocation) rather than getting
            // `into`'s: a burst's capacity is freed once it is written, not kept for the
            // connection's life.
            _ if into.is_empty() => *into = std::mem::take(&mut outbox.frames),
            _ => into.append(&mut outbox.frames),
        }
        (outbox.close.as_deref().cloned(), tail)
    }

    /// Reports `n` bytes written at `now_ms`, freeing that much of the queue's budget.
    pub fn written(&self, n: usize, now_ms: u64) {
        let mut outbox = self.outbox();
        debug_assert!(
            outbox.bytes >= n || outbox.close.is_some(),
            "wrote bytes never queued"
        );
        outbox.bytes = outbox.bytes.saturating_sub(n);
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

    /// Marks the connection finished: nothing more is queued (pushes count it as not reached)
    /// and what was queued is dropped.
    /// Returns the rest of a frame a direct write began, if one is queued: it must go out
    /// before the `disconnect`.
    pub fn finish(&self) -> Option<Bytes> {
        let mut outbox = self.outbox();
        let rest = if std::mem::take(&mut outbox.tail) {
            outbox.frames.pop_front()
        } else {
            None
        };
        outbox.frames = VecDeque::new();
        outbox.bytes = 0;
        if outbox.close.is_none() {
            outbox.close = Some(Box::new(Close {
                code: Code::INTERNAL,
                reason: "connection finished".into(),
                retry_after_ms: 0,
                flush: false,
            }));
        }
        rest
    }

    /// Gives up on writing what is queued: the client stopped reading. A close already asked
    /// for keeps its code (a kicked client is not told to come back); otherwise it closes as
    /// slow.
    pub fn abandon(&self, reason: &str) -> bool {
        let mut outbox = self.outbox();
        match &mut outbox.close {
            Some(close) if !close.flush => return false,
            Some(close) => close.flush = false,
            None => {
                outbox.close = Some(Box::new(Close {
                    code: Code::SLOW,
                    reason: reason.to_owned(),
                    retry_after_ms: 0,
                    flush: false,
                }))
            }
        }
        drop_queue(&mut outbox);
        drop(outbox);
        self.wake();
        true
    }

    /// Records that the client was heard from at `now_ms`.
    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether the sweep asked the task to park.
    pub fn park_asked(&self) -> bool {
        self.park.load(Ordering::Relaxed) == PARK_ASKED
    }

    /// Whether the task has nothing left to do but wait: no store work, no ack waiting to be
    /// written, no overtaking push held (each of those needs the task or the sweep's wake).
    pub fn settled(&self) -> bool {
        !self.work_hint.load(Ordering::Acquire)
            && !self.ack_pending.load(Ordering::Acquire)
            && !self.held.load(Ordering::Acquire)
    }

    /// The task is parking: from now on `waker` stands for it. Returns whether something is
    /// already waiting for it (frames, a close), in which case it must not park after all.
    pub fn parking(&self, waker: &Waker) -> bool {
        self.park.store(PARKED, Ordering::Relaxed);
        self.task.register(waker);
        self.ready.load(Ordering::Acquire)
    }

    /// A task serves the connection again (a parked one woke up, or a park was called off).
    pub fn unparked(&self) {
        self.park.store(RUNNING, Ordering::Relaxed);
    }

    /// The task was asked to park at `now_ms` but is busy (a frame half read, store work, ...):
    /// the sweep asks again only after another `park_after`, not at its next pass, so that a
    /// connection that cannot park is not woken at every pass for nothing.
    pub fn park_declined(&self, now_ms: u64) {
        // `progress_ms` only counts for stalls while `writing`, which a parking task is not.
        self.progress_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.park.store(RUNNING, Ordering::Relaxed);
    }

    /// Its parked socket is readable: wakes the waker a parked connection left, if it is
    /// still parked (a stale report for a connection serving again is ignored).
    pub fn wake_parked(&self) {
        if self.is_parked() {
            self.task.wake();
        }
    }

    /// Whether the connection waits without a task.
    pub fn is_parked(&self) -> bool {
        self.park.load(Ordering::Relaxed) == PARKED
    }

    /// Asks the task to park if the connection has neither heard from its client nor written
    /// for `park_after_ms` (0: never). A connection already parked or asked
    /// is left alone, so that the sweep never wakes a parked connection for nothing.
    fn ask_park(&self, now_ms: u64, park_after_ms: u64) {
        if park_after_ms == 0
            || self.park.load(Ordering::Relaxed) != RUNNING
            || self.writing.load(Ordering::Acquire)
        {
            return;
        }
        let active = self
            .last_seen_ms
            .load(Ordering::Relaxed)
            .max(self.progress_ms.load(Ordering::Relaxed));
        if now_ms.saturating_sub(active) >= park_after_ms
            && self
                .park
                .compare_exchange(RUNNING, PARK_ASKED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.wake();
        }
    }

    /// Closes the connection if the client has been silent past its limit at `now_ms`, or has
    /// taken no bytes of a pending write for `write_timeout_ms`; asks an idle one to park.
    fn sweep(&self, now_ms: u64, write_timeout_ms: u64, park_after_ms: u64) -> bool {
        self.expire_held(tether_core::now_ms());
        if self.ack_pending.load(Ordering::Relaxed) {
            // An ack that waited for its write interval: the task decides.
            self.wake();
        }
        if self.writing.load(Ordering::Acquire) {
            let stalled = now_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed));
            if stalled > write_timeout_ms {
                return self.abandon(&format!("the client took no bytes for {stalled} ms"));
            }
        }
        let silent = now_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed));
        if silent > u64::from(self.idle_limit_ms) {
            return self.close(Close {
                code: Code::HEARTBEAT_TIMEOUT,
                reason: format!("no frame for {silent} ms"),
                retry_after_ms: 0,
                flush: false,
            });
        }
        self.ask_park(now_ms, park_after_ms);
        false
    }
}

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<ConnId, Arc<ConnHandle>>>;

/// Every connection of this node that has completed its handshake.
#[derive(Debug)]
pub struct ConnTable {
    shards: Box<[Shard]>,
    next_id: AtomicU64,
    overflows: Counter,
    deliveries: Counter,
    /// Frames and bytes that pushes wrote to sockets themselves (see [`ConnHandle::offer`]);
    /// what the connection tasks write they count themselves.
    tcp: TransportMetrics,
    ws: TransportMetrics,
}

impl ConnTable {
    pub fn new(overflows: Counter, deliveries: Counter) -> Self {
        ConnTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(first_conn_id()),
            overflows,
            deliveries,
            tcp: TransportMetrics::new(Transport::Tcp),
            ws: TransportMetrics::new(Transport::Ws),
        }
    }

    /// A connection id never used before by this node id, also across restarts: sessions of a
    /// previous incarnation that the registry still holds must not name a new connection.
    pub fn next_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn shard(&self, id: ConnId) -> MutexGuard<'_, HashMap<ConnId, Arc<ConnHandle>>> {
        self.shards[(id.0 as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, conn: Arc<ConnHandle>) {
        self.shard(conn.id).insert(conn.id, conn);
    }

    pub fn remove(&self, id: ConnId) {
        self.shard(id).remove(&id);
    }

    pub fn get(&self, id: ConnId) -> Option<Arc<ConnHandle>> {
        self.shard(id).get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many shards the table has; see [`ConnTable::for_each_in`].
    pub fn shard_count(&self) -> usize {
        SHARDS
    }

    /// Calls `f` for every connection of shards `range`, holding one shard lock at a time
    /// (broadcast: `f` only queues a frame, so the lock is held briefly).
    pub fn for_each_in(&self, range: std::ops::Range<usize>, mut f: impl FnMut(&Arc<ConnHandle>)) {
        for shard in &self.shards[range] {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.values().for_each(&mut f);
        }
    }

    /// Calls `f` for every connection, one shard lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<ConnHandle>)) {
        for shard in self.shards.iter() {
            let conns: Vec<_> = shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            conns.iter().for_each(&mut f);
        }
    }

    /// Closes every connection whose client went silent past its heartbeat limit, or stopped
    /// taking bytes of a pending write for `write_timeout`, and asks connections idle for
    /// `park_after` to park (zero: never). Holds one shard lock at a time and allocates
    /// nothing for connections that are alive.
    pub fn sweep(&self, now_ms: u64, write_timeout: Duration, park_after: Duration) -> usize {
        let write_timeout_ms = write_timeout.as_millis() as u64;
        let park_after_ms = park_after.as_millis() as u64;
        let mut closed = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            closed += shard
                .values()
                .filter(|c| c.sweep(now_ms, write_timeout_ms, park_after_ms))
                .count();
        }
        closed
    }

    /// Whether a frame reached its connection, counting overflows.
    fn counted(&self, transport: Transport, offered: Offered) -> bool {
        match offered {
            Offered::Queued => true,
            Offered::Written(n) => {
                let metrics = match transport {
                    Transport::Tcp => &self.tcp,
                    Transport::Ws => &self.ws,
                };
                metrics.frames_out.increment(1);
                metrics.bytes_out.increment(n as u64);
                true
            }
            Offered::Closed => false,
            Offered::Overflow => {
                self.overflows.increment(1);
                false
            }
        }
    }
}

/// What is left to write of `header` then `frame` once `n` bytes of them are written (fewer
/// than all): a slice of `frame`, or, when the write ended inside the header (a full socket
/// buffer at exactly that point, rare), a copy of the header's rest and the frame.
fn rest(header: &[u8], frame: &Bytes, n: usize) -> Bytes {
    match n.checked_sub(header.len()) {
        Some(into_frame) => frame.slice(into_frame..),
        None => {
            let mut rest = BytesMut::with_capacity(header.len() - n + frame.len());
            rest.extend_from_slice(&header[n..]);
            rest.extend_from_slice(frame);
            rest.freeze()
        }
    }
}

/// The first connection id of this process: the boot time in seconds, shifted past 2^20, so
/// that a restarted node starts above every id its previous incarnation used unless that one
/// opened more than a million connections per second of its life. Below 2^53, so that
/// JavaScript reads it exactly.
fn first_conn_id() -> u64 {
    (tether_core::now_ms() / 1000).max(1) << 20
}

/// What the router asks of the gateway (see [`tether_core::LocalSink`]; the node's sink adds
/// the fan-out's part).
impl ConnTable {
    /// Queues a push on each of `conns` that is open; returns how many took it.
    pub fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize {
        let Some(push) = msg.push() else { return 0 };
        let mut reached = 0;
        for id in conns {
            let Some(conn) = self.get(*id) else { continue };
            let frame = match conn.encoding {
                Encoding::Binary => msg.binary(),
                Encoding::Json => msg.json(),
            };
            // A transient push is written at once when nothing waits before it, without
            // waking the connection's task, or starting one for a parked connection.
            let offered = if push.qos == 0 {
                conn.offer(frame)
            } else {
                match conn.binding(&push.app) {
                    Some(binding) => conn.offer_durable(binding, push.seq, frame.clone()).into(),
                    None => Offered::Closed,
                }
            };
            if self.counted(conn.transport, offered) {
                reached += 1;
            }
        }
        self.deliveries.increment(reached as u64);
        reached
    }

    /// Closes each of `conns` that is open with `code`; returns how many were.
    pub fn disconnect(&self, conns: &[ConnId], code: Code, reason: &str) -> usize {
        conns
            .iter()
            .filter_map(|id| self.get(*id))
            .filter(|conn| {
                conn.close(Close {
                    code,
                    reason: reason.to_owned(),
                    retry_after_ms: 0,
                    flush: true,
                })
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_conn(limit: usize) -> NewConn {
        NewConn {
            id: ConnId(1),
            transport: Transport::Tcp,
            encoding: Encoding::Binary,
            device: DeviceId::from("d"),
            bindings: vec![],
            resume: vec![],
            queue_limit: limit,
            direct: None,
            idle_limit: Duration::from_secs(30),
            now_ms: 0,
        }
    }

    fn handle(limit: usize) -> ConnHandle {
        ConnHandle::new(new_conn(limit))
    }

    #[test]
    fn an_idle_connection_handle_stays_small() {
        // Every connection holds one for its whole life, parked or not. Its `Arc` (16 bytes
        // more) must fit glibc's 256-byte chunk (8 bytes of header): so at most 232.
        let size = size_of::<ConnHandle>();
        eprintln!("ConnHandle: {size} bytes, Outbox: {}", size_of::<Outbox>());
        assert!(size <= 232, "ConnHandle grew to {size} bytes");
    }

    /// A handle with one live binding at seq 0.
    fn live(limit: usize) -> ConnHandle {
        let mut inbox = InboxState::resuming(0, 0);
        inbox.catching_up = false;
        ConnHandle::new(NewConn {
            bindings: vec![(AppId::from("a"), UserId::from("u"))],
            resume: vec![inbox],
            ..new_conn(limit)
        })
    }

    #[test]
    fn overtaking_pushes_wait_for_the_earlier_seq_and_go_out_in_order() {
        let conn = live(1000);
        for seq in [3, 2] {
            assert_eq!(
                conn.offer_durable(0, seq, Bytes::from(vec![seq as u8; 10])),
                Enqueued::Queued
            );
        }
        let mut taken = VecDeque::new();
        conn.take(&mut taken);
        assert!(taken.is_empty(), "nothing goes out before seq 1");
        conn.offer_durable(0, 1, Bytes::from(vec![1u8; 10]));
        conn.offer_durable(0, 2, Bytes::from(vec![2u8; 10]));
        conn.take(&mut taken);
        let order: Vec<u8> = taken.iter().map(|f| f[0]).collect();
        assert_eq!(order, vec![1, 2, 3], "in seq order, each once");
        let inbox = conn.inbox(0).unwrap();
        assert_eq!(
            (inbox.sent, inbox.held.len(), inbox.catching_up),
            (3, 0, false)
        );
        conn.written(30, 0);
        assert_eq!(conn.outbox().bytes, 0, "held bytes were counted once");
    }

    #[test]
    fn a_gap_that_does_not_fill_falls_back_to_the_store() {
        let conn = live(1000);
        conn.offer_durable(0, 5, Bytes::from(vec![5u8; 10]));
        assert_eq!(
            conn.outbox().bytes,
            10,
            "held bytes count against the queue"
        );
        conn.expire_held(tether_core::now_ms());
        assert!(!conn.inbox(0).unwrap().catching_up, "not before the wait");
        conn.expire_held(tether_core::now_ms() + REORDER_WAIT_MS + 1);
        let inbox = conn.inbox(0).unwrap();
        assert!(inbox.catching_up && inbox.held.is_empty());
        assert_eq!(inbox.missed, 5);
        assert_eq!(conn.outbox().bytes, 0);
        assert!(matches!(
            conn.next_work(0),
            Some(NextWork::Backlog { after: 0, .. })
        ));
    }

    #[test]
    fn a_failed_recheck_is_given_up_but_a_failed_resume_or_gap_closes() {
        let mut inbox = InboxState::resuming(3, 3);
        inbox.catching_up = false;
        inbox.first_page = false;
        let conn = ConnHandle::new(NewConn {
            bindings: vec![(AppId::from("a"), UserId::from("u"))],
            resume: vec![inbox],
            ..new_conn(100_000)
        });
        conn.recheck_inboxes();
        assert!(matches!(
            conn.next_work(0),
            Some(NextWork::Backlog { after: 3, .. })
        ));
        assert!(!conn.backlog_failed(0), "a recheck that fails is dropped");
        let inbox = conn.inbox(0).unwrap();
        assert!(!inbox.catching_up && inbox.sent == 3);

        // A known gap (seq 6 came live after 3): its read must not be dropped.
        conn.recheck_inboxes();
        conn.offer_durable(0, 6, Bytes::from_static(b"x"));
        assert_eq!(conn.inbox(0).unwrap().missed, 6);
        assert!(conn.backlog_failed(0));

        // The first page of a resume: neither.
        let fresh = live(100_000);
        fresh.recheck_inboxes();
        assert!(fresh.backlog_failed(0));
    }

    #[test]
    fn too_many_overtaking_pushes_fall_back_to_the_store() {
        let conn = live(100_000);
        for seq in 2..(2 + REORDER_FRAMES as u64 + 1) {
            conn.offer_durable(0, seq, Bytes::from(vec![0u8; 10]));
        }
        let inbox = conn.inbox(0).unwrap();
        assert!(inbox.catching_up && inbox.held.is_empty());
        assert_eq!(inbox.missed, 2 + REORDER_FRAMES as u64);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_overflow_closes_as_slow() {
        let conn = handle(100);
        assert_eq!(conn.enqueue(Bytes::from(vec![0; 60])), Enqueued::Queued);
        assert_eq!(conn.enqueue(Bytes::from(vec![0; 60])), Enqueued::Overflow);
        assert_eq!(conn.enqueue(Bytes::from(vec![0; 1])), Enqueued::Closed);
        let mut taken = VecDeque::new();
        let close = conn.take(&mut taken).expect("closed");
        assert_eq!(close.code, Code::SLOW);
        assert!(
            taken.is_empty(),
            "a slow client's queue is dropped, not written"
        );
    }

    #[test]
    fn written_bytes_free_the_budget() {
        let conn = handle(100);
        assert_eq!(conn.enqueue(Bytes::from(vec![0; 80])), Enqueued::Queued);
        let mut taken = VecDeque::new();
        assert!(conn.take(&mut taken).is_none());
        assert_eq!(taken.len(), 1);
        // Still counted while being written.
        assert_eq!(conn.enqueue(Bytes::from(vec![0; 30])), Enqueued::Overflow);
        let conn = handle(100);
        conn.enqueue(Bytes::from(vec![0; 80]));
        conn.take(&mut VecDeque::new());
        conn.written(80, 0);
        assert_eq!(conn.enqueue(Bytes::from(vec![0; 80])), Enqueued::Queued);
    }

    #[test]
    fn the_sweep_closes_only_silent_connections() {
        let table = ConnTable::new(metrics::counter!("x"), metrics::counter!("y"));
        let conn = Arc::new(handle(100));
        table.insert(conn.clone());
        let write_timeout = Duration::from_secs(10);
        let silent_for_the_limit = table.sweep(30_000, write_timeout, Duration::ZERO);
        assert_eq!(
            silent_for_the_limit, 0,
            "silent for exactly the limit is still alive"
        );
        conn.seen(20_000);
        assert_eq!(table.sweep(50_000, write_timeout, Duration::ZERO), 0);
        assert_eq!(table.sweep(50_001, write_timeout, Duration::ZERO), 1);
        let close = conn.take(&mut VecDeque::new()).unwrap();
        assert_eq!(close.code, Code::HEARTBEAT_TIMEOUT);
        let again = table.sweep(90_000, write_timeout, Duration::ZERO);
        assert_eq!(again, 0, "a closing connection is not closed twice");
    }

    #[test]
    fn a_write_that_makes_no_progress_is_abandoned_and_keeps_a_pending_close_code() {
        let table = ConnTable::new(metrics::counter!("x"), metrics::counter!("y"));
        let conn = Arc::new(handle(1000));
        table.insert(conn.clone());
        conn.seen(100_000);
        conn.enqueue(Bytes::from(vec![0; 20]));
        conn.take(&mut VecDeque::new());
        conn.set_writing(true, 1_000);
        conn.written(10, 5_000);
        assert_eq!(
            table.sweep(15_000, Duration::from_secs(10), Duration::ZERO),
            0,
            "progress at 5 s"
        );
        conn.close(Close {
            code: Code::KICKED,
            reason: "kicked".into(),
            retry_after_ms: 0,
            flush: true,
        });
        assert_eq!(
            table.sweep(15_001, Duration::from_secs(10), Duration::ZERO),
            1
        );
        let close = conn.take(&mut VecDeque::new()).unwrap();
        assert_eq!(close.code, Code::KICKED, "the kick's code is kept");
        assert!(!close.flush, "what is queued is given up");
    }

    #[test]
    fn a_connection_not_writing_is_never_stalled() {
        let conn = handle(1000);
        conn.seen(1_000_000);
        conn.set_writing(true, 0);
        conn.set_writing(false, 1);
        assert!(!conn.sweep(1_000_000, 10, 0));
    }

    #[test]
    fn a_flushing_close_keeps_queued_frames_and_the_first_close_wins() {
        let conn = handle(100);
        conn.enqueue(Bytes::from_static(b"a"));
        let kick = Close {
            code: Code::KICKED,
            reason: "kicked".into(),
            retry_after_ms: 0,
            flush: true,
        };
        assert!(conn.close(kick.clone()));
        assert!(!conn.close(Close {
            code: Code::SHUTDOWN,
            ..kick
        }));
        let mut taken = VecDeque::new();
        assert_eq!(conn.take(&mut taken).unwrap().code, Code::KICKED);
        assert_eq!(taken.len(), 1);
    }

    /// A connected loopback pair with small buffers: the server end (shared, as a
    /// connection's handle holds it) and the client end.
    async fn small_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        socket.set_nonblocking(true).unwrap();
        let client = TcpStream::from_std(std::net::TcpStream::from(socket)).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        (Arc::new(server), client)
    }

    fn direct_conn(limit: usize, stream: Arc<TcpStream>) -> ConnHandle {
        let mut conn = new_conn(limit);
        conn.direct = Some(stream);
        let mut inbox = InboxState::resuming(0, 0);
        inbox.catching_up = false;
        conn.resume = vec![inbox];
        ConnHandle::new(conn)
    }

    #[tokio::test]
    async fn a_direct_write_to_a_websocket_puts_each_frame_behind_its_header() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = small_pair().await;
        let mut new = new_conn(256 * 1024);
        new.transport = Transport::Ws;
        new.encoding = Encoding::Json;
        new.direct = Some(server);
        let conn = ConnHandle::new(new);
        conn.writer_idle();
        let frame = Bytes::from(vec![b'x'; 200]);
        assert_eq!(conn.offer(&frame), Offered::Written(200));
        let mut got = vec![0u8; 204];
        client.read_exact(&mut got).await.unwrap();
        // A text message (JSON), FIN, a 16-bit length.
        assert_eq!(got[..4], [0x81, 126, 0, 200]);
        assert_eq!(got[4..], frame[..]);

        // Too much for the socket: the rest waits, marked as begun, without a second header.
        let big = Bytes::from(vec![b'y'; 64 * 1024]);
        assert_eq!(conn.offer(&big), Offered::Queued);
        let mut taken = VecDeque::new();
        let (_, tail) = conn.take_batch(&mut taken);
        assert!(tail, "the task must treat it as half-written");
        let mut wire = vec![0u8; 10 + big.len() - taken[0].len()];
        client.read_exact(&mut wire).await.unwrap();
        assert_eq!(wire[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        wire.extend_from_slice(&taken[0]);
        assert_eq!(wire[10..], big[..]);
    }

    #[test]
    fn the_rest_of_a_write_torn_inside_its_header_keeps_the_header_rest() {
        let frame = Bytes::from_static(b"payload");
        assert_eq!(rest(&[1, 2, 3, 4], &frame, 1), &b"\x02\x03\x04payload"[..]);
        assert_eq!(rest(&[1, 2], &frame, 2), frame);
        assert_eq!(rest(&[1, 2], &frame, 5), &b"load"[..]);
        assert_eq!(rest(&[], &frame, 3), &b"load"[..]);
    }

    #[tokio::test]
    async fn a_direct_write_needs_room_for_the_whole_frame_in_the_budget() {
        let (server, client) = small_pair().await;
        let conn = direct_conn(64 * 1024, server);
        // Held durable pushes take most of the budget while the queue itself is empty.
        for seq in 2..=61u64 {
            assert_eq!(
                conn.offer_durable(0, seq, Bytes::from(vec![0u8; 1000])),
                Enqueued::Queued
            );
        }
        conn.writer_idle();
        // Not written in part with no room for the rest: refused whole, closing as slow.
        assert_eq!(
            conn.offer(&Bytes::from(vec![7u8; 32 * 1024])),
            Offered::Overflow
        );
        let mut buf = [0u8; 16];
        assert_eq!(
            client.try_read(&mut buf).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "nothing of it reached the wire"
        );
    }

    #[tokio::test]
    async fn the_rest_of_a_direct_write_survives_finish_and_non_flushing_closes() {
        let (server, client) = small_pair().await;
        let conn = direct_conn(256 * 1024, server);
        // Nothing is written before the task says it is idle (`connected` goes first).
        assert_eq!(conn.offer(&Bytes::from(vec![7u8; 1024])), Offered::Queued);
        let mut buf = [0u8; 16];
        assert_eq!(
            client.try_read(&mut buf).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock)
        );
        let conn = {
            let (server, _client2) = small_pair().await;
            let conn = direct_conn(256 * 1024, server);
            conn.writer_idle();
            assert_eq!(
                conn.offer(&Bytes::from(vec![7u8; 64 * 1024])),
                Offered::Queued
            );
            conn
        };
        // A close that drops the queue keeps the rest, and says it is one.
        assert!(conn.abandon("stalled"));
        let mut taken = VecDeque::new();
        let (close, tail) = conn.take_batch(&mut taken);
        assert!(close.is_some());
        assert!(tail, "the task must treat it as half-written");
        assert_eq!(taken.len(), 1);
        assert!(!taken[0].is_empty() && taken[0].len() < 64 * 1024);
    }

    #[tokio::test]
    async fn finish_hands_back_the_rest_of_a_direct_write() {
        let (server, _client) = small_pair().await;
        let conn = direct_conn(256 * 1024, server);
        conn.writer_idle();
        assert_eq!(
            conn.offer(&Bytes::from(vec![7u8; 64 * 1024])),
            Offered::Queued
        );
        let rest = conn.finish().expect("the rest of the begun frame");
        assert!(!rest.is_empty() && rest.len() < 64 * 1024);
        assert!(conn.finish().is_none(), "once");
    }

    #[tokio::test]
    async fn the_sweep_asks_idle_connections_to_park_once_and_waits_after_a_refusal() {
        let (server, _client) = small_pair().await;
        let conn = direct_conn(1024, server);
        conn.seen(0);
        conn.progress_ms.store(0, Ordering::Relaxed);
        let (ask, never) = (100, 0);
        assert!(!conn.sweep(99, 10_000, ask));
        assert!(!conn.park_asked(), "not idle for park_after yet");
        assert!(!conn.sweep(100, 10_000, never));
        assert!(!conn.park_asked(), "park_after 0 never asks");
        assert!(!conn.sweep(100, 10_000, ask));
        assert!(conn.park_asked());
        assert!(
            conn.poll_ready(&mut noop_cx()).is_ready(),
            "the ask wakes the task"
        );
        // Busy: the next ask waits another park_after.
        conn.park_declined(150);
        conn.sweep(200, 10_000, ask);
        assert!(!conn.park_asked(), "asked again right after a refusal");
        conn.sweep(250, 10_000, ask);
        assert!(conn.park_asked());
        assert!(conn.poll_ready(&mut noop_cx()).is_ready());
        // Parked: the sweep leaves it alone (a wake would start a task for nothing).
        assert!(!conn.parking(std::task::Waker::noop()));
        assert!(conn.is_parked());
        conn.sweep(10_000, 10_000, ask);
        assert!(conn.is_parked());
        assert!(conn.poll_ready(&mut noop_cx()).is_pending(), "no wake");
    }

    fn noop_cx() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }
}
