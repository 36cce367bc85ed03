//! SIGHUP reloads a running `tether serve`: it used to kill the process (the default action),
//! which logrotate and closed terminals send.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tether_proto::Body;

const SECRET: &str = "reload-secret-0123456789";
const API_KEY: &str = "reload-api-key-0123456789";
const NEW_KEY: &str = "reload-new-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);

fn config(tcp: std::net::SocketAddr, http: std::net::SocketAddr, more: &str) -> String {
    format!(
        r#"
[listen]
tcp = "{tcp}"
ws = ""
http = "{http}"
mqtt = ""

[store]
backend = "memory"

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"
{more}
"#
    )
}

async fn push(http: std::net::SocketAddr, key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{http}/v1/apps/demo/push"))
        .bearer_auth(key)
        .body(r#"{"users":["alice"],"payload":{"n":1}}"#)
        .send()
        .await
        .expect("push")
        .status()
        .as_u16()
}

#[tokio::test]
async fn sighup_reloads_the_configuration_and_the_node_keeps_its_clients() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let (tcp, http) = (free_addr(), free_addr());
    let mut server = Server::start(&path, &config(tcp, http, ""), tcp, http, WAIT).await;

    let (mut client, mut buf, connected) = connect_device(tcp, SECRET, "alice", WAIT).await;
    assert!(
        matches!(connected.body, Body::Connected(_)),
        "{connected:?}"
    );
    assert_eq!(push(http, NEW_KEY).await, 401);

    let key = format!(r#"api_keys = [{{ key = "{NEW_KEY}", label = "2026-12" }}]"#);
    std::fs::write(&path, config(tcp, http, &key)).unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while push(http, NEW_KEY).await != 200 {
        assert!(Instant::now() < deadline, "the new key never worked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.running(), "SIGHUP stopped the node");
    let pushed = read_frame(&mut client, &mut buf).await.expect("a push");
    assert!(matches!(pushed.body, Body::Push(_)), "{pushed:?}");

    // A broken file on SIGHUP: the node keeps running with the old configuration.
    std::fs::write(&path, "[limits]\nmax_connections = \"lots\"\n").unwrap();
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.running(), "a broken reload stopped the node");
    assert_eq!(push(http, NEW_KEY).await, 200);
}
