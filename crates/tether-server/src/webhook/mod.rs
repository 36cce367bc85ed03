//! The upstream role (the coordinator of the reference design): forwards what clients send
//! upstream, and the online / offline events of their users, to each app's webhook, and
//! routes the webhook's answers back to the sending connection. It also asks the webhook who
//! may subscribe, for the apps' `webhook` topic rules.
//!
//! - this module: [`Webhooks`], the per-app queues and the gateway's entry points.
//! - [`sign`]: the signature scheme (public, so that a Rust business can verify with it).
//! - `post`: one delivery, a signed POST retried with exponential backoff and jitter.
//! - `upstream`: an app's bounded queue and fixed pool of workers; answers to connections.
//! - `presence`: per-user connection counts and the batching flusher.
//! - `permission`: the `webhook` topic rule's questions and its cache of answers (built
//!   with the apps' rules, `crate::session::access`, and swapped with them by a reload; the
//!   rest of this module is set up once, at start).
//!
//! # Overload
//! Nothing here grows without bound and nothing is spawned per request:
//! - upstream: `webhook.queue` jobs wait per app for its `webhook.workers` workers; a frame
//!   that finds the queue full is answered `error` 4301 at once. A connection has at most
//!   `webhook.max_in_flight` upstreams queued or being delivered (4302 past it), so one client
//!   cannot fill its app's queue alone.
//! - presence: `webhook.events_queue` events wait per app; an event that finds the queue full
//!   is dropped and counted. One flusher per app sends one batch at a time, so a reconnect
//!   storm reaches the business as a few large POSTs, never as a flood.

pub(crate) mod permission;
mod post;
mod presence;
pub mod sign;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use tether_core::{AppId, MessageIdGen, NodeId, Transport, validate_id};
use tether_proto::{Code, ErrorBody, Upstream};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Secret};
use crate::link::{Binding, Link, Links};
use crate::metrics::HookMetrics;
use crate::transport::Will;
use post::{Post, Poster};
use presence::{Flusher, Presence, SeqGen};
use upstream::{InFlight, Job, Worker};

/// Where one app's deliveries go, and how they are signed and named.
#[derive(Debug)]
pub(crate) struct Target {
    pub app: AppId,
    pub url: String,
    pub secret: Secret,
    pub node: NodeId,
    /// Delivery ids: `<node>-<id>`, unique across nodes with distinct ids.
    pub ids: Arc<MessageIdGen>,
}

impl Target {
    /// A new delivery of an `event` (`upstream`, `presence`, `subscribe_check`) to this webhook, with a new id
    /// that `body` gets to write into the body.
    pub fn post(&self, event: &'static str, body: impl FnOnce(&str) -> Bytes) -> Post<'_> {
        let id = format!("{}-{}", self.node, self.ids.next());
        Post {
            url: &self.url,
            secret: self.secret.expose().as_bytes(),
            body: body(&id),
            id,
            event,
        }
    }
}

/// One queue of one app's webhook, for the admin stats.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HookStats {
    #[schema(value_type = String)]
    pub app: AppId,
    /// `upstream` or `presence`.
    pub kind: &'static str,
    pub queued: usize,
    pub capacity: usize,
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
}

/// One app's upstream queue.
#[derive(Debug)]
struct AppUpstream {
    jobs: mpsc::Sender<Job>,
    in_flight: Arc<InFlight>,
    metrics: HookMetrics,
}

/// What each app with a webhook has.
#[derive(Debug)]
struct AppHooks {
    upstream: AppUpstream,
    presence: Option<Presence>,
}

