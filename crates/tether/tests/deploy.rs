//! What `deploy/` ships, run the way an operator runs it: the install script into a temporary
//! root (and its unit checked by `systemd-analyze` where the machine has it), and the
//! three-node cluster example with its own Redis.
//!
//! The container recipe (deploy/Containerfile, compose.cluster.yaml) is not built here: these
//! machines have no container daemon and reach no image registry.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository")
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tether")
}

fn ok(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn install(root: &Path, prefix: Option<&str>) -> Output {
    let mut command = Command::new(repo().join("deploy/install.sh"));
    command.env("DESTDIR", root).env("TETHER_BIN", bin());
    match prefix {
        Some(prefix) => command.env("PREFIX", prefix),
        None => command.env_remove("PREFIX"),
    };
    command.output().expect("run install.sh")
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn install_sh_installs_the_binary_unit_and_configuration_under_a_root() {
    let root = tempfile::tempdir().expect("temp dir");
    let r = root.path();
    ok(&install(r, None), "install.sh");

    let tether = r.join("usr/local/bin/tether");
    assert_eq!(mode(&tether), 0o755);
    let version = ok(
        &Command::new(&tether).arg("--version").output().unwrap(),
        "--version",
    );
    assert!(version.starts_with("tether "), "{version}");

    let unit_path = r.join("etc/systemd/system/tether.service");
    assert_eq!(mode(&unit_path), 0o644);
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/tether serve --config /etc/tether/tether.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=tether",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestartPreventExitStatus=78",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has no `{line}`");
    }
    assert!(
        unit.lines().any(|l| l.starts_with("LimitNOFILE=")),
        "the unit sets no LimitNOFILE"
    );
    assert!(
        unit.lines().any(|l| l == "AmbientCapabilities="),
        "no capability for ports above 1024"
    );

    let config = r.join("etc/tether/tether.toml");
    assert_eq!(mode(&config), 0o640, "the configuration holds secrets");
    let check = Command::new(&tether)
        .args(["config", "check", "--config"])
        .arg(&config)
        .env_remove("TETHER_CONFIG")
        .output()
        .unwrap();
    ok(&check, "config check of the installed configuration");
    for doc in ["running.md", "tether.example.toml"] {
        assert!(
            r.join("usr/local/share/doc/tether").join(doc).is_file(),
            "{doc}"
        );
    }

    // A second run keeps the operator's configuration.
    std::fs::write(&config, "# mine\n").unwrap();
    let again = ok(&install(r, None), "install.sh again");
    assert!(again.contains("kept the existing"), "{again}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");

    // Another prefix: the unit runs the binary from there.
    let opt = tempfile::tempdir().expect("temp dir");
    ok(
        &install(opt.path(), Some("/opt/tether")),
        "install.sh PREFIX=/opt/tether",
    );
    let unit =
        std::fs::read_to_string(opt.path().join("etc/systemd/system/tether.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/tether/bin/tether serve"),
        "{unit}"
    );
    assert!(opt.path().join("opt/tether/bin/tether").is_file());

    // A prefix that is not absolute is refused.
    let bad = install(opt.path(), Some("relative/dir"));
    assert!(!bad.status.success());

    // systemd's own reading of the unit, where the machine has systemd-analyze (not required):
    // no warning, and the hardening's exposure score is low.
    if tool("systemd-analyze") {
        let real = std::fs::read_to_string(&unit_path)
            .unwrap()
            .replace("/usr/local/bin/tether", tether.to_str().unwrap());
        let checked = r.join("tether.service");
        std::fs::write(&checked, real).unwrap();
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&checked)
            .output()
            .unwrap();
        ok(&verify, "systemd-analyze verify");
        let warnings = String::from_utf8_lossy(&verify.stderr);
        assert!(
            warnings.trim().is_empty(),
            "systemd-analyze verify: {warnings}"
        );
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=20"])
            .arg(&checked)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&security.stdout);
        let summary = text.lines().last().unwrap_or_default().to_owned();
        println!("systemd-analyze security: {summary}");
        assert!(security.status.success(), "exposure above 2.0: {summary}");
    } else {
        println!("systemd-analyze is not installed: the unit was not verified by systemd");
    }
}

