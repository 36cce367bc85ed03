//! Routes for operations and clients rather than business servers: readiness, the dispatcher
//! (`super::dispatch`), and the admin API.
//!
//! The admin API (`/v1/admin/...`) needs `Authorization: Bearer <admin.key>`: no header
//! answers 401, another key 403. With no `admin.key` configured it is disabled and answers 404,
//! so that a node never runs an admin API nobody chose a key for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tether_core::{AppId, Transport};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Dispatcher;
use super::profile::Profiler;
use super::{ApiError, bearer, request_timeout};
use crate::config::{Config, Secret};
use crate::delivery::Delivery;
use crate::lifecycle::Lifecycle;
use crate::link::{Binding, Links};
use crate::store::{EmbeddedStore, StoreProblem};
use crate::webhook::Webhooks;

/// Shared state of the operations routes.
#[derive(Debug)]
pub struct Ops {
    lifecycle: Arc<Lifecycle>,
    dispatcher: Arc<Dispatcher>,
    admin_key: Option<Secret>,
    /// What the stats report on: the node's connections, its fan-out and its webhooks.
    links: Arc<dyn Links>,
    delivery: Arc<Delivery>,
    webhooks: Arc<Webhooks>,
    /// The embedded store, when it is the store (else the memory store is): its figures go
    /// into the stats.
    embedded: Option<Arc<EmbeddedStore>>,
    node: tether_core::NodeId,
    outbound_limit: usize,
    timeout: Duration,
    /// What `POST /v1/admin/reload` runs; none: the route answers 404.
    reload: Option<Arc<dyn Reload>>,
    /// `GET /v1/admin/profile`'s limit and its one slot.
    pub(super) profiler: Profiler,
}

/// Reads the configuration again and applies it (the node's reloader): what changed, or every
/// problem of a configuration that was not applied.
pub trait Reload: Send + Sync + std::fmt::Debug {
    fn reload(&self) -> Result<Value, Vec<String>>;
}

impl Ops {
    /// The routes' state; `links`, `delivery`, `webhooks` and `embedded` are what the admin
    /// stats report on.
    pub fn new(
        config: &Config,
        lifecycle: Arc<Lifecycle>,
        dispatcher: Dispatcher,
        links: Arc<dyn Links>,
        delivery: Arc<Delivery>,
        webhooks: Arc<Webhooks>,
        embedded: Option<Arc<EmbeddedStore>>,
    ) -> Self {
        Ops {
            lifecycle,
            dispatcher: Arc::new(dispatcher),
            admin_key: config.admin.key.clone(),
            links,
            delivery,
            webhooks,
            embedded,
            node: tether_core::NodeId::new(config.node.id.clone()),
            outbound_limit: config.limits.outbound_queue_bytes,
            timeout: config.limits.api_timeout,
            reload: None,
            profiler: Profiler::new(
                config.admin.profile_max_seconds,
                config.limits.api_timeout,
                config.node.id.clone(),
            ),
        }
    }

    /// Serves `POST /v1/admin/reload` with `reload`.
    pub fn with_reload(mut self, reload: Arc<dyn Reload>) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Readiness, the admin API and the dispatcher, each with its OpenAPI operation.
    pub fn routes(self: Arc<Self>) -> OpenApiRouter {
        let timeout = self.timeout;
        let dispatcher = self.dispatcher.clone().routes();
        // Merged after the timeout layer, which it would outlast: the profile bounds itself
        // (its length, then `limits.api_timeout` for the report).
        let profile = Self::profile_table().with_state(self.clone());
        Self::route_table()
            .with_state(self)
            .merge(dispatcher)
            .layer(axum::middleware::from_fn(move |request, next| {
                request_timeout(timeout, request, next)
            }))
            .merge(profile)
    }

    /// The one list of these routes (the dispatcher's and the profile's aside), each added
    /// with `routes!`.
    pub(super) fn route_table() -> OpenApiRouter<Arc<Ops>> {
        OpenApiRouter::default()
            .routes(routes!(readyz))
            .routes(routes!(drain))
            .routes(routes!(reload))
            .routes(routes!(stats))
            .routes(routes!(nodes))
    }

