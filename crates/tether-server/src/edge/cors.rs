//! The answers of CORS, whatever serves the route: the HTTP API's client-facing routes
//! (`crate::api::cors`, for `listen.http_access.origins`) and the SSE routes of the WebSocket
//! listener (`crate::gateway`, for `listen.ws_access.origins`). One policy, written once: the
//! verdict a request's `Origin` gets from a listener's [`Guard`], and the headers each answer
//! carries.
//!
//! # Policy
//!
//! - A request without `Origin` is not a page's cross-origin call (a native client, a server,
//!   a same-origin `GET`): served, nothing added. (The WebSocket listener's guard may refuse
//!   it, as it refuses an upgrade without one: `allow_missing_origin`.)
//! - No list: any origin. Answers carry `Access-Control-Allow-Origin: *`, and never
//!   credentials: a browser refuses `*` in credentials mode, so "any origin" can never also
//!   mean "with the user's cookies". The answer is the same for every origin, so caches need
//!   no `Vary`.
//! - A list: a listed origin is echoed, with `Access-Control-Allow-Credentials: true` (the
//!   operator named the pages it trusts; tether itself reads no cookie, but a balancer's
//!   affinity cookie reaches a cross-origin `EventSource` only in credentials mode) and
//!   `Vary: Origin` on every answer.
//! - An origin not listed is refused with `403` and no CORS header before the route runs,
//!   preflight or not, counted as `tether_connections_refused_total{listener, reason="origin"}`.
//!   Leaving the headers out would be enough for the browser to hide the answer, but not to
//!   keep the route from running: a `GET` with `?token=` or an `EventSource` needs no
//!   preflight, and a route with effects (an SSE session that marks the user online) must not
//!   run for a page the operator did not list.
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is answered `204`, with [`METHODS`], [`HEADERS`] and a [`MAX_AGE`]; the route never
//!   sees it. Other `OPTIONS` requests go to the route (`405`).
//! - Every other answer of a client-facing route (errors too, so that a page can read their
//!   `{code, error}`) carries the origin headers, and `Access-Control-Expose-Headers:
//!   retry-after` (a `503` or `429` says when to retry).

use std::net::IpAddr;

use axum::http::{HeaderName, HeaderValue, header};

use super::Guard;

/// What a client-facing route may be called with: `GET` (the dispatcher, an SSE stream) and
/// `POST` (what an SSE client sends).
pub const METHODS: &str = "GET, POST";

/// The request headers a page may send beyond the safelisted ones: the SDK's token, a JSON
/// body, and the resume position `EventSource` sends when it reconnects.
pub const HEADERS: &str = "authorization, content-type, last-event-id";

/// How long (seconds) a browser may keep a preflight's answer: Chromium's own cap (Firefox
/// keeps up to a day). A removed origin is refused by the next request anyway: a kept
/// preflight only spares the round trip.
pub const MAX_AGE: &str = "7200";

/// The answer headers a page may read beyond the safelisted ones.
const EXPOSE: &str = "retry-after";

/// What a request's `Origin` allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No `Origin`: not a page's cross-origin call.
    NoOrigin,
    /// Any origin may call (no list).
    Any,
    /// A listed origin, echoed.
    Listed(HeaderValue),
    /// Refused, counted and logged.
    Refused,
}

/// The CORS of one request: its verdict, and whether it came from a list (read once: a reload
/// between the two must not mix them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub verdict: Verdict,
    listed: bool,
}

impl Cors {
    /// What `guard` says of a request with `origin` (`None`: without one) from `ip` (`None`:
    /// not known). A refusal is counted and logged by the guard.
    pub fn of(guard: &Guard, origin: Option<&[u8]>, ip: Option<IpAddr>) -> Cors {
        let listed = guard.lists_origins();
        let verdict = match origin {
            None => Verdict::NoOrigin,
            Some(_) if !listed => Verdict::Any,
            Some(origin) => match (
                guard.check_origin(Some(origin), ip),
                HeaderValue::from_bytes(origin),
            ) {
                (Ok(()), Ok(value)) => Verdict::Listed(value),
                _ => Verdict::Refused,
            },
        };
        Cors { verdict, listed }
    }

    pub fn refused(&self) -> bool {
        self.verdict == Verdict::Refused
    }

    /// The headers an answer carries: a preflight's (`preflight`, answered `204`) or any other
    /// answer's; a refusal's carry only `Vary`.
    pub fn headers(&self, preflight: bool) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        let allowed = matches!(self.verdict, Verdict::Any | Verdict::Listed(_));
        if allowed && preflight {
            for (name, value) in [
                (header::ACCESS_CONTROL_ALLOW_METHODS, METHODS),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, HEADERS),
                (header::ACCESS_CONTROL_MAX_AGE, MAX_AGE),
            ] {
                headers.push((name, HeaderValue::from_static(value)));
            }
        } else if allowed {
            headers.push((
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE),
            ));
        }
        match &self.verdict {
            Verdict::Any => headers.push((
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            )),
            Verdict::Listed(origin) => {
                headers.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
                headers.push((
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
            Verdict::NoOrigin | Verdict::Refused => {}
        }
        // With a list the answer depends on the Origin, whatever it was (or that there was
        // none): a cache must not give one origin's answer to another.
        if self.listed {
            headers.push((header::VARY, HeaderValue::from_static("origin")));
        }
        headers
    }

    /// [`Cors::headers`] as header lines, each ending in CRLF, for an answer written by hand.
    pub fn header_lines(&self, preflight: bool) -> String {
        let mut lines = String::new();
        for (name, value) in self.headers(preflight) {
            // Values are ours, or an Origin that `HeaderValue` took: visible ASCII.
            if let Ok(value) = value.to_str() {
                lines.push_str(name.as_str());
                lines.push_str(": ");
                lines.push_str(value);
                lines.push_str("\r\n");
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessConfig;

    fn guard(origins: &[&str]) -> Guard {
        let config = AccessConfig {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            ..AccessConfig::default()
        };
        Guard::new("ws", "listen.ws_access", &config).expect("valid origins")
    }

    #[test]
    fn the_answers_of_each_verdict() {
        let any = Cors::of(&guard(&[]), Some(b"https://a.example"), None);
        assert_eq!(
            any.header_lines(false),
            "access-control-expose-headers: retry-after\r\naccess-control-allow-origin: *\r\n"
        );
        let listed = guard(&["https://a.example"]);
        let ok = Cors::of(&listed, Some(b"https://a.example"), None);
        let lines = ok.header_lines(true);
        assert!(lines.contains("access-control-allow-origin: https://a.example\r\n"));
        assert!(lines.contains("access-control-allow-credentials: true\r\n"));
        assert!(lines.contains(&format!("access-control-allow-headers: {HEADERS}\r\n")));
        assert!(lines.ends_with("vary: origin\r\n"));
        let refused = Cors::of(&listed, Some(b"https://b.example"), None);
        assert!(refused.refused());
        assert_eq!(refused.header_lines(false), "vary: origin\r\n");
        let none = Cors::of(&listed, None, None);
        assert_eq!(none.verdict, Verdict::NoOrigin);
        assert_eq!(none.header_lines(false), "vary: origin\r\n");
    }
}
