//! Durable (qos 1) pushes and inbox reads.
//!
//! A durable push is stored first and routed second: the API answers 200 only once every
//! user's inbox holds the message (as durable as the store's mode promises), then hands it to
//! the users' connections. A connection that misses it live gets it from the store (see
//! `gateway::inbox`), so a failed route loses nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tether_core::store::{Append, Appended, Idempotency, NewMessage, StoredMessage};
use tether_core::{AppId, MessageId, Outgoing, Seq, StoreError, UserId, validate_id};
use tether_proto::{PayloadKind, Push};

use super::{Api, ApiError, Authorized};
use crate::config::StoreConfig;

/// Longest idempotency key, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Most messages one inbox read returns.
const MAX_READ: usize = 1000;

/// A validated durable push, before the store sees it.
#[derive(Debug)]
pub(super) struct DurablePush {
    /// Distinct, validated users.
    pub users: Vec<UserId>,
    pub kind: PayloadKind,
    pub payload: Bytes,
    /// Seconds.
    pub ttl: Option<u64>,
    pub idempotency_key: Option<String>,
}

/// A request's `ttl` in seconds, checked against the store's limits, or the default.
pub(super) fn ttl(config: &StoreConfig, ttl: Option<u64>) -> Result<Duration, ApiError> {
    match ttl {
        None => Ok(config.default_ttl),
        Some(0) => Err(ApiError::bad_request("ttl must be at least 1 second")),
        Some(secs) if Duration::from_secs(secs) > config.max_ttl => Err(ApiError::bad_request(
            format!("ttl must be at most {} seconds", config.max_ttl.as_secs()),
        )),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// The answer to a durable push: `{"id", "seqs": {user: seq, ...}, "connections",
/// "duplicate"}`, serialized straight from the store's answer rather than through a JSON tree
/// (which costs a string and a map node per user).
#[derive(Debug, Serialize)]
pub(super) struct PushAnswer {
    id: MessageId,
    seqs: Seqs,
    connections: usize,
    duplicate: bool,
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

/// Stores `p` in each user's inbox, then routes it to their connections.
pub(super) async fn push(
    api: &Api,
    app: AppId,
    p: DurablePush,
) -> Result<Json<PushAnswer>, ApiError> {
    let config = &api.store_config;
    let ttl = ttl(config, p.ttl)?;
    if let Some(key) = &p.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
    {
        return Err(ApiError::bad_request(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    let now = tether_core::now_ms();
    let message = NewMessage {
        id: api.ids.next(),
        created_ms: now,
        expires_ms: now.saturating_add(ttl.as_millis() as u64),
        kind: p.kind,
        payload: p.payload,
    };
    let append = Append {
        app: app.clone(),
        users: p.users,
        message: message.clone(),
        idempotency: p.idempotency_key.map(|key| Idempotency {
            key,
            expires_ms: now.saturating_add(config.idempotency_window.as_millis() as u64),
        }),
    };
    let appended = api.store.append(append).await.map_err(|e| {
        api.metrics.store_error("append");
        store_error(e)
    })?;
    // A duplicate is routed too: a connection that has the seq already drops it, and a retry
    // of an append that failed part-way (the Redis store appends user by user) reaches live the
    // users the first attempt missed.
    let reached = route(api, &app, &appended, &message).await;
    api.metrics.push(1);
    Ok(Json(PushAnswer {
        id: appended.id,
        seqs: Seqs(appended.seqs),
        connections: reached,
        duplicate: appended.duplicate,
    }))
}

/// Hands a stored message to the connections of its users; returns how many took it.
///
/// Best effort: whatever is not routed here reaches the client from its inbox.
async fn route(api: &Api, app: &AppId, appended: &Appended, message: &NewMessage) -> usize {
    let users: Vec<UserId> = appended.seqs.iter().map(|(u, _)| u.clone()).collect();
    let mut sessions = match api.registry.sessions(app, &users).await {
        Ok(sessions) => sessions,
        Err(e) => {
            tracing::warn!(error = %e, "durable push stored but not routed");
            return 0;
        }
    };
    // Grouped by user, then node, with no map per user or per node: most users of a push
    // have one or two sessions.
    sessions.sort_unstable_by(|a, b| (&a.user, &a.node).cmp(&(&b.user, &b.node)));
    let seqs: HashMap<&UserId, Seq> = appended.seqs.iter().map(|(u, s)| (u, *s)).collect();
    let mut conns = Vec::new();
    let mut reached = 0;
    for user_sessions in sessions.chunk_by(|a, b| a.user == b.user) {
        let Some(seq) = seqs.get(&user_sessions[0].user) else {
            continue;
        };
        // Each inbox has its own seq, so each user gets its own frame; the devices of one user
        // share it.
        let msg = Arc::new(Outgoing::new(Push {
            app: app.to_string(),
            msg_id: appended.id.0,
            seq: seq.0,
            qos: 1,
            created_ms: appended.created_ms,
            kind: message.kind,
            payload: message.payload.clone(),
        }));
        for on_node in user_sessions.chunk_by(|a, b| a.node == b.node) {
            let node = &on_node[0].node;
            conns.clear();
            conns.extend(on_node.iter().map(|s| s.conn));
            match api.router.deliver(node, &conns, msg.clone()).await {
                Ok(n) => reached += n,
                Err(e) => tracing::warn!(%node, error = %e, "durable push not routed"),
            }
        }
    }
    reached
}

pub(super) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Overloaded(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("{e}; retry later"),
        )
        .retry_after(1),
        StoreError::Unavailable(_) => ApiError::unavailable(e).retry_after(1),
        StoreError::Corrupt(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/apps/{app}/users/{user}/messages?after=SEQ&limit=N`: the held messages after
/// `after`, oldest first, for business-side pulls. `next_after` is where the next page starts.
pub(super) async fn messages(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user)): Path<(String, String)>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    validate_id("user", &user).map_err(ApiError::bad_request)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_READ).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_READ}"
        )));
    }
    let user = UserId::new(user);
    let page = api
        .store
        .read(&app, &user, Seq(query.after), limit, tether_core::now_ms())
        .await
        .map_err(|e| {
            api.metrics.store_error("read");
            store_error(e)
        })?;
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
