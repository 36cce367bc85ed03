//! Contract test suites: every backend of a seam must pass the same checks.
//!
//! Backends call these from their own tests (`registry_contract(&MyRegistry::new(..)).await`).
//! They panic on the first broken guarantee, with a message naming it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tether_proto::{Code, PayloadKind, Push};

use crate::store::{Append, Cursor, Idempotency, NewMessage, Page, Store};
use crate::{
    AppId, ConnId, DeviceId, LocalSink, MessageId, NodeId, NodeInfo, NodeMessage, Outgoing,
    Registry, Router, Seq, Session, SubscriptionError, TopicId, Transport, UserId,
};

fn session(app: &str, user: &str, node: &str, conn: u64, device: &str) -> Session {
    Session {
        app: app.into(),
        user: user.into(),
        node: node.into(),
        conn: ConnId(conn),
        device: DeviceId::from(device),
        transport: Transport::Tcp,
        connected_at_ms: 1,
    }
}

fn conns(mut sessions: Vec<Session>) -> Vec<(String, u64)> {
    let mut out: Vec<_> = sessions
        .drain(..)
        .map(|s| (s.node.to_string(), s.conn.0))
        .collect();
    out.sort();
    out
}

/// The registry contract. Uses apps named `contract-*`; run it on an empty backend.
pub async fn registry_contract(reg: &dyn Registry) {
    let app = AppId::from("contract-a");
    let other_app = AppId::from("contract-b");
    let alice = UserId::from("alice");
    let bob = UserId::from("bob");
    let n1 = NodeId::from("n1");

    reg.register(session("contract-a", "alice", "n1", 1, "phone"))
        .await
        .unwrap();
    reg.register(session("contract-a", "alice", "n2", 1, "laptop"))
        .await
        .unwrap();
    reg.register(session("contract-a", "bob", "n1", 2, "phone"))
        .await
        .unwrap();
    reg.register(session("contract-b", "alice", "n1", 1, "phone"))
        .await
        .unwrap();

    let found = reg
        .sessions(&app, std::slice::from_ref(&alice))
        .await
        .unwrap();
    assert_eq!(
        conns(found),
        vec![("n1".into(), 1), ("n2".into(), 1)],
        "a user's sessions on every node are found, and only that app's"
    );
    let both = reg
        .sessions(&app, &[alice.clone(), bob.clone()])
        .await
        .unwrap();
    assert_eq!(
        both.len(),
        3,
        "a lookup of several users returns all their sessions"
    );
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 3);
    assert_eq!(reg.app_session_count(&other_app).await.unwrap(), 1);

    // Registering again replaces, it does not duplicate.
    let mut again = session("contract-a", "alice", "n1", 1, "phone-renamed");
    again.transport = Transport::Ws;
    reg.register(again).await.unwrap();
    let found = reg
        .sessions(&app, std::slice::from_ref(&alice))
        .await
        .unwrap();
    assert_eq!(found.len(), 2, "re-registering a session replaces it");
    assert!(
        found
            .iter()
            .any(|s| s.device.as_str() == "phone-renamed" && s.transport == Transport::Ws)
    );

    reg.unregister(&app, &alice, &n1, ConnId(1)).await.unwrap();
    let found = reg
        .sessions(&app, std::slice::from_ref(&alice))
        .await
        .unwrap();
    assert_eq!(
        conns(found),
        vec![("n2".into(), 1)],
        "unregister removes exactly one session"
    );
    assert_eq!(
        reg.sessions(&other_app, std::slice::from_ref(&alice))
            .await
            .unwrap()
            .len(),
        1,
        "unregister in one app leaves the other app's binding of the same connection"
    );

    reg.unregister(&app, &alice, &n1, ConnId(99)).await.unwrap();
    reg.unregister(&app, &UserId::from("nobody"), &n1, ConnId(1))
        .await
        .unwrap();

    for (a, u, n, c) in [
        (&app, &alice, "n2", 1),
        (&app, &bob, "n1", 2),
        (&other_app, &alice, "n1", 1),
    ] {
        reg.unregister(a, u, &NodeId::from(n), ConnId(c))
            .await
            .unwrap();
    }
    assert!(reg.sessions(&app, &[alice, bob]).await.unwrap().is_empty());
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 0);

    node_contract(reg).await;
}

