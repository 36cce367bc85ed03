//! A push whose answer is lost, retried: a real `tether serve` behind a proxy that lets the
//! request through and drops the connection once the node has answered. `tether push` sends
//! an idempotency key by default and retries with it, so the message is stored and delivered
//! once; without a key it is not retried, and a retry by hand stores it twice.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::{Server, connect_device, free_addr, read_frame};
use tether_proto::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "retry-secret-0123456789";
const API_KEY: &str = "retry-api-key-0123456789";
/// Upper bound of any single wait.
const WAIT: Duration = Duration::from_secs(10);

async fn serve(dir: &Path) -> Server {
    let (tcp, http) = (free_addr(), free_addr());
    let config = format!(
        r#"
[node]
id = "retry"
data_dir = "{dir}"

[listen]
tcp = "{tcp}"
ws = ""
http = "{http}"
mqtt = ""

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"
"#,
        dir = dir.display()
    );
    Server::start(&dir.join("tether.toml"), &config, tcp, http, WAIT).await
}

/// A proxy to `target` that, for the next `drops` connections, passes the request on and
/// closes the connection as soon as the node's answer begins, without passing it back.
struct LossyProxy {
    addr: SocketAddr,
    drops: Arc<AtomicUsize>,
}

impl LossyProxy {
    async fn start(target: SocketAddr) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let left = drops.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let lose = left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                tokio::spawn(relay(client, target, lose));
            }
        });
        LossyProxy { addr, drops }
    }

    fn lose_next(&self, answers: usize) {
        self.drops.store(answers, Ordering::SeqCst);
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, lose: bool) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    if !lose {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    let (mut from_client, _to_client) = client.split();
    let (mut from_server, mut to_server) = server.split();
    let up = tokio::io::copy(&mut from_client, &mut to_server);
    let mut first = [0u8; 1];
    // The node answered (so it did whatever the request asked): drop both connections.
    tokio::select! {
        _ = up => {}
        _ = from_server.read(&mut first) => {}
    }
}

/// Runs `tether push` to `http` with `args` (on the blocking pool: it waits for the process).
async fn tether_push(http: SocketAddr, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .arg("push")
        .arg("--url")
        .arg(format!("http://{http}"))
        .args(["--app", "demo", "--api-key", API_KEY, "--user", "alice"])
        .args(args);
    tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || command.output().expect("run tether push")),
    )
    .await
    .expect("tether push ended in time")
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Alice's stored messages: (seq, payload "n").
async fn stored(http: SocketAddr) -> Vec<(u64, u64)> {
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{http}/v1/apps/demo/users/alice/messages"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["payload"]["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The seqs of the pushes alice's device gets until nothing more comes for half a second.
async fn received(stream: &mut TcpStream, buf: &mut BytesMut) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Ok(frame) =
        tokio::time::timeout(Duration::from_millis(500), read_frame(stream, buf)).await
    {
        match frame.expect("alice is still connected").body {
            Body::Push(p) => seqs.push(p.seq),
            other => panic!("alice got {other:?}"),
        }
    }
    seqs
}

/// Sends `ack` so that what alice got is not sent again (a duplicate is routed to her too).
async fn ack(stream: &mut TcpStream, seq: u64) {
    let ack = tether_proto::Frame::new(
        2,
        tether_proto::Ack {
            app: "demo".into(),
            seq,
        },
    );
    stream
        .write_all(&tether_proto::binary::encode_to_bytes(&ack))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_answer_is_lost_is_stored_once_with_a_key_and_twice_without() {
    let dir = std::env::temp_dir().join(format!("tether-retry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = serve(&dir).await;
    let proxy = LossyProxy::start(server.http).await;
    let (mut alice, mut buf, frame) = connect_device(server.tcp, SECRET, "alice", WAIT).await;
    assert!(matches!(frame.body, Body::Connected(_)), "{frame:?}");

    // With the default key: the first answer is lost, the retry carries the same key, the
    // node answers the first result.
    proxy.lose_next(1);
    let out = tether_push(proxy.addr, &["--qos", "1", "--data", r#"{"n":1}"#]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "tether push failed: {stderr}");
    assert!(
        stderr.contains("retrying") && stderr.contains("with the same idempotency key"),
        "{stderr}"
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("the answer");
    assert_eq!(
        answer["duplicate"], true,
        "the retry was answered the first result"
    );
    assert_eq!(answer["seqs"]["alice"], 1);
    assert_eq!(stored(server.http).await, [(1, 1)], "stored once");
    let got = received(&mut alice, &mut buf).await;
    assert!(
        !got.is_empty() && got.iter().all(|seq| *seq == 1),
        "delivered as one message (seq 1, maybe sent twice for the device to drop): {got:?}"
    );
    ack(&mut alice, 1).await;

    // Every attempt's answer lost: it fails, and says which key to retry with.
    proxy.lose_next(2);
    let out = tether_push(
        proxy.addr,
        &["--qos", "1", "--retries", "1", "--data", r#"{"n":2}"#],
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "every answer was lost: {stderr}");
    let key = stderr
        .split("--idempotency-key ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no key to retry with in: {stderr}"));
    // Retried by hand with that key, later: still once.
    let out = tether_push(
        proxy.addr,
        &[
            "--qos",
            "1",
            "--idempotency-key",
            key,
            "--data",
            r#"{"n":2}"#,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["duplicate"], true);
    assert_eq!(stored(server.http).await, [(1, 1), (2, 2)], "stored once");
    let got = received(&mut alice, &mut buf).await;
    assert!(got.iter().all(|seq| *seq == 2), "{got:?}");
    ack(&mut alice, 2).await;

    // Without a key: the lost answer is not retried (it was stored all the same)...
    proxy.lose_next(1);
    let out = tether_push(
        proxy.addr,
        &["--qos", "1", "--no-idempotency-key", "--data", r#"{"n":3}"#],
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("may have been stored") && stderr.contains("not retried"),
        "{stderr}"
    );
    assert_eq!(stored(server.http).await, [(1, 1), (2, 2), (3, 3)]);
    // ...and a retry by hand stores and delivers it a second time.
    let out = tether_push(
        proxy.addr,
        &["--qos", "1", "--no-idempotency-key", "--data", r#"{"n":3}"#],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        stored(server.http).await,
        [(1, 1), (2, 2), (3, 3), (4, 3)],
        "stored twice"
    );
    let mut got = received(&mut alice, &mut buf).await;
    got.dedup();
    assert_eq!(got, [3, 4], "delivered twice, as two messages");

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
