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
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tether_core::{AppId, TopicId, validate_id};
use utoipa::ToSchema;

use super::{Api, ApiError, Authorized, JsonAnswer, PayloadFields, json_body, qos, user_id};

fn topic_id(topic: &str) -> Result<TopicId, ApiError> {
    validate_id("topic", topic).map_err(ApiError::bad_request)?;
    Ok(TopicId::from(topic))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest {
    /// Any JSON, delivered as a JSON payload (exactly one of `payload` and `payload_base64`;
    /// `null` counts as absent).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
    /// Bytes, standard base64 with padding, delivered as a binary payload.
    #[serde(default)]
    payload_base64: Option<String>,
    /// 0: live only; 1: first kept in the topic's history.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    qos: u8,
    /// qos 1 only: seconds the publication stays in the history (default: the store's
    /// `default_ttl`).
    #[serde(default)]
    #[schema(minimum = 1)]
    ttl: Option<u64>,
}

/// A publication to every subscriber of the topic, on every node; answered once the fan-out
/// is queued.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/topics/{topic}/publish",
    tag = "topics",
    params(super::openapi::TopicPath),
    request_body(content = PublishRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued", body = super::schema::Published),
        super::openapi::MessageErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn publish(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, topic)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> JsonAnswer {
    let topic = topic_id(&topic)?;
    let req: PublishRequest = json_body(body)?;
    let qos = qos(req.qos)?;
    if qos == 0 && req.ttl.is_some() {
        return Err(ApiError::bad_request(
            "ttl applies to publications kept in the history only (qos 1)",
        ));
    }
    let payload = api.payload(PayloadFields {
        json: req.payload,
        base64: req.payload_base64,
    })?;
    api.limit(&app)?;
    let ttl = match qos {
        1 => Some(api.ttl(req.ttl)?),
        _ => None,
    };
    let published = api.delivery.publish(&app, &topic, payload, ttl).await?;
    Ok(Json(json!({
        "id": published.id,
        "offset": published.offset,
        // On this node; `nodes`: how many other nodes it was sent to.
        "subscribers": published.subscribers,
        "nodes": published.nodes,
    })))
}

/// The topic's subscribers on this node and its history's position.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/topics/{topic}",
    tag = "topics",
    params(super::openapi::TopicPath),
    responses(
        (status = 200, description = "The topic", body = super::schema::TopicInfo),
        super::openapi::AppErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn info(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, topic)): Path<(String, String)>,
) -> JsonAnswer {
    let topic = topic_id(&topic)?;
    let info = api.delivery.topic(&app, &topic).await?;
    Ok(Json(json!({
        "app": app,
        "topic": topic,
        "subscribers": info.subscribers,
        "offset": info.head,
        // The oldest publication still held: a subscriber whose `since` is below this minus
        // one is told its history is too old.
        "earliest": info.earliest,
    })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BroadcastRequest {
    /// Any JSON, delivered as a JSON payload (exactly one of `payload` and `payload_base64`;
    /// `null` counts as absent).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
    /// Bytes, standard base64 with padding, delivered as a binary payload.
    #[serde(default)]
    payload_base64: Option<String>,
}

/// A qos 0 push to every connection bound to the app, on every node.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/broadcast",
    tag = "topics",
    params(super::openapi::AppPath),
    request_body(content = BroadcastRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Sent", body = super::schema::Sent),
        super::openapi::BroadcastErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn broadcast(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    body: Result<Bytes, BytesRejection>,
) -> JsonAnswer {
    let req: BroadcastRequest = json_body(body)?;
    let payload = api.payload(PayloadFields {
        json: req.payload,
        base64: req.payload_base64,
    })?;
    api.limit(&app)?;
    let sent = api.delivery.broadcast(&app, payload).await?;
    Ok(Json(
        json!({ "id": sent.id, "connections": sent.connections }),
    ))
}

/// The topics the business subscribed the user to.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/users/{user}/topics",
    tag = "topics",
    params(super::openapi::UserPath),
    responses(
        (status = 200, description = "The user's server-side subscriptions", body = super::schema::UserTopics),
        super::openapi::AppErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn user_topics(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user)): Path<(String, String)>,
) -> JsonAnswer {
    let user = user_id(user)?;
    let topics = api.delivery.user_topics(&app, &user).await?;
    Ok(Json(json!({ "app": app, "user": user, "topics": topics })))
}

/// Subscribes the user to the topic, now and at its later connects (kept in the store). No
/// body; no topic rule is checked.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/users/{user}/topics/{topic}",
    tag = "topics",
    params(super::openapi::UserTopicPath),
    responses(
        (status = 200, description = "Subscribed", body = super::schema::Subscription),
        super::openapi::SubscribeErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn subscribe_user(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user, topic)): Path<(String, String, String)>,
) -> JsonAnswer {
    change_subscription(&api, app, user, &topic, true).await
}

/// Unsubscribes the user from the topic, now and at its later connects.
#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/users/{user}/topics/{topic}",
    tag = "topics",
    params(super::openapi::UserTopicPath),
    responses(
        (status = 200, description = "Unsubscribed", body = super::schema::Subscription),
        super::openapi::AppErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn unsubscribe_user(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    Path((_, user, topic)): Path<(String, String, String)>,
) -> JsonAnswer {
    change_subscription(&api, app, user, &topic, false).await
}

/// A server-side (un)subscription: kept in the store, applied to the user's connections on
/// every node.
async fn change_subscription(
    api: &Api,
    app: AppId,
    user: String,
    topic: &str,
    subscribed: bool,
) -> JsonAnswer {
    let user = user_id(user)?;
    let topic = topic_id(topic)?;
    let change = api
        .delivery
        .set_subscription(&app, &user, &topic, subscribed)
        .await?;
    Ok(Json(json!({
        "app": app,
        "user": user,
        "topic": topic,
        "subscribed": subscribed,
        "changed": change.changed,
        "connections": change.connections,
    })))
}
