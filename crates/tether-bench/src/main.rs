//! `tether-bench`: the project's load generator.
//!
//! # Layout
//! - this file: the command line, one subcommand per scenario.
//! - [`connections`]: open and hold N authenticated connections (or a peer's subscribers);
//!   the server's RSS per connection. Also the tether handshake helpers the others use.
//! - [`unicast`]: connected users receive pushes sent through the HTTP API; API and
//!   push-to-delivery latency, throughput, delivery completeness, server CPU per message.
//! - [`broadcast`]: N subscribers of one topic, M publishes/s, against tether or a peer;
//!   deliveries/s, latency, server CPU per million deliveries; `--max` finds saturation.
//! - [`churn`]: connect and disconnect at a given rate while others stay connected.
//! - [`summary`]: the side-by-side table (with ratios) of a `bench/compare.sh` run.
//! - [`plot`]: a PNG of memory and CPU against connections from `connections` results.
//! - [`target`]: the servers driven (tether, Nchan, Mosquitto, the bare writer) behind one
//!   interface: subscriber handshakes, reading payloads in place, their wire codecs.
//! - [`subscribers`]: many subscribers in one process and what they count.
//! - [`workers`]: the same spread over worker processes (the per-process file limit).
//! - [`tls`]: `--tls`: the rustls client, and the socket a subscriber holds, plain or in TLS.
//! - [`cert`]: a CA and a server certificate for tether's TLS listeners.
//! - [`bare_writer`]: the bare writer server (one `write()` per subscriber per message).
//! - [`payload`]: the benchmark message (send time, number, window slot).
//! - [`http`]: the keep-alive HTTP client the API scenarios share.
//! - [`redis_probe`]: a cluster's Redis: memory, CPU, sessions registered.
//! - [`scale`]: the time series of a `connections` run and its one broadcast to everyone.
//! - [`stats`]: histograms, `/proc` CPU and RSS sampling, the table and JSON output.
//!
//! The client side is kept light (one task per connection at most, no task per message,
//! reused buffers) so that on a small machine most of the CPU goes to the server.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

mod bare_writer;
mod broadcast;
mod cert;
mod churn;
mod connections;
mod http;
mod payload;
mod plot;
mod redis_probe;
mod scale;
mod stats;
mod subscribers;
mod summary;
mod target;
mod tls;
mod unicast;
mod workers;

#[derive(Debug, Parser)]
#[command(
    name = "tether-bench",
    about = "Load generator for tether and its peers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Transport {
    Tcp,
    Ws,
    /// Server-Sent Events on the WebSocket listener (`connections` only).
    Sse,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N authenticated connections (or a peer's subscribers) and hold them; report the
    /// server's RSS per connection.
    Connections(connections::Args),
    /// Push to connected users through the HTTP API (one message per user, or U users per
    /// request) and measure API latency, push-to-delivery latency, throughput and losses.
    Unicast(unicast::Args),
    /// N subscribers of one topic, M publishes/s (or --max): deliveries/s, latency, server CPU
    /// per million deliveries, losses; against tether, Nchan, Mosquitto or the bare writer.
    Broadcast(broadcast::Args),
    /// Connect and disconnect at a given rate while other connections stay up.
    Churn(churn::Args),
    /// Run the bare writer: one write() per subscriber per message, nothing else.
    BareWriter(bare_writer::Args),
    /// Print the side-by-side table of a compare run's JSON results.
    Summary(summary::Args),
    /// Draw memory and CPU against connections (PNG) from `connections --redis` results.
    Plot(plot::Args),
    /// Write a CA and a server certificate it signed (for tether's TLS listeners and --tls).
    Cert(cert::Args),
    /// Internal: hold a share of the subscribers for a parent process.
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    // The bare writer and the summary need no runtime (the bare writer is plain threads on
    // purpose).
    let scenario = match Cli::parse().scenario {
        Scenario::BareWriter(args) => return bare_writer::run(args),
        Scenario::Summary(args) => return summary::run(&args),
        Scenario::Plot(args) => return plot::run(&args),
        Scenario::Cert(args) => return cert::run(&args),
        other => other,
    };
    // One runtime for everything; some scenarios can ask for their worker count (1: a
    // current-thread runtime, which spends the least CPU per event at low rates).
    let threads = match &scenario {
        Scenario::Unicast(args) => args.threads,
        Scenario::Broadcast(args) => args.threads,
        _ => None,
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
        Scenario::Connections(args) => connections::run(args).await,
        Scenario::Unicast(args) => unicast::run(args).await,
        Scenario::Broadcast(args) => broadcast::run(args).await,
        Scenario::Churn(args) => churn::run(args).await,
        Scenario::Worker => workers::worker_main().await,
        Scenario::BareWriter(_) | Scenario::Summary(_) | Scenario::Plot(_) | Scenario::Cert(_) => {
            unreachable!("run without a runtime")
        }
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
