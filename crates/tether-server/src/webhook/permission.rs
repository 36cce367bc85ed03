//! The `webhook` topic rule: asks an app's webhook whether a user may subscribe to a topic,
//! keeps the answers in a bounded cache, and refuses when no answer comes in time.
//!
//! # The exchange
//! A POST to the app's `webhook` URL, signed like every webhook POST (see [`super::sign`];
//! `X-Tether-Event: subscribe_check`):
//!
//! ```json
//! {"type":"subscribe_check","id":"tether-1-7401989437128706","app":"chat","user":"alice",
//!  "topic":"room.42","device":"phone-1","conn_id":7,"node":"tether-1","ts_ms":1763700000000}
//! ```
//!
//! The business answers `200` with `{"allow": true}` or `{"allow": false}`, and may add
//! `"ttl_ms"`: how long the answer may be given again without asking (0: never; at most
//! `webhook.permission.max_ttl`; without it, `allow_ttl` or `refuse_ttl`). Any other answer
//! (another status, another body) refuses and is not kept; so do a network error and a 5xx.
//! A question is never retried: the client asks again (the SDK retries a 4301 with backoff).
//!
//! # Overload
//! - POSTs in flight: at most `webhook.permission.concurrency` per app; more questions wait
//!   for a place (first come, first served) within their deadline.
//! - Deadline: `webhook.permission.timeout` for the wait and the POST together; past it the
//!   question is dropped (its connection closed) and the subscribe is refused with 4301.
//! - Answers kept: at most `webhook.permission.cache_size` over all apps, the least used
//!   going first; each for its own lifetime.
//! - Questions waiting per connection are bounded by the gateway (`gateway/io/check.rs`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use tether_core::{AppId, MessageIdGen, NodeId, TopicId, UserId};
use tokio::sync::Semaphore;
use tracing::debug;

use super::Target;
use super::post::Poster;
use crate::config::{Config, PermissionConfig, TopicAccess, WebhookConfig};
use crate::metrics::PermissionMetrics;
use crate::session::ask::{Asked, Asker, Question, Verdict};

/// The event name, in the body's `type` and in `X-Tether-Event`.
const EVENT: &str = "subscribe_check";

/// The largest answer read: `{"allow":false,"ttl_ms":...}` is a few dozen bytes.
const MAX_ANSWER: usize = 4096;

/// The delivery ids of checks come from a generator of their own, told apart from the
/// upstream and presence generator's (number 0) by this number in their node bits: the two
/// never hand out the same id.
const CHECK_IDS: u16 = 1;

/// How much longer than the check's deadline the HTTP client itself waits: the deadline,
/// which also covers the wait for a place, always fires first, so a slow webhook is reported
/// as a timeout and not as a network error.
const CLIENT_BACKSTOP: Duration = Duration::from_secs(1);

/// What a cached answer is keyed by: the answer is the user's, on any of its connections.
type Key = (AppId, UserId, TopicId);

/// An answer of the business, kept for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kept {
    allow: bool,
    ttl: Duration,
}

/// Each cached answer lives for its own `ttl`, from when it was stored.
struct Lifetime;

