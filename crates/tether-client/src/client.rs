//! The user's handle: [`Client`], the [`Event`]s it yields, and the state it shares with its
//! connection task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tether_proto::{Code, Connected, PayloadKind, Publication, Push, Recovery, UpstreamReply};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::refresh::Arrival;
use crate::task::{self, Task};
use crate::topics::{Intent, validate_topic};
use crate::upstream::{Call, Calls, validate_kind};
use crate::{ClientConfig, ClientError};

/// The longest [`Client::close`] waits for the connection task.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`Client::recv`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A handshake succeeded: the first one (always the first event), and each reconnect.
    Connected(Connected),
    /// A message from the server. Ack durable ones (`seq > 0`) with [`Client::ack`] once they
    /// are processed.
    Message(Push),
    /// A publication of a topic this connection is subscribed to. `offset` is its place in the
    /// topic's history (0 for a live-only, qos 0 publication). Publications are not acked.
    ///
    /// Per topic, publications with an offset arrive in increasing offset order, across
    /// reconnects too: the client drops one it handed over before. A jump in offsets means
    /// the history dropped publications before they could be sent (expired, or past its cap).
    Publication(Publication),
    /// The connection is subscribed to a topic: the answer to [`Client::subscribe`], to the
    /// client's own resubscribe after a reconnect, or a subscription made by the business
    /// through the API (`server_side`), including the server re-applying it at a reconnect.
    ///
    /// `since` is the offset the client asked to resume after (`None`: live only). What
    /// `recovery` says:
    /// - [`Recovery::Live`]: publications after `offset` follow.
    /// - [`Recovery::Complete`]: every publication after `since` up to `offset` follows this
    ///   event, in order, then live ones. Nothing was lost.
    /// - [`Recovery::TooOld`]: **publications after `since` up to `offset` are lost**: the
    ///   topic's history no longer holds them (or holds more than the server sends at once).
    ///   Refetch them from the business backend; publications after `offset` follow.
    Subscribed {
        app: String,
        topic: String,
        offset: u64,
        recovery: Recovery,
        since: Option<u64>,
        /// The business subscribed the user (not this application).
        server_side: bool,
    },
    /// No more publications of the topic follow: the answer to [`Client::unsubscribe`], or the
    /// business unsubscribed the user (`server_side`). The client forgets the topic.
    Unsubscribed {
        app: String,
        topic: String,
        server_side: bool,
    },
    /// A subscribe was refused. With `retrying` (code 4301, the server is busy) the client sends
    /// it again after a backoff delay and at the next reconnect, and publications of the topic
    /// that would be recovered wait for it; otherwise (4300 bad request, 4302 too many topics on
    /// this connection, 4305 the app's topic rules do not allow it, for instance without a
    /// valid subscription token) the client forgets the topic.
    SubscribeFailed {
        app: String,
        topic: String,
        code: Code,
        message: String,
        retrying: bool,
    },
    /// The token of binding `app` ends at `expires_s` (seconds since the Unix epoch), and the
    /// client has no [`crate::TokenSource`]: get a new token for the same user and hand it
    /// over with [`Client::refresh`] before then, or the server closes the connection with
    /// 4205 (`token_expired`), which ends the event stream.
    TokenExpiring { app: String, expires_s: u64 },
    /// The server took a new token for binding `app` (from the [`crate::TokenSource`] or
    /// [`Client::refresh`]): the binding now holds until `expires_s`, and reconnects use it.
    TokenRefreshed { app: String, expires_s: u64 },
    /// A new token for binding `app` did not take: the server refused it (`code` 4306,
    /// `token_refused`: it did not verify, had expired, or named another user), or the
    /// [`crate::TokenSource`] failed (`code` `None`). The old token holds until it expires.
    /// With `retrying`, the client asks the token source once more, halfway to the expiry.
    RefreshFailed {
        app: String,
        code: Option<Code>,
        message: String,
        retrying: bool,
    },
    /// A request of this client failed (codes 43xx); the connection stays open.
    Error { code: Code, message: String },
    /// A connection ended, or a reconnect attempt failed. `code` is the server's code when it
    /// gave one (`None` for I/O errors and heartbeat timeouts). When `reconnecting` is false,
    /// this is the last event: [`Client::recv`] returns `None` next.
    Disconnected {
        code: Option<Code>,
        reason: String,
        reconnecting: bool,
    },
}

/// State shared by a [`Client`] and its connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Apps of the config's bindings: the only keys `acks` may hold, which bounds it.
    pub apps: Vec<String>,
    /// The highest seq acked per app and not yet written to a connection. Acks are
    /// cumulative, so a newer one replaces an older one and nothing is queued.
    pub acks: Mutex<HashMap<String, u64>>,
    /// Topic calls the task has not taken yet, in call order, one per (app, topic): a later
    /// call replaces an earlier one, so this holds at most one entry per topic named.
    pub topic_calls: Mutex<Vec<(String, String, Intent)>>,
    /// Tokens for bindings not yet taken by the task, in arrival order: at most one offer
    /// ([`Client::refresh`]; a later one replaces it) and one fetch result (one fetch runs
    /// per app at a time) per app.
    pub tokens: Mutex<Vec<(String, Arrival)>>,
    /// Wakes the task when `acks`, `topic_calls`, `tokens` or `upstreams` change.
    pub wake: Notify,
    /// Upstream calls not yet sent.
    pub upstreams: Calls,
}

