//! The delivery service: every way a message or a command reaches connections, in one place.
//!
//! A front end (the HTTP API today; any other later) authenticates, parses and validates, then
//! asks [`Delivery`]: push (live or durable), publish, broadcast, kick, subscribe a user to a
//! topic, presence, and reads of inboxes and topics. The gateway's sessions ask it too: where a
//! device resumes, registering and forgetting sessions, subscribing (see [`sessions`]). It owns
//! the registry, the router, the store, the fan-out and the other nodes.
//!
//! - this module: [`Delivery`] and what it answers.
//! - [`sessions`]: this node's connections in the registry, and what sessions ask.
//! - [`batch`]: many single-user pushes in one call, with one registry lookup and one store
//!   call for all of them.
//! - [`sink`]: what the router hands this node ([`tether_core::LocalSink`]).
//! - [`peers`]: the other nodes of the cluster.
//!
//! # One path
//! A push, a kick and a subscription change go to the nodes that hold the users' sessions
//! through the router, this node included: [`tether_core::Router::send`] applies a message to
//! this node's sink at once. The one exception is the fan-out of publications and broadcasts:
//! this node's part is queued through a room reserved in its fan-out queue before anything is
//! stored or sent, so that a full queue is answered with 503 and leaves nothing behind (a
//! stored publication always has its fan-out); the other nodes get theirs through the router.

mod batch;
mod peers;
pub mod sessions;
pub mod sink;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_core::store::{Append, Appended, Cursor, Idempotency, NewMessage, Page};
use tether_core::{
    AppId, ConnId, DeviceId, MessageId, MessageIdGen, NodeId, NodeMessage, Outgoing, Registry,
    RegistryError, Router, RouterError, Seq, Session, Store, StoreError, SubscriptionError,
    TopicId, UserId,
};
use tether_proto::{Code, PayloadKind, Publication, Push};
use tracing::warn;

use crate::config::Config;
pub use crate::fanout::{Busy, SubscribeError};
use crate::fanout::{Fanout, Job};
use crate::link::{Link, Links};
use crate::metrics::Metrics;
pub use batch::{BatchPush, BatchSent, Durability};
use peers::Peers;
use sessions::NodeSessions;

/// A message's payload, validated by the front end.
#[derive(Debug, Clone)]
pub struct Payload {
    pub kind: PayloadKind,
    pub bytes: Bytes,
}

/// A durable push, validated by the front end.
#[derive(Debug)]
pub struct DurablePush {
    /// Distinct users.
    pub users: Vec<UserId>,
    pub payload: Payload,
    pub ttl: Duration,
    pub idempotency_key: Option<String>,
}

/// Why a request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The app's fan-out queue is full; nothing was stored or sent.
    #[error("the app's fan-out queue is full; retry later")]
    Busy,
    /// The user already has this many topics, the most allowed.
    #[error("the user already has {0} topics")]
    TooManyTopics(usize),
    /// The work was lost (a task that failed); it may or may not have been done.
    #[error("{0}")]
    Failed(String),
}

impl From<Busy> for DeliveryError {
    fn from(_: Busy) -> Self {
        DeliveryError::Busy
    }
}

/// A live push's outcome: its id, and how many connections took it.
#[derive(Debug, Clone, Copy)]
pub struct Pushed {
    pub id: MessageId,
    pub connections: usize,
}

/// A durable push's outcome: the store's answer, and how many connections took it live.
#[derive(Debug)]
pub struct Stored {
    pub appended: Appended,
    pub connections: usize,
}

/// A publication's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub id: MessageId,
    /// Its offset in the topic's history (qos 1), or `None` (live only).
    pub offset: Option<u64>,
    /// Subscribers on this node when it was queued.
    pub subscribers: usize,
    /// Other nodes it was sent to.
    pub nodes: usize,
}

/// A broadcast's outcome: its id, and how many connections the app has across the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Broadcasted {
    pub id: MessageId,
    pub connections: u64,
}

/// A server-side (un)subscription's outcome.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionChanged {
    /// Whether the stored subscriptions changed.
    pub changed: bool,
    /// Connections changed on this node, plus one per other node it was sent to.
    pub connections: usize,
}

/// Where a user is connected, and each device's acked position.
#[derive(Debug)]
pub struct Presence {
    /// Sorted by when they connected.
    pub sessions: Vec<Session>,
    /// Sorted by device.
    pub cursors: Vec<(DeviceId, Cursor)>,
}

