//! The HTTP side of SSE: reading a request head on the WebSocket listener, telling its route,
//! reading a stream's `connect` from its request, and a POST's frames from its body.
//!
//! A stream is `GET /v1/sse?device=D&app=A&token=T[&last_seq=N][&topic=X...][&app=...]` (see
//! docs/protocol.md): the parameters after an `app` belong to that binding. A single binding's
//! token may come in `Authorization: Bearer` instead. `Last-Event-ID` (or the `last_event_id`
//! parameter, for a first connection, since `EventSource` sets no header) says where the client
//! stands: it wins over `last_seq`, and its topics are subscribed again.

use bytes::BytesMut;
use tether_proto::{Binding, Body, Connect, Frame, PROTOCOL_VERSION, Subscribe, json};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::event::Positions;
use crate::transport::upgrade::MAX_REQUEST;

/// Most headers a request may have (as for the WebSocket upgrade).
const MAX_HEADERS: usize = 100;

/// Most subscribes a stream's request may ask for (the session refuses past its own limit).
const MAX_TOPICS: usize = 256;

/// Where a stream is opened.
pub const STREAM_PATH: &str = "/v1/sse";

/// A request's head, owned.
#[derive(Default)]
pub struct Head {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// Names in lower case.
    headers: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Head {
    // The target and headers carry tokens and session keys: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("method", &self.method)
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// Whether the client keeps the connection for another request (HTTP/1.1 unless it says
    /// `Connection: close`).
    pub fn keep_alive(&self) -> bool {
        let close = self.header("connection").is_some_and(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        });
        self.minor >= 1 && !close
    }

    /// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight(&self) -> bool {
        self.method == "OPTIONS"
            && self.header("origin").is_some()
            && self.header("access-control-request-method").is_some()
    }
}

/// Why no request head came.
#[derive(Debug)]
pub enum HeadError {
    /// The client closed the connection (between requests: it is done).
    Closed,
    Io(std::io::Error),
    /// Not a request these routes can read (too large, malformed) or one for another path:
    /// the WebSocket upgrade answers it, as it always has.
    Unreadable,
}

/// Reads a request head into `buf` (which may already hold some of it): the head and its
/// length, left in `buf` with what follows it. At most [`MAX_REQUEST`] bytes.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(Head, usize), HeadError> {
    loop {
        match parse_head(buf) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) if buf.len() < MAX_REQUEST => {}
            _ => return Err(HeadError::Unreadable),
        }
        buf.reserve(1024.min(MAX_REQUEST - buf.len()));
        match stream.read_buf(buf).await {
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// A complete head and its length; `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let target = request.path.unwrap_or("");
    // Not SSE's: nothing owned is made of it (see `crate::gateway::sse`).
    if route_of(target.split('?').next().unwrap_or("")) == Route::Other {
        return Err(());
    }
    let head = Head {
        method: request.method.unwrap_or("").to_owned(),
        target: target.to_owned(),
        minor: request.version.unwrap_or(0),
        headers: request
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    };
    Ok(Some((head, len)))
}

/// Which of the listener's routes a request is for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v1/sse`: a stream.
    Stream,
    /// `/v1/sse/<session>`: frames for a session.
    Post(&'a str),
    /// Anything else: the WebSocket upgrade's (`/ws`), which answers the rest.
    Other,
}

pub fn route(head: &Head) -> Route<'_> {
    route_of(head.path())
}

/// The route of a request for `path` (without its query).
fn route_of(path: &str) -> Route<'_> {
    match path.strip_prefix(STREAM_PATH) {
        Some("") => Route::Stream,
        Some(rest) => match rest.strip_prefix('/') {
            Some(session) if !session.is_empty() && !session.contains('/') => Route::Post(session),
            _ => Route::Other,
        },
        None => Route::Other,
    }
}

