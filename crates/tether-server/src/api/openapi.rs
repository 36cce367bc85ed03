//! The HTTP API's OpenAPI 3.1 document, served at `GET /v1/openapi.json`.
//!
//! Generated from the code, so that it cannot drift from what the node serves:
//!
//! - each handler carries its `#[utoipa::path]` (method, path, parameters, request body,
//!   answer, security), and the routers are built from those annotations with utoipa-axum's
//!   `routes!`: a route the router serves is a route the document lists, by construction;
//! - request and answer bodies are Rust types deriving `ToSchema` (the request types are the
//!   ones the handlers parse; answers built with `json!` have their shape here, strict: an
//!   answer with a field the document lacks fails the schemathesis test);
//! - this module adds what annotations do not carry: the error answers of each group of
//!   routes (`{code, error}`, each status with the codes it may carry), the security schemes,
//!   and the two SSE routes, which the WebSocket listener serves, not axum (section 14 of
//!   docs/protocol.md).
//!
//! The document is built once, when the node's router is, and served as bytes.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::path::PathItem;
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{IntoParams, IntoResponses, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The path of the document.
pub const PATH: &str = "/v1/openapi.json";

/// Security scheme names (`components.securitySchemes`), as the handlers' `security(...)` name
/// them.
pub const API_KEY: &str = "api_key";
pub const ADMIN_KEY: &str = "admin_key";
pub const CLIENT_TOKEN: &str = "client_token";
pub const CLIENT_TOKEN_QUERY: &str = "client_token_query";

/// The paths of the SSE routes, served by the WebSocket listener (see [`sse_paths`]).
pub const SSE_STREAM: &str = crate::transport::sse::request::STREAM_PATH;
pub const SSE_POST: &str = "/v1/sse/{session}";

/// An error answer: `{"code": "...", "error": "..."}` (docs/protocol.md, 12.2).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Error {
    /// Stable: what a program branches on.
    pub code: String,
    /// For people; may change.
    pub error: String,
}

/// `POST /v1/admin/reload` with a configuration that does not load: nothing changed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidConfig {
    /// `invalid_config`.
    pub code: String,
    pub error: String,
    /// Every problem found, one a string.
    pub problems: Vec<String>,
}

/// A user or topic id in a path: 1 to 128 bytes of UTF-8 without control characters
/// (percent-decoded), else 400.
#[derive(Debug)]
pub struct Id;

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]+$"))
            .description(Some(
                "1 to 128 bytes of UTF-8 without control characters (percent-decoded in a path)",
            ))
            .into()
    }
}

impl ToSchema for Id {}

/// The path of `/v1/apps/{app}/...` routes.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct AppPath {
    /// The app: the API key's own.
    app: String,
}

/// The path of `/v1/apps/{app}/users/{user}/...` routes.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct UserPath {
    /// The app: the API key's own.
    app: String,
    #[param(value_type = Id)]
    user: String,
}

/// The path of `/v1/apps/{app}/topics/{topic}...` routes.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TopicPath {
    /// The app: the API key's own.
    app: String,
    #[param(value_type = Id)]
    topic: String,
}

/// The path of `/v1/apps/{app}/users/{user}/topics/{topic}`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct UserTopicPath {
    /// The app: the API key's own.
    app: String,
    #[param(value_type = Id)]
    user: String,
    #[param(value_type = Id)]
    topic: String,
}

