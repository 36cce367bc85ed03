//! Whether connections are alive, and when they may wait without a task: one sweep over the
//! table closes clients that went silent or stopped reading, or whose token expired, warns
//! those whose token soon will, and asks idle connections to park (see `super::task`).
//!
//! One sweep replaces a timer per connection: an idle connection holds no timer, and a frame
//! from the client costs one atomic store instead of a timer reset. A silent client is closed
//! between its limit and its limit plus one sweep period.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use tether_proto::{Code, Expiring, Frame};
use tracing::debug;

use super::Gateway;
use super::handle::{ConnHandle, PARK_ASKED, PARKED, RUNNING};
use super::outbox::Close;
use super::table::ConnTable;
use crate::link::Links;

impl Gateway {
    /// Sweeps the table every quarter of the shortest heartbeat (10 ms to 1 s) until shutdown.
    pub async fn sweep_heartbeats(self: Arc<Self>) {
        let period = (self.config.heartbeat_min / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let closed = self.table.sweep(
                self.clock_ms(),
                self.config.write_timeout,
                self.park_after(),
                TokenTimes {
                    leeway_s: self.config.token_leeway.as_secs(),
                    warning_s: self.config.token_warning.as_secs(),
                },
            );
            if closed > 0 {
                debug!(closed, "heartbeat sweep");
            }
        }
    }
}

/// When tokens end for the sweep: a binding whose token is `leeway_s` past its `exp` closes
/// its connection (the leeway a token got at connect, for clock skew); one within
/// `warning_s` of it is sent `expiring`, once per token.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenTimes {
    pub leeway_s: u64,
    pub warning_s: u64,
}

impl ConnTable {
    /// Closes every connection whose client went silent past its heartbeat limit, or stopped
    /// taking bytes of a pending write for `write_timeout`, or whose token ended by `tokens`;
    /// warns those whose token soon will, and asks connections idle for `park_after` to park
    /// (zero: never). Holds one shard lock at a time and allocates nothing for connections
    /// that are alive and not due a warning.
    pub fn sweep(
        &self,
        now_ms: u64,
        write_timeout: Duration,
        park_after: Duration,
        tokens: TokenTimes,
    ) -> usize {
        let write_timeout_ms = write_timeout.as_millis() as u64;
        let park_after_ms = park_after.as_millis() as u64;
        // Token times are wall-clock seconds; the sweep's clock may be a test's.
        let now_s = tether_core::now_ms() / 1000;
        let mut closed = 0;
        self.for_each_handle(0..self.shard_count(), |c| {
            let ended =
                c.check_tokens(now_s, tokens) || c.sweep(now_ms, write_timeout_ms, park_after_ms);
            closed += usize::from(ended);
        });
        closed
    }
}

