//! [`SavedSessions`] on Redis: per (app, user), `session:<device>` (device escaped) in the
//! user's slot, a string `expires_ms u64 | value`. The expiry inside the value decides what a
//! read returns (by the caller's clock, as for messages); the key's TTL, the value's lifetime
//! plus [`TTL_MARGIN_MS`], only frees the memory.

use async_trait::async_trait;
use bytes::Bytes;
use tether_core::store::check_session_size;
use tether_core::{AppId, DeviceId, SavedSessions, StoreError, UserId};

use super::codec::{corrupt, redis_error};
use super::{RedisStore, TTL_MARGIN_MS, key_ttl};
use crate::escape;

impl RedisStore {
    fn session_key(&self, app: &AppId, user: &UserId, device: &DeviceId) -> String {
        let what = format!("session:{}", escape(device.as_str()));
        self.keys.user(app.as_str(), user.as_str(), &what)
    }
}

#[async_trait]
impl SavedSessions for RedisStore {
    async fn save_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        value: Bytes,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        check_session_size(&value)?;
        let key = self.session_key(app, user, device);
        let now = tether_core::now_ms();
        if expires_ms <= now {
            return self.forget_session(app, user, device).await;
        }
        let mut stored = Vec::with_capacity(8 + value.len());
        stored.extend_from_slice(&expires_ms.to_be_bytes());
        stored.extend_from_slice(&value);
        redis::cmd("SET")
            .arg(&key)
            .arg(stored)
            .arg("PX")
            .arg(key_ttl(now, expires_ms).max(TTL_MARGIN_MS))
            .query_async::<()>(&mut self.redis.clone())
            .await
            .map_err(redis_error)
    }

    async fn saved_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.session_key(app, user, device))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_error)?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let Some((expires, value)) = stored.split_first_chunk::<8>() else {
            return Err(corrupt("saved session: truncated".to_string()));
        };
        match u64::from_be_bytes(*expires) > now_ms {
            true => Ok(Some(Bytes::copy_from_slice(value))),
            false => Ok(None),
        }
    }

    async fn forget_session(
        &self,
        app: &AppId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<(), StoreError> {
        redis::cmd("DEL")
            .arg(self.session_key(app, user, device))
            .query_async::<()>(&mut self.redis.clone())
            .await
            .map_err(redis_error)
    }
}
