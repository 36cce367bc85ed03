//! Asking a dispatcher (`GET /v1/dispatch`) which endpoints to try, and remembering what
//! failed.
//!
//! The request carries the first binding's app and token (the dispatcher answers only a client
//! of the app, and takes the user from the token) and the endpoints this client could not use
//! since its last connection, so that the answer leaves them out.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::ClientError;
use crate::config::Endpoint;

/// Most failed endpoints reported at once (the oldest are forgotten first).
const MAX_FAILED: usize = 16;
/// Most endpoints taken from one answer.
const MAX_ENDPOINTS: usize = 64;
/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The reconnect backoff a dispatcher asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BackoffHint {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

/// What a dispatcher answered.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The endpoints to try, in order: those this client can use (`wss://` is skipped).
    pub endpoints: Vec<(String, Endpoint)>,
    pub backoff: Option<BackoffHint>,
}

#[derive(Deserialize)]
struct RawAnswer {
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    reconnect: Option<RawReconnect>,
}

#[derive(Deserialize)]
struct RawEndpoint {
    url: String,
}

#[derive(Deserialize)]
struct RawReconnect {
    initial_ms: u64,
    max_ms: u64,
    jitter: f64,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    error: String,
}

/// A dispatcher and what this client reports to it.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    http: reqwest::Client,
    url: Url,
    app: String,
    token: String,
    /// Endpoints that failed since the last connection, oldest first.
    failed: Vec<String>,
    /// The last answer's endpoints, for when the dispatcher cannot be reached.
    last: Vec<(String, Endpoint)>,
}

impl Dispatcher {
    /// `url` as from [`Dispatcher::parse_url`]; `timeout` bounds each request.
    pub fn new(
        url: Url,
        app: String,
        token: String,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        // No proxy from the environment: the dispatcher is reached directly, like the gateways.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Dispatcher {
            http,
            url,
            app,
            token,
            failed: Vec::new(),
            last: Vec::new(),
        })
    }

    /// The token to ask with from now on (the first binding's, refreshed).
    pub fn set_token(&mut self, token: &str) {
        if self.token != token {
            token.clone_into(&mut self.token);
        }
    }

    /// Parses and checks a dispatch URL: `http://host[:port]/path`.
    pub fn parse_url(url: &str) -> Result<Url, ClientError> {
        let bad = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "http" => {}
            "https" => return Err(bad("TLS is not supported by this client build")),
            _ => return Err(bad("a dispatch URL is http://host:port/v1/dispatch")),
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("missing host"));
        }
        Ok(parsed)
    }

    /// Records that `url` could not be used (a connect or handshake failed, or the node told
    /// the client to go elsewhere): the next request reports it.
    pub fn failed(&mut self, url: &str) {
        if self.failed.iter().any(|f| f == url) {
            return;
        }
        if self.failed.len() == MAX_FAILED {
            self.failed.remove(0);
        }
        self.failed.push(url.to_owned());
    }

    /// A connection succeeded: what failed before is forgotten.
    pub fn connected(&mut self) {
        self.failed.clear();
    }

    /// The endpoints of the last answer that did not fail since, for when the dispatcher
    /// cannot be reached.
    pub fn fallback(&self) -> Vec<(String, Endpoint)> {
        self.last
            .iter()
            .filter(|(url, _)| !self.failed.contains(url))
            .cloned()
            .collect()
    }

    /// Asks the dispatcher. With nothing left to offer (every endpoint reported failed, or
    /// every node draining) it answers 503; the failures are then forgotten, so that the next
    /// request, after a backoff delay, starts afresh.
    pub async fn ask(&mut self) -> Result<Answer, ClientError> {
        let mut url = self.url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("app", &self.app);
            if !self.failed.is_empty() {
                query.append_pair("failed", &self.failed.join(","));
            }
        }
        let mut response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| dispatch_error(None, "unreachable", e.to_string()))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| dispatch_error(Some(status), "unreachable", e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(dispatch_error(
                    Some(status),
                    "too_large",
                    format!("an answer over {MAX_ANSWER_BYTES} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if status != 200 {
            let e: RawError = serde_json::from_slice(&body).unwrap_or(RawError {
                code: String::new(),
                error: String::from_utf8_lossy(&body).into_owned(),
            });
            if e.code == "no_endpoints" {
                self.failed.clear();
            }
            return Err(dispatch_error(Some(status), &e.code, e.error));
        }
        let raw: RawAnswer = serde_json::from_slice(&body)
            .map_err(|e| dispatch_error(Some(status), "bad_answer", e.to_string()))?;
        let endpoints: Vec<(String, Endpoint)> = raw
            .endpoints
            .into_iter()
            .take(MAX_ENDPOINTS)
            .filter_map(|e| Endpoint::parse(&e.url).ok().map(|parsed| (e.url, parsed)))
            .collect();
        if endpoints.is_empty() {
            return Err(dispatch_error(
                Some(status),
                "no_endpoints",
                "no endpoint this client can use (tcp:// or ws://)".into(),
            ));
        }
        self.last.clone_from(&endpoints);
        Ok(Answer {
            endpoints,
            backoff: raw.reconnect.map(|r| BackoffHint {
                initial: Duration::from_millis(r.initial_ms),
                max: Duration::from_millis(r.max_ms),
                jitter: r.jitter,
            }),
        })
    }
}

fn dispatch_error(status: Option<u16>, code: &str, message: String) -> ClientError {
    ClientError::Dispatch {
        status,
        code: code.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatcher() -> Dispatcher {
        Dispatcher::new(
            Dispatcher::parse_url("http://127.0.0.1:1/v1/dispatch").unwrap(),
            "demo".into(),
            "t".into(),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn dispatch_urls() {
        assert!(Dispatcher::parse_url("http://h:7480/v1/dispatch").is_ok());
        for (url, why) in [
            ("https://h/v1/dispatch", "TLS"),
            ("tcp://h:1", "http://"),
            ("h:7480/v1/dispatch", ""),
        ] {
            match Dispatcher::parse_url(url) {
                Err(ClientError::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains(why), "{url}: {reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn failures_are_bounded_deduplicated_and_forgotten_on_success() {
        let mut d = dispatcher();
        for i in 0..(MAX_FAILED + 4) {
            d.failed(&format!("tcp://h:{}", i + 1));
            d.failed(&format!("tcp://h:{}", i + 1));
        }
        assert_eq!(d.failed.len(), MAX_FAILED);
        assert_eq!(d.failed[0], "tcp://h:5", "the oldest are forgotten first");
        d.connected();
        assert!(d.failed.is_empty());
    }

    #[test]
    fn the_fallback_is_the_last_answer_without_what_failed() {
        let mut d = dispatcher();
        let ep = |u: &str| (u.to_owned(), Endpoint::parse(u).unwrap());
        d.last = vec![ep("tcp://a:1"), ep("ws://a:2/ws"), ep("tcp://b:1")];
        d.failed("tcp://a:1");
        let urls: Vec<String> = d.fallback().into_iter().map(|(u, _)| u).collect();
        assert_eq!(urls, ["ws://a:2/ws", "tcp://b:1"]);
    }
}