/// Webhooks of every app of the node.
#[derive(Debug)]
pub struct Webhooks {
    apps: HashMap<AppId, AppHooks>,
    max_payload: usize,
    finishing: CancellationToken,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Webhooks {
    /// No app has a webhook: upstream frames are answered 4303, no events are sent.
    pub fn disabled() -> Webhooks {
        Webhooks {
            apps: HashMap::new(),
            max_payload: 0,
            finishing: CancellationToken::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Starts the workers and flushers of every app with a webhook. Answers to upstreams are
    /// queued on the connections of `links`. Everything stops when the `Webhooks` is dropped.
    pub fn start(config: &Config, links: Arc<dyn Links>) -> Result<Arc<Webhooks>, reqwest::Error> {
        let mut webhooks = Webhooks::disabled();
        webhooks.max_payload = config.limits.max_payload;
        if config.apps.iter().all(|a| a.webhook.is_none()) {
            return Ok(Arc::new(webhooks));
        }
        let w = &config.webhook;
        let poster = Arc::new(Poster::new(w, config.limits.max_payload)?);
        let node = NodeId::new(config.node.id.clone());
        let ids = Arc::new(MessageIdGen::new(0));
        let seq = Arc::new(SeqGen::default());
        for app in &config.apps {
            let Some(url) = &app.webhook else {
                continue;
            };
            let target = Arc::new(Target {
                app: app.id.clone(),
                url: url.clone(),
                secret: app.secret.clone(),
                node: node.clone(),
                ids: ids.clone(),
            });
            let metrics = HookMetrics::new(app.id.as_str(), "upstream");
            let (tx, rx) = mpsc::channel(w.queue);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..w.workers {
                let worker = Worker {
                    target: target.clone(),
                    poster: poster.clone(),
                    links: links.clone(),
                    jobs: rx.clone(),
                    metrics: metrics.clone(),
                    retries: w.retries,
                    finishing: webhooks.finishing.clone(),
                    stop: webhooks.stop.clone(),
                };
                webhooks.tasks.spawn(worker.run());
            }
            let presence = app.presence_events.then(|| {
                let metrics = HookMetrics::new(app.id.as_str(), "presence");
                let (tx, rx) = mpsc::channel(w.events_queue);
                let flusher = Flusher {
                    target: target.clone(),
                    poster: poster.clone(),
                    events: rx,
                    batch: w.events_batch,
                    interval: w.events_interval,
                    metrics: metrics.clone(),
                    finishing: webhooks.finishing.clone(),
                    stop: webhooks.stop.clone(),
                };
                webhooks.tasks.spawn(flusher.run());
                Presence::new(tx, seq.clone(), metrics)
            });
            webhooks.apps.insert(
                app.id.clone(),
                AppHooks {
                    upstream: AppUpstream {
                        jobs: tx,
                        in_flight: InFlight::new(w.max_in_flight),
                        metrics,
                    },
                    presence,
                },
            );
        }
        Ok(Arc::new(webhooks))
    }

    /// Every webhook queue of the node: depth, capacity, and what was sent, failed and dropped
    /// since the node started.
    pub fn stats(&self) -> Vec<HookStats> {
        let mut out = Vec::new();
        for (app, hooks) in &self.apps {
            let up = &hooks.upstream;
            out.push(HookStats {
                app: app.clone(),
                kind: "upstream",
                queued: up.jobs.max_capacity() - up.jobs.capacity(),
                capacity: up.jobs.max_capacity(),
                sent: up.metrics.sent.total(),
                failed: up.metrics.failed.total(),
                dropped: up.metrics.dropped.total(),
            });
            if let Some(presence) = &hooks.presence {
                let (queued, capacity, metrics) = presence.queue();
                out.push(HookStats {
                    app: app.clone(),
                    kind: "presence",
                    queued,
                    capacity,
                    sent: metrics.sent.total(),
                    failed: metrics.failed.total(),
                    dropped: metrics.dropped.total(),
                });
            }
        }
        out.sort_by(|a, b| (&a.app, a.kind).cmp(&(&b.app, b.kind)));
        out
    }

    /// Takes an `upstream` frame (request id `request`) of binding `binding` of `conn` for its
    /// app's webhook, or says why not, as the `error` the client gets. Never waits.
    pub fn upstream(
        &self,
        conn: &dyn Link,
        binding: usize,
        request: u32,
        up: Upstream,
    ) -> Result<(), ErrorBody> {
        let error = |code: Code, message: String| ErrorBody { code, message };
        let Binding { app, user, .. } = &conn.bindings()[binding];
        let Some(hooks) = self.apps.get(app) else {
            return Err(error(
                Code::NO_WEBHOOK,
                format!("no webhook configured for app {app}: it takes no upstream data"),
            ));
        };
        if let Err(e) = validate_id("upstream kind", &up.kind) {
            return Err(error(Code::BAD_REQUEST, e));
        }
        if up.payload.len() > self.max_payload {
            return Err(error(
                Code::BAD_REQUEST,
                format!(
                    "an upstream payload of {} bytes is larger than the limit of {}",
                    up.payload.len(),
                    self.max_payload
                ),
            ));
        }
        let hooks = &hooks.upstream;
        let ticket = hooks.in_flight.take(conn.id()).map_err(|max| {
            hooks.metrics.limited.increment(1);
            error(
                Code::LIMIT,
                format!("this connection already has {max} upstreams waiting for their answer"),
            )
        })?;
        let job = Job {
            conn: conn.id(),
            request,
            user: user.clone(),
            device: conn.device().clone(),
            transport: conn.transport(),
            kind: up.kind,
            payload_kind: up.payload_kind,
            payload: up.payload,
            received_ms: tether_core::now_ms(),
            ticket,
            will: false,
        };
        match hooks.jobs.try_send(job) {
            Ok(()) => {
                hooks.metrics.queued.increment(1.0);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                hooks.metrics.dropped.increment(1);
                Err(error(
                    Code::UNAVAILABLE,
                    format!("busy: the upstream queue of app {app} is full; retry later"),
                ))
            }
            Err(TrySendError::Closed(_)) => Err(error(
                Code::UNAVAILABLE,
                "the server is shutting down; retry later".into(),
            )),
        }
    }

    /// Takes a will (docs/mqtt.md, section 9) for its app's webhook, as an upstream of its
    /// gone connection: the same checks, queue and per-connection bound, and no answer to
    /// route. One that cannot be taken is dropped, logged and counted like a refused upstream.
    pub fn will(&self, will: Will) {
        let Will {
            app,
            user,
            device,
            conn,
            kind,
            payload_kind,
            payload,
        } = will;
        let Some(hooks) = self.apps.get(&app) else {
            tracing::debug!(%app, "a will is dropped: the app has no webhook");
            return;
        };
        let hooks = &hooks.upstream;
        if validate_id("upstream kind", &kind).is_err() || payload.len() > self.max_payload {
            tracing::debug!(%app, "a will is dropped: its topic or its size is not an upstream's");
            hooks.metrics.dropped.increment(1);
            return;
        }
        let Ok(ticket) = hooks.in_flight.take(conn) else {
            hooks.metrics.limited.increment(1);
            return;
        };
        let job = Job {
            conn,
            request: 0,
            user,
            device,
            transport: Transport::Mqtt,
            kind,
            payload_kind,
            payload,
            received_ms: tether_core::now_ms(),
            ticket,
            will: true,
        };
        match hooks.jobs.try_send(job) {
            Ok(()) => hooks.metrics.queued.increment(1.0),
            Err(_) => {
                tracing::debug!(%app, "a will is dropped: the upstream queue is full");
                hooks.metrics.dropped.increment(1);
            }
        }
    }

    /// A connection completed its handshake: `online` events for the users of its bindings
    /// whose apps ask for them and who had no connection on this node.
    pub fn connected(&self, conn: &dyn Link) {
        for Binding { app, user, .. } in conn.bindings() {
            if let Some(presence) = self.apps.get(app).and_then(|h| h.presence.as_ref()) {
                presence.connected(user, conn.device(), conn.id());
            }
        }
    }

    /// A connection that [`Webhooks::connected`] saw has closed: `offline` events for the
    /// users it was the last connection of.
    pub fn disconnected(&self, conn: &dyn Link) {
        for Binding { app, user, .. } in conn.bindings() {
            if let Some(presence) = self.apps.get(app).and_then(|h| h.presence.as_ref()) {
                presence.disconnected(user, conn.device(), conn.id());
            }
        }
    }

    /// At shutdown, once the connections are closed: sends what is queued (upstreams, and
    /// presence events without waiting for their batch interval), and returns when it is
    /// sent. The caller bounds the wait; dropping the `Webhooks` abandons what is left.
    pub async fn finish(&self) {
        self.finishing.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
