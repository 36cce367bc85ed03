//! The store operations a connection's task runs for durable delivery: a backlog page (with
//! the poison guard), an ack write, a `sync` read. Each is a future boxed only while it runs
//! (see [`Work`]), one at a time per connection; what it brings back is applied by the rules
//! of [`super::inbox`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tether_core::store::Page;
use tether_core::{AppId, DeviceId, Seq, Store, StoreError, UserId};

use super::inbox::{BACKLOG_PAGE, Backlog, SyncRequest};

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

/// One device's inbox, for store calls.
#[derive(Debug, Clone)]
pub struct Target {
    pub store: Arc<dyn Store>,
    pub app: AppId,
    pub user: UserId,
    pub device: DeviceId,
    /// The poison guard's limit: backlogs a message may begin before it is skipped for the
    /// device.
    pub max_attempts: u32,
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
                if attempts > t.max_attempts {
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
