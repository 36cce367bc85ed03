//! Configuration: one typed tree, defaults in code, TOML file, environment overrides, validated
//! before start with every problem reported at once.
//!
//! Environment overrides: `TETHER_<SECTION>__<KEY>=value`, e.g. `TETHER_LISTEN__TCP=0.0.0.0:7400`
//! or `TETHER_LIMITS__MAX_CONNECTIONS=50000`. The value is read as a TOML value when it parses
//! as one (numbers, booleans) and as a string otherwise.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tether_core::{AppId, validate_id};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub listen: ListenConfig,
    pub limits: Limits,
    pub gateway: GatewayConfig,
    pub store: StoreConfig,
    pub rate: RateConfig,
    pub apps: Vec<AppConfig>,
    pub webhook: WebhookConfig,
    pub dispatch: DispatchConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id, unique in a cluster.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    /// Where the node keeps its state (the generated demo app; the durable store later).
    pub data_dir: PathBuf,
    /// The TCP endpoints the dispatcher hands to clients for this node (`tcp://host:port`),
    /// in order. Empty: the TCP listener's address.
    pub advertise_tcp: Vec<String>,
    /// The WebSocket endpoints the dispatcher hands to clients (`ws://host:port/ws`, or
    /// `wss://` behind a TLS proxy), in order. Empty: the WebSocket listener's address.
    pub advertise_ws: Vec<String>,
    /// How often the node announces itself (endpoints, load, draining) to the registry. An
    /// announcement holds for three intervals.
    #[serde(deserialize_with = "duration")]
    pub announce_interval: Duration,
    /// Where the node runs (a data centre, an availability zone); empty for none. The
    /// dispatcher sends a client that names its zone to nodes of that zone first.
    pub zone: String,
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
    /// Set SO_REUSEPORT so that several processes can share the gateway ports.
    pub reuse_port: bool,
    /// Listen backlog.
    pub backlog: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open gateway connections on this node (handshaking ones included).
    pub max_connections: usize,
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

/// Per-app rate control. Each app may override these in its own `[[apps]]` entry.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// API requests that send messages (push, publish, broadcast) per second and app; over
    /// it the API answers 429 with `Retry-After`. 0: no limit.
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
    /// Clock skew tolerated on token expiry.
    #[serde(deserialize_with = "duration")]
    pub token_leeway: Duration,
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The bearer key of the admin API. None: the admin API is disabled (404).
    pub key: Option<Secret>,
}

/// A tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: AppId,
    /// Signs client tokens (JWT HS256).
    pub secret: Secret,
    /// Authenticates the business server on the HTTP API.
    pub api_key: Secret,
    /// Overrides `rate.requests_per_sec` for this app.
    #[serde(default)]
    pub requests_per_sec: Option<u32>,
    /// Overrides `rate.deliveries_per_sec` for this app.
    #[serde(default)]
    pub deliveries_per_sec: Option<u32>,
    /// Where upstream data and presence events of this app are POSTed (`http://...`). None:
    /// upstream frames are answered `error` 4303.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Send `online` / `offline` events to the webhook when a user's first connection on this
    /// node opens and its last one closes.
    #[serde(default)]
    pub presence_events: bool,
}

impl AppConfig {
    /// An app with the default rate settings.
    pub fn new(id: impl Into<AppId>, secret: Secret, api_key: Secret) -> Self {
        AppConfig {
            id: id.into(),
            secret,
            api_key,
            requests_per_sec: None,
            deliveries_per_sec: None,
            webhook: None,
            presence_events: false,
        }
    }

    /// This app's rate settings: the defaults of `[rate]` with the app's overrides.
    pub fn rate(&self, defaults: &RateConfig) -> RateConfig {
        RateConfig {
            requests_per_sec: self.requests_per_sec.unwrap_or(defaults.requests_per_sec),
            deliveries_per_sec: self
                .deliveries_per_sec
                .unwrap_or(defaults.deliveries_per_sec),
            ..*defaults
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
        }
    }
}

