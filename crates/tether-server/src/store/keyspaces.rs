//! The database's handles, which the writer and the readers share, and the counters the
//! writer keeps for the handle's stats.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use tether_core::StoreError;

/// Counters and flags shared with the store handle, for [`super::EmbeddedStore::stats`] and
/// its health.
#[derive(Debug, Default)]
pub struct Counters {
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub appends: AtomicU64,
    pub publishes: AtomicU64,
    /// Set while the database has failed a write and waits to be reopened.
    pub failed: AtomicBool,
    pub reopens: AtomicU64,
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
    pub sessions: Keyspace,
}

impl Keyspaces {
    /// Opens (or creates) the database in `dir`. Blocks while fjall replays its journal.
    /// Opens the database in `dir`, keeping at most `open_files` table files open.
    pub fn open(dir: &Path, open_files: usize) -> Result<Keyspaces, fjall::Error> {
        let db = Database::builder(dir)
            .max_cached_files(Some(open_files))
            .open()?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Keyspaces {
            messages: keyspace("messages")?,
            inboxes: keyspace("inboxes")?,
            cursors: keyspace("cursors")?,
            idempotency: keyspace("idempotency")?,
            subscriptions: keyspace("subscriptions")?,
            sessions: keyspace("sessions")?,
            db: db.clone(),
        })
    }

    /// Whether fjall refuses every write from now on. It poisons a database after a journal
    /// write, an fsync, a flush or a compaction failed (a full disk, an I/O error), because it
    /// can no longer tell what is on disk; only a new [`Database`] over the same directory,
    /// whose recovery cuts the journal back to its last whole batch, writes again.
    pub fn poisoned(&self) -> bool {
        // Checks the flag before anything else; when not poisoned, flushes nothing: every
        // commit persisted its batch at least to the operating system already.
        matches!(
            self.db.persist(fjall::PersistMode::Buffer),
            Err(fjall::Error::Poisoned)
        )
    }
}

/// The engine's error as the store reports it. The text goes into logs, not to clients: the
/// API answers store errors with a message of its own (see `api::error`).
pub fn unavailable(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}
