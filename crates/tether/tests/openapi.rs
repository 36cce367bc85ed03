//! The OpenAPI document against the server that serves it: schemathesis (PyPI), a fuzzer that
//! reads the document, sends requests made from it to a running `tether serve` with every
//! route (the business API with a valid API key, the admin API with the admin key, the
//! dispatcher and the SSE routes with a valid client token), and checks that no answer is a
//! 5xx and that every answer (status, content type, headers, body) is one the document
//! describes.
//!
//! Four runs, bounded in examples and time: the SSE routes against the WebSocket listener
//! (which serves them), everything else against the API listener but the drain and the CPU
//! profile, the profile alone with few examples (each valid request records for a second: the
//! node under test allows 1-second profiles only, `admin.profile_max_seconds = 1`, so that
//! every longer one is a quick 400), then the drain alone (after it, the node takes no
//! clients, and the dispatcher rightly answers 503).
//!
//! schemathesis comes from the virtualenv `.ci/run` makes (`target/ci-venv`, pinned versions),
//! or `TETHER_SCHEMATHESIS` naming the executable. Under `CI=true` a missing schemathesis fails
//! the test; elsewhere it is skipped with a message.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SECRET: &str = "openapi-secret-0123456789";
const API_KEY: &str = "openapi-api-key-0123456789";
const ADMIN_KEY: &str = "openapi-admin-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);
/// The longest one schemathesis run may take (the four take about 75 s together here).
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The schemathesis executable, if there is one.
fn schemathesis() -> Option<PathBuf> {
    let path = match std::env::var_os("TETHER_SCHEMATHESIS") {
        Some(path) => PathBuf::from(path),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ci-venv/bin/schemathesis")
        }
    };
    let works = Command::new(&path)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(path)
}

fn config(dir: &Path, tcp: SocketAddr, ws: SocketAddr, http: SocketAddr) -> String {
    format!(
        r#"
[node]
data_dir = "{data}"

[listen]
tcp = "{tcp}"
ws = "{ws}"
http = "{http}"
mqtt = ""

[admin]
key = "{ADMIN_KEY}"
profile_max_seconds = 1

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"
"#,
        data = dir.join("data").display(),
    )
}

/// schemathesis' configuration: the credentials of each security scheme of the document, and
/// the app of every path and query, so that requests get past the keys to the handlers.
fn schemathesis_config(token: &str) -> String {
    format!(
        r#"
# A stream is read this far (the session id, then `connected`), then closed. (Top-level keys
# come before the first table.)
max-stream-events = 2

[auth.openapi.api_key]
bearer = "{API_KEY}"

[auth.openapi.admin_key]
bearer = "{ADMIN_KEY}"

[auth.openapi.client_token]
bearer = "{token}"

[auth.openapi.client_token_query]
api_key = "{token}"

[parameters]
"path.app" = "demo"
"query.app" = "demo"
"#
    )
}

