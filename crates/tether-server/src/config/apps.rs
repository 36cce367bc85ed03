//! The `[[apps]]` entries: the tenants, their credentials and their own rate settings.

use std::fmt;

use serde::Deserialize;
use tether_core::AppId;

use super::RateConfig;

/// A tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: AppId,
    /// Signs client tokens (JWT HS256).
    pub secret: Secret,
    /// Authenticates the business server on the HTTP API.
    pub api_key: Secret,
    /// Overrides `rate.requests_per_sec` for this app.
    #[serde(default)]
    pub requests_per_sec: Option<u32>,
    /// Overrides `rate.deliveries_per_sec` for this app.
    #[serde(default)]
    pub deliveries_per_sec: Option<u32>,
    /// Where upstream data and presence events of this app are POSTed (`http://...`). None:
    /// upstream frames are answered `error` 4303.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Send `online` / `offline` events to the webhook when a user's first connection on this
    /// node opens and its last one closes.
    #[serde(default)]
    pub presence_events: bool,
}

impl AppConfig {
    /// An app with the default rate settings.
    pub fn new(id: impl Into<AppId>, secret: Secret, api_key: Secret) -> Self {
        AppConfig {
            id: id.into(),
            secret,
            api_key,
            requests_per_sec: None,
            deliveries_per_sec: None,
            webhook: None,
            presence_events: false,
        }
    }

    /// This app's rate settings: the defaults of `[rate]` with the app's overrides.
    pub fn rate(&self, defaults: &RateConfig) -> RateConfig {
        RateConfig {
            requests_per_sec: self.requests_per_sec.unwrap_or(defaults.requests_per_sec),
            deliveries_per_sec: self
                .deliveries_per_sec
                .unwrap_or(defaults.deliveries_per_sec),
            ..*defaults
        }
    }
}

/// A string that never appears in logs or `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
