//! The browser example (`examples/browser`) in headless Chromium, against this build's
//! `tether` binary: the node test files of `examples/browser/test`, one Rust test each.
//!
//! They need Node 20+ and npm, Chromium (Debian's `chromium`, or `$CHROMIUM_BIN`), and the
//! test package's development packages from its lockfile (`npm ci`, which `.ci/run` does; this
//! test does it when `node_modules` is missing). Under `CI=true` a missing tool fails the test;
//! elsewhere it is skipped with a message. Screenshots are kept in `browser-artifacts` of the
//! target directory (the paths are printed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest one npm or node run may take (a case takes about 10 s on a busy 2-core
/// machine; the first build of the SDK about 10 s more).
const LIMIT: Duration = Duration::from_secs(300);

/// Whether the SDK was built for the page. Held while a case runs: the cases share the
/// build, and one Chromium at a time is enough for two cores.
static BUILT: Mutex<bool> = Mutex::new(false);

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn chromium() -> Option<String> {
    match std::env::var("CHROMIUM_BIN") {
        Ok(path) => have(&path).then_some(path),
        Err(_) => ["chromium", "chromium-browser"]
            .into_iter()
            .find(|name| have(name))
            .map(str::to_owned),
    }
}

fn test_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/browser/test")
}

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("browser-artifacts")
}

/// Runs `program args` in the test package within [`LIMIT`], with this build's binary;
/// panics with its output when it fails, else returns it.
fn run(program: &str, args: &[&str]) -> String {
    let started = Instant::now();
    // Into a file, not a pipe: a pipe nobody reads would stop the child once full.
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let mut child = Command::new(program)
        .args(args)
        .current_dir(test_dir())
        .env("TETHER_BIN", env!("CARGO_BIN_EXE_tether"))
        .env("BROWSER_ARTIFACTS", artifacts())
        .env("CI", "true")
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .spawn()
        .unwrap_or_else(|e| panic!("{program} does not start: {e}"));
    loop {
        if let Some(status) = child.try_wait().expect("the child runs") {
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            let command = format!("{program} {}", args.join(" "));
            assert!(status.success(), "{command} failed ({status}):\n{output}");
            return output;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!(
                "{program} {} took more than {LIMIT:?}:\n{output}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one test file of the package in Node, after building the SDK once.
fn case(file: &str) {
    let chromium = chromium();
    if !have("node") || !have("npm") || chromium.is_none() {
        let message = "Node 20+, npm and Chromium are needed for the browser tests (`.ci/run` \
                       installs them; Debian: `apt-get install nodejs npm chromium`)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("skipped: {message}");
        return;
    }
    // A case that failed poisons the lock; the build it guards is still good.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        if !test_dir().join("node_modules").exists() {
            run("npm", &["ci", "--no-audit", "--no-fund"]);
        }
        run("npm", &["run", "build"]);
        *built = true;
    }
    let started = Instant::now();
    let output = run("node", &["--test", "--test-reporter=spec", file]);
    println!("{output}");
    println!(
        "{file}: {:.1} s in headless Chromium ({})",
        started.elapsed().as_secs_f64(),
        chromium.unwrap_or_default()
    );
}

#[test]
fn the_example_page_receives_acks_resumes_and_recovers_topics_in_chromium() {
    case("example.test.js");
}

/// Fails until the HTTP API answers CORS (`[listen.http_access] origins`, issue 20).
#[test]
fn the_example_page_asks_the_dispatcher_from_another_origin() {
    case("dispatch-cors.test.js");
}

#[test]
fn the_example_page_falls_back_to_sse_when_a_proxy_blocks_websocket_in_chromium() {
    case("sse-fallback.test.js");
}

#[test]
fn the_web_console_shows_a_connection_pushes_to_it_and_drains_in_chromium() {
    case("console.test.js");
}
