//! The HTTP API for business servers, plus health and metrics.
//!
//! - this module: routing, authorization, the request rate limit, bodies and payloads.
//! - [`messages`]: pushes (live and durable), inbox reads, presence, kick.
//! - [`batch`]: many single-user pushes in one request, one outcome each.
//! - [`topics`]: publish, broadcast, topic info, server-side subscriptions.
//! - [`ops`]: readiness and the admin API, for operators rather than business servers, with
//!   their own state and authorization; and `dispatch`, the dispatcher, for clients.
//! - [`profile`]: the admin API's CPU profile (`GET /v1/admin/profile`), one at a time.
//! - [`cors`]: CORS for the client-facing routes (the dispatcher; web pages call it), none
//!   for the rest.
//! - [`console`]: the web console's page at `/console`, files built into the binary; it calls
//!   the routes above with the keys an operator types in.
//! - [`error`]: [`ApiError`], and how the delivery service's errors map to statuses.
//! - [`openapi`]: the OpenAPI document (`GET /v1/openapi.json`), built with the routers from
//!   the handlers' annotations; [`schema`]: the shapes of the answers built with `json!`.
//!
//! Handlers authenticate, parse, validate and map errors; what a request does is the delivery
//! service's ([`crate::delivery`]). Every `/v1/apps/{app}/...` route needs `Authorization:
//! Bearer <api key>`: no key or an unknown one answers 401, another app's key answers 403.
//! Errors are JSON: `{"error": "...", "code": "..."}`. A client whose address the listener's
//! guard (`listen.http_access`) refuses gets `403` with the code `forbidden` on every route
//! (`guarded`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;
use tether_core::{AppId, UserId, validate_id};
use tether_proto::PayloadKind;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::Peer;
use crate::config::{Config, StoreConfig};
use crate::delivery::{Delivery, Payload};
use crate::metrics::Metrics;
use crate::rate::RequestLimit;
use crate::session::access::Shared;

mod batch;
mod console;
pub mod cors;
mod dispatch;
mod error;
mod messages;
pub mod openapi;
pub mod ops;
mod profile;
mod schema;
mod timing;
mod topics;

pub use console::router as console;
pub use cors::{Cors, HttpGuard};
pub use dispatch::Dispatcher;
pub use error::ApiError;
pub use ops::Ops;

/// Shared state of the API role.
#[derive(Debug)]
pub struct Api {
    /// Each app's API keys (and the rest of its rules), swapped by reloads.
    access: Shared,
    delivery: Arc<Delivery>,
    /// Each app's limit on requests that send messages (none: unlimited); rebuilt by a
    /// reload, buckets full again.
    requests: ArcSwap<HashMap<AppId, RequestLimit>>,
    /// The store's limits (ttl), that requests are validated against.
    store_config: StoreConfig,
    metrics: Metrics,
    max_payload: usize,
    max_users: usize,
    body_limit: usize,
    timeout: Duration,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

impl Api {
    pub fn new(config: &Config, access: Shared, delivery: Arc<Delivery>, metrics: Metrics) -> Self {
        Api {
            access,
            delivery,
            requests: ArcSwap::from_pointee(request_limits(config)),
            store_config: config.store.clone(),
            metrics,
            max_payload: config.limits.max_payload,
            max_users: config.limits.max_push_users,
            body_limit: config.limits.api_body_bytes,
            timeout: config.limits.api_timeout,
            prometheus: crate::metrics::prometheus(),
        }
    }

    /// The business API's routes, health and metrics, each with its OpenAPI operation (from
    /// its handler's `#[utoipa::path]`: see [`openapi`]).
    pub fn routes(self: Arc<Self>) -> OpenApiRouter {
        let limit = self.body_limit;
        let timeout = self.timeout;
        // One `Router::layer` for both, the timeout outside the body limit: each `Router::layer`
        // costs every request a boxed clone (see [`edge`]).
        Self::route_table()
            .layer((
                axum::middleware::from_fn(move |request, next| {
                    request_timeout(timeout, request, next)
                }),
                DefaultBodyLimit::max(limit),
            ))
            .with_state(self)
    }

