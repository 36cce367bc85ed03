//! The `[[apps]]` entries: the tenants, their credentials and their own rate settings.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tether_core::AppId;
use tether_core::auth::{FixedKeys, JwkKeys, TokenPolicy};

use super::RateConfig;
use super::de::duration;

/// A tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: AppId,
    /// Signs client tokens (JWT HS256).
    pub secret: Secret,
    /// Authenticates the business server on the HTTP API.
    pub api_key: Secret,
    /// More API keys of the app, each with an optional label: during a rotation, the new key
    /// is added here and the business moves to it before the old one is removed (a reload
    /// applies both steps without a restart).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
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
    /// Which client tokens the app accepts (default: HS256 signed with `secret`).
    #[serde(default)]
    pub tokens: TokenConfig,
    /// Who may subscribe to which topic: the first rule whose pattern matches decides, and a
    /// topic no rule matches is refused (with no rules, clients subscribe to nothing; the
    /// business's subscriptions through the API are always allowed). See `docs/security.md`.
    #[serde(default)]
    pub topics: Vec<TopicRule>,
}

/// One more API key of an app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub key: Secret,
    /// A name for logs (never the key itself), e.g. when it was issued or to whom.
    #[serde(default)]
    pub label: Option<String>,
}

/// `[apps.tokens]`: the tokens an app accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Tokens signed with the app's `secret` (HS256). Off: only `public_keys` and the JWKS
    /// keys sign tokens (subscription tokens too), and the secret signs webhook bodies only.
    pub hs256: bool,
    /// Public keys of an identity provider that signs tokens with RS256 or ES256.
    pub public_keys: Vec<PublicKeyConfig>,
    /// A JWKS file (an identity provider's key set): read at start and at each reload.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`https://` or `http://`), fetched at start, every `jwks_refresh`, and
    /// when a token names a kid the set does not hold (at most once a minute). See
    /// `crate::jwks`.
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again.
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    /// Tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Tokens must carry this `iss`.
    pub issuer: Option<String>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            hs256: true,
            public_keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(600),
            audience: None,
            issuer: None,
        }
    }
}

/// A public key that verifies tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// `RS256` or `ES256`.
    pub algorithm: String,
    /// A PEM file with the public key.
    pub file: PathBuf,
}

/// `[[apps.topics]]`: one topic rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// The topics it covers: text, `*` (any run of characters) and `{user}` (the subscribing
    /// user's id): `room.*`, `user.{user}`, `*`.
    pub pattern: String,
    /// Who may subscribe to them.
    pub allow: TopicAccess,
}

/// Who a topic rule lets subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicAccess {
    /// Any user bound to the app.
    Open,
    /// The user the pattern's `{user}` names.
    User,
    /// A user who sends a subscription token for the topic (signed with the app's secret).
    Token,
    /// A user the app's webhook allows when asked (a signed POST; see `docs/security.md`).
    /// The app needs a `webhook` URL.
    Webhook,
}

impl AppConfig {
    /// An app with the default rate settings.
    pub fn new(id: impl Into<AppId>, secret: Secret, api_key: Secret) -> Self {
        AppConfig {
            id: id.into(),
            secret,
            api_key,
            api_keys: Vec::new(),
            requests_per_sec: None,
            deliveries_per_sec: None,
            webhook: None,
            presence_events: false,
            tokens: TokenConfig::default(),
            topics: Vec::new(),
        }
    }

    /// Every API key of the app with its label: `api_key` first (labelled `api_key`), then
    /// `api_keys` (labelled by their label, or `api_keys[i]`).
    pub fn keys(&self) -> impl Iterator<Item = (String, &Secret)> {
        let first = std::iter::once(("api_key".to_owned(), &self.api_key));
        let more = self.api_keys.iter().enumerate().map(|(i, k)| {
            let label = k.label.clone().unwrap_or_else(|| format!("api_keys[{i}]"));
            (label, &k.key)
        });
        first.chain(more)
    }

