//! Free space on the store's filesystem, and the reserve (`store.min_free_bytes`) below which
//! new messages are refused, so that the store never meets a full disk.
//!
//! A thread samples the filesystem (`statvfs`) every [`SAMPLE_EVERY`]. Between samples, each
//! message taken spends a byte budget: the free space above the reserve at the last sample,
//! but at most a [`chunk`] of it. A writer that spends a chunk samples again itself (at most
//! every [`RESAMPLE_AFTER`]), so the check costs an atomic subtraction per message and a
//! system call per chunk, and no burst runs more than a chunk past what the last sample saw.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use metrics::Gauge;

/// How often the free space is read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How soon a writer that spent its budget may read the free space again.
pub const RESAMPLE_AFTER: Duration = Duration::from_millis(10);
/// Free space above the reserve below which the node reports not ready: it asks for no new
/// traffic a little before it refuses messages.
pub const READY_MARGIN: u64 = 1 << 20;

/// The most new messages may take between two samples: a quarter of the reserve, at least
/// 1 MiB. A message costs its bytes once (its journal entry); the flush of the memtable and
/// compactions take more later, which the next samples see, and which the reserve absorbs.
pub fn chunk(reserve: u64) -> u64 {
    (reserve / 4).max(1 << 20)
}

/// Free space on the filesystem of one directory, and the budget of new messages.
#[derive(Debug)]
pub struct Space {
    dir: PathBuf,
    reserve: u64,
    /// Bytes free for unprivileged writers at the last sample; `u64::MAX` before the first.
    free: AtomicU64,
    /// Bytes that new messages may still take before the next sample.
    budget: AtomicI64,
    /// When the last sample was taken, in ms since `epoch`.
    sampled_ms: AtomicU64,
    epoch: Instant,
    free_gauge: Gauge,
}

impl Space {
    /// Reads the free space of `dir`'s filesystem once, and starts a thread that reads it again
    /// every [`SAMPLE_EVERY`] until the returned handle is dropped.
    pub fn watch(dir: &Path, reserve: u64) -> std::io::Result<Arc<Space>> {
        let space = Arc::new(Space {
            dir: dir.to_owned(),
            reserve,
            free: AtomicU64::new(u64::MAX),
            budget: AtomicI64::new(0),
            sampled_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            free_gauge: crate::metrics::StoreMetrics::free_bytes(),
        });
        space.sample()?;
        let weak = Arc::downgrade(&space);
        std::thread::Builder::new()
            .name("tether-store-space".into())
            .spawn(move || sample_while_held(&weak))?;
        Ok(space)
    }

    /// Reads the free space now and resets the budget from it.
    pub fn sample(&self) -> std::io::Result<u64> {
        let free = free_bytes(&self.dir)?;
        self.free.store(free, Ordering::Relaxed);
        self.free_gauge.set(free as f64);
        let above = free.saturating_sub(self.reserve).min(chunk(self.reserve));
        self.budget.store(above as i64, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        self.sampled_ms.store(now, Ordering::Relaxed);
        Ok(free)
    }

    /// Spends `bytes` of the budget for a new message; false when it would pass the reserve:
    /// the message must be refused. A refused message spends nothing.
    pub fn take(&self, bytes: usize) -> bool {
        let cost = i64::try_from(bytes).unwrap_or(i64::MAX);
        if self.spend(cost) {
            return true;
        }
        // The budget is spent: look again, so that a steady writer is not held to one budget
        // per sample, but not more often than every `RESAMPLE_AFTER`.
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.sampled_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= RESAMPLE_AFTER.as_millis() as u64
            && self
                .sampled_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && self.sample().is_ok()
        {
            return self.spend(cost);
        }
        false
    }

    fn spend(&self, cost: i64) -> bool {
        let before = self.budget.fetch_sub(cost, Ordering::Relaxed);
        if before >= cost {
            return true;
        }
        self.budget.fetch_add(cost, Ordering::Relaxed);
        false
    }

    /// Whether the node has room for new traffic: the last sample saw more than the reserve
    /// and [`READY_MARGIN`] free.
    pub fn has_room(&self) -> bool {
        self.free() >= self.reserve.saturating_add(READY_MARGIN)
    }

    /// Bytes free at the last sample.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }
}

fn sample_while_held(space: &Weak<Space>) {
    let mut failing = false;
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        let Some(space) = space.upgrade() else {
            return;
        };
        match space.sample() {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(dir = %space.dir.display(), "store: cannot read the free space: {e}");
            }
            Err(_) => {}
        }
    }
}

/// Bytes an unprivileged writer may still use on the filesystem that holds `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_spend_the_free_space_above_the_reserve_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 4 << 20, "the test needs a few MiB free");
        let space = Space::watch(dir.path(), free + 1).unwrap();
        assert!(!space.has_room(), "a reserve above the free space: no room");
        assert!(!space.take(1));

        let space = Space::watch(dir.path(), 0).unwrap();
        assert!(space.has_room());
        // At most a chunk between samples; a message that would pass it is refused and spends
        // nothing, so a smaller one still fits.
        let chunk = chunk(0) as usize;
        assert!(!space.take(chunk + 1));
        assert!(space.take(chunk - 1024));
        assert!(space.take(1024));
        // Spent: the next message samples again, once `RESAMPLE_AFTER` has passed.
        std::thread::sleep(RESAMPLE_AFTER * 2);
        assert!(
            space.take(1024),
            "a spent budget is refilled by a new sample"
        );
        space.budget.store(0, Ordering::Relaxed);
        assert!(!space.take(1), "not sampled again so soon");
    }
}
