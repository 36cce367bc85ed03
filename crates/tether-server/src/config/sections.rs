//! The `[section]` tables of the configuration, in the order of `docs/tether.example.toml`:
//! each key with its documentation, each table followed by its defaults. The checks of these
//! keys are in `validate.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::PermissionConfig;
use super::Secret;
use super::de::{duration, string_or_number};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id, unique in a cluster.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    /// Where the node keeps its state (the generated demo app; the durable store later).
    pub data_dir: PathBuf,
    /// The raw TCP endpoints the dispatcher hands to clients for this node
    /// (`tcp://host:port`, `tls://host:port`), in order. Empty: the TCP listeners' addresses
    /// (plain, then TLS).
    pub advertise_tcp: Vec<String>,
    /// The WebSocket endpoints the dispatcher hands to clients (`ws://host:port/ws`,
    /// `wss://host/ws`), in order. Empty: the WebSocket listeners' addresses (plain, then
    /// TLS).
    pub advertise_ws: Vec<String>,
    /// The MQTT endpoints the dispatcher hands to devices that ask with `transport=mqtt`
    /// (`mqtt://host:port`, `mqtts://host:port`, `ws://host:port/mqtt`, `wss://host/mqtt`), in
    /// order. Empty: the MQTT listeners' addresses (plain, then TLS), then the WebSocket
    /// listeners' `/mqtt` (plain, then TLS).
    pub advertise_mqtt: Vec<String>,
    /// How often the node announces itself (endpoints, load, draining) to the registry. An
    /// announcement holds for three intervals.
    #[serde(deserialize_with = "duration")]
    pub announce_interval: Duration,
    /// Where the node runs (a data centre, an availability zone); empty for none. The
    /// dispatcher sends a client that names its zone to nodes of that zone first.
    pub zone: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "tether-1".into(),
            data_dir: PathBuf::from("tether-data"),
            advertise_tcp: Vec::new(),
            advertise_ws: Vec::new(),
            advertise_mqtt: Vec::new(),
            announce_interval: Duration::from_secs(5),
            zone: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Raw TCP, binary frames. Empty string: disabled.
    pub tcp: String,
    /// WebSocket (`/ws`), binary or JSON frames. Empty string: disabled.
    pub ws: String,
    /// HTTP API, health and metrics.
    pub http: String,
    /// Raw TCP inside TLS (`tls://`), with the certificate of `[tls]`. Empty string: disabled.
    pub tls: String,
    /// WebSocket inside TLS (`wss://`). Empty string: disabled.
    pub wss: String,
    /// The HTTP API inside TLS, optionally with client certificates (`[tls] client_ca`).
    /// Empty string: disabled.
    pub https: String,
    /// MQTT 3.1.1 and 5.0 for devices (`docs/mqtt.md`). Empty string: disabled.
    pub mqtt: String,
    /// MQTT inside TLS (`mqtts://`), with the certificate of `[tls]`. Empty string: disabled.
    pub mqtts: String,
    /// Set SO_REUSEPORT so that several processes can share the gateway ports.
    pub reuse_port: bool,
    /// Listen backlog.
    pub backlog: u32,
    /// Who may connect to the raw TCP listeners (`tcp` and `tls`).
    pub tcp_access: AccessConfig,
    /// Who may connect to the WebSocket listeners (`ws` and `wss`; and from which web
    /// origins).
    pub ws_access: AccessConfig,
    /// Who may connect to the MQTT listeners (`mqtt` and `mqtts`).
    pub mqtt_access: AccessConfig,
    /// Who may use the HTTP API listeners (`http` and `https`: the API, `/v1/dispatch`,
    /// health and metrics).
    pub http_access: AccessConfig,
    /// The name of a cookie naming this node (`node.id` is its value) that the WebSocket
    /// listeners set on the WebSocket upgrades (`101`) and SSE streams they answer, for layer-7
    /// load balancers with cookie affinity. Empty: none.
    pub affinity_cookie: String,
    /// The affinity cookie's `SameSite` attribute.
    pub affinity_cookie_same_site: SameSite,
    /// Whether the affinity cookie is `Secure` on the plain `ws` listener too (behind a
    /// balancer that terminates TLS). On `wss` it always is.
    pub affinity_cookie_secure: bool,
}

