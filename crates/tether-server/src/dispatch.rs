//! The dispatcher's ordering: which gateway endpoints a client should try, and in which order.
//!
//! Rendezvous (highest random weight) hashing: every node gets a score from a hash of
//! (app, user, node id), and the nodes are tried from the highest score down. A user therefore
//! comes back to the same node while it is up (where a resume is cheapest), users spread evenly
//! over the nodes, and when a node leaves only its own users move, each to its own next node,
//! so the load of a lost node spreads over all the others rather than landing on one.
//!
//! Load-aware: each node's score is weighted by its free capacity (weighted rendezvous
//! hashing, `-w / ln(u)` with `u` the hash in (0, 1]), so a node with half the room of the
//! others gets about half as many users as each of them. The weight moves in steps of a tenth
//! of the capacity, so that small load changes move nobody; a step moves only the users at the
//! edge, not everyone.
//!
//! The ordering needs nothing but the registry's node list: it is the same whether one node or
//! a cluster answers, and every node of a cluster answers the same for a user.

use tether_core::{NodeId, NodeInfo, Transport};

/// One endpoint of the answer, as the dispatcher writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub url: String,
    pub transport: Transport,
    pub node: NodeId,
    /// A WebSocket endpoint's SSE stream ([`sse_url`]), so that clients need not derive it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
}

/// The SSE stream (`GET /v1/sse`) served beside the WebSocket endpoint `url`: `ws://` becomes
/// `http://` and `wss://` `https://`, and the path's last segment `ws` becomes `v1/sse`, so
/// that a balancer's prefix stays (`wss://lb.example/push/ws` streams at
/// `https://lb.example/push/v1/sse`). `None` for any other URL.
pub fn sse_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme {
        "ws" => "http",
        "wss" => "https",
        _ => return None,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let prefix = rest.strip_suffix("/ws")?;
    // The authority must stay: `ws://host/ws` has one, `ws:///ws` does not.
    if prefix.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{prefix}/v1/sse"))
}

/// The transport an advertised URL names: `tcp://`/`tls://`, `ws://`/`wss://`, or MQTT's
/// `mqtt://`/`mqtts://` and a `ws://`/`wss://` URL whose path ends in `/mqtt` (MQTT over
/// WebSocket, `docs/mqtt.md` section 1).
pub fn transport_of(url: &str) -> Option<Transport> {
    let (scheme, rest) = url.split_once("://")?;
    match scheme {
        "tcp" | "tls" => Some(Transport::Tcp),
        "ws" | "wss" if is_mqtt_path(rest) => Some(Transport::Mqtt),
        "ws" | "wss" => Some(Transport::Ws),
        "mqtt" | "mqtts" => Some(Transport::Mqtt),
        _ => None,
    }
}

/// Whether a WebSocket URL's authority and path (`host:port/prefix/mqtt`) lead to MQTT: a path
/// whose last segment is `mqtt`.
pub fn is_mqtt_path(rest: &str) -> bool {
    let path = rest.split(['?', '#']).next().unwrap_or("");
    path.find('/')
        .is_some_and(|at| path[at..].ends_with("/mqtt"))
}

