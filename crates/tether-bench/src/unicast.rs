//! The `unicast` scenario: connected users receive pushes sent through the HTTP API.
//!
//! # How it runs
//! 1. Reads each user's inbox head from the API, so that every connection resumes at the head
//!    (a run against a server that already holds messages gets no old backlog).
//! 2. Opens one binary TCP connection per connected user (`u<n>` on device `bench-<n>`), one
//!    task each. A task reads pushes, takes the send time out of the payload and records the
//!    push-to-delivery latency, checks qos 1 seqs (each one the previous + 1), and acks
//!    cumulatively: after `--ack-every` pushes, or `--ack-delay` after the oldest unacked one.
//! 3. `--concurrency` sender tasks, each with its own keep-alive HTTP/1.1 connection (hyper's
//!    connection-level client, driven by the sender task itself: no pool, no connection task,
//!    no per-request task), post pushes to
//!    `--users-per-request` users taken round-robin, either as fast as they are answered
//!    (`--max`) or on a shared schedule of one request every `1/--rate` s.
//! 4. The first `--warmup` of sending is not measured. Samples are assigned to the warm-up or
//!    to the measured window by their **send** time, so a message sent in the window and
//!    delivered after it still counts, and nothing from the warm-up leaks in.
//! 5. After the window, sending stops and the run waits (at most `--drain`) for the messages
//!    still in flight, then reports.
//!
//! # Layout
//! - this file: the command line, the run's phases, shared counters, the report.
//! - [`receive`]: the connections' tasks (latency, seq checks, acks, pings).
//! - [`send`]: the HTTP senders, the request bodies, the inbox-head lookup.
//!
//! # Payload
//! `{"t":<µs since the Unix epoch>,"pad":"xxx…"}`, padded to `--payload-bytes`. The time comes
//! from [`Clock`]: one wall-clock reading advanced by a monotonic clock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::header::HeaderValue;
use serde::Serialize;
use tether_core::AppId;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use self::receive::ReceiverConfig;
use self::send::{Plan, inbox_heads, send_loop};
use crate::stats::{Clock, Cpu, CpuCost, Latency, Machine, Processes, Recorder, Table, fmt_us};

mod receive;
mod send;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:7480")]
    http: SocketAddr,
    /// Gateway TCP address (binary protocol); repeatable: user u<n> connects to the
    /// (n mod count)-th (several nodes of a cluster, with --http another node's API).
    #[arg(long, default_value = "127.0.0.1:7400")]
    addr: Vec<SocketAddr>,
    /// The app's token secret.
    #[arg(long, env = "TETHER_APP_SECRET")]
    secret: String,
    /// The app's API key.
    #[arg(long, env = "TETHER_API_KEY")]
    api_key: String,
    #[arg(long, default_value = "demo")]
    app: String,
    /// Users u0 .. u(N-1).
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// How many of the users connect (the first ones). Default: all of them.
    #[arg(long)]
    connected: Option<u64>,
    /// Push round-robin over all --users, offline ones included; by default only connected
    /// users are pushed to, so that every message is delivered and measured.
    #[arg(long)]
    include_offline: bool,
    /// 0: transient, 1: durable (stored before the API answers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    #[arg(long, default_value_t = 1)]
    users_per_request: u64,
    /// Send batches of N single-user pushes (`POST .../push/batch`) instead of pushes to
    /// --users-per-request users; --rate then counts batches.
    #[arg(long, conflicts_with = "users_per_request", value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: Option<u64>,
    /// Requests per second, paced on a schedule (one every 1/R s).
    #[arg(long, required_unless_present = "max", conflicts_with = "max")]
    rate: Option<u64>,
    /// Send as fast as the API answers, with --concurrency requests in flight.
    #[arg(long)]
    max: bool,
    /// Requests in flight, one HTTP connection each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Sending before the measured window; its figures are discarded.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    warmup: Duration,
    /// Size of each push's JSON payload.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The server's pid (repeatable: every node of a cluster): their CPU over the window and
    /// their RSS at the end, from /proc.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// qos 1: ack once this many pushes are unacked...
    #[arg(long, default_value_t = 16)]
    ack_every: u64,
    /// ...or once the oldest unacked push is this old.
    #[arg(long, default_value = "50ms", value_parser = crate::parse_duration)]
    ack_delay: Duration,
    /// Heartbeat proposed to the server, in seconds.
    #[arg(long, default_value_t = 30)]
    heartbeat: u64,
    /// The client's tokio worker threads (1: a current-thread runtime). Default: one per core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// After sending stops, wait at most this long for the deliveries still in flight.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    drain: Duration,
}

