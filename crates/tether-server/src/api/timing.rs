//! Request durations of every HTTP route (the business API, ops, the dispatcher), by method,
//! route and status: `tether_http_request_duration_seconds` (its `_count` is the number of
//! requests: no separate counter).
//!
//! The route label is the matched route's template (`/v1/apps/{app}/push`), never the path
//! itself, so that ids in paths cannot grow the label set; a path no route matches is
//! `unmatched`. Timed from the request's head to the response's head: a streamed body is not
//! included.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;

/// `router` with every request timed. Apply it last, so that it also times the answers of the
/// layers inside it (the listener's guard, the body limit, the request timeout).
pub fn timed(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(time))
}

async fn time(request: Request, next: Next) -> axum::response::Response {
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
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::metrics::http_request(
        method,
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
