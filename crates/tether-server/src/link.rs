//! A client connection as the roles that send to it see it: who is at the other end, and where
//! its frames go.
//!
//! The gateway holds connections; the fan-out, the webhooks and the delivery service hand them
//! frames. They meet here, so that none of them depends on how the gateway keeps a connection:
//! the gateway's connections implement [`Link`] and its connection table implements [`Links`].
//! A new transport gets every sender for free by being a connection of the gateway.

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tether_core::{AppId, ConnId, DeviceId, Outgoing, TopicId, Transport, UserId};
use tether_proto::{Code, Frame};

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Json,
}

impl Encoding {
    pub fn encode(self, frame: &Frame) -> Bytes {
        match self {
            Encoding::Binary => tether_proto::binary::encode_to_bytes(frame),
            Encoding::Json => Bytes::from(tether_proto::json::encode(frame)),
        }
    }

    /// `msg`'s frame in this encoding, shared by every recipient.
    pub fn frame_of(self, msg: &Outgoing) -> &Bytes {
        match self {
            Encoding::Binary => msg.binary(),
            Encoding::Json => msg.json(),
        }
    }
}

/// One (app, user) binding of a connection, authenticated by a token, and until when that
/// token holds.
#[derive(Debug)]
pub struct Binding {
    pub app: AppId,
    pub user: UserId,
    /// When the token expires, in seconds since the epoch (0: never), and in the top bit
    /// whether the client was warned of it. A refresh moves it; past it the connection closes.
    expiry: AtomicU64,
    /// The `topics` claim of the connection's token: what `token` topic rules let it join.
    /// Boxed twice so that the usual binding, without the claim, pays one pointer.
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer: 8 bytes per binding instead of 24"
    )]
    topics: Option<Box<Vec<String>>>,
}

/// The top bit of [`Binding::expiry`]: the client was warned.
const WARNED: u64 = 1 << 63;

impl Binding {
    pub fn new(app: AppId, user: UserId, expires_s: u64) -> Self {
        Binding {
            app,
            user,
            expiry: AtomicU64::new(expires_s & !WARNED),
            topics: None,
        }
    }

    /// With its token's `topics` claim.
    pub fn with_topics(mut self, topics: Option<Vec<String>>) -> Self {
        self.topics = topics.map(Box::new);
        self
    }

    /// Its token's `topics` claim, if it had one.
    pub fn topics(&self) -> Option<&[String]> {
        self.topics.as_deref().map(Vec::as_slice)
    }

    /// When the token expires, seconds since the epoch; 0: never.
    pub fn expires_s(&self) -> u64 {
        self.expiry.load(Ordering::Relaxed) & !WARNED
    }

    /// A new token holds until `expires_s`: the client may be warned again before then.
    pub fn extend(&self, expires_s: u64) {
        self.expiry.store(expires_s & !WARNED, Ordering::Relaxed);
    }

    /// The expiry the client must be warned of now: the token expires within `ahead_s` of
    /// `now_s` and nobody warned it since the last refresh. Once per token; the expiry is the
    /// one marked warned, whatever a refresh does meanwhile.
    pub fn warn(&self, now_s: u64, ahead_s: u64) -> Option<u64> {
        let expiry = self.expiry.load(Ordering::Relaxed);
        let due = expiry & WARNED == 0 && expiry != 0 && now_s.saturating_add(ahead_s) >= expiry;
        let marked = due
            && self
                .expiry
                .compare_exchange(
                    expiry,
                    expiry | WARNED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        marked.then_some(expiry)
    }
}

/// What happened to a frame queued on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The connection is closing; the frame was dropped.
    Closed,
    /// The queue passed its byte limit: the connection is now closing as slow.
    Overflow,
}

/// What happened to a frame offered to a connection: queued for its task, or written at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// In the queue, or in part on the wire with the rest queued.
    Queued,
    /// Written to the socket whole, by the caller's thread: `n` bytes of frame (a WebSocket
    /// message's header besides).
    Written(usize),
    Closed,
    Overflow,
}

impl From<Enqueued> for Offered {
    fn from(e: Enqueued) -> Offered {
        match e {
            Enqueued::Queued => Offered::Queued,
            Enqueued::Closed => Offered::Closed,
            Enqueued::Overflow => Offered::Overflow,
        }
    }
}

