//! The [`Batch`] of publications (or broadcast pushes) that leave together, how one
//! connection is handed a batch, and what handing it out did ([`Reached`]).

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use tether_core::{Outgoing, Transport};

use crate::link::{Encoding, Link, Offered};

/// At most this many publications leave in one [`Batch`]. goim merges up to 20 messages per
/// write; more cost no latency here, since a batch only takes what is already waiting. At
/// 1 KiB one pair of runs gave 1.65 million deliveries/s at 0.59 CPU-s per million with 64
/// against 1.26 million at 0.78 with 32, and a later full comparison 1.21 million at 0.80 with
/// 64: the load generator is near its limit there (docs/benchmarks.md, "64 per batch").
pub const BATCH_MAX: usize = 64;

/// A batch's frames joined for a raw TCP connection stay under this many bytes (a quarter of
/// the default outbound queue; a connection with a smaller queue gets the frames one by one,
/// see [`offer_batch`]).
pub const BATCH_BYTES: usize = 64 * 1024;

/// Publications (or broadcast pushes) that leave together, in order, each with its offset (0
/// for a live-only one).
///
/// A fan-out worker that falls behind finds several of them waiting. Sending them one pass
/// each costs every subscriber one write (or one wake-up of its task) per publication; a batch
/// costs it one. For a raw TCP connection that needs every item, the items' binary frames are
/// joined back to back once, and the same bytes are one queue entry and one write for every
/// such subscriber. A WebSocket message carries exactly one frame, so WebSocket connections
/// get the frames one by one (their task still writes what it has queued together), and so
/// does a subscriber that already has some of the items (it joined after the first).
#[derive(Debug)]
pub struct Batch {
    items: Vec<(u64, Arc<Outgoing>)>,
    /// Every item's binary frame, back to back: made by the first subscriber that takes it,
    /// when there are several items.
    joined: OnceLock<Bytes>,
    /// The length of `joined`.
    joined_len: usize,
    /// The lowest durable offset of the items, `u64::MAX` when none is durable: a subscriber
    /// whose position is below it needs them all.
    first_durable: u64,
}

impl Batch {
    /// A batch of one publication.
    pub fn one(offset: u64, msg: Arc<Outgoing>) -> Batch {
        Batch::new(vec![(offset, msg)])
    }

    fn new(items: Vec<(u64, Arc<Outgoing>)>) -> Batch {
        let first_durable = items
            .iter()
            .map(|(offset, _)| *offset)
            .filter(|offset| *offset != 0)
            .min()
            .unwrap_or(u64::MAX);
        Batch {
            joined_len: items.iter().map(|(_, m)| m.binary().len()).sum(),
            items,
            joined: OnceLock::new(),
            first_durable,
        }
    }

    /// The items' binary frames back to back, joined once for every subscriber.
    fn joined(&self) -> &Bytes {
        self.joined.get_or_init(|| {
            let mut joined = BytesMut::with_capacity(self.joined_len);
            for (_, msg) in &self.items {
                joined.extend_from_slice(msg.binary());
            }
            joined.freeze()
        })
    }

