//! The durability promise under a crash: a real `tether serve` process is killed with SIGKILL
//! while a client pushes durable messages as fast as it can; after a restart on the same data
//! directory, every message the API answered 200 for reaches the user's device, in order, with
//! no gap. Several rounds in one run, alternating the store's durability modes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{OnFailure, Server, free_addr, push_durable, read_frame};
use tether_core::{AppId, UserId, auth};
use tether_proto::{Ack, Binding, Body, Connect, Frame, PROTOCOL_VERSION, binary};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &str = "crash-secret-0123456789";
const API_KEY: &str = "crash-api-key-0123456789";
/// Requests in flight while pushing.
const IN_FLIGHT: usize = 16;
/// Upper bound of any wait.
const WAIT: Duration = Duration::from_secs(15);

/// Starts `tether serve` on `dir` with the embedded store in `durability` mode.
async fn serve(dir: &Path, durability: &str) -> Server {
    let (tcp, http) = (free_addr(), free_addr());
    let config = format!(
        r#"
[node]
id = "crash"
data_dir = "{dir}"

[listen]
tcp = "{tcp}"
ws = ""
http = "{http}"
mqtt = ""

[store]
backend = "embedded"
durability = "{durability}"
inbox_cap = 1000000

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"
"#,
        dir = dir.display()
    );
    Server::start(&dir.join("tether.toml"), &config, tcp, http, WAIT).await
}

/// Connects as `user` on a new device and reads pushes until it holds seq `up_to`; returns
/// seq -> payload index in arrival order, checking order and gaps on the way.
async fn receive_all(server: &Server, user: &str, up_to: u64) -> Vec<(u64, u64)> {
    let mut stream = TcpStream::connect(server.tcp).await.expect("connect");
    let token = auth::mint(
        SECRET.as_bytes(),
        &AppId::from("demo"),
        &UserId::from(user),
        Duration::from_secs(600),
    );
    let connect = Frame::new(
        1,
        Connect {
            version: PROTOCOL_VERSION,
            device: format!("{user}-reader"),
            heartbeat_ms: 60_000,
            bindings: vec![Binding {
                app: "demo".into(),
                token,
                last_seq: None,
            }],
        },
    );
    stream
        .write_all(&binary::encode_to_bytes(&connect))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.last().is_none_or(|(seq, _)| *seq < up_to) {
        let frame = tokio::time::timeout_at(deadline, read_frame(&mut stream, &mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out with {} of {up_to} messages, last {:?}",
                    got.len(),
                    got.last()
                )
            })
            .expect("the server closed the connection");
        match frame.body {
            Body::Connected(_) => {}
            Body::Push(p) => {
                let expected = got.last().map_or(1, |(seq, _)| seq + 1);
                assert_eq!(p.seq, expected, "seqs arrive in order with no gap");
                let payload: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                got.push((p.seq, payload["n"].as_u64().unwrap()));
                if p.seq % 100 == 0 {
                    let ack = Frame::new(
                        2,
                        Ack {
                            app: "demo".into(),
                            seq: p.seq,
                        },
                    );
                    stream
                        .write_all(&binary::encode_to_bytes(&ack))
                        .await
                        .unwrap();
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_durable_push_survives_sigkill() {
    let dir = std::env::temp_dir().join(format!("tether-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rounds = [
        ("sync", 300),
        ("interval", 450),
        ("sync", 600),
        ("interval", 250),
    ];
    for (round, (durability, millis)) in rounds.into_iter().enumerate() {
        let user = format!("crash-{round}");
        let mut server = serve(&dir, durability).await;
        let started = Instant::now();
        let pushing = push_durable(
            server.http,
            API_KEY,
            &user,
            IN_FLIGHT,
            Duration::from_secs(10),
            OnFailure::Stop,
        );
        // Kill mid-stream, at a point that varies per round.
        let kill = async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            server.kill();
        };
        let (answered, ()) = tokio::join!(pushing, kill);
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the pushers stopped because the server died, not because time ran out"
        );
        let last = *answered.keys().last().expect("some pushes were answered");
        assert!(
            answered.len() > 10,
            "round {round}: too few pushes answered"
        );

        let mut server = serve(&dir, durability).await;
        let got = receive_all(&server, &user, last).await;
        let delivered: BTreeMap<u64, u64> = got.into_iter().collect();
        for (seq, n) in &answered {
            assert_eq!(
                delivered.get(seq),
                Some(n),
                "round {round} ({durability}): answered seq {seq} is not delivered intact"
            );
        }
        eprintln!(
            "round {round} ({durability}): {} answered, all delivered after SIGKILL",
            answered.len()
        );
        server.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
