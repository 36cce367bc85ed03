//! Upstream calls (no I/O): the calls waiting for the connection task, and the ones sent and
//! waiting for their answer, paired by request id.
//!
//! # Bounds
//! At most [`MAX_IN_FLIGHT`] calls exist at once, waiting or sent (a semaphore: a call past it
//! waits for a place). The server answers every upstream it took (`upstream_reply` or
//! `error`), so a place comes back with the answer, or when the connection is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tether_proto::{ErrorBody, Frame, PayloadKind, Upstream, UpstreamReply};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::ClientError;

/// Upstream calls waiting or sent at once, per client: the server's default limit per
/// connection (`webhook.max_in_flight`).
pub const MAX_IN_FLIGHT: usize = 16;

/// One [`crate::Client::upstream`] call.
#[derive(Debug)]
pub(crate) struct Call {
    pub app: String,
    pub kind: String,
    pub payload_kind: PayloadKind,
    pub payload: Bytes,
    pub answer: oneshot::Sender<Result<UpstreamReply, ClientError>>,
    /// The call's place among [`MAX_IN_FLIGHT`]; given back when the call is dropped.
    pub _place: OwnedSemaphorePermit,
}

/// Calls made and not yet taken by the connection task (shared with the [`crate::Client`]).
#[derive(Debug)]
pub(crate) struct Calls {
    queue: Mutex<Queue>,
    places: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Queue {
    calls: VecDeque<Call>,
    /// The connection task ended: no call will be taken any more.
    closed: bool,
}

impl Calls {
    pub fn new() -> Calls {
        Calls {
            queue: Mutex::default(),
            places: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// A place for one more call; waits while [`MAX_IN_FLIGHT`] are out.
    pub async fn place(&self) -> Result<OwnedSemaphorePermit, ClientError> {
        self.places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Hands a call to the connection task; `Err(Closed)` when the task has ended.
    pub fn push(&self, call: Call) -> Result<(), ClientError> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.closed {
            return Err(ClientError::Closed);
        }
        queue.calls.push_back(call);
        Ok(())
    }

    pub fn take(&self) -> Vec<Call> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.calls.drain(..).collect()
    }

    /// The connection task ended: calls waiting fail with [`ClientError::Closed`] (their
    /// answer channel is dropped), and later ones at once.
    pub fn close(&self) {
        self.places.close();
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.closed = true;
        queue.calls.clear();
    }
}

/// Calls sent on the current connection, by request id.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    sent: HashMap<u32, Call>,
}

impl InFlight {
    /// The frames for `calls`, each with a new request id, remembered until answered. A call
    /// whose caller stopped waiting is not sent.
    pub fn frames(&mut self, calls: Vec<Call>, next_id: &mut impl FnMut() -> u32) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(calls.len());
        for call in calls {
            if call.answer.is_closed() {
                continue;
            }
            let id = next_id();
            frames.push(Frame::new(
                id,
                Upstream {
                    app: call.app.clone(),
                    kind: call.kind.clone(),
                    payload_kind: call.payload_kind,
                    payload: call.payload.clone(),
                },
            ));
            self.sent.insert(id, call);
        }
        frames
    }

    /// Hands an `upstream_reply` to its caller; false when `id` is not an upstream of ours.
    pub fn answered(&mut self, id: u32, reply: UpstreamReply) -> bool {
        match self.sent.remove(&id) {
            Some(call) => {
                let _ = call.answer.send(Ok(reply));
                true
            }
            None => false,
        }
    }

    /// Hands an `error` to the caller of upstream `id`, or gives the error back when `id` is
    /// not an upstream of ours.
    pub fn failed(&mut self, id: u32, error: ErrorBody) -> Result<(), ErrorBody> {
        match self.sent.remove(&id) {
            Some(call) => {
                let _ = call.answer.send(Err(ClientError::Upstream {
                    code: error.code,
                    message: error.message,
                }));
                Ok(())
            }
            None => Err(error),
        }
    }

