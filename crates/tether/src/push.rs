//! `tether push`: push a message to users through a node's HTTP API and print the answer.
//!
//! A durable push carries an idempotency key (a random one unless given), and a failed attempt
//! is retried with the same key, so that a retry never stores or delivers the message twice.
//! Without a key (`--no-idempotency-key`, or qos 0, which the node cannot remember), only the
//! failures that certainly did nothing are retried (see `docs/api-errors.md`).

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::api::{AppArgs, PayloadArgs, extend};

/// How long one attempt may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The wait before the first retry when the node does not say (`Retry-After`); doubled for
/// each further one, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The node's limit on an idempotency key, in bytes.
const MAX_KEY: usize = 256;

/// Push a message to one or more users of an app (POST /v1/apps/APP/push).
///
/// Prints the API's JSON answer (`{"id":...,"connections":N}`) on stdout. On a non-2xx answer,
/// prints the response body on stderr and exits non-zero.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// A recipient; repeat for several users.
    #[arg(long = "user", value_name = "USER", required = true)]
    pub users: Vec<String>,
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// Delivery: 0 transient (online devices only), 1 durable (stored until acked).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// The durable push's idempotency key (default: a random 128-bit one). A push with the
    /// key of one the node stored within `store.idempotency_window` stores nothing new and
    /// answers the first result: give the key of an earlier run to retry it safely.
    #[arg(long, value_name = "KEY", conflicts_with = "no_idempotency_key")]
    pub idempotency_key: Option<String>,
    /// Send no idempotency key. Then a failure that may have stored the message (a lost
    /// answer, 408, 500, 503 `unavailable`) is not retried: a retry could deliver it twice.
    #[arg(long)]
    pub no_idempotency_key: bool,
    /// How many times a failed attempt is retried (after the node's `Retry-After`, or a
    /// backoff from 250 ms).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

/// What a failed attempt may have done, which says whether it can be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing was stored or sent (no connection; 429; 503 `busy` or `overloaded`): a retry
    /// is safe with or without a key.
    NothingDone,
    /// It may have been stored and delivered (a lost answer, 408, 500, 502, 503
    /// `unavailable`, 504): a retry is safe only with the same idempotency key.
    MaybeDone,
    /// A retry will not help (400, 401, 403, 404, 413...).
    Final,
}

/// What an answer with `status` (and the API's error `code`) may have done.
fn failure(status: u16, code: Option<&str>) -> Failure {
    match (status, code) {
        (429, _) | (503, Some("busy" | "overloaded")) => Failure::NothingDone,
        (408 | 500 | 502 | 503 | 504, _) => Failure::MaybeDone,
        _ => Failure::Final,
    }
}

/// What a request that got no answer may have done.
fn lost(e: &reqwest::Error) -> Failure {
    // Only a connection that was never made certainly carried nothing.
    if e.is_connect() {
        Failure::NothingDone
    } else {
        Failure::MaybeDone
    }
}

/// One attempt's failure: what it may have done, what to say, how long the node asks to wait.
#[derive(Debug)]
struct Failed {
    failure: Failure,
    what: String,
    body: Option<String>,
    retry_after: Option<Duration>,
}

pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    let mut resolve = args.app.node.resolver();
    let mut url = resolve.base_url(args.app.node.url.as_deref())?;
    extend(&mut url, &["v1", "apps", &args.app.app, "push"])?;
    let api_key = resolve.api_key(&args.app.app, args.app.api_key.as_deref())?;
    let key = idempotency_key(&args)?;
    let body = request_body(&args, key.as_deref())?;
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=args.retries {
        let failed = match send(&http, &url, &api_key, &body).await {
            Ok(answer) => {
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{}", answer.trim_end()).context("cannot write to stdout")?;
                return Ok(());
            }
            Err(failed) => failed,
        };
        let retry = match failed.failure {
            Failure::NothingDone => true,
            Failure::MaybeDone => key.is_some(),
            Failure::Final => false,
        };
        if !retry || attempt == args.retries {
            if let Some(body) = &failed.body {
                eprintln!("{}", body.trim_end());
            }
            match (failed.failure, &key) {
                (Failure::MaybeDone, Some(key)) => bail!(
                    "push failed: {}; it may have been stored: run again with                      --idempotency-key {key} to make sure it is stored once",
                    failed.what
                ),
                (Failure::MaybeDone, None) => bail!(
                    "push failed: {}; it may have been stored, and was not retried without an                      idempotency key (a retry could deliver it twice)",
                    failed.what
                ),
                _ => bail!("push failed: {}", failed.what),
            }
        }
        let wait = failed.retry_after.unwrap_or(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        let same_key = if key.is_some() {
            " with the same idempotency key"
        } else {
            ""
        };
        eprintln!(
            "attempt {} failed ({}); retrying in {} ms{same_key}",
            attempt + 1,
            failed.what,
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
    }
    unreachable!("the last attempt returns")
}

/// One POST: the answer's text on a 2xx, or what the failure may have done.
async fn send(
    http: &reqwest::Client,
    url: &reqwest::Url,
    api_key: &str,
    body: &str,
) -> Result<String, Failed> {
    let response = http
        .post(url.clone())
        .bearer_auth(api_key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| Failed {
            failure: lost(&e),
            what: error_chain(&e),
            body: None,
            retry_after: None,
        })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(60)));
    let text = response.text().await.map_err(|e| Failed {
        failure: Failure::MaybeDone,
        what: format!("the answer was lost: {}", error_chain(&e)),
        body: None,
        retry_after: None,
    })?;
    if status.is_success() {
        return Ok(text);
    }
    let code = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    Err(Failed {
        failure: failure(status.as_u16(), code.as_deref()),
        what: match &code {
            Some(code) => format!("HTTP {status} {code}"),
            None => format!("HTTP {status}"),
        },
        body: Some(text),
        retry_after,
    })
}

