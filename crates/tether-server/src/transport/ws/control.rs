//! The control frames a WebSocket connection owes its client (pongs, its close), waiting for
//! the next write.

use bytes::{Buf, BytesMut};
use tether_proto::ws::{self, Opcode};

/// Pongs waiting to be written, in bytes at most: eight of the longest. Past it, only the
/// latest ping is sure of its pong (see [`Controls::pong`]).
const MAX_PONGS: usize = 8 * (2 + ws::MAX_CONTROL);

/// Control frames to write, in the order they were queued.
///
/// # Invariants
/// `bytes` holds whole frames, but for its first `begun` bytes: the rest of a frame partly
/// written, which must go out as it is before anything else. Every frame is one this side
/// writes, under 126 bytes of payload, so that its second byte is its payload's length.
/// Empty, it holds no allocation.
#[derive(Debug, Default)]
pub(super) struct Controls {
    bytes: BytesMut,
    begun: usize,
}

impl Controls {
    /// What is to be written, in order.
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Queues the answer to a ping, after the pongs not written yet: every ping gets its
    /// pong, unless they pass [`MAX_PONGS`] bytes, when those not begun make way for the
    /// latest (RFC 6455, 5.5.3: the most recent ping is the one that must be answered).
    pub(super) fn pong(&mut self, payload: &[u8]) {
        let pong = ws::control(Opcode::Pong, payload);
        if self.bytes.len() + pong.len() > MAX_PONGS {
            self.bytes.truncate(self.begun);
        }
        self.bytes.extend_from_slice(&pong);
    }

    /// Queues a whole control frame (a close) after those queued already. Nothing is queued
    /// after a close, so that no pong displaces it.
    pub(super) fn push(&mut self, frame: &[u8]) {
        debug_assert!(frame.len() >= 2 && frame.len() == 2 + usize::from(frame[1]));
        self.bytes.extend_from_slice(frame);
    }

    /// Takes the first `n` bytes off, written, keeping track of a frame they end inside.
    pub(super) fn written(&mut self, n: usize) {
        // Where the frame at the front ends, then the next, until one ends at or past `n`.
        let mut end = self.begun;
        while end < n {
            end += 2 + usize::from(self.bytes[end + 1] & 0x7F);
        }
        self.bytes.advance(n);
        self.begun = end - n;
        if self.bytes.is_empty() {
            self.bytes = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a client reads: whole frames, one after another.
    fn frames(mut wire: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let len = 2 + usize::from(wire[1]);
            assert!(wire.len() >= len, "a frame cut short: {wire:?}");
            frames.push(wire[..len].to_vec());
            wire = &wire[len..];
        }
        frames
    }

    #[test]
    fn pongs_wait_in_order_until_written() {
        let mut controls = Controls::default();
        for i in 0..10u8 {
            controls.pong(&[i; 5]);
        }
        let written: Vec<_> = frames(controls.as_slice());
        assert_eq!(written.len(), 10);
        assert_eq!(written[3], [0x8A, 5, 3, 3, 3, 3, 3]);
        let len = controls.as_slice().len();
        controls.written(len);
        assert!(controls.is_empty());
        assert_eq!(controls.bytes.capacity(), 0);
    }

    #[test]
    fn too_many_pongs_make_way_for_the_latest_but_not_the_begun() {
        let mut controls = Controls::default();
        controls.pong(&[1; 125]);
        controls.written(10);
        for i in 2..=9u8 {
            controls.pong(&[i; 125]);
        }
        let mut wire = vec![0x8A, 125];
        wire.extend_from_slice(&[1; 125]);
        wire.drain(..10);
        let rest = controls.as_slice().to_vec();
        // The begun one's rest, then only the latest.
        assert_eq!(&rest[..117], &wire[..]);
        assert_eq!(frames(&rest[117..]).len(), 1);
        assert_eq!(rest[rest.len() - 1], 9);
    }

    proptest! {
        /// However writes cut them and pongs displace each other, the client reads whole
        /// frames, each one queued, in the order queued, and the last one queued (the latest
        /// ping's pong, or the close).
        #[test]
        fn the_client_reads_whole_frames_in_order(
            steps in proptest::collection::vec((0usize..200, 0usize..126), 1..60),
            close: bool,
        ) {
            let mut controls = Controls::default();
            let mut wire = Vec::new();
            let mut queued: Vec<Vec<u8>> = Vec::new();
            let last = steps.len() - 1;
            for (i, (write, len)) in steps.into_iter().enumerate() {
                let payload = vec![i as u8; len];
                let frame = if close && i == last {
                    let frame = ws::control(Opcode::Close, &payload);
                    controls.push(&frame);
                    frame
                } else {
                    controls.pong(&payload);
                    ws::control(Opcode::Pong, &payload)
                };
                queued.push(frame);
                let n = write.min(controls.as_slice().len());
                wire.extend_from_slice(&controls.as_slice()[..n]);
                controls.written(n);
            }
            let latest = queued.last().cloned().unwrap();
            wire.extend_from_slice(controls.as_slice());
            let read = frames(&wire);
            // Each frame read was queued, in order (some pongs were displaced).
            let mut at = 0;
            for frame in &read {
                let found = queued[at..].iter().position(|q| q == frame);
                prop_assert!(found.is_some(), "{:?} read but not queued after {}", frame, at);
                at += found.unwrap() + 1;
            }
            prop_assert_eq!(read.last(), Some(&latest));
        }
    }
}
