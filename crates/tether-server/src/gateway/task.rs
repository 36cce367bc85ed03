//! A connection's task once its handshake is done: serving it (`super::io`), parking it
//! without a task, resuming it, and ending it.
//!
//! # Parked connections
//! An idle connection gives up its task.
//!
//! A connection's task (its future plus tokio's header) is the largest part of what an idle
//! connection costs, about 1 KiB of the 2. Most of a push system's connections are idle most of
//! the time, and an idle connection needs no task: fan-outs already write to its socket
//! directly (see [`crate::link::Link::write_or_queue`]), and what else can happen to it is one of three events,
//! each of which already wakes the task through a waker it registered:
//!
//! - the client sends something (or goes away): the socket's read readiness;
//! - something is queued that could not be written directly, or a close is asked for (the
//!   heartbeat sweep, a kick, a drain, shutdown, a slow consumer): the handle's waker.
//!
//! So once the heartbeat sweep finds a connection silent both ways for `gateway.park_after`,
//! it asks the task to park ([`ConnHandle::park_asked`]); a task whose client has just
//! finished its handshake or sent a heartbeat parks without being asked, since the client
//! usually falls silent then. A task that holds nothing (no frame half read or half written,
//! nothing to write, no store work, no close) ends, leaving one [`Unpark`] waker in the
//! handle in its stead, and its socket leaves tokio's reactor for the gateway's poller
//! (`super::poller`),
//! which wakes that waker when the socket becomes readable. The first event starts a new task
//! for the connection on the same socket (back in tokio's reactor) and handle ([`resume`]),
//! which carries on where the old one stopped.
//!
//! A parked connection costs its handle, its socket's descriptor and epoll entry, and this
//! waker (about 80 bytes). Waking one costs a task spawn and two epoll updates (and a `dup`
//! when it parks again): a client's heartbeat does that once per interval, and the task parks
//! again once the pong is written, so an idle connection spends nearly all of its life parked. Transient pushes, publications and broadcasts to a parked connection
//! are written by the sender and do not wake it as long as the socket takes them whole (a
//! fan-out that is behind and queues for everyone else still writes parked connections
//! directly). A durable push does wake it: its order against the backlog and its ack are the
//! task's business. A WebSocket connection parks the same way: its wire frames messages
//! itself (see `crate::transport::ws`) and holds nothing between them, and direct writes put each frame
//! behind its WebSocket header.
//!
//! A parked connection's waker holds the gateway, so the connection lives until something
//! wakes it: a node ends its connections by closing them (shutdown, drain), never by dropping
//! the gateway.

use std::io;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use tether_proto::Code;
use tokio::net::TcpStream;
use tracing::warn;

use super::Gateway;
use super::admission::Permit;
use super::handle::ConnHandle;
use super::io::{Ran, run};
use super::outbox::Socket;
use crate::transport::Wire;

/// Serves an established connection until it ends or parks; a parked connection comes back
/// here with a new wire on the same socket. `fresh`: the handshake just ended, so the client is
/// likely to fall silent (see `super::io`). (Not an `async fn`, for the reason given in
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
            match run(&mut wire, held.gw(), &held.conn, early).await {
                Ran::Over(outcome) => break outcome,
                // The wire goes first (its share of the socket with it): the socket can leave
                // tokio's reactor only once the handle's is the last reference to it.
                Ran::Park => match wire.park() {
                    Err(busy) => {
                        wire = busy;
                        early = false;
                    }
                    Ok(rest) => match park::<W>(held, rest) {
                        Ok(()) => return,
                        // Something arrived while parking: carry on.
                        Err((stream, rest, back)) => {
                            held = back;
                            let max_frame = held.gw().limits.max_frame;
                            wire = W::resume(
                                stream,
                                rest,
                                max_frame,
                                held.conn.encoding,
                                &held.conn.bindings,
                            );
                            early = false;
                        }
                    },
                },
            }
        };
        Box::pin(ended(held.gw(), &held.conn, outcome)).await;
        // The admission slot goes back last, with `held`.
    }
}

/// Ends a parked connection whose socket could not be given back to tokio: it is gone.
async fn lost_task(held: Parked) {
    let _ = held.conn.finish();
    ended(held.gw(), &held.conn, None).await;
}

/// Counts a connection's end and forgets it.
pub(super) async fn ended(gw: &Gateway, conn: &ConnHandle, outcome: Option<Code>) {
    gw.metrics.disconnect(outcome);
    gw.metrics
        .transport(conn.transport)
        .connections
        .decrement(1.0);
    forget(gw, conn).await;
    gw.events.closed(conn);
}

/// What a connection's task holds besides the wire, and what a parked connection keeps (32
/// bytes: with its lock and `Arc`, the waker of a parked connection is a 64-byte chunk).
#[derive(Debug)]
pub(super) struct Parked {
    pub conn: Arc<ConnHandle>,
    /// The connection's admission slot, and its gateway: a parked connection still counts
    /// against the limits.
    pub permit: Permit,
}

impl Parked {
    pub fn gw(&self) -> &Arc<Gateway> {
        self.permit.gw()
    }
}

/// The waker a parked connection leaves in its handle, which the poller wakes too when the
/// socket becomes readable. The first wake takes the connection and starts its task again,
/// with a new wire of transport `W`; later ones find it gone. (The transport is in the type,
/// not in a field: a parked connection pays nothing for it.)
struct Unpark<W: Wire>(Mutex<Option<(Parked, W::Rest)>>, PhantomData<fn() -> W>);

