//! [`RedisStore`] against a real Redis: the store contract, and what only Redis can get wrong
//! (appends that fail half-way, races on one key, damaged values, slots).
//!
//! Each test has a prefix of its own (see `tether_redis::testing`) and is skipped when no Redis
//! answers outside CI. Tests that damage values write the store's keys by name: `seq`,
//! `inbox`, `cursors` under `Keys::user`, `idem:<key>` under `Keys::app`.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use redis::cluster_routing::Slot;
use tether_core::contract::{CONTRACT_INBOX_CAP, CONTRACT_TOPIC_HISTORY, store_contract};
use tether_core::store::{Append, Idempotency, NewMessage, Page};
use tether_core::{
    AppId, Cursors, DeviceId, Inboxes, MessageId, Retention, Seq, StoreError, Subscriptions,
    TopicHistory, TopicId, UserId,
};
use tether_proto::PayloadKind;
use tether_redis::{Keys, Redis, RedisOptions, RedisStore};

const HOUR: u64 = 3_600_000;

async fn store(test: &str, retention: Retention) -> Option<(RedisStore, RedisOptions)> {
    let options = tether_redis::testing::options(test).await?;
    let store = RedisStore::connect(&options, retention).await.unwrap();
    Some((store, options))
}

async fn raw(options: &RedisOptions) -> Redis {
    Redis::connect(options).await.unwrap()
}

