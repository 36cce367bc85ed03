//! The router seam: carry a delivery, a disconnect, a topic's publication, a broadcast, a
//! subscription change or what a client posted to the node that holds the connections.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tether_proto::Code;

use crate::{AppId, ConnId, NodeId, Outgoing, TopicId};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouterError {
    /// No route to that node (unknown, or gone).
    #[error("no route to node {0}")]
    UnknownNode(NodeId),
    /// The transport between nodes is down; the caller may retry.
    #[error("router unavailable: {0}")]
    Unavailable(String),
}

/// What a node does with what other nodes (and its own API) send it: its gateway and its
/// topic fan-out.
pub trait LocalSink: Send + Sync + std::fmt::Debug + 'static {
    /// Queues `msg` (a push) on each of `conns` that is still open. Never blocks: a connection
    /// whose outbound queue is over its byte limit is disconnected as slow instead. Returns how
    /// many connections took the message.
    fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize;

    /// Closes each of `conns` with `code`. Returns how many were open.
    fn disconnect(&self, conns: &[ConnId], code: Code, reason: &str) -> usize;

    /// Hands a topic's publication (`offset` 0 when live-only) to the node's fan-out for its
    /// own subscribers. Returns 1 when the fan-out took it, 0 when its queue was full (a
    /// durable publication is then recovered from the history by the next one).
    fn publish(&self, app: &AppId, topic: &TopicId, offset: u64, msg: &Arc<Outgoing>) -> usize;

    /// Hands a broadcast (a qos 0 push) to the node's fan-out for every connection of `app`.
    /// Returns 1 when the fan-out took it.
    fn broadcast(&self, app: &AppId, msg: &Arc<Outgoing>) -> usize;

    /// Subscribes (or unsubscribes) each of `conns` to `topic` of `app` for the business.
    /// Returns how many changed.
    fn subscription(
        &self,
        app: &AppId,
        topic: &TopicId,
        conns: &[ConnId],
        subscribed: bool,
    ) -> usize;

    /// Hands what a client POSTed to another node to its session on this node (an SSE
    /// stream's: the server's `transport::sse`): `session` is the session's key, `body` the
    /// request's body as the client sent it (JSON frames, already checked). Returns how many
    /// frames the session took: 0 when it is not here (any more) or has too many waiting.
    fn post(&self, session: u128, body: &Bytes) -> usize;

    /// Messages for this node may have been lost on the way (the router's connection dropped,
    /// or its inbound queue was full): recover what is durable. Every connection reads its
    /// inboxes again after what it was sent, every topic its history after what was fanned
    /// out. Called once the router receives again.
    fn recover(&self);
}

/// What one node asks of another.
#[derive(Debug, Clone)]
pub enum NodeMessage {
    /// [`LocalSink::deliver`].
    Deliver {
        conns: Vec<ConnId>,
        msg: Arc<Outgoing>,
    },
    /// [`LocalSink::disconnect`].
    Disconnect {
        conns: Vec<ConnId>,
        code: Code,
        reason: String,
    },
    /// [`LocalSink::publish`].
    Publish {
        app: AppId,
        topic: TopicId,
        offset: u64,
        msg: Arc<Outgoing>,
    },
    /// [`LocalSink::broadcast`].
    Broadcast { app: AppId, msg: Arc<Outgoing> },
    /// [`LocalSink::subscription`].
    Subscription {
        app: AppId,
        topic: TopicId,
        conns: Vec<ConnId>,
        subscribed: bool,
    },
    /// [`LocalSink::post`].
    Post { session: u128, body: Bytes },
}

impl NodeMessage {
    /// Does what the message asks on this node.
    pub fn apply(&self, sink: &dyn LocalSink) -> usize {
        match self {
            NodeMessage::Deliver { conns, msg } => sink.deliver(conns, msg),
            NodeMessage::Disconnect {
                conns,
                code,
                reason,
            } => sink.disconnect(conns, *code, reason),
            NodeMessage::Publish {
                app,
                topic,
                offset,
                msg,
            } => sink.publish(app, topic, *offset, msg),
            NodeMessage::Broadcast { app, msg } => sink.broadcast(app, msg),
            NodeMessage::Subscription {
                app,
                topic,
                conns,
                subscribed,
            } => sink.subscription(app, topic, conns, *subscribed),
            NodeMessage::Post { session, body } => sink.post(*session, body),
        }
    }
}

/// Carries messages to nodes.
///
/// Guarantees: best effort, at most once per call. Durable delivery does not rely on the
/// router: a message lost here is recovered from the store. Order is preserved per (sender,
/// node): two `send` calls from one task to one node are applied there in call order.
#[async_trait]
pub trait Router: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `msg` to `node` (this node included: it is then applied here, at once). Returns
    /// what [`NodeMessage::apply`] returned for this node, and for a remote node 1 when the
    /// message was handed to the transport.
    async fn send(&self, node: &NodeId, msg: NodeMessage) -> Result<usize, RouterError>;

    /// Delivers `msg` to `conns` on `node`. Returns how many connections took it, as far as
    /// the router knows (for a remote node, how many it was sent to).
    async fn deliver(
        &self,
        node: &NodeId,
        conns: &[ConnId],
        msg: Arc<Outgoing>,
    ) -> Result<usize, RouterError> {
        let sent = self
            .send(
                node,
                NodeMessage::Deliver {
                    conns: conns.to_vec(),
                    msg,
                },
            )
            .await?;
        Ok(if self.is_local(node) {
            sent
        } else {
            conns.len()
        })
    }

    /// Disconnects `conns` on `node` with `code`. Returns how many were closed (for a remote
    /// node, how many it was asked to close).
    async fn disconnect(
        &self,
        node: &NodeId,
        conns: &[ConnId],
        code: Code,
        reason: &str,
    ) -> Result<usize, RouterError> {
        let msg = NodeMessage::Disconnect {
            conns: conns.to_vec(),
            code,
            reason: reason.to_owned(),
        };
        let sent = self.send(node, msg).await?;
        Ok(if self.is_local(node) {
            sent
        } else {
            conns.len()
        })
    }

    /// Whether `node` is the router's own node.
    fn is_local(&self, node: &NodeId) -> bool;
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
    async fn send(&self, node: &NodeId, msg: NodeMessage) -> Result<usize, RouterError> {
        if node != &self.node {
            return Err(RouterError::UnknownNode(node.clone()));
        }
        Ok(msg.apply(self.sink.as_ref()))
    }

    fn is_local(&self, node: &NodeId) -> bool {
        node == &self.node
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
