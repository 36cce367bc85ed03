//! The `connections` scenario: open N authenticated connections (tether) or subscribers (the
//! peers) at a given rate, hold them (with heartbeats where the target needs them), and report
//! handshakes per second, failures by reason, and the server's RSS growth per connection.
//!
//! Over TCP (and MQTT, `--mqtt`), and for every peer, connections are [`crate::target`]
//! subscribers held by a
//! [`crate::workers::Pool`] (so past ~18,000 they spread over worker processes); tether over
//! WebSocket uses tungstenite, in this process. Each connection is one small task holding a
//! bare socket and a small buffer, so that the client side stays light. With `--tls` the same
//! connections go inside TLS (`tls://`, `wss://`); the load generator's own RSS per connection
//! is reported beside the server's. The tether handshake helpers here serve the other
//! scenarios too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tether_core::{AppId, UserId};
use tether_proto::{Binding, Body, Connect, Frame, PROTOCOL_VERSION, binary};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::Transport;
use crate::redis_probe::{RedisProbe, RedisSample};
use crate::scale::{BroadcastOutcome, Sample, Sampler, one_broadcast};
use crate::stats::{Clock, Processes, Table};
use crate::target::{Kind, TLS_PORT, TargetArgs, TetherPublish};
use crate::tls::{Stream, TlsClient};
use crate::workers::{self, Pool};

#[derive(Debug)]
pub struct Setup {
    /// Connection n goes to `addrs[n % addrs.len()]` (never empty).
    pub addrs: Vec<SocketAddr>,
    pub app: AppId,
    pub secret: String,
    pub heartbeat: Duration,
    pub sources: u8,
    pub tls: Option<TlsClient>,
    /// Topics each connection subscribes to after its handshake (WebSocket; none: bound to
    /// the app only).
    pub topics: Vec<String>,
}

#[derive(Debug, Default)]
struct Stats {
    ok: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    dropped: AtomicU64,
}

