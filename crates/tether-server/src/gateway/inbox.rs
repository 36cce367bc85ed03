//! Durable delivery on one connection: each binding's position in its inbox, the backlog a
//! connection catches up on, acks, and `sync` pulls.
//!
//! # How a binding's pushes stay in order
//! A binding is either *live* or *catching up*. Live, a durable push is queued when its seq is
//! the next one ([`InboxState::sent`] + 1), dropped when it was already sent, and a gap (a push
//! overtook another, or pushes came while the connection was being set up) switches the
//! binding to catching up. Catching up, live pushes are not queued, only remembered
//! ([`InboxState::missed`]); the connection's task reads the store after `sent` a page at a
//! time, within the outbound queue's budget, and the binding turns live again once a read
//! reaches the end of the inbox and covers everything missed. Every durable push is stored
//! before it is routed, so whatever the live path skipped, the store has.
//!
//! One store operation runs per connection at a time, boxed only while it runs (see
//! [`Work`]), so an idle connection pays nothing for any of this.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tether_core::store::{Page, StoredMessage};
use tether_core::{AppId, DeviceId, Seq, Store, StoreError, UserId};
use tether_proto::{Frame, Push};

use super::table::Encoding;

/// Live pushes one binding may hold while it waits for an earlier seq to arrive.
pub const REORDER_FRAMES: usize = 64;

/// How long a binding waits for a missing seq before it reads the store instead (checked by
/// the heartbeat sweep, so the wait can be up to one sweep period longer).
pub const REORDER_WAIT_MS: u64 = 100;

/// The shortest interval between two ack writes of one binding (ms since the epoch).
pub const ACK_WRITE_EVERY_MS: u64 = 100;

/// Messages read per backlog page.
pub const BACKLOG_PAGE: usize = 64;

/// Most messages one `sync` reply carries.
pub const SYNC_PAGE: usize = 100;

/// One binding's delivery state on one connection.
///
/// # Invariants
/// `held` is empty while `catching_up`, and holds only seqs above `sent + 1`; `sent <= top`; `stored_ack <= acked`; `acked <= top` once the client acked anything on this
/// connection (before that, `acked` is the stored position, which may be ahead of a client that
/// resumed from an earlier `last_seq`); while `catching_up` is false, `missed <= sent`.
#[derive(Debug, Default, Clone)]
pub struct InboxState {
    /// The highest seq queued by resume or live delivery (starts at the resume position).
    pub sent: u64,
    /// The highest seq sent by any path, `sync` included: acks are clamped to it.
    pub top: u64,
    /// The highest seq the client acked on this connection.
    pub acked: u64,
    /// The highest ack written to the store.
    pub stored_ack: u64,
    /// Live pushes wait for the store to be read.
    pub catching_up: bool,
    /// The highest live seq not queued while catching up.
    pub missed: u64,
    /// The first backlog read of this connection is still to come (the poison guard counts
    /// the message it begins with).
    pub first_page: bool,
    /// Live pushes that overtook an earlier seq, held (at most [`REORDER_FRAMES`], counted in
    /// the queue's bytes) until the earlier one arrives: concurrent API requests for one user
    /// routinely reach a connection out of order, and a store read per overtaking push would
    /// cost more than the push. Empty (no allocation) while pushes arrive in order.
    pub held: Vec<(u64, Bytes)>,
    /// When the oldest held push arrived (ms since the epoch).
    pub held_since_ms: u64,
    /// When an ack write last started (ms since the epoch).
    pub ack_written_ms: u64,
}

impl InboxState {
    /// A binding that starts at `position` and catches up from there; `stored` is the
    /// device's acked position in the store (the client's `position` may be ahead or behind).
    pub fn resuming(position: u64, stored: u64) -> Self {
        InboxState {
            sent: position,
            top: position,
            acked: stored,
            stored_ack: stored,
            catching_up: true,
            missed: 0,
            first_page: true,
            held: Vec::new(),
            held_since_ms: 0,
            ack_written_ms: 0,
        }
    }
}

/// A `sync` waiting for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncRequest {
    pub id: u32,
    pub binding: usize,
    pub after: u64,
    pub limit: usize,
}