fn node_info(id: &str, port: u16, draining: bool, expires_ms: u64) -> NodeInfo {
    NodeInfo {
        id: NodeId::from(id),
        endpoints: vec![
            format!("tcp://10.0.0.1:{port}"),
            format!("ws://10.0.0.1:{}/ws", port + 1),
        ],
        connections: u64::from(port),
        max_connections: 100_000,
        draining,
        zone: format!("zone-{}", port % 3),
        expires_ms,
    }
}

fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
    nodes.iter().map(|n| n.id.as_str()).collect()
}

/// Node announcements: what the dispatcher orders endpoints from. Node ids are
/// `contract-node-*`; times are in the future of the real clock, as a backend may also expire
/// entries by its own clock.
async fn node_contract(reg: &dyn Registry) {
    let now = crate::now_ms();
    let minute = 60_000;
    let ours = |nodes: Vec<NodeInfo>| -> Vec<NodeInfo> {
        nodes
            .into_iter()
            .filter(|n| n.id.as_str().starts_with("contract-node-"))
            .collect()
    };
    assert!(
        ours(reg.nodes(now).await.unwrap()).is_empty(),
        "no node before any announcement"
    );

    let b = node_info("contract-node-b", 7400, false, now + minute);
    let a = node_info("contract-node-a", 7500, false, now + 2 * minute);
    assert!(
        !reg.announce(b.clone()).await.unwrap(),
        "a first announcement renews nothing"
    );
    reg.announce(a.clone()).await.unwrap();
    let nodes = ours(reg.nodes(now).await.unwrap());
    assert_eq!(
        ids(&nodes),
        ["contract-node-a", "contract-node-b"],
        "every live node, sorted by id"
    );
    assert_eq!(nodes[0], a, "an announcement comes back whole");
    assert_eq!(
        nodes[1].endpoints,
        ["tcp://10.0.0.1:7400", "ws://10.0.0.1:7401/ws"],
        "endpoints keep their order"
    );

    // A new announcement replaces the old one, state and expiry included.
    let mut draining = b.clone();
    draining.draining = true;
    draining.connections = 3;
    draining.expires_ms = now + 3 * minute;
    assert!(
        reg.announce(draining.clone()).await.unwrap(),
        "announcing again renews the held announcement"
    );
    let nodes = ours(reg.nodes(now).await.unwrap());
    assert_eq!(nodes.len(), 2, "announcing again does not duplicate a node");
    assert_eq!(
        nodes[1], draining,
        "draining nodes are listed, with their flag"
    );

    // Expiry: a node that stops announcing drops out at its expiry, not before.
    assert_eq!(
        ids(&ours(reg.nodes(now + 2 * minute - 1).await.unwrap())),
        ["contract-node-a", "contract-node-b"]
    );
    assert_eq!(
        ids(&ours(reg.nodes(now + 2 * minute).await.unwrap())),
        ["contract-node-b"],
        "a node is gone from its expiry on"
    );
    // Announcing again brings it back.
    reg.announce(node_info("contract-node-a", 7500, false, now + 4 * minute))
        .await
        .unwrap();
    assert_eq!(
        ids(&ours(reg.nodes(now + 2 * minute).await.unwrap())),
        ["contract-node-a", "contract-node-b"],
        "a node that announces again is back"
    );

    reg.withdraw(&NodeId::from("contract-node-b"))
        .await
        .unwrap();
    reg.withdraw(&NodeId::from("contract-node-unknown"))
        .await
        .unwrap();
    assert_eq!(
        ids(&ours(reg.nodes(now).await.unwrap())),
        ["contract-node-a"],
        "withdraw removes exactly that node"
    );
    reg.withdraw(&NodeId::from("contract-node-a"))
        .await
        .unwrap();
    assert!(ours(reg.nodes(now).await.unwrap()).is_empty());
    assert!(
        !reg.announce(node_info("contract-node-a", 7500, false, now + minute))
            .await
            .unwrap(),
        "after a withdraw, an announcement is a first one again"
    );
    reg.withdraw(&NodeId::from("contract-node-a"))
        .await
        .unwrap();

    reap_contract(reg).await;
}

