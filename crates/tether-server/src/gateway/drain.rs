//! Moving clients off the node: closing every connection one after another over a window
//! (drain and shutdown), so that they reconnect spread out rather than in the same second.

use std::time::Duration;

use rand::seq::SliceRandom;
use tether_proto::Code;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::outbox::Close;
use super::table::ConnTable;

impl Gateway {
    /// Whether the node is draining or shutting down: new connections are refused and the node
    /// is not ready.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled() || self.shutdown.is_cancelled()
    }
}

/// How a draining node closes a connection, or refuses a new one: 4101, reconnect elsewhere.
/// No `retry_after_ms`: the closes themselves are spread, and the client goes to another node.
pub fn drain_close() -> Close {
    Close::new(Code::DRAIN, "this node is draining: reconnect elsewhere")
}

/// Closes every connection of `table` one after another over `window`, in random order: of `n`
/// connections, the `i`th is closed at `i * window / n` after the start, each with the close
/// `close` makes for it (asked for in the queue, so what is queued before is still written).
///
/// Connections that arrive after the start are not in the list: the caller refuses them
/// itself (see `conn::establish`). Stops early when `stop` is cancelled, leaving the rest to
/// whoever cancelled it. Returns how many connections were told to close.
pub async fn close_spread(
    table: &ConnTable,
    window: Duration,
    mut close: impl FnMut() -> Close,
    stop: &CancellationToken,
) -> usize {
    let mut conns = table.handles();
    // Random order: the table's shards group connections by id, i.e. by arrival time.
    conns.shuffle(&mut rand::rng());
    let n = conns.len();
    let start = Instant::now();
    let mut closed = 0;
    for (i, conn) in conns.into_iter().enumerate() {
        let due = start + window.mul_f64(i as f64 / n as f64);
        if due > Instant::now() {
            tokio::select! {
                biased;
                () = stop.cancelled() => return closed,
                () = sleep_until(due) => {}
            }
        }
        if conn.close(close()) {
            closed += 1;
        }
    }
    closed
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tether_core::{ConnId, DeviceId, Transport};

    use super::*;
    use crate::gateway::handle::{ConnHandle, NewConn};
    use crate::link::{Encoding, Link};

    fn table(n: u64) -> (Arc<ConnTable>, Vec<Arc<ConnHandle>>) {
        let table = Arc::new(ConnTable::new(
            metrics::counter!("test_overflows"),
            metrics::counter!("test_deliveries"),
        ));
        let conns: Vec<_> = (1..=n)
            .map(|id| {
                let conn = Arc::new(ConnHandle::new(NewConn {
                    id: ConnId(id),
                    transport: Transport::Tcp,
                    encoding: Encoding::Binary,
                    device: DeviceId::from("d"),
                    bindings: vec![],
                    resume: vec![],
                    queue_limit: 1024,
                    direct: None,
                    idle_limit: Duration::from_secs(30),
                    now_ms: 0,
                }));
                table.insert(conn.clone());
                conn
            })
            .collect();
        (table, conns)
    }

    fn closed(conns: &[Arc<ConnHandle>]) -> usize {
        conns.iter().filter(|c| c.is_closed()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn closes_are_spread_evenly_over_the_window() {
        let (table, conns) = table(100);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let table = table.clone();
            let stop = stop.clone();
            async move { close_spread(&table, Duration::from_secs(10), drain_close, &stop).await }
        });
        // Connection i closes at i * 100 ms: look between the steps.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(closed(&conns), 1, "only the first at the start");
        let mut per_second = Vec::new();
        let mut before = 1;
        for second in 1..=10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = closed(&conns);
            per_second.push(now - before);
            before = now;
            assert_eq!(now, (10 * second + 1).min(100), "after {second} s");
        }
        assert_eq!(
            per_second,
            [10, 10, 10, 10, 10, 10, 10, 10, 10, 9],
            "about a tenth each second, never all at once"
        );
        assert_eq!(task.await.unwrap(), 100);
        for conn in &conns {
            let close = conn.take(&mut Default::default()).expect("closed");
            assert_eq!(close.code, Code::DRAIN);
            assert!(close.flush, "what was queued is still written");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_closes_everything_at_once_and_stop_ends_early() {
        let (table, conns) = table(10);
        let stop = CancellationToken::new();
        assert_eq!(
            close_spread(&table, Duration::ZERO, drain_close, &stop).await,
            10
        );
        assert_eq!(closed(&conns), 10);

        let conns = stopped_half_way().await;
        assert_eq!(
            closed(&conns),
            5,
            "what was due before the stop, and no more"
        );
    }

    /// Ten connections over 10 s, stopped at 4.5 s; the connections a while later.
    async fn stopped_half_way() -> Vec<Arc<ConnHandle>> {
        let (table, conns) = table(10);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let table = table.clone();
            let stop = stop.clone();
            async move { close_spread(&table, Duration::from_secs(10), drain_close, &stop).await }
        });
        // Connections 0..=4 are due at 0, 1, 2, 3, 4 s.
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        stop.cancel();
        assert_eq!(task.await.unwrap(), 5);
        tokio::time::sleep(Duration::from_secs(10)).await;
        conns
    }

    #[tokio::test(start_paused = true)]
    async fn connections_closed_meanwhile_are_not_counted() {
        let (table, conns) = table(4);
        for conn in &conns[..2] {
            conn.close(Close {
                code: Code::KICKED,
                ..drain_close()
            });
        }
        let stop = CancellationToken::new();
        assert_eq!(
            close_spread(&table, Duration::from_secs(1), drain_close, &stop).await,
            2
        );
        let codes: Vec<Code> = conns
            .iter()
            .map(|c| c.take(&mut Default::default()).unwrap().code)
            .collect();
        assert_eq!(
            codes,
            [Code::KICKED, Code::KICKED, Code::DRAIN, Code::DRAIN],
            "the first close wins"
        );
    }
}