/// A topic as this node sees it.
#[derive(Debug, Clone, Copy)]
pub struct TopicInfo {
    pub subscribers: usize,
    /// The last offset its history assigned.
    pub head: Seq,
    /// The oldest publication still held.
    pub earliest: Option<Seq>,
}

/// The node's delivery service.
#[derive(Debug)]
pub struct Delivery {
    registry: Arc<dyn Registry>,
    router: Arc<dyn Router>,
    store: Arc<dyn Store>,
    fanout: Arc<Fanout>,
    peers: Peers,
    sessions: NodeSessions,
    ids: MessageIdGen,
    idempotency_window: Duration,
    max_topics: usize,
    max_attempts: u32,
    metrics: Metrics,
}

impl Delivery {
    /// The store, for what a transport keeps of a device beyond its connections (MQTT's
    /// sessions, `crate::transport::Accepted`).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The service over the node's seams; `links` are the node's own connections.
    pub fn new(
        config: &Config,
        registry: Arc<dyn Registry>,
        router: Arc<dyn Router>,
        store: Arc<dyn Store>,
        fanout: Arc<Fanout>,
        links: Arc<dyn Links>,
        metrics: Metrics,
    ) -> Self {
        let node = NodeId::new(config.node.id.clone());
        Delivery {
            peers: Peers::new(node.clone(), registry.clone(), router.clone()),
            sessions: NodeSessions::new(node, registry.clone(), links),
            registry,
            router,
            store,
            fanout,
            ids: MessageIdGen::new(node_number(&config.node.id)),
            idempotency_window: config.store.idempotency_window,
            max_topics: config.limits.max_topics,
            max_attempts: config.store.max_attempts,
            metrics,
        }
    }

    /// This node's sessions in the registry.
    pub fn sessions(&self) -> &NodeSessions {
        &self.sessions
    }

    /// The fan-out's queue of each app: (app, jobs waiting, capacity).
    pub fn fanout_queues(&self) -> Vec<(AppId, usize, usize)> {
        self.fanout.queue_depths()
    }

    /// A live (qos 0) push to every connection of `users`.
    pub async fn push(
        &self,
        app: &AppId,
        users: &[UserId],
        payload: Payload,
    ) -> Result<Pushed, DeliveryError> {
        let accepted = Instant::now();
        let id = self.ids.next();
        let msg = Arc::new(live_push(app, id, payload).accepted_at(accepted));
        let sessions = self.registry.sessions(app, users).await?;
        let mut connections = 0;
        for (node, conns) in by_node(sessions) {
            match self.router.deliver(&node, &conns, msg.clone()).await {
                Ok(n) => connections += n,
                // Transient messages are best effort: a node that cannot be reached is skipped.
                Err(e) => tracing::warn!(%node, error = %e, "push not routed"),
            }
        }
        self.metrics.push(0);
        Ok(Pushed { id, connections })
    }

    /// A durable (qos 1) push: stored in each user's inbox, then routed to their connections.
    ///
    /// Stored first and routed second: it answers only once every user's inbox holds the
    /// message (as durable as the store's mode promises). A connection that misses it live
    /// gets it from the store, so a failed route loses nothing.
    pub async fn push_durable(
        &self,
        app: &AppId,
        push: DurablePush,
    ) -> Result<Stored, DeliveryError> {
        let accepted = Instant::now();
        let now = tether_core::now_ms();
        let message = NewMessage {
            id: self.ids.next(),
            created_ms: now,
            expires_ms: now.saturating_add(push.ttl.as_millis() as u64),
            kind: push.payload.kind,
            payload: push.payload.bytes,
        };
        let append = Append {
            app: app.clone(),
            users: push.users,
            message: message.clone(),
            idempotency: push.idempotency_key.map(|key| Idempotency {
                key,
                expires_ms: now.saturating_add(self.idempotency_window.as_millis() as u64),
            }),
        };
        let appended = self
            .store
            .append(append)
            .await
            .inspect_err(|_| self.metrics.store_error("append"))?;
        // A duplicate is routed too: a connection that has the seq already drops it, and a
        // retry of an append that failed part-way (the Redis store appends user by user)
        // reaches live the users the first attempt missed.
        let connections = self.route_durable(app, &appended, &message, accepted).await;
        self.metrics.push(1);
        Ok(Stored {
            appended,
            connections,
        })
    }

