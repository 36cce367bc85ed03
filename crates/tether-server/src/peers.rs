//! The other nodes of the cluster, as the registry last listed them: where a topic's
//! publications and an app's broadcasts go besides this node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::counter;
use tether_core::{NodeId, NodeMessage, Registry, Router};
use tokio::time::Instant;

/// How long one listing of the nodes is used. A node that just started misses broadcasts and
/// live publications for up to this long; durable publications it gets from the history.
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Peers {
    node: NodeId,
    registry: Arc<dyn Registry>,
    router: Arc<dyn Router>,
    cache: Mutex<Option<(Instant, Arc<[NodeId]>)>>,
}

impl Peers {
    pub fn new(node: NodeId, registry: Arc<dyn Registry>, router: Arc<dyn Router>) -> Self {
        Peers {
            node,
            registry,
            router,
            cache: Mutex::new(None),
        }
    }

    /// The live nodes other than this one. When the registry cannot be read, the last list
    /// (or none).
    pub async fn others(&self) -> Arc<[NodeId]> {
        let now = Instant::now();
        let last = self.cache.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((at, nodes)) = &last
            && now - *at < REFRESH
        {
            return nodes.clone();
        }
        match self.registry.nodes(tether_core::now_ms()).await {
            Ok(nodes) => {
                let others: Arc<[NodeId]> = nodes
                    .into_iter()
                    .map(|n| n.id)
                    .filter(|id| id != &self.node)
                    .collect();
                *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, others.clone()));
                others
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the nodes; using the last list");
                last.map(|(_, nodes)| nodes)
                    .unwrap_or_else(|| Arc::from([]))
            }
        }
    }

    /// Sends `msg` to every other node; returns to how many it went. Failures are logged and
    /// counted (`tether_router_errors_total`): these messages are best effort.
    pub async fn send_to_others(&self, msg: NodeMessage) -> usize {
        let others = self.others().await;
        let mut sent = 0;
        for node in others.iter() {
            match self.router.send(node, msg.clone()).await {
                Ok(_) => sent += 1,
                Err(e) => {
                    counter!("tether_router_errors_total").increment(1);
                    tracing::debug!(%node, error = %e, "not sent to a node");
                }
            }
        }
        sent
    }
}
