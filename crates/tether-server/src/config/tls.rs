//! `[tls]`: the certificates of the TLS listeners (`listen.tls`, `listen.wss`,
//! `listen.https`, `listen.mqtts`). The files are read by `crate::tls`, at start, at a reload, and whenever they
//! change.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de::duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain in PEM, the server's certificate first, for every TLS listener
    /// without one of its own in `[tls.listeners]`.
    pub cert: Option<PathBuf>,
    /// Its private key in PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// How often the certificate and key files are checked for a change, which is then
    /// loaded without a restart (a renewal by certbot or cert-manager). 0: only at a reload.
    #[serde(deserialize_with = "duration")]
    pub watch_interval: Duration,
    /// The HTTPS API only: CA certificates in PEM whose client certificates the API accepts
    /// (mutual TLS). Unset: no client certificates are asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `required` (a client without a certificate signed by it cannot
    /// connect) or `optional` (one with a certificate must have a good one). API keys are
    /// still needed on every request either way.
    pub client_auth: ClientAuth,
    /// Another certificate for one listener.
    pub listeners: TlsListeners,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            watch_interval: Duration::from_secs(10),
            client_ca: None,
            client_auth: ClientAuth::Required,
            listeners: TlsListeners::default(),
        }
    }
}

/// `[tls.listeners.<name>]`: certificates of their own, by listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListeners {
    pub tls: Option<CertFiles>,
    pub wss: Option<CertFiles>,
    pub https: Option<CertFiles>,
    pub mqtts: Option<CertFiles>,
}

/// A certificate chain and its key, in PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether the HTTPS API asks for client certificates it can do without.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// A TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsListener {
    /// Raw TCP frames in TLS (`listen.tls`, `tls://`).
    Tls,
    /// WebSocket in TLS (`listen.wss`, `wss://`).
    Wss,
    /// The HTTP API in TLS (`listen.https`).
    Https,
    /// MQTT in TLS (`listen.mqtts`, `mqtts://`).
    Mqtts,
}

impl TlsListener {
    pub const ALL: [TlsListener; 4] = [
        TlsListener::Tls,
        TlsListener::Wss,
        TlsListener::Https,
        TlsListener::Mqtts,
    ];

    /// Its name in `listen` and `[tls.listeners]`, and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            TlsListener::Tls => "tls",
            TlsListener::Wss => "wss",
            TlsListener::Https => "https",
            TlsListener::Mqtts => "mqtts",
        }
    }
}

impl TlsConfig {
    /// The files `listener` serves, and the setting that names them (for problems); `None`
    /// when neither `[tls]` nor `[tls.listeners]` has a certificate for it.
    pub fn files(&self, listener: TlsListener) -> Option<(CertFiles, String)> {
        let own = match listener {
            TlsListener::Tls => &self.listeners.tls,
            TlsListener::Wss => &self.listeners.wss,
            TlsListener::Https => &self.listeners.https,
            TlsListener::Mqtts => &self.listeners.mqtts,
        };
        if let Some(own) = own {
            return Some((own.clone(), format!("tls.listeners.{}", listener.name())));
        }
        let files = CertFiles {
            cert: self.cert.clone()?,
            key: self.key.clone()?,
        };
        Some((files, "tls".into()))
    }
}
