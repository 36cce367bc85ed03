//! A broken configuration, as an operator meets it: `tether serve --config FILE` (and
//! `tether config check`) list every problem, each with its key and its line or environment
//! variable, never a secret's value, and exit with 78 without starting anything.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A broken config is refused at once; a server still running after this has started.
const WAIT: Duration = Duration::from_secs(10);

/// What the binary printed and how it exited.
struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// A directory of its own for each test, holding `tether.toml`.
fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-config-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tether <args> --config <dir>/tether.toml` with `config` in the file and only `env` in
/// its environment, and waits (up to [`WAIT`]) for it to exit.
fn tether(dir: &Path, args: &[&str], config: &str, env: &[(&str, &str)]) -> Outcome {
    let path = dir.join("tether.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("tether {args:?} did not exit within {WAIT:?}: the config was accepted");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Outcome {
        code: status.code(),
        stderr,
    }
}

/// The line (from 1) of `config` where `needle` first appears.
fn line_of(config: &str, needle: &str) -> usize {
    config
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the config"))
        + 1
}

/// Asserts that `out` is a refusal listing exactly `expected` (each the start of one problem's
/// line, after `  - `), with the header and exit code of a configuration error.
fn assert_refused(out: &Outcome, expected: &[String]) {
    let text = &out.stderr;
    assert_eq!(out.code, Some(78), "exit code of a config error:\n{text}");
    let header = format!(
        "error: invalid configuration ({} problem{}):",
        expected.len(),
        if expected.len() == 1 { "" } else { "s" }
    );
    assert!(
        text.starts_with(&header),
        "header {header:?} missing:\n{text}"
    );
    let listed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    assert_eq!(listed.len(), expected.len(), "problems listed:\n{text}");
    for want in expected {
        assert!(
            listed.iter().any(|l| l.starts_with(want.as_str())),
            "{want:?} is not listed:\n{text}"
        );
    }
}

const VALID: &str = r#"
[node]
data_dir = "data"

[listen]
tcp = "127.0.0.1:0"
ws = "127.0.0.1:0"
http = "127.0.0.1:0"
mqtt = "127.0.0.1:0"

[store]
backend = "memory"

[[apps]]
id = "demo"
secret = "app-secret-not-to-be-shown-0123"
api_key = "app-api-key-not-to-be-shown-0123"
"#;

#[test]
fn serve_names_the_key_and_line_of_a_wrong_type() {
    let dir = dir("wrong-type");
    let config = format!("{VALID}\n[limits]\nmax_connections = \"lots\"\n");
    let out = tether(&dir, &["serve"], &config, &[]);
    let file = dir.join("tether.toml");
    assert_refused(
        &out,
        &[format!(
            "{}:{}: limits.max_connections: expected a whole number, 0 or more, found string \"lots\"",
            file.display(),
            line_of(&config, "max_connections")
        )],
    );
    assert!(
        out.stderr
            .contains("the node was not started (exit code 78)"),
        "{}",
        out.stderr
    );
}

#[test]
fn serve_names_the_key_and_line_of_a_bad_duration() {
    let dir = dir("duration");
    let config = format!("{VALID}\n[gateway]\nhandshake_timeout = \"10 parsecs\"\n");
    let out = tether(&dir, &["serve"], &config, &[]);
    assert_refused(
        &out,
        &[format!(
            "{}:{}: gateway.handshake_timeout: \"10 parsecs\": unknown unit",
            dir.join("tether.toml").display(),
            line_of(&config, "handshake_timeout")
        )],
    );
}

/// The echo test mode serves no client: a file (or a variable) that turns it on is refused
/// unless the node is started with `--test-modes`.
#[test]
fn serve_refuses_the_ws_echo_test_mode_without_test_modes() {
    let dir = dir("ws-echo");
    let config = format!("{VALID}\n[gateway]\nws_echo = true\n");
    let out = tether(&dir, &["serve"], &config, &[]);
    assert_refused(
        &out,
        &[format!(
            "{}:{}: gateway.ws_echo is a test mode (WebSocket clients are echoed, not served): \
             a node takes it only when started with --test-modes",
            dir.join("tether.toml").display(),
            line_of(&config, "ws_echo")
        )],
    );
    let env = [("TETHER_GATEWAY__WS_ECHO", "true")];
    let out = tether(&dir, &["serve"], VALID, &env);
    assert_refused(
        &out,
        &["$TETHER_GATEWAY__WS_ECHO: gateway.ws_echo is a test mode".to_string()],
    );
}

#[test]
fn serve_names_the_variable_of_a_bad_override() {
    let dir = dir("env");
    let out = tether(
        &dir,
        &["serve"],
        VALID,
        &[("TETHER_LIMITS__MAX_CONNECTIONS", "lots")],
    );
    assert_refused(
        &out,
        &["$TETHER_LIMITS__MAX_CONNECTIONS: limits.max_connections: expected a whole number, 0 or more, found string \"lots\"".into()],
    );
}

#[test]
fn serve_names_an_unknown_key_and_the_key_that_was_meant() {
    let dir = dir("unknown");
    let config = format!("{VALID}\n[limits]\nmax_conections = 5000\n");
    let out = tether(&dir, &["serve"], &config, &[]);
    assert_refused(
        &out,
        &[format!(
            "{}:{}: limits.max_conections: unknown key (did you mean `max_connections`?)",
            dir.join("tether.toml").display(),
            line_of(&config, "max_conections")
        )],
    );
}

/// Problems in many sections, of every kind, with secrets among the broken values: every
/// one is listed in one run, and no secret's value is.
const BROKEN: &str = r#"
[node]
data_dir = "data"

[listen]
tcp = 7400
http = "127.0.0.1:0"

[limits]
max_connections = "lots"
max_bindings = 100

[gateway]
handshake_timeout = "10 parsecs"
heartbeat_mised = 3

[store]
backend = "disk"

[webhook]
timeout = true

[admin]
key = 98765432109876

[[apps]]
id = "a"
secret = "s3cr3t-value-of-app-a-0123"
api_key = "short-key"

[[apps]]
id = "b"
api_key = "b-api-key-not-to-be-shown"

[[apps]]
id = "c"
secret = "s3cr3t-value-of-app-c-0123"
api_key = "c-api-key-not-to-be-shown"
[apps.tokens]
audience = 7
"#;

const SECRETS: &[&str] = &[
    "98765432109876",
    "s3cr3t-value",
    "short-key",
    "b-api-key",
    "c-api-key",
];

fn broken_expected(file: &Path) -> Vec<String> {
    let at = |needle: &str| format!("{}:{}: ", file.display(), line_of(BROKEN, needle));
    // The `[[apps]]` header just above app b's id.
    let app_b = line_of(BROKEN, "id = \"b\"") - 1;
    vec![
        at("tcp = 7400") + "listen.tcp: expected a string, found integer 7400",
        at("\"lots\"") + "limits.max_connections: expected a whole number",
        at("max_bindings") + "limits.max_bindings must be between 1 and 64",
        at("parsecs") + "gateway.handshake_timeout: \"10 parsecs\": unknown unit",
        at("heartbeat_mised")
            + "gateway.heartbeat_mised: unknown key (did you mean `heartbeat_missed`?)",
        at("disk") + "store.backend: unknown value `disk`",
        at("timeout = true") + "webhook.timeout: expected a duration like \"10s\"",
        at("key = 9876") + "admin.key: expected a string, found an integer",
        at("short-key") + "apps[0].api_key must be at least 16 characters",
        format!("{}:{}: apps[1].secret: missing", file.display(), app_b),
        at("audience") + "apps[2].tokens.audience: expected a string, found integer 7",
        "$TETHER_RATE__REQUESTS_PER_SEC: rate.requests_per_sec: expected a whole number from 0 to 4294967295, found string \"fast\"".into(),
        "$TETHER_CLUSTER__PREFIX: cluster.prefix must be non-empty".into(),
    ]
}

#[test]
fn serve_lists_every_problem_of_every_section_in_one_run_without_secrets() {
    let dir = dir("several");
    let env = [
        ("TETHER_RATE__REQUESTS_PER_SEC", "fast"),
        ("TETHER_CLUSTER__PREFIX", "{hunter2}"),
    ];
    let out = tether(&dir, &["serve"], BROKEN, &env);
    assert_refused(&out, &broken_expected(&dir.join("tether.toml")));
    for secret in SECRETS {
        assert!(
            !out.stderr.contains(secret),
            "{secret:?} was shown:\n{}",
            out.stderr
        );
    }
}

#[test]
fn config_check_lists_the_same_problems_and_passes_a_valid_file() {
    let dir = dir("check");
    let env = [
        ("TETHER_RATE__REQUESTS_PER_SEC", "fast"),
        ("TETHER_CLUSTER__PREFIX", "{hunter2}"),
    ];
    let out = tether(&dir, &["config", "check"], BROKEN, &env);
    assert_refused(&out, &broken_expected(&dir.join("tether.toml")));
    assert!(!out.stderr.contains("not started"), "{}", out.stderr);
    let ok = tether(&dir, &["config", "check"], VALID, &[]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
}
