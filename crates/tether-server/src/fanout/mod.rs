//! Topics and broadcast: who is subscribed to what on this node, and the fan-out that reaches
//! them.
//!
//! - this module: one fan-out worker per app, its bounded job queue, subscribe and unsubscribe.
//! - [`topic`]: one topic's subscribers, sharded for parallel fan-out.
//!
//! # Ordering
//! Every job of one app (publication, broadcast, subscribe, unsubscribe) goes through the app's
//! queue and is done by the app's one worker, in order. A subscribe therefore never interleaves
//! with a publication of its topic: its reply and the publications it recovered from the
//! history are queued on the connection before the subscriber is added, and live publications
//! after that. Publications of one topic reach each subscriber in offset order: a durable
//! publication whose offset is ahead of the last one fanned out (concurrent API requests finish
//! out of order) first fans out the missing ones, read from the topic's history, and one that
//! is behind was sent already.
//!
//! # Cost
//! A publication is encoded once per encoding and its bytes are shared by every subscriber.
//! A topic's subscribers are split into one shard per runtime worker thread; a large fan-out
//! runs one task per shard, so every core queues frames. Connections write whatever they have
//! queued in one vectored write, so frames that pile up under load leave in one syscall.
//!
//! A worker that falls behind finds publications of one topic (or broadcasts) waiting behind
//! each other: it takes up to [`topic::BATCH_MAX`] of them and fans them out as one
//! [`Batch`], so that each subscriber costs one write (or one wake-up of its task) per batch
//! rather than per publication. Raw TCP subscribers get the batch's frames joined in one
//! buffer, built once. The busier the node, the more each write carries; a node that keeps up
//! sends each publication alone, at once.
//!
//! # Overload
//! - The job queue is bounded (`rate.fanout_queue`): the API answers 503 with `Retry-After`
//!   when it is full, before anything is stored.
//! - `rate.deliveries_per_sec` paces fan-out: a large broadcast is spread over time, and later
//!   jobs of the app wait behind it in the queue.
//! - A subscriber that does not read is closed as slow by its byte-bounded queue.

pub mod topic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tether_core::store::StoredMessage;
use tether_core::{AppId, ConnId, Outgoing, Seq, Store, TopicId};
use tether_proto::{Code, ErrorBody, Frame, Publication, Recovery, Subscribed, Unsubscribed};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::gateway::table::{ConnHandle, ConnTable, Enqueued};
use crate::rate::{Pacer, RequestLimit};
use topic::{BATCH_MAX, Batch, Reached, Sub, Topic, offer_batch};

/// Below this many recipients a fan-out runs inline: spawning would cost more than it saves.
const PARALLEL_MIN: usize = 2048;

/// Work for an app's fan-out worker. Publications of one topic (and broadcasts) that wait
/// behind each other in the queue are taken together and leave as one [`Batch`].
#[derive(Debug)]
pub enum Job {
    /// Fan `msg` out to the topic's subscribers. `offset` is its place in the topic's history,
    /// 0 for a live-only (qos 0) publication.
    Publish {
        topic: TopicId,
        offset: u64,
        msg: Arc<Outgoing>,
    },
    /// Queue `msg` (a qos 0 push) on every connection bound to the app.
    Broadcast { msg: Arc<Outgoing> },
    /// Add a connection to a topic, after recovering what it missed when `since` is given.
    /// The reply carries `request` (0 for a subscription made through the API).
    Subscribe {
        conn: Arc<ConnHandle>,
        binding: usize,
        topic: TopicId,
        request: u32,
        since: Option<u64>,
    },
    /// Fan out what the topic's history holds after what was fanned out (a publication may
    /// have been lost between nodes).
    Recheck { topic: TopicId },
    /// Remove a connection from a topic and confirm with `unsubscribed`.
    Unsubscribe {
        conn: Arc<ConnHandle>,
        binding: usize,
        topic: TopicId,
        request: u32,
    },
}

/// The app's fan-out queue is full: retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Fan-out metric handles.
#[derive(Debug, Clone)]
struct FanoutMetrics {
    topics: Gauge,
    subscriptions: Gauge,
    queued: Gauge,
    topic_deliveries: Counter,
    broadcast_deliveries: Counter,
    paced: Counter,
    overflows: Counter,
    /// Frames and bytes the fan-out wrote to sockets itself, by transport (the same series
    /// the connection tasks count theirs in; see [`topic::by_transport`]).
    frames_out: [Counter; 2],
    bytes_out: [Counter; 2],
    gap_fills: Counter,
    store_errors: Counter,
}

