//! Prometheus metrics. Handles for hot-path counters are resolved once, at node start, so that
//! counting a frame is an atomic add and not a registry lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tether_core::Transport;
use tether_proto::Code;

pub mod catalog;
pub mod mqtt;
pub mod process;

/// Installs the process-wide Prometheus recorder once and returns its handle.
///
/// Several nodes in one process (tests) share it; their figures add up.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = catalog::with_buckets(PrometheusBuilder::new()).build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (an embedding program's);
            // then our figures go to that recorder and /metrics renders an empty page.
            let _ = metrics::set_global_recorder(recorder);
            catalog::describe();
            gauge!(
                "tether_build_info",
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => env!("TETHER_COMMIT"),
            )
            .set(1.0);
            // Histogram samples wait in a lock-free buffer until an upkeep folds them into
            // the buckets: without one, a node nobody scrapes would hold every sample.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: histograms fold at scrapes only");
            }
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The `/metrics` page: the recorder's metrics, then the process's (see [`process`]).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    process::render(&mut out);
    out
}

/// The open-file budget (see `crate::descriptors`): the process's limit, the reserve kept for
/// everything but gateway connections, and the connection limit that leaves.
pub fn open_files(limit: u64, reserve: u64, max_connections: usize) {
    // Set before the node's other metrics: the recorder must be there to keep them.
    prometheus();
    gauge!("tether_open_files_limit").set(limit as f64);
    gauge!("tether_open_files_reserve").set(reserve as f64);
    gauge!("tether_max_connections").set(max_connections as f64);
}

/// An `accept` that failed on a listener (`tcp`, `ws`, `http`): out of descriptors, mostly.
pub fn accept_error(listener: &'static str) {
    counter!("tether_accept_errors_total", "listener" => listener).increment(1);
}

/// The counter of connections refused on `listener` (`tcp`, `ws`, `http`) for `reason` (see
/// `crate::edge::Refusal`), resolved once per guard.
pub fn connection_refused(listener: &'static str, reason: &'static str) -> Counter {
    counter!("tether_connections_refused_total", "listener" => listener, "reason" => reason)
}

/// A TLS listener's certificate files loaded again after they changed (`ok`), or found
/// broken (`error`; the old certificate stays).
pub fn tls_reload(listener: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("tether_tls_reloads_total", "listener" => listener, "result" => result).increment(1);
}

/// A TLS handshake on `listener` (`tls`, `wss`, `https`) that succeeded (`ok`), failed
/// (`error`: a client that does not trust the certificate, speaks no TLS, or offers nothing in
/// common) or ran out of time (`timeout`).
pub fn tls_handshake(listener: &'static str, result: &'static str) {
    counter!("tether_tls_handshakes_total", "listener" => listener, "result" => result)
        .increment(1);
}

/// A POST to an SSE session (see `gateway::sse`), by outcome: `taken` (waiting for the
/// session's connection), `forwarded` (sent to the node holding it), `lost` (forwarded here,
/// and the session was gone or full), or the error code it was answered with
/// (`unknown_session`, `busy`, `bad_request`, ...).
pub fn sse_post(result: &'static str) {
    counter!("tether_sse_posts_total", "result" => result).increment(1);
}

/// A fetch of an app's JWKS URL (see `crate::jwks`), by outcome: `ok` (the keys in force are
/// the document's) or `error` (the keys fetched before stay in force; none before the first
/// success).
pub fn jwks_fetch(app: &str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("tether_jwks_fetch_total", "app" => app.to_owned(), "result" => result).increment(1);
}

