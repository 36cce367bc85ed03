//! [`RedisStore`]: the [`Store`](tether_core::Store) on Redis, standalone or Redis Cluster.
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

use std::sync::LazyLock;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use redis::{Script, Value};
use tether_core::store::{Append, Appended, Cursor, Idempotency, NewMessage, Page, StoredMessage};
use tether_core::{
    AppId, Cursors, DeviceId, Inboxes, MessageId, Retention, Seq, StoreError, SubscriptionError,
    Subscriptions, TopicHistory, TopicId, UserId,
};
use tether_proto::PayloadKind;

use crate::{Keys, Redis, RedisOptions, describe, escape};

/// Per-user script calls of one append in flight at once.
pub const APPEND_FANOUT: usize = 32;

/// How much longer than what it holds a key lives: Redis's clock and the nodes' may differ.
pub const TTL_MARGIN_MS: u64 = 60_000;

/// The longest TTL a key gets (ten years): a message meant to live longer keeps its inbox that
/// long, not forever.
const MAX_TTL_MS: u64 = 10 * 365 * 86_400_000;

/// The format of list elements and idempotency records written by this code.
const VERSION: u8 = 1;

/// `seq | version | expires_ms | kind | id | created_ms`: what precedes a payload.
const MESSAGE_HEADER: usize = 8 + 1 + 8 + 1 + 8 + 8;
/// `version | id | created_ms | window_end_ms`.
const RECORD_LEN: usize = 1 + 8 + 8 + 8;

/// Appends one message to one log (inbox or topic history); see the module docs.
///
/// KEYS: seq, log[, idem-seq, idem-exp]. ARGV: element without its seq, now (the message's
/// `created_ms`), cap, log TTL[, idempotency key, window end, window TTL]. Returns the seq.
///
/// Everything that can fail on damaged data (the counter, the key types, the counter against
/// the last element) is checked before the first write that matters, since a script that
/// fails half-way is not rolled back; pruning expired entries first is harmless.
const APPEND: &str = r#"
local head = redis.call('GET', KEYS[1])
if head then
  head = tonumber(head)
  if not head then return redis.error_reply('CORRUPT the seq counter is not a number') end
else
  head = 0
end
local now = tonumber(ARGV[2])
local keyed = #KEYS == 4
if keyed then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 64)
  if #gone > 0 then
    redis.call('ZREM', KEYS[4], unpack(gone))
    redis.call('HDEL', KEYS[3], unpack(gone))
  end
  local seen = redis.call('HGET', KEYS[3], ARGV[5])
  local window = redis.call('ZSCORE', KEYS[4], ARGV[5])
  if seen and window and tonumber(window) > now then
    seen = tonumber(seen)
    if not seen then return redis.error_reply('CORRUPT an idempotency seq is not a number') end
    return seen
  end
end
local len = redis.call('LLEN', KEYS[2])
if len > 0 then
  local last = redis.call('LINDEX', KEYS[2], -1)
  if #last < 8 or struct.unpack('>I8', last) ~= head then
    return redis.error_reply('CORRUPT the seq counter is out of step with the messages')
  end
end
while len > 0 do
  local front = redis.call('LINDEX', KEYS[2], 0)
  if #front < 17 or struct.unpack('>I8', front, 10) > now then break end
  redis.call('LPOP', KEYS[2])
  len = len - 1
end
local seq = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], struct.pack('>I8', seq) .. ARGV[1])
local cap = tonumber(ARGV[3])
if len + 1 > cap then redis.call('LTRIM', KEYS[2], -cap, -1) end
local function extend(key, ttl)
  local left = redis.call('PTTL', key)
  if left < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
extend(KEYS[2], ARGV[4])
if keyed then
  redis.call('HSET', KEYS[3], ARGV[5], seq)
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
  extend(KEYS[3], ARGV[7])
  extend(KEYS[4], ARGV[7])
end
return seq
"#;

