//! [`RedisStore`]: the [`Store`](tether_core::Store) on Redis, standalone or Redis Cluster.
//!
//! # Layout
//!
//! - this module: [`RedisStore`] and its impls of the store traits, and the keys' TTLs.
//! - `scripts.rs`: the Lua scripts, each of which reads and changes one slot's keys atomically.
//! - `sessions.rs`: [`tether_core::SavedSessions`], one string per device's session.
//! - `codec.rs`: list elements, idempotency records and cursors as bytes, and Redis's answers
//!   and errors as [`StoreError`]s.
//! - `tests.rs`: the unit tests of the encoding and of the TTLs.
//!
//! # Keys and data structures
//! Keys come from [`Keys`]. Those of one (app, user) share a hash tag, so they live in one slot
//! and one Lua script reads and changes them atomically, on Redis Cluster too. Per (app, user):
//!
//! - `seq`: a string, the inbox's head (the last seq it assigned). Appends `INCR` it; it has no
//!   TTL and nothing deletes it, so seqs are never reused, even after every message expired.
//! - `inbox`: a list of the held messages, oldest first. Appends push at the tail and only the
//!   front is ever removed (expired messages, and the oldest past the cap), so the list always
//!   holds the contiguous run of seqs that ends at the head: the message after seq `n` is at an
//!   index computed from the head and the length, not searched for. Its TTL follows the
//!   longest-lived message appended (plus [`TTL_MARGIN_MS`]), so an idle inbox frees its memory.
//! - `idem-seq` (a hash, idempotency key -> seq) and `idem-exp` (a sorted set of keys scored
//!   by the end of their idempotency window): the keyed appends this inbox took, so that a
//!   retried append adds nothing to an inbox the first call reached, and answers its seq.
//! - `cursors`: a hash, device -> `acked:attempt_seq:attempts` in decimal. Each write gives it
//!   `Retention::cursor_idle` (`max_ttl`) more to live, so the cursors of a user whose devices
//!   all went quiet go once every message they covered has expired.
//! - `subs`: a set of topics.
//! - `session:<device>` (device escaped): a device's saved session (`sessions.rs`).
//!
//! Per (app, topic), `seq` and `history` are a log of the same shape as `seq` and `inbox`. Per
//! app, `idem:<key>` (key escaped) holds an idempotency record: the first call's message id,
//! creation time and window end. It lives in the app's slot, not a user's: an append to several
//! users spans several slots, so it is one script call per user, and the record is what ties a
//! retry to the first call.
//!
//! # Values
//! Integers are big-endian. A list element is `seq u64 | version u8 | expires_ms u64 | kind u8
//! | id u64 | created_ms u64 | payload`: the scripts read the expiry at a fixed offset, and the
//! seq makes the element self-describing (a read checks the seqs it gets back). An idempotency
//! record is `version u8 | id u64 | created_ms u64 | window_end_ms u64`. Decoding checks every
//! length: a damaged value is [`StoreError::Corrupt`], and so is a key of the wrong type, a seq
//! counter out of step with its log, or an answer of a shape the scripts never give.
//!
//! # Appends, idempotency and partial failure
//! An append to several users is one script call per user (at most [`APPEND_FANOUT`] in flight),
//! so when it fails, it may have reached some users and not others. Without an idempotency key,
//! a retry then appends again to those (at least once). With one, the call first claims the
//! key's record (a script that sets it unless a live one exists, where live is judged by the
//! message's `created_ms`, as the other backends do; the record's Redis TTL only frees memory).
//! If a record exists, the call takes the first call's message id and creation time, and each
//! user's script appends only if that inbox has no seq for that message id yet. So a retry
//! appends only to the users the first call missed, every user ends up with the message once,
//! the seqs are the first ones, and `duplicate` is set. Two concurrent calls with one key share
//! one record in the same way: one of them is not a duplicate, and each inbox stores once.
//!
//! Two differences from [`tether_core::MemoryStore`] follow. A duplicate may have stored
//! something (for the users the first call missed), and the API does not route a duplicate
//! live, so those users get the message from their inbox on their next sync. And the record
//! does not list the first call's users: a call that reuses a key with other users appends
//! to those of them that lack the message and answers every user it was given, where the
//! reference answers the first call's users and stores nothing.
//!
//! # Durability
//! The store is as durable as the Redis server's persistence: an append is answered once Redis
//! has applied it in memory. Run Redis with `appendonly yes` and `appendfsync always` (every
//! write on disk before Redis answers) or `everysec` (up to about a second of answered writes
//! lost in a crash), and with `maxmemory-policy noeviction` (or a `volatile-*` policy): the seq
//! counters have no TTL, and an evicted counter would hand out seqs again. With replicas, a
//! failover may lose writes the old primary answered and did not replicate.
//!
//! # Clocks
//! Expiry is judged by the times in the messages (`now_ms` of a read, `created_ms` of an
//! append), never by Redis's clock. Redis's clock only drives key TTLs, which are relative
//! (a message's lifetime plus a margin), so a skew between Redis and the nodes below the
//! margin loses nothing.

