//! `tether listen`: connect as a device with the client SDK and print every message received
//! (pushes, and publications of the topics asked for), one JSON object per line on stdout.
//! Notices go to stderr.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tether_client::{Client, ClientConfig, Event, PayloadKind, Publication, Push, WsEncoding};

/// Connect to a gateway and print received messages as JSON lines.
///
/// Each line has `app`, `msg_id` (a string), `seq`, `qos`, `created_ms`, and either `payload`
/// (a JSON payload, as pushed) or `payload_base64` (a binary payload). Durable messages
/// (seq > 0) are acked after they are printed. Reconnects on transient failures; exits
/// non-zero when the server refuses the connection for good (bad token, kicked, ...).
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Gateway URL: tcp://HOST:PORT or ws://HOST:PORT/ws, or inside TLS tls://HOST:PORT or
    /// wss://HOST[:PORT]/ws. With --dispatch, tried last, when the dispatcher cannot be
    /// reached.
    #[arg(long, required_unless_present = "dispatch")]
    pub url: Option<String>,
    /// Ask this dispatcher where to connect, on every connect and reconnect:
    /// http://HOST:PORT/v1/dispatch (any node's HTTP listener), or https://.
    #[arg(long)]
    pub dispatch: Option<String>,
    /// Trust only the CA certificates of this PEM file on TLS connections (tls://, wss://,
    /// an https:// dispatcher), instead of the system's roots: for a server whose certificate
    /// a private CA issued, or a self-signed one.
    #[arg(long, env = "TETHER_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// The app to bind to.
    #[arg(long)]
    pub app: String,
    /// The user the token is for; checked against the user the server binds.
    #[arg(long)]
    pub user: String,
    /// Client token for APP (JWT HS256 signed with the app's secret, `sub` = USER).
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Exit successfully after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Device id, stable across runs of the same install.
    #[arg(long, default_value = "tether-cli")]
    pub device: String,
    /// Use the JSON encoding on ws:// and wss:// URLs (default: binary). Ignored for tcp://
    /// and tls://.
    #[arg(long)]
    pub json: bool,
    /// Subscribe to this topic of APP (repeatable). Publications print like pushes, with
    /// `topic` and `offset` instead of `seq` and `qos`.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Subscribe to TOPIC of APP with a subscription token (`tether token --subscription
    /// TOPIC`), for topics whose rule asks for one (repeatable). Resent after reconnects.
    #[arg(long = "topic-token", value_name = "TOPIC=TOKEN", value_parser = parse_topic_token)]
    pub topic_tokens: Vec<(String, String)>,
}

/// `TOPIC=TOKEN`, split at the first `=` (a JWT has none; a topic may not either).
fn parse_topic_token(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((topic, token)) if !topic.is_empty() && !token.is_empty() => {
            Ok((topic.to_owned(), token.to_owned()))
        }
        _ => Err("expected TOPIC=TOKEN".to_owned()),
    }
}

/// The client's config from the arguments. A CA file is read here, so a wrong one fails
/// before any connection.
fn client_config(args: &ListenArgs) -> anyhow::Result<ClientConfig> {
    let url = args.url.clone().unwrap_or_default();
    let mut config = ClientConfig::new(url, &args.device).bind(&args.app, &args.token);
    config.dispatch.clone_from(&args.dispatch);
    if args.json {
        config.ws_encoding = WsEncoding::Json;
    }
    if let Some(path) = &args.ca_file {
        config = config.with_ca_file(path)?;
    }
    Ok(config)
}

pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let config = client_config(&args)?;
    let target = args.dispatch.as_deref().unwrap_or(&config.url).to_owned();
    let mut client = Client::connect(config)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    for topic in &args.topics {
        // The client resubscribes by itself after a reconnect.
        client
            .subscribe(&args.app, topic)
            .with_context(|| format!("cannot subscribe to {topic:?}"))?;
    }
    for (topic, token) in &args.topic_tokens {
        client
            .subscribe_with_token(&args.app, topic, token)
            .with_context(|| format!("cannot subscribe to {topic:?}"))?;
    }
    let result = listen(&mut client, &args).await;
    client.close().await;
    result
}

