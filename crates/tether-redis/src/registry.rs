//! [`RedisRegistry`]: sessions and node announcements in Redis (standalone or Redis Cluster).
//!
//! # Keys
//!
//! Every key starts with the configured prefix (see [`Keys`]).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{u:app:user}:sessions` | hash | field `node:conn`, value the session (below) |
//! | `{n:node}:sessions` | set | `<len(app)>:<app><user>:<conn>`, one per session of the node |
//! | `{n:node}:counts` | hash | field app, value the node's sessions in that app |
//! | `{n:node}:reaping` | set | the node's sessions a reap took and is forgetting |
//! | `{g}:nodes` | hash | field node, value its announcement (or `~deadline` while reaped) |
//! | `{g}:session-nodes` | set | every node that may hold sessions |
//!
//! A user's sessions live in the user's slot, next to the inbox, so that a lookup of one user
//! is one command on one shard. What a node registered is kept a second time under the node,
//! so that the sessions of a dead node can be found without scanning every user.
//!
//! A session value is 9 bytes and the device id: the transport (`t`, `w` or `s`), `connected_at_ms`
//! (big-endian u64), then the device id. A field is `node:conn` (the conn is decimal, so the
//! last `:` splits it). Decoding checks lengths and tags: an entry that does not decode is
//! skipped with a warning, never trusted.
//!
//! An announcement is text, readable with `redis-cli HGETALL`: `expires_ms connections
//! max_connections draining(0|1)`, then ` len:zone` and ` len:endpoint` per endpoint.
//!
//! # Costs
//!
//! `register` and `unregister` are two round trips: the node's bookkeeping, then the user's
//! hash (and `{g}:session-nodes`, concurrently), in the order that keeps every session a
//! lookup can see findable by reap (register: node first; unregister: user first). One
//! command cannot do it on a cluster (the keys are in different slots), and doing it
//! concurrently would let a failure leave a session nobody would ever reap. Every register
//! also touches the one `{g}` slot (an `SADD` of a member that is almost always there already).
//! `sessions` is one `HGETALL` per user, up to [`CONCURRENCY`] in flight. `app_session_count`
//! is one `HGET` per node that holds sessions.
//!
//! Memory, measured on Redis 7.0.15 (jemalloc, default listpack limits) with
//! `cargo test -p tether-redis --test registry -- --ignored --nocapture memory` (`used_memory`
//! before and after registering 10,000 users on one node; app `chat`, user `user-000042`, node
//! `gw-01`, a 16-byte device id): **269 bytes per session** when each user has one session,
//! 195-202 when each has two. Of the 269, about 190 is the user's hash (a key per connected
//! user: `MEMORY USAGE` says 152, plus the keyspace entry) and 75 the member in the node's set
//! (a hashtable: Redis 7.0 has no compact encoding for sets of strings); a user's second
//! session adds about 130.
//!
//! # When a node dies
//!
//! Its announcement expires at `expires_ms` (the node's announce interval times its ttl
//! factor); the first [`Membership::reap`] after that forgets its sessions. A dead node's
//! sessions are gone within its announcement ttl plus the reap period of the live nodes.
//! Until then pushes to its users are routed to a node that does not answer; the store still
//! holds them for the next connection.
//!
//! Reap takes a node in four steps, each safe against the node coming back or against a
//! second reaper:
//!
//! 1. *Claim* (`{g}`, one script): if the announcement is still the expired one this reap
//!    read (compare and swap, so a node that announced again in the meantime is left alone),
//!    replace it by a tombstone `~deadline` (Redis clock + [`REAP_LEASE_MS`]) and take the
//!    node out of `{g}:session-nodes`. While the tombstone holds, `announce` from that node
//!    answers `Unavailable` (try again): the node cannot re-register a session that the
//!    reap is about to delete. A tombstone past its deadline (a reaper that died) is claimed
//!    again by the next reap.
//! 2. *Take* (`{n:node}`, one script): move the node's session set to `reaping` and drop its
//!    counts. Sessions the node registers after this go to a fresh set and stay.
//! 3. *Forget*: scan `reaping`, and delete the sessions from each user's hash (one `HDEL` per
//!    user key: users live in different slots), then delete `reaping`.
//! 4. *Release*: delete the tombstone if it is still ours. The node's next `announce` answers
//!    `false`, and it registers its sessions again ([`RedisRegistry::register_all`]).
//!
//! [`Membership::nodes`] only reads: an expired announcement stays (hidden) until a reap takes
//! it, because the reap needs it to find the node's sessions. A node that withdraws is not
//! reaped: it unregisters its sessions as it closes them.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt, stream};
use redis::Script;
use tether_core::{
    AppId, ConnId, DeviceId, Membership, NodeId, NodeInfo, RegistryError, Session, Sessions,
    Transport, UserId,
};