/// A cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// Sent on requests from the cookie's own site (pages of `*.example.com` to
    /// `push.example.com`), not from other sites' pages.
    Lax,
    Strict,
    /// Sent from any site's pages too (a credentialed cross-site `EventSource`); browsers take
    /// it only with `Secure`.
    None,
}

impl SameSite {
    pub fn attribute(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            tcp: "127.0.0.1:7400".into(),
            ws: "127.0.0.1:7401".into(),
            http: "127.0.0.1:7480".into(),
            tls: String::new(),
            wss: String::new(),
            https: String::new(),
            mqtt: "127.0.0.1:7483".into(),
            mqtts: String::new(),
            reuse_port: false,
            backlog: 4096,
            tcp_access: AccessConfig::default(),
            ws_access: AccessConfig::default(),
            mqtt_access: AccessConfig::default(),
            http_access: AccessConfig::default(),
            affinity_cookie: String::new(),
            affinity_cookie_same_site: SameSite::Lax,
            affinity_cookie_secure: false,
        }
    }
}

/// Who may connect to one listener, checked as soon as a connection is accepted (see
/// `crate::edge`). Every list empty and the rate 0 (the default): everyone, at no cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Networks (`10.0.0.0/8`, `2001:db8::/32`) or addresses that may connect. Empty: any.
    pub allow: Vec<String>,
    /// Networks or addresses that may not connect, even when `allow` has them.
    pub deny: Vec<String>,
    /// New connections per second from one address (an IPv6 /64 counts as one), over
    /// `connections_per_ip_burst`. 0: no limit. Gateways only.
    pub connections_per_ip_per_sec: u32,
    /// New connections one address may open at once above the rate.
    pub connections_per_ip_burst: u32,
    /// WebSocket and HTTP API: the web origins whose pages may connect (WebSocket) or call
    /// the client-facing routes (the API's CORS: `crate::api::cors`), exact
    /// (`https://app.example.com`) or by subdomain (`https://*.example.com`). Empty: any.
    pub origins: Vec<String>,
    /// WebSocket only: whether an upgrade without an Origin header (native apps, servers;
    /// browsers always send one) may connect.
    pub allow_missing_origin: bool,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            connections_per_ip_per_sec: 0,
            connections_per_ip_burst: 10,
            origins: Vec::new(),
            allow_missing_origin: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open gateway connections on this node (handshaking ones included). Lowered at start to
    /// what the open-file limit holds after [`Limits::fd_reserve`] (see `crate::descriptors`).
    pub max_connections: usize,
    /// Open files kept for everything but gateway connections: the API's connections, the
    /// store's files, webhooks, Redis, listeners. `None`: the larger of 64 and 5% of the
    /// open-file limit.
    pub fd_reserve: Option<u64>,
    /// Open gateway connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Largest frame a client may send, length prefix excluded.
    pub max_frame: u32,
    /// Largest push payload accepted by the API, in bytes.
    pub max_payload: usize,
    /// Bindings in one `connect`.
    pub max_bindings: usize,
    /// Bytes queued for one connection before it is disconnected as slow.
    pub outbound_queue_bytes: usize,
    /// Users in one push request.
    pub max_push_users: usize,
    /// Largest API request body, in bytes.
    pub api_body_bytes: usize,
    /// Longest an API request may take, reading its body included.
    #[serde(deserialize_with = "duration")]
    pub api_timeout: Duration,
    /// Topics one connection may be subscribed to (client and server-side subscriptions
    /// together); also the most server-side subscriptions one user may have.
    pub max_topics: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            fd_reserve: None,
            max_connections_per_ip: 100_000,
            max_frame: tether_proto::DEFAULT_MAX_FRAME,
            max_payload: 32 * 1024,
            max_bindings: 8,
            outbound_queue_bytes: 256 * 1024,
            max_push_users: 1000,
            api_body_bytes: 4 * 1024 * 1024,
            api_timeout: Duration::from_secs(30),
            max_topics: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Time a new connection has to send `connect`.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// The heartbeat interval used when the client proposes none.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_default: Duration,
    /// Client proposals are clamped to [heartbeat_min, heartbeat_max].
    #[serde(deserialize_with = "duration")]
    pub heartbeat_min: Duration,
    #[serde(deserialize_with = "duration")]
    pub heartbeat_max: Duration,
    /// A connection silent for this many intervals is closed.
    pub heartbeat_missed: u32,
    /// A write that makes no progress for this long marks the client slow.
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// `SO_SNDBUF` of the gateway's sockets (raw TCP, WebSocket, SSE, TLS), in bytes: what
    /// the kernel may hold unsent for one client beyond tether's own queue
    /// (`limits.outbound_queue_bytes`). Linux doubles the value for its bookkeeping, clamps it
    /// to `net.core.wmem_max` and to at least 4608, and stops autotuning a socket whose size
    /// was set; 0 leaves the kernel's autotuning, which lets a client that stopped reading pin
    /// up to `net.ipv4.tcp_wmem`'s maximum (4 MiB on most machines). Set on the listening
    /// sockets, which the accepted ones inherit; a reload does not change it.
    pub socket_send_buffer: usize,
    /// Clock skew tolerated on token times (`exp`, `nbf`): at connect, on refresh, and when a
    /// live connection's token ends.
    #[serde(deserialize_with = "duration")]
    pub token_leeway: Duration,
    /// How long before a binding's token expires the client is sent `expiring`, so that it
    /// sends `refresh` with a new one in time.
    #[serde(deserialize_with = "duration")]
    pub token_warning: Duration,
    /// On shutdown, clients are told to come back at a random point within this window.
    #[serde(deserialize_with = "duration")]
    pub shutdown_spread: Duration,
    /// On shutdown, the node exits after at most this long.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// On a drain (`POST /v1/admin/drain`), the node closes its connections one after another
    /// over this window, so that they reconnect elsewhere spread out rather than at once.
    #[serde(deserialize_with = "duration")]
    pub drain_spread: Duration,
    /// A raw TCP connection that has neither heard from its client nor written for its task
    /// this long gives up its task and waits with its socket alone, until the client sends,
    /// something is queued for it or it is closed (memory per idle connection; see
    /// `docs/architecture.md`, "Parked connections"). A connection idle right after its
    /// handshake or a ping parks at once. 0 keeps every connection's task.
    #[serde(deserialize_with = "duration")]
    pub park_after: Duration,
    /// A test mode: every WebSocket connection echoes its messages (text as text, binary as
    /// binary) and is served nothing else, for conformance suites (`bench/autobahn.sh`).
    /// Refused unless the node allows test modes ([`super::Config::test_modes`]).
    pub ws_echo: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            handshake_timeout: Duration::from_secs(10),
            heartbeat_default: Duration::from_secs(25),
            heartbeat_min: Duration::from_secs(5),
            heartbeat_max: Duration::from_secs(120),
            heartbeat_missed: 3,
            write_timeout: Duration::from_secs(10),
            socket_send_buffer: 64 * 1024,
            token_leeway: Duration::from_secs(5),
            token_warning: Duration::from_secs(60),
            shutdown_spread: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            drain_spread: Duration::from_secs(30),
            park_after: Duration::from_secs(2),
            ws_echo: false,
        }
    }
}

