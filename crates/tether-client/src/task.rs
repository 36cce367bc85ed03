//! The connection task: owns the socket, runs the handshake, heartbeats, acks and topic
//! requests, hands events to the [`crate::Client`], and reconnects.
//!
//! # States
//!
//! ```text
//!   connect() ── handshake ──> connected ──(lost: I/O, heartbeat, disconnect 40xx/41xx)──> waiting
//!       │ error                   │  ▲                                                        │
//!       v                         │  └────────────── handshake ok <──── backoff elapsed ──────┘
//!   Err to caller                 │                                     │ 42xx, or reconnect off
//!                                 └── close()/drop ──> closed           v
//!                                                                     given up (stream ends)
//! ```
//!
//! A close with 4205 (`token_expired`) ends the stream too, unless the application gave a
//! [`crate::TokenSource`]: then the task fetches new tokens and reconnects (see
//! `crate::refresh` for when it does not).
//!
//! A connection is considered dead when nothing arrived within two heartbeat intervals of a
//! ping (`docs/protocol.md`, section 6) while the task was reading: the server answers every
//! ping, so a live server is never silent that long.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tether_proto::{
    Ack, Binding, Body, Code, Connect, Connected, Frame, Group, PROTOCOL_VERSION, Push,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client::Shared;
use crate::config::{Endpoint, Route};
use crate::dispatch::Dispatcher;
use crate::refresh::Tokens;
use crate::tls::Tls;
use crate::topics::Topics;
use crate::transport::{Incoming, Transport};
use crate::upstream::InFlight;
use crate::{ClientConfig, ClientError, Event};
use tokens::is_token_expired;

mod tokens;

/// The shortest heartbeat interval the client accepts from a server (a guard against a
/// misconfigured server turning pings into a flood).
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// How long the token source is given for one token.
const FETCH_LIMIT: Duration = Duration::from_secs(30);

/// How long a closing client tries to write its pending acks.
const CLOSE_ACK_LIMIT: Duration = Duration::from_millis(500);

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The user closed or dropped the client.
    Closed,
    /// The connection was lost; maybe reconnect.
    Lost {
        code: Option<Code>,
        reason: String,
        retry_after: Duration,
    },
}

