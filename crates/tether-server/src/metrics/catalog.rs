//! Every metric the node exports: its name, type and help text (the `# HELP` line), and each
//! histogram's buckets. One table, so that a metric cannot be exported undescribed (a unit test
//! reads the sources for names missing here) and so that docs/operations.md can be checked
//! against it.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// (name, type, help). Process metrics (`process_*`) are not here: they are read from `/proc`
/// at scrape time and written by `super::process`, with their own HELP lines.
pub const METRICS: &[(&str, Kind, &str)] = &[
    // Build.
    (
        "tether_build_info",
        Kind::Gauge,
        "Always 1; the labels say which build runs: version (the crate's) and commit (git, or unknown).",
    ),
    // Open files and connection limits.
    (
        "tether_open_files_limit",
        Kind::Gauge,
        "The process's open-file limit (soft, after raising it to the hard limit).",
    ),
    (
        "tether_open_files_reserve",
        Kind::Gauge,
        "Open files kept for everything but gateway connections.",
    ),
    (
        "tether_max_connections",
        Kind::Gauge,
        "Gateway connections allowed, after the open-file reserve.",
    ),
    (
        "tether_accept_errors_total",
        Kind::Counter,
        "accept() calls that failed, by listener (tcp, ws, http); mostly out of descriptors.",
    ),
    (
        "tether_connections_refused_total",
        Kind::Counter,
        "Connections refused before their handshake, by listener and reason (IP rules, per-IP limits, connection limits, Origin).",
    ),
    (
        "tether_rejected_connections_total",
        Kind::Counter,
        "Gateway connections refused by a listener's guard or the connection limits, all reasons together.",
    ),
    // TLS.
    (
        "tether_tls_handshakes_total",
        Kind::Counter,
        "TLS handshakes, by listener and result (ok, error, timeout, overload).",
    ),
    (
        "tether_tls_reloads_total",
        Kind::Counter,
        "Certificate files loaded again after they changed, by listener and result (ok, error: the old certificate stays).",
    ),
    // Connections and frames, by transport.
    (
        "tether_connections",
        Kind::Gauge,
        "Open gateway connections, by transport.",
    ),
    (
        "tether_connections_parked",
        Kind::Gauge,
        "Raw TCP connections waiting without a task.",
    ),
    (
        "tether_connection_unparks_total",
        Kind::Counter,
        "Parked connections that got a task again.",
    ),
    (
        "tether_frames_in_total",
        Kind::Counter,
        "Frames read from clients, by transport.",
    ),
    (
        "tether_frames_out_total",
        Kind::Counter,
        "Frames written to clients, by transport (a fan-out batch written by a connection's task counts once).",
    ),
    (
        "tether_bytes_in_total",
        Kind::Counter,
        "Frame bytes read from clients, by transport.",
    ),
    (
        "tether_bytes_out_total",
        Kind::Counter,
        "Frame bytes written to clients, by transport.",
    ),
    (
        "tether_handshakes_total",
        Kind::Counter,
        "Client handshakes, by result: ok, or the close code's label the client was given.",
    ),
    (
        "tether_disconnects_total",
        Kind::Counter,
        "Connections closed, by close code label (peer: the client went away).",
    ),
    (
        "tether_requests_refused_total",
        Kind::Counter,
        "Client requests answered with an error frame, by op and code.",
    ),
    (
        "tether_queue_overflows_total",
        Kind::Counter,
        "Connections closed as slow: their outbound queue was over its byte limit.",
    ),
    (
        "tether_sse_posts_total",
        Kind::Counter,
        "POSTs to an SSE session, by result (taken, forwarded, lost, or an error code).",
    ),
    // MQTT (docs/mqtt.md, section 12).
    (
        "tether_mqtt_connections_total",
        Kind::Counter,
        "MQTT connections accepted (CONNACK 0x00), by protocol version (3.1.1, 5.0); over TCP, TLS and WebSocket alike.",
    ),
    (
        "tether_mqtt_packets_in_total",
        Kind::Counter,
        "MQTT packets read from devices, by type (CONNECT, PUBLISH, PUBACK, ...).",
    ),
    (
        "tether_mqtt_packets_out_total",
        Kind::Counter,
        "MQTT packets written to devices, by type (CONNACK, PUBLISH, PUBACK, ...).",
    ),
    (
        "tether_mqtt_refused_total",
        Kind::Counter,
        "MQTT refusals and server disconnects, by packet (CONNACK, SUBACK, PUBACK, PUBCOMP, DISCONNECT, or close: closed without a packet, as 3.1.1 must) and reason code (0x80 and above; 3.1.1 CONNACK 0x01 to 0x05).",
    ),
    (
        "tether_mqtt_unknown_acks_total",
        Kind::Counter,
        "PUBACKs for no PUBLISH in flight (a duplicate, or one for a PUBLISH of a previous connection): ignored.",
    ),
    (
        "tether_mqtt_too_large_skipped_total",
        Kind::Counter,
        "PUBLISHes not sent because they are larger than the device's Maximum Packet Size (a durable push is then skipped for the device).",
    ),
    (
        "tether_mqtt_topic_recoveries_total",
        Kind::Counter,
        "Publications of topics subscribed at QoS 1 fetched again from the topic's history, because the device's in-flight window was full when they came.",
    ),
    (
        "tether_jwks_fetch_total",
        Kind::Counter,
        "Fetches of an app's JWKS URL, by app and result (ok, error).",
    ),
    // Messages.
    (
        "tether_pushes_total",
        Kind::Counter,
        "Pushes accepted by the API, by qos.",
    ),
    (
        "tether_push_deliveries_total",
        Kind::Counter,
        "Push frames handed to connections on this node (written or queued).",
    ),
    (
        "tether_push_write_seconds",
        Kind::Histogram,
        "From the API accepting a push to its frame reaching the first connection on this node, by qos and path (written: its bytes went to the socket at once; queued: it was put on the connection's queue, whose wait is not included).",
    ),
    (
        "tether_publishes_total",
        Kind::Counter,
        "Topic publishes accepted by the API, by qos.",
    ),
    (
        "tether_broadcasts_total",
        Kind::Counter,
        "Broadcasts accepted by the API.",
    ),
    (
        "tether_acks_total",
        Kind::Counter,
        "Acks received from clients.",
    ),
    (
        "tether_syncs_total",
        Kind::Counter,
        "sync requests answered.",
    ),
    (
        "tether_backlog_messages_total",
        Kind::Counter,
        "Durable messages sent from the store (resume backlogs), not live.",
    ),
    (
        "tether_poison_skipped_total",
        Kind::Counter,
        "Messages skipped for a device by the poison guard (sent too often without an ack).",
    ),
    (
        "tether_rate_limited_total",
        Kind::Counter,
        "API requests refused with 429 by an app's rate limit.",
    ),
    // Fan-out.
    (
        "tether_topics",
        Kind::Gauge,
        "Topics with at least one subscriber on this node.",
    ),
    (
        "tether_topic_subscriptions",
        Kind::Gauge,
        "Topic subscriptions on this node.",
    ),
    (
        "tether_fanout_queued",
        Kind::Gauge,
        "Fan-out jobs waiting in the apps' queues.",
    ),
    (
        "tether_fanout_busy_total",
        Kind::Counter,
        "Publishes, broadcasts and server-side subscriptions refused: the app's fan-out queue was full.",
    ),
    (
        "tether_fanout_deliveries_total",
        Kind::Counter,
        "Publications handed to subscribers by the fan-out, by kind (topic, broadcast).",
    ),
    (
        "tether_fanout_duration_seconds",
        Kind::Histogram,
        "Time to hand one batch of publications to every recipient on this node, by kind (topic, broadcast); pacing waits included.",
    ),
    (
        "tether_fanout_dropped_total",
        Kind::Counter,
        "Publications and broadcasts from other nodes dropped: the app's fan-out queue was full.",
    ),
    (
        "tether_paced_recipients_total",
        Kind::Counter,
        "Deliveries that waited for an app's broadcast rate limit.",
    ),
    (
        "tether_topic_gap_fills_total",
        Kind::Counter,
        "Publications read back from a topic's history to fill a gap in live fan-out.",
    ),
    // HTTP API.
    (
        "tether_http_request_duration_seconds",
        Kind::Histogram,
        "HTTP request time, from the request's head to its response's head, by method, route (the route template, or unmatched) and status; its _count counts the requests.",
    ),
    // Store.
    (
        "tether_store_batches_total",
        Kind::Counter,
        "Write batches committed by the embedded store's writer.",
    ),
    (
        "tether_store_fsyncs_total",
        Kind::Counter,
        "fsyncs of the embedded store's journal.",
    ),
    (
        "tether_store_appends_total",
        Kind::Counter,
        "Inbox appends written by the embedded store.",
    ),
    (
        "tether_store_publishes_total",
        Kind::Counter,
        "Topic history appends written by the embedded store.",
    ),
    (
        "tether_store_batch_requests",
        Kind::Histogram,
        "Requests in one write batch of the embedded store (group commit).",
    ),
    (
        "tether_store_fsync_seconds",
        Kind::Histogram,
        "One fsync of the embedded store's journal; in sync mode the whole commit (journal write, fsync, memtable inserts).",
    ),
    (
        "tether_store_errors_total",
        Kind::Counter,
        "Store operations that failed, by op (read, ack, cursor, append, history, ...).",
    ),
    (
        "tether_store_expired_deleted_total",
        Kind::Counter,
        "Expired entries deleted by the embedded store's sweep, by kind (message, idempotency, cursor).",
    ),
    (
        "tether_store_overloaded_total",
        Kind::Counter,
        "Writes refused: the store writer's queue was full.",
    ),
    (
        "tether_store_full_refusals_total",
        Kind::Counter,
        "Messages refused at the store's free-space reserve (507).",
    ),
    (
        "tether_store_failures_total",
        Kind::Counter,
        "Times the store failed a write and stopped writing until reopened.",
    ),
    (
        "tether_store_reopens_total",
        Kind::Counter,
        "Times the store was reopened after a failure.",
    ),
    (
        "tether_store_writable",
        Kind::Gauge,
        "1 while the store writes, 0 while it has failed and waits to be reopened.",
    ),
    (
        "tether_store_free_bytes",
        Kind::Gauge,
        "Free bytes on the store's filesystem, at the last reading (every second).",
    ),
    // Cluster.
    (
        "tether_router_errors_total",
        Kind::Counter,
        "Messages to other nodes that could not be sent (best effort).",
    ),
    (
        "tether_router_recoveries_total",
        Kind::Counter,
        "Recoveries after messages from other nodes may have been lost.",
    ),
    (
        "tether_router_sent_total",
        Kind::Counter,
        "Messages sent to other nodes over Redis.",
    ),
    (
        "tether_router_received_total",
        Kind::Counter,
        "Messages received from other nodes over Redis.",
    ),
    (
        "tether_router_dropped_total",
        Kind::Counter,
        "Messages from other nodes dropped on arrival: the Redis router's inbound queue was full (a recovery follows).",
    ),
    (
        "tether_router_malformed_total",
        Kind::Counter,
        "Messages from other nodes that could not be decoded.",
    ),
    // Webhooks.
    (
        "tether_webhook_queued",
        Kind::Gauge,
        "Webhook deliveries waiting, by app and kind (upstream, presence).",
    ),
    (
        "tether_webhook_sent_total",
        Kind::Counter,
        "Webhook deliveries answered 2xx, by app and kind.",
    ),
    (
        "tether_webhook_failed_total",
        Kind::Counter,
        "Webhook deliveries that ended without a 2xx, by app and kind.",
    ),
    (
        "tether_webhook_retries_total",
        Kind::Counter,
        "Webhook POSTs retried, by app and kind.",
    ),
    (
        "tether_webhook_dropped_total",
        Kind::Counter,
        "Webhook deliveries refused at a full queue, by app and kind.",
    ),
    (
        "tether_webhook_replies_lost_total",
        Kind::Counter,
        "Upstream replies whose connection was gone, by app and kind.",
    ),
    (
        "tether_webhook_limited_total",
        Kind::Counter,
        "Upstream frames refused by the per-connection limit, by app and kind.",
    ),
    (
        "tether_permission_checks_total",
        Kind::Counter,
        "Topic permission questions POSTed to an app's webhook, by app and result (allowed, refused, timeout, error).",
    ),
    (
        "tether_permission_cache_hits_total",
        Kind::Counter,
        "Subscribes answered from the permission cache, by app and result.",
    ),
];