    /// `items` in order, in batches of at most [`BATCH_MAX`] items and (past the first item)
    /// [`BATCH_BYTES`] of binary frames.
    pub fn group(items: Vec<(u64, Arc<Outgoing>)>) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut current: Vec<(u64, Arc<Outgoing>)> = Vec::new();
        let mut bytes = 0;
        for (offset, msg) in items {
            let len = msg.binary().len();
            if !current.is_empty() && (current.len() == BATCH_MAX || bytes + len > BATCH_BYTES) {
                batches.push(Batch::new(std::mem::take(&mut current)));
                bytes = 0;
            }
            bytes += len;
            current.push((offset, msg));
        }
        if !current.is_empty() {
            batches.push(Batch::new(current));
        }
        batches
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The offset a subscriber must be below to need at least one item (the highest durable
    /// one; `u64::MAX` when some item is live-only, which everyone needs).
    pub fn needed_below(&self) -> u64 {
        if self.items.iter().any(|(offset, _)| *offset == 0) {
            return u64::MAX;
        }
        self.items
            .iter()
            .map(|(offset, _)| *offset)
            .max()
            .unwrap_or(0)
    }
}

/// Hands the items of `batch` that a connection at position `after` lacks (durable offsets up
/// to `after` it has) to it, in the encoding it speaks, and counts them in `reached`: joined
/// in one entry where it takes that and the entry is at most a quarter of its outbound queue
/// (a small `limits.outbound_queue_bytes` must not make one entry close it as slow), else one
/// frame each. `encoding` is the connection's ([`Link::encoding`]), read by the caller (see
/// `super::topic::Topic::deliver_shard`). Returns whether the connection was found closed.
pub fn offer_batch(
    conn: &dyn Link,
    encoding: Encoding,
    batch: &Batch,
    after: u64,
    direct: bool,
    reached: &mut Reached,
) -> bool {
    let mut closed = false;
    if batch.len() > 1
        && conn.takes_joined_frames()
        && after < batch.first_durable
        && batch.joined_len <= conn.queue_limit() / 4
    {
        let offered = hand(conn, batch.joined(), direct);
        reached.tally(conn, offered, batch.len() as u64, &mut closed);
        return closed;
    }
    for (offset, msg) in &batch.items {
        if *offset != 0 && *offset <= after {
            continue;
        }
        let frame = encoding.frame_of(msg);
        if !reached.tally(conn, hand(conn, frame, direct), 1, &mut closed) {
            break;
        }
    }
    closed
}

/// Hands one connection a frame: written by this thread where the fan-out keeps up
/// (`direct`), queued where it is behind, so that frames piling up for a connection leave in
/// one write.
fn hand(conn: &dyn Link, frame: &Bytes, direct: bool) -> Offered {
    if direct {
        conn.write_or_queue(frame)
    } else {
        conn.queue_shared(frame)
    }
}

/// What one pass over subscribers did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reached {
    /// Queued or written.
    pub delivered: u64,
    /// Of those, written to the socket by the fan-out itself, and their bytes (WebSocket
    /// headers not counted), by transport (see [`by_transport`]).
    pub written: [u64; 3],
    pub written_bytes: [u64; 3],
    /// Connections whose byte-bounded queue overflowed: they are closing as slow.
    pub overflowed: u64,
    /// Subscribers whose connection was already closed (removed by the caller).
    pub closed: u64,
}

impl Reached {
    /// `frames` frames of `bytes` bytes in all written to a `transport` socket by the
    /// caller's thread.
    pub fn wrote(&mut self, transport: Transport, frames: u64, bytes: usize) {
        self.delivered += frames;
        self.written[by_transport(transport)] += frames;
        self.written_bytes[by_transport(transport)] += bytes as u64;
    }

    /// Counts what an offer did with `frames` frames; `false` when nothing more should be
    /// offered to that connection (its queue overflowed, or it is closed: see `closed`).
    pub(super) fn tally(
        &mut self,
        conn: &dyn Link,
        offered: Offered,
        frames: u64,
        closed: &mut bool,
    ) -> bool {
        match offered {
            Offered::Queued => self.delivered += frames,
            Offered::Written(n) => self.wrote(conn.transport(), frames, n),
            Offered::Overflow => {
                self.overflowed += 1;
                return false;
            }
            Offered::Closed => {
                *closed = true;
                return false;
            }
        }
        true
    }

    pub fn add(&mut self, other: Reached) {
        self.delivered += other.delivered;
        for t in 0..3 {
            self.written[t] += other.written[t];
            self.written_bytes[t] += other.written_bytes[t];
        }
        self.overflowed += other.overflowed;
        self.closed += other.closed;
    }
}

/// The index of `transport` in [`Reached::written`]: raw TCP, WebSocket, SSE.
pub fn by_transport(transport: Transport) -> usize {
    match transport {
        Transport::Tcp => 0,
        Transport::Ws => 1,
        Transport::Sse => 2,
        // Never written past its task (`Framing::Sealed`): nothing to count here.
        Transport::Mqtt => 2,
    }
}
