//! `/metrics` as a dashboard sees it: a real node with the embedded store, a real client, a
//! push of each qos and a publication; then the page is scraped and checked: every metric has
//! `# HELP` and `# TYPE`, no metric is a quantile summary, the latency histograms saw what was
//! sent, and every metric the Grafana dashboard (`deploy/grafana/tether.json`) queries is there.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{Value, json};
use tether_proto::{Body, Frame, Subscribe};
use tether_server::Config;
use tether_server::config::StoreBackend;

/// One scrape, parsed: the declared type and help of each family, and each sample's name.
struct Page {
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    samples: BTreeSet<String>,
    text: String,
}

fn parse(text: String) -> Page {
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a TYPE line has a type");
            types.insert(name.to_owned(), kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!help.trim().is_empty(), "empty HELP for {name}");
            helps.insert(name.to_owned());
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line.find(['{', ' ']).expect("a sample line has a value");
            samples.insert(line[..end].to_owned());
        }
    }
    Page {
        types,
        helps,
        samples,
        text,
    }
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and `_count` samples are
/// its own.
fn family<'a>(page: &Page, sample: &'a str) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && page.types.get(base).is_some_and(|t| t == "histogram")
        {
            return base;
        }
    }
    sample
}

/// The metric names a PromQL expression reads. Strings, label matchers (`{...}`), ranges
/// (`[...]`) and grouping clauses (`by (...)`, `without (...)`, `on (...)`, `ignoring (...)`)
/// are dropped; what is left is functions and aggregations (a name followed by `(`), keywords,
/// numbers and metric names.
fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    ];
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => i = skip_past(&chars, i, '}'),
            '[' => i = skip_past(&chars, i, ']'),
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let next_word: String = chars[j..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                // `sum by (le) (...)`: an aggregation with its grouping before its argument.
                let called = chars.get(j) == Some(&'(')
                    || (AGGREGATIONS.contains(&word.as_str())
                        && (next_word == "by" || next_word == "without"));
                if GROUPING.contains(&word.as_str()) && called {
                    i = skip_past(&chars, j, ')');
                } else if !called && !KEYWORDS.contains(&word.as_str()) {
                    names.push(word);
                }
            }
            // Numbers (`0.99`, `1e3`) and durations: skip the whole token.
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The index after the `close` that ends what opens at `open_at`.
fn skip_past(chars: &[char], open_at: usize, close: char) -> usize {
    let open = chars[open_at];
    let mut depth = 0;
    let mut i = open_at;
    while i < chars.len() {
        if chars[i] == open {
            depth += 1;
        } else if chars[i] == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    panic!("unbalanced {open} in {}", chars.iter().collect::<String>());
}

/// Every PromQL expression of the dashboard: its panels' targets and its template variables'
/// queries (`label_values(metric, label)` reads `metric`).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(
                target["expr"]
                    .as_str()
                    .expect("a target has an expr")
                    .to_owned(),
            );
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let query = var["query"]["query"].as_str().or(var["query"].as_str());
        if var["type"] == "query"
            && let Some(query) = query
        {
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .expect("template queries are label_values(metric, label)");
            exprs.push(inner.split(',').next().unwrap().to_owned());
        }
    }
    exprs
}

#[test]
fn promql_names_are_read_past_functions_matchers_ranges_and_groupings() {
    let expr = r#"histogram_quantile(0.99, sum by (le, route) (rate(tether_http_request_duration_seconds_bucket{instance=~"$instance",route!="x{y}"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(expr),
        ["tether_http_request_duration_seconds_bucket"]
    );
    let expr = "sum(rate(a_sum[5m])) / on (job) sum(rate(a_count[5m])) > bool 1e3";
    assert_eq!(metric_names(expr), ["a_sum", "a_count"]);
    assert_eq!(metric_names("process_open_fds"), ["process_open_fds"]);
}