/// Every key under the test's prefix.
async fn scan(options: &RedisOptions) -> Vec<String> {
    let mut redis = raw(options).await;
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", options.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .unwrap();
        found.extend(batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Deletes the test's keys: seq counters have no TTL, and the test server is shared.
async fn forget(options: &RedisOptions) {
    let mut redis = raw(options).await;
    for key in scan(options).await {
        let () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

fn append(users: &[&str], id: u64, key: Option<&str>) -> Append {
    let now = tether_core::now_ms();
    Append {
        app: AppId::from("app"),
        users: users.iter().map(|u| UserId::from(*u)).collect(),
        message: NewMessage {
            id: MessageId(id),
            created_ms: now,
            expires_ms: now + HOUR,
            kind: PayloadKind::Binary,
            payload: Bytes::from(format!("m{id}")),
        },
        idempotency: key.map(|key| Idempotency {
            key: key.into(),
            expires_ms: now + HOUR,
        }),
    }
}

async fn page(store: &RedisStore, user: &str) -> Page {
    store
        .read(
            &AppId::from("app"),
            &UserId::from(user),
            Seq(0),
            10_000,
            tether_core::now_ms(),
        )
        .await
        .unwrap()
}

/// (seq, message id) of everything `user`'s inbox holds.
async fn held(store: &RedisStore, user: &str) -> Vec<(u64, u64)> {
    page(store, user)
        .await
        .messages
        .iter()
        .map(|m| (m.seq.0, m.id.0))
        .collect()
}

fn is_corrupt<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Corrupt(_)))
}

#[tokio::test]
async fn redis_store_passes_the_contract() {
    let retention = Retention {
        inbox_cap: CONTRACT_INBOX_CAP,
        topic_history: CONTRACT_TOPIC_HISTORY,
        ..Retention::default()
    };
    let Some((store, options)) = store("store-contract", retention).await else {
        return;
    };
    store_contract(&store).await;
    forget(&options).await;
}

#[tokio::test]
async fn a_retry_after_a_partial_failure_appends_only_to_the_users_missed() {
    let Some((store, options)) = store("store-retry", Retention::default()).await else {
        return;
    };
    let keys = Keys::new(&options.prefix);
    let mut redis = raw(&options).await;
    // Alice has a message already, so her seq for the keyed one differs from the others'.
    store.append(append(&["alice"], 1, None)).await.unwrap();
    // Bob's inbox key has the wrong type: his script fails, the others' run.
    let bob_inbox = keys.user("app", "bob", "inbox");
    let () = redis::cmd("SET")
        .arg(&bob_inbox)
        .arg("in the way")
        .query_async(&mut redis)
        .await
        .unwrap();
    let failed = store
        .append(append(&["alice", "bob", "carol"], 10, Some("k")))
        .await;
    assert!(is_corrupt(&failed), "{failed:?}");
    assert_eq!(held(&store, "alice").await, [(1, 1), (2, 10)]);
    assert_eq!(held(&store, "carol").await, [(1, 10)]);
    assert_eq!(
        page(&store, "bob").await.head,
        Seq(0),
        "bob's counter untouched"
    );

    // The API retries the same request: same key and users, a new message id and time.
    let () = redis::cmd("DEL")
        .arg(&bob_inbox)
        .query_async(&mut redis)
        .await
        .unwrap();
    let retried = store
        .append(append(&["alice", "bob", "carol"], 11, Some("k")))
        .await
        .unwrap();
    assert!(retried.duplicate, "the key was seen before");
    assert_eq!(retried.id, MessageId(10), "the first call's message id");
    let seqs: Vec<(&str, u64)> = retried
        .seqs
        .iter()
        .map(|(u, s)| (u.as_str(), s.0))
        .collect();
    assert_eq!(
        seqs,
        [("alice", 2), ("bob", 1), ("carol", 1)],
        "the seqs the first call gave, and bob's new one"
    );
    for (user, want) in [
        ("alice", vec![(1, 1), (2, 10)]),
        ("bob", vec![(1, 10)]),
        ("carol", vec![(1, 10)]),
    ] {
        assert_eq!(
            held(&store, user).await,
            want,
            "{user} has the message once"
        );
    }
    let m = &page(&store, "bob").await.messages[0];
    assert_eq!(m.payload, Bytes::from_static(b"m11"));

    let again = store
        .append(append(&["alice", "bob", "carol"], 12, Some("k")))
        .await
        .unwrap();
    assert_eq!((again.seqs, again.duplicate), (retried.seqs, true));
    assert_eq!(
        page(&store, "bob").await.head,
        Seq(1),
        "a third call stores nothing"
    );
    forget(&options).await;
}

#[tokio::test]
async fn concurrent_appends_with_one_key_store_once() {
    let Some((store, options)) = store("store-race", Retention::default()).await else {
        return;
    };
    let results = futures_util::future::join_all(
        (0..20).map(|i| store.append(append(&["dora", "ed"], 100 + i, Some("race")))),
    )
    .await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    let first = results.iter().find(|r| !r.duplicate).unwrap();
    for r in &results {
        assert_eq!(
            (r.id, &r.seqs),
            (first.id, &first.seqs),
            "one answer for all"
        );
    }
    for user in ["dora", "ed"] {
        assert_eq!(held(&store, user).await, [(1, first.id.0)], "{user}");
    }
    forget(&options).await;
}

/// Two nodes may mint the same message id (a node number collision): two different keys must
/// still store two messages.
#[tokio::test]
async fn a_user_s_cursors_live_cursor_idle_past_their_last_write() {
    let retention = Retention {
        cursor_idle: std::time::Duration::from_secs(3600),
        ..Retention::default()
    };
    let Some((store, options)) = store("store-cursor-idle", retention).await else {
        return;
    };
    let key = Keys::new(&options.prefix).user("app", "fay", "cursors");
    let mut redis = raw(&options).await;
    let pttl = |redis: &mut Redis| {
        let key = key.clone();
        let mut redis = redis.clone();
        async move {
            redis::cmd("PTTL")
                .arg(&key)
                .query_async::<i64>(&mut redis)
                .await
                .unwrap()
        }
    };
    let (app, fay) = (AppId::from("app"), UserId::from("fay"));
    store
        .ack(&app, &fay, &DeviceId::from("phone"), Seq(3))
        .await
        .unwrap();
    let ttl = pttl(&mut redis).await;
    assert!(ttl > 3_590_000 && ttl <= 3_600_000, "PTTL {ttl}");
    // An attempt count is a write too; an ack that moves nothing is not.
    let () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    store
        .ack(&app, &fay, &DeviceId::from("phone"), Seq(2))
        .await
        .unwrap();
    assert!(pttl(&mut redis).await <= 60_000);
    store
        .note_attempt(&app, &fay, &DeviceId::from("tablet"), Seq(4))
        .await
        .unwrap();
    assert!(pttl(&mut redis).await > 3_590_000);
    forget(&options).await;
}

#[tokio::test]
async fn two_keys_with_one_message_id_store_two_messages() {
    let Some((store, options)) = store("store-id-collision", Retention::default()).await else {
        return;
    };
    let first = store.append(append(&["fay"], 7, Some("k1"))).await.unwrap();
    let second = store.append(append(&["fay"], 7, Some("k2"))).await.unwrap();
    assert!(!first.duplicate && !second.duplicate);
    assert_eq!(held(&store, "fay").await, [(1, 7), (2, 7)]);
    forget(&options).await;
}

#[tokio::test]
async fn concurrent_appends_to_one_inbox_get_gapless_seqs() {
    let Some((store, options)) = store("store-gapless", Retention::default()).await else {
        return;
    };
    let results =
        futures_util::future::join_all((0..50).map(|i| store.append(append(&["fay"], i, None))))
            .await;
    let mut seqs: Vec<u64> = results
        .into_iter()
        .map(|r| r.unwrap().seqs[0].1.0)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    let held = held(&store, "fay").await;
    assert_eq!(
        held.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
    let ids: HashSet<u64> = held.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), 50, "each append's own message at its seq");
    forget(&options).await;
}