/// What a stream's request asks for: its `connect`, the subscribes that follow it, and where
/// the client stands.
pub struct StreamRequest {
    pub connect: Connect,
    pub subscribes: Vec<Subscribe>,
    pub positions: Positions,
}

impl std::fmt::Debug for StreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Connect`'s bindings redact their tokens themselves.
        f.debug_struct("StreamRequest")
            .field("connect", &self.connect)
            .field("topics", &self.subscribes.len())
            .finish_non_exhaustive()
    }
}

impl StreamRequest {
    /// The frames the stream's session starts with: `connect`, then the subscribes, each with
    /// request id 0.
    pub fn frames(self) -> (Vec<Frame>, Positions) {
        let mut frames = Vec::with_capacity(1 + self.subscribes.len());
        frames.push(Frame::new(0, Body::Connect(self.connect)));
        frames.extend(
            self.subscribes
                .into_iter()
                .map(|s| Frame::new(0, Body::Subscribe(s))),
        );
        (frames, self.positions)
    }
}

/// Reads a stream's request (see the module docs); the error says what is wrong with it.
pub fn stream_request(head: &Head) -> Result<StreamRequest, String> {
    let mut connect = Connect {
        version: PROTOCOL_VERSION,
        device: String::new(),
        heartbeat_ms: 0,
        bindings: Vec::new(),
    };
    // Each binding's topics, in order.
    let mut topics: Vec<Vec<String>> = Vec::new();
    let mut topic_count = 0;
    let mut last_event_id = None;
    let number = |name: &str, value: &str| {
        value
            .parse::<u64>()
            .map_err(|_| format!("{name} must be a whole number"))
    };
    for (name, value) in url::form_urlencoded::parse(head.query().as_bytes()) {
        match &*name {
            "device" => connect.device = value.into_owned(),
            "version" => {
                connect.version = u8::try_from(number("version", &value)?)
                    .map_err(|_| "version must be at most 255".to_owned())?;
            }
            "heartbeat_ms" => {
                connect.heartbeat_ms = u32::try_from(number("heartbeat_ms", &value)?)
                    .map_err(|_| "heartbeat_ms is too large".to_owned())?;
            }
            "last_event_id" => last_event_id = Some(value.into_owned()),
            "app" => {
                connect.bindings.push(Binding {
                    app: value.into_owned(),
                    token: String::new(),
                    last_seq: None,
                });
                topics.push(Vec::new());
            }
            "token" | "last_seq" | "topic" => {
                let (Some(binding), Some(its_topics)) =
                    (connect.bindings.last_mut(), topics.last_mut())
                else {
                    return Err(format!("{name} must follow the app it is for"));
                };
                match &*name {
                    "token" => binding.token = value.into_owned(),
                    "last_seq" => binding.last_seq = Some(number("last_seq", &value)?),
                    _ => {
                        its_topics.push(value.into_owned());
                        topic_count += 1;
                        if topic_count > MAX_TOPICS {
                            return Err(format!("more than {MAX_TOPICS} topics"));
                        }
                    }
                }
            }
            // Unknown parameters are ignored, as unknown JSON fields are (a cache buster).
            _ => {}
        }
    }
    if let [binding] = &mut connect.bindings[..]
        && binding.token.is_empty()
        && let Some(bearer) = head
            .header("authorization")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    {
        binding.token = bearer.trim().to_owned();
    }
    // The header is newer than the parameter: EventSource reconnects to the URL it began with.
    let id = match head.header("last-event-id") {
        Some(id) => Some(
            std::str::from_utf8(id)
                .map_err(|_| "Last-Event-ID is not UTF-8".to_owned())?
                .trim()
                .to_owned(),
        ),
        None => last_event_id,
    };
    let mut positions = match id {
        Some(id) => Positions::parse(&id).map_err(|e| format!("Last-Event-ID: {e}"))?,
        None => Positions::default(),
    };
    let apps: Vec<&str> = connect.bindings.iter().map(|b| &b.app[..]).collect();
    positions.retain_apps(&apps);
    let mut subscribes = Vec::new();
    for (binding, topics) in connect.bindings.iter_mut().zip(&topics) {
        if let Some(seq) = positions.seq(&binding.app) {
            binding.last_seq = Some(seq);
        }
        for topic in topics {
            subscribes.push(subscribe(&binding.app, topic, &positions));
        }
    }
    // Topics the client holds that its URL does not name (it subscribed with a POST): again.
    for (app, topic, _) in positions.topics() {
        if !subscribes.iter().any(|s| s.app == app && s.topic == topic) {
            subscribes.push(subscribe(app, topic, &positions));
        }
    }
    // Positions of binding `last_seq`s the id did not give: the id carries them from the start.
    for binding in &connect.bindings {
        if let Some(seq) = binding.last_seq {
            positions.advance(&binding.app, None, seq);
        }
    }
    Ok(StreamRequest {
        connect,
        subscribes,
        positions,
    })
}

fn subscribe(app: &str, topic: &str, positions: &Positions) -> Subscribe {
    Subscribe {
        app: app.to_owned(),
        topic: topic.to_owned(),
        since: positions.offset(app, topic),
        token: None,
    }
}

/// A POST's frames: one JSON frame, or an array of them, each with its size in the body. The
/// error says what is wrong (the decoder's words, naming the field).
pub fn body_frames(body: &[u8]) -> Result<Vec<(Frame, usize)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    if !text.trim_start().starts_with('[') {
        let frame = json::decode(text.as_bytes()).map_err(|e| e.to_string())?;
        return Ok(vec![(frame, body.len())]);
    }
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON array: {e}"))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let frame = json::decode(raw.get().as_bytes())
                .map_err(|e| format!("frame {} of the array: {e}", i + 1))?;
            Ok((frame, raw.get().len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tether_proto::Op;

    use super::*;

    fn head(target: &str, headers: &[(&str, &str)]) -> Head {
        Head {
            method: "GET".into(),
            target: target.into(),
            minor: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn routes_are_told_by_path() {
        assert_eq!(route(&head("/v1/sse?x=1", &[])), Route::Stream);
        assert_eq!(route(&head("/v1/sse/abc.def", &[])), Route::Post("abc.def"));
        for other in ["/ws", "/v1/sse/", "/v1/sse/a/b", "/v1/ssex", "/", ""] {
            assert_eq!(route(&head(other, &[])), Route::Other, "{other}");
        }
    }

    #[test]
    fn a_stream_request_is_a_connect_with_its_bindings_in_order() {
        let r = stream_request(&head(
            "/v1/sse?device=d%201&heartbeat_ms=30000&app=demo&token=t1&topic=room-1\
             &topic=lobby&app=shop&token=t2&last_seq=4&v=cachebuster",
            &[],
        ))
        .unwrap();
        assert_eq!(r.connect.device, "d 1");
        assert_eq!(r.connect.heartbeat_ms, 30000);
        let bindings: Vec<_> = r
            .connect
            .bindings
            .iter()
            .map(|b| (&b.app[..], &b.token[..], b.last_seq))
            .collect();
        assert_eq!(bindings, [("demo", "t1", None), ("shop", "t2", Some(4))]);
        let topics: Vec<_> = r
            .subscribes
            .iter()
            .map(|s| (&s.topic[..], s.since))
            .collect();
        assert_eq!(topics, [("room-1", None), ("lobby", None)]);
        assert_eq!(r.positions.id(), "shop:4");
        let (frames, _) = r.frames();
        assert_eq!(
            frames.iter().map(|f| f.op()).collect::<Vec<_>>(),
            [Op::Connect, Op::Subscribe, Op::Subscribe]
        );
        assert!(frames.iter().all(|f| f.id == 0));
    }

    #[test]
    fn the_last_event_id_resumes_bindings_and_topics() {
        let target = "/v1/sse?device=d&app=demo&token=t&last_seq=2&topic=room-1\
                      &last_event_id=demo%3A3";
        let id = [("last-event-id", "demo:9,demo:room-1:41,demo:dm:7,other:5")];
        let r = stream_request(&head(target, &id)).unwrap();
        assert_eq!(r.connect.bindings[0].last_seq, Some(9), "the header wins");
        let topics: Vec<_> = r
            .subscribes
            .iter()
            .map(|s| (&s.topic[..], s.since))
            .collect();
        assert_eq!(topics, [("room-1", Some(41)), ("dm", Some(7))]);
        assert_eq!(r.positions.id(), "demo:9,demo:room-1:41,demo:dm:7");
        let r = stream_request(&head(target, &[])).unwrap();
        assert_eq!(r.connect.bindings[0].last_seq, Some(3), "the parameter");
        let r = stream_request(&head(
            "/v1/sse?device=d&app=demo",
            &[("authorization", "Bearer tok")],
        ))
        .unwrap();
        assert_eq!(r.connect.bindings[0].token, "tok");
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (target, wrong) in [
            ("/v1/sse?token=t&app=a", "token must follow the app"),
            (
                "/v1/sse?app=a&last_seq=x",
                "last_seq must be a whole number",
            ),
            ("/v1/sse?version=300", "version must be at most 255"),
            ("/v1/sse?app=a&last_event_id=a:b", "Last-Event-ID"),
        ] {
            let e = stream_request(&head(target, &[])).expect_err(target);
            assert!(e.contains(wrong), "{target}: {e}");
        }
    }

    #[test]
    fn a_body_is_one_frame_or_an_array() {
        let one = br#"{"op":"ack","id":3,"app":"demo","seq":5}"#;
        let frames = body_frames(one).unwrap();
        assert_eq!((frames[0].0.op(), frames[0].1), (Op::Ack, one.len()));
        let many = br#" [{"op":"ping","id":1}, {"op":"ack","app":"demo","seq":1}]"#;
        let ops: Vec<_> = body_frames(many)
            .unwrap()
            .iter()
            .map(|f| f.0.op())
            .collect();
        assert_eq!(ops, [Op::Ping, Op::Ack]);
        assert!(
            body_frames(br#"[{"op":"ack"}]"#)
                .unwrap_err()
                .contains("frame 1")
        );
        assert!(body_frames(b"[1,").is_err());
        assert!(body_frames(b"\xff").is_err());
        assert_eq!(body_frames(b"[]").unwrap().len(), 0);
    }

    #[test]
    fn only_sse_s_paths_get_an_owned_head() {
        let request = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let parsed = parse_head(request("/v1/sse?app=a").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(parsed.0.target, "/v1/sse?app=a");
        assert!(
            parse_head(request("/v1/sse/abc").as_bytes())
                .unwrap()
                .is_some()
        );
        // The WebSocket upgrade's, read by `transport::upgrade` as it is.
        for other in ["/ws", "/ws?v=1", "/v1/ssex", "/"] {
            assert!(parse_head(request(other).as_bytes()).is_err(), "{other}");
        }
        assert!(
            matches!(parse_head(b"GET /ws HTTP/1.1\r\n"), Ok(None)),
            "incomplete"
        );
    }

    proptest! {
        /// Any query is read or refused with a reason, never a panic.
        #[test]
        fn any_query_is_safe(query in "[a-z_=&%0-9:,A-F]{0,200}", id in ".{0,40}") {
            let _ = stream_request(&head(&format!("/v1/sse?{query}"), &[("last-event-id", &id)]));
        }

        /// Any bytes as a POST body.
        #[test]
        fn any_body_is_safe(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = body_frames(&body);
        }

        /// Any bytes as a request head.
        #[test]
        fn any_head_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_head(&bytes);
        }
    }
}
