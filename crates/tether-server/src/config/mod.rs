//! Configuration: one typed tree, defaults in code, TOML file, environment overrides, validated
//! before start with every problem reported at once.
//!
//! Environment overrides: `TETHER_<SECTION>__<KEY>=value`, e.g. `TETHER_LISTEN__TCP=0.0.0.0:7400`
//! or `TETHER_LIMITS__MAX_CONNECTIONS=50000`. The value is read as a TOML value when it parses
//! as one (numbers, booleans) and as a string otherwise, or when its key refuses the TOML value
//! (`TETHER_ADMIN__KEY=1234...` is a string).
//!
//! # Layout
//!
//! - `sections.rs`: the `[section]` tables, each key with its documentation and its default.
//! - `tls.rs`: `[tls]`, the TLS listeners' certificates.
//! - `permission.rs`: `[webhook.permission]`, the `webhook` topic rule's settings.
//! - `apps.rs`: the `[[apps]]` entries (tenants) and [`Secret`], redacted in `Debug`.
//! - `load.rs`: reading the file, the demo app.
//! - `collect.rs`: the file and the `TETHER_*` overrides into a [`Config`], every problem at
//!   once, each placed at its line or variable.
//! - `problem.rs`: [`ConfigError`] and its [`Problem`]s, in an operator's words.
//! - `validate.rs`: [`Config::validate`], every check of every key.
//! - `de.rs`: how durations and number-like strings are read.

mod apps;
mod collect;
mod de;
mod load;
mod mqtt;
mod permission;
mod problem;
mod sections;
#[cfg(test)]
mod tests;
mod tls;
mod validate;

use serde::Deserialize;
use tether_core::AppId;

pub use apps::{
    ApiKeyConfig, AppConfig, PublicKeyConfig, Secret, TokenConfig, TopicAccess, TopicRule,
};
pub use de::parse_duration;
pub use load::NoDemoApp;
pub use mqtt::MqttConfig;
pub use permission::PermissionConfig;
pub use problem::{ConfigError, Place, Problem};
pub use sections::{
    AccessConfig, AdminConfig, ClusterConfig, DEFAULT_LOG_FILTER, DispatchConfig, Durability,
    GatewayConfig, Limits, ListenConfig, LogConfig, LogFormat, NodeConfig, PROFILE_MAX_SECONDS,
    RateConfig, SameSite, StoreBackend, StoreConfig, WebhookConfig,
};
pub use tls::{CertFiles, ClientAuth, TlsConfig, TlsListener, TlsListeners};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub listen: ListenConfig,
    pub limits: Limits,
    pub gateway: GatewayConfig,
    pub mqtt: MqttConfig,
    pub store: StoreConfig,
    pub rate: RateConfig,
    pub apps: Vec<AppConfig>,
    pub webhook: WebhookConfig,
    pub dispatch: DispatchConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    /// The file this configuration was read from, read again by a reload (none: the defaults
    /// and the environment).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
    /// Whether test modes ([`GatewayConfig::ws_echo`]) may be on: set by `tether serve
    /// --test-modes` and by tests, never by a file or the environment, so that a
    /// configuration cannot turn one on by itself.
    #[serde(skip)]
    pub test_modes: bool,
}

impl Config {
    pub fn app(&self, id: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.id.as_str() == id)
    }

    /// A configuration for tests: every listener on 127.0.0.1 port 0, one app `demo` with a
    /// fixed secret and key, a data directory under the system's temp dir.
    pub fn for_tests() -> Config {
        let mut config = Config::default();
        config.listen.tcp = "127.0.0.1:0".into();
        config.listen.mqtt = "127.0.0.1:0".into();
        config.listen.ws = "127.0.0.1:0".into();
        config.listen.http = "127.0.0.1:0".into();
        config.node.data_dir = std::env::temp_dir().join("tether-tests");
        // Tests share one data directory: keep their inboxes apart.
        config.store.backend = StoreBackend::Memory;
        let mut demo = AppConfig::new(
            AppId::from("demo"),
            Secret::new("demo-secret-0123456789"),
            Secret::new("demo-api-key-0123456789"),
        );
        // Tests subscribe to any topic unless they set rules of their own.
        demo.topics.push(TopicRule {
            pattern: "*".into(),
            allow: TopicAccess::Open,
        });
        config.apps.push(demo);
        config
    }
}

/// A commented example configuration, printed by `tether config example`.
pub const EXAMPLE: &str = include_str!("../../../../docs/tether.example.toml");
