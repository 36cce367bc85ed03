//! Topics and broadcast over the API.
//!
//! - `POST /v1/apps/{app}/topics/{topic}/publish`: qos 0 (live only) or qos 1 (kept in the
//!   topic's history first). Answers once the fan-out is queued, not when it is delivered.
//! - `GET /v1/apps/{app}/topics/{topic}`: subscribers on this node and the history's position.
//! - `POST /v1/apps/{app}/broadcast`: every connection bound to the app.
//! - `GET /v1/apps/{app}/users/{user}/topics`; `POST` and `DELETE`
//!   `/v1/apps/{app}/users/{user}/topics/{topic}`: server-side subscriptions, kept in the store
//!   and applied to the user's connections now and when they connect later.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tether_core::store::NewMessage;
use tether_core::{
    AppId, NodeMessage, Outgoing, Seq, SubscriptionError, TopicId, UserId, validate_id,
};
use tether_proto::{Publication, Push};

use super::durable::{store_error, ttl};
use super::{Api, ApiError, Authorized, json_body};
use crate::fanout::{Busy, Job};

fn topic_id(topic: &str) -> Result<TopicId, ApiError> {
    validate_id("topic", topic).map_err(ApiError::bad_request)?;
    Ok(TopicId::from(topic))
}

fn busy(api: &Api, _: Busy) -> ApiError {
    api.metrics.fanout_busy.increment(1);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the app's fan-out queue is full; retry later",
    )
    .retry_after(1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest {
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    /// qos 1 only: seconds the publication stays in the history (default: the store's
    /// `default_ttl`).
    #[serde(default)]
    ttl: Option<u64>,
}

pub(super) async fn publish(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, topic)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let topic = topic_id(&topic)?;
    let req: PublishRequest = json_body(body)?;
    if req.qos > 1 {
        return Err(ApiError::bad_request(format!(
            "qos must be 0 or 1, not {}",
            req.qos
        )));
    }
    if req.qos == 0 && req.ttl.is_some() {
        return Err(ApiError::bad_request(
            "ttl applies to publications kept in the history only (qos 1)",
        ));
    }
    let (kind, payload) = api.payload(req.payload, req.payload_base64)?;
    api.limit(&app)?;
    let ttl = match req.qos {
        1 => Some(ttl(&api.store_config, req.ttl)?),
        _ => None,
    };
    // Room in the fan-out queue first: a publication is never stored without its fan-out.
    let room = api.fanout.reserve(&app).map_err(|b| busy(&api, b))?;
    // Storing and queueing run in their own task: a request cancelled in between (a client
    // that hangs up, the request timeout) must not leave a stored publication unsent. The
    // reserved room bounds these tasks.
    let done = tokio::spawn({
        let api = api.clone();
        async move {
            let id = api.ids.next();
            let now = tether_core::now_ms();
            let offset = match ttl {
                Some(ttl) => {
                    let message = NewMessage {
                        id,
                        created_ms: now,
                        expires_ms: now.saturating_add(ttl.as_millis() as u64),
                        kind,
                        payload: payload.clone(),
                    };
                    api.store.publish(&app, &topic, message).await?.0
                }
                None => 0,
            };
            let msg = Arc::new(Outgoing::publication(Publication {
                app: app.to_string(),
                topic: topic.to_string(),
                offset,
                msg_id: id.0,
                created_ms: now,
                kind,
                payload,
            }));
            let subscribers = api.fanout.subscribers(&app, &topic);
            room.send(Job::Publish {
                topic: topic.clone(),
                offset,
                msg: msg.clone(),
            });
            // Every other node fans it out to its own subscribers (once per node).
            let remote = NodeMessage::Publish {
                app,
                topic,
                offset,
                msg,
            };
            let nodes = api.peers.send_to_others(remote).await;
            Ok::<_, tether_core::StoreError>((id, offset, subscribers, nodes))
        }
    });
    let (id, offset, subscribers, nodes) = done
        .await
        .map_err(|e| ApiError::unavailable(format!("publish failed: {e}")))?
        .map_err(|e| {
            api.metrics.store_error("publish");
            store_error(e)
        })?;
    api.metrics.publish(req.qos);
    Ok(Json(json!({
        "id": id,
        "offset": (offset != 0).then_some(offset),
        // On this node; `nodes`: how many other nodes it was sent to.
        "subscribers": subscribers,
        "nodes": nodes,
    })))
}

