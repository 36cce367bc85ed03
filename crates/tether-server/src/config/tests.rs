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
fn the_mqtt_window_is_at_least_one_and_fits_16_bits() {
    let read = |value: &str| {
        Config::from_toml(&format!(
            "[mqtt]\nmax_inflight = {value}\n[[apps]]\nid = \"a\"\nsecret = \"0123456789abcdefa\"\napi_key = \"0123456789abcdefa\"\n"
        ))
    };
    assert_eq!(read("1").expect("1 is fine").mqtt.max_inflight, 1);
    let zero = read("0").unwrap_err().to_string();
    assert!(
        zero.contains("mqtt.max_inflight must be at least 1"),
        "{zero}"
    );
    let big = read("65536").unwrap_err().to_string();
    assert!(big.contains("max_inflight"), "{big}");
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
fn permission_check_keys_are_read_and_checked() {
    let config = Config::from_toml(
        r#"
        [webhook.permission]
        timeout = "500ms"
        concurrency = 4
        cache_size = 0
        allow_ttl = "30s"
        refuse_ttl = "1s"
        max_ttl = "1m"
        "#,
    )
    .unwrap();
    let p = &config.webhook.permission;
    assert_eq!(
        (p.timeout, p.concurrency, p.cache_size),
        (Duration::from_millis(500), 4, 0)
    );
    assert_eq!(
        (p.allow_ttl, p.refuse_ttl, p.max_ttl),
        (
            Duration::from_secs(30),
            Duration::from_secs(1),
            Duration::from_secs(60)
        )
    );
    let err = Config::from_toml(
        r#"
        [webhook.permission]
        timeout = "0s"
        concurrency = 0
        allow_ttl = "2h"
        max_ttl = "1h"
        "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "webhook.permission.timeout",
        "webhook.permission.concurrency",
        "webhook.permission.allow_ttl must be at most",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains("refuse_ttl"), "{text}");
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
        advertise_ws = ["wss://push.example.com/ws", "ws://:80/ws", "tcp://h:1", "ws://h/mqtt"]
        advertise_mqtt = ["mqtts://push.example.com:8883", "mqtt://h", "wss://h/ws", "tls://h:1"]
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
        "\"ws://h/mqtt\" ends in /mqtt",
        "\"mqtt://h\" needs a port",
        "\"wss://h/ws\" must end in /mqtt",
        "\"tls://h:1\" must use mqtt:// or mqtts:// or ws:// or wss://",
        "announce_interval",
        "reconnect_jitter",
        "admin.key",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains("wss://push"), "{text}");
    assert!(!text.contains("mqtts://push"), "{text}");
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
    // The commands that talk to a node read the demo app, and never generate one.
    let mut reader = Config::default();
    reader.node.data_dir = dir.clone();
    let missing = reader.with_saved_demo_app().expect_err("no demo app yet");
    let missing = missing
        .downcast_ref::<super::NoDemoApp>()
        .expect("NoDemoApp");
    assert_eq!(missing.path, dir.join("demo-app.toml"));
    assert!(!dir.exists(), "nothing was created");
    let mut first = Config::default();
    first.node.data_dir = dir.clone();
    let app = first.with_demo_app().unwrap().unwrap();
    let saved = reader
        .with_saved_demo_app()
        .unwrap()
        .expect("the saved app");
    assert_eq!(saved.secret, app.secret);
    let mut second = Config::default();
    second.node.data_dir = dir.clone();
    let again = second.with_demo_app().unwrap().unwrap();
    assert_eq!(app.secret, again.secret);
    assert_eq!(app.api_key, again.api_key);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The problems of `text`, each as `(key, line, text)`.
fn problems_of(text: &str) -> Vec<(String, Place, String)> {
    let err = Config::from_toml(text).expect_err("the config should be refused");
    err.problems()
        .iter()
        .map(|p| (p.key.clone(), p.place.clone(), p.text.clone()))
        .collect()
}

fn line(line: usize) -> Place {
    Place::File {
        file: "config".into(),
        line,
    }
}

#[test]
fn a_wrong_type_names_its_key_its_line_and_what_was_found() {
    let problems = problems_of("[node]\nid = \"n1\"\n\n[limits]\nmax_connections = \"lots\"\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let (key, place, text) = &problems[0];
    assert_eq!(key, "limits.max_connections");
    assert_eq!(*place, line(5));
    assert_eq!(
        text,
        "limits.max_connections: expected a whole number, 0 or more, found string \"lots\""
    );
}

#[test]
fn a_bad_duration_names_its_key_and_line() {
    let problems =
        problems_of("[gateway]\nhandshake_timeout = \"10 parsecs\"\nwrite_timeout = -3\n");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].0, "gateway.handshake_timeout");
    assert_eq!(problems[0].1, line(2));
    assert!(problems[0].2.contains("unknown unit"), "{problems:?}");
    assert_eq!(problems[1].0, "gateway.write_timeout");
    assert_eq!(problems[1].1, line(3));
    assert!(
        problems[1].2.contains("expected a duration like \"10s\""),
        "{problems:?}"
    );
}

