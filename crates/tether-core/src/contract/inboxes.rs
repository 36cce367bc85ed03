//! The [`Inboxes`](crate::Inboxes) part of the store contract.

use bytes::Bytes;
use tether_proto::PayloadKind;

use super::store::{CONTRACT_INBOX_CAP, append_to, assert_gapless_and_capped, new_message, seqs};
use crate::store::{Appended, Idempotency, NewMessage, Page};
use crate::{AppId, Inboxes, MessageId, Seq, UserId};

/// Seqs, reads, the cap, expiry and idempotency keys.
pub(super) async fn contract(store: &dyn Inboxes) {
    let now = crate::now_ms();
    let hour = 3_600_000;
    let app = AppId::from("contract-s");
    let alice = UserId::from("alice");
    let bob = UserId::from("bob");

    let empty = read(store, &app, &alice, Seq(0), 10, now).await;
    assert_eq!(empty.head, Seq(0), "an inbox never written has head 0");
    assert!(empty.messages.is_empty());

    // Seqs are per inbox, start at 1 and have no gaps.
    let first = append(
        store,
        &["alice", "bob"],
        new_message(11, now, hour, "{\"n\":1}"),
    )
    .await;
    assert_eq!(
        first.seqs,
        vec![(alice.clone(), Seq(1)), (bob.clone(), Seq(1))],
        "each inbox starts at seq 1"
    );
    assert!(!first.duplicate);
    assert_eq!(first.id, MessageId(11));
    let second = append(store, &["alice"], new_message(12, now, hour, "{\"n\":2}")).await;
    assert_eq!(second.seqs, vec![(alice.clone(), Seq(2))]);
    let page = read(store, &app, &alice, Seq(0), 10, now).await;
    assert_eq!(seqs(&page), vec![1, 2]);
    assert_eq!(page.head, Seq(2));
    assert_eq!(page.messages[0].id, MessageId(11));
    assert_eq!(page.messages[1].payload, Bytes::from_static(b"{\"n\":2}"));
    assert_eq!(page.messages[1].kind, PayloadKind::Json);
    assert_eq!(page.messages[1].created_ms, now);
    assert_eq!(page.messages[1].expires_ms, now + hour);
    assert_eq!(
        seqs(&read(store, &app, &alice, Seq(1), 10, now).await),
        vec![2],
        "read returns what comes after the given seq"
    );
    assert_eq!(
        seqs(&read(store, &app, &alice, Seq(0), 1, now).await),
        vec![1],
        "read honours its limit, oldest first"
    );
    assert_eq!(
        seqs(&read(store, &app, &bob, Seq(0), 10, now).await),
        vec![1],
        "inboxes are separate"
    );
    let other_app = AppId::from("contract-t");
    assert_eq!(
        read(store, &other_app, &alice, Seq(0), 10, now).await.head,
        Seq(0),
        "apps are separate"
    );

    // Concurrent appends to one inbox get distinct, gapless seqs, and reads see them in order.
    let carol = UserId::from("carol");
    let appends = (0..200u64).map(|i| {
        store.append(append_to(
            "contract-s",
            &["carol", "dave"],
            new_message(1000 + i, now, hour, "{}"),
        ))
    });
    let results = futures_util::future::join_all(appends).await;
    let got: Vec<u64> = results
        .into_iter()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(
                r.seqs[0].1, r.seqs[1].1,
                "carol and dave see the same appends"
            );
            r.seqs[0].1.0
        })
        .collect();
    let page = read(store, &app, &carol, Seq(0), 100, now).await;
    assert_gapless_and_capped(got, &page, "appends", "an inbox", CONTRACT_INBOX_CAP);
    let ids: Vec<u64> = page.messages.iter().map(|m| m.id.0).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "each message once");

    // Expiry: never returned once expired, and seqs are not reused afterwards. The TTL is
    // a minute, not a few milliseconds: a store may also sweep expired messages by the wall
    // clock, and a loaded machine can take longer than a short TTL between `now` and the
    // read "just before expiry".
    let erin = UserId::from("erin");
    let ttl = 60_000;
    append(store, &["erin"], new_message(21, now, ttl, "{}")).await;
    append(store, &["erin"], new_message(22, now, hour, "{}")).await;
    assert_eq!(
        seqs(&read(store, &app, &erin, Seq(0), 10, now + ttl - 1).await),
        vec![1, 2]
    );
    assert_eq!(
        seqs(&read(store, &app, &erin, Seq(0), 10, now + ttl).await),
        vec![2],
        "a message is not returned from its expiry on"
    );
    let frank = UserId::from("frank");
    append(store, &["frank"], new_message(31, now, 10, "{}")).await;
    let later = append(store, &["frank"], new_message(32, now + 1000, hour, "{}")).await;
    assert_eq!(
        later.seqs[0].1,
        Seq(2),
        "a seq is never reused, even when every message before it expired"
    );
    let page = read(store, &app, &frank, Seq(0), 10, now + 1000).await;
    assert_eq!(seqs(&page), vec![2]);

    // Idempotency: a retry within the window stores nothing and answers the first result.
    let keyed = |id: u64, key: &str, created: u64, users: &[&str]| {
        let mut a = append_to("contract-s", users, new_message(id, created, hour, "{}"));
        a.idempotency = Some(Idempotency {
            key: key.into(),
            expires_ms: created + 60_000,
        });
        a
    };
    let gina = UserId::from("gina");
    let once = store.append(keyed(41, "k1", now, &["gina"])).await.unwrap();
    let again = store
        .append(keyed(42, "k1", now + 10, &["gina"]))
        .await
        .unwrap();
    assert!(again.duplicate, "the same key again is a duplicate");
    assert_eq!(again.id, MessageId(41), "a duplicate answers the first id");
    assert_eq!(again.seqs, once.seqs, "and the first seqs");
    assert_eq!(
        seqs(&read(store, &app, &gina, Seq(0), 10, now).await),
        vec![1],
        "a duplicate stores nothing"
    );
    let racing = futures_util::future::join_all(
        (0..4).map(|i| store.append(keyed(50 + i, "k2", now, &["gina"]))),
    )
    .await;
    assert_eq!(
        racing
            .iter()
            .filter(|r| !r.as_ref().unwrap().duplicate)
            .count(),
        1,
        "concurrent appends with one key store once"
    );
    let mut in_other_app = keyed(60, "k1", now, &["gina"]);
    in_other_app.app = other_app.clone();
    assert!(
        !store.append(in_other_app).await.unwrap().duplicate,
        "keys are per app"
    );
    let expired_key = store
        .append(keyed(61, "k1", now + 60_000, &["gina"]))
        .await
        .unwrap();
    assert!(
        !expired_key.duplicate,
        "a key is forgotten once its window passed"
    );
    assert_eq!(expired_key.seqs[0].1, Seq(3));
}

