//! The frame model: one enum shared by the binary and the JSON encodings.

use bytes::Bytes;

use crate::Code;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Default largest frame (length prefix excluded) a peer accepts, in bytes.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;

/// One protocol frame: a request id and an op-specific body.
///
/// The request id pairs replies with requests on a full-duplex connection: a reply (`connected`,
/// `pong`, `error`) carries the id of the request it answers. Frames the server sends on its own
/// (`push`, `disconnect`) carry id 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: u32,
    pub body: Body,
}

impl Frame {
    pub fn new(id: u32, body: impl Into<Body>) -> Self {
        Frame {
            id,
            body: body.into(),
        }
    }

    pub fn op(&self) -> Op {
        self.body.op()
    }
}

/// The op of a frame, with its number in the binary encoding and its name in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Connect = 1,
    Connected = 2,
    Ping = 3,
    Pong = 4,
    Push = 5,
    Ack = 6,
    Error = 7,
    Disconnect = 8,
    Sync = 9,
    Synced = 10,
    Subscribe = 11,
    Subscribed = 12,
    Unsubscribe = 13,
    Unsubscribed = 14,
    Publication = 15,
    Upstream = 16,
    UpstreamReply = 17,
    Refresh = 18,
    Refreshed = 19,
    Expiring = 20,
}

impl Op {
    pub const ALL: [Op; 20] = [
        Op::Connect,
        Op::Connected,
        Op::Ping,
        Op::Pong,
        Op::Push,
        Op::Ack,
        Op::Error,
        Op::Disconnect,
        Op::Sync,
        Op::Synced,
        Op::Subscribe,
        Op::Subscribed,
        Op::Unsubscribe,
        Op::Unsubscribed,
        Op::Publication,
        Op::Upstream,
        Op::UpstreamReply,
        Op::Refresh,
        Op::Refreshed,
        Op::Expiring,
    ];

    pub fn from_u8(n: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| *op as u8 == n)
    }

    /// The op's name in the JSON encoding (`"connect"`, `"push"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Connect => "connect",
            Op::Connected => "connected",
            Op::Ping => "ping",
            Op::Pong => "pong",
            Op::Push => "push",
            Op::Ack => "ack",
            Op::Error => "error",
            Op::Disconnect => "disconnect",
            Op::Sync => "sync",
            Op::Synced => "synced",
            Op::Subscribe => "subscribe",
            Op::Subscribed => "subscribed",
            Op::Unsubscribe => "unsubscribe",
            Op::Unsubscribed => "unsubscribed",
            Op::Publication => "publication",
            Op::Upstream => "upstream",
            Op::UpstreamReply => "upstream_reply",
            Op::Refresh => "refresh",
            Op::Refreshed => "refreshed",
            Op::Expiring => "expiring",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// The op-specific part of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Connect(Connect),
    Connected(Connected),
    Ping,
    Pong,
    Push(Push),
    Ack(Ack),
    Error(ErrorBody),
    Disconnect(Disconnect),
    Sync(Sync),
    Synced(Synced),
    Subscribe(Subscribe),
    Subscribed(Subscribed),
    Unsubscribe(Unsubscribe),
    Unsubscribed(Unsubscribed),
    Publication(Publication),
    Upstream(Upstream),
    UpstreamReply(UpstreamReply),
    Refresh(Refresh),
    Refreshed(Refreshed),
    Expiring(Expiring),
}

impl Body {
    pub fn op(&self) -> Op {
        match self {
            Body::Connect(_) => Op::Connect,
            Body::Connected(_) => Op::Connected,
            Body::Ping => Op::Ping,
            Body::Pong => Op::Pong,
            Body::Push(_) => Op::Push,
            Body::Ack(_) => Op::Ack,
            Body::Error(_) => Op::Error,
            Body::Disconnect(_) => Op::Disconnect,
            Body::Sync(_) => Op::Sync,
            Body::Synced(_) => Op::Synced,
            Body::Subscribe(_) => Op::Subscribe,
            Body::Subscribed(_) => Op::Subscribed,
            Body::Unsubscribe(_) => Op::Unsubscribe,
            Body::Unsubscribed(_) => Op::Unsubscribed,
            Body::Publication(_) => Op::Publication,
            Body::Upstream(_) => Op::Upstream,
            Body::UpstreamReply(_) => Op::UpstreamReply,
            Body::Refresh(_) => Op::Refresh,
            Body::Refreshed(_) => Op::Refreshed,
            Body::Expiring(_) => Op::Expiring,
        }
    }
}

