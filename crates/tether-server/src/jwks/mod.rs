//! JWKS URLs: an identity provider's keys, fetched at start, kept fresh in the background, and
//! read by the apps' token policies without a lock (the set and its kid rules are in
//! `tether_core::auth::jwks`).
//!
//! Each app with a `tokens.jwks_url` has one [`RemoteKeys`]: the keys in force behind an
//! `ArcSwap`, and a task that fetches the URL
//!
//! - at once (a starting node waits for this first fetch, at most [`fetch::TIMEOUT`]);
//! - every `tokens.jwks_refresh` after a success; after a failure sooner: 1 s, then twice as
//!   long after each failure in a row, up to the refresh interval or [`RETRY_MAX`];
//! - when a token names a kid that the set does not hold: the provider may have rotated its
//!   keys. At most once per [`KID_REFETCH`] per app, since anyone can send such tokens.
//!
//! A failed fetch (unreachable, not `200`, too slow, too large, not a set with a usable key)
//! keeps the keys in force; before the first success, tokens that need the set are refused.
//! Every fetch is counted in `tether_jwks_fetch_total{app, result}`, and a failure is logged
//! at WARN.
//!
//! The task ends when its [`RemoteKeys`] is dropped (a reload built new rules and the old ones
//! were released) or when the node shuts down. A reload makes a new [`RemoteKeys`] for each
//! URL, which starts from the keys of the one it replaces (same app, same URL) and fetches at
//! once: a reload never leaves a moment without keys, and doubles as "fetch now".

pub mod fetch;
#[cfg(test)]
mod tests;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use reqwest::Url;
use tether_core::AppId;
use tether_core::auth::{JwkKeys, KeySource};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use fetch::Client;

/// The least time between two fetches that unknown kids ask for, per app.
pub const KID_REFETCH: Duration = Duration::from_secs(60);

/// The longest wait before fetching again after a failure.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// A `jwks_url` this node can fetch: `http://` or `https://`, with a host, without
/// credentials (they would be logged with the URL).
pub fn check_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?} must start with https:// (or http://)"));
    }
    if parsed.host().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not hold a user name or password".into());
    }
    Ok(parsed)
}

/// What the refreshers of one node share: the node's shutdown, and one client (its roots are
/// read once, when the first URL needs them). A reload's rules reuse it.
#[derive(Debug, Clone)]
pub struct Refreshers {
    stop: CancellationToken,
    client: Arc<Mutex<Option<Client>>>,
}

impl Refreshers {
    /// Refreshers whose tasks end when `stop` is cancelled (or their keys are dropped).
    pub fn new(stop: CancellationToken) -> Self {
        Refreshers {
            stop,
            client: Arc::default(),
        }
    }

    /// Refreshers fetching with `client` (tests: a client that trusts a test CA).
    pub fn with_client(stop: CancellationToken, client: Client) -> Self {
        Refreshers {
            stop,
            client: Arc::new(Mutex::new(Some(client))),
        }
    }

    /// Starts keeping the keys of `url` for `app`, fetched every `every`, beginning with
    /// `seed` (the keys a reload's previous rules had for the same URL). Spawns on the
    /// current tokio runtime.
    pub fn start(
        &self,
        app: &AppId,
        url: &str,
        every: Duration,
        seed: Option<Arc<JwkKeys>>,
    ) -> Result<Arc<RemoteKeys>, String> {
        let url = check_url(url)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "a jwks_url needs a tokio runtime to fetch it".to_owned())?;
        let client = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Client::new)
            .clone();
        let state = Arc::new(State {
            app: app.clone(),
            url,
            keys: ArcSwapOption::new(seed),
            wake: Notify::new(),
            kid_wake: Mutex::new(None),
            settled: watch::Sender::new(false),
        });
        let stop = self.stop.child_token();
        runtime.spawn(refresh(state.clone(), client, every, stop.clone()));
        Ok(Arc::new(RemoteKeys {
            state,
            _stop: stop.drop_guard(),
        }))
    }
}

