//! Redis over TLS (`rediss://`): a `redis-server` of the test's own with a certificate from a
//! test CA (`tests/tls/`, valid until 2126), trusted through `RedisOptions::tls_ca`. The
//! registry contract and node-to-node messages run over it; a client that does not trust the
//! CA is refused.
//!
//! Skipped without `redis-server` (or one built without TLS) outside CI; fails under
//! `CI=true`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tether_core::NodeId;
use tether_core::contract::{RecordingSink, registry_contract, remote_router_contract};
use tether_redis::{RedisOptions, RedisRegistry, RedisRouter};

struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

fn skip_or_fail(why: &str) -> Option<TlsRedis> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and no TLS Redis: {why}");
    }
    eprintln!("skipped: {why}");
    None
}

fn start() -> Option<TlsRedis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let dir = tls_dir();
    let arg = |name: &str| dir.join(name).display().to_string();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--tls-port",
            &port.to_string(),
        ])
        .args(["--tls-cert-file", &arg("cert.pem")])
        .args(["--tls-key-file", &arg("key.pem")])
        .args(["--tls-ca-cert-file", &arg("ca.pem")])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return skip_or_fail(&format!("redis-server cannot start: {e}")),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return skip_or_fail(&format!("redis-server with TLS exited: {status}"));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return skip_or_fail("redis-server with TLS did not listen");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(TlsRedis { child, port })
}

fn options(redis: &TlsRedis, trust: bool) -> RedisOptions {
    let mut options = RedisOptions::standalone(format!("rediss://127.0.0.1:{}", redis.port));
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