/// Client -> server, first frame: protocol version, device, bindings, heartbeat proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol version the client speaks.
    pub version: u8,
    /// A client-chosen id, stable across reconnects of the same install.
    pub device: String,
    /// The heartbeat interval the client proposes, in milliseconds (0: no preference).
    pub heartbeat_ms: u32,
    /// One or more (app, token) pairs; each token names the user.
    pub bindings: Vec<Binding>,
}

/// A request to bind the connection to an app as the user named by the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    pub app: String,
    /// JWT HS256 signed with the app's secret; `sub` is the user id.
    pub token: String,
    /// The last inbox seq the client holds for this app: the server sends every durable
    /// message after it. `None`: resume from the position this device last acked.
    pub last_seq: Option<u64>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("app", &self.app)
            .field("token", &"<redacted>")
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

/// Server -> client, reply to `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The connection's id on its node.
    pub conn_id: u64,
    /// The node holding the connection.
    pub node: String,
    /// The negotiated heartbeat interval in milliseconds: the client sends a frame (a `ping` if
    /// it has nothing else to say) at least this often.
    pub heartbeat_ms: u32,
    /// The largest frame the server accepts, length prefix excluded.
    pub max_frame: u32,
    /// The bindings accepted, in the order requested.
    pub bindings: Vec<Bound>,
}

/// An accepted binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub app: String,
    pub user: String,
}

/// How a push payload should be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PayloadKind {
    /// Opaque bytes (JSON encoding: base64 in `payload_base64`).
    Binary = 0,
    /// UTF-8 JSON text (JSON encoding: embedded as-is in `payload`).
    Json = 1,
}

/// Server -> client: a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub app: String,
    /// Unique message id (JSON: a decimal string, since it may exceed 2^53).
    pub msg_id: u64,
    /// Inbox sequence number for durable messages, 0 for transient ones.
    pub seq: u64,
    /// 0 transient, 1 durable.
    pub qos: u8,
    /// When the message was accepted, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub kind: PayloadKind,
    pub payload: Bytes,
}

/// Client -> server: "I have everything up to `seq` in this app's inbox" (cumulative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub app: String,
    pub seq: u64,
}

/// Client -> server: send the durable messages of this app's inbox after `after`, at most
/// `limit` of them (0: the server's page size). The server answers with `push` frames carrying
/// the request's id, then a [`Synced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    pub app: String,
    pub after: u64,
    pub limit: u32,
}

/// Server -> client, the end of a `sync` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    pub app: String,
    /// The last seq sent in this reply (the request's `after` when none was).
    pub last: u64,
    /// The inbox's last seq: when above `last`, more is waiting (or was sent live meanwhile).
    pub head: u64,
}

/// Client -> server: subscribe this connection to a topic of a bound app.
///
/// With `since`, the server first sends the topic's publications after that offset from its
/// history (or says they are gone: [`Recovery::TooOld`]), then live ones, with no gap and no
/// reordering between the two. Without it, only publications after the reply's offset arrive.
///
/// A topic whose rule is `token` needs the connection token to list it, or a subscription
/// token for it here (a JWT with the user as `sub` and the topic as `topic`, signed like
/// connection tokens). A refusal is an `error` with [`Code::FORBIDDEN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub app: String,
    pub topic: String,
    /// The last offset the client holds (binary: a flag byte, then the u64 when the flag is 1).
    pub since: Option<u64>,
    /// A subscription token for this topic (binary: a `str` after `since`, present only when
    /// given).
    pub token: Option<String>,
}

/// What a `subscribe` with `since` recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Recovery {
    /// No `since` was given: live publications only.
    Live = 0,
    /// Every publication after `since` up to the reply's `offset` follows the reply, in order.
    Complete = 1,
    /// The history no longer reaches back to `since`: nothing was recovered, live publications
    /// follow. The client should refetch what it missed from the business.
    TooOld = 2,
}

impl Recovery {
    pub fn from_u8(n: u8) -> Option<Recovery> {
        match n {
            0 => Some(Recovery::Live),
            1 => Some(Recovery::Complete),
            2 => Some(Recovery::TooOld),
            _ => None,
        }
    }

