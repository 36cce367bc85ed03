//! The command line as an operator uses it: `serve`'s printed hints pasted into a shell in
//! another directory, the API commands pointed at a node by its configuration file, `token`
//! where there is no node's data, and `serve`'s logs written to a pipe.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use tether_proto::Body;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "cli-secret-0123456789";
const API_KEY: &str = "cli-api-key-0123456789";
const ADMIN_KEY: &str = "cli-admin-key-0123456789";

fn tether() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether"))
}

/// Lines of `reader`, read on a thread, so that a pipe never fills while the test waits.
fn lines(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines from `rx` until one satisfies `done` (included), within `wait`.
fn until(rx: &mpsc::Receiver<String>, wait: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let last = done(&line);
                seen.push(line);
                if last {
                    return seen;
                }
            }
            Err(e) => panic!("{e} waiting; lines so far: {seen:#?}"),
        }
    }
}

/// Kills the child when dropped (a failed assertion must not leave a server running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sh -c line` in `dir`, with this build's `tether` first on the PATH, as a user who pasted
/// `line` would run it.
fn shell(line: &str, dir: &Path) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_tether"))
        .parent()
        .expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("TETHER_CONFIG");
    command
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

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `tether serve` with no configuration file in `dir`, every listener on port 0 through the
/// environment: the demo app, as a first run would have it.
fn serve_demo(
    dir: &Path,
    extra: &[&str],
) -> (Killed, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    serve_demo_with(dir, extra, &[])
}