mod codec;
mod scripts;
mod sessions;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt, stream};
use redis::{Script, Value};
use tether_core::store::{Append, Appended, Cursor, Idempotency, NewMessage, Page};
use tether_core::{
    AppId, Cursors, DeviceId, Inboxes, Retention, Seq, StoreError, SubscriptionError,
    Subscriptions, TopicHistory, TopicId, UserId,
};

use crate::{Keys, Redis, RedisOptions, escape};
use codec::{
    Claim, corrupt, decode_claim, decode_cursor, decode_page, encode_claim, encode_element, ints,
    redis_error, unavailable, unexpected,
};
use scripts::SCRIPTS;

/// Per-user script calls of one append in flight at once.
pub const APPEND_FANOUT: usize = 32;

/// How much longer than what it holds a key lives: Redis's clock and the nodes' may differ.
pub const TTL_MARGIN_MS: u64 = 60_000;

/// The longest TTL a key gets (ten years): a message meant to live longer keeps its inbox that
/// long, not forever.
const MAX_TTL_MS: u64 = 10 * 365 * 86_400_000;

/// Durable inboxes, topic histories and subscriptions in Redis; see the module docs.
#[derive(Debug, Clone)]
pub struct RedisStore {
    redis: Redis,
    keys: Keys,
    retention: Retention,
}

/// The keys of one log: its counter and its messages.
struct LogKeys {
    seq: String,
    log: String,
}

impl RedisStore {
    /// Connects to the Redis of `options` (keys under its prefix).
    pub async fn connect(
        options: &RedisOptions,
        retention: Retention,
    ) -> Result<RedisStore, StoreError> {
        let redis = Redis::connect(options).await.map_err(|e| unavailable(&e))?;
        Ok(RedisStore::new(
            redis,
            Keys::new(&options.prefix),
            retention,
        ))
    }

    pub fn new(redis: Redis, keys: Keys, retention: Retention) -> RedisStore {
        RedisStore {
            redis,
            keys,
            retention,
        }
    }

    fn inbox(&self, app: &AppId, user: &UserId) -> LogKeys {
        LogKeys {
            seq: self.keys.user(app.as_str(), user.as_str(), "seq"),
            log: self.keys.user(app.as_str(), user.as_str(), "inbox"),
        }
    }

    fn topic(&self, app: &AppId, topic: &TopicId) -> LogKeys {
        LogKeys {
            seq: self.keys.topic(app.as_str(), topic.as_str(), "seq"),
            log: self.keys.topic(app.as_str(), topic.as_str(), "history"),
        }
    }

