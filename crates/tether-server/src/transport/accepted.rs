//! What a wire learns once the handshake accepted its connection ([`super::Wire::accepted`]),
//! for a transport that keeps something of a device beyond one connection: MQTT's persistent
//! sessions (in the store, so that the device resumes them on any node) and its will (upstream
//! data sent on the device's behalf when its connection is lost).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tether_core::{AppId, ConnId, DeviceId, SavedSessions, UserId};
use tether_proto::PayloadKind;
use tokio_util::task::TaskTracker;

use crate::link::Binding;

/// A connection the handshake accepted, before its client is told.
#[derive(Debug)]
pub struct Accepted<'a> {
    pub conn: ConnId,
    pub device: &'a DeviceId,
    /// In the order of the `connect`.
    pub bindings: &'a [Binding],
    /// Where sessions that outlive a connection are kept.
    pub sessions: &'a Arc<dyn SavedSessions>,
    /// Where a will goes.
    pub wills: &'a Arc<dyn Wills>,
    /// The longest a session may outlive its connection (`mqtt.max_session_expiry`).
    pub max_session: Duration,
    /// QoS 1 PUBLISHes in flight to a device at most (`mqtt.max_inflight`).
    pub max_inflight: u16,
    /// Where work that outlives the connection runs (a session's last write), so that a
    /// graceful shutdown waits for it before it closes the store.
    pub tasks: &'a TaskTracker,
}

/// Upstream data a device left to be sent on its behalf once its connection is lost: MQTT's
/// Will Message (docs/mqtt.md, section 9).
#[derive(Debug, Clone)]
pub struct Will {
    pub app: AppId,
    pub user: UserId,
    pub device: DeviceId,
    /// The connection it was left on (gone by the time the will is sent).
    pub conn: ConnId,
    /// The upstream's `kind`: the will's topic.
    pub kind: String,
    pub payload_kind: PayloadKind,
    pub payload: Bytes,
}

/// Where wills go: the apps' webhooks. Called from wherever a connection ends (its task, or
/// the clean-up of a parked one): nothing here may wait.
pub trait Wills: Send + Sync + std::fmt::Debug {
    /// Sends `will` to its app's webhook, or drops it (no webhook, a full queue, a payload
    /// too large), logged.
    fn will(&self, will: Will);
}
