//! [`RedisRouter`]: node-to-node messages over Redis pub/sub.
//!
//! Every node listens on one channel of its own, `<prefix>:{n:<node>}:ch` (on Redis Cluster a
//! sharded channel, `SSUBSCRIBE`/`SPUBLISH`, so a message goes to one shard and not to every
//! master). Sending to a node is one `PUBLISH` of a [`NodeMessage`] in a compact binary
//! envelope; a message to this node itself is applied at once, without Redis.
//!
//! # Guarantees
//! Best effort, as the seam says: a message is lost when the receiving node is down, when Redis
//! is, or when the receiving node's inbound queue is full (counted in
//! `tether_router_dropped_total`). Order holds per (sending task, node): one multiplexed
//! connection carries a task's publishes in order, Redis delivers a channel's messages in
//! order, and one task applies them. Durable messages do not depend on the router: they are in
//! the store, and a client gets what it missed when it resumes; a topic's durable publications
//! are filled in from the history by the next one.
//!
//! # Envelope
//! One tag byte, then per kind (integers big-endian, `str` = u16 length + UTF-8, `conns` =
//! u32 count + u64 ids, `frame` = the rest: one binary-encoded tether frame, prefix included):
//!
//! | tag | kind | fields |
//! |---|---|---|
//! | 1 | deliver | conns, frame (a push) |
//! | 2 | disconnect | code u16, reason str, conns |
//! | 3 | publish | app str, topic str, offset u64, frame (a publication) |
//! | 4 | broadcast | app str, frame (a push) |
//! | 5 | subscription | app str, topic str, subscribed u8, conns |
//! | 6 | post | session u128, body length u32, the body a client posted (JSON frames) |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};
use tether_core::{
    AppId, ConnId, LocalSink, NodeId, NodeMessage, Outgoing, Router, RouterError, TopicId,
};
use tether_proto::{Code, binary};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{Keys, Redis, RedisOptions, describe};

/// Messages received but not yet applied; past it, or past [`INBOUND_BYTES`] of them, new
/// ones are dropped (counted, and recovered from the store when durable).
const INBOUND_QUEUE: usize = 65_536;
const INBOUND_BYTES: usize = 64 << 20;

/// The largest frame a node accepts from another (the envelope adds ids and names).
const MAX_FRAME: u32 = 16 << 20;

/// Counters of the router, for metrics.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Messages sent to other nodes.
    pub sent: AtomicU64,
    /// Messages received from other nodes and applied.
    pub received: AtomicU64,
    /// Messages received and dropped: the inbound queue was full.
    pub dropped: AtomicU64,
    /// Messages received that could not be decoded.
    pub malformed: AtomicU64,
    /// Times the sink was asked to recover after messages may have been lost.
    pub recoveries: AtomicU64,
}

/// The router of the cluster mode.
pub struct RedisRouter {
    node: NodeId,
    keys: Keys,
    redis: Redis,
    sink: Arc<dyn LocalSink>,
    stats: Arc<RouterStats>,
    /// Pings the listening connection every 250 ms, which keeps it (and with it the
    /// subscription) alive and makes it reconnect and subscribe again after Redis was away.
    keepalive: tokio::task::AbortHandle,
}

impl Drop for RedisRouter {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// The shortest time between two recoveries (the later losses wait for the next one).
const RECOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the listening connection is checked.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_millis(250);

/// Pings `listener` every [`KEEPALIVE`]: a failed ping starts a reconnection, after which the
/// client subscribes again on its own (before the connection serves anything else). The first
/// ping that succeeds after messages may have been lost (`lost`: the connection dropped, or
/// the inbound queue was full) asks the sink to recover what is durable.
async fn keepalive<C: redis::aio::ConnectionLike + Send>(
    mut listener: C,
    lost: Arc<AtomicBool>,
    sink: Arc<dyn LocalSink>,
    stats: Arc<RouterStats>,
) {
    let mut last_recovery: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(KEEPALIVE).await;
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut listener).await;
        match pong {
            // A late answer (a busy machine, a busy Redis) loses nothing: the messages wait in
            // the connection. Only a connection that must be replaced does.
            Err(e) if e.is_unrecoverable_error() => {
                lost.store(true, Ordering::Relaxed);
                debug!(error = %e, "router: the listening connection is down; reconnecting");
            }
            Err(e) => debug!(error = %e, "router: the listening connection answers late"),
            Ok(_) => {
                // At most one recovery per RECOVER_EVERY: each one reads every connection's
                // inboxes, which must not become the load that makes the next one necessary.
                let due = last_recovery.is_none_or(|at| at.elapsed() >= RECOVER_EVERY);
                if due && lost.swap(false, Ordering::Relaxed) {
                    last_recovery = Some(tokio::time::Instant::now());
                    stats.recoveries.fetch_add(1, Ordering::Relaxed);
                    sink.recover();
                }
            }
        }
    }
}