#[test]
fn an_unknown_key_is_named_with_the_key_that_was_meant() {
    let problems = problems_of("[limits]\nmax_conections = 5\n\n[limts]\nx = 1\n");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].0, "limits.max_conections");
    assert_eq!(problems[0].1, line(2));
    assert!(
        problems[0].2.contains("did you mean `max_connections`"),
        "{problems:?}"
    );
    assert_eq!(problems[1].0, "limts");
    assert_eq!(problems[1].1, line(4));
    assert!(
        problems[1].2.contains("did you mean `limits`"),
        "{problems:?}"
    );
}

#[test]
fn an_override_is_placed_at_its_variable() {
    let env = [
        (
            "TETHER_LIMITS__MAX_CONNECTIONS".to_string(),
            "lots".to_string(),
        ),
        (
            "TETHER_GATEWAY__WRITE_TIMEOUT".to_string(),
            "-5".to_string(),
        ),
        ("TETHER_LIMTS__MAX_TOPICS".to_string(), "5".to_string()),
    ];
    let err = Config::load_with_env(None, env).unwrap_err();
    let got: Vec<_> = err
        .problems()
        .iter()
        .map(|p| (p.key.as_str(), p.place.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "gateway.write_timeout",
                Place::Env("TETHER_GATEWAY__WRITE_TIMEOUT".into())
            ),
            (
                "limits.max_connections",
                Place::Env("TETHER_LIMITS__MAX_CONNECTIONS".into())
            ),
            ("limts", Place::Env("TETHER_LIMTS__MAX_TOPICS".into())),
        ],
        "{err}"
    );
    // The number the variable held is what is reported, not the string it was retried as.
    assert!(err.to_string().contains("found integer -5"), "{err}");
}

