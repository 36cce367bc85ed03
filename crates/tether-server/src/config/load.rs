//! Loading: the TOML file, the `TETHER_<SECTION>__<KEY>` environment overrides, and the demo
//! app generated into the data directory when no app is configured.

use std::path::Path;

use super::{AppConfig, Config, ConfigError};

impl Config {
    /// Reads `path` (or the defaults when `None`), applies `TETHER_*` environment overrides,
    /// and validates. Does not touch the data directory; see [`Config::with_demo_app`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(vec![format!("cannot read {}: {e}", path.display())])
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(vec![e.message().to_owned()]))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document with no environment overrides (for tests and examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError(vec![e.message().to_owned()]))?;
        config.validate()?;
        Ok(config)
    }

    /// When no app is configured, adds the `demo` app, whose secret and API key are generated
    /// on first use and kept in `<data_dir>/demo-app.toml`. Returns the app when it was added
    /// (so that the caller can print it).
    pub fn with_demo_app(&mut self) -> anyhow::Result<Option<AppConfig>> {
        if !self.apps.is_empty() {
            return Ok(None);
        }
        let path = self.node.data_dir.join("demo-app.toml");
        let app = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<AppConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
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

/// The demo app's topic rules: each user may join its own topic, and any topic with a
/// subscription token.
const DEMO_TOPICS: &str = "\n# Who may subscribe to what (docs/security.md): each user its own topic,\n\
# and any topic with a subscription token signed with the secret.\n\
[[topics]]\npattern = \"user.{user}\"\nallow = \"user\"\n\n\
[[topics]]\npattern = \"*\"\nallow = \"token\"\n";

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for (key, value) in env {
        let Some(path) = key.strip_prefix("TETHER_") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if parts.len() != 2 || parts.iter().any(String::is_empty) {
            // TETHER_CONFIG and similar are CLI variables, not overrides.
            if path.contains("__") {
                problems.push(format!("{key}: expected TETHER_<SECTION>__<KEY>"));
            }
            continue;
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let section = table
            .entry(parts[0].clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section.as_table_mut() {
            Some(section) => {
                section.insert(parts[1].clone(), parsed);
            }
            None => problems.push(format!("{key}: [{}] is not a section", parts[0])),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(problems))
    }
}

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