    /// `GET /v1/admin/profile`, which records for seconds: not under `limits.api_timeout`.
    pub(super) fn profile_table() -> OpenApiRouter<Arc<Ops>> {
        OpenApiRouter::default().routes(routes!(super::profile::profile))
    }

    /// Checks the admin bearer key.
    pub(super) fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.admin_key else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "admin_disabled",
                "the admin API is disabled: set [admin] key in the configuration",
            ));
        };
        let given = bearer(headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing Authorization: Bearer <admin key>",
            )
        })?;
        if !constant_time_eq(given.trim().as_bytes(), key.expose().as_bytes()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "wrong admin key",
            ));
        }
        Ok(())
    }
}

/// Compares without an early exit, so that the time taken does not tell how much of a guess
/// was right (the length may show).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Ops {
    /// Why the node should get no traffic now, if it should not: it drains or shuts down, or
    /// its store takes no new messages (its disk is at the reserve, or the store failed and
    /// waits for room to reopen).
    fn not_ready(&self) -> Option<&'static str> {
        if !self.lifecycle.is_ready() {
            return Some("draining");
        }
        let store = self.embedded.as_ref()?;
        store.health().problem.map(StoreProblem::reason)
    }
}

/// 200 while the node takes new clients and messages; 503 with the reason on one line while
/// it drains or shuts down, or while its store cannot take new messages. `/healthz` stays 200
/// meanwhile: the process is alive and finishing its work, or waiting for disk space, after
/// which it serves again by itself; restarting it would only drop its connections.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The node takes traffic", content_type = "text/plain",
         body = String, example = "ready\n"),
        (status = 503, description = "The node takes no traffic now: one line says why \
         (draining, shutting down, the store takes no new messages)",
         content_type = "text/plain", body = String),
        super::openapi::Common,
    ),
)]
async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    match ops.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Drains the node: it stops taking clients, tells each to reconnect elsewhere (spread over
/// `gateway.drain_spread`), and stays up for the API.
#[utoipa::path(
    post,
    path = "/v1/admin/drain",
    tag = "admin",
    responses(
        (status = 202, description = "The drain began (or was under way)",
         body = super::schema::Draining),
        super::openapi::AdminErrors,
    ),
    security(("admin_key" = [])),
)]
async fn drain(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    ops.admin(&headers)?;
    let started = ops.lifecycle.drain().await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "draining": true,
            "began": started.began,
            "connections": started.connections,
            "spread_ms": started.spread.as_millis() as u64,
        })),
    ))
}

/// Reloads the configuration: 200 with what changed, or 422 with every problem (the old
/// configuration stays).
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    tag = "admin",
    responses(
        (status = 200, description = "Reloaded: what changed", body = crate::reload::Reloaded),
        (status = 422, description = "The configuration does not load: the old one stays",
         body = super::openapi::InvalidConfig),
        super::openapi::ReloadErrors,
    ),
    security(("admin_key" = [])),
)]
async fn reload(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    ops.admin(&headers)?;
    let Some(reload) = ops.reload.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node cannot reload",
        ));
    };
    // Reads files (the configuration, public keys): off the async threads.
    let outcome = tokio::task::spawn_blocking(move || reload.reload())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the reload failed",
            )
        })?;
    match outcome {
        Ok(changed) => Ok((StatusCode::OK, Json(changed))),
        Err(problems) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "code": "invalid_config",
                "error": format!(
                    "the configuration was not reloaded ({} problems); the old one stays",
                    problems.len()
                ),
                "problems": problems,
            })),
        )),
    }
}

/// What one walk of the connection table finds.
#[derive(Debug, Default)]
struct ConnStats {
    tcp: u64,
    ws: u64,
    sse: u64,
    mqtt: u64,
    /// App -> (tcp, ws, sse, mqtt) connections bound to it.
    by_app: BTreeMap<AppId, [u64; 4]>,
    queued_bytes: u64,
    over_half: u64,
}