/// Per-transport counters.
#[derive(Debug, Clone)]
pub struct TransportMetrics {
    pub connections: Gauge,
    pub frames_in: Counter,
    /// Frames written. A fan-out batch joined for a raw TCP connection (see
    /// `fanout::batch::Batch`) counts as its frames when the fan-out writes it itself, and as
    /// one when the connection's task writes it; `tether_fanout_deliveries_total` counts every
    /// publication.
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl TransportMetrics {
    pub(crate) fn new(transport: Transport) -> Self {
        let t = transport.as_str();
        TransportMetrics {
            connections: gauge!("tether_connections", "transport" => t),
            frames_in: counter!("tether_frames_in_total", "transport" => t),
            frames_out: counter!("tether_frames_out_total", "transport" => t),
            bytes_in: counter!("tether_bytes_in_total", "transport" => t),
            bytes_out: counter!("tether_bytes_out_total", "transport" => t),
        }
    }
}

/// The node's metric handles.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub tcp: TransportMetrics,
    pub ws: TransportMetrics,
    pub sse: TransportMetrics,
    pub mqtt: TransportMetrics,
    pub handshakes_ok: Counter,
    pub queue_overflows: Counter,
    pub push_deliveries: Counter,
    /// Gateway connections refused, by a listener's guard or by the connection limits (by
    /// listener and reason: `tether_connections_refused_total`).
    pub rejected_connections: Counter,
    /// Acks received from clients.
    pub acks: Counter,
    /// Durable messages sent from the store (resume backlogs), not live.
    pub backlog_messages: Counter,
    /// Messages the poison guard skipped for a device.
    pub poison_skipped: Counter,
    /// `sync` requests answered.
    pub syncs: Counter,
    /// API requests refused with 429 by an app's rate limit.
    pub rate_limited: Counter,
    /// Publishes, broadcasts and a new connection's server-side subscriptions refused because
    /// the app's fan-out queue was full.
    pub fanout_busy: Counter,
    /// Broadcasts accepted.
    pub broadcasts: Counter,
    /// Raw TCP connections waiting without a task (see `gateway::task`).
    pub parked: Gauge,
    /// Parked connections that got a task again (the client sent, something was queued, a
    /// close was asked for).
    pub unparks: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        prometheus();
        Metrics {
            tcp: TransportMetrics::new(Transport::Tcp),
            ws: TransportMetrics::new(Transport::Ws),
            sse: TransportMetrics::new(Transport::Sse),
            mqtt: TransportMetrics::new(Transport::Mqtt),
            handshakes_ok: counter!("tether_handshakes_total", "result" => "ok"),
            queue_overflows: counter!("tether_queue_overflows_total"),
            push_deliveries: counter!("tether_push_deliveries_total"),
            rejected_connections: counter!("tether_rejected_connections_total"),
            acks: counter!("tether_acks_total"),
            backlog_messages: counter!("tether_backlog_messages_total"),
            poison_skipped: counter!("tether_poison_skipped_total"),
            syncs: counter!("tether_syncs_total"),
            rate_limited: counter!("tether_rate_limited_total"),
            fanout_busy: counter!("tether_fanout_busy_total"),
            broadcasts: counter!("tether_broadcasts_total"),
            parked: gauge!("tether_connections_parked"),
            unparks: counter!("tether_connection_unparks_total"),
        }
    }

    pub fn transport(&self, t: Transport) -> &TransportMetrics {
        match t {
            Transport::Tcp => &self.tcp,
            Transport::Ws => &self.ws,
            Transport::Sse => &self.sse,
            Transport::Mqtt => &self.mqtt,
        }
    }

    /// A failed handshake, by the code the client was given.
    pub fn handshake_failed(&self, code: Code) {
        counter!("tether_handshakes_total", "result" => code.label()).increment(1);
    }

    /// A connection closed by the server or the client, by code (`"peer"` when the client
    /// simply went away).
    pub fn disconnect(&self, code: Option<Code>) {
        let label = code.map_or("peer", Code::label);
        counter!("tether_disconnects_total", "code" => label).increment(1);
    }

    /// A client's request answered with an `error`, by op and code (a subscribe refused by
    /// the topic rules is `subscribe`, `forbidden`).
    pub fn request_refused(&self, op: &'static str, code: Code) {
        counter!("tether_requests_refused_total", "op" => op, "code" => code.label()).increment(1);
    }

    /// A store operation failed, by operation (`read`, `ack`, `cursor`, `append`, ...).
    pub fn store_error(&self, op: &'static str) {
        counter!("tether_store_errors_total", "op" => op).increment(1);
    }

    pub fn publish(&self, qos: u8) {
        counter!("tether_publishes_total", "qos" => if qos == 0 { "0" } else { "1" }).increment(1);
    }

    pub fn push(&self, qos: u8) {
        counter!("tether_pushes_total", "qos" => if qos == 0 { "0" } else { "1" }).increment(1);
    }
}

/// `tether_push_write_seconds`: from the API accepting a push to its frame reaching the
/// first connection on this node, by qos and by what became of the frame (`written` to the
/// socket at once, or `queued` for the connection's task). Observed once per push and node,
/// at the first connection reached: an `Instant` read and a histogram observe.
#[derive(Debug, Clone)]
pub struct PushWriteMetrics {
    /// [qos][written = 0, queued = 1]
    seconds: [[Histogram; 2]; 2],
}

