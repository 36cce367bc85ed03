//! The embedded store: the store contract in both durability modes, restarts, group commit,
//! the queue bound, and expiry on disk; for inboxes, topic histories and subscriptions.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tether_core::contract::{CONTRACT_INBOX_CAP, CONTRACT_TOPIC_HISTORY, store_contract};
use tether_core::store::{Append, Idempotency, NewMessage};
use tether_core::{
    AppId, Cursors, DeviceId, Inboxes, MessageId, Retention, Seq, StoreError, SubscriptionError,
    Subscriptions, TopicHistory, TopicId, UserId, now_ms,
};
use tether_proto::PayloadKind;
use tether_server::config::Durability;
use tether_server::store::{EmbeddedOptions, EmbeddedStore};

fn options(durability: Durability) -> EmbeddedOptions {
    EmbeddedOptions {
        retention: Retention {
            inbox_cap: CONTRACT_INBOX_CAP,
            topic_history: CONTRACT_TOPIC_HISTORY,
            ..Retention::default()
        },
        durability,
        sync_interval: Duration::from_millis(10),
        queue: 4096,
        min_free_bytes: 0,
    }
}

fn open(dir: &Path, options: EmbeddedOptions) -> EmbeddedStore {
    EmbeddedStore::open(dir, options).expect("store opens")
}

fn message(id: u64, created_ms: u64, ttl_ms: u64) -> NewMessage {
    NewMessage {
        id: MessageId(id),
        created_ms,
        expires_ms: created_ms + ttl_ms,
        kind: PayloadKind::Binary,
        payload: Bytes::from(format!("payload {id}")),
    }
}

fn append(users: &[&str], message: NewMessage) -> Append {
    Append {
        app: AppId::from("app"),
        users: users.iter().map(|u| UserId::from(*u)).collect(),
        message,
        idempotency: None,
    }
}

fn keyed(users: &[&str], message: NewMessage, key: &str) -> Append {
    let mut a = append(users, message);
    a.idempotency = Some(Idempotency {
        key: key.into(),
        expires_ms: a.message.created_ms + 60_000,
    });
    a
}

async fn seqs(store: &EmbeddedStore, user: &str, now: u64) -> Vec<u64> {
    let page = store
        .read(&AppId::from("app"), &UserId::from(user), Seq(0), 100, now)
        .await
        .unwrap();
    page.messages.iter().map(|m| m.seq.0).collect()
}

const HOUR: u64 = 3_600_000;

#[tokio::test]
async fn passes_the_contract_with_sync_durability() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), options(Durability::Sync));
    store_contract(&store).await;
    store.close().await;
}

#[tokio::test]
async fn passes_the_contract_with_interval_durability() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), options(Durability::Interval));
    store_contract(&store).await;
    store.close().await;
}

