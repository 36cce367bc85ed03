//! The gateway role: holds client connections, whatever their transport.
//!
//! - this module: [`Gateway`], its listeners' accept loops, and the [`Events`] it reports.
//! - [`admission`]: the connection limits, before a handshake starts (who may connect at all,
//!   by address and origin, is each listener's [`Guard`], asked first).
//! - [`conn`]: from accept to established: the handshake, registration, `connected`.
//! - [`task`]: a connection's task once established: serving it, parking it (waiting without
//!   a task), resuming it, ending it.
//! - [`io`]: the connected loop: queued frames out, frames in, store work, parking.
//! - [`work`]: durable delivery's store work on a connection.
//! - [`handle`]: [`handle::ConnHandle`], one connection as the rest of the node sees it (a
//!   [`crate::link::Link`]), with its byte-bounded queue ([`outbox`]).
//! - [`table`]: the sharded connection table (the node's [`crate::link::Links`]).
//! - [`sweep`]: heartbeats, stalled writes, and asking idle connections to park.
//! - [`poller`]: where parked connections' sockets wait (an epoll instance of the gateway's).
//! - [`drain`]: closing every connection spread over a window (drain, shutdown).
//!
//! Each connection is one task while it is active. Nothing is spawned per message: producers
//! queue encoded frames on the connection's handle and wake its task. A connection idle for
//! `gateway.park_after` gives its task up and gets a new one on its next event. What a client
//! says is checked by the transport-independent rules of [`crate::session`]; what it asks of
//! the node goes to the delivery service ([`crate::delivery`]); its connection events go to
//! [`Events`], which the node wires to the apps' webhooks.

