//! The database's handles, which the writer and the readers share, and the counters the
//! writer keeps for the handle's stats.

use std::sync::atomic::AtomicU64;

use fjall::{Database, Keyspace};
use tether_core::StoreError;

/// Counters shared with the store handle, for [`super::EmbeddedStore::stats`].
#[derive(Debug, Default)]
pub struct Counters {
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub appends: AtomicU64,
    pub publishes: AtomicU64,
}

/// The fjall handles.
#[derive(Clone)]
pub struct Keyspaces {
    pub db: Database,
    pub messages: Keyspace,
    pub inboxes: Keyspace,
    pub cursors: Keyspace,
    pub idempotency: Keyspace,
    pub subscriptions: Keyspace,
}

pub fn unavailable(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}
