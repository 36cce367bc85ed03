//! Loading: the TOML file and the `TETHER_<SECTION>__<KEY>` environment overrides (read by
//! `collect.rs`), and the demo app generated into the data directory when no app is configured.

use std::path::{Path, PathBuf};

use super::{AppConfig, Config, ConfigError, collect};

impl Config {
    /// Reads `path` (or the defaults when `None`), applies `TETHER_*` environment overrides,
    /// and validates. Does not touch the data directory; see [`Config::with_demo_app`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] for a node that allows test modes (`tether serve --test-modes`; see
    /// [`Config::test_modes`]).
    pub fn load_allowing_test_modes(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::read(path, std::env::vars(), true)
    }

    /// [`Config::load`] with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::read(path, env, false)
    }

    /// Reads `path` with the environment `env` over it, and validates, allowing test modes
    /// with `test_modes`.
    pub(super) fn read(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        test_modes: bool,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::from(vec![format!("cannot read {}: {e}", path.display())])
                })?;
                let name = path.display().to_string();
                let mut config = collect::read(Some((&name, &text)), &env, test_modes)?;
                config.source = Some(path.to_owned());
                Ok(config)
            }
            None => collect::read(None, &env, test_modes),
        }
    }

    /// Parses a TOML document with no environment overrides (for tests and examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        collect::read(Some(("config", text)), &[], false)
    }

    /// When no app is configured, adds the `demo` app, whose secret and API key are generated
    /// on first use and kept in `<data_dir>/demo-app.toml`. Returns the app when it was added
    /// (so that the caller can print it).
    pub fn with_demo_app(&mut self) -> anyhow::Result<Option<AppConfig>> {
        self.demo_app(true)
    }

    /// [`Config::with_demo_app`] for the commands that talk to a running node (`tether
    /// token`, the API commands): when no app is configured, adds the demo app that `serve`
    /// saved, or fails with [`NoDemoApp`] rather than generating one that no node knows.
    pub fn with_saved_demo_app(&mut self) -> anyhow::Result<Option<AppConfig>> {
        self.demo_app(false)
    }

    /// Where the demo app is kept.
    pub fn demo_app_path(&self) -> PathBuf {
        self.node.data_dir.join("demo-app.toml")
    }

    fn demo_app(&mut self, create: bool) -> anyhow::Result<Option<AppConfig>> {
        if !self.apps.is_empty() {
            return Ok(None);
        }
        let path = self.demo_app_path();
        let app = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<AppConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
                return Err(NoDemoApp { path }.into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.node.data_dir)?;
                let text = format!(
                    "# Generated on first start because no app is configured. Delete to regenerate.\n\
                     id = \"demo\"\nsecret = \"{}\"\napi_key = \"tk_{}\"\n{DEMO_TOPICS}",
                    random_hex(32),
                    random_hex(24),
                );
                write_private(&path, &text)?;
                toml::from_str::<AppConfig>(&text)?
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        self.apps.push(app.clone());
        self.validate()?;
        Ok(Some(app))
    }
}

/// No app is configured and the demo app's file (`path`) does not exist: the node that would
/// have generated it has not run with this data directory.
#[derive(Debug, thiserror::Error)]
#[error("no app is configured, and there is no demo app in {}", path.display())]
pub struct NoDemoApp {
    pub path: PathBuf,
}

/// The demo app's topic rules: each user may join its own topic, and any topic with a
/// subscription token.
const DEMO_TOPICS: &str = "\n# Who may subscribe to what (docs/security.md): each user its own topic,\n\
# and any topic with a subscription token signed with the secret.\n\
[[topics]]\npattern = \"user.{user}\"\nallow = \"user\"\n\n\
[[topics]]\npattern = \"*\"\nallow = \"token\"\n";

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
