//! The `tether` binary: parses the command line, loads the configuration, sets up logging,
//! and hands over to the library crates.
//!
//! # Layout
//!
//! - this file: the command line, `serve` (a node, until SIGTERM or SIGINT; SIGHUP reloads),
//!   `token` and `config` (`example`, `check`).
//! - `target`: which node and app a command talks to, from `--config` / `TETHER_CONFIG` or the
//!   command line; never a new demo app.
//! - `listen`: `tether listen`, a client that prints what it receives and acks it.
//! - `push`: `tether push`, a push through the HTTP API, retried safely.
//! - `api`: the other HTTP API commands: `publish`, `broadcast`, `kick`, `presence`,
//!   `history`, `stats`.
//! - `profile`: `tether profile`, a node's CPU profile written to a file.
//! - `logs`: `serve`'s log filter and formats.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tether_core::{AppId, UserId};
use tether_server::Config;
use tether_server::config::ConfigError;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "A long-connection push and messaging server",
    long_about = "A long-connection push and messaging server.\n\n\
                  `tether serve` runs a node; the other commands talk to one. Give them the \
                  configuration the node runs with (--config or TETHER_CONFIG) and they find its \
                  apps, keys and HTTP address from any directory."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (with no config: the built-in defaults and a generated `demo` app).
    Serve {
        /// The configuration file (TOML; `tether config example` prints a commented one).
        /// Without it: the built-in defaults. `TETHER_<SECTION>__<KEY>` variables override it.
        #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log format: `text` for people, `json` (one object a line) for a collector; over
        /// the configuration's `[log] format` (default `text`). The filter is TETHER_LOG, else
        /// RUST_LOG, else `[log] filter` (default `info,fjall=warn,lsm_tree=warn`).
        #[arg(long, env = "TETHER_LOG_FORMAT", value_enum)]
        log_format: Option<logs::LogFormat>,
        /// Allow the configuration's test modes (`gateway.ws_echo`), which serve no client:
        /// for conformance suites, never in production. Without it they are refused.
        #[arg(long)]
        test_modes: bool,
    },
    /// Print a client token for a user of an app, signed with the app's secret (HS256); with
    /// --subscription, a subscription token for one topic instead.
    Token {
        /// The app whose secret signs the token.
        #[arg(long)]
        app: String,
        /// The user the token is for (its `sub` claim).
        #[arg(long)]
        user: String,
        #[command(flatten)]
        config: target::ConfigArg,
        /// How long the token is valid: 30s, 10m, 24h...
        #[arg(long, default_value = "24h", value_parser = tether_server::config::parse_duration)]
        ttl: Duration,
        /// Topics or patterns (`room.*`) the user may join under the app's `token` topic
        /// rules: the token's `topics` claim. Comma-separated or repeated.
        #[arg(long, value_delimiter = ',', conflicts_with = "subscription")]
        topics: Vec<String>,
        /// Mint a subscription token for this one topic (sent with a subscribe, e.g.
        /// `tether listen --topic-token TOPIC=TOKEN`), not a connection token.
        #[arg(long, value_name = "TOPIC")]
        subscription: Option<String>,
    },
    /// Connect as a client and print every message received as a JSON line.
    Listen(listen::ListenArgs),
    /// Push a message to users through the HTTP API.
    Push(push::PushArgs),
    /// Publish a message to a topic's subscribers through the HTTP API.
    Publish(api::PublishArgs),
    /// Send a live message to every connection of an app through the HTTP API.
    Broadcast(api::BroadcastArgs),
    /// Close every connection of a user, or of one device (--device), with code 4207 kicked,
    /// through the HTTP API.
    Kick(api::KickArgs),
    /// Show a user's connections and each device's acked position in the inbox.
    Presence(api::PresenceArgs),
    /// Show the last durable messages of a user's inbox.
    History(api::HistoryArgs),
    /// Show a node's figures (admin API: needs the admin key).
    Stats(api::StatsArgs),
    /// Record a node's CPU profile into a file: a flame graph or pprof (admin API: needs the
    /// admin key).
    Profile(profile::ProfileArgs),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a commented example configuration.
    Example,
    /// Load and validate a configuration (file plus TETHER_* overrides), reporting every problem.
    Check {
        /// The configuration file to check (without it: the defaults and the environment).
        #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

mod api;
mod listen;
mod logs;
mod profile;
mod push;
mod target;

/// The exit code of a configuration that cannot be used (`EX_CONFIG` of sysexits.h): a
/// supervisor can tell it from a crash and not restart the node in a loop
/// (`RestartPreventExitStatus=78` with systemd). Other failures exit with 1.
const EXIT_CONFIG: u8 = 78;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<target::NoApp>().is_some() =>
        {
            eprintln!("error: {e:#}");
            if serving {
                eprintln!("the node was not started (exit code {EXIT_CONFIG})");
            }
            std::process::ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Threads of tokio's blocking pool, where the embedded store's reads run (a connect reads a
/// cursor, a backlog and a user's topics). Tokio's default, 512, let a storm of 5,000 connects
/// per second start over a hundred threads: each touched a stack and took a malloc arena that
/// stayed once the thread was gone, about 0.3 KiB per connection held (`docs/benchmarks.md`).
/// The reads take microseconds: a few threads keep up with what two cores can handshake.
const MAX_BLOCKING_THREADS: usize = 16;

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                config,
                log_format,
                test_modes,
            } => serve(config, log_format, test_modes).await,
            Command::Token {
                app,
                user,
                config,
                ttl,
                topics,
                subscription,
            } => {
                let kind = match subscription {
                    Some(topic) => TokenKind::Subscription(topic),
                    None => TokenKind::Connection(topics),
                };
                token(&app, &user, &config, ttl, kind)
            }
            Command::Listen(args) => listen::run(args).await,
            Command::Push(args) => push::run(args).await,
            Command::Publish(args) => api::publish(args).await,
            Command::Broadcast(args) => api::broadcast(args).await,
            Command::Kick(args) => api::kick(args).await,
            Command::Presence(args) => api::presence(args).await,
            Command::History(args) => api::history(args).await,
            Command::Stats(args) => api::stats(args).await,
            Command::Profile(args) => profile::run(args).await,
            Command::Config {
                command: ConfigCommand::Example,
            } => {
                print!("{}", tether_server::config::EXAMPLE);
                Ok(())
            }
            Command::Config {
                command: ConfigCommand::Check { config },
            } => {
                Config::load(config.as_deref())?;
                println!("configuration is valid");
                Ok(())
            }
        }
    })
}