impl FanoutMetrics {
    fn new(overflows: Counter) -> Self {
        FanoutMetrics {
            topics: gauge!("tether_topics"),
            subscriptions: gauge!("tether_topic_subscriptions"),
            queued: gauge!("tether_fanout_queued"),
            topic_deliveries: counter!("tether_fanout_deliveries_total", "kind" => "topic"),
            broadcast_deliveries: counter!("tether_fanout_deliveries_total", "kind" => "broadcast"),
            paced: counter!("tether_paced_recipients_total"),
            overflows,
            frames_out: [
                counter!("tether_frames_out_total", "transport" => "tcp"),
                counter!("tether_frames_out_total", "transport" => "ws"),
            ],
            bytes_out: [
                counter!("tether_bytes_out_total", "transport" => "tcp"),
                counter!("tether_bytes_out_total", "transport" => "ws"),
            ],
            gap_fills: counter!("tether_topic_gap_fills_total"),
            store_errors: counter!("tether_store_errors_total", "op" => "history"),
        }
    }
}

/// The topics of one app on this node.
#[derive(Debug)]
struct AppTopics {
    app: AppId,
    /// Topics with at least one subscriber here. Adding and removing a subscriber happen under
    /// this lock, so a topic is never dropped while one is being added.
    topics: Mutex<HashMap<TopicId, Arc<Topic>>>,
}

impl AppTopics {
    fn lock(&self) -> MutexGuard<'_, HashMap<TopicId, Arc<Topic>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, topic: &TopicId) -> Option<Arc<Topic>> {
        self.lock().get(topic).cloned()
    }

    /// Removes `conn` from `topic`, and the topic once nobody is left.
    fn remove(&self, topic: &TopicId, conn: ConnId, metrics: &FanoutMetrics) -> bool {
        let mut topics = self.lock();
        let Some(t) = topics.get(topic) else {
            return false;
        };
        let gone = t.remove(conn);
        if gone {
            metrics.subscriptions.decrement(1.0);
        }
        if t.is_empty() {
            topics.remove(topic);
            metrics.topics.decrement(1.0);
        }
        gone
    }

    /// Drops `topic` if its subscribers all went (closed connections removed by a fan-out).
    fn forget_if_empty(&self, topic: &TopicId, metrics: &FanoutMetrics) {
        let mut topics = self.lock();
        if topics.get(topic).is_some_and(|t| t.is_empty()) {
            topics.remove(topic);
            metrics.topics.decrement(1.0);
        }
    }
}

#[derive(Debug)]
struct AppFanout {
    jobs: mpsc::Sender<Job>,
    topics: Arc<AppTopics>,
    requests: Option<RequestLimit>,
}

/// Topics and broadcast for every app of the node.
#[derive(Debug)]
pub struct Fanout {
    apps: HashMap<AppId, AppFanout>,
    table: Arc<ConnTable>,
    max_topics: usize,
    metrics: FanoutMetrics,
}

impl Fanout {
    /// Starts one worker per app; they stop at `shutdown` or when the fan-out is dropped.
    pub fn start(
        config: &Config,
        store: Arc<dyn Store>,
        table: Arc<ConnTable>,
        overflows: Counter,
        shutdown: CancellationToken,
    ) -> Arc<Fanout> {
        let metrics = FanoutMetrics::new(overflows);
        let shards = tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .clamp(1, 16);
        let mut apps = HashMap::new();
        for app in &config.apps {
            let rate = app.rate(&config.rate);
            let (tx, rx) = mpsc::channel(rate.fanout_queue);
            let topics = Arc::new(AppTopics {
                app: app.id.clone(),
                topics: Mutex::default(),
            });
            let worker = Worker {
                topics: topics.clone(),
                store: store.clone(),
                table: table.clone(),
                pacer: Pacer::new(rate.deliveries_per_sec, rate.deliveries_burst),
                metrics: metrics.clone(),
                history_cap: config.store.topic_history,
                shards,
            };
            tokio::spawn(worker.run(rx, shutdown.clone()));
            apps.insert(
                app.id.clone(),
                AppFanout {
                    jobs: tx,
                    topics,
                    requests: RequestLimit::new(rate.requests_per_sec, rate.requests_burst),
                },
            );
        }
        Arc::new(Fanout {
            apps,
            table,
            max_topics: config.limits.max_topics,
            metrics,
        })
    }

    /// Takes one API request of `app` from its rate limit, or says how long to wait.
    pub fn check_request(&self, app: &AppId) -> Result<(), Duration> {
        match self.apps.get(app).and_then(|a| a.requests.as_ref()) {
            Some(limit) => limit.check(),
            None => Ok(()),
        }
    }

    /// Queues a job for `app`'s worker without waiting.
    pub fn submit(&self, app: &AppId, job: Job) -> Result<(), Busy> {
        let fanout = self.apps.get(app).ok_or(Busy)?;
        fanout.jobs.try_send(job).map_err(|_| Busy)?;
        self.metrics.queued.increment(1.0);
        Ok(())
    }