/// A store operation a connection's task is running.
pub type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

/// What a finished [`Work`] brought back.
#[derive(Debug)]
pub enum Done {
    Backlog {
        binding: usize,
        /// `missed` when the read began: everything in it was stored before the read.
        missed_before: u64,
        result: Result<Backlog, StoreError>,
    },
    Acked {
        binding: usize,
        seq: u64,
        result: Result<(), StoreError>,
    },
    Synced {
        request: SyncRequest,
        result: Result<Page, StoreError>,
    },
}

/// One backlog page.
#[derive(Debug)]
pub struct Backlog {
    pub messages: Vec<StoredMessage>,
    /// The read reached the end of the inbox.
    pub complete: bool,
    /// The poison guard skipped this message (and acked it for the device).
    pub skipped: Option<u64>,
}

/// Who a binding is, for store calls.
#[derive(Debug, Clone)]
pub struct Target {
    pub store: Arc<dyn Store>,
    pub app: AppId,
    pub user: UserId,
    pub device: DeviceId,
}

/// Retries of a backlog read that found the store unavailable, and the wait before the first.
const READ_RETRIES: u32 = 2;
const READ_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Reads the next backlog page after `after`. On the connection's first page, counts the
/// message it begins with for the poison guard, and skips it past `max_attempts`.
pub fn backlog(
    t: Target,
    binding: usize,
    after: u64,
    first_page: bool,
    missed_before: u64,
    max_attempts: u32,
) -> Work {
    Box::pin(async move {
        let result = async {
            let now = tether_core::now_ms();
            // A store that just lost its connection (Redis restarted) fails the first command
            // and reconnects: a read is retried twice before the connection is given up.
            let mut attempt = 0;
            let page = loop {
                match t
                    .store
                    .read(&t.app, &t.user, Seq(after), BACKLOG_PAGE, now)
                    .await
                {
                    Err(StoreError::Unavailable(_)) if attempt < READ_RETRIES => {
                        attempt += 1;
                        tokio::time::sleep(READ_RETRY_WAIT * attempt).await;
                    }
                    other => break other?,
                }
            };
            let complete = page.messages.len() < BACKLOG_PAGE;
            let mut messages = page.messages;
            let mut skipped = None;
            if first_page && let Some(head) = messages.first().map(|m| m.seq) {
                let attempts = t
                    .store
                    .note_attempt(&t.app, &t.user, &t.device, head)
                    .await?;
                if attempts > max_attempts {
                    t.store.ack(&t.app, &t.user, &t.device, head).await?;
                    tracing::warn!(
                        app = %t.app, user = %t.user, device = %t.device, seq = %head, attempts,
                        "poison guard: skipping a message this device never acked"
                    );
                    messages.remove(0);
                    skipped = Some(head.0);
                }
            }
            Ok(Backlog {
                messages,
                complete,
                skipped,
            })
        }
        .await;
        Done::Backlog {
            binding,
            missed_before,
            result,
        }
    })
}

/// Writes an ack to the store.
pub fn ack(t: Target, binding: usize, seq: u64) -> Work {
    Box::pin(async move {
        let result = t.store.ack(&t.app, &t.user, &t.device, Seq(seq)).await;
        Done::Acked {
            binding,
            seq,
            result,
        }
    })
}

/// Reads what a `sync` asked for.
pub fn sync(t: Target, request: SyncRequest) -> Work {
    Box::pin(async move {
        let now = tether_core::now_ms();
        let result = t
            .store
            .read(&t.app, &t.user, Seq(request.after), request.limit, now)
            .await;
        Done::Synced { request, result }
    })
}

/// The push frame of a stored message, with request id `id` (0 for backlog and live pushes).
pub fn push_frame(encoding: Encoding, id: u32, app: &AppId, m: &StoredMessage) -> Bytes {
    encoding.encode(&Frame::new(
        id,
        Push {
            app: app.to_string(),
            msg_id: m.id.0,
            seq: m.seq.0,
            qos: 1,
            created_ms: m.created_ms,
            kind: m.kind,
            payload: m.payload.clone(),
        },
    ))
}