impl End {
    fn lost(reason: impl Into<String>) -> End {
        End::Lost {
            code: None,
            reason: reason.into(),
            retry_after: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Task {
    config: ClientConfig,
    /// The configured endpoint: the only one without a dispatcher, the last resort with one.
    fixed: Option<Endpoint>,
    dispatcher: Option<Dispatcher>,
    /// The URL of the endpoint of the connection up (or last up), when a dispatcher gave it.
    current: Option<String>,
    /// Reconnect delays: the config's policy, or the dispatcher's when it gave one.
    backoff: Backoff,
    /// The TLS config, built at the first TLS connection and kept for every later one.
    tls: Tls,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    /// The last request id used (ids start at 1; 0 is for frames that answer nothing).
    last_id: u32,
    /// Events that found the queue full, oldest first; while there are any the task does not
    /// read the socket. Holds at most one event read from the socket, plus the few a token
    /// fetch or retry produces (one fetch per app at a time, one retry per token).
    held: VecDeque<Event>,
    /// The highest durable seq handed to the user, per app of the bindings (which bounds the
    /// map). A reconnect resumes after it; a push at or below it is a duplicate and dropped.
    last_seqs: HashMap<String, u64>,
    /// Topic subscriptions and their offsets, kept across reconnects.
    topics: Topics,
    /// Upstreams sent on the current connection, waiting for their answer.
    upstreams: InFlight,
    /// The bindings' tokens and their refreshes.
    tokens: Tokens,
}

impl Task {
    pub fn new(
        config: ClientConfig,
        route: Route,
        events: mpsc::Sender<Event>,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) -> Result<Task, ClientError> {
        let mut tls = Tls::new(config.tls_roots.clone());
        let dispatcher = match route.dispatch {
            Some(url) => {
                // Validation guarantees a binding.
                let first = config
                    .bindings
                    .first()
                    .ok_or_else(|| ClientError::Config("at least one binding is needed".into()))?;
                Some(Dispatcher::new(
                    url,
                    &mut tls,
                    first.app.clone(),
                    first.token.clone(),
                    config.connect_timeout,
                )?)
            }
            None => None,
        };
        Ok(Task {
            fixed: route.fixed,
            dispatcher,
            current: None,
            backoff: Backoff::new(&config.reconnect),
            tls,
            events,
            shared,
            cancel,
            last_id: 0,
            held: VecDeque::new(),
            last_seqs: HashMap::new(),
            topics: Topics::new(&config.reconnect),
            upstreams: InFlight::default(),
            tokens: Tokens::new(&config.bindings, config.token_source.is_some()),
            config,
        })
    }

    fn next_id(&mut self) -> u32 {
        next_request_id(&mut self.last_id)
    }

    /// Connects and runs the handshake. Without a dispatcher: to the configured endpoint,
    /// within `connect_timeout`. With one: asks it (reporting what failed), then tries the
    /// endpoints in order, each within `connect_timeout`, until one accepts; an endpoint that
    /// fails is reported at the next request. An error that another endpoint cannot fix (a
    /// bad token, a do-not-reconnect code) ends the round at once.
    pub async fn establish(&mut self) -> Result<(Transport, Connected), ClientError> {
        self.adopt_tokens();
        let Some(dispatcher) = &mut self.dispatcher else {
            let endpoint = self.fixed.clone().ok_or(ClientError::Closed)?;
            return self.attempt(&endpoint).await;
        };
        if let Some(token) = (self.config.bindings.first()).and_then(|b| self.tokens.token(&b.app))
        {
            dispatcher.set_token(token);
        }
        let candidates = match dispatcher.ask().await {
            Ok(answer) => {
                if let Some(hint) = answer.backoff {
                    self.backoff.adopt(hint.initial, hint.max, hint.jitter);
                }
                answer.endpoints
            }
            Err(e) if !e.is_retryable() || is_no_endpoints(&e) => return Err(e),
            Err(e) => {
                // The dispatcher is down, not necessarily the gateways: try what it said last.
                let mut fallback = dispatcher.fallback();
                if let Some(fixed) = &self.fixed {
                    fallback.push((self.config.url.clone(), fixed.clone()));
                }
                if fallback.is_empty() {
                    return Err(e);
                }
                tracing::debug!(error = %e, "dispatcher failed; trying the endpoints it gave last");
                fallback
            }
        };
        let mut last_error = None;
        for (url, endpoint) in candidates {
            match self.attempt(&endpoint).await {
                Ok(established) => {
                    if let Some(d) = &mut self.dispatcher {
                        d.connected();
                    }
                    self.current = Some(url);
                    return Ok(established);
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::debug!(%url, error = %e, "endpoint failed; trying the next");
                    if let Some(d) = &mut self.dispatcher {
                        d.failed(&url);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or(ClientError::ClosedDuringHandshake))
    }

    /// [`Task::establish`] for [`crate::Client::connect`]: with a token source, a connect
    /// refused for an expired token is tried once more with new tokens.
    pub async fn establish_first(&mut self) -> Result<(Transport, Connected), ClientError> {
        match self.establish().await {
            Err(e) if is_token_expired(&e) && self.tokens.renew_after_expiry() => {
                if let Err(why) = self.renew_tokens().await {
                    tracing::debug!(?why, "no new token after a refused connect");
                    return Err(e);
                }
                self.establish().await
            }
            other => other,
        }
    }

    /// A connection ended with `code`: with "reconnect elsewhere" (41xx), its endpoint is
    /// reported to the dispatcher as failed, so that the next answer leaves it out.
    fn lost(&mut self, code: Option<Code>) {
        if code.is_some_and(|c| c.group() == Group::ReconnectElsewhere)
            && let (Some(d), Some(url)) = (&mut self.dispatcher, &self.current)
        {
            d.failed(url);
        }
    }

    /// Connects to `endpoint` and runs the handshake, all within `connect_timeout`.
    async fn attempt(
        &mut self,
        endpoint: &Endpoint,
    ) -> Result<(Transport, Connected), ClientError> {
        let limit = self.config.connect_timeout;
        timeout(limit, self.handshake(endpoint))
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    async fn handshake(
        &mut self,
        endpoint: &Endpoint,
    ) -> Result<(Transport, Connected), ClientError> {
        let mut conn = Transport::connect(endpoint, &self.config, &mut self.tls).await?;
        let connect = Connect {
            version: PROTOCOL_VERSION,
            device: self.config.device.clone(),
            heartbeat_ms: u32::try_from(self.config.heartbeat.as_millis()).unwrap_or(u32::MAX),
            bindings: self
                .config
                .bindings
                .iter()
                .map(|b| Binding {
                    app: b.app.clone(),
                    token: self.tokens.token(&b.app).unwrap_or(&b.token).to_owned(),
                    last_seq: self.last_seqs.get(&b.app).copied().or(b.last_seq),
                })
                .collect(),
        };
        let id = self.next_id();
        conn.send(&[Frame::new(id, connect)]).await?;
        // An `error` frame before the close carries the reason for it.
        let mut refusal: Option<(Code, String)> = None;
        loop {
            let frame = match conn.recv().await? {
                Incoming::Frame(frame) => frame,
                Incoming::Closed { code, reason } => {
                    let refusal = refusal.or(code.map(|code| (code, reason)));
                    return Err(match refusal {
                        Some((code, reason)) => ClientError::Rejected {
                            code,
                            reason,
                            retry_after: Duration::ZERO,
                        },
                        None => ClientError::ClosedDuringHandshake,
                    });
                }
            };
            match frame.body {
                Body::Connected(connected) => return Ok((conn, connected)),
                Body::Disconnect(d) => {
                    return Err(ClientError::Rejected {
                        code: d.code,
                        reason: d.reason,
                        retry_after: Duration::from_millis(d.retry_after_ms.into()),
                    });
                }
                Body::Error(e) => refusal = Some((e.code, e.message)),
                Body::Ping | Body::Pong => {}
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected `connected`, got `{}`",
                        other.op().name()
                    )));
                }
            }
        }
    }

    /// Hands `event` to the user, waiting for room; false when the client is gone or closing.
    async fn emit(&mut self, event: Event) -> bool {
        // Held events came first: keep the order.
        while let Some(held) = self.held.pop_front() {
            if !self.emit_one(held).await {
                return false;
            }
        }
        self.emit_one(event).await
    }

    async fn emit_one(&self, event: Event) -> bool {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            sent = self.events.send(event) => sent.is_ok(),
        }
    }

    /// Queues `event` without waiting; when the queue is full, holds it (and stops reading).
    /// False when the client is gone.
    fn deliver(&mut self, event: Event) -> bool {
        if !self.held.is_empty() {
            self.held.push_back(event);
            return true;
        }
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(event)) => {
                self.held.push_back(event);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Records a durable push's seq; false when it was handed over before (a resend around a
    /// reconnect).
    fn first_time(&mut self, push: &Push) -> bool {
        let Some(last) = self.last_seqs.get_mut(&push.app) else {
            if self.config.bindings.iter().any(|b| b.app == push.app) {
                self.last_seqs.insert(push.app.clone(), push.seq);
            }
            return true;
        };
        if push.seq <= *last {
            return false;
        }
        *last = push.seq;
        true
    }

    /// Writes `frames` within `limit` (a server that stops reading is a dead server).
    async fn send(
        conn: &mut Transport,
        frames: &[Frame],
        limit: Duration,
    ) -> Result<(), ClientError> {
        timeout(limit, conn.send(frames))
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    /// Writes the pending acks, if any. On failure they stay pending for the next connection.
    async fn write_acks(
        &mut self,
        conn: &mut Transport,
        limit: Duration,
    ) -> Result<bool, ClientError> {
        let acks = self.shared.take_acks();
        if acks.is_empty() {
            return Ok(false);
        }
        let frames: Vec<Frame> = acks
            .iter()
            .map(|(app, seq)| {
                let ack = Ack {
                    app: app.clone(),
                    seq: *seq,
                };
                Frame::new(self.next_id(), ack)
            })
            .collect();
        match Self::send(conn, &frames, limit).await {
            Ok(()) => Ok(true),
            Err(e) => {
                for (app, seq) in acks {
                    self.shared.merge_ack(&app, seq);
                }
                Err(e)
            }
        }
    }

    /// Applies the application's topic calls and writes the topic requests that are due. On
    /// failure the connection is lost, and the next one sends every request again anyway.
    async fn write_topics(
        &mut self,
        conn: &mut Transport,
        limit: Duration,
    ) -> Result<bool, ClientError> {
        let now = Instant::now();
        for (app, topic, intent) in self.shared.take_topic_calls() {
            self.topics.apply(app, topic, intent, now);
        }
        let last_id = &mut self.last_id;
        let frames = self.topics.due(now, &mut || next_request_id(last_id));
        if frames.is_empty() {
            return Ok(false);
        }
        Self::send(conn, &frames, limit).await?;
        Ok(true)
    }

    /// Writes the upstream calls made since the last write, each with a new request id. On
    /// failure the connection is lost, and so are the answers of what was sent.
    async fn write_upstreams(
        &mut self,
        conn: &mut Transport,
        limit: Duration,
    ) -> Result<bool, ClientError> {
        let calls = self.shared.upstreams.take();
        if calls.is_empty() {
            return Ok(false);
        }
        let last_id = &mut self.last_id;
        let frames = self
            .upstreams
            .frames(calls, &mut || next_request_id(last_id));
        if frames.is_empty() {
            return Ok(false);
        }
        Self::send(conn, &frames, limit).await?;
        Ok(true)
    }

    /// Serves one established connection until it ends.
    async fn session(&mut self, mut conn: Transport, heartbeat: Duration) -> End {
        let silence_limit = heartbeat * 2;
        let cancel = self.cancel.clone();
        let shared = self.shared.clone();
        let events = self.events.clone();
        let mut last_sent = Instant::now();
        // When the oldest ping sent since the last frame received went out.
        let mut unanswered_ping: Option<Instant> = None;
        // The reason an `error` frame gave for the close that follows it.
        let mut close_reason: Option<(Code, String)> = None;

        self.tokens.connection_started();
        // Acks recorded while no connection was up.
        match self.write_acks(&mut conn, heartbeat).await {
            Ok(true) => last_sent = Instant::now(),
            Ok(false) => {}
            Err(e) => return End::lost(e.to_string()),
        }
        // Subscriptions of the application, again (those of the business: when the server
        // re-applies them), and topic calls made while no connection was up.
        self.topics.connection_started(Instant::now());
        match self.write_topics(&mut conn, heartbeat).await {
            Ok(true) => last_sent = Instant::now(),
            Ok(false) => {}
            Err(e) => return End::lost(e.to_string()),
        }
        // Upstream calls made while no connection was up.
        match self.write_upstreams(&mut conn, heartbeat).await {
            Ok(true) => last_sent = Instant::now(),
            Ok(false) => {}
            Err(e) => return End::lost(e.to_string()),
        }
        loop {
            // Topic requests waiting to be retried (new ones are written right away).
            let topics_due = self.topics.next_due();
            // Token fetches waiting to be retried.
            let tokens_due = self.tokens.next_due();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let _ = self.write_acks(&mut conn, heartbeat.min(CLOSE_ACK_LIMIT)).await;
                    conn.close().await;
                    return End::Closed;
                }
                permit = events.reserve(), if !self.held.is_empty() => {
                    let Ok(permit) = permit else { return End::Closed };
                    if let Some(event) = self.held.pop_front() {
                        permit.send(event);
                    }
                    // Silence while we were not reading says nothing about the server.
                    unanswered_ping = None;
                }
                _ = shared.wake.notified() => {
                    match self.write_acks(&mut conn, heartbeat).await {
                        Ok(true) => last_sent = Instant::now(),
                        Ok(false) => {}
                        Err(e) => return End::lost(e.to_string()),
                    }
                    match self.write_topics(&mut conn, heartbeat).await {
                        Ok(true) => last_sent = Instant::now(),
                        Ok(false) => {}
                        Err(e) => return End::lost(e.to_string()),
                    }
                    match self.write_upstreams(&mut conn, heartbeat).await {
                        Ok(true) => last_sent = Instant::now(),
                        Ok(false) => {}
                        Err(e) => return End::lost(e.to_string()),
                    }
                    match self.write_tokens(&mut conn, heartbeat).await {
                        Ok(true) => last_sent = Instant::now(),
                        Ok(false) => {}
                        Err(ClientError::Closed) => return End::Closed,
                        Err(e) => return End::lost(e.to_string()),
                    }
                }
                _ = sleep_until(tokens_due.unwrap_or(last_sent)), if tokens_due.is_some() => {
                    for app in self.tokens.due(Instant::now()) {
                        self.spawn_fetch(app);
                    }
                }
                _ = sleep_until(topics_due.unwrap_or(last_sent)), if topics_due.is_some() => {
                    match self.write_topics(&mut conn, heartbeat).await {
                        Ok(true) => last_sent = Instant::now(),
                        Ok(false) => {}
                        Err(e) => return End::lost(e.to_string()),
                    }
                }
                _ = sleep_until(last_sent + heartbeat) => {
                    let ping = Frame::new(self.next_id(), Body::Ping);
                    if let Err(e) = Self::send(&mut conn, &[ping], heartbeat).await {
                        return End::lost(e.to_string());
                    }
                    last_sent = Instant::now();
                    unanswered_ping.get_or_insert(last_sent);
                }
                incoming = conn.recv(), if self.held.is_empty() => {
                    unanswered_ping = None;
                    let frame = match incoming {
                        Ok(Incoming::Frame(frame)) => frame,
                        Ok(Incoming::Closed { code, reason }) => {
                            let (code, reason) = match close_reason.take() {
                                Some((code, reason)) => (Some(code), reason),
                                None => (code, reason),
                            };
                            return End::Lost { code, reason, retry_after: Duration::ZERO };
                        }
                        Err(e) => return End::lost(e.to_string()),
                    };
                    match frame.body {
                        Body::Push(push) => {
                            if push.qos > 0 && !self.first_time(&push) {
                                continue;
                            }
                            if !self.deliver(Event::Message(push)) {
                                return End::Closed;
                            }
                        }
                        Body::Pong => {}
                        Body::Ping => {
                            let pong = Frame::new(frame.id, Body::Pong);
                            if let Err(e) = Self::send(&mut conn, &[pong], heartbeat).await {
                                return End::lost(e.to_string());
                            }
                            last_sent = Instant::now();
                        }
                        Body::Publication(p) => {
                            if !self.topics.publication(&p) {
                                continue;
                            }
                            if !self.deliver(Event::Publication(p)) {
                                return End::Closed;
                            }
                        }
                        Body::Subscribed(s) => {
                            let event = self.topics.subscribed(frame.id, s, Instant::now());
                            // A re-applied server-side subscription may need a recovery.
                            match self.write_topics(&mut conn, heartbeat).await {
                                Ok(true) => last_sent = Instant::now(),
                                Ok(false) => {}
                                Err(e) => return End::lost(e.to_string()),
                            }
                            if let Some(event) = event && !self.deliver(event) {
                                return End::Closed;
                            }
                        }
                        Body::Unsubscribed(u) => {
                            if let Some(event) = self.topics.unsubscribed(frame.id, u)
                                && !self.deliver(event)
                            {
                                return End::Closed;
                            }
                        }
                        Body::UpstreamReply(reply) => {
                            // An answer to no upstream of ours (sent before a reconnect, or a
                            // server bug) has nobody to go to.
                            self.upstreams.answered(frame.id, reply);
                        }
                        Body::Error(e) if e.code.group() == Group::RequestError => {
                            let e = match self.tokens.failed(frame.id, e, Instant::now()) {
                                Ok(event) => {
                                    if !self.deliver(event) {
                                        return End::Closed;
                                    }
                                    continue;
                                }
                                Err(e) => e,
                            };
                            let Err(e) = self.upstreams.failed(frame.id, e) else {
                                continue;
                            };
                            let event = match self.topics.failed(frame.id, e, Instant::now()) {
                                Ok(event) => event,
                                Err(e) => Some(Event::Error { code: e.code, message: e.message }),
                            };
                            if let Some(event) = event && !self.deliver(event) {
                                return End::Closed;
                            }
                        }
                        Body::Error(e) => close_reason = Some((e.code, e.message)),
                        Body::Expiring(e) => {
                            let (fetch, event) = self.tokens.expiring(&e.app, e.expires_s);
                            if fetch {
                                self.spawn_fetch(e.app);
                            }
                            if let Some(event) = event && !self.deliver(event) {
                                return End::Closed;
                            }
                        }
                        Body::Refreshed(r) => {
                            if let Some(event) = self.tokens.refreshed(frame.id, r)
                                && !self.deliver(event)
                            {
                                return End::Closed;
                            }
                        }
                        Body::Disconnect(d) => {
                            return End::Lost {
                                code: Some(d.code),
                                reason: d.reason,
                                retry_after: Duration::from_millis(d.retry_after_ms.into()),
                            };
                        }
                        other => {
                            return End::lost(format!(
                                "protocol violation by the server: unexpected `{}` frame",
                                other.op().name()
                            ));
                        }
                    }
                }
                _ = sleep_until(unanswered_ping.unwrap_or(last_sent) + silence_limit),
                    if self.held.is_empty() && unanswered_ping.is_some() =>
                {
                    return End::lost(format!(
                        "no frame from the server within {silence_limit:?} of a ping"
                    ));
                }
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // Callers waiting on upstreams learn that no answer will come.
        self.shared.upstreams.close();
    }
}

/// The dispatcher has nothing to offer now (every node drains, or failed for this client):
/// waiting is the answer, not the endpoints it gave before.
fn is_no_endpoints(e: &ClientError) -> bool {
    matches!(e, ClientError::Dispatch { code, .. } if code == "no_endpoints")
}

/// The next request id after `last` (ids start at 1; 0 is for frames that answer nothing).
fn next_request_id(last: &mut u32) -> u32 {
    *last = last.wrapping_add(1).max(1);
    *last
}

/// The interval at which the client must send something, as the server negotiated it.
fn negotiated_heartbeat(connected: &Connected, proposed: Duration) -> Duration {
    match connected.heartbeat_ms {
        0 => proposed,
        ms => Duration::from_millis(ms.into()),
    }
    .max(MIN_HEARTBEAT)
}

/// The connection task's body, from the first established connection to the end.
pub(crate) async fn run(mut task: Task, conn: Transport, connected: Connected) {
    let cancel = task.cancel.clone();
    let (mut conn, mut connected) = (conn, connected);
    loop {
        let heartbeat = negotiated_heartbeat(&connected, task.config.heartbeat);
        tracing::debug!(conn_id = connected.conn_id, node = %connected.node, ?heartbeat, "connected");
        let started = Instant::now();
        // Delivered like a message: if the queue is full, the session holds it and keeps the
        // connection alive meanwhile.
        let end = if task.deliver(Event::Connected(connected)) {
            task.session(conn, heartbeat).await
        } else {
            conn.close().await;
            End::Closed
        };
        let End::Lost {
            code,
            reason,
            mut retry_after,
        } = end
        else {
            return;
        };
        task.upstreams.lost(&reason);
        tracing::debug!(?code, %reason, "connection lost");
        if started.elapsed() >= task.backoff.max() {
            task.backoff.reset();
        }
        task.lost(code);
        // An expired token is not the end when the token source can give a new one.
        let mut renew = code == Some(Code::TOKEN_EXPIRED) && task.tokens.renew_after_expiry();
        let reconnecting =
            task.config.reconnect.enabled && (renew || code.is_none_or(Code::should_reconnect));
        let lost = Event::Disconnected {
            code,
            reason,
            reconnecting,
        };
        if !task.emit(lost).await || !reconnecting {
            return;
        }
        (conn, connected) = loop {
            let delay = task.backoff.next_delay(retry_after, &mut rand::rng());
            tracing::debug!(?delay, "reconnecting after delay");
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = sleep(delay) => {}
            }
            // New tokens, fetched right before this attempt.
            let renewed = renew;
            if renew {
                match task.renew_tokens().await {
                    Ok(()) => renew = false,
                    Err(None) => return,
                    Err(Some(why)) => {
                        let failed = Event::Disconnected {
                            code: Some(Code::TOKEN_EXPIRED),
                            reason: format!("no new token: {why}"),
                            reconnecting: false,
                        };
                        task.emit(failed).await;
                        return;
                    }
                }
            }
            let attempt = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                attempt = task.establish() => attempt,
            };
            match attempt {
                Ok(established) => break established,
                Err(e) => {
                    // A token that expired meanwhile: fetch new ones, unless those were new
                    // already (a token source that gives expired tokens would loop).
                    renew = !renewed && is_token_expired(&e) && task.tokens.renew_after_expiry();
                    let reconnecting = renew || e.is_retryable();
                    retry_after = e.retry_after();
                    let failed = Event::Disconnected {
                        code: e.code(),
                        reason: format!("reconnect failed: {e}"),
                        reconnecting,
                    };
                    if !task.emit(failed).await || !reconnecting {
                        return;
                    }
                }
            }
        };
    }
}