async fn listen(client: &mut Client, args: &ListenArgs) -> anyhow::Result<()> {
    let mut received: u64 = 0;
    if args.count == Some(0) {
        return Ok(());
    }
    while let Some(event) = client.recv().await {
        match event {
            Event::Connected(c) => {
                eprintln!(
                    "connected to node {} (connection {}, heartbeat {} ms)",
                    c.node, c.conn_id, c.heartbeat_ms
                );
                match c.bindings.iter().find(|b| b.app == args.app) {
                    Some(b) if b.user == args.user => {}
                    Some(b) => bail!(
                        "the token is for user {:?}, not {:?} (app {:?})",
                        b.user,
                        args.user,
                        args.app
                    ),
                    None => bail!("the server did not bind app {:?}", args.app),
                }
            }
            Event::Message(_) | Event::Publication(_) => {
                let (line, ack) = match &event {
                    Event::Message(push) => (message_line(push), (push.seq > 0).then_some(push)),
                    Event::Publication(p) => (publication_line(p), None),
                    _ => unreachable!("matched above"),
                };
                let mut stdout = std::io::stdout().lock();
                let written = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
                drop(stdout);
                match written {
                    Ok(()) => {}
                    // The reader went away (`| head -1`): nothing left to do.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(e).context("cannot write to stdout"),
                }
                if let Some(push) = ack {
                    client.ack(&push.app, push.seq).context("cannot ack")?;
                }
                received += 1;
                if args.count.is_some_and(|n| received >= n) {
                    return Ok(());
                }
            }
            Event::Subscribed {
                topic,
                offset,
                recovery,
                ..
            } => eprintln!(
                "subscribed to {topic} at offset {offset} ({})",
                recovery.name()
            ),
            Event::Unsubscribed { topic, .. } => eprintln!("unsubscribed from {topic}"),
            Event::SubscribeFailed {
                topic,
                code,
                message,
                retrying,
                ..
            } => eprintln!(
                "subscribe to {topic} refused ({code}): {message}{}",
                if retrying { "; retrying" } else { "" }
            ),
            Event::TokenExpiring { app, expires_s } => eprintln!(
                "the token for app {app} expires at {expires_s} (Unix time); \
                 the server then closes the connection: restart with a new token"
            ),
            // This command has no token source: it never refreshes.
            Event::TokenRefreshed { .. } => {}
            Event::RefreshFailed { app, message, .. } => {
                eprintln!("token refresh for app {app} failed: {message}");
            }
            Event::Error { code, message } => eprintln!("server error {code}: {message}"),
            Event::Disconnected {
                code,
                reason,
                reconnecting,
            } => {
                let code = code.map_or_else(|| "no code".to_owned(), |c| c.to_string());
                if !reconnecting {
                    bail!("disconnected ({code}): {reason}; not reconnecting");
                }
                eprintln!("disconnected ({code}): {reason}; reconnecting");
            }
        }
    }
    bail!("the connection ended")
}

/// One JSON line for a publication: like [`message_line`], with `topic` and `offset`.
fn publication_line(p: &Publication) -> String {
    let head = format!(
        "{{\"app\":{},\"topic\":{},\"offset\":{},\"msg_id\":\"{}\",\"created_ms\":{}",
        serde_json::Value::from(p.app.as_str()),
        serde_json::Value::from(p.topic.as_str()),
        p.offset,
        p.msg_id,
        p.created_ms
    );
    with_payload(head, p.kind, &p.payload)
}