impl Stats {
    async fn fail(&self, reason: String) {
        *self.failures.lock().await.entry(reason).or_default() += 1;
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// tether only: the gateway's transport (with ws and sse, --addr defaults to
    /// 127.0.0.1:7401, and with --tls to 127.0.0.1:7403).
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// tether only: also subscribe each connection to --topic (and the others of --topics;
    /// the peers always subscribe). Raw TCP and WebSocket.
    #[arg(long)]
    subscribe: bool,
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Handshakes started per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// How long to hold the connections once all are open, in seconds.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// The server's pid (repeatable), to read its RSS from /proc; its child processes count
    /// too (nginx's workers).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Worker processes holding the connections (TCP). Default: none up to 18,000, then one
    /// per 15,000.
    #[arg(long)]
    workers: Option<usize>,
    /// The cluster's Redis (`redis://host:port`): its memory, CPU and the sessions registered,
    /// before and after connecting, and in the time series.
    #[arg(long)]
    redis: Option<String>,
    /// The cluster's key prefix (`cluster.prefix`), to count sessions.
    #[arg(long, default_value = "bench")]
    redis_prefix: String,
    /// Once the connections are held, send one broadcast (to the app, or to --topic with
    /// --subscribe) through --http and count the connections it reaches (TCP).
    #[arg(long)]
    broadcast: bool,
    /// With --broadcast: how long to wait for every delivery.
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    broadcast_wait: Duration,
    /// How often to sample the servers and Redis while connecting and holding (a time series
    /// in the JSON result, when --server-pid or --redis is given).
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    sample_every: Duration,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let server = Processes::with_descendants(&args.server_pid);
    if args.target.mqtt && !matches!(args.transport, Transport::Tcp) {
        bail!("--mqtt is MQTT over TCP: leave --transport at tcp");
    }
    if args.target.target == Kind::Tether
        && matches!(args.transport, Transport::Ws | Transport::Sse)
    {
        let target = args.target.target(args.count)?;
        if args.subscribe && matches!(args.transport, Transport::Sse) {
            bail!("--subscribe is for raw TCP and WebSocket connections");
        }
        let topics = match args.subscribe {
            true => target.topic_names(),
            false => Vec::new(),
        };
        let setup = Setup {
            addrs: match (args.target.addr.is_empty(), &target.tls) {
                (false, _) => args.target.addr.clone(),
                (true, None) => vec![SocketAddr::from(([127, 0, 0, 1], 7401))],
                (true, Some(_)) => vec![SocketAddr::from(([127, 0, 0, 1], TLS_PORT + 1))],
            },
            app: AppId::new(target.app),
            secret: target.secret,
            heartbeat: Duration::from_secs(target.heartbeat_s),
            sources: target.sources,
            tls: target.tls,
            topics,
        };
        let sse = matches!(args.transport, Transport::Sse);
        return run_ws(Arc::new(setup), &args, &server, sse).await;
    }
    let mut target = args.target.target(args.count)?;
    if !args.subscribe {
        // Bound to the app, not subscribed to anything.
        target.tether_publish = TetherPublish::Broadcast;
    }
    let mut redis = match &args.redis {
        Some(url) => Some(RedisProbe::connect(url, &args.redis_prefix).await?),
        None => None,
    };
    let sampler = if args.redis.is_some() || !server.pids.is_empty() {
        let probe = match &args.redis {
            Some(url) => Some(RedisProbe::connect(url, &args.redis_prefix).await?),
            None => None,
        };
        Some(Sampler::start(server.clone(), probe, args.sample_every))
    } else {
        None
    };
    let redis_before = sample_redis(redis.as_mut()).await?;
    let client_before = crate::stats::rss_kib(std::process::id());
    let rss_before = server.rss_kib();
    let pss_before = server.pss_kib();
    let cpu_before = server.cpu();
    let clock = Clock::new();
    let target = Arc::new(target);
    let started = Instant::now();
    let mut pool = Pool::open(
        target.clone(),
        args.count,
        args.rate,
        workers::needed(args.count, args.workers),
        clock,
    )
    .await?;
    let elapsed = started.elapsed();
    let cpu_opened = server.cpu();
    let redis_opened = sample_redis(redis.as_mut()).await?;
    let opened = pool.snapshot().await?;
    eprintln!("  all started; holding for {} s", args.hold);
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let (rss_after, pss_after) = (server.rss_kib(), server.pss_kib());
    let client_after = client_rss();
    let redis_held = sample_redis(redis.as_mut()).await?;
    let held = pool.snapshot().await?;
    let broadcast = if args.broadcast {
        Some(
            one_broadcast(
                &target,
                &mut pool,
                clock,
                held.connected,
                args.broadcast_wait,
            )
            .await?,
        )
    } else {
        None
    };
    let samples = match sampler {
        Some(s) => s.finish().await,
        None => Vec::new(),
    };
    let result = Outcome {
        target: target.name(),
        transport: match (target.kind, &target.tls) {
            (Kind::Nchan, _) => "ws",
            (_, None) if target.mqtt => "mqtt",
            (_, Some(_)) => "tls",
            (_, None) => "tcp",
        },
        subscribed: target.kind != Kind::Tether || args.subscribe,
        topics: target.topics,
        requested: args.count,
        connected: opened.connected,
        elapsed,
        dropped: held.dropped.values().sum(),
        failures: opened.failures,
        workers: pool.workers(),
        rss: (rss_before, rss_after),
        pss: (pss_before, pss_after),
        client_rss: (client_before, client_after),
        server_pids: server.pids.clone(),
        hold: Duration::from_secs(args.hold),
        server_cpu_connect_s: match (cpu_before, cpu_opened) {
            (Some(b), Some(a)) => Some(a.since(b).total_s()),
            _ => None,
        },
        redis: redis_before
            .zip(redis_opened)
            .zip(redis_held)
            .map(|((b, o), h)| [b, o, h]),
        broadcast,
        samples,
    };
    result.report(args.json.as_deref())
}

async fn sample_redis(redis: Option<&mut RedisProbe>) -> anyhow::Result<Option<RedisSample>> {
    match redis {
        Some(r) => Ok(Some(r.sample().await?)),
        None => Ok(None),
    }
}

/// What a `connections` run found.
#[derive(Debug)]
struct Outcome {
    target: &'static str,
    transport: &'static str,
    subscribed: bool,
    /// Topics per subscribed connection.
    topics: u16,
    requested: u64,
    connected: u64,
    elapsed: Duration,
    dropped: u64,
    failures: BTreeMap<String, u64>,
    workers: usize,
    rss: (Option<u64>, Option<u64>),
    pss: (Option<u64>, Option<u64>),
    /// The load generator's RSS (this process, and its workers at the end), KiB.
    client_rss: (Option<u64>, Option<u64>),
    server_pids: Vec<u32>,
    /// How long the connections were held before the last readings.
    hold: Duration,
    /// The servers' CPU while the connections opened, seconds.
    server_cpu_connect_s: Option<f64>,
    /// Redis before connecting, once connected, after the hold.
    redis: Option<[RedisSample; 3]>,
    broadcast: Option<BroadcastOutcome>,
    samples: Vec<Sample>,
}

impl Outcome {
    fn report(&self, json: Option<&std::path::Path>) -> anyhow::Result<()> {
        let ok = self.connected;
        let per_conn = |(before, after): (Option<u64>, Option<u64>)| match (before, after) {
            (Some(b), Some(a)) if ok > 0 => Some(a.saturating_sub(b) as f64 * 1024.0 / ok as f64),
            _ => None,
        };
        let (rss_per, pss_per) = (per_conn(self.rss), per_conn(self.pss));
        let client_per = per_conn(self.client_rss);
        let handshakes = ok as f64 / self.elapsed.as_secs_f64();
        let mut t = Table::default();
        t.row(
            "scenario",
            format!(
                "connections to {} ({}{})",
                self.target,
                self.transport,
                match (self.subscribed, self.topics) {
                    (false, _) => String::new(),
                    (true, 1) => ", subscribed".to_owned(),
                    (true, n) => format!(", subscribed to {n} topics"),
                }
            ),
        )
        .row("connected", format!("{ok} of {}", self.requested))
        .row("handshakes/s", format!("{handshakes:.0}"))
        .row("dropped later", self.dropped.to_string());
        if self.workers > 0 {
            t.row("workers", self.workers.to_string());
        }
        for (reason, n) in &self.failures {
            t.row("failed", format!("{n}  {reason}"));
        }
        if let (Some(b), Some(a)) = self.rss {
            t.row("server RSS", format!("{b} KiB -> {a} KiB"));
        }
        if let Some(per) = rss_per {
            t.row(
                "RSS/connection",
                format!("{per:.0} bytes ({:.2} KiB)", per / 1024.0),
            );
        }
        if let Some(per) = pss_per {
            t.row(
                "PSS/connection",
                format!("{per:.0} bytes ({:.2} KiB)", per / 1024.0),
            );
        }
        if let Some(per) = client_per {
            t.row(
                "client RSS/conn",
                format!(
                    "{per:.0} bytes ({:.2} KiB; workers' own start-up included)",
                    per / 1024.0
                ),
            );
        }
        if let Some(cpu) = self.server_cpu_connect_s {
            t.row(
                "server CPU",
                format!(
                    "{cpu:.1} s while connecting ({:.0} µs/handshake)",
                    cpu * 1e6 / ok.max(1) as f64
                ),
            );
        }
        let redis = self.redis.map(|r| RedisGrowth::of(r, self.hold));
        if let Some(g) = &redis {
            t.row(
                "Redis sessions",
                format!("{} -> {} ({} keys)", g.sessions.0, g.sessions.1, g.keys),
            )
            .row(
                "Redis memory",
                format!(
                    "{:.1} MiB -> {:.1} MiB (RSS {:.1} MiB)",
                    g.used_memory.0 as f64 / 1048576.0,
                    g.used_memory.1 as f64 / 1048576.0,
                    g.used_memory_rss as f64 / 1048576.0
                ),
            );
            if let Some(per) = g.bytes_per_session {
                t.row("Redis/session", format!("{per:.0} bytes"));
            }
            t.row(
                "Redis CPU",
                format!(
                    "{:.2} s while connecting ({:.0} µs/session, {:.2} cores); {:.2} cores while holding",
                    g.cpu_connect_s,
                    g.cpu_connect_s * 1e6 / g.sessions_added().max(1) as f64,
                    g.cpu_connect_s / self.elapsed.as_secs_f64(),
                    g.cpu_hold_cores
                ),
            );
        }
        if let Some(b) = &self.broadcast {
            t.row(
                "broadcast",
                format!(
                    "reached {} of {} (missing {}, {} duplicates); API {:.1} ms, said {}",
                    b.delivered,
                    b.expected,
                    b.missing,
                    b.duplicates,
                    b.api_ms,
                    b.api_connections
                        .map_or("-".to_owned(), |n| format!("{n} connections"))
                ),
            )
            .row("broadcast latency", b.latency.line(&["50", "99", "max"]));
            if let Some(e) = &b.error {
                t.row("broadcast error", e.clone());
            }
        }
        t.print();
        if let Some(path) = json {
            let result = serde_json::json!({
                "scenario": "connections",
                "target": self.target,
                "transport": self.transport,
                "subscribed": self.subscribed,
                "topics": if self.subscribed { self.topics } else { 0 },
                "requested": self.requested,
                "connected": ok,
                "handshakes_per_s": handshakes,
                "dropped": self.dropped,
                "failures": self.failures,
                "workers": self.workers,
                "server_pids": self.server_pids,
                "server_rss_kib_before": self.rss.0,
                "server_rss_kib_after": self.rss.1,
                "server_rss_bytes_per_connection": rss_per,
                "server_pss_kib_before": self.pss.0,
                "server_pss_kib_after": self.pss.1,
                "server_pss_bytes_per_connection": pss_per,
                "client_rss_kib_before": self.client_rss.0,
                "client_rss_kib_after": self.client_rss.1,
                "client_rss_bytes_per_connection": client_per,
                "server_cpu_connect_s": self.server_cpu_connect_s,
                "redis": self.redis.map(|[before, opened, held]| serde_json::json!({
                    "before": before,
                    "connected": opened,
                    "held": held,
                })),
                "redis_growth": redis,
                "broadcast": self.broadcast,
                "samples": self.samples,
            });
            crate::stats::write_json(path, &result)?;
        }
        Ok(())
    }
}

/// How Redis grew with the sessions of a run.
#[derive(Debug, serde::Serialize)]
struct RedisGrowth {
    sessions: (u64, u64),
    keys: u64,
    used_memory: (u64, u64),
    used_memory_rss: u64,
    /// `used_memory` growth over sessions added, once connected.
    bytes_per_session: Option<f64>,
    cpu_connect_s: f64,
    /// Redis' CPU while the connections were only held (announcements, pings), in cores.
    cpu_hold_cores: f64,
}

impl RedisGrowth {
    fn of([before, opened, held]: [RedisSample; 3], hold: Duration) -> RedisGrowth {
        let added = opened.sessions.saturating_sub(before.sessions);
        let hold_cpu_s = (held.cpu_s - opened.cpu_s).max(0.0);
        RedisGrowth {
            sessions: (before.sessions, held.sessions),
            keys: held.keys,
            used_memory: (before.used_memory, held.used_memory),
            used_memory_rss: held.used_memory_rss,
            bytes_per_session: (added > 0)
                .then(|| (opened.used_memory as f64 - before.used_memory as f64) / added as f64),
            cpu_connect_s: opened.cpu_s - before.cpu_s,
            cpu_hold_cores: hold_cpu_s / hold.as_secs_f64().max(1e-3),
        }
    }