/// The keys of one app's JWKS URL, as its token policy reads them ([`KeySource`]); its
/// refresher runs as long as this is held.
#[derive(Debug)]
pub struct RemoteKeys {
    state: Arc<State>,
    _stop: DropGuard,
}

#[derive(Debug)]
struct State {
    app: AppId,
    url: Url,
    /// The keys in force: `None` until a fetch (or the seed) gave some.
    keys: ArcSwapOption<JwkKeys>,
    /// Wakes the task for a fetch before its time (an unknown kid).
    wake: Notify,
    /// When an unknown kid last woke the task.
    kid_wake: Mutex<Option<Instant>>,
    /// True once the first fetch has ended, whatever its outcome.
    settled: watch::Sender<bool>,
}

impl RemoteKeys {
    pub fn url(&self) -> &str {
        self.state.url.as_str()
    }

    /// Whether these are the keys of `url` (as configured: the same URL once normalised).
    pub fn is_for(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|url| url == self.state.url)
    }

    /// The keys in force.
    pub fn current(&self) -> Option<Arc<JwkKeys>> {
        self.state.keys.load_full()
    }

    /// Waits until the first fetch has ended, successful or not.
    pub async fn settled(&self) {
        let mut settled = self.state.settled.subscribe();
        let _ = settled.wait_for(|done| *done).await;
    }
}

impl KeySource for RemoteKeys {
    fn keys(&self) -> Option<Arc<JwkKeys>> {
        self.state.keys.load_full()
    }

    fn unknown_kid(&self) {
        let now = Instant::now();
        {
            let mut last = self
                .state
                .kid_wake
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| now.duration_since(at) < KID_REFETCH) {
                return;
            }
            *last = Some(now);
        }
        tracing::debug!(app = %self.state.app, "a token named an unknown kid: fetching the JWKS again");
        self.state.wake.notify_one();
    }
}

/// The refresher of one URL: see the module's documentation.
async fn refresh(state: Arc<State>, client: Client, every: Duration, stop: CancellationToken) {
    // The document in force, by its hash: an unchanged one is not parsed or logged again.
    let mut in_force: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let fetched = tokio::select! {
            () = stop.cancelled() => return,
            fetched = client.get(&state.url) => fetched,
        };
        let outcome = fetched
            .map_err(|e| e.to_string())
            .and_then(|body| state.take(&body, &mut in_force));
        crate::metrics::jwks_fetch(state.app.as_str(), outcome.is_ok());
        let wait = match outcome {
            Ok(()) => {
                failures = 0;
                every
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let kept = state.keys.load().as_ref().map_or(0, |k| k.len());
                tracing::warn!(
                    app = %state.app,
                    url = %state.url,
                    %error,
                    keys_in_force = kept,
                    "cannot fetch the JWKS: {}",
                    if kept == 0 {
                        "tokens signed by its keys are refused until a fetch succeeds"
                    } else {
                        "the keys fetched before stay in force"
                    }
                );
                retry_after(failures).min(every)
            }
        };
        state.settled.send_replace(true);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = state.wake.notified() => {}
        }
    }
}

/// The wait after `failures` failed fetches in a row: 1 s, 2 s, 4 s... up to [`RETRY_MAX`].
fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(RETRY_MAX)
}

impl State {
    /// Puts the keys of the fetched document `body` in force.
    fn take(&self, body: &Bytes, in_force: &mut Option<u64>) -> Result<(), String> {
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let hash = hasher.finish();
        if *in_force == Some(hash) {
            return Ok(());
        }
        let parsed = JwkKeys::parse(body).map_err(|e| e.to_string())?;
        for skipped in &parsed.skipped {
            tracing::warn!(app = %self.app, url = %self.url, "JWKS key {skipped}");
        }
        tracing::info!(app = %self.app, url = %self.url, kids = ?parsed.keys.kids(), "JWKS keys in force");
        self.keys.store(Some(Arc::new(parsed.keys)));
        *in_force = Some(hash);
        Ok(())
    }
}
