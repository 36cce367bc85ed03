//! The registry seam: who is connected, on which node, connection and device ([`Sessions`]);
//! and which nodes are up, where clients reach them, and whether they take new connections
//! ([`Membership`]). [`Registry`] is both, what a node is given.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{BuildHasher, RandomState};
use std::sync::RwLock;

use async_trait::async_trait;
use hashbrown::HashTable;
use serde::Serialize;

use crate::{AppId, ConnId, DeviceId, NodeId, UserId};

/// How a connection reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Ws,
    /// Server-Sent Events, with a POST route for what the client sends.
    Sse,
    /// MQTT 3.1.1 or 5.0 (`docs/mqtt.md`).
    Mqtt,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Mqtt => "mqtt",
        }
    }
}

/// One binding of one connection: (app, user) on a connection of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub app: AppId,
    pub user: UserId,
    pub node: NodeId,
    pub conn: ConnId,
    pub device: DeviceId,
    pub transport: Transport,
    /// When the connection completed its handshake, ms since the epoch.
    pub connected_at_ms: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The backend cannot be reached; the caller may retry.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

/// Every seam of the registry: sessions and node membership. Implemented for every type that
/// implements both parts, so a backend implements those and `Arc<dyn Registry>` serves as
/// either.
pub trait Registry: Sessions + Membership + Send + Sync + Debug + 'static {}

impl<T> Registry for T where T: Sessions + Membership + Send + Sync + Debug + 'static {}

/// Who is connected where.
///
/// A session is keyed by (app, user, node, conn): one connection with bindings for two apps has
/// two sessions. Backends: [`MemoryRegistry`] (one node), `RedisRegistry` (the cluster mode).
///
/// # Guarantees every backend gives
/// - Once `register` returns `Ok`, [`Sessions::sessions`] on any node sees the session.
#[async_trait]
pub trait Sessions: Send + Sync + Debug + 'static {
    /// Records a session. Registering the same (app, user, node, conn) again replaces it.
    async fn register(&self, session: Session) -> Result<(), RegistryError>;

    /// Forgets the session (app, user, node, conn). Unknown sessions are ignored.
    async fn unregister(
        &self,
        app: &AppId,
        user: &UserId,
        node: &NodeId,
        conn: ConnId,
    ) -> Result<(), RegistryError>;

    /// Every session of each of `users` in `app`, in no particular order. Users with no
    /// session contribute nothing.
    async fn sessions(&self, app: &AppId, users: &[UserId]) -> Result<Vec<Session>, RegistryError>;

    /// How many sessions `app` has across all nodes.
    async fn app_session_count(&self, app: &AppId) -> Result<u64, RegistryError>;

    /// Every session registered for `node`, in no particular order: what a node compares with
    /// the connections it really holds after the registry was unreachable for a while.
    async fn node_sessions(&self, node: &NodeId) -> Result<Vec<Session>, RegistryError>;
}

/// Which nodes are up, where clients reach them, and whether they take new connections.
///
/// # Guarantees every backend gives
/// - Once `announce` returns `Ok`, [`Membership::nodes`] on any node sees this announcement
///   (not an older one) for any `now_ms` before its `expires_ms`. Nodes re-announce well
///   within their ttl; one that stops (crash, lost network) drops out at `expires_ms` without
///   anyone withdrawing it.
/// - A node that died without withdrawing loses its sessions at the first
///   [`Membership::reap`] after its announcement expired; live nodes call it periodically, so
///   that a dead node's sessions are gone within its ttl plus that period.
#[async_trait]
pub trait Membership: Send + Sync + Debug + 'static {
    /// Records a node's announcement, replacing the node's previous one (an announcement is
    /// whole: endpoints, load and state together). Returns whether the node's previous
    /// announcement was still held (`false` for a first announcement, and after a withdraw, a
    /// [`Membership::reap`], or a backend that lost its data): on `false` a node re-registers
    /// its sessions, which the registry may have forgotten.
    async fn announce(&self, node: NodeInfo) -> Result<bool, RegistryError>;

    /// Takes a node's announcement out of the list at once (a clean shutdown); its sessions that
    /// remain (closes that could not unregister) go at the next [`Membership::reap`]. Unknown
    /// nodes are ignored.
    async fn withdraw(&self, node: &NodeId) -> Result<(), RegistryError>;

    /// Every node whose announcement has not expired at `now_ms` (ms since the epoch), draining
    /// ones included, sorted by node id. With `now_ms` 0: every announcement held, the expired
    /// ones a [`Membership::reap`] has not removed yet included, withdrawn ones never (what the
    /// admin API's node list shows, each with its expiry).
    async fn nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, RegistryError>;

    /// Forgets the announcement and every session of each node whose announcement expired
    /// before `now_ms` (a node that died without withdrawing), and returns how many sessions
    /// went. Sessions of nodes that never announced are kept.
    async fn reap(&self, now_ms: u64) -> Result<u64, RegistryError>;
}

