//! The other nodes of the cluster, as the registry last listed them: where a topic's
//! publications and an app's broadcasts go besides this node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_core::{NodeId, NodeMessage, Registry, Router};
use tokio::time::Instant;

use crate::metrics::ClusterMetrics;

/// How long one listing of the nodes is used. A node that just started misses broadcasts and
/// live publications for up to this long; durable publications it gets from the history.
const REFRESH: Duration = Duration::from_secs(1);

/// How long a message to the other nodes may take.
const SEND_WITHIN: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Peers {
    node: NodeId,
    registry: Arc<dyn Registry>,
    router: Arc<dyn Router>,
    cache: Mutex<Option<(Instant, Arc<[NodeId]>)>>,
    metrics: ClusterMetrics,
}

impl Peers {
    pub fn new(node: NodeId, registry: Arc<dyn Registry>, router: Arc<dyn Router>) -> Self {
        Peers {
            node,
            registry,
            router,
            cache: Mutex::new(None),
            metrics: ClusterMetrics::new(),
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
        // Concurrently, and bounded in time: a Redis that does not answer must not hold the
        // request (and its task) for a reconnect cycle per node.
        let sends = others.iter().map(|node| {
            let msg = msg.clone();
            async move {
                let sent = tokio::time::timeout(SEND_WITHIN, self.router.send(node, msg)).await;
                match sent {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        self.metrics.router_errors.increment(1);
                        tracing::debug!(%node, error = %e, "not sent to a node");
                        false
                    }
                    Err(_) => {
                        self.metrics.router_errors.increment(1);
                        tracing::debug!(%node, "not sent to a node in time");
                        false
                    }
                }
            }
        });
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .filter(|sent| *sent)
            .count()
    }
}