/// One open client connection.
///
/// # Guarantees every implementation gives
/// - Nothing here blocks or waits: a frame is queued (or written) at once, or refused.
/// - A connection's queue is bounded in bytes: a frame past the bound closes it as slow
///   ([`Enqueued::Overflow`]), and nothing is queued after a close.
/// - Frames handed to one connection reach its client in the order they were handed over.
pub trait Link: Send + Sync + Debug {
    fn id(&self) -> ConnId;

    /// The device the client said it is.
    fn device(&self) -> &DeviceId;

    /// The (app, user) bindings its handshake authenticated, in the client's order; a binding
    /// is named by its index here.
    fn bindings(&self) -> &[Binding];

    /// The index of the binding for `app`, if the connection has one.
    fn binding(&self, app: &str) -> Option<usize> {
        self.bindings().iter().position(|b| b.app.as_str() == app)
    }

    fn transport(&self) -> Transport;

    /// When its handshake completed, ms since the epoch.
    fn connected_at_ms(&self) -> u64;

    /// The encoding its frames must be in.
    fn encoding(&self) -> Encoding;

    /// Whether frames may reach it joined back to back in one buffer (a stream of binary
    /// frames; a WebSocket message carries exactly one).
    fn takes_joined_frames(&self) -> bool {
        self.transport() == Transport::Tcp && self.encoding() == Encoding::Binary
    }

    /// The byte limit of its outbound queue.
    fn queue_limit(&self) -> usize;

    /// Bytes queued and not yet written.
    fn queued_bytes(&self) -> usize;

    /// Queues an encoded frame for the connection's task.
    fn enqueue(&self, frame: Bytes) -> Enqueued;

    /// Writes a frame shared with other recipients to the socket at once, by the caller's
    /// thread, when nothing else waits to be written on this connection; otherwise queues it.
    /// `frame` is cloned only when some of it is queued.
    fn write_or_queue(&self, frame: &Bytes) -> Offered;

    /// Queues a frame shared with other recipients for the connection's task, except on a
    /// connection that waits without a task, which gets it as [`Link::write_or_queue`] would
    /// (queueing would start a task for it).
    fn queue_shared(&self, frame: &Bytes) -> Offered;

    /// Whether the connection is closing or closed: nothing more will be queued.
    fn is_closed(&self) -> bool;

    /// Records that binding `binding` subscribes to `topic`: `Ok(true)` if new, `Ok(false)` if
    /// it already was, `Err(n)` when the connection already has `max` topics.
    fn add_topic(&self, binding: usize, topic: &TopicId, max: usize) -> Result<bool, usize>;

    /// Forgets binding `binding`'s subscription to `topic`; whether it had one.
    fn remove_topic(&self, binding: usize, topic: &TopicId) -> bool;

    /// Whether binding `binding` is subscribed to `topic` (or asked to be).
    fn has_topic(&self, binding: usize, topic: &TopicId) -> bool;
}

/// The open connections of this node.
///
/// Walks hold one shard of the table at a time and must not block.
///
/// Besides finding and walking them: delivering a push to some (the router's part), closing
/// some, and asking all to read their inboxes again (when messages from other nodes may have
/// been lost).
pub trait Links: Send + Sync + Debug {
    fn get(&self, id: ConnId) -> Option<Arc<dyn Link>>;

    /// How many connections are open.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many shards [`Links::for_each_in`] takes ranges of.
    fn shard_count(&self) -> usize;

    /// Calls `f` for every connection of shards `shards`.
    fn for_each_in(&self, shards: Range<usize>, f: &mut dyn FnMut(&dyn Link));

    /// Every connection (bound to `app`, when given), for a walk that waits between
    /// connections (a paced fan-out, registry writes) and so cannot hold a shard.
    fn snapshot(&self, app: Option<&AppId>) -> Vec<Arc<dyn Link>>;

    /// Hands a push to each of `conns` that is open (a durable one in its binding's seq
    /// order); returns how many took it.
    fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize;

    /// Closes each of `conns` that is open with `code`, after what is queued; returns how
    /// many were open.
    fn disconnect(&self, conns: &[ConnId], code: Code, reason: &str) -> usize;

    /// Every connection of shards `shards` reads its inboxes again after what it was sent: a
    /// push routed here may have been lost between nodes.
    fn recheck_inboxes(&self, shards: Range<usize>);

    /// Hands what a client posted (JSON frames, `body` as the client sent it) to the
    /// connection of its session `session` (an SSE stream's), waking it. Returns how many
    /// frames it took: 0 when the session is not here, has too many frames waiting, or the
    /// body holds none.
    fn post(&self, session: u128, body: &[u8]) -> usize;
}
