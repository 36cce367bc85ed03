//! Server-Sent Events, end to end: streams read over raw TCP (and one with reqwest), what the
//! client sends POSTed with reqwest to its session, on the WebSocket listener of a real node.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use serde_json::{Value, json};
use tether_server::config::Secret;
use tether_server::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// One event of a stream.
#[derive(Debug, Default, Clone)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: String,
    retry: Option<u32>,
}

/// A stream's client over raw TCP, parsing events as `EventSource` does.
struct Stream {
    socket: TcpStream,
    buf: BytesMut,
    status: u16,
    head: String,
    /// Comment lines seen (keep-alives).
    comments: usize,
    /// The session named by the stream's first event.
    session: Option<String>,
    /// The last `id:` seen, as `EventSource` keeps it.
    last_id: Option<String>,
}

fn sse_addr(node: &Node) -> String {
    node.ws_addr().expect("ws listener").to_string()
}

/// A query that binds the demo app as `user` from `device`.
fn query(user: &str, device: &str) -> String {
    format!("device={device}&app={APP}&token={}", token(user))
}

impl Stream {
    /// `GET /v1/sse?query` with extra header lines; reads the answer's head.
    async fn open(node: &Node, query: &str, headers: &str) -> Stream {
        Stream::open_with(node, query, headers, None).await
    }

    /// [`Stream::open`] with the socket's receive buffer set to `recv_buffer` bytes.
    async fn open_with(
        node: &Node,
        query: &str,
        headers: &str,
        recv_buffer: Option<u32>,
    ) -> Stream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).unwrap();
        }
        let addr = node.ws_addr().expect("ws listener");
        let socket = timeout(WAIT, socket.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut stream = Stream {
            socket,
            buf: BytesMut::new(),
            status: 0,
            head: String::new(),
            comments: 0,
            session: None,
            last_id: None,
        };
        let request = format!(
            "GET /v1/sse?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{headers}\r\n"
        );
        stream.socket.write_all(request.as_bytes()).await.unwrap();
        stream.read_head().await;
        stream
    }

    async fn read_head(&mut self) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.buf.split_to(end + 4);
                self.head = String::from_utf8(head.to_vec()).unwrap();
                self.status = self.head[9..12].parse().unwrap();
                return;
            }
            self.fill().await;
        }
    }

    /// Reads more bytes; panics at the end of the stream or after [`WAIT`].
    async fn fill(&mut self) {
        let n = timeout(WAIT, self.socket.read_buf(&mut self.buf))
            .await
            .expect("nothing arrived in time")
            .expect("read");
        assert!(n > 0, "the stream ended; unread: {:?}", self.buf);
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The rest of a refused request's answer: its JSON body.
    async fn body(&mut self) -> Value {
        let len: usize = self.header("content-length").unwrap().parse().unwrap();
        while self.buf.len() < len {
            self.fill().await;
        }
        serde_json::from_slice(&self.buf[..len]).unwrap()
    }

    /// The next event, waiting at most [`WAIT`].
    async fn event(&mut self) -> Event {
        let mut event = Event::default();
        let mut data = Vec::new();
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                self.fill().await;
                continue;
            };
            let line = self.buf.split_to(end + 1);
            let line = std::str::from_utf8(&line[..end]).expect("UTF-8 lines");
            if line.is_empty() {
                if data.is_empty() {
                    continue;
                }
                event.data = data.join("\n");
                if event.id.is_some() {
                    self.last_id = event.id.clone();
                }
                if event.event.as_deref() == Some("session") {
                    self.session = Some(event.data.clone());
                }
                return event;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "id" => event.id = Some(value),
                "event" => event.event = Some(value),
                "data" => data.push(value),
                "retry" => event.retry = value.parse().ok(),
                other => panic!("unknown field {other}"),
            }
        }
    }

    /// The next frame (a message event's data), with the event's id.
    async fn frame(&mut self) -> (Value, Option<String>) {
        let event = self.event().await;
        assert_eq!(event.event, None, "not a message: {event:?}");
        let frame = serde_json::from_str(&event.data).expect("a JSON frame");
        (frame, event.id)
    }

    /// Opens a stream and reads its session and `connected`.
    async fn connected(node: &Node, query: &str, headers: &str) -> (Stream, Value) {
        let mut stream = Stream::open(node, query, headers).await;
        assert_eq!(stream.status, 200, "{}", stream.head);
        let session = stream.event().await;
        assert_eq!(session.event.as_deref(), Some("session"), "{session:?}");
        let (connected, _) = stream.frame().await;
        assert_eq!(connected["op"], "connected", "{connected}");
        (stream, connected)
    }

    /// Waits for the end of the stream, skipping what comes before it; the frames read.
    async fn frames_until_end(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event = self.buf.split_to(end + 2);
                for line in std::str::from_utf8(&event).unwrap().lines() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        frames.push(serde_json::from_str(data).unwrap());
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.socket.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return frames,
                Ok(Ok(_)) => {}
                Err(_) => panic!("the stream did not end; frames so far: {frames:?}"),
            }
        }
    }

    /// Reads for `time`, expecting nothing but keep-alives: how many came.
    async fn keep_alives_for(&mut self, time: Duration) -> usize {
        let before = self.comments;
        if let Ok(event) = timeout(time, self.event()).await {
            panic!("expected keep-alives only, got {event:?}");
        }
        self.comments - before
    }

    /// Nothing but keep-alives arrives for a while.
    async fn quiet(&mut self) {
        if let Ok(event) = timeout(Duration::from_millis(200), self.event()).await {
            panic!("expected nothing, got {event:?}");
        }
    }
}

