//! `GET /v1/dispatch`: the gateway endpoints a client should try, in order.
//!
//! Public to clients, so it asks for what a client has anyway: a valid token of the app
//! (`Authorization: Bearer <client token>` or `?token=`), whose user must be the one asked
//! about. Without it, anyone could map the cluster's nodes, or learn which node holds a given
//! user.
//!
//! Client-facing: web pages call it, with CORS ([`super::Cors`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tether_core::{Registry, Transport, auth};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, Cors, bearer};
use crate::config::{Config, DispatchConfig};
use crate::dispatch::order;
use crate::session::access::Shared;

/// What the dispatcher answers from.
#[derive(Debug)]
pub struct Dispatcher {
    registry: Arc<dyn Registry>,
    /// App id -> token secret, for the client's token.
    access: Shared,
    config: DispatchConfig,
    cors: Arc<Cors>,
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        access: Shared,
        registry: Arc<dyn Registry>,
        cors: Arc<Cors>,
    ) -> Self {
        Dispatcher {
            registry,
            access,
            config: config.dispatch,
            cors,
        }
    }

    /// `GET /v1/dispatch`, client-facing (CORS), with its OpenAPI operation.
    pub fn routes(self: Arc<Self>) -> OpenApiRouter {
        let cors = self.cors.clone();
        let (router, doc) = Self::route_table().with_state(self).split_for_parts();
        OpenApiRouter::with_openapi(doc).merge(cors.client_facing(router).into())
    }

    /// The one list of these routes, each added with `routes!`.
    pub(super) fn route_table() -> OpenApiRouter<Arc<Dispatcher>> {
        OpenApiRouter::default().routes(routes!(dispatch))
    }
}

/// Most endpoints a client may report failed in one request.
const MAX_FAILED: usize = 32;

/// Other parameters are ignored: pages add their own (a cache-buster such as `_=`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DispatchQuery {
    /// The app the client binds to.
    app: String,
    /// Optional: the token names the user; when given, it must be the token's.
    #[serde(default)]
    user: Option<String>,
    /// The client token, when not in `Authorization` (the `client_token_query` scheme).
    #[serde(default)]
    #[param(ignore)]
    token: Option<String>,
    /// Comma-separated endpoint URLs the client could not connect to.
    #[serde(default)]
    failed: Option<String>,
    /// `tcp`, `ws` or `mqtt`: only that transport's endpoints. Without it, every endpoint of
    /// tether's own protocol (`tcp`, `ws`), and none of MQTT's.
    #[serde(default)]
    #[param(value_type = Option<super::schema::EndpointTransport>)]
    transport: Option<String>,
    /// The client's zone: nodes of that zone come first.
    #[serde(default)]
    #[param(max_length = 64)]
    zone: Option<String>,
}

/// The gateway endpoints a client should try, in order (docs/protocol.md, section 11).
#[utoipa::path(
    get,
    path = "/v1/dispatch",
    tag = "clients",
    params(DispatchQuery),
    responses(
        (status = 200, description = "The endpoints to try, in order", body = super::schema::Dispatched,
         headers(("Cache-Control" = String, description = "`no-store`"))),
        super::openapi::DispatchErrors,
    ),
    security(("client_token" = []), ("client_token_query" = [])),
)]
async fn dispatch(
    State(ops): State<Arc<Dispatcher>>,
    headers: HeaderMap,
    query: Result<Query<DispatchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Some(token) = bearer(&headers).or(q.token.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a client token of the app is needed: Authorization: Bearer <token>, or ?token=",
        ));
    };
    let access = ops.access.load();
    let Some((app, rules)) = access.app(&q.app) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("unknown app {:?}", tether_core::echo_id(&q.app)),
        ));
    };
    let grant = rules.tokens.verify(app, token.trim()).map_err(|e| {
        let code = match e {
            auth::TokenError::Expired => "token_expired",
            auth::TokenError::Invalid(_) => "bad_token",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    })?;
    let user = grant.user;
    if let Some(asked) = &q.user
        && asked != user.as_str()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token is for another user",
        ));
    }
    let failed: Vec<String> = q
        .failed
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if failed.len() > MAX_FAILED {
        return Err(ApiError::bad_request(format!(
            "failed lists at most {MAX_FAILED} endpoints"
        )));
    }
    let transport = match q.transport.as_deref() {
        None | Some("") => None,
        Some("tcp") => Some(Transport::Tcp),
        Some("ws") => Some(Transport::Ws),
        Some("mqtt") => Some(Transport::Mqtt),
        Some(_) => return Err(ApiError::bad_request("transport is tcp, ws or mqtt")),
    };
    let nodes = ops
        .registry
        .nodes(tether_core::now_ms())
        .await
        .map_err(|e| {
            // The registry's own text (a Redis address, its error) is for the log, not for
            // clients.
            tracing::warn!(error = %e, "dispatch: cannot read the nodes");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the node list cannot be read now; retry later, or try the endpoints you had",
            )
            .retry_after(1)
        })?;
    let zone = q.zone.as_deref().filter(|z| !z.is_empty());
    if zone.is_some_and(|z| z.len() > 64) {
        return Err(ApiError::bad_request("zone is at most 64 bytes"));
    }
    let endpoints = order(
        &nodes,
        app.as_str(),
        user.as_str(),
        &failed,
        transport,
        zone,
    );
    if endpoints.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_endpoints",
            "no node can take this client now (every node drains, or failed for it); retry later",
        )
        .retry_after(1));
    }
    let d = &ops.config;
    let body = json!({
        "app": app,
        "user": user,
        "endpoints": endpoints,
        "reconnect": {
            "initial_ms": d.reconnect_initial.as_millis() as u64,
            "max_ms": d.reconnect_max.as_millis() as u64,
            "jitter": d.reconnect_jitter,
        },
    });
    // An answer is for this client, now: proxies must not share or keep it.
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}
