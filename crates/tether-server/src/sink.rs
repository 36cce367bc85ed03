//! The node's [`LocalSink`]: what the router hands this node (from its own API or from other
//! nodes) goes to the gateway's connection table or to the topic fan-out.

use std::sync::Arc;

use metrics::{Counter, counter};
use tether_core::{AppId, ConnId, LocalSink, Outgoing, TopicId};
use tether_proto::Code;

use crate::fanout::{Fanout, Job};
use crate::gateway::table::ConnTable;

/// How long a recovery takes to ask every connection to read its inboxes again.
const RECOVER_SPREAD: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub struct NodeSink {
    table: Arc<ConnTable>,
    fanout: Arc<Fanout>,
    /// Publications and broadcasts from other nodes dropped because the app's fan-out queue
    /// was full.
    dropped: Counter,
}

impl NodeSink {
    pub fn new(table: Arc<ConnTable>, fanout: Arc<Fanout>) -> Self {
        NodeSink {
            table,
            fanout,
            dropped: counter!("tether_fanout_dropped_total"),
        }
    }

    fn submit(&self, app: &AppId, job: Job) -> usize {
        match self.fanout.submit(app, job) {
            Ok(()) => 1,
            Err(_) => {
                // A durable publication is recovered by the gap fill of the next one, or by
                // the subscriber resubscribing with `since`.
                self.dropped.increment(1);
                0
            }
        }
    }
}

impl LocalSink for NodeSink {
    fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize {
        self.table.deliver(conns, msg)
    }

    fn disconnect(&self, conns: &[ConnId], code: Code, reason: &str) -> usize {
        self.table.disconnect(conns, code, reason)
    }

    fn publish(&self, app: &AppId, topic: &TopicId, offset: u64, msg: &Arc<Outgoing>) -> usize {
        if self.fanout.subscribers(app, topic) == 0 {
            return 0; // nobody here: nothing to queue
        }
        let job = Job::Publish {
            topic: topic.clone(),
            offset,
            msg: msg.clone(),
        };
        self.submit(app, job)
    }

    fn broadcast(&self, app: &AppId, msg: &Arc<Outgoing>) -> usize {
        self.submit(app, Job::Broadcast { msg: msg.clone() })
    }

    fn subscription(
        &self,
        app: &AppId,
        topic: &TopicId,
        conns: &[ConnId],
        subscribed: bool,
    ) -> usize {
        conns
            .iter()
            .filter(|conn| {
                let applied = if subscribed {
                    self.fanout.subscribe_conn(app, **conn, topic)
                } else {
                    self.fanout.unsubscribe_conn(app, **conn, topic)
                };
                // Recorded in the store already: a busy fan-out only delays it to the next
                // connect.
                matches!(applied, Ok(true))
            })
            .count()
    }

    fn recover(&self) {
        tracing::info!(
            connections = self.table.len(),
            "messages from other nodes may have been lost: reading inboxes and topic histories again"
        );
        counter!("tether_router_recoveries_total").increment(1);
        self.fanout.recheck_topics();
        // Spread over RECOVER_SPREAD, shard by shard, so that the store does not get one read
        // per connection at once (the moment it may be recovering itself).
        let table = self.table.clone();
        tokio::spawn(async move {
            let shards = table.shard_count();
            let pause = RECOVER_SPREAD / shards as u32;
            for shard in 0..shards {
                table.for_each_in(shard..shard + 1, |conn| conn.recheck_inboxes());
                tokio::time::sleep(pause).await;
            }
        });
    }
}
