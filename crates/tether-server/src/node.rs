//! Composes the roles of one node: binds the listeners, builds the backends, serves until
//! shutdown, and shuts down gracefully within the grace period.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tether_core::{
    LocalSink, MemoryRegistry, MemoryRouter, MemoryStore, NodeId, Registry, Retention, Router,
    Store,
};
use tether_proto::{Code, ErrorBody, Upstream};
use tether_redis::{RedisRegistry, RedisRouter, RedisStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::accept::{ApiListener, Peer, TlsApiListener};
use crate::api::{Api, Cors, Dispatcher, HttpGuard, Ops};
use crate::config::{Config, StoreBackend};
use crate::delivery::Delivery;
use crate::delivery::sink::NodeSink;
use crate::descriptors::{self, Budget};
use crate::edge::Guards;
use crate::fanout::Fanout;
use crate::gateway::drain::close_spread;
use crate::gateway::outbox::Close;
use crate::gateway::table::ConnTable;
use crate::gateway::{Events, Gateway};
use crate::lifecycle::{Lifecycle, Listeners, advertised_endpoints};
use crate::link::{Link, Links};
use crate::metrics::Metrics;
use crate::reload::{Reloaded, Reloader};
use crate::session::access::Access;
use crate::store::{DEFAULT_OPEN_FILES, EmbeddedOptions, EmbeddedStore};
use crate::tls::TlsListeners;
use crate::transport::{Will, Wills};
use crate::webhook::{self, Webhooks};

/// The backends of the store and registry seams (the router comes later: it needs the
/// node's sink, which needs the fan-out, which needs the store).
#[derive(Debug, Clone)]
struct Backends {
    registry: Arc<dyn Registry>,
    store: Arc<dyn Store>,
    /// The embedded store, when it is the store: closed (drained and fsynced) on shutdown.
    embedded: Option<Arc<EmbeddedStore>>,
}

/// The backends of the seams, chosen from the configuration in this one place (the router in
/// [`router`]).
async fn backends(config: &Config, budget: &Budget) -> anyhow::Result<Backends> {
    let retention = Retention {
        inbox_cap: config.store.inbox_cap,
        topic_history: config.store.topic_history,
        cursor_idle: config.store.max_ttl,
    };
    let (store, embedded): (Arc<dyn Store>, _) = match config.store.backend {
        StoreBackend::Memory => (Arc::new(MemoryStore::new(retention)), None),
        StoreBackend::Embedded => {
            let dir = config.node.data_dir.join("store");
            let options = EmbeddedOptions::from_config(&config.store);
            let open_files = store_open_files(budget);
            // Opening replays fjall's journal: blocking work.
            let opened = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || EmbeddedStore::open_with_files(&dir, options, open_files)
            })
            .await?
            .with_context(|| format!("cannot open the store in {}", dir.display()))?;
            let store = Arc::new(opened);
            (store.clone() as Arc<dyn Store>, Some(store))
        }
        StoreBackend::Redis => {
            let options = redis_options(config)?;
            let store = RedisStore::connect(&options, retention)
                .await
                .with_context(|| format!("cannot reach the Redis store at {:?}", options.urls))?;
            (Arc::new(store), None)
        }
    };
    let registry: Arc<dyn Registry> = match config.cluster.redis_options()? {
        None => Arc::new(MemoryRegistry::new()),
        Some(options) => {
            Arc::new(RedisRegistry::connect(&options).await.with_context(|| {
                format!("cannot reach the Redis registry at {:?}", options.urls)
            })?)
        }
    };
    Ok(Backends {
        registry,
        store,
        embedded,
    })
}

/// The store's share of the open files kept out of the gateway's reach: a quarter of them,
/// within fjall's bounds. The rest is for the API's connections, webhooks, Redis, listeners.
fn store_open_files(budget: &Budget) -> usize {
    let quarter = usize::try_from(budget.reserve / 4).unwrap_or(usize::MAX);
    quarter.clamp(10, DEFAULT_OPEN_FILES)
}

