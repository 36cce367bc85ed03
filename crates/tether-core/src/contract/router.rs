//! The router contracts: on a node's own router, and between two nodes.

use std::sync::Arc;

use bytes::Bytes;
use tether_proto::{Code, PayloadKind, Push};

use super::sink::{NODE_MESSAGE_EFFECTS, RecordingSink, node_messages};
use crate::{ConnId, NodeId, Outgoing, Router};

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