/// The document, once the router that serves it is built.
type Document = Arc<OnceLock<Bytes>>;

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    summary = "This document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this node's HTTP API",
         content_type = "application/json", body = Object),
        Common,
    ),
)]
async fn document(State(document): State<Document>) -> impl IntoResponse {
    let body = document.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// `routes` (the node's documented HTTP routes) with `GET /v1/openapi.json` serving their
/// document, and the document.
pub fn serve(routes: OpenApiRouter) -> (axum::Router, Value) {
    let cell = Document::default();
    let (router, paths) = routes
        .merge(document_route().with_state(cell.clone()))
        .split_for_parts();
    let doc = complete(paths);
    let bytes = serde_json::to_vec(&doc).expect("a JSON value serializes");
    let _ = cell.set(Bytes::from(bytes));
    (router, doc)
}

fn document_route() -> OpenApiRouter<Document> {
    OpenApiRouter::default().routes(routes!(document))
}

/// `routes` with the document's own route.
pub(super) fn with_document(routes: OpenApi) -> OpenApi {
    routes.merge_from(document_route().into_openapi())
}

/// The document of `routes` as served: info, the SSE routes, the security schemes and the
/// shared schemas added, and what the derives cannot say.
pub(super) fn complete(routes: OpenApi) -> Value {
    let mut doc = serde_json::to_value(assemble(routes)).expect("the document serializes");
    // A message request has exactly one of `payload` (not null) and `payload_base64`, in
    // the standard alphabet with padding and no stray bits (`Api::payload`).
    for name in [
        "PushRequest",
        "PushBatchItem",
        "PublishRequest",
        "BroadcastRequest",
    ] {
        let schema = &mut doc["components"]["schemas"][name];
        assert!(schema.is_object(), "{name} is in the document");
        schema["oneOf"] = json!([
            {
                "required": ["payload"],
                "properties": { "payload": { "not": { "type": "null" } } },
                "not": {
                    "required": ["payload_base64"],
                    "properties": { "payload_base64": { "type": "string" } },
                },
            },
            {
                "required": ["payload_base64"],
                "properties": {
                    "payload_base64": { "type": "string" },
                    "payload": { "type": "null" },
                },
            },
        ]);
        schema["properties"]["payload_base64"]["pattern"] = json!(
            "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
        );
    }
    doc
}

/// The document of `routes` with what this module adds.
fn assemble(routes: OpenApi) -> OpenApi {
    let mut doc = OpenApi::default();
    doc.info.title = "tether HTTP API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "The HTTP API of a tether node: pushes, topics, presence and server-side \
         subscriptions for business servers (`/v1/apps/{app}/...`, with an API key of the \
         app), the dispatcher and the Server-Sent Events routes for clients (with a client \
         token), health, metrics and the admin API for operators (`/v1/admin/...`, with the \
         admin key). Errors are `{\"code\", \"error\"}`; `code` is stable. The prose, with \
         what each route guarantees: docs/protocol.md, sections 11, 12 and 14; which failed \
         requests may have been done: docs/api-errors.md."
            .into(),
    );
    doc.info.license = Some(utoipa::openapi::License::new("Apache-2.0"));
    doc.merge(routes);
    for (path, item) in sse_paths() {
        doc.paths.paths.insert(path, item);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    let bearer = |description: &str, format: Option<&str>| {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(description.into());
        http.bearer_format = format.map(str::to_owned);
        SecurityScheme::Http(http)
    };
    components.add_security_scheme(
        API_KEY,
        bearer(
            "An API key of the app named in the path (`[[apps]] api_key` or `api_keys`); \
             another app's key answers 403.",
            None,
        ),
    );
    components.add_security_scheme(
        ADMIN_KEY,
        bearer(
            "The node's admin key (`[admin] key`); without one configured the admin routes \
             answer 404 `admin_disabled`.",
            None,
        ),
    );
    components.add_security_scheme(
        CLIENT_TOKEN,
        bearer(
            "A client token of the app (the JWT a client binds with, section 5).",
            Some("JWT"),
        ),
    );
    components.add_security_scheme(
        CLIENT_TOKEN_QUERY,
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "token",
            "The client token in the query, for pages that cannot set headers (EventSource).",
        ))),
    );
    for (name, schema) in [
        ("Error", Error::schema()),
        ("InvalidConfig", InvalidConfig::schema()),
    ] {
        components.schemas.insert(name.into(), schema);
    }
    doc
}

