//! The router seam: carry a delivery or a disconnect to the node that holds a connection.

use std::sync::Arc;

use async_trait::async_trait;
use tether_proto::Code;

use crate::{ConnId, NodeId, Outgoing};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouterError {
    /// No route to that node (unknown, or gone).
    #[error("no route to node {0}")]
    UnknownNode(NodeId),
    /// The transport between nodes is down; the caller may retry.
    #[error("router unavailable: {0}")]
    Unavailable(String),
}

/// What a node does with deliveries addressed to its own connections (the gateway).
pub trait LocalSink: Send + Sync + std::fmt::Debug + 'static {
    /// Queues `msg` on each of `conns` that is still open. Never blocks: a connection whose
    /// outbound queue is over its byte limit is disconnected as slow instead. Returns how many
    /// connections took the message.
    fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize;

    /// Closes each of `conns` with `code`. Returns how many were open.
    fn disconnect(&self, conns: &[ConnId], code: Code, reason: &str) -> usize;
}

/// Carries deliveries to nodes.
///
/// Guarantees: best effort, at most once per call. Durable delivery does not rely on the
/// router: a message lost here is recovered from the store. Order is preserved per (sender,
/// node, connection): two `deliver` calls from one task to one connection arrive in call order.
#[async_trait]
pub trait Router: Send + Sync + std::fmt::Debug + 'static {
    /// Delivers `msg` to `conns` on `node`. Returns how many connections took it, as far as
    /// the router knows (for a remote node, how many it was sent to).
    async fn deliver(
        &self,
        node: &NodeId,
        conns: &[ConnId],
        msg: Arc<Outgoing>,
    ) -> Result<usize, RouterError>;

    /// Disconnects `conns` on `node` with `code`. Returns how many were closed.
    async fn disconnect(
        &self,
        node: &NodeId,
        conns: &[ConnId],
        code: Code,
        reason: &str,
    ) -> Result<usize, RouterError>;
}

/// The single-node router: deliveries to this node go straight to its gateway; any other node
/// is unknown.
#[derive(Debug)]
pub struct MemoryRouter {
    node: NodeId,
    sink: Arc<dyn LocalSink>,
}

impl MemoryRouter {
    pub fn new(node: NodeId, sink: Arc<dyn LocalSink>) -> Self {
        MemoryRouter { node, sink }
    }
}

#[async_trait]
impl Router for MemoryRouter {
    async fn deliver(
        &self,
        node: &NodeId,
        conns: &[ConnId],
        msg: Arc<Outgoing>,
    ) -> Result<usize, RouterError> {
        if node != &self.node {
            return Err(RouterError::UnknownNode(node.clone()));
        }
        Ok(self.sink.deliver(conns, &msg))
    }

    async fn disconnect(
        &self,
        node: &NodeId,
        conns: &[ConnId],
        code: Code,
        reason: &str,
    ) -> Result<usize, RouterError> {
        if node != &self.node {
            return Err(RouterError::UnknownNode(node.clone()));
        }
        Ok(self.sink.disconnect(conns, code, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_router_passes_the_contract() {
        let sink = Arc::new(crate::contract::RecordingSink::default());
        let node = NodeId::from("n1");
        let router = MemoryRouter::new(node.clone(), sink.clone());
        crate::contract::router_contract(&router, &node, &sink).await;
    }
}