/// One JSON line for a message. A JSON payload is embedded as pushed, byte for byte (line
/// breaks outside strings become spaces, so the line stays one line); anything else is
/// base64.
fn message_line(push: &Push) -> String {
    let head = format!(
        "{{\"app\":{},\"msg_id\":\"{}\",\"seq\":{},\"qos\":{},\"created_ms\":{}",
        serde_json::Value::from(push.app.as_str()),
        push.msg_id,
        push.seq,
        push.qos,
        push.created_ms
    );
    with_payload(head, push.kind, &push.payload)
}

/// Closes a JSON line with its payload: embedded JSON, or base64.
fn with_payload(head: String, kind: PayloadKind, payload: &[u8]) -> String {
    let json_payload = match kind {
        PayloadKind::Json => serde_json::from_slice::<&serde_json::value::RawValue>(payload).ok(),
        PayloadKind::Binary => None,
    };
    match json_payload {
        // Raw line breaks cannot occur inside JSON strings, only between tokens.
        Some(raw) => format!(
            "{head},\"payload\":{}}}",
            raw.get().trim().replace(['\n', '\r'], " ")
        ),
        None => format!("{head},\"payload_base64\":\"{}\"}}", BASE64.encode(payload)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PayloadKind, payload: &'static [u8]) -> Push {
        Push {
            app: "demo".into(),
            msg_id: u64::MAX,
            seq: 3,
            qos: 1,
            created_ms: 42,
            kind,
            payload: payload.to_vec().into(),
        }
    }

    #[test]
    fn a_dispatcher_can_stand_in_for_the_url() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["tether", "listen", "--app", "demo", "--user", "u"];
            argv.extend_from_slice(&["--token", "t"]);
            argv.extend_from_slice(extra);
            crate::Cli::try_parse_from(argv)
        };
        let cli = parse(&["--dispatch", "http://h:7480/v1/dispatch"]).expect("parses");
        let crate::Command::Listen(args) = cli.command else {
            panic!("not listen");
        };
        assert_eq!(args.url, None);
        assert_eq!(args.dispatch.as_deref(), Some("http://h:7480/v1/dispatch"));
        assert!(parse(&[]).is_err(), "one of --url and --dispatch is needed");
        assert!(parse(&["--url", "tcp://h:1"]).is_ok());
    }

    /// A CA certificate (not a secret: its key was thrown away), to show the file is read.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT2gAwIBAgIUErZnIeiiCFIafxX9V9vlHxIR5t0wCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVdGV0aGVyIGxpc3RlbiB0ZXN0IENBMCAXDTI2MTIwNzA0Mzg0
