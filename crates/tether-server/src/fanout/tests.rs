//! The fan-out with real connection handles (no sockets): batches, order, gap fills, pacing,
//! and the bounded queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tether_core::{AppId, DeviceId, MemoryStore, Outgoing, Seq, Store, TopicId, Transport, UserId};
use tether_proto::{PayloadKind, Publication};
use tokio_util::sync::CancellationToken;

use super::batch::Batch;
use super::topic::{Sub, Topic};
use super::{Busy, Fanout, Job};
use crate::config::Config;
use crate::gateway::handle::{ConnHandle, NewConn};
use crate::gateway::table::ConnTable;
use crate::link::Binding;
use crate::link::{Encoding, Link};
use crate::metrics::Metrics;
use crate::session::inbox::InboxState;

fn conn(table: &ConnTable, app: &AppId) -> Arc<ConnHandle> {
    conn_over(table, app, Transport::Tcp, Encoding::Binary)
}

fn conn_over(
    table: &ConnTable,
    app: &AppId,
    transport: Transport,
    encoding: Encoding,
) -> Arc<ConnHandle> {
    conn_with_queue(table, app, transport, encoding, 1 << 20)
}

fn conn_with_queue(
    table: &ConnTable,
    app: &AppId,
    transport: Transport,
    encoding: Encoding,
    queue_limit: usize,
) -> Arc<ConnHandle> {
    let conn = Arc::new(ConnHandle::new(NewConn {
        id: table.next_id(),
        transport,
        encoding,
        device: DeviceId::from("d"),
        bindings: vec![Binding::new(app.clone(), UserId::from("u"), 0)],
        resume: vec![InboxState::resuming(0, 0)],
        queue_limit,
        direct: None,
        idle_limit: Duration::from_secs(600),
        now_ms: 0,
    }));
    table.insert(conn.clone());
    conn
}

/// Frames queued on `conns` since the last call.
fn drain(conns: &[Arc<ConnHandle>]) -> usize {
    conns
        .iter()
        .map(|c| {
            let mut frames = VecDeque::new();
            c.take(&mut frames);
            frames.len()
        })
        .sum()
}

fn message(app: &AppId, topic: &TopicId) -> Arc<Outgoing> {
    numbered(app, topic, 0, 1)
}

fn numbered(app: &AppId, topic: &TopicId, offset: u64, msg_id: u64) -> Arc<Outgoing> {
    Arc::new(Outgoing::publication(Publication {
        app: app.to_string(),
        topic: topic.to_string(),
        offset,
        msg_id,
        created_ms: 0,
        kind: PayloadKind::Json,
        payload: Bytes::from(msg_id.to_string()),
    }))
}

/// The queue entries of `conn` since the last call, and the (offset, msg_id) of every
/// publication in them, in order.
fn publications(conn: &ConnHandle) -> (usize, Vec<(u64, u64)>) {
    let entries = take_written(conn);
    let mut frames = Vec::new();
    for entry in &entries {
        match conn.encoding {
            Encoding::Binary => {
                let mut buf = bytes::BytesMut::from(&entry[..]);
                while let Some(frame) = tether_proto::binary::decode(&mut buf, 1 << 20).unwrap() {
                    frames.push(frame);
                }
                assert!(buf.is_empty(), "a partial frame in an entry");
            }
            Encoding::Json => frames.push(tether_proto::json::decode(entry).unwrap()),
        }
    }
    let found = frames
        .into_iter()
        .filter_map(|f| match f.body {
            tether_proto::Body::Publication(p) => Some((p.offset, p.msg_id)),
            _ => None,
        })
        .collect();
    (entries.len(), found)
}

fn started(config: &Config, store: Arc<dyn Store>) -> (Arc<Fanout>, Arc<ConnTable>) {
    let table = table();
    let fanout = Fanout::start(config, store, table.clone(), CancellationToken::new());
    (fanout, table)
}

fn table() -> Arc<ConnTable> {
    let metrics = Metrics::new();
    Arc::new(ConnTable::new(
        metrics.queue_overflows.clone(),
        metrics.push_deliveries.clone(),
    ))
}