/// The echo test mode cannot be turned on by a file or the environment alone: only a node
/// that allows test modes (`tether serve --test-modes`) takes it.
#[test]
fn the_ws_echo_test_mode_needs_test_modes_allowed() {
    let problems = problems_of("[gateway]\nws_echo = true\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let (key, place, text) = &problems[0];
    assert_eq!((key.as_str(), place), ("gateway.ws_echo", &line(2)));
    assert!(text.contains("--test-modes"), "{text}");

    let env = [("TETHER_GATEWAY__WS_ECHO".to_string(), "true".to_string())];
    let err = Config::load_with_env(None, env.clone()).unwrap_err();
    assert_eq!(err.problems()[0].key, "gateway.ws_echo", "{err}");

    let config = Config::read(None, env, true).expect("allowed with test modes");
    assert!(config.gateway.ws_echo && config.test_modes);
    // Allowed or not, it is off unless asked for.
    let config = Config::read(None, [], true).unwrap();
    assert!(!config.gateway.ws_echo);
}

#[test]
fn an_override_its_key_refuses_as_a_number_is_read_as_a_string() {
    let env = [(
        "TETHER_ADMIN__KEY".to_string(),
        "12345678901234567".to_string(),
    )];
    let config = Config::load_with_env(None, env).unwrap();
    assert_eq!(config.admin.key.unwrap().expose(), "12345678901234567");
}

#[test]
fn every_problem_of_every_section_is_reported_in_one_run() {
    let problems = problems_of(
        r#"
[listen]
tcp = "nowhere"

[limits]
max_connections = "lots"
max_topicz = 5

[gateway]
handshake_timeout = "10 parsecs"

[store]
backend = "disk"

[[apps]]
id = "a"
secret = "0123456789abcdef"

[[apps]]
id = "b"
secret = "short"
api_key = "0123456789abcdefb"
tokens = { audience = 7 }
"#,
    );
    let keys: Vec<(&str, &Place)> = problems.iter().map(|(k, p, _)| (k.as_str(), p)).collect();
    assert_eq!(
        keys,
        [
            ("listen.tcp", &line(3)),
            ("limits.max_connections", &line(6)),
            ("limits.max_topicz", &line(7)),
            ("gateway.handshake_timeout", &line(10)),
            ("store.backend", &line(13)),
            ("apps[0].api_key", &line(15)),
            ("apps[1].secret", &line(21)),
            ("apps[1].tokens.audience", &line(23)),
        ],
        "{problems:#?}"
    );
    assert!(
        problems[4].2.contains("unknown value `disk`"),
        "{problems:?}"
    );
    assert!(problems[5].2.contains("missing"), "{problems:?}");
    assert!(
        problems[6].2.contains("at least 16 characters"),
        "{problems:?}"
    );
}

#[test]
fn a_secret_of_the_wrong_type_is_not_repeated() {
    let problems = problems_of(
        "[admin]\nkey = 98765432109876543\n[[apps]]\nid = \"a\"\nsecret = [\"hunter2hunter2hunter2\"]\napi_key = \"0123456789abcdef\"\n",
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    for (_, _, text) in &problems {
        assert!(!text.contains("98765"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
    assert_eq!(
        problems[0].2,
        "admin.key: expected a string, found an integer"
    );
    assert_eq!(
        problems[1].2,
        "apps[0].secret: expected a string, found an array"
    );
}

#[test]
fn a_check_about_a_key_that_could_not_be_read_is_left_out() {
    // api_body_bytes is checked against max_payload, which keeps its default: that check would
    // be about the default, not about what the operator wrote.
    let problems = problems_of("[limits]\nmax_payload = \"big\"\napi_body_bytes = 10\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "limits.max_payload");
}

#[test]
fn a_syntax_error_names_its_line() {
    let problems = problems_of("[limits]\nmax_connections = 5\nthis is not toml\n");
    assert!(!problems.is_empty());
    assert_eq!(problems[0].1, line(3), "{problems:?}");
    assert!(problems[0].2.starts_with("not valid TOML"), "{problems:?}");
}

#[test]
fn the_problems_read_as_a_list_under_a_header() {
    let err = Config::from_toml("[limits]\nmax_connections = \"lots\"\n[gateway]\nnope = 1\n")
        .unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "invalid configuration (2 problems):");
    assert_eq!(
        lines[1],
        "  - config:2: limits.max_connections: expected a whole number, 0 or more, found string \"lots\""
    );
    assert!(
        lines[2].starts_with(
            "  - config:4: gateway.nope: unknown key (known here: handshake_timeout, "
        ),
        "{text}"
    );
}

#[test]
fn a_bad_redis_url_is_named_without_its_password() {
    let problems = problems_of("[cluster]\nredis = [\"http://user:pa55word@10.0.0.1:6379\"]\n");
    let text = &problems[0].2;
    assert!(
        text.starts_with("cluster.redis: \"http://***@10.0.0.1:6379\""),
        "{problems:?}"
    );
    assert!(
        !format!("{problems:?}").contains("pa55word"),
        "{problems:?}"
    );
}

#[test]
fn a_check_that_names_an_app_by_its_id_is_placed_at_its_entry() {
    let problems = problems_of(
        r#"
[rate]
requests_burst = 0

[[apps]]
id = "a"
secret = "0123456789abcdefa"
api_key = "0123456789abcdefa"

[[apps]]
id = "b"
secret = "0123456789abcdefb"
api_key = "0123456789abcdefb"
requests_per_sec = 10
"#,
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].1, line(10), "{problems:?}");
    assert_eq!(problems[0].2, "apps.b: requests_burst must be at least 1");
}

#[test]
fn every_bad_access_entry_is_named_by_its_key_and_placed_at_its_line() {
    let problems = problems_of(
        r#"
[listen.tcp_access]
allow = ["10.0.0.0/8"]
deny = ["192.0.2.0/24", "::1", "10.0.0.1/8"]
origins = ["https://a.example.com"]

[listen.ws_access]
allow = ["2001:db8::/129"]
connections_per_ip_per_sec = 5
connections_per_ip_burst = 0
origins = ["https://app.example.com/", "https://*.example.com"]

[listen.http_access]
connections_per_ip_per_sec = 5
allow_missing_origin = false
origins = ["https://app.example.com", "app.example.com"]
"#,
    );
    let found: Vec<(&str, Place)> = problems
        .iter()
        .map(|(_, place, text)| (text.split(':').next().unwrap_or(""), place.clone()))
        .collect();
    let expected = [
        ("listen.tcp_access.deny[2]", line(4)),
        ("listen.tcp_access.origins", line(5)),
        ("listen.ws_access.allow[0]", line(8)),
        (
            "listen.ws_access.connections_per_ip_burst must be at least 1 when connections_per_ip_per_sec is set",
            line(10),
        ),
        ("listen.ws_access.origins[0]", line(11)),
        ("listen.http_access.connections_per_ip_per_sec", line(14)),
        ("listen.http_access.allow_missing_origin", line(15)),
        ("listen.http_access.origins[1]", line(16)),
    ];
    assert_eq!(found.len(), expected.len(), "{problems:#?}");
    for (key, place) in expected {
        assert!(
            found.contains(&(key, place.clone())),
            "{key} at {place:?} missing from {problems:#?}"
        );
    }
    assert!(
        problems
            .iter()
            .any(|(_, _, t)| t.contains("the network is 10.0.0.0/8")),
        "{problems:#?}"
    );
}

#[test]
fn a_jwks_file_that_cannot_be_read_or_parsed_and_a_bad_jwks_url_are_named_by_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let invalid = dir.path().join("jwks.json");
    std::fs::write(&invalid, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
    let app = |id: &str, tokens: &str| {
        format!(
            "[[apps]]\nid = \"{id}\"\nsecret = \"0123456789abcdef{id}\"\n\
             api_key = \"0123456789abcdef{id}\"\ntokens = {{ {tokens} }}\n"
        )
    };
    let text = [
        app("a", "jwks_file = \"/nonexistent/jwks.json\""),
        app(
            "b",
            &format!("jwks_file = {:?}", invalid.display().to_string()),
        ),
        app(
            "c",
            "jwks_url = \"ftp://idp.example/jwks\", jwks_refresh = \"0s\"",
        ),
        // Only a URL: tokens can verify, and nothing is fetched to validate it.
        app(
            "d",
            "hs256 = false, jwks_url = \"https://idp.example/jwks\", jwks_refresh = \"1h\"",
        ),
    ]
    .join("\n");
    let problems = problems_of(&text);
    let found: Vec<(&str, &Place, &str)> = problems
        .iter()
        .map(|(key, place, text)| (key.as_str(), place, text.as_str()))
        .collect();
    assert_eq!(found.len(), 4, "{found:#?}");
    let (key, place, text) = found[0];
    assert_eq!((key, place), ("apps[0].tokens.jwks_file", &line(5)));
    assert!(
        text.contains("cannot read /nonexistent/jwks.json"),
        "{text}"
    );
    let (key, place, text) = found[1];
    assert_eq!((key, place), ("apps[1].tokens.jwks_file", &line(11)));
    assert!(
        text.contains("no RS256 or ES256 signing key (keys[0] skipped: key type not supported"),
        "{text}"
    );
    let (key, _, text) = found[2];
    assert_eq!(key, "apps[2].tokens.jwks_url");
    assert!(text.contains("must start with https://"), "{text}");
    assert_eq!(
        found[3].2,
        "apps[2].tokens.jwks_refresh must be between 1s and 1d"
    );
}

#[test]
fn the_gateway_send_buffer_is_capped_by_default_and_checked() {
    assert_eq!(Config::default().gateway.socket_send_buffer, 64 * 1024);
    let config = Config::from_toml("[gateway]\nsocket_send_buffer = 0\n").unwrap();
    assert_eq!(
        config.gateway.socket_send_buffer, 0,
        "0 leaves the kernel's autotuning"
    );
    let err = Config::from_toml("[gateway]\nsocket_send_buffer = 2147483647\n").unwrap_err();
    assert!(
        err.to_string().contains("gateway.socket_send_buffer"),
        "{err}"
    );
}

#[test]
fn the_log_section_is_read_checked_and_overridden_by_its_variables() {
    let config = Config::default();
    assert_eq!(config.log.filter, DEFAULT_LOG_FILTER);
    assert_eq!(config.log.format, LogFormat::Text);

    let config =
        Config::from_toml("[log]\nfilter = \"warn,tether_server=debug\"\nformat = \"json\"\n")
            .unwrap();
    assert_eq!(config.log.filter, "warn,tether_server=debug");
    assert_eq!(config.log.format, LogFormat::Json);

    // TETHER_LOG and TETHER_LOG_FORMAT are the binary's (no `__`), not overrides of the file.
    let env = [
        ("TETHER_LOG__FORMAT".to_string(), "json".to_string()),
        ("TETHER_LOG".to_string(), "debug".to_string()),
        ("TETHER_LOG_FORMAT".to_string(), "text".to_string()),
    ];
    let config = Config::load_with_env(None, env).unwrap();
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.filter, DEFAULT_LOG_FILTER);

    let err =
        Config::from_toml("[log]\nfilter = \"info,fjall=loud\"\nformat = \"xml\"\n").unwrap_err();
    let text = err.to_string();
    for needle in ["log.filter", "not a tracing filter", "log.format", "xml"] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let err = Config::from_toml("[log]\nfilter = \" \"\n").unwrap_err();
    assert!(
        err.to_string().contains("log.filter must not be empty"),
        "{err}"
    );
}
