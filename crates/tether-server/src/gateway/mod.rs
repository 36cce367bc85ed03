//! The gateway role: holds client connections.
//!
//! - [`table`]: the sharded connection table and each connection's byte-bounded queue.
//! - [`wire`]: one interface over raw TCP and WebSocket, and the raw TCP side of it.
//! - [`upgrade`]: the HTTP request that opens a WebSocket connection.
//! - [`ws`]: the WebSocket side of [`wire`].
//! - [`conn`]: a connection's life (handshake, frames, heartbeat, close).
//! - [`inbox`]: durable delivery on a connection (resume, backlog, acks, `sync`).
//! - [`drain`]: closing every connection spread over a window (drain, shutdown).
//! - [`park`]: idle connections wait without a task.
//!
//! Each connection is one task while it is active. Nothing is spawned per message: producers
//! queue encoded frames on the connection's handle and wake its task. A connection idle for
//! `gateway.park_after` gives its task up and gets a new one on its next event.

mod conn;
pub mod drain;
pub mod inbox;
mod park;
pub mod table;
pub mod unsynced;
pub mod upgrade;
pub mod wire;
pub mod ws;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use tether_core::{AppId, NodeId, Registry, Store};
use tether_proto::{Code, Disconnect, Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::{Config, GatewayConfig, Limits};
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::webhook::Webhooks;
use table::ConnTable;
use wire::TcpWire;
use ws::WsWire;

/// The parked-socket poller, unless parking is off. A poller that cannot start (no epoll
/// instance or thread to be had) turns parking off rather than the node.
fn start_poller(config: &Config, table: &Arc<ConnTable>) -> Option<park::Poller> {
    if config.gateway.park_after.is_zero() {
        return None;
    }
    park::Poller::start(table.clone())
        .inspect_err(|e| warn!(error = %e, "cannot start the parked-socket poller; parking is off"))
        .ok()
}

/// How long a refused WebSocket client may take to send its upgrade request.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Shared state of the gateway role.
#[derive(Debug)]
pub struct Gateway {
    pub node: NodeId,
    pub config: GatewayConfig,
    pub limits: Limits,
    /// App id -> token secret.
    apps: HashMap<AppId, String>,
    pub table: Arc<ConnTable>,
    pub registry: Arc<dyn Registry>,
    pub store: Arc<dyn Store>,
    /// Topics and broadcast.
    pub fanout: Arc<Fanout>,
    /// The poison guard's limit (see [`crate::config::StoreConfig::max_attempts`]).
    pub max_attempts: u32,
    pub metrics: Metrics,
    admission: Arc<Admission>,
    /// Cancelled when the node stops accepting; handshakes in progress are refused.
    pub shutdown: CancellationToken,
    /// Cancelled when the node drains: listeners still accept, but every new connection is
    /// refused with 4101 (reconnect elsewhere), handshakes in progress included.
    pub drain: CancellationToken,
    /// Every connection task, so that shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The runtime that parked connections get their task back on (see [`park`]): they can
    /// be woken from any thread.
    runtime: tokio::runtime::Handle,
    /// Where parked connections' sockets wait; `None` when parking is off (or the poller
    /// could not start).
    poller: Option<park::Poller>,
    /// Sessions that could not be registered or unregistered (the registry was unreachable),
    /// retried after the next announcement.
    pub unsynced: unsynced::Unsynced,
    /// The origin of [`Gateway::clock_ms`].
    epoch: tokio::time::Instant,
    /// Upstream frames and presence events go to the apps' webhooks; set once, at node start
    /// (see [`Gateway::webhooks`]).
    webhooks: OnceLock<Arc<Webhooks>>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        table: Arc<ConnTable>,
        registry: Arc<dyn Registry>,
        store: Arc<dyn Store>,
        fanout: Arc<Fanout>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Gateway {
            node: NodeId::new(config.node.id.clone()),
            config: config.gateway.clone(),
            limits: config.limits.clone(),
            apps: config
                .apps
                .iter()
                .map(|a| (a.id.clone(), a.secret.expose().to_owned()))
                .collect(),
            poller: start_poller(config, &table),
            table,
            registry,
            store,
            fanout,
            max_attempts: config.store.max_attempts,
            metrics,
            admission: Arc::new(Admission::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            )),
            shutdown,
            drain: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            unsynced: unsynced::Unsynced::default(),
            epoch: tokio::time::Instant::now(),
            webhooks: OnceLock::new(),
        }
    }

    /// Sends upstream frames and presence events to `webhooks` from now on. Only the first
    /// call counts: presence counts must see every connection's open and close in one place.
    pub fn set_webhooks(&self, webhooks: Arc<Webhooks>) {
        let _ = self.webhooks.set(webhooks);
    }

    /// The apps' webhooks; none before [`Gateway::set_webhooks`].
    pub fn webhooks(&self) -> &Webhooks {
        static NONE: LazyLock<Webhooks> = LazyLock::new(Webhooks::disabled);
        self.webhooks.get().map_or(&NONE, |w| w)
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

    /// Closes connections whose clients went silent or stopped reading, until shutdown.
    ///
    /// One sweep over the table replaces a timer per connection: an idle connection holds no
    /// timer, and a frame from the client costs one atomic store instead of a timer reset.
    /// A silent client is closed between its limit and its limit plus one sweep period.
    pub async fn sweep_heartbeats(self: Arc<Self>) {
        let period = (self.config.heartbeat_min / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let closed = self.table.sweep(
                self.clock_ms(),
                self.config.write_timeout,
                self.park_after(),
            );
            if closed > 0 {
                debug!(closed, "heartbeat sweep");
            }
        }
    }

    /// Accepts raw TCP clients until shutdown.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        while let Some((stream, peer)) = self.accept(&listener).await {
            let gw = self.clone();
            self.tasks.spawn(async move {
                let permit = match gw.admit(peer.ip()) {
                    Ok(permit) => permit,
                    Err(code) => return refuse_tcp(stream, &gw, code).await,
                };
                let wire = TcpWire::new(stream, gw.limits.max_frame);
                conn::serve(wire, gw, permit).await;
            });
        }
    }

    /// Accepts WebSocket clients on `/ws` until shutdown.
    pub async fn serve_ws(self: Arc<Self>, listener: TcpListener) {
        while let Some((mut stream, peer)) = self.accept(&listener).await {
            let gw = self.clone();
            self.tasks.spawn(async move {
                let permit = gw.admit(peer.ip());
                let refused = permit.as_ref().err().copied();
                // A refused client only needs its HTTP answer: it gets a second, not the whole
                // handshake timeout, to hold a socket that no limit counts.
                let limit = match refused {
                    Some(_) => gw.config.handshake_timeout.min(REFUSAL_TIMEOUT),
                    None => gw.config.handshake_timeout,
                };
                let upgraded =
                    tokio::time::timeout(limit, Box::pin(upgrade::upgrade(&mut stream, refused)));
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
    async fn accept(&self, listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
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
                Err(e) => {
                    // Out of file descriptors, mostly: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn admit(&self, ip: IpAddr) -> Result<Permit, Code> {
        Admission::admit(&self.admission, ip).inspect_err(|code| {
            self.metrics.rejected_connections.increment(1);
            self.metrics.handshake_failed(*code);
        })
    }
}

/// Tells a raw TCP client that it was refused, in a binary `disconnect` frame.
async fn refuse_tcp(mut stream: TcpStream, gw: &Gateway, code: Code) {
    let frame = Frame::new(
        0,
        Disconnect {
            code,
            reason: format!("refused: {}", code.label()),
            retry_after_ms: 1000,
        },
    );
    let bytes = tether_proto::binary::encode_to_bytes(&frame);
    let _ = tokio::time::timeout(gw.config.write_timeout, stream.write_all(&bytes)).await;
}

/// The global and per-IP connection limits.
#[derive(Debug)]
struct Admission {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives the slot back. Owned, so that a parked
/// connection keeps it without a task.
struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("ip", &self.ip).finish()
    }
}

impl Admission {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        Admission {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Code> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Code::CONNECTION_LIMIT);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Code::IP_LIMIT);
        }
        *count += 1;
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per_ip = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}