    /// The tokens this app accepts, its public keys and JWKS file read from their files;
    /// `leeway` absorbs clock skew. The keys of `jwks_url` are added by the node
    /// (`session::access`), which fetches them.
    pub fn token_policy(&self, leeway: Duration) -> Result<TokenPolicy, String> {
        self.token_policy_and_skipped(leeway)
            .map(|(policy, _)| policy)
    }

    /// [`AppConfig::token_policy`] and the keys skipped from the JWKS file (for the log).
    pub(crate) fn token_policy_and_skipped(
        &self,
        leeway: Duration,
    ) -> Result<(TokenPolicy, Vec<String>), String> {
        let t = &self.tokens;
        let mut policy = TokenPolicy::hs256(self.secret.expose().as_bytes(), leeway)
            .with_audience(t.audience.clone())
            .with_issuer(t.issuer.clone());
        for (i, key) in t.public_keys.iter().enumerate() {
            let pem = std::fs::read(&key.file).map_err(|e| {
                format!(
                    "tokens.public_keys[{i}]: cannot read {}: {e}",
                    key.file.display()
                )
            })?;
            policy = policy
                .with_public_key(&key.algorithm, &pem)
                .map_err(|e| format!("tokens.public_keys[{i}] ({}): {e}", key.file.display()))?;
        }
        let mut skipped = Vec::new();
        if let Some(path) = &t.jwks_file {
            let json = std::fs::read(path)
                .map_err(|e| format!("tokens.jwks_file: cannot read {}: {e}", path.display()))?;
            let parsed = JwkKeys::parse(&json)
                .map_err(|e| format!("tokens.jwks_file ({}): {e}", path.display()))?;
            policy = policy.with_jwks(Arc::new(FixedKeys(Arc::new(parsed.keys))));
            skipped = parsed.skipped;
        }
        if !t.hs256 {
            policy = policy.without_hs256();
        }
        Ok((policy, skipped))
    }

    /// What is wrong with the app's tokens and topic rules (its keys are read).
    pub fn access_problems(&self, leeway: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        let t = &self.tokens;
        if !t.hs256 && t.public_keys.is_empty() && t.jwks_file.is_none() && t.jwks_url.is_none() {
            problems.push(
                "tokens: hs256 is off and no public key, jwks_file or jwks_url is given: no \
                 token would verify"
                    .into(),
            );
        }
        for (name, value) in [("audience", &t.audience), ("issuer", &t.issuer)] {
            if value.as_deref() == Some("") {
                problems.push(format!(
                    "tokens.{name} must not be empty (leave it out instead)"
                ));
            }
        }
        if let Some(url) = &t.jwks_url
            && let Err(e) = crate::jwks::check_url(url)
        {
            problems.push(format!("tokens.jwks_url: {e}"));
        }
        if t.jwks_refresh < Duration::from_secs(1) || t.jwks_refresh > Duration::from_secs(86_400) {
            problems.push("tokens.jwks_refresh must be between 1s and 1d".into());
        }
        if let Err(e) = self.token_policy(leeway) {
            problems.push(e);
        }
        for (i, rule) in self.topics.iter().enumerate() {
            if rule.pattern.is_empty() {
                problems.push(format!("topics[{i}].pattern must not be empty"));
            }
            if rule.allow == TopicAccess::User && !rule.pattern.contains("{user}") {
                problems.push(format!(
                    "topics[{i}]: a `user` rule's pattern must contain {{user}} ({:?} does not)",
                    rule.pattern
                ));
            }
            if rule.allow == TopicAccess::Webhook && self.webhook.is_none() {
                problems.push(format!(
                    "topics[{i}]: a `webhook` rule needs the app's `webhook` URL to ask"
                ));
            }
        }
        problems
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

/// A string that never appears in logs or `Debug` output, nor in a configuration problem
/// (its reader is in `de.rs`).
#[derive(Clone, PartialEq, Eq)]
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