impl WebhookConfig {
    /// The problems of `[webhook]` and of the apps' `webhook` and `presence_events` keys.
    fn problems(&self, apps: &[AppConfig]) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value, range) in [
            ("webhook.workers", self.workers, 1..=1024),
            ("webhook.queue", self.queue, 1..=1_000_000),
            ("webhook.max_in_flight", self.max_in_flight, 1..=10_000),
            ("webhook.events_batch", self.events_batch, 1..=10_000),
            ("webhook.events_queue", self.events_queue, 1..=10_000_000),
        ] {
            if !range.contains(&value) {
                problems.push(format!(
                    "{name} must be between {} and {}",
                    range.start(),
                    range.end()
                ));
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            problems.push("webhook.timeout must be between 1ms and 5m".into());
        }
        if self.retries > 100 {
            problems.push("webhook.retries must be at most 100".into());
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            problems.push("webhook.backoff_min must be non-zero and at most backoff_max".into());
        }
        if self.backoff_max > Duration::from_secs(3600) {
            problems.push("webhook.backoff_max must be at most 1h".into());
        }
        if self.events_interval.is_zero() || self.events_interval > Duration::from_secs(60) {
            problems.push("webhook.events_interval must be between 1ms and 1m".into());
        }
        for (i, app) in apps.iter().enumerate() {
            match &app.webhook {
                Some(url) => {
                    if let Err(e) = check_webhook_url(url) {
                        problems.push(format!("apps[{i}].webhook: {e}"));
                    }
                }
                None if app.presence_events => {
                    problems.push(format!("apps[{i}].presence_events needs a webhook"));
                }
                None => {}
            }
        }
        problems
    }
}

/// A webhook URL this build can POST to: `http://host[:port]/path`.
fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" if parsed.host().is_some() => Ok(()),
        "http" => Err(format!("{url:?} has no host")),
        // No TLS stack is compiled into the webhook client: terminate TLS in a proxy.
        "https" => Err(format!(
            "{url:?}: https is not supported; use http:// (to a local TLS-terminating proxy \
             when the business is remote)"
        )),
        other => Err(format!(
            "{url:?}: unsupported scheme {other:?} (use http://)"
        )),
    }
}

/// A string that never appears in logs or `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "tether-1".into(),
            data_dir: PathBuf::from("tether-data"),
            advertise_tcp: Vec::new(),
            advertise_ws: Vec::new(),
            announce_interval: Duration::from_secs(5),
            zone: String::new(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            tcp: "127.0.0.1:7400".into(),
            ws: "127.0.0.1:7401".into(),
            http: "127.0.0.1:7480".into(),
            reuse_port: false,
            backlog: 4096,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
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

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            handshake_timeout: Duration::from_secs(10),
            heartbeat_default: Duration::from_secs(25),
            heartbeat_min: Duration::from_secs(5),
            heartbeat_max: Duration::from_secs(120),
            heartbeat_missed: 3,
            write_timeout: Duration::from_secs(10),
            token_leeway: Duration::from_secs(30),
            shutdown_spread: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            drain_spread: Duration::from_secs(30),
            park_after: Duration::from_secs(2),
        }
    }
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
        }
    }
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

