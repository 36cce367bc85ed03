//! A full disk, on a real `tether serve` whose data directory is on a 24 MiB tmpfs that this
//! test mounts (as root; CI runs as root, so there a failed mount fails the test, and
//! elsewhere it is skipped with the reason printed).
//!
//! 1. qos 1 pushes of 4 KB until the store's reserve (`store.min_free_bytes`) refuses them
//!    with 507 `storage_full`, before the filesystem is full; `/readyz` answers 503 and says
//!    why; the free space is in `/metrics` and `/v1/admin/stats`.
//! 2. A filler file written beside the data directory is deleted: the node takes pushes again.
//! 3. The filesystem is filled to the last byte behind the node's back (within one of its
//!    samples of the free space), so that the store meets ENOSPC and fjall fails: pushes get
//!    503 with no engine text, `/readyz` says the store failed, `/healthz` stays 200.
//! 4. The filler is deleted: the store reopens in place, and the node serves again.
//! 5. Every push answered 200 is in the inbox, after the recovery and after a restart.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_addr;
use serde_json::{Value, json};

const API_KEY: &str = "full-disk-api-key-0123456789";
const ADMIN_KEY: &str = "full-disk-admin-key-0123456789";
const USER: &str = "filler";
/// The store's reserve in this test.
const RESERVE: u64 = 4 << 20;
/// The filesystem: small, so that it fills in seconds.
const FS_SIZE: &str = "24m";
/// Upper bound of any wait.
const WAIT: Duration = Duration::from_secs(20);

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it, or says why not.
    fn mount() -> Result<Tmpfs, String> {
        let dir = std::env::temp_dir().join(format!("tether-full-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_SIZE}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A `tether serve` whose log goes to a file.
struct Node {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
}

impl Node {
    async fn start(config: &Path, log: &Path, http: SocketAddr) -> Node {
        let log_file = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn tether serve");
        let node = Node {
            child,
            http,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + WAIT;
        while get(http, "/healthz").await.map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "tether serve did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Status and body of a GET (with the admin key), `None` when nothing answers.
async fn get(http: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = client()
        .get(format!("http://{http}{path}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// One qos 1 push of about 4 KB carrying `n`: status, and the body as JSON.
async fn push(http: SocketAddr, n: u64) -> (u16, Value) {
    let body = json!({
        "users": [USER],
        "qos": 1,
        "payload": {"n": n, "pad": "x".repeat(4000)},
    });
    let r = client()
        .post(format!("http://{http}/v1/apps/demo/push"))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("the API answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Pushes 8 at a time until one is refused; records seq -> n of every push answered 200.
/// Returns the refusals' (status, body) of the last round.
async fn push_until_refused(
    http: SocketAddr,
    next: &mut u64,
    acked: &mut BTreeMap<u64, u64>,
) -> Vec<(u16, Value)> {
    let deadline = Instant::now() + WAIT * 3;
    loop {
        assert!(Instant::now() < deadline, "pushes were never refused");
        let round: Vec<u64> = (*next..*next + 8).collect();
        *next += 8;
        let tasks: Vec<_> = round
            .iter()
            .map(|&n| tokio::spawn(async move { (n, push(http, n).await) }))
            .collect();
        let mut refused = Vec::new();
        for task in tasks {
            let (n, (status, body)) = task.await.expect("push task");
            if status == 200 {
                let seq = body["seqs"][USER].as_u64().expect("a seq");
                assert!(acked.insert(seq, n).is_none(), "seq {seq} answered twice");
            } else {
                refused.push((status, body));
            }
        }
        if !refused.is_empty() {
            return refused;
        }
    }
}

/// Waits until `/readyz` answers `status`; returns how long it took and its body.
async fn readyz_becomes(http: SocketAddr, status: u16) -> (Duration, String) {
    let began = Instant::now();
    loop {
        if let Some((s, body)) = get(http, "/readyz").await
            && s == status
        {
            return (began.elapsed(), body);
        }
        assert!(began.elapsed() < WAIT, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `path` until the filesystem is full (or `max` bytes); returns the bytes written.
fn fill(path: &Path, max: u64) -> u64 {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0xa5u8; 64 << 10];
    let mut written = 0;
    while written < max {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filler: {e}"),
        }
    }
    let _ = file.sync_all();
    written
}

/// Reads the whole inbox through the API: seq -> n.
async fn inbox(http: SocketAddr) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/apps/demo/users/{USER}/messages?after={after}&limit=1000");
        let r = client()
            .get(format!("http://{http}{path}"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("read the inbox");
        assert_eq!(r.status().as_u16(), 200, "reading the inbox");
        let page: Value = r.json().await.unwrap();
        let messages = page["messages"].as_array().unwrap();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            let seq = m["seq"].as_u64().unwrap();
            out.insert(seq, m["payload"]["n"].as_u64().unwrap());
        }
        after = page["next_after"].as_u64().unwrap();
    }
}

fn assert_all_there(acked: &BTreeMap<u64, u64>, stored: &BTreeMap<u64, u64>, when: &str) {
    let missing: Vec<_> = acked
        .iter()
        .filter(|(seq, n)| stored.get(seq) != Some(n))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{when}: {} answered pushes not in the inbox as answered, e.g. {missing:?}",
        acked.len()
            - acked
                .iter()
                .filter(|(s, n)| stored.get(s) == Some(n))
                .count()
    );
}

/// No engine text in an answer.
fn assert_generic(body: &Value) {
    let text = body.to_string();
    for word in ["Fjall", "fjall", "Io(", "Poisoned", "os error", "No space"] {
        assert!(!text.contains(word), "engine text in an answer: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_at_the_reserve_and_the_store_recovers_when_space_is_back() {
    let fs = match Tmpfs::mount() {
        Ok(fs) => fs,
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and this test cannot mount its tmpfs: {reason}")
        }
        Err(reason) => {
            eprintln!("SKIPPED: a full disk needs a tmpfs mount (root): {reason}");
            return;
        }
    };
    let data = fs.0.join("data");
    let filler = fs.0.join("filler");
    // The configuration and the log live off the small filesystem.
    let outside = std::env::temp_dir().join(format!("tether-full-disk-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap();
    let (config_path, log) = (outside.join("tether.toml"), outside.join("tether.log"));
    let (tcp, http) = (free_addr(), free_addr());
    std::fs::write(
        &config_path,
        format!(
            r#"
[node]
id = "full-disk"
data_dir = "{data}"
[listen]
tcp = "{tcp}"
ws = ""
http = "{http}"
mqtt = ""
[store]
backend = "embedded"
inbox_cap = 1000000
min_free_bytes = {RESERVE}
[admin]
key = "{ADMIN_KEY}"
[[apps]]
id = "demo"
secret = "full-disk-secret-0123456789"
api_key = "{API_KEY}"
"#,
            data = data.display()
        ),
    )
    .unwrap();
    // Room to give back in step 2.
    assert_eq!(fill(&filler, 6 << 20), 6 << 20);
    let node = Node::start(&config_path, &log, http).await;
    let mut acked = BTreeMap::new();
    let mut next = 0;

    // 1. The reserve refuses before the disk is full. A flush of the store may give space
    //    back (its journal goes once its memtable is in a table): then it takes pushes again,
    //    until the free space stays at the reserve.
    let began = Instant::now();
    loop {
        let refused = push_until_refused(http, &mut next, &mut acked).await;
        let (status, body) = &refused[0];
        assert_eq!(
            (*status, body["code"].as_str()),
            (507, Some("storage_full")),
            "every refusal is the reserve's, none the disk's: {body}"
        );
        assert!(
            refused.iter().all(|(s, _)| *s == 507),
            "refused by the reserve only: {refused:?}"
        );
        assert_generic(body);
        // Within a sample of the free space (every second), the node says it is not ready.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        if get(http, "/readyz").await.map(|r| r.0) == Some(503) {
            break;
        }
        assert!(began.elapsed() < WAIT * 3, "never stayed at the reserve");
    }
    println!(
        "step 1: {} pushes of 4 KB stored in {:?}, then 507 storage_full",
        acked.len(),
        began.elapsed()
    );
    let (_, reason) = readyz_becomes(http, 503).await;
    assert!(
        reason.contains("min_free_bytes"),
        "readyz says why: {reason}"
    );
    assert_eq!(get(http, "/healthz").await.map(|r| r.0), Some(200));
    let (_, stats) = get(http, "/v1/admin/stats").await.unwrap();
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let free = stats["store"]["free_bytes"].as_u64().expect("free_bytes");
    // Not ready from 1 MiB above the reserve on.
    assert!(free < RESERVE + (1 << 20), "stats: {}", stats["store"]);
    assert_eq!(stats["store"]["accepts_messages"], false);
    assert_eq!(stats["ready"], false);
    let (_, metrics) = get(http, "/metrics").await.unwrap();
    assert!(
        metrics.contains("tether_store_free_bytes ")
            && metrics.contains("tether_store_full_refusals_total "),
        "metrics of the free space and the refusals"
    );

    // 2. Space back: the node takes pushes again within a sample of the free space.
    std::fs::remove_file(&filler).unwrap();
    let (ready_after, _) = readyz_becomes(http, 200).await;
    let (status, body) = push(http, next).await;
    assert_eq!(status, 200, "{body}");
    acked.insert(body["seqs"][USER].as_u64().unwrap(), next);
    next += 1;
    println!("step 2: space freed; ready again after {ready_after:?}");

    // 3. The disk fills behind the node's back, between two of its samples: the store meets
    //    ENOSPC. The sample may land between the fill and the push; then try again.
    let mut failed = None;
    for _ in 0..10 {
        fill(&filler, u64::MAX);
        let (status, body) = push(http, next).await;
        next += 1;
        match status {
            200 => {
                acked.insert(body["seqs"][USER].as_u64().unwrap(), next - 1);
            }
            503 => {
                failed = Some(body);
                break;
            }
            507 => {}
            other => panic!("push on a full disk: {other} {body}"),
        }
        std::fs::remove_file(&filler).unwrap();
        readyz_becomes(http, 200).await;
    }
    let body = failed.expect("the store met a full disk at least once in 10 tries");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_generic(&body);
    let (_, reason) = readyz_becomes(http, 503).await;
    assert!(reason.contains("store: a write failed"), "readyz: {reason}");
    assert_eq!(get(http, "/healthz").await.map(|r| r.0), Some(200));
    let (status, body) = push(http, next).await;
    assert!(matches!(status, 503 | 507), "{status} {body}");
    assert_generic(&body);
    assert!(
        node.log().contains("store: the database failed"),
        "the log tells what happened:\n{}",
        node.log()
    );
    println!("step 3: the store failed on ENOSPC; pushes get {status} {body}");

    // 4. Space back: the store reopens in place.
    let freed = Instant::now();
    std::fs::remove_file(&filler).unwrap();
    let (ready_after, _) = readyz_becomes(http, 200).await;
    let (status, body) = push(http, next).await;
    let serving_after = freed.elapsed();
    assert_eq!(status, 200, "{body}");
    acked.insert(body["seqs"][USER].as_u64().unwrap(), next);
    assert!(node.log().contains("store: reopened"), "{}", node.log());
    for line in node.log().lines().filter(|l| l.contains("tether_server")) {
        println!("  log: {line}");
    }
    println!(
        "step 4: reopened; ready after {ready_after:?}, first push stored after {serving_after:?}"
    );

    // 5. Nothing answered is lost: after the recovery, and after a restart.
    let stored = inbox(http).await;
    assert_all_there(&acked, &stored, "after the recovery");
    drop(node);
    let node = Node::start(&config_path, &log, http).await;
    readyz_becomes(http, 200).await;
    let stored = inbox(node.http).await;
    assert_all_there(&acked, &stored, "after a restart");
    println!(
        "step 5: all {} answered pushes read back after the recovery and after a restart",
        acked.len()
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&outside);
}
