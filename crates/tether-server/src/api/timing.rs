//! Request durations of every HTTP route (the business API, ops, the dispatcher), by method,
//! route and status: `tether_http_request_duration_seconds` (its `_count` is the number of
//! requests: no separate counter).
//!
//! The route label is the matched route's template (`/v1/apps/{app}/push`), never the path
//! itself, so that ids in paths cannot grow the label set; a path no route matches is
//! `unmatched`. Timed from the request's head to the response's head: a streamed body is not
//! included.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;

/// Times one request, answered by `inner`: the listener's guard, and through it the route (its
/// body limit and request timeout included). Called by [`super::http_router`]'s one layer
/// over every route, so that it also times the guard's refusals.
pub(super) async fn time<F>(request: Request, inner: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    let started = Instant::now();
    // A method outside the standard ones would be a label value a client chooses: bounded
    // here to `other`.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    // Cloned: an `Arc<str>` inside.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = inner(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::metrics::http_request(
        method,
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
