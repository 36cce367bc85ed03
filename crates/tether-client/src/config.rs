//! What a client needs to know before connecting: [`ClientConfig`], and the endpoint URL it
//! names.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::Binding;
use url::Url;

use crate::dispatch::Dispatcher;
use crate::{ClientError, TlsRoots, tls};

/// Default [`ClientConfig::max_frame`]: well above the server's default payload limit, small
/// enough that a broken server cannot make the client buffer much.
const DEFAULT_MAX_FRAME_FROM_SERVER: u32 = 1024 * 1024;

/// How frames travel in WebSocket messages (TCP always uses the binary encoding).
///
/// Whatever is chosen, the client decodes what the server sends by message type: binary
/// messages as binary frames, text messages as JSON frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WsEncoding {
    /// One binary frame (length prefix included) per binary message. Compact; the default.
    #[default]
    Binary,
    /// One JSON frame per text message. Readable in browser tools and proxy logs.
    Json,
}

/// When and how fast to reconnect after a connection is lost.
///
/// Delays use exponential backoff with full jitter: before attempt `n` (from 0) the client
/// sleeps a uniformly random time in `[0, min(max, initial * 2^n))`, and never less than the
/// `retry_after_ms` of the server's last `disconnect`. The attempt counter resets once a
/// connection has stayed up for at least `max`, so a server that accepts and then drops every
/// connection still sees the backoff grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Reconnect at all. When false, the first lost connection ends the event stream.
    pub enabled: bool,
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// The largest ceiling (the server's `retry_after_ms` may still ask for longer).
    pub max: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// What a [`TokenSource`] returns: a new token for the app, or why there is none.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where the client gets a new token for a binding, from the application (which usually asks
/// its business backend): called with the binding's app, it resolves to a token for the same
/// user, or to `Err` with a reason when none can be had.
///
/// The client calls it when the server warns that a token is expiring (then sends the token
/// in a `refresh`), and after the server closed a connection or refused a connect because a
/// token expired (4205; then reconnects with it). It runs beside the connection, never
/// blocking it, one call per app at a time, and is given 30 s (running out of time, or
/// panicking, counts as an `Err`). Retry transient failures inside it: an `Err` after a 4205
/// ends the client's event stream.
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn(&str) -> TokenFuture + Send + Sync>);

impl TokenSource {
    /// A token source from an async function of the app. The future must own what it uses:
    /// `TokenSource::new(|app| { let app = app.to_owned(); async move { fetch(&app).await } })`.
    pub fn new<F, Fut>(fetch: F) -> Self
    where
        F: Fn(&str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        TokenSource(Arc::new(move |app| Box::pin(fetch(app))))
    }

    /// Asks for a new token for `app`.
    pub(crate) fn fetch(&self, app: &str) -> TokenFuture {
        (self.0)(app)
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource(..)")
    }
}

/// Everything [`crate::Client::connect`] needs. Build with [`ClientConfig::new`] and
/// [`ClientConfig::bind`], then adjust the public fields.
///
/// `Debug` redacts tokens.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `tcp://host:port` or `ws://host[:port]/path` (the server's WebSocket path is `/ws`),
    /// or over TLS `tls://host:port` and `wss://host[:port]/path` (see
    /// [`ClientConfig::tls_roots`]). With [`ClientConfig::dispatch`], optional: the endpoint
    /// tried last when the dispatcher cannot be reached (empty: none).
    pub url: String,
    /// A dispatcher, `http://host:port/v1/dispatch` or `https://...`: when set, every connect
    /// and reconnect asks it which endpoints to try (see the crate docs), and its reconnect
    /// backoff replaces [`ClientConfig::reconnect`]'s delays.
    pub dispatch: Option<String>,
    /// A client-chosen id, stable across reconnects of the same install.
    pub device: String,
    /// (app, token) pairs sent in `connect`; at least one.
    pub bindings: Vec<Binding>,
    /// The heartbeat interval proposed to the server; the server's answer wins.
    pub heartbeat: Duration,
    /// The encoding on WebSocket connections.
    pub ws_encoding: WsEncoding,
    pub reconnect: ReconnectPolicy,
    /// The largest frame accepted from the server (length prefix excluded). Longer frames
    /// close the connection (and the client reconnects), so keep it above the server's
    /// largest push: its payload limit plus a few hundred bytes.
    pub max_frame: u32,
    /// Bounds the TCP connect, the WebSocket upgrade and the handshake together.
    pub connect_timeout: Duration,
    /// Capacity of the event queue between the connection task and [`crate::Client::recv`].
    /// When it is full the task stops reading the socket (see the crate docs).
    pub event_buffer: usize,
    /// Where new tokens come from when the old ones expire (see [`TokenSource`]). Without
    /// one, the application hears [`crate::Event::TokenExpiring`] and may call
    /// [`crate::Client::refresh`]; a connection closed for an expired token (4205) then ends
    /// the event stream.
    pub token_source: Option<TokenSource>,
    /// The authorities trusted on TLS connections (`tls://`, `wss://`, an `https://`
    /// dispatcher): the system's roots by default, or a CA file's certificates
    /// ([`ClientConfig::with_ca_file`]). The server's certificate must be for the URL's host
    /// (a DNS name or an IP address). A certificate not trusted fails the connection with
    /// [`ClientError::UntrustedCertificate`].
    pub tls_roots: TlsRoots,
}

