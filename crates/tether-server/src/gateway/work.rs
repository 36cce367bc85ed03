//! Durable delivery's store work on a connection: starting the operation the handle asks for
//! next (see [`crate::session::inbox::next_work`]) and applying what it brought back.

use tether_proto::{Code, ErrorBody, Frame};

use super::Gateway;
use super::handle::ConnHandle;
use super::outbox::Close;
use crate::link::Binding;
use crate::session::inbox::NextWork;
use crate::session::work::{self, Done, Work};

/// Starts the store operation `next` for `conn`.
pub(super) fn start_work(gw: &Gateway, conn: &ConnHandle, next: NextWork) -> Work {
    let target = |binding: usize| {
        let Binding { app, user, .. } = &conn.bindings[binding];
        gw.delivery.inbox(app, user, &conn.device)
    };
    match next {
        NextWork::Ack { binding, seq } => work::ack(target(binding), binding, seq),
        NextWork::Sync(request) => work::sync(target(request.binding), request),
        NextWork::Backlog {
            binding,
            after,
            first_page,
            missed_before,
        } => work::backlog(target(binding), binding, after, first_page, missed_before),
    }
}

/// Applies a finished store operation to `conn`.
pub(super) fn finish_work(gw: &Gateway, conn: &ConnHandle, done: Done) {
    match done {
        Done::Backlog {
            binding,
            missed_before,
            result: Ok(page),
        } => {
            if page.skipped.is_some() {
                gw.metrics.poison_skipped.increment(1);
            }
            let queued = conn.apply_backlog(binding, missed_before, page);
            gw.metrics.backlog_messages.increment(queued as u64);
        }
        Done::Backlog {
            binding,
            result: Err(e),
            ..
        } => {
            gw.metrics.store_error("read");
            if !conn.backlog_failed(binding) {
                tracing::debug!(conn = %conn.id, error = %e, "a recheck of the inbox failed");
                return;
            }
            // The client resumes from its position when it comes back.
            tracing::warn!(conn = %conn.id, error = %e, "cannot read a backlog");
            conn.close(Close {
                retry_after_ms: 1000,
                ..Close::new(Code::INTERNAL, "store unavailable")
            });
        }
        Done::Acked {
            binding,
            seq,
            result,
        } => {
            if let Err(e) = result {
                // A lost ack costs a redelivery, which at-least-once allows; retrying here
                // could spin while the store is down.
                tracing::warn!(conn = %conn.id, error = %e, "cannot store an ack");
                gw.metrics.store_error("ack");
            }
            conn.ack_stored(binding, seq);
        }
        Done::Synced {
            request,
            result: Ok(page),
        } => {
            conn.apply_sync(request, &page);
            gw.metrics.syncs.increment(1);
        }
        Done::Synced {
            request,
            result: Err(e),
        } => {
            tracing::warn!(conn = %conn.id, error = %e, "cannot answer a sync");
            gw.metrics.store_error("read");
            conn.sync_failed();
            let error = ErrorBody {
                code: Code::UNAVAILABLE,
                message: "the store is unavailable; retry later".into(),
            };
            conn.enqueue(conn.encoding.encode(&Frame::new(request.id, error)));
        }
    }
}