    /// The one list of these routes, each added with `routes!` (never `route`), so that each
    /// is in the document.
    fn route_table() -> OpenApiRouter<Arc<Api>> {
        OpenApiRouter::default()
            .routes(routes!(healthz))
            .routes(routes!(metrics))
            .routes(routes!(messages::push))
            .routes(routes!(batch::push_batch))
            .routes(routes!(messages::presence))
            .routes(routes!(messages::messages))
            .routes(routes!(messages::kick))
            .routes(routes!(topics::publish))
            .routes(routes!(topics::info))
            .routes(routes!(topics::broadcast))
            .routes(routes!(topics::user_topics))
            .routes(routes!(topics::subscribe_user, topics::unsubscribe_user))
    }

    /// Takes one message-sending request of `app` from its rate limit: 429 with `Retry-After`
    /// over it.
    fn limit(&self, app: &AppId) -> Result<(), ApiError> {
        let requests = self.requests.load();
        let Some(limit) = requests.get(app) else {
            return Ok(());
        };
        limit.check().map_err(|wait| {
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

    /// Takes `n` message-sending requests of `app` at once (a batch of `n` pushes): 429, with
    /// `Retry-After` while a retry can pass, over the rate or beyond its burst.
    fn limit_n(&self, app: &AppId, n: usize) -> Result<(), ApiError> {
        let requests = self.requests.load();
        let Some(limit) = requests.get(app) else {
            return Ok(());
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        limit.check_n(n).map_err(|wait| {
            self.metrics.rate_limited.increment(1);
            match wait {
                Some(wait) => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "over the app's request rate ({n} pushes); retry in {} ms",
                        wait.as_millis()
                    ),
                )
                .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64),
                None => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "a batch of {n} pushes is more than the app's request burst allows                          at once; send smaller batches"
                    ),
                ),
            }
        })
    }

    /// The payload of a message request: exactly one of `payload` (any JSON) and
    /// `payload_base64`, within the size limit.
    fn payload(&self, fields: PayloadFields) -> Result<Payload, ApiError> {
        let (kind, bytes) = match (fields.json, fields.base64) {
            (Some(json), None) => (PayloadKind::Json, Bytes::from(json.get().to_owned())),
            (None, Some(b64)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|_| {
                        ApiError::bad_request(
                            "payload_base64 is not standard base64 with padding \
                             (A-Z a-z 0-9 + /, =)",
                        )
                    })?;
                (PayloadKind::Binary, Bytes::from(bytes))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of payload (any JSON) or payload_base64",
                ));
            }
        };
        if bytes.len() > self.max_payload {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "payload is {} bytes; the limit is {}",
                    bytes.len(),
                    self.max_payload
                ),
            ));
        }
        Ok(Payload { kind, bytes })
    }

    /// A request's `ttl` in seconds, checked against the store's limits, or the default.
    fn ttl(&self, ttl: Option<u64>) -> Result<Duration, ApiError> {
        let config = &self.store_config;
        match ttl {
            None => Ok(config.default_ttl),
            Some(0) => Err(ApiError::bad_request("ttl must be at least 1 second")),
            Some(secs) if Duration::from_secs(secs) > config.max_ttl => Err(ApiError::bad_request(
                format!("ttl must be at most {} seconds", config.max_ttl.as_secs()),
            )),
            Some(secs) => Ok(Duration::from_secs(secs)),
        }
    }

    /// Checks the bearer key against `app`.
    fn authorize(&self, headers: &HeaderMap, app: &str) -> Result<AppId, ApiError> {
        let key = bearer(headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing Authorization: Bearer <api key>",
            )
        })?;
        // A HashMap lookup is not constant-time, but it only reveals whether some key exists
        // with a given hash bucket, not its bytes; keys are long and random.
        match self.access.load().key(key.trim()) {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown API key",
            )),
            Some((owner, _)) if owner.as_str() != app => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this API key belongs to another app",
            )),
            Some((owner, _)) => Ok(owner.clone()),
        }
    }
}