/// One error answer: `status` with the `{code, error}` body whose `code` is one of `codes`;
/// `Retry-After` where a retry may succeed.
fn error_response(status: u16, codes: &[&str]) -> (String, RefOr<Response>) {
    let (description, retry) = match status {
        400 => ("The request is not valid: its body, query or path", false),
        401 => ("No credentials, or credentials no app (or node) has", false),
        403 => (
            "Credentials of another app or user; or the listener's address or origin lists \
             refuse the caller",
            false,
        ),
        404 => ("Not found, or not enabled on this node", false),
        408 => (
            "The request took longer than `limits.api_timeout`; what it started may go on",
            false,
        ),
        409 => (
            "A limit was reached: the user's topics, or the node's one profile at a time",
            false,
        ),
        413 => (
            "The payload is over `limits.max_payload`, the body over \
             `limits.api_body_bytes`, or a batch over its most pushes",
            false,
        ),
        429 => ("Over the app's request rate", true),
        500 => (
            "Stored data could not be read back, or the operation failed; see the node's log",
            false,
        ),
        503 => (
            "The node cannot take the request now (a full queue, a backend that failed); \
             retry later",
            true,
        ),
        507 => (
            "The node's disk is at its reserve (`store.min_free_bytes`): nothing was stored",
            true,
        ),
        _ => ("An error", false),
    };
    let mut response = json!({
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["code", "error"],
                    "additionalProperties": false,
                    "properties": {
                        "code": { "type": "string", "enum": codes },
                        "error": { "type": "string" },
                    },
                },
            },
        },
    });
    if retry {
        response["headers"] = json!({
            "Retry-After": {
                "description": "Seconds to wait before retrying",
                "schema": { "type": "integer", "minimum": 0 },
            },
        });
    }
    let response: Response =
        serde_json::from_value(response).expect("an error answer is a Response object");
    (status.to_string(), RefOr::T(response))
}

/// An `IntoResponses` type per group of routes: the error statuses they answer, each with its
/// codes (docs/protocol.md, 12.2).
macro_rules! errors {
    ($(#[$doc:meta])* $name:ident { $($status:literal => [$($code:literal),+ $(,)?]),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                [$(error_response($status, &[$($code),+])),+].into_iter().collect()
            }
        }
    };
}

errors!(
    /// What any route of the HTTP listener may answer: the address guard's 403, the timeout.
    Common {
        403 => ["forbidden"],
        408 => ["timeout"],
    }
);

errors!(
    /// The `/v1/apps/{app}/...` routes that read, or change no message.
    AppErrors {
        400 => ["bad_request"],
        401 => ["unauthorized"],
        403 => ["forbidden"],
        408 => ["timeout"],
        500 => ["internal"],
        503 => ["busy", "overloaded", "unavailable"],
    }
);

errors!(
    /// `POST .../users/{user}/topics/{topic}`: [`AppErrors`], and the user's topic limit.
    SubscribeErrors {
        400 => ["bad_request"],
        401 => ["unauthorized"],
        403 => ["forbidden"],
        408 => ["timeout"],
        409 => ["limit"],
        500 => ["internal"],
        503 => ["busy", "overloaded", "unavailable"],
    }
);

errors!(
    /// Push and publish: [`AppErrors`], a body's limits, the request rate, and a full disk.
    MessageErrors {
        400 => ["bad_request"],
        401 => ["unauthorized"],
        403 => ["forbidden"],
        408 => ["timeout"],
        413 => ["payload_too_large"],
        429 => ["rate_limited"],
        500 => ["internal"],
        503 => ["busy", "overloaded", "unavailable"],
        507 => ["storage_full"],
    }
);

errors!(
    /// `POST .../push/batch`: [`MessageErrors`], and a batch over its count of pushes; what
    /// the store or the cluster answers fails only the pushes it concerns (in the answer).
    BatchErrors {
        400 => ["bad_request"],
        401 => ["unauthorized"],
        403 => ["forbidden"],
        408 => ["timeout"],
        413 => ["payload_too_large", "batch_too_large"],
        429 => ["rate_limited"],
    }
);

