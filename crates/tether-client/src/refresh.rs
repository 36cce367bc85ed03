//! Binding tokens over time: the token each binding connects with, what the server said about
//! its expiry, and the `refresh` requests that keep a live connection bound (docs/protocol.md,
//! section 7.4). No I/O: the connection task feeds [`Tokens`] the server's frames and the
//! tokens that arrive (from the application's [`crate::TokenSource`] or
//! [`crate::Client::refresh`]), and sends and fetches what it returns.
//!
//! # Rules
//!
//! - `expiring`: with a token source, ask it for a new token (one fetch per app at a time);
//!   without one, tell the application ([`Event::TokenExpiring`]).
//! - A token that arrives while connected is sent in a `refresh`; it becomes the binding's
//!   token (the one every later connect uses) only when the server answers `refreshed`. A
//!   token that arrives between connections is used by the next connect directly.
//! - A refused refresh (4306) or a failed fetch is reported ([`Event::RefreshFailed`]); with
//!   a token source, the client asks it once more, halfway to the expiry, if at least two
//!   seconds remain. The old token holds until then.
//! - After the server closed the connection with 4205 (`token_expired`), a client with a
//!   token source fetches new tokens and reconnects, unless the server refused the source's
//!   last token for this connection (4306): a token source whose tokens the server does not
//!   take would only make the client reconnect in a loop.
//!
//! # Invariants
//!
//! - `apps` holds exactly the config's bindings; `in_flight` only ids sent on the current
//!   connection (cleared when a new one starts). Nothing grows with time.
//! - `fetching` is true from the moment a fetch is asked for until its result arrives, so at
//!   most one fetch per app runs at a time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tether_proto::{Binding, ErrorBody, Refreshed};
use tokio::time::Instant;

use crate::Event;

/// The shortest time left before expiry for which the client asks its token source again
/// after a failure.
const MIN_LEFT_FOR_RETRY_S: u64 = 2;

/// Seconds since the Unix epoch, the unit of token expiries.
pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token for a binding, as it reaches the connection task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// From [`crate::Client::refresh`].
    Offered(String),
    /// The result of a fetch from the token source.
    Fetched(Result<String, String>),
}

/// What the task does with an arrival.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send `refresh { app, token }` and report its id with [`Tokens::sent`].
    Send(String),
    /// Tell the application.
    Event(Event),
    Nothing,
}

#[derive(Debug)]
struct AppToken {
    /// What the next connect sends.
    token: String,
    /// The current token's expiry, when the server said it (`expiring`, `refreshed`).
    expires_s: Option<u64>,
    /// A fetch from the token source runs.
    fetching: bool,
    /// When to ask the token source again after a failure.
    retry_at: Option<Instant>,
    /// The one retry for the current token was used (or scheduled).
    retried: bool,
    /// The server refused a refresh since the last one it took (4306).
    refused: bool,
}

impl AppToken {
    fn renewed(&mut self, token: String, expires_s: Option<u64>) {
        self.token = token;
        self.expires_s = expires_s;
        self.retry_at = None;
        self.retried = false;
        self.refused = false;
    }
}

/// The bindings' tokens. See the module docs for the rules.
#[derive(Debug)]
pub(crate) struct Tokens {
    apps: BTreeMap<String, AppToken>,
    /// `refresh` requests sent on this connection and not answered: id -> (app, token).
    in_flight: HashMap<u32, (String, String)>,
    /// The application gave a token source.
    has_source: bool,
}

impl Tokens {
    pub fn new(bindings: &[Binding], has_source: bool) -> Tokens {
        let apps = bindings
            .iter()
            .map(|b| {
                let token = AppToken {
                    token: b.token.clone(),
                    expires_s: None,
                    fetching: false,
                    retry_at: None,
                    retried: false,
                    refused: false,
                };
                (b.app.clone(), token)
            })
            .collect();
        Tokens {
            apps,
            in_flight: HashMap::new(),
            has_source,
        }
    }

    /// The token the next connect sends for `app`.
    pub fn token(&self, app: &str) -> Option<&str> {
        self.apps.get(app).map(|a| a.token.as_str())
    }

    /// A new connection is up: requests of the previous one are not answered any more.
    pub fn connection_started(&mut self) {
        self.in_flight.clear();
    }

    /// The server warned that `app`'s token ends at `expires_s`. `true` in the answer: start
    /// a fetch from the token source for `app`.
    pub fn expiring(&mut self, app: &str, expires_s: u64) -> (bool, Option<Event>) {
        let Some(a) = self.apps.get_mut(app) else {
            return (false, None);
        };
        a.expires_s = Some(expires_s);
        if !self.has_source {
            let event = Event::TokenExpiring {
                app: app.to_owned(),
                expires_s,
            };
            return (false, Some(event));
        }
        if a.fetching {
            return (false, None);
        }
        a.fetching = true;
        a.retry_at = None;
        (true, None)
    }

