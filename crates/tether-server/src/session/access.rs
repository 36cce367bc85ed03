//! Who may do what in each app: the tokens it accepts, its topic rules and its API keys, built
//! from the configuration once and again at each reload, and shared by whoever checks them:
//! the handshake, the dispatcher, a connection's subscribes and refreshes, the API.
//!
//! A reload swaps the whole [`Access`] at once ([`Shared`]): a check sees the old rules or the
//! new ones, never half of each. The keys of the apps' JWKS URLs are the exception: each
//! changes on its own, in place, when its refresher fetches a new set (`crate::jwks`); the
//! rules hold the refreshers, so that releasing old rules stops theirs.
//! The `webhook` rule's askers are part of the rules: a reload makes new ones (with the app's
//! webhook URL, secret and `[webhook.permission]` in force) and forgets every cached answer,
//! which the old rules may have given.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tether_core::AppId;
use tether_core::auth::TokenPolicy;
use tokio_util::sync::CancellationToken;

use super::ask::Asker;
use super::permissions::TopicRules;
use crate::config::Config;
use crate::jwks::{Refreshers, RemoteKeys, fetch};

/// One app's rules.
#[derive(Debug)]
pub struct AppAccess {
    pub tokens: TokenPolicy,
    pub topics: TopicRules,
    /// Asks the app's webhook, for its `webhook` rules (`None`: it has none).
    pub webhook: Option<Arc<dyn Asker>>,
}

/// Every app's rules.
#[derive(Debug)]
pub struct Access {
    /// The configured app id is shared by every connection of the app (an `Arc<str>`).
    apps: HashMap<AppId, AppAccess>,
    /// API key -> its app and label.
    keys: HashMap<String, (AppId, String)>,
    /// What keeps the apps' JWKS URLs fresh (shared with the rules a reload makes of these).
    refreshers: Refreshers,
    /// Each app's JWKS URL keys, also held by its token policy.
    remote: HashMap<AppId, Arc<RemoteKeys>>,
    /// What made the `webhook` rules' askers, for the rules a reload makes of these.
    make_askers: MakeAskers,
}

/// The rules in force, swapped whole by a reload.
pub type Shared = Arc<ArcSwap<Access>>;

/// Makes the askers of the apps' `webhook` rules for a configuration. The node hands in the
/// webhook role's (`crate::webhook::permission::askers`): the session's rules do not reach
/// into the roles.
pub type MakeAskers = fn(&Config) -> Result<HashMap<AppId, Arc<dyn Asker>>, String>;

/// No askers: a `webhook` rule refuses (rules built without the webhook role, in tests).
fn no_askers(_: &Config) -> Result<HashMap<AppId, Arc<dyn Asker>>, String> {
    Ok(HashMap::new())
}

impl Access {
    /// The apps' rules, their public keys read from their files (a configuration that passed
    /// [`Config::validate`] reads cleanly; otherwise the first problem). JWKS URLs are fetched
    /// in the background until the rules are dropped.
    /// The `webhook` rules have no askers (they refuse): see [`Access::with_askers`].
    pub fn new(config: &Config) -> Result<Access, String> {
        Access::with_askers(config, no_askers)
    }

    /// [`Access::new`], with the askers `make_askers` makes for the `webhook` rules.
    pub fn with_askers(config: &Config, make_askers: MakeAskers) -> Result<Access, String> {
        let refreshers = Refreshers::new(CancellationToken::new());
        Access::build(config, refreshers, None, make_askers)
    }

    /// The rules of `config`, to be shared (and swapped by reloads).
    pub fn shared(config: &Config) -> Result<Shared, String> {
        Ok(Arc::new(ArcSwap::from_pointee(Access::new(config)?)))
    }

    /// The rules of a starting node, to be shared: each JWKS URL is fetched once before this
    /// returns (all at once, each within [`fetch::TIMEOUT`]; a URL that fails leaves its
    /// app's JWKS tokens refused until a later fetch succeeds), then kept fresh until `stop`.
    /// `make_askers` makes the `webhook` rules' askers, now and at every reload.
    pub async fn start(
        config: &Config,
        stop: CancellationToken,
        make_askers: MakeAskers,
    ) -> Result<Shared, String> {
        let access = Access::build(config, Refreshers::new(stop), None, make_askers)?;
        let first = access.remote.values().map(|keys| keys.settled());
        let bound = fetch::TIMEOUT + Duration::from_secs(1);
        let _ = tokio::time::timeout(bound, futures_util::future::join_all(first)).await;
        Ok(Arc::new(ArcSwap::from_pointee(access)))
    }

    /// The rules of `config` for a reload that replaces these: each JWKS URL gets a new
    /// refresher that fetches at once, starting from the keys these rules have for the same
    /// app and URL.
    pub fn reloaded(&self, config: &Config) -> Result<Access, String> {
        let previous = Some(&self.remote);
        Access::build(config, self.refreshers.clone(), previous, self.make_askers)
    }

    fn build(
        config: &Config,
        refreshers: Refreshers,
        previous: Option<&HashMap<AppId, Arc<RemoteKeys>>>,
        make_askers: MakeAskers,
    ) -> Result<Access, String> {
        let leeway = config.gateway.token_leeway;
        let mut askers = make_askers(config)?;
        let mut apps = HashMap::new();
        let mut remote = HashMap::new();
        for app in &config.apps {
            let (mut tokens, skipped) = app
                .token_policy_and_skipped(leeway)
                .map_err(|e| format!("apps.{}.{e}", app.id))?;
            for skipped in skipped {
                tracing::warn!(app = %app.id, "JWKS file key {skipped}");
            }
            let t = &app.tokens;
            if let Some(url) = &t.jwks_url {
                let seed = previous
                    .and_then(|p| p.get(&app.id))
                    .filter(|keys| keys.is_for(url))
                    .and_then(|keys| keys.current());
                let keys = refreshers
                    .start(&app.id, url, t.jwks_refresh, seed)
                    .map_err(|e| format!("apps.{}.tokens.jwks_url: {e}", app.id))?;
                tokens = tokens.with_jwks(keys.clone());
                remote.insert(app.id.clone(), keys);
            }
            let access = AppAccess {
                tokens,
                topics: TopicRules::new(&app.topics),
                webhook: askers.remove(&app.id),
            };
            apps.insert(app.id.clone(), access);
        }
        let keys = config
            .apps
            .iter()
            .flat_map(|app| {
                app.keys()
                    .map(|(label, key)| (key.expose().to_owned(), (app.id.clone(), label)))
            })
            .collect();
        Ok(Access {
            apps,
            keys,
            refreshers,
            remote,
            make_askers,
        })
    }

    /// The app an API key belongs to, with the key's label.
    pub fn key(&self, key: &str) -> Option<(&AppId, &str)> {
        self.keys.get(key).map(|(app, label)| (app, label.as_str()))
    }

    /// The configured apps.
    pub fn app_ids(&self) -> impl Iterator<Item = &AppId> {
        self.apps.keys()
    }

    /// The app named `id`, with its configured (shared) id.
    pub fn app(&self, id: &str) -> Option<(&AppId, &AppAccess)> {
        self.apps.get_key_value(id)
    }
}