/// Subscribes `conn` to `topic` for the business (request id 0), as the node does.
fn subscribe_conn(fanout: &Fanout, conn: &Arc<ConnHandle>, topic: &TopicId) -> Result<bool, Busy> {
    fanout.join(conn.clone(), 0, topic)
}

async fn subscribed(fanout: &Fanout, app: &AppId, topic: &TopicId, conns: &[&Arc<ConnHandle>]) {
    for c in conns {
        assert_eq!(subscribe_conn(fanout, c, topic), Ok(true));
    }
    while fanout.subscribers(app, topic) < conns.len() {
        tokio::task::yield_now().await;
    }
    for c in conns {
        take_written(c); // the `subscribed` reply
    }
}

/// What `conn` has queued, taken and reported written as its task would.
fn take_written(conn: &ConnHandle) -> VecDeque<Bytes> {
    let mut entries = VecDeque::new();
    conn.take(&mut entries);
    conn.written(entries.iter().map(Bytes::len).sum(), 0);
    entries
}

#[tokio::test]
async fn publications_waiting_together_leave_joined_for_tcp_and_one_by_one_for_websocket() {
    let (fanout, table) = started(&Config::for_tests(), Arc::new(MemoryStore::default()));
    let (app, topic) = (AppId::from("demo"), TopicId::from("t"));
    let tcp = conn(&table, &app);
    let ws = conn_over(&table, &app, Transport::Ws, Encoding::Json);
    subscribed(&fanout, &app, &topic, &[&tcp, &ws]).await;

    // Queued without yielding: the worker finds all five waiting. (Current-thread runtime.)
    for id in 1..=5 {
        let msg = numbered(&app, &topic, 0, id);
        let job = Job::Publish {
            topic: topic.clone(),
            offset: 0,
            msg,
        };
        fanout.submit(&app, job).unwrap();
    }
    while tcp.queued_bytes() == 0 || ws.queued_bytes() == 0 {
        tokio::task::yield_now().await;
    }
    let expected: Vec<(u64, u64)> = (1..=5).map(|id| (0, id)).collect();
    assert_eq!(
        publications(&tcp),
        (1, expected.clone()),
        "one entry, five frames"
    );
    assert_eq!(
        publications(&ws),
        (5, expected),
        "a WebSocket message per frame"
    );

    // A broadcast batch reaches every connection of the app the same way.
    for id in 6..=8 {
        let msg = Arc::new(Outgoing::new(tether_proto::Push {
            app: app.to_string(),
            msg_id: id,
            seq: 0,
            qos: 0,
            created_ms: 0,
            kind: PayloadKind::Json,
            payload: Bytes::from_static(b"{}"),
        }));
        fanout.submit(&app, Job::Broadcast { msg }).unwrap();
    }
    while tcp.queued_bytes() == 0 || ws.queued_bytes() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(take_written(&tcp).len(), 1);
    assert_eq!(take_written(&ws).len(), 3);
}

