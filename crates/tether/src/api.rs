//! The commands that call a node's HTTP API (docs/protocol.md, section 12) other than `push`:
//! `publish`, `broadcast`, `kick`, `presence`, `history`, and the admin API's `stats`.
//!
//! Each makes one request and prints the API's JSON answer as it came, one line on stdout (for
//! `jq`); an error answer goes to stderr with its status, and the command exits non-zero. None
//! retries: a publish or broadcast carries no idempotency key, so a retry after a lost answer
//! could deliver it twice (what is safe to retry: docs/api-errors.md).

use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::target::NodeArgs;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The app a command acts in, and its API key.
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The app (its id in the node's configuration; `demo` for the demo app).
    #[arg(long)]
    pub app: String,
    /// The app's API key (default: the app's `api_key` in the configuration).
    #[arg(
        long,
        env = "TETHER_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
}

/// A message's payload, as `push` and `publish` take it.
#[derive(Debug, Clone, clap::Args)]
pub struct PayloadArgs {
    /// The payload. Must be valid JSON, delivered as JSON exactly as written; with --base64,
    /// any text, delivered as opaque bytes.
    #[arg(long)]
    pub data: String,
    /// Send DATA as a binary payload: its literal bytes (not parsed as JSON) are base64-encoded
    /// into the request's `payload_base64`, and receivers get exactly those bytes.
    #[arg(long, alias = "binary")]
    pub base64: bool,
}

impl PayloadArgs {
    /// The request's payload field: `"payload":<DATA as written>` (no re-serialisation, so big
    /// numbers and key order survive) or `"payload_base64":"..."`.
    pub fn field(&self) -> anyhow::Result<String> {
        if self.base64 {
            return Ok(format!(
                "\"payload_base64\":\"{}\"",
                BASE64.encode(self.data.as_bytes())
            ));
        }
        let raw = serde_json::from_str::<&serde_json::value::RawValue>(&self.data)
            .context("--data is not valid JSON (use --base64 to send it as bytes)")?;
        Ok(format!("\"payload\":{}", raw.get()))
    }
}

/// Publish a message to a topic's subscribers, on every node
/// (POST /v1/apps/APP/topics/TOPIC/publish).
///
/// Prints `{"id":...,"offset":...,"subscribers":N,"nodes":N}`: answered once the fan-out is
/// queued, not delivered.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// The topic.
    #[arg(long)]
    pub topic: String,
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// Delivery: 0 live to subscribers only, 1 also kept in the topic's history, which
    /// subscribers that reconnect resume from.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// With --qos 1: how long the history keeps it (30s, 10m, 24h...; default: the node's
    /// store.default_ttl).
    #[arg(long, value_parser = tether_server::config::parse_duration)]
    pub ttl: Option<Duration>,
}

/// Send a live (qos 0) message to every connection bound to an app, on every node
/// (POST /v1/apps/APP/broadcast).
///
/// Prints `{"id":...,"connections":N}`. Delivery is paced at the app's deliveries_per_sec.
#[derive(Debug, clap::Args)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub payload: PayloadArgs,
}

/// A user of an app.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// The user.
    #[arg(long)]
    pub user: String,
}

/// Close every connection of a user, or of one of its devices, on every node, with code 4207
/// `kicked` (clients do not reconnect by themselves) (POST /v1/apps/APP/users/USER/kick).
///
/// Prints `{"kicked":N}`, the connections closed.
#[derive(Debug, clap::Args)]
pub struct KickArgs {
    #[command(flatten)]
    pub user: UserArgs,
    /// Only this device's connections (the device id it connected with; `tether presence`
    /// lists them). Without it: every device of the user.
    #[arg(long)]
    pub device: Option<String>,
}

/// Show a user's connections on every node, and each device's acked position in the inbox
/// (GET /v1/apps/APP/users/USER/presence).
///
/// Prints `{"app","user","online","connections":[...],"devices":[{"device","acked","online"}]}`.
#[derive(Debug, clap::Args)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub user: UserArgs,
}

/// Show the durable messages a user's inbox holds: the last ones, or those after a seq
/// (GET /v1/apps/APP/users/USER/messages).
///
/// Prints the API's page: `{"app","user","head","messages":[{"seq","id","created_ms",
/// "expires_ms","payload"|"payload_base64"}],"next_after"}`, oldest first.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub user: UserArgs,
    /// How many messages: the ones with the last LIMIT seqs of the inbox (fewer if some
    /// expired or were dropped by the inbox cap), or with --after the first LIMIT after it.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Page from this seq on (exclusive) instead: pass the previous answer's next_after to
    /// read the next page.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
}

/// Show a node's figures: connections by transport and app, queues, store, webhooks
/// (GET /v1/admin/stats, with the admin key).
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The node's admin key (default: `[admin] key` in the configuration).
    #[arg(
        long,
        env = "TETHER_ADMIN_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub admin_key: Option<String>,
}

/// A request ready to send: where, with which key, what body.
struct Call {
    method: reqwest::Method,
    url: reqwest::Url,
    key: String,
    body: Option<String>,
}