/// Runs schemathesis with `args` in `dir` within [`RUN_LIMIT`]; returns its output and
/// whether it passed.
fn run(exe: &Path, dir: &Path, args: &[String]) -> (String, bool) {
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("schemathesis starts");
    let status = loop {
        if let Some(status) = child.try_wait().expect("schemathesis runs") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!("schemathesis took more than {RUN_LIMIT:?}:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    (output, status.success())
}

/// The summary lines of a run (`N passed ...` and the like) shown in the test's output even
/// when it passes: written to the process's stdout, past the test harness's capture (which
/// only takes `print!`).
fn show(label: &str, output: &str) {
    let summary: Vec<&str> = output
        .lines()
        .filter(|l| {
            let l = l.trim();
            // `1168 generated, 1168 passed, 27 skipped`, then `==== No issues found in 9.1s ====`.
            l.contains(" generated, ") || (l.starts_with("==") && l.contains(" in "))
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for line in summary {
        let _ = writeln!(out, "schemathesis ({label}): {}", line.trim());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let Some(exe) = schemathesis() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "schemathesis is needed for the OpenAPI test: `.ci/run` installs it into \
             target/ci-venv from .ci/schemathesis-requirements.txt"
        );
        eprintln!("skipped: schemathesis is not installed (see .ci/run)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (tcp, ws, http) = (free_addr(), free_addr(), free_addr());
    let _server = Server::start(
        &dir.path().join("tether.toml"),
        &config(dir.path(), tcp, ws, http),
        tcp,
        http,
        WAIT,
    )
    .await;

    // The document parses, and every operation in it is served (not the router's bare 404
    // or 405): the document lists nothing the node does not do.
    let doc: Value = reqwest::get(format!("http://{http}/v1/openapi.json"))
        .await
        .expect("the document")
        .json()
        .await
        .expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let client = reqwest::Client::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let base = if path.starts_with("/v1/sse") {
            ws
        } else {
            http
        };
        let concrete = path
            .replace("{app}", "demo")
            .replace("{user}", "alice")
            .replace("{topic}", "room-1")
            .replace("{session}", "x.y");
        for method in ["get", "post", "delete"] {
            if item.get(method).is_none() || concrete == "/v1/admin/drain" {
                continue;
            }
            let request = client.request(
                method.to_uppercase().parse().unwrap(),
                format!("http://{base}{concrete}"),
            );
            let answer = tokio::time::timeout(WAIT, request.send())
                .await
                .expect("an answer in time")
                .expect("an answer");
            let status = answer.status().as_u16();
            let body = answer.bytes().await.unwrap_or_default();
            assert!(
                !(matches!(status, 404 | 405) && body.is_empty()),
                "{method} {path}: the document lists it, the node does not serve it ({status})"
            );
        }
    }

    let token = tether_core::auth::mint(
        SECRET.as_bytes(),
        &tether_core::AppId::from("demo"),
        &tether_core::UserId::from("alice"),
        Duration::from_secs(3600),
    );
    std::fs::write(
        dir.path().join("schemathesis.toml"),
        schemathesis_config(&token),
    )
    .unwrap();
    let schema = format!("http://{http}/v1/openapi.json");
    let (ws_url, http_url) = (format!("http://{ws}"), format!("http://{http}"));
    let common = [
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_headers_conformance,response_schema_conformance,unsupported_method,\
         allow_header_conformance,ignored_auth,missing_required_header",
        "--seed",
        "20261207",
        "--generation-database",
        "none",
        "--workers",
        "2",
        "--no-color",
    ];
    let runs: [(&str, Vec<&str>); 4] = [
        (
            "SSE routes",
            vec![
                &schema,
                "--url",
                &ws_url,
                "--include-path-regex",
                "^/v1/sse",
                "--max-examples",
                "60",
                "--request-timeout",
                "5",
            ],
        ),
        (
            "API",
            vec![
                &schema,
                "--url",
                &http_url,
                "--exclude-path-regex",
                "^/v1/sse",
                "--exclude-path",
                "/v1/admin/drain",
                "--exclude-path",
                "/v1/admin/profile",
                "--max-examples",
                "40",
                "--request-timeout",
                "5",
            ],
        ),
        (
            "profile",
            vec![
                &schema,
                "--url",
                &http_url,
                "--include-path",
                "/v1/admin/profile",
                "--max-examples",
                "5",
                // A valid request records for 1 s, and the first one of a process also reads
                // the binary's symbols: about 8 s in a debug build here.
                "--request-timeout",
                "30",
            ],
        ),
        (
            "drain",
            vec![
                &schema,
                "--url",
                &http_url,
                "--include-path",
                "/v1/admin/drain",
                "--max-examples",
                "5",
                "--request-timeout",
                "5",
            ],
        ),
    ];
    for (label, args) in runs {
        let args: Vec<String> = args.into_iter().chain(common).map(str::to_owned).collect();
        let (exe, path) = (exe.clone(), dir.path().to_owned());
        let (output, passed) = tokio::task::spawn_blocking(move || {
            let (output, passed) = run(&exe, &path, &args);
            // CPython 3.11's `compile` can fail inside hypothesis's description of a strategy
            // ("SystemError: AST constructor recursion depth mismatch"): a crash of the tool
            // while generating, not a finding about the server. That alone gets one more run.
            if !passed && output.contains("AST constructor recursion depth mismatch") {
                eprintln!("schemathesis ({label}): the tool crashed in CPython, running again");
                return run(&exe, &path, &args);
            }
            (output, passed)
        })
        .await
        .unwrap();
        show(label, &output);
        assert!(passed, "schemathesis ({label}) failed:\n{output}");
    }
}