errors!(
    /// Broadcast: as [`MessageErrors`], but nothing is stored.
    BroadcastErrors {
        400 => ["bad_request"],
        401 => ["unauthorized"],
        403 => ["forbidden"],
        408 => ["timeout"],
        413 => ["payload_too_large"],
        429 => ["rate_limited"],
        500 => ["internal"],
        503 => ["busy", "overloaded", "unavailable"],
    }
);

errors!(
    /// The admin routes: the admin key, or no admin API at all.
    AdminErrors {
        401 => ["unauthorized"],
        403 => ["forbidden"],
        404 => ["admin_disabled"],
        408 => ["timeout"],
    }
);

errors!(
    /// `GET /v1/admin/stats` and `/v1/admin/nodes`: [`AdminErrors`], and figures that cannot
    /// be read now (connections not counted, the registry unreachable).
    StatsErrors {
        401 => ["unauthorized"],
        403 => ["forbidden"],
        404 => ["admin_disabled"],
        408 => ["timeout"],
        503 => ["unavailable"],
    }
);

errors!(
    /// `GET /v1/admin/profile`: [`AdminErrors`], the route turned off, a bad length, a
    /// profile already under way, a profiler that failed.
    ProfileErrors {
        400 => ["bad_request"],
        401 => ["unauthorized"],
        403 => ["forbidden"],
        404 => ["admin_disabled", "profile_disabled"],
        408 => ["timeout"],
        409 => ["profile_running"],
        500 => ["internal"],
    }
);

errors!(
    /// `POST /v1/admin/reload`: [`AdminErrors`], a node that cannot reload, a reload that
    /// failed (its 422 is the handler's own).
    ReloadErrors {
        401 => ["unauthorized"],
        403 => ["forbidden"],
        404 => ["admin_disabled", "not_found"],
        408 => ["timeout"],
        500 => ["internal"],
    }
);

errors!(
    /// `GET /v1/dispatch` (docs/protocol.md, section 11).
    DispatchErrors {
        400 => ["bad_request"],
        401 => ["unauthorized", "bad_token", "token_expired"],
        403 => ["forbidden"],
        404 => ["unknown_app"],
        408 => ["timeout"],
        503 => ["unavailable", "no_endpoints"],
    }
);