/// [`serve_demo`] with the variables `env` set.
fn serve_demo_with(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Killed, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut command = tether();
    command
        .arg("serve")
        .args(extra)
        .current_dir(dir)
        .env_remove("TETHER_CONFIG")
        .env_remove("TETHER_LOG")
        .env_remove("TETHER_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env("TETHER_LISTEN__TCP", "127.0.0.1:0")
        .env("TETHER_LISTEN__WS", "127.0.0.1:0")
        .env("TETHER_LISTEN__HTTP", "127.0.0.1:0")
        .env("TETHER_LISTEN__MQTT", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn tether serve");
    let stdout = lines(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    (Killed(child), stdout, stderr)
}

#[test]
fn the_hints_serve_prints_work_when_pasted_in_another_directory() {
    let home = tempfile::tempdir().expect("temp dir");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let (_server, stdout, _stderr) = serve_demo(home.path(), &[]);
    let printed = until(&stdout, WAIT, |l| l.trim_start().starts_with("curl "));
    let hint = |start: &str| {
        printed
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no `{start}` hint in {printed:#?}"))
            .to_owned()
    };
    let (listen, push, curl) = (hint("tether listen "), hint("tether push "), hint("curl "));
    assert!(
        !listen.contains(":0 ") && !push.contains(":0 "),
        "real ports, not 0: {printed:#?}"
    );

    // The listener, as pasted (plus a count, so that it ends): it mints its token with
    // `tether token` in a directory with no node's data.
    let mut listener = shell(&format!("{listen} --count 2"), elsewhere.path());
    listener.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut listener = Killed(listener.spawn().expect("spawn the listen hint"));
    let received = lines(listener.0.stdout.take().expect("stdout"));
    let notices = lines(listener.0.stderr.take().expect("stderr"));
    until(&notices, WAIT, |l| l.starts_with("connected to node"));

    let answer = ok(
        &shell(&push, elsewhere.path()).output().unwrap(),
        "push hint",
    );
    assert_eq!(json(&answer)["connections"], 1, "{answer}");
    let line = until(&received, WAIT, |_| true).remove(0);
    assert_eq!(json(&line)["payload"]["hello"], "world", "{line}");

    if which("curl") {
        let answer = ok(
            &shell(&curl, elsewhere.path()).output().unwrap(),
            "curl hint",
        );
        assert_eq!(json(&answer)["connections"], 1, "{answer}");
    } else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "curl is missing"
        );
        // Without curl, the second message comes from `tether push` again.
        ok(
            &shell(&push, elsewhere.path()).output().unwrap(),
            "push hint",
        );
    }
    until(&received, WAIT, |_| true);
    let status = wait_child(&mut listener.0, WAIT);
    assert!(status.success(), "listen --count 2 ended with {status}");
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none(),
        "nothing was created in the other directory"
    );
}

#[test]
fn token_without_the_node_s_data_is_a_clear_error_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = shell("tether token --app demo --user alice", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("no demo app") && stderr.contains("--config"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no demo app was generated"
    );
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_child(child: &mut Child, wait: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config(tcp: std::net::SocketAddr, http: std::net::SocketAddr) -> String {
    format!(
        r#"
[listen]
tcp = "{tcp}"
ws = ""
http = "{http}"
# Off: the default port (7483) is taken whenever another node runs on the machine.
mqtt = ""

[store]
backend = "memory"

[admin]
key = "{ADMIN_KEY}"

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"

[[apps.topics]]
pattern = "*"
allow = "open"
"#
    )
}

/// `tether ARGS` run from `dir` with `TETHER_CONFIG` = `config` (or `--config` given in ARGS).
fn run_in(dir: &Path, config: Option<&Path>, args: &[&str]) -> Output {
    let mut command = tether();
    command
        .args(args)
        .current_dir(dir)
        .env_remove("TETHER_CONFIG");
    command
        .env_remove("TETHER_API_KEY")
        .env_remove("TETHER_ADMIN_KEY");
    if let Some(config) = config {
        command.env("TETHER_CONFIG", config);
    }
    command.output().expect("run tether")
}

#[tokio::test]
async fn the_api_commands_find_the_node_and_its_keys_from_its_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tether.toml");
    let (tcp, http) = (free_addr(), free_addr());
    let _server = Server::start(&path, &config(tcp, http), tcp, http, WAIT).await;
    let cfg = path.to_str().expect("UTF-8 path");
    let here = elsewhere.path();

    // A token minted with --config connects.
    let out = run_in(
        here,
        None,
        &["token", "--config", cfg, "--app", "demo", "--user", "bob"],
    );
    let token = ok(&out, "token").trim().to_owned();
    let claims = token.split('.').nth(1).expect("a JWT");
    assert!(!claims.is_empty());

    let (_alice, _buf, connected) = connect_device(tcp, SECRET, "alice", WAIT).await;
    assert!(
        matches!(connected.body, Body::Connected(_)),
        "{connected:?}"
    );

    let c = Some(path.as_path());
    let pushed = ok(
        &run_in(
            here,
            c,
            &[
                "push",
                "--app",
                "demo",
                "--user",
                "alice",
                "--qos",
                "1",
                "--data",
                "{\"n\":1}",
            ],
        ),
        "push",
    );
    assert_eq!(json(&pushed)["seqs"]["alice"], 1, "{pushed}");
    ok(
        &run_in(
            here,
            c,
            &[
                "push",
                "--app",
                "demo",
                "--user",
                "alice",
                "--qos",
                "1",
                "--data",
                "{\"n\":2}",
            ],
        ),
        "push",
    );

    let published = ok(
        &run_in(
            here,
            c,
            &[
                "publish", "--app", "demo", "--topic", "news", "--qos", "1", "--ttl", "1h",
                "--data", "\"hi\"",
            ],
        ),
        "publish",
    );
    assert_eq!(json(&published)["offset"], 1, "{published}");
    let live = run_in(
        here,
        c,
        &[
            "publish", "--app", "demo", "--topic", "news", "--ttl", "1h", "--data", "1",
        ],
    );
    assert!(!live.status.success(), "--ttl without --qos 1 is refused");

    let broadcast = ok(
        &run_in(
            here,
            c,
            &[
                "broadcast",
                "--app",
                "demo",
                "--base64",
                "--data",
                "raw bytes",
            ],
        ),
        "broadcast",
    );
    assert_eq!(json(&broadcast)["connections"], 1, "{broadcast}");

    let presence = json(&ok(
        &run_in(here, c, &["presence", "--app", "demo", "--user", "alice"]),
        "presence",
    ));
    assert_eq!(presence["online"], true, "{presence}");
    assert_eq!(presence["connections"].as_array().map(Vec::len), Some(1));

    let history = json(&ok(
        &run_in(
            here,
            c,
            &[
                "history", "--app", "demo", "--user", "alice", "--limit", "1",
            ],
        ),
        "history",
    ));
    assert_eq!(history["head"], 2, "{history}");
    let messages = history["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "the last one: {history}");
    assert_eq!(
        (messages[0]["seq"].as_u64(), &messages[0]["payload"]["n"]),
        (Some(2), &serde_json::json!(2))
    );
    let all = json(&ok(
        &run_in(
            here,
            c,
            &[
                "history", "--app", "demo", "--user", "alice", "--after", "0",
            ],
        ),
        "history --after",
    ));
    assert_eq!(all["messages"].as_array().map(Vec::len), Some(2), "{all}");

    let stats = json(&ok(&run_in(here, c, &["stats"]), "stats"));
    assert!(
        stats.is_object() && !stats.as_object().unwrap().is_empty(),
        "{stats}"
    );

    // Another device than alice's: her connection stays.
    let other = [
        "kick", "--app", "demo", "--user", "alice", "--device", "not/hers",
    ];
    let kicked = json(&ok(&run_in(here, c, &other), "kick --device"));
    assert_eq!(kicked["kicked"], 0, "{kicked}");
    let kicked = json(&ok(
        &run_in(here, c, &["kick", "--app", "demo", "--user", "alice"]),
        "kick",
    ));
    assert_eq!(kicked["kicked"], 1, "{kicked}");

    // Given on the command line, the URL and key need no configuration at all.
    let url = format!("http://{http}");
    let explicit = run_in(
        here,
        None,
        &[
            "presence",
            "--url",
            &url,
            "--api-key",
            API_KEY,
            "--app",
            "demo",
            "--user",
            "alice",
        ],
    );
    ok(&explicit, "presence with --url and --api-key");
    // A wrong key is the API's answer, on stderr, and a failure.
    let wrong = run_in(
        here,
        None,
        &[
            "presence",
            "--url",
            &url,
            "--api-key",
            "nope",
            "--app",
            "demo",
            "--user",
            "alice",
        ],
    );
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("unauthorized"),
        "{stderr}"
    );
    // An app the configuration does not have is named.
    let unknown = run_in(here, c, &["kick", "--app", "other", "--user", "alice"]);
    assert_eq!(unknown.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("\"other\" is not configured"), "{stderr}");
}

/// What `serve` writes to a pipe in the first second: no colour codes, no storage engine
/// chatter at INFO, our own start line.
#[test]
fn serve_logs_to_a_pipe_have_no_colours_and_no_storage_chatter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, _stdout, stderr) = serve_demo(dir.path(), &[]);
    let logs = until(&stderr, WAIT, |l| l.contains("tether node started"));
    let text = logs.join("\n");
    assert!(!text.contains('\u{1b}'), "ANSI codes in a pipe: {text}");
    for engine in ["fjall", "lsm_tree"] {
        assert!(
            !logs
                .iter()
                .any(|l| l.contains(" INFO ") && l.contains(engine)),
            "{engine} INFO lines: {text}"
        );
    }
}

