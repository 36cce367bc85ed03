//! Reading a TOML document and the `TETHER_*` overrides into a [`Config`], with every problem
//! at once, each named by its key and placed at its line or environment variable.
//!
//! serde stops at the first error, so the tree is read again after each one: the error is
//! recorded under its key (`serde_path_to_error` gives the path), that key is taken out of the
//! tree so that it keeps its default, and the next pass goes on to the next problem. Every
//! pass removes a node of the tree, so the passes end (a configuration has a few hundred nodes
//! at most). A required key that is missing takes its entry with it: `apps[1]` without a
//! `secret` is left out of the checks that follow. Nothing here knows a key by name, so a key
//! added to `sections.rs` needs nothing more.
//!
//! Then [`Config::validate`] runs on what could be read. Its problems are placed at the first
//! key they name that is set, and the ones that name a key that could not be read are dropped:
//! they would be about the default that stood in for it.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

use super::problem::{Place, Problem, describe, unknown_key};
use super::{Config, ConfigError};

type Node<'a> = Spanned<DeValue<'a>>;

/// The span of what the environment put in the tree: no line of the file.
const ENV_SPAN: Range<usize> = usize::MAX..usize::MAX;

/// One step of a key's path: a table's key or an array's index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `TETHER_<SECTION>__<KEY>`: where it put its value.
struct Override<'a> {
    var: &'a str,
    section: String,
    key: String,
    raw: &'a str,
}

/// A TOML document (its display name and text), or none for the defaults.
pub(super) type Document<'a> = Option<(&'a str, &'a str)>;

/// Reads `document` with the environment `env` over it, then validates, allowing test modes
/// with `test_modes`.
pub(super) fn read<'a>(
    document: Document<'a>,
    env: &'a [(String, String)],
    test_modes: bool,
) -> Result<Config, ConfigError> {
    let (file, text) = document.unwrap_or(("", ""));
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // A document that is not TOML has no keys to trust: its syntax errors alone.
        return Err(ConfigError::new(
            syntax
                .iter()
                .map(|e| Problem {
                    key: String::new(),
                    place: e
                        .span()
                        .map_or(Place::Unplaced, |s| line_of(file, text, s.start)),
                    text: format!("not valid TOML: {}", describe(e.message())),
                })
                .collect(),
        ));
    }
    let span = root.span();
    let mut reader = Reader {
        file,
        text,
        original: Spanned::new(span, DeValue::Table(root.into_inner())),
        overrides: Vec::new(),
        problems: Vec::new(),
        unread: Vec::new(),
    };
    reader.apply_env(env);
    let Some((mut config, tree)) = reader.deserialize() else {
        return Err(ConfigError::new(reader.problems));
    };
    config.test_modes = test_modes;
    if let Err(e) = config.validate() {
        for problem in e.problems() {
            reader.place_check(&tree, &problem.text);
        }
    }
    if reader.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::new(reader.problems))
    }
}

struct Reader<'a> {
    file: &'a str,
    text: &'a str,
    /// The document with the overrides, as written: what places and names keys.
    original: Node<'a>,
    overrides: Vec<Override<'a>>,
    problems: Vec<Problem>,
    /// Keys (paths into `original`) that could not be read.
    unread: Vec<Vec<Seg>>,
}

impl<'a> Reader<'a> {
    /// Puts each `TETHER_<SECTION>__<KEY>` into the tree: as a TOML value when it parses as one
    /// (numbers, booleans, arrays), as a string otherwise.
    fn apply_env(&mut self, env: &'a [(String, String)]) {
        let DeValue::Table(root) = self.original.get_mut() else {
            unreachable!("a document is a table")
        };
        for (var, raw) in env {
            let Some(path) = var.strip_prefix("TETHER_") else {
                continue;
            };
            let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            let place = Place::Env(var.clone());
            if parts.len() != 2 || parts.iter().any(String::is_empty) {
                // TETHER_CONFIG and similar are CLI variables, not overrides.
                if path.contains("__") {
                    self.problems.push(Problem {
                        key: String::new(),
                        place,
                        text: "not an override: expected TETHER_<SECTION>__<KEY>".into(),
                    });
                }
                continue;
            }
            let (section, key) = (parts[0].clone(), parts[1].clone());
            let value = DeValue::parse(raw)
                .unwrap_or_else(|_| Spanned::new(ENV_SPAN, DeValue::String(raw.as_str().into())));
            let value = Spanned::new(ENV_SPAN, value.into_inner());
            let table = root
                .entry(Spanned::new(ENV_SPAN, section.clone().into()))
                .or_insert_with(|| Spanned::new(ENV_SPAN, DeValue::Table(DeTable::new())));
            let DeValue::Table(table) = table.get_mut() else {
                self.problems.push(Problem {
                    key: section.clone(),
                    place,
                    text: format!("{section}: is not a table in the file, so it takes no keys"),
                });
                continue;
            };
            table.insert(Spanned::new(ENV_SPAN, key.clone().into()), value);
            self.overrides
                .retain(|o| (&o.section, &o.key) != (&section, &key));
            self.overrides.push(Override {
                var,
                section,
                key,
                raw,
            });
        }
    }

