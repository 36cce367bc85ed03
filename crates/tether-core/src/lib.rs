//! tether's domain model and the seams between roles.
//!
//! # Layout
//!
//! - [`id`]: newtype ids (`AppId`, `UserId`, `DeviceId`, `ConnId`, `NodeId`, `MessageId`) and
//!   the message id generator.
//! - [`auth`]: client tokens (JWT HS256): minting and verification.
//! - [`message`]: [`Outgoing`], a message encoded at most once per encoding and shared by every
//!   recipient.
//! - [`registry`]: the registry seam, [`Registry`], made of [`Sessions`] (who is connected
//!   where) and [`Membership`] (which nodes are up, where clients reach them, whether they
//!   drain); and its in-memory backend.
//! - [`router`]: the router seam (carry a delivery to the node holding a connection) and its
//!   in-memory, single-node backend.
//! - [`store`]: the store seam, [`Store`], made of [`Inboxes`] (durable inboxes, idempotency
//!   keys), [`Cursors`] (device cursors, the poison guard's count), [`TopicHistory`] and
//!   [`Subscriptions`] (server-side subscriptions).
//!   - [`store::memory`]: [`MemoryStore`], its in-memory backend.
//! - `contract` (the `testing` feature, for tests): the contract test suites every backend of
//!   a seam must pass.

pub mod auth;
#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod id;
pub mod message;
pub mod registry;
pub mod router;
pub mod store;

pub use id::*;
pub use message::Outgoing;
pub use registry::{
    Membership, MemoryRegistry, NodeInfo, Registry, RegistryError, Session, Sessions, Transport,
};
pub use router::{LocalSink, MemoryRouter, NodeMessage, Router, RouterError};
pub use store::{
    Cursors, Inboxes, MemoryStore, Retention, SavedSessions, Store, StoreError, SubscriptionError,
    Subscriptions, TopicHistory,
};

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
