//! How the embedded store keeps and writes its data, from the `[store]` configuration.

use std::time::Duration;

use tether_core::Retention;

use crate::config::{Durability, StoreConfig};

/// How an [`super::EmbeddedStore`] keeps and writes its data.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    pub retention: Retention,
    /// When an append is answered: after the fsync that covers it, or once the operating
    /// system has it (with an fsync every `sync_interval`).
    pub durability: Durability,
    /// With [`Durability::Interval`], the longest an answered write stays unsynced. Also
    /// bounds how long acks wait for an fsync in [`Durability::Sync`] mode.
    pub sync_interval: Duration,
    /// Writes waiting for the writer; past it, writes fail with [`StoreError::Overloaded`](tether_core::StoreError::Overloaded).
    pub queue: usize,
    /// Bytes kept free on the store's filesystem: below it, new messages are refused with
    /// [`StoreError::Full`](tether_core::StoreError::Full) (see `super::space`).
    pub min_free_bytes: u64,
}

impl EmbeddedOptions {
    pub fn from_config(config: &StoreConfig) -> Self {
        EmbeddedOptions {
            retention: Retention {
                inbox_cap: config.inbox_cap,
                topic_history: config.topic_history,
                cursor_idle: config.max_ttl,
            },
            durability: config.durability,
            sync_interval: config.sync_interval,
            queue: config.queue,
            min_free_bytes: config.min_free_bytes,
        }
    }
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self::from_config(&StoreConfig::default())
    }
}