#[tokio::test]
async fn damaged_values_answer_corrupt_and_the_store_goes_on() {
    let Some((store, options)) = store("store-corrupt", Retention::default()).await else {
        return;
    };
    let keys = Keys::new(&options.prefix);
    let mut redis = raw(&options).await;
    let app = AppId::from("app");
    let (gus, phone) = (UserId::from("gus"), DeviceId::from("phone"));
    for i in 0..3 {
        store.append(append(&["gus"], i, None)).await.unwrap();
    }
    async fn write(redis: &mut Redis, args: &[&[u8]]) {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query_async(redis).await.unwrap();
    }

    // A list element cut short.
    let inbox = keys.user("app", "gus", "inbox");
    write(
        &mut redis,
        &[b"LSET", inbox.as_bytes(), b"1", b"\x00\x00\x00"],
    )
    .await;
    let read = store
        .read(&app, &gus, Seq(0), 10, tether_core::now_ms())
        .await;
    assert!(is_corrupt(&read), "{read:?}");
    // An element holding another seq than its place in the list.
    let mut moved = 7u64.to_be_bytes().to_vec();
    moved.extend_from_slice(&[1; 26]);
    write(&mut redis, &[b"LSET", inbox.as_bytes(), b"1", &moved]).await;
    assert!(is_corrupt(&store.read(&app, &gus, Seq(0), 10, 0).await));
    // A seq counter that is not a number, or that lost step with the list.
    let seq = keys.user("app", "gus", "seq");
    write(&mut redis, &[b"SET", seq.as_bytes(), b"many"]).await;
    assert!(is_corrupt(&store.append(append(&["gus"], 9, None)).await));
    assert!(is_corrupt(&store.read(&app, &gus, Seq(0), 10, 0).await));
    write(&mut redis, &[b"SET", seq.as_bytes(), b"1"]).await;
    assert!(
        is_corrupt(&store.append(append(&["gus"], 9, None)).await),
        "a counter below the last seq held would hand out seqs again"
    );
    // A key of the wrong type.
    write(&mut redis, &[b"SET", inbox.as_bytes(), b"not a list"]).await;
    assert!(is_corrupt(&store.read(&app, &gus, Seq(0), 10, 0).await));
    // A damaged cursor.
    let cursors = keys.user("app", "gus", "cursors");
    write(&mut redis, &[b"HSET", cursors.as_bytes(), b"phone", b"1:2"]).await;
    assert!(is_corrupt(&store.cursor(&app, &gus, &phone).await));
    assert!(is_corrupt(&store.cursors(&app, &gus).await));
    assert!(is_corrupt(&store.ack(&app, &gus, &phone, Seq(3)).await));
    assert!(is_corrupt(
        &store.note_attempt(&app, &gus, &phone, Seq(3)).await
    ));
    // A damaged idempotency record.
    let record = keys.app("app", "idem:broken");
    write(&mut redis, &[b"SET", record.as_bytes(), b"short"]).await;
    assert!(is_corrupt(
        &store.append(append(&["hal"], 20, Some("broken"))).await
    ));
    assert_eq!(page(&store, "hal").await.head, Seq(0));

    let fine = store
        .append(append(&["hal"], 21, Some("fine")))
        .await
        .unwrap();
    assert_eq!(fine.seqs[0].1, Seq(1), "the store is still serving");
    forget(&options).await;
}

