//! The node among the others: announcing itself to the registry (where clients reach it, its
//! load, whether it drains), readiness, and the drain.
//!
//! # Drain
//! `POST /v1/admin/drain` (or [`Lifecycle::drain`]): readiness turns false; the registry learns
//! the node drains *before* any client is closed, so that the dispatcher no longer offers it to
//! the clients it closes; listeners keep accepting but refuse every new connection with 4101;
//! then every connection is closed with 4101 (reconnect elsewhere), one after another over
//! `gateway.drain_spread`. Closes go through each connection's queue, so what was queued is
//! written first; the HTTP API keeps serving. A shutdown during a drain takes over what is
//! left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tether_core::{NodeId, NodeInfo, Registry, RegistryError};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::gateway::drain::{close_spread, drain_close};
use crate::link::Links;

/// How many announcement intervals an announcement holds: a node must miss two in a row
/// before the dispatcher stops offering it.
const TTL_INTERVALS: u32 = 3;

/// What a call of [`Lifecycle::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainStarted {
    /// False when the node was already draining (nothing new began).
    pub began: bool,
    /// Connections open when the drain began, all to be closed within `spread`.
    pub connections: usize,
    pub spread: Duration,
}

/// The node's announcements, readiness and drain.
#[derive(Debug)]
pub struct Lifecycle {
    node: NodeId,
    /// The endpoints clients are given for this node, in order.
    endpoints: Vec<String>,
    max_connections: u64,
    zone: String,
    interval: Duration,
    drain_spread: Duration,
    registry: Arc<dyn Registry>,
    gateway: Arc<Gateway>,
    /// Set by the first drain, so that two concurrent calls start one drain.
    drain_begun: AtomicBool,
    /// Set by the withdrawal at shutdown; held while announcing, so the two never cross.
    withdrawn: tokio::sync::Mutex<bool>,
    /// A resync, a reap runs in the background.
    resyncing: Arc<AtomicBool>,
    reaping: Arc<AtomicBool>,
}

impl Lifecycle {
    /// `endpoints` as from [`advertised_endpoints`].
    pub fn new(
        config: &Config,
        endpoints: Vec<String>,
        registry: Arc<dyn Registry>,
        gateway: Arc<Gateway>,
    ) -> Self {
        Lifecycle {
            node: NodeId::new(config.node.id.clone()),
            endpoints,
            max_connections: config.limits.max_connections as u64,
            zone: config.node.zone.clone(),
            interval: config.node.announce_interval,
            drain_spread: config.gateway.drain_spread,
            registry,
            gateway,
            drain_begun: AtomicBool::new(false),
            withdrawn: tokio::sync::Mutex::new(false),
            resyncing: Arc::default(),
            reaping: Arc::default(),
        }
    }