impl ConnHandle {
    /// Records that the client was heard from at `now_ms`.
    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Closes the connection if the client has been silent past its limit at `now_ms`, or has
    /// taken no bytes of a pending write for `write_timeout_ms`; asks an idle one to park.
    pub(super) fn sweep(&self, now_ms: u64, write_timeout_ms: u64, park_after_ms: u64) -> bool {
        self.expire_held(tether_core::now_ms());
        if self.ack_pending.load(Ordering::Relaxed) {
            // An ack that waited for its write interval: the task decides.
            self.wake();
        }
        if self.writing.load(Ordering::Acquire) {
            let stalled = now_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed));
            if stalled > write_timeout_ms {
                return self.abandon(&format!("the client took no bytes for {stalled} ms"));
            }
        }
        if self.idle_limit.kept_alive() {
            self.keep_alive(now_ms);
            self.ask_park(now_ms, park_after_ms);
            return false;
        }
        let silent = now_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed));
        if silent > self.idle_limit.ms() {
            return self.close(Close::at_once(
                Code::HEARTBEAT_TIMEOUT,
                format!("no frame for {silent} ms"),
            ));
        }
        self.ask_park(now_ms, park_after_ms);
        false
    }

    /// Queues a keep-alive (an empty frame, which the wire writes as its own) if nothing was
    /// written to the client for its interval at `now_ms`.
    fn keep_alive(&self, now_ms: u64) {
        if self.writing.load(Ordering::Acquire) {
            return;
        }
        let quiet = now_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed));
        if quiet > self.idle_limit.ms() {
            self.progress_ms.store(now_ms, Ordering::Relaxed);
            self.enqueue(Bytes::new());
        }
    }

    /// Closes the connection if a binding's token ended at `now_s` (seconds since the epoch),
    /// or sends `expiring` for each binding whose token ends within the warning, once per
    /// token (a refresh moves the end and allows another warning).
    pub fn check_tokens(&self, now_s: u64, tokens: TokenTimes) -> bool {
        for binding in self.bindings.iter() {
            let expires_s = binding.expires_s();
            if expires_s == 0 {
                continue;
            }
            // RFC 7519: a token is good only before its `exp`.
            // A refresh may have moved it since it was read: only a second look closes.
            if now_s >= expires_s.saturating_add(tokens.leeway_s)
                && now_s >= binding.expires_s().saturating_add(tokens.leeway_s)
            {
                return self.close(Close::new(
                    Code::TOKEN_EXPIRED,
                    format!("the token for app {} expired", binding.app),
                ));
            }
            if let Some(expires_s) = binding.warn(now_s, tokens.warning_s) {
                let expiring = Expiring {
                    app: binding.app.to_string(),
                    expires_s,
                };
                self.enqueue(self.encoding.encode(&Frame::new(0, expiring)));
            }
        }
        false
    }

    /// Asks the task to park if the connection has neither heard from its client nor written
    /// for `park_after_ms` (0: never). A connection already parked or asked is left alone, so
    /// that the sweep never wakes a parked connection for nothing.
    fn ask_park(&self, now_ms: u64, park_after_ms: u64) {
        if park_after_ms == 0
            || self.park.load(Ordering::Relaxed) != RUNNING
            || self.writing.load(Ordering::Acquire)
        {
            return;
        }
        let active = self
            .last_seen_ms
            .load(Ordering::Relaxed)
            .max(self.progress_ms.load(Ordering::Relaxed));
        if now_ms.saturating_sub(active) >= park_after_ms
            && self
                .park
                .compare_exchange(RUNNING, PARK_ASKED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.wake();
        }
    }

    /// Whether the sweep asked the task to park.
    pub fn park_asked(&self) -> bool {
        self.park.load(Ordering::Relaxed) == PARK_ASKED
    }

    /// Whether the task has nothing left to do but wait: no store work, no ack waiting to be
    /// written, no overtaking push held (each of those needs the task or the sweep's wake).
    pub fn settled(&self) -> bool {
        !self.work_hint.load(Ordering::Acquire)
            && !self.ack_pending.load(Ordering::Acquire)
            && !self.held.load(Ordering::Acquire)
    }

    /// The task was asked to park at `now_ms` but is busy (a frame half read, store work, ...):
    /// the sweep asks again only after another `park_after`, not at its next pass, so that a
    /// connection that cannot park is not woken at every pass for nothing.
    pub fn park_declined(&self, now_ms: u64) {
        // `progress_ms` only counts for stalls while `writing`, which a parking task is not.
        self.progress_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.park.store(RUNNING, Ordering::Relaxed);
    }

    /// The task is parking: from now on `waker` stands for it. Returns whether something is
    /// already waiting for it (frames, a close), in which case it must not park after all.
    pub fn parking(&self, waker: &Waker) -> bool {
        self.park.store(PARKED, Ordering::Relaxed);
        self.task.register(waker);
        self.ready.load(Ordering::Acquire)
    }

    /// A task serves the connection again (a parked one woke up, or a park was called off).
    pub fn unparked(&self) {
        self.park.store(RUNNING, Ordering::Relaxed);
    }

    /// Its parked socket is readable: wakes the waker a parked connection left, if it is
    /// still parked (a stale report for a connection serving again is ignored).
    pub fn wake_parked(&self) {
        if self.is_parked() {
            self.task.wake();
        }
    }

    /// Whether the connection waits without a task.
    pub fn is_parked(&self) -> bool {
        self.park.load(Ordering::Relaxed) == PARKED
    }
}
