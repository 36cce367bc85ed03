//! Where an inbox stands (its head and first seq), recovered from the disk. A topic's history
//! is kept the same way under its own log key (see [`codec`]); "inbox" here means either.
//!
//! Appends do not write the inbox record: the message keys already say where an inbox stands,
//! and a second key per (message x user) doubled the writer's memtable inserts. The record is
//! a lower bound ([`Meta`]), and the real values are recovered from it and the message keys:
//!
//! - `head = max(record head, seq of the last message key)`. This holds as long as the newest
//!   message of an inbox leaves the disk only together with a record that keeps its seq. A
//!   batch that appends writes the new head's message itself (the cap never pushes out the
//!   message just appended, and front expiry only deletes what was on disk before the batch);
//!   the sweep can delete the newest message, and then writes the record in the same batch
//!   ([`keep_head`]).
//! - `first` = the first message key at or above the record's `first`. This holds as long as
//!   `first` only moves past messages that are deleted in the same batch (or were already
//!   gone); when the cap pushes out more held messages than one batch deletes, the writer
//!   writes the record with the new `first` in that batch.
//!
//! The writer also writes the record, once, for an inbox that has none in the current format
//! (new inboxes, and those written by code that rewrote the record with every batch), so that
//! older code refuses this data ([`codec::META_VERSION`]) instead of misreading it.

use fjall::{OwnedWriteBatch, Readable, Snapshot};
use tether_core::StoreError;

use super::codec::{self, Meta};
use super::keyspaces::{Keyspaces, unavailable};

/// What the writer remembers of an inbox between batches.
#[derive(Debug, Clone, Copy)]
pub struct Inbox {
    /// The head is exact, unlike the inbox record's; `first` may lag behind messages the
    /// sweep deleted (front expiry and the cap step over them).
    pub meta: Meta,
    /// The expiry of the message at `meta.first`, when known, so that checking whether the
    /// front expired costs no read.
    pub front_expires: Option<u64>,
}

/// An inbox as recovered from the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The head, exact. `first` is exact when asked for, else the record's lower bound (enough
    /// to start a read from).
    pub meta: Meta,
    /// The inbox has a record in the current format.
    pub recorded: bool,
}

/// Reads where the inbox `key` stands, from one snapshot. `exact_first` costs one more seek.
pub fn recover(
    snapshot: &Snapshot,
    ks: &Keyspaces,
    key: &[u8],
    exact_first: bool,
) -> Result<Recovered, StoreError> {
    let (mut meta, recorded) = match snapshot.get(&ks.inboxes, key).map_err(unavailable)? {
        Some(v) => codec::decode_meta(&v)?,
        None => (Meta::default(), false),
    };
    let all = codec::message_key(key, 0)..=codec::message_key(key, u64::MAX);
    if let Some(guard) = snapshot.range(&ks.messages, all).next_back() {
        let last = guard.key().map_err(unavailable)?;
        meta.head = meta.head.max(codec::split_message_key(&last)?.1);
    }
    if exact_first {
        let held = codec::message_key(key, meta.first)..=codec::message_key(key, u64::MAX);
        meta.first = match snapshot.range(&ks.messages, held).next() {
            Some(guard) => codec::split_message_key(&guard.key().map_err(unavailable)?)?.1,
            None => meta.head + 1,
        };
    }
    Ok(Recovered { meta, recorded })
}

/// Adds to `batch` the inbox record that keeps `seq` as a lower bound of the head of inbox
/// `key`, for when its message `seq`, the last on disk, is deleted. The record's `first` stays
/// as it was.
pub fn keep_head(
    ks: &Keyspaces,
    batch: &mut OwnedWriteBatch,
    key: &[u8],
    seq: u64,
) -> Result<(), StoreError> {
    let mut meta = match ks.inboxes.get(key).map_err(unavailable)? {
        Some(v) => codec::decode_meta(&v)?.0,
        None => Meta::default(),
    };
    meta.head = meta.head.max(seq);
    batch.insert(&ks.inboxes, key, codec::encode_meta(meta));
    Ok(())
}