#[tokio::test]
async fn everything_survives_a_restart_and_seqs_continue() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let app = AppId::from("app");
    let alice = UserId::from("alice");
    let phone = DeviceId::from("phone");
    let tablet = DeviceId::from("tablet");

    let store = open(dir.path(), options(Durability::Sync));
    for id in 1..=3 {
        store
            .append(append(&["alice"], message(id, now, HOUR)))
            .await
            .unwrap();
    }
    let first = store
        .append(keyed(&["alice", "bob"], message(4, now, HOUR), "k1"))
        .await
        .unwrap();
    assert_eq!(first.seqs[0].1, Seq(4));
    store.ack(&app, &alice, &phone, Seq(2)).await.unwrap();
    assert_eq!(
        store
            .note_attempt(&app, &alice, &tablet, Seq(3))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .note_attempt(&app, &alice, &tablet, Seq(3))
            .await
            .unwrap(),
        2
    );
    // An inbox whose every message is gone: two trimmed by the cap of 5 and the rest expired.
    // 50 s: long enough that the writer's own clock does not expire them first, short enough
    // that the sweep leaves the idempotency key (60 s) alone.
    for id in 10..17 {
        store
            .append(append(&["frank"], message(id, now, 50_000)))
            .await
            .unwrap();
    }
    assert_eq!(seqs(&store, "frank", now).await, vec![3, 4, 5, 6, 7]);
    let swept = store.sweep_expired(now + 50_000).await.unwrap();
    assert_eq!(swept.idempotency_keys, 0);
    assert_eq!(swept.messages, 5, "frank's five held messages expired");
    assert_eq!(seqs(&store, "frank", now).await, Vec::<u64>::new());
    store.close().await;
    assert!(
        matches!(
            store
                .append(append(&["alice"], message(99, now, HOUR)))
                .await,
            Err(StoreError::Unavailable(_))
        ),
        "a closed store refuses writes"
    );
    assert!(store.read(&app, &alice, Seq(0), 10, now).await.is_err());
    drop(store);

    let store = open(dir.path(), options(Durability::Sync));
    let page = store.read(&app, &alice, Seq(0), 10, now).await.unwrap();
    assert_eq!(page.head, Seq(4));
    assert_eq!(
        page.messages
            .iter()
            .map(|m| (m.seq.0, m.id.0))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2), (3, 3), (4, 4)]
    );
    assert_eq!(page.messages[2].payload, Bytes::from("payload 3"));
    assert_eq!(page.messages[2].expires_ms, now + HOUR);
    assert_eq!(seqs(&store, "bob", now).await, vec![1]);
    let cursors = store.cursors(&app, &alice).await.unwrap();
    assert_eq!(cursors.len(), 2);
    assert_eq!(cursors[0].0, phone);
    assert_eq!(cursors[0].1.acked, Seq(2));
    assert_eq!(cursors[1].0, tablet);
    assert_eq!(
        (cursors[1].1.attempt_seq, cursors[1].1.attempts),
        (Seq(3), 2)
    );
    assert_eq!(
        store
            .note_attempt(&app, &alice, &tablet, Seq(3))
            .await
            .unwrap(),
        3,
        "the attempt count carries on"
    );
    let again = store
        .append(keyed(&["alice", "bob"], message(5, now + 1, HOUR), "k1"))
        .await
        .unwrap();
    assert!(again.duplicate, "the idempotency key is remembered");
    assert_eq!(
        (again.id, again.seqs.clone()),
        (first.id, first.seqs.clone())
    );

    let next = store
        .append(append(&["alice"], message(6, now, HOUR)))
        .await
        .unwrap();
    assert_eq!(next.seqs[0].1, Seq(5), "seqs continue after a restart");
    let frank = store
        .append(append(&["frank"], message(20, now, HOUR)))
        .await
        .unwrap();
    assert_eq!(
        frank.seqs[0].1,
        Seq(8),
        "and are not reused when every earlier message is gone"
    );
    assert_eq!(seqs(&store, "frank", now).await, vec![8]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path(), options(Durability::Sync)));
    let now = now_ms();
    let tasks: Vec<_> = (0..2000u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(append(&["hot"], message(i, now, HOUR)))
                    .await
                    .unwrap()
                    .seqs[0]
                    .1
                    .0
            })
        })
        .collect();
    let mut got: Vec<u64> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=2000).collect::<Vec<_>>(),
        "every seq exactly once"
    );
    let stats = store.stats();
    assert_eq!(stats.appends, 2000);
    assert!(
        stats.fsyncs < 1000,
        "one fsync covers many appends: {stats:?}"
    );
    assert!(stats.fsyncs >= 1);
    store.close().await;
}