#[tokio::test]
async fn a_batch_keeps_offset_order_fills_gaps_and_skips_what_a_subscriber_has() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (fanout, table) = started(&Config::for_tests(), store.clone());
    let (app, topic) = (AppId::from("demo"), TopicId::from("t"));
    let tcp = conn(&table, &app);
    let ws = conn_over(&table, &app, Transport::Ws, Encoding::Binary);
    subscribed(&fanout, &app, &topic, &[&tcp, &ws]).await;
    for id in 1..=4u64 {
        let message = tether_core::store::NewMessage {
            id: tether_core::MessageId(id),
            created_ms: 0,
            expires_ms: u64::MAX,
            kind: PayloadKind::Json,
            payload: Bytes::from(id.to_string()),
        };
        assert_eq!(store.publish(&app, &topic, message).await.unwrap(), Seq(id));
    }
    // Requests that finished out of order: 2 first (1 comes from the history), 1 again
    // (sent already), then 4 (3 comes from the history).
    for offset in [2u64, 1, 4] {
        let msg = numbered(&app, &topic, offset, offset);
        let job = Job::Publish {
            topic: topic.clone(),
            offset,
            msg,
        };
        fanout.submit(&app, job).unwrap();
    }
    while tcp.queued_bytes() == 0 || ws.queued_bytes() == 0 {
        tokio::task::yield_now().await;
    }
    let expected: Vec<(u64, u64)> = (1..=4).map(|o| (o, o)).collect();
    assert_eq!(publications(&tcp), (1, expected.clone()));
    assert_eq!(publications(&ws), (4, expected));

    // A subscriber that has some of a batch gets only the rest, frame by frame.
    let t = fanout.apps.load()[&app].topics.get(&topic).unwrap();
    let late = conn(&table, &app);
    t.insert(Sub {
        conn: late.clone(),
        after: 6,
    });
    let items = (5..=8).map(|o| (o, numbered(&app, &topic, o, o))).collect();
    let batches = Batch::group(items);
    assert_eq!(batches.len(), 1);
    for i in 0..t.shard_count() {
        t.deliver_shard(i, &batches[0], false);
    }
    assert_eq!(publications(&late), (2, vec![(7, 7), (8, 8)]));
    let (entries, got) = publications(&tcp);
    assert_eq!(entries, 1);
    assert_eq!(got.len(), 4);
}

#[test]
fn a_batch_over_a_quarter_of_a_small_queue_goes_frame_by_frame_not_closed_as_slow() {
    let table = table();
    let (app, topic_id) = (AppId::from("demo"), TopicId::from("t"));
    // The smallest queue the config allows with 4 KiB frames: 8 KiB.
    let small = conn_with_queue(&table, &app, Transport::Tcp, Encoding::Binary, 8 * 1024);
    let topic = Topic::new(1, 0);
    topic.insert(Sub {
        conn: small.clone(),
        after: 0,
    });
    let items: Vec<(u64, Arc<Outgoing>)> = (1..=3u64)
        .map(|o| {
            let msg = Arc::new(Outgoing::publication(Publication {
                app: app.to_string(),
                topic: topic_id.to_string(),
                offset: o,
                msg_id: o,
                created_ms: 0,
                kind: PayloadKind::Binary,
                payload: Bytes::from(vec![1u8; 1500]),
            }));
            (o, msg)
        })
        .collect();
    let batches = Batch::group(items);
    assert_eq!(batches.len(), 1, "4.5 KiB is one batch");
    let reached = topic.deliver_shard(0, &batches[0], false);
    assert_eq!((reached.delivered, reached.overflowed), (3, 0));
    assert!(!small.is_closed());
    assert_eq!(publications(&small), (3, vec![(1, 1), (2, 2), (3, 3)]));
}

