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
//!
//! # Layout
//! - this file: the command line, the run and its steps, the drain.
//! - [`publish`]: the publishers (HTTP or stream) and the shared schedule.
//! - [`report`]: a step's and the run's figures, the saturation rule, the table.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::task::JoinSet;

use self::publish::{Counts, Publisher, Schedule, publish_loop};
use self::report::{Report, Step, saturation};
use crate::stats::{Clock, Cpu, CpuCost, Latency, Machine, Processes, fmt_count, fmt_us};
use crate::target::{Kind, TargetArgs};
use crate::workers::{self, Pool};

pub mod publish;
mod report;

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
        target.name(),
        args.subscribers,
        target.topic,
        target
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
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
        target: target.name(),
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
