//! The HTTP API for business servers, plus health and metrics.
//!
//! - this module: routing, authorization, errors, transient pushes, presence, kick.
//! - [`durable`]: durable (qos 1) pushes, inbox reads.
//! - [`topics`]: publish, broadcast, topic info, server-side subscriptions.
//! - [`ops`]: readiness, the dispatcher (`dispatch`) and the admin API, for clients and
//!   operators rather than business servers; with their own state and authorization.
//!
//! Every `/v1/apps/{app}/...` route needs `Authorization: Bearer <api key>`: no key or an
//! unknown one answers 401, another app's key answers 403. Errors are JSON:
//! `{"error": "...", "code": "..."}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tether_core::{
    AppId, ConnId, MessageIdGen, NodeId, Outgoing, Registry, Session, Store, UserId, validate_id,
};
use tether_proto::{Code, PayloadKind, Push};

use crate::config::{Config, StoreConfig};
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::peers::Peers;

mod dispatch;
mod durable;
pub mod ops;
mod topics;

pub use ops::Ops;

/// Shared state of the API role.
#[derive(Debug)]
pub struct Api {
    /// API key -> app.
    keys: HashMap<String, AppId>,
    registry: Arc<dyn Registry>,
    router: Arc<dyn tether_core::Router>,
    store: Arc<dyn Store>,
    store_config: StoreConfig,
    fanout: Arc<Fanout>,
    max_topics: usize,
    ids: MessageIdGen,
    metrics: Metrics,
    /// The other nodes, for publications and broadcasts.
    peers: Peers,
    max_payload: usize,
    max_users: usize,
    body_limit: usize,
    timeout: Duration,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

impl Api {
    pub fn new(
        config: &Config,
        registry: Arc<dyn Registry>,
        router: Arc<dyn tether_core::Router>,
        store: Arc<dyn Store>,
        fanout: Arc<Fanout>,
        metrics: Metrics,
    ) -> Self {
        let node = NodeId::new(config.node.id.clone());
        Api {
            peers: Peers::new(node, registry.clone(), router.clone()),
            keys: config
                .apps
                .iter()
                .map(|a| (a.api_key.expose().to_owned(), a.id.clone()))
                .collect(),
            registry,
            router,
            store,
            store_config: config.store.clone(),
            fanout,
            max_topics: config.limits.max_topics,
            ids: MessageIdGen::new(node_number(&config.node.id)),
            metrics,
            max_payload: config.limits.max_payload,
            max_users: config.limits.max_push_users,
            body_limit: config.limits.api_body_bytes,
            timeout: config.limits.api_timeout,
            prometheus: crate::metrics::prometheus(),
        }
    }

    pub fn router(self: Arc<Self>) -> Router {
        let limit = self.body_limit;
        let timeout = self.timeout;
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics))
            .route("/v1/apps/{app}/push", post(push))
            .route("/v1/apps/{app}/users/{user}/presence", get(presence))
            .route(
                "/v1/apps/{app}/users/{user}/messages",
                get(durable::messages),
            )
            .route("/v1/apps/{app}/users/{user}/kick", post(kick))
            .route(
                "/v1/apps/{app}/topics/{topic}/publish",
                post(topics::publish),
            )
            .route("/v1/apps/{app}/topics/{topic}", get(topics::info))
            .route("/v1/apps/{app}/broadcast", post(topics::broadcast))
            .route(
                "/v1/apps/{app}/users/{user}/topics",
                get(topics::user_topics),
            )
            .route(
                "/v1/apps/{app}/users/{user}/topics/{topic}",
                post(topics::subscribe_user).delete(topics::unsubscribe_user),
            )
            .layer(DefaultBodyLimit::max(limit))
            .layer(axum::middleware::from_fn(move |request, next| {
                request_timeout(timeout, request, next)
            }))
            .with_state(self)
    }

    /// Takes one message-sending request of `app` from its rate limit: 429 with `Retry-After`
    /// over it.
    fn limit(&self, app: &AppId) -> Result<(), ApiError> {
        self.fanout.check_request(app).map_err(|wait| {
            self.metrics.rate_limited.increment(1);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "over the app's request rate; retry in {} ms",
                    wait.as_millis()
                ),
            )
            .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }

    /// The payload of a message request: exactly one of `payload` (any JSON) and
    /// `payload_base64`, within the size limit.
    fn payload(
        &self,
        json: Option<Box<RawValue>>,
        base64: Option<String>,
    ) -> Result<(PayloadKind, Bytes), ApiError> {
        let (kind, payload) = match (json, base64) {
            (Some(json), None) => (PayloadKind::Json, Bytes::from(json.get().to_owned())),
            (None, Some(b64)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| ApiError::bad_request(format!("payload_base64: {e}")))?;
                (PayloadKind::Binary, Bytes::from(bytes))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of payload (any JSON) or payload_base64",
                ));
            }
        };
        if payload.len() > self.max_payload {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "payload is {} bytes; the limit is {}",
                    payload.len(),
                    self.max_payload
                ),
            ));
        }
        Ok((kind, payload))
    }

    /// Checks the bearer key against `app`.
    fn authorize(&self, headers: &HeaderMap, app: &str) -> Result<AppId, ApiError> {
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing Authorization: Bearer <api key>",
                )
            })?;
        // A HashMap lookup is not constant-time, but it only reveals whether some key exists
        // with a given hash bucket, not its bytes; keys are long and random.
        match self.keys.get(key.trim()) {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown API key",
            )),
            Some(owner) if owner.as_str() != app => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this API key belongs to another app",
            )),
            Some(owner) => Ok(owner.clone()),
        }
    }
}