#[test]
fn batches_are_bounded_in_count_and_bytes() {
    let (app, topic) = (AppId::from("demo"), TopicId::from("t"));
    let items = |n: u64, size: usize| -> Vec<(u64, Arc<Outgoing>)> {
        (1..=n)
            .map(|o| {
                let msg = Arc::new(Outgoing::publication(Publication {
                    app: app.to_string(),
                    topic: topic.to_string(),
                    offset: o,
                    msg_id: o,
                    created_ms: 0,
                    kind: PayloadKind::Binary,
                    payload: Bytes::from(vec![0u8; size]),
                }));
                (o, msg)
            })
            .collect()
    };
    let sizes = |b: &[Batch]| b.iter().map(Batch::len).collect::<Vec<_>>();
    assert_eq!(sizes(&Batch::group(items(140, 10))), vec![64, 64, 12]);
    // About 10 KiB each: six fit under 64 KiB.
    assert_eq!(sizes(&Batch::group(items(13, 10_000))), vec![6, 6, 1]);
    // One larger than the bound still leaves, alone.
    assert_eq!(sizes(&Batch::group(items(2, 70_000))), vec![1, 1]);
    assert!(Batch::group(Vec::new()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_paced_publication_is_spread_over_time_not_dropped() {
    let mut config = Config::for_tests();
    config.rate.deliveries_per_sec = 100;
    config.rate.deliveries_burst = 10;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (fanout, table) = started(&config, store);
    let app = AppId::from("demo");
    let topic = TopicId::from("t");
    let conns: Vec<_> = (0..50).map(|_| conn(&table, &app)).collect();
    for c in &conns {
        assert_eq!(subscribe_conn(&fanout, c, &topic), Ok(true));
    }
    while fanout.subscribers(&app, &topic) < 50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(drain(&conns), 50, "one `subscribed` each");

    fanout
        .submit(
            &app,
            Job::Publish {
                topic: topic.clone(),
                offset: 0,
                msg: message(&app, &topic),
            },
        )
        .unwrap();
    let mut delivered = Vec::new();
    for _ in 0..6 {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        delivered.push(drain(&conns));
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    // The burst at once, then 10 every 100 ms: 100 recipients per second, none dropped.
    assert_eq!(delivered, vec![10, 10, 10, 10, 10, 0]);
    assert_eq!(fanout.subscribers(&app, &topic), 50);

    // A closed subscriber found by a paced fan-out leaves the topic.
    conns[0].finish();
    fanout
        .submit(
            &app,
            Job::Publish {
                topic: topic.clone(),
                offset: 0,
                msg: message(&app, &topic),
            },
        )
        .unwrap();
    for _ in 0..6 {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(drain(&conns), 49);
    assert_eq!(fanout.subscribers(&app, &topic), 49);
}

#[tokio::test]
async fn a_full_queue_is_refused_not_grown() {
    let mut config = Config::for_tests();
    config.rate.fanout_queue = 2;
    config.rate.deliveries_per_sec = 1;
    config.rate.deliveries_burst = 1;
    let (fanout, table) = started(&config, Arc::new(MemoryStore::default()));
    let app = AppId::from("demo");
    let topic = TopicId::from("t");
    // Two subscribers: the first publication waits a second for its second recipient,
    // holding the worker, and the queue (2) fills behind it.
    let conns: Vec<_> = (0..2).map(|_| conn(&table, &app)).collect();
    for c in &conns {
        subscribe_conn(&fanout, c, &topic).unwrap();
    }
    while fanout.subscribers(&app, &topic) < 2 {
        tokio::task::yield_now().await;
    }
    let publish = || Job::Publish {
        topic: topic.clone(),
        offset: 0,
        msg: message(&app, &topic),
    };
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..10 {
        match fanout.submit(&app, publish()) {
            Ok(()) => accepted += 1,
            Err(Busy) => refused += 1,
        }
        tokio::task::yield_now().await;
    }
    assert!(accepted <= 3, "{accepted} accepted");
    assert!(refused >= 7, "{refused} refused");
    assert!(fanout.reserve(&app).is_err());
}

#[test]
fn a_shard_walked_in_groups_reaches_every_subscriber_once_in_its_own_encoding() {
    // More subscribers than a group holds, and not a multiple of it, encodings alternating:
    // each must get the publication once, framed as it speaks.
    let table = table();
    let (app, topic_id) = (AppId::from("demo"), TopicId::from("t"));
    let topic = Topic::new(1, 0);
    let conns: Vec<Arc<ConnHandle>> = (0..37)
        .map(|i| {
            let encoding = if i % 2 == 0 {
                Encoding::Binary
            } else {
                Encoding::Json
            };
            let conn = conn_with_queue(&table, &app, Transport::Tcp, encoding, 64 * 1024);
            topic.insert(Sub {
                conn: conn.clone(),
                after: 0,
            });
            conn
        })
        .collect();
    let msg = Arc::new(Outgoing::publication(Publication {
        app: app.to_string(),
        topic: topic_id.to_string(),
        offset: 1,
        msg_id: 9,
        created_ms: 0,
        kind: PayloadKind::Binary,
        payload: Bytes::from_static(b"x"),
    }));
    let batches = Batch::group(vec![(1, msg)]);
    let reached = topic.deliver_shard(0, &batches[0], false);
    assert_eq!(reached.delivered, 37);
    for conn in &conns {
        assert_eq!(publications(conn), (1, vec![(1, 9)]), "{:?}", conn.encoding);
    }
}
