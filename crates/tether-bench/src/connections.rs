//! The `connections` scenario: open N authenticated connections at a given rate, hold them with
//! heartbeats, and report handshakes per second, failures by reason, and the server's RSS
//! growth per connection.
//!
//! Each connection is one small task holding a bare socket (no SDK, no buffers while idle), so
//! that the client side stays light. The handshake helpers here serve the other scenarios too.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::Transport;
use crate::stats::rss_kib;

#[derive(Debug)]
pub struct Setup {
    pub addr: SocketAddr,
    pub transport: Transport,
    pub app: AppId,
    pub secret: String,
    pub heartbeat: Duration,
    pub sources: u8,
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

pub async fn run(
    setup: Arc<Setup>,
    count: u64,
    rate: u64,
    hold: u64,
    server_pid: Option<u32>,
    json: Option<PathBuf>,
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
        crate::stats::write_json(&path, &result)?;
    }
    Ok(())
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

/// Opens one connection, completes the handshake, then pings every heartbeat until the
/// server closes it.
async fn hold_one(setup: &Setup, stats: &Stats, n: u64) -> anyhow::Result<()> {
    let stream = open_socket(setup.addr, setup.sources, n)
        .await
        .context("connect")?;
    let connect = connect_frame(&setup.app, &setup.secret, n, setup.heartbeat, None);
    match setup.transport {
        Transport::Tcp => hold_tcp(stream, stats, connect).await,
        Transport::Ws => hold_ws(stream, setup, stats, connect).await,
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

/// Reads the next frame's body, buffering in `buf`.
pub async fn read_tcp(stream: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<Body> {
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
