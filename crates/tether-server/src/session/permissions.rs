//! Who may subscribe to what: an app's topic rules, checked for every client `subscribe` on
//! every transport. The business's own subscriptions (through the API) are always allowed.
//!
//! Rules are tried in order and the first whose pattern matches the topic decides; a topic
//! that no rule matches is refused. A pattern is the topic's text with `*` standing for any
//! run of characters (also none) and `{user}` for the subscribing user's id, exactly:
//! `room.*`, `user.{user}`, `user.{user}.*`, `*`. A user id that holds the character after
//! `{user}` matches nothing (its topics would overlap another user's), and `{user}` directly
//! followed by `*` matches nobody.
//!
//! | rule | who may subscribe |
//! |---|---|
//! | `open` | any user bound to the app |
//! | `user` | the user the pattern names: its pattern must use `{user}` |
//! | `token` | a user whose connection token lists the topic (its `topics` claim, which may use `*`), or who sends a subscription token for it |
//! | `webhook` | a user the app's webhook allows: the rules cannot tell alone, so they answer [`Decision::Ask`] and the session asks (see [`super::ask`]) |

use tether_core::UserId;

use crate::config::{TopicAccess, TopicRule};

/// One piece of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Any run of characters.
    Any,
    /// The subscribing user's id.
    User,
}

/// A topic pattern: text, `*` and `{user}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Vec<Piece>);

impl Pattern {
    /// Reads a pattern; `{user}` is a placeholder only where `placeholders` (in rules, not in
    /// a token's `topics` claim, where it is text).
    pub fn parse(pattern: &str, placeholders: bool) -> Pattern {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = pattern;
        while let Some(c) = rest.chars().next() {
            if c == '*' {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                // `**` is `*`.
                if pieces.last() != Some(&Piece::Any) {
                    pieces.push(Piece::Any);
                }
                rest = &rest[1..];
            } else if placeholders && rest.starts_with("{user}") {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::User);
                rest = &rest["{user}".len()..];
            } else {
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Pattern(pieces)
    }

    /// Whether the pattern names the subscribing user.
    pub fn names_user(&self) -> bool {
        self.0.contains(&Piece::User)
    }

    /// Whether `topic` matches, with `{user}` standing for `user`.
    ///
    /// A user whose id holds the character that follows `{user}` in the pattern matches
    /// nothing: with `user.{user}.*`, user `alice.smith`'s topics would also be user `alice`'s
    /// (`user.alice.smith.inbox` is both), so neither may have them through this pattern.
    pub fn matches(&self, topic: &str, user: &str) -> bool {
        let ambiguous = self.0.windows(2).any(|w| match w {
            [Piece::User, Piece::Text(next)] => {
                next.chars().next().is_some_and(|c| user.contains(c))
            }
            [Piece::User, Piece::Any] => true,
            _ => false,
        });
        !ambiguous && matches(&self.0, topic, user)
    }
}

/// Matches `pieces` against all of `topic`: the text between two `*` (with `{user}` filled
/// in) must appear in order, the first at the start unless the pattern starts with `*`, the
/// last at the end unless it ends with one. Finding each as early as possible is enough for
/// `*` patterns, so this is linear in the topic per piece, whatever the pattern.
fn matches(pieces: &[Piece], topic: &str, user: &str) -> bool {
    let mut segments: Vec<String> = vec![String::new()];
    for piece in pieces {
        match piece {
            Piece::Text(t) => segments.last_mut().expect("never empty").push_str(t),
            Piece::User => segments.last_mut().expect("never empty").push_str(user),
            Piece::Any => segments.push(String::new()),
        }
    }
    // One segment: no `*` at all, the whole topic.
    let Some((first, rest)) = segments.split_first() else {
        return topic.is_empty();
    };
    let Some((last, middle)) = rest.split_last() else {
        return topic == first;
    };
    let Some(mut left) = topic.strip_prefix(first.as_str()) else {
        return false;
    };
    for segment in middle {
        match left.find(segment.as_str()) {
            Some(at) => left = &left[at + segment.len()..],
            None => return false,
        }
    }
    left.ends_with(last.as_str())
}

/// One app's topic rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct TopicRules(Vec<(Pattern, TopicAccess)>);

/// What the rules say of one subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused: the client is told this.
    Deny(&'static str),
    /// A `webhook` rule matched: the app's business decides, when asked.
    Ask,
}

/// What a subscriber brings besides its user id.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `topics` claim of its connection token.
    pub token_topics: Option<&'a [String]>,
    /// It sent a subscription token for this topic, and the token verified.
    pub subscription_token: bool,
}

impl TopicRules {
    /// Compiles rules (checked by `Config::validate`: a `user` rule's pattern names the user).
    pub fn new(rules: &[TopicRule]) -> TopicRules {
        TopicRules(
            rules
                .iter()
                .map(|r| (Pattern::parse(&r.pattern, true), r.allow))
                .collect(),
        )
    }

    /// Whether `user`, with `credentials`, may subscribe to `topic`.
    pub fn decide(&self, user: &UserId, topic: &str, credentials: Credentials<'_>) -> Decision {
        let user = user.as_str();
        let Some((_, allow)) = self.0.iter().find(|(p, _)| p.matches(topic, user)) else {
            return Decision::Deny("no topic rule of the app allows it");
        };
        match allow {
            TopicAccess::Open | TopicAccess::User => Decision::Allow,
            TopicAccess::Webhook => Decision::Ask,
            TopicAccess::Token if credentials.subscription_token => Decision::Allow,
            TopicAccess::Token => {
                let listed = credentials.token_topics.is_some_and(|topics| {
                    topics
                        .iter()
                        .any(|t| Pattern::parse(t, false).matches(topic, user))
                });
                match listed {
                    true => Decision::Allow,
                    false => Decision::Deny("the token does not grant this topic"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