/// The listening connection, of either kind.
enum Listener {
    Standalone(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Listener {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Listener::Standalone(c) => c.req_packed_command(cmd),
            Listener::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Listener::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Listener::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Listener::Standalone(c) => c.get_db(),
            Listener::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for RedisRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRouter")
            .field("node", &self.node)
            .field("redis", &self.redis)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RedisRouter {
    /// Connects, subscribes to this node's channel and starts applying what arrives to `sink`.
    /// The subscription is renewed by the client after a reconnect.
    pub async fn start(
        options: &RedisOptions,
        node: NodeId,
        sink: Arc<dyn LocalSink>,
    ) -> Result<RedisRouter, RouterError> {
        let unavailable = |e: redis::RedisError| RouterError::Unavailable(describe(&e));
        let keys = Keys::new(&options.prefix);
        let channel = keys.node(node.as_str(), "ch");
        let stats = Arc::new(RouterStats::default());
        // First the connection that sends: failing here leaves nothing running.
        let redis = Redis::connect(options).await.map_err(unavailable)?;
        let lost = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<PushInfo>(INBOUND_QUEUE);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let push_sender = {
            let (stats, lost, queued_bytes) = (stats.clone(), lost.clone(), queued_bytes.clone());
            move |info: PushInfo| {
                if info.kind == PushKind::Disconnection {
                    lost.store(true, Ordering::Relaxed);
                }
                let size = push_size(&info);
                let fits = queued_bytes.fetch_add(size, Ordering::Relaxed) + size <= INBOUND_BYTES;
                if !fits || tx.try_send(info).is_err() {
                    queued_bytes.fetch_sub(size, Ordering::Relaxed);
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("tether_router_dropped_total").increment(1);
                    lost.store(true, Ordering::Relaxed);
                }
                Ok::<(), ()>(())
            }
        };
        let watch = |conn| {
            let task = keepalive(conn, lost.clone(), sink.clone(), stats.clone());
            tokio::spawn(task).abort_handle()
        };
        let keepalive = if options.cluster {
            let client = options
                .cluster_builder()
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push_sender)
                .build()
                .map_err(unavailable)?;
            let mut conn = client.get_async_connection().await.map_err(unavailable)?;
            conn.ssubscribe(&channel).await.map_err(unavailable)?;
            watch(Listener::Cluster(conn))
        } else {
            let url = options
                .urls
                .first()
                .ok_or_else(|| RouterError::Unavailable("no Redis URL configured".into()))?;
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(unavailable)?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let info = info.set_redis_settings(settings);
            let client = options.client(info).map_err(unavailable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.timeout))
                .set_response_timeout(Some(options.timeout))
                .set_max_delay(std::time::Duration::from_secs(1))
                .set_push_sender(push_sender)
                .set_automatic_resubscription();
            let mut conn = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(unavailable)?;
            conn.subscribe(&channel).await.map_err(unavailable)?;
            watch(Listener::Standalone(conn))
        };
        tokio::spawn(apply(rx, queued_bytes, sink.clone(), stats.clone()));
        Ok(RedisRouter {
            node,
            keys,
            redis,
            sink,
            stats,
            keepalive,
        })
    }

    /// The router's counters.
    pub fn stats(&self) -> Arc<RouterStats> {
        self.stats.clone()
    }
}

/// The bytes a received push holds (its message, for a pub/sub message).
fn push_size(info: &PushInfo) -> usize {
    match info.data.as_slice() {
        [_, Value::BulkString(data)] => data.len(),
        _ => 0,
    }
}

/// Applies what arrives on the node's channel, in order, until the listener is gone.
async fn apply(
    mut rx: mpsc::Receiver<PushInfo>,
    queued_bytes: Arc<AtomicUsize>,
    sink: Arc<dyn LocalSink>,
    stats: Arc<RouterStats>,
) {
    while let Some(info) = rx.recv().await {
        queued_bytes.fetch_sub(push_size(&info), Ordering::Relaxed);
        let payload = match (info.kind, info.data.as_slice()) {
            (PushKind::Message | PushKind::SMessage, [_channel, Value::BulkString(data)]) => {
                Bytes::copy_from_slice(data)
            }
            // Subscription confirmations, disconnect notices: nothing to apply.
            (kind, _) => {
                debug!(?kind, "router: push ignored");
                continue;
            }
        };
        match decode(payload) {
            Ok(msg) => {
                msg.apply(sink.as_ref());
                stats.received.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tether_router_received_total").increment(1);
            }
            Err(e) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tether_router_malformed_total").increment(1);
                warn!(error = %e, "router: malformed message from another node dropped");
            }
        }
    }
}