/// Walks the connections, one shard lock at a time.
fn conn_stats(links: &dyn Links) -> ConnStats {
    let mut s = ConnStats::default();
    links.for_each_in(0..links.shard_count(), &mut |conn| {
        let (n, i) = match conn.transport() {
            Transport::Tcp => (&mut s.tcp, 0),
            Transport::Ws => (&mut s.ws, 1),
            Transport::Sse => (&mut s.sse, 2),
            Transport::Mqtt => (&mut s.mqtt, 3),
        };
        *n += 1;
        for Binding { app, .. } in conn.bindings() {
            s.by_app.entry(app.clone()).or_default()[i] += 1;
        }
        let queued = conn.queued_bytes();
        s.queued_bytes += queued as u64;
        if queued > conn.queue_limit() / 2 {
            s.over_half += 1;
        }
    });
    s
}

/// The node's figures: connections, queues, webhooks, the store.
#[utoipa::path(
    get,
    path = "/v1/admin/stats",
    tag = "admin",
    responses(
        (status = 200, description = "The node's figures", body = super::schema::Stats),
        super::openapi::StatsErrors,
    ),
    security(("admin_key" = [])),
)]
async fn stats(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    ops.admin(&headers)?;
    let limit = ops.outbound_limit;
    // One shard lock at a time, but every connection: off the async workers.
    let links = ops.links.clone();
    let conns = tokio::task::spawn_blocking(move || conn_stats(&*links))
        .await
        .map_err(|e| {
            tracing::warn!("admin stats: counting connections failed: {e}");
            ApiError::unavailable("connections could not be counted now; retry later")
        })?;
    let by_app: BTreeMap<&str, Value> = conns
        .by_app
        .iter()
        .map(|(app, [tcp, ws, sse, mqtt])| {
            let counts = json!({ "tcp": tcp, "ws": ws, "sse": sse, "mqtt": mqtt });
            (app.as_str(), counts)
        })
        .collect();
    let fanout: BTreeMap<String, Value> = ops
        .delivery
        .fanout_queues()
        .into_iter()
        .map(|(app, queued, capacity)| {
            (
                app.to_string(),
                json!({ "queued": queued, "capacity": capacity }),
            )
        })
        .collect();
    let webhooks = ops.webhooks.stats();
    let store = match &ops.embedded {
        Some(store) => {
            let disk = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.disk_space())
                    .await
                    .ok()
                    .flatten()
            };
            let s = store.stats();
            let health = store.health();
            json!({
                "backend": "embedded",
                "disk_bytes": disk,
                "free_bytes": health.free_bytes,
                "min_free_bytes": health.reserve_bytes,
                "accepts_messages": health.problem.is_none(),
                "problem": health.problem.map(StoreProblem::reason),
                "reopens": s.reopens,
                "queued_writes": store.queued(),
                "batches": s.batches,
                "fsyncs": s.fsyncs,
                "appends": s.appends,
                "publishes": s.publishes,
            })
        }
        None => json!({ "backend": "memory" }),
    };
    Ok(Json(json!({
        "node": ops.node,
        "ready": ops.not_ready().is_none(),
        "draining": ops.lifecycle.is_draining(),
        "endpoints": ops.lifecycle.endpoints(),
        "connections": {
            "total": conns.tcp + conns.ws + conns.sse + conns.mqtt,
            "tcp": conns.tcp,
            "ws": conns.ws,
            "sse": conns.sse,
            "mqtt": conns.mqtt,
            "by_app": by_app,
        },
        "webhooks": webhooks,
        "outbound": {
            "queued_bytes": conns.queued_bytes,
            "over_half": conns.over_half,
            "limit_bytes": limit,
        },
        "fanout": fanout,
        "store": store,
    })))
}