/// A node that dies without withdrawing: its sessions go at the first reap after its
/// announcement expired; a live node's, and those of nodes that never announced, stay.
async fn reap_contract(reg: &dyn Registry) {
    let now = crate::now_ms();
    let minute = 60_000;
    let app = AppId::from("contract-reap");
    let users = [UserId::from("u1"), UserId::from("u2")];
    reg.announce(node_info("contract-node-dead", 7600, false, now + minute))
        .await
        .unwrap();
    reg.announce(node_info(
        "contract-node-live",
        7700,
        false,
        now + 3 * minute,
    ))
    .await
    .unwrap();
    for (user, node, conn) in [
        ("u1", "contract-node-dead", 1),
        ("u2", "contract-node-dead", 2),
        ("u1", "contract-node-live", 3),
        ("u2", "contract-node-silent", 4),
    ] {
        reg.register(session("contract-reap", user, node, conn, "d"))
            .await
            .unwrap();
    }
    assert_eq!(
        reg.reap(now + minute - 1).await.unwrap(),
        0,
        "nothing is reaped before the expiry"
    );
    assert_eq!(reg.sessions(&app, &users).await.unwrap().len(), 4);
    assert_eq!(
        conns(
            reg.node_sessions(&NodeId::from("contract-node-dead"))
                .await
                .unwrap()
        ),
        vec![
            ("contract-node-dead".into(), 1),
            ("contract-node-dead".into(), 2)
        ],
        "a node's sessions, across users"
    );
    assert!(
        !ids(&reg.nodes(now + minute).await.unwrap()).contains(&"contract-node-dead"),
        "an expired node is not listed"
    );
    assert_eq!(
        reg.reap(now + minute).await.unwrap(),
        2,
        "listing the nodes first does not keep a dead node from being reaped"
    );
    assert!(
        reg.node_sessions(&NodeId::from("contract-node-dead"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        conns(reg.sessions(&app, &users).await.unwrap()),
        vec![
            ("contract-node-live".into(), 3),
            ("contract-node-silent".into(), 4)
        ],
        "the dead node's sessions are gone, the others stay"
    );
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 2);
    assert!(
        !reg.announce(node_info(
            "contract-node-dead",
            7600,
            false,
            now + 4 * minute
        ))
        .await
        .unwrap(),
        "a reaped node that comes back is told to register its sessions again"
    );
    for (user, node, conn) in [
        ("u1", "contract-node-live", 3),
        ("u2", "contract-node-silent", 4),
    ] {
        reg.unregister(&app, &UserId::from(user), &NodeId::from(node), ConnId(conn))
            .await
            .unwrap();
    }
    for node in ["contract-node-dead", "contract-node-live"] {
        reg.withdraw(&NodeId::from(node)).await.unwrap();
    }
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 0);

    // A node that withdrew but could not unregister everything: the next reap cleans up.
    reg.announce(node_info("contract-node-gone", 7800, false, now + minute))
        .await
        .unwrap();
    reg.register(session("contract-reap", "u1", "contract-node-gone", 9, "d"))
        .await
        .unwrap();
    reg.withdraw(&NodeId::from("contract-node-gone"))
        .await
        .unwrap();
    assert_eq!(
        reg.reap(now).await.unwrap(),
        1,
        "a withdrawn node's leftovers go"
    );
    assert!(reg.sessions(&app, &users).await.unwrap().is_empty());
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 0);
}

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
    ]
}

/// What [`RecordingSink::others`] holds once [`node_messages`] were applied.
pub const NODE_MESSAGE_EFFECTS: [&str; 5] = [
    "publish contract room:1 3 \"p3\"",
    "broadcast contract all",
    "subscription contract room:{2} true 5,6",
    "subscription contract room:{2} false 6",
    "publish contract live 0 \"p0\"",
];

/// A qos 0 push of app `contract` whose payload is `n` (4 bytes, big-endian), for the router
/// contracts and router tests.
pub fn numbered_push(n: u32) -> Arc<Outgoing> {
    Arc::new(Outgoing::new(Push {
        app: "contract".into(),
        msg_id: u64::from(n),
        seq: 0,
        qos: 0,
        created_ms: 0,
        kind: PayloadKind::Binary,
        payload: Bytes::from(n.to_be_bytes().to_vec()),
    }))
}

/// The `n` of a [`numbered_push`]'s payload.
fn push_number(payload: &Bytes) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().expect("a numbered push"))
}