/// The rendezvous score of `node` for (app, user): higher is tried first.
///
/// Stable across processes, platforms and versions (FNV-1a then a 64-bit finaliser, not the
/// standard library's hasher), because every node must answer the same for a user. Fields are
/// separated by `0xff`, a byte UTF-8 never contains, so that ("ab", "c") and ("a", "bc") differ.
pub fn score(app: &str, user: &str, node: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for part in [app.as_bytes(), user.as_bytes(), node.as_bytes()] {
        for &b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    // FNV alone mixes the last bytes poorly; node ids often differ only there ("tether-1",
    // "tether-2"). MurmurHash3's finaliser spreads every input bit over the whole word.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A node's weight: its free capacity, rounded up to a tenth (0.1 ..= 1.0).
fn weight(node: &NodeInfo) -> f64 {
    if node.max_connections == 0 {
        return 0.1;
    }
    let used = node.connections.min(node.max_connections) as f64 / node.max_connections as f64;
    ((1.0 - used) * 10.0).ceil().clamp(1.0, 10.0) / 10.0
}

/// Weighted rendezvous: `-weight / ln(u)` with `u` the score mapped into (0, 1]. For equal
/// weights the order is the plain scores' order.
fn weighted(score: u64, weight: f64) -> f64 {
    // The top 53 bits, exactly representable; +1 keeps u above 0 (ln(0) is -inf).
    let u = ((score >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    if u >= 1.0 {
        return f64::INFINITY;
    }
    -weight / u.ln()
}

/// The endpoints (app, user) should try, in order.
///
/// - Draining nodes are left out.
/// - Nodes with room come before nodes at their connection limit (they would refuse the
///   client with 4102); then, when the client names its `zone`, nodes of that zone before the
///   others; then by weighted [`score`], highest first.
/// - Each node's endpoints follow in the node's own order, so that a client whose TCP is
///   blocked falls back to the same node's WebSocket before it moves to another node.
/// - Endpoints in `failed` (what the client could not reach) are left out, and so are those of
///   another transport than `transport`, when given. MQTT's are given only to a client that
///   asks for them (`transport=mqtt`): tether's clients speak tether's protocol.
pub fn order(
    nodes: &[NodeInfo],
    app: &str,
    user: &str,
    failed: &[String],
    transport: Option<Transport>,
    zone: Option<&str>,
) -> Vec<Endpoint> {
    let mut ranked: Vec<(bool, bool, f64, &NodeInfo)> = nodes
        .iter()
        .filter(|n| !n.draining)
        .map(|n| {
            let full = n.connections >= n.max_connections;
            let elsewhere = zone.is_some_and(|z| z != n.zone);
            let score = weighted(score(app, user, n.id.as_str()), weight(n));
            (full, elsewhere, score, n)
        })
        .collect();
    // Not full first, then the client's zone, then the highest weighted score; the id breaks
    // (astronomically unlikely) ties so that the order never depends on the registry's.
    ranked.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.cmp(&b.1))
            .then(b.2.total_cmp(&a.2))
            .then_with(|| a.3.id.cmp(&b.3.id))
    });
    let mut out = Vec::new();
    for (_, _, _, node) in ranked {
        for url in &node.endpoints {
            let Some(t) = transport_of(url) else { continue };
            let wanted = match transport {
                Some(wanted) => wanted == t,
                None => t != Transport::Mqtt,
            };
            if !wanted || failed.iter().any(|f| f == url) {
                continue;
            }
            out.push(Endpoint {
                node: node.id.clone(),
                url: url.clone(),
                transport: t,
                sse: sse_url(url),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn mqtt_endpoints_are_told_apart_by_scheme_or_path() {
        for (url, transport) in [
            ("mqtt://h:7483", Some(Transport::Mqtt)),
            ("mqtts://h:8883", Some(Transport::Mqtt)),
            ("ws://h:7401/mqtt", Some(Transport::Mqtt)),
            ("wss://lb.example/push/mqtt?x=1", Some(Transport::Mqtt)),
            ("ws://h:7401/ws", Some(Transport::Ws)),
            ("wss://mqtt", Some(Transport::Ws)),
            ("ws://h/mqttx", Some(Transport::Ws)),
            ("tls://h:7443", Some(Transport::Tcp)),
            ("http://h/mqtt", None),
        ] {
            assert_eq!(transport_of(url), transport, "{url}");
        }
    }

    #[test]
    fn mqtt_endpoints_go_only_to_clients_that_ask_for_them() {
        let mut n = node("a");
        n.endpoints
            .extend(["mqtt://a:7483".to_owned(), "ws://a:7401/mqtt".to_owned()]);
        let urls = |transport| -> Vec<String> {
            order(std::slice::from_ref(&n), "demo", "u", &[], transport, None)
                .into_iter()
                .map(|e| e.url)
                .collect()
        };
        assert_eq!(
            urls(None),
            ["tcp://a:7400", "tcp://a:443", "ws://a:7401/ws"]
        );
        assert_eq!(
            urls(Some(Transport::Mqtt)),
            ["mqtt://a:7483", "ws://a:7401/mqtt"]
        );
        assert_eq!(urls(Some(Transport::Ws)), ["ws://a:7401/ws"]);
    }

    #[test]
    fn a_websocket_endpoint_has_its_stream_beside_it() {
        for (ws, sse) in [
            ("ws://10.0.0.1:7401/ws", Some("http://10.0.0.1:7401/v1/sse")),
            (
                "wss://push.example.com/ws",
                Some("https://push.example.com/v1/sse"),
            ),
            (
                "wss://lb.example/push/ws",
                Some("https://lb.example/push/v1/sse"),
            ),
            ("ws://[::1]:7401/ws?x=1", Some("http://[::1]:7401/v1/sse")),
            ("ws://h:7401/other", None),
            ("ws:///ws", None),
            ("tcp://h:7400", None),
        ] {
            assert_eq!(sse_url(ws).as_deref(), sse, "{ws}");
        }
    }

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId::from(id),
            endpoints: vec![
                format!("tcp://{id}:7400"),
                format!("tcp://{id}:443"),
                format!("ws://{id}:7401/ws"),
            ],
            connections: 0,
            max_connections: 1000,
            draining: false,
            zone: String::new(),
            expires_ms: u64::MAX,
        }
    }

    fn fleet(n: usize) -> Vec<NodeInfo> {
        (1..=n).map(|i| node(&format!("tether-{i}"))).collect()
    }

    /// The node a user is sent to first.
    fn first(nodes: &[NodeInfo], user: &str) -> String {
        order(nodes, "demo", user, &[], None, None)[0]
            .node
            .to_string()
    }

    #[test]
    fn the_score_is_fixed_across_builds() {
        // Every node of a cluster, whatever its version, must rank nodes the same way.
        assert_eq!(score("demo", "alice", "tether-1"), 0xce2d_109d_0536_477d);
    }

    #[test]
    fn fields_do_not_run_into_each_other() {
        assert_ne!(score("ab", "c", "n"), score("a", "bc", "n"));
        assert_ne!(score("a", "bc", "n"), score("a", "b", "cn"));
    }

    #[test]
    fn a_user_always_gets_the_same_order_whatever_the_registry_order() {
        let nodes = fleet(5);
        let mut reversed = nodes.clone();
        reversed.reverse();
        for user in ["alice", "bob", "carol", "dave"] {
            let a = order(&nodes, "demo", user, &[], None, None);
            assert_eq!(a, order(&nodes, "demo", user, &[], None, None));
            assert_eq!(a, order(&reversed, "demo", user, &[], None, None));
            assert_eq!(a.len(), 15, "every endpoint of every node");
        }
    }

    #[test]
    fn a_node_s_endpoints_stay_together_in_its_order() {
        let nodes = fleet(3);
        let got = order(&nodes, "demo", "alice", &[], None, None);
        for chunk in got.chunks(3) {
            let id = chunk[0].node.as_str();
            let urls: Vec<&str> = chunk.iter().map(|e| e.url.as_str()).collect();
            assert_eq!(
                urls,
                [
                    format!("tcp://{id}:7400"),
                    format!("tcp://{id}:443"),
                    format!("ws://{id}:7401/ws")
                ]
            );
            assert_eq!(
                chunk.iter().map(|e| e.transport).collect::<Vec<_>>(),
                [Transport::Tcp, Transport::Tcp, Transport::Ws]
            );
        }
    }

    #[test]
    fn a_client_s_zone_comes_first_then_the_others() {
        let mut nodes = fleet(4);
        for (i, n) in nodes.iter_mut().enumerate() {
            n.zone = if i < 2 { "eu".into() } else { "us".into() };
        }
        for u in 0..200 {
            let user = format!("user-{u}");
            let got = order(&nodes, "demo", &user, &[], None, Some("us"));
            let zones: Vec<&str> = got
                .chunks(3)
                .map(|c| {
                    let id = c[0].node.as_str();
                    nodes
                        .iter()
                        .find(|n| n.id.as_str() == id)
                        .unwrap()
                        .zone
                        .as_str()
                })
                .collect();
            assert_eq!(zones, ["us", "us", "eu", "eu"], "{user}");
            // Within a zone, the usual order.
            let plain = order(&nodes, "demo", &user, &[], None, None);
            let us_first: Vec<_> = plain
                .iter()
                .filter(|e| e.node.as_str() > "tether-2")
                .collect();
            assert_eq!(us_first[0].node, got[0].node);
        }
        // A zone no node is in changes nothing.
        assert_eq!(
            order(&nodes, "demo", "alice", &[], None, Some("ap")),
            order(&nodes, "demo", "alice", &[], None, None)
        );
    }

    #[test]
    fn a_busier_node_gets_fewer_users_and_small_changes_move_nobody() {
        let mut nodes = fleet(3);
        nodes[0].connections = 800; // 20% free: weight 0.2 against 1.0 and 1.0
        let users = 20_000;
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for u in 0..users {
            *per_node
                .entry(first(&nodes, &format!("user-{u}")))
                .or_default() += 1;
        }
        // Weighted rendezvous: shares 0.2 : 1 : 1, about 1,818 : 9,091 : 9,091.
        let busy = per_node["tether-1"];
        assert!((1_500..=2_150).contains(&busy), "{per_node:?}");
        // Within one tenth of capacity, nobody moves.
        let before: Vec<String> = (0..2_000)
            .map(|u| first(&nodes, &format!("user-{u}")))
            .collect();
        nodes[0].connections = 805;
        nodes[1].connections = 40;
        let after: Vec<String> = (0..2_000)
            .map(|u| first(&nodes, &format!("user-{u}")))
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn users_spread_evenly_over_the_nodes() {
        let nodes = fleet(5);
        let users = 20_000;
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for u in 0..users {
            *per_node
                .entry(first(&nodes, &format!("user-{u}")))
                .or_default() += 1;
        }
        assert_eq!(per_node.len(), 5, "{per_node:?}");
        for (node, n) in &per_node {
            // 4,000 expected; a fair draw stays within a few percent.
            assert!((3_700..=4_300).contains(n), "{node} got {n} of {users}");
        }
        // Second choices spread too: a lost node's users do not all land on one other node.
        let mut second: HashMap<String, usize> = HashMap::new();
        for u in 0..users {
            let user = format!("user-{u}");
            let got = order(&nodes, "demo", &user, &[], None, None);
            if got[0].node.as_str() == "tether-1" {
                *second.entry(got[3].node.to_string()).or_default() += 1;
            }
        }
        assert_eq!(second.len(), 4, "{second:?}");
        for (node, n) in &second {
            assert!((800..=1_200).contains(n), "{node} second for {n}");
        }
    }

    #[test]
    fn only_the_users_of_a_lost_node_move() {
        let nodes = fleet(5);
        let without_3: Vec<NodeInfo> = nodes
            .iter()
            .filter(|n| n.id.as_str() != "tether-3")
            .cloned()
            .collect();
        let mut moved = 0;
        for u in 0..5_000 {
            let user = format!("user-{u}");
            let before = first(&nodes, &user);
            let after = first(&without_3, &user);
            if before == "tether-3" {
                moved += 1;
                assert_ne!(after, "tether-3");
            } else {
                assert_eq!(before, after, "{user} moved although its node stayed");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn apps_are_hashed_apart() {
        let nodes = fleet(5);
        let differs = (0..200)
            .map(|u| format!("user-{u}"))
            .filter(|u| {
                order(&nodes, "a", u, &[], None, None)[0].node
                    != order(&nodes, "b", u, &[], None, None)[0].node
            })
            .count();
        assert!(differs > 100, "only {differs} of 200 users differ by app");
    }

    #[test]
    fn failed_endpoints_and_draining_nodes_are_left_out() {
        let mut nodes = fleet(3);
        let all = order(&nodes, "demo", "alice", &[], None, None);
        let top = all[0].node.clone();
        // The client could not reach the top node's first TCP port.
        let failed = vec![all[0].url.clone()];
        let got = order(&nodes, "demo", "alice", &failed, None, None);
        assert_eq!(got.len(), 8);
        assert_eq!(got[0], all[1], "the same node's next endpoint comes first");
        assert!(got.iter().all(|e| e.url != failed[0]));

        // The top node drains: its endpoints disappear, the rest keep their order.
        nodes
            .iter_mut()
            .find(|n| n.id == top)
            .expect("top node")
            .draining = true;
        let got = order(&nodes, "demo", "alice", &[], None, None);
        assert_eq!(got.len(), 6);
        assert!(got.iter().all(|e| e.node != top));
        assert_eq!(got, all[3..].to_vec());

        // Everything failed or draining: nothing to offer.
        let every: Vec<String> = got.iter().map(|e| e.url.clone()).collect();
        assert!(order(&nodes, "demo", "alice", &every, None, None).is_empty());
    }

    #[test]
    fn full_nodes_come_last_and_a_transport_can_be_asked_for() {
        let mut nodes = fleet(3);
        let all = order(&nodes, "demo", "alice", &[], None, None);
        let top = all[0].node.clone();
        let n = nodes.iter_mut().find(|n| n.id == top).expect("top node");
        n.connections = n.max_connections;
        let got = order(&nodes, "demo", "alice", &[], None, None);
        assert_eq!(got[..6], all[3..]);
        assert_eq!(got[6..], all[..3], "a full node is still a fallback");

        let ws = order(&nodes, "demo", "alice", &[], Some(Transport::Ws), None);
        assert_eq!(ws.len(), 3);
        assert!(ws.iter().all(|e| e.url.starts_with("ws://")));
        assert_eq!(ws[2].node, top);
    }
}
