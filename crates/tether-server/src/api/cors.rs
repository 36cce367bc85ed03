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
//! ([`crate::edge::origin`]); swapped by a reload ([`Cors::reload`]). The answers are
//! [`crate::edge::cors`]'s, the same as the SSE routes give from the WebSocket listener's
//! origins: a request without `Origin` is served as it is, an origin not listed is refused with
//! `403` before the route runs, a preflight from an allowed one is answered `204` here, and
//! every other answer (errors too) carries the origin headers.

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
use crate::edge::cors::{Cors as EdgeCors, Verdict};

pub use crate::edge::cors::{HEADERS, MAX_AGE, METHODS};

/// The CORS of the client-facing routes, answered from the HTTP listener's guard as last
/// reloaded: its origins, and its count and log of refusals.
#[derive(Debug)]
pub struct Cors {
    guard: HttpGuard,
}

/// The HTTP listener's guard as last reloaded, shared by the address check of every route
/// (`super::guarded`) and the CORS of the client-facing ones.
pub type HttpGuard = Arc<ArcSwap<Guard>>;

impl Cors {
    /// The CORS of `guard`, the HTTP listener's (see [`crate::edge::Guards`]).
    pub fn new(guard: HttpGuard) -> Cors {
        Cors { guard }
    }

    /// Takes a reloaded configuration's HTTP guard: the next request meets its origins here,
    /// and its address lists in `super::guarded`.
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
        let cors = self.verdict(&request);
        let preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut response = match &cors.verdict {
            Verdict::Refused => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "pages of this origin may not call this route",
            )
            .into_response(),
            Verdict::Any | Verdict::Listed(_) if preflight => {
                StatusCode::NO_CONTENT.into_response()
            }
            _ => next.run(request).await,
        };
        let preflight = preflight && matches!(cors.verdict, Verdict::Any | Verdict::Listed(_));
        let headers = response.headers_mut();
        for (name, value) in cors.headers(preflight) {
            if name == header::VARY {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        }
        response
    }

    /// The request's CORS, from the guard as last reloaded.
    fn verdict(&self, request: &Request) -> EdgeCors {
        let guard = self.guard.load();
        let ip = request
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(Peer(addr))| addr.ip());
        let origin = request.headers().get(header::ORIGIN);
        EdgeCors::of(&guard, origin.map(HeaderValue::as_bytes), ip)
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
