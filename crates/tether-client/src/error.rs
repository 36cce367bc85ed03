//! [`ClientError`], the one error type of the SDK.

use std::time::Duration;

use tether_proto::{Code, DecodeError};

/// Why connecting, or a call on a [`crate::Client`], failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not one this client can connect to.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A config field is out of range.
    #[error("invalid client config: {0}")]
    Config(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket upgrade or a WebSocket read/write failed.
    #[error("WebSocket error: {0}")]
    WebSocket(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The server's TLS certificate was refused, with rustls' reason: not issued by a trusted
    /// authority (see [`crate::TlsRoots`]), for another name than the URL's host, expired, ...
    /// Retryable like other connect failures (a server's certificate can be fixed without the
    /// client changing), so the reconnect loop backs off and tries again, and a dispatcher's
    /// next endpoint is tried.
    #[error("certificate not trusted: {0}")]
    UntrustedCertificate(String),
    /// The TLS handshake failed for another reason: nothing speaks TLS on that port, no
    /// protocol version or cipher suite in common, an alert from the server, ...
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// Connecting and the handshake together took longer than `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The server sent bytes that do not decode.
    #[error("undecodable frame from the server: {0}")]
    Decode(#[from] DecodeError),
    /// The server sent a valid frame where it makes no sense.
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The server closed the connection before answering `connect`, without a code.
    #[error("the server closed the connection during the handshake")]
    ClosedDuringHandshake,
    /// The server refused the connection with a code (a `disconnect` or an `error` frame, or a
    /// WebSocket close code). [`Code::should_reconnect`] tells whether trying again can help.
    #[error("the server refused the connection: {code}: {reason}")]
    Rejected {
        code: Code,
        reason: String,
        /// The server's `retry_after_ms` (zero when it gave none).
        retry_after: Duration,
    },
    /// [`crate::Client::ack`] or a topic call for an app that is not among the config's
    /// bindings.
    #[error("app {0:?} is not bound on this client")]
    NotBound(String),
    /// A topic name the protocol does not allow (1 to 128 bytes, no control characters).
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    /// The client was closed, or its connection ended for good.
    #[error("the client is closed")]
    Closed,
    /// An upstream kind the protocol does not allow (1 to 128 bytes, no control characters).
    #[error("invalid upstream kind {kind:?}: {reason}")]
    InvalidKind { kind: String, reason: &'static str },
    /// The server answered an upstream with an error (43xx): 4301 busy and 4302 too many in
    /// flight are worth retrying later, 4304 says the webhook could not be reached.
    #[error("upstream refused: {code}: {message}")]
    Upstream { code: Code, message: String },
    /// The connection ended before the upstream's answer arrived: the webhook may or may not
    /// have received it.
    #[error("the connection ended before the answer: {0}")]
    ConnectionLost(String),
    /// The dispatcher could not be asked, or did not answer with endpoints. `status` is the
    /// HTTP status (`None`: it could not be reached); `code` its error code (`no_endpoints`:
    /// no node can take the client now, `bad_token`, `token_expired`, ...).
    #[error("dispatcher: {code} ({}): {message}", .status.map_or("unreachable".to_owned(), |s| s.to_string()))]
    Dispatch {
        status: Option<u16>,
        code: String,
        message: String,
    },
}

impl ClientError {
    /// The protocol code, when the server gave one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rejected { code, .. } | ClientError::Upstream { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again later could succeed: transport trouble and codes of the reconnect
    /// groups, not bad config or do-not-reconnect codes.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::InvalidUrl { .. }
            | ClientError::Config(_)
            | ClientError::NotBound(_)
            | ClientError::InvalidTopic { .. }
            | ClientError::InvalidKind { .. }
            | ClientError::Closed => false,
            ClientError::Rejected { code, .. } => code.should_reconnect(),
            ClientError::Upstream { code, .. } => {
                matches!(
                    *code,
                    Code::UNAVAILABLE | Code::LIMIT | Code::UPSTREAM_FAILED
                )
            }
            // A 4xx is about this client (its token, its app): asking again cannot help.
            ClientError::Dispatch {
                status: Some(status),
                ..
            } => !(400..500).contains(status) || matches!(status, 408 | 429),
            _ => true,
        }
    }

    /// The server's requested minimum wait before reconnecting.
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            ClientError::Rejected { retry_after, .. } => *retry_after,
            _ => Duration::ZERO,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        match e {
            tokio_tungstenite::tungstenite::Error::Io(io) => ClientError::Io(io),
            other => ClientError::WebSocket(Box::new(other)),
        }
    }
}
