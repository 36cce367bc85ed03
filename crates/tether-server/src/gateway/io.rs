//! The connected loop of one connection: one `poll_fn` that takes what producers queued,
//! writes what the client takes, reads and handles frames, runs durable delivery's store work
//! and the permission checks of subscribes waiting for their app's webhook, and notices when
//! the connection may park.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tether_core::TopicId;
use tether_proto::{Body, Code, Frame};
use tokio::time::timeout;
use tracing::debug;

use super::Gateway;
use super::handle::ConnHandle;
use super::outbox::Close;
use super::work::{finish_work, start_work};
use crate::delivery::SubscribeError;
use crate::link::Link;
use crate::session::ask::{Asked, Verdict};
use crate::session::ops::{self, Step};
use crate::session::work::Work;
use crate::transport::Wire;
use check::{Checks, MAX_CHECKS, Waiting};

mod check;

/// How long a goodbye (`disconnect` frame, close) may take before the socket is just dropped.
pub(super) const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// How [`run`] ended.
pub(super) enum Ran {
    /// The connection is over: closed with this code, or `None` when the client went away.
    Over(Option<Code>),
    /// The task may end and leave the connection parked: it holds nothing.
    Park,
}

/// The connected state. Returns the code the connection closed with (`None`: the peer left).
///
/// One `poll_fn` drives everything: it takes what producers queued, writes as much as the
/// client takes, and reads frames, so a write waiting on a slow client never stops the task
/// from reading its pings. Heartbeats and stalled writes are watched by
/// [`Gateway::sweep_heartbeats`], which closes through the queue like any other close.
///
/// # Memory
/// Between frames this future holds only the write batch, a close request and references: the
/// wakers live outside the task (the handle's slot, the socket's registration), frames are
/// handled synchronously, and the goodbye is boxed.
pub(super) async fn run<W: Wire>(
    wire: &mut W,
    gw: &Gateway,
    conn: &Arc<ConnHandle>,
    early: bool,
) -> Ran {
    let mut io = Io {
        pending: VecDeque::new(),
        sending: false,
        early: early && !gw.park_after().is_zero(),
        close: None,
        work: None,
        checks: Checks::default(),
    };
    // `connected` is out: fan-outs may write to the socket directly while the task has nothing
    // to write.
    conn.writer_idle();
    // Once over, nothing is written but the goodbye: pushes must see a closed connection (and
    // not count it as reached) until it leaves the table, hence `finish` first.
    match std::future::poll_fn(|cx| io.poll(cx, wire, gw, conn)).await {
        Event::Park => Ran::Park,
        Event::Gone => {
            let rest = conn.finish();
            // A WebSocket client's close is answered with a close, once no direct write can
            // follow it.
            if wire.wants_write() {
                keep_begun(wire, &mut io.pending, rest);
                let _ = Box::pin(timeout(GOODBYE_TIMEOUT, wire.send(&mut io.pending))).await;
            }
            Ran::Over(None)
        }
        Event::Close(close) => {
            let rest = conn.finish();
            keep_begun(wire, &mut io.pending, rest);
            Box::pin(goodbye(wire, &mut io.pending, &close)).await;
            Ran::Over(Some(close.code))
        }
    }
}

/// Keeps, of what is left to write on a finished connection, only the rest of a frame already
/// begun, so that the client can still read what comes behind it (a `disconnect`, a close): the
/// task's own, or `rest`, one a fan-out began with a direct write (never both: direct writes
/// wait for the task to have nothing in hand).
fn keep_begun<W: Wire>(wire: &mut W, pending: &mut VecDeque<Bytes>, rest: Option<Bytes>) {
    pending.truncate(usize::from(wire.mid_frame()));
    if let Some(rest) = rest
        && pending.is_empty()
    {
        pending.push_back(rest);
        wire.set_mid_frame();
    }
}

