//! The embedded durable store: inboxes, cursors, idempotency keys, topic histories and
//! server-side subscriptions in a fjall database on local disk (`<data_dir>/store`), the
//! backend of `store.backend = "embedded"`.
//!
//! # Layout
//!
//! - [`embedded`]: [`EmbeddedStore`], the [`tether_core::Store`] handle: queues writes, runs
//!   reads (small ones on the calling task, large ones on the blocking pool), opens and
//!   closes.
//! - `options`: [`EmbeddedOptions`], how the store keeps and writes its data.
//! - `request`: what callers ask of the writer, and how it answers.
//! - `acks`: acks accepted but not yet written, which cursor reads see; the writer takes them
//!   into its next batch.
//! - `writer`: the one thread that writes: batches, seq assignment, the inbox cap, expiry at
//!   the front of inboxes, idempotency, subscriptions and their count, group commit, interval
//!   fsyncs; and when fjall fails, refusing writes until there is room, then reopening.
//! - `keyspaces`: the database's handles, shared by the writer and the readers; whether fjall
//!   poisoned the database.
//! - `recovery`: after fjall failed a write, refusing writes until the disk has room, then
//!   reopening the database in place.
//! - `space`: the free space of the store's filesystem, and the reserve
//!   (`store.min_free_bytes`) below which new messages are refused.
//! - `expiry`: expired data leaving the disk: from the front of inboxes a batch writes to, and
//!   the sweep the writer runs when idle.
//! - `inbox`: where an inbox stands (head, first), recovered from its record and its message
//!   keys, and what the writer remembers of it; when the record must be written.
//! - `codec`: keys and values as bytes (versioned; a damaged value is `Corrupt`, not a panic).
//!
//! # On disk
//!
//! Six fjall keyspaces, written together in atomic batches:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `messages` | `log seq(u64 BE)` | id, created, expires, kind, payload |
//! | `inboxes` | `log` | lower bounds of head (last seq assigned) and first |
//! | `cursors` | `app 0x00 user 0x00 device` | acked, attempt seq, attempts |
//! | `idempotency` | `app 0x00 key` | expires, message id, created, (user, seq) list |
//! | `subscriptions` | `app 0x00 user 0x00 topic` | version only |
//! | `sessions` | `app 0x00 user 0x00 device` | version, expires, a transport's saved session (`embedded/sessions.rs`) |
//!
//! A log is a user's inbox (`app 0x00 user 0x00`) or a topic's history
//! (`app 0x00 0x01 0x03 topic 0x00`; `codec` explains why the two never meet). Both are kept
//! by the same code, and what follows of inboxes holds for topic histories, with
//! `topic_history` as their cap. A publication is an append to one log. (Code older than
//! topic histories never reads them; its sweep expires them as it does inbox messages.)
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

mod acks;
mod codec;
pub mod embedded;
mod expiry;
mod inbox;
mod keyspaces;
mod options;
mod recovery;
mod request;
mod space;
mod writer;

pub use embedded::{DEFAULT_OPEN_FILES, EmbeddedStore, StoreHealth, StoreProblem, StoreStats};
pub use expiry::Swept;
pub use options::EmbeddedOptions;