mod admission;
mod conn;
pub mod drain;
pub mod handle;
mod io;
pub mod outbox;
mod poller;
mod sweep;
pub mod table;
mod task;
#[cfg(test)]
mod testing;
mod work;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tether_core::NodeId;
use tether_proto::{Code, Disconnect, ErrorBody, Frame, Upstream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use arc_swap::ArcSwap;

use crate::accept::AcceptErrors;
use crate::config::{Config, GatewayConfig, Limits};
use crate::delivery::Delivery;
use crate::edge::{Guard, Refusal};
use crate::link::Link;
use crate::metrics::Metrics;
use crate::session::access::Shared;
use crate::session::handshake::Handshake;
use crate::transport::{TcpWire, WsWire, upgrade};
use admission::{Admission, Permit};
use table::ConnTable;

/// What the gateway reports of its connections, for the node to pass on (to the apps'
/// webhooks): two notifications, and upstream data, which is a request the client gets an
/// answer to (now, if it is refused; later, from the webhook, if it is taken). Called on the
/// connection's task: nothing here may wait.
pub trait Events: Send + Sync + std::fmt::Debug {
    /// A connection completed its handshake; its client has not been told yet.
    fn connected(&self, conn: &dyn Link);

    /// A connection that [`Events::connected`] reported has closed.
    fn closed(&self, conn: &dyn Link);

    /// Data from binding `binding`'s client for its app (request id `request`): taken, or
    /// refused with the `error` the client gets.
    fn upstream(
        &self,
        conn: &dyn Link,
        binding: usize,
        request: u32,
        up: Upstream,
    ) -> Result<(), ErrorBody>;
}

/// The parked-socket poller, unless parking is off. A poller that cannot start (no epoll
/// instance or thread to be had) turns parking off rather than the node.
fn start_poller(config: &Config, table: &Arc<ConnTable>) -> Option<poller::Poller> {
    if config.gateway.park_after.is_zero() {
        return None;
    }
    poller::Poller::start(table.clone())
        .inspect_err(|e| warn!(error = %e, "cannot start the parked-socket poller; parking is off"))
        .ok()
}

/// How long a refused WebSocket client may take to send its upgrade request.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Refused WebSocket clients waiting for their answer at once: what refusals may hold of the
/// descriptors kept for the rest of the node (see `crate::descriptors`).
pub const MAX_WS_REFUSALS: usize = 16;

/// Shared state of the gateway role.
#[derive(Debug)]
pub struct Gateway {
    pub node: NodeId,
    pub config: GatewayConfig,
    pub limits: Limits,
    /// What a `connect` is checked against.
    handshake: Handshake,
    /// Each app's tokens and topic rules (for subscribes and refreshes).
    pub access: Shared,
    pub table: Arc<ConnTable>,
    /// What sessions ask of the node: resume positions, registration, topics, the store.
    pub delivery: Arc<Delivery>,
    /// Where connection events go.
    events: Arc<dyn Events>,
    pub metrics: Metrics,
    admission: Arc<Admission>,
    /// Room for refused WebSocket clients waiting for their answer.
    ws_refusals: Arc<Semaphore>,
    /// Who may connect to the TCP listener and to the WebSocket listener.
    tcp_guard: ArcSwap<Guard>,
    ws_guard: ArcSwap<Guard>,
    /// Cancelled when the node stops accepting; handshakes in progress are refused.
    pub shutdown: CancellationToken,
    /// Cancelled when the node drains: listeners still accept, but every new connection is
    /// refused with 4101 (reconnect elsewhere), handshakes in progress included.
    pub drain: CancellationToken,
    /// Every connection task, so that shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The runtime that parked connections get their task back on (see [`task`]): they can
    /// be woken from any thread.
    runtime: tokio::runtime::Handle,
    /// Where parked connections' sockets wait; `None` when parking is off (or the poller
    /// could not start).
    poller: Option<poller::Poller>,
    /// The origin of [`Gateway::clock_ms`].
    epoch: tokio::time::Instant,
}

impl Gateway {
    pub fn new(
        config: &Config,
        access: Shared,
        table: Arc<ConnTable>,
        delivery: Arc<Delivery>,
        events: Arc<dyn Events>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Gateway {
            node: NodeId::new(config.node.id.clone()),
            config: config.gateway.clone(),
            limits: config.limits.clone(),
            handshake: Handshake::new(config, access.clone()),
            access,
            poller: start_poller(config, &table),
            table,
            delivery,
            events,
            metrics,
            admission: Arc::new(Admission::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            )),
            ws_refusals: Arc::new(Semaphore::new(MAX_WS_REFUSALS)),
            tcp_guard: ArcSwap::from_pointee(Guard::open("tcp")),
            ws_guard: ArcSwap::from_pointee(Guard::open("ws")),
            shutdown,
            drain: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The gateway with these guards on its TCP and WebSocket listeners (the ones of
    /// [`Gateway::new`] let everyone in).
    pub fn with_guards(self, tcp: Arc<Guard>, ws: Arc<Guard>) -> Self {
        self.set_guards(tcp, ws);
        self
    }

    /// New guards for the TCP and WebSocket listeners (a reload): the next accepted
    /// connection meets them; per-IP rates start over.
    pub fn set_guards(&self, tcp: Arc<Guard>, ws: Arc<Guard>) {
        self.tcp_guard.store(tcp);
        self.ws_guard.store(ws);
    }

    /// Silence after which a connection parks; zero when parking is off.
    pub fn park_after(&self) -> Duration {
        match self.poller {
            Some(_) => self.config.park_after,
            None => Duration::ZERO,
        }
    }

    /// Milliseconds since the gateway started, by tokio's clock (so that tests can pause it).
    pub fn clock_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Accepts raw TCP clients until shutdown.
    ///
    /// A client whose address the listener's guard refuses is closed at once, before a byte
    /// is read. One over the per-IP rate or a limit is told its code (4004, 4102, ...) from
    /// this loop, without a task: a refusal holds its descriptor only for one non-blocking
    /// write, so a crowd of clients over the limit cannot take the descriptors kept for the
    /// rest of the node.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let mut errors = AcceptErrors::new("tcp");
        while let Some((stream, peer)) = self.accept(&listener, &mut errors).await {
            let guard = self.tcp_guard.load();
            let Ok(refused) = self.guard_ip(&guard, peer.ip()) else {
                continue;
            };
            let admitted = match refused {
                Some(code) => Err(code),
                None => self.admit(&guard, peer.ip()),
            };
            let permit = match admitted {
                Ok(permit) => permit,
                Err(code) => {
                    refuse_tcp(&stream, code);
                    continue;
                }
            };
            let gw = self.clone();
            self.tasks.spawn(async move {
                let wire = TcpWire::new(stream, gw.limits.max_frame);
                conn::serve(wire, gw, permit).await;
            });
        }
    }

    /// Accepts WebSocket clients on `/ws` until shutdown.
    ///
    /// A client whose address the listener's guard refuses is closed at once, before a byte
    /// is read. Other refused clients get their HTTP answer (429 over the per-IP rate, 503 over
    /// a limit, 403 for an Origin not allowed) from a task, as they must send their request
    /// first; at most [`MAX_WS_REFUSALS`] wait at once, and one past them is closed without an
    /// answer.
    pub async fn serve_ws(self: Arc<Self>, listener: TcpListener) {
        let mut errors = AcceptErrors::new("ws");
        while let Some((mut stream, peer)) = self.accept(&listener, &mut errors).await {
            let guard = self.ws_guard.load_full();
            let Ok(refused) = self.guard_ip(&guard, peer.ip()) else {
                continue;
            };
            let permit = match refused {
                Some(code) => Err(code),
                None => self.admit(&guard, peer.ip()),
            };
            let refused = permit.as_ref().err().copied();
            let refusal = match refused {
                None => None,
                Some(_) => match self.ws_refusals.clone().try_acquire_owned() {
                    Ok(slot) => Some(slot),
                    Err(_) => continue,
                },
            };
            let gw = self.clone();
            self.tasks.spawn(async move {
                let _refusal = refusal;
                // A refused client only needs its HTTP answer: it gets a second, not the whole
                // handshake timeout, to hold one of the refusals' sockets.
                let limit = match refused {
                    Some(_) => gw.config.handshake_timeout.min(REFUSAL_TIMEOUT),
                    None => gw.config.handshake_timeout,
                };
                let origin_ok =
                    |origin: Option<&[u8]>| guard.check_origin(origin, peer.ip()).is_ok();
                let upgraded = tokio::time::timeout(
                    limit,
                    Box::pin(upgrade::upgrade(&mut stream, refused, &origin_ok)),
                );
                let rest = match upgraded.await {
                    Ok(Ok(rest)) => rest,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "websocket upgrade failed");
                        return;
                    }
                    Err(_) => {
                        gw.metrics.handshake_failed(Code::HANDSHAKE_TIMEOUT);
                        return;
                    }
                };
                // A refused client's upgrade failed above (its answer was the refusal).
                let Ok(permit) = permit else { return };
                let wire = WsWire::new(stream, rest, gw.limits.max_frame);
                conn::serve(wire, gw, permit).await;
            });
        }
    }

    /// The next accepted socket, or `None` at shutdown.
    async fn accept(
        &self,
        listener: &TcpListener,
        errors: &mut AcceptErrors,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Pushes are small and latency matters more than packet count; batching
                    // happens in the connection's queue instead.
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => errors.failed(&e).await,
            }
        }
    }

    /// What `guard` says of a connection from `ip`: `Ok(None)` to go on, `Ok(Some(code))` to
    /// be told `code`, `Err` to be closed at once.
    fn guard_ip(&self, guard: &Guard, ip: IpAddr) -> Result<Option<Code>, ()> {
        match guard.check_ip(ip) {
            Ok(()) => Ok(None),
            Err(refusal) => {
                self.metrics.rejected_connections.increment(1);
                refusal.code().map(Some).ok_or(())
            }
        }
    }

    /// A place for a connection from `ip` on the listener of `guard`, which counts a refusal.
    fn admit(&self, guard: &Guard, ip: IpAddr) -> Result<Permit, Code> {
        Admission::admit(&self.admission, ip).inspect_err(|code| {
            self.metrics.rejected_connections.increment(1);
            self.metrics.handshake_failed(*code);
            guard.refused(Refusal::of_limit(*code), ip.to_canonical());
        })
    }
}

/// Tells a raw TCP client that it was refused, in a binary `disconnect` frame, with one
/// non-blocking write: a new socket's send buffer takes the frame whole, and should it not, the
/// client sees the connection close.
fn refuse_tcp(stream: &TcpStream, code: Code) {
    let frame = Frame::new(
        0,
        Disconnect {
            code,
            reason: format!("refused: {}", code.label()),
            retry_after_ms: 1000,
        },
    );
    let bytes = tether_proto::binary::encode_to_bytes(&frame);
    let _ = stream.try_write(&bytes);
}
