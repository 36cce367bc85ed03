//! The Rust client SDK for tether: connect to a gateway over TCP or WebSocket, plain or inside
//! TLS (`tls://`, `wss://`), receive pushes, ack them, follow topics, and stay connected
//! (heartbeats, reconnect with backoff, topics resubscribed without losing what their history
//! holds).
//!
//! ```no_run
//! use tether_client::{Client, ClientConfig, Event, Recovery};
//!
//! # async fn example() -> Result<(), tether_client::ClientError> {
//! let config = ClientConfig::new("tcp://127.0.0.1:7000", "my-device")
//!     .bind("demo", "<token>")
//!     // Called when a token is about to expire (or has): a new one, from the backend.
//!     .with_token_source(|app| {
//!         let app = app.to_owned();
//!         async move { Ok(format!("<a new token for {app}>")) }
//!     });
//! let mut client = Client::connect(config).await?; // fails on e.g. a bad token (code 4204)
//! client.subscribe("demo", "room-1")?; // kept, and resubscribed after every reconnect
//! while let Some(event) = client.recv().await {
//!     match event {
//!         Event::Message(push) => {
//!             println!("{} bytes for {}", push.payload.len(), push.app);
//!             client.ack(&push.app, push.seq)?; // cumulative; ignored for seq 0
//!         }
//!         Event::Publication(p) => {
//!             println!("{}/{} #{}: {} bytes", p.app, p.topic, p.offset, p.payload.len());
//!         }
//!         Event::Subscribed { topic, recovery: Recovery::TooOld, since, offset, .. } => {
//!             // Publications after `since` up to `offset` are gone from the history.
//!             eprintln!("{topic}: refetch {since:?}..={offset} from the backend");
//!         }
//!         Event::SubscribeFailed { topic, code, retrying: false, .. } => {
//!             eprintln!("cannot subscribe to {topic}: {code}"); // e.g. 4305 forbidden
//!         }
//!         Event::RefreshFailed { app, message, .. } => {
//!             eprintln!("{app}: no new token: {message}");
//!         }
//!         Event::Disconnected { reason, reconnecting, .. } => {
//!             eprintln!("disconnected: {reason} (reconnecting: {reconnecting})");
//!         }
//!         _ => {}
//!     }
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `config`: [`ClientConfig`], [`ReconnectPolicy`], [`WsEncoding`], [`TokenSource`], and parsing of
//!   `tcp://` / `tls://` / `ws://` / `wss://` URLs.
//! - `client`: [`Client`], the user's handle, and the [`Event`]s it yields.
//! - `task`: the one background task per client that owns the socket: handshake, heartbeats,
//!   acks, topic requests, reconnect loop.
//! - `topics`: the subscription table (no I/O): the last offset handed over per topic, what to
//!   send after a reconnect (with its subscription token), which publications are duplicates.
//! - `refresh`: the bindings' tokens (no I/O): which token a connect sends, when to ask the
//!   [`TokenSource`], which `refresh` answers what, when to retry.
//! - `transport`: frames over a socket (TCP stream of binary frames; WebSocket with binary or
//!   JSON messages).
//! - `net`: opening a socket, plain or TLS, for the gateways and the dispatcher alike.
//! - `tls`: [`TlsRoots`] (the system's, or a CA file's), the client's one rustls config, and
//!   the TLS handshake with its refusals ([`ClientError::UntrustedCertificate`]).
//! - `upstream`: upstream calls waiting for the connection and sent ones waiting for their
//!   answer, paired by request id (no I/O).
//! - `backoff`: reconnect delays (exponential, full jitter, server's `retry_after_ms` as a
//!   floor).
//! - `dispatch`: asking a dispatcher which endpoints to try (one HTTP/1.1 request on a socket
//!   from `net`), and what to report as failed.
//! - `error`: [`ClientError`], the one error type.
//!
//! # Behaviour
//!
//! - **Handshake**: `connect` (protocol version, device, heartbeat proposal, bindings) must be
//!   answered by `connected`; the server's heartbeat interval wins. [`Client::connect`] returns
//!   after the first handshake, or with its error (no retry before a first success).
//! - **Heartbeats**: the client sends a frame at least every negotiated interval (a `ping` when
//!   idle) and drops the connection when nothing arrives within two intervals of a ping.
//! - **Reconnect**: after I/O and TLS errors, heartbeat timeouts and codes 40xx/41xx, with backoff
//!   (see [`ReconnectPolicy`]); never after 42xx codes, which end the event stream with a
//!   final [`Event::Disconnected`] `{ reconnecting: false }`, except 4205 (`token_expired`)
//!   with a token source (see Tokens). Without a dispatcher, 41xx
//!   ("reconnect elsewhere") reconnects to the same URL.
//! - **TLS**: `tls://` (binary frames) and `wss://` run inside TLS (rustls with ring, TLS 1.2
//!   and 1.3), and so does the request to an `https://` dispatcher. The server's certificate
//!   must be for the URL's host (a DNS name or an IP address) and issued by a trusted
//!   authority: the system's roots, or only a CA file's ([`ClientConfig::with_ca_file`]). A
//!   refused certificate is [`ClientError::UntrustedCertificate`] with rustls' reason; like
//!   other connect failures, a reconnect that meets one backs off and tries again, and a
//!   dispatcher's next endpoint is tried.
//! - **Dispatcher** ([`ClientConfig::dispatch`], e.g. [`ClientConfig::dispatched`]): every
//!   connect and reconnect asks `GET /v1/dispatch` (with the first binding's app and token)
//!   for the endpoints to try, then tries them in order, each within `connect_timeout`, until
//!   one completes the handshake. Endpoints that failed since the last connection (refused,
//!   timed out, or refused with a 41xx code), and the endpoint of a connection closed with a
//!   41xx code, are reported in `failed=` so the answer leaves them out; a connection that
//!   comes up clears the list. The answer's reconnect backoff replaces
//!   [`ClientConfig::reconnect`]'s delays. When the dispatcher cannot be reached, the client
//!   tries the endpoints it gave last, then [`ClientConfig::url`] if set; when it answers that
//!   no node can take the client (`no_endpoints`), the client backs off and asks again. A 4xx
//!   answer (bad or expired token, unknown app) ends [`crate::Client::connect`] with
//!   [`ClientError::Dispatch`], and a reconnect loop with a final `Disconnected`.
//! - **Backpressure**: events wait in a bounded queue. When the application does not call
//!   [`Client::recv`], the task stops reading the socket (heartbeats continue); the server's
//!   per-connection queue then fills and its slow-consumer protection disconnects the client
//!   (code 4001, "slow"), which reconnects and gets unacked durable messages again. Nothing in the
//!   client grows without bound: acks are coalesced to one pending seq per bound app, topic
//!   calls to one pending call per topic.
//! - **Topics**: [`Client::subscribe`] and [`Client::unsubscribe`] do not wait; the server
//!   answers with [`Event::Subscribed`] / [`Event::Unsubscribed`] or
//!   [`Event::SubscribeFailed`], and [`Event::Publication`]s follow. The client remembers each
//!   topic and the last offset it handed over. On every reconnect it subscribes again with
//!   `since` = that offset (live-only when it has none), so the server resends what the topic's
//!   history still holds, in order, and says [`Recovery::TooOld`] when it no longer does; a
//!   publication at or below that offset (a resend around a reconnect) is dropped, except
//!   offset 0 (live-only). Subscriptions the business made through the API (`server_side`)
//!   are re-applied by the server at connect, live-only: the client does not subscribe to
//!   them again itself, unless the server's re-application starts after the last offset it
//!   handed over, in which case it sends one subscribe with `since` to recover the gap (the
//!   application sees only that one's answer). A subscribe refused with 4301 (busy) is retried
//!   after a backoff delay and at the next reconnect; other refusals (4305 included) forget
//!   the topic.
//! - **Tokens** (`docs/protocol.md`, section 7.4): the server sends `expiring` ahead of a
//!   binding token's `exp`. With a [`TokenSource`] ([`ClientConfig::with_token_source`]) the
//!   client asks it for a new token beside the connection (it keeps reading and
//!   heartbeating meanwhile) and sends it in a `refresh`; the server's `refreshed` makes it
//!   the binding's token for every later connect ([`Event::TokenRefreshed`]). A refusal (4306)
//!   or a failed fetch is [`Event::RefreshFailed`]; the client asks the source once more,
//!   halfway to the expiry, when at least 2 s remain. When a connection is closed, or a
//!   (re)connect refused, with 4205, the client fetches a new token for every binding and
//!   reconnects, unless the server refused the source's last token on that connection (then,
//!   or when the source fails, the stream ends). Without a token source the application gets
//!   [`Event::TokenExpiring`] and calls [`Client::refresh`]; a 4205 ends the stream.
//! - **Permissions**: the app's topic rules decide who may subscribe; a refusal is
//!   [`Event::SubscribeFailed`] with 4305 (`forbidden`), and the client forgets the topic.
//!   [`Client::subscribe_with_token`] carries a subscription token for topics whose rule asks
//!   for one; the client keeps it with the topic and sends it with every resubscribe.
//! - **Upstream**: [`Client::upstream`] sends data to the app's webhook and resolves to its
//!   answer (status and body), paired by request id; at most [`MAX_UPSTREAMS_IN_FLIGHT`] at
//!   once. Calls made while disconnected are sent after the reconnect; calls sent on a
//!   connection that is lost fail with [`ClientError::ConnectionLost`] (never resent by the
//!   client: only the application knows whether repeating one is safe).

mod backoff;
mod client;
mod config;
mod dispatch;
mod error;
mod net;
mod refresh;
mod task;
mod tls;
mod topics;
mod transport;
mod upstream;

pub use client::{CLOSE_TIMEOUT, Client, Event};
pub use config::{ClientConfig, ReconnectPolicy, TokenFuture, TokenSource, WsEncoding};
pub use error::ClientError;
pub use tether_proto::{
    Binding, Bound, Code, Connected, Group, PayloadKind, Publication, Push, Recovery, UpstreamReply,
};
pub use tls::TlsRoots;
pub use upstream::MAX_IN_FLIGHT as MAX_UPSTREAMS_IN_FLIGHT;
