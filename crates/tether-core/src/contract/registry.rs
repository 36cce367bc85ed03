//! The registry contract: sessions ([`Sessions`](crate::Sessions)) and node membership
//! ([`Membership`](crate::Membership)), on one backend.

use crate::{
    AppId, ConnId, DeviceId, Membership, NodeId, NodeInfo, Registry, Session, Sessions, Transport,
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
    sessions_contract(reg).await;
    node_contract(reg).await;
    reap_contract(reg).await;
}

/// The sessions of one user, which must be found.
async fn sessions_of(reg: &dyn Sessions, app: &AppId, user: &UserId) -> Vec<Session> {
    reg.sessions(app, std::slice::from_ref(user)).await.unwrap()
}

/// Sessions: registering, replacing, looking up and counting, unregistering.
async fn sessions_contract(reg: &dyn Sessions) {
    let app = AppId::from("contract-a");
    let other_app = AppId::from("contract-b");
    let alice = UserId::from("alice");
    let bob = UserId::from("bob");
    let n1 = NodeId::from("n1");

    for (a, u, n, c, d) in [
        ("contract-a", "alice", "n1", 1, "phone"),
        ("contract-a", "alice", "n2", 1, "laptop"),
        ("contract-a", "bob", "n1", 2, "phone"),
        ("contract-b", "alice", "n1", 1, "phone"),
    ] {
        reg.register(session(a, u, n, c, d)).await.unwrap();
    }

    let found = sessions_of(reg, &app, &alice).await;
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
    let found = sessions_of(reg, &app, &alice).await;
    assert_eq!(found.len(), 2, "re-registering a session replaces it");
    assert!(
        found
            .iter()
            .any(|s| s.device.as_str() == "phone-renamed" && s.transport == Transport::Ws)
    );

    reg.unregister(&app, &alice, &n1, ConnId(1)).await.unwrap();
    let found = sessions_of(reg, &app, &alice).await;
    assert_eq!(
        conns(found),
        vec![("n2".into(), 1)],
        "unregister removes exactly one session"
    );
    assert_eq!(
        sessions_of(reg, &other_app, &alice).await.len(),
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

/// Withdraws `node`, which must succeed.
async fn withdraw(reg: &dyn Membership, node: &str) {
    reg.withdraw(&NodeId::from(node)).await.unwrap();
}

fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
    nodes.iter().map(|n| n.id.as_str()).collect()
}

/// Node announcements: what the dispatcher orders endpoints from. Node ids are
/// `contract-node-*`; times are in the future of the real clock, as a backend may also expire
/// entries by its own clock.
async fn node_contract(reg: &dyn Membership) {
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
    assert_eq!(
        ids(&ours(reg.nodes(0).await.unwrap())),
        ["contract-node-a", "contract-node-b"],
        "at 0, every announcement held, expired or not"
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

    withdraw(reg, "contract-node-b").await;
    withdraw(reg, "contract-node-unknown").await;
    assert_eq!(
        ids(&ours(reg.nodes(now).await.unwrap())),
        ["contract-node-a"],
        "withdraw removes exactly that node"
    );
    assert_eq!(
        ids(&ours(reg.nodes(0).await.unwrap())),
        ["contract-node-a"],
        "a withdrawn node is not listed, even at 0"
    );
    withdraw(reg, "contract-node-a").await;
    assert!(ours(reg.nodes(now).await.unwrap()).is_empty());
    assert!(
        !reg.announce(node_info("contract-node-a", 7500, false, now + minute))
            .await
            .unwrap(),
        "after a withdraw, an announcement is a first one again"
    );
    withdraw(reg, "contract-node-a").await;
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
    assert!(
        ids(&reg.nodes(0).await.unwrap()).contains(&"contract-node-dead"),
        "an expired node is held until a reap (listed at 0)"
    );
    assert_eq!(
        reg.reap(now + minute).await.unwrap(),
        2,
        "listing the nodes first does not keep a dead node from being reaped"
    );
    assert!(
        !ids(&reg.nodes(0).await.unwrap()).contains(&"contract-node-dead"),
        "a reaped node is not listed, even at 0"
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
        withdraw(reg, node).await;
    }
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 0);

    // A node that withdrew but could not unregister everything: the next reap cleans up.
    reg.announce(node_info("contract-node-gone", 7800, false, now + minute))
        .await
        .unwrap();
    reg.register(session("contract-reap", "u1", "contract-node-gone", 9, "d"))
        .await
        .unwrap();
    withdraw(reg, "contract-node-gone").await;
    assert_eq!(
        reg.reap(now).await.unwrap(),
        1,
        "a withdrawn node's leftovers go"
    );
    assert!(reg.sessions(&app, &users).await.unwrap().is_empty());
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 0);
}
