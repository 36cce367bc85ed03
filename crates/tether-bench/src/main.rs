//! `tether-bench`: the project's load generator.
//!
//! # Layout
//! - this file: the command line, one subcommand per scenario.
//! - [`connections`]: open and hold N authenticated connections; the server's RSS per
//!   connection. Also the handshake helpers the other scenarios use.
//! - [`unicast`]: connected users receive pushes sent through the HTTP API; API and
//!   push-to-delivery latency, throughput, delivery completeness, server CPU per message.
//! - [`stats`]: histograms, `/proc` CPU and RSS sampling, the table and JSON output.
//!
//! Everything runs on one tokio runtime; the client side is kept light (no task per message,
//! reused buffers) so that on a small machine most of the CPU goes to the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tether_core::AppId;

mod connections;
mod stats;
mod unicast;

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
    /// Push to connected users through the HTTP API (one message per user, or U users per
    /// request) and measure API latency, push-to-delivery latency, throughput and losses.
    Unicast(unicast::Args),
}

fn main() -> anyhow::Result<()> {
    let scenario = Cli::parse().scenario;
    // One runtime for everything; the unicast scenario can ask for its worker count (1: a
    // current-thread runtime, which spends the least CPU per event at low rates).
    let threads = match &scenario {
        Scenario::Unicast(args) => args.threads,
        Scenario::Connections { .. } => None,
    };
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
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
            let setup = connections::Setup {
                addr,
                transport,
                app: AppId::new(app),
                secret,
                heartbeat: Duration::from_secs(heartbeat),
                sources,
            };
            connections::run(Arc::new(setup), count, rate, hold, server_pid, json).await
        }
        Scenario::Unicast(args) => unicast::run(args).await,
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` in `{s}`")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
