//! The `broadcast` scenario: N subscribers of one topic, M publishes per second; deliveries
//! per second, publish-to-delivery latency, server CPU per million deliveries, losses and
//! duplicates. With `--max`, steps the publish rate up until the server saturates.
//!
//! # How it runs
//! 1. Opens the subscribers ([`crate::workers::Pool`]: in this process, or spread over worker
//!    processes past ~15,000), each subscribed to the topic, and waits for every handshake.
//! 2. For each step (one without `--max`): publishers send on a shared schedule of `rate`
//!    publishes per second for `--warmup` + `--duration`. Each message carries its send time,
//!    its number, and the step's slot when sent inside the measured window (0 in the
//!    warm-up), so latencies are kept per step by **send** time: a message sent in the window
//!    and delivered after it still counts, nothing from the warm-up leaks in.
//! 3. Deliveries per second are counted by **receive** time over the window (what the server
//!    sustained), and the server's CPU (`--server-pid`, with its child processes) is read from
//!    `/proc` at the window's edges.
//! 4. After each step, the run waits (at most `--drain`) until every accepted publish has
//!    reached every subscriber or deliveries stop, so the next step starts clean.
//! 5. Losses: accepted publishes x subscribers - distinct (subscriber, message) deliveries,
//!    once the last drain is over.
//!
//! `--max`: the first step runs at `--rate` (default: 20,000 deliveries/s worth), each next
//! one `--step-factor` faster, until a step is saturated: deliveries/s under 90% of what the
//! accepted publishes called for, the publishers under 90% of the target rate (an HTTP
//! target that answers after its fan-out slows its publishers down), or p99 over `--max-p99`.
//! The saturation figure is the highest deliveries/s of any step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use tokio::task::JoinSet;

use self::publish::{Counts, Publisher, Schedule, publish_loop};
use crate::stats::{Clock, Cpu, CpuCost, Latency, Machine, Processes, Table, fmt_count, fmt_us};
use crate::target::{Kind, TargetArgs};
use crate::workers::{self, Pool};

pub mod publish;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Subscribers of the topic.
    #[arg(long, default_value_t = 1000)]
    subscribers: u64,
    /// Publishes per second (with --max: the first step's; default 20,000 deliveries/s worth).
    #[arg(long, required_unless_present = "max")]
    rate: Option<f64>,
    /// Step the rate up until the server saturates.
    #[arg(long)]
    max: bool,
    /// --max: each step's rate is the previous one's times this.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// --max: at most this many steps.
    #[arg(long, default_value_t = 12)]
    max_steps: u8,
    /// --max: a step whose p99 latency passes this is saturated.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    max_p99: Duration,
    /// Size of each message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How long each step is measured.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Publishing before each measured window; not measured.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    warmup: Duration,
    /// After each step, wait at most this long for deliveries still in flight.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    drain: Duration,
    /// Publishing connections, each with one publish in flight. Default: 16 for tether and
    /// Nchan (HTTP), 1 for Mosquitto and the bare writer (a stream).
    #[arg(long)]
    publishers: Option<usize>,
    /// Subscriber handshakes per second while connecting.
    #[arg(long, default_value_t = 5000)]
    connect_rate: u64,
    /// The server's pid (repeatable); its child processes are counted too.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Worker processes holding the subscribers. Default: none up to 18,000 subscribers, then
    /// one per 15,000.
    #[arg(long)]
    workers: Option<usize>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The client's tokio worker threads (1: a current-thread runtime). Default: one per core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
}

/// The run's state shared by its steps.
struct Run {
    clock: Clock,
    pool: Pool,
    connected: u64,
    /// The number the next publish gets (unique across steps).
    numbers: Arc<AtomicU64>,
    /// Publishes accepted so far, every step and warm-up.
    accepted: u64,
    server: Processes,
    client: Processes,
}

