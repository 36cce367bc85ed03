//! Many subscribers of one target, in this process: opening them at a given rate, reading
//! what they receive, and the counts a run reports.
//!
//! Each subscriber is one task that owns its socket and one read buffer, reused for the whole
//! run. Per read (a batch of messages) it takes one clock reading and records its latency
//! samples and counts under one lock: one of [`SHARDS`] mutexes, chosen by subscriber number.
//! Nothing is allocated per message.
//!
//! Every message carries its number (see [`crate::payload`]): each subscriber keeps a compact
//! set of the numbers it has seen, so a run can tell losses (expected minus distinct) from
//! duplicates (seen twice).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Buf;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::payload;
use crate::stats::{Clock, histogram};
use crate::target::{Item, Subscriber, Target};

/// Stat shards; a few per worker thread is plenty.
pub const SHARDS: usize = 8;
/// Handshakes in progress at once.
const HANDSHAKES: usize = 512;

/// What the subscribers of one process counted so far.
#[derive(Debug)]
pub struct Collector {
    pub clock: Clock,
    shards: Vec<Mutex<Shard>>,
    connected: AtomicU64,
    /// Handshakes that failed, by reason.
    failures: Mutex<BTreeMap<String, u64>>,
    /// Connections closed after their handshake, by reason.
    dropped: Mutex<BTreeMap<String, u64>>,
    /// Errors the server reported on a connection it kept.
    notices: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug, Default)]
struct Shard {
    delivered: u64,
    distinct: u64,
    duplicates: u64,
    unparsed: u64,
    /// Publish-to-delivery latency in µs, per window slot.
    slots: BTreeMap<u8, Histogram<u64>>,
}

/// One subscriber's counts since its last flush.
#[derive(Debug, Default)]
struct Local {
    delivered: u64,
    distinct: u64,
    duplicates: u64,
    unparsed: u64,
    samples: Vec<(u8, u64)>,
}

impl Collector {
    pub fn new(clock: Clock) -> Self {
        Collector {
            clock,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            connected: AtomicU64::new(0),
            failures: Mutex::default(),
            dropped: Mutex::default(),
            notices: Mutex::default(),
        }
    }

    fn flush(&self, shard: usize, local: &mut Local) {
        if local.delivered == 0 {
            return;
        }
        let mut s = lock(&self.shards[shard % SHARDS]);
        s.delivered += local.delivered;
        s.distinct += local.distinct;
        s.duplicates += local.duplicates;
        s.unparsed += local.unparsed;
        for &(slot, us) in &local.samples {
            s.slots
                .entry(slot)
                .or_insert_with(histogram)
                .saturating_record(us.max(1));
        }
        local.samples.clear();
        (
            local.delivered,
            local.distinct,
            local.duplicates,
            local.unparsed,
        ) = (0, 0, 0, 0);
    }

    pub fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        *lock(map).entry(key).or_default() += 1;
    }

    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        lock(&self.failures).values().sum()
    }

    /// Everything counted so far.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            connected: self.connected(),
            failures: lock(&self.failures).clone(),
            dropped: lock(&self.dropped).clone(),
            notices: lock(&self.notices).clone(),
            ..Snapshot::default()
        };
        for shard in &self.shards {
            let s = lock(shard);
            snap.delivered += s.delivered;
            snap.distinct += s.distinct;
            snap.duplicates += s.duplicates;
            snap.unparsed += s.unparsed;
            for (slot, h) in &s.slots {
                snap.slots
                    .entry(*slot)
                    .or_default()
                    .0
                    .add(h)
                    .expect("histograms share their bounds");
            }
        }
        snap
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A latency histogram that travels as JSON (between worker processes and in result files):
/// the recorded buckets as `[value, count]` pairs.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(histogram())
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u64, u64)> = self
            .0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        pairs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(d)?;
        let mut h = histogram();
        for (value, count) in pairs {
            h.saturating_record_n(value, count);
        }
        Ok(Hist(h))
    }
}

