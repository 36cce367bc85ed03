//! How tests find a Redis server and keep out of each other's keys, and how they start a Redis
//! Cluster of their own.
//!
//! Tests read the server from `TETHER_TEST_REDIS` (default `redis://127.0.0.1:6379`). Each test
//! gets a prefix of its own, so tests run in parallel against one server and never flush it.
//! When no server answers, a test is skipped with a message, except under `CI=true`, where it
//! fails: CI must not pass by skipping the cluster tests (`.ci/run` starts Redis).
//!
//! [`RedisCluster`] starts three `redis-server` masters as children of the test, on ports the
//! test chooses, so that the backends also run where keys of different slots live on different
//! servers. It needs `redis-server` and `redis-cli` on the `PATH` (the same skip rule).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Redis, RedisOptions};

/// The test server's URL.
pub fn redis_url() -> String {
    std::env::var("TETHER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Options for the test server with a fresh prefix, or `None` (after saying why on stderr) when
/// no server answers outside CI. Panics under `CI=true` when no server answers.
pub async fn options(test: &str) -> Option<RedisOptions> {
    let mut options = RedisOptions::standalone(redis_url());
    options.prefix = fresh_prefix(test);
    let url = &options.urls[0];
    let hint = "set TETHER_TEST_REDIS or start redis-server; under CI, .ci/run must start one";
    match Redis::connect(&options).await {
        Ok(mut redis) => {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut redis).await;
            match pong {
                Ok(_) => Some(options),
                Err(e) => skip(&format!("no Redis at {url} ({e})"), hint),
            }
        }
        Err(e) => skip(&format!("no Redis at {url} ({e})"), hint),
    }
}

/// Deletes every key under the prefix of `options` (a standalone server), so that a test
/// leaves the shared server as it found it.
pub async fn clear(options: &RedisOptions) -> redis::RedisResult<()> {
    let mut redis = Redis::connect(options).await?;
    let pattern = format!("{}:*", glob_escape(&options.prefix));
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(keys)
                .query_async::<()>(&mut redis)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

fn fresh_prefix(test: &str) -> String {
    format!("tether-test:{test}:{:016x}", rand::random::<u64>())
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Skips a test (`None`, with the reason on stderr), or panics under `CI=true`.
fn skip<T>(why: &str, hint: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {why}: {hint}");
    }
    eprintln!("skipped: {why}; {hint}");
    None
}

/// How long the servers and the cluster get to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Three Redis Cluster masters (no replicas) on `127.0.0.1:base_port..base_port + 3`, started
/// for one test and killed when dropped. Their files live in a temporary directory, removed on
/// drop. Each test that starts a cluster picks its own ports (the cluster bus takes each port
/// plus 10000 too).
#[derive(Debug)]
pub struct RedisCluster {
    ports: [u16; 3],
    dir: PathBuf,
    servers: Vec<Child>,
}

impl RedisCluster {
    /// Starts the servers, joins them into a cluster and waits until every one says
    /// `cluster_state:ok`. `None` when `redis-server` is not installed (outside CI). Panics
    /// when a port is taken or the cluster does not come up.
    pub async fn start(base_port: u16) -> Option<RedisCluster> {
        let started = Instant::now();
        let hint = "install redis-server (and redis-cli) to run the Redis Cluster tests";
        for tool in ["redis-server", "redis-cli"] {
            if let Err(e) = Command::new(tool).arg("--version").output() {
                return skip(&format!("cannot run {tool} ({e})"), hint);
            }
        }
        let ports = [base_port, base_port + 1, base_port + 2];
        for port in ports.into_iter().chain(ports.map(|p| p + 10_000)) {
            if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                panic!(
                    "port {port} is taken ({e}); a redis-server left by an earlier run? \
                     (`redis-cli -p {port} shutdown nosave`)"
                );
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "tether-redis-cluster-{base_port}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        // From here on, a panic drops `cluster`, which kills what was started.
        let mut cluster = RedisCluster {
            ports,
            dir,
            servers: Vec::new(),
        };
        for port in ports {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&cluster.dir)
                .arg("--logfile")
                .arg(cluster.log(port))
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            cluster.servers.push(child);
        }
        for port in ports {
            cluster.wait(port, "answer", |_| true).await;
        }

        let seeds = ports.map(|p| format!("127.0.0.1:{p}"));
        let create = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(seeds)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
        })
        .await
        .expect("the redis-cli task")
        .expect("run redis-cli");
        assert!(
            create.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&create.stdout),
            String::from_utf8_lossy(&create.stderr)
        );
        for port in ports {
            cluster
                .wait(port, "say cluster_state:ok", |info| {
                    info.contains("cluster_state:ok")
                })
                .await;
        }
        eprintln!(
            "redis cluster on ports {base_port}..={} up in {:?}",
            base_port + 2,
            started.elapsed()
        );
        Some(cluster)
    }

    /// Options for this cluster (the three masters as seeds) with a fresh prefix.
    pub fn options(&self, test: &str) -> RedisOptions {
        RedisOptions {
            urls: self.urls(),
            cluster: true,
            prefix: fresh_prefix(test),
            timeout: Duration::from_secs(2),
            tls_ca: None,
        }
    }

    /// `redis://127.0.0.1:port` of each master, for tests that talk to one server directly.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn log(&self, port: u16) -> PathBuf {
        self.dir.join(format!("redis-{port}.log"))
    }

    /// Waits until the server on `port` answers `CLUSTER INFO` with a text `ready` accepts;
    /// panics with the end of its log when it exits or takes longer than [`START_TIMEOUT`].
    async fn wait(&mut self, port: u16, what: &str, ready: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        let index = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("our port");
        loop {
            if let Ok(Some(status)) = self.servers[index].try_wait() {
                panic!(
                    "redis-server on port {port} exited ({status}):\n{}",
                    self.log_tail(port)
                );
            }
            if let Some(info) = cluster_info(port).await
                && ready(&info)
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {port} did not {what} within {START_TIMEOUT:?}:\n{}",
                    self.log_tail(port)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self, port: u16) -> String {
        let log = std::fs::read_to_string(self.log(port)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// `CLUSTER INFO` of the server on `port`, or `None` while it does not answer.
async fn cluster_info(port: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await
        .ok()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` of a test's own, on a free loopback port, keeping nothing on disk; it can
/// be stopped and started again (empty, as a server without persistence comes back). Killed
/// on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server: `redis://127.0.0.1:<port>`.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(|port| vec!["--port".into(), port.to_string()])
    }

    /// A server whose listening arguments `listen(port)` gives (e.g. `--port 0 --tls-port
    /// <port>` for TLS only); `--bind 127.0.0.1` and no persistence are added. `None` (after
    /// saying why) when `redis-server` cannot run, outside CI; a panic under `CI=true`.
    pub fn start_with(listen: impl Fn(u16) -> Vec<String>) -> Option<RedisServer> {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let mut args = listen(port);
        args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
        let mut server = RedisServer {
            port,
            args,
            child: None,
        };
        server.up().then_some(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server again after [`RedisServer::down`]; false (after saying why) when it
    /// does not come up.
    pub fn up(&mut self) -> bool {
        let hint = "install redis-server (with TLS support for the TLS tests)";
        let mut child = match Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return skip::<()>(&format!("cannot run redis-server ({e})"), hint).is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let why = format!("redis-server {:?} did not listen ({exited:?})", self.args);
                return skip::<()>(&why, hint).is_some();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        true
    }

    /// Kills the server (SIGKILL: nothing is saved).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.down();
    }
}
