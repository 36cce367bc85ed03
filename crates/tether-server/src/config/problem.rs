//! What is wrong with a configuration: each [`Problem`] names its key and where the key was set
//! (a line of the file, or an environment variable), and says what was expected and what was
//! found, in words an operator reads rather than serde's. A secret's value is never part of a
//! problem (see `Secret`'s reader in `de.rs`).

use std::fmt;

/// Where a key was set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// A line (from 1) of the TOML file.
    File { file: String, line: usize },
    /// A `TETHER_<SECTION>__<KEY>` environment variable.
    Env(String),
    /// Nowhere: the key keeps its default, or the problem concerns several keys.
    Unplaced,
}

/// One problem of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, as a path into the file: `limits.max_connections`, `apps[1].tokens.audience`
    /// (entries of an array counted from 0, as written in the file). Empty for a syntax error.
    pub key: String,
    pub place: Place,
    /// The problem, starting with its key: `limits.max_connections: expected ..., found ...`.
    pub text: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.place {
            Place::File { file, line } => write!(f, "{file}:{line}: {}", self.text),
            Place::Env(var) => write!(f, "${var}: {}", self.text),
            Place::Unplaced => f.write_str(&self.text),
        }
    }
}

/// Everything wrong with a configuration, one problem per line, in the order of the file.
#[derive(Debug)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// `problems`, ordered by place: the file's lines first, then the environment variables,
    /// then problems that have no single place (in the order they were found).
    pub fn new(mut problems: Vec<Problem>) -> Self {
        problems.sort_by(|a, b| a.place.cmp(&b.place));
        ConfigError { problems }
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

/// Problems of [`Config::validate`](super::Config::validate): text that starts with its key,
/// not yet placed (the loader places them).
impl From<Vec<String>> for ConfigError {
    fn from(problems: Vec<String>) -> Self {
        ConfigError::new(
            problems
                .into_iter()
                .map(|text| Problem {
                    key: String::new(),
                    place: Place::Unplaced,
                    text,
                })
                .collect(),
        )
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// serde's message about a key's value, in an operator's words: `expected ..., found ...`.
/// Messages it does not know (a duration's, a custom check's) are kept as they are.
pub(super) fn describe(message: &str) -> String {
    let message = message.trim().replace('\n', "; ");
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("unknown value {rest}");
    }
    message
}

/// The message for an unknown key `key`, from serde's `unknown field` message, with the key
/// that was probably meant.
pub(super) fn unknown_key(key: &str, message: &str) -> String {
    let known: Vec<&str> = message
        .split_once("expected ")
        .map(|(_, list)| {
            let list = list.strip_prefix("one of ").unwrap_or(list);
            list.split(", ").map(|k| k.trim_matches('`')).collect()
        })
        .unwrap_or_default();
    let closest = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, k)| *d <= 2.max(k.len() / 4));
    match closest {
        Some((_, k)) => format!("unknown key (did you mean `{k}`?)"),
        None if known.is_empty() => "unknown key (this table takes no keys)".into(),
        None => format!("unknown key (known here: {})", known.join(", ")),
    }
}

fn expected_words(expected: &str) -> String {
    let words = match expected {
        "usize" | "u64" => "a whole number, 0 or more",
        "u32" => "a whole number from 0 to 4294967295",
        "u16" => "a whole number from 0 to 65535",
        "u8" => "a whole number from 0 to 255",
        "isize" | "i64" | "i32" => "a whole number",
        "f64" | "f32" => "a number",
        "a sequence" => "an array",
        "a map" => "a table",
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    words.to_owned()
}

fn found_words(found: &str) -> String {
    match found {
        "sequence" => "an array".into(),
        "map" => "a table".into(),
        other => other.replace('`', ""),
    }
}

/// Levenshtein distance, for the suggestion of an unknown key (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}
