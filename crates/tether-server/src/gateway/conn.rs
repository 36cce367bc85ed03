//! One connection's life: handshake, then reading frames, writing what is queued, and
//! watching the heartbeat, until someone closes it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use tether_core::{AppId, DeviceId, Seq, Session, TopicId, auth, validate_id};
use tether_proto::{Body, Bound, Code, Connect, Connected, ErrorBody, Frame, PROTOCOL_VERSION};
use tokio::time::timeout;
use tracing::debug;

use super::drain::drain_close;
use super::inbox::{self, Done, InboxState, SYNC_PAGE, SyncRequest, Target, Work};
use super::park::Parked;
use super::table::{Close, ConnHandle, NewConn, NextWork};
use super::wire::{Wire, truncate_utf8};
use super::{Gateway, Permit};
use crate::fanout::Job;

/// How long a goodbye (`disconnect` frame, close) may take before the socket is just dropped.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one accepted connection until it ends or parks.
///
/// # Memory
/// This future is the largest per-connection allocation while the connection is active, so
/// what it holds while idle is kept small: the handshake, the goodbye and the clean-up are
/// boxed, so that their state is allocated only while they run rather than reserved for the
/// connection's whole life. An idle connection gives it up altogether (see
/// [`super::park`]).
pub(super) fn serve<W: Wire>(
    wire: W,
    gw: Arc<Gateway>,
    permit: Permit,
) -> impl Future<Output = ()> + Send {
    // Not an `async fn`: its arguments would be kept beside its state for its whole life. They
    // move into the boxed handshake instead, and out of it into `live`.
    let handshake = Box::pin(async move {
        let mut wire = wire;
        let conn = establish(&mut wire, &gw).await?;
        Some((wire, Parked { conn, gw, permit }))
    });
    // A chain rather than an `async` block: the block would keep the handshake's result
    // beside `live`'s state, this holds one or the other.
    handshake
        .then(|established| OptionFuture::from(established.map(|(w, h)| live(w, h, true))))
        .map(drop)
}

/// Serves an established connection until it ends or parks; a parked connection comes back
/// here with a new wire on the same socket. `fresh`: the handshake just ended, so the client is
/// likely to fall silent (see [`Io::early`]). (Not an `async fn`, for the reason given in
/// [`serve`].)
#[allow(clippy::manual_async_fn)] // see above: an `async fn` would hold its arguments twice
pub(super) fn live<W: Wire>(
    mut wire: W,
    mut held: Parked,
    fresh: bool,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut early = fresh;
        let outcome = loop {
            match run(&mut wire, &held.gw, &held.conn, early).await {
                Ran::Over(outcome) => break outcome,
                Ran::Park => match wire.park(held) {
                    Ok(()) => return,
                    // Something arrived while parking: carry on.
                    Err(back) => {
                        (wire, held) = back;
                        early = false;
                    }
                },
            }
        };
        Box::pin(ended(&held.gw, &held.conn, outcome)).await;
        // The admission slot goes back last, with `held`.
    }
}

/// Ends a parked connection whose socket could not be given back to tokio: it is gone.
pub(super) async fn lost(held: Parked) {
    let _ = held.conn.finish();
    ended(&held.gw, &held.conn, None).await;
}

/// Counts a connection's end and forgets it.
async fn ended(gw: &Gateway, conn: &ConnHandle, outcome: Option<Code>) {
    gw.metrics.disconnect(outcome);
    gw.metrics
        .transport(conn.transport)
        .connections
        .decrement(1.0);
    forget(gw, conn).await;
    gw.webhooks().disconnected(conn);
}

/// How [`run`] ended.
enum Ran {
    /// The connection is over: closed with this code, or `None` when the client went away.
    Over(Option<Code>),
    /// The task may end and leave the connection parked: it holds nothing.
    Park,
}

