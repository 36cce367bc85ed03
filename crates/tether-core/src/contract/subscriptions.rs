//! The [`Subscriptions`](crate::Subscriptions) part of the store contract.

use crate::{AppId, SubscriptionError, Subscriptions, TopicId, UserId};

/// A subscription change, as the store answers it.
async fn subscribe(
    store: &dyn Subscriptions,
    app: &AppId,
    user: &str,
    topic: &str,
    subscribed: bool,
    max: usize,
) -> Result<bool, SubscriptionError> {
    store
        .set_subscription(
            app,
            &UserId::from(user),
            &TopicId::from(topic),
            subscribed,
            max,
        )
        .await
}

/// A subscription change that must be recorded: whether it changed anything.
async fn changed(
    store: &dyn Subscriptions,
    app: &AppId,
    user: &str,
    topic: &str,
    subscribed: bool,
    max: usize,
) -> bool {
    subscribe(store, app, user, topic, subscribed, max)
        .await
        .unwrap()
}

/// The topics `user` is subscribed to, which must be read.
async fn topics(store: &dyn Subscriptions, app: &AppId, user: &str) -> Vec<String> {
    store
        .subscriptions(app, &UserId::from(user))
        .await
        .unwrap()
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect()
}

/// Subscribing, the per-user max (also under concurrent calls), unsubscribing, listing.
pub(super) async fn contract(store: &dyn Subscriptions) {
    let app = AppId::from("contract-s");
    let other_app = AppId::from("contract-t");
    assert!(topics(store, &app, "alice").await.is_empty());

    assert!(
        changed(store, &app, "alice", "sports", true, 3).await,
        "a new subscription changes something"
    );
    assert!(
        !changed(store, &app, "alice", "sports", true, 3).await,
        "subscribing again changes nothing"
    );
    for topic in ["news", "art"] {
        assert!(changed(store, &app, "alice", topic, true, 3).await);
    }
    let refused = subscribe(store, &app, "alice", "weather", true, 3).await;
    assert!(
        matches!(refused, Err(SubscriptionError::TooMany(3))),
        "a subscription past max is refused: {refused:?}"
    );
    assert!(
        !changed(store, &app, "alice", "news", true, 3).await,
        "a topic the user has is not refused at max"
    );
    assert_eq!(
        topics(store, &app, "alice").await,
        ["art", "news", "sports"],
        "sorted, without the refused one"
    );

    // Apps and users are kept apart, and so are their counts.
    assert!(
        topics(store, &app, "ali").await.is_empty(),
        "users are separate, also when one's id starts another's"
    );
    assert!(topics(store, &other_app, "alice").await.is_empty());
    assert!(
        changed(store, &other_app, "alice", "weather", true, 1).await,
        "the count is per app"
    );
    assert!(
        changed(store, &app, "bob", "sports", true, 1).await,
        "the count is per user"
    );
    assert!(matches!(
        subscribe(store, &app, "bob", "art", true, 1).await,
        Err(SubscriptionError::TooMany(1))
    ));
    assert_eq!(topics(store, &app, "bob").await, ["sports"]);
    assert_eq!(topics(store, &other_app, "alice").await, ["weather"]);

    // Unsubscribing.
    assert!(
        changed(store, &app, "alice", "sports", false, 3).await,
        "an unsubscribe of a topic the user has changes something"
    );
    assert!(
        !changed(store, &app, "alice", "sports", false, 3).await,
        "unsubscribing again changes nothing"
    );
    assert!(!changed(store, &app, "alice", "never", false, 3).await);
    assert!(
        changed(store, &app, "alice", "weather", true, 3).await,
        "an unsubscribe makes room"
    );
    assert_eq!(
        topics(store, &app, "alice").await,
        ["art", "news", "weather"]
    );
    assert_eq!(
        topics(store, &app, "bob").await,
        ["sports"],
        "another user's unsubscribe leaves bob's alone"
    );

    // Concurrent subscriptions cannot pass max together.
    let names: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let racing = futures_util::future::join_all(
        names
            .iter()
            .map(|topic| subscribe(store, &app, "hank", topic, true, 4)),
    )
    .await;
    let done = racing.iter().filter(|r| matches!(r, Ok(true))).count();
    let refused = racing
        .iter()
        .filter(|r| matches!(r, Err(SubscriptionError::TooMany(4))))
        .count();
    assert_eq!(
        (done, refused),
        (4, 6),
        "concurrent subscriptions stop at max: {racing:?}"
    );
    assert_eq!(topics(store, &app, "hank").await.len(), 4);
    assert!(matches!(
        subscribe(store, &app, "ivy", "any", true, 0).await,
        Err(SubscriptionError::TooMany(0))
    ));
    assert!(topics(store, &app, "ivy").await.is_empty());
}
