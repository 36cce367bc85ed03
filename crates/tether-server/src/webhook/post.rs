//! One delivery to a webhook: a signed POST, retried with exponential backoff and jitter after
//! a 5xx, a network error or a timeout; never after another status (the business answered).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use metrics::Counter;
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::sign;
use crate::config::WebhookConfig;

/// The webhook client of a node: one connection pool shared by every app.
#[derive(Debug)]
pub(crate) struct Poster {
    client: reqwest::Client,
    timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    /// The largest answer body kept; a larger one is not read past this.
    pub max_body: usize,
}

/// What one delivery to a webhook is: the POST, its signing key and its id.
#[derive(Debug)]
pub(crate) struct Post<'a> {
    pub url: &'a str,
    pub secret: &'a [u8],
    /// The same on every attempt: the business drops duplicates with it.
    pub id: String,
    /// `upstream`, `presence` or `subscribe_check`.
    pub event: &'static str,
    pub body: Bytes,
}

/// A webhook's answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    /// The answer said `Content-Type: application/json` (or `...+json`).
    pub json: bool,
    /// `None` when the body was larger than the limit (it was not read to its end).
    pub body: Option<Bytes>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How a delivery ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The webhook answered: a status below 500, or the last 5xx once the retries ran out.
    Answered(Answer),
    /// No answer after the last attempt: why (network error or timeout).
    Unreachable(String),
    /// The node is going away; the delivery was abandoned.
    Stopped,
}

/// One attempt's result.
enum Attempt {
    Done(Answer),
    /// Worth another attempt: why, and the 5xx answer when there was one.
    Retry(String, Option<Answer>),
}

impl Poster {
    pub fn new(config: &WebhookConfig, max_body: usize) -> Result<Poster, reqwest::Error> {
        let client = reqwest::Client::builder()
            // A redirect is an answer for the business to fix, not a hop to follow with a
            // signed body.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.workers)
            .build()?;
        Ok(Poster {
            client,
            timeout: config.timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            max_body,
        })
    }

    /// Delivers `d`, retrying at most `retries` times (`None`: until the webhook answers or
    /// `stop` is cancelled). Each retry increments `retried`.
    pub async fn deliver(
        &self,
        d: &Post<'_>,
        retries: Option<u32>,
        stop: &CancellationToken,
        retried: &Counter,
    ) -> Outcome {
        let mut attempt = 0u32;
        loop {
            let result = tokio::select! {
                biased;
                () = stop.cancelled() => return Outcome::Stopped,
                result = self.attempt(d) => result,
            };
            let (reason, answer) = match result {
                Attempt::Done(answer) => return Outcome::Answered(answer),
                Attempt::Retry(reason, answer) => (reason, answer),
            };
            if retries.is_some_and(|n| attempt >= n) {
                return match answer {
                    Some(answer) => Outcome::Answered(answer),
                    None => Outcome::Unreachable(reason),
                };
            }
            attempt = attempt.saturating_add(1);
            let delay = self.backoff(attempt, &mut rand::rng());
            debug!(delivery = %d.id, %reason, attempt, ?delay, "webhook delivery will be retried");
            retried.increment(1);
            tokio::select! {
                biased;
                () = stop.cancelled() => return Outcome::Stopped,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt, never retried, for a caller with a deadline of its own (a permission
    /// check): the webhook's answer, a 5xx included, or why there was none.
    pub async fn post_once(&self, d: &Post<'_>) -> Result<Answer, String> {
        match self.attempt(d).await {
            Attempt::Done(answer) | Attempt::Retry(_, Some(answer)) => Ok(answer),
            Attempt::Retry(reason, None) => Err(reason),
        }
    }

    /// The wait before retry number `attempt` (1 for the first retry): `backoff_min` doubled
    /// for each retry before it, at most `backoff_max`, then a random 50% to 100% of that, so
    /// that deliveries that failed together do not come back together.
    fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let base = self
            .backoff_min
            .saturating_mul(1 << doublings)
            .min(self.backoff_max);
        base.mul_f64(rng.random_range(0.5..=1.0))
    }

    async fn attempt(&self, d: &Post<'_>) -> Attempt {
        let timestamp = tether_core::now_ms() / 1000;
        let request = self
            .client
            .post(d.url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tether/", env!("CARGO_PKG_VERSION")))
            .header(sign::TIMESTAMP_HEADER, timestamp)
            .header(
                sign::SIGNATURE_HEADER,
                sign::sign(d.secret, timestamp, &d.body),
            )
            .header(sign::DELIVERY_HEADER, &d.id)
            .header(sign::EVENT_HEADER, d.event)
            .body(d.body.clone());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Attempt::Retry(describe(&e, self.timeout), None),
        };
        let status = response.status().as_u16();
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            });
        // Read the body up to the limit; the request's timeout covers this too.
        let mut body = Some(BytesMut::new());
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body
                        .as_ref()
                        .is_some_and(|b| b.len() + chunk.len() > self.max_body)
                    {
                        body = None;
                        break;
                    }
                    if let Some(b) = body.as_mut() {
                        b.extend_from_slice(&chunk);
                    }
                }
                Ok(None) => break,
                Err(e) => return Attempt::Retry(describe(&e, self.timeout), None),
            }
        }
        let answer = Answer {
            status,
            json,
            body: body.map(BytesMut::freeze),
        };
        if status >= 500 {
            Attempt::Retry(format!("HTTP {status}"), Some(answer))
        } else {
            Attempt::Done(answer)
        }
    }
}

/// A short reason, for logs.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {timeout:?}")
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_and_jitters() {
        let config = WebhookConfig {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..WebhookConfig::default()
        };
        let poster = Poster::new(&config, 1024).unwrap();
        let mut rng = rand::rng();
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let full = Duration::from_millis(full);
            let mut seen = Vec::new();
            for _ in 0..200 {
                let d = poster.backoff(attempt, &mut rng);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
                seen.push(d);
            }
            seen.sort();
            seen.dedup();
            assert!(seen.len() > 10, "attempt {attempt}: no jitter");
        }
    }
}
