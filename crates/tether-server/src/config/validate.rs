//! Validation: every check of [`Config::validate`], in the order its problems are reported.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use tether_core::validate_id;

use super::{AccessConfig, AppConfig, Config, ConfigError, StoreBackend, WebhookConfig};
use crate::edge::cidr::Net;
use crate::edge::origin::OriginPattern;

impl Config {
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
            ("listen.tls", &self.listen.tls, true),
            ("listen.wss", &self.listen.wss, true),
            ("listen.https", &self.listen.https, true),
            ("listen.mqtt", &self.listen.mqtt, true),
            ("listen.mqtts", &self.listen.mqtts, true),
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
        let l = &self.listen;
        let listeners: Vec<_> = [
            &l.tcp, &l.ws, &l.http, &l.tls, &l.wss, &l.https, &l.mqtt, &l.mqtts,
        ]
        .into_iter()
        // Port 0 asks the kernel for a free port: those never collide.
        .filter(|a| !a.is_empty() && !a.ends_with(":0"))
        .collect();
        for (i, a) in listeners.iter().enumerate() {
            if listeners[..i].contains(a) {
                problems.push(format!("listen: {a} is used by two listeners"));
            }
        }
        for (name, access, gateway, ws) in [
            ("listen.tcp_access", &self.listen.tcp_access, true, false),
            ("listen.ws_access", &self.listen.ws_access, true, true),
            ("listen.mqtt_access", &self.listen.mqtt_access, true, false),
            ("listen.http_access", &self.listen.http_access, false, false),
        ] {
            problems.extend(access.problems(name, gateway, ws));
        }
        problems.extend(crate::gateway::affinity::problems(
            &self.listen,
            &self.node.id,
        ));
        problems.extend(crate::tls::problems(self));
        let l = &self.limits;
        if l.max_connections == 0 {
            problems.push("limits.max_connections must be at least 1".into());
        }
        if l.fd_reserve
            .is_some_and(|r| r < crate::descriptors::MIN_RESERVE_SET)
        {
            problems.push(format!(
                "limits.fd_reserve must be at least {}",
                crate::descriptors::MIN_RESERVE_SET
            ));
        }
        if l.max_connections_per_ip == 0 {
            problems.push("limits.max_connections_per_ip must be at least 1".into());
        }
        problems.extend(out_of_range(
            "limits.max_frame",
            l.max_frame,
            1024..=16 * 1024 * 1024,
        ));
        // A push frame carries the payload plus its header, app id and fixed fields.
        let overhead = 12 + 2 + tether_core::MAX_ID_LEN + 8 * 3 + 2;
        if l.max_payload == 0 || l.max_payload + overhead > l.max_frame as usize {
            problems.push(format!(
                "limits.max_payload must be at least 1 and at most limits.max_frame - {overhead}"
            ));
        }
        problems.extend(out_of_range("limits.max_bindings", l.max_bindings, 1..=64));
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
        if self.mqtt.max_inflight == 0 {
            problems.push("mqtt.max_inflight must be at least 1".into());
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
        problems.extend(over_an_hour("gateway.heartbeat_max", g.heartbeat_max));
        problems.extend(out_of_range(
            "gateway.heartbeat_missed",
            g.heartbeat_missed,
            1..=100,
        ));
        for (name, d) in [
            ("gateway.handshake_timeout", g.handshake_timeout),
            ("gateway.write_timeout", g.write_timeout),
            ("gateway.shutdown_grace", g.shutdown_grace),
        ] {
            if d.is_zero() || d > Duration::from_secs(600) {
                problems.push(format!("{name} must be between 1ms and 10m"));
            }
        }
        if g.socket_send_buffer > i32::MAX as usize / 2 {
            problems.push("gateway.socket_send_buffer must be at most 1073741823 (1 GiB)".into());
        }
        problems.extend(over_an_hour("gateway.token_leeway", g.token_leeway));
        problems.extend(over_an_hour("gateway.shutdown_spread", g.shutdown_spread));
        if g.ws_echo && !self.test_modes {
            problems.push(
                "gateway.ws_echo is a test mode (WebSocket clients are echoed, not served): \
                 a node takes it only when started with --test-modes"
                    .into(),
            );
        }
        let st = &self.store;
        if st.sync_interval.is_zero() || st.sync_interval > Duration::from_secs(10) {
            problems.push("store.sync_interval must be between 1ms and 10s".into());
        }
        problems.extend(out_of_range("store.inbox_cap", st.inbox_cap, 1..=1_000_000));
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
        problems.extend(out_of_range("store.queue", st.queue, 1..=10_000_000));
        if st.max_attempts == 0 {
            problems.push("store.max_attempts must be at least 1".into());
        }
        problems.extend(out_of_range(
            "store.topic_history",
            st.topic_history,
            1..=1_000_000,
        ));
        problems.extend(out_of_range(
            "store.min_free_bytes",
            st.min_free_bytes,
            0..=1 << 50,
        ));
        problems.extend(out_of_range("limits.max_topics", l.max_topics, 1..=10_000));
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
        problems.extend(out_of_range(
            "rate.fanout_queue",
            self.rate.fanout_queue,
            1..=1_000_000,
        ));
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
            let named = std::iter::once((format!("apps[{i}].api_key"), &app.api_key)).chain(
                app.api_keys
                    .iter()
                    .enumerate()
                    .map(|(j, k)| (format!("apps[{i}].api_keys[{j}].key"), &k.key)),
            );
            for (key, secret) in named {
                if secret.expose().len() < 16 {
                    problems.push(format!("{key} must be at least 16 characters"));
                }
                if !keys.insert(secret.expose()) {
                    problems.push(format!("{key} is already used (by this app or another)"));
                }
            }
            let leeway = self.gateway.token_leeway;
            problems.extend(
                app.access_problems(leeway)
                    .into_iter()
                    .map(|p| format!("apps[{i}].{p}")),
            );
        }
        self.validate_operations(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.into())
        }
    }

    /// The dispatcher, announcements, drain and admin settings.
    fn validate_operations(&self, problems: &mut Vec<String>) {
        let n = &self.node;
        for (name, urls, schemes) in [
            ("node.advertise_tcp", &n.advertise_tcp, &["tcp", "tls"][..]),
            ("node.advertise_ws", &n.advertise_ws, &["ws", "wss"][..]),
            (
                "node.advertise_mqtt",
                &n.advertise_mqtt,
                &["mqtt", "mqtts", "ws", "wss"][..],
            ),
        ] {
            if urls.len() > 8 {
                problems.push(format!("{name}: at most 8 endpoints"));
            }
            for url in urls {
                if let Err(e) = check_endpoint(url, schemes) {
                    problems.push(format!("{name}: {url:?} {e}"));
                    continue;
                }
                // The dispatcher tells MQTT over WebSocket by its path (`crate::dispatch`).
                let mqtt = name == "node.advertise_mqtt";
                let ws = url.starts_with("ws://") || url.starts_with("wss://");
                let mqtt_path = url
                    .split_once("://")
                    .is_some_and(|(_, rest)| crate::dispatch::is_mqtt_path(rest));
                if ws && mqtt && !mqtt_path {
                    problems.push(format!(
                        "{name}: {url:?} must end in /mqtt (MQTT over WebSocket)"
                    ));
                }
                if ws && !mqtt && mqtt_path {
                    problems.push(format!(
                        "{name}: {url:?} ends in /mqtt, which is MQTT's: put it in \
                         node.advertise_mqtt"
                    ));
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
                    "cluster.redis: {:?} must start with redis:// or rediss:// (TLS)",
                    without_credentials(url)
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
        if self.log.filter.trim().is_empty() {
            problems.push("log.filter must not be empty: write a level such as info".into());
        } else if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.filter) {
            // Worded without a bare `log`: a word that names a section is read as a key, and a
            // problem about a key that could not be read (`log.format`) would be dropped.
            problems.push(format!(
                "log.filter: {:?} is not a tracing filter ({e}); write a level (info) or \
                 target=level pairs (info,tether_server::gateway=debug)",
                self.log.filter
            ));
        }
        if n.announce_interval < Duration::from_millis(100)
            || n.announce_interval > Duration::from_secs(300)
        {
            problems.push("node.announce_interval must be between 100ms and 5m".into());
        }
        problems.extend(over_an_hour(
            "gateway.drain_spread",
            self.gateway.drain_spread,
        ));
        if self.gateway.park_after > ONE_HOUR {
            problems.push("gateway.park_after must be at most 1h (0 turns parking off)".into());
        }
        let d = &self.dispatch;
        if d.reconnect_initial < Duration::from_millis(10) || d.reconnect_initial > d.reconnect_max
        {
            problems.push(
                "dispatch.reconnect_initial must be at least 10ms and at most reconnect_max".into(),
            );
        }
        problems.extend(over_an_hour("dispatch.reconnect_max", d.reconnect_max));
        problems.extend(out_of_range(
            "dispatch.reconnect_jitter",
            d.reconnect_jitter,
            0.0..=1.0,
        ));
        if let Some(key) = &self.admin.key
            && key.expose().len() < 16
        {
            problems.push("admin.key must be at least 16 characters".into());
        }
        if self.admin.profile_max_seconds > super::PROFILE_MAX_SECONDS {
            problems.push(format!(
                "admin.profile_max_seconds must be at most {} (0: no profiling)",
                super::PROFILE_MAX_SECONDS
            ));
        }
    }
}

impl AccessConfig {
    /// The problems of one listener's `*_access` table (`name`); `gateway` and `ws` say which
    /// keys it takes.
    fn problems(&self, name: &str, gateway: bool, ws: bool) -> Vec<String> {
        let mut problems = Vec::new();
        for (list, entries) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, entry) in entries.iter().enumerate() {
                if let Err(e) = Net::parse(entry) {
                    problems.push(format!("{name}.{list}[{i}]: {e}"));
                }
            }
        }
        for (i, entry) in self.origins.iter().enumerate() {
            if let Err(e) = OriginPattern::parse(entry) {
                problems.push(format!("{name}.origins[{i}]: {e}"));
            }
        }
        if self.connections_per_ip_per_sec > 0 && self.connections_per_ip_burst == 0 {
            problems.push(format!(
                "{name}.connections_per_ip_burst must be at least 1 when connections_per_ip_per_sec is set"
            ));
        }
        if !gateway && self.connections_per_ip_per_sec > 0 {
            problems.push(format!(
                "{name}.connections_per_ip_per_sec: only the gateways' listeners (listen.tcp_access, \
                 listen.ws_access) take a per-IP rate; the API's limits are per app, in [rate]"
            ));
        }
        // The WebSocket listener checks upgrades' Origin; the API's, its client-facing routes'
        // (CORS). Only an upgrade can be refused for having none: an HTTP request without
        // Origin is no page's cross-origin call.
        let reads_origins = ws || !gateway;
        if !reads_origins && !self.origins.is_empty() {
            problems.push(format!(
                "{name}.origins: only listen.ws_access and listen.http_access check Origin headers"
            ));
        }
        if !ws && !self.allow_missing_origin {
            problems.push(format!(
                "{name}.allow_missing_origin: only listen.ws_access takes it (an HTTP request \
                 without Origin is not a web page's cross-origin call, and is served)"
            ));
        }
        problems
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
            problems.extend(out_of_range(name, value, range));
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
        problems.extend(over_an_hour("webhook.backoff_max", self.backoff_max));
        if self.events_interval.is_zero() || self.events_interval > Duration::from_secs(60) {
            problems.push("webhook.events_interval must be between 1ms and 1m".into());
        }
        let p = &self.permission;
        if p.timeout.is_zero() || p.timeout > Duration::from_secs(60) {
            problems.push("webhook.permission.timeout must be between 1ms and 1m".into());
        }
        problems.extend(out_of_range(
            "webhook.permission.concurrency",
            p.concurrency,
            1..=1024,
        ));
        problems.extend(out_of_range(
            "webhook.permission.cache_size",
            p.cache_size,
            0..=10_000_000,
        ));
        if p.max_ttl > Duration::from_secs(86_400) {
            problems.push("webhook.permission.max_ttl must be at most 1d".into());
        }
        for (name, ttl) in [("allow_ttl", p.allow_ttl), ("refuse_ttl", p.refuse_ttl)] {
            if ttl > p.max_ttl {
                problems.push(format!(
                    "webhook.permission.{name} must be at most webhook.permission.max_ttl"
                ));
            }
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

/// `url` with what comes before an `@` hidden: a Redis URL may carry a password.
fn without_credentials(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = url.find("://").map_or(0, |s| s + 3).min(at);
    format!("{}***{}", &url[..start], &url[at..])
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
    let raw_tcp = matches!(scheme, "tcp" | "tls" | "mqtt" | "mqtts");
    if raw_tcp && !matches!(path, "" | "/") {
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
        None if !raw_tcp => Ok(()),
        None => Err("needs a port".into()),
        Some(port) => match port.parse::<u16>() {
            Ok(1..) => Ok(()),
            _ => Err("has a bad port".into()),
        },
    }
}

/// The problem `{name} must be between {start} and {end}`, unless `value` lies in `range`:
/// the message is written from the bounds that are checked, so the two cannot drift apart.
fn out_of_range<T: PartialOrd + fmt::Display>(
    name: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Option<String> {
    if range.contains(&value) {
        return None;
    }
    Some(format!(
        "{name} must be between {} and {}",
        range.start(),
        range.end()
    ))
}

/// The ceiling of the heartbeat, the token leeway, the spreads, parking and the backoffs.
const ONE_HOUR: Duration = Duration::from_secs(3600);

/// The problem `{name} must be at most 1h`, when `value` is longer.
fn over_an_hour(name: &str, value: Duration) -> Option<String> {
    (value > ONE_HOUR).then(|| format!("{name} must be at most 1h"))
}