    fn sessions_added(&self) -> u64 {
        self.sessions.1.saturating_sub(self.sessions.0)
    }
}

/// tether over WebSocket (one task per connection holding a tungstenite stream), or over SSE
/// (`sse`: one task per connection reading its stream), in this process only.
async fn run_ws(
    setup: Arc<Setup>,
    args: &Args,
    server: &Processes,
    sse: bool,
) -> anyhow::Result<()> {
    let (count, rate) = (args.count, args.rate);
    let client_before = crate::stats::rss_kib(std::process::id());
    let rss_before = server.rss_kib();
    let pss_before = server.pss_kib();
    let cpu_before = server.cpu();
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let mut tick = tokio::time::interval(
        Duration::from_secs(1)
            .checked_div(rate as u32)
            .unwrap_or(Duration::from_micros(1))
            .max(Duration::from_micros(10)),
    );
    let per_tick = (rate / 100_000).max(1);
    let mut opened = 0;
    let mut last_report = Instant::now();
    while opened < count {
        tick.tick().await;
        for _ in 0..per_tick.min(count - opened) {
            let n = opened;
            opened += 1;
            let (setup, stats) = (setup.clone(), stats.clone());
            tokio::spawn(async move {
                let held = match sse {
                    true => hold_one_sse(&setup, &stats, n).await,
                    false => hold_one(&setup, &stats, n).await,
                };
                if let Err(e) = held {
                    stats.fail(format!("{e:#}")).await;
                }
            });
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "  started {opened}/{count}, connected {}",
                stats.ok.load(Ordering::Relaxed)
            );
        }
    }
    // Wait for the handshakes to settle.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done =
            stats.ok.load(Ordering::Relaxed) + stats.failures.lock().await.values().sum::<u64>();
        if done >= count || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let cpu_opened = server.cpu();
    eprintln!("  all started; holding for {} s", args.hold);
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let result = Outcome {
        target: "tether",
        transport: match (sse, setup.tls.is_some()) {
            (true, false) => "sse",
            (true, true) => "sse (https)",
            (false, false) => "ws",
            (false, true) => "wss",
        },
        subscribed: !setup.topics.is_empty(),
        topics: setup.topics.len().max(1) as u16,
        requested: count,
        connected: stats.ok.load(Ordering::Relaxed),
        elapsed,
        dropped: stats.dropped.load(Ordering::Relaxed),
        failures: stats.failures.lock().await.clone(),
        workers: 0,
        rss: (rss_before, server.rss_kib()),
        pss: (pss_before, server.pss_kib()),
        client_rss: (client_before, client_rss()),
        server_pids: server.pids.clone(),
        hold: Duration::from_secs(args.hold),
        server_cpu_connect_s: cpu_before
            .zip(cpu_opened)
            .map(|(b, a)| a.since(b).total_s()),
        redis: None,
        broadcast: None,
        samples: Vec::new(),
    };
    result.report(args.json.as_deref())
}

