//! The open-file limit: a real `tether serve` started under `prlimit --nofile=512:512` says at
//! start what its limits are and sizes `max_connections` to them; 700 clients connect, the
//! ones past the limit are refused with 4102 (`connection_limit`), and the HTTP API (health,
//! readiness, a durable push) keeps answering while the gateway is full and more clients keep
//! trying. Then the API's own listener is run out of descriptors: it must not spin, and must
//! answer again once they are back.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Server, connect_device, free_addr, read_frame};
use tether_proto::{Body, Code, Frame};
use tokio::net::TcpStream;

const SECRET: &str = "fd-secret-0123456789";
const API_KEY: &str = "fd-api-key-0123456789";
/// The server's open-file limit, soft and hard.
const NOFILE: u64 = 512;
/// What the node keeps out of the gateway's reach by default at that limit: max(64, 5%).
const RESERVE: u64 = 64;
const CLIENTS: usize = 700;
/// Upper bound of any single wait.
const WAIT: Duration = Duration::from_secs(10);
/// How long an API request may take while the gateway is full.
const API_WITHIN: Duration = Duration::from_secs(2);

/// `prlimit`, or `None` outside CI when it is missing (under `CI=true` the test fails instead).
fn prlimit() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prlimit"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prlimit (util-linux) is needed for this test under CI"
        );
        eprintln!("prlimit (util-linux) not found: skipping");
    }
    found
}

struct Node {
    server: Server,
    log: PathBuf,
}

