//! How tests find a Redis server and keep out of each other's keys.
//!
//! Tests read the server from `TETHER_TEST_REDIS` (default `redis://127.0.0.1:6379`). Each test
//! gets a prefix of its own, so tests run in parallel against one server and never flush it.
//! When no server answers, a test is skipped with a message, except under `CI=true`, where it
//! fails: CI must not pass by skipping the cluster tests (`.ci/run` starts Redis).

use crate::{Redis, RedisOptions};

/// The test server's URL.
pub fn redis_url() -> String {
    std::env::var("TETHER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Options for the test server with a fresh prefix, or `None` (after saying why on stderr) when
/// no server answers outside CI. Panics under `CI=true` when no server answers.
pub async fn options(test: &str) -> Option<RedisOptions> {
    let mut options = RedisOptions::standalone(redis_url());
    options.prefix = format!("tether-test:{test}:{:016x}", rand::random::<u64>());
    match Redis::connect(&options).await {
        Ok(mut redis) => {
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut redis).await;
            match pong {
                Ok(_) => Some(options),
                Err(e) => unavailable(&options, &e.to_string()),
            }
        }
        Err(e) => unavailable(&options, &e.to_string()),
    }
}

fn unavailable(options: &RedisOptions, why: &str) -> Option<RedisOptions> {
    let url = &options.urls[0];
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and no Redis at {url} ({why}): .ci/run must start one");
    }
    eprintln!("skipped: no Redis at {url} ({why}); set TETHER_TEST_REDIS or start redis-server");
    None
}
