//! The `tether` binary: parses the command line, loads the configuration, sets up logging,
//! and hands over to the library crates.
//!
//! # Layout
//!
//! - this file: the command line, `serve` (a node, until SIGTERM or SIGINT), `token` and
//!   `config` (`example`, `check`).
//! - `listen`: `tether listen`, a client that prints what it receives and acks it.
//! - `push`: `tether push`, a push through the HTTP API.

use std::path::PathBuf;
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
    about = "A long-connection push and messaging server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (with no config: the built-in defaults and a generated `demo` app).
    Serve {
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// Log format.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Allow the configuration's test modes (`gateway.ws_echo`), which serve no client:
        /// for conformance suites, never in production. Without it they are refused.
        #[arg(long)]
        test_modes: bool,
    },
    /// Print a client token for a user of an app, signed with the app's secret (HS256); with
    /// --subscription, a subscription token for one topic instead.
    Token {
        #[arg(long)]
        app: String,
        #[arg(long)]
        user: String,
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
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
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
    },
}

mod listen;
mod push;

/// The exit code of a configuration that cannot be used (`EX_CONFIG` of sysexits.h): a
/// supervisor can tell it from a crash and not restart the node in a loop
/// (`RestartPreventExitStatus=78` with systemd). Other failures exit with 1.
const EXIT_CONFIG: u8 = 78;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
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

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                config,
                log_format,
                test_modes,
            } => serve(config, &log_format, test_modes).await,
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
                token(&app, &user, config, ttl, kind)
            }
            Command::Listen(args) => listen::run(args).await,
            Command::Push(args) => push::run(args).await,
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

fn load(
    config: Option<PathBuf>,
    test_modes: bool,
) -> anyhow::Result<(Config, Option<tether_server::config::AppConfig>)> {
    let mut config = match test_modes {
        true => Config::load_allowing_test_modes(config.as_deref())?,
        false => Config::load(config.as_deref())?,
    };
    let demo = config.with_demo_app()?;
    Ok((config, demo))
}

async fn serve(config: Option<PathBuf>, log_format: &str, test_modes: bool) -> anyhow::Result<()> {
    init_tracing(log_format);
    let (config, demo) = load(config, test_modes)?;
    if let Some(app) = demo {
        let http = &config.listen.http;
        println!(
            "No app is configured: using the demo app kept in {dir}/demo-app.toml\n  \
             app:     {id}\n  secret:  {secret}\n  api key: {key}\n\
             Try, in two more terminals:\n  \
             tether listen --url tcp://{tcp} --app demo --user alice --token $(tether token --app demo --user alice)\n  \
             curl -H 'Authorization: Bearer {key}' -d '{{\"users\":[\"alice\"],\"payload\":{{\"hello\":\"world\"}}}}' http://{http}/v1/apps/demo/push",
            dir = config.node.data_dir.display(),
            id = app.id,
            secret = app.secret.expose(),
            key = app.api_key.expose(),
            tcp = config.listen.tcp,
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    tether_server::run(config, shutdown).await
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
    config: Option<PathBuf>,
    ttl: Duration,
    kind: TokenKind,
) -> anyhow::Result<()> {
    let (config, _) = load(config, false)?;
    let app_config = config
        .app(app)
        .with_context(|| format!("app {app:?} is not configured"))?;
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

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: not in a log file, journald or a test's capture.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
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
