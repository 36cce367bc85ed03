//! Persistent MQTT sessions (docs/mqtt.md 4.4): what a device with Clean Start 0 (3.1.1:
//! clean session 0) and a session expiry finds again on its next connection, on any node. Per
//! binding, the store keeps (under the device's (app, user, device)) how the device takes the
//! app's inbox and the topics it subscribed to, each with the offset of the last publication
//! it was sent. The inbox's position is not in it: it is the device's cursor, which outlives
//! any session.
//!
//! Read once, when the handshake accepted the connection (before CONNACK, whose Session
//! Present says whether one was found); written when the subscriptions change and when the
//! connection ends (the offsets move with every publication and are written then), by one
//! [`Saver`] task at a time per connection that writes the latest state and nothing older.
//! A clean start forgets the stored session; a session expiry of 0 forgets it at the end.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tether_core::{AppId, DeviceId, SavedSessions, StoreError, UserId};
use tokio_util::task::TaskTracker;

use super::*;
use crate::transport::Accepted;

/// How one app's part of a session is stored (JSON, short names: it is written often).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// The inbox: 0 not subscribed, 1 QoS 0, 2 QoS 1.
    #[serde(default)]
    i: u8,
    /// The inbox's `/+` form.
    #[serde(default)]
    s: bool,
    #[serde(default)]
    t: Vec<StoredTopic>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredTopic {
    /// The topic.
    t: String,
    /// Subscribed as `$tether/topic/{app}/{topic}` (the other apps' topics always are).
    #[serde(default)]
    l: bool,
    /// The granted QoS.
    #[serde(default)]
    q: u8,
    /// The offset of the last publication sent.
    #[serde(default)]
    o: u64,
}

/// What a persistent session needs beyond the connection: the store, whose session it is, and
/// what was read at connect until CONNACK restores it.
#[derive(Debug)]
pub(super) struct Kept {
    saver: Arc<Saver>,
    /// Seconds the session outlives the connection (capped); 0: forgotten at the end.
    expiry_s: u32,
    /// `mqtt.max_session_expiry`, in seconds.
    max_s: u32,
    /// Read at connect, restored at CONNACK: (binding, its part).
    restored: Vec<(u8, Stored)>,
}

/// A session as the saver writes it: a value and its expiry per binding, or `None` to forget
/// it.
type Snapshot = Option<Vec<(bytes::Bytes, u64)>>;

/// What waits for the saver.
#[derive(Debug, Default)]
struct Next {
    /// The state to write next.
    state: Option<Snapshot>,
    /// A task is writing.
    writing: bool,
}

/// Writes a connection's session, one write at a time, the latest state first.
#[derive(Debug)]
struct Saver {
    /// Where the writes run: the connection may end off the runtime (a parked connection's
    /// clean-up).
    runtime: tokio::runtime::Handle,
    /// The gateway's tasks: a graceful shutdown waits for the writes before it closes the
    /// store.
    tasks: TaskTracker,
    store: Arc<dyn SavedSessions>,
    device: DeviceId,
    users: Vec<(AppId, UserId)>,
    next: Mutex<Next>,
}

impl Saver {
    /// Writes `state` soon: at most one task per connection writes, and a state not written
    /// yet is replaced by a newer one.
    fn put(self: &Arc<Self>, state: Snapshot) {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        next.state = Some(state);
        if next.writing {
            return;
        }
        next.writing = true;
        drop(next);
        let saver = self.clone();
        self.tasks
            .spawn_on(async move { saver.run().await }, &self.runtime);
    }

    async fn run(&self) {
        loop {
            let state = {
                let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
                match next.state.take() {
                    Some(state) => state,
                    None => {
                        next.writing = false;
                        return;
                    }
                }
            };
            if let Err(e) = self.write(state).await {
                tracing::warn!(error = %e, device = %self.device, "an MQTT session was not saved");
            }
        }
    }

    async fn write(&self, state: Snapshot) -> Result<(), StoreError> {
        for (i, (app, user)) in self.users.iter().enumerate() {
            match state.as_ref().and_then(|s| s.get(i)) {
                Some((value, expires)) => {
                    let value = value.clone();
                    let device = &self.device;
                    self.store
                        .save_session(app, user, device, value, *expires)
                        .await?
                }
                None => self.store.forget_session(app, user, &self.device).await?,
            }
        }
        Ok(())
    }
}

