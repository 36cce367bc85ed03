//! Memory bounds that need a process of their own: these tests read the process's RSS, so
//! no other test may run beside them.

mod common;

use common::*;
use tether_server::Config;
use tokio_tungstenite::tungstenite::Message;

/// The process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// tungstenite answers every WebSocket ping with a pong of its own. A client that pings and
/// never reads must not make the server hold those pongs without bound.
#[tokio::test]
async fn websocket_pings_from_a_client_that_never_reads_do_not_grow_server_memory() {
    let node = start(Config::for_tests()).await;
    let (mut ws, _) = WsClient::connected(&node, "alice", "pinger", 0).await;
    let before = rss_kib();
    let ping = Message::Ping(bytes::Bytes::from(vec![7u8; 125]));
    let mut sent = 0;
    while sent < 48 << 20 {
        ws.send_many(ping.clone(), 4096).await;
        sent += 4096 * 131;
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB for {} MiB of pings",
        sent >> 20
    );
    assert_eq!(node.connections(), 1);
}