impl Call {
    /// A call of `app`'s route under `/v1/apps/{app}/`, `path` its further segments (each
    /// percent-encoded as one segment).
    fn app(
        args: &AppArgs,
        method: reqwest::Method,
        path: &[&str],
        body: Option<String>,
    ) -> anyhow::Result<Call> {
        let mut resolve = args.node.resolver();
        let mut url = resolve.base_url(args.node.url.as_deref())?;
        extend(&mut url, ["v1", "apps", &args.app].iter().chain(path))?;
        let key = resolve.api_key(&args.app, args.api_key.as_deref())?;
        Ok(Call {
            method,
            url,
            key,
            body,
        })
    }
}

/// Appends `segments` to `url`'s path, each percent-encoded as one segment.
pub fn extend<'a>(
    url: &mut reqwest::Url,
    segments: impl IntoIterator<Item = &'a &'a str>,
) -> anyhow::Result<()> {
    let base = url.to_string();
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--url {base:?} cannot take a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(())
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let mut body = format!("{{\"qos\":{},{}", args.qos, args.payload.field()?);
    match (args.ttl, args.qos) {
        (Some(_), 0) => bail!("--ttl applies to --qos 1 only (a qos 0 publication is not kept)"),
        (Some(ttl), _) => body.push_str(&format!(",\"ttl\":{}", ttl.as_secs().max(1))),
        (None, _) => {}
    }
    body.push('}');
    let path = ["topics", args.topic.as_str(), "publish"];
    run(Call::app(
        &args.app,
        reqwest::Method::POST,
        &path,
        Some(body),
    )?)
    .await
}

pub async fn broadcast(args: BroadcastArgs) -> anyhow::Result<()> {
    let body = format!("{{{}}}", args.payload.field()?);
    run(Call::app(
        &args.app,
        reqwest::Method::POST,
        &["broadcast"],
        Some(body),
    )?)
    .await
}

pub async fn kick(args: KickArgs) -> anyhow::Result<()> {
    let u = &args.user;
    let path = ["users", u.user.as_str(), "kick"];
    let mut call = Call::app(&u.app, reqwest::Method::POST, &path, None)?;
    if let Some(device) = &args.device {
        // Percent-encoded by the URL's serializer: a device id may hold any character.
        call.url.query_pairs_mut().append_pair("device", device);
    }
    run(call).await
}

pub async fn presence(args: PresenceArgs) -> anyhow::Result<()> {
    let u = &args.user;
    let path = ["users", u.user.as_str(), "presence"];
    run(Call::app(&u.app, reqwest::Method::GET, &path, None)?).await
}

pub async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let u = &args.user;
    let path = ["users", u.user.as_str(), "messages"];
    let mut call = Call::app(&u.app, reqwest::Method::GET, &path, None)?;
    let after = match args.after {
        Some(after) => after,
        None => {
            // The inbox's head first, then the page that ends there.
            let mut probe = call.url.clone();
            probe.set_query(Some("after=0&limit=1"));
            let answer = send(&call.method, &probe, &call.key, None).await?;
            let page: serde_json::Value =
                serde_json::from_str(&answer).context("the node's answer is not JSON")?;
            let head = page["head"]
                .as_u64()
                .context("the node's answer has no `head`")?;
            head.saturating_sub(u64::from(args.limit))
        }
    };
    call.url
        .set_query(Some(&format!("after={after}&limit={}", args.limit)));
    run(call).await
}

pub async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let mut resolve = args.node.resolver();
    let mut url = resolve.base_url(args.node.url.as_deref())?;
    extend(&mut url, &["v1", "admin", "stats"])?;
    let key = resolve.admin_key(args.admin_key.as_deref())?;
    run(Call {
        method: reqwest::Method::GET,
        url,
        key,
        body: None,
    })
    .await
}

/// Sends `call` and prints its answer.
async fn run(call: Call) -> anyhow::Result<()> {
    let answer = send(&call.method, &call.url, &call.key, call.body).await?;
    println!("{}", answer.trim_end());
    Ok(())
}

/// One request: the answer's text on a 2xx; otherwise its body on stderr and an error naming
/// the status and the API's `code`.
async fn send(
    method: &reqwest::Method,
    url: &reqwest::Url,
    key: &str,
    body: Option<String>,
) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let mut request = http.request(method.clone(), url.clone()).bearer_auth(key);
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{method} {url}: {}", crate::push::error_chain(&e)))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("{method} {url}: the answer was lost"))?;
    if status.is_success() {
        return Ok(text);
    }
    if !text.trim().is_empty() {
        eprintln!("{}", text.trim_end());
    }
    let code = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    match code {
        Some(code) => bail!("{method} {url}: HTTP {status} {code}"),
        None => bail!("{method} {url}: HTTP {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_passed_through_or_base64() {
        let json = PayloadArgs {
            data: "{\"n\": 123456789012345678901234}".into(),
            base64: false,
        };
        assert_eq!(
            json.field().unwrap(),
            "\"payload\":{\"n\": 123456789012345678901234}"
        );
        let bytes = PayloadArgs {
            data: "not json".into(),
            base64: true,
        };
        assert_eq!(
            bytes.field().unwrap(),
            format!("\"payload_base64\":\"{}\"", BASE64.encode("not json"))
        );
        let bad = PayloadArgs {
            data: "not json".into(),
            base64: false,
        };
        assert!(bad.field().is_err());
    }

    #[test]
    fn path_segments_are_encoded_one_by_one() {
        let mut url = reqwest::Url::parse("http://h:1/prefix/").unwrap();
        extend(&mut url, &["v1", "apps", "a b/c", "users", "u?"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/prefix/v1/apps/a%20b%2Fc/users/u%3F"
        );
    }
}