#[tokio::test]
async fn every_metric_has_help_and_a_type_and_every_metric_the_dashboard_queries_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests();
    config.store.backend = StoreBackend::Embedded;
    config.node.data_dir = dir.path().to_owned();
    let node = start(config).await;
    let http = Http::new(&node);

    // Traffic for the labelled series: a connection, a server-side subscription, a push of
    // each qos and a publication, each seen by the client.
    let (mut phone, _) = TcpClient::connected(node.tcp_addr().unwrap(), "alice", "phone", 0).await;
    let reply = http
        .post_raw(
            &format!("/v1/apps/{APP}/users/alice/topics/news"),
            Some(API_KEY),
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(matches!(phone.frame().await.body, Body::Subscribed(_)));
    for qos in [0, 1] {
        http.push(&json!({"users": ["alice"], "payload": "hi", "qos": qos}).to_string())
            .await;
        assert_eq!(expect_push(phone.frame().await).qos, qos);
    }
    let reply = http
        .post_raw(
            &format!("/v1/apps/{APP}/topics/news/publish"),
            Some(API_KEY),
            &json!({"payload": "news"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(matches!(phone.frame().await.body, Body::Publication(_)));
    // A request refused (a subscribe for an app the connection is not bound to), and a client
    // that goes away.
    let subscribe = Subscribe {
        app: "not-bound".into(),
        topic: "news".into(),
        since: None,
        token: None,
    };
    phone.send(&Frame::new(7, subscribe)).await;
    assert!(matches!(phone.frame().await.body, Body::Error(_)));
    let (laptop, _) = TcpClient::connected(node.tcp_addr().unwrap(), "bob", "laptop", 0).await;
    drop(laptop);
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(
        &http.metrics().await,
        "tether_disconnects_total{code=\"peer\"}",
    )
    .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no disconnect counted after {WAIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let page = parse(http.metrics().await);

    // HELP and TYPE on every family; histograms, never summaries.
    for sample in &page.samples {
        let family = family(&page, sample);
        assert!(page.types.contains_key(family), "no TYPE for {sample}");
        assert!(page.helps.contains(family), "no HELP for {sample}");
    }
    for (name, kind) in &page.types {
        assert_ne!(
            kind, "summary",
            "{name} is a summary: it cannot be added across nodes"
        );
        assert!(page.helps.contains(name), "no HELP for {name}");
    }

    // What was sent shows in the histograms (the recorder is the process's, shared by the
    // tests of this binary: at least, not exactly). The qos 1 push was queued, as durable
    // pushes always are; the qos 0 push may have been written at once or queued.
    let count = |series: &str| {
        page.text
            .lines()
            .filter(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    assert!(count("tether_push_write_seconds_count{qos=\"0\"") >= 1.0);
    assert!(count("tether_push_write_seconds_count{qos=\"1\",path=\"queued\"}") >= 1.0);
    assert!(count("tether_fanout_duration_seconds_count{kind=\"topic\"}") >= 1.0);
    assert!(count("tether_store_fsync_seconds_count") >= 1.0);
    let push_route = "tether_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/apps/{app}/push\",status=\"200\"}";
    assert!(count(push_route) >= 2.0, "{push_route} missing");
    // The histogram's _count is the request counter: no second series per label set.
    assert!(!page.text.contains("tether_http_requests_total"));
    // The path's own values never become labels.
    assert!(!page.text.contains("route=\"/v1/apps/demo/"));
    let version = env!("CARGO_PKG_VERSION");
    let build = page
        .text
        .lines()
        .find(|l| l.starts_with("tether_build_info{"))
        .expect("tether_build_info");
    assert!(build.contains(&format!("version=\"{version}\"")), "{build}");
    assert!(build.contains("commit=\""), "{build}");
    assert!(!build.contains("commit=\"\""), "{build}");
    assert!(page.samples.contains("process_resident_memory_bytes"));
    assert!(page.samples.contains("process_cpu_seconds_total"));
    assert!(page.samples.contains("process_open_fds"));
    assert!(page.samples.contains("process_threads"));

    // The dashboard's names, every one served.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/tether.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 20, "only {} expressions found", exprs.len());
    let mut missing = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            if !page.samples.contains(&name) {
                missing.insert(name.clone());
            }
            queried.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics lacks: {missing:?}"
    );
    println!(
        "the dashboard's {} expressions query {} metrics, all served",
        exprs.len(),
        queried.len()
    );
}
