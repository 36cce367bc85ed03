//! Topics and broadcast: who is subscribed to what on this node, and the fan-out that reaches
//! them.
//!
//! - this module: [`Fanout`], one worker per app behind a bounded job queue; subscribe and
//!   unsubscribe.
//! - [`worker`]: an app's worker: publications, broadcasts, batches, gap fills, pacing.
//! - [`subscribe`]: a subscription's recovery from the history, and joining a topic.
//! - [`topic`]: one topic's subscribers, sharded for parallel fan-out.
//! - [`batch`]: publications that leave together, and how one connection takes them.
//!
//! Subscribers are [`Link`]s: the fan-out hands frames to connections without knowing how the
//! gateway keeps them.
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
//! each other: it takes up to [`batch::BATCH_MAX`] of them and fans them out as one
//! [`batch::Batch`], so that each subscriber costs one write (or one wake-up of its task) per
//! batch rather than per publication. Raw TCP subscribers get the batch's frames joined in one
//! buffer, built once. The busier the node, the more each write carries; a node that keeps up
//! sends each publication alone, at once.
//!
//! # Overload
//! - The job queue is bounded (`rate.fanout_queue`): the API answers 503 with `Retry-After`
//!   when it is full, before anything is stored.
//! - `rate.deliveries_per_sec` paces fan-out: a large broadcast is spread over time, and later
//!   jobs of the app wait behind it in the queue.
//! - A subscriber that does not read is closed as slow by its byte-bounded queue.

pub mod batch;
mod subscribe;
pub mod topic;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use tether_core::{AppId, ConnId, Outgoing, Store, TopicId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::link::{Binding, Link, Links};
use crate::metrics::FanoutMetrics;
use crate::rate::Pacer;
use topic::Topic;
use worker::Worker;

/// Work for an app's fan-out worker. Publications of one topic (and broadcasts) that wait
/// behind each other in the queue are taken together and leave as one [`batch::Batch`].
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
    /// The reply carries `request` (0 for a subscription made by the business).
    Subscribe {
        conn: Arc<dyn Link>,
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
        conn: Arc<dyn Link>,
        binding: usize,
        topic: TopicId,
        request: u32,
    },
}

/// The app's fan-out queue is full: retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Why a subscription was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The connection already has this many topics, the most it may.
    TooMany(usize),
    Busy,
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
}

/// Topics and broadcast for every app of the node.
#[derive(Debug)]
pub struct Fanout {
    /// One worker per app; a reload adds the workers of new apps.
    apps: ArcSwap<HashMap<AppId, Arc<AppFanout>>>,
    /// What a new app's worker is started with.
    spawn: Spawn,
    max_topics: usize,
    metrics: FanoutMetrics,
}

/// What every app's worker shares.
#[derive(Debug)]
struct Spawn {
    store: Arc<dyn Store>,
    links: Arc<dyn Links>,
    shutdown: CancellationToken,
    history_cap: usize,
    shards: usize,
}

impl Fanout {
    /// Starts one worker per app, broadcasting to the connections of `links`; they stop at
    /// `shutdown` or when the fan-out is dropped.
    pub fn start(
        config: &Config,
        store: Arc<dyn Store>,
        links: Arc<dyn Links>,
        shutdown: CancellationToken,
    ) -> Arc<Fanout> {
        let fanout = Fanout {
            apps: ArcSwap::default(),
            spawn: Spawn {
                store,
                links,
                shutdown,
                history_cap: config.store.topic_history,
                shards: tokio::runtime::Handle::current()
                    .metrics()
                    .num_workers()
                    .clamp(1, 16),
            },
            max_topics: config.limits.max_topics,
            metrics: FanoutMetrics::new(),
        };
        fanout.add_apps(config);
        Arc::new(fanout)
    }