    /// Hands a stored message to the connections of its users; returns how many took it.
    ///
    /// Best effort: whatever is not routed here reaches the client from its inbox.
    async fn route_durable(
        &self,
        app: &AppId,
        appended: &Appended,
        message: &NewMessage,
        accepted: Instant,
    ) -> usize {
        let users: Vec<UserId> = appended.seqs.iter().map(|(u, _)| u.clone()).collect();
        let mut sessions = match self.registry.sessions(app, &users).await {
            Ok(sessions) => sessions,
            Err(e) => {
                tracing::warn!(error = %e, "durable push stored but not routed");
                return 0;
            }
        };
        // Grouped by user, then node, with no map per user or per node: most users of a push
        // have one or two sessions.
        sessions.sort_unstable_by(|a, b| (&a.user, &a.node).cmp(&(&b.user, &b.node)));
        let seqs: HashMap<&UserId, Seq> = appended.seqs.iter().map(|(u, s)| (u, *s)).collect();
        let mut conns = Vec::new();
        let mut reached = 0;
        for user_sessions in sessions.chunk_by(|a, b| a.user == b.user) {
            let Some(seq) = seqs.get(&user_sessions[0].user) else {
                continue;
            };
            // Each inbox has its own seq, so each user gets its own frame; the devices of one
            // user share it.
            let msg = Arc::new(
                Outgoing::new(Push {
                    app: app.to_string(),
                    msg_id: appended.id.0,
                    seq: seq.0,
                    qos: 1,
                    created_ms: appended.created_ms,
                    kind: message.kind,
                    payload: message.payload.clone(),
                })
                .accepted_at(accepted),
            );
            for on_node in user_sessions.chunk_by(|a, b| a.node == b.node) {
                let node = &on_node[0].node;
                conns.clear();
                conns.extend(on_node.iter().map(|s| s.conn));
                match self.router.deliver(node, &conns, msg.clone()).await {
                    Ok(n) => reached += n,
                    Err(e) => tracing::warn!(%node, error = %e, "durable push not routed"),
                }
            }
        }
        reached
    }

    /// A publication to `topic`'s subscribers on every node; with a `ttl`, first kept in the
    /// topic's history (qos 1). Answers once the fan-out is queued, not when it is delivered.
    pub async fn publish(
        self: &Arc<Self>,
        app: &AppId,
        topic: &TopicId,
        payload: Payload,
        ttl: Option<Duration>,
    ) -> Result<Published, DeliveryError> {
        // Room in the fan-out queue first: a publication is never stored without its fan-out.
        let room = self.fanout.reserve(app).inspect_err(|_| self.busy())?;
        // Storing and queueing run in their own task: a request cancelled in between (a client
        // that hangs up, the request timeout) must not leave a stored publication unsent. The
        // reserved room bounds these tasks.
        let me = self.clone();
        let (app, topic) = (app.clone(), topic.clone());
        let published = tokio::spawn(async move {
            let id = me.ids.next();
            let now = tether_core::now_ms();
            let offset = match ttl {
                Some(ttl) => {
                    let message = NewMessage {
                        id,
                        created_ms: now,
                        expires_ms: now.saturating_add(ttl.as_millis() as u64),
                        kind: payload.kind,
                        payload: payload.bytes.clone(),
                    };
                    let stored = me.store.publish(&app, &topic, message).await;
                    stored.inspect_err(|_| me.metrics.store_error("publish"))?.0
                }
                None => 0,
            };
            let msg = Arc::new(Outgoing::publication(Publication {
                app: app.to_string(),
                topic: topic.to_string(),
                offset,
                msg_id: id.0,
                created_ms: now,
                kind: payload.kind,
                payload: payload.bytes,
            }));
            let subscribers = me.fanout.subscribers(&app, &topic);
            room.send(Job::Publish {
                topic: topic.clone(),
                offset,
                msg: msg.clone(),
            });
            // Every other node fans it out to its own subscribers (once per node).
            let remote = NodeMessage::Publish {
                app,
                topic,
                offset,
                msg,
            };
            let nodes = me.peers.send_to_others(remote).await;
            Ok::<_, DeliveryError>(Published {
                id,
                offset: (offset != 0).then_some(offset),
                subscribers,
                nodes,
            })
        });
        let published = published
            .await
            .map_err(|e| DeliveryError::Failed(format!("publish failed: {e}")))??;
        self.metrics.publish(u8::from(ttl.is_some()));
        Ok(published)
    }

