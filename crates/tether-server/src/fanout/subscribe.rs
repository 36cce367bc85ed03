//! Subscribing a connection to a topic on the app's worker: recovering what it missed from
//! the topic's history, then joining, in that order, so that no live publication slips in
//! between; and leaving.

use std::sync::Arc;

use tether_core::{Seq, TopicId};
use tether_proto::{Code, ErrorBody, Frame, Recovery, Subscribed, Unsubscribed};
use tracing::debug;

use super::batch::Reached;
use super::topic::{Sub, Topic};
use super::worker::{Worker, publication_frame};
use crate::link::{Binding, Link, Offered};

impl Worker {
    pub(super) async fn subscribe(
        &self,
        conn: Arc<dyn Link>,
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
                conn.enqueue(conn.encoding().encode(&error));
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
                Err(e) => return refuse(&*conn, binding, &topic_id, request, &e),
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
                        let frame = conn
                            .encoding()
                            .encode(&publication_frame(app, &topic_id, m));
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
                Err(e) => return refuse(&*conn, binding, &topic_id, request, &e),
            }
        }
    }

    /// Queues `subscribed` and the recovered frames, then adds the subscriber, all under the
    /// app's topic lock. `false` when the topic is not here and `page` holds no head to create
    /// it with.
    fn join(
        &self,
        conn: &Arc<dyn Link>,
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
        if let Some(existing) = topic.position(conn.id()) {
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
        let mut open = self.answer(&**conn, &conn.encoding().encode(&reply));
        for frame in recovered.drain(..) {
            open &= self.answer(&**conn, &frame);
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

    pub(super) fn unsubscribe(
        &self,
        conn: &dyn Link,
        binding: usize,
        topic: &TopicId,
        request: u32,
    ) {
        // Always out, even when a subscribe queued after this one already re-added the topic
        // to the connection's list: that subscribe adds it back in its turn, after this
        // `unsubscribed`, so no publication arrives between the two.
        self.topics.remove(topic, conn.id(), &self.metrics);
        let Some(Binding { app, .. }) = conn.bindings().get(binding) else {
            return;
        };
        let reply = Frame::new(
            request,
            Unsubscribed {
                app: app.to_string(),
                topic: topic.to_string(),
            },
        );
        self.answer(conn, &conn.encoding().encode(&reply));
    }

    /// Hands the connection a frame of the worker's answer; whether it is still open. The
    /// client has usually fallen silent after its subscribe, and its task parked (see
    /// `crate::gateway::io`): the frame is written to a parked connection directly rather
    /// than queued, which would start a task for it only to write this and park again later.
    /// Frames of one answer stay in order: a frame is written directly only when nothing is
    /// queued.
    fn answer(&self, conn: &dyn Link, frame: &bytes::Bytes) -> bool {
        match conn.queue_shared(frame) {
            Offered::Queued => true,
            Offered::Written(n) => {
                let mut reached = Reached::default();
                reached.wrote(conn.transport(), 1, n);
                self.count_written(&reached);
                true
            }
            Offered::Closed | Offered::Overflow => false,
        }
    }
}

/// Answers a subscribe that cannot be served (the store is unavailable) with `error` 4301.
fn refuse(
    conn: &dyn Link,
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
            message: format!("topic {topic} is unavailable now; subscribe again later"),
        },
    );
    conn.enqueue(conn.encoding().encode(&error));
}
