//! The API's errors: a status, a stable code and a message, as `{"error": "...", "code":
//! "..."}`, with `Retry-After` where a retry may succeed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tether_core::StoreError;

use crate::delivery::DeliveryError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds, sent as `Retry-After`.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Its status, code and message: what a batch answers for one of its pushes.
    pub(super) fn parts(&self) -> (StatusCode, &'static str, &str) {
        (self.status, self.code, &self.message)
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn unavailable(message: impl std::fmt::Display) -> Self {
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

/// A body that could not be read: too large for `limits.api_body_bytes` (the same code as a
/// payload over its own limit), or cut short. In our words, not the HTTP stack's.
impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this node takes (limits.api_body_bytes)",
            ),
            _ => ApiError::bad_request("the request body could not be read in full"),
        }
    }
}

/// Store errors the API answered, logged at most once a second.
static STORE_ERRORS: LogLimit = LogLimit::new(Duration::from_secs(1));

/// The store's own words (the engine's error, a Redis reply) go to the log, not to clients:
/// they tell an operator what broke, and a client only what it can do about it.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("{e}; retry later"),
            )
            .retry_after(1),
            StoreError::Full(_) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                "the node's disk is nearly full: it stores no new messages until space is freed; \
                 nothing was stored, retry later or on another node",
            )
            .retry_after(10),
            StoreError::Unavailable(_) => {
                log_store_error(&e);
                ApiError::unavailable(
                    "the store cannot take this request now; retry later (with the same \
                     idempotency_key)",
                )
                .retry_after(1)
            }
            StoreError::Corrupt(_) => {
                log_store_error(&e);
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "stored data could not be read; see the node's log",
                )
            }
        }
    }
}

/// Cluster and task errors the API answered, logged at most once a second.
static DELIVERY_ERRORS: LogLimit = LogLimit::new(Duration::from_secs(1));

fn log_delivery_error(e: &DeliveryError) {
    if let Some(suppressed) = DELIVERY_ERRORS.allow() {
        tracing::warn!(suppressed, "api: answered a delivery error: {e}");
    }
}

fn log_store_error(e: &StoreError) {
    if let Some(suppressed) = STORE_ERRORS.allow() {
        tracing::warn!(suppressed, "api: answered a store error: {e}");
    }
}

/// Lets a log line through at most once per `every`, counting the ones it held back: for
/// errors that come with every request while they last.
#[derive(Debug)]
struct LogLimit {
    every: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimit {
    const fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl From<DeliveryError> for ApiError {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::Store(e) => e.into(),
            // Their own words (a Redis reply, a task's panic) go to the log, not to clients.
            DeliveryError::Registry(_) | DeliveryError::Router(_) | DeliveryError::Failed(_) => {
                log_delivery_error(&e);
                ApiError::unavailable(
                    "the cluster cannot take this request now; retry later (with the same \
                     idempotency_key)",
                )
                .retry_after(1)
            }
            DeliveryError::Busy => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()).retry_after(1)
            }
            DeliveryError::TooManyTopics(_) => {
                ApiError::new(StatusCode::CONFLICT, "limit", e.to_string())
            }
        }
    }
}
