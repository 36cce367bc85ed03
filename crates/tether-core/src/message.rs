//! A message on its way out, encoded at most once per encoding.

use std::sync::OnceLock;

use bytes::Bytes;
use tether_proto::{Frame, Push, binary, json};

/// A push frame shared by every recipient of one delivery.
///
/// Fan-out hands the same `Arc<Outgoing>` to every connection; each connection asks for the
/// encoding it speaks, and the first one to ask pays for the encode. The returned `Bytes` are
/// reference-counted, so no recipient copies the payload.
#[derive(Debug)]
pub struct Outgoing {
    push: Push,
    binary: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl Outgoing {
    pub fn new(push: Push) -> Self {
        Outgoing {
            push,
            binary: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    pub fn push(&self) -> &Push {
        &self.push
    }

    /// The frame in the binary encoding, length prefix included.
    pub fn binary(&self) -> &Bytes {
        self.binary
            .get_or_init(|| binary::encode_to_bytes(&Frame::new(0, self.push.clone())))
    }

    /// The frame in the JSON encoding (UTF-8 text).
    pub fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(json::encode(&Frame::new(0, self.push.clone()))))
    }
}