/// Ports `base + 10i + {0, 1, 2}` for i in 1..=3, all free now.
fn free_base() -> u16 {
    let start = std::process::id() as u16 % 200;
    for step in 0..200u16 {
        let base = 20_000 + ((start + step) % 200) * 40;
        let all_free = (1..=3u16).all(|i| {
            (0..3u16).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + 10 * i + k)).is_ok())
        });
        if all_free {
            return base;
        }
    }
    panic!("no free range of ports")
}

/// Stops the example's nodes and Redis, also when an assertion failed.
struct Stop<'a>(&'a Path, u16, u16);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = example(self.0, self.1, self.2, "stop").output();
    }
}

fn example(dir: &Path, base: u16, redis: u16, what: &str) -> Command {
    let mut command = Command::new(repo().join("deploy/cluster-example.sh"));
    command
        .arg(what)
        .env("CLUSTER_DIR", dir)
        .env("BASE_PORT", base.to_string())
        .env("REDIS_PORT", redis.to_string())
        .env("TETHER_BIN", bin())
        .env_remove("TETHER_CONFIG")
        .current_dir(dir);
    command
}

#[test]
fn the_cluster_example_runs_three_nodes_that_deliver_across_nodes() {
    for needed in ["redis-server", "redis-cli", "curl"] {
        if !tool(needed) {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "{needed} is missing"
            );
            println!("{needed} is not installed: the cluster example was not run");
            return;
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let (base, redis) = (free_base(), common::free_port());
    let _stop = Stop(d, base, redis);
    let started = ok(&example(d, base, redis, "start").output().unwrap(), "start");
    assert!(
        started.contains("Redis: started"),
        "its own Redis: {started}"
    );
    for i in 1..=3 {
        assert!(started.contains(&format!("node-{i}: tcp://")), "{started}");
    }
    let config = d.join("tether.toml");
    let http = |i: u16| format!("http://127.0.0.1:{}", base + 10 * i + 2);
    let tether = || {
        let mut c = Command::new(bin());
        c.env("TETHER_CONFIG", &config).current_dir(d);
        c
    };

    // A client on node 1, a durable push through node 3.
    let token = ok(
        &tether()
            .args(["token", "--app", "demo", "--user", "alice"])
            .output()
            .unwrap(),
        "token",
    );
    let mut listen = tether()
        .args([
            "listen", "--app", "demo", "--user", "alice", "--count", "1", "--url",
        ])
        .arg(format!("tcp://127.0.0.1:{}", base + 10))
        .args(["--token", token.trim()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("listen");
    let deadline = Instant::now() + WAIT;
    loop {
        let presence = ok(
            &tether()
                .args(["presence", "--app", "demo", "--user", "alice", "--url"])
                .arg(http(2))
                .output()
                .unwrap(),
            "presence",
        );
        if presence.contains("\"online\":true") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice never came online: {presence}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pushed = ok(
        &tether()
            .args([
                "push",
                "--app",
                "demo",
                "--user",
                "alice",
                "--qos",
                "1",
                "--data",
                "{\"across\":true}",
                "--url",
            ])
            .arg(http(3))
            .output()
            .unwrap(),
        "push through node 3",
    );
    assert!(pushed.contains("\"connections\":1"), "{pushed}");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = listen.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = listen.kill();
            panic!("the push did not arrive on node 1");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut line = String::new();
    std::io::Read::read_to_string(&mut listen.stdout.take().unwrap(), &mut line).unwrap();
    assert!(line.contains("\"across\":true"), "{line}");

    let stats = ok(
        &tether()
            .arg("stats")
            .arg("--url")
            .arg(http(1))
            .output()
            .unwrap(),
        "stats",
    );
    assert!(stats.contains("\"node\":\"node-1\""), "{stats}");

    let stopped = ok(&example(d, base, redis, "stop").output().unwrap(), "stop");
    assert!(stopped.contains("Redis: stopped"), "{stopped}");
    for i in 1..=3 {
        assert!(!d.join(format!("node-{i}.pid")).exists());
        let url = format!("{}/healthz", http(i));
        let gone = Command::new("curl")
            .args(["-fsS", "--max-time", "2", &url])
            .output()
            .unwrap();
        assert!(!gone.status.success(), "node-{i} still answers");
    }
}