pub(super) async fn info(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, topic)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let topic = topic_id(&topic)?;
    let page = api
        .store
        .history(&app, &topic, Seq(0), 1, tether_core::now_ms())
        .await
        .map_err(|e| {
            api.metrics.store_error("history");
            store_error(e)
        })?;
    Ok(Json(json!({
        "app": app,
        "topic": topic,
        "subscribers": api.fanout.subscribers(&app, &topic),
        "offset": page.head,
        // The oldest publication still held: a subscriber whose `since` is below this minus
        // one is told its history is too old.
        "earliest": page.messages.first().map(|m| m.seq),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BroadcastRequest {
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    payload_base64: Option<String>,
}

pub(super) async fn broadcast(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: BroadcastRequest = json_body(body)?;
    let (kind, payload) = api.payload(req.payload, req.payload_base64)?;
    api.limit(&app)?;
    let connections = api
        .registry
        .app_session_count(&app)
        .await
        .map_err(ApiError::unavailable)?;
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
    api.fanout
        .submit(&app, Job::Broadcast { msg: msg.clone() })
        .map_err(|b| busy(&api, b))?;
    api.peers
        .send_to_others(NodeMessage::Broadcast {
            app: app.clone(),
            msg,
        })
        .await;
    counter_broadcast();
    Ok(Json(json!({ "id": id, "connections": connections })))
}

fn counter_broadcast() {
    metrics::counter!("tether_broadcasts_total").increment(1);
}

pub(super) async fn user_topics(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    validate_id("user", &user).map_err(ApiError::bad_request)?;
    let user = UserId::new(user);
    let topics = api.store.subscriptions(&app, &user).await.map_err(|e| {
        api.metrics.store_error("subscriptions");
        store_error(e)
    })?;
    Ok(Json(json!({ "app": app, "user": user, "topics": topics })))
}

pub(super) async fn subscribe_user(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user, topic)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    change_subscription(&api, app, &user, &topic, true).await
}

pub(super) async fn unsubscribe_user(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user, topic)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    change_subscription(&api, app, &user, &topic, false).await
}

/// Records a server-side (un)subscription, then applies it to the user's connections on every
/// node (a node that misses it applies it at the user's next connect, from the store).
async fn change_subscription(
    api: &Api,
    app: AppId,
    user: &str,
    topic: &str,
    subscribed: bool,
) -> Result<Json<Value>, ApiError> {
    validate_id("user", user).map_err(ApiError::bad_request)?;
    let user = UserId::from(user);
    let topic = topic_id(topic)?;
    let changed = api
        .store
        .set_subscription(&app, &user, &topic, subscribed, api.max_topics)
        .await
        .map_err(|e| match e {
            SubscriptionError::TooMany(n) => ApiError::new(
                StatusCode::CONFLICT,
                "limit",
                format!("the user already has {n} topics"),
            ),
            SubscriptionError::Store(e) => {
                api.metrics.store_error("subscription");
                store_error(e)
            }
        })?;
    let sessions = api
        .registry
        .sessions(&app, std::slice::from_ref(&user))
        .await
        .map_err(ApiError::unavailable)?;
    let mut connections = 0;
    for (node, conns) in super::by_node(sessions) {
        let msg = NodeMessage::Subscription {
            app: app.clone(),
            topic: topic.clone(),
            conns,
            subscribed,
        };
        // Local: how many changed. Remote: 1 when sent (it is applied there).
        match api.router.send(&node, msg).await {
            Ok(n) => connections += n,
            Err(e) => tracing::warn!(%node, error = %e, "subscription not sent to a node"),
        }
    }
    Ok(Json(json!({
        "app": app,
        "user": user,
        "topic": topic,
        "subscribed": subscribed,
        "changed": changed,
        "connections": connections,
    })))
}
