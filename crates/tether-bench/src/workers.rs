//! Subscribers in this process or spread over worker processes, behind one [`Pool`].
//!
//! A process may hold at most about 20,000 open files here, and the limit cannot be raised, so
//! past [`PER_PROCESS`] subscribers the load generator re-executes itself as `tether-bench
//! worker` children, each holding a share of the subscribers (numbered from where the previous
//! share ends, so source addresses and user ids stay distinct). The parent keeps the
//! publishers and the schedule.
//!
//! # Protocol with a worker
//! JSON lines. The parent writes the [`Spec`] as the first line of the worker's stdin; the
//! worker opens its subscribers and answers one line `{"ready": <Snapshot>}`. Then, for every
//! `snapshot` line the parent writes, the worker answers one line with its current
//! [`Snapshot`]. When its stdin closes, the worker exits (and the parent kills it when the
//! handle is dropped, whatever happens).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::stats::Clock;
use crate::subscribers::{self, Collector, Snapshot};
use crate::target::Target;

/// Subscribers one process holds at most before the work is spread over workers: leaves room
/// under the ~20,000 open-file limit for the publishers and the process's own files.
pub const PER_PROCESS: u64 = 15_000;

/// What a worker is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub struct Spec {
    pub target: Target,
    /// Its subscribers are numbered `first .. first + count`.
    pub first: u64,
    pub count: u64,
    /// Handshakes per second.
    pub rate: u64,
}

/// How many worker processes `count` subscribers need (0: they fit in this process).
pub fn needed(count: u64, requested: Option<usize>) -> usize {
    match requested {
        Some(n) => n,
        None if count <= PER_PROCESS + PER_PROCESS / 5 => 0,
        None => count.div_ceil(PER_PROCESS) as usize,
    }
}

/// Subscribers, here or in workers.
#[derive(Debug)]
pub enum Pool {
    Local(Arc<Collector>),
    Workers(Vec<Worker>),
}

#[derive(Debug)]
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Longest the handshakes of `count` subscribers at `rate` may take.
fn open_limit(count: u64, rate: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_secs_f64(count as f64 / rate.max(1) as f64)
}

impl Pool {
    /// Opens `count` subscribers at `rate` handshakes/s: in this process with `workers` 0,
    /// else spread evenly over `workers` child processes. Returns once every handshake is done.
    pub async fn open(
        target: Arc<Target>,
        count: u64,
        rate: u64,
        workers: usize,
        clock: Clock,
    ) -> anyhow::Result<Pool> {
        if workers == 0 {
            let collector = Arc::new(Collector::new(clock));
            let limit = open_limit(count, rate);
            subscribers::open(target, 0..count, rate, collector.clone(), limit, true).await;
            return Ok(Pool::Local(collector));
        }
        let exe = std::env::current_exe().context("cannot find this program to run workers")?;
        let mut spawned = Vec::with_capacity(workers);
        let mut first = 0;
        for i in 0..workers as u64 {
            let share = count / workers as u64 + u64::from(i < count % workers as u64);
            let spec = Spec {
                target: (*target).clone(),
                first,
                count: share,
                rate: (rate / workers as u64).max(1),
            };
            first += share;
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_vec(&spec)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            spawned.push(Worker {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }
        eprintln!("opening {count} subscribers in {workers} worker processes");
        let mut ready = Snapshot::default();
        for w in &mut spawned {
            let line = w
                .lines
                .next_line()
                .await?
                .context("a worker exited before it was ready")?;
            #[derive(Deserialize)]
            struct Ready {
                ready: Snapshot,
            }
            let r: Ready = serde_json::from_str(&line)
                .with_context(|| format!("unexpected line from a worker: {line}"))?;
            ready.merge(r.ready);
        }
        eprintln!(
            "  workers ready: connected {}, failed {}",
            ready.connected,
            ready.failures.values().sum::<u64>()
        );
        Ok(Pool::Workers(spawned))
    }

    /// Everything the subscribers counted so far, all processes together.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        match self {
            Pool::Local(c) => Ok(c.snapshot()),
            Pool::Workers(workers) => {
                for w in workers.iter_mut() {
                    w.stdin.write_all(b"snapshot\n").await?;
                }
                let mut all = Snapshot::default();
                for w in workers.iter_mut() {
                    let Some(line) = w.lines.next_line().await? else {
                        bail!("a worker exited");
                    };
                    all.merge(serde_json::from_str(&line)?);
                }
                Ok(all)
            }
        }
    }

    /// The worker processes' pids (their CPU is the client's too).
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Pool::Local(_) => Vec::new(),
            Pool::Workers(w) => w.iter().filter_map(|w| w.child.id()).collect(),
        }
    }

    pub fn workers(&self) -> usize {
        match self {
            Pool::Local(_) => 0,
            Pool::Workers(w) => w.len(),
        }
    }
}

/// The `worker` subcommand: reads its [`Spec`], opens its subscribers, answers snapshots until
/// its stdin closes.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let spec: Spec = match stdin.next_line().await? {
        Some(line) => serde_json::from_str(&line).context("bad worker spec")?,
        None => return Ok(()),
    };
    let collector = Arc::new(Collector::new(Clock::new()));
    let limit = open_limit(spec.count, spec.rate);
    let range = spec.first..spec.first + spec.count;
    subscribers::open(
        Arc::new(spec.target),
        range,
        spec.rate,
        collector.clone(),
        limit,
        true,
    )
    .await;
    let mut line = serde_json::to_vec(&serde_json::json!({ "ready": collector.snapshot() }))?;
    line.push(b'\n');
    stdout.write_all(&line).await?;
    stdout.flush().await?;
    while let Some(command) = stdin.next_line().await? {
        if command.trim() == "snapshot" {
            let mut line = serde_json::to_vec(&collector.snapshot())?;
            line.push(b'\n');
            stdout.write_all(&line).await?;
            stdout.flush().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_counts() {
        assert_eq!(needed(10_000, None), 0);
        assert_eq!(needed(18_000, None), 0);
        assert_eq!(needed(19_000, None), 2);
        assert_eq!(needed(100_000, None), 7);
        assert_eq!(needed(1_000, Some(2)), 2);
    }
}