/// `tether serve` with its open-file limit at `NOFILE`, logging to a file.
async fn serve(prlimit: &Path, dir: &Path) -> Node {
    let (tcp, http) = (free_addr(), free_addr());
    let config = format!(
        r#"
[node]
id = "fd"
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
    let path = dir.join("tether.toml");
    std::fs::write(&path, config).expect("write config");
    let log = dir.join("serve.log");
    let mut command = Command::new(prlimit);
    command
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(env!("CARGO_BIN_EXE_tether"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("TETHER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let server = Server::launch(command, tcp, http, WAIT).await;
    Node { server, log }
}

/// Connects as `user` and returns the stream with the server's first frame.
async fn connect(addr: SocketAddr, user: &str) -> (TcpStream, BytesMut, Frame) {
    connect_device(addr, SECRET, user, WAIT).await
}

/// A GET on a new connection (so that it needs a descriptor of the server's), bounded.
async fn get(http: SocketAddr, path: &str) -> (u16, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .get(format!("http://{http}{path}"))
        .timeout(API_WITHIN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} did not answer within {API_WITHIN:?}: {e}"));
    (response.status().as_u16(), started.elapsed())
}

/// A durable push to `user` on a new connection, bounded; returns its seq.
async fn push(http: SocketAddr, user: &str, n: u64) -> (u64, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .post(format!("http://{http}/v1/apps/demo/push"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"users": [user], "qos": 1, "payload": {"n": n}}))
        .timeout(API_WITHIN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("push did not answer within {API_WITHIN:?}: {e}"));
    assert_eq!(
        response.status(),
        200,
        "push answered {}",
        response.status()
    );
    let answer: serde_json::Value = response.json().await.unwrap();
    let seq = answer["seqs"][user].as_u64().expect("a seq");
    (seq, started.elapsed())
}

/// CPU seconds (user + system) the process `pid` used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

async fn metrics(http: SocketAddr) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap()
}

fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_refuses_clients_with_4102_and_the_api_keeps_answering() {
    let Some(prlimit) = prlimit() else { return };
    let dir = std::env::temp_dir().join(format!("tether-fd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let node = serve(&prlimit, &dir).await;
    let (tcp, http) = (node.server.tcp, node.server.http);
    let fits = (NOFILE - RESERVE) as usize;

    // It says at start what the limits are and what max_connections was sized to.
    let log = std::fs::read_to_string(&node.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("open-file limit"))
        .unwrap_or_else(|| panic!("no open-file limit line in the log:\n{log}"));
    for field in [
        format!("limit={NOFILE}"),
        format!("hard={NOFILE}"),
        format!("reserve={RESERVE}"),
        format!("max_connections={fits}"),
    ] {
        assert!(line.contains(&field), "{field} missing from: {line}");
    }
    assert!(
        log.contains(&format!(
            "limits.max_connections sized to the open-file limit ({NOFILE})"
        )),
        "the default max_connections was lowered without saying so:\n{log}"
    );

    // 700 clients: the first `fits` get in, every other one is refused with 4102.
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..CLIENTS {
        let (stream, buf, frame) = connect(tcp, &format!("u{i}")).await;
        match frame.body {
            Body::Connected(_) => held.push((stream, buf)),
            Body::Disconnect(d) => {
                assert_eq!(d.code, Code::CONNECTION_LIMIT, "refused with {d:?}");
                refused += 1;
            }
            other => panic!("client {i}: unexpected {other:?}"),
        }
    }
    eprintln!(
        "{} connected, {refused} refused with 4102 in {:?}",
        held.len(),
        started.elapsed()
    );
    assert_eq!(held.len(), fits, "connections admitted");
    assert_eq!(refused, CLIENTS - fits);

    // While it is full and more clients keep knocking, the API answers, on new connections.
    let knocking = tokio::spawn(async move {
        let mut refused = 0;
        for i in 0..300 {
            let (_, _, frame) = connect(tcp, &format!("late{i}")).await;
            match frame.body {
                Body::Disconnect(d) if d.code == Code::CONNECTION_LIMIT => refused += 1,
                other => panic!("a late client got {other:?}"),
            }
        }
        refused
    });
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        for path in ["/healthz", "/readyz"] {
            let (status, took) = get(http, path).await;
            assert_eq!(status, 200, "{path} answered {status}");
            slowest = slowest.max(took);
        }
        let (seq, took) = push(http, "u0", round).await;
        slowest = slowest.max(took);
        // The push reaches u0, on one of the admitted connections.
        let (stream, buf) = &mut held[0];
        let frame = tokio::time::timeout(WAIT, read_frame(stream, buf))
            .await
            .expect("the push arrives in time")
            .expect("u0 is still connected");
        match frame.body {
            Body::Push(p) => assert_eq!(p.seq, seq),
            other => panic!("u0 got {other:?}"),
        }
    }
    let late_refused = tokio::time::timeout(WAIT * 3, knocking)
        .await
        .expect("late clients answered in time")
        .unwrap();
    assert_eq!(late_refused, 300);
    eprintln!("API while the gateway was full: slowest answer {slowest:?}");

    let page = metrics(http).await;
    assert_eq!(metric(&page, "tether_open_files_limit"), NOFILE as f64);
    assert_eq!(metric(&page, "tether_max_connections"), fits as f64);
    assert!(metric(&page, "tether_rejected_connections_total") >= (CLIENTS - fits + 300) as f64);

    // A slot comes back when a client leaves.
    held.truncate(fits - 10);
    let deadline = Instant::now() + WAIT;
    loop {
        let (stream, _, frame) = connect(tcp, "again").await;
        if matches!(frame.body, Body::Connected(_)) {
            drop(stream);
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Now the API's own listener: idle connections to it take every descriptor left, so
    // that its accept fails with EMFILE. It must back off rather than spin...
    let mut idle = Vec::new();
    for _ in 0..(RESERVE as usize * 2) {
        idle.push(TcpStream::connect(http).await.expect("connect to the API"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = node.server.pid();
    let before = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = (cpu_seconds(pid) - before.0) / before.1.elapsed().as_secs_f64();
    eprintln!(
        "CPU while the API's accept fails: {:.0}% of a core",
        cpu * 100.0
    );
    assert!(
        cpu < 0.3,
        "the node spins while out of descriptors: {cpu:.2} of a core"
    );
    // ...and answer again once descriptors are back.
    drop(idle);
    let back = Instant::now();
    let (status, _) = get(http, "/healthz").await;
    assert_eq!(status, 200);
    eprintln!(
        "API answered {:?} after the descriptors came back",
        back.elapsed()
    );
    let page = metrics(http).await;
    let failed = page
        .lines()
        .find(|l| l.starts_with("tether_accept_errors_total{listener=\"http\"}"))
        .unwrap_or_else(|| panic!("the API's failed accepts were not counted:\n{page}"));
    eprintln!("{failed}");
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("accept failed"),
        "no warning of the failed accepts:\n{log}"
    );

    drop(held);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
