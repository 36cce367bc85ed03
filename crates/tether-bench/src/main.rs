//! `tether-bench`: the project's load generator. For now one scenario, `connections`: open N
//! authenticated connections at a given rate, hold them with heartbeats, and report handshakes
//! per second, failures by reason, and the server's RSS growth per connection.
//!
//! Each connection is one small task holding a bare socket (no SDK, no buffers while idle), so
//! that the client side stays light.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tether_core::{AppId, UserId};
use tether_proto::{Binding, Body, Connect, Frame, PROTOCOL_VERSION, binary};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(name = "tether-bench", about = "Load generator for tether")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Transport {
    Tcp,
    Ws,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N authenticated connections and hold them; report the server's RSS per connection.
    Connections {
        /// Gateway address (host:port): the TCP listener, or the WebSocket one with --transport ws.
        #[arg(long, default_value = "127.0.0.1:7400")]
        addr: SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        transport: Transport,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Handshakes started per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        #[arg(long, default_value = "demo")]
        app: String,
        /// The app's token secret.
        #[arg(long, env = "TETHER_APP_SECRET")]
        secret: String,
        /// How long to hold the connections once all are open, in seconds.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        /// Heartbeat proposed to the server, in seconds.
        #[arg(long, default_value_t = 30)]
        heartbeat: u64,
        /// The server's pid, to read its RSS from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Bind client sockets round-robin to 127.0.0.2 .. 127.0.0.(1+N), to get past the
        /// ephemeral port range of one source address. 0: let the kernel choose.
        #[arg(long, default_value_t = 0)]
        sources: u8,
        /// Write the result as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Connections {
            addr,
            transport,
            count,
            rate,
            app,
            secret,
            hold,
            heartbeat,
            server_pid,
            sources,
            json,
        } => {
            let setup = Setup {
                addr,
                transport,
                app: AppId::new(app),
                secret,
                heartbeat: Duration::from_secs(heartbeat),
                sources,
            };
            connections(Arc::new(setup), count, rate, hold, server_pid, json).await
        }
    }
}

#[derive(Debug)]
struct Setup {
    addr: SocketAddr,
    transport: Transport,
    app: AppId,
    secret: String,
    heartbeat: Duration,
    sources: u8,
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

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn connections(
    setup: Arc<Setup>,
    count: u64,
    rate: u64,
    hold: u64,
    server_pid: Option<u32>,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    if rate == 0 {
        bail!("--rate must be at least 1");
    }
    let rss_before = server_pid.and_then(rss_kib);
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
                if let Err(e) = hold_one(&setup, &stats, n).await {
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
    let ok = stats.ok.load(Ordering::Relaxed);
    eprintln!("  all started; holding for {hold} s");
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let rss_after = server_pid.and_then(rss_kib);
    let failures = stats.failures.lock().await.clone();
    let dropped = stats.dropped.load(Ordering::Relaxed);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if ok > 0 => Some((a.saturating_sub(b)) as f64 * 1024.0 / ok as f64),
        _ => None,
    };
    println!("scenario        connections ({:?})", setup.transport);
    println!("connected       {ok} of {count}");
    println!("handshakes/s    {:.0}", ok as f64 / elapsed.as_secs_f64());
    println!("dropped later   {dropped}");
    for (reason, n) in &failures {
        println!("failed          {n}  {reason}");
    }
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        println!("server RSS      {b} KiB -> {a} KiB");
    }
    if let Some(per) = per_conn {
        println!("RSS/connection  {per:.0} bytes ({:.2} KiB)", per / 1024.0);
    }
    if let Some(path) = json {
        let result = serde_json::json!({
            "scenario": "connections",
            "transport": format!("{:?}", setup.transport).to_lowercase(),
            "requested": count,
            "connected": ok,
            "handshakes_per_s": ok as f64 / elapsed.as_secs_f64(),
            "dropped": dropped,
            "failures": failures,
            "server_rss_kib_before": rss_before,
            "server_rss_kib_after": rss_after,
            "server_rss_bytes_per_connection": per_conn,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn open_socket(setup: &Setup, n: u64) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if setup.sources > 0 {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (n % u64::from(setup.sources)) as u8);
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    }
    Ok(socket.connect(setup.addr).await?)
}

fn connect_frame(setup: &Setup, n: u64) -> Frame {
    let user = UserId::new(format!("u{n}"));
    let token = tether_core::auth::mint(
        setup.secret.as_bytes(),
        &setup.app,
        &user,
        Duration::from_secs(24 * 3600),
    );
    Frame::new(
        1,
        Connect {
            version: PROTOCOL_VERSION,
            device: format!("bench-{n}"),
            heartbeat_ms: setup.heartbeat.as_millis() as u32,
            bindings: vec![Binding {
                app: setup.app.to_string(),
                token,
                last_seq: None,
            }],
        },
    )
}

/// Opens one connection, completes the handshake, then pings every heartbeat until the
/// server closes it.
async fn hold_one(setup: &Setup, stats: &Stats, n: u64) -> anyhow::Result<()> {
    let stream = open_socket(setup, n).await.context("connect")?;
    let connect = connect_frame(setup, n);
    match setup.transport {
        Transport::Tcp => hold_tcp(stream, stats, connect).await,
        Transport::Ws => hold_ws(stream, setup, stats, connect).await,
    }
}

/// The heartbeat from the server's answer to `connect`, or why the connection was refused.
fn negotiated_heartbeat(reply: Body) -> anyhow::Result<Duration> {
    match reply {
        Body::Connected(c) => Ok(Duration::from_millis(u64::from(c.heartbeat_ms))),
        Body::Disconnect(d) => bail!("refused: {}", d.code),
        other => bail!("unexpected {:?}", other.op()),
    }
}

async fn hold_tcp(mut stream: TcpStream, stats: &Stats, connect: Frame) -> anyhow::Result<()> {
    stream.write_all(&binary::encode_to_bytes(&connect)).await?;
    let mut buf = BytesMut::new();
    let heartbeat = negotiated_heartbeat(read_tcp(&mut stream, &mut buf).await?)?;
    stats.ok.fetch_add(1, Ordering::Relaxed);
    let ping = binary::encode_to_bytes(&Frame::new(2, Body::Ping));
    loop {
        tokio::select! {
            r = read_tcp(&mut stream, &mut buf) => {
                if let Err(e) = r {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(e.context("dropped after connecting"));
                }
            }
            () = tokio::time::sleep(heartbeat / 2) => stream.write_all(&ping).await?,
        }
    }
}

async fn read_tcp(stream: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<Body> {
    use tokio::io::AsyncReadExt;
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
    stream: TcpStream,
    setup: &Setup,
    stats: &Stats,
    connect: Frame,
) -> anyhow::Result<()> {
    let url = format!("ws://{}/ws", setup.addr);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    ws.send(Message::Binary(binary::encode_to_bytes(&connect)))
        .await?;
    let heartbeat = negotiated_heartbeat(read_ws(&mut ws).await?)?;
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

async fn read_ws(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> anyhow::Result<Body> {
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
