//! Which node a command talks to, and with what: the configuration `tether serve` runs with
//! (`--config` or `TETHER_CONFIG`, plus the `TETHER_*` overrides), from which `token` takes an
//! app's secret and the API commands the HTTP address, the app's API key and the admin key,
//! unless given on the command line.
//!
//! These commands never create the demo app: with no app configured they read the one
//! `serve` keeps in its data directory, or fail and say where it was looked for (a secret
//! made up here would sign tokens no node accepts).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tether_server::Config;
use tether_server::config::{AppConfig, NoDemoApp};

/// The configuration a command reads.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArg {
    /// The node's configuration file, the one `tether serve` runs with, so that this command
    /// finds the same apps, secrets, keys and HTTP address from any directory. Without it: the
    /// built-in defaults, and the demo app that `serve` keeps in ./tether-data. `TETHER_*`
    /// environment overrides apply as they do for `serve`.
    #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// Loads the configuration, with the demo app `serve` saved when no app is configured.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        match config.with_saved_demo_app() {
            Ok(_) => Ok(config),
            Err(e) => match e.downcast_ref::<NoDemoApp>() {
                Some(missing) => Err(no_demo_app(self.config.as_deref(), &missing.path)),
                None => Err(e),
            },
        }
    }
}

/// The error for a demo app that is not where it was looked for, saying how to point the
/// command at the node's.
fn no_demo_app(config: Option<&Path>, path: &Path) -> anyhow::Error {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let given = match config {
        Some(file) => format!("{} configures no app", file.display()),
        None => "no --config (or TETHER_CONFIG) was given".to_owned(),
    };
    anyhow::Error::new(NoApp(format!(
        "{given}, and there is no demo app at {} (nothing was created: a new demo app would have \
         a secret and API key no running node knows). Give the configuration `tether serve` runs \
         with (--config FILE or TETHER_CONFIG), run this from the directory `serve` runs in, or \
         name serve's data directory with TETHER_NODE__DATA_DIR=DIR",
        path.display()
    )))
}

/// No app to act for: a configuration problem (`tether` exits with `EX_CONFIG`).
#[derive(Debug)]
pub struct NoApp(String);

impl std::fmt::Display for NoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoApp {}

/// The app `id` of `config`, or an error listing the apps there are.
pub fn app<'a>(config: &'a Config, id: &str) -> anyhow::Result<&'a AppConfig> {
    if let Some(app) = config.app(id) {
        return Ok(app);
    }
    let known: Vec<&str> = config.apps.iter().map(|a| a.id.as_str()).collect();
    let source = config.source.as_ref().map_or_else(
        || "the configuration".to_owned(),
        |p| p.display().to_string(),
    );
    Err(NoApp(format!(
        "app {id:?} is not configured in {source} (its apps: {})",
        known.join(", ")
    ))
    .into())
}

/// The node and credentials of an API command: each from the command line, or else from the
/// configuration, which is read only when something is missing.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Base URL of the node's HTTP API, e.g. http://127.0.0.1:7480 (default: the configuration's
    /// listen.http, a wildcard address asked on loopback).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

impl NodeArgs {
    /// A reader of this command's configuration, loaded at most once.
    pub fn resolver(&self) -> Resolver<'_> {
        Resolver {
            arg: &self.config,
            loaded: None,
        }
    }
}

/// Loads the configuration the first time a value has to come from it.
pub struct Resolver<'a> {
    arg: &'a ConfigArg,
    loaded: Option<Config>,
}