async fn serve(
    path: Option<PathBuf>,
    log_format: Option<logs::LogFormat>,
    test_modes: bool,
) -> anyhow::Result<()> {
    // The configuration first, for its `[log]`: a configuration that does not load is
    // reported on stderr by `main`, logs or not.
    let mut config = match test_modes {
        true => Config::load_allowing_test_modes(path.as_deref())?,
        false => Config::load(path.as_deref())?,
    };
    logs::init(&config.log, log_format);
    let demo = config.with_demo_app()?;
    let data_dir = config.node.data_dir.clone();
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    tether_server::run_with(config, shutdown, |node| {
        if let Some(app) = demo {
            println!("{}", demo_hints(&app, &data_dir, path.as_deref(), node));
        }
    })
    .await
}

/// What `serve` prints when it runs the demo app: the app, and commands that work when pasted
/// in another terminal, from any directory (the node's real addresses, and where `token` finds
/// the demo app's secret).
fn demo_hints(
    app: &tether_server::config::AppConfig,
    data_dir: &Path,
    config: Option<&Path>,
    node: &tether_server::Node,
) -> String {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let relative = data_dir.is_relative();
    let data_dir = absolute(data_dir);
    let file = data_dir.join("demo-app.toml");
    let key = app.api_key.expose();
    let http = target::loopback_if_wildcard(node.http_addr());
    // `token` must read the demo app that this node uses: the same configuration, and the
    // data directory spelled out when it is relative to this directory.
    let mut token = String::new();
    if relative {
        token.push_str(&format!(
            "TETHER_NODE__DATA_DIR={} ",
            sh_quote(&data_dir.display().to_string())
        ));
    }
    token.push_str("tether token");
    if let Some(config) = config {
        token.push_str(&format!(
            " --config {}",
            sh_quote(&absolute(config).display().to_string())
        ));
    }
    token.push_str(" --app demo --user alice");
    let client = match (node.tcp_addr(), node.ws_addr()) {
        (Some(tcp), _) => format!("tcp://{}", target::loopback_if_wildcard(tcp)),
        (None, Some(ws)) => format!("ws://{}/ws", target::loopback_if_wildcard(ws)),
        (None, None) => String::new(),
    };
    let mut text = format!(
        "No app is configured: using the demo app kept in {file}\n  \
         app:     {id}\n  secret:  {secret}\n  api key: {key}\n\
         Try, in two more terminals (from any directory):\n",
        file = file.display(),
        id = app.id,
        secret = app.secret.expose(),
    );
    if !client.is_empty() {
        text.push_str(&format!(
            "  tether listen --url {client} --app demo --user alice --token \"$({token})\"\n"
        ));
    }
    text.push_str(&format!(
        "  tether push --url http://{http} --app demo --api-key {key} --user alice --data '{{\"hello\":\"world\"}}'\n  \
         curl -H 'Authorization: Bearer {key}' -d '{{\"users\":[\"alice\"],\"payload\":{{\"hello\":\"world\"}}}}' http://{http}/v1/apps/demo/push"
    ));
    text
}

/// `text` quoted for a POSIX shell when it needs it.
fn sh_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// What `tether token` mints.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenKind {
    /// A connection token, with these topics in its `topics` claim (none: no claim).
    Connection(Vec<String>),
    /// A subscription token for one topic.
    Subscription(String),
}

