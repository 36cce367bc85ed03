//! Contract test suites: every backend of a seam must pass the same checks.
//!
//! Backends call these from their own tests (`registry_contract(&MyRegistry::new(..)).await`).
//! They panic on the first broken guarantee, with a message naming it. They are built for this
//! crate's tests and with the `testing` feature, which a crate enables in its
//! dev-dependencies only, so that no normal build carries them.
//!
//! # Layout
//!
//! - this module: [`store_contract`], which runs the store parts below in order on one
//!   backend.
//!   - `inboxes`, `cursors`, `topic_history`, `subscriptions`, `saved_sessions`: one part of
//!     the store seam each; `store`: what they share ([`CONTRACT_INBOX_CAP`], [`CONTRACT_TOPIC_HISTORY`],
//!     message builders).
//! - `registry`: [`registry_contract`], sessions and node membership.
//! - `router`: [`router_contract`] and [`remote_router_contract`], and [`numbered_push`].
//! - `sink`: [`RecordingSink`], and every kind of message ([`node_messages`]) with the
//!   effects it shows ([`NODE_MESSAGE_EFFECTS`]).

mod cursors;
mod inboxes;
mod registry;
mod router;
mod saved_sessions;
mod sink;
mod store;
mod subscriptions;
mod topic_history;

pub use registry::registry_contract;
pub use router::{numbered_push, remote_router_contract, router_contract};
pub use sink::{NODE_MESSAGE_EFFECTS, RecordingSink, node_messages};
pub use store::{CONTRACT_INBOX_CAP, CONTRACT_TOPIC_HISTORY};

use crate::Store;

/// The store contract. Build the backend with an inbox cap of [`CONTRACT_INBOX_CAP`] and a
/// topic history of [`CONTRACT_TOPIC_HISTORY`]; it uses apps named `contract-*`, so run it on
/// an empty backend.
pub async fn store_contract(store: &dyn Store) {
    inboxes::contract(store).await;
    inboxes::many_contract(store).await;
    cursors::contract(store).await;
    topic_history::contract(store).await;
    subscriptions::contract(store).await;
    saved_sessions::contract(store).await;
}
