//! Helpers for the tests that run real `tether serve` processes: a free port, a server process
//! started from a configuration text and killed with SIGKILL, and the binary frame reader.

// Each test binary uses a part of these.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tether_proto::{Frame, binary};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A free loopback port (the kernel's pick; released before the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// `tether serve --config path`, not started.
pub fn serve_command(path: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command.arg("serve").arg("--config").arg(path);
    command
}

/// A running `tether serve`.
pub struct Server {
    child: Child,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
}

impl Server {
    /// Writes `config` to `path`, starts `tether serve` with it, and waits (up to `wait`) until
    /// its API at `http` answers.
    pub async fn start(
        path: &Path,
        config: &str,
        tcp: SocketAddr,
        http: SocketAddr,
        wait: Duration,
    ) -> Server {
        std::fs::write(path, config).expect("write config");
        let mut command = serve_command(path);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        Server::launch(command, tcp, http, wait).await
    }

    /// Starts `command` (a `tether serve`, maybe wrapped, see [`serve_command`]) and waits (up
    /// to `wait`) until its API at `http` answers.
    pub async fn launch(
        mut command: Command,
        tcp: SocketAddr,
        http: SocketAddr,
        wait: Duration,
    ) -> Server {
        let child = command.spawn().expect("spawn tether serve");
        let mut server = Server { child, tcp, http };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + wait;
        loop {
            let url = format!("http://{http}/healthz");
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("tether serve exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "tether serve did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (a name such as `HUP`) with the shell's `kill`, present wherever `sh` is.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {}", self.child.id()))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (std's kill on Unix): no shutdown path runs.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to `addr` as `user` of app `demo` (tokens signed with `secret`), sends `connect`
/// and returns the stream with the server's first frame (`connected`, or the `disconnect` that
/// refused it), within `wait`.
pub async fn connect_device(
    addr: SocketAddr,
    secret: &str,
    user: &str,
    wait: Duration,
) -> (TcpStream, BytesMut, Frame) {
    use tether_core::{AppId, UserId, auth};
    use tether_proto::{Binding, Connect, PROTOCOL_VERSION};
    use tokio::io::AsyncWriteExt;

    let mut stream = tokio::time::timeout(wait, TcpStream::connect(addr))
        .await
        .expect("TCP connect in time")
        .expect("TCP connect");
    let token = auth::mint(
        secret.as_bytes(),
        &AppId::from("demo"),
        &UserId::from(user),
        Duration::from_secs(600),
    );
    let connect = Frame::new(
        1,
        Connect {
            version: PROTOCOL_VERSION,
            device: format!("{user}-device"),
            heartbeat_ms: 120_000,
            bindings: vec![Binding {
                app: "demo".into(),
                token,
                last_seq: None,
            }],
        },
    );
    // A refused client may be closed before its write lands: what it reads says why.
    let _ = stream.write_all(&binary::encode_to_bytes(&connect)).await;
    let mut buf = BytesMut::new();
    let frame = tokio::time::timeout(wait, read_frame(&mut stream, &mut buf))
        .await
        .unwrap_or_else(|_| panic!("{user}: no answer within {wait:?}"))
        .unwrap_or_else(|| panic!("{user}: closed without a frame"));
    (stream, buf, frame)
}

/// The next binary frame from `stream`, `None` once the server is gone.
pub async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(len) = binary::check(buf, 1 << 20).expect("a valid frame") {
            let frame: Bytes = buf.split_to(len).freeze();
            return Some(binary::parse(frame, 1 << 20).expect("a frame"));
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// What a pushing worker does when a request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop that worker (the server is expected to die).
    Stop,
    /// Fail the test (the server must stay up).
    Panic,
}

/// Pushes durable messages (`{"n": index}`) to `user` of app `demo` through `http` from
/// `in_flight` workers for `run`; returns every answered message: seq -> index. Panics if a
/// seq is answered twice.
pub async fn push_durable(
    http: SocketAddr,
    api_key: &str,
    user: &str,
    in_flight: usize,
    run: Duration,
    on_failure: OnFailure,
) -> std::collections::BTreeMap<u64, u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let client = reqwest::Client::new();
    let url = format!("http://{http}/v1/apps/demo/push");
    let answered = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let next = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + run;
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, url, answered, next) =
                (client.clone(), url.clone(), answered.clone(), next.clone());
            let (user, api_key) = (user.to_owned(), api_key.to_owned());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let body = serde_json::json!({
                        "users": [user],
                        "qos": 1,
                        "payload": {"n": n},
                    });
                    let sent = client
                        .post(&url)
                        .bearer_auth(&api_key)
                        .json(&body)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    let reply = match sent {
                        Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await,
                        Ok(r) if on_failure == OnFailure::Panic => panic!("push: {}", r.status()),
                        Err(e) if on_failure == OnFailure::Panic => panic!("push: {e}"),
                        _ => break,
                    };
                    let reply = match reply {
                        Ok(reply) => reply,
                        Err(e) if on_failure == OnFailure::Panic => panic!("push answer: {e}"),
                        Err(_) => break,
                    };
                    let seq = reply["seqs"][&user].as_u64().expect("a seq per user");
                    let first = answered.lock().unwrap().insert(seq, n);
                    assert!(first.is_none(), "seq {seq} answered twice");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("push worker");
    }
    Arc::try_unwrap(answered).unwrap().into_inner().unwrap()
}