    /// A token for `app` arrived while a connection is up.
    pub fn arrived(&mut self, app: &str, arrival: Arrival, now: Instant) -> Next {
        let has_source = self.has_source;
        let Some(a) = self.apps.get_mut(app) else {
            return Next::Nothing;
        };
        let result = match arrival {
            Arrival::Offered(token) => Ok(token),
            Arrival::Fetched(result) => {
                a.fetching = false;
                result
            }
        };
        match result {
            Ok(token) => Next::Send(token),
            Err(message) => {
                let retrying = has_source && schedule_retry(a, now);
                Next::Event(Event::RefreshFailed {
                    app: app.to_owned(),
                    code: None,
                    message: format!("the token source failed: {message}"),
                    retrying,
                })
            }
        }
    }

    /// A token for `app` arrived while no connection is up: the next connect uses it.
    /// A failed fetch is returned for the application to hear of.
    pub fn adopt(&mut self, app: &str, arrival: Arrival) -> Option<String> {
        let a = self.apps.get_mut(app)?;
        match arrival {
            Arrival::Offered(token) => a.renewed(token, None),
            Arrival::Fetched(result) => {
                a.fetching = false;
                match result {
                    Ok(token) => a.renewed(token, None),
                    Err(message) => return Some(message),
                }
            }
        }
        None
    }

    /// A `refresh` of `app` with `token` went out with request id `id`.
    pub fn sent(&mut self, id: u32, app: String, token: String) {
        self.in_flight.insert(id, (app, token));
    }

    /// The server took the refresh `id`: its token is the binding's from now on.
    pub fn refreshed(&mut self, id: u32, r: Refreshed) -> Option<Event> {
        let (app, token) = self.in_flight.remove(&id)?;
        let a = self.apps.get_mut(&app)?;
        a.renewed(token, Some(r.expires_s));
        Some(Event::TokenRefreshed {
            app,
            expires_s: r.expires_s,
        })
    }

    /// Handles a request error. `Err` hands back an error that answers no refresh.
    pub fn failed(&mut self, id: u32, error: ErrorBody, now: Instant) -> Result<Event, ErrorBody> {
        let Some((app, _)) = self.in_flight.remove(&id) else {
            return Err(error);
        };
        let retrying = match self.apps.get_mut(&app) {
            Some(a) => {
                a.refused = true;
                self.has_source && schedule_retry(a, now)
            }
            None => false,
        };
        Ok(Event::RefreshFailed {
            app,
            code: Some(error.code),
            message: error.message,
            retrying,
        })
    }

    /// The earliest instant a retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.apps.values().filter_map(|a| a.retry_at).min()
    }

    /// The apps whose retry is due by `now`: fetch a token for each (marked as fetching).
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (app, a) in &mut self.apps {
            if a.retry_at.is_some_and(|at| at <= now) && !a.fetching {
                a.retry_at = None;
                a.fetching = true;
                due.push(app.clone());
            }
        }
        due
    }

    /// After a close with 4205: whether to fetch new tokens and reconnect (see the module
    /// docs).
    pub fn renew_after_expiry(&self) -> bool {
        self.has_source && !self.apps.values().any(|a| a.refused)
    }

    /// The bound apps, for fetching every binding's token.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(String::as_str)
    }
}

/// Schedules the one retry of the current token halfway to its expiry, when enough is left.
fn schedule_retry(a: &mut AppToken, now: Instant) -> bool {
    let Some(expires_s) = a.expires_s else {
        return false;
    };
    let left = expires_s.saturating_sub(now_s());
    if a.retried || left < MIN_LEFT_FOR_RETRY_S {
        return false;
    }
    a.retried = true;
    a.retry_at = Some(now + Duration::from_secs(left) / 2);
    true
}

#[cfg(test)]
mod tests {
    use tether_proto::Code;

    use super::*;

    fn tokens(has_source: bool) -> Tokens {
        let bindings = [Binding {
            app: "demo".into(),
            token: "t0".into(),
            last_seq: None,
        }];
        Tokens::new(&bindings, has_source)
    }

    fn refused(code: Code) -> ErrorBody {
        ErrorBody {
            code,
            message: "refresh for app demo refused: the token is for another user".into(),
        }
    }

    fn refreshed(expires_s: u64) -> Refreshed {
        Refreshed {
            app: "demo".into(),
            expires_s,
        }
    }