use crate::{Keys, Redis, RedisOptions, describe};

/// Commands in flight at once for work that fans out over many keys (lookups of many users,
/// [`RedisRegistry::register_all`], reaping).
pub const CONCURRENCY: usize = 64;

/// How long a reap holds a node (see the module docs) before another reap may take over.
pub const REAP_LEASE_MS: u64 = 60_000;

/// Members read per `SSCAN` while reaping.
const REAP_BATCH: usize = 512;

/// Register, node side: add the session to the node's set, and count it once.
/// KEYS: node sessions, node counts. ARGV: member, app.
static NODE_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
            redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
        end
        return 0
        ",
    )
});

/// Unregister, node side: the reverse of [`NODE_ADD`]; a count that reaches 0 goes.
/// KEYS: node sessions, node counts. ARGV: member, app.
static NODE_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
            if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
                redis.call('HDEL', KEYS[2], ARGV[2])
            end
        end
        return 0
        ",
    )
});

/// Returns 1 if the previous announcement was held, 0 if not, -1 while a reap holds the node.
/// KEYS: announcements. ARGV: node, announcement.
static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        if old and string.sub(old, 1, 1) == '~' then
            local t = redis.call('TIME')
            local deadline = tonumber(string.sub(old, 2)) or 0
            if deadline > t[1] * 1000 + math.floor(t[2] / 1000) then
                return -1
            end
            old = false
        end
        if old and string.sub(old, 1, 2) == '0 ' then
            old = false -- withdrawn
        end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        if old then return 1 end
        return 0
        ",
    )
});

/// Marks an announcement withdrawn: expired since the epoch (`0 ...`), so that no node lists
/// it and the next reap forgets whatever sessions the node left (a close that could not
/// unregister). A reap's tombstone is left alone.
/// KEYS: announcements. ARGV: node.
static WITHDRAW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        if old and string.sub(old, 1, 1) ~= '~' then
            local withdrawn = string.gsub(old, '^%d+', '0', 1)
            redis.call('HSET', KEYS[1], ARGV[1], withdrawn)
        end
        return 0
        ",
    )
});

/// Reap step 1: returns the tombstone, or nil when the node announced again since the reaper
/// read `seen` or another reap holds it.
/// KEYS: announcements, session-nodes. ARGV: node, seen, lease ms.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        if old ~= ARGV[2] then return false end
        local t = redis.call('TIME')
        local now = t[1] * 1000 + math.floor(t[2] / 1000)
        if string.sub(old, 1, 1) == '~' and (tonumber(string.sub(old, 2)) or 0) > now then
            return false
        end
        local tombstone = string.format('~%d', now + tonumber(ARGV[3]))
        redis.call('HSET', KEYS[1], ARGV[1], tombstone)
        redis.call('SREM', KEYS[2], ARGV[1])
        return tombstone
        ",
    )
});

/// Reap step 2: moves the node's sessions to `reaping` (merged with what a reap that died
/// left there), and returns how many are to forget.
/// KEYS: node sessions, node counts, node reaping.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then
            if redis.call('EXISTS', KEYS[3]) == 1 then
                redis.call('SUNIONSTORE', KEYS[3], KEYS[3], KEYS[1])
                redis.call('DEL', KEYS[1])
            else
                redis.call('RENAME', KEYS[1], KEYS[3])
            end
        end
        redis.call('DEL', KEYS[2])
        return redis.call('SCARD', KEYS[3])
        ",
    )
});