/// Durable (qos 1) messages: where inboxes live, how they are written, how long they last.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded`: on disk in `<data_dir>/store`, survives restarts. `memory`: lost on exit.
    pub backend: StoreBackend,
    /// When an append counts as done; see [`Durability`].
    pub durability: Durability,
    /// With `durability = "interval"`: how often the store fsyncs.
    #[serde(deserialize_with = "duration")]
    pub sync_interval: Duration,
    /// Most messages one (app, user) inbox keeps; older ones are dropped first.
    pub inbox_cap: usize,
    /// A push without `ttl` is kept this long.
    #[serde(deserialize_with = "duration")]
    pub default_ttl: Duration,
    /// The longest `ttl` a push may ask for. Also how long a durable store keeps a device's
    /// acked position that is not written: past it, every message it covered has expired.
    #[serde(deserialize_with = "duration")]
    pub max_ttl: Duration,
    /// How long an idempotency key is remembered.
    #[serde(deserialize_with = "duration")]
    pub idempotency_window: Duration,
    /// Appends waiting for the store's writer; past it, qos 1 pushes get 503.
    pub queue: usize,
    /// The poison guard: a message that this many backlogs in a row began with, unacked, is
    /// skipped for that device.
    pub max_attempts: u32,
    /// Most publications one topic's history keeps (qos 1 publishes); older ones are dropped
    /// first. Publications also expire after their ttl (`default_ttl` unless given).
    pub topic_history: usize,
    /// The embedded store's reserve: while the filesystem of `<data_dir>/store` has less than
    /// this many bytes free, qos 1 pushes and topic publishes are refused (507
    /// `storage_full`) and the node is not ready, so that the store never meets a full disk.
    /// The reserve must hold what fjall writes after the refusal: a memtable flush (up to
    /// 64 MiB) and compactions. 0: no reserve (a full disk then fails the store, which
    /// reopens once there is room; see docs/operations.md).
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            durability: Durability::Sync,
            sync_interval: Duration::from_millis(10),
            inbox_cap: 1000,
            default_ttl: Duration::from_secs(3 * 86_400),
            max_ttl: Duration::from_secs(30 * 86_400),
            idempotency_window: Duration::from_secs(86_400),
            queue: 65_536,
            max_attempts: 5,
            topic_history: 1000,
            min_free_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Embedded,
    Memory,
    /// In Redis, with the cluster mode (`cluster.redis`).
    Redis,
}

