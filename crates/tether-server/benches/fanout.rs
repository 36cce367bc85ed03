//! The user-space cost of a topic fan-out per recipient: queueing one shared frame on each
//! subscriber's connection (lock, bound check, append, wake), without the sockets.
//!
//! ```text
//! cargo bench -p tether-server --bench fanout -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Baseline in the same run: appending the same `Bytes` to plain, unlocked queues, the least a
//! fan-out can do. Throughput is in deliveries: recipients, times 20 for `topic_batch_of_20`
//! (twenty publications that waited together, joined once and queued as one entry).

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tether_core::{AppId, DeviceId, Outgoing, Transport, UserId};
use tether_proto::{PayloadKind, Publication};
use tether_server::fanout::batch::Batch;
use tether_server::fanout::topic::{Sub, Topic};
use tether_server::gateway::handle::{ConnHandle, NewConn};
use tether_server::gateway::table::ConnTable;
use tether_server::link::{Binding, Encoding};
use tether_server::session::inbox::InboxState;

fn message() -> Outgoing {
    Outgoing::publication(Publication {
        app: "demo".into(),
        topic: "room".into(),
        offset: 0,
        msg_id: 1,
        created_ms: 1_763_700_000_000,
        kind: PayloadKind::Binary,
        payload: Bytes::from(vec![7u8; 100]),
    })
}

fn conns(table: &ConnTable, n: usize) -> Vec<Arc<ConnHandle>> {
    (0..n)
        .map(|_| {
            Arc::new(ConnHandle::new(NewConn {
                id: table.next_id(),
                transport: Transport::Tcp,
                encoding: Encoding::Binary,
                device: DeviceId::from("d"),
                bindings: vec![Binding::new(AppId::from("demo"), UserId::from("u"), 0)],
                resume: vec![InboxState::resuming(0, 0)],
                queue_limit: 256 * 1024,
                direct: None,
                idle_limit: Duration::from_secs(600),
                now_ms: 0,
            }))
        })
        .collect()
}

fn fanout(c: &mut Criterion) {
    let metrics = tether_server::metrics::Metrics::new();
    let table = ConnTable::new(
        metrics.queue_overflows.clone(),
        metrics.push_deliveries.clone(),
    );
    let msg = Arc::new(message());
    let one = Batch::one(0, msg.clone());
    let twenty = Batch::group((0..20).map(|_| (0, msg.clone())).collect());
    assert_eq!(twenty.len(), 1);
    let mut group = c.benchmark_group("fanout");
    for n in [1_000usize, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        let subs = conns(&table, n);
        let topic = Topic::new(1, 0);
        for conn in &subs {
            topic.insert(Sub {
                conn: conn.clone(),
                after: 0,
            });
        }
        let mut taken = VecDeque::new();
        for (name, batch, per) in [
            ("topic_shard", &one, 1),
            ("topic_batch_of_20", &twenty[0], 20),
        ] {
            group.throughput(Throughput::Elements((n * per) as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    black_box(topic.deliver_shard(0, batch, false));
                    // What the connection task does with it, minus the write.
                    for conn in &subs {
                        conn.take(&mut taken);
                        conn.written(taken.iter().map(Bytes::len).sum(), 0);
                        taken.clear();
                    }
                })
            });
        }
        group.throughput(Throughput::Elements(n as u64));
        let frame = msg.binary().clone();
        let mut plain: Vec<VecDeque<Bytes>> = (0..n).map(|_| VecDeque::new()).collect();
        group.bench_with_input(BenchmarkId::new("baseline_plain_queues", n), &n, |b, _| {
            b.iter(|| {
                for q in plain.iter_mut() {
                    q.push_back(frame.clone());
                }
                for q in plain.iter_mut() {
                    black_box(q.pop_front());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
