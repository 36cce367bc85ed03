//! The `churn` scenario: connections come and go at a given rate while others stay connected.
//!
//! `--stable` connections are opened first and held for the whole run (a
//! [`crate::workers::Pool`], so past ~18,000 they spread over worker processes). Then, for
//! `--duration`, a new connection is started every `1/--rate` s: it completes the target's
//! handshake (tether: `connect`, and `subscribe` with `--subscribe`; the peers: their
//! subscribe handshake; MQTT targets with `--connect-only`: CONNECT to CONNACK), stays
//! `--hold`, and closes. Reported: handshakes per second reached,
//! handshake latency, failures by reason, connects skipped because `--in-flight` were still
//! open (the client's own limit: a sign the server is slower than the rate), stable connections
//! the server dropped, and the server's RSS over the run (so a leak per connection shows).
//!
//! Each churning connection closes gracefully from the client side, so its socket waits in
//! TIME_WAIT on the client; on loopback Linux reuses those ports for new connects
//! (`net.ipv4.tcp_tw_reuse = 2`, the default), as long as `--sources` stays 0.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::stats::{Clock, CpuCost, Latency, Processes, Recorder, Table, fmt_count};
use crate::target::{Kind, TargetArgs, TetherPublish};
use crate::workers::{self, Pool};

/// Longest one churning handshake may take before it counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// tether only: churning and stable connections also subscribe to --topic.
    #[arg(long)]
    subscribe: bool,
    /// MQTT targets (mosquitto, tether --mqtt): the handshake is CONNECT to CONNACK, with no
    /// SUBSCRIBE (Mosquitto's subscribers otherwise always subscribe).
    #[arg(long, conflicts_with = "subscribe")]
    connect_only: bool,
    /// Connections held for the whole run.
    #[arg(long, default_value_t = 1000)]
    stable: u64,
    /// New connections per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to churn.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// How long each churning connection stays open after its handshake.
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    hold: Duration,
    /// Churning connections open at once at most; a connect due while this many are open is
    /// skipped and counted.
    #[arg(long, default_value_t = 2000)]
    in_flight: usize,
    /// Handshakes per second while opening the stable connections.
    #[arg(long, default_value_t = 5000)]
    connect_rate: u64,
    /// The server's pid (repeatable); its child processes are counted too.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Worker processes holding the stable connections. Default: none up to 18,000.
    #[arg(long)]
    workers: Option<usize>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug)]
struct Counts {
    started: AtomicU64,
    ok: AtomicU64,
    skipped: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    latency: Recorder,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    target: &'static str,
    subscribed: bool,
    stable_requested: u64,
    stable_connected: u64,
    stable_dropped: BTreeMap<String, u64>,
    target_rate: u64,
    duration_s: f64,
    hold_s: f64,
    started: u64,
    handshakes_ok: u64,
    handshakes_per_s: f64,
    skipped: u64,
    failures: BTreeMap<String, u64>,
    handshake_latency: Latency,
    server_cpu: Option<CpuCost>,
    server_rss_kib_start: Option<u64>,
    server_rss_kib_max: Option<u64>,
    server_rss_kib_end: Option<u64>,
    server_pids: Vec<u32>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.rate == 0 || args.in_flight == 0 {
        bail!("--rate and --in-flight must be at least 1");
    }
    let mut target = args.target.target(args.stable + args.rate * 2)?;
    if args.connect_only && !(target.kind == Kind::Mosquitto || target.mqtt) {
        bail!("--connect-only is for MQTT targets: --target mosquitto, or tether with --mqtt");
    }
    target.connect_only = args.connect_only;
    let subscribed = (target.kind != Kind::Tether || args.subscribe) && !args.connect_only;
    if !subscribed {
        target.tether_publish = TetherPublish::Broadcast;
    }
    let target = Arc::new(target);
    let server = Processes::with_descendants(&args.server_pid);
    let mut pool = Pool::open(
        target.clone(),
        args.stable,
        args.connect_rate,
        workers::needed(args.stable, args.workers),
        Clock::new(),
    )
    .await?;
    let stable = pool.snapshot().await?;
    eprintln!(
        "{} stable connections up; churning {} connections/s for {:?}",
        stable.connected, args.rate, args.duration
    );

