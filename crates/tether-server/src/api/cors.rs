//! CORS for the client-facing routes: the ones a web page's script calls (`/v1/dispatch`, and
//! any route given to [`Cors::client_facing`]).
//!
//! The business and admin routes (`/v1/apps/...`, `/v1/admin/...`) are not client-facing:
//! they take keys that must never be in a page, so they answer without CORS headers and a
//! browser keeps their answers from any page of another origin.
//!
//! # Policy
//!
//! From `listen.http_access.origins`, with the WebSocket listener's pattern syntax
//! ([`crate::edge::origin`]); swapped by a reload ([`Cors::reload`]).
//!
//! - A request without `Origin` is not a page's cross-origin call (a native client, a server,
//!   a same-origin `GET`): served, nothing added.
//! - No list: any origin. Answers carry `Access-Control-Allow-Origin: *`, and never
//!   credentials: a browser refuses `*` in credentials mode, so "any origin" can never also
//!   mean "with the user's cookies". The answer is the same for every origin, so caches need
//!   no `Vary`.
//! - A list: a listed origin is echoed, with `Access-Control-Allow-Credentials: true` (the
//!   operator named the pages it trusts; tether itself reads no cookie, but a balancer's
//!   affinity cookie reaches a cross-origin `EventSource` only in credentials mode) and
//!   `Vary: Origin` on every answer.
//! - An origin not listed is refused with `403` and no CORS header before the route runs,
//!   preflight or not, counted as `tether_connections_refused_total{listener="http",
//!   reason="origin"}` (the WebSocket listener's Origin check counts the same way). Leaving
//!   the headers out would be enough for the browser to hide the answer, but not to keep the
//!   route from running: a `GET` with `?token=` or an `EventSource` needs no preflight, and a
//!   route with effects (an SSE session that marks the user online) must not run for a page
//!   the operator did not list.
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is answered here, `204`, with [`METHODS`], [`HEADERS`] and a [`MAX_AGE`]; the
//!   route never sees it. Other `OPTIONS` requests go to the route (`405`).
//! - Every other answer of a client-facing route (errors too, so that a page can read their
//!   `{code, error}`) carries the origin headers, and `Access-Control-Expose-Headers:
//!   retry-after` (a `503` or `429` says when to retry).

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::accept::Peer;
use crate::edge::Guard;

/// What a client-facing route may be called with: `GET` (the dispatcher, an SSE stream) and
/// `POST` (what an SSE client sends).
pub const METHODS: &str = "GET, POST";

/// The request headers a page may send beyond the safelisted ones: the SDK's token, a JSON
/// body, and the resume position `EventSource` sends when it reconnects.
pub const HEADERS: &str = "authorization, content-type, last-event-id";

/// How long (seconds) a browser may keep a preflight's answer: Chromium's own cap (Firefox
/// keeps up to a day). A removed origin is refused by the next request anyway: a kept
/// preflight only spares the round trip.
pub const MAX_AGE: &str = "7200";

/// The answer headers a page may read beyond the safelisted ones.
const EXPOSE: &str = "retry-after";

/// The CORS of the client-facing routes, answered from the HTTP listener's guard as last
/// reloaded: its origins, and its count and log of refusals.
#[derive(Debug)]
pub struct Cors {
    guard: HttpGuard,
}

/// The HTTP listener's guard as last reloaded, shared by the address check of every route
/// ([`super::guarded`]) and the CORS of the client-facing ones.
pub type HttpGuard = Arc<ArcSwap<Guard>>;

/// What a request's `Origin` allows.
enum Verdict {
    /// No `Origin`: not a page's cross-origin call.
    NoOrigin,
    /// Any origin may call (no list).
    Any,
    /// A listed origin, echoed.
    Listed(HeaderValue),
    /// Refused, counted and logged.
    Refused,
}

impl Cors {
    /// The CORS of `guard`, the HTTP listener's (see [`crate::edge::Guards`]).
    pub fn new(guard: HttpGuard) -> Cors {
        Cors { guard }
    }

    /// Takes a reloaded configuration's HTTP guard: the next request meets its origins here,
    /// and its address lists in [`super::guarded`].
    pub fn reload(&self, guard: Arc<Guard>) {
        self.guard.store(guard);
    }

