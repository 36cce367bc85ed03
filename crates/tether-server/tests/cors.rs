//! CORS on the client-facing routes, end to end: a real node on port 0, asked with reqwest as
//! a browser would (an `Origin` header, preflights with `Access-Control-Request-Method`); the
//! business and admin routes left without CORS headers; the origins swapped by a reload.

mod common;

use std::path::Path;

use common::*;
use reqwest::Method;
use serde_json::json;
use tether_server::Config;

const ADMIN: &str = "admin-key-0123456789abcdef";
const PAGE: &str = "https://app.example.com";

/// Sends `method path` with `headers` and no body; every request bounded by [`WAIT`].
async fn send(
    node: &tether_server::Node,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("HTTP client");
    let mut request = client.request(method, format!("http://{}{path}", node.http_addr()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("HTTP request failed")
}

/// A browser's preflight of `GET path` with an `Authorization` header, from `origin`.
async fn preflight(node: &tether_server::Node, path: &str, origin: &str) -> reqwest::Response {
    send(
        node,
        Method::OPTIONS,
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ],
    )
    .await
}

/// `GET /v1/dispatch` for alice of the demo app, with her token, from `origin` (none: not a
/// page).
async fn dispatch(node: &tether_server::Node, origin: Option<&str>) -> reqwest::Response {
    let auth = format!("Bearer {}", token("alice"));
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    send(
        node,
        Method::GET,
        "/v1/dispatch?app=demo&user=alice",
        &headers,
    )
    .await
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Every `Vary` value of a response, lower-cased.
fn vary(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

/// Asserts that a response carries no CORS header at all.
fn no_cors(response: &reqwest::Response, what: &str) {
    let cors: Vec<_> = response
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{what}: CORS headers {cors:?}");
}

/// `tether_connections_refused_total{listener="http", reason="origin"}` now. The recorder is
/// the process's: tests running beside this one may add to it, so tests compare with at least.
fn origin_refusals() -> u64 {
    let page = tether_server::metrics::prometheus().render();
    metric(
        &page,
        "tether_connections_refused_total{listener=\"http\",reason=\"origin\"}",
    )
    .map_or(0, |v| v as u64)
}

fn listing(origins: &[&str]) -> Config {
    let mut config = Config::for_tests();
    config.listen.http_access.origins = origins.iter().map(|o| o.to_string()).collect();
    config
}

#[tokio::test]
async fn a_listed_origin_s_preflight_gets_204_and_its_dispatch_answers_carry_its_origin() {
    let node = start(listing(&[PAGE, "https://*.example.org"])).await;

    let pre = preflight(&node, "/v1/dispatch?app=demo&user=alice", PAGE).await;
    assert_eq!(pre.status(), 204);
    assert_eq!(header(&pre, "access-control-allow-origin"), Some(PAGE));
    assert_eq!(
        header(&pre, "access-control-allow-credentials"),
        Some("true")
    );
    let methods = header(&pre, "access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("GET"), "{methods}");
    let allowed = header(&pre, "access-control-allow-headers").unwrap_or("");
    for needed in ["authorization", "content-type", "last-event-id"] {
        assert!(allowed.contains(needed), "{needed} not in {allowed}");
    }
    let max_age: u64 = header(&pre, "access-control-max-age")
        .and_then(|v| v.parse().ok())
        .expect("a max age");
    assert!(max_age > 0);
    assert!(
        vary(&pre).contains(&"origin".to_owned()),
        "{:?}",
        vary(&pre)
    );

    let page = "https://chat.eu.example.org";
    let got = dispatch(&node, Some(page)).await;
    assert_eq!(got.status(), 200);
    assert_eq!(header(&got, "access-control-allow-origin"), Some(page));
    assert_eq!(
        header(&got, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&got, "access-control-expose-headers"),
        Some("retry-after")
    );
    assert!(vary(&got).contains(&"origin".to_owned()));
    let body: serde_json::Value = got.json().await.expect("a JSON answer");
    assert_eq!(body["user"], "alice");
    assert!(
        body["endpoints"].as_array().is_some_and(|e| !e.is_empty()),
        "{body}"
    );

    // An error is readable by the page too: it says what to do.
    let refused = send(
        &node,
        Method::GET,
        "/v1/dispatch?app=demo",
        &[("origin", PAGE), ("authorization", "Bearer not-a-token")],
    )
    .await;
    assert_eq!(refused.status(), 401);
    assert_eq!(header(&refused, "access-control-allow-origin"), Some(PAGE));
    let body: serde_json::Value = refused.json().await.expect("a JSON error");
    assert_eq!(body["code"], "bad_token");

    // A client that is not a page sends no Origin, and gets no CORS header.
    let native = dispatch(&node, None).await;
    assert_eq!(native.status(), 200);
    assert_eq!(header(&native, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn an_origin_not_listed_is_refused_with_403_and_counted_before_the_route_runs() {
    let node = start(listing(&[PAGE])).await;
    let before = origin_refusals();

    for other in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let pre = preflight(&node, "/v1/dispatch?app=demo", other).await;
        assert_eq!(pre.status(), 403, "{other}");
        no_cors(&pre, other);
        let got = dispatch(&node, Some(other)).await;
        assert_eq!(got.status(), 403, "{other}");
        no_cors(&got, other);
        assert!(vary(&got).contains(&"origin".to_owned()));
        let body: serde_json::Value = got.json().await.expect("a JSON error");
        assert_eq!(body["code"], "forbidden");
    }
    // The refusal happens before the route: a missing token would have been 401.
    let untokened = send(
        &node,
        Method::GET,
        "/v1/dispatch?app=demo",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(untokened.status(), 403);
    assert!(
        origin_refusals() >= before + 7,
        "{} refusals counted, {before} before",
        origin_refusals()
    );
}

#[tokio::test]
async fn without_a_list_any_origin_may_call_with_a_star_and_no_credentials() {
    let node = start(Config::for_tests()).await;
    for origin in ["https://any.example", "null", "http://localhost:3000"] {
        let pre = preflight(&node, "/v1/dispatch?app=demo", origin).await;
        assert_eq!(pre.status(), 204, "{origin}");
        assert_eq!(header(&pre, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&pre, "access-control-allow-credentials"), None);
        let got = dispatch(&node, Some(origin)).await;
        assert_eq!(got.status(), 200, "{origin}");
        assert_eq!(header(&got, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&got, "access-control-allow-credentials"), None);
    }
    // Before CORS, this was a 405: an OPTIONS that is no preflight still is one.
    let plain = send(&node, Method::OPTIONS, "/v1/dispatch", &[]).await;
    assert_eq!(plain.status(), 405);
}

#[tokio::test]
async fn the_business_and_admin_routes_answer_without_cors_headers() {
    let mut config = listing(&[PAGE]);
    config.admin.key = Some(tether_server::config::Secret::new(ADMIN));
    let node = start(config).await;
    let with_key = |key: &'static str| format!("Bearer {key}");
    let (api, admin) = (with_key(API_KEY), with_key(ADMIN));
    for (method, path, key) in [
        (
            Method::GET,
            "/v1/apps/demo/users/alice/presence",
            api.as_str(),
        ),
        (Method::POST, "/v1/apps/demo/users/alice/kick", api.as_str()),
        (Method::GET, "/v1/admin/stats", admin.as_str()),
        (Method::GET, "/healthz", ""),
        (Method::GET, "/metrics", ""),
        (Method::GET, "/readyz", ""),
    ] {
        for origin in [PAGE, "https://evil.example"] {
            let reply = send(
                &node,
                method.clone(),
                path,
                &[("origin", origin), ("authorization", key)],
            )
            .await;
            // They keep answering as they did: a browser hides the answer from the page.
            assert_eq!(reply.status(), 200, "{method} {path} from {origin}");
            no_cors(&reply, path);
            let pre = preflight(&node, path, origin).await;
            assert_eq!(pre.status(), 405, "preflight of {path} from {origin}");
            no_cors(&pre, path);
        }
    }
}

fn file(origins: &str) -> String {
    format!(
        r#"
[listen]
tcp = "127.0.0.1:0"
ws = ""
http = "127.0.0.1:0"
mqtt = ""

[listen.http_access]
origins = [{origins}]

[store]
backend = "memory"

[admin]
key = "{ADMIN}"

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"
"#
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the configuration");
}

async fn reload(http: &Http) {
    let reply = http.post_raw("/v1/admin/reload", Some(ADMIN), "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["restart_needed"], json!([]), "{:?}", reply.body);
}

#[tokio::test]
async fn a_reload_swaps_the_allowed_origins_for_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let (a, b) = ("https://a.example", "https://b.example");
    write(&path, &file(&format!("{a:?}")));
    let node = start(Config::load(Some(&path)).expect("valid file")).await;
    let http = Http::new(&node);
    assert_eq!(preflight(&node, "/v1/dispatch", a).await.status(), 204);
    assert_eq!(preflight(&node, "/v1/dispatch", b).await.status(), 403);

    write(&path, &file(&format!("{b:?}")));
    reload(&http).await;
    assert_eq!(preflight(&node, "/v1/dispatch", a).await.status(), 403);
    let pre = preflight(&node, "/v1/dispatch", b).await;
    assert_eq!(pre.status(), 204);
    assert_eq!(header(&pre, "access-control-allow-origin"), Some(b));
    assert_eq!(dispatch(&node, Some(b)).await.status(), 200);

    // An empty list opens the routes to any origin again.
    write(&path, &file(""));
    reload(&http).await;
    let got = dispatch(&node, Some(a)).await;
    assert_eq!(got.status(), 200);
    assert_eq!(header(&got, "access-control-allow-origin"), Some("*"));

    // A list that does not read is refused whole, and the one in force stays.
    write(&path, &file(r#""https://a.example/""#));
    let reply = http.post_raw("/v1/admin/reload", Some(ADMIN), "").await;
    assert_eq!(reply.status, 422, "{:?}", reply.body);
    assert!(
        reply
            .body
            .to_string()
            .contains("listen.http_access.origins[0]"),
        "{:?}",
        reply.body
    );
    let got = dispatch(&node, Some(b)).await;
    assert_eq!(header(&got, "access-control-allow-origin"), Some("*"));
}
