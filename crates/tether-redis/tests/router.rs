//! The router over a real Redis: two nodes' routers, each with a recording sink.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tether_core::contract::{NODE_MESSAGE_EFFECTS, RecordingSink, node_messages, router_contract};
use tether_core::{ConnId, NodeId, Outgoing, Router, RouterError};
use tether_proto::{Code, PayloadKind, Push};
use tether_redis::{RedisRouter, testing};

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn push(n: u32) -> Arc<Outgoing> {
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

#[tokio::test]
async fn local_sends_pass_the_contract() {
    let Some(options) = testing::options("router-local").await else {
        return;
    };
    let sink = Arc::new(RecordingSink::default());
    let node = NodeId::from("a");
    let router = RedisRouter::start(&options, node.clone(), sink.clone())
        .await
        .unwrap();
    router_contract(&router, &node, &sink).await;
}

#[tokio::test]
async fn messages_reach_the_other_node_in_order() {
    let Some(options) = testing::options("router-remote").await else {
        return;
    };
    let (a_sink, b_sink) = (
        Arc::new(RecordingSink::default()),
        Arc::new(RecordingSink::default()),
    );
    let a = RedisRouter::start(&options, NodeId::from("a"), a_sink.clone())
        .await
        .unwrap();
    let _b = RedisRouter::start(&options, NodeId::from("b"), b_sink.clone())
        .await
        .unwrap();
    let b = NodeId::from("b");

    for n in 0..500 {
        let sent = a
            .deliver(&b, &[ConnId(1), ConnId(2)], push(n))
            .await
            .unwrap();
        assert_eq!(
            sent, 2,
            "a remote delivery counts the connections it was sent to"
        );
    }
    for msg in node_messages() {
        a.send(&b, msg).await.unwrap();
    }
    a.disconnect(&b, &[ConnId(2)], Code::KICKED, "kicked")
        .await
        .unwrap();
    until("everything arrives", || {
        b_sink.disconnected.lock().unwrap().len() == 1
    })
    .await;
    let delivered = b_sink.delivered.lock().unwrap();
    for conn in [ConnId(1), ConnId(2)] {
        let got: Vec<u32> = delivered[&conn]
            .iter()
            .map(|p| u32::from_be_bytes(p[..4].try_into().unwrap()))
            .collect();
        assert_eq!(got, (0..500).collect::<Vec<_>>(), "in call order");
    }
    assert_eq!(
        b_sink.others.lock().unwrap().as_slice(),
        NODE_MESSAGE_EFFECTS
    );
    assert!(
        a_sink.delivered.lock().unwrap().is_empty(),
        "nothing went to the sender"
    );
    assert_eq!(
        a.stats().sent.load(std::sync::atomic::Ordering::Relaxed),
        506
    );
}

#[tokio::test]
async fn a_node_nobody_listens_for_is_unknown() {
    let Some(options) = testing::options("router-unknown").await else {
        return;
    };
    let a = RedisRouter::start(
        &options,
        NodeId::from("a"),
        Arc::new(RecordingSink::default()),
    )
    .await
    .unwrap();
    let err = a
        .deliver(&NodeId::from("gone"), &[ConnId(1)], push(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RouterError::UnknownNode(_)), "{err}");
}
