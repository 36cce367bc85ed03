//! What the parts of the store contract share: the retention a store is built with for it, and
//! message builders.

use bytes::Bytes;
use tether_proto::PayloadKind;

use crate::store::{Append, NewMessage, Page};
use crate::{AppId, MessageId, Seq, UserId};

/// The inbox cap a store must be built with for [`super::store_contract`].
pub const CONTRACT_INBOX_CAP: usize = 5;
/// The topic history length a store must be built with for [`super::store_contract`].
pub const CONTRACT_TOPIC_HISTORY: usize = 4;

/// A message created at `created_ms` that lives `ttl_ms`.
pub(super) fn new_message(id: u64, created_ms: u64, ttl_ms: u64, payload: &str) -> NewMessage {
    NewMessage {
        id: MessageId(id),
        created_ms,
        expires_ms: created_ms + ttl_ms,
        kind: PayloadKind::Json,
        payload: Bytes::from(payload.to_owned()),
    }
}

/// An append of `message` to `users` of `app`, without an idempotency key.
pub(super) fn append_to(app: &str, users: &[&str], message: NewMessage) -> Append {
    Append {
        app: AppId::from(app),
        users: users.iter().map(|u| UserId::from(*u)).collect(),
        message,
        idempotency: None,
    }
}

/// The seqs (or offsets) of a page's messages.
pub(super) fn seqs(page: &Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq.0).collect()
}

/// Checks that concurrent `writes` to one log were given the seqs `got`: 1 to n, each once;
/// and that `page`, the whole log read afterwards, holds the newest `cap` of them, with head n.
pub(super) fn assert_gapless_and_capped(
    mut got: Vec<u64>,
    page: &Page,
    writes: &str,
    log: &str,
    cap: usize,
) {
    let n = got.len() as u64;
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=n).collect::<Vec<_>>(),
        "concurrent {writes}: gapless and distinct"
    );
    assert_eq!(
        seqs(page),
        (n - cap as u64 + 1..=n).collect::<Vec<_>>(),
        "{log} over its cap keeps the newest {cap}"
    );
    assert_eq!(page.head, Seq(n));
}