NloYDzIxMjYxMTEzMDQzODQ2WjAgMR4wHAYDVQQDDBV0ZXRoZXIgbGlzdGVuIHRl
c3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQnoL4/MzINdjhHvVfmbuNA
ynmJVfSBY92RIpSZr2PMBzMqQZTkM/FgTtZuOIV1Q/V6HnVOONBTrrS9/xwIxItA
o1MwUTAdBgNVHQ4EFgQUtp0aUJtj2CwTnTJYlMPqc0jHKMIwHwYDVR0jBBgwFoAU
tp0aUJtj2CwTnTJYlMPqc0jHKMIwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNIADBFAiAKAvt3/J8beZj4jzUwV4oDbKdMnFeLIgVWmM0gF4q8KwIhAM7JyLA7
5yP6uBnS+xec+6k/pZzV8RUQcH+2843mqNSy
-----END CERTIFICATE-----
";

    fn listen_args(extra: &[&str]) -> ListenArgs {
        use clap::Parser;
        let mut argv = vec!["tether", "listen", "--app", "demo", "--user", "u"];
        argv.extend_from_slice(&["--token", "t"]);
        argv.extend_from_slice(extra);
        let cli = crate::Cli::try_parse_from(argv).expect("parses");
        let crate::Command::Listen(args) = cli.command else {
            panic!("not listen");
        };
        args
    }

    #[test]
    fn tls_urls_take_a_ca_file_that_is_read_before_connecting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CA_PEM).expect("write the CA");
        let ca_arg = ca.to_str().expect("UTF-8 path");

        let args = listen_args(&["--url", "tls://push.example.com:7443", "--ca-file", ca_arg]);
        assert_eq!(args.url.as_deref(), Some("tls://push.example.com:7443"));
        assert_eq!(args.ca_file.as_deref(), Some(ca.as_path()));
        let config = client_config(&args).expect("config");
        let roots = format!("{:?}", config.tls_roots);
        assert!(roots.contains("ca.pem: 1 certificates"), "{roots}");

        // Without --ca-file: the system's roots.
        let args = listen_args(&["--url", "wss://push.example.com/ws", "--json"]);
        let config = client_config(&args).expect("config");
        assert_eq!(format!("{:?}", config.tls_roots), "TlsRoots(system)");

        // A CA file that is missing, or holds no certificate, is an error before connecting.
        let missing = dir.path().join("missing.pem");
        let missing_arg = missing.to_str().expect("UTF-8 path");
        let args = listen_args(&["--url", "tls://h:1", "--ca-file", missing_arg]);
        let e = format!("{:#}", client_config(&args).expect_err("missing file"));
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let args = listen_args(&["--url", "tls://h:1", "--ca-file", empty.to_str().unwrap()]);
        let e = format!("{:#}", client_config(&args).expect_err("empty file"));
        assert!(e.contains("no certificate"), "{e}");
    }

    #[test]
    fn topic_tokens_pair_a_topic_with_its_token() {
        use clap::Parser;
        let mut argv = vec!["tether", "listen", "--url", "tcp://h:1", "--app", "demo"];
        argv.extend_from_slice(&["--user", "u", "--token", "t"]);
        argv.extend_from_slice(&["--topic-token", "vip.gold=eyJ.a.b", "--topic", "news"]);
        let cli = crate::Cli::try_parse_from(&argv).expect("parses");
        let crate::Command::Listen(args) = cli.command else {
            panic!("not listen");
        };
        assert_eq!(args.topic_tokens, [("vip.gold".into(), "eyJ.a.b".into())]);
        assert_eq!(args.topics, ["news"]);
        for bad in ["vip.gold", "=t", "vip.gold="] {
            assert!(parse_topic_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_payload_is_embedded_as_pushed() {
        let line = message_line(&push(
            PayloadKind::Json,
            b" {\n  \"n\": 12345678901234567890123,\n  \"s\": \"a\\nb\"\n}\n",
        ));
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["app"], "demo");
        assert_eq!(v["msg_id"], u64::MAX.to_string());
        assert_eq!(v["seq"], 3);
        assert_eq!(v["payload"]["s"], "a\nb");
        // Big numbers are not rounded through f64.
        assert!(line.contains("12345678901234567890123"));
    }

    #[test]
    fn binary_payload_is_base64() {
        let line = message_line(&push(PayloadKind::Binary, b"\x00\xffhi"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["payload_base64"], BASE64.encode(b"\x00\xffhi"));
        assert!(v.get("payload").is_none());
        // A JSON-kind payload that is not JSON falls back to base64.
        let line = message_line(&push(PayloadKind::Json, b"{nope"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["payload_base64"], BASE64.encode(b"{nope"));
    }

    #[test]
    fn publication_lines_carry_topic_and_offset() {
        let p = Publication {
            app: "demo".into(),
            topic: "room \"1\"".into(),
            offset: 7,
            msg_id: 9,
            created_ms: 42,
            kind: PayloadKind::Json,
            payload: b"{\"t\":1}".to_vec().into(),
        };
        let v: serde_json::Value = serde_json::from_str(&publication_line(&p)).expect("valid JSON");
        assert_eq!(v["topic"], "room \"1\"");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["msg_id"], "9");
        assert_eq!(v["payload"]["t"], 1);
    }
}