/// The load generator's RSS, KiB: this process and its workers.
fn client_rss() -> Option<u64> {
    Processes::with_descendants(&[std::process::id()]).rss_kib()
}

/// Connects to `addr`, from 127.0.0.(2 + n % sources) when `sources` is not 0.
pub async fn open_socket(addr: SocketAddr, sources: u8, n: u64) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if sources > 0 {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (n % u64::from(sources)) as u8);
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    }
    Ok(socket.connect(addr).await?)
}

/// The `connect` of user `u<n>` on device `bench-<n>`, with a token minted from `secret`.
pub fn connect_frame(
    app: &AppId,
    secret: &str,
    n: u64,
    heartbeat: Duration,
    last_seq: Option<u64>,
) -> Frame {
    let user = UserId::new(format!("u{n}"));
    let token = tether_core::auth::mint(
        secret.as_bytes(),
        app,
        &user,
        Duration::from_secs(24 * 3600),
    );
    Frame::new(
        1,
        Connect {
            version: PROTOCOL_VERSION,
            device: format!("bench-{n}"),
            heartbeat_ms: heartbeat.as_millis() as u32,
            bindings: vec![Binding {
                app: app.to_string(),
                token,
                last_seq,
            }],
        },
    )
}

/// Opens one WebSocket connection, completes the handshake, then pings every heartbeat until
/// the server closes it.
async fn hold_one(setup: &Setup, stats: &Stats, n: u64) -> anyhow::Result<()> {
    let addr = setup.addrs[(n % setup.addrs.len() as u64) as usize];
    let tcp = open_socket(addr, setup.sources, n)
        .await
        .context("connect")?;
    let stream = crate::tls::open(tcp, setup.tls.as_ref()).await?;
    let connect = connect_frame(&setup.app, &setup.secret, n, setup.heartbeat, None);
    hold_ws(stream, addr, stats, connect, &setup.topics).await
}

