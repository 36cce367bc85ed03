//! One app's fan-out worker: it takes the app's jobs in order, gathers publications that wait
//! together into batches, fills gaps in a topic's offsets from its history, paces deliveries,
//! and fans out in parallel when there are many recipients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_core::store::StoredMessage;
use tether_core::{AppId, ConnId, Outgoing, Seq, Store, TopicId};
use tether_proto::{Frame, Publication};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::batch::{BATCH_MAX, Batch, Reached, offer_batch};
use super::topic::Topic;
use super::{AppTopics, Job};
use crate::link::{Link, Links};
use crate::metrics::FanoutMetrics;
use crate::rate::Pacer;

/// Below this many recipients a fan-out runs inline: spawning would cost more than it saves.
const PARALLEL_MIN: usize = 2048;

/// Whether a fan-out writes to idle connections itself or queues for their tasks.
///
/// Writing directly saves each delivery a wake-up and a poll of the connection's task, but
/// costs one write per frame, on the worker. Queueing lets frames that pile up for a
/// connection leave in one write, which is what a saturated node needs. So: direct while the
/// worker keeps up (no job is waiting, none came in during the last direct fan-out, and those
/// keep it busy less than 80% of the time), and queueing for [`QUEUE_FOR`] once it does not.
#[derive(Debug)]
struct WriteMode {
    idle_since: tokio::time::Instant,
    /// How long the worker waited for the current job.
    waited: Duration,
    started: tokio::time::Instant,
    queue_until: Option<tokio::time::Instant>,
}

/// How long a worker that fell behind queues before it tries direct writes again.
const QUEUE_FOR: Duration = Duration::from_secs(1);

/// A direct fan-out that took this many times longer than the wait before it means the worker
/// is busy 80% of the time or more: close to falling behind.
const BUSY_RATIO: u32 = 4;

impl WriteMode {
    fn new() -> Self {
        let now = tokio::time::Instant::now();
        WriteMode {
            idle_since: now,
            waited: Duration::ZERO,
            started: now,
            queue_until: None,
        }
    }

    /// A fan-out job starts; `caught_up`: no other job is waiting.
    fn direct(&mut self, caught_up: bool) -> bool {
        let now = tokio::time::Instant::now();
        self.waited = now - self.idle_since;
        self.started = now;
        caught_up && self.queue_until.is_none_or(|until| now >= until)
    }

    /// A job that fans nothing out finished: its time counts neither as busy nor as waiting.
    fn not_fanout(&mut self) {
        self.idle_since = tokio::time::Instant::now();
    }

    /// The job finished; `backlog`: another job came in meanwhile and waits.
    fn done(&mut self, direct: bool, backlog: bool) {
        let now = tokio::time::Instant::now();
        if direct && (backlog || now - self.started > self.waited * BUSY_RATIO) {
            self.queue_until = Some(now + QUEUE_FOR);
        }
        self.idle_since = now;
    }
}

/// One app's fan-out worker.
pub(super) struct Worker {
    pub topics: Arc<AppTopics>,
    pub store: Arc<dyn Store>,
    /// Every connection of the node, for broadcasts.
    pub links: Arc<dyn Links>,
    pub pacer: Option<Pacer>,
    pub metrics: FanoutMetrics,
    pub history_cap: usize,
    pub shards: usize,
}