/// `e` and its sources, which say what actually went wrong (reqwest's own text rarely does).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The key a durable push carries: the one given, a random one, or none.
fn idempotency_key(args: &PushArgs) -> anyhow::Result<Option<String>> {
    if args.qos == 0 {
        if args.idempotency_key.is_some() {
            bail!("--idempotency-key applies to durable pushes (--qos 1) only");
        }
        return Ok(None);
    }
    if args.no_idempotency_key {
        return Ok(None);
    }
    match &args.idempotency_key {
        Some(key) if key.is_empty() || key.len() > MAX_KEY => {
            bail!("--idempotency-key must be 1 to {MAX_KEY} bytes")
        }
        Some(key) => Ok(Some(key.clone())),
        None => Ok(Some(format!("{:032x}", rand::random::<u128>()))),
    }
}

/// The request body. A JSON payload is passed through byte for byte (no re-serialisation, so
/// big numbers and key order survive).
fn request_body(args: &PushArgs, idempotency_key: Option<&str>) -> anyhow::Result<String> {
    let users = serde_json::to_string(&args.users).context("cannot encode --user")?;
    let payload = args.payload.field()?;
    let key = match idempotency_key {
        Some(key) => {
            let key = serde_json::to_string(key).context("cannot encode the idempotency key")?;
            format!(",\"idempotency_key\":{key}")
        }
        None => String::new(),
    };
    Ok(format!(
        "{{\"users\":{users},\"qos\":{},{payload}{key}}}",
        args.qos
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(data: &str, base64: bool) -> PushArgs {
        PushArgs {
            app: AppArgs {
                node: crate::target::NodeArgs {
                    config: crate::target::ConfigArg::default(),
                    url: Some("http://127.0.0.1:7480".into()),
                },
                app: "demo".into(),
                api_key: Some("k".into()),
            },
            users: vec!["alice".into(), "bob \"b\"".into()],
            payload: PayloadArgs {
                data: data.into(),
                base64,
            },
            qos: 1,
            idempotency_key: None,
            no_idempotency_key: false,
            retries: 3,
        }
    }

    #[test]
    fn json_body_keeps_the_payload_as_written() {
        let body =
            request_body(&args("{\"n\": 123456789012345678901234}", false), None).expect("body");
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(v["users"][1], "bob \"b\"");
        assert_eq!(v["qos"], 1);
        assert!(body.contains("123456789012345678901234"));
        assert!(request_body(&args("not json", false), None).is_err());
    }

    #[test]
    fn base64_body_carries_the_literal_bytes() {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD as BASE64;
        let body = request_body(&args("not json", true), None).expect("body");
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(v["payload_base64"], BASE64.encode("not json"));
        assert!(v.get("payload").is_none());
    }

    #[test]
    fn a_durable_push_carries_a_random_key_unless_told_otherwise() {
        let a = idempotency_key(&args("1", false)).unwrap().expect("a key");
        let b = idempotency_key(&args("1", false)).unwrap().expect("a key");
        assert_eq!(a.len(), 32);
        assert_ne!(a, b, "each run has its own key");
        let body = request_body(&args("1", false), Some("k \"1\"")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(v["idempotency_key"], "k \"1\"");

        let given = PushArgs {
            idempotency_key: Some("order-42".into()),
            ..args("1", false)
        };
        assert_eq!(
            idempotency_key(&given).unwrap().as_deref(),
            Some("order-42")
        );
        let none = PushArgs {
            no_idempotency_key: true,
            ..args("1", false)
        };
        assert_eq!(idempotency_key(&none).unwrap(), None);
        let live = PushArgs {
            qos: 0,
            ..args("1", false)
        };
        assert_eq!(idempotency_key(&live).unwrap(), None);
        let live_with_key = PushArgs { qos: 0, ..given };
        assert!(idempotency_key(&live_with_key).is_err());
        let too_long = PushArgs {
            idempotency_key: Some("k".repeat(MAX_KEY + 1)),
            ..args("1", false)
        };
        assert!(idempotency_key(&too_long).is_err());
    }

    #[test]
    fn only_failures_that_did_nothing_are_safe_without_a_key() {
        assert_eq!(failure(429, Some("rate_limited")), Failure::NothingDone);
        assert_eq!(failure(503, Some("busy")), Failure::NothingDone);
        assert_eq!(failure(503, Some("overloaded")), Failure::NothingDone);
        assert_eq!(failure(503, Some("unavailable")), Failure::MaybeDone);
        assert_eq!(failure(503, None), Failure::MaybeDone);
        assert_eq!(failure(408, Some("timeout")), Failure::MaybeDone);
        assert_eq!(failure(500, Some("internal")), Failure::MaybeDone);
        assert_eq!(failure(504, None), Failure::MaybeDone);
        assert_eq!(failure(400, Some("bad_request")), Failure::Final);
        assert_eq!(failure(401, Some("unauthorized")), Failure::Final);
        assert_eq!(failure(413, Some("payload_too_large")), Failure::Final);
    }
}
