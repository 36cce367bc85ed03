//! The TypeScript SDK's own tests (`sdk/js`, `npm test`), run against this build's `tether`
//! binary, so that `cargo test --workspace` tests every client in the repository.
//!
//! They need Node 20+ and npm, and the SDK's development packages from its lockfile
//! (`npm ci`, which `.ci/run` does first; this test does it when `node_modules` is missing).
//! Under `CI=true` a missing Node fails the test; elsewhere it is skipped with a message.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest the SDK's tests may take (about 30 s on a busy 2-core machine).
const LIMIT: Duration = Duration::from_secs(300);

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `npm args` in `dir` within [`LIMIT`], with `TETHER_BIN` set to this build's binary;
/// panics with its output when it fails.
fn npm(dir: &PathBuf, args: &[&str]) {
    let started = Instant::now();
    // Into a file, not a pipe: a pipe nobody reads would stop npm once full.
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let mut child = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("TETHER_BIN", env!("CARGO_BIN_EXE_tether"))
        .env("CI", "true")
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("npm starts");
    loop {
        if let Some(status) = child.try_wait().expect("npm runs") {
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            assert!(
                status.success(),
                "npm {} failed ({status}):\n{output}",
                args.join(" ")
            );
            return;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("npm {} took more than {LIMIT:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_typescript_sdk_passes_its_tests_against_this_build() {
    if !have("node") || !have("npm") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Node 20+ and npm are needed for the TypeScript SDK's tests (`.ci/run` installs them)"
        );
        eprintln!("skipped: Node and npm are not installed");
        return;
    }
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk/js");
    if !sdk.join("node_modules").exists() {
        npm(&sdk, &["ci", "--no-audit", "--no-fund"]);
    }
    npm(&sdk, &["test"]);
}