impl PushWriteMetrics {
    pub fn new() -> Self {
        let h = |qos: &'static str, path: &'static str| histogram!("tether_push_write_seconds", "qos" => qos, "path" => path);
        PushWriteMetrics {
            seconds: [
                [h("0", "written"), h("0", "queued")],
                [h("1", "written"), h("1", "queued")],
            ],
        }
    }

    /// A push accepted at `accepted` reached its first connection now.
    pub fn reached(&self, accepted: Instant, qos: u8, written: bool) {
        let qos = usize::from(qos != 0);
        let path = usize::from(!written);
        self.seconds[qos][path].record(accepted.elapsed().as_secs_f64());
    }
}

impl Default for PushWriteMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `tether_http_request_duration_seconds`, by method, route (the matched template, so that the
/// label set stays bounded) and status. Its `_count` counts the requests: a counter of its own
/// would repeat it, and every (method, route, status) series with it.
///
/// Each series' handle is looked up in the recorder once and kept in [`HTTP_SERIES`]: a lookup
/// there builds three label strings and a key and hashes them, six allocations a request on
/// the single-push path (docs/benchmarks.md, "where a push's instructions went").
pub fn http_request(method: &'static str, route: &str, status: u16, seconds: f64) {
    let table = &*HTTP_SERIES;
    let hash = series_hash(method, route, status);
    let matches = |s: &HttpSeries| s.status == status && s.method == method && *s.route == *route;
    if let Some(series) = table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .find(hash, matches)
    {
        series.histogram.record(seconds);
        return;
    }
    // The recorder first: a handle taken before it is installed would be a no-op one, kept.
    prometheus();
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    let histogram = histogram!("tether_http_request_duration_seconds", &labels);
    histogram.record(seconds);
    let mut table = table.write().unwrap_or_else(|e| e.into_inner());
    if table.find(hash, matches).is_none() {
        let series = HttpSeries {
            method,
            route: route.into(),
            status,
            histogram,
        };
        table.insert_unique(hash, series, |s| series_hash(s.method, &s.route, s.status));
    }
}

/// One series of `tether_http_request_duration_seconds` and its handle. As many as the label
/// set has: methods are bounded by the caller, routes are the router's templates, statuses
/// the server's own answers.
struct HttpSeries {
    method: &'static str,
    route: Box<str>,
    status: u16,
    histogram: Histogram,
}

/// The series of [`http_request`] met so far.
static HTTP_SERIES: LazyLock<RwLock<HashTable<HttpSeries>>> =
    LazyLock::new(|| RwLock::new(HashTable::new()));

/// FNV-1a over a series' labels. No client chooses them (see [`HttpSeries`]), so a hash that
/// resists chosen collisions is not needed, and SipHash cost 800 instructions a request here.
fn series_hash(method: &str, route: &str, status: u16) -> u64 {
    let bytes = method
        .bytes()
        .chain([0])
        .chain(route.bytes())
        .chain(status.to_le_bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fan-out's handles (see `crate::fanout`).
#[derive(Debug, Clone)]
pub struct FanoutMetrics {
    pub topics: Gauge,
    pub subscriptions: Gauge,
    pub queued: Gauge,
    pub topic_deliveries: Counter,
    pub broadcast_deliveries: Counter,
    pub paced: Counter,
    /// Subscribers closed as slow by a fan-out (the same series as the connections').
    pub overflows: Counter,
    /// Frames and bytes the fan-out wrote to sockets itself, by transport (the same series
    /// the connection tasks count theirs in; see `fanout::batch::by_transport`).
    pub frames_out: [Counter; 3],
    pub bytes_out: [Counter; 3],
    pub gap_fills: Counter,
    pub store_errors: Counter,
    /// Time to hand one batch to every recipient, by kind.
    pub topic_seconds: Histogram,
    pub broadcast_seconds: Histogram,
}

impl FanoutMetrics {
    pub fn new() -> Self {
        FanoutMetrics {
            topics: gauge!("tether_topics"),
            subscriptions: gauge!("tether_topic_subscriptions"),
            queued: gauge!("tether_fanout_queued"),
            topic_deliveries: counter!("tether_fanout_deliveries_total", "kind" => "topic"),
            broadcast_deliveries: counter!("tether_fanout_deliveries_total", "kind" => "broadcast"),
            paced: counter!("tether_paced_recipients_total"),
            overflows: counter!("tether_queue_overflows_total"),
            frames_out: [
                counter!("tether_frames_out_total", "transport" => "tcp"),
                counter!("tether_frames_out_total", "transport" => "ws"),
                counter!("tether_frames_out_total", "transport" => "sse"),
            ],
            bytes_out: [
                counter!("tether_bytes_out_total", "transport" => "tcp"),
                counter!("tether_bytes_out_total", "transport" => "ws"),
                counter!("tether_bytes_out_total", "transport" => "sse"),
            ],
            gap_fills: counter!("tether_topic_gap_fills_total"),
            store_errors: counter!("tether_store_errors_total", "op" => "history"),
            topic_seconds: histogram!("tether_fanout_duration_seconds", "kind" => "topic"),
            broadcast_seconds: histogram!("tether_fanout_duration_seconds", "kind" => "broadcast"),
        }
    }
}

impl Default for FanoutMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The embedded store's handles (see `crate::store`): its writer's batches and fsyncs, what
/// its sweep deleted, writes refused at a full queue.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub batches: Counter,
    pub fsyncs: Counter,
    pub appends: Counter,
    pub publishes: Counter,
    pub batch_requests: Histogram,
    /// An fsync's time; in sync mode, that of the whole commit it is part of (journal write,
    /// fsync, memtable inserts).
    pub fsync_seconds: Histogram,
    pub expired_messages: Counter,
    pub expired_keys: Counter,
    pub expired_cursors: Counter,
    /// Writes refused because the writer's queue was full.
    pub overloaded: Counter,
    /// Messages refused because the store's filesystem is at `store.min_free_bytes`.
    pub full: Counter,
    /// Times the store failed a write and stopped writing until reopened.
    pub failures: Counter,
    /// Times the store was reopened after a failure.
    pub reopens: Counter,
    /// 1 while the store writes, 0 while it has failed and waits to be reopened.
    pub writable: Gauge,
}

impl StoreMetrics {
    pub fn new() -> Self {
        let expired =
            |kind: &'static str| counter!("tether_store_expired_deleted_total", "kind" => kind);
        StoreMetrics {
            batches: counter!("tether_store_batches_total"),
            fsyncs: counter!("tether_store_fsyncs_total"),
            appends: counter!("tether_store_appends_total"),
            publishes: counter!("tether_store_publishes_total"),
            batch_requests: histogram!("tether_store_batch_requests"),
            fsync_seconds: histogram!("tether_store_fsync_seconds"),
            expired_messages: expired("message"),
            expired_keys: expired("idempotency"),
            expired_cursors: expired("cursor"),
            overloaded: counter!("tether_store_overloaded_total"),
            full: counter!("tether_store_full_refusals_total"),
            failures: counter!("tether_store_failures_total"),
            reopens: counter!("tether_store_reopens_total"),
            writable: gauge!("tether_store_writable"),
        }
    }

    /// Bytes free on the filesystem of the store's directory, sampled every second.
    pub fn free_bytes() -> Gauge {
        gauge!("tether_store_free_bytes")
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Handles of the cluster's node-to-node traffic, this node's side.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// Messages to other nodes that could not be sent (best effort).
    pub router_errors: Counter,
    /// Recoveries after messages from other nodes may have been lost.
    pub recoveries: Counter,
    /// Publications and broadcasts from other nodes dropped: the app's fan-out queue was full.
    pub fanout_dropped: Counter,
}

impl ClusterMetrics {
    pub fn new() -> Self {
        ClusterMetrics {
            router_errors: counter!("tether_router_errors_total"),
            recoveries: counter!("tether_router_recoveries_total"),
            fanout_dropped: counter!("tether_fanout_dropped_total"),
        }
    }
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric handles of one app's upstream or presence deliveries.
#[derive(Debug, Clone)]
pub struct HookMetrics {
    /// Waiting in the queue.
    pub queued: Gauge,
    /// Delivered: answered 2xx (upstream requests, or events).
    pub sent: Counted,
    /// Ended without a 2xx: refused (4xx), last 5xx, unreachable, abandoned at exit.
    pub failed: Counted,
    /// Retry attempts (POSTs).
    pub retries: Counter,
    /// Refused at a full queue.
    pub dropped: Counted,
    /// Upstream answers whose connection was gone (or closed by them as slow).
    pub replies_lost: Counter,
    /// Upstream frames refused by the per-connection limit.
    pub limited: Counter,
}

/// A metric counter whose total the node can also read back (for the admin stats).
#[derive(Debug, Clone)]
pub struct Counted {
    counter: Counter,
    total: Arc<AtomicU64>,
}

impl Counted {
    fn new(counter: Counter) -> Self {
        Counted {
            counter,
            total: Arc::default(),
        }
    }

    pub fn increment(&self, n: u64) {
        self.counter.increment(n);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl HookMetrics {
    /// The handles of `app`'s `kind` deliveries (`upstream` or `presence`).
    pub fn new(app: &str, kind: &'static str) -> Self {
        let labels = [("app", app.to_owned()), ("kind", kind.to_owned())];
        HookMetrics {
            queued: gauge!("tether_webhook_queued", &labels),
            sent: Counted::new(counter!("tether_webhook_sent_total", &labels)),
            failed: Counted::new(counter!("tether_webhook_failed_total", &labels)),
            retries: counter!("tether_webhook_retries_total", &labels),
            dropped: Counted::new(counter!("tether_webhook_dropped_total", &labels)),
            replies_lost: counter!("tether_webhook_replies_lost_total", &labels),
            limited: counter!("tether_webhook_limited_total", &labels),
        }
    }
}

/// Metric handles of one app's `webhook` topic rule (see `crate::webhook::permission`).
#[derive(Debug, Clone)]
pub struct PermissionMetrics {
    /// Questions POSTed to the webhook, by what came of them: `allowed`, `refused`,
    /// `timeout` (no answer by `webhook.permission.timeout`, a wait for a free place
    /// included), `error` (unreachable, a 5xx, or an answer that was not one).
    pub allowed: Counter,
    pub refused: Counter,
    pub timeout: Counter,
    pub error: Counter,
    /// Subscribes answered from the cache of answers, without a POST, by answer.
    pub cached_allowed: Counter,
    pub cached_refused: Counter,
}

impl PermissionMetrics {
    /// The handles of `app`'s checks: `tether_permission_checks_total{app, result}` and
    /// `tether_permission_cache_hits_total{app, result}`.
    pub fn new(app: &str) -> Self {
        let check = |result: &'static str| counter!("tether_permission_checks_total", "app" => app.to_owned(), "result" => result);
        let hit = |result: &'static str| counter!("tether_permission_cache_hits_total", "app" => app.to_owned(), "result" => result);
        PermissionMetrics {
            allowed: check("allowed"),
            refused: check("refused"),
            timeout: check("timeout"),
            error: check("error"),
            cached_allowed: hit("allowed"),
            cached_refused: hit("refused"),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count of `tether_http_request_duration_seconds` for one label set on `page`.
    fn count(page: &str, method: &str, route: &str, status: u16) -> Option<u64> {
        let series = format!(
            "tether_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} "
        );
        page.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map(|n| n.trim().parse().unwrap())
    }

    #[test]
    fn a_series_handle_is_kept_and_each_label_set_counts_on_its_own() {
        let handle = prometheus();
        // A route no other test of this process times.
        let route = "/test/http-series/{id}";
        for _ in 0..3 {
            http_request("GET", route, 200, 0.001);
        }
        http_request("GET", route, 404, 0.001);
        http_request("POST", route, 200, 0.001);
        let page = handle.render();
        assert_eq!(count(&page, "GET", route, 200), Some(3));
        assert_eq!(count(&page, "GET", route, 404), Some(1));
        assert_eq!(count(&page, "POST", route, 200), Some(1));
        let kept = HTTP_SERIES.read().unwrap();
        let ours = kept.iter().filter(|s| &*s.route == route).count();
        assert_eq!(ours, 3, "one kept handle per label set");
    }

    #[test]
    fn series_hashes_tell_the_labels_apart() {
        let a = series_hash("GET", "/v1/apps/{app}/push", 200);
        assert_eq!(a, series_hash("GET", "/v1/apps/{app}/push", 200));
        assert_ne!(a, series_hash("POST", "/v1/apps/{app}/push", 200));
        assert_ne!(a, series_hash("GET", "/v1/apps/{app}/push", 201));
        // The separator keeps the method's end from running into the route.
        assert_ne!(series_hash("GE", "T/x", 200), series_hash("GET", "/x", 200));
    }
}