/// Reads a page of one log.
///
/// KEYS: seq, log. ARGV: after, limit, now. Returns `{head, element...}`: up to `limit`
/// elements after seq `after` that have not expired at `now`. An element too short to hold an
/// expiry is returned, for the caller to refuse as damaged.
const READ: &str = r#"
local head = redis.call('GET', KEYS[1])
if head then
  head = tonumber(head)
  if not head then return redis.error_reply('CORRUPT the seq counter is not a number') end
else
  head = 0
end
local out = {head}
local after, limit, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if after >= head or limit < 1 then return out end
local len = redis.call('LLEN', KEYS[2])
local first = head - len + 1
if first < 1 then
  return redis.error_reply('CORRUPT the log holds more messages than its counter assigned')
end
local i = after - first + 1
if i < 0 then i = 0 end
local found = 0
while found < limit and i < len do
  local chunk = redis.call('LRANGE', KEYS[2], i, i + limit - found - 1)
  if #chunk == 0 then break end
  i = i + #chunk
  for _, m in ipairs(chunk) do
    if #m < 17 or struct.unpack('>I8', m, 10) > now then
      found = found + 1
      out[found + 1] = m
      if found == limit then break end
    end
  end
end
return out
"#;

/// Parses the cursor of device `ARGV[1]` in hash `KEYS[1]` into `acked`, `aseq`, `attempts`
/// (decimal strings; `0` for a device never seen).
const CURSOR: &str = r#"
local acked, aseq, attempts = '0', '0', '0'
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  acked, aseq, attempts = string.match(v, '^(%d+):(%d+):(%d+)$')
  if not acked then return redis.error_reply('CORRUPT a cursor does not parse') end
end
"#;

/// After [`CURSOR`]: device `ARGV[1]` has everything up to `ARGV[2]`. A write gives the hash
/// `ARGV[3]` ms more to live (see `Retention::cursor_idle`).
const ACK: &str = r#"
local seq = tonumber(ARGV[2])
if seq > tonumber(acked) then
  if tonumber(aseq) <= seq then attempts = '0' end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. aseq .. ':' .. attempts)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
"#;

/// After [`CURSOR`]: one more attempt of seq `ARGV[2]`; returns the count. Like [`ACK`], gives
/// the hash `ARGV[3]` ms more to live.
const ATTEMPT: &str = r#"
local n = 1
if tonumber(aseq) == tonumber(ARGV[2]) then n = math.min(tonumber(attempts) + 1, 4294967295) end
redis.call('HSET', KEYS[1], ARGV[1], acked .. ':' .. ARGV[2] .. ':' .. string.format('%d', n))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
"#;