/// Opens one SSE stream (`GET /v1/sse`, the connect in its query), reads until its
/// `connected`, then reads (keep-alives) until the server closes it. The client sends nothing:
/// the server keeps the stream alive.
async fn hold_one_sse(setup: &Setup, stats: &Stats, n: u64) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let addr = setup.addrs[(n % setup.addrs.len() as u64) as usize];
    let tcp = open_socket(addr, setup.sources, n)
        .await
        .context("connect")?;
    let mut stream = crate::tls::open(tcp, setup.tls.as_ref()).await?;
    let Body::Connect(connect) =
        connect_frame(&setup.app, &setup.secret, n, setup.heartbeat, None).body
    else {
        bail!("not a connect");
    };
    let binding = &connect.bindings[0];
    let request = format!(
        "GET /v1/sse?device={}&app={}&token={}&heartbeat_ms={} HTTP/1.1\r\nHost: {addr}\r\n\
         Accept: text/event-stream\r\n\r\n",
        connect.device, binding.app, binding.token, connect.heartbeat_ms
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed by server before connected");
        }
        if buf.windows(18).any(|w| w == br#"{"op":"connected","#) {
            break;
        }
        if buf.starts_with(b"HTTP/1.1 ") && !buf.starts_with(b"HTTP/1.1 200") {
            let line = buf[..].split(|&b| b == b'\r').next().unwrap_or_default();
            bail!("refused: {}", String::from_utf8_lossy(line));
        }
        if buf.len() > 16 * 1024 {
            bail!("no connected in the first 16 KiB");
        }
    }
    stats.ok.fetch_add(1, Ordering::Relaxed);
    // Read what comes (keep-alives) into a small buffer, dropped between reads.
    let mut scratch = [0u8; 256];
    drop(buf);
    loop {
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                bail!("dropped after connecting");
            }
            Ok(_) => {}
        }
    }
}

