//! [`SavedSessions`] in the embedded store: the `sessions` keyspace, keyed like cursors
//! (`app 0x00 user 0x00 device`), valued `version u8 | expires_ms u64 | value`. Saves and
//! forgets go through the writer like every write (batched, not fsynced on their own: a
//! session is as durable as an ack); reads run on the calling task. The sweep deletes the
//! expired ones.

use async_trait::async_trait;
use bytes::Bytes;
use tether_core::store::check_session_size;
use tether_core::{AppId, DeviceId, SavedSessions, StoreError, UserId};

use super::super::codec;
use super::super::keyspaces::unavailable;
use super::super::request::Write;
use super::EmbeddedStore;

fn key(app: &AppId, user: &UserId, device: &DeviceId) -> Result<Vec<u8>, StoreError> {
    let key = codec::cursor_key(&codec::inbox_key(app, user), device);
    codec::check_key(&key)?;
    Ok(key)
}

#[async_trait]
impl SavedSessions for EmbeddedStore {
    async fn save_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        value: Bytes,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        check_session_size(&value)?;
        let key = key(app, user, device)?;
        let value = Some(codec::encode_session(&value, expires_ms));
        self.write(|reply| Write::Session { key, value, reply })
            .await
    }

    async fn saved_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = key(app, user, device)?;
        self.read_now(|ks| {
            let Some(stored) = ks.sessions.get(&key).map_err(unavailable)? else {
                return Ok(None);
            };
            let (expires, value) = codec::decode_session(&stored)?;
            Ok((expires > now_ms).then(|| Bytes::copy_from_slice(value)))
        })
    }

    async fn forget_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<(), StoreError> {
        let key = key(app, user, device)?;
        self.write(|reply| Write::Session {
            key,
            value: None,
            reply,
        })
        .await
    }
}