/// The connection's write batch and pending close.
struct Io {
    /// Frames taken from the queue and not fully written yet.
    pending: VecDeque<Bytes>,
    /// A write is under way (the transport may hold bytes not yet sent).
    sending: bool,
    /// Park as soon as the task holds nothing, without waiting for the sweep to ask: the last
    /// thing the client did was its handshake, a heartbeat, or a subscribe or unsubscribe
    /// (see [`parks_after`]), after which a client usually falls silent. Parking at once frees the task while the next connection's handshake can
    /// reuse its memory, rather than `park_after` later, when the allocator keeps it as a hole
    /// between the connections that came meanwhile. A client that does send something right
    /// away costs one more task spawn. Likewise after a keep-alive of the server's.
    early: bool,
    /// A close asked for, acted on once what it flushes is written.
    close: Option<Close>,
    /// The store operation under way (durable delivery), boxed only while it runs.
    work: Option<Work>,
    /// Subscribes waiting for their app's webhook.
    checks: Checks,
}

enum Event {
    /// Close with this; what had to be flushed is written.
    Close(Close),
    /// The client went away.
    Gone,
    /// The sweep asked the task to park, and it holds nothing.
    Park,
}

impl Io {
    fn poll<W: Wire>(
        &mut self,
        cx: &mut Context<'_>,
        wire: &mut W,
        gw: &Gateway,
        conn: &Arc<ConnHandle>,
    ) -> Poll<Event> {
        // One take per pass, then a write, so that a producer that keeps queueing cannot keep
        // the task taking without writing. `poll_ready` answering `Ready` leaves no waker of
        // ours in the handle (a wake consumes it): it is asked again before any `Pending`.
        let mut ready = conn.poll_ready(cx).is_ready();
        loop {
            self.drive_work(cx, gw, conn);
            while let Some((waiting, verdict)) = self.checks.poll_answered(cx) {
                settle(gw, conn, waiting, verdict);
            }
            // Bytes of the wire's own (a pong) need the socket to themselves: claimed like a
            // batch, behind the rest of a direct write if one is queued.
            let claim = wire.wants_write() && !self.sending && self.pending.is_empty();
            if ready || claim {
                let before = self.pending.len();
                let (close, tail) = conn.take_writing(&mut self.pending, claim);
                // Only keep-alives (empty frames, see `Wire::keepalive`): like a heartbeat's
                // pong, nothing else is likely to follow, so the task parks once it is out.
                if self.pending.len() > before && self.pending.iter().all(Bytes::is_empty) {
                    self.early = !gw.park_after().is_zero();
                }
                if tail {
                    wire.set_mid_frame();
                }
                if let Some(close) = close {
                    self.close = Some(close);
                }
                if (claim || !self.pending.is_empty()) && !self.sending {
                    conn.set_writing(true, gw.clock_ms());
                }
            }
            if let Some(close) = self.close.take_if(|c| !c.flush) {
                return Poll::Ready(Event::Close(close));
            }
            if self.sending || !self.pending.is_empty() || wire.wants_write() {
                let frames = self.pending.len();
                let sent = wire.poll_send(cx, &mut self.pending);
                let bytes = wire.take_bytes_written();
                if bytes > 0 {
                    conn.written(bytes, gw.clock_ms());
                    let metrics = gw.metrics.transport(conn.transport);
                    metrics.bytes_out.increment(bytes as u64);
                    metrics
                        .frames_out
                        .increment((frames - self.pending.len()) as u64);
                }
                match sent {
                    Poll::Ready(Ok(())) => {
                        self.sending = false;
                        conn.set_writing(false, 0);
                        conn.writer_idle();
                        if self.pending.capacity() > 64 {
                            // Give a burst's memory back once it is written.
                            self.pending = VecDeque::new();
                        }
                    }
                    Poll::Pending => self.sending = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(Event::Gone),
                }
            }
            if !self.sending
                && let Some(close) = self.close.take()
            {
                return Poll::Ready(Event::Close(close));
            }
            let received = match wire.poll_recv(cx) {
                Poll::Ready(received) => received,
                Poll::Pending => {
                    ready = conn.poll_ready(cx).is_ready();
                    if ready {
                        continue;
                    }
                    let idle = self.holds_nothing() && wire.parkable() && conn.settled();
                    if self.early && idle {
                        return Poll::Ready(Event::Park);
                    }
                    if conn.park_asked() {
                        if idle {
                            return Poll::Ready(Event::Park);
                        }
                        // Busy after all: the sweep asks again after another `park_after`.
                        conn.park_declined(gw.clock_ms());
                    }
                    return Poll::Pending;
                }
            };
            let frame = match received {
                Ok(Some(frame)) => frame,
                Ok(None) => return Poll::Ready(Event::Gone),
                Err(e) => {
                    let Some(code) = e.code() else {
                        return Poll::Ready(Event::Gone);
                    };
                    return Poll::Ready(Event::Close(Close::at_once(code, e.to_string())));
                }
            };
            conn.seen(gw.clock_ms());
            let metrics = gw.metrics.transport(conn.transport);
            metrics.frames_in.increment(1);
            metrics.bytes_in.increment(wire.take_bytes_read() as u64);
            ready = conn.poll_ready(cx).is_ready();
            self.early = parks_after(&frame.body) && !gw.park_after().is_zero();
            match handle(gw, conn, frame, &mut self.checks) {
                Handled::Continue => {}
                Handled::Leave => return Poll::Ready(Event::Gone),
                // Closing on the client's account: what is queued is still written.
                Handled::Close(close) => {
                    conn.close(close);
                }
            }
        }
    }
}