/// When a durable append is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the fsync that covers it (one fsync covers every append waiting at the time).
    /// Survives power loss.
    Sync,
    /// After the write reaches the operating system; fsync runs every `sync_interval`.
    /// Survives a crash of the process, and loses up to `sync_interval` of appends on power
    /// loss or a kernel crash.
    Interval,
}

/// Per-app rate control. Each app may override these in its own `[[apps]]` entry.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// API requests that send messages (push, publish, broadcast) per second and app; over
    /// it the API answers 429 with `Retry-After`. A batch push counts one per push. 0: no
    /// limit.
    pub requests_per_sec: u32,
    /// Requests allowed in a burst above the rate (at least 1 when the rate is set).
    pub requests_burst: u32,
    /// Publish and broadcast deliveries (recipients) per second and app: a large fan-out is
    /// spread over time at this pace rather than dropped. 0: no limit.
    pub deliveries_per_sec: u32,
    /// Deliveries allowed in a burst above the pace.
    pub deliveries_burst: u32,
    /// Publishes and broadcasts of one app waiting for their fan-out; past it, the API
    /// answers 503 with `Retry-After`.
    pub fanout_queue: usize,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            requests_per_sec: 0,
            requests_burst: 1000,
            deliveries_per_sec: 0,
            deliveries_burst: 10_000,
            fanout_queue: 1024,
        }
    }
}

/// Webhooks: upstream data and presence events, POSTed to each app's `webhook` URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Upstream POSTs in flight per app: each app with a webhook has this many workers.
    pub workers: usize,
    /// Upstream requests of one app waiting for a worker; past it, the client gets `error`
    /// 4301 (busy, retry later).
    pub queue: usize,
    /// Upstream requests of one connection waiting for their answer; past it, `error` 4302.
    pub max_in_flight: usize,
    /// One POST attempt, from connecting to the end of the answer's body.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Attempts after the first for an upstream that got a 5xx, a network error or a timeout.
    /// Presence batches are retried until they are delivered (or refused with a 4xx).
    pub retries: u32,
    /// The first retry waits about this long; each later one twice as long, up to
    /// `backoff_max`; every wait is drawn at random between half and all of that.
    #[serde(deserialize_with = "duration")]
    pub backoff_min: Duration,
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// Presence events in one POST.
    pub events_batch: usize,
    /// A presence event waits at most this long for others to share its POST.
    #[serde(deserialize_with = "duration")]
    pub events_interval: Duration,
    /// Presence events of one app waiting to be sent; past it, new events are dropped and
    /// counted (`tether_webhook_dropped_total{kind="presence"}`).
    pub events_queue: usize,
    /// `[webhook.permission]`: the `webhook` topic rule's checks.
    pub permission: PermissionConfig,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            workers: 8,
            queue: 1024,
            max_in_flight: 16,
            timeout: Duration::from_secs(5),
            retries: 3,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            events_batch: 500,
            events_interval: Duration::from_secs(1),
            events_queue: 65_536,
            permission: PermissionConfig::default(),
        }
    }
}