#[async_trait]
impl Router for RedisRouter {
    async fn send(&self, node: &NodeId, msg: NodeMessage) -> Result<usize, RouterError> {
        if node == &self.node {
            return Ok(msg.apply(self.sink.as_ref()));
        }
        let channel = self.keys.node(node.as_str(), "ch");
        let command = if self.redis.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let receivers: u64 = redis::cmd(command)
            .arg(&channel)
            .arg(encode(&msg).as_ref())
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| RouterError::Unavailable(describe(&e)))?;
        if receivers == 0 {
            return Err(RouterError::UnknownNode(node.clone()));
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tether_router_sent_total").increment(1);
        Ok(1)
    }

    fn is_local(&self, node: &NodeId) -> bool {
        node == &self.node
    }
}

/// The envelope of a message (see the module docs).
pub fn encode(msg: &NodeMessage) -> Bytes {
    let mut out = BytesMut::new();
    match msg {
        NodeMessage::Deliver { conns, msg } => {
            out.put_u8(1);
            put_conns(&mut out, conns);
            out.put_slice(msg.binary());
        }
        NodeMessage::Disconnect {
            conns,
            code,
            reason,
        } => {
            out.put_u8(2);
            out.put_u16(code.0);
            put_str(&mut out, reason);
            put_conns(&mut out, conns);
        }
        NodeMessage::Publish {
            app,
            topic,
            offset,
            msg,
        } => {
            out.put_u8(3);
            put_str(&mut out, app.as_str());
            put_str(&mut out, topic.as_str());
            out.put_u64(*offset);
            out.put_slice(msg.binary());
        }
        NodeMessage::Broadcast { app, msg } => {
            out.put_u8(4);
            put_str(&mut out, app.as_str());
            out.put_slice(msg.binary());
        }
        NodeMessage::Subscription {
            app,
            topic,
            conns,
            subscribed,
        } => {
            out.put_u8(5);
            put_str(&mut out, app.as_str());
            put_str(&mut out, topic.as_str());
            out.put_u8(u8::from(*subscribed));
            put_conns(&mut out, conns);
        }
        NodeMessage::Post { session, body } => {
            out.put_u8(6);
            out.put_u128(*session);
            out.put_u32(body.len() as u32);
            out.put_slice(body);
        }
    }
    out.freeze()
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated envelope")]
    Truncated,
    #[error("unknown message tag {0}")]
    Tag(u8),
    #[error("a name is not UTF-8")]
    Utf8,
    #[error("bad frame: {0}")]
    Frame(String),
    #[error("the frame is not a push or a publication")]
    Body,
}

