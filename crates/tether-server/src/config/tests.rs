use std::time::Duration;

use super::*;

#[test]
fn the_example_is_valid() {
    let config = Config::from_toml(EXAMPLE).expect("docs/tether.example.toml must be valid");
    assert!(!config.apps.is_empty());
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = Config::from_toml(
        r#"
        [listen]
        tcp = "nowhere"
        [gateway]
        heartbeat_min = "10s"
        heartbeat_max = "5s"
        [[apps]]
        id = "a"
        secret = "short"
        api_key = "short"
        "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in ["listen.tcp", "heartbeat_min", "secret", "api_key"] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn webhook_keys_are_checked() {
    let err = Config::from_toml(
        r#"
        [webhook]
        workers = 0
        backoff_min = "5s"
        backoff_max = "1s"
        [[apps]]
        id = "a"
        secret = "0123456789abcdef"
        api_key = "0123456789abcdef"
        webhook = "https://business.example/hook"
        [[apps]]
        id = "b"
        secret = "0123456789abcdefg"
        api_key = "0123456789abcdefg"
        presence_events = true
        [[apps]]
        id = "c"
        secret = "0123456789abcdefh"
        api_key = "0123456789abcdefh"
        webhook = "not a url"
        "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "webhook.workers",
        "webhook.backoff_min",
        "apps[0].webhook",
        "https is not supported",
        "apps[1].presence_events needs a webhook",
        "apps[2].webhook",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let ok = Config::from_toml(
        r#"
        [[apps]]
        id = "a"
        secret = "0123456789abcdef"
        api_key = "0123456789abcdef"
        webhook = "http://127.0.0.1:9000/tether"
        presence_events = true
        "#,
    )
    .unwrap();
    assert_eq!(
        ok.apps[0].webhook.as_deref(),
        Some("http://127.0.0.1:9000/tether")
    );
}

#[test]
fn unknown_fields_are_refused() {
    assert!(Config::from_toml("[limits]\nmax_conections = 5\n").is_err());
}

#[test]
fn env_overrides_apply_and_are_typed() {
    let env = [
        (
            "TETHER_LIMITS__MAX_CONNECTIONS".to_string(),
            "42".to_string(),
        ),
        ("TETHER_LISTEN__TCP".to_string(), "0.0.0.0:9000".to_string()),
        (
            "TETHER_GATEWAY__HANDSHAKE_TIMEOUT".to_string(),
            "3s".to_string(),
        ),
        ("TETHER_CONFIG".to_string(), "ignored.toml".to_string()),
        ("TETHER_NODE__ID".to_string(), "7".to_string()),
    ];
    let config = Config::load_with_env(None, env).unwrap();
    assert_eq!(config.limits.max_connections, 42);
    assert_eq!(config.listen.tcp, "0.0.0.0:9000");
    assert_eq!(config.gateway.handshake_timeout, Duration::from_secs(3));
    assert_eq!(
        config.node.id, "7",
        "a numeric-looking string stays a string"
    );
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    let err = Config::from_toml("[listen]\ntcp = \"127.0.0.1:9000\"\nws = \"127.0.0.1:9000\"\n")
        .unwrap_err();
    assert!(err.to_string().contains("used by two listeners"), "{err}");
}

#[test]
fn operations_settings_are_checked() {
    let err = Config::from_toml(
        r#"
        [node]
        advertise_tcp = ["tcp://10.0.0.1:7400", "ws://10.0.0.1:7401/ws", "tcp://h:0"]
        advertise_ws = ["wss://push.example.com/ws", "ws://:80/ws", "tcp://h:1"]
        announce_interval = "10ms"
        [dispatch]
        reconnect_jitter = 1.5
        [admin]
        key = "short"
        "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "\"ws://10.0.0.1:7401/ws\" must use tcp://",
        "\"tcp://h:0\" has a bad port",
        "\"ws://:80/ws\" needs a host",
        "\"tcp://h:1\" must use ws:// or wss://",
        "announce_interval",
        "reconnect_jitter",
        "admin.key",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains("wss://push"), "{text}");
    let good = Config::from_toml(
        "[node]\nadvertise_tcp = [\"tcp://[::1]:7400\"]\n[admin]\nkey = \"an-admin-key-0123456789\"\n",
    )
    .unwrap();
    assert!(!format!("{good:?}").contains("an-admin-key"));
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("ten").is_err());
    assert!(parse_duration("5 parsecs").is_err());
}

#[test]
fn secrets_are_redacted() {
    let config = Config::for_tests();
    let debug = format!("{config:?}");
    assert!(!debug.contains("demo-secret"));
    assert!(!debug.contains("demo-api-key"));
}

#[test]
fn the_demo_app_is_generated_once_and_kept() {
    let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut first = Config::default();
    first.node.data_dir = dir.clone();
    let app = first.with_demo_app().unwrap().unwrap();
    let mut second = Config::default();
    second.node.data_dir = dir.clone();
    let again = second.with_demo_app().unwrap().unwrap();
    assert_eq!(app.secret, again.secret);
    assert_eq!(app.api_key, again.api_key);
    std::fs::remove_dir_all(&dir).unwrap();
}