/// Subscribes (`ARGV[2] == '1'`) or unsubscribes set `KEYS[1]` to topic `ARGV[1]`, at most
/// `ARGV[3]` topics. Returns `{0, 0}` unchanged, `{1, 0}` changed, `{2, count}` refused.
const SUBSCRIBE: &str = r#"
if ARGV[2] == '0' then return {redis.call('SREM', KEYS[1], ARGV[1]), 0} end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {0, 0} end
local n = redis.call('SCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then return {2, n} end
redis.call('SADD', KEYS[1], ARGV[1])
return {1, 0}
"#;

/// Claims idempotency record `KEYS[1]` with `ARGV[1]` for `ARGV[3]` ms, unless a record whose
/// window ends after `ARGV[2]` holds it; then returns that record (or a damaged one, for the
/// caller to refuse). Returns nil when claimed.
const CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and (#v ~= 25 or struct.unpack('>I8', v, 18) > tonumber(ARGV[2])) then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return false
"#;

struct Scripts {
    append: Script,
    read: Script,
    ack: Script,
    attempt: Script,
    subscribe: Script,
    claim: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    append: Script::new(APPEND),
    read: Script::new(READ),
    ack: Script::new(&format!("{CURSOR}{ACK}")),
    attempt: Script::new(&format!("{CURSOR}{ATTEMPT}")),
    subscribe: Script::new(SUBSCRIBE),
    claim: Script::new(CLAIM),
});

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

/// What the first call of an idempotency key appends: its message id, creation time and
/// window end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    id: MessageId,
    created_ms: u64,
    window_end_ms: u64,
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

fn unavailable(e: &redis::RedisError) -> StoreError {
    StoreError::Unavailable(describe(e))
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// A Redis error as the store reports it: damaged data (a script's `CORRUPT`, a key of the
/// wrong type, an answer that does not convert) is corrupt; anything else is unavailable.
fn redis_error(e: redis::RedisError) -> StoreError {
    match (e.code(), e.kind()) {
        (Some("CORRUPT" | "WRONGTYPE"), _) | (_, redis::ErrorKind::UnexpectedReturnType) => {
            StoreError::Corrupt(describe(&e))
        }
        _ => unavailable(&e),
    }
}

fn unexpected(what: &str, answer: &Value) -> StoreError {
    let mut shown = format!("{answer:?}");
    if shown.len() > 120 {
        shown.truncate(shown.floor_char_boundary(120));
        shown.push_str("...");
    }
    corrupt(format!("redis: unexpected answer to {what}: {shown}"))
}

/// `{a, b}` of two integers.
fn ints(answer: &Value) -> Option<[i64; 2]> {
    match answer {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(a), Value::Int(b)] => Some([*a, *b]),
            _ => None,
        },
        _ => None,
    }
}

/// A list element without its seq (the script puts it in front).
fn encode_element(
    id: MessageId,
    created_ms: u64,
    expires_ms: u64,
    kind: PayloadKind,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MESSAGE_HEADER - 8 + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&created_ms.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A list element as the script stored it. The payload is a slice of `value`, not a copy.
fn decode_element(value: Vec<u8>) -> Result<StoredMessage, StoreError> {
    let mut r = Reader::new("message", &value);
    let seq = r.u64()?;
    r.version()?;
    let expires_ms = r.u64()?;
    let kind = match r.u8()? {
        0 => PayloadKind::Binary,
        1 => PayloadKind::Json,
        k => return Err(corrupt(format!("message: unknown payload kind {k}"))),
    };
    let id = MessageId(r.u64()?);
    let created_ms = r.u64()?;
    Ok(StoredMessage {
        seq: Seq(seq),
        id,
        created_ms,
        expires_ms,
        kind,
        payload: Bytes::from(value).slice(MESSAGE_HEADER..),
    })
}

/// A read script's answer: the head, then messages in strictly increasing seq order above
/// `after` and up to the head.
fn decode_page(answer: Value, after: Seq) -> Result<Page, StoreError> {
    let Value::Array(items) = answer else {
        return Err(unexpected("read", &answer));
    };
    let mut items = items.into_iter();
    let head = match items.next() {
        Some(Value::Int(head)) if head >= 0 => head as u64,
        other => return Err(unexpected("read", &other.unwrap_or(Value::Nil))),
    };
    let mut messages = Vec::with_capacity(items.len());
    let mut last = after.0;
    for item in items {
        let Value::BulkString(value) = item else {
            return Err(unexpected("read", &item));
        };
        let m = decode_element(value)?;
        if m.seq.0 <= last || m.seq.0 > head {
            return Err(corrupt(format!(
                "message: seq {} out of order (after {last}, head {head})",
                m.seq
            )));
        }
        last = m.seq.0;
        messages.push(m);
    }
    Ok(Page {
        messages,
        head: Seq(head),
    })
}

fn encode_claim(claim: Claim) -> [u8; RECORD_LEN] {
    let mut out = [0; RECORD_LEN];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&claim.id.0.to_be_bytes());
    out[9..17].copy_from_slice(&claim.created_ms.to_be_bytes());
    out[17..25].copy_from_slice(&claim.window_end_ms.to_be_bytes());
    out
}

