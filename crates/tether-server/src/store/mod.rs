//! The embedded durable store: inboxes, cursors and idempotency keys in a fjall database on
//! local disk (`<data_dir>/store`), the backend of `store.backend = "embedded"`.
//!
//! # Layout
//!
//! - [`embedded`]: [`EmbeddedStore`], the [`tether_core::Store`] handle: queues writes, runs
//!   reads on the blocking pool, opens and closes.
//! - `writer`: the one thread that writes: batches, seq assignment, the inbox cap, expiry at
//!   the front of inboxes, idempotency, group commit, interval fsyncs.
//! - `expiry`: expired data leaving the disk: from the front of inboxes a batch writes to, and
//!   the sweep the writer runs when idle.
//! - `codec`: keys and values as bytes (versioned; a damaged value is `Corrupt`, not a panic).
//!
//! # On disk
//!
//! Four fjall keyspaces, written together in atomic batches:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `messages` | `app 0x00 user 0x00 seq(u64 BE)` | id, created, expires, kind, payload |
//! | `inboxes` | `app 0x00 user 0x00` | head (last seq assigned), first (lowest held) |
//! | `cursors` | `app 0x00 user 0x00 device` | acked, attempt seq, attempts |
//! | `idempotency` | `app 0x00 key` | expires, message id, created, (user, seq) list |
//!
//! The head in `inboxes` outlives the messages, so seqs are never reused: not after every
//! message expired or was trimmed, not across restarts.

mod codec;
pub mod embedded;
mod expiry;
mod writer;

pub use embedded::{EmbeddedOptions, EmbeddedStore, StoreStats, Swept};