/// Reap step 4: deletes the tombstone if it is still the one given.
/// KEYS: announcements. ARGV: node, tombstone.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
            redis.call('HDEL', KEYS[1], ARGV[1])
        end
        return 0
        ",
    )
});

/// The registry in Redis (see the module docs for the keys and the guarantees).
#[derive(Debug, Clone)]
pub struct RedisRegistry {
    redis: Redis,
    keys: Keys,
}

impl RedisRegistry {
    pub async fn connect(options: &RedisOptions) -> Result<Self, RegistryError> {
        let redis = Redis::connect(options).await.map_err(unavailable)?;
        Ok(Self::new(redis, Keys::new(&options.prefix)))
    }

    pub fn new(redis: Redis, keys: Keys) -> Self {
        RedisRegistry { redis, keys }
    }

    /// Registers many sessions, [`CONCURRENCY`] at a time: what a node does when `announce`
    /// answers `false` (Redis lost its data, or a reap took the node). Stops at the first
    /// error; registering again is harmless.
    pub async fn register_all(&self, sessions: Vec<Session>) -> Result<(), RegistryError> {
        stream::iter(sessions)
            .map(|s| self.register(s))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
    }

    async fn announcements(&self) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        redis::cmd("HGETALL")
            .arg(self.keys.global("nodes"))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)
    }

    /// An announcement as held in `{g}:nodes`: `None` for a tombstone, and (with a warning)
    /// for one that does not decode.
    fn decode_held(&self, id: &str, value: &[u8]) -> Option<NodeInfo> {
        if is_tombstone(value) {
            return None;
        }
        let info = decode_announcement(NodeId::from(id), value);
        if info.is_none() {
            tracing::warn!(
                key = self.keys.global("nodes"),
                node = id,
                "skipping an announcement that does not decode"
            );
        }
        info
    }

    /// Reap step 1 (see the module docs): the tombstone, if this reap now holds the node.
    async fn claim(&self, node: &str, seen: &[u8]) -> Result<Option<String>, RegistryError> {
        CLAIM
            .key(self.keys.global("nodes"))
            .key(self.keys.global("session-nodes"))
            .arg(node)
            .arg(seen)
            .arg(REAP_LEASE_MS)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)
    }

    /// Reap steps 2 and 3: forgets every session the node registered; returns how many went.
    async fn forget_sessions(&self, node: &str) -> Result<u64, RegistryError> {
        let mut redis = self.redis.clone();
        let reaping = self.keys.node(node, "reaping");
        let taken: u64 = TAKE
            .key(self.keys.node(node, "sessions"))
            .key(self.keys.node(node, "counts"))
            .key(&reaping)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        if taken == 0 {
            return Ok(0);
        }
        // Nobody writes to `reaping` but reaps, so the scan sees every member (some maybe
        // twice: HDEL counts each session once).
        let mut gone = 0;
        let mut cursor = 0u64;
        loop {
            let (next, members): (u64, Vec<Vec<u8>>) = redis::cmd("SSCAN")
                .arg(&reaping)
                .arg(cursor)
                .arg("COUNT")
                .arg(REAP_BATCH)
                .query_async(&mut redis)
                .await
                .map_err(unavailable)?;
            gone += self.forget_members(node, &members).await?;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis::cmd("DEL")
            .arg(&reaping)
            .query_async::<()>(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(gone)
    }

    /// Deletes the sessions of `node` that `members` name from their users' hashes, one `HDEL`
    /// per user key.
    async fn forget_members(&self, node: &str, members: &[Vec<u8>]) -> Result<u64, RegistryError> {
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for member in members {
            match decode_member(member) {
                Some((app, user, conn)) => by_key
                    .entry(self.keys.user(app, user, "sessions"))
                    .or_default()
                    .push(field(node, ConnId(conn))),
                None => tracing::warn!(
                    node,
                    member = %String::from_utf8_lossy(member),
                    "skipping a session of a reaped node that does not decode"
                ),
            }
        }
        stream::iter(by_key)
            .map(|(key, fields)| {
                let mut redis = self.redis.clone();
                async move {
                    redis::cmd("HDEL")
                        .arg(key)
                        .arg(fields)
                        .query_async::<u64>(&mut redis)
                        .await
                        .map_err(unavailable)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await
    }

    /// Reap step 4.
    async fn release(&self, node: &str, tombstone: &str) -> Result<(), RegistryError> {
        RELEASE
            .key(self.keys.global("nodes"))
            .arg(node)
            .arg(tombstone)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Sessions for RedisRegistry {
    async fn register(&self, session: Session) -> Result<(), RegistryError> {
        let mut redis = self.redis.clone();
        let node = session.node.as_str();
        NODE_ADD
            .key(self.keys.node(node, "sessions"))
            .key(self.keys.node(node, "counts"))
            .arg(member(
                session.app.as_str(),
                session.user.as_str(),
                session.conn,
            ))
            .arg(session.app.as_str())
            .invoke_async::<()>(&mut redis)
            .await
            .map_err(unavailable)?;
        let mut hset = redis::cmd("HSET");
        hset.arg(
            self.keys
                .user(session.app.as_str(), session.user.as_str(), "sessions"),
        )
        .arg(field(node, session.conn))
        .arg(encode_session(&session));
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.keys.global("session-nodes")).arg(node);
        let mut other = redis.clone();
        futures_util::future::try_join(
            hset.query_async::<()>(&mut redis),
            sadd.query_async::<()>(&mut other),
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn unregister(
        &self,
        app: &AppId,
        user: &UserId,
        node: &NodeId,
        conn: ConnId,
    ) -> Result<(), RegistryError> {
        let mut redis = self.redis.clone();
        redis::cmd("HDEL")
            .arg(self.keys.user(app.as_str(), user.as_str(), "sessions"))
            .arg(field(node.as_str(), conn))
            .query_async::<()>(&mut redis)
            .await
            .map_err(unavailable)?;
        NODE_REMOVE
            .key(self.keys.node(node.as_str(), "sessions"))
            .key(self.keys.node(node.as_str(), "counts"))
            .arg(member(app.as_str(), user.as_str(), conn))
            .arg(app.as_str())
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)
    }

    async fn sessions(&self, app: &AppId, users: &[UserId]) -> Result<Vec<Session>, RegistryError> {
        // Owned ids: with futures borrowing from `users`, rustc cannot prove the whole future
        // `Send` ("FnOnce is not general enough"), which `async_trait` requires.
        let hashes: Vec<(UserId, Vec<(Vec<u8>, Vec<u8>)>)> = stream::iter(users.to_vec())
            .map(|user| {
                let mut redis = self.redis.clone();
                let key = self.keys.user(app.as_str(), user.as_str(), "sessions");
                async move {
                    let hash = redis::cmd("HGETALL").arg(key).query_async(&mut redis).await;
                    hash.map(|h| (user, h)).map_err(unavailable)
                }
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for (user, hash) in hashes {
            for (field, value) in hash {
                match decode_session(app, &user, &field, &value) {
                    Some(session) => out.push(session),
                    None => tracing::warn!(
                        key = self.keys.user(app.as_str(), user.as_str(), "sessions"),
                        field = %String::from_utf8_lossy(&field),
                        "skipping a session that does not decode"
                    ),
                }
            }
        }
        Ok(out)
    }

    async fn app_session_count(&self, app: &AppId) -> Result<u64, RegistryError> {
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.global("session-nodes"))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        stream::iter(nodes)
            .map(|node| {
                let mut redis = self.redis.clone();
                let key = self.keys.node(&node, "counts");
                async move {
                    let n: Option<i64> = redis::cmd("HGET")
                        .arg(key)
                        .arg(app.as_str())
                        .query_async(&mut redis)
                        .await
                        .map_err(unavailable)?;
                    Ok(n.unwrap_or(0).max(0) as u64)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await
    }

    async fn node_sessions(&self, node: &NodeId) -> Result<Vec<Session>, RegistryError> {
        let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(self.keys.node(node.as_str(), "sessions"))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        let owned: Vec<(AppId, UserId, u64)> = members
            .iter()
            .filter_map(|m| decode_member(m))
            .map(|(app, user, conn)| (AppId::from(app), UserId::from(user), conn))
            .collect();
        stream::iter(owned)
            .map(|(app, user, conn)| {
                let mut redis = self.redis.clone();
                let key = self.keys.user(app.as_str(), user.as_str(), "sessions");
                let field = field(node.as_str(), ConnId(conn));
                async move {
                    let value: Option<Vec<u8>> = redis::cmd("HGET")
                        .arg(key)
                        .arg(&field)
                        .query_async(&mut redis)
                        .await
                        .map_err(unavailable)?;
                    // A session the node's set names but its user's hash lost (a half-done
                    // register) is listed all the same, so that the node can unregister it.
                    let session = value
                        .and_then(|v| decode_session(&app, &user, field.as_bytes(), &v))
                        .unwrap_or_else(|| Session {
                            app: app.clone(),
                            user: user.clone(),
                            node: node.clone(),
                            conn: ConnId(conn),
                            device: "?".into(),
                            transport: Transport::Tcp,
                            connected_at_ms: 0,
                        });
                    Ok(session)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
    }
}

#[async_trait]
impl Membership for RedisRegistry {
    async fn announce(&self, node: NodeInfo) -> Result<bool, RegistryError> {
        let held: i64 = ANNOUNCE
            .key(self.keys.global("nodes"))
            .arg(node.id.as_str())
            .arg(encode_announcement(&node))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        match held {
            -1 => Err(RegistryError::Unavailable(format!(
                "node {} is being reaped (its last announcement expired); announce again shortly",
                node.id
            ))),
            held => Ok(held == 1),
        }
    }

    async fn withdraw(&self, node: &NodeId) -> Result<(), RegistryError> {
        WITHDRAW
            .key(self.keys.global("nodes"))
            .arg(node.as_str())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)
    }

    async fn nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, RegistryError> {
        let held = self.announcements().await?;
        let mut out: Vec<NodeInfo> = held
            .into_iter()
            .filter_map(|(id, value)| self.decode_held(&id, &value))
            .filter(|n| now_ms < n.expires_ms)
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn reap(&self, now_ms: u64) -> Result<u64, RegistryError> {
        let mut gone = 0;
        for (id, value) in self.announcements().await? {
            // A tombstone is due when its reap died; the claim checks its deadline.
            let due = is_tombstone(&value)
                || self
                    .decode_held(&id, &value)
                    .is_some_and(|n| n.expires_ms <= now_ms);
            if !due {
                continue;
            }
            let Some(tombstone) = self.claim(&id, &value).await? else {
                continue;
            };
            // Retried here rather than left to the lease: the node may announce again before
            // the next reap, and what `reaping` holds would then stay.
            let mut attempt = 0;
            let forgotten = loop {
                match self.forget_sessions(&id).await {
                    Ok(n) => break n,
                    Err(e) if attempt < 3 => {
                        attempt += 1;
                        tracing::warn!(node = id, error = %e, "reap: retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            self.release(&id, &tombstone).await?;
            tracing::info!(
                node = id,
                sessions = forgotten,
                "reaped a node that stopped announcing"
            );
            gone += forgotten;
        }
        Ok(gone)
    }
}

fn unavailable(e: redis::RedisError) -> RegistryError {
    RegistryError::Unavailable(describe(&e))
}

fn is_tombstone(value: &[u8]) -> bool {
    value.first() == Some(&b'~')
}

/// The field of a session in its user's hash: `node:conn`.
fn field(node: &str, conn: ConnId) -> String {
    format!("{node}:{conn}")
}

/// The member of a session in its node's set: `len(app):app user:conn`. The length makes the
/// split between app and user unambiguous whatever the ids hold.
fn member(app: &str, user: &str, conn: ConnId) -> String {
    format!("{}:{app}{user}:{conn}", app.len())
}

/// (app, user, conn) of a member written by [`member`].
fn decode_member(raw: &[u8]) -> Option<(&str, &str, u64)> {
    let s = std::str::from_utf8(raw).ok()?;
    let (len, rest) = s.split_once(':')?;
    let (app_user, conn) = rest.rsplit_once(':')?;
    let len: usize = len.parse().ok()?;
    let (app, user) = (app_user.get(..len)?, app_user.get(len..)?);
    Some((app, user, conn.parse().ok()?))
}

/// Bytes before the device id in a session value: the transport, then `connected_at_ms`.
const SESSION_HEAD: usize = 9;

fn encode_session(s: &Session) -> Vec<u8> {
    let mut out = Vec::with_capacity(SESSION_HEAD + s.device.as_str().len());
    out.push(match s.transport {
        Transport::Tcp => b't',
        Transport::Ws => b'w',
        Transport::Sse => b's',
        Transport::Mqtt => b'm',
    });
    out.extend_from_slice(&s.connected_at_ms.to_be_bytes());
    out.extend_from_slice(s.device.as_str().as_bytes());
    out
}

fn decode_session(app: &AppId, user: &UserId, field: &[u8], value: &[u8]) -> Option<Session> {
    let (node, conn) = std::str::from_utf8(field).ok()?.rsplit_once(':')?;
    if value.len() < SESSION_HEAD {
        return None;
    }
    let (head, device) = value.split_at(SESSION_HEAD);
    let transport = match head[0] {
        b't' => Transport::Tcp,
        b'w' => Transport::Ws,
        b's' => Transport::Sse,
        b'm' => Transport::Mqtt,
        _ => return None,
    };
    let connected_at_ms = u64::from_be_bytes(head[1..].try_into().ok()?);
    Some(Session {
        app: app.clone(),
        user: user.clone(),
        node: NodeId::from(node),
        conn: ConnId(conn.parse().ok()?),
        device: DeviceId::from(std::str::from_utf8(device).ok()?),
        transport,
        connected_at_ms,
    })
}

fn encode_announcement(n: &NodeInfo) -> String {
    let mut out = format!(
        "{} {} {} {}",
        n.expires_ms,
        n.connections,
        n.max_connections,
        u8::from(n.draining)
    );
    out.push_str(&format!(" {}:{}", n.zone.len(), n.zone));
    for endpoint in &n.endpoints {
        out.push_str(&format!(" {}:{endpoint}", endpoint.len()));
    }
    out
}

fn decode_announcement(id: NodeId, raw: &[u8]) -> Option<NodeInfo> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut fields = s.splitn(5, ' ');
    let expires_ms = fields.next()?.parse().ok()?;
    let connections = fields.next()?.parse().ok()?;
    let max_connections = fields.next()?.parse().ok()?;
    let draining = match fields.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let mut rest = fields.next().unwrap_or("");
    let mut items = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        items.push(tail.get(..len)?.to_owned());
        rest = tail.get(len..)?;
        if !rest.is_empty() {
            rest = rest.strip_prefix(' ').filter(|r| !r.is_empty())?;
        }
    }
    // The zone first, then the endpoints.
    let mut items = items.into_iter();
    let zone = items.next()?;
    let endpoints = items.collect();
    Some(NodeInfo {
        id,
        zone,
        endpoints,
        connections,
        max_connections,
        draining,
        expires_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(node: &str, conn: u64, device: &str, transport: Transport) -> Session {
        Session {
            app: "app".into(),
            user: "user".into(),
            node: node.into(),
            conn: ConnId(conn),
            device: device.into(),
            transport,
            connected_at_ms: 1_763_000_000_123,
        }
    }

    #[test]
    fn a_session_comes_back_whole_whatever_the_ids() {
        for s in [
            session("n1", 7, "phone", Transport::Tcp),
            session("a:b:c", u64::MAX, "", Transport::Ws),
            session("n2", 9, "browser", Transport::Sse),
            session("", 0, "d:é", Transport::Tcp),
        ] {
            let back = decode_session(
                &s.app,
                &s.user,
                field(s.node.as_str(), s.conn).as_bytes(),
                &encode_session(&s),
            );
            assert_eq!(back.as_ref(), Some(&s));
        }
    }

    #[test]
    fn garbage_sessions_do_not_decode() {
        let (app, user) = (AppId::from("a"), UserId::from("u"));
        let good = encode_session(&session("n", 1, "d", Transport::Tcp));
        let mut bad_tag = good.clone();
        bad_tag[0] = b'x';
        let mut bad_utf8 = good.clone();
        bad_utf8.push(0xff);
        for (field, value) in [
            (&b"n:1"[..], &good[..SESSION_HEAD - 1]),
            (b"n:1", &[][..]),
            (b"n:1", &bad_tag),
            (b"n:1", &bad_utf8),
            (b"n", &good),
            (b"n:x", &good),
            (b"n:-1", &good),
            (b"\xff:1", &good),
        ] {
            assert_eq!(decode_session(&app, &user, field, value), None, "{field:?}");
        }
    }

    #[test]
    fn a_member_splits_back_into_app_user_and_conn() {
        for (app, user, conn) in [
            ("chat", "u1", 3),
            ("a:1", "b:2", 0),
            ("", "x", 9),
            ("é", ":", 1),
        ] {
            let m = member(app, user, ConnId(conn));
            assert_eq!(decode_member(m.as_bytes()), Some((app, user, conn)));
        }
        for garbage in ["", "x", "9:ab:1", "1:ab", "1:ab:x", "1:é:1"] {
            assert_eq!(decode_member(garbage.as_bytes()), None, "{garbage}");
        }
    }

    async fn registry(test: &str) -> Option<(RedisRegistry, RedisOptions)> {
        let options = crate::testing::options(test).await?;
        Some((RedisRegistry::connect(&options).await.unwrap(), options))
    }

    fn announcement(id: &str, expires_ms: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            endpoints: vec![],
            connections: 0,
            max_connections: 1,
            draining: false,
            zone: "eu-1".into(),
            expires_ms,
        }
    }

    /// The value of `node` in `{g}:nodes`, as a reap reads it.
    async fn held(reg: &RedisRegistry, node: &str) -> Vec<u8> {
        let all = reg.announcements().await.unwrap();
        all.into_iter().find(|(id, _)| id == node).unwrap().1
    }

    #[tokio::test]
    async fn a_reap_leaves_a_node_that_announced_after_the_reap_read_it() {
        let Some((reg, options)) = registry("registry-claim-race").await else {
            return;
        };
        let now = tether_core::now_ms();
        reg.announce(announcement("n", now + 1_000)).await.unwrap();
        reg.register(session("n", 1, "d", Transport::Tcp))
            .await
            .unwrap();
        let seen = held(&reg, "n").await;
        assert!(
            reg.announce(announcement("n", now + 600_000))
                .await
                .unwrap()
        );
        assert_eq!(reg.claim("n", &seen).await.unwrap(), None);
        assert_eq!(reg.reap(now + 1_000).await.unwrap(), 0);
        assert_eq!(reg.nodes(now + 1_000).await.unwrap().len(), 1);
        let users = [UserId::from("user")];
        assert_eq!(reg.sessions(&"app".into(), &users).await.unwrap().len(), 1);
        crate::testing::clear(&options).await.unwrap();
    }

    #[tokio::test]
    async fn a_node_cannot_announce_while_a_reap_holds_it() {
        let Some((reg, options)) = registry("registry-claim-hold").await else {
            return;
        };
        let now = tether_core::now_ms();
        reg.announce(announcement("n", now)).await.unwrap();
        reg.register(session("n", 1, "d", Transport::Tcp))
            .await
            .unwrap();
        let tombstone = reg.claim("n", &held(&reg, "n").await).await.unwrap();
        let tombstone = tombstone.expect("the reap holds the node");
        assert!(
            reg.nodes(0).await.unwrap().is_empty(),
            "a tombstone is no node"
        );
        let refused = reg.announce(announcement("n", now + 600_000)).await;
        assert!(refused.is_err(), "refused while the reap holds it");
        reg.withdraw(&"n".into()).await.unwrap();
        assert_eq!(
            held(&reg, "n").await,
            tombstone.as_bytes(),
            "withdraw leaves it"
        );
        assert_eq!(reg.claim("n", tombstone.as_bytes()).await.unwrap(), None);

        // A session registered while the reap runs is a new connection: it stays.
        assert_eq!(reg.forget_sessions("n").await.unwrap(), 1);
        reg.register(session("n", 2, "d", Transport::Tcp))
            .await
            .unwrap();
        reg.release("n", &tombstone).await.unwrap();
        assert!(
            !reg.announce(announcement("n", now + 600_000))
                .await
                .unwrap()
        );
        let users = [UserId::from("user")];
        let left = reg.sessions(&"app".into(), &users).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].conn, ConnId(2));
        assert_eq!(reg.app_session_count(&"app".into()).await.unwrap(), 1);
        crate::testing::clear(&options).await.unwrap();
    }

    #[tokio::test]
    async fn a_reap_takes_over_from_one_that_died() {
        let Some((reg, options)) = registry("registry-claim-lease").await else {
            return;
        };
        let mut redis = reg.redis.clone();
        reg.register(session("n", 1, "d", Transport::Tcp))
            .await
            .unwrap();
        reg.register(session("n", 2, "d", Transport::Tcp))
            .await
            .unwrap();
        // A reap that took the node's sessions and died: its lease ran out long ago.
        let taken = TAKE
            .key(reg.keys.node("n", "sessions"))
            .key(reg.keys.node("n", "counts"))
            .key(reg.keys.node("n", "reaping"))
            .invoke_async::<u64>(&mut redis)
            .await
            .unwrap();
        assert_eq!(taken, 2);
        reg.register(session("n", 3, "d", Transport::Tcp))
            .await
            .unwrap();
        redis::cmd("HSET")
            .arg(reg.keys.global("nodes"))
            .arg("n")
            .arg("~1")
            .query_async::<()>(&mut redis)
            .await
            .unwrap();

        assert_eq!(reg.reap(0).await.unwrap(), 3, "what both reaps took");
        assert!(reg.announcements().await.unwrap().is_empty());
        let users = [UserId::from("user")];
        assert!(
            reg.sessions(&"app".into(), &users)
                .await
                .unwrap()
                .is_empty()
        );
        crate::testing::clear(&options).await.unwrap();
    }

    #[test]
    fn an_announcement_comes_back_whole() {
        for endpoints in [
            vec![],
            vec!["tcp://10.0.0.1:7400".to_owned()],
            vec!["ws://h:1/a b".to_owned(), "3:x y".to_owned(), String::new()],
        ] {
            let n = NodeInfo {
                id: "n1".into(),
                endpoints,
                connections: 3,
                max_connections: 100_000,
                draining: true,
                zone: "a zone".into(),
                expires_ms: 1_763_000_000_000,
            };
            let raw = encode_announcement(&n);
            assert_eq!(decode_announcement(n.id.clone(), raw.as_bytes()), Some(n));
        }
        for garbage in [
            "",
            "1 2 3",
            "1 2 3 2",
            "1 2 3 0 5:ab",
            "1 2 3 0 2:ab3:abc",
            "~1 2 3 0",
        ] {
            assert_eq!(decode_announcement("n".into(), garbage.as_bytes()), None);
        }
    }
}