fn redis_options(config: &Config) -> anyhow::Result<tether_redis::RedisOptions> {
    config
        .cluster
        .redis_options()?
        .context("store.backend = \"redis\" needs cluster.redis")
}

/// The router: in memory for one node, over Redis pub/sub in a cluster.
async fn router(config: &Config, sink: Arc<dyn LocalSink>) -> anyhow::Result<Arc<dyn Router>> {
    let node = NodeId::new(config.node.id.clone());
    Ok(match config.cluster.redis_options()? {
        None => Arc::new(MemoryRouter::new(node, sink)),
        Some(options) => Arc::new(
            RedisRouter::start(&options, node, sink)
                .await
                .with_context(|| format!("cannot reach the Redis router at {:?}", options.urls))?,
        ),
    })
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    addrs: Addrs,
    gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    /// The embedded store, when it is the store: [`run`] watches it for a failure it cannot
    /// recover from.
    embedded: Option<Arc<EmbeddedStore>>,
}

impl Node {
    /// Binds every configured listener and starts serving. Port 0 picks a free port: ask the
    /// node for the address it got.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        Self::start_with(config, None).await
    }

    /// [`Node::start`] with the registry given rather than chosen from the configuration:
    /// several nodes in one process sharing one registry see each other (sessions and
    /// announcements), as nodes of a cluster do. For tests and embedding.
    pub async fn start_with_registry(
        config: Config,
        registry: Arc<dyn Registry>,
    ) -> anyhow::Result<Node> {
        Self::start_with(config, Some(registry)).await
    }

    async fn start_with(
        mut config: Config,
        shared_registry: Option<Arc<dyn Registry>>,
    ) -> anyhow::Result<Node> {
        config.validate()?;
        // What a reload compares its reading with: the configuration as written, before the
        // node sized it to its descriptors.
        let as_read = config.clone();
        // Before anything opens a file or announces the node's capacity.
        let budget = descriptors::size(&mut config.limits).map_err(anyhow::Error::msg)?;
        let metrics = Metrics::new();
        let table = Arc::new(ConnTable::new(
            metrics.queue_overflows.clone(),
            metrics.push_deliveries.clone(),
        ));
        let Backends {
            registry,
            store,
            embedded,
        } = backends(&config, &budget).await?;
        let registry = shared_registry.unwrap_or(registry);
        let store_handle = embedded.clone();
        let shutdown = CancellationToken::new();
        let fanout = Fanout::start(&config, store.clone(), table.clone(), shutdown.clone());
        let sink = Arc::new(NodeSink::new(table.clone(), fanout.clone()));
        let router = router(&config, sink).await?;
        let delivery = Arc::new(Delivery::new(
            &config,
            registry.clone(),
            router,
            store,
            fanout.clone(),
            table.clone(),
            metrics.clone(),
        ));
        let webhooks =
            Webhooks::start(&config, table.clone()).context("cannot build the webhook client")?;
        let access = Access::start(&config, shutdown.clone(), webhook::permission::askers)
            .await
            .map_err(anyhow::Error::msg)?;
        let guards = Guards::new(&config.listen).map_err(anyhow::Error::msg)?;
        let gateway = Arc::new(
            Gateway::new(
                &config,
                access.clone(),
                table.clone(),
                delivery.clone(),
                Arc::new(WebhookEvents(webhooks.clone())),
                metrics.clone(),
                shutdown.clone(),
            )
            .with_guards(guards.tcp, guards.ws),
        );
        gateway.set_mqtt_guard(guards.mqtt);
        let api = Arc::new(Api::new(&config, access.clone(), delivery.clone(), metrics));
        // The HTTP listener's guard, swapped by reloads: every route's address check
        // (`api::guarded`), and CORS on each client-facing one (`cors.client_facing(router)`).
        let http_guard: HttpGuard = Arc::new(ArcSwap::new(guards.http));
        let cors = Arc::new(Cors::new(http_guard.clone()));
        let certs = Arc::new(TlsListeners::load(&config).map_err(anyhow::Error::msg)?);

        let listen = &config.listen;
        // The gateway's sockets get `gateway.socket_send_buffer`; the HTTP API's keep the
        // kernel's autotuning (its answers are read by the caller that asked for them).
        let send_buffer = config.gateway.socket_send_buffer;
        let listeners = Listeners {
            tcp: bind(&listen.tcp, &config, send_buffer).await?,
            ws: bind(&listen.ws, &config, send_buffer).await?,
            tls: bind(&listen.tls, &config, send_buffer).await?,
            wss: bind(&listen.wss, &config, send_buffer).await?,
            mqtt: bind(&listen.mqtt, &config, send_buffer).await?,
            mqtts: bind(&listen.mqtts, &config, send_buffer).await?,
        };
        let http = bind(&listen.http, &config, 0)
            .await?
            .context("listen.http must be set")?;
        let https = bind(&listen.https, &config, 0).await?;
        let local = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let addrs = Addrs {
            tcp: local(&listeners.tcp),
            ws: local(&listeners.ws),
            tls: local(&listeners.tls),
            wss: local(&listeners.wss),
            http: http.local_addr()?,
            https: local(&https),
            mqtt: local(&listeners.mqtt),
            mqtts: local(&listeners.mqtts),
        };
        let endpoints = advertised_endpoints(&config, &listeners);
        let lifecycle = Arc::new(Lifecycle::new(
            &config,
            endpoints,
            registry.clone(),
            gateway.clone(),
        ));
        // What a previous run of this node id left in the registry goes before the node is
        // announced and takes connections.
        delivery.sessions().forget_previous().await;
        // Known to the dispatcher before the first client can be sent here.
        if let Err(e) = lifecycle.announce().await {
            tracing::warn!(error = %e, "cannot announce the node; retrying in the background");
        }
        tokio::spawn(lifecycle.clone().run());
        let reloader = Arc::new(Reloader::new(
            as_read,
            access.clone(),
            api.clone(),
            fanout.clone(),
            gateway.clone(),
            certs.clone(),
            cors.clone(),
        ));
        let ops = Arc::new(
            Ops::new(
                &config,
                lifecycle.clone(),
                Dispatcher::new(&config, access, registry, cors),
                table,
                delivery,
                webhooks.clone(),
                embedded.clone(),
            )
            .with_reload(reloader.clone()),
        );
        let Listeners {
            tcp,
            ws,
            tls,
            wss,
            mqtt,
            mqtts,
        } = listeners;
        for (listener, certs) in [(tcp, None), (tls, certs.tls.clone())] {
            if let Some(listener) = listener {
                tokio::spawn(gateway.clone().serve_tcp(listener, certs));
            }
        }
        for (listener, certs) in [(ws, None), (wss, certs.wss.clone())] {
            if let Some(listener) = listener {
                tokio::spawn(gateway.clone().serve_ws(listener, certs));
            }
        }
        for (listener, certs) in [(mqtt, None), (mqtts, certs.mqtts.clone())] {
            if let Some(listener) = listener {
                tokio::spawn(gateway.clone().serve_mqtt(listener, certs));
            }
        }
        tokio::spawn(gateway.clone().sweep_heartbeats());
        tokio::spawn(
            certs
                .clone()
                .watch(config.tls.watch_interval, shutdown.clone()),
        );
        let app = crate::api::http_router(api, ops, http_guard);
        let https_task = match (https, &certs.https) {
            (Some(listener), Some(certs)) => {
                let timeout = config.gateway.handshake_timeout;
                let listener =
                    TlsApiListener::start(listener, certs.clone(), timeout, shutdown.clone())?;
                let stopped = shutdown.clone().cancelled_owned();
                Some(tokio::spawn(serve_api(listener, app.clone(), stopped)))
            }
            _ => None,
        };
        let stopped = shutdown.clone().cancelled_owned();
        let http_task = tokio::spawn(async move {
            serve_api(ApiListener::new(http), app, stopped).await;
            if let Some(https) = https_task {
                let _ = https.await;
            }
        });

        let task = {
            let gateway = gateway.clone();
            let shutdown = shutdown.clone();
            let grace = config.gateway.shutdown_grace;
            let spread = config.gateway.shutdown_spread;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                let began = tokio::time::Instant::now();
                // Listeners stopped accepting when the token was cancelled; handshakes in
                // progress are refused; a drain under way stops here and this takes over.
                // The dispatcher stops offering the node first, then every client is told to
                // come back later: the closes spread over `shutdown_spread` (at most half the
                // grace period, so that the last ones still have time to finish), and each
                // gets a random `retry_after_ms` within it.
                // Bounded: a registry that hangs must not hold the shutdown up (the
                // announcement then expires on its own).
                let _ = tokio::time::timeout(grace / 4, lifecycle.withdraw()).await;
                info!(connections = gateway.table.len(), "shutting down");
                let window = spread.min(grace / 2);
                let spread_ms = spread.as_millis().min(u128::from(u32::MAX)) as u32;
                let close = || Close {
                    retry_after_ms: rand::random_range(0..=spread_ms),
                    ..Close::new(Code::SHUTDOWN, "server shutting down")
                };
                close_spread(&gateway.table, window, close, &CancellationToken::new()).await;
                gateway.tasks.close();
                let drained = tokio::time::timeout(grace.saturating_sub(began.elapsed()), async {
                    gateway.tasks.wait().await;
                    let _ = http_task.await;
                    // The connections are closed: their offline events are queued.
                    webhooks.finish().await;
                })
                .await;
                if drained.is_err() {
                    tracing::warn!(
                        left = gateway.table.len(),
                        "grace period over; closing what is left"
                    );
                }
                // What the writer holds is written and fsynced before the node counts as
                // stopped, so a restart on the same directory finds it.
                if let Some(store) = embedded {
                    store.close().await;
                }
            })
        };

        // Plain addresses (`127.0.0.1:7400`), and no field for a listener that is off.
        let shown = |a: Option<SocketAddr>| a.map(tracing::field::display);
        info!(
            node = %config.node.id,
            version = env!("CARGO_PKG_VERSION"),
            tcp = shown(addrs.tcp),
            ws = shown(addrs.ws),
            http = %addrs.http,
            tls = shown(addrs.tls),
            wss = shown(addrs.wss),
            https = shown(addrs.https),
            mqtt = shown(addrs.mqtt),
            mqtts = shown(addrs.mqtts),
            store = ?config.store.backend,
            "tether node started"
        );
        Ok(Node {
            addrs,
            gateway,
            reloader,
            shutdown,
            task,
            embedded: store_handle,
        })
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.addrs.tcp
    }

    /// The MQTT listener (`mqtt://<addr>`).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.addrs.mqtt
    }

    /// The MQTT listener inside TLS (`mqtts://<addr>`).
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.addrs.mqtts
    }

    /// The WebSocket listener; clients connect to `ws://<addr>/ws`.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.addrs.ws
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.addrs.http
    }

    /// The raw TCP listener inside TLS (`tls://<addr>`).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.addrs.tls
    }

    /// The WebSocket listener inside TLS (`wss://<addr>/ws`).
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.addrs.wss
    }

    /// The HTTP API inside TLS (`https://<addr>`).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.addrs.https
    }

    /// Connections that completed their handshake and are still open.
    pub fn connections(&self) -> usize {
        self.gateway.table.len()
    }

    /// Connections waiting without a task (see `gateway.park_after`).
    pub fn parked_connections(&self) -> usize {
        let mut parked = 0;
        let table = &self.gateway.table;
        table.for_each_handle(0..table.shard_count(), |conn| {
            parked += usize::from(conn.is_parked());
        });
        parked
    }

    /// Reads the configuration again (from the file it was loaded from) and applies what a
    /// running node can: see [`crate::reload`]. On a problem, the old configuration stays.
    pub fn reload(&self) -> Result<Reloaded, Vec<String>> {
        self.reloader.reload()
    }

    /// Applies `config` as a reload would (for tests and embedding).
    pub fn apply(&self, config: Config) -> Result<Reloaded, Vec<String>> {
        self.reloader.apply(config)
    }

    /// Starts a graceful shutdown: stop accepting, tell clients to reconnect, finish.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the node has shut down (after [`Node::shutdown`]), at most the grace
    /// period after it began.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Where a node's listeners listen.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    tcp: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    wss: Option<SocketAddr>,
    http: SocketAddr,
    https: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    mqtts: Option<SocketAddr>,
}