    /// A live push to every connection bound to `app`, on every node.
    pub async fn broadcast(
        &self,
        app: &AppId,
        payload: Payload,
    ) -> Result<Broadcasted, DeliveryError> {
        let connections = self.registry.app_session_count(app).await?;
        let room = self.fanout.reserve(app).inspect_err(|_| self.busy())?;
        let id = self.ids.next();
        let msg = Arc::new(live_push(app, id, payload));
        room.send(Job::Broadcast { msg: msg.clone() });
        let remote = NodeMessage::Broadcast {
            app: app.clone(),
            msg,
        };
        self.peers.send_to_others(remote).await;
        self.metrics.broadcasts.increment(1);
        Ok(Broadcasted { id, connections })
    }

    /// Closes every connection of `user` with 4207 (kicked), or only those of `device` when
    /// given, on every node; returns how many.
    pub async fn kick(
        &self,
        app: &AppId,
        user: &UserId,
        device: Option<&DeviceId>,
    ) -> Result<usize, DeliveryError> {
        let sessions = self
            .registry
            .sessions(app, std::slice::from_ref(user))
            .await?
            .into_iter()
            .filter(|s| device.is_none_or(|d| &s.device == d));
        let mut kicked = 0;
        for (node, conns) in by_node(sessions) {
            kicked += self
                .router
                .disconnect(&node, &conns, Code::KICKED, "kicked by the application")
                .await?;
        }
        Ok(kicked)
    }

    /// Closes, on every node, the older connections that `conn` takes the place of (MQTT's
    /// session takeover, docs/mqtt.md 4.4: see [`NodeSessions::older_twins`]) with 4211
    /// (taken over); returns how many.
    pub async fn take_over(&self, conn: &dyn Link) -> usize {
        let twins = self.sessions.older_twins(conn).await;
        self.close_taken_over(twins).await
    }

    /// Before a new connection of `device` over `transport` reads where it resumes: waits
    /// until the device's other connections on this node have left the registry, closing
    /// those still there after `grace` (each with 4211, taken over), and goes on after `wait`
    /// in any case. A connection writes the acks it had not written yet before it leaves the
    /// registry, so the new one starts after every ack the old one took: one that was ending
    /// already (the device acked, disconnected and connected again at once) and one still
    /// open (the device switched networks; while a connection lives, its acks are written at
    /// most every 100 ms). The grace lets the first kind end by itself, reading what the
    /// device sent last, rather than be closed before it read it. Past `wait` the new
    /// connection goes on and gets again what the old one acked last: duplicates, never
    /// losses.
    ///
    /// Connections on other nodes are not waited for (a dead node's stay in the registry
    /// until it is reaped, and a device reconnecting after its node died must not wait for
    /// them): [`Delivery::take_over`] closes them once the new one is registered.
    pub async fn hand_over(
        &self,
        device: &DeviceId,
        transport: tether_core::Transport,
        bindings: &[crate::link::Binding],
        grace: Duration,
        wait: Duration,
    ) {
        let here = |found: Vec<Session>| -> Vec<Session> {
            let node = self.sessions.node();
            found.into_iter().filter(|s| &s.node == node).collect()
        };
        let sessions = || self.sessions.device_sessions(device, transport, bindings);
        let mut left = here(sessions().await);
        let start = Instant::now();
        let (mut closed, mut step) = (false, Duration::from_millis(1));
        while !left.is_empty() {
            if start.elapsed() >= wait {
                warn!(%device, "an older connection of the device did not end in time");
                break;
            }
            if !closed && start.elapsed() >= grace {
                self.close_taken_over(left.clone()).await;
                closed = true;
            }
            tokio::time::sleep(step).await;
            step = (step * 2).min(Duration::from_millis(10));
            let now = sessions().await;
            left.retain(|t| now.iter().any(|s| s.node == t.node && s.conn == t.conn));
        }
    }

    async fn close_taken_over(&self, twins: Vec<Session>) -> usize {
        let mut closed = 0;
        for (node, conns) in by_node(twins) {
            let reason = "another connection of this client took its session over";
            match self
                .router
                .disconnect(&node, &conns, Code::TAKEN_OVER, reason)
                .await
            {
                Ok(n) => closed += n,
                Err(e) => warn!(error = %e, %node, "cannot close a connection taken over"),
            }
        }
        closed
    }

    /// Carries what a client posted to a session of another node (an SSE stream's) to that
    /// node, where its connection takes it: `body` as the client sent it, already checked.
    /// Best effort, like every message between nodes: `Ok` once sent, and the client learns
    /// the rest from its stream (answers to its requests, or the stream's end).
    pub async fn post(
        &self,
        node: &NodeId,
        session: u128,
        body: Bytes,
    ) -> Result<(), DeliveryError> {
        self.router
            .send(node, NodeMessage::Post { session, body })
            .await?;
        Ok(())
    }