/// What a node announces about itself: where clients reach it, its load, and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Gateway endpoints as clients write them (`tcp://host:port`, `ws://host:port/ws`), in the
    /// node's order of preference.
    pub endpoints: Vec<String>,
    /// Open client connections.
    pub connections: u64,
    /// The most connections the node takes (`limits.max_connections`).
    pub max_connections: u64,
    /// The node is draining: it refuses new connections and is moving its clients elsewhere.
    pub draining: bool,
    /// Where the node runs (a data centre, an availability zone), as configured; empty for
    /// none. The dispatcher prefers nodes in the client's zone.
    pub zone: String,
    /// Until when this announcement holds, ms since the epoch.
    pub expires_ms: u64,
}

/// The expiry of a withdrawn announcement: listed by no one, and its sessions (those its node
/// could not unregister) go at the next reap.
const WITHDRAWN: u64 = 0;

/// The in-memory registry: exact and immediate, for one node.
///
/// # Memory
/// It holds one entry per session of every connection of a node, so each is kept small. Per
/// app, a hash table of boxed [`UserSessions`] (8 bytes a slot): the user's id, its first
/// session in place and the others in a boxed slice (empty, no allocation, for most users).
/// An [`Entry`] leaves out the app and user its table already holds and names its node by an
/// index into the nodes seen (40 bytes rather than a [`Session`]'s 88). A user with one
/// session costs an 80-byte chunk plus its slot, against 148 bytes for a map keyed by (app,
/// user) with a boxed slice of sessions.
///
/// # Invariants
/// No user is kept without a session (the last unregister removes it), so memory follows the
/// number of sessions, not the number of users ever seen.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    users: RwLock<Users>,
    /// Announcements by node; expired ones are dropped by the next [`Membership::reap`].
    nodes: RwLock<HashMap<NodeId, NodeInfo>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }
}

/// The sessions, by app then user.
#[derive(Debug, Default)]
struct Users {
    apps: HashMap<AppId, HashTable<Box<UserSessions>>>,
    /// Every node that registered a session, in order; an [`Entry`] holds its index. Nodes are
    /// few and keep their ids across restarts, so this is never pruned.
    nodes: Vec<NodeId>,
    hasher: RandomState,
}

impl Users {
    /// `node`'s index, added when new.
    fn node_index(&mut self, node: &NodeId) -> u32 {
        match self.nodes.iter().position(|n| n == node) {
            Some(i) => i as u32,
            None => {
                self.nodes.push(node.clone());
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn find_node(&self, node: &NodeId) -> Option<u32> {
        self.nodes.iter().position(|n| n == node).map(|i| i as u32)
    }

    fn user(&self, app: &AppId, user: &UserId) -> Option<&UserSessions> {
        let hash = self.hasher.hash_one(user);
        self.apps
            .get(app)?
            .find(hash, |u| &u.user == user)
            .map(|u| &**u)
    }

    fn session(&self, app: &AppId, user: &UserId, entry: &Entry) -> Session {
        Session {
            app: app.clone(),
            user: user.clone(),
            node: self.nodes[entry.node as usize].clone(),
            conn: entry.conn,
            device: entry.device.clone(),
            transport: entry.transport,
            connected_at_ms: entry.connected_at_ms,
        }
    }
}

/// One user's sessions in one app.
#[derive(Debug)]
struct UserSessions {
    user: UserId,
    first: Entry,
    more: Box<[Entry]>,
}

impl UserSessions {
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        std::iter::once(&self.first).chain(self.more.iter())
    }

    fn len(&self) -> usize {
        1 + self.more.len()
    }

    /// Adds `entry`, or replaces the one of its connection.
    fn put(&mut self, entry: Entry) {
        if self.first.is(entry.node, entry.conn) {
            self.first = entry;
        } else if let Some(existing) = self.more.iter_mut().find(|e| e.is(entry.node, entry.conn)) {
            *existing = entry;
        } else {
            // Exactly one more: most users have one or two sessions.
            self.more = self.more.iter().cloned().chain([entry]).collect();
        }
    }

    /// Keeps the sessions `keep` says to; `false` when none is left.
    fn retain(&mut self, keep: impl Fn(&Entry) -> bool) -> bool {
        if keep(&self.first) && self.more.iter().all(&keep) {
            return true;
        }
        let mut left: Vec<Entry> = self.iter().filter(|e| keep(e)).cloned().collect();
        if left.is_empty() {
            return false;
        }
        self.first = left.remove(0);
        self.more = left.into_boxed_slice();
        true
    }
}

/// A session as [`MemoryRegistry`] keeps it, under its app and user.
#[derive(Debug, Clone)]
struct Entry {
    conn: ConnId,
    connected_at_ms: u64,
    device: DeviceId,
    /// Index into [`Users::nodes`].
    node: u32,
    transport: Transport,
}

impl Entry {
    fn is(&self, node: u32, conn: ConnId) -> bool {
        self.conn == conn && self.node == node
    }
}

#[async_trait]
impl Sessions for MemoryRegistry {
    async fn register(&self, session: Session) -> Result<(), RegistryError> {
        let mut guard = self.users.write().unwrap_or_else(|e| e.into_inner());
        let users = &mut *guard;
        let entry = Entry {
            conn: session.conn,
            connected_at_ms: session.connected_at_ms,
            device: session.device,
            node: users.node_index(&session.node),
            transport: session.transport,
        };
        let hash = users.hasher.hash_one(&session.user);
        let hasher = users.hasher.clone();
        let table = users.apps.entry(session.app).or_default();
        match table.find_mut(hash, |u| u.user == session.user) {
            Some(sessions) => sessions.put(entry),
            None => {
                table.insert_unique(
                    hash,
                    Box::new(UserSessions {
                        user: session.user,
                        first: entry,
                        more: Box::default(),
                    }),
                    |u| hasher.hash_one(&u.user),
                );
            }
        }
        Ok(())
    }

    async fn unregister(
        &self,
        app: &AppId,
        user: &UserId,
        node: &NodeId,
        conn: ConnId,
    ) -> Result<(), RegistryError> {
        let mut guard = self.users.write().unwrap_or_else(|e| e.into_inner());
        let users = &mut *guard;
        let Some(node) = users.find_node(node) else {
            return Ok(());
        };
        let hash = users.hasher.hash_one(user);
        let Some(table) = users.apps.get_mut(app) else {
            return Ok(());
        };
        if let Ok(mut found) = table.find_entry(hash, |u| &u.user == user)
            && !found.get_mut().retain(|e| !e.is(node, conn))
        {
            found.remove();
            if table.is_empty() {
                users.apps.remove(app);
            }
        }
        Ok(())
    }

    async fn sessions(&self, app: &AppId, users: &[UserId]) -> Result<Vec<Session>, RegistryError> {
        let map = self.users.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for user in users {
            if let Some(sessions) = map.user(app, user) {
                out.extend(sessions.iter().map(|e| map.session(app, user, e)));
            }
        }
        Ok(out)
    }

    async fn app_session_count(&self, app: &AppId) -> Result<u64, RegistryError> {
        let map = self.users.read().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .apps
            .get(app)
            .map_or(0, |table| table.iter().map(|u| u.len() as u64).sum()))
    }

    async fn node_sessions(&self, node: &NodeId) -> Result<Vec<Session>, RegistryError> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let Some(index) = users.find_node(node) else {
            return Ok(Vec::new());
        };
        Ok(users
            .apps
            .iter()
            .flat_map(|(app, table)| table.iter().map(move |u| (app, u)))
            .flat_map(|(app, u)| u.iter().map(move |e| (app, &u.user, e)))
            .filter(|(_, _, e)| e.node == index)
            .map(|(app, user, e)| users.session(app, user, e))
            .collect())
    }
}

