//! The shapes of the API's answers that handlers build with `json!`, for the OpenAPI document
//! ([`super::openapi`]). Never built: each mirrors one handler's `json!`, field for field, and
//! is strict (`deny_unknown_fields` gives `additionalProperties: false`), so that an answer
//! that gains a field without its type here fails the schemathesis test (crates/tether/tests/
//! openapi.rs) rather than drifting quietly.
//!
//! Integers are JSON integers; message ids are decimal strings (docs/protocol.md, 12.1).

// Read by utoipa's derive, never constructed.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::messages::PushAnswer;

/// `tcp`, `ws`, `sse` or `mqtt` (TLS counts as its plain transport).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    Tcp,
    Ws,
    Sse,
    Mqtt,
}

/// A dispatcher endpoint's transport: `tcp` (also `tls://`), `ws` (also `wss://`) or `mqtt`
/// (`mqtt://`, `mqtts://`, and `ws://`/`wss://` URLs whose path ends in `/mqtt`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointTransport {
    Tcp,
    Ws,
    Mqtt,
}

/// A live (qos 0) push, or a broadcast: the message's id and the connections it was handed
/// to (for another node: sent to).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sent {
    /// The message's id (`push.msg_id`), a decimal string.
    pub id: String,
    pub connections: u64,
}

/// A push's answer: [`Sent`] for qos 0, [`PushAnswer`] for qos 1.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PushResult {
    Live(Sent),
    Durable(PushAnswer),
}

/// `GET /v1/apps/{app}/users/{user}/messages`: a page of the user's held durable messages.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Inbox {
    pub app: String,
    pub user: String,
    /// The inbox's last seq (0 when it has had none).
    pub head: u64,
    /// The `after` of the next page: the last seq of this one, or `after` when it is empty.
    pub next_after: u64,
    pub messages: Vec<InboxMessage>,
}

/// A held message: a JSON payload embedded as it was sent, any other as base64.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxMessage {
    pub seq: u64,
    /// Decimal string.
    pub id: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// A JSON payload (exactly one of `payload` and `payload_base64`).
    #[schema(value_type = Option<Value>)]
    pub payload: Option<Value>,
    /// A binary payload, standard base64 with padding.
    pub payload_base64: Option<String>,
}

/// `GET /v1/apps/{app}/users/{user}/presence`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    pub app: String,
    pub user: String,
    /// The user has at least one connection.
    pub online: bool,
    pub connections: Vec<PresenceConnection>,
    /// Every device with a position in the inbox.
    pub devices: Vec<DevicePosition>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceConnection {
    pub node: String,
    /// The connection's `connected.conn_id`.
    pub conn: u64,
    pub device: String,
    pub transport: TransportName,
    pub connected_at_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePosition {
    pub device: String,
    /// The last seq the device acked.
    pub acked: u64,
    /// It has a connection now.
    pub online: bool,
}

/// `POST .../users/{user}/kick`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Kicked {
    /// Connections closed (for another node: asked to close).
    pub kicked: u64,
}

/// `POST .../topics/{topic}/publish`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// `publication.msg_id`, a decimal string.
    pub id: String,
    /// qos 1: its offset in the topic's history; qos 0: `null`.
    pub offset: Option<u64>,
    /// Subscribers on this node when it was queued.
    pub subscribers: u64,
    /// Other nodes it was sent to.
    pub nodes: u64,
}

/// `GET /v1/apps/{app}/topics/{topic}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicInfo {
    pub app: String,
    pub topic: String,
    /// Subscribers on this node.
    pub subscribers: u64,
    /// The last offset (0 before the first qos 1 publication).
    pub offset: u64,
    /// The oldest offset the history holds, `null` when it holds none.
    pub earliest: Option<u64>,
}

/// `GET /v1/apps/{app}/users/{user}/topics`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserTopics {
    pub app: String,
    pub user: String,
    /// The topics the business subscribed the user to.
    pub topics: Vec<String>,
}