    /// Reads the tree into a [`Config`], recording each problem and taking its key out until
    /// the rest reads. Returns the config and the tree it was read from, or `None` when a
    /// problem could not be taken out (then later problems may be hidden).
    fn deserialize(&mut self) -> Option<(Config, Node<'a>)> {
        let mut tree = self.original.clone();
        // An override's typed value that was refused, retried as the string it was written as;
        // if the string is refused too, the first refusal is the one reported.
        let mut retried: HashMap<usize, String> = HashMap::new();
        loop {
            let error = match serde_path_to_error::deserialize::<_, Config>(
                ValueDeserializer::from(tree.clone()),
            ) {
                Ok(config) => return Some((config, tree)),
                Err(error) => error,
            };
            let path = segments(error.path());
            let message = error.into_inner().message().to_owned();
            let at_override = self.override_at(&path);
            if let Some(i) = at_override
                && !retried.contains_key(&i)
                && !matches!(
                    node(&tree, &path[..2]).map(|n| n.get_ref()),
                    Some(DeValue::String(_))
                )
            {
                retried.insert(i, message);
                let raw = self.overrides[i].raw;
                *node_mut(&mut tree, &path[..2])? =
                    Spanned::new(ENV_SPAN, DeValue::String(raw.into()));
                continue;
            }
            let message = at_override
                .and_then(|i| retried.remove(&i))
                .unwrap_or(message);
            let (key, remove) = match missing_field(&message) {
                Some(field) => {
                    let mut key = path.clone();
                    key.push(Seg::Key(field.to_owned()));
                    (key, path)
                }
                None => (path.clone(), path),
            };
            let key = self.to_original(&tree, &key);
            // A key taken out for its own problem leaves its table short of it: said already.
            if !self.unread.contains(&key) {
                let name = name(&key);
                let text = match missing_field(&message) {
                    Some(_) => format!("{name}: missing (it is required)"),
                    None if message.starts_with("unknown field ") => {
                        let last = match key.last() {
                            Some(Seg::Key(k)) => k.as_str(),
                            _ => "",
                        };
                        format!("{name}: {}", unknown_key(last, &message))
                    }
                    None => format!("{name}: {}", describe(&message)),
                };
                self.problems.push(Problem {
                    place: self.place(&key),
                    key: name,
                    text,
                });
                self.unread.push(key);
            }
            if !remove_node(&mut tree, &remove) {
                if let Some(last) = self.problems.last_mut() {
                    last.text
                        .push_str(" (other problems may hide behind this one)");
                }
                return None;
            }
        }
    }

    /// Places a problem of [`Config::validate`] at the first key it names that is set, unless
    /// it names a key that could not be read.
    fn place_check(&mut self, tree: &Node<'a>, text: &str) {
        let mut place = Place::Unplaced;
        let mut key = String::new();
        let mut text = text.to_owned();
        let source = text.clone();
        for token in path_tokens(&source) {
            let Some(path) = parse_path(token) else {
                continue;
            };
            let original = self.to_original(tree, &path);
            if self
                .unread
                .iter()
                .any(|u| u.starts_with(&original) || original.starts_with(u))
            {
                return;
            }
            let named = name(&original);
            if named != token {
                // An entry left out before it shifts the index of the ones after it.
                text = text.replacen(token, &named, 1);
            }
            if key.is_empty() {
                key = named;
            }
            if place == Place::Unplaced {
                place = self.place(&original);
            }
        }
        self.problems.push(Problem { key, place, text });
    }

    /// The override that set `path` (or a part of its value).
    fn override_at(&self, path: &[Seg]) -> Option<usize> {
        self.overrides.iter().position(|o| match path {
            [Seg::Key(section), Seg::Key(key), ..] => *section == o.section && *key == o.key,
            _ => false,
        })
    }

    /// `path` in `tree` (where entries may have been taken out) as a path in `original`: each
    /// array entry is found again by its span.
    fn to_original(&self, tree: &Node<'a>, path: &[Seg]) -> Vec<Seg> {
        let mut out = Vec::with_capacity(path.len());
        let (mut now, mut then) = (Some(tree), Some(&self.original));
        for seg in path {
            let translated = match (seg, now.map(Spanned::get_ref), then.map(Spanned::get_ref)) {
                (Seg::Index(i), Some(DeValue::Array(a)), Some(DeValue::Array(b))) => {
                    let span = a.get(*i).map(Spanned::span);
                    let j = b
                        .iter()
                        .position(|e| Some(e.span()) == span && span != Some(ENV_SPAN));
                    Seg::Index(j.unwrap_or(*i))
                }
                _ => seg.clone(),
            };
            now = now.and_then(|n| child(n, seg));
            then = then.and_then(|n| child(n, &translated));
            out.push(translated);
        }
        out
    }