#[tokio::test]
async fn keys_of_one_user_share_a_slot_and_only_counters_and_subscriptions_last() {
    let Some((store, options)) = store("store-slots", Retention::default()).await else {
        return;
    };
    // Ids with the characters that could end a hash tag early.
    let (app, user, device) = (
        AppId::from("a}p:p"),
        UserId::from("u{s}e:r"),
        DeviceId::from("d"),
    );
    let mut keyed = append(&[], 1, Some("k{1}"));
    keyed.app = app.clone();
    keyed.users = vec![user.clone()];
    store.append(keyed).await.unwrap();
    store.ack(&app, &user, &device, Seq(1)).await.unwrap();
    store
        .note_attempt(&app, &user, &device, Seq(1))
        .await
        .unwrap();
    store
        .set_subscription(&app, &user, &TopicId::from("t"), true, 10)
        .await
        .unwrap();
    let topic = TopicId::from("t{o}p");
    let mut message = append(&[], 2, None).message;
    message.created_ms = tether_core::now_ms();
    store.publish(&app, &topic, message).await.unwrap();

    let found = scan(&options).await;
    let mut redis = raw(&options).await;
    let keys = Keys::new(&options.prefix);
    let user_slot = Slot::for_key(keys.user(app.as_str(), user.as_str(), "seq"));
    let topic_slot = Slot::for_key(keys.topic(app.as_str(), topic.as_str(), "seq"));
    let mut by_slot: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for key in &found {
        let slot = Slot::for_key(key);
        let owner = if slot == user_slot {
            "user"
        } else if slot == topic_slot {
            "topic"
        } else {
            "other"
        };
        let name = key.rsplit_once('}').map_or(key.as_str(), |(_, n)| n);
        by_slot.entry(owner).or_default().push(name);
    }
    for names in by_slot.values_mut() {
        names.sort_unstable();
    }
    assert_eq!(
        by_slot,
        BTreeMap::from([
            (
                "user",
                vec![
                    ":cursors",
                    ":idem-exp",
                    ":idem-seq",
                    ":inbox",
                    ":seq",
                    ":subs"
                ]
            ),
            ("topic", vec![":history", ":seq"]),
            ("other", vec![":idem:k%7B1%7D"]),
        ]),
        "every key the store wrote for one user is in that user's slot: {found:?}"
    );

    // Messages and idempotency entries expire with what they hold, cursors `cursor_idle`
    // after their last write; counters and subscriptions never do.
    let cursor_idle = Retention::default().cursor_idle.as_millis() as i64;
    for key in &found {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let expires = !(key.ends_with(":seq") || key.ends_with(":subs"));
        assert_eq!(ttl > 0, expires, "{key}: ttl {ttl}");
        let most = if key.ends_with(":cursors") {
            cursor_idle
        } else {
            (HOUR + tether_redis::store::TTL_MARGIN_MS) as i64
        };
        assert!(ttl <= most, "{key}: ttl {ttl}");
    }
    forget(&options).await;
}

#[tokio::test]
async fn seqs_go_on_after_the_messages_are_gone() {
    let Some((store, options)) = store("store-vanish", Retention::default()).await else {
        return;
    };
    for i in 0..3 {
        store.append(append(&["ivy"], i, None)).await.unwrap();
    }
    // What the inbox key's TTL does to an idle inbox.
    let mut redis = raw(&options).await;
    let () = redis::cmd("DEL")
        .arg(Keys::new(&options.prefix).user("app", "ivy", "inbox"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(page(&store, "ivy").await.head, Seq(3));
    let next = store.append(append(&["ivy"], 3, None)).await.unwrap();
    assert_eq!(next.seqs[0].1, Seq(4));
    assert_eq!(held(&store, "ivy").await, [(4, 3)]);
    forget(&options).await;
}