/// The counts of one or more processes' subscribers; snapshots add up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub connected: u64,
    pub failures: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    pub notices: BTreeMap<String, u64>,
    /// Messages received.
    pub delivered: u64,
    /// Of those, first receptions (by message number, per subscriber).
    pub distinct: u64,
    pub duplicates: u64,
    /// Messages whose payload did not carry the benchmark's fields.
    pub unparsed: u64,
    pub slots: BTreeMap<u8, Hist>,
}

impl Snapshot {
    pub fn merge(&mut self, other: Snapshot) {
        self.connected += other.connected;
        for (mine, theirs) in [
            (&mut self.failures, other.failures),
            (&mut self.dropped, other.dropped),
            (&mut self.notices, other.notices),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        self.delivered += other.delivered;
        self.distinct += other.distinct;
        self.duplicates += other.duplicates;
        self.unparsed += other.unparsed;
        for (slot, h) in other.slots {
            self.slots
                .entry(slot)
                .or_default()
                .0
                .add(&h.0)
                .expect("histograms share their bounds");
        }
    }

    /// The latency histogram of one slot (empty if none arrived).
    pub fn slot(&self, slot: u8) -> Histogram<u64> {
        self.slots
            .get(&slot)
            .map_or_else(histogram, |h| h.0.clone())
    }
}

/// Message numbers one subscriber has seen: a bitmap from the oldest number not yet seen,
/// whose leading all-seen words are dropped as it goes. In-order delivery keeps it at a word
/// or two; a lost message keeps the words after it until [`MAX_WORDS`], after which the
/// oldest are given up (a number older than that counts as a duplicate).
#[derive(Debug, Default)]
pub struct Seen {
    /// Number of the first bit of `words[0]`, a multiple of 64.
    base: u64,
    words: VecDeque<u64>,
}

/// At most this many 64-bit words per subscriber (a window of 262,144 message numbers).
const MAX_WORDS: usize = 4096;

impl Seen {
    /// Marks `n` seen; `false` if it already was (or is too old to tell).
    pub fn insert(&mut self, n: u64) -> bool {
        if n < self.base {
            return false;
        }
        let word = ((n - self.base) / 64) as usize;
        if word >= MAX_WORDS {
            let shift = word + 1 - MAX_WORDS;
            for _ in 0..shift.min(self.words.len()) {
                self.words.pop_front();
            }
            self.base += 64 * shift as u64;
            return self.insert(n);
        }
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1 << ((n - self.base) % 64);
        if self.words[word] & bit != 0 {
            return false;
        }
        self.words[word] |= bit;
        while self.words.len() > 1 && self.words[0] == u64::MAX {
            self.words.pop_front();
            self.base += 64;
        }
        true
    }
}

/// Opens subscribers `range` of `target`, `rate` handshakes per second at most (0: no pacing),
/// each one reading for the rest of the process's life. Returns once every handshake has
/// succeeded or failed, or `limit` has passed.
pub async fn open(
    target: Arc<Target>,
    range: Range<u64>,
    rate: u64,
    collector: Arc<Collector>,
    limit: Duration,
    progress: bool,
) {
    let count = range.end - range.start;
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    let started = Instant::now();
    let mut last_line = Instant::now();
    for (i, n) in range.enumerate() {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = handshakes
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (target, c) = (target.clone(), collector.clone());
        tokio::spawn(async move {
            let sub = target.subscribe(n).await;
            drop(permit);
            match sub {
                Ok(sub) => {
                    c.connected.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = read(sub, &c, n as usize).await {
                        Collector::count(&c.dropped, format!("{e:#}"));
                    }
                }
                Err(e) => Collector::count(&c.failures, format!("{e:#}")),
            }
        });
        if progress && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            eprintln!(
                "  started {}/{count}, connected {}, failed {}",
                i + 1,
                collector.connected(),
                collector.failed()
            );
        }
    }
    let deadline = Instant::now() + limit;
    while collector.connected() + collector.failed() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the connection closes: records each message, answers what needs answering,
/// pings when the target needs it.
pub async fn read(mut sub: Subscriber, collector: &Collector, shard: usize) -> anyhow::Result<()> {
    let mut seen = Seen::default();
    let mut local = Local::default();
    let every = sub.ping.as_ref().map(|(every, _)| *every);
    let sleep = tokio::time::sleep(every.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(sleep);
    // Bytes that came with the handshake's answer are handled before the first read.
    let mut now = collector.clock.now_us();
    loop {
        while let Some((len, item)) = sub.decoder.next(&sub.buf)? {
            match item {
                Item::Payload(range) => {
                    local.delivered += 1;
                    match payload::read(&sub.buf[range]) {
                        Some(f) => {
                            if seen.insert(f.n) {
                                local.distinct += 1;
                            } else {
                                local.duplicates += 1;
                            }
                            local.samples.push((f.s, now.saturating_sub(f.t)));
                        }
                        None => local.unparsed += 1,
                    }
                }
                Item::Reply(bytes) => {
                    sub.stream.write_all(&bytes).await?;
                    // TLS may keep a record back when the socket is full.
                    sub.stream.flush().await?;
                }
                Item::Notice(what) => Collector::count(&collector.notices, what),
                Item::Closed(why) => bail!("{why}"),
                Item::Skip => {}
            }
            sub.buf.advance(len);
        }
        collector.flush(shard, &mut local);
        if sub.buf.capacity() - sub.buf.len() < 1024 {
            sub.buf.reserve(4096);
        }
        loop {
            tokio::select! {
                n = sub.stream.read_buf(&mut sub.buf) => {
                    if n? == 0 {
                        bail!("closed by server");
                    }
                    break;
                }
                () = &mut sleep, if every.is_some() => {
                    if let (Some(every), Some((_, ping))) = (every, &sub.ping) {
                        sub.stream.write_all(ping).await?;
                        sub.stream.flush().await?;
                        sleep.as_mut().reset((Instant::now() + every).into());
                    }
                }
            }
        }
        now = collector.clock.now_us();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_each_number_once() {
        let mut s = Seen::default();
        assert!(s.insert(0));
        assert!(!s.insert(0));
        for n in (1..200).rev() {
            assert!(s.insert(n), "{n}");
        }
        assert!(!s.insert(150));
        // Everything below 200 was seen: the front words are gone.
        assert_eq!(s.base, 192);
        assert_eq!(s.words.len(), 1);
        // A hole at 200 keeps what follows, up to the window.
        for n in 201..1000 {
            assert!(s.insert(n));
        }
        assert!(s.words.len() > 10);
        assert!(s.insert(200));
        assert!(s.words.len() <= 1);
        // Far ahead: the window moves, older numbers are given up.
        assert!(s.insert(1000 + 64 * MAX_WORDS as u64 * 2));
        assert!(s.words.len() <= MAX_WORDS);
        assert!(!s.insert(1000));
    }

    #[test]
    fn snapshots_merge_and_travel() {
        let c = Collector::new(Clock::new());
        let mut local = Local {
            delivered: 3,
            distinct: 2,
            duplicates: 1,
            samples: vec![(1, 100), (1, 200), (0, 5)],
            ..Local::default()
        };
        c.flush(3, &mut local);
        Collector::count(&c.dropped, "closed by server".into());
        let snap = c.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        let mut back: Snapshot = serde_json::from_str(&json).unwrap();
        back.merge(snap);
        assert_eq!(back.delivered, 6);
        assert_eq!(back.duplicates, 2);
        assert_eq!(back.dropped["closed by server"], 2);
        let h = back.slot(1);
        assert_eq!(h.len(), 4);
        assert_eq!(h.max(), h.highest_equivalent(200));
        assert_eq!(back.slot(9).len(), 0);
    }
}
