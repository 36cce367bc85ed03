//! A message on its way out, encoded at most once per encoding.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use tether_proto::{Body, Frame, Publication, Push, binary, json};

/// A server frame shared by every recipient of one delivery: a `push`, or a topic's
/// `publication`.
///
/// Fan-out hands the same `Arc<Outgoing>` to every connection; each connection asks for the
/// encoding it speaks, and the first one to ask pays for the encode. The returned `Bytes` are
/// reference-counted, so no recipient copies the payload.
#[derive(Debug)]
pub struct Outgoing {
    frame: Frame,
    binary: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
    /// When this node's API accepted the message (for the push-to-write latency metric);
    /// `None` for messages from other nodes, whose clocks are not this one's.
    accepted: Option<Instant>,
}

impl Outgoing {
    pub fn new(push: Push) -> Self {
        Self::of(Frame::new(0, push))
    }

    pub fn publication(publication: Publication) -> Self {
        Self::of(Frame::new(0, publication))
    }

    /// A frame that came from another node, with its binary encoding when the caller has it
    /// (so that it is not encoded again). `None` unless the frame is a push or a publication.
    pub fn received(frame: Frame, binary: Option<Bytes>) -> Option<Self> {
        if !matches!(frame.body, Body::Push(_) | Body::Publication(_)) {
            return None;
        }
        let out = Self::of(frame);
        if let Some(bytes) = binary {
            let _ = out.binary.set(bytes);
        }
        Some(out)
    }

    fn of(frame: Frame) -> Self {
        Outgoing {
            frame,
            binary: OnceLock::new(),
            json: OnceLock::new(),
            accepted: None,
        }
    }

    /// This message, marked as accepted by this node's API at `at`.
    pub fn accepted_at(mut self, at: Instant) -> Self {
        self.accepted = Some(at);
        self
    }

    /// When this node's API accepted the message, if it did.
    pub fn accepted(&self) -> Option<Instant> {
        self.accepted
    }

    /// The push, when this is one.
    pub fn push(&self) -> Option<&Push> {
        match &self.frame.body {
            Body::Push(p) => Some(p),
            _ => None,
        }
    }

    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The frame in the binary encoding, length prefix included.
    pub fn binary(&self) -> &Bytes {
        self.binary
            .get_or_init(|| binary::encode_to_bytes(&self.frame))
    }

    /// The frame in the JSON encoding (UTF-8 text).
    pub fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(json::encode(&self.frame)))
    }
}
