//! An SSE stream's session, as the POST route sees it: the key that authorizes posting to it,
//! the connection it became, and the frames posted that the connection's task has not taken
//! yet.
//!
//! The session's id, which the stream gives its client in its first event, names the node that
//! holds the stream and the session's key: `<node>.<key>`, both base64url without padding. The
//! key is 128 random bits from the thread's CSPRNG, so knowing the id is what authorizes a
//! POST, and the node lets any node of a cluster route it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tether_core::ConnId;
use tether_proto::Frame;

/// Most frames posted and not yet taken by the connection's task (which takes them as fast as
/// it handles frames: only a burst of POSTs meets this).
pub const MAX_WAITING: usize = 64;

/// Most bytes of posted frames waiting (as their bodies counted them), unless nothing else
/// waits: one body of any size the POST route took (at most `limits.max_frame`) always fits.
pub const MAX_WAITING_BYTES: usize = 256 * 1024;

/// One stream's session.
#[derive(Debug)]
pub struct Session {
    key: u128,
    /// The connection, once its handshake succeeded (0 before).
    conn: AtomicU64,
    /// Frames posted, with their size in the request body, and the sum of those sizes.
    waiting: Mutex<(VecDeque<(Frame, usize)>, usize)>,
    sessions: Weak<Sessions>,
}

impl Session {
    pub fn key(&self) -> u128 {
        self.key
    }

    /// The session's handshake succeeded: posts go to `conn`.
    pub fn connected(&self, conn: ConnId) {
        self.conn.store(conn.0, Ordering::Release);
    }

    /// The next frame posted, and its size.
    pub fn take(&self) -> Option<(Frame, usize)> {
        let mut waiting = self.waiting();
        let (frame, size) = waiting.0.pop_front()?;
        waiting.1 -= size;
        if waiting.0.is_empty() {
            // Gives a burst's memory back.
            waiting.0 = VecDeque::new();
        }
        Some((frame, size))
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.waiting().0.is_empty()
    }

    fn waiting(&self) -> MutexGuard<'_, (VecDeque<(Frame, usize)>, usize)> {
        // Every change is one push or pop: a panic cannot leave it half-changed.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(sessions) = self.sessions.upgrade() {
            sessions.map().remove(&self.key);
        }
    }
}

/// What became of frames posted to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// Waiting for connection `conn`'s task, which the caller wakes.
    Taken(ConnId),
    /// As many frames as allowed are waiting already: none was taken.
    Full,
    /// No such session here (it ended, or never was), or it has no connection yet.
    Unknown,
}

/// The node's SSE sessions, by key. A session leaves when its last holder (its wire, or what
/// its parked connection keeps) drops it.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<u128, Weak<Session>>>,
}

impl Sessions {
    fn map(&self) -> MutexGuard<'_, HashMap<u128, Weak<Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session, with a key no session of this node has.
    pub fn open(self: &Arc<Self>) -> Arc<Session> {
        let mut map = self.map();
        loop {
            let key: u128 = rand::random();
            if key == 0 || map.contains_key(&key) {
                continue;
            }
            let session = Arc::new(Session {
                key,
                conn: AtomicU64::new(0),
                waiting: Mutex::default(),
                sessions: Arc::downgrade(self),
            });
            map.insert(key, Arc::downgrade(&session));
            return session;
        }
    }

    /// Hands `frames` (each with its size) to session `key`, all or none: at most
    /// [`MAX_WAITING`] frames and [`MAX_WAITING_BYTES`] may wait.
    pub fn post(&self, key: u128, frames: Vec<(Frame, usize)>) -> Posted {
        let Some(session) = self.map().get(&key).and_then(Weak::upgrade) else {
            return Posted::Unknown;
        };
        let conn = session.conn.load(Ordering::Acquire);
        if conn == 0 {
            return Posted::Unknown;
        }
        let mut waiting = session.waiting();
        let bytes: usize = frames.iter().map(|(_, size)| size).sum();
        let too_many = waiting.0.len() + frames.len() > MAX_WAITING;
        if too_many || (waiting.1 > 0 && waiting.1 + bytes > MAX_WAITING_BYTES) {
            return Posted::Full;
        }
        waiting.0.extend(frames);
        waiting.1 += bytes;
        Posted::Taken(ConnId(conn))
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session's id: `<node>.<key>` (see the module docs).
pub fn id(node: &str, key: u128) -> String {
    let mut id = URL_SAFE_NO_PAD.encode(node);
    id.push('.');
    URL_SAFE_NO_PAD.encode_string(key.to_be_bytes(), &mut id);
    id
}

/// The node and key an id names; `None` when it is not one.
pub fn parse_id(id: &str) -> Option<(String, u128)> {
    let (node, key) = id.split_once('.')?;
    let node = String::from_utf8(URL_SAFE_NO_PAD.decode(node).ok()?).ok()?;
    let key: [u8; 16] = URL_SAFE_NO_PAD.decode(key).ok()?.try_into().ok()?;
    let key = u128::from_be_bytes(key);
    (!node.is_empty() && key != 0).then_some((node, key))
}

#[cfg(test)]
mod tests {
    use tether_proto::Body;

    use super::*;

    fn ping() -> (Frame, usize) {
        (Frame::new(1, Body::Ping), 20)
    }

    #[test]
    fn an_id_names_its_node_and_key() {
        let key = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        let id = id("node-1:é", key);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        );
        assert_eq!(parse_id(&id), Some(("node-1:é".into(), key)));
        for bad in [
            "",
            ".",
            "bjE",
            "bjE.AAAA",
            "bjE.!!",
            "%.AAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn posts_wait_for_the_connection_within_bounds_and_the_session_leaves_with_its_wire() {
        let sessions = Arc::new(Sessions::default());
        let session = sessions.open();
        let key = session.key();
        assert_eq!(sessions.post(key, vec![ping()]), Posted::Unknown);
        session.connected(ConnId(9));
        assert_eq!(sessions.post(key, vec![ping()]), Posted::Taken(ConnId(9)));
        assert_eq!(sessions.post(key, vec![ping(); 64]), Posted::Full);
        let big = (Frame::new(2, Body::Ping), MAX_WAITING_BYTES);
        assert_eq!(sessions.post(key, vec![big.clone()]), Posted::Full);
        assert_eq!(sessions.post(key + 1, vec![ping()]), Posted::Unknown);
        assert!(session.take().is_some());
        assert!(session.take().is_none() && session.is_empty());
        assert_eq!(
            sessions.post(key, vec![big]),
            Posted::Taken(ConnId(9)),
            "alone, it fits"
        );
        assert!(session.take().is_some());
        assert_eq!(sessions.len(), 1);
        drop(session);
        assert_eq!(sessions.len(), 0);
        assert_eq!(sessions.post(key, vec![ping()]), Posted::Unknown);
    }
}