impl Expiry<Key, Kept> for Lifetime {
    fn expire_after_create(&self, _: &Key, kept: &Kept, _: Instant) -> Option<Duration> {
        Some(kept.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        kept: &Kept,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(kept.ttl)
    }
}

/// The askers of every app with a `webhook` rule (and a webhook URL, which validation
/// requires), sharing one HTTP client and one cache of answers.
pub fn askers(config: &Config) -> Result<HashMap<AppId, Arc<dyn Asker>>, String> {
    let asking: Vec<_> = config
        .apps
        .iter()
        .filter(|app| app.topics.iter().any(|r| r.allow == TopicAccess::Webhook))
        .filter_map(|app| Some((app, app.webhook.as_ref()?)))
        .collect();
    if asking.is_empty() {
        return Ok(HashMap::new());
    }
    let settings = config.webhook.permission.clone();
    let client = WebhookConfig {
        workers: settings.concurrency,
        timeout: settings.timeout + CLIENT_BACKSTOP,
        ..config.webhook.clone()
    };
    let poster = Poster::new(&client, MAX_ANSWER)
        .map_err(|e| format!("cannot build the webhook client for permission checks: {e}"))?;
    let poster = Arc::new(poster);
    let answers = (settings.cache_size > 0).then(|| {
        Cache::builder()
            .max_capacity(settings.cache_size)
            .expire_after(Lifetime)
            .build()
    });
    let node = NodeId::new(config.node.id.clone());
    let ids = Arc::new(MessageIdGen::new(CHECK_IDS));
    Ok(asking
        .into_iter()
        .map(|(app, url)| {
            let hook = WebhookAsker(Arc::new(Hook {
                target: Target {
                    app: app.id.clone(),
                    url: url.clone(),
                    secret: app.secret.clone(),
                    node: node.clone(),
                    ids: ids.clone(),
                },
                poster: poster.clone(),
                places: Semaphore::new(settings.concurrency),
                answers: answers.clone(),
                settings: settings.clone(),
                metrics: PermissionMetrics::new(app.id.as_str()),
            }));
            (app.id.clone(), Arc::new(hook) as Arc<dyn Asker>)
        })
        .collect())
}

/// One app's asker.
#[derive(Debug)]
struct WebhookAsker(Arc<Hook>);

/// What one app's questions need.
struct Hook {
    target: Target,
    poster: Arc<Poster>,
    /// POSTs in flight for this app.
    places: Semaphore,
    /// Shared by every app's asker; `None` when `cache_size` is 0.
    answers: Option<Cache<Key, Kept>>,
    settings: PermissionConfig,
    metrics: PermissionMetrics,
}

impl fmt::Debug for Hook {
    /// Without the cache, whose `Debug` would list every answer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("target", &self.target)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Asker for WebhookAsker {
    fn ask(&self, question: Question) -> Asked {
        let hook = &self.0;
        let key = (
            question.app.clone(),
            question.user.clone(),
            question.topic.clone(),
        );
        if let Some(kept) = hook.answers.as_ref().and_then(|a| a.get(&key)) {
            let (counter, verdict) = match kept.allow {
                true => (&hook.metrics.cached_allowed, Verdict::Allowed),
                false => (&hook.metrics.cached_refused, Verdict::Refused),
            };
            counter.increment(1);
            return Asked::Known(verdict);
        }
        let hook = hook.clone();
        Asked::Later(Box::pin(async move {
            let asked = tokio::time::timeout(hook.settings.timeout, hook.put(&question, key));
            let verdict = asked.await.unwrap_or_else(|_| {
                debug!(app = %hook.target.app, topic = %question.topic, "permission check timed out");
                Verdict::TimedOut
            });
            let m = &hook.metrics;
            let counter = match verdict {
                Verdict::Allowed => &m.allowed,
                Verdict::Refused => &m.refused,
                Verdict::TimedOut => &m.timeout,
                Verdict::Unusable | Verdict::Unreachable | Verdict::NoWebhook => &m.error,
            };
            counter.increment(1);
            verdict
        }))
    }
}

/// What the webhook receives.
#[derive(Serialize)]
struct CheckBody<'a> {
    #[serde(rename = "type")]
    kind_of_body: &'static str,
    id: &'a str,
    app: &'a str,
    user: &'a str,
    topic: &'a str,
    device: &'a str,
    conn_id: u64,
    node: &'a str,
    ts_ms: u64,
}

/// What the webhook answers (other fields are ignored, for later versions).
#[derive(Deserialize)]
struct Reply {
    allow: bool,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

impl Hook {
    /// Waits for a place, POSTs the question, reads the answer and keeps it; the caller
    /// bounds the whole in time.
    async fn put(&self, q: &Question, key: Key) -> Verdict {
        // Never closed: a place always comes, or the deadline.
        let Ok(_place) = self.places.acquire().await else {
            return Verdict::Unreachable;
        };
        let t = &self.target;
        let post = t.post(EVENT, |id| body(q, id, &t.node));
        let answer = match self.poster.post_once(&post).await {
            Ok(answer) => answer,
            Err(reason) => {
                debug!(app = %t.app, delivery = %post.id, %reason, "permission check unanswered");
                return Verdict::Unreachable;
            }
        };
        let reply = match answer.status {
            200 => answer
                .body
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Reply>(b).ok()),
            _ => None,
        };
        let Some(reply) = reply else {
            debug!(app = %t.app, delivery = %post.id, status = answer.status, "permission check: no usable answer");
            return match answer.status {
                500.. => Verdict::Unreachable,
                _ => Verdict::Unusable,
            };
        };
        let kept = self.lifetime(&reply);
        if let Some(answers) = &self.answers
            && !kept.ttl.is_zero()
        {
            answers.insert(key, kept);
        }
        match reply.allow {
            true => Verdict::Allowed,
            false => Verdict::Refused,
        }
    }

    /// How long an answer is kept: its `ttl_ms` if it gave one, else the default for its
    /// kind; at most `max_ttl`.
    fn lifetime(&self, reply: &Reply) -> Kept {
        let s = &self.settings;
        let default = match reply.allow {
            true => s.allow_ttl,
            false => s.refuse_ttl,
        };
        let ttl = reply.ttl_ms.map_or(default, Duration::from_millis);
        Kept {
            allow: reply.allow,
            ttl: ttl.min(s.max_ttl),
        }
    }
}

/// The POST body of question `q`, delivery `id`.
fn body(q: &Question, id: &str, node: &NodeId) -> Bytes {
    let body = CheckBody {
        kind_of_body: EVENT,
        id,
        app: q.app.as_str(),
        user: q.user.as_str(),
        topic: q.topic.as_str(),
        device: q.device.as_str(),
        conn_id: q.conn.0,
        node: node.as_str(),
        ts_ms: tether_core::now_ms(),
    };
    // Serialising borrowed strings cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests;