/// The SSE routes (docs/protocol.md, section 14), which the WebSocket listener serves with its
/// own HTTP/1.1 code rather than axum: written here, and checked against that code by the
/// schemathesis test, which runs them against the WebSocket listener.
fn sse_paths() -> Vec<(String, PathItem)> {
    let servers = json!([{
        "url": "{scheme}://{host}:{port}",
        "description": "The WebSocket listener (`listen.ws`, or `listen.wss` with https), not \
                        the API's: an endpoint `ws://host:port/ws` of the dispatcher has its \
                        stream at `http://host:port/v1/sse`",
        "variables": {
            "scheme": { "enum": ["http", "https"], "default": "http" },
            "host": { "default": "localhost" },
            "port": { "default": "7401" },
        },
    }]);
    let error = |description: &str| {
        json!({
            "description": description,
            "content": { "application/json": { "schema": {
                "type": "object",
                "required": ["code", "error"],
                "additionalProperties": false,
                "properties": {
                    "code": { "type": "string" },
                    "error": { "type": "string" },
                },
            }}},
        })
    };
    let retry_error = |description: &str| {
        let mut e = error(description);
        e["headers"] = json!({ "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": { "type": "integer", "minimum": 0 },
        }});
        e
    };
    let query = |name: &str, schema: Value, description: &str| {
        json!({ "name": name, "in": "query", "required": false, "schema": schema,
                "description": description })
    };
    let stream = json!({
        "servers": servers,
        "get": {
            "tags": ["clients"],
            "operationId": "sse_stream",
            "summary": "A session as a stream of Server-Sent Events",
            "description": "The query is the `connect` (section 5 and 14.1): each `app` starts a \
                binding, and the `token`, `last_seq` and `topic` parameters after it are that \
                binding's. The stream's first event is `session` (the id for the POST route), \
                then one event per server frame, in JSON. A `connect` refused for good is an \
                HTTP error; a refusal that asks the client to come back is a `200` stream with \
                only its `disconnect` event.",
            "parameters": [
                { "name": "device", "in": "query", "required": true,
                  "schema": Id::schema(),
                  "description": "The device id (section 5)" },
                { "name": "app", "in": "query", "required": true,
                  "schema": { "type": "string" },
                  "description": "The app of the (first) binding; repeat `app` (each followed \
                                  by its own `token`, `last_seq`, `topic`) for more" },
                query("last_seq", json!({ "type": "integer", "minimum": 0 }),
                      "The binding's last durable seq held"),
                query("topic", json!({ "type": "string" }),
                      "A topic to subscribe to, as with `subscribe` after `connect`"),
                query("heartbeat_ms", json!({ "type": "integer", "minimum": 0 }),
                      "Proposed heartbeat interval (0: the server's)"),
                query("version", json!({ "type": "integer", "minimum": 0, "maximum": 255 }),
                      "Protocol version (default 1)"),
                query("last_event_id", json!({ "type": "string" }),
                      "A stream's last event id, to resume (the header overrides it)"),
                { "name": "Last-Event-ID", "in": "header", "required": false,
                  "schema": { "type": "string" },
                  "description": "The last event id, as EventSource sends it when it reconnects" },
            ],
            "security": [{ CLIENT_TOKEN_QUERY: [] }, { CLIENT_TOKEN: [] }],
            "responses": {
                "200": {
                    "description": "The stream, until the connection closes",
                    "headers": { "Cache-Control": { "schema": { "type": "string",
                                                                "const": "no-store" } } },
                    "content": { "text/event-stream": { "schema": {
                        "description": "The stream (a string); read event by event, each \
                            event is an object: `event: session` first, whose `data` is the \
                            session id, then one per server frame (the default event type, \
                            `message`), `data` its JSON",
                        "anyOf": [
                            { "type": "string" },
                            {
                                "type": "object",
                                "required": ["data"],
                                "additionalProperties": false,
                                "properties": {
                                    "event": { "type": "string", "enum": ["session", "message"] },
                                    "data": { "type": "string" },
                                    "id": { "type": "string" },
                                    "retry": { "type": "integer", "minimum": 0 },
                                },
                            },
                        ],
                    }}},
                },
                "400": error("The query does not read, or the `connect` was refused for good \
                              (`code`: the close code's label, e.g. `bad_device`)"),
                "401": error("The token does not verify (`bad_token`) or has expired \
                              (`token_expired`)"),
                "403": error("The listener does not allow this origin (`forbidden`)"),
                "404": error("No such app (`unknown_app`, `app_removed`)"),
                "405": error("Only GET (and preflights) (`method_not_allowed`)"),
            },
        },
    });
    let post = json!({
        "servers": servers,
        "parameters": [{
            "name": "session", "in": "path", "required": true,
            "schema": { "type": "string", "minLength": 1 },
            "description": "The stream's session id (its `session` event)",
        }],
        "post": {
            "tags": ["clients"],
            "operationId": "sse_post",
            "summary": "Frames for a stream's session",
            "description": "One JSON frame (section 3) or an array of them, at most `max_frame` \
                bytes, handed to the session in order; their answers come on the stream. The \
                session id authorizes the request.",
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": { "schema": { "oneOf": [
                        { "type": "object", "required": ["op"],
                          "properties": { "op": { "type": "string" } } },
                        { "type": "array", "items": { "type": "object", "required": ["op"],
                          "properties": { "op": { "type": "string" } } } },
                    ]}},
                },
            },
            "responses": {
                "202": { "description": "Handed to the session (in a cluster: sent to its node)" },
                "400": error("Not JSON frames, or a bad Content-Length (`bad_request`)"),
                "403": error("The listener does not allow this origin (`forbidden`)"),
                "404": error("No such session: the stream ended, or never was \
                              (`unknown_session`)"),
                "405": error("Only POST (and preflights) (`method_not_allowed`)"),
                "411": error("No Content-Length (`bad_request`)"),
                "413": error("Larger than `max_frame` (`too_large`)"),
                "415": error("Not JSON (`bad_request`)"),
                "503": retry_error("Too many frames wait for the session (`busy`), or its \
                                    node cannot be reached (`unavailable`)"),
            },
        },
    });
    [(SSE_STREAM, stream), (SSE_POST, post)]
        .into_iter()
        .map(|(path, item)| {
            let item: PathItem =
                serde_json::from_value(item).expect("the SSE routes are PathItem objects");
            (path.to_owned(), item)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// The document as JSON, as the route serves it.
    fn document() -> Value {
        let bytes = serde_json::to_vec(&super::super::document()).expect("serializes");
        serde_json::from_slice(&bytes).expect("parses back")
    }

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// `(method, path)` of every operation of the document.
    fn operations(doc: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in ["get", "post", "put", "delete", "patch"] {
                if item.get(method).is_some() {
                    out.push((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_reference_resolves() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "tether HTTP API");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r.strip_prefix('#').expect("a local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} resolves to nothing");
        }
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        for op in doc["paths"].as_object().unwrap().values().flat_map(|item| {
            ["get", "post", "delete"]
                .into_iter()
                .filter_map(|m| item.get(m))
        }) {
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "unknown scheme {name}");
                }
            }
        }
    }

    #[test]
    fn the_document_has_every_route_of_the_api_the_admin_api_and_the_clients() {
        let doc = document();
        let ops = operations(&doc);
        let has = |method: &str, path: &str| ops.iter().any(|(m, p)| m == method && p == path);
        // The document is made from the routers' own tables; this checks that no group was
        // left out of it, and that each route has an id, a tag and an answer.
        for (method, path) in [
            ("get", "/healthz"),
            ("get", "/readyz"),
            ("get", "/metrics"),
            ("get", "/v1/openapi.json"),
            ("post", "/v1/apps/{app}/push"),
            ("post", "/v1/apps/{app}/broadcast"),
            ("post", "/v1/apps/{app}/topics/{topic}/publish"),
            ("post", "/v1/apps/{app}/users/{user}/topics/{topic}"),
            ("delete", "/v1/apps/{app}/users/{user}/topics/{topic}"),
            ("post", "/v1/admin/drain"),
            ("post", "/v1/admin/reload"),
            ("get", "/v1/admin/stats"),
            ("get", "/v1/admin/profile"),
            ("get", "/v1/dispatch"),
            ("get", "/v1/sse"),
            ("post", "/v1/sse/{session}"),
        ] {
            assert!(has(method, path), "{method} {path} is not in the document");
        }
        let mut ids = std::collections::HashSet::new();
        for (method, path) in &ops {
            let op = &doc["paths"][path][method];
            let id = op["operationId"].as_str().expect("an operation id");
            assert!(ids.insert(id.to_owned()), "operation id {id} twice");
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{path}: no tag"
            );
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no success answer"
            );
        }
    }

    #[test]
    fn every_error_answer_is_code_and_error() {
        let doc = document();
        for (method, path) in operations(&doc) {
            let responses = doc["paths"][&path][&method]["responses"]
                .as_object()
                .unwrap();
            assert!(
                responses.contains_key("403"),
                "{method} {path}: every route can refuse the caller (403)"
            );
            for (status, response) in responses {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                let Some(schema) = response.pointer("/content/application~1json/schema") else {
                    // Plain-text answers of the operations routes.
                    assert!(
                        response.pointer("/content/text~1plain").is_some(),
                        "{method} {path} {status}: no body described"
                    );
                    continue;
                };
                let schema = match schema.get("$ref").and_then(Value::as_str) {
                    Some(r) => doc.pointer(r.strip_prefix('#').unwrap()).unwrap(),
                    None => schema,
                };
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{method} {path} {status}: {schema}"))
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert!(
                    required.contains(&"code") && required.contains(&"error"),
                    "{method} {path} {status}: {schema}"
                );
            }
        }
    }
}