    /// Starts a worker for each app of `config` that has none (a reload that adds apps). A
    /// removed app's worker stays until shutdown: its connections are closed, and nothing
    /// can reach it through the API any more.
    pub fn add_apps(&self, config: &Config) {
        let mut apps = HashMap::clone(&self.apps.load());
        for app in &config.apps {
            if apps.contains_key(&app.id) {
                continue;
            }
            let rate = app.rate(&config.rate);
            let (tx, rx) = mpsc::channel(rate.fanout_queue);
            let topics = Arc::new(AppTopics {
                app: app.id.clone(),
                topics: Mutex::default(),
            });
            let s = &self.spawn;
            let worker = Worker {
                topics: topics.clone(),
                store: s.store.clone(),
                links: s.links.clone(),
                pacer: Pacer::new(rate.deliveries_per_sec, rate.deliveries_burst),
                metrics: self.metrics.clone(),
                history_cap: s.history_cap,
                shards: s.shards,
            };
            tokio::spawn(worker.run(rx, s.shutdown.clone()));
            apps.insert(app.id.clone(), Arc::new(AppFanout { jobs: tx, topics }));
        }
        self.apps.store(Arc::new(apps));
    }

    /// Queues a job for `app`'s worker without waiting.
    pub fn submit(&self, app: &AppId, job: Job) -> Result<(), Busy> {
        let apps = self.apps.load();
        let fanout = apps.get(app).ok_or(Busy)?;
        fanout.jobs.try_send(job).map_err(|_| Busy)?;
        self.metrics.queued.increment(1.0);
        Ok(())
    }

    /// Reserves room for one job of `app`, so that a publication can be stored knowing its
    /// fan-out will be queued.
    pub fn reserve(&self, app: &AppId) -> Result<Reserved, Busy> {
        let apps = self.apps.load();
        let fanout = apps.get(app).ok_or(Busy)?;
        let permit = fanout.jobs.clone().try_reserve_owned().map_err(|_| Busy)?;
        Ok(Reserved {
            permit,
            metrics: self.metrics.clone(),
        })
    }

    /// Each app's fan-out queue: (app, jobs waiting, the queue's capacity), sorted by app.
    pub fn queue_depths(&self) -> Vec<(AppId, usize, usize)> {
        let mut out: Vec<_> = self
            .apps
            .load()
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
            .load()
            .get(app)
            .and_then(|a| a.topics.get(topic))
            .map_or(0, |t| t.len())
    }

    /// A client's subscribe (request id `request`) of binding `binding` of `conn` to `topic`:
    /// counted against the connection's topics, then queued for the app's worker, which
    /// answers `subscribed` after recovering what came after `since`. A connection subscribed
    /// already is answered again. Returns whether it is new.
    pub fn subscribe(
        &self,
        conn: Arc<dyn Link>,
        binding: usize,
        topic: &TopicId,
        request: u32,
        since: Option<u64>,
    ) -> Result<bool, SubscribeError> {
        let topic = &self.interned(&*conn, binding, topic);
        let new = conn
            .add_topic(binding, topic, self.max_topics)
            .map_err(SubscribeError::TooMany)?;
        self.subscribe_added(conn, binding, topic, request, since, new)
            .map_err(|Busy| SubscribeError::Busy)?;
        Ok(new)
    }

    /// The business subscribes binding `binding` of `conn` to `topic` (the connection gets
    /// `subscribed` with request id 0). Nothing is queued when it already is, or has no room
    /// for another topic. Returns whether it was queued.
    pub fn join(&self, conn: Arc<dyn Link>, binding: usize, topic: &TopicId) -> Result<bool, Busy> {
        let topic = &self.interned(&*conn, binding, topic);
        // One step, under the connection's lock: a subscription that lands meanwhile (the
        // client's, or another from the business) must not make this one answer twice.
        if conn.add_topic(binding, topic, self.max_topics) != Ok(true) {
            return Ok(false);
        }
        self.subscribe_added(conn, binding, topic, 0, None, true)?;
        Ok(true)
    }

    /// `topic` as the app's topic table holds it, when the topic has subscribers here: the
    /// connection keeps that one rather than its own copy read from the wire, so that a topic's
    /// name is one allocation however many connections are in it.
    fn interned(&self, conn: &dyn Link, binding: usize, topic: &TopicId) -> TopicId {
        let Some(Binding { app, .. }) = conn.bindings().get(binding) else {
            return topic.clone();
        };
        self.apps
            .load()
            .get(app)
            .and_then(|fanout| {
                let topics = fanout.topics.lock();
                topics
                    .get_key_value(topic)
                    .map(|(interned, _)| interned.clone())
            })
            .unwrap_or_else(|| topic.clone())
    }