#[tokio::test]
async fn each_mode_fsyncs_when_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let store = open(dir.path(), options(Durability::Sync));
    for i in 0..10 {
        store
            .append(append(&["a"], message(i, now, HOUR)))
            .await
            .unwrap();
        assert_eq!(
            store.stats().fsyncs,
            i + 1,
            "sync mode: each append waits for its own fsync when alone"
        );
    }
    store.close().await;

    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Durability::Interval);
    opts.sync_interval = Duration::from_millis(300);
    let store = open(dir.path(), opts);
    let started = std::time::Instant::now();
    for i in 0..10 {
        store
            .append(append(&["a"], message(i, now, HOUR)))
            .await
            .unwrap();
    }
    if started.elapsed() < Duration::from_millis(250) {
        assert!(
            store.stats().fsyncs <= 1,
            "interval mode answers without waiting for fsyncs: {:?}",
            store.stats()
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        store.stats().fsyncs >= 1,
        "the interval fsync runs on its own"
    );
    store.close().await;
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Durability::Sync);
    opts.queue = 1;
    let store = open(dir.path(), opts);
    let now = now_ms();
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        join_all((0..500).map(|i| store.append(append(&["q"], message(i, now, HOUR))))),
    )
    .await
    .expect("a full queue never hangs");
    let mut stored: Vec<u64> = Vec::new();
    let mut overloaded = 0;
    for r in results {
        match r {
            Ok(a) => stored.push(a.seqs[0].1.0),
            Err(StoreError::Overloaded(_)) => overloaded += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(overloaded > 0, "500 appends at once overflow a queue of 1");
    stored.sort_unstable();
    assert_eq!(
        stored,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "refused appends took no seq"
    );
    let next = store
        .append(append(&["q"], message(1000, now, HOUR)))
        .await
        .unwrap();
    assert_eq!(
        next.seqs[0].1.0,
        stored.len() as u64 + 1,
        "and the store goes on"
    );
    store.close().await;
}

#[tokio::test]
async fn the_sweep_deletes_expired_messages_and_keys_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Durability::Interval);
    opts.retention.inbox_cap = 100;
    let store = open(dir.path(), opts);
    let now = now_ms();
    // Short-lived messages between long-lived ones, so that the front is not what expires.
    store
        .append(append(&["s"], message(1, now, HOUR)))
        .await
        .unwrap();
    for id in 2..=6 {
        store
            .append(append(&["s"], message(id, now, 30_000)))
            .await
            .unwrap();
    }
    store
        .append(append(&["s"], message(7, now, HOUR)))
        .await
        .unwrap();
    store
        .append(keyed(&["t"], message(8, now, HOUR), "key"))
        .await
        .unwrap();

    let swept = store.sweep_expired(now + 29_999).await.unwrap();
    assert_eq!(
        (swept.messages, swept.idempotency_keys),
        (0, 0),
        "nothing expired yet"
    );
    let swept = store.sweep_expired(now + 30_000).await.unwrap();
    assert_eq!((swept.messages, swept.idempotency_keys), (5, 0));
    // Read as of a time before they expired: only what is left on disk comes back.
    assert_eq!(seqs(&store, "s", now).await, vec![1, 7]);

    let swept = store.sweep_expired(now + 60_000).await.unwrap();
    assert_eq!(swept.idempotency_keys, 1);
    let retry = store
        .append(keyed(&["t"], message(9, now + 10, HOUR), "key"))
        .await
        .unwrap();
    assert!(
        !retry.duplicate,
        "the key's record is gone from disk, so even a retry inside its window stores again"
    );
    assert_eq!(retry.seqs[0].1, Seq(2));
    store.close().await;
}

#[tokio::test]
async fn expired_messages_leave_the_front_of_an_inbox_when_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(Durability::Sync);
    opts.retention.inbox_cap = 100;
    let store = open(dir.path(), opts);
    let now = now_ms();
    // Already expired by the writer's clock when the next append comes.
    for id in 1..=3 {
        store
            .append(append(&["f"], message(id, now - 10_000, 5_000)))
            .await
            .unwrap();
    }
    store
        .append(append(&["f"], message(4, now, HOUR)))
        .await
        .unwrap();
    store
        .append(append(&["f"], message(5, now, HOUR)))
        .await
        .unwrap();
    // Read as of before they expired: they are gone from disk, not only filtered out.
    assert_eq!(seqs(&store, "f", now - 10_000).await, vec![4, 5]);
    let page = store
        .read(&AppId::from("app"), &UserId::from("f"), Seq(0), 10, now)
        .await
        .unwrap();
    assert_eq!(page.head, Seq(5));
    store.close().await;
}