impl Api {
    /// A reloaded configuration's request limits (the rest of what the API checks is in the
    /// shared [`Access`](crate::session::access::Access)).
    pub fn reload(&self, config: &Config) {
        self.requests.store(Arc::new(request_limits(config)));
    }
}

/// Each app's limit on requests that send messages, where it has one.
fn request_limits(config: &Config) -> HashMap<AppId, RequestLimit> {
    config
        .apps
        .iter()
        .filter_map(|app| {
            let rate = app.rate(&config.rate);
            let limit = RequestLimit::new(rate.requests_per_sec, rate.requests_burst)?;
            Some((app.id.clone(), limit))
        })
        .collect()
}

/// The token of an `Authorization: Bearer <token>` header; the scheme's name in any case
/// (RFC 9110, 11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// The two ways a request can carry a message's payload (see [`Api::payload`]).
#[derive(Debug)]
struct PayloadFields {
    json: Option<Box<RawValue>>,
    base64: Option<String>,
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

/// A user id from a route's path, validated.
fn user_id(user: String) -> Result<UserId, ApiError> {
    validate_id("user", &user).map_err(ApiError::bad_request)?;
    Ok(UserId::new(user))
}

/// The HTTP listener's OpenAPI document, without a node (tests, tools): the same routes'.
pub fn document() -> serde_json::Value {
    let routes = Api::route_table()
        .into_openapi()
        .merge_from(Ops::route_table().into_openapi())
        .merge_from(Ops::profile_table().into_openapi())
        .merge_from(Dispatcher::route_table().into_openapi());
    openapi::complete(openapi::with_document(routes))
}

/// The HTTP listener's routes: the business API, readiness, the admin API, the dispatcher,
/// `GET /v1/openapi.json` with their document, and the web console; each request timed
/// (`timing`) and behind `guard` (see `guarded`).
pub fn http_router(api: Arc<Api>, ops: Arc<Ops>, guard: HttpGuard) -> Router {
    let (router, _) = openapi::serve(api.routes().merge(ops.routes()));
    // The web console's static files: not API routes, so not in the document.
    edge(router.merge(console()), guard)
}

/// `router` with every request timed and behind the listener's guard, the timing outside so
/// that it also times the guard's refusals. Both in one `from_fn` layer: each `Router::layer`
/// wraps every route in one more boxed service, which every request clones, and each `from_fn`
/// boxes its inner service and its future again (docs/benchmarks.md, "where a push's
/// instructions went").
fn edge(router: Router, guard: HttpGuard) -> Router {
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let allowed = guarded(&guard, &request);
            timing::time(request, move |request| async move {
                if allowed {
                    next.run(request).await
                } else {
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "this address may not use this listener",
                    )
                    .into_response()
                }
            })
        },
    ))
}

/// Whether the listener's guard as last reloaded lets `request` through: a client whose
/// address it refuses gets `403`. The server must be run with
/// `into_make_service_with_connect_info::<Peer>()`: while the guard checks addresses, a
/// request without its peer's address is refused, not waved through.
fn guarded(guard: &HttpGuard, request: &Request) -> bool {
    let guard = guard.load();
    !guard.checks_ips()
        || request
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .is_some_and(|ConnectInfo(Peer(addr))| guard.check_ip(addr.ip()).is_ok())
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

/// Reads a JSON body whatever its Content-Type says: `curl -d` sends form encoding by default,
/// and a push should not fail over a header when the body is valid JSON.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A `qos` field: 0 or 1.
fn qos(qos: u8) -> Result<u8, ApiError> {
    if qos > 1 {
        return Err(ApiError::bad_request(format!(
            "qos must be 0 or 1, not {qos}"
        )));
    }
    Ok(qos)
}

/// The process is alive (see `/readyz` for whether it takes traffic).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", content_type = "text/plain", body = String,
         example = "ok\n"),
        openapi::Common,
    ),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// The node's metrics, in Prometheus' text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4",
         content_type = "text/plain", body = String),
        openapi::Common,
    ),
)]
async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&api.prometheus),
    )
}

/// `{"id": ..., ...}` answers are built with `serde_json::json!`; this keeps their type short.
type JsonAnswer = Result<Json<serde_json::Value>, ApiError>;