    /// Queues the subscribe job of a topic `add_topic` counted (`new`: it was not there).
    fn subscribe_added(
        &self,
        conn: Arc<dyn Link>,
        binding: usize,
        topic: &TopicId,
        request: u32,
        since: Option<u64>,
        new: bool,
    ) -> Result<(), Busy> {
        let job = Job::Subscribe {
            conn: conn.clone(),
            binding,
            topic: topic.clone(),
            request,
            since,
        };
        self.submit_or(&conn, binding, job, || {
            if new {
                conn.remove_topic(binding, topic);
            }
        })
    }

    /// A client's unsubscribe (request id `request`) of binding `binding` of `conn` from
    /// `topic`: the app's worker takes it out and answers `unsubscribed`, subscribed or not.
    /// Returns whether it was subscribed.
    pub fn unsubscribe(
        &self,
        conn: Arc<dyn Link>,
        binding: usize,
        topic: &TopicId,
        request: u32,
    ) -> Result<bool, Busy> {
        let had = conn.remove_topic(binding, topic);
        self.unsubscribe_removed(conn, binding, topic, request, had)?;
        Ok(had)
    }

    /// The business unsubscribes binding `binding` of `conn` from `topic` (the connection
    /// gets `unsubscribed` with request id 0). Nothing is queued when it was not subscribed.
    /// Returns whether it was queued.
    pub fn leave(
        &self,
        conn: Arc<dyn Link>,
        binding: usize,
        topic: &TopicId,
    ) -> Result<bool, Busy> {
        if !conn.remove_topic(binding, topic) {
            return Ok(false);
        }
        self.unsubscribe_removed(conn, binding, topic, 0, true)?;
        Ok(true)
    }

    /// Queues the unsubscribe job of a topic `remove_topic` took out (`had`: it was there).
    fn unsubscribe_removed(
        &self,
        conn: Arc<dyn Link>,
        binding: usize,
        topic: &TopicId,
        request: u32,
        had: bool,
    ) -> Result<(), Busy> {
        let job = Job::Unsubscribe {
            conn: conn.clone(),
            binding,
            topic: topic.clone(),
            request,
        };
        self.submit_or(&conn, binding, job, || {
            if had {
                // Still subscribed: keep counting it.
                let _ = conn.add_topic(binding, topic, usize::MAX);
            }
        })
    }

    /// Queues `job` for the app of binding `binding` of `conn`, or undoes what the caller did
    /// for it when the queue is full.
    fn submit_or(
        &self,
        conn: &Arc<dyn Link>,
        binding: usize,
        job: Job,
        undo: impl FnOnce(),
    ) -> Result<(), Busy> {
        let app = &conn.bindings()[binding].app;
        self.submit(app, job).inspect_err(|_| undo())
    }

    /// Queues a [`Job::Recheck`] for every topic with subscribers on this node. A full queue
    /// skips the topic (the next publication fills the gap).
    pub fn recheck_topics(&self) {
        for (app, fanout) in self.apps.load().iter() {
            let topics: Vec<TopicId> = fanout.topics.lock().keys().cloned().collect();
            for topic in topics {
                let _ = self.submit(app, Job::Recheck { topic });
            }
        }
    }

    /// Takes a closing connection out of `topics`, every (binding, topic) it was in.
    pub fn leave_all(&self, conn: &dyn Link, topics: Vec<(usize, TopicId)>) {
        for (binding, topic) in topics {
            let Some(Binding { app, .. }) = conn.bindings().get(binding) else {
                continue;
            };
            if let Some(fanout) = self.apps.load().get(app) {
                fanout.topics.remove(&topic, conn.id(), &self.metrics);
            }
        }
    }
}

/// Room for one job in an app's queue.
#[derive(Debug)]
pub struct Reserved {
    permit: mpsc::OwnedPermit<Job>,
    metrics: FanoutMetrics,
}

impl Reserved {
    pub fn send(self, job: Job) {
        self.permit.send(job);
        self.metrics.queued.increment(1.0);
    }
}

#[cfg(test)]
mod tests;
