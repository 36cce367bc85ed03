//! When fjall fails: the embedded store refuses every write until the filesystem has room
//! again, then reopens the database in place.
//!
//! fjall "poisons" a database after a journal write, an fsync, a flush or a compaction failed
//! (see [`Keyspaces::poisoned`]): it refuses every later write, for it can no longer tell what
//! is on disk, and nothing in it clears the flag. A new database over the same directory
//! recovers as a restart would: it replays the journal up to its last whole batch, so every
//! write that was answered is there. Reopening in place keeps the node's connections, which a
//! restart would drop; a reopen that keeps failing with room on the disk stops the node
//! instead (see [`MAX_REOPENS`]).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tether_core::StoreError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::keyspaces::{Counters, Keyspaces};
use super::request::Request;
use super::space::Space;
use super::writer::Next;
use crate::metrics::StoreMetrics;

/// How often a failed store looks at the free space and answers what waits.
const RECOVER_POLL: Duration = Duration::from_millis(200);
/// Free bytes a failed store waits for with no reserve configured.
const MIN_REOPEN_FREE: u64 = 1 << 20;
/// How long a reopen waits for readers of the failed database to let it go.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// Failed reopens, with room on the disk, before the store gives up (a minute or so, with
/// the backoff): then something else than space is wrong, and a restart is the honest answer.
const MAX_REOPENS: u32 = 6;
/// A failure this soon after a reopen counts as the same trouble: a flush or a compaction
/// that needs more room than the reserve leaves. The next reopen then waits for twice the
/// room, and so on up to 8 times, rather than failing and reopening in a loop.
pub const FAILED_AGAIN_WITHIN: Duration = Duration::from_secs(60);

/// Why the writer stopped, for [`recover`].
#[derive(Debug, Clone, Copy)]
pub struct Failed<'a> {
    /// The error, for the log.
    pub cause: &'a str,
    /// Failures in a row, each within [`FAILED_AGAIN_WITHIN`] of the reopen before it.
    pub streak: u32,
}

/// What the writer needs to reopen the database after it failed.
pub struct Reopen {
    pub dir: PathBuf,
    /// The table files the database may keep open (see `EmbeddedStore::open_with_files`).
    pub open_files: usize,
    /// The readers' handles: emptied before the database is reopened (fjall releases the
    /// directory only when its last handle is gone), and filled again after.
    pub reader: Arc<RwLock<Option<Keyspaces>>>,
    /// The free space, when it can be read: the database is reopened once it is above the
    /// reserve.
    pub space: Option<Arc<Space>>,
    /// Cancelled when the database cannot be reopened (see [`MAX_REOPENS`]): the node stops,
    /// for its supervisor to start it again.
    pub fatal: CancellationToken,
}

/// What every request gets while the store has failed.
fn failed() -> StoreError {
    StoreError::Unavailable(
        "the embedded store failed a write and takes none until it is reopened".into(),
    )
}

/// Runs while the database has failed: answers every request with [`failed`] (reads still
/// go to the failed database, which serves them from what it holds), and once the
/// filesystem has room again, reopens the database and returns its handles. fjall's recovery
/// replays the journal up to its last whole batch: every write that was answered is there.
/// Returns `Err` when the store is closed meanwhile (with `Close`'s answer).
///
/// After [`MAX_REOPENS`] failed reopens with room on the disk, it cancels `reopen.fatal` and
/// keeps refusing writes until it is closed.
pub(super) fn recover(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Request>,
    held: &mut Option<Request>,
    reopen: &Reopen,
    counters: &Counters,
    Failed { cause, streak }: Failed<'_>,
) -> Result<Keyspaces, Option<oneshot::Sender<()>>> {
    let metrics = StoreMetrics::new();
    let began = Instant::now();
    counters.failed.store(true, Ordering::Relaxed);
    metrics.failures.increment(1);
    metrics.writable.set(0.0);
    let need = reopen
        .space
        .as_ref()
        .map_or(MIN_REOPEN_FREE, |s| s.reserve().max(MIN_REOPEN_FREE))
        .saturating_mul(1 << streak.min(3));
    tracing::error!(
        dir = %reopen.dir.display(),
        "store: the database failed ({cause}) and refuses every write from now on; new \
         messages are refused and /readyz answers 503 until it is reopened, which it will be \
         once {need} bytes are free on its filesystem"
    );
    if streak > 0 {
        tracing::error!(
            "store: failed again within {FAILED_AGAIN_WITHIN:?} of its reopen ({streak} in a \
             row): store.min_free_bytes is too small for what fjall needs to flush or compact; \
             the store waits for {need} bytes free this time"
        );
    }
    let mut failures = 0u32;
    let mut next_try = Instant::now();
    loop {
        let next = match held.take() {
            Some(r) => Next::Request(r),
            None => rt.block_on(async {
                match tokio::time::timeout(RECOVER_POLL, rx.recv()).await {
                    Ok(Some(r)) => Next::Request(r),
                    Ok(None) => Next::Closed,
                    Err(_) => Next::Idle,
                }
            }),
        };
        match next {
            Next::Request(Request::Close(reply)) => return Err(Some(reply)),
            Next::Closed => return Err(None),
            Next::Request(Request::Write(write)) => write.fail(failed()),
            Next::Request(Request::Sweep { reply, .. }) => drop(reply.send(Err(failed()))),
            // Pending acks wait (bounded) for the reopened database: the writer takes them
            // into its first batch.
            Next::Request(Request::Acks) | Next::Idle => {}
        }
        let now = Instant::now();
        if reopen.fatal.is_cancelled() || now < next_try {
            continue;
        }
        next_try = now + RECOVER_POLL;
        let room = match &reopen.space {
            Some(space) => space.sample().is_ok_and(|free| free >= need),
            None => true,
        };
        if !room {
            continue;
        }
        let opening = Instant::now();
        match reopen_database(reopen) {
            Ok(ks) => {
                counters.failed.store(false, Ordering::Relaxed);
                counters.reopens.fetch_add(1, Ordering::Relaxed);
                metrics.reopens.increment(1);
                tracing::warn!(
                    failed_for = ?began.elapsed(),
                    reopen_took = ?opening.elapsed(),
                    "store: reopened; taking new messages again"
                );
                return Ok(ks);
            }
            Err(e) => {
                failures += 1;
                if failures >= MAX_REOPENS {
                    tracing::error!(
                        "store: cannot reopen the database ({e}) after {failures} tries with \
                         room on the disk; stopping the node so that its supervisor starts it \
                         again (what was stored stays on disk)"
                    );
                    reopen.fatal.cancel();
                } else {
                    let wait = Duration::from_secs(1 << failures.min(5));
                    tracing::warn!("store: cannot reopen the database ({e}); again in {wait:?}");
                    next_try = Instant::now() + wait;
                }
            }
        }
    }
}

/// Lets the readers' handles of the failed database go, and opens it again.
fn reopen_database(reopen: &Reopen) -> Result<Keyspaces, fjall::Error> {
    let old = reopen
        .reader
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    // Out of the lock: the last handle's drop waits for fjall's background threads.
    drop(old);
    // A read under way still holds the old database, and with it the directory's lock.
    let deadline = Instant::now() + RELEASE_WAIT;
    let ks = loop {
        match Keyspaces::open(&reopen.dir, reopen.open_files) {
            Err(fjall::Error::Locked) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other?,
        }
    };
    *reopen.reader.write().unwrap_or_else(|e| e.into_inner()) = Some(ks.clone());
    Ok(ks)
}