/// Histogram shards; a few per worker thread is plenty.
const SHARDS: usize = 8;
/// Handshakes in progress at once while connecting.
const HANDSHAKES: usize = 256;
const WARMUP: usize = 0;
const WINDOW: usize = 1;

/// Everything the tasks count, shared. Counters are bumped once per read batch or request,
/// not per message.
#[derive(Debug)]
struct Shared {
    clock: Clock,
    /// The measured window, in µs on `clock`: `[start, end)`.
    window_start: u64,
    window_end: u64,
    connected: u64,

    // Sending.
    requests_ok: AtomicU64,
    /// Deliveries the 2xx answers so far call for (connected targets), every phase.
    expected: AtomicU64,
    win_requests_ok: AtomicU64,
    win_requests_failed: AtomicU64,
    win_messages: AtomicU64,
    win_expected: AtomicU64,
    /// Sum of the `connections` the API reported reaching, for the window's requests.
    win_routed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    api_latency: [Recorder; 2],

    // Receiving.
    delivered: AtomicU64,
    /// Received while the window was open (for deliveries/s).
    delivered_in_window: AtomicU64,
    /// Sent in the window, delivered (at any time).
    win_delivered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    unparsed: AtomicU64,
    delivery_latency: [Recorder; 2],
    /// Connections closed during the run, by reason (and `error` frames received).
    dropped: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Which histogram a message sent at `t` belongs to.
    fn phase(&self, t: u64) -> Option<usize> {
        if t < self.window_start {
            Some(WARMUP)
        } else if t < self.window_end {
            Some(WINDOW)
        } else {
            None
        }
    }

    fn in_window(&self, t: u64) -> bool {
        self.phase(t) == Some(WINDOW)
    }

    fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        *map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let connected = args.connected.unwrap_or(args.users);
    if connected == 0 || connected > args.users {
        bail!("--connected must be between 1 and --users");
    }
    let space = if args.include_offline {
        args.users
    } else {
        connected
    };
    if args.users_per_request == 0 || args.users_per_request > space {
        bail!("--users-per-request must be between 1 and the users pushed to ({space})");
    }
    if args.batch.is_some_and(|n| n > space) {
        bail!("--batch must be at most the users pushed to ({space})");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.rate == Some(0) {
        bail!("--rate must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let app = AppId::new(args.app.clone());
    let host = HeaderValue::from_str(&args.http.to_string())?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", args.api_key))
        .context("--api-key is not a valid header value")?;

    eprintln!("reading the inbox heads of {connected} users");
    let heads = inbox_heads(&args, &host, &auth, connected).await?;

    let clock = Clock::new();
    let mut shared = new_shared(clock, connected);
    let connecting = Instant::now();
    eprintln!("connecting {connected} users");
    let receiver = ReceiverConfig {
        addrs: args.addr.clone(),
        app: app.clone(),
        secret: args.secret.clone(),
        heartbeat: Duration::from_secs(args.heartbeat),
        ack_every: args.ack_every.max(1),
        ack_delay: args.ack_delay,
    };
    let go = connect_all(receiver, heads).await?;
    eprintln!(
        "connected {connected} in {:.2} s; sending for {:?} + {:?} warm-up",
        connecting.elapsed().as_secs_f64(),
        args.duration,
        args.warmup
    );

    let (start, now_us) = (Instant::now(), clock.now_us());
    shared.window_start = now_us + args.warmup.as_micros() as u64;
    shared.window_end = shared.window_start + args.duration.as_micros() as u64;
    let shared = Arc::new(shared);
    go.send_replace(Some(shared.clone()));

    let plan = Arc::new(Plan {
        http: args.http,
        push_uri: match args.batch {
            Some(_) => format!("/v1/apps/{app}/push/batch").parse()?,
            None => format!("/v1/apps/{app}/push").parse()?,
        },
        batch: args.batch,
        host,
        auth,
        qos: args.qos,
        users_per_request: args.users_per_request,
        space,
        payload_bytes: args.payload_bytes,
        rate: args.rate.map(|r| r as f64).filter(|_| !args.max),
        start,
        end: start + args.warmup + args.duration,
        next_slot: AtomicU64::new(0),
        next_user: AtomicU64::new(0),
    });
    let mut senders = JoinSet::new();
    for i in 0..args.concurrency {
        let (plan, shared) = (plan.clone(), shared.clone());
        senders.spawn(async move { send_loop(&plan, &shared, i).await });
    }
    let progress = tokio::spawn(progress(shared.clone(), start));

    tokio::time::sleep_until((start + args.warmup).into()).await;
    let server = Processes::with_descendants(&args.server_pid);
    let server_before = server.cpu();
    let client_before = Cpu::read("self");
    let machine_before = Machine::read();
    tokio::time::sleep_until(plan.end.into()).await;
    let server_after = server.cpu();
    let client_after = Cpu::read("self");
    let machine_after = Machine::read();
    while senders.join_next().await.is_some() {}
    drain(&shared, args.drain).await;
    // Let the last acks go out, so that the server's cursors end where the client is.
    tokio::time::sleep(args.ack_delay * 2).await;
    progress.abort();

    let report = report(
        &args,
        &shared,
        connected,
        (server_before, server_after),
        (client_before, client_after),
        (machine_before, machine_after),
    );
    report.print();
    if let Some(path) = &args.json {
        crate::stats::write_json(path, &report)?;
    }
    Ok(())
}

/// Opens one connection per entry of `heads` (user `u<n>` resumes at `heads[n]`), and returns
/// once all completed their handshake. The connections start reading when the returned
/// channel gives them the run's [`Shared`] (whose window is only known once they are up).
async fn connect_all(
    receiver: ReceiverConfig,
    heads: Vec<u64>,
) -> anyhow::Result<watch::Sender<Option<Arc<Shared>>>> {
    let count = heads.len() as u64;
    let receiver = Arc::new(receiver);
    let (go_tx, go_rx) = watch::channel(None::<Arc<Shared>>);
    let ready = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    for (n, head) in heads.into_iter().enumerate() {
        let (receiver, mut go) = (receiver.clone(), go_rx.clone());
        let (ready, failures, handshakes) = (ready.clone(), failures.clone(), handshakes.clone());
        tokio::spawn(async move {
            let conn = {
                let _permit = handshakes.acquire().await;
                receiver.handshake(n as u64, head).await
            };
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => return Shared::count(&failures, format!("{e:#}")),
            };
            ready.fetch_add(1, Ordering::Relaxed);
            let shared = match go.wait_for(Option::is_some).await {
                Ok(shared) => shared.clone(),
                Err(_) => return,
            };
            let Some(shared) = shared else { return };
            if let Err(e) = conn.receive(&receiver, &shared, n).await {
                Shared::count(&shared.dropped, format!("{e:#}"));
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let failed: u64 = failures.values().sum();
        if failed > 0 {
            bail!("{failed} of {count} connections failed: {failures:?}");
        }
        let ok = ready.load(Ordering::Relaxed);
        if ok == count {
            return Ok(go_tx);
        }
        if Instant::now() > deadline {
            bail!("only {ok} of {count} connections completed their handshake in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn new_shared(clock: Clock, connected: u64) -> Shared {
    Shared {
        clock,
        window_start: u64::MAX,
        window_end: u64::MAX,
        connected,
        requests_ok: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        win_requests_ok: AtomicU64::new(0),
        win_requests_failed: AtomicU64::new(0),
        win_messages: AtomicU64::new(0),
        win_expected: AtomicU64::new(0),
        win_routed: AtomicU64::new(0),
        errors: Mutex::default(),
        api_latency: [Recorder::new(SHARDS), Recorder::new(SHARDS)],
        delivered: AtomicU64::new(0),
        delivered_in_window: AtomicU64::new(0),
        win_delivered: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        unparsed: AtomicU64::new(0),
        delivery_latency: [Recorder::new(SHARDS), Recorder::new(SHARDS)],
        dropped: Mutex::default(),
    }
}

/// Waits until every delivery the API accepted has arrived, deliveries stop coming for a
/// second, or `limit` passes.
async fn drain(shared: &Shared, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    loop {
        let delivered = shared.delivered.load(Ordering::Relaxed);
        if delivered >= shared.expected.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        if delivered != last {
            last = delivered;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_secs(1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One line per second on stderr: the last second's rates and the current phase's p99s.
async fn progress(shared: Arc<Shared>, start: Instant) {
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let (mut requests, mut delivered, mut at) = (0, 0, start);
    loop {
        tick.tick().await;
        // The line describes the second just past: name the phase of its middle.
        let now = shared.clock.now_us().saturating_sub(500_000);
        let phase = match shared.phase(now) {
            Some(WARMUP) => "warm-up",
            Some(_) => "measure",
            None => "drain",
        };
        let (r, d) = (
            shared.requests_ok.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed),
        );
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        let p = if phase == "warm-up" { WARMUP } else { WINDOW };
        let api = shared.api_latency[p].merged();
        let delivery = shared.delivery_latency[p].merged();
        let errors: u64 = shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum();
        eprintln!(
            "[{:>5.1}s {phase:<7}] {:>8.0} req/s {:>9.0} deliveries/s   api p99 {:>9}   delivery p99 {:>9}   errors {errors}",
            start.elapsed().as_secs_f64(),
            (r - requests) as f64 / secs,
            (d - delivered) as f64 / secs,
            fmt_us(api.value_at_quantile(0.99)),
            fmt_us(delivery.value_at_quantile(0.99)),
        );
        (requests, delivered) = (r, d);
    }
}

/// The sum of the unsigned integers right after each `key` in `text`, and how many there
/// were (a batch's answer: one field per push).
fn json_u64_sum(text: &[u8], key: &[u8]) -> (u64, u64) {
    let (mut sum, mut count, mut at) = (0, 0, 0);
    while let Some(found) = text[at..].windows(key.len()).position(|w| w == key) {
        at += found + key.len();
        sum += json_u64(&text[at - key.len()..], key).unwrap_or(0);
        count += 1;
    }
    (sum, count)
}

/// The unsigned integer right after the first `key` in `text` (a JSON field known to be
/// written without spaces, as serde_json and this module write them).
fn json_u64(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    qos: u8,
    users: u64,
    connected: u64,
    users_per_request: u64,
    /// Single-user pushes per batch request (`--batch`).
    batch: Option<u64>,
    concurrency: usize,
    /// Target requests/s; absent with --max.
    rate: Option<u64>,
    payload_bytes: usize,
    warmup_s: f64,
    duration_s: f64,
    ack_every: u64,
    ack_delay_ms: u64,
    requests_ok: u64,
    requests_failed: u64,
    requests_per_s: f64,
    /// Requests x users per request, accepted (2xx).
    messages: u64,
    messages_per_s: f64,
    /// Deliveries received during the window, per second.
    deliveries_per_s: f64,
    /// Deliveries the window's accepted messages call for (connected users).
    expected_deliveries: u64,
    /// Of those, delivered by the end of the drain.
    delivered: u64,
    missing: i64,
    /// Connections the API answers said they reached.
    routed: u64,
    gaps: u64,
    duplicates: u64,
    unparsed_payloads: u64,
    errors: BTreeMap<String, u64>,
    connections_dropped: BTreeMap<String, u64>,
    api_latency: Latency,
    delivery_latency: Latency,
    server_cpu: Option<CpuCost>,
    client_cpu: Option<CpuCost>,
    /// Busy cores of the whole machine over the window (server, client and anything else).
    machine_busy_cores: Option<f64>,
    /// Cores the hypervisor took away over the window (steal time).
    steal_cores: Option<f64>,
    /// Cores of the machine.
    cores: usize,
    /// The client's tokio worker threads.
    client_threads: usize,
    server_rss_kib: Option<u64>,
}

fn report(
    args: &Args,
    shared: &Shared,
    connected: u64,
    server: (Option<Cpu>, Option<Cpu>),
    client: (Option<Cpu>, Option<Cpu>),
    machine: (Option<Machine>, Option<Machine>),
) -> Report {
    let secs = args.duration.as_secs_f64();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let messages = load(&shared.win_messages);
    let expected = load(&shared.win_expected);
    let delivered = load(&shared.win_delivered);
    let cost = |(before, after): (Option<Cpu>, Option<Cpu>)| match (before, after) {
        (Some(b), Some(a)) => Some(CpuCost::of(a.since(b), args.duration, messages)),
        _ => None,
    };
    Report {
        scenario: "unicast",
        qos: args.qos,
        users: args.users,
        connected,
        users_per_request: args.users_per_request,
        batch: args.batch,
        concurrency: args.concurrency,
        rate: args.rate.filter(|_| !args.max),
        payload_bytes: args.payload_bytes,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: secs,
        ack_every: args.ack_every,
        ack_delay_ms: args.ack_delay.as_millis() as u64,
        requests_ok: load(&shared.win_requests_ok),
        requests_failed: load(&shared.win_requests_failed),
        requests_per_s: load(&shared.win_requests_ok) as f64 / secs,
        messages,
        messages_per_s: messages as f64 / secs,
        deliveries_per_s: load(&shared.delivered_in_window) as f64 / secs,
        expected_deliveries: expected,
        delivered,
        missing: expected as i64 - delivered as i64,
        routed: load(&shared.win_routed),
        gaps: load(&shared.gaps),
        duplicates: load(&shared.duplicates),
        unparsed_payloads: load(&shared.unparsed),
        errors: shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        connections_dropped: shared
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        api_latency: Latency::of(&shared.api_latency[WINDOW].merged()),
        delivery_latency: Latency::of(&shared.delivery_latency[WINDOW].merged()),
        server_cpu: cost(server),
        client_cpu: cost(client),
        machine_busy_cores: match machine {
            (Some(b), Some(a)) => Some((a.busy_s - b.busy_s) / secs),
            _ => None,
        },
        steal_cores: match machine {
            (Some(b), Some(a)) => Some((a.steal_s - b.steal_s) / secs),
            _ => None,
        },
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        client_threads: args.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        ),
        server_rss_kib: Processes::with_descendants(&args.server_pid).rss_kib(),
    }
}

impl Report {
    fn print(&self) {
        let mut t = Table::default();
        let target = self
            .rate
            .map_or("max".to_owned(), |r| format!("{r} req/s target"));
        let per_request = match self.batch {
            Some(n) => format!("batches of {n} pushes"),
            None => format!("{} users/request", self.users_per_request),
        };
        t.row("scenario", format!("unicast, qos {}", self.qos))
            .row(
                "load",
                format!(
                    "{} connected of {} users, {per_request}, concurrency {}, {target}, {} B payload",
                    self.connected, self.users, self.concurrency, self.payload_bytes
                ),
            )
            .row(
                "window",
                format!("{:.1} s after {:.1} s warm-up", self.duration_s, self.warmup_s),
            )
            .row(
                "requests/s",
                format!(
                    "{:.0}  ({} ok, {} failed)",
                    self.requests_per_s, self.requests_ok, self.requests_failed
                ),
            )
            .row(
                "messages/s",
                format!("{:.0}  ({} accepted)", self.messages_per_s, self.messages),
            )
            .row("deliveries/s", format!("{:.0}", self.deliveries_per_s))
            .row(
                "delivered",
                format!(
                    "{} of {} expected (missing {}), API reached {} connections",
                    self.delivered, self.expected_deliveries, self.missing, self.routed
                ),
            );
        if self.qos == 1 {
            t.row(
                "seq check",
                format!("{} gaps, {} duplicates", self.gaps, self.duplicates),
            );
        }
        if self.unparsed_payloads > 0 {
            t.row("unparsed", format!("{} payloads", self.unparsed_payloads));
        }
        t.row(
            "API latency",
            self.api_latency.line(&["50", "90", "99", "999", "max"]),
        )
        .row(
            "delivery",
            self.delivery_latency.line(&["50", "99", "999", "max"]),
        );
        if let Some(cpu) = &self.server_cpu {
            t.row("server CPU", cpu.line());
        }
        if let Some(rss) = self.server_rss_kib {
            t.row(
                "server RSS",
                format!("{:.1} MiB at the end", rss as f64 / 1024.0),
            );
        }
        if let Some(cpu) = &self.client_cpu {
            t.row(
                "client CPU",
                format!("{}, {} threads", cpu.line(), self.client_threads),
            );
            // The figures then include the client's own queueing.
            if cpu.cores > 0.9 * self.client_threads as f64 {
                t.row(
                    "warning",
                    "the client used nearly all its threads: client-bound",
                );
            }
        }
        if let Some(busy) = self.machine_busy_cores {
            let ours = self.server_cpu.as_ref().map_or(0.0, |c| c.cores)
                + self.client_cpu.as_ref().map_or(0.0, |c| c.cores);
            t.row(
                "machine CPU",
                format!(
                    "{busy:.2} of {} cores busy ({:.2} outside server and client), {:.2} stolen",
                    self.cores,
                    (busy - ours).max(0.0),
                    self.steal_cores.unwrap_or(0.0),
                ),
            );
        }
        for (key, n) in &self.errors {
            t.row("error", format!("{n}  {key}"));
        }
        for (key, n) in &self.connections_dropped {
            t.row("dropped", format!("{n}  {key}"));
        }
        t.print();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_integer_fields() {
        let answer = br#"{"connections":3,"duplicate":false,"id":"9","seqs":{"u1":4}}"#;
        assert_eq!(json_u64(answer, b"\"connections\":"), Some(3));
        assert_eq!(json_u64(answer, b"\"head\":"), None);
    }

    #[test]
    fn sums_a_batch_s_fields() {
        let answer = br#"{"results":[{"id":"1","connections":2},{"code":"bad_request","error":"x","status":400},{"id":"2","seq":3,"connections":1,"duplicate":false}]}"#;
        assert_eq!(json_u64_sum(answer, b"\"connections\":"), (3, 2));
        assert_eq!(json_u64_sum(answer, b"\"status\":").1, 1);
        assert_eq!(json_u64_sum(b"{}", b"\"connections\":"), (0, 0));
    }
}
