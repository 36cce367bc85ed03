//! The gateway role: holds client connections, whatever their transport.
//!
//! - this module: [`Gateway`] and the [`Events`] it reports.
//! - [`listen`]: the accept loops, raw TCP and WebSocket, plain or inside TLS.
//! - [`sse`]: the HTTP requests of the WebSocket listener: the upgrade, SSE streams and the
//!   frames posted to their sessions.
//! - [`affinity`]: the cookie naming the node on upgrades and streams, for load balancers.
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
pub mod affinity;
mod conn;
pub mod drain;
pub mod handle;
mod io;
mod listen;
mod mqtt;
pub mod outbox;
mod poller;
mod sse;
mod sweep;
pub mod table;
mod task;
#[cfg(test)]
mod testing;
mod work;

use std::sync::Arc;
use std::time::Duration;

use tether_core::{NodeId, SavedSessions};
use tether_proto::{ErrorBody, Upstream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use arc_swap::ArcSwap;

use crate::config::{Config, GatewayConfig, Limits};
use crate::delivery::Delivery;
use crate::edge::Guard;
use crate::link::Link;
use crate::metrics::Metrics;
use crate::session::access::Shared;
use crate::session::handshake::Handshake;
use crate::transport::Wills;
use admission::Admission;
use affinity::Affinity;
use table::ConnTable;

/// What the gateway reports of its connections, for the node to pass on (to the apps'
/// webhooks): two notifications, and upstream data, which is a request the client gets an
/// answer to (now, if it is refused; later, from the webhook, if it is taken). Called on the
/// connection's task: nothing here may wait. A will ([`Wills`]) is upstream data too, sent
/// after its connection ended.
pub trait Events: Wills + Send + Sync + std::fmt::Debug {
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
    /// The same, for the wills of MQTT connections (`crate::transport::Accepted`).
    wills: Arc<dyn Wills>,
    /// Where MQTT sessions are kept: the store.
    sessions: Arc<dyn SavedSessions>,
    /// `mqtt.max_session_expiry`.
    max_session: Duration,
    /// `mqtt.max_inflight`.
    max_inflight: u16,
    pub metrics: Metrics,
    admission: Arc<Admission>,
    /// Room for refused WebSocket clients waiting for their answer.
    ws_refusals: Arc<Semaphore>,
    /// Who may connect to the TCP listener and to the WebSocket listener.
    tcp_guard: ArcSwap<Guard>,
    ws_guard: ArcSwap<Guard>,
    /// The WebSocket listeners' affinity cookie (`listen.affinity_cookie`).
    affinity: ArcSwap<Affinity>,
    mqtt_guard: ArcSwap<Guard>,
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
            sessions: delivery.store().clone(),
            delivery,
            wills: events.clone(),
            events,
            max_session: config.mqtt.max_session_expiry,
            max_inflight: config.mqtt.max_inflight,
            metrics,
            admission: Arc::new(Admission::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            )),
            ws_refusals: Arc::new(Semaphore::new(MAX_WS_REFUSALS)),
            tcp_guard: ArcSwap::from_pointee(Guard::open("tcp")),
            ws_guard: ArcSwap::from_pointee(Guard::open("ws")),
            affinity: ArcSwap::from_pointee(Affinity::new(&config.listen, &config.node.id)),
            mqtt_guard: ArcSwap::from_pointee(Guard::open("mqtt")),
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

    /// A new affinity cookie for the WebSocket listeners (a reload): the next upgrade or
    /// stream answered sets it.
    pub fn set_affinity(&self, affinity: Affinity) {
        self.affinity.store(Arc::new(affinity));
    }

    /// A new guard for the MQTT listener (at start, and at a reload).
    pub fn set_mqtt_guard(&self, mqtt: Arc<Guard>) {
        self.mqtt_guard.store(mqtt);
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
}
