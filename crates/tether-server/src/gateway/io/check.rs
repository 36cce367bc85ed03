//! A connection's subscribes that wait for their app's webhook (the `webhook` topic rule,
//! [`crate::session::ask`]): each question is a future that the connection's task polls beside
//! its other work, so that the connection keeps reading and writing while they wait. Answers
//! may come in any order; each settles the subscribe of its own request id.
//!
//! # Bounds
//! At most [`MAX_CHECKS`] per connection. One more is refused at once with 4301 (busy, retry
//! later; the Rust SDK retries it with backoff) rather than read and held, which would let a
//! client pile up questions; a subscribe answered from the cache needs no place. Each question
//! ends by its asker's deadline, and a connection holds these futures only while they wait:
//! it cannot park until they are answered.

use std::task::{Context, Poll};

use tether_core::TopicId;

use crate::session::ask::{Answer, Verdict};

/// Subscribes of one connection waiting for their app's webhook at once: enough for a client
/// that resubscribes a handful of such topics after a reconnect.
pub(super) const MAX_CHECKS: usize = 8;

/// A subscribe waiting for its answer: what it asked for.
#[derive(Debug)]
pub(super) struct Waiting {
    /// Its request id.
    pub id: u32,
    pub binding: usize,
    pub topic: TopicId,
    pub since: Option<u64>,
}

/// A connection's waiting subscribes: one pointer in the connection's future (which every
/// live connection holds), the list allocated only while something waits.
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "8 bytes in every live connection's future rather than a `Vec`'s 24"
)]
pub(super) struct Checks(Option<Box<Vec<(Waiting, Answer)>>>);

impl Checks {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn is_full(&self) -> bool {
        self.0.as_ref().is_some_and(|list| list.len() >= MAX_CHECKS)
    }

    /// `waiting` waits for `answer` (the caller checked [`Checks::is_full`]).
    pub fn push(&mut self, waiting: Waiting, answer: Answer) {
        debug_assert!(!self.is_full());
        self.0.get_or_insert_default().push((waiting, answer));
    }

    /// Takes out the subscribes to `topic` of `binding` (an unsubscribe of it came first: it
    /// must not be undone by a later answer), abandoning their questions.
    pub fn cancel(&mut self, binding: usize, topic: &TopicId) -> Vec<Waiting> {
        let mut cancelled = Vec::new();
        let Some(list) = self.0.as_mut() else {
            return cancelled;
        };
        let mut i = 0;
        while i < list.len() {
            let (w, _) = &list[i];
            if w.binding == binding && w.topic == *topic {
                cancelled.push(list.swap_remove(i).0);
            } else {
                i += 1;
            }
        }
        self.give_back();
        cancelled
    }

    /// A subscribe whose answer came, if any; the others are left polled, so that `cx` is
    /// woken when one of them is answered.
    pub fn poll_answered(&mut self, cx: &mut Context<'_>) -> Option<(Waiting, Verdict)> {
        let list = self.0.as_mut()?;
        for i in 0..list.len() {
            if let Poll::Ready(verdict) = list[i].1.as_mut().poll(cx) {
                let (waiting, _) = list.swap_remove(i);
                self.give_back();
                return Some((waiting, verdict));
            }
        }
        None
    }

    /// Frees the list once nothing waits: most connections never ask.
    fn give_back(&mut self) {
        if self.0.as_ref().is_some_and(|list| list.is_empty()) {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn waiting(id: u32, topic: &str) -> Waiting {
        Waiting {
            id,
            binding: 0,
            topic: TopicId::from(topic),
            since: None,
        }
    }

    /// A question that is answered `verdict` once `open` is set.
    fn question(open: &std::sync::Arc<std::sync::atomic::AtomicBool>, verdict: Verdict) -> Answer {
        let open = open.clone();
        Box::pin(std::future::poll_fn(move |_| {
            match open.load(std::sync::atomic::Ordering::Relaxed) {
                true => Poll::Ready(verdict),
                false => Poll::Pending,
            }
        }))
    }

    #[test]
    fn answers_settle_their_own_subscribes_in_any_order_and_unsubscribes_cancel() {
        let mut cx = Context::from_waker(Waker::noop());
        let shut = std::sync::Arc::default();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut checks = Checks::default();
        checks.push(waiting(1, "a"), question(&shut, Verdict::Allowed));
        checks.push(waiting(2, "b"), question(&open, Verdict::Refused));
        checks.push(waiting(3, "a"), question(&shut, Verdict::Allowed));
        let (done, verdict) = checks.poll_answered(&mut cx).expect("b is answered");
        assert_eq!((done.id, verdict), (2, Verdict::Refused));
        assert!(checks.poll_answered(&mut cx).is_none());
        assert!(!checks.is_empty());
        let cancelled: Vec<u32> = checks
            .cancel(0, &TopicId::from("a"))
            .iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(cancelled, [1, 3]);
        assert!(checks.is_empty() && checks.0.is_none(), "memory given back");
        assert!(checks.cancel(0, &TopicId::from("a")).is_empty());
        assert!(checks.poll_answered(&mut cx).is_none());
    }

    #[test]
    fn a_connection_holds_at_most_max_checks_and_one_pointer_while_none_waits() {
        assert_eq!(size_of::<Checks>(), size_of::<usize>());
        let shut = std::sync::Arc::default();
        let mut checks = Checks::default();
        for id in 0..MAX_CHECKS as u32 {
            assert!(!checks.is_full());
            checks.push(waiting(id, "a"), question(&shut, Verdict::Allowed));
        }
        assert!(checks.is_full());
    }
}
