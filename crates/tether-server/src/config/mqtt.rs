//! The `[mqtt]` table: what MQTT devices may keep on the server (`docs/mqtt.md`).

use std::time::Duration;

use serde::Deserialize;

use super::de::duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The longest an MQTT session outlives its connection (MQTT 5's Session Expiry Interval
    /// is capped to it, and the CONNACK says so; a 3.1.1 clean session 0 gets it). "0s": no
    /// session is stored, every connection starts clean.
    #[serde(deserialize_with = "duration")]
    pub max_session_expiry: Duration,
    /// QoS 1 PUBLISHes in flight to one device at most (and at most its Receive Maximum), the
    /// inbox's and its topics' together: each waits for its PUBACK in a 16-byte entry, and what
    /// does not fit waits in the store until PUBACKs make room.
    pub max_inflight: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_session_expiry: Duration::from_secs(7 * 86_400),
            max_inflight: 64,
        }
    }
}