    /// Reserves room for one job of `app`, so that a publication can be stored knowing its
    /// fan-out will be queued.
    pub fn reserve(&self, app: &AppId) -> Result<Reserved, Busy> {
        let fanout = self.apps.get(app).ok_or(Busy)?;
        let permit = fanout.jobs.clone().try_reserve_owned().map_err(|_| Busy)?;
        Ok(Reserved {
            permit,
            queued: self.metrics.queued.clone(),
        })
    }

    /// Each app's fan-out queue: (app, jobs waiting, the queue's capacity), sorted by app.
    pub fn queue_depths(&self) -> Vec<(AppId, usize, usize)> {
        let mut out: Vec<_> = self
            .apps
            .iter()
            .map(|(app, f)| {
                let capacity = f.jobs.max_capacity();
                (app.clone(), capacity - f.jobs.capacity(), capacity)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Subscribers of (app, topic) on this node.
    pub fn subscribers(&self, app: &AppId, topic: &TopicId) -> usize {
        self.apps
            .get(app)
            .and_then(|a| a.topics.get(topic))
            .map_or(0, |t| t.len())
    }

    /// Subscribes connection `conn` of this node (bound to `app`) to `topic` for the business:
    /// the connection gets `subscribed` with id 0. `Ok(false)`: the connection is gone, is
    /// already subscribed, or has no room for another topic.
    pub fn subscribe_conn(&self, app: &AppId, conn: ConnId, topic: &TopicId) -> Result<bool, Busy> {
        let Some(conn) = self.table.get(conn) else {
            return Ok(false);
        };
        let Some(binding) = conn.binding(app.as_str()) else {
            return Ok(false);
        };
        if conn.add_topic(binding, topic, self.max_topics) != Ok(true) {
            return Ok(false);
        }
        let job = Job::Subscribe {
            conn: conn.clone(),
            binding,
            topic: topic.clone(),
            request: 0,
            since: None,
        };
        self.submit(app, job).inspect_err(|_| {
            conn.remove_topic(binding, topic);
        })?;
        Ok(true)
    }

    /// Unsubscribes connection `conn` of this node from `topic` for the business: the
    /// connection gets `unsubscribed` with id 0. `Ok(false)`: it was not subscribed.
    pub fn unsubscribe_conn(
        &self,
        app: &AppId,
        conn: ConnId,
        topic: &TopicId,
    ) -> Result<bool, Busy> {
        let Some(conn) = self.table.get(conn) else {
            return Ok(false);
        };
        let Some(binding) = conn.binding(app.as_str()) else {
            return Ok(false);
        };
        if !conn.remove_topic(binding, topic) {
            return Ok(false);
        }
        let job = Job::Unsubscribe {
            conn: conn.clone(),
            binding,
            topic: topic.clone(),
            request: 0,
        };
        self.submit(app, job).inspect_err(|_| {
            let _ = conn.add_topic(binding, topic, usize::MAX);
        })?;
        Ok(true)
    }

    /// Queues a [`Job::Recheck`] for every topic with subscribers on this node. A full queue
    /// skips the topic (the next publication fills the gap).
    pub fn recheck_topics(&self) {
        for (app, fanout) in &self.apps {
            let topics: Vec<TopicId> = fanout.topics.lock().keys().cloned().collect();
            for topic in topics {
                let _ = self.submit(app, Job::Recheck { topic });
            }
        }
    }

    /// Takes a closing connection out of every topic it was in.
    pub fn leave_all(&self, conn: &ConnHandle) {
        for (binding, topic) in conn.take_topics() {
            let Some((app, _)) = conn.bindings.get(binding) else {
                continue;
            };
            if let Some(fanout) = self.apps.get(app) {
                fanout.topics.remove(&topic, conn.id, &self.metrics);
            }
        }
    }
}

/// Room for one job in an app's queue.
#[derive(Debug)]
pub struct Reserved {
    permit: mpsc::OwnedPermit<Job>,
    queued: Gauge,
}

impl Reserved {
    pub fn send(self, job: Job) {
        self.permit.send(job);
        self.queued.increment(1.0);
    }
}

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
struct Worker {
    topics: Arc<AppTopics>,
    store: Arc<dyn Store>,
    table: Arc<ConnTable>,
    pacer: Option<Pacer>,
    metrics: FanoutMetrics,
    history_cap: usize,
    shards: usize,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
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
                    self.unsubscribe(&conn, binding, &topic, request);
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
        self.metrics.topic_deliveries.increment(reached.delivered);
        self.count_written(&reached);
        self.metrics.overflows.increment(reached.overflowed);
        if reached.closed > 0 {
            self.metrics.subscriptions.decrement(reached.closed as f64);
            self.topics.forget_if_empty(topic_id, &self.metrics);
        }
    }

    fn count_written(&self, reached: &Reached) {
        for t in 0..2 {
            if reached.written[t] > 0 {
                self.metrics.frames_out[t].increment(reached.written[t]);
                self.metrics.bytes_out[t].increment(reached.written_bytes[t]);
            }
        }
    }

    async fn broadcast(&self, batch: &Arc<Batch>, direct: bool) {
        let app = self.topics.app.clone();
        let mut reached = Reached::default();
        if let Some(pacer) = &self.pacer {
            let mut conns = Vec::new();
            self.table.for_each_in(0..self.table.shard_count(), |c| {
                if c.binding(app.as_str()).is_some() {
                    conns.push(c.clone());
                }
            });
            for chunk in conns.chunks((pacer.chunk() / batch.len()).max(1)) {
                pacer.take(chunk.len() * batch.len()).await;
                self.metrics
                    .paced
                    .increment((chunk.len() * batch.len()) as u64);
                reached.add(offer_all(chunk, batch, direct).0);
            }
        } else {
            let n = self.table.shard_count();
            let parts = if self.table.len() >= PARALLEL_MIN {
                self.shards
            } else {
                1
            };
            let step = n.div_ceil(parts);
            // As for topics: every part in its own task (see `fan_topic`).
            let mut tasks = Vec::with_capacity(parts);
            for start in (0..n).step_by(step) {
                let (table, batch, app) = (self.table.clone(), batch.clone(), app.clone());
                let range = start..(start + step).min(n);
                tasks.push(tokio::spawn(async move {
                    broadcast_range(&table, range, &app, &batch, direct)
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
            .broadcast_deliveries
            .increment(reached.delivered);
        self.count_written(&reached);
        self.metrics.overflows.increment(reached.overflowed);
    }

    async fn subscribe(
        &self,
        conn: Arc<ConnHandle>,
        binding: usize,
        topic_id: TopicId,
        request: u32,
        since: Option<u64>,
    ) {
        if conn.is_closed() {
            return;
        }
        if !conn.has_topic(binding, &topic_id) {
            // An unsubscribe came after this subscribe, before its turn.
            if request != 0 {
                let error = Frame::new(
                    request,
                    ErrorBody {
                        code: Code::BAD_REQUEST,
                        message: format!("subscribe to {topic_id} cancelled by an unsubscribe"),
                    },
                );
                conn.enqueue(conn.encoding.encode(&error));
            }
            return;
        }
        let app = &self.topics.app;
        // With `since`, the history after it (and the head); otherwise the head is read only
        // when the topic is new on this node, since live publications start after it.
        let mut page = None;
        if since.is_some() || self.topics.get(&topic_id).is_none() {
            match self.read_history(&topic_id, since).await {
                Ok(p) => page = Some(p),
                Err(e) => return refuse(&conn, binding, &topic_id, request, &e),
            }
        }

        // What a recovery sends, or why it cannot.
        let mut recovered = Vec::new();
        let recovery = match (since, &page) {
            (None, _) | (_, None) => Recovery::Live,
            (Some(since), Some(page)) => {
                let head = page.head.0;
                let complete = since == head
                    || (since < head
                        && page.messages.first().is_some_and(|m| m.seq.0 == since + 1)
                        && page.messages.last().is_some_and(|m| m.seq.0 == head));
                let budget = conn.queue_limit() / 2;
                let mut bytes = 0;
                if complete {
                    for m in &page.messages {
                        let frame = conn.encoding.encode(&publication_frame(app, &topic_id, m));
                        bytes += frame.len();
                        recovered.push(frame);
                    }
                }
                if complete && bytes <= budget {
                    Recovery::Complete
                } else {
                    // The history no longer reaches back to `since` (or holds more than the
                    // connection can take at once): the client refetches from its business.
                    recovered.clear();
                    Recovery::TooOld
                }
            }
        };

        loop {
            if self.join(&conn, &topic_id, request, recovery, &mut recovered, &page) {
                return;
            }
            // The last subscriber left (a connection ending, outside this worker) since the
            // check above: the new topic needs the store's head.
            match self.read_history(&topic_id, None).await {
                Ok(p) => page = Some(p),
                Err(e) => return refuse(&conn, binding, &topic_id, request, &e),
            }
        }
    }

    /// Queues `subscribed` and the recovered frames, then adds the subscriber, all under the
    /// app's topic lock. `false` when the topic is not here and `page` holds no head to create
    /// it with.
    fn join(
        &self,
        conn: &Arc<ConnHandle>,
        topic_id: &TopicId,
        request: u32,
        recovery: Recovery,
        recovered: &mut Vec<bytes::Bytes>,
        page: &Option<tether_core::store::Page>,
    ) -> bool {
        let mut topics = self.topics.lock();
        let head = page.as_ref().map(|p| p.head.0);
        let topic = match (topics.get(topic_id), head) {
            (Some(topic), _) => topic.clone(),
            (None, Some(head)) => {
                let topic = Arc::new(Topic::new(self.shards, head));
                topics.insert(topic_id.clone(), topic.clone());
                self.metrics.topics.increment(1.0);
                topic
            }
            (None, None) => return false,
        };
        let fanned = topic.fanned.load(std::sync::atomic::Ordering::Relaxed);
        // Live publications start after `after`: everything up to it was recovered, or was
        // published before the subscription. A connection subscribed already keeps its
        // position if that is further on.
        let mut after = head.map_or(fanned, |h| h.max(fanned));
        if let Some(existing) = topic.position(conn.id) {
            after = after.max(existing);
        }
        let reply = Frame::new(
            request,
            Subscribed {
                app: self.topics.app.to_string(),
                topic: topic_id.to_string(),
                offset: after,
                recovery,
            },
        );
        let mut open = conn.enqueue(conn.encoding.encode(&reply)) == Enqueued::Queued;
        for frame in recovered.drain(..) {
            open &= conn.enqueue(frame) == Enqueued::Queued;
        }
        if open
            && topic.insert(Sub {
                conn: conn.clone(),
                after,
            })
        {
            self.metrics.subscriptions.increment(1.0);
        }
        if topic.is_empty() {
            topics.remove(topic_id);
            self.metrics.topics.decrement(1.0);
        }
        true
    }

    /// The topic's publications after `since` (all the history keeps), or only its head.
    async fn read_history(
        &self,
        topic: &TopicId,
        since: Option<u64>,
    ) -> Result<tether_core::store::Page, tether_core::StoreError> {
        let (after, limit) = match since {
            Some(since) => (since, self.history_cap),
            None => (u64::MAX, 0),
        };
        self.store
            .history(
                &self.topics.app,
                topic,
                Seq(after),
                limit,
                tether_core::now_ms(),
            )
            .await
            .inspect_err(|_| self.metrics.store_errors.increment(1))
    }

    fn unsubscribe(&self, conn: &ConnHandle, binding: usize, topic: &TopicId, request: u32) {
        // Always out, even when a subscribe queued after this one already re-added the topic
        // to the connection's list: that subscribe adds it back in its turn, after this
        // `unsubscribed`, so no publication arrives between the two.
        self.topics.remove(topic, conn.id, &self.metrics);
        let Some((app, _)) = conn.bindings.get(binding) else {
            return;
        };
        let reply = Frame::new(
            request,
            Unsubscribed {
                app: app.to_string(),
                topic: topic.to_string(),
            },
        );
        conn.enqueue(conn.encoding.encode(&reply));
    }
}

/// Answers a subscribe that cannot be served (the store is unavailable) with `error` 4301.
fn refuse(
    conn: &ConnHandle,
    binding: usize,
    topic: &TopicId,
    request: u32,
    e: &tether_core::StoreError,
) {
    debug!(topic = %topic, error = %e, "subscribe: history unavailable");
    conn.remove_topic(binding, topic);
    let error = Frame::new(
        request,
        ErrorBody {
            code: Code::UNAVAILABLE,
            message: format!("topic {topic} is unavailable: {e}"),
        },
    );
    conn.enqueue(conn.encoding.encode(&error));
}

/// Hands the whole batch to each of `conns` (chosen by the caller as needing it); also returns
/// the connections found closed (not counted in the result: the caller decides whether they
/// leave).
fn offer_all(conns: &[Arc<ConnHandle>], batch: &Batch, direct: bool) -> (Reached, Vec<ConnId>) {
    let mut reached = Reached::default();
    let mut closed = Vec::new();
    for conn in conns {
        if offer_batch(conn, batch, 0, direct, &mut reached) {
            closed.push(conn.id);
        }
    }
    (reached, closed)
}

fn broadcast_range(
    table: &ConnTable,
    range: std::ops::Range<usize>,
    app: &AppId,
    batch: &Batch,
    direct: bool,
) -> Reached {
    let mut reached = Reached::default();
    table.for_each_in(range, |conn| {
        if conn.binding(app.as_str()).is_none() {
            return;
        }
        if offer_batch(conn, batch, 0, direct, &mut reached) {
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

fn publication_frame(app: &AppId, topic: &TopicId, m: &StoredMessage) -> Frame {
    Frame::new(0, publication_body(app, topic, m))
}

fn publication(app: &AppId, topic: &TopicId, m: &StoredMessage) -> Outgoing {
    Outgoing::publication(publication_body(app, topic, m))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;
    use tether_core::{DeviceId, MemoryStore, Transport, UserId};
    use tether_proto::PayloadKind;

    use super::*;
    use crate::gateway::inbox::InboxState;
    use crate::gateway::table::{Encoding, NewConn};
    use crate::metrics::Metrics;

    fn conn(table: &ConnTable, app: &AppId) -> Arc<ConnHandle> {
        conn_over(table, app, Transport::Tcp, Encoding::Binary)
    }

    fn conn_over(
        table: &ConnTable,
        app: &AppId,
        transport: Transport,
        encoding: Encoding,
    ) -> Arc<ConnHandle> {
        conn_with_queue(table, app, transport, encoding, 1 << 20)
    }

    fn conn_with_queue(
        table: &ConnTable,
        app: &AppId,
        transport: Transport,
        encoding: Encoding,
        queue_limit: usize,
    ) -> Arc<ConnHandle> {
        let conn = Arc::new(ConnHandle::new(NewConn {
            id: table.next_id(),
            transport,
            encoding,
            device: DeviceId::from("d"),
            bindings: vec![(app.clone(), UserId::from("u"))],
            resume: vec![InboxState::resuming(0, 0)],
            queue_limit,
            direct: None,
            idle_limit: Duration::from_secs(600),
            now_ms: 0,
        }));
        table.insert(conn.clone());
        conn
    }

    /// Frames queued on `conns` since the last call.
    fn drain(conns: &[Arc<ConnHandle>]) -> usize {
        conns
            .iter()
            .map(|c| {
                let mut frames = VecDeque::new();
                c.take(&mut frames);
                frames.len()
            })
            .sum()
    }

    fn message(app: &AppId, topic: &TopicId) -> Arc<Outgoing> {
        numbered(app, topic, 0, 1)
    }

    fn numbered(app: &AppId, topic: &TopicId, offset: u64, msg_id: u64) -> Arc<Outgoing> {
        Arc::new(Outgoing::publication(Publication {
            app: app.to_string(),
            topic: topic.to_string(),
            offset,
            msg_id,
            created_ms: 0,
            kind: PayloadKind::Json,
            payload: Bytes::from(msg_id.to_string()),
        }))
    }

    /// The queue entries of `conn` since the last call, and the (offset, msg_id) of every
    /// publication in them, in order.
    fn publications(conn: &ConnHandle) -> (usize, Vec<(u64, u64)>) {
        let entries = take_written(conn);
        let mut frames = Vec::new();
        for entry in &entries {
            match conn.encoding {
                Encoding::Binary => {
                    let mut buf = bytes::BytesMut::from(&entry[..]);
                    while let Some(frame) = tether_proto::binary::decode(&mut buf, 1 << 20).unwrap()
                    {
                        frames.push(frame);
                    }
                    assert!(buf.is_empty(), "a partial frame in an entry");
                }
                Encoding::Json => frames.push(tether_proto::json::decode(entry).unwrap()),
            }
        }
        let found = frames
            .into_iter()
            .filter_map(|f| match f.body {
                tether_proto::Body::Publication(p) => Some((p.offset, p.msg_id)),
                _ => None,
            })
            .collect();
        (entries.len(), found)
    }

    fn started(config: &Config, store: Arc<dyn Store>) -> (Arc<Fanout>, Arc<ConnTable>) {
        let metrics = Metrics::new();
        let table = Arc::new(ConnTable::new(
            metrics.queue_overflows.clone(),
            metrics.push_deliveries.clone(),
        ));
        let fanout = Fanout::start(
            config,
            store,
            table.clone(),
            metrics.queue_overflows.clone(),
            CancellationToken::new(),
        );
        (fanout, table)
    }

    async fn subscribed(fanout: &Fanout, app: &AppId, topic: &TopicId, conns: &[&Arc<ConnHandle>]) {
        for c in conns {
            assert_eq!(fanout.subscribe_conn(app, c.id, topic), Ok(true));
        }
        while fanout.subscribers(app, topic) < conns.len() {
            tokio::task::yield_now().await;
        }
        for c in conns {
            take_written(c); // the `subscribed` reply
        }
    }

    /// What `conn` has queued, taken and reported written as its task would.
    fn take_written(conn: &ConnHandle) -> VecDeque<Bytes> {
        let mut entries = VecDeque::new();
        conn.take(&mut entries);
        conn.written(entries.iter().map(Bytes::len).sum(), 0);
        entries
    }

    #[tokio::test]
    async fn publications_waiting_together_leave_joined_for_tcp_and_one_by_one_for_websocket() {
        let (fanout, table) = started(&Config::for_tests(), Arc::new(MemoryStore::default()));
        let (app, topic) = (AppId::from("demo"), TopicId::from("t"));
        let tcp = conn(&table, &app);
        let ws = conn_over(&table, &app, Transport::Ws, Encoding::Json);
        subscribed(&fanout, &app, &topic, &[&tcp, &ws]).await;

        // Queued without yielding: the worker finds all five waiting. (Current-thread runtime.)
        for id in 1..=5 {
            let msg = numbered(&app, &topic, 0, id);
            let job = Job::Publish {
                topic: topic.clone(),
                offset: 0,
                msg,
            };
            fanout.submit(&app, job).unwrap();
        }
        while tcp.queued_bytes() == 0 || ws.queued_bytes() == 0 {
            tokio::task::yield_now().await;
        }
        let expected: Vec<(u64, u64)> = (1..=5).map(|id| (0, id)).collect();
        assert_eq!(
            publications(&tcp),
            (1, expected.clone()),
            "one entry, five frames"
        );
        assert_eq!(
            publications(&ws),
            (5, expected),
            "a WebSocket message per frame"
        );

        // A broadcast batch reaches every connection of the app the same way.
        for id in 6..=8 {
            let msg = Arc::new(Outgoing::new(tether_proto::Push {
                app: app.to_string(),
                msg_id: id,
                seq: 0,
                qos: 0,
                created_ms: 0,
                kind: PayloadKind::Json,
                payload: Bytes::from_static(b"{}"),
            }));
            fanout.submit(&app, Job::Broadcast { msg }).unwrap();
        }
        while tcp.queued_bytes() == 0 || ws.queued_bytes() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(take_written(&tcp).len(), 1);
        assert_eq!(take_written(&ws).len(), 3);
    }

    #[tokio::test]
    async fn a_batch_keeps_offset_order_fills_gaps_and_skips_what_a_subscriber_has() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let (fanout, table) = started(&Config::for_tests(), store.clone());
        let (app, topic) = (AppId::from("demo"), TopicId::from("t"));
        let tcp = conn(&table, &app);
        let ws = conn_over(&table, &app, Transport::Ws, Encoding::Binary);
        subscribed(&fanout, &app, &topic, &[&tcp, &ws]).await;
        for id in 1..=4u64 {
            let message = tether_core::store::NewMessage {
                id: tether_core::MessageId(id),
                created_ms: 0,
                expires_ms: u64::MAX,
                kind: PayloadKind::Json,
                payload: Bytes::from(id.to_string()),
            };
            assert_eq!(store.publish(&app, &topic, message).await.unwrap(), Seq(id));
        }
        // Requests that finished out of order: 2 first (1 comes from the history), 1 again
        // (sent already), then 4 (3 comes from the history).
        for offset in [2u64, 1, 4] {
            let msg = numbered(&app, &topic, offset, offset);
            let job = Job::Publish {
                topic: topic.clone(),
                offset,
                msg,
            };
            fanout.submit(&app, job).unwrap();
        }
        while tcp.queued_bytes() == 0 || ws.queued_bytes() == 0 {
            tokio::task::yield_now().await;
        }
        let expected: Vec<(u64, u64)> = (1..=4).map(|o| (o, o)).collect();
        assert_eq!(publications(&tcp), (1, expected.clone()));
        assert_eq!(publications(&ws), (4, expected));

        // A subscriber that has some of a batch gets only the rest, frame by frame.
        let t = fanout.apps[&app].topics.get(&topic).unwrap();
        let late = conn(&table, &app);
        t.insert(Sub {
            conn: late.clone(),
            after: 6,
        });
        let items = (5..=8).map(|o| (o, numbered(&app, &topic, o, o))).collect();
        let batches = Batch::group(items);
        assert_eq!(batches.len(), 1);
        for i in 0..t.shard_count() {
            t.deliver_shard(i, &batches[0], false);
        }
        assert_eq!(publications(&late), (2, vec![(7, 7), (8, 8)]));
        let (entries, got) = publications(&tcp);
        assert_eq!(entries, 1);
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a_batch_over_a_quarter_of_a_small_queue_goes_frame_by_frame_not_closed_as_slow() {
        let metrics = Metrics::new();
        let table = ConnTable::new(
            metrics.queue_overflows.clone(),
            metrics.push_deliveries.clone(),
        );
        let (app, topic_id) = (AppId::from("demo"), TopicId::from("t"));
        // The smallest queue the config allows with 4 KiB frames: 8 KiB.
        let small = conn_with_queue(&table, &app, Transport::Tcp, Encoding::Binary, 8 * 1024);
        let topic = Topic::new(1, 0);
        topic.insert(Sub {
            conn: small.clone(),
            after: 0,
        });
        let items: Vec<(u64, Arc<Outgoing>)> = (1..=3u64)
            .map(|o| {
                let msg = Arc::new(Outgoing::publication(Publication {
                    app: app.to_string(),
                    topic: topic_id.to_string(),
                    offset: o,
                    msg_id: o,
                    created_ms: 0,
                    kind: PayloadKind::Binary,
                    payload: Bytes::from(vec![1u8; 1500]),
                }));
                (o, msg)
            })
            .collect();
        let batches = Batch::group(items);
        assert_eq!(batches.len(), 1, "4.5 KiB is one batch");
        let reached = topic.deliver_shard(0, &batches[0], false);
        assert_eq!((reached.delivered, reached.overflowed), (3, 0));
        assert!(!small.is_closed());
        assert_eq!(publications(&small), (3, vec![(1, 1), (2, 2), (3, 3)]));
    }

    #[test]
    fn batches_are_bounded_in_count_and_bytes() {
        let (app, topic) = (AppId::from("demo"), TopicId::from("t"));
        let items = |n: u64, size: usize| -> Vec<(u64, Arc<Outgoing>)> {
            (1..=n)
                .map(|o| {
                    let msg = Arc::new(Outgoing::publication(Publication {
                        app: app.to_string(),
                        topic: topic.to_string(),
                        offset: o,
                        msg_id: o,
                        created_ms: 0,
                        kind: PayloadKind::Binary,
                        payload: Bytes::from(vec![0u8; size]),
                    }));
                    (o, msg)
                })
                .collect()
        };
        let sizes = |b: &[Batch]| b.iter().map(Batch::len).collect::<Vec<_>>();
        assert_eq!(sizes(&Batch::group(items(140, 10))), vec![64, 64, 12]);
        // About 10 KiB each: six fit under 64 KiB.
        assert_eq!(sizes(&Batch::group(items(13, 10_000))), vec![6, 6, 1]);
        // One larger than the bound still leaves, alone.
        assert_eq!(sizes(&Batch::group(items(2, 70_000))), vec![1, 1]);
        assert!(Batch::group(Vec::new()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_publication_is_spread_over_time_not_dropped() {
        let mut config = Config::for_tests();
        config.rate.deliveries_per_sec = 100;
        config.rate.deliveries_burst = 10;
        let metrics = Metrics::new();
        let table = Arc::new(ConnTable::new(
            metrics.queue_overflows.clone(),
            metrics.push_deliveries.clone(),
        ));
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let fanout = Fanout::start(
            &config,
            store,
            table.clone(),
            metrics.queue_overflows.clone(),
            CancellationToken::new(),
        );
        let app = AppId::from("demo");
        let topic = TopicId::from("t");
        let conns: Vec<_> = (0..50).map(|_| conn(&table, &app)).collect();
        for c in &conns {
            assert_eq!(fanout.subscribe_conn(&app, c.id, &topic), Ok(true));
        }
        while fanout.subscribers(&app, &topic) < 50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(drain(&conns), 50, "one `subscribed` each");

        fanout
            .submit(
                &app,
                Job::Publish {
                    topic: topic.clone(),
                    offset: 0,
                    msg: message(&app, &topic),
                },
            )
            .unwrap();
        let mut delivered = Vec::new();
        for _ in 0..6 {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            delivered.push(drain(&conns));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // The burst at once, then 10 every 100 ms: 100 recipients per second, none dropped.
        assert_eq!(delivered, vec![10, 10, 10, 10, 10, 0]);
        assert_eq!(fanout.subscribers(&app, &topic), 50);

        // A closed subscriber found by a paced fan-out leaves the topic.
        conns[0].finish();
        fanout
            .submit(
                &app,
                Job::Publish {
                    topic: topic.clone(),
                    offset: 0,
                    msg: message(&app, &topic),
                },
            )
            .unwrap();
        for _ in 0..6 {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(drain(&conns), 49);
        assert_eq!(fanout.subscribers(&app, &topic), 49);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_not_grown() {
        let mut config = Config::for_tests();
        config.rate.fanout_queue = 2;
        config.rate.deliveries_per_sec = 1;
        config.rate.deliveries_burst = 1;
        let metrics = Metrics::new();
        let table = Arc::new(ConnTable::new(
            metrics.queue_overflows.clone(),
            metrics.push_deliveries.clone(),
        ));
        let fanout = Fanout::start(
            &config,
            Arc::new(MemoryStore::default()),
            table.clone(),
            metrics.queue_overflows.clone(),
            CancellationToken::new(),
        );
        let app = AppId::from("demo");
        let topic = TopicId::from("t");
        // Two subscribers: the first publication waits a second for its second recipient,
        // holding the worker, and the queue (2) fills behind it.
        let conns: Vec<_> = (0..2).map(|_| conn(&table, &app)).collect();
        for c in &conns {
            fanout.subscribe_conn(&app, c.id, &topic).unwrap();
        }
        while fanout.subscribers(&app, &topic) < 2 {
            tokio::task::yield_now().await;
        }
        let publish = || Job::Publish {
            topic: topic.clone(),
            offset: 0,
            msg: message(&app, &topic),
        };
        let mut accepted = 0;
        let mut refused = 0;
        for _ in 0..10 {
            match fanout.submit(&app, publish()) {
                Ok(()) => accepted += 1,
                Err(Busy) => refused += 1,
            }
            tokio::task::yield_now().await;
        }
        assert!(accepted <= 3, "{accepted} accepted");
        assert!(refused >= 7, "{refused} refused");
        assert!(fanout.reserve(&app).is_err());
    }
}