impl Worker {
    pub async fn run(self, mut rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
        let mut mode = WriteMode::new();
        // A job taken from the queue while gathering a batch, which did not belong to it.
        let mut next: Option<Job> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let job = match next.take() {
                Some(job) => job,
                None => {
                    let job = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return,
                        job = rx.recv() => match job {
                            Some(job) => job,
                            None => return,
                        },
                    };
                    self.metrics.queued.decrement(1.0);
                    job
                }
            };
            let direct = mode.direct(rx.is_empty());
            match job {
                Job::Publish { topic, offset, msg } => {
                    let mut items = vec![(offset, msg)];
                    next = self.gather(&mut rx, &mut items, |job| match job {
                        Job::Publish {
                            topic: t,
                            offset,
                            msg,
                        } if t == topic => Ok((offset, msg)),
                        other => Err(other),
                    });
                    self.publish(&topic, items, direct).await;
                    mode.done(direct, next.is_some() || !rx.is_empty());
                }
                Job::Broadcast { msg } => {
                    let mut items = vec![(0, msg)];
                    next = self.gather(&mut rx, &mut items, |job| match job {
                        Job::Broadcast { msg } => Ok((0, msg)),
                        other => Err(other),
                    });
                    for batch in Batch::group(items) {
                        self.broadcast(&Arc::new(batch), direct).await;
                    }
                    mode.done(direct, next.is_some() || !rx.is_empty());
                }
                Job::Recheck { topic } => {
                    if let Some(t) = self.topics.get(&topic) {
                        let fanned = t.fanned.load(std::sync::atomic::Ordering::Relaxed);
                        let missing = self.missing(&topic, fanned, u64::MAX).await;
                        if let Some((last, _)) = missing.last() {
                            t.fanned.store(*last, std::sync::atomic::Ordering::Relaxed);
                        }
                        self.fan_out(&t, &topic, missing, direct).await;
                    }
                    mode.done(direct, !rx.is_empty());
                }
                Job::Subscribe {
                    conn,
                    binding,
                    topic,
                    request,
                    since,
                } => {
                    self.subscribe(conn, binding, topic, request, since).await;
                    mode.not_fanout();
                }
                Job::Unsubscribe {
                    conn,
                    binding,
                    topic,
                    request,
                } => {
                    self.unsubscribe(&*conn, binding, &topic, request);
                    mode.not_fanout();
                }
            }
        }
    }

    /// Moves the jobs waiting right behind the current one into `items` while `fits` takes
    /// them (at most [`BATCH_MAX`] in all), and returns the first one it does not take.
    fn gather(
        &self,
        rx: &mut mpsc::Receiver<Job>,
        items: &mut Vec<(u64, Arc<Outgoing>)>,
        fits: impl Fn(Job) -> Result<(u64, Arc<Outgoing>), Job>,
    ) -> Option<Job> {
        while items.len() < BATCH_MAX {
            let Ok(job) = rx.try_recv() else {
                return None;
            };
            self.metrics.queued.decrement(1.0);
            match fits(job) {
                Ok(item) => items.push(item),
                Err(other) => return Some(other),
            }
        }
        None
    }

    /// Fans out publications of one topic, in the order given. A durable one that is not
    /// ahead of the last one fanned out was sent already (by the gap fill of a later one); one
    /// that is further ahead is preceded by the missing ones, read from the history.
    async fn publish(&self, topic_id: &TopicId, items: Vec<(u64, Arc<Outgoing>)>, direct: bool) {
        let Some(topic) = self.topics.get(topic_id) else {
            return; // no subscriber on this node
        };
        let mut out = Vec::with_capacity(items.len());
        for (offset, msg) in items {
            if offset != 0 {
                let fanned = topic.fanned.load(std::sync::atomic::Ordering::Relaxed);
                if offset <= fanned {
                    continue;
                }
                if offset > fanned + 1 {
                    out.extend(self.missing(topic_id, fanned, offset).await);
                }
                topic
                    .fanned
                    .store(offset, std::sync::atomic::Ordering::Relaxed);
            }
            out.push((offset, msg));
        }
        self.fan_out(&topic, topic_id, out, direct).await;
    }

    /// The publications between `fanned` and `offset` (exclusive) that the history still
    /// holds, in order. A failed read is logged and gives none: subscribers then see a jump in
    /// offsets and can resubscribe with `since`.
    async fn missing(
        &self,
        topic_id: &TopicId,
        fanned: u64,
        offset: u64,
    ) -> Vec<(u64, Arc<Outgoing>)> {
        let missing = ((offset - fanned - 1) as usize).min(self.history_cap);
        let page = match self
            .store
            .history(
                &self.topics.app,
                topic_id,
                Seq(fanned),
                missing,
                tether_core::now_ms(),
            )
            .await
        {
            Ok(page) => page,
            Err(e) => {
                self.metrics.store_errors.increment(1);
                warn!(app = %self.topics.app, topic = %topic_id, error = %e, "topic gap not filled");
                return Vec::new();
            }
        };
        let found: Vec<_> = page
            .messages
            .iter()
            .filter(|m| m.seq.0 > fanned && m.seq.0 < offset)
            .map(|m| {
                let msg = Arc::new(publication(&self.topics.app, topic_id, m));
                (m.seq.0, msg)
            })
            .collect();
        self.metrics.gap_fills.increment(found.len() as u64);
        found
    }

    /// Fans out `items` (publications of one topic, in order) in batches, each reaching every
    /// subscriber before the next starts.
    async fn fan_out(
        &self,
        topic: &Arc<Topic>,
        topic_id: &TopicId,
        items: Vec<(u64, Arc<Outgoing>)>,
        direct: bool,
    ) {
        for batch in Batch::group(items) {
            self.fan_topic(topic, topic_id, &Arc::new(batch), direct)
                .await;
        }
    }

    async fn fan_topic(
        &self,
        topic: &Arc<Topic>,
        topic_id: &TopicId,
        batch: &Arc<Batch>,
        direct: bool,
    ) {
        let started = Instant::now();
        let mut reached = Reached::default();
        if let Some(pacer) = &self.pacer {
            let subs = topic.snapshot(batch.needed_below());
            // Chunks of about a burst's deliveries, not a burst's recipients times the batch.
            for chunk in subs.chunks((pacer.chunk() / batch.len()).max(1)) {
                pacer.take(chunk.len() * batch.len()).await;
                self.metrics
                    .paced
                    .increment((chunk.len() * batch.len()) as u64);
                let (r, closed) = offer_all(chunk, batch, direct);
                reached.add(r);
                // Counted as closed only when this call removed them (their end may have).
                reached.closed += closed.into_iter().filter(|id| topic.remove(*id)).count() as u64;
            }
        } else if topic.len() >= PARALLEL_MIN && topic.shard_count() > 1 {
            // Every shard in a task of its own, none inline: a task spawned from this worker
            // thread waits in its LIFO slot, which other threads cannot steal from, until this
            // task yields, so a shard done inline would run the others after it, not beside.
            let mut tasks = Vec::with_capacity(topic.shard_count());
            for i in 0..topic.shard_count() {
                let (topic, batch) = (topic.clone(), batch.clone());
                tasks.push(tokio::spawn(async move {
                    topic.deliver_shard(i, &batch, direct)
                }));
            }
            for task in tasks {
                match task.await {
                    Ok(r) => reached.add(r),
                    Err(e) => warn!(error = %e, "a fan-out task failed"),
                }
            }
        } else {
            for i in 0..topic.shard_count() {
                reached.add(topic.deliver_shard(i, batch, direct));
            }
        }
        self.metrics
            .topic_seconds
            .record(started.elapsed().as_secs_f64());
        self.metrics.topic_deliveries.increment(reached.delivered);
        self.count_written(&reached);
        self.metrics.overflows.increment(reached.overflowed);
        if reached.closed > 0 {
            self.metrics.subscriptions.decrement(reached.closed as f64);
            self.topics.forget_if_empty(topic_id, &self.metrics);
        }
    }

    pub(super) fn count_written(&self, reached: &Reached) {
        for t in 0..3 {
            if reached.written[t] > 0 {
                self.metrics.frames_out[t].increment(reached.written[t]);
                self.metrics.bytes_out[t].increment(reached.written_bytes[t]);
            }
        }
    }

    async fn broadcast(&self, batch: &Arc<Batch>, direct: bool) {
        let started = Instant::now();
        let app = self.topics.app.clone();
        let mut reached = Reached::default();
        if let Some(pacer) = &self.pacer {
            let conns = self.links.snapshot(Some(&app));
            for chunk in conns.chunks((pacer.chunk() / batch.len()).max(1)) {
                pacer.take(chunk.len() * batch.len()).await;
                self.metrics
                    .paced
                    .increment((chunk.len() * batch.len()) as u64);
                reached.add(offer_all(chunk, batch, direct).0);
            }
        } else {
            let n = self.links.shard_count();
            let parts = if self.links.len() >= PARALLEL_MIN {
                self.shards
            } else {
                1
            };
            let step = n.div_ceil(parts);
            // As for topics: every part in its own task (see `fan_topic`).
            let mut tasks = Vec::with_capacity(parts);
            for start in (0..n).step_by(step) {
                let (links, batch, app) = (self.links.clone(), batch.clone(), app.clone());
                let range = start..(start + step).min(n);
                tasks.push(tokio::spawn(async move {
                    broadcast_range(&*links, range, &app, &batch, direct)
                }));
            }
            for task in tasks {
                match task.await {
                    Ok(r) => reached.add(r),
                    Err(e) => warn!(error = %e, "a broadcast task failed"),
                }
            }
        }
        self.metrics
            .broadcast_seconds
            .record(started.elapsed().as_secs_f64());
        self.metrics
            .broadcast_deliveries
            .increment(reached.delivered);
        self.count_written(&reached);
        self.metrics.overflows.increment(reached.overflowed);
    }
}

