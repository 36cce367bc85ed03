//! The `webhook` topic rule's question, "may this user subscribe to this topic?", asked of the
//! app's business by an [`Asker`] (`crate::webhook::permission` POSTs it to the app's webhook).
//! An answer is known at once (cached) or comes later from a future that the connection's
//! task runs beside its other work, so that the connection keeps reading and writing while
//! the subscribe waits (`gateway/io/check.rs`).
//!
//! Every failure refuses (the check fails closed), with a code that tells the client whether
//! asking again may help: 4305 when the business said no or answered nonsense, 4301 (retry
//! later) when it could not be asked in time.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use tether_core::{AppId, ConnId, DeviceId, TopicId, UserId};
use tether_proto::Code;

/// What the business is asked.
#[derive(Debug, Clone)]
pub struct Question {
    pub app: AppId,
    pub user: UserId,
    /// The subscribing connection's device and id, for the business's logs: the answer is
    /// kept for the user and the topic, whatever the connection (see [`Asker::ask`]).
    pub device: DeviceId,
    pub conn: ConnId,
    pub topic: TopicId,
}

/// What came of a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The business allowed the subscribe.
    Allowed,
    /// The business refused it.
    Refused,
    /// The business answered, but not a 200 with `{"allow": true|false}`.
    Unusable,
    /// The webhook could not be reached, or answered a 5xx.
    Unreachable,
    /// No answer within the deadline (`webhook.permission.timeout`).
    TimedOut,
    /// The app has no webhook to ask: validation requires one for a `webhook` rule, so this
    /// is only a safety net.
    NoWebhook,
}

impl Verdict {
    /// `None` when the subscribe may go ahead, else the code and reason the client gets.
    pub fn refusal(self) -> Option<(Code, &'static str)> {
        match self {
            Verdict::Allowed => None,
            Verdict::Refused => Some((Code::FORBIDDEN, "the app's webhook refused it")),
            Verdict::Unusable => Some((Code::FORBIDDEN, "the app's webhook gave no usable answer")),
            Verdict::NoWebhook => Some((Code::FORBIDDEN, "the app has no webhook to ask")),
            Verdict::Unreachable => Some((
                Code::UNAVAILABLE,
                "permission check failed (the app's webhook could not be reached); retry later",
            )),
            Verdict::TimedOut => {
                Some((Code::UNAVAILABLE, "permission check timed out; retry later"))
            }
        }
    }
}

/// A question on its way: it finishes by its deadline, and dropping it abandons it.
pub type Answer = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// What [`Asker::ask`] gives back.
pub enum Asked {
    /// Known without asking (a cached answer).
    Known(Verdict),
    /// To be asked: nothing is sent until the future is polled.
    Later(Answer),
}

impl Debug for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Asked::Known(verdict) => f.debug_tuple("Known").field(verdict).finish(),
            Asked::Later(_) => f.write_str("Later"),
        }
    }
}

/// Asks one app's business who may subscribe.
pub trait Asker: Send + Sync + Debug {
    /// Whether `question.user` may subscribe to `question.topic`.
    ///
    /// # Guarantees
    /// - An answer of the business (allowed or refused) may be kept and given again to the
    ///   same user for the same topic, on any connection, until its lifetime ends; failures
    ///   (unusable, unreachable, timed out) are never kept.
    /// - A [`Asked::Later`] future completes within the asker's deadline, whatever the
    ///   business does, and holds no resource once dropped.
    fn ask(&self, question: Question) -> Asked;
}