    /// `router` made client-facing: CORS on each of its routes (those it has now). One line
    /// per router: `cors.client_facing(Router::new().route(...))`.
    pub fn client_facing<S>(self: &Arc<Self>, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let cors = self.clone();
        router.layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let cors = cors.clone();
                async move { cors.serve(request, next).await }
            },
        ))
    }

    async fn serve(&self, request: Request, next: Next) -> Response {
        let (verdict, listed) = self.verdict(&request);
        let preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut response = match &verdict {
            Verdict::Refused => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "pages of this origin may not call this route",
            )
            .into_response(),
            Verdict::Any | Verdict::Listed(_) if preflight => {
                let mut response = StatusCode::NO_CONTENT.into_response();
                let headers = response.headers_mut();
                for (name, value) in [
                    (header::ACCESS_CONTROL_ALLOW_METHODS, METHODS),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, HEADERS),
                    (header::ACCESS_CONTROL_MAX_AGE, MAX_AGE),
                ] {
                    headers.insert(name, HeaderValue::from_static(value));
                }
                response
            }
            _ => {
                let mut response = next.run(request).await;
                if !matches!(verdict, Verdict::NoOrigin) {
                    response.headers_mut().insert(
                        header::ACCESS_CONTROL_EXPOSE_HEADERS,
                        HeaderValue::from_static(EXPOSE),
                    );
                }
                response
            }
        };
        let headers = response.headers_mut();
        match verdict {
            Verdict::Any => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
            Verdict::Listed(origin) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            Verdict::NoOrigin | Verdict::Refused => {}
        }
        // With a list the answer depends on the Origin, whatever it was (or that there was
        // none): a cache must not give one origin's answer to another.
        if listed {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        response
    }

    /// The request's verdict, and whether it came from a list (read once: a reload between
    /// the two must not mix them).
    fn verdict(&self, request: &Request) -> (Verdict, bool) {
        let guard = self.guard.load();
        let listed = guard.lists_origins();
        let Some(origin) = request.headers().get(header::ORIGIN) else {
            return (Verdict::NoOrigin, listed);
        };
        if !listed {
            return (Verdict::Any, false);
        }
        let ip = request
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(Peer(addr))| addr.ip());
        let verdict = match guard.check_origin(Some(origin.as_bytes()), ip) {
            Ok(()) => Verdict::Listed(origin.clone()),
            Err(_) => Verdict::Refused,
        };
        (verdict, true)
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::config::AccessConfig;

    fn cors(origins: &[&str]) -> Arc<Cors> {
        let config = AccessConfig {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            ..AccessConfig::default()
        };
        let guard = Guard::new("http", "listen.http_access", &config).expect("valid origins");
        Arc::new(Cors::new(Arc::new(ArcSwap::from_pointee(guard))))
    }

    async fn call(cors: &Arc<Cors>, request: axum::http::Request<Body>) -> Response {
        let router = cors.client_facing(Router::new().route("/r", get(|| async { "ok" })));
        router.oneshot(request).await.expect("infallible")
    }

    fn request(method: &str, origin: Option<&str>, preflight: bool) -> axum::http::Request<Body> {
        let mut r = axum::http::Request::builder().method(method).uri("/r");
        if let Some(origin) = origin {
            r = r.header("origin", origin);
        }
        if preflight {
            r = r.header("access-control-request-method", "GET");
        }
        r.body(Body::empty()).expect("a request")
    }

    fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn without_a_list_any_origin_gets_a_star_and_no_credentials() {
        let c = cors(&[]);
        let r = call(&c, request("GET", Some("https://any.example"), false)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&r, "access-control-allow-credentials"), None);
        assert_eq!(header(&r, "vary"), None);
        let r = call(&c, request("OPTIONS", Some("null"), true)).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&r, "access-control-allow-headers"), Some(HEADERS));
    }

    #[tokio::test]
    async fn a_list_echoes_its_origins_and_refuses_the_rest_before_the_route() {
        let c = cors(&["https://*.example.com"]);
        let r = call(&c, request("OPTIONS", Some("https://a.example.com"), true)).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            Some("https://a.example.com")
        );
        assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(&r, "access-control-max-age"), Some(MAX_AGE));
        assert_eq!(header(&r, "vary"), Some("origin"));
        for (method, preflight) in [("OPTIONS", true), ("GET", false)] {
            let r = call(&c, request(method, Some("https://example.com"), preflight)).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method}");
            assert_eq!(header(&r, "access-control-allow-origin"), None);
            assert_eq!(header(&r, "vary"), Some("origin"));
        }
        let r = call(&c, request("GET", None, false)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "access-control-allow-origin"), None);
        assert_eq!(header(&r, "vary"), Some("origin"));
    }

    #[tokio::test]
    async fn an_options_request_that_is_no_preflight_goes_to_the_route() {
        let c = cors(&[]);
        let r = call(&c, request("OPTIONS", Some("https://a.example"), false)).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
        let r = call(&c, request("OPTIONS", None, true)).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn a_reload_swaps_the_list() {
        let c = cors(&["https://a.example"]);
        let r = call(&c, request("GET", Some("https://b.example"), false)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        c.reload(cors(&["https://b.example"]).guard.load_full());
        let r = call(&c, request("GET", Some("https://b.example"), false)).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = call(&c, request("GET", Some("https://a.example"), false)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
