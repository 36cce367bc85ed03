//! The Redis backends on a Redis Cluster of three masters that the test starts
//! ([`RedisCluster`], ports 7101-7103 and their bus ports 17101-17103): the contracts, and the
//! slot rule of the key layout. One test, so that the binary starts one cluster.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use tether_core::contract::{
    CONTRACT_INBOX_CAP, CONTRACT_TOPIC_HISTORY, RecordingSink, registry_contract,
    remote_router_contract, store_contract,
};
use tether_core::{ConnId, DeviceId, NodeId, Retention, Session, Sessions, Transport};
use tether_redis::testing::RedisCluster;
use tether_redis::{Keys, RedisRegistry, RedisRouter, RedisStore};

#[tokio::test]
async fn the_backends_work_on_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start(7101).await else {
        return;
    };

    let reg = RedisRegistry::connect(&cluster.options("registry"))
        .await
        .unwrap();
    registry_contract(&reg).await;

    keys_of_one_user_share_a_slot(&cluster).await;
    routers_talk_over_sharded_pub_sub(&cluster).await;

    // The store: every script runs on keys of one slot, whatever master holds it.
    let retention = Retention {
        inbox_cap: CONTRACT_INBOX_CAP,
        topic_history: CONTRACT_TOPIC_HISTORY,
        ..Retention::default()
    };
    let store = RedisStore::connect(&cluster.options("store"), retention)
        .await
        .unwrap();
    store_contract(&store).await;
}

/// Node channels are sharded channels: two routers on the cluster reach each other, in order.
async fn routers_talk_over_sharded_pub_sub(cluster: &RedisCluster) {
    let options = cluster.options("router");
    let sink_b = Arc::new(RecordingSink::default());
    let a = RedisRouter::start(
        &options,
        NodeId::from("a"),
        Arc::new(RecordingSink::default()),
    )
    .await
    .unwrap();
    let _b = RedisRouter::start(&options, NodeId::from("b"), sink_b.clone())
        .await
        .unwrap();
    remote_router_contract(&a, &NodeId::from("b"), &sink_b).await;
}

/// Every key of one user is in one slot (next to the inbox the store will keep there), every
/// key of one node in one slot, and users spread over the masters.
async fn keys_of_one_user_share_a_slot(cluster: &RedisCluster) {
    let options = cluster.options("slots");
    let keys = Keys::new(&options.prefix);
    let reg = RedisRegistry::connect(&options).await.unwrap();
    let users: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        for node in ["n1", "n{2}"] {
            reg.register(Session {
                app: "slots".into(),
                user: user.as_str().into(),
                node: node.into(),
                conn: ConnId(i as u64),
                device: DeviceId::from("d"),
                transport: Transport::Tcp,
                connected_at_ms: 1,
            })
            .await
            .unwrap();
        }
    }

    // Each key as found by SCAN on the master that holds it: (master, slot).
    let mut found: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for (master, url) in cluster.urls().iter().enumerate() {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", options.prefix))
                .query_async(&mut conn)
                .await
                .unwrap();
            for key in batch {
                let slot: i64 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let again = found.insert(key.clone(), (master, slot));
                assert!(again.is_none(), "{key} is on two masters");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }

    let client = redis::Client::open(cluster.urls()[0].as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut masters = BTreeSet::new();
    for user in &users {
        let sessions = keys.user("slots", user, "sessions");
        let &(master, slot) = found
            .get(&sessions)
            .unwrap_or_else(|| panic!("{sessions} not found"));
        let inbox: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(keys.user("slots", user, "inbox"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            slot, inbox,
            "{user}'s sessions are in the slot of its inbox"
        );
        masters.insert(master);
    }
    assert!(
        masters.len() > 1,
        "30 users on one master: the test would not see cross-slot mistakes"
    );
    for node in ["n1", "n{2}"] {
        let slots: BTreeSet<i64> = ["sessions", "counts"]
            .iter()
            .map(|what| found[&keys.node(node, what)].1)
            .collect();
        assert_eq!(slots.len(), 1, "the keys of node {node} share a slot");
    }
    let users_keys = found.keys().filter(|k| k.contains("{u:")).count();
    assert_eq!(users_keys, users.len(), "one key per user, nothing stray");
}
