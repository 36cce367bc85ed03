//! Parked connections: an idle raw TCP connection gives up its task.
//!
//! A connection's task (its future plus tokio's header) is the largest part of what an idle
//! connection costs, about 1 KiB of the 2. Most of a push system's connections are idle most of
//! the time, and an idle connection needs no task: fan-outs already write to its socket
//! directly (see [`ConnHandle::offer`]), and what else can happen to it is one of three events,
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
//! nothing to write, no store work, no close) ends, leaving one
//! [`Unpark`] waker registered in both places in its stead. The first of those events starts a
//! new task for the connection on the same socket and handle ([`resume`]), which carries on
//! where the old one stopped.
//!
//! A parked connection costs its handle, its socket's registration and this waker (about 80
//! bytes). Waking one costs a task spawn: a client's heartbeat does that once per interval,
//! and the task parks again once the pong is written, so an idle connection spends nearly all
//! of its life parked. Transient pushes, publications and broadcasts to a parked connection
//! are written by the sender and do not wake it as long as the socket takes them whole (a
//! fan-out that is behind and queues for everyone else still writes parked connections
//! directly). A durable push does wake it: its order against the backlog and its ack are the
//! task's business. WebSocket connections keep their task: their protocol state lives in it.
//!
//! A parked connection's waker holds the gateway, so the connection lives until something
//! wakes it: a node ends its connections by closing them (shutdown, drain), never by dropping
//! the gateway.

use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use super::conn;
use super::table::ConnHandle;
use super::wire::TcpWire;
use super::{Gateway, Permit};

/// What a connection's task holds besides the wire, and what a parked connection keeps.
#[derive(Debug)]
pub(super) struct Parked {
    pub conn: Arc<ConnHandle>,
    pub gw: Arc<Gateway>,
    /// The connection's admission slot: a parked connection still counts against the limits.
    #[expect(dead_code, reason = "held for its Drop, which gives the slot back")]
    pub permit: Permit,
}

/// The waker a parked connection leaves in its socket's registration and in its handle. The
/// first wake takes the connection and starts its task again; later ones find it gone.
#[derive(Debug)]
struct Unpark(Mutex<Option<Parked>>);

impl Unpark {
    fn take(&self) -> Option<Parked> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(parked) = self.take() {
            resume(parked);
        }
    }
}

/// Parks an idle connection whose task is about to end. `Err` gives the connection back when
/// an event arrived while parking: the task must go on serving it. `Ok` means the task must
/// end without touching the connection again (it is parked, or a wake already gave it a new
/// task).
pub(super) fn park(parked: Parked) -> Result<(), Parked> {
    let conn = parked.conn.clone();
    let Some(stream) = conn.socket().cloned() else {
        return Err(parked);
    };
    let metrics = parked.gw.metrics.clone();
    // Counted before the wakers are in place: a wake may resume (and count down) at once.
    metrics.parked.increment(1.0);
    let unpark = Arc::new(Unpark(Mutex::new(Some(parked))));
    let waker = Waker::from(unpark.clone());
    // The handle first: `parking` says whether something is already queued. Then the socket:
    // a read readiness that is already set answers `Ready` and registers nothing.
    let waiting = conn.parking(&waker);
    if !waiting
        && stream
            .poll_read_ready(&mut Context::from_waker(&waker))
            .is_pending()
    {
        return Ok(());
    }
    match unpark.take() {
        Some(parked) => {
            metrics.parked.decrement(1.0);
            parked.conn.unparked();
            Err(parked)
        }
        // A wake came first and started a task: the connection is that task's now.
        None => Ok(()),
    }
}

/// Gives a parked connection a task again, on the same socket.
fn resume(parked: Parked) {
    parked.conn.unparked();
    let gw = parked.gw.clone();
    gw.metrics.parked.decrement(1.0);
    gw.metrics.unparks.increment(1);
    let Some(stream) = parked.conn.socket().cloned() else {
        // Only raw TCP connections park, and they always have their socket.
        return;
    };
    let wire = TcpWire::resume(stream, gw.limits.max_frame);
    gw.tasks
        .spawn_on(conn::live(wire, parked, false), &gw.runtime);
}