/// The router contract, for a router whose own node is `node` and whose local deliveries land
/// in `sink`.
pub async fn router_contract(router: &dyn Router, node: &NodeId, sink: &RecordingSink) {
    for n in 0..10 {
        let reached = router
            .deliver(node, &[ConnId(1), ConnId(2)], numbered_push(n))
            .await
            .unwrap();
        assert_eq!(reached, 2);
    }
    {
        let delivered = sink.delivered.lock().unwrap();
        for conn in [ConnId(1), ConnId(2)] {
            let got: Vec<u32> = delivered[&conn].iter().map(push_number).collect();
            assert_eq!(
                got,
                (0..10).collect::<Vec<_>>(),
                "deliveries keep call order per connection"
            );
        }
    }
    let closed = router
        .disconnect(node, &[ConnId(2)], Code::KICKED, "kicked")
        .await
        .unwrap();
    assert_eq!(closed, 1);
    assert_eq!(
        sink.disconnected.lock().unwrap().as_slice(),
        &[(ConnId(2), Code::KICKED)]
    );
    for msg in node_messages() {
        router.send(node, msg).await.unwrap();
    }
    assert_eq!(
        sink.others.lock().unwrap().as_slice(),
        NODE_MESSAGE_EFFECTS,
        "every kind of message is applied, in call order"
    );
}

/// The router contract between two nodes: `from` is one node's router, `to` another node
/// whose router delivers into `sink`. Deliveries, every kind of message and a disconnect
/// arrive, in call order. Waits up to 5 s for them (a remote router is asynchronous).
pub async fn remote_router_contract(from: &dyn Router, to: &NodeId, sink: &RecordingSink) {
    assert!(!from.is_local(to), "the contract needs another node");
    for n in 0..500 {
        let sent = from
            .deliver(to, &[ConnId(1), ConnId(2)], numbered_push(n))
            .await
            .unwrap();
        assert_eq!(
            sent, 2,
            "a remote delivery counts the connections it was sent to"
        );
    }
    for msg in node_messages() {
        from.send(to, msg).await.unwrap();
    }
    from.disconnect(to, &[ConnId(2)], Code::KICKED, "kicked")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sink.disconnected.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the messages did not arrive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let delivered = sink.delivered.lock().unwrap();
    for conn in [ConnId(1), ConnId(2)] {
        let got: Vec<u32> = delivered[&conn].iter().map(push_number).collect();
        assert_eq!(got, (0..500).collect::<Vec<_>>(), "in call order");
    }
    assert_eq!(sink.others.lock().unwrap().as_slice(), NODE_MESSAGE_EFFECTS);
    assert_eq!(
        sink.disconnected.lock().unwrap().as_slice(),
        &[(ConnId(2), Code::KICKED)]
    );
}

/// The inbox cap a store must be built with for [`store_contract`].
pub const CONTRACT_INBOX_CAP: usize = 5;
/// The topic history length a store must be built with for [`store_contract`].
pub const CONTRACT_TOPIC_HISTORY: usize = 4;

fn new_message(id: u64, created_ms: u64, ttl_ms: u64, payload: &str) -> NewMessage {
    NewMessage {
        id: MessageId(id),
        created_ms,
        expires_ms: created_ms + ttl_ms,
        kind: PayloadKind::Json,
        payload: Bytes::from(payload.to_owned()),
    }
}

fn append_to(app: &str, users: &[&str], message: NewMessage) -> Append {
    Append {
        app: AppId::from(app),
        users: users.iter().map(|u| UserId::from(*u)).collect(),
        message,
        idempotency: None,
    }
}

fn seqs(page: &Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq.0).collect()
}

/// The store contract. Build the backend with an inbox cap of [`CONTRACT_INBOX_CAP`] and a
/// topic history of [`CONTRACT_TOPIC_HISTORY`]; it uses apps named `contract-*`, so run it on
/// an empty backend.
pub async fn store_contract(store: &dyn Store) {
    inbox_contract(store).await;
    topic_history_contract(store).await;
    subscription_contract(store).await;
}

