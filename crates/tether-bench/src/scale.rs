//! What a `connections` run against a cluster measures besides RSS: a time series of the
//! server processes and the shared Redis while connections open ([`Sampler`]), and one
//! broadcast that must reach every connection ([`one_broadcast`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::broadcast::publish::Publisher;
use crate::payload::{self, Fields};
use crate::redis_probe::{RedisProbe, RedisSample};
use crate::stats::{Clock, Latency, Processes};
use crate::target::Target;
use crate::workers::Pool;

/// One point of the time series.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// The servers' RSS together, KiB.
    pub server_rss_kib: Option<u64>,
    /// The servers' CPU so far (user + system), seconds.
    pub server_cpu_s: Option<f64>,
    /// The machine's `MemAvailable`, KiB.
    pub mem_available_kib: Option<u64>,
    pub redis: Option<RedisSample>,
}

/// Samples every `every` until stopped.
#[derive(Debug)]
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// `redis`: a connection of its own (the run's other samples use another one).
    pub fn start(server: Processes, redis: Option<RedisProbe>, every: Duration) -> Sampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut redis = redis;
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let s = take(&server, redis.as_mut(), started).await;
                if let (Some(r), Some(avail)) = (&s.redis, s.mem_available_kib) {
                    eprintln!(
                        "  [{:.0} s] sessions {}, redis {:.0} MiB, servers {:.0} MiB, available {:.1} GiB",
                        s.t_s,
                        r.sessions,
                        r.used_memory as f64 / 1048576.0,
                        s.server_rss_kib.unwrap_or(0) as f64 / 1024.0,
                        avail as f64 / 1048576.0
                    );
                }
                samples.push(s);
            }
            samples.push(take(&server, redis.as_mut(), started).await);
            samples
        });
        Sampler { stop, task }
    }

    /// Stops sampling (after one last sample) and returns the series.
    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

async fn take(server: &Processes, redis: Option<&mut RedisProbe>, started: Instant) -> Sample {
    let redis = match redis {
        Some(r) => r.sample().await.ok(),
        None => None,
    };
    Sample {
        t_s: started.elapsed().as_secs_f64(),
        server_rss_kib: server.rss_kib(),
        server_cpu_s: server.cpu().map(|c| c.total_s()),
        mem_available_kib: mem_available_kib(),
        redis,
    }
}

/// The machine's `MemAvailable`, KiB.
pub fn mem_available_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What one broadcast to every connection found.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastOutcome {
    /// Connections held when it was sent.
    pub expected: u64,
    /// Of those, reached (first receptions).
    pub delivered: u64,
    pub missing: i64,
    pub duplicates: u64,
    /// Connections the API said the broadcast reached (the registry's count, every node).
    pub api_connections: Option<u64>,
    /// Time to the API's answer.
    pub api_ms: f64,
    /// Publish-to-delivery latency over the connections reached.
    pub latency: Latency,
    /// From the publish to the last delivery seen (within the wait's polling period).
    pub all_delivered_ms: Option<f64>,
    pub error: Option<String>,
}

/// How long deliveries may stop before the wait for a broadcast gives up: on a saturated
/// machine a node can start its fan-out seconds after another finished.
const STALL: Duration = Duration::from_secs(15);

/// Sends one broadcast through `target.publish_addr` and waits (at most `limit`, or until
/// deliveries stop for [`STALL`]) for it to reach the `expected` connections of `pool`.
pub async fn one_broadcast(
    target: &Arc<Target>,
    pool: &mut Pool,
    clock: Clock,
    expected: u64,
    limit: Duration,
) -> anyhow::Result<BroadcastOutcome> {
    /// The broadcast's window slot, so its latencies are kept apart.
    const SLOT: u8 = 1;
    let before = pool.snapshot().await?;
    let mut publisher = Publisher::open(target).await?;
    let mut message = Vec::new();
    let fields = Fields {
        t: clock.now_us(),
        n: 0,
        s: SLOT,
    };
    payload::write(&mut message, fields, 100);
    let sent = Instant::now();
    let answer = publisher.publish(&message).await;
    let api_ms = sent.elapsed().as_secs_f64() * 1e3;
    let (api_connections, error) = match answer {
        Ok(n) => (n, None),
        Err(f) => (None, Some(f.key)),
    };
    eprintln!(
        "  broadcast sent through {} in {api_ms:.1} ms (API: {api_connections:?} connections); waiting for {expected} deliveries",
        target.publish_addr
    );
    let deadline = sent + limit;
    let mut last_change = Instant::now();
    let mut all_delivered = None;
    let mut seen = 0;
    let mut now = before.clone();
    while error.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = pool.snapshot().await?;
        let got = now.distinct - before.distinct;
        if got != seen {
            seen = got;
            last_change = Instant::now();
        }
        if got >= expected {
            all_delivered = Some(sent.elapsed().as_secs_f64() * 1e3);
            break;
        }
        if last_change.elapsed() > STALL {
            break;
        }
    }
    let delivered = now.distinct - before.distinct;
    Ok(BroadcastOutcome {
        expected,
        delivered,
        missing: expected as i64 - delivered as i64,
        duplicates: now.duplicates - before.duplicates,
        api_connections,
        api_ms,
        latency: Latency::of(&now.slot(SLOT)),
        all_delivered_ms: all_delivered,
        error,
    })
}