impl Io {
    /// Nothing to write, nothing being written, no close, no store work, no subscribe
    /// waiting for its permission check.
    fn holds_nothing(&self) -> bool {
        self.pending.is_empty()
            && !self.sending
            && self.close.is_none()
            && self.work.is_none()
            && self.checks.is_empty()
    }

    /// Runs store operations (backlog reads, acks, `sync`) one at a time until one has to
    /// wait, applying each result to the connection.
    fn drive_work(&mut self, cx: &mut Context<'_>, gw: &Gateway, conn: &ConnHandle) {
        loop {
            let work = match &mut self.work {
                Some(work) => work,
                None => match conn.next_work(tether_core::now_ms()) {
                    Some(next) => self.work.insert(start_work(gw, conn, next)),
                    None => return,
                },
            };
            match work.as_mut().poll(cx) {
                Poll::Ready(done) => {
                    self.work = None;
                    finish_work(gw, conn, done);
                }
                Poll::Pending => return,
            }
        }
    }
}

/// Whether a client usually falls silent after sending `body`, so that the task parks as soon
/// as it holds nothing (see [`Io::early`]). A subscribe is the last thing most clients send
/// after their handshake (a chat room, a live feed): without this, every subscribed
/// connection kept its task until the sweep asked it to park, `park_after` later, and the
/// freed task then stayed a hole in the heap (about 1 KiB per subscribed connection,
/// `docs/benchmarks.md`). The fan-out's answer reaches a parked connection without waking
/// it (see `crate::fanout`). Acks are left out: they come while pushes are flowing, and
/// parking after each would cost a task spawn per push.
fn parks_after(body: &Body) -> bool {
    matches!(body, Body::Ping | Body::Subscribe(_) | Body::Unsubscribe(_))
}

/// What a frame from the client asks of the loop.
enum Handled {
    Continue,
    /// The client said goodbye.
    Leave,
    Close(Close),
}