    #[test]
    fn without_a_source_the_application_hears_of_the_expiry() {
        let mut t = tokens(false);
        let (fetch, event) = t.expiring("demo", 100);
        assert!(!fetch);
        assert_eq!(
            event,
            Some(Event::TokenExpiring {
                app: "demo".into(),
                expires_s: 100
            })
        );
        assert_eq!(t.expiring("other", 100), (false, None), "not bound");
        // The application answers with Client::refresh.
        let next = t.arrived("demo", Arrival::Offered("t1".into()), Instant::now());
        assert_eq!(next, Next::Send("t1".into()));
        t.sent(7, "demo".into(), "t1".into());
        assert_eq!(t.token("demo"), Some("t0"), "not before the server took it");
        assert_eq!(
            t.refreshed(7, refreshed(200)),
            Some(Event::TokenRefreshed {
                app: "demo".into(),
                expires_s: 200
            })
        );
        assert_eq!(t.token("demo"), Some("t1"));
        assert_eq!(t.refreshed(7, refreshed(200)), None, "answered once");
        assert!(!t.renew_after_expiry());
    }

    #[test]
    fn with_a_source_one_fetch_runs_at_a_time() {
        let mut t = tokens(true);
        let exp = now_s() + 60;
        assert_eq!(t.expiring("demo", exp), (true, None));
        assert_eq!(t.expiring("demo", exp), (false, None), "already fetching");
        let next = t.arrived("demo", Arrival::Fetched(Ok("t1".into())), Instant::now());
        assert_eq!(next, Next::Send("t1".into()));
        assert_eq!(t.expiring("demo", exp), (true, None), "the fetch ended");
    }

    #[test]
    fn a_refused_refresh_is_retried_once_halfway_to_the_expiry() {
        let mut t = tokens(true);
        let now = Instant::now();
        assert!(t.expiring("demo", now_s() + 60).0);
        t.arrived("demo", Arrival::Fetched(Ok("bad".into())), now);
        t.sent(3, "demo".into(), "bad".into());
        let event = t.failed(3, refused(Code::TOKEN_REFUSED), now);
        assert!(
            matches!(
                &event,
                Ok(Event::RefreshFailed {
                    code: Some(Code::TOKEN_REFUSED),
                    retrying: true,
                    ..
                })
            ),
            "{event:?}"
        );
        let at = t.next_due().expect("a retry");
        assert!(at >= now + Duration::from_secs(29) && at <= now + Duration::from_secs(30));
        assert_eq!(t.due(now), Vec::<String>::new(), "not yet");
        assert_eq!(t.due(at), ["demo"]);
        assert_eq!(t.next_due(), None);
        let next = t.arrived("demo", Arrival::Fetched(Err("offline".into())), at);
        assert!(
            matches!(
                &next,
                Next::Event(Event::RefreshFailed {
                    code: None,
                    retrying: false,
                    ..
                })
            ),
            "one retry only: {next:?}"
        );
        assert!(
            !t.renew_after_expiry(),
            "the server refused the source's token"
        );
        // Not an answer to a refresh: handed back.
        assert!(t.failed(99, refused(Code::FORBIDDEN), now).is_err());
    }

    #[test]
    fn no_retry_when_the_expiry_is_too_close_or_unknown() {
        let mut t = tokens(true);
        let now = Instant::now();
        let next = t.arrived("demo", Arrival::Fetched(Err("offline".into())), now);
        assert!(matches!(
            next,
            Next::Event(Event::RefreshFailed {
                retrying: false,
                ..
            })
        ));
        t.expiring("demo", now_s() + 1);
        let next = t.arrived("demo", Arrival::Fetched(Err("offline".into())), now);
        assert!(matches!(
            next,
            Next::Event(Event::RefreshFailed {
                retrying: false,
                ..
            })
        ));
        assert!(t.renew_after_expiry(), "a failed fetch is not a refusal");
    }

    #[test]
    fn tokens_between_connections_are_used_by_the_next_connect() {
        let mut t = tokens(true);
        t.sent(4, "demo".into(), "t1".into());
        t.failed(4, refused(Code::TOKEN_REFUSED), Instant::now())
            .expect("a refresh");
        t.connection_started();
        assert_eq!(t.adopt("demo", Arrival::Fetched(Ok("t2".into()))), None);
        assert_eq!(t.token("demo"), Some("t2"));
        assert!(t.renew_after_expiry(), "a new token, a new chance");
        assert_eq!(
            t.adopt("demo", Arrival::Fetched(Err("offline".into()))),
            Some("offline".into())
        );
        assert_eq!(t.adopt("demo", Arrival::Offered("t3".into())), None);
        assert_eq!(t.token("demo"), Some("t3"));
        assert_eq!(t.apps().collect::<Vec<_>>(), ["demo"]);
    }
}