    /// Records that the business subscribed (or unsubscribed) `user` to `topic`, then applies
    /// it to the user's connections on every node (a node that misses it applies it at the
    /// user's next connect, from the store).
    pub async fn set_subscription(
        &self,
        app: &AppId,
        user: &UserId,
        topic: &TopicId,
        subscribed: bool,
    ) -> Result<SubscriptionChanged, DeliveryError> {
        let changed = self
            .store
            .set_subscription(app, user, topic, subscribed, self.max_topics)
            .await
            .map_err(|e| match e {
                SubscriptionError::TooMany(n) => DeliveryError::TooManyTopics(n),
                SubscriptionError::Store(e) => {
                    self.metrics.store_error("subscription");
                    e.into()
                }
            })?;
        let sessions = self
            .registry
            .sessions(app, std::slice::from_ref(user))
            .await?;
        let mut connections = 0;
        for (node, conns) in by_node(sessions) {
            let msg = NodeMessage::Subscription {
                app: app.clone(),
                topic: topic.clone(),
                conns,
                subscribed,
            };
            // Local: how many changed. Remote: 1 when sent (it is applied there).
            match self.router.send(&node, msg).await {
                Ok(n) => connections += n,
                Err(e) => tracing::warn!(%node, error = %e, "subscription not sent to a node"),
            }
        }
        Ok(SubscriptionChanged {
            changed,
            connections,
        })
    }

    /// The user's connections across the cluster and each device's acked position.
    pub async fn presence(&self, app: &AppId, user: &UserId) -> Result<Presence, DeliveryError> {
        let mut sessions = self
            .registry
            .sessions(app, std::slice::from_ref(user))
            .await?;
        sessions.sort_by_key(|s| s.connected_at_ms);
        let cursors = self
            .store
            .cursors(app, user)
            .await
            .inspect_err(|_| self.metrics.store_error("cursors"))?;
        Ok(Presence { sessions, cursors })
    }

    /// The user's held durable messages after `after`, at most `limit`, oldest first.
    pub async fn messages(
        &self,
        app: &AppId,
        user: &UserId,
        after: u64,
        limit: usize,
    ) -> Result<Page, DeliveryError> {
        let page = self
            .store
            .read(app, user, Seq(after), limit, tether_core::now_ms())
            .await;
        Ok(page.inspect_err(|_| self.metrics.store_error("read"))?)
    }

    /// The topics the business subscribed `user` to.
    pub async fn user_topics(
        &self,
        app: &AppId,
        user: &UserId,
    ) -> Result<Vec<TopicId>, DeliveryError> {
        let topics = self.store.subscriptions(app, user).await;
        Ok(topics.inspect_err(|_| self.metrics.store_error("subscriptions"))?)
    }

    /// A topic's subscribers on this node and its history's position.
    pub async fn topic(&self, app: &AppId, topic: &TopicId) -> Result<TopicInfo, DeliveryError> {
        let page = self
            .store
            .history(app, topic, Seq(0), 1, tether_core::now_ms())
            .await
            .inspect_err(|_| self.metrics.store_error("history"))?;
        Ok(TopicInfo {
            subscribers: self.fanout.subscribers(app, topic),
            head: page.head,
            earliest: page.messages.first().map(|m| m.seq),
        })
    }

    fn busy(&self) {
        self.metrics.fanout_busy.increment(1);
    }
}

/// A live (qos 0) push frame.
fn live_push(app: &AppId, id: MessageId, payload: Payload) -> Outgoing {
    Outgoing::new(Push {
        app: app.to_string(),
        msg_id: id.0,
        seq: 0,
        qos: 0,
        created_ms: tether_core::now_ms(),
        kind: payload.kind,
        payload: payload.bytes,
    })
}

/// The connection ids of `sessions`, grouped by the node that holds them.
fn by_node(sessions: impl IntoIterator<Item = Session>) -> HashMap<NodeId, Vec<ConnId>> {
    let mut nodes: HashMap<NodeId, Vec<ConnId>> = HashMap::new();
    for s in sessions {
        nodes.entry(s.node).or_default().push(s.conn);
    }
    nodes
}

/// The 10-bit node number in message ids, derived from the node id.
fn node_number(id: &str) -> u16 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash & 0x3ff) as u16
}