/// The heartbeat from the server's answer to `connect`, or why the connection was refused.
pub fn negotiated_heartbeat(reply: Body) -> anyhow::Result<Duration> {
    match reply {
        Body::Connected(c) => Ok(Duration::from_millis(u64::from(c.heartbeat_ms))),
        Body::Disconnect(d) => bail!("refused: {}", d.code),
        other => bail!("unexpected {:?}", other.op()),
    }
}

/// Reads the next frame's body, buffering in `buf`.
pub async fn read_tcp(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> anyhow::Result<Body> {
    loop {
        if let Some(frame) = binary::decode(buf, tether_proto::DEFAULT_MAX_FRAME)? {
            return Ok(frame.body);
        }
        buf.reserve(256);
        if stream.read_buf(buf).await? == 0 {
            bail!("closed by server");
        }
    }
}

async fn hold_ws(
    stream: Stream,
    addr: SocketAddr,
    stats: &Stats,
    connect: Frame,
    topics: &[String],
) -> anyhow::Result<()> {
    let url = format!("ws://{addr}/ws");
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    // The subscribes pipelined behind `connect`, like the raw TCP connections'.
    let Body::Connect(c) = &connect.body else {
        bail!("not a connect");
    };
    let subscribes = crate::target::tether::subscribes(&c.bindings[0].app, topics);
    ws.feed(Message::Binary(binary::encode_to_bytes(&connect)))
        .await?;
    for subscribe in subscribes {
        ws.feed(Message::Binary(subscribe)).await?;
    }
    ws.flush().await?;
    let heartbeat = negotiated_heartbeat(read_ws(&mut ws).await?)?;
    let mut waiting = topics.len();
    while waiting > 0 {
        waiting -= crate::target::tether::subscribed(read_ws(&mut ws).await?)?;
    }
    stats.ok.fetch_add(1, Ordering::Relaxed);
    let ping = binary::encode_to_bytes(&Frame::new(2, Body::Ping));
    loop {
        tokio::select! {
            r = read_ws(&mut ws) => {
                if let Err(e) = r {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(e.context("dropped after connecting"));
                }
            }
            () = tokio::time::sleep(heartbeat / 2) => ws.send(Message::Binary(ping.clone())).await?,
        }
    }
}

async fn read_ws(ws: &mut tokio_tungstenite::WebSocketStream<Stream>) -> anyhow::Result<Body> {
    loop {
        match ws.next().await {
            None => bail!("closed by server"),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Binary(bytes))) => {
                return Ok(binary::parse(bytes, tether_proto::DEFAULT_MAX_FRAME)?.body);
            }
            Some(Ok(Message::Close(frame))) => bail!("closed by server: {frame:?}"),
            Some(Ok(_)) => {}
        }
    }
}
