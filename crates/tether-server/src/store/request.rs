//! What callers ask of the writer thread, and how it answers them.

use tether_core::store::{Append, Appended, NewMessage};
use tether_core::{Seq, StoreError};
use tokio::sync::oneshot;

use super::expiry::Swept;

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What callers send the writer.
#[derive(Debug)]
pub enum Request {
    Write(Write),
    /// Run a whole sweep pass now, with the given clock (tests and tools).
    Sweep {
        now_ms: u64,
        reply: Reply<Swept>,
    },
    /// Acks wait in [`super::acks::PendingAcks`]: take them into a batch (no answer). Sent by
    /// the first ack after each take, so that the writer comes even when nothing else does.
    Acks,
    /// Finish what is queued before this (pending acks included), fsync, release the files,
    /// and answer.
    Close(oneshot::Sender<()>),
}

/// A request that joins a batch.
#[derive(Debug)]
pub enum Write {
    Append(Append, Reply<Appended>),
    /// Several appends in one request (`append_many`): one answer each, in order, or one
    /// error for all when the batch did not commit.
    AppendMany(Vec<Append>, Reply<Vec<Result<Appended, StoreError>>>),
    /// Append `message` to the topic history whose log key is `topic`.
    Publish {
        topic: Vec<u8>,
        message: NewMessage,
        reply: Reply<Seq>,
    },
    NoteAttempt {
        cursor: Vec<u8>,
        seq: Seq,
        reply: Reply<u32>,
    },
    /// Subscribe or unsubscribe the user of inbox key `user` (subscription `key`), refusing a
    /// subscription past `max` of the user's.
    Subscribe {
        user: Vec<u8>,
        key: Vec<u8>,
        subscribed: bool,
        max: usize,
        reply: Reply<Subscription>,
    },
    /// Save (`Some`: the encoded value) or forget (`None`) the session of cursor key `key`.
    Session {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        reply: Reply<()>,
    },
}

/// What a [`Write::Subscribe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// Recorded; `changed` is false when it was so already.
    Set { changed: bool },
    /// Refused: the user already has this many topics.
    TooMany(usize),
}

impl Write {
    /// Answers the request with `e`, without writing anything.
    pub fn fail(self, e: StoreError) {
        // A caller that gave up has dropped its receiver: nothing to tell it.
        match self {
            Write::Append(_, reply) => drop(reply.send(Err(e))),
            Write::AppendMany(_, reply) => drop(reply.send(Err(e))),
            Write::Publish { reply, .. } => drop(reply.send(Err(e))),
            Write::NoteAttempt { reply, .. } => drop(reply.send(Err(e))),
            Write::Subscribe { reply, .. } => drop(reply.send(Err(e))),
            Write::Session { reply, .. } => drop(reply.send(Err(e))),
        }
    }

    /// Whether the request stores a new message (an append or a publication): what the
    /// store refuses when its disk is at the reserve.
    pub fn is_message(&self) -> bool {
        matches!(
            self,
            Write::Append(..) | Write::AppendMany(..) | Write::Publish { .. }
        )
    }

    /// Bytes this request adds to a batch, roughly.
    pub fn weight(&self) -> usize {
        match self {
            Write::Append(a, _) => append_weight(a),
            Write::AppendMany(appends, _) => appends.iter().map(append_weight).sum(),
            Write::Publish { message, .. } => message.payload.len() + 64,
            _ => 64,
        }
    }
}

/// Bytes one append adds to a batch, roughly.
fn append_weight(a: &Append) -> usize {
    (a.message.payload.len() + 64) * a.users.len().max(1)
}