    /// Whether the node takes new clients: not draining, not shutting down. `/readyz` also
    /// asks the embedded store whether it takes new messages (see `api::ops`).
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
    }

    /// Whether the node drains or shuts down.
    pub fn is_draining(&self) -> bool {
        self.gateway.is_draining()
    }

    /// The endpoints this node announces.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// What the node announces now.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.node.clone(),
            endpoints: self.endpoints.clone(),
            connections: self.gateway.table.len() as u64,
            max_connections: self.max_connections,
            draining: self.gateway.is_draining(),
            zone: self.zone.clone(),
            expires_ms: tether_core::now_ms() + (self.interval * TTL_INTERVALS).as_millis() as u64,
        }
    }

    /// Announces the node now. Returns whether the registry still held the previous
    /// announcement (see [`Membership::announce`](tether_core::Membership::announce)).
    /// Nothing once the node withdrew: an announcement in flight at shutdown must not land
    /// after the withdrawal and list the node again.
    pub async fn announce(&self) -> Result<bool, RegistryError> {
        let withdrawn = self.withdrawn.lock().await;
        if *withdrawn {
            return Ok(true);
        }
        self.registry.announce(self.info()).await
    }

    /// Every node the registry holds an announcement of, this one included when it announced,
    /// sorted by id: the live ones, and those whose announcement expired (stopped announcing:
    /// crashed, cut off) until a live node reaps them, within an announcement interval. A
    /// withdrawn node (a clean shutdown) is not listed.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        self.registry.nodes(0).await
    }

    /// Announces the node again every `node.announce_interval` until shutdown (the node makes
    /// the first announcement itself at start, and withdraws at shutdown). A failed
    /// announcement is retried at the next tick: the previous one holds for [`TTL_INTERVALS`]
    /// intervals.
    pub async fn run(self: Arc<Self>) {
        let shutdown = self.gateway.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            match self.announce().await {
                Ok(renewed) => {
                    if !renewed {
                        // The registry lost this node: Redis restarted, or it was unreachable
                        // long enough for others to reap the node.
                        self.gateway.delivery.sessions().lost();
                    }
                    if !self.gateway.delivery.sessions().synced() {
                        self.background(&self.resyncing, |me| async move {
                            me.gateway.delivery.sessions().resync().await;
                        });
                    }
                }
                Err(e) => warn!(error = %e, "cannot announce the node"),
            }
            // Every node reaps: it is idempotent, and cheap when no node died.
            self.background(&self.reaping, |me| async move {
                match me.registry.reap(tether_core::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => info!(
                        sessions = n,
                        "sessions of nodes that stopped announcing removed"
                    ),
                    Err(e) => debug!(error = %e, "cannot reap dead nodes"),
                }
            });
        }
    }

    /// Runs `work` in a task of its own unless the previous one (flagged by `busy`) still runs:
    /// a long resync or reap must not hold up the announcements, or the node's own
    /// announcement would expire meanwhile.
    fn background<F, Fut>(self: &Arc<Self>, busy: &Arc<AtomicBool>, work: F)
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let busy = busy.clone();
        let task = work(self.clone());
        tokio::spawn(async move {
            task.await;
            busy.store(false, Ordering::Release);
        });
    }

    /// Takes the node out of the registry's node list, so that the dispatcher stops offering
    /// it (shutdown). Failures are logged: the announcement then expires on its own.
    pub async fn withdraw(&self) {
        let mut withdrawn = self.withdrawn.lock().await;
        *withdrawn = true;
        if let Err(e) = self.registry.withdraw(&self.node).await {
            warn!(error = %e, "cannot withdraw the node; its announcement will expire");
        }
    }

    /// Starts draining (see the module docs) and returns at once, once the registry knows;
    /// the closes go on in the background. Draining again does nothing new.
    pub async fn drain(&self) -> DrainStarted {
        let connections = self.gateway.table.len();
        if self.drain_begun.swap(true, Ordering::SeqCst) {
            return DrainStarted {
                began: false,
                connections,
                spread: self.drain_spread,
            };
        }
        self.gateway.drain.cancel();
        // Before any close: a closed client asks the dispatcher, which must not send it back.
        if let Err(e) = self.announce().await {
            warn!(error = %e, "cannot announce the drain; clients may be sent back here until the announcement expires");
        }
        info!(connections, spread = ?self.drain_spread, "draining");
        let gateway = self.gateway.clone();
        let spread = self.drain_spread;
        self.gateway.tasks.spawn(async move {
            let stop = gateway.shutdown.clone();
            let closed = close_spread(&gateway.table, spread, drain_close, &stop).await;
            info!(
                closed,
                "drain: every connection was told to reconnect elsewhere"
            );
        });
        DrainStarted {
            began: true,
            connections,
            spread,
        }
    }
}

/// The endpoints the node announces: `node.advertise_tcp`, `node.advertise_ws` and
/// `node.advertise_mqtt` when set, otherwise the listeners' own addresses (what clients on
/// this machine or network reach): raw TCP (plain, then TLS), then WebSocket (plain, then
/// TLS), then MQTT (plain, then TLS, then over WebSocket at `/mqtt`). The dispatcher hands
/// MQTT's only to devices that ask for them (`crate::dispatch::order`).
pub fn advertised_endpoints(config: &Config, listeners: &Listeners) -> Vec<String> {
    let mut out = own_or_listener(
        &config.node.advertise_tcp,
        &[
            (listeners.tcp.as_ref(), "tcp://", ""),
            (listeners.tls.as_ref(), "tls://", ""),
        ],
    );
    out.extend(own_or_listener(
        &config.node.advertise_ws,
        &[
            (listeners.ws.as_ref(), "ws://", "/ws"),
            (listeners.wss.as_ref(), "wss://", "/ws"),
        ],
    ));
    out.extend(own_or_listener(
        &config.node.advertise_mqtt,
        &[
            (listeners.mqtt.as_ref(), "mqtt://", ""),
            (listeners.mqtts.as_ref(), "mqtts://", ""),
            (listeners.ws.as_ref(), "ws://", "/mqtt"),
            (listeners.wss.as_ref(), "wss://", "/mqtt"),
        ],
    ));
    out
}

/// The gateway's listeners, bound.
#[derive(Debug, Default)]
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub ws: Option<TcpListener>,
    pub tls: Option<TcpListener>,
    pub wss: Option<TcpListener>,
    /// MQTT, plain and inside TLS (`docs/mqtt.md`).
    pub mqtt: Option<TcpListener>,
    pub mqtts: Option<TcpListener>,
}

fn own_or_listener(
    advertised: &[String],
    listeners: &[(Option<&TcpListener>, &str, &str)],
) -> Vec<String> {
    if !advertised.is_empty() {
        return advertised.to_vec();
    }
    let mut out = Vec::new();
    for (listener, scheme, path) in listeners {
        let Some(addr) = listener.and_then(|l| l.local_addr().ok()) else {
            continue;
        };
        if addr.ip().is_unspecified() {
            warn!(
                %addr,
                "a listener on every interface and no node.advertise_tcp/ws/mqtt: the \
                 dispatcher hands out this address, which remote clients cannot use"
            );
        }
        out.push(format!("{scheme}{addr}{path}"));
    }
    out
}