impl Shared {
    /// Takes the pending topic calls (the task applies them).
    pub fn take_topic_calls(&self) -> Vec<(String, String, Intent)> {
        std::mem::take(
            &mut *self
                .topic_calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Records a topic call, replacing a pending one for the same topic.
    fn push_topic_call(&self, app: &str, topic: &str, intent: Intent) {
        let mut calls = self
            .topic_calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut intent = intent;
        if let Some(i) = calls.iter().position(|(a, t, _)| a == app && t == topic) {
            let (_, _, earlier) = calls.remove(i);
            intent = earlier.then(intent);
        }
        calls.push((app.to_owned(), topic.to_owned(), intent));
    }

    /// Takes the tokens that arrived (the task sends or adopts them).
    pub fn take_tokens(&self) -> Vec<(String, Arrival)> {
        std::mem::take(&mut *self.tokens.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records a token for `app`, replacing an earlier offer not yet taken.
    pub fn push_token(&self, app: &str, arrival: Arrival) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(arrival, Arrival::Offered(_)) {
            tokens.retain(|(a, t)| !(a == app && matches!(t, Arrival::Offered(_))));
        }
        tokens.push((app.to_owned(), arrival));
    }

    /// Takes the pending acks (the task writes them).
    pub fn take_acks(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.acks.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records `seq` for `app` unless a higher one is pending already.
    pub fn merge_ack(&self, app: &str, seq: u64) {
        let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        match acks.get_mut(app) {
            Some(pending) => *pending = (*pending).max(seq),
            None => {
                acks.insert(app.to_owned(), seq);
            }
        }
    }
}

/// A connection to a tether server that keeps itself alive: heartbeats, reconnects with
/// backoff, resends pending acks and resubscribes its topics after a reconnect.
///
/// One background task owns the socket. Dropping the client stops it (abruptly);
/// [`Client::close`] stops it politely.
#[derive(Debug)]
pub struct Client {
    events: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Client {
    /// Connects and completes the handshake, then hands the connection to a background task.
    ///
    /// Fails with the first attempt's error: there is no retry before the first success
    /// ([`ClientError::is_retryable`] tells a caller whether retrying could help). A refusal by
    /// the server is [`ClientError::Rejected`] with its code (for example 4204, bad token).
    /// Reconnects happen only after a first success. With a [`crate::TokenSource`], a connect
    /// refused because a token expired (4205) is tried once more with new tokens from it.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let route = config.validate()?;
        let shared = Arc::new(Shared {
            apps: config.bindings.iter().map(|b| b.app.clone()).collect(),
            acks: Mutex::new(HashMap::new()),
            topic_calls: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
            wake: Notify::new(),
            upstreams: Calls::new(),
        });
        let (events_tx, events) = mpsc::channel(config.event_buffer);
        let cancel = CancellationToken::new();
        let mut task = Task::new(config, route, events_tx, shared.clone(), cancel.clone())?;
        let (conn, connected) = task.establish_first().await?;
        let handle = tokio::spawn(task::run(task, conn, connected));
        Ok(Client {
            events,
            shared,
            cancel,
            task: Some(handle),
        })
    }

    /// The next event. `None` once the client is closed or has given up (after a
    /// [`Event::Disconnected`] with `reconnecting: false`).
    ///
    /// Events wait in a bounded queue (`ClientConfig::event_buffer`). While it is full the
    /// connection task stops reading the socket (it keeps sending heartbeats), so a reader that
    /// falls behind makes the server's queue for this connection grow until the server's
    /// slow-consumer protection disconnects it (code 4001, "slow"; the client may only see the
    /// broken connection) and the client reconnects. Durable messages are not lost that way:
    /// the server resends what was not acked.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Acks every durable message of `app` up to and including `seq` (cumulative).
    ///
    /// Does not wait: the newest ack per app is kept and written by the connection task as soon
    /// as it can, including after a reconnect if the connection was down. `seq == 0`
    /// (transient messages) is ignored.
    pub fn ack(&self, app: &str, seq: u64) -> Result<(), ClientError> {
        self.check_open(app)?;
        if seq > 0 {
            self.shared.merge_ack(app, seq);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Subscribes to `topic` of `app`, live from now on: answered by [`Event::Subscribed`]
    /// (or [`Event::SubscribeFailed`]), then [`Event::Publication`]s.
    ///
    /// Does not wait: the connection task sends it as soon as it can (at the next connection
    /// if none is up). The client then keeps the subscription: after every reconnect it
    /// subscribes again with the last offset it handed over, so that the server recovers what
    /// was published meanwhile (see [`Event::Subscribed`] for when it cannot). Subscribing to a
    /// topic the client has already is not an error: the server answers again.
    pub fn subscribe(&self, app: &str, topic: &str) -> Result<(), ClientError> {
        self.topic_call(
            app,
            topic,
            Intent::Subscribe {
                since: None,
                token: None,
            },
        )
    }

    /// Like [`Client::subscribe`], with a subscription token: a JWT from the business that
    /// lets this user join `topic` when the app's rule for it asks for one. The client keeps
    /// the token with the topic and sends it again with every resubscribe after a reconnect
    /// (a later [`Client::subscribe`] of the topic keeps it too). A refusal is
    /// [`Event::SubscribeFailed`] with code 4305 (`forbidden`), also when the token has
    /// expired by a reconnect: the client then forgets the topic, and the application may
    /// subscribe again with a new token.
    pub fn subscribe_with_token(
        &self,
        app: &str,
        topic: &str,
        token: impl Into<String>,
    ) -> Result<(), ClientError> {
        let token = Some(token.into());
        self.topic_call(app, topic, Intent::Subscribe { since: None, token })
    }

    /// Like [`Client::subscribe`], but first recovers the publications after `since`, the last
    /// offset the application kept from an earlier run (an [`Event::Subscribed`] with
    /// [`Recovery::TooOld`] says when the history no longer has them).
    pub fn subscribe_since(&self, app: &str, topic: &str, since: u64) -> Result<(), ClientError> {
        let since = Some(since);
        self.topic_call(app, topic, Intent::Subscribe { since, token: None })
    }

    /// Hands over a new token for binding `app` (for the same user), for instance after
    /// [`Event::TokenExpiring`]. Does not wait: on a live connection it is sent in a `refresh`,
    /// answered by [`Event::TokenRefreshed`] (from then on reconnects use it) or
    /// [`Event::RefreshFailed`] (the old token stays); while no connection is up, the next
    /// connect uses it.
    pub fn refresh(&self, app: &str, token: impl Into<String>) -> Result<(), ClientError> {
        self.check_open(app)?;
        self.shared.push_token(app, Arrival::Offered(token.into()));
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Leaves `topic` of `app`: publications of it stop at once (the client drops those still
    /// on the way), the server answers [`Event::Unsubscribed`], and the client forgets the
    /// topic. Does not wait, like [`Client::subscribe`].
    ///
    /// For a topic the business subscribed the user to, this lasts for the current connection:
    /// the server subscribes every new connection of the user again.
    pub fn unsubscribe(&self, app: &str, topic: &str) -> Result<(), ClientError> {
        self.topic_call(app, topic, Intent::Unsubscribe)
    }

    /// Sends `payload` to the business backend of `app` through its webhook, as `kind` (a name
    /// the business routes on: 1 to 128 bytes, no control characters), and resolves to the
    /// webhook's answer: its HTTP status and body.
    ///
    /// The returned future does not borrow the client, so [`Client::recv`] can go on while it
    /// waits. It is sent when first polled (on the next connection when none is up); at most
    /// [`crate::MAX_UPSTREAMS_IN_FLIGHT`] calls wait or are sent at once, and later ones wait
    /// for a place. Fails with [`ClientError::Upstream`] when the server refuses it (4301 busy:
    /// retry later; 4303 the app has no webhook; 4304 the webhook could not be reached), and
    /// with [`ClientError::ConnectionLost`] when the connection ends before the answer (the
    /// webhook may or may not have the data: the business drops duplicates by the delivery
    /// `id` only for retries of one upstream, so resend only what is safe to repeat).
    pub fn upstream(
        &self,
        app: &str,
        kind: &str,
        payload_kind: PayloadKind,
        payload: impl Into<Bytes>,
    ) -> impl Future<Output = Result<UpstreamReply, ClientError>> + Send + 'static {
        let checked = self.check_open(app).and_then(|()| validate_kind(kind));
        let shared = self.shared.clone();
        let (app, kind, payload) = (app.to_owned(), kind.to_owned(), payload.into());
        async move {
            checked?;
            let place = shared.upstreams.place().await?;
            let (answer, rx) = oneshot::channel();
            shared.upstreams.push(Call {
                app,
                kind,
                payload_kind,
                payload,
                answer,
                _place: place,
            })?;
            shared.wake.notify_one();
            rx.await.unwrap_or(Err(ClientError::Closed))
        }
    }

    fn topic_call(&self, app: &str, topic: &str, intent: Intent) -> Result<(), ClientError> {
        self.check_open(app)?;
        validate_topic(topic)?;
        self.shared.push_topic_call(app, topic, intent);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// `app` is bound and the connection task still runs.
    fn check_open(&self, app: &str) -> Result<(), ClientError> {
        if !self.shared.apps.iter().any(|a| a == app) {
            return Err(ClientError::NotBound(app.to_owned()));
        }
        if self.task.as_ref().is_none_or(JoinHandle::is_finished) {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// Closes the connection politely (pending acks are written first) and waits for the
    /// background task to end, at most [`CLOSE_TIMEOUT`]; past that the task is aborted.
    pub async fn close(mut self) {
        self.cancel.cancel();
        if let Some(mut handle) = self.task.take()
            && tokio::time::timeout(CLOSE_TIMEOUT, &mut handle)
                .await
                .is_err()
        {
            handle.abort();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