#[tokio::test]
async fn seqs_continue_after_every_message_expired_was_swept_and_the_store_restarted() {
    for durability in [Durability::Sync, Durability::Interval] {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        let (app, gone, newest) = (AppId::from("app"), UserId::from("g"), UserId::from("n"));
        let store = open(dir.path(), options(durability));
        for id in 1..=3 {
            store
                .append(append(&["g", "n"], message(id, now, 30_000)))
                .await
                .unwrap();
        }
        // "n" keeps an older message: only its newest ones expire.
        store
            .append(append(&["n"], message(4, now, HOUR)))
            .await
            .unwrap();
        store
            .append(append(&["n"], message(5, now, 30_000)))
            .await
            .unwrap();
        let swept = store.sweep_expired(now + 30_000).await.unwrap();
        assert_eq!(swept.messages, 3 + 4);
        let page = store.read(&app, &gone, Seq(0), 10, now).await.unwrap();
        assert_eq!((page.head, page.messages.len()), (Seq(3), 0));
        let page = store.read(&app, &newest, Seq(0), 10, now).await.unwrap();
        assert_eq!(page.head, Seq(5));
        store.close().await;
        drop(store);

        let store = open(dir.path(), options(durability));
        let page = store.read(&app, &gone, Seq(3), 10, now).await.unwrap();
        assert_eq!(
            page.head,
            Seq(3),
            "{durability:?}: the head outlives the messages"
        );
        let next = store
            .append(append(&["g", "n"], message(6, now, HOUR)))
            .await
            .unwrap();
        assert_eq!(
            next.seqs.iter().map(|(_, s)| s.0).collect::<Vec<_>>(),
            vec![4, 6],
            "{durability:?}: no seq is handed out twice"
        );
        assert_eq!(seqs(&store, "n", now).await, vec![4, 6]);
        store.close().await;
    }
}

async fn offsets(store: &EmbeddedStore, topic: &str, now: u64) -> (u64, Vec<u64>) {
    let page = store
        .history(&AppId::from("app"), &TopicId::from(topic), Seq(0), 100, now)
        .await
        .unwrap();
    (page.head.0, page.messages.iter().map(|m| m.seq.0).collect())
}

async fn topics(store: &EmbeddedStore, user: &str) -> Vec<String> {
    store
        .subscriptions(&AppId::from("app"), &UserId::from(user))
        .await
        .unwrap()
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect()
}