/// Acts on one frame from a connected client: what [`ops::step`] says it asks for.
fn handle(gw: &Gateway, conn: &Arc<ConnHandle>, frame: Frame, checks: &mut Checks) -> Handled {
    let id = frame.id;
    let op = frame.op().name();
    let reply = |body: Body| answer(gw, conn, op, id, body);
    let holds = |binding: usize, topic: &TopicId| conn.has_topic(binding, topic);
    let access = gw.access.load();
    match ops::step(id, frame.body, &conn.bindings, &access, holds) {
        Step::Nothing => {}
        Step::Reply(body) => reply(body),
        Step::Ack { binding, seq } => {
            gw.metrics.acks.increment(1);
            // The task writes it to the store; acks that arrive meanwhile coalesce.
            conn.ack(binding, seq);
        }
        Step::Sync(request) => {
            if !conn.request_sync(request) {
                let message = "one sync at a time: wait for the previous one's synced";
                reply(ops::error(Code::BAD_REQUEST, message.into()));
            }
        }
        Step::Subscribe {
            binding,
            topic,
            since,
        } => subscribe(gw, conn, id, binding, &topic, since),
        Step::Check {
            binding,
            topic,
            since,
        } => {
            let asked = ops::ask(
                &access,
                &conn.bindings[binding],
                &conn.device,
                conn.id,
                &topic,
            );
            let waiting = Waiting {
                id,
                binding,
                topic,
                since,
            };
            match asked {
                Asked::Known(verdict) => settle(gw, conn, waiting, verdict),
                // Dropped unpolled: nothing was sent.
                Asked::Later(_) if checks.is_full() => reply(ops::error(
                    Code::UNAVAILABLE,
                    format!(
                        "busy: {MAX_CHECKS} subscribes of this connection are waiting for \
                         their permission check; retry later"
                    ),
                )),
                Asked::Later(question) => checks.push(waiting, question),
            }
        }
        Step::Unsubscribe { binding, topic } => {
            for waiting in checks.cancel(binding, &topic) {
                let cancelled = ops::cancelled(&waiting.topic);
                answer(gw, conn, "subscribe", waiting.id, cancelled);
            }
            let link = conn.clone() as Arc<dyn Link>;
            if gw.delivery.unsubscribe(link, binding, &topic, id).is_err() {
                reply(ops::error(
                    Code::UNAVAILABLE,
                    "busy: retry the unsubscribe later".into(),
                ));
            }
        }
        Step::Upstream { binding, up } => {
            if let Err(e) = gw.events.upstream(&**conn, binding, id, up) {
                reply(Body::Error(e));
            }
        }
        Step::Leave(code) => {
            // The client's code is its own business: logged, never echoed.
            debug!(conn = %conn.id, %code, "client said goodbye");
            return Handled::Leave;
        }
        Step::Close(code, reason) => return Handled::Close(Close::new(code, reason)),
    }
    Handled::Continue
}

/// Answers request `id` (of op `op`) with `body`, counting a refusal.
fn answer(gw: &Gateway, conn: &ConnHandle, op: &'static str, id: u32, body: Body) {
    if let Body::Error(e) = &body {
        gw.metrics.request_refused(op, e.code);
    }
    conn.enqueue(conn.encoding.encode(&Frame { id, body }));
}

/// Subscribes binding `binding` of `conn` to `topic` (request `id`): the fan-out answers
/// `subscribed`, unless it refuses here.
fn subscribe(
    gw: &Gateway,
    conn: &Arc<ConnHandle>,
    id: u32,
    binding: usize,
    topic: &TopicId,
    since: Option<u64>,
) {
    let link = conn.clone() as Arc<dyn Link>;
    let refused = match gw.delivery.subscribe(link, binding, topic, id, since) {
        Ok(_) => return,
        Err(SubscribeError::TooMany(n)) => ops::error(
            Code::LIMIT,
            format!("this connection already has {n} topics"),
        ),
        Err(SubscribeError::Busy) => {
            ops::error(Code::UNAVAILABLE, "busy: retry the subscribe later".into())
        }
    };
    answer(gw, conn, "subscribe", id, refused);
}

/// Carries out a subscribe that waited for its app's answer.
fn settle(gw: &Gateway, conn: &Arc<ConnHandle>, waiting: Waiting, verdict: Verdict) {
    let Waiting {
        id,
        binding,
        topic,
        since,
    } = waiting;
    match ops::checked(&topic, verdict) {
        Ok(()) => subscribe(gw, conn, id, binding, &topic, since),
        Err(refused) => answer(gw, conn, "subscribe", id, refused),
    }
}

/// Tells the client why it is being closed, then closes; bounded in time. `unsent` holds at
/// most the rest of a frame already begun: it goes first, and if it cannot, the client gets no
/// `disconnect` (it could not parse one after a torn frame), just the close.
///
/// A WebSocket close code ([`Code::is_websocket`]: the client broke WebSocket itself) gets no
/// `disconnect` either: the close frame alone carries the code and the reason, for the
/// client's WebSocket layer, which is what failed. Nor does a client whose encoding is not
/// known yet ([`Wire::encoding_known`]): it reads the same close frame. Such closes carry no
/// `retry_after_ms` (none before `connect` does).
pub(super) async fn goodbye<W: Wire>(wire: &mut W, unsent: &mut VecDeque<Bytes>, close: &Close) {
    let _ = timeout(GOODBYE_TIMEOUT, async {
        if !close.code.is_websocket() && wire.encoding_known() {
            unsent.push_back(wire.encoding().encode(&close.frame()));
        }
        if wire.send(unsent).await.is_err() {
            return;
        }
        wire.close(close.code, &close.reason).await;
    })
    .await;
}