    /// How long a user's cursors live after the last write to any of them, in ms (at least 1:
    /// `PEXPIRE` takes 0 as "delete now").
    fn cursor_idle_ms(&self) -> u64 {
        u64::try_from(self.retention.cursor_idle.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn cursors_key(&self, app: &AppId, user: &UserId) -> String {
        self.keys.user(app.as_str(), user.as_str(), "cursors")
    }

    fn subs_key(&self, app: &AppId, user: &UserId) -> String {
        self.keys.user(app.as_str(), user.as_str(), "subs")
    }

    /// Claims `idem` for `m`, or finds the claim of the first call. Returns the claim the
    /// append goes on with, and whether it was the first call's.
    async fn claim(
        &self,
        app: &AppId,
        idem: &Idempotency,
        m: &NewMessage,
    ) -> Result<(Claim, bool), StoreError> {
        let key = self
            .keys
            .app(app.as_str(), &format!("idem:{}", escape(&idem.key)));
        let ours = Claim {
            id: m.id,
            created_ms: m.created_ms,
            window_end_ms: idem.expires_ms,
        };
        let answer: Value = SCRIPTS
            .claim
            .key(key)
            .arg(&encode_claim(ours)[..])
            .arg(m.created_ms)
            .arg(key_ttl(m.created_ms, idem.expires_ms))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)?;
        match answer {
            Value::Nil => Ok((ours, false)),
            Value::BulkString(record) => Ok((decode_claim(&record)?, true)),
            other => Err(unexpected("claim", &other)),
        }
    }

    /// Appends one element to one log; see [`APPEND`]. `keyed` is the inbox's idempotency
    /// keys and the claim the element belongs to.
    ///
    /// [`APPEND`]: scripts::APPEND
    async fn push(
        &self,
        keys: LogKeys,
        element: &[u8],
        now_ms: u64,
        cap: usize,
        ttl_ms: u64,
        keyed: Option<(String, String, String, Claim)>,
    ) -> Result<Seq, StoreError> {
        let mut call = SCRIPTS.append.prepare_invoke();
        call.key(keys.seq)
            .key(keys.log)
            .arg(element)
            .arg(now_ms)
            .arg(cap.max(1))
            .arg(ttl_ms);
        if let Some((ids, windows, key, claim)) = keyed {
            // By the idempotency key, not the message id: ids of two nodes may collide.
            call.key(ids)
                .key(windows)
                .arg(key)
                .arg(claim.window_end_ms)
                .arg(key_ttl(now_ms, claim.window_end_ms));
        }
        match call
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)?
        {
            Value::Int(seq) if seq > 0 => Ok(Seq(seq as u64)),
            other => Err(unexpected("append", &other)),
        }
    }

    async fn read_log(
        &self,
        keys: LogKeys,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        let answer: Value = SCRIPTS
            .read
            .key(keys.seq)
            .key(keys.log)
            .arg(after.0)
            .arg(limit.min(u32::MAX as usize))
            .arg(now_ms)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)?;
        decode_page(answer, after)
    }

    /// Runs [`ACK`] or [`ATTEMPT`] on the cursor of `device`.
    ///
    /// [`ACK`]: scripts::ACK
    /// [`ATTEMPT`]: scripts::ATTEMPT
    async fn cursor_script(
        &self,
        script: &Script,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<Value, StoreError> {
        script
            .key(self.cursors_key(app, user))
            .arg(device.as_str())
            .arg(seq.0)
            .arg(self.cursor_idle_ms())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)
    }
}

#[async_trait]
impl Inboxes for RedisStore {
    async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        let m = &append.message;
        let (claim, duplicate) = match &append.idempotency {
            Some(idem) => {
                let (claim, seen) = self.claim(&append.app, idem, m).await?;
                (Some(claim), seen)
            }
            None => (None, false),
        };
        // A duplicate goes on with the first call's message: its id, its creation time, and an
        // expiry as far from that as this call's is from now.
        let (id, created_ms) = claim.map_or((m.id, m.created_ms), |c| (c.id, c.created_ms));
        let expires_ms = created_ms.saturating_add(m.expires_ms.saturating_sub(m.created_ms));
        let element = encode_element(id, created_ms, expires_ms, m.kind, &m.payload);
        let ttl_ms = key_ttl(created_ms, expires_ms);
        let cap = self.retention.inbox_cap;
        let app = append.app.as_str();
        // Owned ids (a reference count each): a stream of borrowed ones trips the compiler's
        // check of the boxed future's lifetimes.
        let seqs: Vec<Seq> = stream::iter(append.users.iter().cloned())
            .map(|user| {
                let keyed = claim.zip(append.idempotency.as_ref()).map(|(c, idem)| {
                    let ids = self.keys.user(app, user.as_str(), "idem-seq");
                    let windows = self.keys.user(app, user.as_str(), "idem-exp");
                    (ids, windows, idem.key.clone(), c)
                });
                let keys = self.inbox(&append.app, &user);
                self.push(keys, &element, created_ms, cap, ttl_ms, keyed)
            })
            .buffered(APPEND_FANOUT)
            .try_collect()
            .await?;
        Ok(Appended {
            id,
            created_ms,
            seqs: append.users.iter().cloned().zip(seqs).collect(),
            duplicate,
        })
    }

    async fn read(
        &self,
        app: &AppId,
        user: &UserId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        self.read_log(self.inbox(app, user), after, limit, now_ms)
            .await
    }
}

