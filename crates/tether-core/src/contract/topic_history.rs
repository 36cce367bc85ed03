//! The [`TopicHistory`](crate::TopicHistory) part of the store contract.

use std::collections::HashMap;

use bytes::Bytes;
use tether_proto::PayloadKind;

use super::store::{
    CONTRACT_TOPIC_HISTORY, append_to, assert_gapless_and_capped, new_message, seqs,
};
use crate::store::{NewMessage, Page};
use crate::{AppId, MessageId, Seq, Store, TopicId, UserId};

/// Offsets, reads, the cap and expiry. Appends to an inbox too, to check that a topic and an
/// inbox never share a log.
pub(super) async fn contract(store: &dyn Store) {
    // A clock of its own: the inbox checks before may have taken a while, and a backend may
    // drop expired publications by its own clock.
    let now = crate::now_ms();
    let hour = 3_600_000;
    let app = AppId::from("contract-s");
    let other_app = AppId::from("contract-t");
    let news = TopicId::from("news");

    let empty = history(store, &app, &news, Seq(0), 10, now).await;
    assert_eq!(empty.head, Seq(0), "a topic never published to has head 0");
    assert!(empty.messages.is_empty());

    // Offsets are per (app, topic), start at 1 and have no gaps; a user named like the topic
    // has an inbox of its own.
    store
        .append(append_to(
            "contract-s",
            &["news"],
            new_message(70, now, hour, "{\"inbox\":1}"),
        ))
        .await
        .unwrap();
    for (id, offset) in [(71, 1), (72, 2)] {
        let got = publish(store, &app, &news, new_message(id, now, hour, "{\"p\":1}")).await;
        assert_eq!(got, Seq(offset), "offsets start at 1 and have no gaps");
    }
    let page = history(store, &app, &news, Seq(0), 10, now).await;
    assert_eq!(seqs(&page), vec![1, 2]);
    assert_eq!(page.head, Seq(2));
    let p = &page.messages[1];
    assert_eq!(
        (p.id, p.created_ms, p.expires_ms, p.kind),
        (MessageId(72), now, now + hour, PayloadKind::Json),
        "a publication comes back as published"
    );
    assert_eq!(p.payload, Bytes::from_static(b"{\"p\":1}"));
    let inbox = store
        .read(&app, &UserId::from("news"), Seq(0), 10, now)
        .await
        .unwrap();
    assert_eq!(
        (seqs(&inbox), inbox.head, inbox.messages[0].id),
        (vec![1], Seq(1), MessageId(70)),
        "the inbox of a user named like a topic is not the topic's history"
    );
    assert_eq!(
        seqs(&history(store, &app, &news, Seq(1), 10, now).await),
        vec![2],
        "history returns what comes after the given offset"
    );
    assert_eq!(
        seqs(&history(store, &app, &news, Seq(0), 1, now).await),
        vec![1],
        "history honours its limit, oldest first"
    );
    assert_eq!(
        history(store, &other_app, &news, Seq(0), 10, now)
            .await
            .head,
        Seq(0),
        "apps are separate"
    );
    let first_elsewhere = publish(store, &other_app, &news, new_message(73, now, hour, "{}")).await;
    assert_eq!(
        first_elsewhere,
        Seq(1),
        "each app's topic has its own offsets"
    );
    let shorter = TopicId::from("new");
    assert_eq!(
        publish(store, &app, &shorter, new_message(74, now, hour, "{}")).await,
        Seq(1),
        "topics are separate, also when one's id starts another's"
    );
    assert_eq!(
        history(store, &app, &news, Seq(0), 10, now).await.head,
        Seq(2)
    );

    // Concurrent publishes get distinct, gapless offsets; the history keeps the newest.
    let live = TopicId::from("live");
    let published = futures_util::future::join_all(
        (0..100u64).map(|i| store.publish(&app, &live, new_message(2000 + i, now, hour, "{}"))),
    )
    .await;
    let got: Vec<u64> = published.into_iter().map(|r| r.unwrap().0).collect();
    let offsets: HashMap<u64, u64> = got
        .iter()
        .enumerate()
        .map(|(i, offset)| (*offset, 2000 + i as u64))
        .collect();
    let page = history(store, &app, &live, Seq(0), 100, now).await;
    assert_gapless_and_capped(got, &page, "publishes", "a history", CONTRACT_TOPIC_HISTORY);
    for m in &page.messages {
        assert_eq!(
            m.id.0, offsets[&m.seq.0],
            "each offset holds the publication it was given to"
        );
    }

    // Expiry: never returned once expired, and offsets are not reused afterwards.
    let brief = TopicId::from("brief");
    publish(store, &app, &brief, new_message(80, now, 60_000, "{}")).await;
    publish(store, &app, &brief, new_message(81, now, hour, "{}")).await;
    assert_eq!(
        seqs(&history(store, &app, &brief, Seq(0), 10, now + 59_999).await),
        vec![1, 2]
    );
    let page = history(store, &app, &brief, Seq(0), 10, now + 60_000).await;
    assert_eq!(
        (seqs(&page), page.head),
        (vec![2], Seq(2)),
        "a publication is not returned from its expiry on"
    );
    let gone = TopicId::from("gone");
    publish(store, &app, &gone, new_message(82, now, 10, "{}")).await;
    let later = publish(store, &app, &gone, new_message(83, now + 1000, hour, "{}")).await;
    assert_eq!(
        later,
        Seq(2),
        "an offset is never reused, even when every publication before it expired"
    );
    assert_eq!(
        seqs(&history(store, &app, &gone, Seq(0), 10, now + 1000).await),
        vec![2]
    );
}

/// A publish that must succeed.
async fn publish(store: &dyn Store, app: &AppId, topic: &TopicId, message: NewMessage) -> Seq {
    store.publish(app, topic, message).await.unwrap()
}

/// A history read that must succeed.
async fn history(
    store: &dyn Store,
    app: &AppId,
    topic: &TopicId,
    after: Seq,
    limit: usize,
    now_ms: u64,
) -> Page {
    store
        .history(app, topic, after, limit, now_ms)
        .await
        .unwrap()
}