impl State {
    /// The connection is accepted: reads the device's stored session (Clean Start 0), or
    /// forgets it (Clean Start 1), and keeps what saving it takes. A store that cannot be
    /// read gives a connection without a session (Session Present 0), logged.
    pub(in crate::transport::mqtt) async fn load_session(&mut self, a: &Accepted<'_>) {
        let max = a.max_session.as_secs().min(u64::from(u32::MAX)) as u32;
        let asked = match v(self) {
            Version::V5 => self.session_expiry,
            Version::V311 if self.clean_start => 0,
            Version::V311 => u32::MAX,
        };
        let expiry_s = asked.min(max);
        self.expiry_lowered = v(self) == Version::V5 && asked > expiry_s;
        self.session_expiry = expiry_s;
        let users: Vec<(AppId, UserId)> = a
            .bindings
            .iter()
            .map(|b| (b.app.clone(), b.user.clone()))
            .collect();
        let now = tether_core::now_ms();
        let mut restored = Vec::new();
        for (i, (app, user)) in users.iter().enumerate() {
            let read = a.sessions.saved_session(app, user, a.device, now).await;
            match read {
                Ok(None) => {}
                Ok(Some(_)) if self.clean_start => {
                    if let Err(e) = a.sessions.forget_session(app, user, a.device).await {
                        tracing::warn!(error = %e, "an MQTT session was not forgotten");
                    }
                }
                Ok(Some(value)) => match serde_json::from_slice::<Stored>(&value) {
                    Ok(stored) => restored.push((i as u8, stored)),
                    Err(e) => tracing::warn!(error = %e, "a stored MQTT session does not read"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot read an MQTT session"),
            }
        }
        if self.clean_start && expiry_s == 0 {
            return;
        }
        let saver = Arc::new(Saver {
            runtime: tokio::runtime::Handle::current(),
            tasks: a.tasks.clone(),
            store: a.sessions.clone(),
            device: a.device.clone(),
            users,
            next: Mutex::default(),
        });
        self.kept = Some(Box::new(Kept {
            saver,
            expiry_s,
            max_s: max,
            restored,
        }));
    }

    /// The Session Expiry Interval of the device's DISCONNECT (MQTT 5), within the cap.
    pub(super) fn set_session_expiry(&mut self, expiry: u32) {
        if let Some(kept) = &mut self.kept {
            kept.expiry_s = expiry.min(kept.max_s);
        }
    }

    /// Whether CONNACK says Session Present.
    pub(super) fn session_present(&self) -> bool {
        self.kept.as_ref().is_some_and(|k| !k.restored.is_empty())
    }

    /// Restores what was read at connect (after CONNACK): the inboxes at once, the topics
    /// with a `subscribe` each from where the session stood, answered by no SUBACK.
    pub(super) fn restore(&mut self, frames: &mut VecDeque<Frame>) {
        let Some(restored) = self.kept.as_mut().map(|k| std::mem::take(&mut k.restored)) else {
            return;
        };
        for (app, stored) in restored {
            let Some(a) = self.apps.get_mut(usize::from(app)) else {
                continue;
            };
            a.inbox = match stored.i {
                1 => Inbox::Live,
                2 => Inbox::Durable,
                _ => Inbox::Off,
            };
            a.seq_form = stored.s;
            let app_name = a.app.to_string();
            for t in stored.t {
                if validate_id("topic", &t.t).is_err() {
                    continue;
                }
                let filter = match t.l || app != 0 || t.t.starts_with('$') {
                    true => format!("$tether/topic/{app_name}/{}", t.t),
                    false => t.t.clone(),
                };
                let qos = match t.q {
                    0 => QoS::AtMostOnce,
                    _ => QoS::AtLeastOnce,
                };
                let req = self.req();
                frames.push_back(Frame::new(
                    req,
                    proto::Subscribe {
                        app: app_name.clone(),
                        topic: t.t.clone(),
                        since: Some(t.o),
                        token: None,
                    },
                ));
                self.pending_mut().reqs.push((
                    req,
                    Req::Sub {
                        packet_id: 0,
                        index: 0,
                        qos,
                        app,
                        topic: t.t,
                        filter,
                        since: Some(t.o),
                    },
                ));
            }
        }
        self.sync_next(frames);
    }

    /// Saves the session as it is now, when it is persistent (`ended`: the connection is
    /// over, and a session of expiry 0 is forgotten).
    pub(super) fn save_session(&self, ended: bool) {
        let Some(kept) = &self.kept else {
            return;
        };
        if kept.expiry_s == 0 {
            if ended {
                kept.saver.put(None);
            }
            return;
        }
        let expires = tether_core::now_ms() + u64::from(kept.expiry_s) * 1000;
        let values = (0..self.apps.len())
            .map(|i| (bytes::Bytes::from(self.stored(i as u8)), expires))
            .collect();
        kept.saver.put(Some(values));
    }

    /// One binding's part of the session, encoded.
    pub(super) fn stored(&self, app: u8) -> Vec<u8> {
        let a = &self.apps[usize::from(app)];
        let mut stored = Stored {
            i: match a.inbox {
                Inbox::Off => 0,
                Inbox::Live => 1,
                Inbox::Durable => 2,
            },
            s: a.seq_form,
            t: self
                .topics
                .iter()
                .filter(|t| t.app == app && t.own)
                .map(|t| StoredTopic {
                    t: t.topic.clone(),
                    // Subscribed with the long form (`$tether/topic/...`): the name is not
                    // the topic itself, kept or implied.
                    l: match &t.name {
                        Some(name) => *name != t.topic,
                        None => self.topic_name(t.app, &t.topic) != t.topic,
                    },
                    q: t.qos as u8,
                    // QoS 1: what the device acked; what was sent after it comes again.
                    o: match t.qos {
                        QoS::AtLeastOnce => t.acked,
                        _ => t.offset,
                    },
                })
                .collect(),
        };
        // Topics of the session still being resubscribed (a connection that ends before the
        // session answered them) stay in it, from where they stood.
        for (_, req) in &self.pending().reqs {
            if let Req::Sub {
                app: a,
                topic,
                filter,
                qos,
                since: Some(since),
                ..
            } = req
                && *a == app
                && !stored.t.iter().any(|t| t.t == *topic)
            {
                stored.t.push(StoredTopic {
                    t: topic.clone(),
                    l: filter != topic,
                    q: *qos as u8,
                    o: *since,
                });
            }
        }
        // Plain data with string keys: it always encodes.
        serde_json::to_vec(&stored).unwrap_or_default()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tether_core::MemoryStore;

    use super::*;

    /// A persistent session of device `d` and one (app, user), saved to `store` for 60 s.
    pub(in crate::transport::mqtt::state) fn kept(
        store: Arc<MemoryStore>,
        tasks: TaskTracker,
        (app, user): (&str, &str),
    ) -> Box<Kept> {
        Box::new(Kept {
            saver: Arc::new(Saver {
                runtime: tokio::runtime::Handle::current(),
                tasks,
                store,
                device: DeviceId::from("d"),
                users: vec![(app.into(), user.into())],
                next: Mutex::default(),
            }),
            expiry_s: 60,
            max_s: 60,
            restored: Vec::new(),
        })
    }

    fn apps(names: &[&str]) -> Vec<AppInbox> {
        names.iter().map(|a| AppInbox::new((*a).into())).collect()
    }

    fn topic(app: u8, topic: &str, name: &str, own: bool, qos: QoS, offset: u64) -> TopicName {
        TopicName {
            app,
            topic: topic.into(),
            name: Some(name.into()),
            own,
            qos,
            id: 1,
            gap: false,
            recovering: false,
            offset,
            acked: offset,
        }
    }

    #[tokio::test]
    async fn a_stored_session_comes_back_as_its_inboxes_and_subscribes_from_its_offsets() {
        let mut s = State::default();
        s.version = Some(Version::V311);
        s.apps = apps(&["demo", "chat"]);
        s.apps[0].inbox = Inbox::Durable;
        s.apps[0].seq_form = true;
        s.topics = vec![
            topic(0, "room-1", "room-1", true, QoS::AtLeastOnce, 7),
            topic(
                0,
                "room-2",
                "$tether/topic/demo/room-2",
                true,
                QoS::AtMostOnce,
                0,
            ),
            topic(
                1,
                "lobby",
                "$tether/topic/chat/lobby",
                true,
                QoS::AtMostOnce,
                3,
            ),
            // The business's subscription: the session does not hold it.
            topic(0, "news", "news", false, QoS::AtMostOnce, 9),
        ];
        let restored = (0..2u8)
            .map(|i| (i, serde_json::from_slice(&s.stored(i)).unwrap()))
            .collect();

        let mut r = State::default();
        r.version = Some(Version::V311);
        r.apps = apps(&["demo", "chat"]);
        r.kept = Some(Box::new(Kept {
            saver: Arc::new(Saver {
                runtime: tokio::runtime::Handle::current(),
                tasks: TaskTracker::new(),
                store: Arc::new(MemoryStore::default()),
                device: DeviceId::from("d"),
                users: Vec::new(),
                next: Mutex::default(),
            }),
            expiry_s: 60,
            max_s: 60,
            restored,
        }));
        assert!(r.session_present());
        let mut frames = VecDeque::new();
        r.restore(&mut frames);
        assert_eq!(
            (r.apps[0].inbox, r.apps[0].seq_form, r.apps[1].inbox),
            (Inbox::Durable, true, Inbox::Off)
        );
        let subscribes: Vec<_> = frames
            .iter()
            .filter_map(|f| match &f.body {
                Body::Subscribe(s) => Some((s.app.as_str(), s.topic.as_str(), s.since)),
                _ => None,
            })
            .collect();
        assert_eq!(
            subscribes,
            [
                ("demo", "room-1", Some(7)),
                ("demo", "room-2", Some(0)),
                ("chat", "lobby", Some(3))
            ]
        );
        let filters: Vec<_> = r
            .pending()
            .reqs
            .iter()
            .filter_map(|(_, req)| match req {
                Req::Sub { filter, qos, .. } => Some((filter.as_str(), *qos)),
                _ => None,
            })
            .collect();
        assert_eq!(
            filters,
            [
                ("room-1", QoS::AtLeastOnce),
                ("$tether/topic/demo/room-2", QoS::AtMostOnce),
                ("$tether/topic/chat/lobby", QoS::AtMostOnce)
            ]
        );
        assert!(!r.session_present(), "restored once");
        // Saved before the session answered: the topics being resubscribed stay in it.
        let again: Stored = serde_json::from_slice(&r.stored(0)).unwrap();
        let topics: Vec<_> = again.t.iter().map(|t| (t.t.as_str(), t.l, t.o)).collect();
        assert_eq!(topics, [("room-1", false, 7), ("room-2", true, 0)]);
        assert_eq!((again.i, again.s), (2, true));
    }
}