/// Buckets of each histogram, in seconds unless said otherwise.
pub const BUCKETS: &[(&str, &[f64])] = &[
    // A qos 0 push written at once takes tens of microseconds; a qos 1 push waits for its
    // group commit (about a millisecond on an SSD, tens on a slow disk) and for Redis in a
    // cluster. 50 µs to 2.5 s.
    (
        "tether_push_write_seconds",
        &[
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5,
        ],
    ),
    // One publication to a handful of subscribers: microseconds; a batch to 100,000, or a
    // paced broadcast: seconds. 50 µs to 10 s.
    (
        "tether_fanout_duration_seconds",
        &[
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    ),
    // Most API requests answer in well under a millisecond; a qos 1 push waits for an
    // fsync; the default request timeout is 10 s. 250 µs to 10 s.
    (
        "tether_http_request_duration_seconds",
        &[
            0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0,
        ],
    ),
    // An fsync: ~50 µs on a tmpfs or a battery-backed cache, ~1 ms on an SSD, tens of ms on
    // a spinning disk or a cloud volume. 50 µs to 2.5 s.
    (
        "tether_store_fsync_seconds",
        &[
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5,
        ],
    ),
    // Requests per group commit (a count, not seconds): powers of two up to the writer's
    // largest batches.
    (
        "tether_store_batch_requests",
        &[
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
        ],
    ),
];

/// `builder` with every histogram's buckets: a histogram without buckets would be rendered as
/// a quantile summary, which cannot be added up across nodes.
pub fn with_buckets(mut builder: PrometheusBuilder) -> PrometheusBuilder {
    for (name, buckets) in BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .expect("the bucket lists are not empty");
    }
    builder
}

