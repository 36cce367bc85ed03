//! What a connection's handle keeps under its one lock: the byte-bounded queue of encoded
//! frames, the close asked for, each binding's durable delivery state, a waiting `sync`, the
//! topics, and the socket that fan-outs write to directly.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tether_core::TopicId;
use tether_proto::{Code, Disconnect, Frame};
use tokio::net::TcpStream;

use crate::session::inbox::{InboxState, Queue, SyncRequest};
use crate::transport::Framing;

/// Why and how a connection is being closed by the server.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: Code,
    pub reason: String,
    pub retry_after_ms: u32,
    /// Write what is already queued before the `disconnect` (false when the client is slow:
    /// the queue was dropped to bound memory).
    pub flush: bool,
}

impl Close {
    /// A close that flushes what is queued, with no advice on when to come back.
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Close {
            code,
            reason: reason.into(),
            retry_after_ms: 0,
            flush: true,
        }
    }

    /// A close that gives up what is queued.
    pub fn at_once(code: Code, reason: impl Into<String>) -> Self {
        Close {
            flush: false,
            ..Close::new(code, reason)
        }
    }

    pub fn frame(&self) -> Frame {
        Frame::new(
            0,
            Disconnect {
                code: self.code,
                reason: self.reason.clone(),
                retry_after_ms: self.retry_after_ms,
            },
        )
    }
}

/// A connection's socket, which fan-outs write to directly.
#[derive(Debug, Default)]
pub enum Socket {
    /// None (yet, or any more).
    #[default]
    None,
    /// Registered with tokio's reactor: the connection's task reads it.
    Live(Arc<TcpStream>),
    /// The connection is parked: the socket waits in the gateway's parked-socket poller rather
    /// than tokio's reactor, which would keep a registration of about 300 bytes for it (see
    /// `super::task`).
    Parked(std::net::TcpStream),
}

impl Socket {
    /// Writes what the socket takes at once of `header` then `frame`, never waiting.
    ///
    /// With `send(2)` (`sendmsg(2)` with a header) rather than `write(2)`: a socket needs none
    /// of the file layer's work (`vfs_write`'s checks, the position lock lookup), which was
    /// about a tenth of a fan-out's CPU per delivery here (`docs/benchmarks.md`).
    pub fn try_write(&self, header: &[u8], frame: &[u8]) -> Option<std::io::Result<usize>> {
        let send = |socket: socket2::SockRef<'_>| {
            if header.is_empty() {
                socket.send(frame)
            } else {
                let slices = [std::io::IoSlice::new(header), std::io::IoSlice::new(frame)];
                socket.send_vectored(&slices)
            }
        };
        match self {
            Socket::None => None,
            // Through tokio, so that a full socket clears its write readiness.
            Socket::Live(stream) => Some(stream.try_io(tokio::io::Interest::WRITABLE, || {
                send(socket2::SockRef::from(&**stream))
            })),
            // Non-blocking: the `dup` shares the flag with tokio's descriptor.
            Socket::Parked(stream) => Some(send(socket2::SockRef::from(stream))),
        }
    }

    /// Shuts the socket down both ways, whoever else holds it.
    pub fn shutdown(&self) {
        let _ = match self {
            Socket::None => Ok(()),
            Socket::Live(stream) => {
                socket2::SockRef::from(&**stream).shutdown(std::net::Shutdown::Both)
            }
            Socket::Parked(stream) => {
                socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both)
            }
        };
    }
}

/// Everything of a connection that changes under its handle's lock.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Frames and the bytes accepted and not yet written: queued plus the batch being written
    /// (plus held durable pushes).
    pub queue: Queue,
    /// Boxed, like `sync`: rare, and an idle connection's handle is kept small (see
    /// `super::handle::ConnHandle`).
    pub close: Option<Box<Close>>,
    /// Durable delivery state, one per binding, in the order of the connection's bindings.
    /// Under the queue's lock, so that ordering a push and queueing it are one step.
    pub inboxes: Box<[InboxState]>,
    /// A `sync` waiting for the task.
    pub sync: Option<Box<SyncRequest>>,
    /// A `sync` is waiting or being answered.
    pub sync_busy: bool,
    /// The topics this connection is subscribed to, or asked to be. Kept for the
    /// per-connection limit and for leaving every topic when the connection ends.
    pub topics: Topics,
    /// The task holds frames it has not finished writing (or has not started yet: true until
    /// the task says it is idle, so that nothing is written before `connected`). A direct
    /// write needs this false and an empty queue.
    pub in_flight: bool,
    /// The front of the queue is the rest of a frame a direct write began: it must be written
    /// before anything else, and is kept when the queue is dropped.
    pub tail: bool,
    /// Where direct writes go. Under the queue's lock: a direct write and a parking task
    /// switching the socket out of tokio's reactor must not meet.
    pub socket: Socket,
    /// How a frame written to `socket` directly is framed.
    pub framing: Framing,
}