impl Resolver<'_> {
    pub fn config(&mut self) -> anyhow::Result<&Config> {
        if self.loaded.is_none() {
            self.loaded = Some(self.arg.load()?);
        }
        Ok(self.loaded.as_ref().expect("loaded above"))
    }

    /// The API's base URL: `url`, or the configuration's HTTP listener.
    pub fn base_url(&mut self, url: Option<&str>) -> anyhow::Result<reqwest::Url> {
        let text = match url {
            Some(url) => url.to_owned(),
            None => {
                let config = self.config()?;
                format!("http://{}", reachable(&config.listen.http)?)
            }
        };
        let url = reqwest::Url::parse(&text).with_context(|| format!("invalid --url {text:?}"))?;
        match url.scheme() {
            "http" => Ok(url),
            // This build's HTTP client has no TLS (the SDK's and the server's TLS are rustls with
            // ring; reqwest's TLS would bring a second crypto provider).
            "https" => bail!(
                "--url {text:?}: the tether CLI speaks plain HTTP only; use the node's http \
                 listener (listen.http) from a network you trust"
            ),
            _ => bail!("--url must be an http:// URL, got {text:?}"),
        }
    }

    /// `app`'s API key: `key`, or the app's `api_key` in the configuration.
    pub fn api_key(&mut self, app: &str, key: Option<&str>) -> anyhow::Result<String> {
        if let Some(key) = key {
            return Ok(key.to_owned());
        }
        let config = self.config()?;
        Ok(self::app(config, app)?.api_key.expose().to_owned())
    }

    /// The admin key: `key`, or `[admin] key` in the configuration.
    pub fn admin_key(&mut self, key: Option<&str>) -> anyhow::Result<String> {
        if let Some(key) = key {
            return Ok(key.to_owned());
        }
        match &self.config()?.admin.key {
            Some(key) => Ok(key.expose().to_owned()),
            None => bail!(
                "no admin key: give --admin-key (or TETHER_ADMIN_KEY), or the configuration \
                 that sets [admin] key"
            ),
        }
    }
}

/// Where a client reaches a listener bound to `listen`: a wildcard address (`0.0.0.0`, `[::]`)
/// is asked on loopback. Port 0 cannot be reached: the node picked a port only it knows.
pub fn reachable(listen: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("listen.http {listen:?} is not an address"))?;
    if addr.port() == 0 {
        bail!(
            "listen.http is {listen} (a port the node picks at start): give the node's --url, \
             which `tether serve` prints"
        );
    }
    Ok(loopback_if_wildcard(addr))
}

/// `addr`, with a wildcard IP replaced by loopback.
pub fn loopback_if_wildcard(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_asked_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:7480").unwrap().to_string(),
            "127.0.0.1:7480"
        );
        assert_eq!(reachable("[::]:7480").unwrap().to_string(), "[::1]:7480");
        assert_eq!(reachable("10.1.2.3:80").unwrap().to_string(), "10.1.2.3:80");
        let e = reachable("127.0.0.1:0").unwrap_err().to_string();
        assert!(e.contains("--url"), "{e}");
    }

    #[test]
    fn a_given_url_needs_no_configuration_and_must_be_plain_http() {
        // A configuration that cannot be read: never read when the URL is given.
        let args = NodeArgs {
            config: ConfigArg {
                config: Some("/nonexistent/tether.toml".into()),
            },
            url: None,
        };
        let mut resolve = args.resolver();
        let url = resolve
            .base_url(Some("http://h:7480/prefix"))
            .expect("a URL");
        assert_eq!(url.as_str(), "http://h:7480/prefix");
        let https = resolve
            .base_url(Some("https://h:1"))
            .unwrap_err()
            .to_string();
        assert!(https.contains("plain HTTP only"), "{https}");
        assert!(resolve.base_url(Some("ws://h:1")).is_err());
        assert!(resolve.base_url(Some("not a url")).is_err());
        assert_eq!(resolve.api_key("demo", Some("k")).unwrap(), "k");
        let e = format!("{:#}", resolve.base_url(None).unwrap_err());
        assert!(e.contains("/nonexistent/tether.toml"), "{e}");
    }

    #[test]
    fn a_missing_demo_app_is_an_error_that_creates_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let file = dir.path().join("tether.toml");
        let data_toml = toml_string(&data);
        std::fs::write(&file, format!("[node]\ndata_dir = {data_toml}\n")).unwrap();
        let arg = ConfigArg {
            config: Some(file.clone()),
        };
        let e = format!("{:#}", arg.load().expect_err("no demo app"));
        assert!(
            e.contains("configures no app") && e.contains("demo-app.toml"),
            "{e}"
        );
        assert!(!data.exists(), "nothing was created");
        let e = arg.load().expect_err("no demo app");
        assert!(e.downcast_ref::<NoApp>().is_some());
    }

    fn toml_string(path: &Path) -> String {
        serde_json::to_string(path.to_str().expect("UTF-8 path")).unwrap()
    }
}
