//! Messages to users, and what the business can ask about them.
//!
//! - `POST /v1/apps/{app}/push`: live (qos 0) or durable (qos 1: stored in each user's inbox
//!   before the answer).
//! - `GET /v1/apps/{app}/users/{user}/messages?after=SEQ&limit=N`: the user's held durable
//!   messages, for business-side pulls.
//! - `GET /v1/apps/{app}/users/{user}/presence`; `POST /v1/apps/{app}/users/{user}/kick`
//!   (`?device=D`: one device's connections only).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tether_core::store::StoredMessage;
use tether_core::{DeviceId, MessageId, Seq, UserId, validate_id};
use tether_proto::PayloadKind;
use utoipa::{IntoParams, ToSchema};

use super::{Api, ApiError, Authorized, JsonAnswer, PayloadFields, json_body, qos, user_id};
use crate::delivery::{DurablePush, Stored};

/// Longest idempotency key, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Most messages one inbox read returns.
const MAX_READ: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PushRequest {
    /// 1 to `limits.max_push_users` user ids; a user named twice gets it once.
    #[schema(value_type = Vec<super::openapi::Id>, min_items = 1)]
    users: Vec<String>,
    /// Any JSON, delivered as a JSON payload (exactly one of `payload` and `payload_base64`;
    /// `null` counts as absent).
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    payload: Option<Box<RawValue>>,
    /// Bytes, standard base64 with padding, delivered as a binary payload.
    #[serde(default)]
    payload_base64: Option<String>,
    /// 0: live only; 1: stored in each user's inbox before the answer.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    qos: u8,
    /// Durable only: seconds to keep the message (default: the store's `default_ttl`).
    #[serde(default)]
    #[schema(minimum = 1)]
    ttl: Option<u64>,
    /// Durable only: a retry with the same key within the window stores nothing new.
    #[serde(default)]
    #[schema(min_length = 1)]
    idempotency_key: Option<String>,
}

/// A message to users: live to their open connections (qos 0), or first stored in each
/// user's inbox (qos 1: answered once durable).
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/push",
    tag = "messages",
    params(super::openapi::AppPath),
    request_body(content = PushRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Sent (qos 0) or stored (qos 1)", body = super::schema::PushResult),
        super::openapi::MessageErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn push(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: PushRequest = json_body(body)?;
    let qos = qos(req.qos)?;
    if qos == 0 && (req.ttl.is_some() || req.idempotency_key.is_some()) {
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
        users.push(user_id(user)?);
    }
    users.sort_unstable();
    users.dedup();
    let payload = api.payload(PayloadFields {
        json: req.payload,
        base64: req.payload_base64,
    })?;
    api.limit(&app)?;
    if qos == 0 {
        let pushed = api.delivery.push(&app, &users, payload).await?;
        let answer = json!({ "id": pushed.id, "connections": pushed.connections });
        return Ok(Json(answer).into_response());
    }
    let ttl = api.ttl(req.ttl)?;
    check_idempotency_key(req.idempotency_key.as_deref())?;
    let durable = DurablePush {
        users,
        payload,
        ttl,
        idempotency_key: req.idempotency_key,
    };
    let stored = api.delivery.push_durable(&app, durable).await?;
    Ok(Json(PushAnswer::from(stored)).into_response())
}

/// An `idempotency_key`, if any: 1 to [`MAX_IDEMPOTENCY_KEY`] bytes.
pub(super) fn check_idempotency_key(key: Option<&str>) -> Result<(), ApiError> {
    match key {
        Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY => {
            Err(ApiError::bad_request(format!(
                "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
            )))
        }
        _ => Ok(()),
    }
}

/// The answer to a durable push: `{"id", "seqs": {user: seq, ...}, "connections",
/// "duplicate"}`, serialized straight from the store's answer rather than through a JSON tree
/// (which costs a string and a map node per user).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PushAnswer {
    /// The message's id (`push.msg_id`), a decimal string.
    #[schema(value_type = String)]
    id: MessageId,
    /// Each user's seq for the message.
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    seqs: Seqs,
    /// Connections the push was handed to (for another node: sent to).
    connections: usize,
    /// The `idempotency_key` was already stored: nothing new was.
    duplicate: bool,
}

