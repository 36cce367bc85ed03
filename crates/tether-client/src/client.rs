//! The user's handle: [`Client`], the [`Event`]s it yields, and the state it shares with its
//! connection task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tether_proto::{Code, Connected, Push};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::task::{self, Task};
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
    /// Wakes the task when `acks` changes.
    pub ack_wake: Notify,
}

impl Shared {
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
/// backoff, resends pending acks after a reconnect.
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
    /// Reconnects happen only after a first success.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let endpoint = config.validate()?;
        let shared = Arc::new(Shared {
            apps: config.bindings.iter().map(|b| b.app.clone()).collect(),
            acks: Mutex::new(HashMap::new()),
            ack_wake: Notify::new(),
        });
        let (events_tx, events) = mpsc::channel(config.event_buffer);
        let cancel = CancellationToken::new();
        let mut task = Task::new(config, endpoint, events_tx, shared.clone(), cancel.clone());
        let (conn, connected) = task.establish().await?;
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
        if !self.shared.apps.iter().any(|a| a == app) {
            return Err(ClientError::NotBound(app.to_owned()));
        }
        if self.task.as_ref().is_none_or(JoinHandle::is_finished) {
            return Err(ClientError::Closed);
        }
        if seq > 0 {
            self.shared.merge_ack(app, seq);
            self.shared.ack_wake.notify_one();
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
