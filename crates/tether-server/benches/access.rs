//! What the edge's checks cost per request: a subscribe against an app's topic rules (with and
//! without a token's `topics` claim), a subscription token, and a connection token (the
//! handshake's and a refresh's cost).
//!
//! `cargo bench -p tether-server --bench access`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tether_core::auth::{self, TokenPolicy};
use tether_core::{AppId, UserId};
use tether_server::config::{TopicAccess, TopicRule};
use tether_server::session::permissions::{Credentials, TopicRules};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef";

fn rules() -> TopicRules {
    let rules: Vec<TopicRule> = [
        ("user.{user}.*", TopicAccess::User),
        ("news.*", TopicAccess::Open),
        ("room.*.public", TopicAccess::Open),
        ("*", TopicAccess::Token),
    ]
    .into_iter()
    .map(|(pattern, allow)| TopicRule {
        pattern: pattern.into(),
        allow,
    })
    .collect();
    TopicRules::new(&rules)
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let alice = UserId::from("alice");
    let claim: Vec<String> = ["room-42", "vip.*", "team.blue.*"]
        .into_iter()
        .map(String::from)
        .collect();
    let mut g = c.benchmark_group("subscribe");
    g.bench_function("open rule (2nd of 4)", |b| {
        b.iter(|| rules.decide(&alice, black_box("news.sport"), Credentials::default()))
    });
    g.bench_function("user rule (1st of 4)", |b| {
        b.iter(|| {
            rules.decide(
                &alice,
                black_box("user.alice.inbox"),
                Credentials::default(),
            )
        })
    });
    g.bench_function("token rule, 3-entry topics claim", |b| {
        let credentials = Credentials {
            token_topics: Some(&claim),
            subscription_token: false,
        };
        b.iter(|| rules.decide(&alice, black_box("team.blue.7"), credentials))
    });
    g.bench_function("refused (no claim)", |b| {
        b.iter(|| rules.decide(&alice, black_box("admins-only"), Credentials::default()))
    });
    g.finish();

    let policy = TokenPolicy::hs256(SECRET, Duration::from_secs(5));
    let app = AppId::from("demo");
    let token = auth::mint(SECRET, &app, &alice, Duration::from_secs(600));
    let sub = auth::mint_subscription(SECRET, &app, &alice, "vip.gold", Duration::from_secs(600));
    let mut g = c.benchmark_group("tokens");
    g.bench_function("connection token, HS256 (connect, refresh)", |b| {
        b.iter(|| policy.verify(&app, black_box(&token)).unwrap())
    });
    g.bench_function("subscription token, HS256", |b| {
        b.iter(|| {
            policy
                .verify_subscription(&app, &alice, "vip.gold", black_box(&sub))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