/// The app of a `/v1/apps/{app}/...` route, authorized by the request's bearer key.
///
/// An extractor from the request's head, so that it runs before the body is read: a request
/// without a valid key is answered without waiting for (or buffering) its body.
struct Authorized(AppId);

impl FromRequestParts<Arc<Api>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let app = params
            .iter()
            .find(|(name, _)| name == "app")
            .map_or("", |(_, value)| value.as_str());
        api.authorize(&parts.headers, app).map(Authorized)
    }
}

/// Answers 408 when a request (its body included) takes longer than `limit`.
async fn request_timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// The 10-bit node number in message ids, derived from the node id.
fn node_number(id: &str) -> u16 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash & 0x3ff) as u16
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds, sent as `Retry-After`.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unavailable(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({ "error": self.message, "code": self.code })),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        let status = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "bad_request", e.body_text())
    }
}

/// Reads a JSON body whatever its Content-Type says: `curl -d` sends form encoding by default,
/// and a push should not fail over a header when the body is valid JSON.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.prometheus.render(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    users: Vec<String>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    /// Durable only: seconds to keep the message (default: the store's `default_ttl`).
    #[serde(default)]
    ttl: Option<u64>,
    /// Durable only: a retry with the same key within the window stores nothing new.
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn push(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: PushRequest = json_body(body)?;
    if req.qos > 1 {
        return Err(ApiError::bad_request(format!(
            "qos must be 0 or 1, not {}",
            req.qos
        )));
    }
    if req.qos == 0 && (req.ttl.is_some() || req.idempotency_key.is_some()) {
        return Err(ApiError::bad_request(
            "ttl and idempotency_key apply to durable pushes only (qos 1)",
        ));
    }
    if req.users.is_empty() || req.users.len() > api.max_users {
        return Err(ApiError::bad_request(format!(
            "users must list 1 to {} users",
            api.max_users
        )));
    }
    let mut users = Vec::with_capacity(req.users.len());
    for user in req.users {
        validate_id("user", &user).map_err(ApiError::bad_request)?;
        users.push(UserId::new(user));
    }
    users.sort_unstable();
    users.dedup();
    let (kind, payload) = api.payload(req.payload, req.payload_base64)?;
    api.limit(&app)?;
    if req.qos == 1 {
        let durable = durable::DurablePush {
            users,
            kind,
            payload,
            ttl: req.ttl,
            idempotency_key: req.idempotency_key,
        };
        return Ok(durable::push(&api, app, durable).await?.into_response());
    }
    let id = api.ids.next();
    let msg = Arc::new(Outgoing::new(Push {
        app: app.to_string(),
        msg_id: id.0,
        seq: 0,
        qos: 0,
        created_ms: tether_core::now_ms(),
        kind,
        payload,
    }));
    let sessions = api
        .registry
        .sessions(&app, &users)
        .await
        .map_err(ApiError::unavailable)?;
    let mut reached = 0;
    for (node, conns) in by_node(sessions) {
        match api.router.deliver(&node, &conns, msg.clone()).await {
            Ok(n) => reached += n,
            // Transient messages are best effort: a node that cannot be reached is skipped.
            Err(e) => tracing::warn!(%node, error = %e, "push not routed"),
        }
    }
    api.metrics.push(0);
    Ok(Json(json!({ "id": id, "connections": reached })).into_response())
}

/// The connection ids of `sessions`, grouped by the node that holds them.
pub(super) fn by_node(sessions: impl IntoIterator<Item = Session>) -> HashMap<NodeId, Vec<ConnId>> {
    let mut nodes: HashMap<NodeId, Vec<ConnId>> = HashMap::new();
    for s in sessions {
        nodes.entry(s.node).or_default().push(s.conn);
    }
    nodes
}

async fn presence(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    validate_id("user", &user).map_err(ApiError::bad_request)?;
    let user = UserId::new(user);
    let mut sessions = api
        .registry
        .sessions(&app, std::slice::from_ref(&user))
        .await
        .map_err(ApiError::unavailable)?;
    sessions.sort_by_key(|s| s.connected_at_ms);
    let cursors = api.store.cursors(&app, &user).await.map_err(|e| {
        api.metrics.store_error("cursors");
        ApiError::unavailable(e)
    })?;
    let devices: Vec<Value> = cursors
        .iter()
        .map(|(device, cursor)| {
            json!({
                "device": device,
                "acked": cursor.acked,
                "online": sessions.iter().any(|s| &s.device == device),
            })
        })
        .collect();
    let connections: Vec<Value> = sessions
        .iter()
        .map(|s| {
            json!({
                "node": s.node,
                "conn": s.conn,
                "device": s.device,
                "transport": s.transport,
                "connected_at_ms": s.connected_at_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "app": app,
        "user": user,
        "online": !connections.is_empty(),
        "connections": connections,
        "devices": devices,
    })))
}

async fn kick(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    validate_id("user", &user).map_err(ApiError::bad_request)?;
    let sessions = api
        .registry
        .sessions(&app, &[UserId::new(user)])
        .await
        .map_err(ApiError::unavailable)?;
    let mut kicked = 0;
    for (node, conns) in by_node(sessions) {
        kicked += api
            .router
            .disconnect(&node, &conns, Code::KICKED, "kicked by the application")
            .await
            .map_err(ApiError::unavailable)?;
    }
    Ok(Json(json!({ "kicked": kicked })))
}
