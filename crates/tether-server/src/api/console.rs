//! The web console: a page for operators at `/console`, served from files built into the
//! binary (`console/`: plain HTML, CSS and JavaScript, no framework, nothing fetched from
//! elsewhere).
//!
//! The files hold no data and need no key. The page asks for the admin key, keeps it in the
//! tab's `sessionStorage`, and calls the routes that already exist with it: `/v1/admin/stats`,
//! `/v1/admin/nodes` (every node of the cluster), `/readyz`, `/metrics`, `/v1/admin/drain`; the app routes (presence, inbox, push, publish)
//! with an app's API key typed into the page, since the admin key opens none of them.
//!
//! Every answer carries a Content-Security-Policy that allows only this origin's own script
//! and style files (no inline script, no `eval`, no frames), `nosniff`, and `no-cache` so that
//! an upgraded node serves its new page at once.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only the page's own files, and requests to its own origin; nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `/console` (sent on to `/console/`, so that the page's relative URLs resolve) and its files.
pub fn router() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    async fn get_(path: &str) -> Response {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        router().oneshot(request).await.unwrap()
    }

    fn header_of<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn the_files_are_served_with_a_strict_policy() {
        for (path, kind) in [
            ("/console/", "text/html"),
            ("/console/console.js", "text/javascript"),
            ("/console/console.css", "text/css"),
        ] {
            let r = get_(path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(
                header_of(&r, "content-type").unwrap().starts_with(kind),
                "{path}"
            );
            let csp = header_of(&r, "content-security-policy").unwrap();
            assert!(csp.contains("script-src 'self';"), "{csp}");
            assert!(!csp.contains("unsafe"), "{csp}");
            assert_eq!(header_of(&r, "x-content-type-options"), Some("nosniff"));
            assert_eq!(header_of(&r, "cache-control"), Some("no-cache"));
        }
        let r = get_("/console").await;
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header_of(&r, "location"), Some("/console/"));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere() {
        let lower = INDEX.to_ascii_lowercase();
        // Every <script> element names a file; none holds code.
        for (i, _) in lower.match_indices("<script") {
            let tag = &lower[i..i + lower[i..].find('>').unwrap()];
            assert!(tag.contains("src="), "an inline script: {tag}");
        }
        assert!(!lower.contains("<style"), "an inline style element");
        assert!(!lower.contains(" style="), "an inline style attribute");
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 1..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            assert!(
                !lower[i + 1 + name.len()..].starts_with('='),
                "an inline event handler: {name}"
            );
        }
        // Nothing from another origin (the SVG namespace is a name, not a fetch).
        for text in [INDEX, SCRIPT, STYLE] {
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn"), "a CDN");
        }
    }
}