/// Everything wrong with a configuration, one problem per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads `path` (or the defaults when `None`), applies `TETHER_*` environment overrides,
    /// and validates. Does not touch the data directory; see [`Config::with_demo_app`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(vec![format!("cannot read {}: {e}", path.display())])
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(vec![e.message().to_owned()]))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document with no environment overrides (for tests and examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError(vec![e.message().to_owned()]))?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = validate_id("node.id", &self.node.id) {
            problems.push(e);
        }
        for (name, value, optional) in [
            ("listen.tcp", &self.listen.tcp, true),
            ("listen.ws", &self.listen.ws, true),
            ("listen.http", &self.listen.http, false),
        ] {
            if value.is_empty() && optional {
                continue;
            }
            if value.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "{name}: {value:?} is not an address like 127.0.0.1:7400"
                ));
            }
        }
        let listeners: Vec<_> = [&self.listen.tcp, &self.listen.ws, &self.listen.http]
            .into_iter()
            // Port 0 asks the kernel for a free port: those never collide.
            .filter(|a| !a.is_empty() && !a.ends_with(":0"))
            .collect();
        for (i, a) in listeners.iter().enumerate() {
            if listeners[..i].contains(a) {
                problems.push(format!("listen: {a} is used by two listeners"));
            }
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            problems.push("limits.max_connections must be at least 1".into());
        }
        if l.max_connections_per_ip == 0 {
            problems.push("limits.max_connections_per_ip must be at least 1".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&l.max_frame) {
            problems.push("limits.max_frame must be between 1024 and 16777216".into());
        }
        // A push frame carries the payload plus its header, app id and fixed fields.
        let overhead = 12 + 2 + tether_core::MAX_ID_LEN + 8 * 3 + 2;
        if l.max_payload == 0 || l.max_payload + overhead > l.max_frame as usize {
            problems.push(format!(
                "limits.max_payload must be at least 1 and at most limits.max_frame - {overhead}"
            ));
        }
        if l.max_bindings == 0 || l.max_bindings > 64 {
            problems.push("limits.max_bindings must be between 1 and 64".into());
        }
        // A JSON push carries a binary payload as base64 (4/3 of its size): the queue must
        // hold at least one of the largest, or such a push would close its client as slow.
        if l.outbound_queue_bytes < 2 * l.max_frame as usize {
            problems
                .push("limits.outbound_queue_bytes must be at least twice limits.max_frame".into());
        }
        // Each connection keeps its limit in 32 bits.
        if l.outbound_queue_bytes > u32::MAX as usize {
            problems.push("limits.outbound_queue_bytes must be at most 4294967295 (4 GiB)".into());
        }
        if l.max_push_users == 0 {
            problems.push("limits.max_push_users must be at least 1".into());
        }
        if l.api_body_bytes < l.max_payload * 2 {
            problems.push("limits.api_body_bytes must be at least twice limits.max_payload".into());
        }
        if l.api_timeout.is_zero() || l.api_timeout > Duration::from_secs(600) {
            problems.push("limits.api_timeout must be between 1ms and 10m".into());
        }
        let g = &self.gateway;
        if g.heartbeat_min.is_zero() || g.heartbeat_min > g.heartbeat_max {
            problems
                .push("gateway.heartbeat_min must be non-zero and at most heartbeat_max".into());
        }
        if g.heartbeat_default < g.heartbeat_min || g.heartbeat_default > g.heartbeat_max {
            problems.push(
                "gateway.heartbeat_default must lie within [heartbeat_min, heartbeat_max]".into(),
            );
        }
        if g.heartbeat_max > Duration::from_secs(3600) {
            problems.push("gateway.heartbeat_max must be at most 1h".into());
        }
        if !(1..=100).contains(&g.heartbeat_missed) {
            problems.push("gateway.heartbeat_missed must be between 1 and 100".into());
        }
        for (name, d) in [
            ("gateway.handshake_timeout", g.handshake_timeout),
            ("gateway.write_timeout", g.write_timeout),
            ("gateway.shutdown_grace", g.shutdown_grace),
        ] {
            if d.is_zero() || d > Duration::from_secs(600) {
                problems.push(format!("{name} must be between 1ms and 10m"));
            }
        }
        if g.token_leeway > Duration::from_secs(3600) {
            problems.push("gateway.token_leeway must be at most 1h".into());
        }
        if g.shutdown_spread > Duration::from_secs(3600) {
            problems.push("gateway.shutdown_spread must be at most 1h".into());
        }
        let st = &self.store;
        if st.sync_interval.is_zero() || st.sync_interval > Duration::from_secs(10) {
            problems.push("store.sync_interval must be between 1ms and 10s".into());
        }
        if !(1..=1_000_000).contains(&st.inbox_cap) {
            problems.push("store.inbox_cap must be between 1 and 1000000".into());
        }
        if st.default_ttl.is_zero() || st.default_ttl > st.max_ttl {
            problems.push("store.default_ttl must be non-zero and at most store.max_ttl".into());
        }
        if st.max_ttl > Duration::from_secs(365 * 86_400) {
            problems.push("store.max_ttl must be at most 365d".into());
        }
        if st.idempotency_window.is_zero()
            || st.idempotency_window > Duration::from_secs(7 * 86_400)
        {
            problems.push("store.idempotency_window must be between 1ms and 7d".into());
        }
        if !(1..=10_000_000).contains(&st.queue) {
            problems.push("store.queue must be between 1 and 10000000".into());
        }
        if st.max_attempts == 0 {
            problems.push("store.max_attempts must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&st.topic_history) {
            problems.push("store.topic_history must be between 1 and 1000000".into());
        }
        if !(1..=10_000).contains(&l.max_topics) {
            problems.push("limits.max_topics must be between 1 and 10000".into());
        }
        for (who, rate) in std::iter::once(("rate".to_owned(), self.rate)).chain(
            self.apps
                .iter()
                .map(|a| (format!("apps.{}", a.id), a.rate(&self.rate))),
        ) {
            if rate.requests_per_sec > 0 && rate.requests_burst == 0 {
                problems.push(format!("{who}: requests_burst must be at least 1"));
            }
            if rate.deliveries_per_sec > 0 && rate.deliveries_burst == 0 {
                problems.push(format!("{who}: deliveries_burst must be at least 1"));
            }
        }
        if !(1..=1_000_000).contains(&self.rate.fanout_queue) {
            problems.push("rate.fanout_queue must be between 1 and 1000000".into());
        }
        problems.extend(self.webhook.problems(&self.apps));
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            if let Err(e) = validate_id("app id", app.id.as_str()) {
                problems.push(format!("apps[{i}].id: {e}"));
            }
            if !ids.insert(app.id.as_str()) {
                problems.push(format!("apps[{i}].id {:?} appears twice", app.id.as_str()));
            }
            if app.secret.expose().len() < 16 {
                problems.push(format!("apps[{i}].secret must be at least 16 characters"));
            }
            if app.api_key.expose().len() < 16 {
                problems.push(format!("apps[{i}].api_key must be at least 16 characters"));
            }
            if !keys.insert(app.api_key.expose()) {
                problems.push(format!("apps[{i}].api_key is used by another app"));
            }
        }
        self.validate_operations(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The dispatcher, announcements, drain and admin settings.
    fn validate_operations(&self, problems: &mut Vec<String>) {
        let n = &self.node;
        for (name, urls, schemes) in [
            ("node.advertise_tcp", &n.advertise_tcp, &["tcp"][..]),
            ("node.advertise_ws", &n.advertise_ws, &["ws", "wss"][..]),
        ] {
            if urls.len() > 8 {
                problems.push(format!("{name}: at most 8 endpoints"));
            }
            for url in urls {
                if let Err(e) = check_endpoint(url, schemes) {
                    problems.push(format!("{name}: {url:?} {e}"));
                }
            }
        }
        let c = &self.cluster;
        for url in &c.redis {
            if !["redis://", "rediss://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                problems.push(format!(
                    "cluster.redis: {url:?} must start with redis:// or rediss:// (TLS)"
                ));
            }
        }
        if let Some(path) = &c.tls_ca {
            if !path.is_file() {
                problems.push(format!("cluster.tls_ca: {} is not a file", path.display()));
            }
            if !c.redis.iter().any(|u| u.starts_with("rediss://")) {
                problems.push("cluster.tls_ca is set but no cluster.redis URL is rediss://".into());
            }
        }
        if c.redis.len() > 1 && !c.redis_cluster {
            problems.push(
                "cluster.redis: several URLs are seeds of a Redis Cluster: set cluster.redis_cluster = true"
                    .into(),
            );
        }
        if c.prefix.is_empty() || c.prefix.contains(['{', '}']) {
            problems.push("cluster.prefix must be non-empty and hold no { or }".into());
        }
        if c.timeout < Duration::from_millis(10) || c.timeout > Duration::from_secs(60) {
            problems.push("cluster.timeout must be between 10ms and 60s".into());
        }
        match (c.enabled(), self.store.backend) {
            (true, StoreBackend::Redis) | (false, StoreBackend::Embedded | StoreBackend::Memory) => {}
            (true, _) => problems.push(
                "cluster.redis is set: store.backend must be \"redis\" (nodes of a cluster share one store)"
                    .into(),
            ),
            (false, StoreBackend::Redis) => problems
                .push("store.backend = \"redis\" needs cluster.redis (the Redis URLs)".into()),
        }
        if n.zone.len() > 64 || n.zone.chars().any(|c| c.is_control() || c == ' ') {
            problems.push("node.zone must be at most 64 bytes, without spaces".into());
        }
        if n.announce_interval < Duration::from_millis(100)
            || n.announce_interval > Duration::from_secs(300)
        {
            problems.push("node.announce_interval must be between 100ms and 5m".into());
        }
        if self.gateway.drain_spread > Duration::from_secs(3600) {
            problems.push("gateway.drain_spread must be at most 1h".into());
        }
        if self.gateway.park_after > Duration::from_secs(3600) {
            problems.push("gateway.park_after must be at most 1h (0 turns parking off)".into());
        }
        let d = &self.dispatch;
        if d.reconnect_initial < Duration::from_millis(10) || d.reconnect_initial > d.reconnect_max
        {
            problems.push(
                "dispatch.reconnect_initial must be at least 10ms and at most reconnect_max".into(),
            );
        }
        if d.reconnect_max > Duration::from_secs(3600) {
            problems.push("dispatch.reconnect_max must be at most 1h".into());
        }
        if !(0.0..=1.0).contains(&d.reconnect_jitter) {
            problems.push("dispatch.reconnect_jitter must be between 0 and 1".into());
        }
        if let Some(key) = &self.admin.key
            && key.expose().len() < 16
        {
            problems.push("admin.key must be at least 16 characters".into());
        }
    }

    /// When no app is configured, adds the `demo` app, whose secret and API key are generated
    /// on first use and kept in `<data_dir>/demo-app.toml`. Returns the app when it was added
    /// (so that the caller can print it).
    pub fn with_demo_app(&mut self) -> anyhow::Result<Option<AppConfig>> {
        if !self.apps.is_empty() {
            return Ok(None);
        }
        let path = self.node.data_dir.join("demo-app.toml");
        let app = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<AppConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let app = AppConfig::new(
                    AppId::from("demo"),
                    Secret::new(random_hex(32)),
                    Secret::new(format!("tk_{}", random_hex(24))),
                );
                std::fs::create_dir_all(&self.node.data_dir)?;
                let text = format!(
                    "# Generated on first start because no app is configured. Delete to regenerate.\n\
                     id = \"demo\"\nsecret = \"{}\"\napi_key = \"{}\"\n",
                    app.secret.expose(),
                    app.api_key.expose()
                );
                write_private(&path, &text)?;
                app
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        self.apps.push(app.clone());
        self.validate()?;
        Ok(Some(app))
    }

    pub fn app(&self, id: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.id.as_str() == id)
    }

    /// A configuration for tests: every listener on 127.0.0.1 port 0, one app `demo` with a
    /// fixed secret and key, a data directory under the system's temp dir.
    pub fn for_tests() -> Config {
        let mut config = Config::default();
        config.listen.tcp = "127.0.0.1:0".into();
        config.listen.ws = "127.0.0.1:0".into();
        config.listen.http = "127.0.0.1:0".into();
        config.node.data_dir = std::env::temp_dir().join("tether-tests");
        // Tests share one data directory: keep their inboxes apart.
        config.store.backend = StoreBackend::Memory;
        config.apps.push(AppConfig::new(
            AppId::from("demo"),
            Secret::new("demo-secret-0123456789"),
            Secret::new("demo-api-key-0123456789"),
        ));
        config
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for (key, value) in env {
        let Some(path) = key.strip_prefix("TETHER_") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if parts.len() != 2 || parts.iter().any(String::is_empty) {
            // TETHER_CONFIG and similar are CLI variables, not overrides.
            if path.contains("__") {
                problems.push(format!("{key}: expected TETHER_<SECTION>__<KEY>"));
            }
            continue;
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let section = table
            .entry(parts[0].clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section.as_table_mut() {
            Some(section) => {
                section.insert(parts[1].clone(), parsed);
            }
            None => problems.push(format!("{key}: [{}] is not a section", parts[0])),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(problems))
    }
}

/// Checks an advertised endpoint: `scheme://host:port[/path]`, with a scheme of `schemes`; TCP
/// endpoints take no path.
fn check_endpoint(url: &str, schemes: &[&str]) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("is not a URL like {}://host:port", schemes[0]));
    };
    if !schemes.contains(&scheme) {
        return Err(format!("must use {}://", schemes.join(":// or ")));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err("has whitespace, a comma or a control character".into());
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if scheme == "tcp" && !matches!(path, "" | "/") {
        return Err("takes no path".into());
    }
    // The port is what follows the last ':' outside IPv6 brackets.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    if host.is_empty() || host.ends_with(':') {
        return Err("needs a host".into());
    }
    match port {
        // WebSocket URLs may leave the port to the scheme (80, 443).
        None if scheme != "tcp" => Ok(()),
        None => Err("needs a port".into()),
        Some(port) => match port.parse::<u16>() {
            Ok(1..) => Ok(()),
            _ => Err("has a bad port".into()),
        },
    }
}