/// Hands the whole batch to each of `conns` (chosen by the caller as needing it); also returns
/// the connections found closed (not counted in the result: the caller decides whether they
/// leave).
fn offer_all(conns: &[Arc<dyn Link>], batch: &Batch, direct: bool) -> (Reached, Vec<ConnId>) {
    let mut reached = Reached::default();
    let mut closed = Vec::new();
    for conn in conns {
        if offer_batch(&**conn, conn.encoding(), batch, 0, direct, &mut reached) {
            closed.push(conn.id());
        }
    }
    (reached, closed)
}

fn broadcast_range(
    links: &dyn Links,
    range: std::ops::Range<usize>,
    app: &AppId,
    batch: &Batch,
    direct: bool,
) -> Reached {
    let mut reached = Reached::default();
    links.for_each_in(range, &mut |conn| {
        if conn.binding(app.as_str()).is_none() {
            return;
        }
        if offer_batch(conn, conn.encoding(), batch, 0, direct, &mut reached) {
            reached.closed += 1;
        }
    });
    reached
}

/// A stored publication as the frame subscribers get.
fn publication_body(app: &AppId, topic: &TopicId, m: &StoredMessage) -> Publication {
    Publication {
        app: app.to_string(),
        topic: topic.to_string(),
        offset: m.seq.0,
        msg_id: m.id.0,
        created_ms: m.created_ms,
        kind: m.kind,
        payload: m.payload.clone(),
    }
}

pub(super) fn publication_frame(app: &AppId, topic: &TopicId, m: &StoredMessage) -> Frame {
    Frame::new(0, publication_body(app, topic, m))
}

fn publication(app: &AppId, topic: &TopicId, m: &StoredMessage) -> Outgoing {
    Outgoing::publication(publication_body(app, topic, m))
}