#[async_trait]
impl Membership for MemoryRegistry {
    async fn announce(&self, node: NodeInfo) -> Result<bool, RegistryError> {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let previous = nodes.insert(node.id.clone(), node);
        Ok(previous.is_some_and(|p| p.expires_ms != WITHDRAWN))
    }

    async fn withdraw(&self, node: &NodeId) -> Result<(), RegistryError> {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(node) {
            n.expires_ms = WITHDRAWN;
        }
        Ok(())
    }

    async fn nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, RegistryError> {
        // Expired announcements stay until `reap`, which needs them to find the dead nodes'
        // sessions.
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<NodeInfo> = nodes
            .values()
            .filter(|n| now_ms < n.expires_ms)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn reap(&self, now_ms: u64) -> Result<u64, RegistryError> {
        let dead: Vec<NodeId> = {
            let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
            let dead = nodes
                .values()
                .filter(|n| n.expires_ms <= now_ms)
                .map(|n| n.id.clone())
                .collect::<Vec<_>>();
            nodes.retain(|_, n| n.expires_ms > now_ms);
            dead
        };
        if dead.is_empty() {
            return Ok(0);
        }
        let mut guard = self.users.write().unwrap_or_else(|e| e.into_inner());
        let users = &mut *guard;
        let dead: Vec<u32> = dead.iter().filter_map(|n| users.find_node(n)).collect();
        let mut gone = 0;
        users.apps.retain(|_, table| {
            table.retain(|u| {
                let before = u.len();
                let kept = u.retain(|e| !dead.contains(&e.node));
                gone += (before - if kept { u.len() } else { 0 }) as u64;
                kept
            });
            !table.is_empty()
        });
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_registry_entry_stays_small() {
        // One per session of every connection: a user's first, with its id and the pointer
        // to the others, fits glibc's 80-byte chunk (72 bytes and the chunk's header).
        assert!(size_of::<Entry>() <= 40, "{} bytes", size_of::<Entry>());
        let user = size_of::<UserSessions>();
        assert!(user <= 72, "{user} bytes");
    }

    #[tokio::test]
    async fn memory_registry_passes_the_contract() {
        crate::contract::registry_contract(&MemoryRegistry::new()).await;
    }
}
