//! Who may connect, end to end: a real node with `listen.*_access` set, clients from
//! 127.0.0.1 on raw TCP, WebSocket (tokio-tungstenite, with and without an Origin header) and
//! the HTTP API; each refusal counted in `tether_connections_refused_total`.

mod common;

use std::time::Duration;

use common::*;
use tether_proto::Code;
use tether_server::Config;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// `tether_connections_refused_total{listener, reason}` now. The recorder is the process's:
/// tests running beside this one may add to it, so tests compare with at least.
fn refused(listener: &str, reason: &str) -> u64 {
    let text = tether_server::metrics::prometheus().render();
    let series =
        format!("tether_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until the counter has grown by `n` (the refusal is counted on the node's task,
/// perhaps after the client saw it).
async fn counted(listener: &str, reason: &str, before: u64, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while refused(listener, reason) < before + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{listener}/{reason} refusals: {} after {WAIT:?}, expected at least {}",
            refused(listener, reason),
            before + n
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A TCP client that sends `connect` at once, as real ones do, and must see the connection end
/// without a frame: EOF, or a reset (the server closed with our `connect` unread).
async fn closed_without_a_word(addr: std::net::SocketAddr) {
    let mut client = TcpClient::open(addr).await;
    // The server may have closed already: a failed write is part of what is tested.
    let _ = client
        .stream
        .write_all(&encode(&connect_frame("alice", "phone", 0)))
        .await;
    match timeout(WAIT, client.recv()).await {
        Err(_) => panic!("the connection is still open after {WAIT:?}"),
        Ok(Ok(Some(frame))) => panic!("a refused client was answered {frame:?}"),
        Ok(Ok(None) | Err(_)) => {}
    }
}

#[tokio::test]
async fn a_tcp_client_from_a_denied_network_is_closed_before_connect_is_answered() {
    let mut config = Config::for_tests();
    config.listen.tcp_access.deny = vec!["127.0.0.0/8".into()];
    let node = start(config).await;
    let before = refused("tcp", "ip_denied");
    closed_without_a_word(node.tcp_addr().unwrap()).await;
    counted("tcp", "ip_denied", before, 1).await;
    // The other listeners have lists of their own: the WebSocket one lets it in.
    let (_ws, _) = WsClient::connected(&node, "alice", "browser", 0).await;
}

#[tokio::test]
async fn a_tcp_allow_list_takes_its_networks_shuts_out_the_rest_and_deny_wins() {
    let mut config = Config::for_tests();
    config.listen.tcp_access.allow = vec!["10.0.0.0/8".into(), "127.0.0.0/8".into()];
    let node = start(config).await;
    let (_client, connected) =
        TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
    assert_eq!(connected.bindings.len(), 1);

    let mut config = Config::for_tests();
    config.listen.tcp_access.allow = vec!["10.0.0.0/8".into(), "::1".into()];
    let node = start(config).await;
    let before = refused("tcp", "ip_not_allowed");
    closed_without_a_word(node.tcp_addr().unwrap()).await;
    counted("tcp", "ip_not_allowed", before, 1).await;

    let mut config = Config::for_tests();
    config.listen.tcp_access.allow = vec!["127.0.0.0/8".into()];
    config.listen.tcp_access.deny = vec!["127.0.0.1".into()];
    let node = start(config).await;
    let before = refused("tcp", "ip_denied");
    closed_without_a_word(node.tcp_addr().unwrap()).await;
    counted("tcp", "ip_denied", before, 1).await;
}

#[tokio::test]
async fn connections_over_the_per_ip_rate_are_refused_with_4004_until_it_refills() {
    let mut config = Config::for_tests();
    config.listen.tcp_access.connections_per_ip_per_sec = 1;
    config.listen.tcp_access.connections_per_ip_burst = 2;
    let node = start(config).await;
    let addr = node.tcp_addr().unwrap();
    let before = refused("tcp", "ip_rate");
    // Three accepts in a few milliseconds: the burst takes two.
    let mut first = TcpClient::open(addr).await;
    let mut second = TcpClient::open(addr).await;
    let mut third = TcpClient::open(addr).await;
    let d = third.expect_disconnect(Code::IP_LIMIT).await;
    assert!(d.retry_after_ms > 0, "{d:?}");
    for (client, device) in [(&mut first, "one"), (&mut second, "two")] {
        client.send(&connect_frame("alice", device, 0)).await;
        expect_connected(client.frame().await);
    }
    counted("tcp", "ip_rate", before, 1).await;
    // One a second comes back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_fourth, _) = TcpClient::connected(addr, "alice", "four", 0).await;
}

/// An upgrade request to the node's `/ws` with `origin` as its Origin header, if any.
fn ws_request(
    node: &tether_server::Node,
    origin: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut request = ws_url(node).into_client_request().expect("a request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("a header value"));
    }
    request
}

/// The HTTP status and body the upgrade was refused with; panics if it was not refused.
async fn refused_upgrade(request: tungstenite::handshake::client::Request) -> (u16, String) {
    match timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        other => panic!("expected a refused upgrade, got {other:?}"),
    }
}

async fn upgraded(request: tungstenite::handshake::client::Request) -> WsClient {
    let (ws, response) = timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade timed out")
        .expect("upgrade refused");
    assert_eq!(response.status().as_u16(), 101);
    WsClient { ws }
}

#[tokio::test]
async fn a_websocket_from_an_origin_not_listed_gets_403_and_a_listed_one_upgrades() {
    let mut config = Config::for_tests();
    config.listen.ws_access.origins = vec![
        "https://app.example.com".into(),
        "https://*.example.org".into(),
    ];
    config.listen.ws_access.allow_missing_origin = false;
    let node = start(config).await;
    let before = refused("ws", "origin");

    for origin in [
        "https://evil.example",
        "https://example.org",
        "http://app.example.com",
    ] {
        let (status, body) = refused_upgrade(ws_request(&node, Some(origin))).await;
        assert_eq!(status, 403, "{origin}");
        assert!(body.contains("origin"), "{origin}: {body:?}");
    }
    let (status, _) = refused_upgrade(ws_request(&node, None)).await;
    assert_eq!(status, 403, "no Origin, with allow_missing_origin = false");
    counted("ws", "origin", before, 4).await;

    for origin in ["https://app.example.com", "https://chat.eu.Example.org"] {
        let mut client = upgraded(ws_request(&node, Some(origin))).await;
        client.send_frame(&connect_frame("alice", origin, 0)).await;
        expect_connected(client.frame().await);
    }
}

#[tokio::test]
async fn a_websocket_without_origin_upgrades_by_default_even_with_an_origin_list() {
    let mut config = Config::for_tests();
    config.listen.ws_access.origins = vec!["https://app.example.com".into()];
    let node = start(config).await;
    let mut client = upgraded(ws_request(&node, None)).await;
    client
        .send_frame(&connect_frame("alice", "native", 0))
        .await;
    expect_connected(client.frame().await);
    let (status, _) = refused_upgrade(ws_request(&node, Some("https://other.example"))).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_websocket_from_a_denied_address_is_closed_without_an_http_answer() {
    let mut config = Config::for_tests();
    config.listen.ws_access.deny = vec!["127.0.0.1/32".into()];
    let node = start(config).await;
    let before = refused("ws", "ip_denied");
    match timeout(
        WAIT,
        tokio_tungstenite::connect_async(ws_request(&node, None)),
    )
    .await
    {
        Ok(Err(tungstenite::Error::Http(response))) => {
            panic!("a denied address got an HTTP answer: {response:?}")
        }
        Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("a denied address upgraded"),
        Err(_) => panic!("the connection is still open after {WAIT:?}"),
    }
    counted("ws", "ip_denied", before, 1).await;
    // The TCP listener's lists are its own.
    let (_tcp, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
}

#[tokio::test]
async fn websocket_upgrades_over_the_per_ip_rate_get_429() {
    let mut config = Config::for_tests();
    config.listen.ws_access.connections_per_ip_per_sec = 1;
    config.listen.ws_access.connections_per_ip_burst = 1;
    let node = start(config).await;
    let before = refused("ws", "ip_rate");
    let _first = upgraded(ws_request(&node, None)).await;
    let (status, _) = refused_upgrade(ws_request(&node, None)).await;
    assert_eq!(status, 429);
    counted("ws", "ip_rate", before, 1).await;
}

#[tokio::test]
async fn the_api_answers_403_to_a_denied_address_and_serves_an_allowed_one() {
    let mut config = Config::for_tests();
    config.listen.http_access.deny = vec!["127.0.0.0/8".into()];
    let node = start(config).await;
    let before = refused("http", "ip_denied");
    let http = Http::new(&node);
    for path in [
        "/healthz",
        "/v1/apps/demo/users/alice/presence",
        "/no-such-route",
    ] {
        let reply = http.get(path, Some(API_KEY)).await;
        assert_eq!(reply.status, 403, "{path}: {:?}", reply.body);
        assert_eq!(reply.body["code"], "forbidden", "{path}: {:?}", reply.body);
    }
    counted("http", "ip_denied", before, 3).await;
    // The gateways are not the API's business.
    let (_tcp, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;

    let mut config = Config::for_tests();
    config.listen.http_access.allow = vec!["127.0.0.1".into(), "::1".into()];
    let node = start(config).await;
    let reply = Http::new(&node).get("/healthz", None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[tokio::test]
async fn the_connection_limits_are_counted_with_the_guards_refusals() {
    let mut config = Config::for_tests();
    config.limits.max_connections_per_ip = 1;
    let node = start(config).await;
    let before = (refused("tcp", "ip_limit"), refused("ws", "ip_limit"));
    let (_first, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "one", 0).await;
    let mut second = TcpClient::open(node.tcp_addr().unwrap()).await;
    second.expect_disconnect(Code::IP_LIMIT).await;
    let (status, _) = refused_upgrade(ws_request(&node, None)).await;
    assert_eq!(status, 429);
    counted("tcp", "ip_limit", before.0, 1).await;
    counted("ws", "ip_limit", before.1, 1).await;
}