    /// The connection ended: no answer will come for what was sent on it.
    pub fn lost(&mut self, reason: &str) {
        for (_, call) in self.sent.drain() {
            let _ = call
                .answer
                .send(Err(ClientError::ConnectionLost(reason.to_owned())));
        }
    }
}

/// Checks an upstream kind as the server does: 1 to 128 bytes, no control characters.
pub(crate) fn validate_kind(kind: &str) -> Result<(), ClientError> {
    let reason = if kind.is_empty() {
        "empty"
    } else if kind.len() > 128 {
        "longer than 128 bytes"
    } else if kind.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(ClientError::InvalidKind {
        kind: kind.chars().take(128).collect(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use tether_proto::{Body, Code};

    use super::*;

    async fn call(
        calls: &Calls,
        app: &str,
    ) -> oneshot::Receiver<Result<UpstreamReply, ClientError>> {
        let (answer, rx) = oneshot::channel();
        let place = calls.place().await.unwrap();
        calls
            .push(Call {
                app: app.into(),
                kind: "chat".into(),
                payload_kind: PayloadKind::Json,
                payload: Bytes::from_static(b"{}"),
                answer,
                _place: place,
            })
            .unwrap();
        rx
    }

    fn reply(app: &str) -> UpstreamReply {
        UpstreamReply {
            app: app.into(),
            status: 200,
            kind: PayloadKind::Json,
            payload: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn answers_pair_by_request_id() {
        let calls = Calls::new();
        let a = call(&calls, "a").await;
        let b = call(&calls, "b").await;
        let c = call(&calls, "c").await;
        let mut in_flight = InFlight::default();
        let mut id = 10;
        let frames = in_flight.frames(calls.take(), &mut || {
            id += 1;
            id
        });
        let ids: Vec<u32> = frames.iter().map(|f| f.id).collect();
        assert_eq!(ids, [11, 12, 13]);
        assert!(matches!(&frames[1].body, Body::Upstream(u) if u.app == "b"));
        assert!(in_flight.answered(12, reply("b")));
        assert!(!in_flight.answered(12, reply("b")), "answered once");
        let error = ErrorBody {
            code: Code::UNAVAILABLE,
            message: "busy".into(),
        };
        assert!(in_flight.failed(11, error.clone()).is_ok());
        assert_eq!(in_flight.failed(99, error.clone()), Err(error));
        in_flight.lost("gone");
        assert_eq!(b.await.unwrap().unwrap().app, "b");
        assert!(matches!(
            a.await.unwrap(),
            Err(ClientError::Upstream {
                code: Code::UNAVAILABLE,
                ..
            })
        ));
        assert!(matches!(c.await.unwrap(), Err(ClientError::ConnectionLost(r)) if r == "gone"));
    }

    #[tokio::test]
    async fn places_are_bounded_and_given_back() {
        let calls = Calls::new();
        let mut waiting = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            waiting.push(call(&calls, "a").await);
        }
        let more = tokio::time::timeout(std::time::Duration::from_millis(20), calls.place());
        assert!(more.await.is_err(), "no place past the bound");
        // A call whose caller gave up is not sent, and gives its place back.
        drop(waiting.pop());
        let frames = InFlight::default().frames(calls.take(), &mut || 1);
        assert_eq!(frames.len(), MAX_IN_FLIGHT - 1);
        assert!(calls.place().await.is_ok());
    }

    #[tokio::test]
    async fn a_closed_task_fails_waiting_and_later_calls() {
        let calls = Calls::new();
        let waiting = call(&calls, "a").await;
        calls.close();
        assert!(waiting.await.is_err(), "the answer channel was dropped");
        assert!(matches!(calls.place().await, Err(ClientError::Closed)));
    }

    #[test]
    fn kinds_are_checked() {
        assert!(validate_kind("chat").is_ok());
        for bad in ["", "a\nb", &"k".repeat(129)] {
            assert!(matches!(
                validate_kind(bad),
                Err(ClientError::InvalidKind { .. })
            ));
        }
    }
}