#[derive(Debug, Serialize)]
struct Step {
    slot: u8,
    target_rate: f64,
    publishers: usize,
    publishes_per_s: f64,
    publishes_ok: u64,
    publishes_failed: u64,
    /// Deliveries received during the window, per second.
    deliveries_per_s: f64,
    /// Deliveries the window's accepted publishes called for, per second.
    offered_deliveries_per_s: f64,
    /// Deliveries the window's accepted publishes called for, and how many of them arrived
    /// by the end of the drain.
    expected: u64,
    delivered: u64,
    /// Average subscriber count in the server's answers (tether, Nchan).
    subscribers_per_publish: Option<f64>,
    latency: Latency,
    /// Time to the server's answer (HTTP targets).
    publish_latency: Option<Latency>,
    /// Server CPU over the window, per million deliveries received in it.
    server_cpu: Option<CpuCost>,
    client_cpu: Option<CpuCost>,
    machine_busy_cores: Option<f64>,
    /// Busy cores outside the server and the client (other work on a shared machine).
    outside_cores: Option<f64>,
    /// Cores in software interrupts, machine-wide, and per million deliveries: on loopback,
    /// TCP's receive work, run mostly in the sender's context and charged to it (tick-based
    /// accounting), so mostly inside the server's system time already: a breakdown.
    softirq_cores: Option<f64>,
    softirq_s_per_million: Option<f64>,
    steal_cores: Option<f64>,
    errors: BTreeMap<String, u64>,
    /// Why the step counts as saturated (--max).
    saturated: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    target: &'static str,
    /// tether: "topic" or "broadcast".
    tether_publish: Option<String>,
    mode: &'static str,
    subscribers: u64,
    connected: u64,
    connect_failures: BTreeMap<String, u64>,
    workers: usize,
    payload_bytes: usize,
    warmup_s: f64,
    duration_s: f64,
    steps: Vec<Step>,
    /// --max: the highest deliveries/s of any step, and the rate of that step.
    saturation_deliveries_per_s: Option<f64>,
    saturation_rate: Option<f64>,
    /// Accepted publishes (all steps, warm-ups included) x connected subscribers.
    expected_deliveries: u64,
    distinct_deliveries: u64,
    lost: i64,
    duplicates: u64,
    unparsed: u64,
    dropped: BTreeMap<String, u64>,
    notices: BTreeMap<String, u64>,
    server_pids: Vec<u32>,
    server_rss_kib: Option<u64>,
    cores: usize,
    client_threads: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.subscribers == 0 {
        bail!("--subscribers must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    if args.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        bail!("--rate must be positive");
    }
    if args.step_factor <= 1.0 {
        bail!("--step-factor must be above 1");
    }
    let target = Arc::new(args.target.target(args.subscribers)?);
    if target.kind == Kind::Tether && target.api_key.is_empty() {
        bail!("--target tether needs --api-key (or TETHER_API_KEY)");
    }
    let clock = Clock::new();
    let workers = workers::needed(args.subscribers, args.workers);
    eprintln!(
        "{}: opening {} subscribers of `{}` at {}",
        target.kind.name(),
        args.subscribers,
        target.topic,
        target.addr
    );
    let opening = Instant::now();
    let mut pool = Pool::open(
        target.clone(),
        args.subscribers,
        args.connect_rate,
        workers,
        clock,
    )
    .await?;
    let snap = pool.snapshot().await?;
    if snap.connected == 0 {
        bail!("no subscriber connected: {:?}", snap.failures);
    }
    eprintln!(
        "connected {} of {} in {:.1} s{}",
        snap.connected,
        args.subscribers,
        opening.elapsed().as_secs_f64(),
        if snap.failures.is_empty() {
            String::new()
        } else {
            format!("; failures: {:?}", snap.failures)
        }
    );
    let connect_failures = snap.failures.clone();
    let n_publishers = args
        .publishers
        .unwrap_or(if target.kind.publishes_over_http() {
            16
        } else {
            1
        })
        .max(1);
    let mut publishers = Vec::with_capacity(n_publishers);
    for _ in 0..n_publishers {
        publishers.push(Publisher::open(&target).await?);
    }
    let mut client_pids = vec![std::process::id()];
    client_pids.extend(pool.pids());
    let mut run = Run {
        clock,
        connected: snap.connected,
        pool,
        numbers: Arc::new(AtomicU64::new(0)),
        accepted: 0,
        server: Processes::with_descendants(&args.server_pid),
        client: Processes { pids: client_pids },
    };

    let first_rate = args
        .rate
        .unwrap_or_else(|| (20_000.0 / run.connected as f64).max(0.5));
    let mut steps: Vec<Step> = Vec::new();
    let step_count = if args.max { args.max_steps.max(1) } else { 1 };
    let mut rate = first_rate;
    for slot in 1..=step_count {
        let (step, returned) = run_step(&args, &mut run, slot, rate, publishers).await?;
        publishers = returned;
        let saturated = step.saturated.is_some();
        steps.push(step);
        if args.max && saturated {
            break;
        }
        rate *= args.step_factor;
    }
    drop(publishers);

    let snap = run.pool.snapshot().await?;
    let expected = run.accepted * run.connected;
    let best = steps
        .iter()
        .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
    let report = Report {
        scenario: "broadcast",
        target: target.kind.name(),
        tether_publish: (target.kind == Kind::Tether)
            .then(|| format!("{:?}", target.tether_publish).to_lowercase()),
        mode: if args.max { "max" } else { "rate" },
        subscribers: args.subscribers,
        connected: run.connected,
        connect_failures,
        workers: run.pool.workers(),
        payload_bytes: args.payload,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        saturation_deliveries_per_s: best.filter(|_| args.max).map(|s| s.deliveries_per_s),
        saturation_rate: best.filter(|_| args.max).map(|s| s.target_rate),
        steps,
        expected_deliveries: expected,
        distinct_deliveries: snap.distinct,
        lost: expected as i64 - snap.distinct as i64,
        duplicates: snap.duplicates,
        unparsed: snap.unparsed,
        dropped: snap.dropped,
        notices: snap.notices,
        server_pids: run.server.pids.clone(),
        server_rss_kib: run.server.rss_kib(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        client_threads: args.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        ),
    };
    report.print();
    if let Some(path) = &args.json {
        crate::stats::write_json(path, &report)?;
    }
    Ok(())
}

/// Runs one step at `rate` publishes/s; hands the publishers back.
async fn run_step(
    args: &Args,
    run: &mut Run,
    slot: u8,
    rate: f64,
    publishers: Vec<Publisher>,
) -> anyhow::Result<(Step, Vec<Publisher>)> {
    let n_publishers = publishers.len();
    let start = Instant::now() + Duration::from_millis(20);
    let schedule = Arc::new(Schedule {
        rate,
        start,
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
        slot,
        payload_bytes: args.payload,
        next: AtomicU64::new(0),
    });
    let counts = Arc::new(Counts::new());
    let mut tasks = JoinSet::new();
    for (lane, p) in publishers.into_iter().enumerate() {
        let (schedule, counts, numbers) = (schedule.clone(), counts.clone(), run.numbers.clone());
        let clock = run.clock;
        tasks.spawn(
            async move { publish_loop(p, &schedule, &clock, &numbers, &counts, lane).await },
        );
    }
    eprintln!(
        "step {slot}: {rate:.1} publishes/s to {} subscribers ({} deliveries/s), {:?} warm-up + {:?}",
        run.connected,
        fmt_count(rate * run.connected as f64),
        args.warmup,
        args.duration
    );

    // Progress, one line per second, until the window ends.
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last = (Instant::now(), run.pool.snapshot().await?.delivered, 0);
    let mut window_start = None;
    loop {
        let next_tick = tick.tick();
        let measure_from = tokio::time::sleep_until(schedule.measure_from.into());
        tokio::select! {
            _ = next_tick => {}
            () = measure_from, if window_start.is_none() => {
                let snap = run.pool.snapshot().await?;
                window_start = Some((
                    Instant::now(),
                    snap.delivered,
                    run.server.cpu(),
                    run.client.cpu(),
                    Machine::read(),
                ));
                continue;
            }
        }
        let now = Instant::now();
        let snap = run.pool.snapshot().await?;
        let accepted = counts.accepted.load(Ordering::Relaxed);
        let secs = now.duration_since(last.0).as_secs_f64();
        // The line describes the second just past: name the phase of its middle.
        let phase = if now - Duration::from_millis(500) < schedule.measure_from {
            "warm-up"
        } else {
            "measure"
        };
        let h = snap.slot(if phase == "warm-up" { 0 } else { slot });
        let errors: u64 = counts
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum();
        eprintln!(
            "[{:>5.1}s step {slot} {phase:<7}] {:>7.1} pub/s {:>10} deliveries/s   p50 {:>9}  p99 {:>9}   errors {errors}, dropped {}",
            now.duration_since(start).as_secs_f64(),
            (accepted - last.2) as f64 / secs,
            fmt_count((snap.delivered - last.1) as f64 / secs),
            fmt_us(h.value_at_quantile(0.5)),
            fmt_us(h.value_at_quantile(0.99)),
            snap.dropped.values().sum::<u64>(),
        );
        last = (now, snap.delivered, accepted);
        if now + Duration::from_millis(500) >= schedule.end {
            break;
        }
    }
    tokio::time::sleep_until(schedule.end.into()).await;
    let end_snap = run.pool.snapshot().await?;
    let (server_after, client_after, machine_after) =
        (run.server.cpu(), run.client.cpu(), Machine::read());
    let Some((w_start, w_delivered, server_before, client_before, machine_before)) = window_start
    else {
        bail!("the measured window never started");
    };
    let window = Instant::now().duration_since(w_start);
    let delivered_in_window = end_snap.delivered - w_delivered;

    let mut publishers = Vec::with_capacity(n_publishers);
    while let Some(p) = tasks.join_next().await {
        publishers.push(p?);
    }
    run.accepted += counts.accepted.load(Ordering::Relaxed);
    drain(run, args.drain).await?;
    let snap = run.pool.snapshot().await?;

    let secs = window.as_secs_f64();
    let ok = counts.accepted_in_window.load(Ordering::Relaxed);
    let latency = Latency::of(&snap.slot(slot));
    let cost = |before: Option<Cpu>, after: Option<Cpu>| match (before, after) {
        (Some(b), Some(a)) => Some(CpuCost::of(a.since(b), window, delivered_in_window)),
        _ => None,
    };
    let answered = counts.answered_with_count.load(Ordering::Relaxed);
    let mut step = Step {
        slot,
        target_rate: rate,
        publishers: n_publishers,
        publishes_per_s: ok as f64 / args.duration.as_secs_f64(),
        publishes_ok: ok,
        publishes_failed: counts.failed_in_window.load(Ordering::Relaxed),
        deliveries_per_s: delivered_in_window as f64 / secs,
        offered_deliveries_per_s: (ok * run.connected) as f64 / args.duration.as_secs_f64(),
        expected: ok * run.connected,
        delivered: latency.count,
        subscribers_per_publish: (answered > 0)
            .then(|| counts.routed.load(Ordering::Relaxed) as f64 / answered as f64),
        latency,
        publish_latency: args
            .target
            .target
            .publishes_over_http()
            .then(|| Latency::of(&counts.latency.merged())),
        server_cpu: cost(server_before, server_after),
        client_cpu: cost(client_before, client_after),
        machine_busy_cores: match (machine_before, machine_after) {
            (Some(b), Some(a)) => Some((a.busy_s - b.busy_s) / secs),
            _ => None,
        },
        outside_cores: None,
        softirq_cores: match (machine_before, machine_after) {
            (Some(b), Some(a)) => Some((a.softirq_s - b.softirq_s) / secs),
            _ => None,
        },
        softirq_s_per_million: match (machine_before, machine_after) {
            (Some(b), Some(a)) if delivered_in_window > 0 => {
                Some((a.softirq_s - b.softirq_s) * 1e6 / delivered_in_window as f64)
            }
            _ => None,
        },
        steal_cores: match (machine_before, machine_after) {
            (Some(b), Some(a)) => Some((a.steal_s - b.steal_s) / secs),
            _ => None,
        },
        errors: counts
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        saturated: None,
    };
    step.outside_cores = step.machine_busy_cores.map(|busy| {
        let ours = step.server_cpu.as_ref().map_or(0.0, |c| c.cores)
            + step.client_cpu.as_ref().map_or(0.0, |c| c.cores);
        (busy - ours).max(0.0)
    });
    step.saturated = saturation(&step, args.max_p99);
    Ok((step, publishers))
}

/// Why a step counts as saturated, if it does.
fn saturation(step: &Step, max_p99: Duration) -> Option<String> {
    if step.publishes_per_s < 0.9 * step.target_rate {
        return Some(format!(
            "publishers reached {:.1} of {:.1} publishes/s",
            step.publishes_per_s, step.target_rate
        ));
    }
    if step.deliveries_per_s < 0.9 * step.offered_deliveries_per_s {
        return Some(format!(
            "delivered {} of {} deliveries/s",
            fmt_count(step.deliveries_per_s),
            fmt_count(step.offered_deliveries_per_s)
        ));
    }
    if step.latency.p99_us > max_p99.as_micros() as u64 {
        return Some(format!(
            "p99 {} over {}",
            fmt_us(step.latency.p99_us),
            fmt_us(max_p99.as_micros() as u64)
        ));
    }
    None
}

/// Waits until every accepted publish reached every subscriber, deliveries stop for a second,
/// or `limit` passes.
async fn drain(run: &mut Run, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let expected = run.accepted * run.connected;
    let mut last = u64::MAX;
    let mut still_since = Instant::now();
    loop {
        let snap = run.pool.snapshot().await?;
        if snap.distinct >= expected || Instant::now() > deadline {
            return Ok(());
        }
        if snap.delivered != last {
            last = snap.delivered;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_secs(1) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Report {
    fn print(&self) {
        let mut t = Table::default();
        t.row(
            "scenario",
            format!(
                "broadcast to {}{}, {} mode",
                self.target,
                self.tether_publish
                    .as_ref()
                    .map_or(String::new(), |m| format!(" ({m})")),
                self.mode
            ),
        )
        .row(
            "subscribers",
            format!(
                "{} connected of {}{}",
                self.connected,
                self.subscribers,
                if self.workers > 0 {
                    format!(", in {} worker processes", self.workers)
                } else {
                    String::new()
                }
            ),
        )
        .row(
            "load",
            format!(
                "{} B payload, {:.1} s windows after {:.1} s warm-up",
                self.payload_bytes, self.duration_s, self.warmup_s
            ),
        );
        for (reason, n) in &self.connect_failures {
            t.row("connect failed", format!("{n}  {reason}"));
        }
        for s in &self.steps {
            let p = if self.steps.len() > 1 {
                format!("step {} ", s.slot)
            } else {
                String::new()
            };
            t.row(
                format!("{p}publishes/s"),
                format!(
                    "{:.1} of {:.1} target  ({} ok, {} failed, {} publishers)",
                    s.publishes_per_s,
                    s.target_rate,
                    s.publishes_ok,
                    s.publishes_failed,
                    s.publishers
                ),
            )
            .row(
                format!("{p}deliveries/s"),
                format!(
                    "{}  (offered {}; {} of {} window deliveries arrived)",
                    fmt_count(s.deliveries_per_s),
                    fmt_count(s.offered_deliveries_per_s),
                    s.delivered,
                    s.expected
                ),
            )
            .row(
                format!("{p}latency"),
                s.latency.line(&["50", "99", "999", "max"]),
            );
            if let Some(l) = &s.publish_latency {
                t.row(format!("{p}publish answer"), l.line(&["50", "99", "max"]));
            }
            if let Some(n) = s.subscribers_per_publish {
                t.row(
                    format!("{p}server says"),
                    format!("{n:.0} subscribers per publish"),
                );
            }
            if let Some(c) = &s.server_cpu {
                t.row(format!("{p}server CPU"), server_line(c));
            }
            if let Some(c) = &s.client_cpu {
                t.row(format!("{p}client CPU"), c.line_per("deliveries"));
            }
            if let Some(busy) = s.machine_busy_cores {
                t.row(
                    format!("{p}machine"),
                    format!(
                        "{busy:.2} of {} cores busy ({:.2} outside server and client), {:.2} \
                         in softirq ({:.2} s per million deliveries), {:.2} stolen",
                        self.cores,
                        s.outside_cores.unwrap_or(0.0),
                        s.softirq_cores.unwrap_or(0.0),
                        s.softirq_s_per_million.unwrap_or(0.0),
                        s.steal_cores.unwrap_or(0.0)
                    ),
                );
            }
            for (key, n) in &s.errors {
                t.row(format!("{p}publish error"), format!("{n}  {key}"));
            }
            if let Some(why) = &s.saturated {
                t.row(format!("{p}saturated"), why.clone());
            }
        }
        if let (Some(d), Some(r)) = (self.saturation_deliveries_per_s, self.saturation_rate) {
            t.row(
                "saturation",
                format!("{} deliveries/s (step at {r:.1} publishes/s)", fmt_count(d)),
            );
        }
        t.row(
            "completeness",
            format!(
                "{} lost of {} expected, {} duplicates{}",
                self.lost,
                self.expected_deliveries,
                self.duplicates,
                if self.unparsed > 0 {
                    format!(", {} unparsed", self.unparsed)
                } else {
                    String::new()
                }
            ),
        );
        for (key, n) in &self.dropped {
            t.row("dropped", format!("{n}  {key}"));
        }
        for (key, n) in &self.notices {
            t.row("server error", format!("{n}  {key}"));
        }
        if let Some(rss) = self.server_rss_kib {
            t.row(
                "server RSS",
                format!("{:.1} MiB at the end", rss as f64 / 1024.0),
            );
        }
        t.print();
    }
}

/// `0.81 s user + 6.90 s system per million deliveries (1.20 cores)`.
fn server_line(c: &CpuCost) -> String {
    match (c.user_s_per_million, c.system_s_per_million) {
        (Some(u), Some(s)) => format!(
            "{u:.2} s user + {s:.2} s system per million deliveries ({:.2} cores)",
            c.cores
        ),
        _ => c.line_per("deliveries"),
    }
}
