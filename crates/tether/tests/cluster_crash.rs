//! A cluster node killed with SIGKILL: three real `tether serve` processes share a Redis; a
//! client on node A receives durable pushes sent through node B's API as fast as the pushers
//! can; A is killed mid-stream. The client asks the dispatcher for another node, resumes from
//! the last seq it got, and in the end holds every message the API answered 200 for, in order,
//! with no gap; A's session is gone from the registry within its announcement's ttl.
//!
//! Without a Redis at `TETHER_TEST_REDIS` (default 127.0.0.1:6379) this test is skipped, except
//! under `CI=true`, where it fails.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{OnFailure, Server, free_addr, push_durable, read_frame};
use tether_core::{AppId, UserId, auth};
use tether_proto::{Ack, Binding, Body, Connect, Frame, PROTOCOL_VERSION, binary};
use tether_redis::RedisOptions;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &str = "cluster-secret-0123456789";
const API_KEY: &str = "cluster-api-key-0123456789";
const USER: &str = "mover";
/// Requests in flight while pushing.
const IN_FLIGHT: usize = 8;
/// Upper bound of any wait.
const WAIT: Duration = Duration::from_secs(15);

/// A cluster node: `tether serve` on Redis `redis`, announcing every 200 ms.
struct Node {
    id: String,
    server: Server,
}

impl Node {
    async fn start(dir: &Path, id: &str, redis: &RedisOptions) -> Node {
        let (tcp, http) = (free_addr(), free_addr());
        let config = format!(
            r#"
[node]
id = "{id}"
data_dir = "{dir}"
announce_interval = "200ms"

[listen]
tcp = "{tcp}"
ws = ""
http = "{http}"
mqtt = ""

[cluster]
redis = ["{url}"]
prefix = "{prefix}"

[store]
backend = "redis"
inbox_cap = 1000000

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"
"#,
            dir = dir.display(),
            url = redis.urls[0],
            prefix = redis.prefix,
        );
        let path = dir.join(format!("{id}.toml"));
        Node {
            id: id.to_owned(),
            server: Server::start(&path, &config, tcp, http, WAIT).await,
        }
    }
}

/// One connection of the receiving device.
struct Receiver {
    stream: TcpStream,
    buf: BytesMut,
}

impl Receiver {
    async fn connect(addr: SocketAddr, last_seq: Option<u64>) -> Receiver {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let token = auth::mint(
            SECRET.as_bytes(),
            &AppId::from("demo"),
            &UserId::from(USER),
            Duration::from_secs(600),
        );
        let connect = Frame::new(
            1,
            Connect {
                version: PROTOCOL_VERSION,
                device: "mover-phone".into(),
                heartbeat_ms: 60_000,
                bindings: vec![Binding {
                    app: "demo".into(),
                    token,
                    last_seq,
                }],
            },
        );
        stream
            .write_all(&binary::encode_to_bytes(&connect))
            .await
            .unwrap();
        let mut receiver = Receiver {
            stream,
            buf: BytesMut::new(),
        };
        match receiver.frame().await {
            Some(Frame {
                body: Body::Connected(_),
                ..
            }) => receiver,
            other => panic!("expected connected, got {other:?}"),
        }
    }

    /// The next frame, or `None` once the server is gone.
    async fn frame(&mut self) -> Option<Frame> {
        read_frame(&mut self.stream, &mut self.buf).await
    }

    async fn ack(&mut self, seq: u64) {
        let ack = Frame::new(
            2,
            Ack {
                app: "demo".into(),
                seq,
            },
        );
        // The node may be dead already: the ack is then lost, which resuming covers.
        let _ = self.stream.write_all(&binary::encode_to_bytes(&ack)).await;
    }
}