/// Handshake, registration, `connected`. Returns the connection, or `None` when it was refused
/// or lost (and everything is cleaned up).
async fn establish<W: Wire>(wire: &mut W, gw: &Gateway) -> Option<Arc<ConnHandle>> {
    let (id, accepted) = handshake(wire, gw).await?;
    let mut resume = Vec::with_capacity(accepted.bindings.len());
    for ((app, user), last_seq) in accepted.bindings.iter().zip(&accepted.last_seqs) {
        // Read even when the client says where it is: acks are written only past the stored
        // position, which may be behind the client's `last_seq`.
        let stored = match gw.store.cursor(app, user, &accepted.device).await {
            Ok(cursor) => cursor.acked.0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a device cursor");
                gw.metrics.store_error("cursor");
                reject(wire, gw, Code::INTERNAL, "store unavailable").await;
                return None;
            }
        };
        resume.push(InboxState::resuming(last_seq.unwrap_or(stored), stored));
    }
    let conn = Arc::new(ConnHandle::new(NewConn {
        id: gw.table.next_id(),
        transport: wire.transport(),
        encoding: wire.encoding(),
        device: accepted.device,
        bindings: accepted.bindings,
        resume,
        queue_limit: gw.limits.outbound_queue_bytes,
        direct: wire.direct(),
        idle_limit: accepted.heartbeat * gw.config.heartbeat_missed,
        now_ms: gw.clock_ms(),
    }));
    // Visible to pushes from here on; they queue behind `connected`.
    gw.table.insert(conn.clone());
    // A shutdown that began before the insert did not see this connection: close it here.
    // One that begins after it will (the table's lock orders the two). Same for a drain.
    if gw.shutdown.is_cancelled() {
        conn.close(Close {
            code: Code::SHUTDOWN,
            reason: "server shutting down".into(),
            retry_after_ms: 0,
            flush: true,
        });
    } else if gw.drain.is_cancelled() {
        conn.close(drain_close());
    }
    for (app, user) in &conn.bindings {
        let session = Session {
            app: app.clone(),
            user: user.clone(),
            node: gw.node.clone(),
            conn: conn.id,
            device: conn.device.clone(),
            transport: conn.transport,
            connected_at_ms: conn.connected_at_ms,
        };
        if let Err(e) = gw.registry.register(session).await {
            // The connection is served anyway (what this node holds reaches it); pushes from
            // other nodes find it once the node registers its sessions again, at its next
            // announcement that the registry takes.
            tracing::warn!(error = %e, "cannot register session; registering it later");
            gw.unsynced.register_failed(conn.id);
        }
    }
    join_server_side_topics(gw, &conn).await;
    // Before `connected`: a client that saw it and then closed another connection of its user
    // must not make the user look offline.
    gw.webhooks().connected(&conn);
    gw.metrics
        .transport(conn.transport)
        .connections
        .increment(1.0);
    gw.metrics.handshakes_ok.increment(1);
    let reply = Frame::new(
        id,
        Connected {
            conn_id: conn.id.0,
            node: gw.node.to_string(),
            heartbeat_ms: accepted.heartbeat.as_millis() as u32,
            max_frame: gw.limits.max_frame,
            bindings: conn
                .bindings
                .iter()
                .map(|(app, user)| Bound {
                    app: app.to_string(),
                    user: user.to_string(),
                })
                .collect(),
        },
    );
    let mut pending = VecDeque::from([conn.encoding.encode(&reply)]);
    let sent = timeout(gw.config.write_timeout, wire.send(&mut pending)).await;
    // The reply was never in the queue's budget: count it here, apart from the queue.
    let bytes = wire.take_bytes_written();
    let metrics = gw.metrics.transport(conn.transport);
    metrics.bytes_out.increment(bytes as u64);
    if let Ok(Ok(())) = sent {
        metrics.frames_out.increment(1);
        return Some(conn);
    }
    gw.metrics.disconnect(None);
    gw.metrics
        .transport(conn.transport)
        .connections
        .decrement(1.0);
    forget(gw, &conn).await;
    gw.webhooks().disconnected(&conn);
    None
}