impl<W: Wire> Unpark<W> {
    fn take(&self) -> Option<(Parked, W::Rest)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether no wake has taken the connection yet.
    fn holds(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl<W: Wire> Wake for Unpark<W> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some((parked, rest)) = self.take() {
            resume::<W>(parked, rest);
        }
    }
}

/// What a connection that did not park after all gets back: its socket, what its wire left
/// ([`Wire::Rest`]), and itself.
pub(super) type Unparked<W> = (Arc<TcpStream>, <W as Wire>::Rest, Parked);

/// Parks an idle connection whose task is about to end, its wire of transport `W` given up
/// with `rest` (see [`Wire::park`]). `Err` gives everything back when an event arrived while
/// parking: the task must go on serving it. `Ok` means the task must end without touching the
/// connection again (it is parked, or a wake already gave it a new task).
pub(super) fn park<W: Wire>(parked: Parked, rest: W::Rest) -> Result<(), Unparked<W>> {
    let conn = parked.conn.clone();
    let gw = parked.gw().clone();
    let Some(poller) = &gw.poller else {
        return refused::<W>(parked, rest);
    };
    // Counted before the waker is in place: a wake may resume (and count down) at once.
    gw.metrics.parked.increment(1.0);
    let unpark = Arc::new(Unpark::<W>(Mutex::new(Some((parked, rest))), PhantomData));
    // The handle first: `parking` says whether something is already queued. Then the socket
    // moves to the poller, which reports it at once if it is readable already; only while no
    // wake has taken the connection (checked under the handle's lock, which a resume takes
    // after the connection): a task it started may have dropped its wire to park in turn, and
    // the socket is that task's to move.
    let waiting = conn.parking(&Waker::from(unpark.clone()))
        || !conn.with_socket(|socket| unpark.holds() && poller.park(socket, conn.id));
    if !waiting {
        return Ok(());
    }
    match unpark.take() {
        Some((parked, rest)) => {
            gw.metrics.parked.decrement(1.0);
            parked.conn.unparked();
            refused::<W>(parked, rest)
        }
        // A wake came first and started a task: the connection is that task's now.
        None => Ok(()),
    }
}

/// Gives a connection that did not park its socket back, for its wire again.
fn refused<W: Wire>(parked: Parked, rest: W::Rest) -> Result<(), Unparked<W>> {
    let gw = parked.gw().clone();
    match parked.conn.with_socket(|socket| in_reactor(socket, &gw)) {
        Ok(stream) => Err((stream, rest, parked)),
        Err(e) => {
            warn!(conn = %parked.conn.id, error = %e, "a parking connection lost its socket");
            lost(parked);
            Ok(())
        }
    }
}

/// The socket, back in tokio's reactor if it was parked.
fn in_reactor(socket: &mut Socket, gw: &Gateway) -> io::Result<Arc<TcpStream>> {
    match std::mem::take(socket) {
        Socket::Live(stream) => {
            *socket = Socket::Live(stream.clone());
            Ok(stream)
        }
        Socket::Parked(stream) => {
            if let Some(poller) = &gw.poller {
                // Before tokio's registration, which reports the socket at once if it is
                // readable: nothing is missed in between. A stale entry left behind would only
                // cause spurious wakes (see `ConnHandle::wake_parked`).
                if let Err(e) = poller.unwatch(&stream) {
                    warn!(error = %e, "cannot take a socket out of the parked-socket poller");
                }
            }
            let _runtime = gw.runtime.enter();
            // On an error the descriptor is closed: the connection is gone.
            let stream = Arc::new(TcpStream::from_std(stream)?);
            *socket = Socket::Live(stream.clone());
            Ok(stream)
        }
        Socket::None => Err(io::Error::other("no socket")),
    }
}

/// Gives a parked connection a task again, with a new wire of transport `W` on its socket,
/// back in tokio's reactor.
fn resume<W: Wire>(parked: Parked, rest: W::Rest) {
    parked.conn.unparked();
    let gw = parked.gw().clone();
    gw.metrics.parked.decrement(1.0);
    gw.metrics.unparks.increment(1);
    match parked.conn.with_socket(|socket| in_reactor(socket, &gw)) {
        Ok(stream) => {
            let (max_frame, encoding) = (gw.limits.max_frame, parked.conn.encoding);
            let wire = W::resume(stream, rest, max_frame, encoding, &parked.conn.bindings);
            gw.tasks.spawn_on(live(wire, parked, false), &gw.runtime);
        }
        Err(e) => {
            warn!(conn = %parked.conn.id, error = %e, "a parked connection lost its socket");
            lost(parked);
        }
    }
}

/// Ends a connection that has no socket left to serve it with.
fn lost(parked: Parked) {
    let gw = parked.gw().clone();
    gw.tasks.spawn_on(lost_task(parked), &gw.runtime);
}

/// Removes a closed connection from the table and the registry, takes it out of its topics,
/// and writes the acks it had not written yet.
async fn forget(gw: &Gateway, conn: &ConnHandle) {
    let _ = conn.finish();
    conn.release_socket();
    gw.table.remove(conn.id);
    gw.delivery
        .detach(conn, conn.take_topics(), conn.unstored_acks())
        .await;
}