/// Every node of the cluster (the one node, all-in-one) as the registry holds them: each one's
/// advertised endpoints, zone, state and connections as of its last announcement, and whether
/// that announcement still holds (`alive`). A node that stopped announcing is listed as not
/// alive until a live node reaps it; one that shut down cleanly is not listed.
#[utoipa::path(
    get,
    path = "/v1/admin/nodes",
    tag = "admin",
    responses(
        (status = 200, description = "The nodes, sorted by id", body = super::schema::Nodes),
        super::openapi::StatsErrors,
    ),
    security(("admin_key" = [])),
)]
async fn nodes(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    ops.admin(&headers)?;
    let nodes = ops.lifecycle.nodes().await.map_err(|e| {
        // The registry's own text (a Redis address) is for the log.
        tracing::warn!(error = %e, "admin nodes: cannot read the nodes");
        ApiError::unavailable("the node list cannot be read now; retry later")
    })?;
    let now = tether_core::now_ms();
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|n| {
            json!({
                "id": n.id,
                "endpoints": n.endpoints,
                "zone": n.zone,
                "state": if n.draining { "draining" } else { "serving" },
                "connections": n.connections,
                "max_connections": n.max_connections,
                "alive": now < n.expires_ms,
                "expires_ms": n.expires_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "node": ops.node,
        "now_ms": now,
        "nodes": nodes,
    })))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tether_core::{ConnId, DeviceId, UserId};

    use super::*;
    use crate::gateway::handle::{ConnHandle, NewConn};
    use crate::gateway::table::ConnTable;
    use crate::link::Encoding;
    use crate::session::inbox::InboxState;

    fn conn(id: u64, transport: Transport, apps: &[&str]) -> Arc<ConnHandle> {
        Arc::new(ConnHandle::new(NewConn {
            id: ConnId(id),
            transport,
            encoding: Encoding::Binary,
            device: DeviceId::from("d"),
            bindings: apps
                .iter()
                .map(|a| Binding::new(AppId::from(*a), UserId::from("u"), 0))
                .collect(),
            resume: apps.iter().map(|_| InboxState::resuming(0, 0)).collect(),
            queue_limit: 1000,
            direct: None,
            idle_limit: Duration::from_secs(30),
            now_ms: 0,
        }))
    }

    #[test]
    fn the_walk_counts_transports_apps_and_queued_bytes() {
        let table = ConnTable::new(
            metrics::counter!("test_overflows"),
            metrics::counter!("test_deliveries"),
        );
        let a = conn(1, Transport::Tcp, &["demo"]);
        let b = conn(2, Transport::Ws, &["demo", "shop"]);
        let c = conn(3, Transport::Tcp, &["shop"]);
        let d = conn(4, Transport::Sse, &["shop"]);
        let e = conn(5, Transport::Mqtt, &["demo", "shop"]);
        for conn in [&a, &b, &c, &d, &e] {
            table.insert(conn.clone());
        }
        a.enqueue(Bytes::from(vec![0; 501]));
        b.enqueue(Bytes::from(vec![0; 500]));
        c.enqueue(Bytes::from(vec![0; 10]));
        let s = conn_stats(&table);
        assert_eq!((s.tcp, s.ws, s.sse, s.mqtt), (2, 1, 1, 1));
        assert_eq!(s.by_app[&AppId::from("demo")], [1, 1, 0, 1]);
        assert_eq!(s.by_app[&AppId::from("shop")], [1, 1, 1, 1]);
        assert_eq!(s.queued_bytes, 1011);
        assert_eq!(s.over_half, 1, "past half of 1000 bytes: only the 501");
    }

    #[test]
    fn constant_time_eq_compares_whole_keys() {
        use super::constant_time_eq as eq;

        assert!(eq(b"admin-key-0123456789", b"admin-key-0123456789"));
        assert!(!eq(b"admin-key-0123456789", b"admin-key-0123456788"));
        assert!(!eq(b"admin-key", b"admin-key-0123456789"));
        assert!(!eq(b"", b"x"));
        assert!(eq(b"", b""));
    }
}
