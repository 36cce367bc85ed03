//! `tether push`: push a message to users through a node's HTTP API and print the answer.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// How long the whole request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Push a message to one or more users of an app (POST /v1/apps/APP/push).
///
/// Prints the API's JSON answer (`{"id":...,"connections":N}`) on stdout. On a non-2xx answer,
/// prints the response body on stderr and exits non-zero.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Base URL of the node's HTTP API, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// The app to push in.
    #[arg(long)]
    pub app: String,
    /// The app's API key.
    #[arg(long, env = "TETHER_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// A recipient; repeat for several users.
    #[arg(long = "user", value_name = "USER", required = true)]
    pub users: Vec<String>,
    /// The payload. Must be valid JSON, delivered as JSON exactly as written; with --base64,
    /// any text, delivered as opaque bytes.
    #[arg(long)]
    pub data: String,
    /// Send DATA as a binary payload: its literal bytes (not parsed as JSON) are
    /// base64-encoded into the request's `payload_base64`, and receivers get exactly those
    /// bytes.
    #[arg(long, alias = "binary")]
    pub base64: bool,
    /// Delivery: 0 transient (online devices only), 1 durable (stored until acked).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
}

pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    let url = push_url(&args.url, &args.app)?;
    let body = request_body(&args)?;
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let response = http
        .post(url.clone())
        .bearer_auth(&args.api_key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url} failed"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("cannot read the answer to POST {url}"))?;
    if !status.is_success() {
        eprintln!("{}", text.trim_end());
        bail!("push failed: HTTP {status}");
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", text.trim_end()).context("cannot write to stdout")?;
    Ok(())
}

/// `{base}/v1/apps/{app}/push`, with `app` percent-encoded as one path segment.
fn push_url(base: &str, app: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).with_context(|| format!("invalid --url {base:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--url must be an http:// URL, got {base:?}");
    }
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--url {base:?} cannot take a path"))?
        .pop_if_empty()
        .extend(["v1", "apps", app, "push"]);
    Ok(url)
}

/// The request body. A JSON payload is passed through byte for byte (no re-serialisation, so
/// big numbers and key order survive).
fn request_body(args: &PushArgs) -> anyhow::Result<String> {
    let users = serde_json::to_string(&args.users).context("cannot encode --user")?;
    let payload = if args.base64 {
        let encoded = BASE64.encode(args.data.as_bytes());
        format!("\"payload_base64\":\"{encoded}\"")
    } else {
        let raw = serde_json::from_str::<&serde_json::value::RawValue>(&args.data)
            .context("--data is not valid JSON (use --base64 to send it as bytes)")?;
        format!("\"payload\":{}", raw.get())
    };
    Ok(format!(
        "{{\"users\":{users},\"qos\":{},{payload}}}",
        args.qos
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(data: &str, base64: bool) -> PushArgs {
        PushArgs {
            url: "http://127.0.0.1:8080".into(),
            app: "demo".into(),
            api_key: "k".into(),
            users: vec!["alice".into(), "bob \"b\"".into()],
            data: data.into(),
            base64,
            qos: 1,
        }
    }

    #[test]
    fn urls() {
        let u = push_url("http://127.0.0.1:8080", "demo").expect("url");
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/v1/apps/demo/push");
        let u = push_url("http://h:1/prefix/", "a b/c").expect("url");
        assert_eq!(u.as_str(), "http://h:1/prefix/v1/apps/a%20b%2Fc/push");
        assert!(push_url("ws://h:1", "demo").is_err());
        assert!(push_url("not a url", "demo").is_err());
    }

    #[test]
    fn json_body_keeps_the_payload_as_written() {
        let body = request_body(&args("{\"n\": 123456789012345678901234}", false)).expect("body");
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(v["users"][1], "bob \"b\"");
        assert_eq!(v["qos"], 1);
        assert!(body.contains("123456789012345678901234"));
        assert!(request_body(&args("not json", false)).is_err());
    }

    #[test]
    fn base64_body_carries_the_literal_bytes() {
        let body = request_body(&args("not json", true)).expect("body");
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(v["payload_base64"], BASE64.encode("not json"));
        assert!(v.get("payload").is_none());
    }
}
