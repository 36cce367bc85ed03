//! This node's sessions in the registry, and what the gateway's sessions ask of the delivery
//! service: where a device resumes, topics to join and leave, acks to keep.
//!
//! # Registry changes that fail
//! A session is served whether or not the registry took it (what this node holds reaches it),
//! and a closed connection is closed whether or not its sessions could be removed. What the
//! registry did not take is kept ([`Unsynced`], bounded) and retried after the next
//! announcement it takes (`crate::lifecycle`), and only that, so that a registry that fails a
//! few calls under load is not answered with a re-registration of every session.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, stream};
use tether_core::{
    AppId, ConnId, DeviceId, NodeId, Registry, Session, StoreError, TopicId, Transport, UserId,
};
use tracing::{info, warn};

use super::Delivery;
use super::{Busy, SubscribeError};
use crate::link::{Binding, Link, Links};
use crate::session::work::Target;

/// Past this many pending changes the node registers everything again instead.
const MAX_PENDING: usize = 65_536;

/// This node's sessions in the registry.
#[derive(Debug)]
pub struct NodeSessions {
    node: NodeId,
    registry: Arc<dyn Registry>,
    /// The node's open connections: what the registry should hold.
    links: Arc<dyn Links>,
    unsynced: Unsynced,
}

impl NodeSessions {
    pub fn new(node: NodeId, registry: Arc<dyn Registry>, links: Arc<dyn Links>) -> Self {
        NodeSessions {
            node,
            registry,
            links,
            unsynced: Unsynced::default(),
        }
    }

