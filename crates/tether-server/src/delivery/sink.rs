//! The node's [`LocalSink`]: what the router hands this node (from its own API or from other
//! nodes) goes to its connections ([`Links`]) or to the topic fan-out.

use std::sync::Arc;

use bytes::Bytes;
use tether_core::{AppId, ConnId, LocalSink, Outgoing, TopicId};
use tether_proto::Code;

use crate::fanout::{Fanout, Job};
use crate::link::Links;
use crate::metrics::ClusterMetrics;

/// How long a recovery takes to ask every connection to read its inboxes again.
const RECOVER_SPREAD: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub struct NodeSink {
    links: Arc<dyn Links>,
    fanout: Arc<Fanout>,
    metrics: ClusterMetrics,
}

impl NodeSink {
    pub fn new(links: Arc<dyn Links>, fanout: Arc<Fanout>) -> Self {
        NodeSink {
            links,
            fanout,
            metrics: ClusterMetrics::new(),
        }
    }

    fn submit(&self, app: &AppId, job: Job) -> usize {
        match self.fanout.submit(app, job) {
            Ok(()) => 1,
            Err(_) => {
                // A durable publication is recovered by the gap fill of the next one, or by
                // the subscriber resubscribing with `since`.
                self.metrics.fanout_dropped.increment(1);
                0
            }
        }
    }

    /// Subscribes (or unsubscribes) connection `conn` to `topic` for the business; whether
    /// that changed anything. A busy fan-out skips it: the store has it, and the next connect
    /// applies it.
    fn subscription(&self, app: &AppId, conn: ConnId, topic: &TopicId, subscribed: bool) -> bool {
        let Some(conn) = self.links.get(conn) else {
            return false;
        };
        let Some(binding) = conn.binding(app.as_str()) else {
            return false;
        };
        let changed = match subscribed {
            true => self.fanout.join(conn, binding, topic),
            false => self.fanout.leave(conn, binding, topic),
        };
        changed == Ok(true)
    }
}

impl LocalSink for NodeSink {
    fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize {
        self.links.deliver(conns, msg)
    }

    fn disconnect(&self, conns: &[ConnId], code: Code, reason: &str) -> usize {
        self.links.disconnect(conns, code, reason)
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
            .filter(|conn| self.subscription(app, **conn, topic, subscribed))
            .count()
    }

    fn post(&self, session: u128, body: &Bytes) -> usize {
        let taken = self.links.post(session, body);
        crate::metrics::sse_post(if taken > 0 { "taken" } else { "lost" });
        taken
    }

    fn recover(&self) {
        tracing::info!(
            connections = self.links.len(),
            "messages from other nodes may have been lost: reading inboxes and topic histories again"
        );
        self.metrics.recoveries.increment(1);
        self.fanout.recheck_topics();
        // Spread over RECOVER_SPREAD, shard by shard, so that the store does not get one read
        // per connection at once (the moment it may be recovering itself).
        let links = self.links.clone();
        tokio::spawn(async move {
            let shards = links.shard_count();
            let pause = RECOVER_SPREAD / shards as u32;
            for shard in 0..shards {
                links.recheck_inboxes(shard..shard + 1);
                tokio::time::sleep(pause).await;
            }
        });
    }
}
