use proptest::prelude::*;

use super::*;

use crate::config::{AppConfig, Config, Secret, TopicAccess as Allow, TopicRule};

fn rules(rules: &[(&str, Allow)]) -> TopicRules {
    let rules: Vec<TopicRule> = rules
        .iter()
        .map(|(pattern, allow)| TopicRule {
            pattern: (*pattern).into(),
            allow: *allow,
        })
        .collect();
    TopicRules::new(&rules)
}

fn alice() -> UserId {
    UserId::from("alice")
}

#[test]
fn patterns_match_text_stars_and_the_user() {
    let m = |p: &str, topic: &str| Pattern::parse(p, true).matches(topic, "alice");
    assert!(m("room.*", "room.1") && m("room.*", "room.") && !m("room.*", "rooms.1"));
    assert!(m("*", "") && m("*", "anything"));
    assert!(m("user.{user}", "user.alice") && !m("user.{user}", "user.bob"));
    assert!(!m("user.{user}", "user.alice.x") && m("user.{user}.*", "user.alice.x"));
    // `alice.smith`'s personal topics would be `alice`'s too: neither gets them.
    let personal = Pattern::parse("user.{user}.*", true);
    assert!(!personal.matches("user.alice.smith.inbox", "alice.smith"));
    assert!(personal.matches("user.alice.smith.inbox", "alice"));
    assert!(!Pattern::parse("user.{user}*", true).matches("user.alice", "alice"));
    assert!(m("a*b*c", "abc") && m("a*b*c", "a-b-b-c") && !m("a*b*c", "a-c-b"));
    assert!(m("*.news", "sport.news") && !m("*.news", "sport.newsx"));
    // In a token's claim `{user}` is plain text.
    assert!(Pattern::parse("{user}", false).matches("{user}", "alice"));
}

#[test]
fn the_first_matching_rule_decides_and_no_rule_refuses() {
    let r = rules(&[
        ("user.{user}", Allow::User),
        ("vip.*", Allow::Token),
        ("*", Allow::Open),
    ]);
    let none = Credentials::default();
    assert_eq!(r.decide(&alice(), "user.alice", none), Decision::Allow);
    // user.bob is not alice's: the `user` rule does not match it, and `*` lets it in.
    assert_eq!(r.decide(&alice(), "lobby", none), Decision::Allow);
    assert!(matches!(
        r.decide(&alice(), "vip.1", none),
        Decision::Deny(_)
    ));
    let closed = rules(&[("user.{user}", Allow::User)]);
    assert_eq!(
        closed.decide(&alice(), "user.bob", none),
        Decision::Deny("no topic rule of the app allows it")
    );
    assert!(matches!(
        TopicRules::default().decide(&alice(), "x", none),
        Decision::Deny(_)
    ));
}

#[test]
fn the_token_rule_takes_the_token_s_topics_or_a_subscription_token() {
    let r = rules(&[("vip.*", Allow::Token)]);
    let granted = ["vip.gold".to_owned(), "vip.silver.*".to_owned()];
    let with = |sub| Credentials {
        token_topics: Some(&granted),
        subscription_token: sub,
    };
    assert_eq!(r.decide(&alice(), "vip.gold", with(false)), Decision::Allow);
    assert_eq!(
        r.decide(&alice(), "vip.silver.2", with(false)),
        Decision::Allow
    );
    assert_eq!(
        r.decide(&alice(), "vip.bronze", with(false)),
        Decision::Deny("the token does not grant this topic")
    );
    assert_eq!(
        r.decide(&alice(), "vip.bronze", with(true)),
        Decision::Allow
    );
}

#[test]
fn a_user_rule_without_the_placeholder_and_an_empty_pattern_fail_validation() {
    let problems = |pattern: &str, allow| {
        let mut app = AppConfig::new(
            "a",
            Secret::new("secret-0123456789abcdef"),
            Secret::new("api-key-0123456789abcdef"),
        );
        app.topics.push(TopicRule {
            pattern: pattern.into(),
            allow,
        });
        app.access_problems(Config::default().gateway.token_leeway)
    };
    assert!(problems("room.*", Allow::User)[0].contains("{user}"));
    assert!(problems("", Allow::Open)[0].contains("empty"));
    assert!(problems("user.{user}", Allow::User).is_empty());
    // The app has no webhook URL to ask.
    assert!(problems("room.*", Allow::Webhook)[0].contains("`webhook` URL"));
}

#[test]
fn a_webhook_rule_asks_for_the_topics_it_matches_only() {
    let r = rules(&[("user.{user}", Allow::User), ("room.*", Allow::Webhook)]);
    let none = Credentials::default();
    assert_eq!(r.decide(&alice(), "room.1", none), Decision::Ask);
    assert_eq!(r.decide(&alice(), "user.alice", none), Decision::Allow);
    assert!(matches!(
        r.decide(&alice(), "lobby", none),
        Decision::Deny(_)
    ));
}

/// A plain reference: does `pattern` (only text and `*`) match `topic`, by trying every split.
fn reference(pattern: &[u8], topic: &[u8]) -> bool {
    match pattern.split_first() {
        None => topic.is_empty(),
        Some((b'*', rest)) => (0..=topic.len()).any(|i| reference(rest, &topic[i..])),
        Some((c, rest)) => topic.first() == Some(c) && reference(rest, &topic[1..]),
    }
}

proptest! {
    #[test]
    fn star_patterns_match_exactly_what_the_reference_matches(
        pattern in "[ab*.]{0,8}",
        topic in "[ab.]{0,10}",
    ) {
        let ours = Pattern::parse(&pattern, true).matches(&topic, "u");
        prop_assert_eq!(ours, reference(pattern.as_bytes(), topic.as_bytes()));
    }

    #[test]
    fn a_user_placeholder_matches_that_user_only(
        prefix in "[a-c.]{0,4}",
        user in "[a-z*]{1,6}",
        other in "[a-z*]{1,6}",
    ) {
        let pattern = Pattern::parse(&format!("{prefix}{{user}}"), true);
        let topic = format!("{prefix}{user}");
        prop_assert!(pattern.matches(&topic, &user));
        prop_assert_eq!(pattern.matches(&topic, &other), user == other);
    }

    #[test]
    fn matching_never_panics_on_any_text(pattern in any::<String>(), topic in any::<String>()) {
        let _ = Pattern::parse(&pattern, true).matches(&topic, "u");
    }
}