    let counts = Arc::new(Counts {
        started: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        failures: Mutex::default(),
        latency: Recorder::new(8),
    });
    let permits = Arc::new(Semaphore::new(args.in_flight));
    let rss_start = server.rss_kib();
    let mut rss_max = rss_start;
    let cpu_before = server.cpu();
    let start = Instant::now();
    let end = start + args.duration;
    let mut next_line = start + Duration::from_secs(1);
    let mut last = (start, 0_u64);
    let mut k = 0_u64;
    loop {
        let due = start + Duration::from_secs_f64(k as f64 / args.rate as f64);
        if due >= end {
            break;
        }
        if due > next_line {
            tokio::time::sleep_until(next_line.into()).await;
            let rss = server.rss_kib();
            rss_max = rss_max.max(rss);
            let now = Instant::now();
            let ok = counts.ok.load(Ordering::Relaxed);
            let failed: u64 = lock(&counts.failures).values().sum();
            let dropped: u64 = pool.snapshot().await?.dropped.values().sum();
            eprintln!(
                "[{:>5.1}s] {:>8} handshakes/s  failed {failed}  skipped {}  stable dropped {dropped}  server RSS {}",
                now.duration_since(start).as_secs_f64(),
                fmt_count((ok - last.1) as f64 / now.duration_since(last.0).as_secs_f64()),
                counts.skipped.load(Ordering::Relaxed),
                rss.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            );
            last = (now, ok);
            next_line += Duration::from_secs(1);
            continue;
        }
        tokio::time::sleep_until(due.into()).await;
        let n = args.stable + k;
        k += 1;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counts.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        counts.started.fetch_add(1, Ordering::Relaxed);
        let (target, counts, hold) = (target.clone(), counts.clone(), args.hold);
        tokio::spawn(async move {
            let t0 = Instant::now();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, target.subscribe(n)).await {
                Ok(Ok(sub)) => {
                    counts
                        .latency
                        .record_one(n as usize, t0.elapsed().as_micros() as u64);
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                    if !hold.is_zero() {
                        tokio::time::sleep(hold).await;
                    }
                    drop(sub);
                }
                Ok(Err(e)) => count(&counts.failures, format!("{e:#}")),
                Err(_) => count(&counts.failures, "handshake timeout".into()),
            }
            drop(permit);
        });
    }
    let elapsed = start.elapsed();
    let cpu_after = server.cpu();
    // Let the last churning connections finish.
    let _ = tokio::time::timeout(
        HANDSHAKE_TIMEOUT + args.hold,
        permits.acquire_many(args.in_flight as u32),
    )
    .await;
    let rss_end = server.rss_kib();
    rss_max = rss_max.max(rss_end);
    let held = pool.snapshot().await?;
    let ok = counts.ok.load(Ordering::Relaxed);
    let report = Report {
        scenario: "churn",
        target: target.name(),
        subscribed,
        stable_requested: args.stable,
        stable_connected: stable.connected,
        stable_dropped: held.dropped,
        target_rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        hold_s: args.hold.as_secs_f64(),
        started: counts.started.load(Ordering::Relaxed),
        handshakes_ok: ok,
        handshakes_per_s: ok as f64 / elapsed.as_secs_f64(),
        skipped: counts.skipped.load(Ordering::Relaxed),
        failures: lock(&counts.failures).clone(),
        handshake_latency: Latency::of(&counts.latency.merged()),
        server_cpu: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => Some(CpuCost::of(a.since(b), elapsed, ok)),
            _ => None,
        },
        server_rss_kib_start: rss_start,
        server_rss_kib_max: rss_max,
        server_rss_kib_end: rss_end,
        server_pids: server.pids.clone(),
    };
    report.print();
    if let Some(path) = &args.json {
        crate::stats::write_json(path, &report)?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *lock(map).entry(key).or_default() += 1;
}

impl Report {
    fn print(&self) {
        let mut t = Table::default();
        t.row(
            "scenario",
            format!(
                "churn against {}{}",
                self.target,
                if self.subscribed { ", subscribing" } else { "" }
            ),
        )
        .row(
            "stable",
            format!(
                "{} connected of {}, {} dropped during the run",
                self.stable_connected,
                self.stable_requested,
                self.stable_dropped.values().sum::<u64>()
            ),
        )
        .row(
            "churn",
            format!(
                "{} connects/s target for {:.1} s, each held {:.1} s",
                self.target_rate, self.duration_s, self.hold_s
            ),
        )
        .row(
            "handshakes/s",
            format!(
                "{}  ({} ok of {} started, {} skipped at the in-flight limit)",
                fmt_count(self.handshakes_per_s),
                self.handshakes_ok,
                self.started,
                self.skipped
            ),
        )
        .row(
            "handshake",
            self.handshake_latency.line(&["50", "99", "999", "max"]),
        );
        for (reason, n) in &self.failures {
            t.row("failed", format!("{n}  {reason}"));
        }
        for (reason, n) in &self.stable_dropped {
            t.row("stable dropped", format!("{n}  {reason}"));
        }
        if let Some(c) = &self.server_cpu {
            t.row("server CPU", c.line_per("handshakes"));
        }
        if let (Some(a), Some(m), Some(b)) = (
            self.server_rss_kib_start,
            self.server_rss_kib_max,
            self.server_rss_kib_end,
        ) {
            t.row(
                "server RSS",
                format!(
                    "{:.1} MiB at the start, {:.1} MiB max, {:.1} MiB at the end",
                    a as f64 / 1024.0,
                    m as f64 / 1024.0,
                    b as f64 / 1024.0
                ),
            );
        }
        t.print();
    }
}
