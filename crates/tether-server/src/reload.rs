//! Reading the configuration again without a restart (SIGHUP, `POST /v1/admin/reload`).
//!
//! A reload reads the file the node started from (and the environment) again, checks all of
//! it, and either keeps the old configuration and reports every problem, or applies at once:
//!
//! - each app's secret, API keys, token policy and topic rules (a new [`Access`] swapped
//!   whole: the next connect, subscribe, refresh or API request sees the new rules; removed
//!   keys stop working at once), and with the rules the `webhook` rule's checks: the app's
//!   webhook URL and secret as they are now, `[webhook.permission]`, an empty cache;
//! - apps added (their fan-out starts; their connections may bind) and apps removed (their
//!   connections are closed with 4210 `app_removed`, their keys stop working);
//! - each app's API request rate;
//! - the TCP and WebSocket listeners' access lists, per-IP rates and origins (the next
//!   accepted connection meets them), and the HTTP API's address lists and origins (the next
//!   request meets them: `crate::api::guarded`, [`Cors`]);
//! - the WebSocket listeners' affinity cookie (`listen.affinity_cookie*`: the next upgrade or
//!   stream answered sets the new one);
//! - the TLS listeners' certificates and keys, and the HTTPS API's client CA (the next
//!   handshake uses them; connections keep their sessions). The files are also read again
//!   whenever they change (`tls.watch_interval`).
//!
//! Everything else (listen addresses, limits, the store, the
//! cluster, webhooks, fan-out pacing, the admin key, the logs) is read at start only: a reload
//! that changes it says which settings need a restart, and applies the rest.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tether_core::ConnId;
use tether_proto::Code;

use crate::api::ops::Reload;
use crate::api::{Api, Cors};
use crate::config::{AppConfig, Config};
use crate::edge::Guards;
use crate::fanout::Fanout;
use crate::gateway::Gateway;
use crate::gateway::affinity::Affinity;
use crate::link::Links;
use crate::session::access::{Access, Shared};
use crate::tls::TlsListeners;

/// What a reload changed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reloaded {
    /// The apps now configured.
    pub apps: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Connections closed because their app was removed.
    pub closed: usize,
    /// Changed settings that only a restart applies (`listen`, `apps[chat].webhook`, ...).
    pub restart_needed: Vec<String>,
}

/// Applies reloaded configurations to a running node.
#[derive(Debug)]
pub struct Reloader {
    /// The configuration in force (what the next reload is compared with). Held from a
    /// reload's first read to its last swap, so that two reloads (a SIGHUP and the admin
    /// route) apply one after the other and the newer reading last.
    current: Mutex<Config>,
    access: Shared,
    api: Arc<Api>,
    fanout: Arc<Fanout>,
    gateway: Arc<Gateway>,
    certs: Arc<TlsListeners>,
    cors: Arc<Cors>,
}

impl Reloader {
    pub fn new(
        config: Config,
        access: Shared,
        api: Arc<Api>,
        fanout: Arc<Fanout>,
        gateway: Arc<Gateway>,
        certs: Arc<TlsListeners>,
        cors: Arc<Cors>,
    ) -> Self {
        Reloader {
            current: Mutex::new(config),
            access,
            api,
            fanout,
            gateway,
            certs,
            cors,
        }
    }

