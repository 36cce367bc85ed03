//! Contract test suites: every backend of a seam must pass the same checks.
//!
//! Backends call these from their own tests (`registry_contract(&MyRegistry::new(..)).await`).
//! They panic on the first broken guarantee, with a message naming it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tether_proto::{Code, PayloadKind, Push};

use crate::{
    AppId, ConnId, DeviceId, LocalSink, NodeId, Outgoing, Registry, Router, Session, Transport,
    UserId,
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
}

/// A [`LocalSink`] that records what it was asked to do, for router contract tests.
#[derive(Debug, Default)]
pub struct RecordingSink {
    pub delivered: Mutex<HashMap<ConnId, Vec<Bytes>>>,
    pub disconnected: Mutex<Vec<(ConnId, Code)>>,
}

impl LocalSink for RecordingSink {
    fn deliver(&self, conns: &[ConnId], msg: &Arc<Outgoing>) -> usize {
        let mut map = self.delivered.lock().unwrap();
        for conn in conns {
            map.entry(*conn)
                .or_default()
                .push(msg.push().payload.clone());
        }
        conns.len()
    }

    fn disconnect(&self, conns: &[ConnId], code: Code, _reason: &str) -> usize {
        let mut list = self.disconnected.lock().unwrap();
        list.extend(conns.iter().map(|c| (*c, code)));
        conns.len()
    }
}

/// The router contract, for a router whose own node is `node` and whose local deliveries land
/// in `sink`.
pub async fn router_contract(router: &dyn Router, node: &NodeId, sink: &RecordingSink) {
    let msg = |n: u8| {
        Arc::new(Outgoing::new(Push {
            app: "contract".into(),
            msg_id: u64::from(n),
            seq: 0,
            qos: 0,
            created_ms: 0,
            kind: PayloadKind::Binary,
            payload: Bytes::from(vec![n]),
        }))
    };
    for n in 0..10 {
        let reached = router
            .deliver(node, &[ConnId(1), ConnId(2)], msg(n))
            .await
            .unwrap();
        assert_eq!(reached, 2);
    }
    {
        let delivered = sink.delivered.lock().unwrap();
        for conn in [ConnId(1), ConnId(2)] {
            let got: Vec<u8> = delivered[&conn].iter().map(|b| b[0]).collect();
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
}
