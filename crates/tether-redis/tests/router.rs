//! The router over a real Redis: two nodes' routers, each with a recording sink.

use std::sync::Arc;

use tether_core::contract::{
    RecordingSink, numbered_push, remote_router_contract, router_contract,
};
use tether_core::{ConnId, NodeId, Router, RouterError};
use tether_redis::{RedisRouter, testing};

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
    remote_router_contract(&a, &NodeId::from("b"), &b_sink).await;
    assert!(
        a_sink.delivered.lock().unwrap().is_empty(),
        "nothing went to the sender"
    );
    // 500 deliveries, every kind of message, a disconnect.
    assert_eq!(
        a.stats().sent.load(std::sync::atomic::Ordering::Relaxed),
        500 + tether_core::contract::node_messages().len() as u64 + 1
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
        .deliver(&NodeId::from("gone"), &[ConnId(1)], numbered_push(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RouterError::UnknownNode(_)), "{err}");
}
