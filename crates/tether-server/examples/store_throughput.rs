//! How many durable appends a second the embedded store takes, and how long each waits.
//!
//! ```text
//! cargo run --release -p tether-server --example store_throughput -- \
//!     [--mode sync|interval] [--users N] [--concurrency C] [--seconds S] [--payload BYTES] \
//!     [--inboxes K]
//! ```
//!
//! Opens a store in a fresh temporary directory (default options: inbox cap 1000, 10 ms
//! sync interval) and runs C tasks that each append in a loop for S seconds: one message of
//! BYTES bytes to N users, picked round-robin among K inboxes. Reports appends/s as
//! messages x users (what reaches inboxes), requests/s, fsyncs/s, append latency, and (on
//! Linux) the CPU time of the store's writer thread and of the whole process per million
//! appends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tether_core::store::{Append, NewMessage};
use tether_core::{AppId, Inboxes, MessageId, StoreError, UserId};
use tether_proto::PayloadKind;
use tether_server::config::Durability;
use tether_server::store::{EmbeddedOptions, EmbeddedStore};

#[derive(Debug)]
struct Args {
    mode: Durability,
    users: usize,
    concurrency: usize,
    seconds: u64,
    payload: usize,
    inboxes: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        mode: Durability::Sync,
        users: 1,
        concurrency: 64,
        seconds: 10,
        payload: 200,
        inboxes: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--mode" => {
                args.mode = match value.as_str() {
                    "sync" => Durability::Sync,
                    "interval" => Durability::Interval,
                    _ => return Err(format!("--mode is sync or interval, not {value}")),
                }
            }
            "--users" => args.users = number()?.max(1),
            "--concurrency" => args.concurrency = number()?.max(1),
            "--seconds" => args.seconds = number()?.max(1) as u64,
            "--payload" => args.payload = number()?,
            "--inboxes" => args.inboxes = number()?.max(1),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

#[derive(Default)]
struct TaskResult {
    ok: u64,
    overloaded: u64,
    failed: u64,
    latency_us: Option<Histogram<u64>>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let dir = tempfile::tempdir()?;
    let options = EmbeddedOptions {
        durability: args.mode,
        ..EmbeddedOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open(dir.path(), options)?);
    let pool: Arc<Vec<UserId>> = Arc::new(
        (0..args.inboxes)
            .map(|i| UserId::from(format!("user-{i}").as_str()))
            .collect(),
    );
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let app = AppId::from("bench");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let before = store.stats();
    let cpu_before = (thread_cpu("tether-store-wr"), process_cpu());
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|task| {
            let (store, pool, payload, app) =
                (store.clone(), pool.clone(), payload.clone(), app.clone());
            let users = args.users;
            tokio::spawn(async move {
                let mut result = TaskResult {
                    latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
                    ..TaskResult::default()
                };
                let mut next = task * 7919;
                let mut id = (task as u64) << 40;
                while Instant::now() < deadline {
                    let to: Vec<UserId> = (0..users)
                        .map(|k| pool[(next + k) % pool.len()].clone())
                        .collect();
                    next += users;
                    id += 1;
                    let now = tether_core::now_ms();
                    let append = Append {
                        app: app.clone(),
                        users: to,
                        message: NewMessage {
                            id: MessageId(id),
                            created_ms: now,
                            expires_ms: now + 3_600_000,
                            kind: PayloadKind::Binary,
                            payload: payload.clone(),
                        },
                        idempotency: None,
                    };
                    let t = Instant::now();
                    match store.append(append).await {
                        Ok(_) => {
                            result.ok += 1;
                            let us = t.elapsed().as_micros() as u64;
                            if let Some(h) = result.latency_us.as_mut() {
                                h.saturating_record(us.max(1));
                            }
                        }
                        Err(StoreError::Overloaded(_)) => {
                            result.overloaded += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(_) => result.failed += 1,
                    }
                }
                result
            })
        })
        .collect();

    let mut total = TaskResult {
        latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ..TaskResult::default()
    };
    for task in tasks {
        let r = task.await?;
        total.ok += r.ok;
        total.overloaded += r.overloaded;
        total.failed += r.failed;
        if let (Some(all), Some(h)) = (total.latency_us.as_mut(), r.latency_us.as_ref()) {
            all.add(h)?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = store.stats();
    let cpu_after = (thread_cpu("tether-store-wr"), process_cpu());
    store.close().await;

    let appends = after.appends - before.appends;
    let fsyncs = after.fsyncs - before.fsyncs;
    let batches = after.batches - before.batches;
    let h = total.latency_us.as_ref().ok_or("no histogram")?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "mode={:?} users={} concurrency={} payload={}B inboxes={} seconds={:.1} cores={}",
        args.mode,
        args.users,
        args.concurrency,
        args.payload,
        args.inboxes,
        elapsed,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  appends (messages x users): {:.0}/s   requests: {:.0}/s   fsyncs: {:.0}/s   \
         batches: {:.0}/s ({:.1} requests each)",
        appends as f64 / elapsed,
        total.ok as f64 / elapsed,
        fsyncs as f64 / elapsed,
        batches as f64 / elapsed,
        total.ok as f64 / batches.max(1) as f64,
    );
    println!(
        "  append latency: p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
    );
    if let ((Some(w0), Some(p0)), (Some(w1), Some(p1))) = (cpu_before, cpu_after) {
        let per_million = |d: Duration| d.as_secs_f64() * 1e6 / appends.max(1) as f64;
        println!(
            "  cpu per million appends: writer thread {:.2} s   whole process {:.2} s",
            per_million(w1.saturating_sub(w0)),
            per_million(p1.saturating_sub(p0)),
        );
    }
    if total.overloaded + total.failed > 0 {
        println!(
            "  refused: {} overloaded, {} failed",
            total.overloaded, total.failed
        );
    }
    Ok(())
}

/// User + system time from a `/proc/.../stat` line: fields 14 and 15, in clock ticks (100 a
/// second on Linux).
fn stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time so far of this process's thread named `name`, where `/proc` tells.
fn thread_cpu(name: &str) -> Option<Duration> {
    // A thread that ends while this looks (tokio's blocking pool) is skipped, not an error.
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .map(|task| task.path())
        .find(|path| {
            std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim_end() == name)
        })
        .and_then(|path| stat_cpu(&std::fs::read_to_string(path.join("stat")).ok()?))
}

fn process_cpu() -> Option<Duration> {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}