/// Gives every metric its help text (the recorder must be installed).
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_histogram_has_buckets_and_every_bucket_list_a_histogram() {
        for &(name, kind, _) in METRICS {
            let bucketed = BUCKETS.iter().any(|(n, _)| *n == name);
            assert_eq!(kind == Kind::Histogram, bucketed, "{name}");
        }
        for (name, buckets) in BUCKETS {
            assert!(METRICS.iter().any(|(n, _, _)| n == name), "{name}");
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{name} not sorted");
        }
    }

    /// Reads the metric macros' names out of the sources, so that a metric added without a
    /// line here fails this test rather than appearing on /metrics without HELP.
    #[test]
    fn every_metric_the_sources_name_is_described_here() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in [root.join("src"), root.join("../tether-redis/src")] {
            collect_rs(&dir, &mut files);
        }
        assert!(
            files.len() > 20,
            "sources not found under {}",
            root.display()
        );
        let mut missing = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(macro_name) {
                    let rest = text[i + macro_name.len()..].trim_start();
                    let Some(rest) = rest.strip_prefix('"') else {
                        continue;
                    };
                    let name = &rest[..rest.find('"').unwrap()];
                    if name.starts_with("tether_") && !METRICS.iter().any(|(n, _, _)| *n == name) {
                        missing.push(format!("{name} ({})", file.display()));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "metrics without HELP: {missing:?}");
    }

    fn collect_rs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                collect_rs(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
}