/// The dispatcher's first TCP endpoint for [`USER`], skipping `failed`.
async fn dispatch(http: SocketAddr, failed: &str) -> (String, SocketAddr) {
    let token = auth::mint(
        SECRET.as_bytes(),
        &AppId::from("demo"),
        &UserId::from(USER),
        Duration::from_secs(600),
    );
    let url = format!("http://{http}/v1/dispatch?app=demo&user={USER}&failed={failed}");
    let reply: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .expect("dispatch")
        .json()
        .await
        .expect("JSON");
    let endpoint = reply["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["url"].as_str().is_some_and(|u| u.starts_with("tcp://")))
        .unwrap_or_else(|| panic!("no TCP endpoint in {reply}"));
    let node = endpoint["node"].as_str().unwrap().to_owned();
    let addr = endpoint["url"].as_str().unwrap()["tcp://".len()..]
        .parse()
        .expect("an address");
    (node, addr)
}

/// The nodes of [`USER`]'s sessions, as node B's presence shows them.
async fn presence_nodes(http: SocketAddr) -> Vec<String> {
    let url = format!("http://{http}/v1/apps/demo/users/{USER}/presence");
    let reply: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("presence")
        .json()
        .await
        .expect("JSON");
    reply["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["node"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_node_loses_no_answered_durable_push() {
    let Some(redis) = tether_redis::testing::options("cluster-crash").await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tether-cluster-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut a = Node::start(&dir, "node-a", &redis).await;
    let b = Node::start(&dir, "node-b", &redis).await;
    let _c = Node::start(&dir, "node-c", &redis).await;

    let mut receiver = Receiver::connect(a.server.tcp, None).await;
    let deadline = Instant::now() + WAIT;
    while presence_nodes(b.server.http).await != ["node-a"] {
        assert!(Instant::now() < deadline, "the session never showed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Pushes through B for 2 s; A dies after 700 ms.
    let pushing = tokio::spawn(push_durable(
        b.server.http,
        API_KEY,
        USER,
        IN_FLIGHT,
        Duration::from_secs(2),
        OnFailure::Panic,
    ));
    let mut got: Vec<(u64, u64)> = Vec::new();
    let killed_at = Instant::now() + Duration::from_millis(700);
    let mut moved_to = None;
    loop {
        let frame = if moved_to.is_none() {
            tokio::select! {
                frame = receiver.frame() => frame,
                () = tokio::time::sleep_until(killed_at.into()) => {
                    a.server.kill();
                    continue;
                }
            }
        } else {
            match tokio::time::timeout(Duration::from_millis(500), receiver.frame()).await {
                Ok(frame) => frame,
                Err(_) if pushing.is_finished() => break,
                Err(_) => continue,
            }
        };
        match frame.map(|f| f.body) {
            Some(Body::Push(p)) => {
                let expected = got.last().map_or(1, |(seq, _)| seq + 1);
                assert_eq!(p.seq, expected, "in order, no gap, no duplicate");
                let payload: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                got.push((p.seq, payload["n"].as_u64().unwrap()));
                receiver.ack(p.seq).await;
            }
            Some(other) => panic!("unexpected frame {other:?}"),
            None => {
                assert!(moved_to.is_none(), "the second node went away too");
                // A is gone: the dispatcher sends the client elsewhere, and it resumes.
                let (node, addr) = dispatch(b.server.http, &a.id).await;
                assert_ne!(node, a.id);
                let last = got.last().map(|(seq, _)| *seq);
                receiver = Receiver::connect(addr, last.or(Some(0))).await;
                moved_to = Some(node);
            }
        }
    }
    let answered = pushing.await.expect("pushers");
    let moved_to = moved_to.expect("the client moved to another node");
    assert!(
        answered.len() > 20,
        "too few pushes answered: {}",
        answered.len()
    );
    let delivered: BTreeMap<u64, u64> = got.iter().copied().collect();
    for (seq, n) in &answered {
        assert_eq!(
            delivered.get(seq),
            Some(n),
            "answered seq {seq} is not delivered intact"
        );
    }
    // A never withdrew: its session goes when its announcement expires (3 x 200 ms) and a
    // live node reaps it.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let nodes = presence_nodes(b.server.http).await;
        if nodes == [moved_to.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "presence still {nodes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{} answered, all delivered after SIGKILL of node-a; the client moved to {moved_to}",
        answered.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
