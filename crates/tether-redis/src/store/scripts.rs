//! The Lua scripts of the Redis store; the parent module's docs describe the keys they read
//! and change.

use std::sync::LazyLock;

use redis::Script;

/// Parses the seq counter `KEYS[1]` of a log into `head` (`0` for a log never appended to).
/// [`APPEND`] and [`READ`] start with it.
const HEAD: &str = r#"
local head = redis.call('GET', KEYS[1])
if head then
  head = tonumber(head)
  if not head then return redis.error_reply('CORRUPT the seq counter is not a number') end
else
  head = 0
end
"#;

/// Appends one message to one log (inbox or topic history); see the module docs.
///
/// KEYS: seq, log[, idem-seq, idem-exp]. ARGV: element without its seq, now (the message's
/// `created_ms`), cap, log TTL[, idempotency key, window end, window TTL]. Returns the seq.
///
/// Everything that can fail on damaged data (the counter, the key types, the counter against
/// the last element) is checked before the first write that matters, since a script that
/// fails half-way is not rolled back; pruning expired entries first is harmless.
pub(super) const APPEND: &str = r#"
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
pub(super) const ACK: &str = r#"
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
pub(super) const ATTEMPT: &str = r#"
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

pub(super) struct Scripts {
    pub(super) append: Script,
    pub(super) read: Script,
    pub(super) ack: Script,
    pub(super) attempt: Script,
    pub(super) subscribe: Script,
    pub(super) claim: Script,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    append: Script::new(&format!("{HEAD}{APPEND}")),
    read: Script::new(&format!("{HEAD}{READ}")),
    ack: Script::new(&format!("{CURSOR}{ACK}")),
    attempt: Script::new(&format!("{CURSOR}{ATTEMPT}")),
    subscribe: Script::new(SUBSCRIBE),
    claim: Script::new(CLAIM),
});
