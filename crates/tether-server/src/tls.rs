//! The TLS listeners' certificates: read from PEM files, checked with the configuration, and
//! loaded again without a restart, at a reload and whenever their files change.
//!
//! rustls with ring: already in the tree (through the Redis client), built with a C compiler
//! alone, and its AES-GCM keys are no larger than aws-lc's. TLS 1.3 and 1.2 only, rustls'
//! cipher suites. A listener's rustls configuration is swapped whole: a handshake uses the one
//! in place when it starts, and connections keep the session they have.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{CertFiles, ClientAuth, Config, TlsConfig, TlsListener};

/// The problems with the certificates of every TLS listener `config` turns on.
pub fn problems(config: &Config) -> Vec<String> {
    TlsListener::ALL
        .into_iter()
        .filter(|l| enabled(config, *l))
        .filter_map(|l| server_config(&config.tls, l).err())
        .collect()
}

/// Whether `config` has an address for `listener`.
fn enabled(config: &Config, listener: TlsListener) -> bool {
    let address = match listener {
        TlsListener::Tls => &config.listen.tls,
        TlsListener::Wss => &config.listen.wss,
        TlsListener::Https => &config.listen.https,
        TlsListener::Mqtts => &config.listen.mqtts,
    };
    !address.is_empty()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration of `listener`, its files read now.
pub fn server_config(tls: &TlsConfig, listener: TlsListener) -> Result<ServerConfig, String> {
    let name = listener.name();
    let Some((files, setting)) = tls.files(listener) else {
        return Err(format!(
            "listen.{name} is set but no certificate is: set tls.cert and tls.key \
             (or tls.listeners.{name})"
        ));
    };
    let chain = read_certs(&files.cert).map_err(|e| format!("{setting}.cert: {e}"));
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "{setting}.key: cannot read a private key from {}: {e}",
            files.key.display()
        )
    });
    let (chain, key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
        (Err(cert), Err(key)) => return Err(format!("{cert}; {key}")),
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match (&tls.client_ca, listener) {
        (Some(ca), TlsListener::Https) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca).map_err(|e| format!("tls.client_ca: {e}"))? {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.client_ca ({}): {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
            let verifier = match tls.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("tls.client_ca ({}): {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{setting}: the certificate and key do not go together: {e}"))?;
    // The stream listeners (`tls`, `mqtts`) agree no ALPN protocol: one a client offers is
    // ignored rather than refused.
    if matches!(listener, TlsListener::Wss | TlsListener::Https) {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    // A client that comes back (a reconnect, a network change) resumes with a ticket sealed
    // by a key of this configuration's, rotated every 6 hours: no certificate and no signature
    // on either side, and no session kept per client here. One ticket per handshake: a client
    // reconnects one connection at a time.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("tls: {e}"))?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// The certificates of a PEM file: an error when it cannot be read or holds none.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// When a listener's files were last changed, as far as the file system says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64)>>);

impl Stamp {
    fn of(tls: &TlsConfig, listener: TlsListener) -> Stamp {
        let files = tls.files(listener).map(|(f, _)| f);
        let paths = files
            .iter()
            .flat_map(|CertFiles { cert, key }| [cert, key])
            .chain(
                tls.client_ca
                    .iter()
                    .filter(|_| listener == TlsListener::Https),
            );
        Stamp(
            paths
                .map(|p| {
                    let meta = fs::metadata(p).ok()?;
                    Some((meta.modified().ok()?, meta.len()))
                })
                .collect(),
        )
    }
}

/// One listener's certificate, swapped whole when it is loaded again.
#[derive(Debug)]
pub struct Certs {
    listener: TlsListener,
    config: ArcSwap<ServerConfig>,
    /// The files' stamp when they were last read (or last found unreadable, so that a broken
    /// file is reported once per change, not at every check).
    stamp: Mutex<Stamp>,
}

impl Certs {
    pub fn load(tls: &TlsConfig, listener: TlsListener) -> Result<Certs, String> {
        let stamp = Stamp::of(tls, listener);
        let config = server_config(tls, listener)?;
        Ok(Certs {
            listener,
            config: ArcSwap::from_pointee(config),
            stamp: Mutex::new(stamp),
        })
    }

    /// What a new handshake uses.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// What a new handshake with tokio-rustls uses (the HTTPS API).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// Puts a configuration read by [`server_config`] in place.
    fn swap(&self, config: ServerConfig, stamp: Stamp) {
        self.config.store(Arc::new(config));
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
    }

    /// Reads the files again if they changed since they were last read: `Some` with the
    /// outcome when they had.
    fn refresh(&self, tls: &TlsConfig) -> Option<Result<(), String>> {
        let stamp = Stamp::of(tls, self.listener);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == stamp {
                return None;
            }
            *last = stamp.clone();
        }
        Some(server_config(tls, self.listener).map(|config| self.swap(config, stamp)))
    }
}

/// The certificates of the node's TLS listeners.
#[derive(Debug, Default)]
pub struct TlsListeners {
    pub tls: Option<Arc<Certs>>,
    pub wss: Option<Arc<Certs>>,
    pub https: Option<Arc<Certs>>,
    pub mqtts: Option<Arc<Certs>>,
    /// The `[tls]` settings in force, which the watcher reads the files of.
    settings: Mutex<TlsConfig>,
}

/// New certificates read for a reload, put in place by [`TlsListeners::commit`].
#[derive(Debug)]
pub struct Prepared {
    settings: TlsConfig,
    configs: Vec<(Arc<Certs>, ServerConfig, Stamp)>,
}

impl TlsListeners {
    /// The certificates of every TLS listener `config` turns on.
    pub fn load(config: &Config) -> Result<TlsListeners, String> {
        let certs = |listener| {
            enabled(config, listener)
                .then(|| Certs::load(&config.tls, listener).map(Arc::new))
                .transpose()
        };
        Ok(TlsListeners {
            tls: certs(TlsListener::Tls)?,
            wss: certs(TlsListener::Wss)?,
            https: certs(TlsListener::Https)?,
            mqtts: certs(TlsListener::Mqtts)?,
            settings: Mutex::new(config.tls.clone()),
        })
    }

    fn each(&self) -> impl Iterator<Item = &Arc<Certs>> {
        [&self.tls, &self.wss, &self.https, &self.mqtts]
            .into_iter()
            .flatten()
    }

    /// Reads the certificates of `config` for the listeners that run (a listener turned on or
    /// off needs a restart); every problem, or what [`TlsListeners::commit`] puts in place.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, Vec<String>> {
        let mut configs = Vec::new();
        let mut problems = Vec::new();
        for certs in self.each() {
            let stamp = Stamp::of(&config.tls, certs.listener);
            match server_config(&config.tls, certs.listener) {
                Ok(server) => configs.push((certs.clone(), server, stamp)),
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Prepared {
            settings: config.tls.clone(),
            configs,
        })
    }

    /// Puts certificates read by [`TlsListeners::prepare`] in place.
    pub fn commit(&self, prepared: Prepared) {
        for (certs, config, stamp) in prepared.configs {
            certs.swap(config, stamp);
            info!(listener = certs.listener.name(), "TLS certificate loaded");
        }
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = prepared.settings;
    }

    /// Loads the certificates again whose files changed since they were read.
    pub fn refresh(&self) {
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for certs in self.each() {
            let listener = certs.listener.name();
            match certs.refresh(&settings) {
                None => {}
                Some(Ok(())) => {
                    crate::metrics::tls_reload(listener, true);
                    info!(listener, "TLS certificate files changed: loaded again");
                }
                Some(Err(e)) => {
                    crate::metrics::tls_reload(listener, false);
                    warn!(
                        listener,
                        problem = %e,
                        "TLS certificate files changed but cannot be loaded: the old \
                         certificate stays"
                    );
                }
            }
        }
    }

    /// Checks the files for changes every `interval` until `shutdown` (nothing when no TLS
    /// listener runs or the interval is zero).
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        if interval.is_zero() || self.each().next().is_none() {
            return;
        }
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let this = self.clone();
            // File system calls, off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || this.refresh()).await;
        }
    }
}