impl Outbox {
    /// Drops what is queued for a connection that is closing, except the rest of a frame
    /// already begun on the wire: a client must be able to read the `disconnect` behind it.
    pub fn drop_queue(&mut self) {
        if self.tail {
            self.queue.frames.truncate(1);
        } else {
            self.queue.frames = VecDeque::new();
        }
    }
}

/// A connection's topics: (binding, topic) pairs. Most subscribed connections have one, which
/// is kept in place: a list would cost the handle the same 24 bytes and a 32-byte allocation
/// besides. More than one go to a boxed slice, grown and shrunk one at a time (subscribing is
/// rare next to holding a subscription, and a connection's topics are few).
#[derive(Debug, Default)]
pub enum Topics {
    #[default]
    None,
    One(u8, TopicId),
    Many(Box<[(u8, TopicId)]>),
}

impl Topics {
    pub fn len(&self) -> usize {
        match self {
            Topics::None => 0,
            Topics::One(..) => 1,
            Topics::Many(many) => many.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Topics::None)
    }

    pub fn contains(&self, binding: u8, topic: &TopicId) -> bool {
        match self {
            Topics::None => false,
            Topics::One(b, t) => *b == binding && t == topic,
            Topics::Many(many) => many.iter().any(|(b, t)| *b == binding && t == topic),
        }
    }

    /// Adds a pair (the caller checked it is not there yet).
    pub fn push(&mut self, binding: u8, topic: TopicId) {
        *self = match std::mem::take(self) {
            Topics::None => Topics::One(binding, topic),
            Topics::One(b, t) => Topics::Many(Box::new([(b, t), (binding, topic)])),
            Topics::Many(many) => {
                let mut many = many.into_vec();
                many.reserve_exact(1);
                many.push((binding, topic));
                Topics::Many(many.into_boxed_slice())
            }
        };
    }

    /// Removes a pair; whether it was there.
    pub fn remove(&mut self, binding: u8, topic: &TopicId) -> bool {
        if !self.contains(binding, topic) {
            return false;
        }
        *self = match std::mem::take(self) {
            Topics::None | Topics::One(..) => Topics::None,
            Topics::Many(many) => {
                let mut many = many.into_vec();
                many.retain(|(b, t)| !(*b == binding && t == topic));
                match <[_; 1]>::try_from(many) {
                    Ok([(b, t)]) => Topics::One(b, t),
                    Err(many) => Topics::Many(many.into_boxed_slice()),
                }
            }
        };
        true
    }

    /// Every pair, leaving none.
    pub fn take(&mut self) -> Vec<(u8, TopicId)> {
        match std::mem::take(self) {
            Topics::None => Vec::new(),
            Topics::One(b, t) => vec![(b, t)],
            Topics::Many(many) => many.into_vec(),
        }
    }
}

/// What is left to write of `header` then `frame` once `n` bytes of them are written (fewer
/// than all): a slice of `frame`, or, when the write ended inside the header (a full socket
/// buffer at exactly that point, rare), a copy of the header's rest and the frame.
pub fn rest(header: &[u8], frame: &Bytes, n: usize) -> Bytes {
    match n.checked_sub(header.len()) {
        Some(into_frame) => frame.slice(into_frame..),
        None => {
            let mut rest = BytesMut::with_capacity(header.len() - n + frame.len());
            rest.extend_from_slice(&header[n..]);
            rest.extend_from_slice(frame);
            rest.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any sequence of subscribes and unsubscribes leaves the same pairs as a plain list.
        #[test]
        fn topics_hold_what_a_list_would(ops in proptest::collection::vec((any::<bool>(), 0u8..2, 0u8..4), 0..40)) {
            let mut topics = Topics::default();
            let mut model: Vec<(u8, TopicId)> = Vec::new();
            for (add, binding, name) in ops {
                let topic = TopicId::from(format!("t{name}").as_str());
                let there = model.contains(&(binding, topic.clone()));
                prop_assert_eq!(topics.contains(binding, &topic), there);
                if add {
                    if !there {
                        topics.push(binding, topic.clone());
                        model.push((binding, topic));
                    }
                } else {
                    prop_assert_eq!(topics.remove(binding, &topic), there);
                    model.retain(|pair| *pair != (binding, topic.clone()));
                }
                prop_assert_eq!(topics.len(), model.len());
                prop_assert_eq!(matches!(topics, Topics::One(..)), model.len() == 1);
            }
            let mut left = topics.take();
            left.sort();
            model.sort();
            prop_assert_eq!(left, model);
            prop_assert!(topics.is_empty());
        }
    }
}
