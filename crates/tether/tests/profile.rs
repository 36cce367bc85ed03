//! `GET /v1/admin/profile` and `tether profile` against a running `tether serve`: off without
//! the admin key, a flame graph or a pprof protobuf of the node under load with it, one
//! profile at a time, lengths out of range refused.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pprof::protos::Message as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "profile-secret-0123456789";
const API_KEY: &str = "profile-api-key-0123456789";
const ADMIN_KEY: &str = "profile-admin-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);

fn config(tcp: SocketAddr, http: SocketAddr, admin: &str) -> String {
    format!(
        r#"
[listen]
tcp = "{tcp}"
ws = ""
http = "{http}"
mqtt = ""

[store]
backend = "memory"

{admin}

[[apps]]
id = "demo"
secret = "{SECRET}"
api_key = "{API_KEY}"
"#
    )
}

async fn start(dir: &std::path::Path, admin: &str) -> Server {
    let (tcp, http) = (free_addr(), free_addr());
    Server::start(
        &dir.join("tether.toml"),
        &config(tcp, http, admin),
        tcp,
        http,
        WAIT,
    )
    .await
}

/// `GET /v1/admin/profile?query` with `key`: the status, the content type and the body.
async fn profile(http: SocketAddr, query: &str, key: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut request = reqwest::Client::new().get(format!("http://{http}/v1/admin/profile?{query}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let answer = tokio::time::timeout(Duration::from_secs(30), request.send())
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = answer.bytes().await.expect("a body").to_vec();
    (status, content_type, body)
}

/// The `code` of a `{code, error}` answer.
fn code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).expect("a JSON error");
    assert!(v["error"].is_string(), "{v}");
    v["code"].as_str().expect("a code").to_owned()
}

/// Pushes to an offline user in a loop until `stop`, so that the node has CPU work to sample:
/// the API's handlers and the delivery service.
fn load(http: SocketAddr, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut sent = 0;
        while !stop.is_cancelled() {
            let answer = client
                .post(format!("http://{http}/v1/apps/demo/push"))
                .bearer_auth(API_KEY)
                .body(r#"{"users":["alice","bob"],"payload":{"hello":"world"}}"#)
                .send()
                .await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                sent += 1;
            }
        }
        sent
    })
}

#[tokio::test]
async fn without_an_admin_key_the_route_answers_404_like_the_other_admin_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "").await;
    let (status, _, body) = profile(server.http, "seconds=1", Some(ADMIN_KEY)).await;
    assert_eq!((status, code(&body).as_str()), (404, "admin_disabled"));
}

#[tokio::test]
async fn profile_max_seconds_zero_turns_only_the_profile_off() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("[admin]\nkey = \"{ADMIN_KEY}\"\nprofile_max_seconds = 0");
    let server = start(dir.path(), &admin).await;
    let (status, _, body) = profile(server.http, "seconds=1", Some(ADMIN_KEY)).await;
    assert_eq!((status, code(&body).as_str()), (404, "profile_disabled"));
    let stats = reqwest::Client::new()
        .get(format!("http://{}/v1/admin/stats", server.http))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("stats");
    assert_eq!(
        stats.status().as_u16(),
        200,
        "the rest of the admin API stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_under_load_is_a_flame_graph_or_a_pprof_of_tethers_own_functions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &format!("[admin]\nkey = \"{ADMIN_KEY}\"")).await;
    let http = server.http;

    // The key is checked first, then the length.
    let (status, _, body) = profile(http, "seconds=1", None).await;
    assert_eq!((status, code(&body).as_str()), (401, "unauthorized"));
    let (status, _, body) = profile(http, "seconds=1", Some("not-the-admin-key-0123")).await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    for bad in [
        "seconds=0",
        "seconds=61",
        "seconds=-1",
        "seconds=ten",
        "format=png",
    ] {
        let (status, _, body) = profile(http, bad, Some(ADMIN_KEY)).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (400, "bad_request"),
            "{bad}"
        );
    }

    let stop = CancellationToken::new();
    let pushes = load(http, stop.clone());
    let (status, content_type, svg) = profile(http, "seconds=1", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&svg));
    assert_eq!(content_type, "image/svg+xml");
    let svg = String::from_utf8(svg).expect("UTF-8");
    assert!(
        svg.starts_with("<?xml") || svg.starts_with("<svg"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("tether_server::"),
        "no frame of tether's own code in the flame graph"
    );

    // The format by Accept: pprof's protobuf, which decodes, with samples in tether's code.
    let answer = reqwest::Client::new()
        .get(format!("http://{http}/v1/admin/profile?seconds=1"))
        .header(reqwest::header::ACCEPT, "application/octet-stream")
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status().as_u16(), 200);
    let bytes = answer.bytes().await.expect("a body");
    let decoded = pprof::protos::Profile::decode(bytes.as_ref()).expect("a pprof protobuf");
    assert!(!decoded.sample.is_empty(), "no sample under load");
    let names: Vec<&str> = decoded
        .function
        .iter()
        .filter_map(|f| decoded.string_table.get(f.name as usize))
        .map(String::as_str)
        .collect();
    assert!(
        names.iter().any(|n| n.contains("tether_server::")),
        "no function of tether's own in the profile"
    );
    stop.cancel();
    assert!(pushes.await.unwrap() > 0, "the load pushed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_profile_while_one_is_recorded_answers_409_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &format!("[admin]\nkey = \"{ADMIN_KEY}\"")).await;
    let http = server.http;

    let first = tokio::spawn(profile(http, "seconds=3&format=pprof", Some(ADMIN_KEY)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The first holds the profiler from when its request is read: wait until a second is
    // refused (bounded), which is the behaviour under test.
    let deadline = Instant::now() + Duration::from_secs(2);
    let (status, body) = loop {
        let asked = Instant::now();
        let (status, _, body) = profile(http, "seconds=1", Some(ADMIN_KEY)).await;
        if status == 409 {
            assert!(asked.elapsed() < Duration::from_millis(500), "409 at once");
            break (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "no 409 while a profile runs: {status}"
        );
    };
    assert_eq!((status, code(&body).as_str()), (409, "profile_running"));
    let (status, content_type, _) = first.await.unwrap();
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/octet-stream")
    );
    // Once it ended, the slot is free again.
    let (status, _, _) = profile(http, "seconds=1", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tether_profile_writes_the_flame_graph_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &format!("[admin]\nkey = \"{ADMIN_KEY}\"")).await;
    let out = dir.path().join("cpu.svg");
    let command = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["profile", "--seconds", "1", "--url"])
        .arg(format!("http://{}", server.http))
        .arg("--out")
        .arg(&out)
        .env("TETHER_ADMIN_KEY", ADMIN_KEY)
        .env_remove("TETHER_CONFIG")
        .output()
        .expect("tether profile runs");
    assert!(
        command.status.success(),
        "{}",
        String::from_utf8_lossy(&command.stderr)
    );
    let svg = std::fs::read_to_string(&out).expect("the file");
    assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"));
    let printed = String::from_utf8_lossy(&command.stdout);
    assert!(printed.contains("cpu.svg"), "{printed}");

    // Refused: the command fails and says why.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["profile", "--seconds", "1", "--url"])
        .arg(format!("http://{}", server.http))
        .arg("--out")
        .arg(dir.path().join("never.svg"))
        .env("TETHER_ADMIN_KEY", "not-the-admin-key-0123")
        .env_remove("TETHER_CONFIG")
        .output()
        .expect("tether profile runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"));
    assert!(!dir.path().join("never.svg").exists());
}
