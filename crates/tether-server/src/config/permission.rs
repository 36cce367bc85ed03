//! `[webhook.permission]`: how the `webhook` topic rule asks an app's business whether a user
//! may subscribe (kept apart from `sections.rs`, whose `[webhook]` holds it as one key). The
//! checks of these keys are in `validate.rs`.

use std::time::Duration;

use serde::Deserialize;

use super::de::duration;

/// `[webhook.permission]`: the `webhook` rule's questions, their deadline and their cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionConfig {
    /// How long a subscribe waits for the app's answer, a free place among `concurrency`
    /// included. Past it the subscribe is refused with 4301 (retry later): the check fails
    /// closed.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Checks of one app POSTed at once (over all its connections); more wait for a place
    /// within their `timeout`, so that a reconnect storm cannot open a connection to the
    /// business per subscriber.
    pub concurrency: usize,
    /// Answers kept, over all apps; the oldest go first past it. 0 keeps none: every
    /// subscribe asks.
    pub cache_size: u64,
    /// How long an `allow` is kept when the answer names no `ttl_ms`.
    #[serde(deserialize_with = "duration")]
    pub allow_ttl: Duration,
    /// How long a refusal is kept when the answer names no `ttl_ms`.
    #[serde(deserialize_with = "duration")]
    pub refuse_ttl: Duration,
    /// The longest `ttl_ms` an answer may ask for: longer ones are cut to this.
    #[serde(deserialize_with = "duration")]
    pub max_ttl: Duration,
}

impl Default for PermissionConfig {
    fn default() -> Self {
        PermissionConfig {
            timeout: Duration::from_secs(2),
            concurrency: 32,
            cache_size: 10_000,
            allow_ttl: Duration::from_secs(60),
            refuse_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(600),
        }
    }
}
