//! What a client session is, whatever carries it: the rules that every transport shares, as
//! plain code that can be tested without a socket.
//!
//! - [`handshake`]: the checks of a `connect` (version, device, bindings, tokens, heartbeat).
//! - [`ops`]: what each frame of a connected client asks for ([`ops::Step`]).
//! - [`permissions`]: an app's topic rules; [`ask`]: the question a `webhook` rule puts to
//!   the app's business, as a seam ([`ask::Asker`]).
//! - [`inbox`]: durable delivery on a connection: each binding's order, backlog, acks and
//!   `sync`, as state and rules over the connection's outbound [`inbox::Queue`].
//! - [`work`]: the store operations durable delivery runs (backlog pages with the poison
//!   guard, ack writes, `sync` reads).
//!
//! The gateway carries these out for its connections (`crate::gateway`); a transport only
//! turns bytes into frames and back (`crate::transport`).

pub mod access;
pub mod ask;
pub mod handshake;
pub mod inbox;
pub mod ops;
pub mod permissions;
pub mod work;