/// Reads an envelope; never panics on bad input.
pub fn decode(mut buf: Bytes) -> Result<NodeMessage, DecodeError> {
    let tag = get_u8(&mut buf)?;
    Ok(match tag {
        1 => {
            let conns = get_conns(&mut buf)?;
            NodeMessage::Deliver {
                conns,
                msg: get_frame(buf)?,
            }
        }
        2 => {
            let code = Code(get_u16(&mut buf)?);
            let reason = get_str(&mut buf)?;
            let conns = get_conns(&mut buf)?;
            NodeMessage::Disconnect {
                conns,
                code,
                reason,
            }
        }
        3 => {
            let app = AppId::new(get_str(&mut buf)?);
            let topic = TopicId::new(get_str(&mut buf)?);
            let offset = get_u64(&mut buf)?;
            NodeMessage::Publish {
                app,
                topic,
                offset,
                msg: get_frame(buf)?,
            }
        }
        4 => {
            let app = AppId::new(get_str(&mut buf)?);
            NodeMessage::Broadcast {
                app,
                msg: get_frame(buf)?,
            }
        }
        5 => {
            let app = AppId::new(get_str(&mut buf)?);
            let topic = TopicId::new(get_str(&mut buf)?);
            let subscribed = get_u8(&mut buf)? != 0;
            let conns = get_conns(&mut buf)?;
            NodeMessage::Subscription {
                app,
                topic,
                conns,
                subscribed,
            }
        }
        6 => {
            let session = buf.try_get_u128().map_err(|_| DecodeError::Truncated)?;
            let len = buf.try_get_u32().map_err(|_| DecodeError::Truncated)? as usize;
            if buf.len() != len {
                return Err(DecodeError::Truncated);
            }
            NodeMessage::Post { session, body: buf }
        }
        other => return Err(DecodeError::Tag(other)),
    })
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Ids are at most 128 bytes; a longer reason is cut at a character boundary.
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

fn put_conns(out: &mut BytesMut, conns: &[ConnId]) {
    out.put_u32(conns.len() as u32);
    for c in conns {
        out.put_u64(c.0);
    }
}

fn get_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    buf.try_get_u8().map_err(|_| DecodeError::Truncated)
}

fn get_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    buf.try_get_u16().map_err(|_| DecodeError::Truncated)
}

fn get_u64(buf: &mut Bytes) -> Result<u64, DecodeError> {
    buf.try_get_u64().map_err(|_| DecodeError::Truncated)
}

fn get_str(buf: &mut Bytes) -> Result<String, DecodeError> {
    let len = usize::from(get_u16(buf)?);
    if buf.len() < len {
        return Err(DecodeError::Truncated);
    }
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| DecodeError::Utf8)
}

fn get_conns(buf: &mut Bytes) -> Result<Vec<ConnId>, DecodeError> {
    let n = buf.try_get_u32().map_err(|_| DecodeError::Truncated)? as usize;
    // Checked against what is left before allocating: a bad count cannot ask for gigabytes.
    if buf.len() < n.saturating_mul(8) {
        return Err(DecodeError::Truncated);
    }
    Ok((0..n).map(|_| ConnId(buf.get_u64())).collect())
}

fn get_frame(buf: Bytes) -> Result<Arc<Outgoing>, DecodeError> {
    let frame =
        binary::parse(buf.clone(), MAX_FRAME).map_err(|e| DecodeError::Frame(e.to_string()))?;
    Outgoing::received(frame, Some(buf))
        .map(Arc::new)
        .ok_or(DecodeError::Body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::contract::{NODE_MESSAGE_EFFECTS, RecordingSink, node_messages};

    #[test]
    fn every_kind_survives_the_envelope() {
        let sink = RecordingSink::default();
        for msg in node_messages() {
            decode(encode(&msg)).unwrap().apply(&sink);
        }
        assert_eq!(sink.others.lock().unwrap().as_slice(), NODE_MESSAGE_EFFECTS);
    }

    #[test]
    fn truncated_and_garbage_envelopes_are_refused_without_panicking() {
        for msg in node_messages() {
            let bytes = encode(&msg);
            for len in 0..bytes.len() {
                // A cut inside the frame may still parse as a shorter frame only if the
                // prefix agrees, which it does not: every cut is refused.
                assert!(decode(bytes.slice(..len)).is_err(), "cut at {len}");
            }
        }
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 64))
                .map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 97) >> 7) as u8)
                .collect();
            let _ = decode(Bytes::from(bytes));
        }
        let huge_count = Bytes::from_static(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(decode(huge_count), Err(DecodeError::Truncated)));
    }
}