#[tokio::test]
async fn serve_json_logs_are_json_lines_with_plain_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, _stdout, stderr) = serve_demo(dir.path(), &["--log-format", "json"]);
    let logs = until(&stderr, WAIT, |l| l.contains("tether node started"));
    let parsed: Vec<serde_json::Value> = logs.iter().map(|l| json(l)).collect();
    let started = parsed.last().expect("the start line");
    assert_eq!(started["level"], "INFO");
    let tcp = started["tcp"].as_str().expect("tcp, a string");
    assert!(
        tcp.starts_with("127.0.0.1:") && tcp.parse::<std::net::SocketAddr>().is_ok(),
        "{started}"
    );
    assert!(
        started.get("tls").is_none(),
        "no field for a listener that is off: {started}"
    );
    for line in &logs {
        assert!(
            !line.contains("Some(") && !line.contains("log.file"),
            "{line}"
        );
        assert!(
            !line.contains("/.cargo/") && !line.contains("/src/"),
            "a build path: {line}"
        );
    }
    assert!(!parsed.iter().any(|l| {
        l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("fjall") || t.starts_with("lsm_tree"))
            && l["level"] == "INFO"
    }));
    // A refused token is logged at INFO, with its code.
    let tcp: std::net::SocketAddr = tcp.parse().unwrap();
    let (_client, _buf, refused) =
        connect_device(tcp, "not-the-secret-0123456789", "alice", WAIT).await;
    assert!(matches!(refused.body, Body::Disconnect(_)), "{refused:?}");
    let line = until(&stderr, WAIT, |l| l.contains("handshake refused"));
    let refusal = json(line.last().unwrap());
    assert_eq!(
        (refusal["level"].as_str(), refusal["code"].as_str()),
        (Some("INFO"), Some("bad_token")),
        "{refusal}"
    );
    // SIGTERM: the shutdown's lines are JSON too, down to the last.
    let status = Command::new("kill")
        .arg(server.0.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let tail = until(&stderr, WAIT, |l| l.contains("tether node stopped"));
    for line in &tail {
        json(line);
    }
    assert!(wait_child(&mut server.0, WAIT).success());
}

/// `[log]` in the configuration file chooses JSON lines and the filter; `TETHER_LOG_FORMAT`
/// and `TETHER_LOG` still win over it.
#[test]
fn serve_takes_its_log_format_and_filter_from_the_configuration_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tether.toml");
    std::fs::write(
        &path,
        "[log]\nformat = \"json\"\nfilter = \"warn,tether_server::node=info\"\n",
    )
    .expect("write the configuration");
    let config = path.to_str().expect("UTF-8 path");

    let (server, _stdout, stderr) = serve_demo(dir.path(), &["--config", config]);
    let logs = until(&stderr, WAIT, |l| l.contains("tether node started"));
    for line in &logs {
        let line = json(line);
        let target = line["target"].as_str().unwrap_or_default();
        assert!(
            line["level"] != "INFO" || target == "tether_server::node",
            "an INFO line the filter leaves out: {line}"
        );
    }
    // Stopped (and waited for) before the next run takes its data directory.
    drop(server);

    let env = [("TETHER_LOG_FORMAT", "text"), ("TETHER_LOG", "info")];
    let (_server, _stdout, stderr) = serve_demo_with(dir.path(), &["--config", config], &env);
    let logs = until(&stderr, WAIT, |l| l.contains("tether node started"));
    for line in &logs {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "TETHER_LOG_FORMAT=text, yet a JSON line: {line}"
        );
    }
    assert!(
        logs.iter()
            .any(|l| l.contains(" INFO ") && !l.contains("tether_server::node")),
        "TETHER_LOG=info lets other targets' INFO lines through: {logs:#?}"
    );
}
