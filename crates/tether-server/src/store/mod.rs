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
//! - `inbox`: where an inbox stands (head, first), recovered from its record and its message
//!   keys; when the record must be written.
//! - `codec`: keys and values as bytes (versioned; a damaged value is `Corrupt`, not a panic).
//!
//! # On disk
//!
//! Four fjall keyspaces, written together in atomic batches:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `messages` | `app 0x00 user 0x00 seq(u64 BE)` | id, created, expires, kind, payload |
//! | `inboxes` | `app 0x00 user 0x00` | lower bounds of head (last seq assigned) and first |
//! | `cursors` | `app 0x00 user 0x00 device` | acked, attempt seq, attempts |
//! | `idempotency` | `app 0x00 key` | expires, message id, created, (user, seq) list |
//!
//! An append writes only its message keys (one per user, all sharing one encoded value). An
//! inbox's head is the larger of its record's head and the seq of its last message key; its
//! first held seq is its first message key at or above the record's `first`. The record is
//! written once per inbox, and again only when the message keys would stop telling the truth:
//! when the sweep deletes the newest message of an inbox (so the head outlives the messages,
//! and seqs are never reused: not after every message expired or was trimmed, not across
//! restarts), and when the cap pushes out more held messages than one batch deletes. Records
//! are version 2 (`codec::META_VERSION`); version 1 records, which older code rewrote with
//! every batch, read as they are, and older code refuses version 2 as corrupt.

mod codec;
pub mod embedded;
mod expiry;
mod inbox;
mod writer;

pub use embedded::{EmbeddedOptions, EmbeddedStore, StoreStats, Swept};