/// Subscribes a new connection to the topics the business subscribed its users to. A topic
/// that cannot be joined (the store is down, the fan-out busy) is skipped and counted: the
/// connection itself is worth more than one of its topics.
async fn join_server_side_topics(gw: &Gateway, conn: &Arc<ConnHandle>) {
    for (binding, (app, user)) in conn.bindings.iter().enumerate() {
        let topics = match gw.store.subscriptions(app, user).await {
            Ok(topics) => topics,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a user's topics");
                gw.metrics.store_error("subscriptions");
                continue;
            }
        };
        for topic in topics {
            if conn.add_topic(binding, &topic, gw.limits.max_topics) != Ok(true) {
                continue;
            }
            let job = Job::Subscribe {
                conn: conn.clone(),
                binding,
                topic: topic.clone(),
                request: 0,
                since: None,
            };
            if gw.fanout.submit(app, job).is_err() {
                conn.remove_topic(binding, &topic);
                gw.metrics.fanout_busy.increment(1);
            }
        }
    }
}

/// Waits for the `connect` frame and checks it. `None`: the connection was refused (and told
/// why) or went away.
async fn handshake<W: Wire>(wire: &mut W, gw: &Gateway) -> Option<(u32, Accepted)> {
    let first = tokio::select! {
        biased;
        () = gw.shutdown.cancelled() => {
            reject(wire, gw, Code::SHUTDOWN, "server shutting down").await;
            return None;
        }
        () = gw.drain.cancelled() => {
            let close = drain_close();
            debug!(code = %close.code, "handshake refused: draining");
            gw.metrics.handshake_failed(close.code);
            goodbye(wire, &mut VecDeque::new(), &close).await;
            return None;
        }
        r = timeout(gw.config.handshake_timeout, wire.recv()) => r,
    };
    let (id, connect) = match first {
        Err(_) => {
            let reason = "no connect frame within the handshake timeout";
            reject(wire, gw, Code::HANDSHAKE_TIMEOUT, reason).await;
            return None;
        }
        Ok(Ok(None)) => {
            // A WebSocket client that closed before `connect` gets its close answered (no
            // handle exists yet, so nothing else can write in between).
            if wire.wants_write() {
                let _ = timeout(GOODBYE_TIMEOUT, wire.send(&mut VecDeque::new())).await;
            }
            return None;
        }
        Ok(Err(e)) => {
            let code = e.code().unwrap_or(Code::PROTOCOL);
            reject(wire, gw, code, &e.to_string()).await;
            return None;
        }
        Ok(Ok(Some(Frame {
            id,
            body: Body::Connect(connect),
        }))) => (id, connect),
        Ok(Ok(Some(frame))) => {
            let reason = format!("the first frame must be connect, not {}", frame.op().name());
            reject(wire, gw, Code::EXPECTED_CONNECT, &reason).await;
            return None;
        }
    };
    let metrics = gw.metrics.transport(wire.transport());
    metrics.frames_in.increment(1);
    metrics.bytes_in.increment(wire.take_bytes_read() as u64);
    match accept(gw, connect) {
        Ok(accepted) => Some((id, accepted)),
        Err((code, reason)) => {
            reject(wire, gw, code, &reason).await;
            None
        }
    }
}

struct Accepted {
    device: DeviceId,
    bindings: Vec<(AppId, tether_core::UserId)>,
    /// Each binding's `last_seq`, in the same order.
    last_seqs: Vec<Option<u64>>,
    heartbeat: Duration,
}

