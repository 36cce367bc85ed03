//! Who may do what in each app: the tokens it accepts and its topic rules, built from the
//! configuration once (and again at each reload) and shared by whoever checks them: the
//! handshake, the dispatcher, a connection's subscribes and refreshes.

use std::collections::HashMap;

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
}

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
        Ok(Access { apps })
    }

    /// The app named `id`, with its configured (shared) id.
    pub fn app(&self, id: &str) -> Option<(&AppId, &AppAccess)> {
        self.apps.get_key_value(id)
    }
}