/// Serves the HTTP API on `listener` (plain or TLS) until `stopped`. Each request carries its
/// peer's address (`ConnectInfo<Peer>`), for the listener's guard: a reload may give it
/// address lists at any time.
async fn serve_api<L>(
    listener: L,
    app: axum::Router,
    stopped: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Unpin,
    for<'a> Peer: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let app = app.into_make_service_with_connect_info::<Peer>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// The gateway's connection events, passed on to the apps' webhooks: presence events and
/// upstream data.
#[derive(Debug)]
struct WebhookEvents(Arc<Webhooks>);

impl Wills for WebhookEvents {
    fn will(&self, will: Will) {
        self.0.will(will);
    }
}

impl Events for WebhookEvents {
    fn connected(&self, conn: &dyn Link) {
        self.0.connected(conn);
    }

    fn closed(&self, conn: &dyn Link) {
        self.0.disconnected(conn);
    }

    fn upstream(
        &self,
        conn: &dyn Link,
        binding: usize,
        request: u32,
        up: Upstream,
    ) -> Result<(), ErrorBody> {
        self.0.upstream(conn, binding, request, up)
    }
}

/// Runs a node until `shutdown` is cancelled, then shuts it down gracefully. SIGHUP reloads
/// the configuration (and never stops the node). Also shuts it down, and returns an error,
/// when its embedded store failed and cannot be reopened (see [`EmbeddedStore::fatal`]):
/// `tether serve` then exits with status 1, for a supervisor to start it again.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], calling `started` with the node once its listeners are bound (to print the
/// addresses that port 0 picked, say).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    started: impl FnOnce(&Node),
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let node = Node::start(config).await?;
    started(&node);
    let store = node.embedded.clone();
    let store_failed = async move {
        match store {
            Some(store) => store.fatal().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(store_failed);
    let failed = loop {
        tokio::select! {
            () = shutdown.cancelled() => break false,
            () = &mut store_failed => break true,
            Some(()) = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                // Off this loop, so that a slow read (a key file on a hung disk) does not
                // hold back shutdown; reloads queue on the reloader's lock.
                let reloader = node.reloader.clone();
                tokio::task::spawn_blocking(move || match reloader.reload() {
                    Ok(reloaded) => tracing::info!(?reloaded, "configuration reloaded"),
                    Err(problems) => tracing::error!(
                        ?problems,
                        "the configuration was not reloaded: the old one stays"
                    ),
                });
            }
        }
    };
    node.shutdown();
    node.wait().await;
    info!(store_failed = failed, "tether node stopped");
    if failed {
        anyhow::bail!(
            "the store failed and could not be reopened (see the log above); exiting so that \
             the node is started again: what was stored is on disk"
        );
    }
    Ok(())
}

/// A listener on `addr` (`None` when it is empty). With `send_buffer` > 0, its `SO_SNDBUF`,
/// which every accepted socket inherits at no cost per connection (`gateway.socket_send_buffer`).
async fn bind(
    addr: &str,
    config: &Config,
    send_buffer: usize,
) -> anyhow::Result<Option<TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr:?}"))?;
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if config.listen.reuse_port {
        socket.set_reuseport(true)?;
    }
    if send_buffer > 0 {
        let size = u32::try_from(send_buffer).unwrap_or(u32::MAX);
        socket
            .set_send_buffer_size(size)
            .with_context(|| format!("cannot set SO_SNDBUF to {send_buffer} on {addr}"))?;
    }
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(Some(socket.listen(config.listen.backlog)?))
}