    /// Reads the configuration again from where the node's came from, and applies it; or
    /// keeps the old one and returns every problem.
    pub fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let mut current = self.lock();
        let source = current.source.clone();
        // Test modes stay allowed in a node started with them.
        let load = match current.test_modes {
            true => Config::load_allowing_test_modes,
            false => Config::load,
        };
        let mut config = load(source.as_deref()).map_err(|e| {
            e.problems()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        })?;
        config.with_demo_app().map_err(|e| vec![format!("{e:#}")])?;
        self.apply_to(&mut current, config)
    }

    /// Applies `config` (checked again here), or keeps the old one and returns every problem.
    pub fn apply(&self, config: Config) -> Result<Reloaded, Vec<String>> {
        let mut current = self.lock();
        self.apply_to(&mut current, config)
    }

    fn apply_to(&self, current: &mut Config, mut config: Config) -> Result<Reloaded, Vec<String>> {
        // Whether test modes are allowed is the node's to say, not the new configuration's.
        config.test_modes = current.test_modes;
        if let Err(e) = config.validate() {
            return Err(e.problems().iter().map(ToString::to_string).collect());
        }
        // The gateway's sweep keeps the leeway it started with (`gateway` needs a restart):
        // tokens are checked with that one everywhere until then.
        let mut rules = config.clone();
        rules.gateway.token_leeway = current.gateway.token_leeway;
        let access = Access::reloaded(&self.access.load(), &rules).map_err(|e| vec![e])?;
        let guards = Guards::new(&config.listen).map_err(|e| vec![e])?;
        let certs = self.certs.prepare(&config)?;
        let before: BTreeSet<&str> = current.apps.iter().map(|a| a.id.as_str()).collect();
        let after: BTreeSet<&str> = config.apps.iter().map(|a| a.id.as_str()).collect();
        let added: Vec<String> = after.difference(&before).map(|s| s.to_string()).collect();
        let removed: Vec<String> = before.difference(&after).map(|s| s.to_string()).collect();
        let restart_needed = restart_needed(current, &config);

        // New apps can be served before anyone may bind to them; then the rules swap.
        self.fanout.add_apps(&config);
        self.api.reload(&config);
        self.access.store(Arc::new(access));
        self.gateway.set_guards(guards.tcp, guards.ws);
        // The running node's id (a new one needs a restart).
        let affinity = Affinity::new(&config.listen, self.gateway.node.as_str());
        self.gateway.set_affinity(affinity);
        self.gateway.set_mqtt_guard(guards.mqtt);
        // The HTTP guard: its address lists for every route, its origins for the
        // client-facing routes' CORS.
        self.cors.reload(guards.http);
        self.certs.commit(certs);
        let mut closed = 0;
        for app in current
            .apps
            .iter()
            .filter(|a| removed.contains(&a.id.to_string()))
        {
            let links: &dyn Links = &*self.gateway.table;
            let conns: Vec<ConnId> = links
                .snapshot(Some(&app.id))
                .iter()
                .map(|link| link.id())
                .collect();
            let reason = format!("app {} was removed from the configuration", app.id);
            closed += links.disconnect(&conns, Code::APP_REMOVED, &reason);
        }
        let reloaded = Reloaded {
            apps: after.iter().map(|s| s.to_string()).collect(),
            added,
            removed,
            closed,
            restart_needed,
        };
        *current = config;
        Ok(reloaded)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Config> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reload for Reloader {
    fn reload(&self) -> Result<serde_json::Value, Vec<String>> {
        let reloaded = Reloader::reload(self)?;
        tracing::info!(?reloaded, "configuration reloaded");
        Ok(serde_json::to_value(reloaded).unwrap_or_default())
    }
}

/// The settings that differ between `old` and `new` and that only a restart applies.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    // Compared by their `Debug` text: every section derives it, and secrets print redacted
    // (a changed admin key is caught by comparing it directly).
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut out = Vec::new();
    // The access lists of every listener and the affinity cookie are reloaded; the rest of
    // `listen` is not.
    let listen = |c: &Config| {
        let mut l = c.listen.clone();
        l.tcp_access = Default::default();
        l.ws_access = Default::default();
        l.mqtt_access = Default::default();
        l.http_access = Default::default();
        l.affinity_cookie = Default::default();
        l.affinity_cookie_same_site = crate::config::SameSite::Lax;
        l.affinity_cookie_secure = false;
        l
    };
    // Permission checks are built with the rules, and reloaded with them.
    let webhook = |c: &Config| {
        let mut w = c.webhook.clone();
        w.permission = Default::default();
        w
    };
    let sections: [(&str, &dyn std::fmt::Debug, &dyn std::fmt::Debug); 11] = [
        ("node", &old.node, &new.node),
        ("listen", &listen(old), &listen(new)),
        ("limits", &old.limits, &new.limits),
        ("gateway", &old.gateway, &new.gateway),
        ("store", &old.store, &new.store),
        ("webhook", &webhook(old), &webhook(new)),
        ("dispatch", &old.dispatch, &new.dispatch),
        ("cluster", &old.cluster, &new.cluster),
        ("log", &old.log, &new.log),
        ("mqtt", &old.mqtt, &new.mqtt),
        (
            "rate (fan-out pacing)",
            &(old.rate.deliveries_per_sec, old.rate.deliveries_burst),
            &(new.rate.deliveries_per_sec, new.rate.deliveries_burst),
        ),
    ];
    for (name, a, b) in sections {
        if differs(a, b) {
            out.push(name.to_owned());
        }
    }
    let admin_key = |c: &Config| c.admin.key.as_ref().map(|k| k.expose().to_owned());
    if admin_key(old) != admin_key(new) {
        out.push("admin.key".to_owned());
    }
    for app in &new.apps {
        let fixed = |a: &AppConfig| (a.webhook.clone(), a.presence_events, a.deliveries_per_sec);
        match old.app(app.id.as_str()) {
            Some(was) if fixed(was) != fixed(app) => {
                out.push(format!(
                    "apps[{}] (webhook, presence_events or deliveries_per_sec)",
                    app.id
                ));
            }
            None if app.webhook.is_some() => {
                out.push(format!("apps[{}].webhook (a new app's webhook)", app.id));
            }
            _ => {}
        }
    }
    out
}