impl From<Stored> for PushAnswer {
    fn from(stored: Stored) -> Self {
        PushAnswer {
            id: stored.appended.id,
            seqs: Seqs(stored.appended.seqs),
            connections: stored.connections,
            duplicate: stored.appended.duplicate,
        }
    }
}

/// Each user's seq, as a JSON object in the order of the append (users sorted).
#[derive(Debug)]
struct Seqs(Vec<(UserId, Seq)>);

impl Serialize for Seqs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (user, seq) in &self.0 {
            map.serialize_entry(user, seq)?;
        }
        map.end()
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReadQuery {
    /// The messages after this seq (default 0).
    #[serde(default)]
    after: u64,
    /// At most this many (1 to 1000, default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// `GET /v1/apps/{app}/users/{user}/messages?after=SEQ&limit=N`: the held messages after
/// `after`, oldest first, for business-side pulls. `next_after` is where the next page starts.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{user}/messages",
    tag = "messages",
    params(super::openapi::UserPath, ReadQuery),
    responses(
        (status = 200, description = "A page of held messages, oldest first", body = super::schema::Inbox),
        super::openapi::AppErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn messages(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user)): Path<(String, String)>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> JsonAnswer {
    let user = user_id(user)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_READ).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_READ}"
        )));
    }
    let page = api
        .delivery
        .messages(&app, &user, query.after, limit)
        .await?;
    let next_after = page.messages.last().map_or(query.after, |m| m.seq.0);
    let messages: Vec<Value> = page.messages.iter().map(message_json).collect();
    Ok(Json(json!({
        "app": app,
        "user": user,
        "head": page.head,
        "next_after": next_after,
        "messages": messages,
    })))
}

/// A stored message as the API shows it: a JSON payload embedded as-is, anything else as
/// base64 (the same rule as the wire protocol's JSON encoding).
fn message_json(m: &StoredMessage) -> Value {
    let mut v = json!({
        "seq": m.seq,
        "id": m.id,
        "created_ms": m.created_ms,
        "expires_ms": m.expires_ms,
    });
    let embedded = (m.kind == PayloadKind::Json)
        .then(|| serde_json::from_slice::<Value>(&m.payload).ok())
        .flatten();
    match embedded {
        Some(payload) => v["payload"] = payload,
        None => {
            v["payload_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&m.payload))
        }
    }
    v
}

/// The user's connections on every node, and each device's position in the inbox.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{user}/presence",
    tag = "messages",
    params(super::openapi::UserPath),
    responses(
        (status = 200, description = "The user's presence", body = super::schema::Presence),
        super::openapi::AppErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn presence(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user)): Path<(String, String)>,
) -> JsonAnswer {
    let user = user_id(user)?;
    let presence = api.delivery.presence(&app, &user).await?;
    let sessions = &presence.sessions;
    let devices: Vec<Value> = presence
        .cursors
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct KickQuery {
    /// Only this device's connections (its `connect.device`); without it, every connection of
    /// the user.
    #[serde(default)]
    #[param(value_type = Option<super::openapi::Id>)]
    device: Option<String>,
}

/// Closes each of the user's connections, or those of one device (`?device=`), with
/// `disconnect` 4207 `kicked`, on every node. No body.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/users/{user}/kick",
    tag = "messages",
    params(super::openapi::UserPath, KickQuery),
    responses(
        (status = 200, description = "The connections closed", body = super::schema::Kicked),
        super::openapi::AppErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn kick(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user)): Path<(String, String)>,
    query: Result<Query<KickQuery>, QueryRejection>,
) -> JsonAnswer {
    let user = user_id(user)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let device = match q.device {
        Some(device) => {
            validate_id("device", &device).map_err(ApiError::bad_request)?;
            Some(DeviceId::new(device))
        }
        None => None,
    };
    let kicked = api.delivery.kick(&app, &user, device.as_ref()).await?;
    Ok(Json(json!({ "kicked": kicked })))
}