/// Checks a `connect`: version, device, every binding's app and token, the heartbeat.
fn accept(gw: &Gateway, connect: Connect) -> Result<Accepted, (Code, String)> {
    if connect.version != PROTOCOL_VERSION {
        return Err((
            Code::UNSUPPORTED_VERSION,
            format!(
                "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION})",
                connect.version
            ),
        ));
    }
    validate_id("device", &connect.device).map_err(|e| (Code::PROTOCOL, e))?;
    let n = connect.bindings.len();
    if n == 0 || n > gw.limits.max_bindings {
        return Err((
            Code::BAD_BINDINGS,
            format!(
                "a connect needs 1 to {} bindings, not {n}",
                gw.limits.max_bindings
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut bindings = Vec::with_capacity(n);
    let mut last_seqs = Vec::with_capacity(n);
    for binding in connect.bindings {
        if !seen.insert(binding.app.clone()) {
            return Err((
                Code::BAD_BINDINGS,
                format!(
                    "app {:?} is bound twice",
                    truncate_utf8(&binding.app, tether_core::MAX_ID_LEN)
                ),
            ));
        }
        // The configured id is shared by every connection of the app (an `Arc<str>`).
        let Some((app, secret)) = gw.apps.get_key_value(binding.app.as_str()) else {
            // Echo at most an id's length of what the client sent.
            let app = truncate_utf8(&binding.app, tether_core::MAX_ID_LEN);
            return Err((Code::UNKNOWN_APP, format!("unknown app {app:?}")));
        };
        let app = app.clone();
        let user = auth::verify(
            secret.as_bytes(),
            &app,
            &binding.token,
            gw.config.token_leeway,
        )
        .map_err(|e| match e {
            auth::TokenError::Expired => {
                (Code::TOKEN_EXPIRED, format!("token for app {app} expired"))
            }
            auth::TokenError::Invalid(why) => {
                (Code::BAD_TOKEN, format!("token for app {app}: {why}"))
            }
        })?;
        bindings.push((app, user));
        last_seqs.push(binding.last_seq);
    }
    let proposed = Duration::from_millis(u64::from(connect.heartbeat_ms));
    let heartbeat = if proposed.is_zero() {
        gw.config.heartbeat_default
    } else {
        proposed.clamp(gw.config.heartbeat_min, gw.config.heartbeat_max)
    };
    Ok(Accepted {
        device: DeviceId::new(connect.device),
        bindings,
        last_seqs,
        heartbeat,
    })
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
async fn run<W: Wire>(wire: &mut W, gw: &Gateway, conn: &ConnHandle, early: bool) -> Ran {
    let mut io = Io {
        pending: VecDeque::new(),
        sending: false,
        early: early && !gw.park_after().is_zero(),
        close: None,
        work: None,
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
    /// thing the client did was its handshake or a heartbeat, after which a client usually
    /// falls silent. Parking at once frees the task while the next connection's handshake can
    /// reuse its memory, rather than `park_after` later, when the allocator keeps it as a hole
    /// between the connections that came meanwhile. A client that does send something right
    /// away costs one more task spawn.
    early: bool,
    /// A close asked for, acted on once what it flushes is written.
    close: Option<Close>,
    /// The store operation under way (durable delivery), boxed only while it runs.
    work: Option<Work>,
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
        conn: &ConnHandle,
    ) -> Poll<Event> {
        // One take per pass, then a write, so that a producer that keeps queueing cannot keep
        // the task taking without writing. `poll_ready` answering `Ready` leaves no waker of
        // ours in the handle (a wake consumes it): it is asked again before any `Pending`.
        let mut ready = conn.poll_ready(cx).is_ready();
        loop {
            self.drive_work(cx, gw, conn);
            // Bytes of the wire's own (a pong) need the socket to themselves: claimed like a
            // batch, behind the rest of a direct write if one is queued.
            let claim = wire.wants_write() && !self.sending && self.pending.is_empty();
            if ready || claim {
                let (close, tail) = conn.take_writing(&mut self.pending, claim);
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
                    return Poll::Ready(Event::Close(Close {
                        code,
                        reason: e.to_string(),
                        retry_after_ms: 0,
                        flush: false,
                    }));
                }
            };
            conn.seen(gw.clock_ms());
            let metrics = gw.metrics.transport(conn.transport);
            metrics.frames_in.increment(1);
            metrics.bytes_in.increment(wire.take_bytes_read() as u64);
            ready = conn.poll_ready(cx).is_ready();
            self.early = matches!(frame.body, Body::Ping) && !gw.park_after().is_zero();
            match handle(gw, conn, frame) {
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
    /// Nothing to write, nothing being written, no close, no store work.
    fn holds_nothing(&self) -> bool {
        self.pending.is_empty() && !self.sending && self.close.is_none() && self.work.is_none()
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

/// Starts the store operation `next` for `conn`.
fn start_work(gw: &Gateway, conn: &ConnHandle, next: NextWork) -> Work {
    let target = |binding: usize| {
        let (app, user) = &conn.bindings[binding];
        Target {
            store: gw.store.clone(),
            app: app.clone(),
            user: user.clone(),
            device: conn.device.clone(),
        }
    };
    match next {
        NextWork::Ack { binding, seq } => inbox::ack(target(binding), binding, seq),
        NextWork::Sync(request) => inbox::sync(target(request.binding), request),
        NextWork::Backlog {
            binding,
            after,
            first_page,
            missed_before,
        } => inbox::backlog(
            target(binding),
            binding,
            after,
            first_page,
            missed_before,
            gw.max_attempts,
        ),
    }
}

/// Applies a finished store operation to `conn`.
fn finish_work(gw: &Gateway, conn: &ConnHandle, done: Done) {
    match done {
        Done::Backlog {
            binding,
            missed_before,
            result: Ok(page),
        } => {
            if page.skipped.is_some() {
                gw.metrics.poison_skipped.increment(1);
            }
            let queued = conn.apply_backlog(binding, missed_before, page);
            gw.metrics.backlog_messages.increment(queued as u64);
        }
        Done::Backlog {
            binding,
            result: Err(e),
            ..
        } => {
            gw.metrics.store_error("read");
            if !conn.backlog_failed(binding) {
                tracing::debug!(conn = %conn.id, error = %e, "a recheck of the inbox failed");
                return;
            }
            // The client resumes from its position when it comes back.
            tracing::warn!(conn = %conn.id, error = %e, "cannot read a backlog");
            conn.close(Close {
                code: Code::INTERNAL,
                reason: "store unavailable".into(),
                retry_after_ms: 1000,
                flush: true,
            });
        }
        Done::Acked {
            binding,
            seq,
            result,
        } => {
            if let Err(e) = result {
                // A lost ack costs a redelivery, which at-least-once allows; retrying here
                // could spin while the store is down.
                tracing::warn!(conn = %conn.id, error = %e, "cannot store an ack");
                gw.metrics.store_error("ack");
            }
            conn.ack_stored(binding, seq);
        }
        Done::Synced {
            request,
            result: Ok(page),
        } => {
            conn.apply_sync(request, &page);
            gw.metrics.syncs.increment(1);
        }
        Done::Synced {
            request,
            result: Err(e),
        } => {
            tracing::warn!(conn = %conn.id, error = %e, "cannot answer a sync");
            gw.metrics.store_error("read");
            conn.sync_failed();
            let error = ErrorBody {
                code: Code::UNAVAILABLE,
                message: "the store is unavailable; retry later".into(),
            };
            conn.enqueue(conn.encoding.encode(&Frame::new(request.id, error)));
        }
    }
}

/// What a frame from the client asks for.
enum Handled {
    Continue,
    /// The client said goodbye.
    Leave,
    Close(Close),
}

/// Acts on one frame from a connected client.
fn handle(gw: &Gateway, conn: &ConnHandle, frame: Frame) -> Handled {
    let metrics = &gw.metrics;
    let reply = |body: Body| conn.encoding.encode(&Frame { id: frame.id, body });
    let error = |code: Code, message: String| reply(Body::Error(ErrorBody { code, message }));
    let not_bound = |op: &str, app: &str| {
        reply(Body::Error(ErrorBody {
            code: Code::BAD_REQUEST,
            message: format!(
                "{op} for app {:?}, which this connection has not bound",
                truncate_utf8(app, tether_core::MAX_ID_LEN)
            ),
        }))
    };
    let close = |code: Code, reason: String| Close {
        code,
        reason,
        retry_after_ms: 0,
        flush: true,
    };
    match frame.body {
        Body::Ping => {
            conn.enqueue(reply(Body::Pong));
            Handled::Continue
        }
        Body::Pong => Handled::Continue,
        Body::Ack(ack) => {
            match conn.binding(&ack.app) {
                Some(binding) => {
                    metrics.acks.increment(1);
                    // The task writes it to the store; acks that arrive meanwhile coalesce.
                    conn.ack(binding, ack.seq);
                }
                None => {
                    conn.enqueue(not_bound("ack", &ack.app));
                }
            }
            Handled::Continue
        }
        Body::Sync(sync) => {
            let Some(binding) = conn.binding(&sync.app) else {
                conn.enqueue(not_bound("sync", &sync.app));
                return Handled::Continue;
            };
            let limit = match sync.limit as usize {
                0 => SYNC_PAGE,
                n => n.min(SYNC_PAGE),
            };
            let request = SyncRequest {
                id: frame.id,
                binding,
                after: sync.after,
                limit,
            };
            if !conn.request_sync(request) {
                conn.enqueue(reply(Body::Error(ErrorBody {
                    code: Code::BAD_REQUEST,
                    message: "one sync at a time: wait for the previous one's synced".into(),
                })));
            }
            Handled::Continue
        }
        Body::Subscribe(sub) => {
            let Some(binding) = conn.binding(&sub.app) else {
                conn.enqueue(not_bound("subscribe", &sub.app));
                return Handled::Continue;
            };
            if let Err(e) = validate_id("topic", &sub.topic) {
                conn.enqueue(error(Code::BAD_REQUEST, e));
                return Handled::Continue;
            }
            let topic = TopicId::from(sub.topic.as_str());
            let new = match conn.add_topic(binding, &topic, gw.limits.max_topics) {
                Ok(new) => new,
                Err(n) => {
                    let message = format!("this connection already has {n} topics");
                    conn.enqueue(error(Code::LIMIT, message));
                    return Handled::Continue;
                }
            };
            let Some(handle) = gw.table.get(conn.id) else {
                return Handled::Continue;
            };
            let app = conn.bindings[binding].0.clone();
            let job = Job::Subscribe {
                conn: handle,
                binding,
                topic: topic.clone(),
                request: frame.id,
                since: sub.since,
            };
            if gw.fanout.submit(&app, job).is_err() {
                if new {
                    conn.remove_topic(binding, &topic);
                }
                conn.enqueue(error(
                    Code::UNAVAILABLE,
                    "busy: retry the subscribe later".into(),
                ));
            }
            Handled::Continue
        }
        Body::Unsubscribe(unsub) => {
            let Some(binding) = conn.binding(&unsub.app) else {
                conn.enqueue(not_bound("unsubscribe", &unsub.app));
                return Handled::Continue;
            };
            if let Err(e) = validate_id("topic", &unsub.topic) {
                conn.enqueue(error(Code::BAD_REQUEST, e));
                return Handled::Continue;
            }
            let topic = TopicId::from(unsub.topic.as_str());
            let had = conn.remove_topic(binding, &topic);
            let Some(handle) = gw.table.get(conn.id) else {
                return Handled::Continue;
            };
            let app = conn.bindings[binding].0.clone();
            let job = Job::Unsubscribe {
                conn: handle,
                binding,
                topic: topic.clone(),
                request: frame.id,
            };
            if gw.fanout.submit(&app, job).is_err() {
                if had {
                    // Still subscribed: keep counting it.
                    let _ = conn.add_topic(binding, &topic, usize::MAX);
                }
                conn.enqueue(error(
                    Code::UNAVAILABLE,
                    "busy: retry the unsubscribe later".into(),
                ));
            }
            Handled::Continue
        }
        Body::Upstream(up) => {
            if let Err(e) = gw.webhooks().upstream(conn, frame.id, up) {
                conn.enqueue(reply(Body::Error(e)));
            }
            Handled::Continue
        }
        Body::Disconnect(d) => {
            // The client's code is its own business: logged, never echoed.
            debug!(conn = %conn.id, code = %d.code, "client said goodbye");
            Handled::Leave
        }
        Body::Connect(_) => {
            Handled::Close(close(Code::EXPECTED_CONNECT, "connect sent twice".into()))
        }
        other => {
            let reason = format!("op {} is not sent by clients", other.op().name());
            Handled::Close(close(Code::PROTOCOL, reason))
        }
    }
}

/// Refuses a connection that did not complete its handshake.
async fn reject<W: Wire>(wire: &mut W, gw: &Gateway, code: Code, reason: &str) {
    debug!(%code, reason, "handshake refused");
    gw.metrics.handshake_failed(code);
    let close = Close {
        code,
        reason: reason.to_owned(),
        retry_after_ms: 0,
        flush: false,
    };
    goodbye(wire, &mut VecDeque::new(), &close).await;
}

/// Tells the client why it is being closed, then closes; bounded in time. `unsent` holds at
/// most the rest of a frame already begun: it goes first, and if it cannot, the client gets no
/// `disconnect` (it could not parse one after a torn frame), just the close.
async fn goodbye<W: Wire>(wire: &mut W, unsent: &mut VecDeque<Bytes>, close: &Close) {
    let _ = timeout(GOODBYE_TIMEOUT, async {
        unsent.push_back(wire.encoding().encode(&close.frame()));
        if wire.send(unsent).await.is_err() {
            return;
        }
        wire.close(close.code, &close.reason).await;
    })
    .await;
}

/// Removes a closed connection from the table and the registry, and writes the acks it had not
/// written yet.
async fn forget(gw: &Gateway, conn: &ConnHandle) {
    let _ = conn.finish();
    conn.release_socket();
    gw.table.remove(conn.id);
    gw.fanout.leave_all(conn);
    for (binding, seq) in conn.unstored_acks() {
        let (app, user) = &conn.bindings[binding];
        if let Err(e) = gw.store.ack(app, user, &conn.device, Seq(seq)).await {
            tracing::warn!(conn = %conn.id, error = %e, "cannot store an ack");
            gw.metrics.store_error("ack");
        }
    }
    for (app, user) in &conn.bindings {
        if let Err(e) = gw.registry.unregister(app, user, &gw.node, conn.id).await {
            tracing::warn!(error = %e, "cannot unregister session; removing it later");
            gw.unsynced
                .unregister_failed(app.clone(), user.clone(), conn.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Gateway;
    use super::super::table::ConnTable;
    use super::super::wire::TcpWire;

    fn handle() -> Arc<super::ConnHandle> {
        Arc::new(super::ConnHandle::new(super::super::table::NewConn {
            id: tether_core::ConnId(1),
            transport: tether_core::Transport::Tcp,
            encoding: super::super::table::Encoding::Binary,
            device: "d".into(),
            bindings: vec![],
            resume: vec![],
            queue_limit: 100,
            direct: None,
            idle_limit: std::time::Duration::from_secs(1),
            now_ms: 0,
        }))
    }

    fn size_of_future<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The connection future is what every idle connection costs: keep it from creeping up.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let metrics = crate::metrics::Metrics::new();
        let table = ConnTable::new(
            metrics.queue_overflows.clone(),
            metrics.push_deliveries.clone(),
        );
        let config = crate::Config::for_tests();
        let table = Arc::new(table);
        let store: Arc<dyn tether_core::Store> = Arc::new(tether_core::MemoryStore::default());
        let fanout = crate::fanout::Fanout::start(
            &config,
            store.clone(),
            table.clone(),
            metrics.queue_overflows.clone(),
            Default::default(),
        );
        let gw = Arc::new(Gateway::new(
            &config,
            table,
            Arc::new(tether_core::MemoryRegistry::new()),
            store,
            fanout,
            metrics,
            Default::default(),
        ));
        let resumed = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let held = super::Parked {
            conn: handle(),
            gw: gw.clone(),
            permit: gw.admit([127, 0, 0, 2].into()).unwrap(),
        };
        // A parked connection's new task: `live` alone.
        let size = size_of_future(&super::live(TcpWire::new(resumed, 1024), held, false));
        assert!(
            size <= 384,
            "the resumed connection future grew to {size} bytes"
        );
        let permit = gw.admit([127, 0, 0, 1].into()).unwrap();
        let future = super::serve(TcpWire::new(stream, 1024), gw, permit);
        let size = size_of_future(&future);
        assert!(
            size <= 384,
            "the TCP connection future grew to {size} bytes"
        );
    }
}