    /// The name in the JSON encoding.
    pub fn name(self) -> &'static str {
        match self {
            Recovery::Live => "live",
            Recovery::Complete => "complete",
            Recovery::TooOld => "too_old",
        }
    }

    pub fn from_name(name: &str) -> Option<Recovery> {
        [Recovery::Live, Recovery::Complete, Recovery::TooOld]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// Server -> client: the connection is subscribed. The reply to a `subscribe` carries its id;
/// a subscription the business made through the API arrives with id 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub app: String,
    pub topic: String,
    /// Live publications follow from the offset after this one. With [`Recovery::Complete`],
    /// the recovered publications (up to this offset) come first.
    pub offset: u64,
    pub recovery: Recovery,
}

/// Client -> server: a new token for a bound app, sent before the current one expires (the
/// server warns with [`Expiring`]). It must name the same user. Answered with [`Refreshed`],
/// or an `error` with [`Code::TOKEN_REFUSED`] (the old token still holds until it expires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refresh {
    pub app: String,
    pub token: String,
}

/// Server -> client: the reply to a `refresh`. The binding now holds until `expires_s`, the
/// new token's `exp` (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub app: String,
    pub expires_s: u64,
}

/// Server -> client, id 0: the token of binding `app` expires at `expires_s` (seconds since
/// the epoch). Without a `refresh` before then, the connection is closed with
/// [`Code::TOKEN_EXPIRED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiring {
    pub app: String,
    pub expires_s: u64,
}

/// Client -> server: leave a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub app: String,
    pub topic: String,
}

/// Server -> client: no more publications of the topic follow. The reply to an `unsubscribe`
/// carries its id; an unsubscription by the business arrives with id 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribed {
    pub app: String,
    pub topic: String,
}

/// Server -> client: a message published to a topic the connection is subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub app: String,
    pub topic: String,
    /// The publication's place in the topic's history (0 for a live-only, qos 0 publication).
    pub offset: u64,
    /// Unique message id (JSON: a decimal string).
    pub msg_id: u64,
    /// When the message was accepted, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub kind: PayloadKind,
    pub payload: Bytes,
}

/// Client -> server: data for the app's business backend, which the server forwards to the
/// app's webhook. Answered by one [`UpstreamReply`] or one `error` carrying the same request
/// id (unless the connection closes first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub app: String,
    /// What the data is, for the business to route on (`"chat"`, `"score"`, ...): 1 to 128
    /// bytes, no control characters.
    pub kind: String,
    pub payload_kind: PayloadKind,
    pub payload: Bytes,
}

/// Server -> client: the webhook's answer to an [`Upstream`], with its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamReply {
    pub app: String,
    /// The webhook's HTTP status (2xx: accepted; see the protocol, section 7.3).
    pub status: u16,
    /// How the webhook's response body reads (JSON when it said `application/json`).
    pub kind: PayloadKind,
    /// The webhook's response body (may be empty).
    pub payload: Bytes,
}

/// Server -> client: a request failed (request-error codes, 43xx); the connection stays open.
/// Closes are announced with [`Disconnect`], never with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: Code,
    pub message: String,
}

/// Either side: the connection is about to close, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: Code,
    /// Human-readable detail; never needed to decide what to do (the code's group says that).
    pub reason: String,
    /// Wait at least this long before reconnecting, in milliseconds; the server spreads these
    /// during a shutdown or drain so clients do not all come back in the same second.
    pub retry_after_ms: u32,
}

macro_rules! into_body {
    ($($ty:ident => $variant:ident),*) => {
        $(impl From<$ty> for Body {
            fn from(b: $ty) -> Body {
                Body::$variant(b)
            }
        })*
    };
}

into_body!(Connect => Connect, Connected => Connected, Push => Push, Ack => Ack, ErrorBody => Error, Disconnect => Disconnect, Sync => Sync, Synced => Synced, Subscribe => Subscribe, Subscribed => Subscribed, Unsubscribe => Unsubscribe, Unsubscribed => Unsubscribed, Publication => Publication, Upstream => Upstream, UpstreamReply => UpstreamReply, Refresh => Refresh, Refreshed => Refreshed, Expiring => Expiring);