#[tokio::test]
async fn topic_offsets_and_subscriptions_survive_a_restart() {
    for durability in [Durability::Sync, Durability::Interval] {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        let app = AppId::from("app");
        let (news, gone) = (TopicId::from("news"), TopicId::from("gone"));
        let alice = UserId::from("alice");

        let store = open(dir.path(), options(durability));
        // Six publications: the cap of 4 keeps 3..=6.
        for id in 1..=6 {
            let offset = store.publish(&app, &news, message(id, now, HOUR)).await;
            assert_eq!(offset.unwrap(), Seq(id));
        }
        // A topic whose every publication expires and is swept from the disk.
        for id in 1..=3 {
            store
                .publish(&app, &gone, message(id, now, 30_000))
                .await
                .unwrap();
        }
        let swept = store.sweep_expired(now + 30_000).await.unwrap();
        assert_eq!(swept.messages, 3);
        assert_eq!(offsets(&store, "gone", now).await, (3, vec![]));
        for topic in ["sports", "art"] {
            let topic = TopicId::from(topic);
            assert!(
                store
                    .set_subscription(&app, &alice, &topic, true, 2)
                    .await
                    .unwrap()
            );
        }
        store.close().await;
        drop(store);

        let store = open(dir.path(), options(durability));
        assert_eq!(
            offsets(&store, "news", now).await,
            (6, vec![3, 4, 5, 6]),
            "{durability:?}: the history comes back as it was"
        );
        let page = store.history(&app, &news, Seq(5), 10, now).await.unwrap();
        assert_eq!(page.messages[0].id, MessageId(6));
        assert_eq!(page.messages[0].payload, Bytes::from("payload 6"));
        assert_eq!(
            store
                .publish(&app, &news, message(7, now, HOUR))
                .await
                .unwrap(),
            Seq(7),
            "{durability:?}: offsets continue after a restart"
        );
        assert_eq!(offsets(&store, "news", now).await, (7, vec![4, 5, 6, 7]));
        assert_eq!(
            offsets(&store, "gone", now).await,
            (3, vec![]),
            "{durability:?}: the head outlives the publications"
        );
        assert_eq!(
            store
                .publish(&app, &gone, message(4, now, HOUR))
                .await
                .unwrap(),
            Seq(4),
            "{durability:?}: no offset is handed out twice"
        );

        assert_eq!(topics(&store, "alice").await, ["art", "sports"]);
        let refused = store
            .set_subscription(&app, &alice, &TopicId::from("weather"), true, 2)
            .await;
        assert!(
            matches!(refused, Err(SubscriptionError::TooMany(2))),
            "{durability:?}: the count comes back from the disk: {refused:?}"
        );
        let art = TopicId::from("art");
        let off = store.set_subscription(&app, &alice, &art, false, 2).await;
        assert!(off.unwrap());
        store.close().await;
        drop(store);

        let store = open(dir.path(), options(durability));
        assert_eq!(
            topics(&store, "alice").await,
            ["sports"],
            "{durability:?}: an unsubscribe survives a restart too"
        );
        assert_eq!(offsets(&store, "news", now).await, (7, vec![4, 5, 6, 7]));
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path(), options(Durability::Sync)));
    let now = now_ms();
    let tasks: Vec<_> = (0..2000u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let topic = TopicId::from("hot");
                store
                    .publish(&AppId::from("app"), &topic, message(i, now, HOUR))
                    .await
                    .unwrap()
                    .0
            })
        })
        .collect();
    let mut got: Vec<u64> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=2000).collect::<Vec<_>>(),
        "every offset exactly once"
    );
    let stats = store.stats();
    assert_eq!((stats.publishes, stats.appends), (2000, 0));
    assert!(
        stats.fsyncs < 1000,
        "one fsync covers many publishes: {stats:?}"
    );
    assert!(stats.fsyncs >= 1);
    store.close().await;
}

#[tokio::test]
async fn sync_mode_fsyncs_each_lone_publish_and_subscription_change() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let store = open(dir.path(), options(Durability::Sync));
    let (app, topic, user) = (AppId::from("app"), TopicId::from("t"), UserId::from("u"));
    for i in 0..5 {
        store
            .publish(&app, &topic, message(i, now, HOUR))
            .await
            .unwrap();
        assert_eq!(
            store.stats().fsyncs,
            i + 1,
            "a publish alone waits for its own fsync"
        );
    }
    assert!(
        store
            .set_subscription(&app, &user, &topic, true, 10)
            .await
            .unwrap()
    );
    assert_eq!(store.stats().fsyncs, 6, "so does a subscription");
    assert!(
        !store
            .set_subscription(&app, &user, &topic, true, 10)
            .await
            .unwrap()
    );
    assert_eq!(
        store.stats().fsyncs,
        6,
        "one that changes nothing writes nothing"
    );
    assert!(
        store
            .set_subscription(&app, &user, &topic, false, 10)
            .await
            .unwrap()
    );
    assert_eq!(store.stats().fsyncs, 7, "and an unsubscribe");
    store.close().await;
}