#[async_trait]
impl Cursors for RedisStore {
    async fn ack(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        self.cursor_script(&SCRIPTS.ack, app, user, device, seq)
            .await
            .map(drop)
    }

    async fn cursor(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Cursor, StoreError> {
        let value: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.cursors_key(app, user))
            .arg(device.as_str())
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)?;
        value.map_or(Ok(Cursor::default()), |v| decode_cursor(&v))
    }

    async fn cursors(
        &self,
        app: &AppId,
        user: &UserId,
    ) -> Result<Vec<(DeviceId, Cursor)>, StoreError> {
        let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.cursors_key(app, user))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)?;
        let mut out = all
            .into_iter()
            .map(|(device, v)| Ok((DeviceId::from(device.as_str()), decode_cursor(&v)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn note_attempt(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        seq: Seq,
    ) -> Result<u32, StoreError> {
        match self
            .cursor_script(&SCRIPTS.attempt, app, user, device, seq)
            .await?
        {
            Value::Int(n) => u32::try_from(n).map_err(|_| corrupt("attempt count out of range")),
            other => Err(unexpected("note_attempt", &other)),
        }
    }
}

#[async_trait]
impl TopicHistory for RedisStore {
    async fn publish(
        &self,
        app: &AppId,
        topic: &TopicId,
        message: NewMessage,
    ) -> Result<Seq, StoreError> {
        let m = &message;
        let element = encode_element(m.id, m.created_ms, m.expires_ms, m.kind, &m.payload);
        let ttl_ms = key_ttl(m.created_ms, m.expires_ms);
        let cap = self.retention.topic_history;
        self.push(
            self.topic(app, topic),
            &element,
            m.created_ms,
            cap,
            ttl_ms,
            None,
        )
        .await
    }

    async fn history(
        &self,
        app: &AppId,
        topic: &TopicId,
        after: Seq,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        self.read_log(self.topic(app, topic), after, limit, now_ms)
            .await
    }
}

#[async_trait]
impl Subscriptions for RedisStore {
    async fn set_subscription(
        &self,
        app: &AppId,
        user: &UserId,
        topic: &TopicId,
        subscribed: bool,
        max: usize,
    ) -> Result<bool, SubscriptionError> {
        let answer: Value = SCRIPTS
            .subscribe
            .key(self.subs_key(app, user))
            .arg(topic.as_str())
            .arg(if subscribed { "1" } else { "0" })
            .arg(max)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)?;
        match ints(&answer) {
            Some([0, _]) => Ok(false),
            Some([1, _]) => Ok(true),
            Some([2, n]) if n >= 0 => Err(SubscriptionError::TooMany(n as usize)),
            _ => Err(unexpected("set_subscription", &answer).into()),
        }
    }

    async fn subscriptions(&self, app: &AppId, user: &UserId) -> Result<Vec<TopicId>, StoreError> {
        let mut topics: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.subs_key(app, user))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)?;
        topics.sort_unstable();
        Ok(topics.iter().map(|t| TopicId::from(t.as_str())).collect())
    }
}

/// The TTL of a key that must outlive `until_ms`, set at about `from_ms`.
fn key_ttl(from_ms: u64, until_ms: u64) -> u64 {
    until_ms.saturating_sub(from_ms).min(MAX_TTL_MS) + TTL_MARGIN_MS
}
