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
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("serve")
            .arg("--config")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tether serve");
        let server = Server { child, tcp, http };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + wait;
        loop {
            let url = format!("http://{http}/healthz");
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "tether serve ({}) did not come up",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