/// The dispatcher (`GET /v1/dispatch`): what it tells clients besides the endpoints.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// The reconnect backoff clients should use: the ceiling of the first delay...
    #[serde(deserialize_with = "duration")]
    pub reconnect_initial: Duration,
    /// ...doubling up to this ceiling...
    #[serde(deserialize_with = "duration")]
    pub reconnect_max: Duration,
    /// ...and the random part of each delay, from 0 (none: always the ceiling) to 1 (full
    /// jitter: uniform between 0 and the ceiling).
    pub reconnect_jitter: f64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            reconnect_jitter: 1.0,
        }
    }
}

/// Cluster mode: several nodes sharing a registry, a router and a store in Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis URLs (`redis://host:port[/db]`). Empty: one node on its own (registry and
    /// router in memory). Set: registry and router in Redis, and `store.backend` must be
    /// `"redis"`.
    pub redis: Vec<String>,
    /// The URLs are seed nodes of a Redis Cluster (keys use hash tags; sharded pub/sub).
    pub redis_cluster: bool,
    /// Every Redis key starts with it, so that several deployments can share one Redis.
    pub prefix: String,
    /// How long one Redis command may take before it counts as failed.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// With `rediss://` URLs: a PEM file of the CA certificates Redis' certificate must chain
    /// to. None: the public roots.
    pub tls_ca: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: Vec::new(),
            redis_cluster: false,
            prefix: "tether".into(),
            timeout: Duration::from_secs(2),
            tls_ca: None,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }

    /// The Redis connection options, when the cluster mode is on. Reads `tls_ca`.
    pub fn redis_options(&self) -> std::io::Result<Option<tether_redis::RedisOptions>> {
        if !self.enabled() {
            return Ok(None);
        }
        let tls_ca = match &self.tls_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cluster.tls_ca {}: {e}", path.display()))
            })?),
            None => None,
        };
        Ok(Some(tether_redis::RedisOptions {
            urls: self.redis.clone(),
            cluster: self.redis_cluster,
            prefix: self.prefix.clone(),
            timeout: self.timeout,
            tls_ca,
        }))
    }
}

/// The admin API (`/v1/admin/...`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The bearer key of the admin API. None: the admin API is disabled (404).
    pub key: Option<Secret>,
    /// The longest CPU profile `GET /v1/admin/profile` records, in seconds (at most
    /// [`PROFILE_MAX_SECONDS`]); 0 turns the route off (404 `profile_disabled`).
    pub profile_max_seconds: u32,
}

/// The ceiling of `admin.profile_max_seconds`: a profile holds the node's one profiler (and
/// its client) this long at most.
pub const PROFILE_MAX_SECONDS: u32 = 60;

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            key: None,
            profile_max_seconds: PROFILE_MAX_SECONDS,
        }
    }
}

/// `tether serve`'s logs (`[log]`). The environment wins over the file: `TETHER_LOG`, else
/// `RUST_LOG`, over `filter`; `serve --log-format` (or `TETHER_LOG_FORMAT`) over `format`.
/// Read at start only: a reload that changes it says it needs a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// What is logged: a level (`info`, `debug`...) or a tracing filter of per-target levels
    /// (`info,tether_server::gateway=debug`).
    pub filter: String,
    /// `text` (one line per event, for people) or `json` (one object per line, for a
    /// collector).
    pub format: LogFormat,
}

/// What is logged when neither the environment nor `[log] filter` says: our own events at
/// INFO, the storage engine's (fjall and its LSM tree, which log every table they write) at
/// WARN.
pub const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: DEFAULT_LOG_FILTER.into(),
            format: LogFormat::Text,
        }
    }
}

/// The log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