async fn inbox_contract(store: &dyn Store) {
    let now = crate::now_ms();
    let hour = 3_600_000;
    let app = AppId::from("contract-s");
    let alice = UserId::from("alice");
    let bob = UserId::from("bob");

    let empty = store.read(&app, &alice, Seq(0), 10, now).await.unwrap();
    assert_eq!(empty.head, Seq(0), "an inbox never written has head 0");
    assert!(empty.messages.is_empty());

    // Seqs are per inbox, start at 1 and have no gaps.
    let first = store
        .append(append_to(
            "contract-s",
            &["alice", "bob"],
            new_message(11, now, hour, "{\"n\":1}"),
        ))
        .await
        .unwrap();
    assert_eq!(
        first.seqs,
        vec![(alice.clone(), Seq(1)), (bob.clone(), Seq(1))],
        "each inbox starts at seq 1"
    );
    assert!(!first.duplicate);
    assert_eq!(first.id, MessageId(11));
    let second = store
        .append(append_to(
            "contract-s",
            &["alice"],
            new_message(12, now, hour, "{\"n\":2}"),
        ))
        .await
        .unwrap();
    assert_eq!(second.seqs, vec![(alice.clone(), Seq(2))]);
    let page = store.read(&app, &alice, Seq(0), 10, now).await.unwrap();
    assert_eq!(seqs(&page), vec![1, 2]);
    assert_eq!(page.head, Seq(2));
    assert_eq!(page.messages[0].id, MessageId(11));
    assert_eq!(page.messages[1].payload, Bytes::from_static(b"{\"n\":2}"));
    assert_eq!(page.messages[1].kind, PayloadKind::Json);
    assert_eq!(page.messages[1].created_ms, now);
    assert_eq!(page.messages[1].expires_ms, now + hour);
    assert_eq!(
        seqs(&store.read(&app, &alice, Seq(1), 10, now).await.unwrap()),
        vec![2],
        "read returns what comes after the given seq"
    );
    assert_eq!(
        seqs(&store.read(&app, &alice, Seq(0), 1, now).await.unwrap()),
        vec![1],
        "read honours its limit, oldest first"
    );
    assert_eq!(
        seqs(&store.read(&app, &bob, Seq(0), 10, now).await.unwrap()),
        vec![1],
        "inboxes are separate"
    );
    let other_app = AppId::from("contract-t");
    assert_eq!(
        store
            .read(&other_app, &alice, Seq(0), 10, now)
            .await
            .unwrap()
            .head,
        Seq(0),
        "apps are separate"
    );

    // Concurrent appends to one inbox get distinct, gapless seqs, and reads see them in order.
    let carol = UserId::from("carol");
    let appends = (0..200u64).map(|i| {
        store.append(append_to(
            "contract-s",
            &["carol", "dave"],
            new_message(1000 + i, now, hour, "{}"),
        ))
    });
    let results = futures_util::future::join_all(appends).await;
    let mut got: Vec<u64> = results
        .into_iter()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(
                r.seqs[0].1, r.seqs[1].1,
                "carol and dave see the same appends"
            );
            r.seqs[0].1.0
        })
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=200).collect::<Vec<_>>(),
        "concurrent appends: gapless and distinct"
    );
    // The cap keeps the newest messages.
    let page = store.read(&app, &carol, Seq(0), 100, now).await.unwrap();
    assert_eq!(
        seqs(&page),
        (196..=200).collect::<Vec<_>>(),
        "an inbox over its cap keeps the newest {CONTRACT_INBOX_CAP}"
    );
    assert_eq!(page.head, Seq(200));
    let ids: Vec<u64> = page.messages.iter().map(|m| m.id.0).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "each message once");

    // Expiry: never returned once expired, and seqs are not reused afterwards.
    let erin = UserId::from("erin");
    store
        .append(append_to(
            "contract-s",
            &["erin"],
            new_message(21, now, 100, "{}"),
        ))
        .await
        .unwrap();
    store
        .append(append_to(
            "contract-s",
            &["erin"],
            new_message(22, now, hour, "{}"),
        ))
        .await
        .unwrap();
    assert_eq!(
        seqs(&store.read(&app, &erin, Seq(0), 10, now + 99).await.unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        seqs(
            &store
                .read(&app, &erin, Seq(0), 10, now + 100)
                .await
                .unwrap()
        ),
        vec![2],
        "a message is not returned from its expiry on"
    );
    let frank = UserId::from("frank");
    store
        .append(append_to(
            "contract-s",
            &["frank"],
            new_message(31, now, 10, "{}"),
        ))
        .await
        .unwrap();
    let later = store
        .append(append_to(
            "contract-s",
            &["frank"],
            new_message(32, now + 1000, hour, "{}"),
        ))
        .await
        .unwrap();
    assert_eq!(
        later.seqs[0].1,
        Seq(2),
        "a seq is never reused, even when every message before it expired"
    );
    let page = store
        .read(&app, &frank, Seq(0), 10, now + 1000)
        .await
        .unwrap();
    assert_eq!(seqs(&page), vec![2]);

    // Idempotency: a retry within the window stores nothing and answers the first result.
    let keyed = |id: u64, key: &str, created: u64, users: &[&str]| {
        let mut a = append_to("contract-s", users, new_message(id, created, hour, "{}"));
        a.idempotency = Some(Idempotency {
            key: key.into(),
            expires_ms: created + 60_000,
        });
        a
    };
    let gina = UserId::from("gina");
    let once = store.append(keyed(41, "k1", now, &["gina"])).await.unwrap();
    let again = store
        .append(keyed(42, "k1", now + 10, &["gina"]))
        .await
        .unwrap();
    assert!(again.duplicate, "the same key again is a duplicate");
    assert_eq!(again.id, MessageId(41), "a duplicate answers the first id");
    assert_eq!(again.seqs, once.seqs, "and the first seqs");
    assert_eq!(
        seqs(&store.read(&app, &gina, Seq(0), 10, now).await.unwrap()),
        vec![1],
        "a duplicate stores nothing"
    );
    let racing = futures_util::future::join_all(
        (0..4).map(|i| store.append(keyed(50 + i, "k2", now, &["gina"]))),
    )
    .await;
    assert_eq!(
        racing
            .iter()
            .filter(|r| !r.as_ref().unwrap().duplicate)
            .count(),
        1,
        "concurrent appends with one key store once"
    );
    let mut in_other_app = keyed(60, "k1", now, &["gina"]);
    in_other_app.app = other_app.clone();
    assert!(
        !store.append(in_other_app).await.unwrap().duplicate,
        "keys are per app"
    );
    let expired_key = store
        .append(keyed(61, "k1", now + 60_000, &["gina"]))
        .await
        .unwrap();
    assert!(
        !expired_key.duplicate,
        "a key is forgotten once its window passed"
    );
    assert_eq!(expired_key.seqs[0].1, Seq(3));

    // Cursors: per device, forward only.
    let phone = DeviceId::from("phone");
    let laptop = DeviceId::from("laptop");
    assert_eq!(
        store.cursor(&app, &alice, &phone).await.unwrap(),
        Cursor::default()
    );
    store.ack(&app, &alice, &phone, Seq(2)).await.unwrap();
    store.ack(&app, &alice, &phone, Seq(1)).await.unwrap();
    store.ack(&app, &alice, &laptop, Seq(1)).await.unwrap();
    assert_eq!(
        store.cursor(&app, &alice, &phone).await.unwrap().acked,
        Seq(2),
        "a cursor never moves back"
    );
    let all = store.cursors(&app, &alice).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|(d, c)| (d.as_str(), c.acked.0))
            .collect::<Vec<_>>(),
        vec![("laptop", 1), ("phone", 2)],
        "cursors per device, sorted by device"
    );
    assert!(store.cursors(&app, &bob).await.unwrap().is_empty());
    assert_eq!(
        store
            .read(&app, &alice, Seq(0), 10, now)
            .await
            .unwrap()
            .head,
        Seq(2),
        "acks do not delete messages"
    );

    // The poison guard's count.
    let tablet = DeviceId::from("tablet");
    for expected in 1..=3 {
        let n = store
            .note_attempt(&app, &alice, &tablet, Seq(1))
            .await
            .unwrap();
        assert_eq!(n, expected, "attempts of one seq add up");
    }
    assert_eq!(
        store
            .note_attempt(&app, &alice, &tablet, Seq(2))
            .await
            .unwrap(),
        1,
        "another seq starts again at 1"
    );
    store.ack(&app, &alice, &tablet, Seq(2)).await.unwrap();
    let cursor = store.cursor(&app, &alice, &tablet).await.unwrap();
    assert_eq!(cursor.acked, Seq(2));
    assert_eq!(
        cursor.attempts, 0,
        "an ack past the attempted seq clears it"
    );
}