    /// Where `key` (a path into `original`) was set: its override, or the line of the nearest
    /// part of it that the file has.
    fn place(&self, key: &[Seg]) -> Place {
        if let Some(i) = self.override_at(key) {
            return Place::Env(self.overrides[i].var.to_owned());
        }
        let mut span = None;
        let mut at = Some(&self.original);
        for seg in key {
            let Some(node) = at else { break };
            span = match (seg, node.get_ref()) {
                (Seg::Key(k), DeValue::Table(t)) => {
                    t.get_key_value(k.as_str()).map(|(k, _)| k.span())
                }
                (_, DeValue::Array(_)) => child(node, seg).map(Spanned::span),
                _ => None,
            }
            .or(span);
            at = child(node, seg);
        }
        match span {
            Some(s) if s == ENV_SPAN => match key.first() {
                // A section only the environment names: its first override.
                Some(Seg::Key(section)) => self
                    .overrides
                    .iter()
                    .find(|o| &o.section == section)
                    .map_or(Place::Unplaced, |o| Place::Env(o.var.to_owned())),
                _ => Place::Unplaced,
            },
            Some(s) => line_of(self.file, self.text, s.start),
            None => Place::Unplaced,
        }
    }
}

fn line_of(file: &str, text: &str, offset: usize) -> Place {
    let offset = offset.min(text.len());
    Place::File {
        file: if file.is_empty() {
            "config".into()
        } else {
            file.to_owned()
        },
        line: text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
    }
}

/// The field of serde's `missing field `x`` message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    let mut out = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } => out.push(Seg::Key(key.clone())),
            Segment::Seq { index } => out.push(Seg::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => break,
        }
    }
    out
}

/// `limits.max_connections`, `apps[1].tokens.audience`.
fn name(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The inverse of [`name`] for plain keys: `apps[1].tokens.audience`.
fn parse_path(token: &str) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    for part in token.split('.') {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if key.is_empty() {
            return None;
        }
        out.push(Seg::Key(key.to_owned()));
        while let Some(inner) = rest.strip_prefix('[') {
            let (index, after) = inner.split_once(']')?;
            out.push(Seg::Index(index.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// The words of `text` that may be keys: `limits.max_frame`, `apps[0].secret`, `listen`.
fn path_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "_.[]".contains(c)))
        .map(|t| t.trim_end_matches('.'))
        .filter(|t| t.starts_with(|c: char| c.is_ascii_lowercase()))
}

/// The node under `node` at `seg`. A key of an array is the entry of that `id`, as checks
/// name an app (`apps.shop: ...`).
fn child<'n, 'a>(node: &'n Node<'a>, seg: &Seg) -> Option<&'n Node<'a>> {
    match (seg, node.get_ref()) {
        (Seg::Key(k), DeValue::Table(t)) => t.get(k.as_str()),
        (Seg::Index(i), DeValue::Array(a)) => a.get(*i),
        (Seg::Key(k), DeValue::Array(a)) => a.iter().find(|entry| {
            let id = child(entry, &Seg::Key("id".into()));
            id.and_then(|id| id.get_ref().as_str()) == Some(k.as_str())
        }),
        _ => None,
    }
}

fn node<'n, 'a>(root: &'n Node<'a>, path: &[Seg]) -> Option<&'n Node<'a>> {
    path.iter().try_fold(root, |n, seg| child(n, seg))
}

fn node_mut<'n, 'a>(root: &'n mut Node<'a>, path: &[Seg]) -> Option<&'n mut Node<'a>> {
    path.iter()
        .try_fold(root, |n, seg| match (seg, n.get_mut()) {
            (Seg::Key(k), DeValue::Table(t)) => t.get_mut(k.as_str()),
            (Seg::Index(i), DeValue::Array(a)) => a.get_mut(*i),
            _ => None,
        })
}

/// Takes the node at `path` out of `root`; false when there is none (or `path` is the root).
fn remove_node(root: &mut Node<'_>, path: &[Seg]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let Some(parent) = node_mut(root, parent) else {
        return false;
    };
    match (last, parent.get_mut()) {
        (Seg::Key(k), DeValue::Table(t)) => t.remove(k.as_str()).is_some(),
        (Seg::Index(i), DeValue::Array(a)) if *i < a.len() => {
            let kept: DeArray<'_> = a
                .iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, e)| e.clone())
                .collect();
            *a = kept;
            true
        }
        _ => false,
    }
}