impl ClientConfig {
    /// A config with defaults: 25 s heartbeat proposal, binary encoding, reconnect on, 1 MiB
    /// frames, 10 s connect timeout, 256 events buffered, and no bindings yet.
    pub fn new(url: impl Into<String>, device: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            dispatch: None,
            device: device.into(),
            bindings: Vec::new(),
            heartbeat: Duration::from_secs(25),
            ws_encoding: WsEncoding::Binary,
            reconnect: ReconnectPolicy::default(),
            max_frame: DEFAULT_MAX_FRAME_FROM_SERVER,
            connect_timeout: Duration::from_secs(10),
            event_buffer: 256,
            token_source: None,
            tls_roots: TlsRoots::system(),
        }
    }

    /// A config that asks the dispatcher at `dispatch` (`http://host:port/v1/dispatch`) where
    /// to connect, with the defaults of [`ClientConfig::new`] and no fixed URL. The first
    /// binding's app and token are what the dispatcher is asked with.
    pub fn dispatched(dispatch: impl Into<String>, device: impl Into<String>) -> Self {
        let mut config = Self::new(String::new(), device);
        config.dispatch = Some(dispatch.into());
        config
    }

    /// Adds a binding: the connection is authenticated for `app` as the user named by `token`.
    pub fn bind(mut self, app: impl Into<String>, token: impl Into<String>) -> Self {
        self.bindings.push(Binding {
            app: app.into(),
            token: token.into(),
            last_seq: None,
        });
        self
    }

    /// Adds a binding that resumes `app`'s inbox after `last_seq`, the last durable seq this
    /// install kept from an earlier run. Without it ([`ClientConfig::bind`]), the first
    /// connection resumes from the position the server holds for this device (its last ack).
    /// Reconnects of one [`crate::Client`] always resume after the last message it received.
    pub fn bind_at(
        mut self,
        app: impl Into<String>,
        token: impl Into<String>,
        last_seq: u64,
    ) -> Self {
        self.bindings.push(Binding {
            app: app.into(),
            token: token.into(),
            last_seq: Some(last_seq),
        });
        self
    }

    /// Sets the [`TokenSource`]: `fetch` is called with an app and resolves to a new token
    /// for it.
    pub fn with_token_source<F, Fut>(mut self, fetch: F) -> Self
    where
        F: Fn(&str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_source = Some(TokenSource::new(fetch));
        self
    }

    /// Trusts only the CA certificates of the PEM file at `path` on TLS connections, instead of
    /// the system's roots: for servers whose certificate a private CA issued, or a self-signed
    /// one. Reads the file now: one that cannot be read or holds no certificate is an error
    /// here, not at connect.
    pub fn with_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self, ClientError> {
        self.tls_roots = TlsRoots::from_pem_file(path)?;
        Ok(self)
    }

    /// Checks the config and parses its URLs, reporting the first problem.
    pub(crate) fn validate(&self) -> Result<Route, ClientError> {
        let route = match &self.dispatch {
            None => Route {
                fixed: Some(Endpoint::parse(&self.url)?),
                dispatch: None,
            },
            Some(dispatch) => Route {
                fixed: match self.url.as_str() {
                    "" => None,
                    url => Some(Endpoint::parse(url)?),
                },
                dispatch: Some(Dispatcher::parse_url(dispatch)?),
            },
        };
        let problem = if self.bindings.is_empty() {
            Some("at least one binding is needed")
        } else if self.heartbeat.is_zero() || self.heartbeat.as_millis() > u128::from(u32::MAX) {
            Some("heartbeat must be between 1 ms and u32::MAX ms")
        } else if self.max_frame < 64 {
            Some("max_frame must be at least 64 bytes")
        } else if self.connect_timeout.is_zero() {
            Some("connect_timeout must not be zero")
        } else if self.event_buffer == 0 {
            Some("event_buffer must not be zero")
        } else if self.reconnect.initial.is_zero() || self.reconnect.max < self.reconnect.initial {
            Some("reconnect needs 0 < initial <= max")
        } else {
            None
        };
        match problem {
            Some(p) => Err(ClientError::Config(p.to_owned())),
            None => Ok(route),
        }
    }
}