/// `append_many`: one answer per append, in order; appends of one inbox take their seqs in
/// the order given; each keeps its idempotency key, within the call too.
pub(super) async fn many_contract(store: &dyn Inboxes) {
    let now = crate::now_ms();
    let hour = 3_600_000;
    let app = AppId::from("contract-m");
    let keyed = |id: u64, key: &str, users: &[&str]| {
        let mut a = append_to("contract-m", users, new_message(id, now, hour, "{}"));
        a.idempotency = Some(Idempotency {
            key: key.into(),
            expires_ms: now + 60_000,
        });
        a
    };
    assert!(
        store.append_many(Vec::new()).await.is_empty(),
        "no appends, no answers"
    );
    let appends = vec![
        append_to(
            "contract-m",
            &["hana"],
            new_message(71, now, hour, "{\"i\":0}"),
        ),
        append_to(
            "contract-m",
            &["ivan"],
            new_message(72, now, hour, "{\"i\":1}"),
        ),
        append_to(
            "contract-m",
            &["hana"],
            new_message(73, now, hour, "{\"i\":2}"),
        ),
        keyed(74, "m1", &["ivan", "hana"]),
        keyed(75, "m1", &["ivan", "hana"]),
        append_to(
            "contract-m",
            &["hana"],
            new_message(76, now, hour, "{\"i\":5}"),
        ),
    ];
    let answers: Vec<Appended> = store
        .append_many(appends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let hana = UserId::from("hana");
    let ivan = UserId::from("ivan");
    let ids: Vec<u64> = answers.iter().map(|a| a.id.0).collect();
    assert_eq!(
        ids,
        vec![71, 72, 73, 74, 74, 76],
        "one answer per append, in order"
    );
    assert_eq!(answers[0].seqs, vec![(hana.clone(), Seq(1))]);
    assert_eq!(answers[1].seqs, vec![(ivan.clone(), Seq(1))]);
    assert_eq!(
        answers[2].seqs,
        vec![(hana.clone(), Seq(2))],
        "appends of one inbox take seqs in the order given"
    );
    assert_eq!(
        answers[3].seqs,
        vec![(ivan.clone(), Seq(2)), (hana.clone(), Seq(3))]
    );
    assert!(!answers[3].duplicate);
    assert!(
        answers[4].duplicate && answers[4].seqs == answers[3].seqs,
        "a key used twice in one call stores once and answers the first result"
    );
    assert_eq!(answers[5].seqs, vec![(hana.clone(), Seq(4))]);
    let page = read(store, &app, &hana, Seq(0), 10, now).await;
    let held: Vec<u64> = page.messages.iter().map(|m| m.id.0).collect();
    assert_eq!(held, vec![71, 73, 74, 76], "every append is held, in order");
}

/// Appends `message` to `users` of `contract-s`; the append must succeed.
async fn append(store: &dyn Inboxes, users: &[&str], message: NewMessage) -> Appended {
    store
        .append(append_to("contract-s", users, message))
        .await
        .unwrap()
}

/// A read that must succeed.
async fn read(
    store: &dyn Inboxes,
    app: &AppId,
    user: &UserId,
    after: Seq,
    limit: usize,
    now_ms: u64,
) -> Page {
    store.read(app, user, after, limit, now_ms).await.unwrap()
}
