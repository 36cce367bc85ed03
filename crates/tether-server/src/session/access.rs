//! Who may do what in each app: the tokens it accepts, its topic rules and its API keys, built
//! from the configuration once and again at each reload, and shared by whoever checks them:
//! the handshake, the dispatcher, a connection's subscribes and refreshes, the API.
//!
//! A reload swaps the whole [`Access`] at once ([`Shared`]): a check sees the old rules or the
//! new ones, never half of each.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tether_core::AppId;
use tether_core::auth::TokenPolicy;

use super::permissions::TopicRules;
use crate::config::Config;

/// One app's rules.
#[derive(Debug)]
pub struct AppAccess {
    pub tokens: TokenPolicy,
    pub topics: TopicRules,
}

/// Every app's rules.
#[derive(Debug, Default)]
pub struct Access {
    /// The configured app id is shared by every connection of the app (an `Arc<str>`).
    apps: HashMap<AppId, AppAccess>,
    /// API key -> its app and label.
    keys: HashMap<String, (AppId, String)>,
}

/// The rules in force, swapped whole by a reload.
pub type Shared = Arc<ArcSwap<Access>>;

impl Access {
    /// The apps' rules, their public keys read from their files (a configuration that passed
    /// [`Config::validate`] reads cleanly; otherwise the first problem).
    pub fn new(config: &Config) -> Result<Access, String> {
        let leeway = config.gateway.token_leeway;
        let apps = config
            .apps
            .iter()
            .map(|app| {
                let tokens = app
                    .token_policy(leeway)
                    .map_err(|e| format!("apps.{}.{e}", app.id))?;
                let access = AppAccess {
                    tokens,
                    topics: TopicRules::new(&app.topics),
                };
                Ok((app.id.clone(), access))
            })
            .collect::<Result<_, String>>()?;
        let keys = config
            .apps
            .iter()
            .flat_map(|app| {
                app.keys()
                    .map(|(label, key)| (key.expose().to_owned(), (app.id.clone(), label)))
            })
            .collect();
        Ok(Access { apps, keys })
    }

    /// The rules of `config`, to be shared (and swapped by reloads).
    pub fn shared(config: &Config) -> Result<Shared, String> {
        Ok(Arc::new(ArcSwap::from_pointee(Access::new(config)?)))
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