    /// This node's id, as its sessions carry it.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    fn session(&self, conn: &dyn Link, app: &AppId, user: &UserId) -> Session {
        Session {
            app: app.clone(),
            user: user.clone(),
            node: self.node.clone(),
            conn: conn.id(),
            device: conn.device().clone(),
            transport: conn.transport(),
            connected_at_ms: conn.connected_at_ms(),
        }
    }

    /// Records a new connection's sessions, one per binding.
    pub async fn register(&self, conn: &dyn Link) {
        for Binding { app, user, .. } in conn.bindings() {
            if let Err(e) = self.registry.register(self.session(conn, app, user)).await {
                // The connection is served anyway (what this node holds reaches it); pushes
                // from other nodes find it once the node registers its sessions again, at its
                // next announcement that the registry takes.
                warn!(error = %e, "cannot register session; registering it later");
                self.unsynced.register_failed(conn.id());
            }
        }
    }

    /// The sessions of other connections that `conn` takes the place of: those of the same
    /// device and user in one of its apps, over the same transport, that connected before it
    /// (ordered by connection time, then node and connection id, so that of two connections
    /// racing exactly one takes the other's place). A registry that cannot be read gives
    /// none (logged): the connection is served, the older one stays.
    pub async fn older_twins(&self, conn: &dyn Link) -> Vec<Session> {
        let mine = (conn.connected_at_ms(), &self.node, conn.id());
        let mut twins = self
            .device_sessions(conn.device(), conn.transport(), conn.bindings())
            .await;
        twins.retain(|s| (s.connected_at_ms, &s.node, s.conn) < mine);
        twins
    }

    /// The connections of `device` over `transport` that the registry holds for the users of
    /// `bindings`, on every node, each once. A registry that cannot be read gives none
    /// (logged).
    pub async fn device_sessions(
        &self,
        device: &DeviceId,
        transport: Transport,
        bindings: &[Binding],
    ) -> Vec<Session> {
        let mut found: Vec<Session> = Vec::new();
        for Binding { app, user, .. } in bindings {
            let sessions = match self
                .registry
                .sessions(app, std::slice::from_ref(user))
                .await
            {
                Ok(sessions) => sessions,
                Err(e) => {
                    warn!(error = %e, "cannot look for the connections a new one takes over");
                    continue;
                }
            };
            for s in sessions {
                if s.device == *device
                    && s.transport == transport
                    && !found.iter().any(|t| t.node == s.node && t.conn == s.conn)
                {
                    found.push(s);
                }
            }
        }
        found
    }

    /// Forgets a closed connection's sessions.
    pub async fn unregister(&self, conn: &dyn Link) {
        for Binding { app, user, .. } in conn.bindings() {
            if let Err(e) = self
                .registry
                .unregister(app, user, &self.node, conn.id())
                .await
            {
                warn!(error = %e, "cannot unregister session; removing it later");
                self.unsynced
                    .unregister_failed(app.clone(), user.clone(), conn.id());
            }
        }
    }

    /// The registry may hold nothing of this node, or anything (it lost the node).
    pub fn lost(&self) {
        self.unsynced.everything();
    }

    /// Whether every change reached the registry.
    pub fn synced(&self) -> bool {
        self.unsynced.is_empty()
    }

    /// Forgets the sessions a previous process of this node id left in the registry (it was
    /// killed, or lost Redis while closing): called at start, before any connection exists.
    pub async fn forget_previous(&self) {
        match self.registry.node_sessions(&self.node).await {
            Ok(left) if left.is_empty() => {}
            Ok(left) => {
                let n = left.len();
                for s in left {
                    if let Err(e) = self
                        .registry
                        .unregister(&s.app, &s.user, &s.node, s.conn)
                        .await
                    {
                        warn!(error = %e, "cannot forget a session of a previous run");
                        self.unsynced.unregister_failed(s.app, s.user, s.conn);
                    }
                }
                info!(
                    sessions = n,
                    "forgot the sessions a previous run of this node left"
                );
            }
            Err(e) => {
                warn!(error = %e, "cannot list the sessions of a previous run");
                self.unsynced.everything();
            }
        }
    }

    /// Retries the registry changes that failed: registers the sessions of the connections
    /// that could not register (all of them when the registry lost the node), then unregisters
    /// what the registry holds for connections that are closed (the ones whose unregister
    /// failed, those that closed while this ran, and, after a loss, whatever the registry lists
    /// for the node). What fails again is kept for the next announcement.
    pub async fn resync(&self) {
        let pending = self.unsynced.take();
        let conns: Vec<Arc<dyn Link>> = if pending.everything {
            self.links.snapshot(None)
        } else {
            pending
                .register
                .iter()
                .filter_map(|id| self.links.get(*id))
                .collect()
        };
        let sessions: Vec<Session> = conns
            .iter()
            .flat_map(|conn| {
                conn.bindings()
                    .iter()
                    .map(|b| self.session(&**conn, &b.app, &b.user))
            })
            .collect();
        let registered = sessions.len();
        let failed: Vec<ConnId> = stream::iter(sessions.iter().cloned())
            .map(|s| async move {
                let conn = s.conn;
                self.registry.register(s).await.err().map(|_| conn)
            })
            .buffer_unordered(64)
            .filter_map(std::future::ready)
            .collect()
            .await;
        for conn in &failed {
            self.unsynced.register_failed(*conn);
        }
        // After the registrations: a connection that closed while they ran unregistered
        // itself, maybe before this resync registered it again.
        let mut candidates: Vec<(AppId, UserId, ConnId)> = sessions
            .into_iter()
            .map(|s| (s.app, s.user, s.conn))
            .chain(pending.unregister)
            .collect();
        if pending.everything {
            match self.registry.node_sessions(&self.node).await {
                Ok(held) => candidates.extend(held.into_iter().map(|s| (s.app, s.user, s.conn))),
                Err(e) => {
                    warn!(error = %e, "cannot list this node's sessions");
                    self.unsynced.everything();
                }
            }
        }
        let open = |(app, user, conn): &(AppId, UserId, ConnId)| {
            self.links.get(*conn).is_some_and(|c| {
                c.bindings()
                    .iter()
                    .any(|b| &b.app == app && &b.user == user)
            })
        };
        let mut gone: Vec<_> = candidates.into_iter().filter(|c| !open(c)).collect();
        gone.sort();
        gone.dedup();
        let removed = gone.len();
        for (app, user, conn) in gone {
            if self
                .registry
                .unregister(&app, &user, &self.node, conn)
                .await
                .is_err()
            {
                self.unsynced.unregister_failed(app, user, conn);
            }
        }
        info!(
            everything = pending.everything,
            registered,
            failed = failed.len(),
            removed,
            "sessions synced with the registry again"
        );
    }
}

/// What the gateway's sessions ask of the delivery service.
impl Delivery {
    /// The inbox of (app, user) as `device` sees it, for durable delivery's reads and ack
    /// writes (see [`crate::session::work`]).
    pub fn inbox(&self, app: &AppId, user: &UserId, device: &DeviceId) -> Target {
        Target {
            store: self.store.clone(),
            app: app.clone(),
            user: user.clone(),
            device: device.clone(),
            max_attempts: self.max_attempts,
        }
    }