async fn topic_history_contract(store: &dyn Store) {
    // A clock of its own: the inbox checks before may have taken a while, and a backend may
    // drop expired publications by its own clock.
    let now = crate::now_ms();
    let hour = 3_600_000;
    let app = AppId::from("contract-s");
    let other_app = AppId::from("contract-t");
    let news = TopicId::from("news");

    let empty = store.history(&app, &news, Seq(0), 10, now).await.unwrap();
    assert_eq!(empty.head, Seq(0), "a topic never published to has head 0");
    assert!(empty.messages.is_empty());

    // Offsets are per (app, topic), start at 1 and have no gaps; a user named like the topic
    // has an inbox of its own.
    store
        .append(append_to(
            "contract-s",
            &["news"],
            new_message(70, now, hour, "{\"inbox\":1}"),
        ))
        .await
        .unwrap();
    for (id, offset) in [(71, 1), (72, 2)] {
        let got = store
            .publish(&app, &news, new_message(id, now, hour, "{\"p\":1}"))
            .await
            .unwrap();
        assert_eq!(got, Seq(offset), "offsets start at 1 and have no gaps");
    }
    let page = store.history(&app, &news, Seq(0), 10, now).await.unwrap();
    assert_eq!(seqs(&page), vec![1, 2]);
    assert_eq!(page.head, Seq(2));
    let p = &page.messages[1];
    assert_eq!(
        (p.id, p.created_ms, p.expires_ms, p.kind),
        (MessageId(72), now, now + hour, PayloadKind::Json),
        "a publication comes back as published"
    );
    assert_eq!(p.payload, Bytes::from_static(b"{\"p\":1}"));
    let inbox = store
        .read(&app, &UserId::from("news"), Seq(0), 10, now)
        .await
        .unwrap();
    assert_eq!(
        (seqs(&inbox), inbox.head, inbox.messages[0].id),
        (vec![1], Seq(1), MessageId(70)),
        "the inbox of a user named like a topic is not the topic's history"
    );
    assert_eq!(
        seqs(&store.history(&app, &news, Seq(1), 10, now).await.unwrap()),
        vec![2],
        "history returns what comes after the given offset"
    );
    assert_eq!(
        seqs(&store.history(&app, &news, Seq(0), 1, now).await.unwrap()),
        vec![1],
        "history honours its limit, oldest first"
    );
    assert_eq!(
        store
            .history(&other_app, &news, Seq(0), 10, now)
            .await
            .unwrap()
            .head,
        Seq(0),
        "apps are separate"
    );
    let first_elsewhere = store
        .publish(&other_app, &news, new_message(73, now, hour, "{}"))
        .await
        .unwrap();
    assert_eq!(
        first_elsewhere,
        Seq(1),
        "each app's topic has its own offsets"
    );
    let shorter = TopicId::from("new");
    assert_eq!(
        store
            .publish(&app, &shorter, new_message(74, now, hour, "{}"))
            .await
            .unwrap(),
        Seq(1),
        "topics are separate, also when one's id starts another's"
    );
    assert_eq!(
        store
            .history(&app, &news, Seq(0), 10, now)
            .await
            .unwrap()
            .head,
        Seq(2)
    );

    // Concurrent publishes get distinct, gapless offsets; the history keeps the newest.
    let live = TopicId::from("live");
    let published = futures_util::future::join_all(
        (0..100u64).map(|i| store.publish(&app, &live, new_message(2000 + i, now, hour, "{}"))),
    )
    .await;
    let offsets: HashMap<u64, u64> = published
        .into_iter()
        .enumerate()
        .map(|(i, r)| (r.unwrap().0, 2000 + i as u64))
        .collect();
    let mut sorted: Vec<u64> = offsets.keys().copied().collect();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=100).collect::<Vec<_>>(),
        "concurrent publishes: gapless and distinct"
    );
    let page = store.history(&app, &live, Seq(0), 100, now).await.unwrap();
    assert_eq!(
        seqs(&page),
        (97..=100).collect::<Vec<_>>(),
        "a history over its cap keeps the newest {CONTRACT_TOPIC_HISTORY}"
    );
    assert_eq!(page.head, Seq(100));
    for m in &page.messages {
        assert_eq!(
            m.id.0, offsets[&m.seq.0],
            "each offset holds the publication it was given to"
        );
    }

    // Expiry: never returned once expired, and offsets are not reused afterwards.
    let brief = TopicId::from("brief");
    store
        .publish(&app, &brief, new_message(80, now, 60_000, "{}"))
        .await
        .unwrap();
    store
        .publish(&app, &brief, new_message(81, now, hour, "{}"))
        .await
        .unwrap();
    assert_eq!(
        seqs(
            &store
                .history(&app, &brief, Seq(0), 10, now + 59_999)
                .await
                .unwrap()
        ),
        vec![1, 2]
    );
    let page = store
        .history(&app, &brief, Seq(0), 10, now + 60_000)
        .await
        .unwrap();
    assert_eq!(
        (seqs(&page), page.head),
        (vec![2], Seq(2)),
        "a publication is not returned from its expiry on"
    );
    let gone = TopicId::from("gone");
    store
        .publish(&app, &gone, new_message(82, now, 10, "{}"))
        .await
        .unwrap();
    let later = store
        .publish(&app, &gone, new_message(83, now + 1000, hour, "{}"))
        .await
        .unwrap();
    assert_eq!(
        later,
        Seq(2),
        "an offset is never reused, even when every publication before it expired"
    );
    assert_eq!(
        seqs(
            &store
                .history(&app, &gone, Seq(0), 10, now + 1000)
                .await
                .unwrap()
        ),
        vec![2]
    );
}