/// Where a validated config connects: a fixed endpoint, a dispatcher, or both (the endpoint
/// then comes last, for when the dispatcher cannot be reached).
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub fixed: Option<Endpoint>,
    pub dispatch: Option<Url>,
}

/// The transport named by a URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Tcp,
    Ws,
}

/// A parsed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub scheme: Scheme,
    /// Inside TLS: `tls://` (TCP frames) or `wss://`.
    pub tls: bool,
    /// Without IPv6 brackets (what `TcpStream::connect` wants).
    pub host: String,
    pub port: u16,
    /// For WebSocket: path and query, starting with `/`. Always `/` for TCP.
    pub path: String,
}

impl Endpoint {
    /// Parses `tcp://host:port` or `ws://host[:port][/path][?query]`, and their TLS forms
    /// `tls://host:port` and `wss://host[:port][/path][?query]`.
    ///
    /// Only what the client needs: no user info, no fragments, no percent-decoding; IPv6 hosts
    /// go in brackets.
    pub fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected tcp://host:port or ws://host:port/path"))?;
        let (scheme, tls) = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => (Scheme::Tcp, false),
            "tls" => (Scheme::Tcp, true),
            "ws" => (Scheme::Ws, false),
            "wss" => (Scheme::Ws, true),
            _ => return Err(bad("unknown scheme (expected tcp, tls, ws or wss)")),
        };
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if path.contains('#') {
            return Err(bad("fragments are not allowed"));
        }
        if authority.contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("whitespace or control characters"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad("IPv6 addresses must be in brackets"));
                }
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("port must be a number from 1 to 65535")),
                Ok(n) => n,
            },
            None if scheme == Scheme::Ws && tls => 443,
            None if scheme == Scheme::Ws => 80,
            None => return Err(bad("tcp:// and tls:// need a port")),
        };
        if tls && tls::server_name(host).is_err() {
            return Err(bad("the host is not a valid TLS server name"));
        }
        let path = match (scheme, path) {
            (Scheme::Tcp, "" | "/") => "/".to_owned(),
            (Scheme::Tcp, _) => return Err(bad("tcp:// and tls:// take no path")),
            (Scheme::Ws, "") => "/".to_owned(),
            (Scheme::Ws, p) if p.starts_with('?') => format!("/{p}"),
            (Scheme::Ws, p) => p.to_owned(),
        };
        Ok(Endpoint {
            scheme,
            tls,
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The URL for the WebSocket upgrade request (its `Host` header and path).
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            format!("{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Endpoint {
        match Endpoint::parse(url) {
            Ok(e) => e,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    fn reason(url: &str) -> String {
        match Endpoint::parse(url) {
            Err(ClientError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }

    #[test]
    fn tcp_urls() {
        let e = ok("tcp://127.0.0.1:7000");
        assert_eq!(e.scheme, Scheme::Tcp);
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 7000, "/")
        );
        assert_eq!(ok("TCP://example.com:1/").host, "example.com");
        let e = ok("tcp://[::1]:7000");
        assert_eq!((e.host.as_str(), e.port), ("::1", 7000));
    }

    #[test]
    fn ws_urls() {
        let e = ok("ws://localhost:8080/ws");
        assert_eq!(e.scheme, Scheme::Ws);
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("localhost", 8080, "/ws")
        );
        assert_eq!(e.ws_url(), "ws://localhost:8080/ws");
        let e = ok("ws://example.com");
        assert_eq!((e.port, e.path.as_str()), (80, "/"));
        assert_eq!(ok("ws://h:1?x=1").path, "/?x=1");
        assert_eq!(ok("ws://h:1/ws?device=a").path, "/ws?device=a");
        let e = ok("ws://[::1]:9/ws");
        assert_eq!(e.host, "::1");
        assert_eq!(e.ws_url(), "ws://[::1]:9/ws");
    }

    #[test]
    fn tls_urls() {
        let e = ok("tls://push.example.com:7443");
        assert_eq!((e.scheme, e.tls), (Scheme::Tcp, true));
        assert_eq!((e.host.as_str(), e.port), ("push.example.com", 7443));
        assert!(!ok("tcp://h:1").tls && !ok("ws://h:1/ws").tls);
        let e = ok("WSS://push.example.com/ws");
        assert_eq!((e.scheme, e.tls), (Scheme::Ws, true));
        assert_eq!((e.port, e.path.as_str()), (443, "/ws"));
        assert_eq!(e.ws_url(), "wss://push.example.com:443/ws");
        // IP addresses are names a certificate can be for.
        assert_eq!(ok("tls://127.0.0.1:7443").host, "127.0.0.1");
        assert_eq!(ok("wss://[::1]:9/ws").ws_url(), "wss://[::1]:9/ws");
    }

    #[test]
    fn a_ca_file_is_read_when_the_config_is_built() {
        let missing = ClientConfig::new("tls://h:1", "d").with_ca_file("/nonexistent/ca.pem");
        match missing {
            Err(ClientError::Config(why)) => assert!(why.contains("/nonexistent/ca.pem"), "{why}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn rejected_urls() {
        assert!(reason("localhost:7000").contains("expected"));
        assert!(reason("http://h:1").contains("scheme"));
        assert!(reason("tls://h").contains("port"));
        assert!(reason("tls://h:1/path").contains("path"));
        assert!(reason("tls://bad_host!:1").contains("TLS server name"));
        assert!(reason("quic://h:1").contains("scheme"));
        assert!(reason("tcp://h").contains("port"));
        assert!(reason("tcp://h:0").contains("port"));
        assert!(reason("tcp://h:70000").contains("port"));
        assert!(reason("tcp://h:x").contains("port"));
        assert!(reason("tcp://h:1/path").contains("path"));
        assert!(reason("tcp://:1").contains("host"));
        assert!(reason("tcp://::1:7000").contains("brackets"));
        assert!(reason("tcp://[::1:7000").contains("["));
        assert!(reason("tcp://[::1]x").contains("]"));
        assert!(reason("ws://u:p@h:1/ws").contains("user info"));
        assert!(reason("ws://h:1/ws#frag").contains("fragment"));
        assert!(reason("ws://h:1/w s").contains("whitespace"));
    }

    #[test]
    fn config_validation() {
        let good = ClientConfig::new("tcp://h:1", "d").bind("demo", "t");
        assert!(good.validate().is_ok());
        let no_bindings = ClientConfig::new("tcp://h:1", "d");
        assert!(matches!(
            no_bindings.validate(),
            Err(ClientError::Config(_))
        ));
        let mut zero_hb = good.clone();
        zero_hb.heartbeat = Duration::ZERO;
        assert!(matches!(zero_hb.validate(), Err(ClientError::Config(_))));
        let mut bad_backoff = good.clone();
        bad_backoff.reconnect.max = Duration::from_millis(1);
        assert!(matches!(
            bad_backoff.validate(),
            Err(ClientError::Config(_))
        ));
        let bad_url = ClientConfig::new("udp://h:1", "d").bind("demo", "t");
        assert!(matches!(
            bad_url.validate(),
            Err(ClientError::InvalidUrl { .. })
        ));
        let no_url = ClientConfig::new("", "d").bind("demo", "t");
        assert!(matches!(
            no_url.validate(),
            Err(ClientError::InvalidUrl { .. })
        ));
        let dispatched =
            ClientConfig::dispatched("http://h:7480/v1/dispatch", "d").bind("demo", "t");
        let route = dispatched.validate().unwrap();
        assert!(route.fixed.is_none() && route.dispatch.is_some());
        let mut with_fallback = dispatched.clone();
        with_fallback.url = "tcp://h:7400".into();
        assert!(with_fallback.validate().unwrap().fixed.is_some());
        let mut https = dispatched.clone();
        https.dispatch = Some("https://h/v1/dispatch".into());
        assert!(https.validate().is_ok());
        let mut bad_dispatch = dispatched;
        bad_dispatch.dispatch = Some("tcp://h:1".into());
        assert!(matches!(
            bad_dispatch.validate(),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn debug_redacts_tokens() {
        let c = ClientConfig::new("tcp://h:1", "d")
            .bind("demo", "secret-token")
            .with_token_source(|_| async { Ok("fresh-secret".to_owned()) });
        let debug = format!("{c:?}");
        assert!(!debug.contains("secret-token"));
        assert!(debug.contains("TokenSource(..)"), "{debug}");
    }
}