/// Reads "250ms", "10s", "5m", "1h" (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 250ms, 5m, 1h or 3d"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m, h or d)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A string field that also takes a bare number (`TETHER_NODE__ID=7`).
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Int(i64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Int(n) => n.to_string(),
    })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

/// A commented example configuration, printed by `tether config example`.
pub const EXAMPLE: &str = include_str!("../../../docs/tether.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_valid() {
        let config = Config::from_toml(EXAMPLE).expect("docs/tether.example.toml must be valid");
        assert!(!config.apps.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_toml(
            r#"
            [listen]
            tcp = "nowhere"
            [gateway]
            heartbeat_min = "10s"
            heartbeat_max = "5s"
            [[apps]]
            id = "a"
            secret = "short"
            api_key = "short"
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in ["listen.tcp", "heartbeat_min", "secret", "api_key"] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn webhook_keys_are_checked() {
        let err = Config::from_toml(
            r#"
            [webhook]
            workers = 0
            backoff_min = "5s"
            backoff_max = "1s"
            [[apps]]
            id = "a"
            secret = "0123456789abcdef"
            api_key = "0123456789abcdef"
            webhook = "https://business.example/hook"
            [[apps]]
            id = "b"
            secret = "0123456789abcdefg"
            api_key = "0123456789abcdefg"
            presence_events = true
            [[apps]]
            id = "c"
            secret = "0123456789abcdefh"
            api_key = "0123456789abcdefh"
            webhook = "not a url"
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "webhook.workers",
            "webhook.backoff_min",
            "apps[0].webhook",
            "https is not supported",
            "apps[1].presence_events needs a webhook",
            "apps[2].webhook",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let ok = Config::from_toml(
            r#"
            [[apps]]
            id = "a"
            secret = "0123456789abcdef"
            api_key = "0123456789abcdef"
            webhook = "http://127.0.0.1:9000/tether"
            presence_events = true
            "#,
        )
        .unwrap();
        assert_eq!(
            ok.apps[0].webhook.as_deref(),
            Some("http://127.0.0.1:9000/tether")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Config::from_toml("[limits]\nmax_conections = 5\n").is_err());
    }

    #[test]
    fn env_overrides_apply_and_are_typed() {
        let env = [
            (
                "TETHER_LIMITS__MAX_CONNECTIONS".to_string(),
                "42".to_string(),
            ),
            ("TETHER_LISTEN__TCP".to_string(), "0.0.0.0:9000".to_string()),
            (
                "TETHER_GATEWAY__HANDSHAKE_TIMEOUT".to_string(),
                "3s".to_string(),
            ),
            ("TETHER_CONFIG".to_string(), "ignored.toml".to_string()),
            ("TETHER_NODE__ID".to_string(), "7".to_string()),
        ];
        let config = Config::load_with_env(None, env).unwrap();
        assert_eq!(config.limits.max_connections, 42);
        assert_eq!(config.listen.tcp, "0.0.0.0:9000");
        assert_eq!(config.gateway.handshake_timeout, Duration::from_secs(3));
        assert_eq!(
            config.node.id, "7",
            "a numeric-looking string stays a string"
        );
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let err =
            Config::from_toml("[listen]\ntcp = \"127.0.0.1:9000\"\nws = \"127.0.0.1:9000\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("used by two listeners"), "{err}");
    }

    #[test]
    fn operations_settings_are_checked() {
        let err = Config::from_toml(
            r#"
            [node]
            advertise_tcp = ["tcp://10.0.0.1:7400", "ws://10.0.0.1:7401/ws", "tcp://h:0"]
            advertise_ws = ["wss://push.example.com/ws", "ws://:80/ws", "tcp://h:1"]
            announce_interval = "10ms"
            [dispatch]
            reconnect_jitter = 1.5
            [admin]
            key = "short"
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "\"ws://10.0.0.1:7401/ws\" must use tcp://",
            "\"tcp://h:0\" has a bad port",
            "\"ws://:80/ws\" needs a host",
            "\"tcp://h:1\" must use ws:// or wss://",
            "announce_interval",
            "reconnect_jitter",
            "admin.key",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("wss://push"), "{text}");
        let good = Config::from_toml(
            "[node]\nadvertise_tcp = [\"tcp://[::1]:7400\"]\n[admin]\nkey = \"an-admin-key-0123456789\"\n",
        )
        .unwrap();
        assert!(!format!("{good:?}").contains("an-admin-key"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let config = Config::for_tests();
        let debug = format!("{config:?}");
        assert!(!debug.contains("demo-secret"));
        assert!(!debug.contains("demo-api-key"));
    }

    #[test]
    fn the_demo_app_is_generated_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut first = Config::default();
        first.node.data_dir = dir.clone();
        let app = first.with_demo_app().unwrap().unwrap();
        let mut second = Config::default();
        second.node.data_dir = dir.clone();
        let again = second.with_demo_app().unwrap().unwrap();
        assert_eq!(app.secret, again.secret);
        assert_eq!(app.api_key, again.api_key);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
