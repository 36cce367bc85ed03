//! Numbered close and error codes.
//!
//! A code is a `u16` whose hundred tells the client what to do, so that a client meeting a code
//! newer than itself still behaves correctly:
//!
//! | range     | group                | client behaviour                                         |
//! |-----------|----------------------|----------------------------------------------------------|
//! | 4000-4099 | reconnect            | reconnect to the same endpoint after backoff             |
//! | 4100-4199 | reconnect elsewhere  | ask the dispatcher again, then reconnect after backoff   |
//! | 4200-4299 | do not reconnect     | stop; a human or new credentials are needed              |
//! | 4300-4399 | request error        | sent in an `error` frame; the connection stays open      |
//!
//! The numbers are valid WebSocket close codes (4000-4999 is reserved for applications), so a
//! WebSocket close frame carries the same code as the `disconnect` frame before it.
//!
//! Four codes of RFC 6455 (1002, 1003, 1007, 1009) close a WebSocket connection whose messages
//! WebSocket itself refuses, below tether: they come in a close frame alone, never in a
//! `disconnect` (see [`Code::is_websocket`]).

use std::fmt;

/// A close or error code. Unknown numbers are kept as they are; [`Code::group`] still works.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u16);

/// What a client should do after a `disconnect` with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Reconnect to the same endpoint, with backoff.
    Reconnect,
    /// Ask the dispatcher for endpoints again, then reconnect, with backoff.
    ReconnectElsewhere,
    /// Do not reconnect automatically.
    DoNotReconnect,
    /// A request failed; the connection stays open.
    RequestError,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $num:literal, $label:literal;)*) => {
        impl Code {
            $($(#[$doc])* pub const $name: Code = Code($num);)*

            /// Every code this version of the protocol defines.
            pub const ALL: &'static [Code] = &[$(Code::$name),*];

            /// A short stable name (`"slow"`, `"bad_token"`, ...), used in metrics labels and
            /// JSON reasons. Unknown codes are `"unknown"`.
            pub fn label(self) -> &'static str {
                match self.0 {
                    $($num => $label,)*
                    _ => "unknown",
                }
            }
        }
    };
}

codes! {
    /// WebSocket (RFC 6455, 7.4.1): a frame WebSocket forbids (unmasked, a bad opcode, a
    /// fragmented control frame, a continuation with no message, ...).
    WS_PROTOCOL = 1002, "ws_protocol";
    /// WebSocket (RFC 6455, 7.4.1): a message of a type the connection does not take (a
    /// binary message on a connection that speaks JSON, or text on one that speaks binary).
    WS_UNSUPPORTED_DATA = 1003, "ws_unsupported_data";
    /// WebSocket (RFC 6455, 7.4.1): a text message that is not UTF-8.
    WS_INVALID_UTF8 = 1007, "ws_invalid_utf8";
    /// WebSocket (RFC 6455, 7.4.1): a message longer than the limit.
    WS_TOO_BIG = 1009, "ws_too_big";
    /// Internal server error while serving this connection.
    INTERNAL = 4000, "internal";
    /// The connection's outbound queue passed its byte limit: the client read too slowly.
    SLOW = 4001, "slow";
    /// No frame arrived within the negotiated number of heartbeat intervals.
    HEARTBEAT_TIMEOUT = 4002, "heartbeat_timeout";
    /// No `connect` frame arrived within the handshake timeout.
    HANDSHAKE_TIMEOUT = 4003, "handshake_timeout";
    /// Too many connections from this IP address; retry later.
    IP_LIMIT = 4004, "ip_limit";
    /// The server is shutting down.
    SHUTDOWN = 4100, "shutdown";
    /// The node is draining; move to another node.
    DRAIN = 4101, "drain";
    /// The node holds as many connections as it is allowed to.
    CONNECTION_LIMIT = 4102, "connection_limit";
    /// A malformed frame.
    PROTOCOL = 4200, "protocol";
    /// A frame longer than the negotiated maximum.
    FRAME_TOO_LARGE = 4201, "frame_too_large";
    /// The client speaks a protocol version this server does not.
    UNSUPPORTED_VERSION = 4202, "unsupported_version";
    /// An op this server does not know.
    UNKNOWN_OP = 4203, "unknown_op";
    /// A token whose signature or claims do not verify.
    BAD_TOKEN = 4204, "bad_token";
    /// A token past its `exp`.
    TOKEN_EXPIRED = 4205, "token_expired";
    /// A binding names an app this server does not know.
    UNKNOWN_APP = 4206, "unknown_app";
    /// The business kicked this user.
    KICKED = 4207, "kicked";
    /// The first frame was not `connect`, or `connect` came twice.
    EXPECTED_CONNECT = 4208, "expected_connect";
    /// More bindings in one `connect` than the server allows, or none.
    BAD_BINDINGS = 4209, "bad_bindings";
    /// A binding's app was removed from the server's configuration by a reload.
    APP_REMOVED = 4210, "app_removed";
    /// A newer connection of the same MQTT client (client id, user and app) took this one's
    /// place: MQTT's session takeover (docs/mqtt.md 4.4). Reconnecting would take it back.
    TAKEN_OVER = 4211, "taken_over";
    /// A request that is well-formed but not valid here (e.g. an ack for an app not bound).
    BAD_REQUEST = 4300, "bad_request";
    /// The request could not be served right now (the store is unavailable, or the server is
    /// busy); retry it later.
    UNAVAILABLE = 4301, "unavailable";
    /// A per-connection limit was reached (e.g. topics per connection).
    LIMIT = 4302, "limit";
    /// The app has no webhook configured: it takes no upstream data.
    NO_WEBHOOK = 4303, "no_webhook";
    /// The app's webhook could not be reached (network errors or timeouts, retries
    /// exhausted), or answered something unusable; the data may or may not have reached it.
    UPSTREAM_FAILED = 4304, "upstream_failed";
    /// The app's topic rules do not let this user subscribe to the topic.
    FORBIDDEN = 4305, "forbidden";
    /// A `refresh` whose token does not verify, has expired, or names another user; the
    /// binding keeps its current token until that expires.
    TOKEN_REFUSED = 4306, "token_refused";
}

impl Code {
    /// The group this code belongs to, derived from its number.
    pub fn group(self) -> Group {
        match self.0 {
            4100..=4199 => Group::ReconnectElsewhere,
            4200..=4299 => Group::DoNotReconnect,
            4300..=4399 => Group::RequestError,
            // Anything else, including unknown ranges, is treated as transient.
            _ => Group::Reconnect,
        }
    }

    /// Whether this is a WebSocket close code (below 4000) rather than one of tether's: it
    /// closes a WebSocket connection with a close frame and no `disconnect` before it.
    pub fn is_websocket(self) -> bool {
        self.0 < 4000
    }

    /// Whether a client should reconnect (possibly elsewhere) after this code.
    pub fn should_reconnect(self) -> bool {
        matches!(self.group(), Group::Reconnect | Group::ReconnectElsewhere)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({} {})", self.0, self.label())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_ranges() {
        assert_eq!(Code::SLOW.group(), Group::Reconnect);
        assert_eq!(Code::SHUTDOWN.group(), Group::ReconnectElsewhere);
        assert_eq!(Code::BAD_TOKEN.group(), Group::DoNotReconnect);
        assert_eq!(Code::BAD_REQUEST.group(), Group::RequestError);
        assert!(Code(4150).should_reconnect());
        assert!(!Code(4250).should_reconnect());
    }

    #[test]
    fn labels_are_unique() {
        let mut labels: Vec<_> = Code::ALL.iter().map(|c| c.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Code::ALL.len());
    }
}
