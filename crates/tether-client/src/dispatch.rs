//! Asking a dispatcher (`GET /v1/dispatch`) which endpoints to try, and remembering what
//! failed.
//!
//! The request carries the first binding's app and token (the dispatcher answers only a client
//! of the app, and takes the user from the token) and the endpoints this client could not use
//! since its last connection, so that the answer leaves them out.
//!
//! One HTTP/1.1 `GET` per question, on a connection of its own opened by [`crate::net`] (plain
//! for `http://`, TLS with the client's roots for `https://`), and closed after the answer: a
//! client asks once per connect, so there is nothing worth keeping alive. No proxy from the
//! environment: the dispatcher is reached directly, like the gateways.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper::header::{AUTHORIZATION, HOST};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use url::{Host, Position, Url};

use crate::ClientError;
use crate::config::Endpoint;
use crate::net;
use crate::tls::Tls;

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
    /// The endpoints to try, in order: those this client can use (unknown schemes are
    /// skipped).
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
    url: Url,
    /// The client's TLS config, for an `https://` URL.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Bounds each request, from connect to the answer's last byte.
    timeout: Duration,
    app: String,
    token: String,
    /// Endpoints that failed since the last connection, oldest first.
    failed: Vec<String>,
    /// The last answer's endpoints, for when the dispatcher cannot be reached.
    last: Vec<(String, Endpoint)>,
}

impl Dispatcher {
    /// `url` as from [`Dispatcher::parse_url`]; for an `https://` one, the client's TLS config
    /// is built now (with the system's roots, this is where none found fails); `timeout`
    /// bounds each request.
    pub fn new(
        url: Url,
        tls: &mut Tls,
        app: String,
        token: String,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let tls = (url.scheme() == "https")
            .then(|| tls.config())
            .transpose()?;
        Ok(Dispatcher {
            url,
            tls,
            timeout,
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

    /// Parses and checks a dispatch URL: `http://host[:port]/path` or `https://...`.
    pub fn parse_url(url: &str) -> Result<Url, ClientError> {
        let bad = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad(
                "a dispatch URL is http://host:port/v1/dispatch (or https://)",
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("missing host"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("user info is not allowed"));
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
        let (status, body) = tokio::time::timeout(self.timeout, self.get(&url))
            .await
            .map_err(|_| {
                let why = format!("no answer within {:?}", self.timeout);
                dispatch_error(None, "unreachable", why)
            })??;
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
                "no endpoint this client can use (tcp://, tls://, ws:// or wss://)".into(),
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

    /// `GET url` with the token: the answer's status and body (at most [`MAX_ANSWER_BYTES`]).
    /// A connection that fails, TLS included (an untrusted certificate says so in the
    /// message), is `unreachable`.
    async fn get(&self, url: &Url) -> Result<(u16, Vec<u8>), ClientError> {
        let unreachable = |why: String| dispatch_error(None, "unreachable", why);
        let host = match url.host() {
            Some(Host::Domain(name)) => name.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(unreachable("the URL has no host".to_owned())),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let tls = match url.scheme() {
            "https" => self.tls.clone(),
            _ => None,
        };
        let stream = net::open(&host, port, tls)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let authority = &url[Position::BeforeHost..Position::BeforePath];
        let request = Request::get(&url[Position::BeforePath..Position::AfterQuery])
            .header(HOST, authority)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Empty::<Bytes>::new())
            .map_err(|_| {
                ClientError::Config("the token cannot be sent in an HTTP header".to_owned())
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // `sender` moves into the exchange and is dropped when it ends, which lets
        // `connection` finish.
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame
                    .map_err(|e| dispatch_error(Some(status), "unreachable", e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                if bytes.len() + data.len() > MAX_ANSWER_BYTES {
                    return Err(dispatch_error(
                        Some(status),
                        "too_large",
                        format!("an answer over {MAX_ANSWER_BYTES} bytes"),
                    ));
                }
                bytes.extend_from_slice(&data);
            }
            Ok((status, bytes))
        };
        // The connection runs beside the exchange (no task spawned: a timeout drops both).
        let (answer, _) = tokio::join!(exchange, connection);
        answer
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
            &mut Tls::new(crate::TlsRoots::system()),
            "demo".into(),
            "t".into(),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn dispatch_urls() {
        assert!(Dispatcher::parse_url("http://h:7480/v1/dispatch").is_ok());
        assert!(Dispatcher::parse_url("https://h/v1/dispatch").is_ok());
        assert!(Dispatcher::parse_url("https://[::1]:7480/v1/dispatch").is_ok());
        for (url, why) in [
            ("tcp://h:1", "http://"),
            ("https://u:p@h/v1/dispatch", "user info"),
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