/// `POST` and `DELETE .../users/{user}/topics/{topic}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub app: String,
    pub user: String,
    pub topic: String,
    /// The state now: `true` after `POST`, `false` after `DELETE`.
    pub subscribed: bool,
    /// `false` when it already was so.
    pub changed: bool,
    /// The user's connections it was applied to.
    pub connections: u64,
}

/// `GET /v1/dispatch` (docs/protocol.md, section 11).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dispatched {
    pub app: String,
    pub user: String,
    /// In the order to try them.
    pub endpoints: Vec<DispatchEndpoint>,
    pub reconnect: Reconnect,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchEndpoint {
    /// `tcp://`, `tls://`, `ws://` or `wss://`; with `transport=mqtt`, `mqtt://`, `mqtts://`,
    /// or `ws://`/`wss://` ending in `/mqtt`.
    pub url: String,
    pub transport: EndpointTransport,
    pub node: String,
    /// A `ws://` or `wss://` endpoint's SSE stream (`http(s)://.../v1/sse`); absent for
    /// the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
}

/// The delays between rounds of connect attempts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub jitter: f64,
}

/// `POST /v1/admin/drain`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Draining {
    /// Always `true`.
    pub draining: bool,
    /// `false` when a drain was already under way.
    pub began: bool,
    /// Connections when it began.
    pub connections: u64,
    /// The window the closes spread over.
    pub spread_ms: u64,
}

/// `GET /v1/admin/stats`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    pub node: String,
    pub ready: bool,
    pub draining: bool,
    /// The endpoints the node announces.
    pub endpoints: Vec<String>,
    pub connections: ConnectionStats,
    #[schema(value_type = Vec<crate::webhook::HookStats>)]
    pub webhooks: Vec<Value>,
    pub outbound: OutboundStats,
    /// App -> its fan-out queue.
    pub fanout: BTreeMap<String, QueueStats>,
    pub store: StoreStats,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionStats {
    pub total: u64,
    pub tcp: u64,
    pub ws: u64,
    pub sse: u64,
    pub mqtt: u64,
    /// App -> its connections by transport (a connection bound to several apps counts in
    /// each).
    pub by_app: BTreeMap<String, TransportCounts>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransportCounts {
    pub tcp: u64,
    pub ws: u64,
    pub sse: u64,
    pub mqtt: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundStats {
    pub queued_bytes: u64,
    /// Connections whose queue is past half its limit.
    pub over_half: u64,
    pub limit_bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueStats {
    pub queued: u64,
    pub capacity: u64,
}

/// The store: `{"backend": "memory"}`, or the embedded store's figures.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreStats {
    /// `memory` or `embedded`.
    pub backend: String,
    pub disk_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub min_free_bytes: Option<u64>,
    pub accepts_messages: Option<bool>,
    /// Why it takes no new messages, if it does not.
    pub problem: Option<String>,
    pub reopens: Option<u64>,
    pub queued_writes: Option<u64>,
    pub batches: Option<u64>,
    pub fsyncs: Option<u64>,
    pub appends: Option<u64>,
    pub publishes: Option<u64>,
}

/// `GET /v1/admin/nodes`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nodes {
    /// The node that answered.
    pub node: String,
    /// Its clock when it read the list, ms since the epoch (what `alive` was decided at).
    pub now_ms: u64,
    /// Sorted by id.
    pub nodes: Vec<NodeEntry>,
}

/// A node as its last announcement to the registry describes it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: String,
    /// The endpoints the dispatcher hands out for it, in its order.
    pub endpoints: Vec<String>,
    /// Its `node.zone`; empty for none.
    pub zone: String,
    pub state: NodeState,
    /// Open client connections when it last announced.
    pub connections: u64,
    /// Its `limits.max_connections`.
    pub max_connections: u64,
    /// Its announcement still holds: `false` for a node that stopped announcing (crashed, cut
    /// off from the registry), listed until a live node reaps it.
    pub alive: bool,
    /// Until when its announcement holds, ms since the epoch.
    pub expires_ms: u64,
}

/// `serving`: the dispatcher offers it; `draining`: it refuses new clients and moves its
/// connections elsewhere.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Serving,
    Draining,
}