/// POSTs to a stream's session.
struct Poster {
    client: reqwest::Client,
    base: String,
}

impl Poster {
    fn new(node: &Node) -> Poster {
        Poster {
            client: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
            base: format!("http://{}/v1/sse/", sse_addr(node)),
        }
    }

    async fn post(&self, session: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{session}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn ok(&self, stream: &Stream, frame: Value) {
        let (status, body) = self
            .post(stream.session.as_deref().unwrap(), &frame.to_string())
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

const ADMIN_KEY: &str = "admin-key-0123456789";

fn config() -> Config {
    let mut config = Config::for_tests();
    config.gateway.heartbeat_min = Duration::from_millis(200);
    config.admin.key = Some(Secret::new(ADMIN_KEY));
    config
}

async fn push(http: &Http, user: &str, qos: u8, n: u32) {
    let body = json!({"users": [user], "qos": qos, "payload": {"n": n}});
    http.push(&body.to_string()).await;
}

async fn publish(http: &Http, topic: &str, n: u32) -> u64 {
    let reply = http
        .post_raw(
            &format!("/v1/apps/{APP}/topics/{topic}/publish"),
            Some(API_KEY),
            &json!({"qos": 1, "payload": {"n": n}}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["offset"].as_u64().expect("an offset")
}

/// `device`'s acked position as presence shows it.
async fn acked(http: &Http, user: &str, device: &str) -> Option<u64> {
    let presence = http.presence(user).await;
    presence["devices"]
        .as_array()?
        .iter()
        .find(|d| d["device"] == device)
        .and_then(|d| d["acked"].as_u64())
}

async fn wait_acked(http: &Http, user: &str, device: &str, seq: u64) {
    let deadline = Instant::now() + WAIT;
    while acked(http, user, device).await != Some(seq) {
        assert!(Instant::now() < deadline, "{device} never acked {seq}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_stream_names_its_session_then_streams_pushes_with_ids_on_the_durable_ones() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let (mut stream, connected) = Stream::connected(
        &node,
        &query("alice", "browser"),
        "Origin: https://a.example\r\n",
    )
    .await;
    assert_eq!(
        stream.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(
        stream.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        connected["bindings"],
        json!([{"app": APP, "user": "alice"}])
    );
    let session = stream.session.clone().unwrap();
    assert!(session.starts_with(&format!("{}.", base64_url(&connected["node"]))));

    push(&http, "alice", 0, 1).await;
    let (frame, id) = stream.frame().await;
    assert_eq!(
        (&frame["op"], frame["qos"].as_u64(), &frame["payload"]),
        (&json!("push"), Some(0), &json!({"n": 1}))
    );
    assert_eq!(id, None, "a transient push moves no position");
    push(&http, "alice", 1, 2).await;
    let (frame, id) = stream.frame().await;
    assert_eq!(frame["seq"], 1);
    assert_eq!(id.as_deref(), Some("demo:1"));

    // Counted per transport (the gauge is the process's: other tests' nodes add to it).
    let page = http.metrics().await;
    assert!(metric(&page, r#"tether_connections{transport="sse"}"#) >= Some(1.0));
    let stats = http.get("/v1/admin/stats", Some(ADMIN_KEY)).await.body;
    assert_eq!(stats["connections"]["sse"], 1, "{stats}");
    assert_eq!(stats["connections"]["by_app"][APP]["sse"], 1, "{stats}");
    http.wait_presence("alice", 1).await;
    assert_eq!(
        http.presence("alice").await["connections"][0]["transport"],
        "sse"
    );
}

fn base64_url(node: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(node.as_str().unwrap())
}

#[tokio::test]
async fn what_the_client_posts_is_served_on_its_stream() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let poster = Poster::new(&node);
    let (mut stream, _) = Stream::connected(&node, &query("alice", "browser"), "").await;
    for n in 1..=3 {
        push(&http, "alice", 1, n).await;
        assert_eq!(stream.frame().await.0["seq"], n);
    }

    // An ack moves the device's cursor; a ping is answered on the stream with its id.
    poster
        .ok(&stream, json!({"op": "ack", "id": 5, "app": APP, "seq": 2}))
        .await;
    wait_acked(&http, "alice", "browser", 2).await;
    poster.ok(&stream, json!({"op": "ping", "id": 6})).await;
    assert_eq!(stream.frame().await.0, json!({"op": "pong", "id": 6}));

    // Several frames in one POST, in order: a sync and a subscribe.
    let frames = json!([
        {"op": "sync", "id": 7, "app": APP, "after": 1},
        {"op": "subscribe", "id": 8, "app": APP, "topic": "room"},
    ]);
    poster.ok(&stream, frames).await;
    let mut ops = Vec::new();
    for _ in 0..4 {
        let (frame, _) = stream.frame().await;
        ops.push((
            frame["op"].as_str().unwrap().to_owned(),
            frame["id"].as_u64().unwrap(),
        ));
    }
    // The sync's answer is in order; the subscribe's comes from the fan-out, in between or not.
    let sync: Vec<_> = ops
        .iter()
        .filter(|(_, id)| *id == 7)
        .map(|(op, _)| &op[..])
        .collect();
    assert_eq!(sync, ["push", "push", "synced"]);
    assert!(ops.contains(&("subscribed".into(), 8)), "{ops:?}");
    let offset = publish(&http, "room", 1).await;
    let (frame, id) = stream.frame().await;
    assert_eq!(
        (&frame["op"], frame["offset"].as_u64()),
        (&json!("publication"), Some(offset))
    );
    assert_eq!(id, Some(format!("demo:3,demo:room:{offset}")));

    // A request the session refuses gets its error on the stream, and the stream goes on.
    poster
        .ok(
            &stream,
            json!({"op": "ack", "id": 9, "app": "nope", "seq": 1}),
        )
        .await;
    let (frame, _) = stream.frame().await;
    assert_eq!(
        (&frame["op"], &frame["id"], &frame["code"]),
        (&json!("error"), &json!(9), &json!(4300))
    );
    poster.ok(&stream, json!({"op": "ping", "id": 10})).await;
    assert_eq!(stream.frame().await.0["op"], "pong");
}

#[tokio::test]
async fn a_reconnect_with_the_last_event_id_resumes_pushes_and_topics_after_it() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let poster = Poster::new(&node);
    // A topic named in the URL, and one subscribed with a POST.
    let url = format!("{}&topic=room-1", query("alice", "browser"));
    let (mut stream, _) = Stream::connected(&node, &url, "").await;
    let (subscribed, id) = stream.frame().await;
    assert_eq!(
        (
            &subscribed["op"],
            &subscribed["id"],
            &subscribed["recovery"]
        ),
        (&json!("subscribed"), &json!(0), &json!("live"))
    );
    assert_eq!(id.as_deref(), Some("demo:room-1:0"));
    poster
        .ok(
            &stream,
            json!({"op": "subscribe", "id": 1, "app": APP, "topic": "room-2"}),
        )
        .await;
    assert_eq!(stream.frame().await.0["op"], "subscribed");
    push(&http, "alice", 1, 1).await;
    assert_eq!(stream.frame().await.0["seq"], 1);
    publish(&http, "room-1", 1).await;
    publish(&http, "room-2", 1).await;
    stream.frame().await;
    stream.frame().await;
    let last = stream.last_id.clone().unwrap();
    assert_eq!(last, "demo:1,demo:room-1:1,demo:room-2:1");
    drop(stream);
    http.wait_presence("alice", 0).await;

    // Missed while away: a push, and a publication in each topic.
    push(&http, "alice", 1, 2).await;
    publish(&http, "room-1", 2).await;
    publish(&http, "room-2", 2).await;

    // EventSource reconnects to the URL it began with, sending the last id it saw.
    let (mut stream, _) =
        Stream::connected(&node, &url, &format!("Last-Event-ID: {last}\r\n")).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let (f, _) = stream.frame().await;
        got.push(json!([
            f["op"],
            f["topic"],
            f["seq"],
            f["offset"],
            f["recovery"]
        ]));
    }
    got.sort_by_key(|v| v.to_string());
    let mut want = vec![
        json!(["push", null, 2, null, null]),
        json!(["subscribed", "room-1", null, 2, "complete"]),
        json!(["publication", "room-1", null, 2, null]),
        json!(["subscribed", "room-2", null, 2, "complete"]),
        json!(["publication", "room-2", null, 2, null]),
    ];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);
    assert_eq!(
        stream.last_id.as_deref(),
        Some("demo:2,demo:room-1:2,demo:room-2:2")
    );
    stream.quiet().await;
}

#[tokio::test]
async fn refusals_for_good_are_http_errors_and_the_rest_are_streams_that_end() {
    let node = start(config()).await;
    let mut bad = Stream::open(&node, "device=d&app=demo&token=nope", "").await;
    assert_eq!(bad.status, 401, "{}", bad.head);
    assert_eq!(bad.body().await["code"], "bad_token");
    let unknown = format!("device=d&app=other&token={}", token("alice"));
    let mut bad = Stream::open(&node, &unknown, "").await;
    assert_eq!(
        (bad.status, bad.body().await["code"].clone()),
        (404, json!("unknown_app"))
    );
    let mut bad = Stream::open(&node, "device=d&token=t", "").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body().await["error"]
            .as_str()
            .unwrap()
            .contains("token must follow the app")
    );
    let mut bad = Stream::open(&node, &query("alice", "d"), "Last-Event-ID: demo:x\r\n").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body().await["error"]
            .as_str()
            .unwrap()
            .contains("Last-Event-ID")
    );

    // Kicked: the stream ends with its disconnect (EventSource then reconnects and is
    // refused by the business's next token, or not).
    let http = Http::new(&node);
    let (mut stream, _) = Stream::connected(&node, &query("alice", "d"), "").await;
    http.kick("alice").await;
    let frames = stream.frames_until_end().await;
    assert_eq!(frames.last().unwrap()["code"], 4207, "{frames:?}");

    // A draining node answers a new stream with 200 and its disconnect, which EventSource
    // reconnects after.
    let reply = http.post_raw("/v1/admin/drain", Some(ADMIN_KEY), "").await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let mut stream = Stream::open(&node, &query("alice", "d"), "").await;
    assert_eq!(stream.status, 200);
    let frames = stream.frames_until_end().await;
    assert_eq!(frames.last().unwrap()["code"], 4101, "{frames:?}");
}

#[tokio::test]
async fn posts_are_checked_and_answered_on_a_socket_kept_alive() {
    let node = start(config()).await;
    let poster = Poster::new(&node);
    let (stream, _) = Stream::connected(&node, &query("alice", "d"), "").await;
    let session = stream.session.clone().unwrap();
    let (status, body) = poster.post(&session, r#"{"op":"ack","app":"demo"}"#).await;
    assert_eq!((status, &body["code"]), (400, &json!("bad_request")));
    assert!(body["error"].as_str().unwrap().contains("seq"), "{body}");
    let (status, body) = poster.post(&session, "[1,").await;
    assert_eq!((status, &body["code"]), (400, &json!("bad_request")));
    let forged = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAQ",
        session.split('.').next().unwrap()
    );
    let (status, body) = poster.post(&forged, r#"{"op":"ping"}"#).await;
    assert_eq!((status, &body["code"]), (404, &json!("unknown_session")));
    let (status, body) = poster.post("garbage", r#"{"op":"ping"}"#).await;
    assert_eq!((status, &body["code"]), (404, &json!("unknown_session")));
    let big = format!(r#"{{"op":"ping","x":"{}"}}"#, "x".repeat(70_000));
    let (status, body) = poster.post(&session, &big).await;
    assert_eq!((status, &body["code"]), (413, &json!("too_large")));

    // Raw: two POSTs and a preflight on one socket, then a GET of the wrong method.
    let mut socket = TcpStream::connect(sse_addr(&node)).await.unwrap();
    let ping = r#"{"op":"ping","id":1}"#;
    let requests = format!(
        "POST /v1/sse/{session} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Content-Length: {len}\r\n\r\n{ping}\
         OPTIONS /v1/sse/{session} HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type\r\n\r\n\
         POST /v1/sse/{session} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n{ping}\
         DELETE /v1/sse/{session} HTTP/1.1\r\nHost: x\r\n\r\n",
        len = ping.len()
    );
    socket.write_all(requests.as_bytes()).await.unwrap();
    let mut answers = String::new();
    let _ = timeout(WAIT, socket.read_to_string(&mut answers))
        .await
        .expect("answers");
    let statuses: Vec<&str> = answers
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1"))
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 202 Accepted",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 202 Accepted",
            "HTTP/1.1 405 Method Not Allowed"
        ],
        "{answers}"
    );
    assert!(
        answers.contains("access-control-allow-methods: GET, POST\r\n"),
        "{answers}"
    );
    assert!(
        answers.contains(
            "access-control-allow-headers: authorization, content-type, last-event-id\r\n"
        )
    );
    let mut stream = stream;
    assert_eq!(stream.frame().await.0["op"], "pong");
    assert_eq!(stream.frame().await.0["op"], "pong");

    // The WebSocket endpoint is still the listener's.
    let (_ws, _) = WsClient::connected(&node, "bob", "d", 0).await;
}

/// Found by schemathesis (crates/tether/tests/openapi.rs): the SSE routes' 405 had no `Allow`
/// header, which RFC 9110 (15.5.6) requires of every 405.
#[tokio::test]
async fn a_wrong_method_is_answered_405_with_the_routes_methods_in_allow() {
    let node = start(config()).await;
    for (request, allow) in [
        ("TRACE /v1/sse/abc.def", "allow: POST, OPTIONS"),
        ("PUT /v1/sse?device=d&app=demo", "allow: GET, OPTIONS"),
    ] {
        let mut socket = TcpStream::connect(sse_addr(&node)).await.unwrap();
        let head = format!("{request} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let _ = timeout(WAIT, socket.read_to_string(&mut answer))
            .await
            .expect("an answer");
        assert!(
            answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{request}: {answer}"
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("{}\r\n", allow.to_ascii_lowercase())),
            "{request}: {answer}"
        );
        assert!(
            answer.contains(r#""code":"method_not_allowed""#),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn origins_are_the_websocket_listeners_with_the_apis_cors_answers() {
    let mut config = config();
    config.listen.ws_access.origins = vec!["https://app.example".into()];
    let node = start(config).await;
    let good = "Origin: https://app.example\r\n";
    let (stream, _) = Stream::connected(&node, &query("alice", "d"), good).await;
    assert_eq!(
        stream.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        stream.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(stream.header("vary").as_deref(), Some("origin"));
    let mut refused = Stream::open(
        &node,
        &query("alice", "d"),
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(refused.body().await["code"], "forbidden");

    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let url = format!(
        "http://{}/v1/sse/{}",
        sse_addr(&node),
        stream.session.clone().unwrap()
    );
    let preflight = |origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(ok.headers()["access-control-max-age"], "7200");
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    let page = Http::new(&node).metrics().await;
    assert!(
        metric(
            &page,
            r#"tether_connections_refused_total{listener="ws",reason="origin"}"#
        ) >= Some(2.0),
        "refusals counted as the listener's"
    );
}

#[tokio::test]
async fn an_idle_stream_parks_gets_keep_alives_and_is_woken_by_pushes_and_posts() {
    let mut config = config();
    config.gateway.park_after = Duration::from_millis(100);
    let node = start(config).await;
    let http = Http::new(&node);
    let poster = Poster::new(&node);
    let url = format!("{}&heartbeat_ms=300", query("alice", "d"));
    let (mut stream, connected) = Stream::connected(&node, &url, "").await;
    assert_eq!(connected["heartbeat_ms"], 300);
    wait_until("the stream parks", || node.parked_connections() == 1).await;

    // Silence: keep-alive comments, one per interval, and the connection is not closed for
    // its client's silence.
    let before = stream.comments;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    push(&http, "alice", 0, 1).await;
    assert_eq!(stream.frame().await.0["op"], "push");
    assert!(
        stream.comments >= before + 2,
        "{} keep-alives",
        stream.comments - before
    );
    wait_until("the stream parks again", || node.parked_connections() == 1).await;
    poster.ok(&stream, json!({"op": "ping", "id": 3})).await;
    assert_eq!(stream.frame().await.0, json!({"op": "pong", "id": 3}));
    push(&http, "alice", 1, 2).await;
    assert_eq!(stream.frame().await.0["seq"], 1);
    wait_until("the stream parks again", || node.parked_connections() == 1).await;
    assert!(node.connections() == 1);
}

#[tokio::test]
async fn a_stream_that_is_not_read_is_closed_as_slow() {
    let mut config = config();
    config.limits.outbound_queue_bytes = 2 * config.limits.max_frame as usize;
    config.gateway.write_timeout = Duration::from_millis(500);
    let node = start(config).await;
    let http = Http::new(&node);
    let mut stream = Stream::open_with(&node, &query("alice", "d"), "", Some(4096)).await;
    assert_eq!(stream.event().await.event.as_deref(), Some("session"));
    // Stop reading: the socket's buffers fill, then the queue, then the node closes it.
    let payload = "x".repeat(4000);
    for _ in 0..1000 {
        let body = json!({"users": ["alice"], "payload": payload});
        http.push(&body.to_string()).await;
        if node.connections() == 0 {
            break;
        }
    }
    wait_until("the slow stream is closed", || node.connections() == 0).await;
    let page = http.metrics().await;
    assert!(metric(&page, r#"tether_disconnects_total{code="slow"}"#) >= Some(1.0));
    let frames = stream.frames_until_end().await;
    assert!(frames.len() < 1000, "the queue was dropped");
}

#[tokio::test]
async fn a_standard_http_client_reads_the_stream() {
    let node = start(config()).await;
    let http = Http::new(&node);
    let client = reqwest::Client::builder().build().unwrap();
    let url = format!("http://{}/v1/sse?{}", sse_addr(&node), query("carol", "d"));
    let mut response = timeout(WAIT, client.get(url).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let mut pushed = false;
    let deadline = Instant::now() + WAIT;
    while !text.contains(r#""op":"push""#) {
        if text.contains(r#""op":"connected""#) && !pushed {
            push(&http, "carol", 1, 7).await;
            pushed = true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = timeout(left, response.chunk())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("event: session\ndata: "), "{text}");
    assert!(
        text.contains("id: demo:1\ndata: {\"op\":\"push\""),
        "{text}"
    );
}

#[tokio::test]
async fn a_keep_alive_gives_a_parked_stream_a_task_only_while_it_is_written() {
    let mut config = config();
    // Parking after a silence would take this long: a stream that parks sooner parked by
    // itself, once its connect, or its keep-alive, was out.
    config.gateway.park_after = Duration::from_secs(30);
    let node = start(config).await;
    let url = format!("{}&heartbeat_ms=300", query("alice", "d"));
    let (mut stream, _) = Stream::connected(&node, &url, "").await;
    wait_until("the stream parks", || node.parked_connections() == 1).await;
    let comments = stream.keep_alives_for(Duration::from_millis(1000)).await;
    assert!(
        (1..=5).contains(&comments),
        "{comments} keep-alives in a second at 300 ms"
    );
    wait_until("the stream parks after its keep-alive", || {
        node.parked_connections() == 1
    })
    .await;
    assert_eq!(node.connections(), 1, "the client's silence closes nothing");
}

/// A node of a cluster in Redis `options` (see `tests/cluster.rs`).
fn cluster_config(options: &tether_redis::RedisOptions, id: &str) -> Config {
    let mut config = config();
    config.node.id = id.into();
    config.node.announce_interval = Duration::from_millis(200);
    config.cluster.redis = options.urls.clone();
    config.cluster.prefix = options.prefix.clone();
    config.store.backend = tether_server::config::StoreBackend::Redis;
    config
}

/// Without a Redis at `TETHER_TEST_REDIS` (default 127.0.0.1:6379) this test is skipped,
/// except under `CI=true`, where it fails.
#[tokio::test]
async fn in_a_cluster_a_post_that_lands_on_another_node_reaches_its_stream() {
    let Some(options) = tether_redis::testing::options("sse-post").await else {
        return;
    };
    let a = start(cluster_config(&options, "sse-a")).await;
    let b = start(cluster_config(&options, "sse-b")).await;
    let http_b = Http::new(&b);
    let (mut stream, connected) = Stream::connected(&a, &query("alice", "browser"), "").await;
    assert_eq!(connected["node"], "sse-a");
    // No sticky sessions: every POST goes through the other node's listener.
    let elsewhere = Poster::new(&b);
    elsewhere.ok(&stream, json!({"op": "ping", "id": 4})).await;
    assert_eq!(stream.frame().await.0, json!({"op": "pong", "id": 4}));

    http_b.wait_presence("alice", 1).await;
    push(&http_b, "alice", 1, 1).await;
    let (frame, id) = stream.frame().await;
    assert_eq!(
        (frame["seq"].as_u64(), id.as_deref()),
        (Some(1), Some("demo:1"))
    );
    elsewhere
        .ok(&stream, json!({"op": "ack", "id": 5, "app": APP, "seq": 1}))
        .await;
    wait_acked(&http_b, "alice", "browser", 1).await;
    let frames = json!([{"op": "subscribe", "id": 6, "app": APP, "topic": "room"}]);
    elsewhere.ok(&stream, frames).await;
    let (frame, _) = stream.frame().await;
    assert_eq!(
        (&frame["op"], &frame["id"]),
        (&json!("subscribed"), &json!(6))
    );
    let offset = publish(&http_b, "room", 1).await;
    let (frame, id) = stream.frame().await;
    assert_eq!(frame["offset"].as_u64(), Some(offset));
    assert_eq!(id, Some(format!("demo:1,demo:room:{offset}")));

    // A session whose node nobody answers for is gone: 404, as on its own node. A body the
    // node in between cannot read is refused there.
    let session = stream.session.clone().unwrap();
    let key = session.split_once('.').unwrap().1;
    let gone = format!("{}.{key}", base64_url(&json!("sse-gone")));
    let (status, body) = elsewhere.post(&gone, r#"{"op":"ping"}"#).await;
    assert_eq!((status, &body["code"]), (404, &json!("unknown_session")));
    let (status, body) = elsewhere.post(&session, r#"{"op":"ping""#).await;
    assert_eq!((status, &body["code"]), (400, &json!("bad_request")));
    a.shutdown();
    b.shutdown();
}