    /// Where `device` stands in the inbox of (app, user): its acked seq.
    pub async fn acked(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<u64, StoreError> {
        match self.store.cursor(app, user, device).await {
            Ok(cursor) => Ok(cursor.acked.0),
            Err(e) => {
                self.metrics.store_error("cursor");
                Err(e)
            }
        }
    }

    /// A new connection: its sessions into the registry, and it joins the topics the business
    /// subscribed its users to. A topic that cannot be joined (the store is down, the fan-out
    /// busy) is skipped and counted: the connection itself is worth more than one of its
    /// topics.
    pub async fn attach(&self, conn: &Arc<dyn Link>) {
        self.sessions.register(&**conn).await;
        for (binding, Binding { app, user, .. }) in conn.bindings().iter().enumerate() {
            let topics = match self.store.subscriptions(app, user).await {
                Ok(topics) => topics,
                Err(e) => {
                    warn!(error = %e, "cannot read a user's topics");
                    self.metrics.store_error("subscriptions");
                    continue;
                }
            };
            for topic in topics {
                self.join(conn, binding, &topic);
            }
        }
    }

    /// Subscribes binding `binding` of `conn` (of `app`) to `topic` for the business, unless it
    /// already is; a full fan-out queue skips it (counted).
    fn join(&self, conn: &Arc<dyn Link>, binding: usize, topic: &TopicId) {
        if self.fanout.join(conn.clone(), binding, topic).is_err() {
            self.metrics.fanout_busy.increment(1);
        }
    }

    /// A closed connection: out of its `topics`, its unwritten `acks` (binding, seq) written,
    /// its sessions out of the registry.
    pub async fn detach(
        &self,
        conn: &dyn Link,
        topics: Vec<(usize, TopicId)>,
        acks: Vec<(usize, u64)>,
    ) {
        self.fanout.leave_all(conn, topics);
        for (binding, seq) in acks {
            let Binding { app, user, .. } = &conn.bindings()[binding];
            let acked = self
                .store
                .ack(app, user, conn.device(), tether_core::Seq(seq))
                .await;
            if let Err(e) = acked {
                warn!(conn = %conn.id(), error = %e, "cannot store an ack");
                self.metrics.store_error("ack");
            }
        }
        self.sessions.unregister(conn).await;
    }

    /// A client's `subscribe` (see [`crate::fanout::Fanout::subscribe`]).
    pub fn subscribe(
        &self,
        conn: Arc<dyn Link>,
        binding: usize,
        topic: &TopicId,
        request: u32,
        since: Option<u64>,
    ) -> Result<bool, SubscribeError> {
        self.fanout.subscribe(conn, binding, topic, request, since)
    }

    /// A client's `unsubscribe` (see [`crate::fanout::Fanout::unsubscribe`]).
    pub fn unsubscribe(
        &self,
        conn: Arc<dyn Link>,
        binding: usize,
        topic: &TopicId,
        request: u32,
    ) -> Result<bool, Busy> {
        self.fanout.unsubscribe(conn, binding, topic, request)
    }
}

/// Registry changes the node could not make (the registry was unreachable or slow), kept to
/// be retried.
#[derive(Debug, Default)]
struct Unsynced {
    inner: Mutex<Pending>,
}

/// What to retry.
#[derive(Debug, Default)]
struct Pending {
    /// Connections whose sessions may be missing from the registry.
    register: HashSet<ConnId>,
    /// Sessions of closed connections the registry may still hold.
    unregister: Vec<(AppId, UserId, ConnId)>,
    /// Register every session again and drop the registry's extra ones: the registry lost
    /// the node, or too much is pending.
    everything: bool,
}

impl Unsynced {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register_failed(&self, conn: ConnId) {
        let mut p = self.lock();
        if p.register.len() < MAX_PENDING {
            p.register.insert(conn);
        } else {
            p.everything = true;
        }
    }

    fn unregister_failed(&self, app: AppId, user: UserId, conn: ConnId) {
        let mut p = self.lock();
        if p.unregister.len() < MAX_PENDING {
            p.unregister.push((app, user, conn));
        } else {
            p.everything = true;
        }
    }

    fn everything(&self) {
        self.lock().everything = true;
    }

    fn is_empty(&self) -> bool {
        let p = self.lock();
        !p.everything && p.register.is_empty() && p.unregister.is_empty()
    }

    /// What is pending, leaving nothing.
    fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }
}
