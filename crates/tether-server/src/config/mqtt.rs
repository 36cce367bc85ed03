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
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_session_expiry: Duration::from_secs(7 * 86_400),
        }
    }
}