async fn subscribe(
    store: &dyn Store,
    app: &AppId,
    user: &str,
    topic: &str,
    subscribed: bool,
    max: usize,
) -> Result<bool, SubscriptionError> {
    store
        .set_subscription(
            app,
            &UserId::from(user),
            &TopicId::from(topic),
            subscribed,
            max,
        )
        .await
}

async fn topics(store: &dyn Store, app: &AppId, user: &str) -> Vec<String> {
    store
        .subscriptions(app, &UserId::from(user))
        .await
        .unwrap()
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect()
}

async fn subscription_contract(store: &dyn Store) {
    let app = AppId::from("contract-s");
    let other_app = AppId::from("contract-t");
    assert!(topics(store, &app, "alice").await.is_empty());

    assert!(
        subscribe(store, &app, "alice", "sports", true, 3)
            .await
            .unwrap(),
        "a new subscription changes something"
    );
    assert!(
        !subscribe(store, &app, "alice", "sports", true, 3)
            .await
            .unwrap(),
        "subscribing again changes nothing"
    );
    for topic in ["news", "art"] {
        assert!(
            subscribe(store, &app, "alice", topic, true, 3)
                .await
                .unwrap()
        );
    }
    let refused = subscribe(store, &app, "alice", "weather", true, 3).await;
    assert!(
        matches!(refused, Err(SubscriptionError::TooMany(3))),
        "a subscription past max is refused: {refused:?}"
    );
    assert!(
        !subscribe(store, &app, "alice", "news", true, 3)
            .await
            .unwrap(),
        "a topic the user has is not refused at max"
    );
    assert_eq!(
        topics(store, &app, "alice").await,
        ["art", "news", "sports"],
        "sorted, without the refused one"
    );

    // Apps and users are kept apart, and so are their counts.
    assert!(
        topics(store, &app, "ali").await.is_empty(),
        "users are separate, also when one's id starts another's"
    );
    assert!(topics(store, &other_app, "alice").await.is_empty());
    assert!(
        subscribe(store, &other_app, "alice", "weather", true, 1)
            .await
            .unwrap(),
        "the count is per app"
    );
    assert!(
        subscribe(store, &app, "bob", "sports", true, 1)
            .await
            .unwrap(),
        "the count is per user"
    );
    assert!(matches!(
        subscribe(store, &app, "bob", "art", true, 1).await,
        Err(SubscriptionError::TooMany(1))
    ));
    assert_eq!(topics(store, &app, "bob").await, ["sports"]);
    assert_eq!(topics(store, &other_app, "alice").await, ["weather"]);

    // Unsubscribing.
    assert!(
        subscribe(store, &app, "alice", "sports", false, 3)
            .await
            .unwrap(),
        "an unsubscribe of a topic the user has changes something"
    );
    assert!(
        !subscribe(store, &app, "alice", "sports", false, 3)
            .await
            .unwrap(),
        "unsubscribing again changes nothing"
    );
    assert!(
        !subscribe(store, &app, "alice", "never", false, 3)
            .await
            .unwrap()
    );
    assert!(
        subscribe(store, &app, "alice", "weather", true, 3)
            .await
            .unwrap(),
        "an unsubscribe makes room"
    );
    assert_eq!(
        topics(store, &app, "alice").await,
        ["art", "news", "weather"]
    );
    assert_eq!(
        topics(store, &app, "bob").await,
        ["sports"],
        "another user's unsubscribe leaves bob's alone"
    );

    // Concurrent subscriptions cannot pass max together.
    let names: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let racing = futures_util::future::join_all(
        names
            .iter()
            .map(|topic| subscribe(store, &app, "hank", topic, true, 4)),
    )
    .await;
    let done = racing.iter().filter(|r| matches!(r, Ok(true))).count();
    let refused = racing
        .iter()
        .filter(|r| matches!(r, Err(SubscriptionError::TooMany(4))))
        .count();
    assert_eq!(
        (done, refused),
        (4, 6),
        "concurrent subscriptions stop at max: {racing:?}"
    );
    assert_eq!(topics(store, &app, "hank").await.len(), 4);
    assert!(matches!(
        subscribe(store, &app, "ivy", "any", true, 0).await,
        Err(SubscriptionError::TooMany(0))
    ));
    assert!(topics(store, &app, "ivy").await.is_empty());
}
