//! Redis over TLS (`rediss://`): a `redis-server` of the test's own with a certificate from a
//! test CA (`tests/tls/`, valid until 2126), trusted through `RedisOptions::tls_ca`. The
//! registry contract and node-to-node messages run over it; a client that does not trust the
//! CA is refused.
//!
//! Skipped without `redis-server` (or one built without TLS) outside CI; fails under
//! `CI=true`.

use std::path::PathBuf;
use std::sync::Arc;

use tether_core::NodeId;
use tether_core::contract::{RecordingSink, registry_contract, remote_router_contract};
use tether_redis::testing::RedisServer;
use tether_redis::{RedisOptions, RedisRegistry, RedisRouter};

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

/// A server listening for TLS only, with the test CA's certificate.
fn start() -> Option<RedisServer> {
    let file = |name: &str| tls_dir().join(name).display().to_string();
    RedisServer::start_with(|port| {
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            file("cert.pem"),
            "--tls-key-file".into(),
            file("key.pem"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    })
}

fn options(redis: &RedisServer, trust: bool) -> RedisOptions {
    let mut options = RedisOptions::standalone(format!("rediss://127.0.0.1:{}", redis.port()));
    options.prefix = "tls-test".into();
    options.tls_ca = trust.then(|| std::fs::read(tls_dir().join("ca.pem")).unwrap());
    options
}

#[tokio::test]
async fn the_registry_and_the_router_work_over_tls() {
    let Some(redis) = start() else {
        return;
    };
    let reg = RedisRegistry::connect(&options(&redis, true))
        .await
        .unwrap();
    registry_contract(&reg).await;

    let options = options(&redis, true);
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

#[tokio::test]
async fn a_server_whose_certificate_is_not_trusted_is_refused() {
    let Some(redis) = start() else {
        return;
    };
    // The public roots do not hold the test CA.
    let refused = RedisRegistry::connect(&options(&redis, false)).await;
    assert!(refused.is_err(), "connected to an untrusted server");
}