fn token(
    app: &str,
    user: &str,
    config: &target::ConfigArg,
    ttl: Duration,
    kind: TokenKind,
) -> anyhow::Result<()> {
    let config = config.load()?;
    let app_config = target::app(&config, app)?;
    tether_core::validate_id("user", user).map_err(anyhow::Error::msg)?;
    let secret = app_config.secret.expose().as_bytes();
    println!("{}", mint(secret, app, user, ttl, kind)?);
    Ok(())
}

/// Signs a token of `kind` for `user` of `app` (HS256 with `secret`).
fn mint(
    secret: &[u8],
    app: &str,
    user: &str,
    ttl: Duration,
    kind: TokenKind,
) -> anyhow::Result<String> {
    let (app, user) = (AppId::from(app), UserId::from(user));
    let topics = match kind {
        TokenKind::Subscription(topic) => {
            anyhow::ensure!(
                !topic.is_empty() && topic.len() <= 128 && !topic.chars().any(char::is_control),
                "invalid topic {topic:?}: 1 to 128 bytes, no control characters"
            );
            return Ok(tether_core::auth::mint_subscription(
                secret, &app, &user, &topic, ttl,
            ));
        }
        TokenKind::Connection(topics) if topics.is_empty() => {
            return Ok(tether_core::auth::mint(secret, &app, &user, ttl));
        }
        TokenKind::Connection(topics) => topics,
    };
    if let Some(bad) = topics.iter().find(|t| t.trim().is_empty()) {
        anyhow::bail!("--topics: empty topic or pattern {bad:?}");
    }
    let now = tether_core::now_ms() / 1000;
    let claims = tether_core::auth::Claims {
        sub: user.as_str().to_owned(),
        exp: now + ttl.as_secs().max(1),
        iat: Some(now),
        app: Some(app.as_str().to_owned()),
        topics: Some(topics),
        ..tether_core::auth::Claims::default()
    };
    Ok(tether_core::auth::sign(secret, &claims))
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    const SECRET: &[u8] = b"demo-secret-0123456789";

    fn claims(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).expect("a JWT");
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON claims")
    }

    fn parse(extra: &[&str]) -> Result<Command, clap::Error> {
        let mut argv = vec!["tether", "token", "--app", "demo", "--user", "u"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    /// `tether help ...` is all an operator has at hand: no subcommand, flag or positional
    /// argument without a line of help.
    #[test]
    fn every_subcommand_and_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        cli.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cli, "tether", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        // The walk sees what it should: the API commands and their shared flags.
        let publish = cli.find_subcommand("publish").expect("publish");
        let ids: Vec<&str> = publish
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .collect();
        for id in [
            "config", "url", "app", "api_key", "topic", "data", "qos", "ttl",
        ] {
            assert!(ids.contains(&id), "publish has no --{id}: {ids:?}");
        }
    }

    #[test]
    fn shell_quoting_leaves_plain_paths_alone() {
        assert_eq!(sh_quote("/tmp/a-b/tether-data"), "/tmp/a-b/tether-data");
        assert_eq!(sh_quote("/tmp/a b/it's"), "'/tmp/a b/it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn token_topics_become_the_topics_claim() {
        let Command::Token { topics, .. } =
            parse(&["--topics", "a,b.*", "--topics", "c"]).expect("parses")
        else {
            panic!("not token");
        };
        assert_eq!(topics, ["a", "b.*", "c"]);
        let ttl = Duration::from_secs(60);
        let token = mint(SECRET, "demo", "u", ttl, TokenKind::Connection(topics)).expect("mints");
        let c = claims(&token);
        assert_eq!(c["sub"], "u");
        assert_eq!(c["app"], "demo");
        assert_eq!(c["topics"], serde_json::json!(["a", "b.*", "c"]));
        let plain = mint(SECRET, "demo", "u", ttl, TokenKind::Connection(vec![])).expect("mints");
        assert!(claims(&plain).get("topics").is_none());
        let empty = TokenKind::Connection(vec!["a".into(), String::new()]);
        assert!(mint(SECRET, "demo", "u", ttl, empty).is_err());
    }

    #[test]
    fn a_subscription_token_names_one_topic() {
        let Command::Token { subscription, .. } =
            parse(&["--subscription", "vip.gold"]).expect("parses")
        else {
            panic!("not token");
        };
        let topic = subscription.expect("a topic");
        let token = mint(
            SECRET,
            "demo",
            "u",
            Duration::from_secs(60),
            TokenKind::Subscription(topic),
        )
        .expect("mints");
        let c = claims(&token);
        assert_eq!(
            (c["sub"].as_str(), c["topic"].as_str()),
            (Some("u"), Some("vip.gold"))
        );
        assert!(
            parse(&["--subscription", "a", "--topics", "b"]).is_err(),
            "one or the other"
        );
    }
}
