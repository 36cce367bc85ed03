//! `POST /v1/apps/{app}/push/batch`: many single-user pushes in one request, one outcome each.
//!
//! For business servers that send many pushes to different users (notifications, each with
//! its own text): one request, one authorization and one rate-limit check for up to
//! [`MAX_BATCH`] pushes, and the durable ones written to the store together (see
//! [`crate::delivery::BatchPush`]).
//!
//! What fails the whole request (nothing is sent): the key (401/403), a body that is not the
//! request's JSON shape or is over `limits.api_body_bytes` (400/413), no pushes or more than
//! [`MAX_BATCH`] (400/413), the app's request rate (429: a batch takes one request per push).
//! What fails one push only, answered in its place as `{code, error, status}`: its user id,
//! payload, qos, ttl or idempotency key, and what the store or the cluster answered for it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tether_core::MessageId;
use utoipa::ToSchema;

use super::messages::check_idempotency_key;
use super::{Api, ApiError, Authorized, PayloadFields, json_body, qos, user_id};
use crate::delivery::{BatchPush, BatchSent, Durability};

/// Most pushes in one batch request.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PushBatchRequest {
    /// 1 to 1000 pushes, each to one user; answered in this order.
    #[schema(min_items = 1, max_items = 1000)]
    pushes: Vec<PushBatchItem>,
}

/// One push of a batch: the fields of `POST /v1/apps/{app}/push`, with one `user`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PushBatchItem {
    #[schema(value_type = super::openapi::Id)]
    user: String,
    /// Any JSON, delivered as a JSON payload (exactly one of `payload` and `payload_base64`;
    /// `null` counts as absent).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
    /// Bytes, standard base64 with padding, delivered as a binary payload.
    #[serde(default)]
    payload_base64: Option<String>,
    /// 0: live only; 1: stored in the user's inbox before the answer.
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

/// The answer: one outcome per push, in the request's order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PushBatchAnswer {
    results: Vec<PushBatchResult>,
}

/// One push's outcome: sent (qos 0), stored (qos 1), or why it failed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum PushBatchResult {
    Live(BatchLive),
    Durable(BatchDurable),
    Failed(BatchFailed),
}

/// A live push of a batch, sent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchLive {
    /// The message's id (`push.msg_id`), a decimal string.
    #[schema(value_type = String)]
    id: MessageId,
    /// Connections it was handed to (for another node: sent to).
    connections: usize,
}

/// A durable push of a batch, stored in the user's inbox.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchDurable {
    /// The message's id (`push.msg_id`), a decimal string.
    #[schema(value_type = String)]
    id: MessageId,
    /// The user's seq for the message.
    seq: u64,
    /// Connections it was handed to (for another node: sent to).
    connections: usize,
    /// The `idempotency_key` was already stored: nothing new was.
    duplicate: bool,
}

/// A push of a batch that failed: what a single push would have answered, with its status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchFailed {
    /// A stable code, as in the error answers (docs/protocol.md, 12.2).
    code: &'static str,
    error: String,
    /// The HTTP status a single push would have answered.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
}

impl From<ApiError> for PushBatchResult {
    fn from(e: ApiError) -> Self {
        let (status, code, message) = e.parts();
        PushBatchResult::Failed(BatchFailed {
            code,
            error: message.to_owned(),
            status: status.as_u16(),
        })
    }
}

impl From<BatchSent> for PushBatchResult {
    fn from(sent: BatchSent) -> Self {
        match sent.stored {
            Some((seq, duplicate)) => PushBatchResult::Durable(BatchDurable {
                id: sent.id,
                seq: seq.0,
                connections: sent.connections,
                duplicate,
            }),
            None => PushBatchResult::Live(BatchLive {
                id: sent.id,
                connections: sent.connections,
            }),
        }
    }
}

/// Many single-user pushes, each live (qos 0) or durable (qos 1), answered together once the
/// durable ones are stored; each push succeeds or fails on its own.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/push/batch",
    tag = "messages",
    params(super::openapi::AppPath),
    request_body(content = PushBatchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One outcome per push, in order", body = PushBatchAnswer),
        super::openapi::BatchErrors,
    ),
    security(("api_key" = [])),
)]
pub(super) async fn push_batch(
    State(api): State<Arc<Api>>,
    Authorized(app): Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PushBatchAnswer>, ApiError> {
    let req: PushBatchRequest = json_body(body)?;
    let n = req.pushes.len();
    if n == 0 {
        return Err(ApiError::bad_request("pushes must list 1 or more pushes"));
    }
    if n > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("the batch has {n} pushes; the most is {MAX_BATCH}"),
        ));
    }
    // Each push checked on its own: one that is not valid fails alone.
    let mut results: Vec<Option<PushBatchResult>> = Vec::with_capacity(n);
    let mut valid = Vec::with_capacity(n);
    for item in req.pushes {
        match validate(&api, item) {
            Ok(push) => {
                valid.push(push);
                results.push(None);
            }
            Err(e) => results.push(Some(e.into())),
        }
    }
    if !valid.is_empty() {
        api.limit_n(&app, valid.len())?;
    }
    let mut outcomes = api.delivery.push_batch(&app, valid).await.into_iter();
    let results = results
        .into_iter()
        .map(|r| match r {
            Some(failed) => failed,
            None => match outcomes.next() {
                Some(Ok(sent)) => sent.into(),
                Some(Err(e)) => ApiError::from(e).into(),
                None => ApiError::unavailable("the push was not answered").into(),
            },
        })
        .collect();
    Ok(Json(PushBatchAnswer { results }))
}

/// One push of a batch, checked as a single push's fields are.
fn validate(api: &Api, item: PushBatchItem) -> Result<BatchPush, ApiError> {
    let qos = qos(item.qos)?;
    if qos == 0 && (item.ttl.is_some() || item.idempotency_key.is_some()) {
        return Err(ApiError::bad_request(
            "ttl and idempotency_key apply to durable pushes only (qos 1)",
        ));
    }
    let user = user_id(item.user)?;
    let payload = api.payload(PayloadFields {
        json: item.payload,
        base64: item.payload_base64,
    })?;
    let durable = if qos == 1 {
        let ttl = api.ttl(item.ttl)?;
        check_idempotency_key(item.idempotency_key.as_deref())?;
        Some(Durability {
            ttl,
            idempotency_key: item.idempotency_key,
        })
    } else {
        None
    };
    Ok(BatchPush {
        user,
        payload,
        durable,
    })
}
