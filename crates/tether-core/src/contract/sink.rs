//! [`RecordingSink`], and every kind of [`NodeMessage`] with the effects it shows: what the
//! router contracts and the routers' own tests check deliveries against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tether_proto::{Code, PayloadKind, Push};

use crate::{AppId, ConnId, LocalSink, NodeMessage, Outgoing, TopicId};

/// A [`LocalSink`] that records what it was asked to do, for router contract tests.
#[derive(Debug, Default)]
pub struct RecordingSink {
    pub delivered: Mutex<HashMap<ConnId, Vec<Bytes>>>,
    pub disconnected: Mutex<Vec<(ConnId, Code)>>,
    /// Publications, broadcasts and subscription changes, described in one line each.
    pub others: Mutex<Vec<String>>,
    /// How many times the router asked for a recovery.
    pub recovers: std::sync::atomic::AtomicUsize,
}

fn payload_of(msg: &Outgoing) -> String {
    let payload = match &msg.frame().body {
        tether_proto::Body::Push(p) => &p.payload,
        tether_proto::Body::Publication(p) => &p.payload,
        _ => return "?".into(),
    };
    String::from_utf8_lossy(payload).into_owned()
}

impl LocalSink for RecordingSink {
    fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize {
        let mut map = self.delivered.lock().unwrap();
        let payload = msg
            .push()
            .expect("the router carries pushes")
            .payload
            .clone();
        for conn in conns {
            map.entry(*conn).or_default().push(payload.clone());
        }
        conns.len()
    }

    fn disconnect(&self, conns: &[ConnId], code: Code, _reason: &str) -> usize {
        let mut list = self.disconnected.lock().unwrap();
        list.extend(conns.iter().map(|c| (*c, code)));
        conns.len()
    }

    fn publish(&self, app: &AppId, topic: &TopicId, offset: u64, msg: &Arc<Outgoing>) -> usize {
        let line = format!("publish {app} {topic} {offset} {}", payload_of(msg));
        self.others.lock().unwrap().push(line);
        1
    }

    fn broadcast(&self, app: &AppId, msg: &Arc<Outgoing>) -> usize {
        let line = format!("broadcast {app} {}", payload_of(msg));
        self.others.lock().unwrap().push(line);
        1
    }

    fn subscription(
        &self,
        app: &AppId,
        topic: &TopicId,
        conns: &[ConnId],
        subscribed: bool,
    ) -> usize {
        let conns: Vec<String> = conns.iter().map(ToString::to_string).collect();
        let line = format!(
            "subscription {app} {topic} {subscribed} {}",
            conns.join(",")
        );
        self.others.lock().unwrap().push(line);
        conns.len()
    }

    fn post(&self, session: u128, body: &Bytes) -> usize {
        let line = format!("post {session:x} {}", String::from_utf8_lossy(body));
        self.others.lock().unwrap().push(line);
        1
    }

    fn recover(&self) {
        self.recovers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every kind of [`NodeMessage`], in an order whose effects [`RecordingSink`] shows.
pub fn node_messages() -> Vec<NodeMessage> {
    let publication = |topic: &str, offset: u64, payload: &str| {
        Arc::new(Outgoing::publication(tether_proto::Publication {
            app: "contract".into(),
            topic: topic.into(),
            offset,
            msg_id: 7,
            created_ms: 1,
            kind: PayloadKind::Json,
            payload: Bytes::from(payload.to_owned()),
        }))
    };
    let push = |payload: &str| {
        Arc::new(Outgoing::new(Push {
            app: "contract".into(),
            msg_id: 8,
            seq: 0,
            qos: 0,
            created_ms: 1,
            kind: PayloadKind::Binary,
            payload: Bytes::from(payload.to_owned()),
        }))
    };
    vec![
        NodeMessage::Publish {
            app: "contract".into(),
            topic: "room:1".into(),
            offset: 3,
            msg: publication("room:1", 3, "\"p3\""),
        },
        NodeMessage::Broadcast {
            app: "contract".into(),
            msg: push("all"),
        },
        NodeMessage::Subscription {
            app: "contract".into(),
            topic: "room:{2}".into(),
            conns: vec![ConnId(5), ConnId(6)],
            subscribed: true,
        },
        NodeMessage::Subscription {
            app: "contract".into(),
            topic: "room:{2}".into(),
            conns: vec![ConnId(6)],
            subscribed: false,
        },
        NodeMessage::Publish {
            app: "contract".into(),
            topic: "live".into(),
            offset: 0,
            msg: publication("live", 0, "\"p0\""),
        },
        NodeMessage::Post {
            session: u128::MAX - 1,
            body: Bytes::from_static(br#"[{"op":"ack","app":"contract","seq":3}]"#),
        },
    ]
}

/// What [`RecordingSink::others`] holds once [`node_messages`] were applied.
pub const NODE_MESSAGE_EFFECTS: [&str; 6] = [
    "publish contract room:1 3 \"p3\"",
    "broadcast contract all",
    "subscription contract room:{2} true 5,6",
    "subscription contract room:{2} false 6",
    "publish contract live 0 \"p0\"",
    r#"post fffffffffffffffffffffffffffffffe [{"op":"ack","app":"contract","seq":3}]"#,
];