fn decode_claim(value: &[u8]) -> Result<Claim, StoreError> {
    let mut r = Reader::new("idempotency record", value);
    r.version()?;
    let claim = Claim {
        id: MessageId(r.u64()?),
        created_ms: r.u64()?,
        window_end_ms: r.u64()?,
    };
    r.end()?;
    Ok(claim)
}

/// `acked:attempt_seq:attempts`, each in decimal digits.
fn decode_cursor(value: &[u8]) -> Result<Cursor, StoreError> {
    fn number<T: std::str::FromStr>(part: Option<&str>) -> Result<T, StoreError> {
        part.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| corrupt("cursor: not acked:attempt_seq:attempts"))
    }
    let text = std::str::from_utf8(value).map_err(|_| corrupt("cursor: not UTF-8"))?;
    let mut parts = text.split(':');
    let cursor = Cursor {
        acked: Seq(number(parts.next())?),
        attempt_seq: Seq(number(parts.next())?),
        attempts: number(parts.next())?,
    };
    match parts.next() {
        None => Ok(cursor),
        Some(_) => Err(corrupt("cursor: trailing fields")),
    }
}

/// Reads a value front to back; running out of bytes is [`StoreError::Corrupt`].
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Reader { what, bytes }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(corrupt(format!("{}: truncated", self.what)));
        };
        self.bytes = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    fn version(&mut self) -> Result<(), StoreError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(corrupt(format!(
                "{}: unknown format version {v}",
                self.what
            ))),
        }
    }

    fn end(self) -> Result<(), StoreError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(format!("{}: trailing bytes", self.what)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = seq.to_be_bytes().to_vec();
        out.extend(encode_element(
            MessageId(7),
            100,
            200,
            PayloadKind::Json,
            payload,
        ));
        out
    }

    #[test]
    fn an_element_comes_back_whole() {
        let m = decode_element(element(3, b"{}")).unwrap();
        assert_eq!(
            m,
            StoredMessage {
                seq: Seq(3),
                id: MessageId(7),
                created_ms: 100,
                expires_ms: 200,
                kind: PayloadKind::Json,
                payload: Bytes::from_static(b"{}"),
            }
        );
        assert!(decode_element(element(3, b"")).unwrap().payload.is_empty());
    }

    #[test]
    fn damaged_values_are_corrupt_never_a_panic() {
        let whole = element(3, b"x");
        for len in 0..MESSAGE_HEADER {
            assert!(
                matches!(
                    decode_element(whole[..len].to_vec()),
                    Err(StoreError::Corrupt(_))
                ),
                "{len} bytes"
            );
        }
        let mut kind = whole.clone();
        kind[17] = 9;
        assert!(matches!(decode_element(kind), Err(StoreError::Corrupt(_))));
        let mut version = whole;
        version[8] = 0;
        assert!(matches!(
            decode_element(version),
            Err(StoreError::Corrupt(_))
        ));

        let claim = encode_claim(Claim {
            id: MessageId(1),
            created_ms: 2,
            window_end_ms: 3,
        });
        assert_eq!(decode_claim(&claim).unwrap().window_end_ms, 3);
        assert!(decode_claim(&claim[..24]).is_err());
        assert!(decode_claim(&[&claim[..], &[0]].concat()).is_err());

        assert_eq!(
            decode_cursor(b"5:6:7").unwrap(),
            Cursor {
                acked: Seq(5),
                attempt_seq: Seq(6),
                attempts: 7
            }
        );
        for bad in [
            &b""[..],
            b"5:6",
            b"5:6:7:8",
            b"+5:6:7",
            b"5::7",
            b"5:6:99999999999",
            b"\xff",
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_ttls_cover_the_message_and_stay_in_range() {
        assert_eq!(key_ttl(1_000, 61_000), 60_000 + TTL_MARGIN_MS);
        assert_eq!(key_ttl(5_000, 1_000), TTL_MARGIN_MS);
        assert_eq!(key_ttl(0, u64::MAX), MAX_TTL_MS + TTL_MARGIN_MS);
    }
}
