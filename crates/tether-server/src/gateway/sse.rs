//! The HTTP requests of the WebSocket listener (plain or `wss`): a WebSocket upgrade (`/ws`),
//! an SSE stream (`GET /v1/sse`), or frames for a stream's session (`POST /v1/sse/<session>`),
//! with their CORS preflights. Requests are read here one after another on a socket kept
//! alive (a browser sends its POSTs that way) until one becomes a connection, a stream or a
//! WebSocket, or the client leaves. The upgrade itself is `transport::upgrade`'s, which takes
//! the bytes read so far and answers everything that is not SSE as it always has. A request
//! for another path than SSE's is told from its borrowed head, so that a WebSocket upgrade
//! allocates nothing for SSE (each allocation made and freed during a handshake can stay a
//! hole between the connections' long-lived ones).
//!
//! Origins are the WebSocket listener's (`listen.ws_access`), answered with the CORS of
//! [`crate::edge::cors`]. A socket refused by the limits (429/503 for an upgrade) gets, for a
//! stream, a `200` stream with its `disconnect` (4004 or 4102, retry in a second), which
//! `EventSource` reconnects after; for a POST, its answer (the limits are for connections,
//! and a node full of streams must still take their POSTs), then the socket closes.
//!
//! A POST whose session id names another node (a cluster without sticky sessions) is checked
//! here and carried to that node by the router (`crate::delivery::Delivery::post`), best
//! effort: `202` once sent.

use bytes::{Bytes, BytesMut};
use tether_core::{NodeId, RouterError};
use tether_proto::{Code, Disconnect, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::debug;

use super::listen::Upgrade;
use super::{Gateway, REFUSAL_TIMEOUT};
use crate::delivery::DeliveryError;
use crate::edge::cors::Cors;
use crate::link::Encoding;
use crate::transport::sse::request::{self, Head, HeadError, Route};
use crate::transport::sse::session::{self, Posted};
use crate::transport::sse::{Opened, event};
use crate::transport::upgrade::Upgraded;

/// What came of the requests on a socket of the WebSocket listener.
#[derive(Debug)]
pub(super) enum Served {
    /// A WebSocket upgrade was answered: what the client sent after its request, and the
    /// encoding its subprotocol fixed.
    WebSocket(Upgraded),
    /// A stream to serve on the socket.
    Stream(Box<Opened>),
    /// Nothing more: the client left, or was answered and the socket is to close.
    Done,
}

/// What one request of a kept-alive socket left to do.
enum Next {
    /// Read the next request.
    Another,
    Served(Served),
}

/// A JSON error answer: status line, code, what is wrong.
struct Failure(&'static str, &'static str, String);

impl Gateway {
    /// Reads and answers requests on `stream` (the socket, or TLS over it) until one becomes a
    /// connection, or there is nothing more to serve.
    pub(super) async fn serve_http<S>(&self, stream: &mut S, check: Upgrade<'_>) -> Served
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = BytesMut::new();
        let mut first = true;
        loop {
            let limit = match check.refused {
                Some(_) => self.config.handshake_timeout.min(REFUSAL_TIMEOUT),
                None => self.config.handshake_timeout,
            };
            let (head, len) = match timeout(limit, request::read_head(stream, &mut buf)).await {
                Ok(Ok(head)) => head,
                Ok(Err(HeadError::Unreadable)) => return self.replay(stream, buf, check).await,
                Ok(Err(HeadError::Closed | HeadError::Io(_))) => return Served::Done,
                Err(_) => {
                    if first {
                        self.metrics.handshake_failed(Code::HANDSHAKE_TIMEOUT);
                    }
                    return Served::Done;
                }
            };
            first = false;
            // SSE's answers are boxed: a WebSocket client's task holds this future while it
            // upgrades, and is kept small (see `super::listen`).
            let next = match request::route(&head) {
                Route::Other => return self.replay(stream, buf, check).await,
                Route::Stream => {
                    let _ = buf.split_to(len);
                    Box::pin(self.stream(stream, &head, buf.is_empty(), &check)).await
                }
                Route::Post(session) => {
                    let _ = buf.split_to(len);
                    Box::pin(self.post(stream, &head, &mut buf, session, &check)).await
                }
            };
            match next {
                Next::Another => {}
                Next::Served(served) => return served,
            }
        }
    }

    /// Hands what was read (a request that is not SSE's) to the WebSocket upgrade.
    async fn replay<S>(&self, stream: &mut S, read: BytesMut, check: Upgrade<'_>) -> Served
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match self.upgrade(stream, read, check).await {
            Some(upgraded) => Served::WebSocket(upgraded),
            None => Served::Done,
        }
    }

    /// The CORS of a request of this listener: its origins, and, like an upgrade's, its
    /// answer to a request without `Origin`.
    fn cors(&self, head: &Head, check: &Upgrade<'_>) -> Cors {
        let origin = head.header("origin");
        let mut cors = Cors::of(check.guard, origin, Some(check.peer.ip()));
        if origin.is_none() && !check.origin_ok(None) {
            cors.verdict = crate::edge::cors::Verdict::Refused;
        }
        cors
    }

    /// `GET /v1/sse`: a stream, or the answer that refuses it. `alone`: nothing followed the
    /// request.
    async fn stream<S>(&self, stream: &mut S, head: &Head, alone: bool, check: &Upgrade<'_>) -> Next
    where
        S: AsyncWrite + Unpin,
    {
        let cors = self.cors(head, check);
        let failure = if cors.refused() {
            Failure(
                "403 Forbidden",
                "forbidden",
                "this origin may not connect".into(),
            )
        } else if head.is_preflight() {
            answer(
                stream,
                "204 No Content",
                &cors.header_lines(true),
                None,
                false,
            )
            .await;
            return match head.keep_alive() {
                true => Next::Another,
                false => Next::Served(Served::Done),
            };
        } else if head.method != "GET" {
            let allow = "GET, OPTIONS";
            Failure(
                "405 Method Not Allowed",
                "method_not_allowed",
                format!("use {allow}"),
            )
        } else if let Some(code) = check.refused {
            refuse_stream(stream, code, &cors.header_lines(false)).await;
            return Next::Served(Served::Done);
        } else if !alone {
            let e = "nothing may follow the request of a stream".into();
            Failure("400 Bad Request", "bad_request", e)
        } else {
            match request::stream_request(head) {
                Ok(request) => {
                    let (frames, positions) = request.frames();
                    return Next::Served(Served::Stream(Box::new(Opened {
                        session: self.table.sessions().open(),
                        frames,
                        positions,
                        headers: cors.header_lines(false) + check.cookie,
                        heartbeat_missed: self.config.heartbeat_missed,
                    })));
                }
                Err(e) => Failure("400 Bad Request", "bad_request", e),
            }
        };
        let Failure(status, code, message) = failure;
        debug!(peer = %check.peer, status, code, "SSE stream refused");
        let mut lines = cors.header_lines(false);
        if status.starts_with("405") {
            // RFC 9110, 15.5.6: a 405 lists the methods the route has.
            lines.push_str("Allow: GET, OPTIONS\r\n");
        }
        answer(stream, status, &lines, Some((code, &message)), true).await;
        Next::Served(Served::Done)
    }

    /// `POST /v1/sse/<session>`: frames for a session, or its preflight.
    async fn post<S>(
        &self,
        stream: &mut S,
        head: &Head,
        buf: &mut BytesMut,
        session: &str,
        check: &Upgrade<'_>,
    ) -> Next
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let cors = self.cors(head, check);
        let lines = cors.header_lines(false);
        // A socket refused by the limits gets this answer, and no other.
        let keep = head.keep_alive() && check.refused.is_none();
        let done = |keep: bool| match keep {
            true => Next::Another,
            false => Next::Served(Served::Done),
        };
        let fail = |status, code, message: &str| Failure(status, code, message.to_owned());
        let failure = if cors.refused() {
            fail("403 Forbidden", "forbidden", "this origin may not post")
        } else if head.is_preflight() {
            answer(
                stream,
                "204 No Content",
                &cors.header_lines(true),
                None,
                !keep,
            )
            .await;
            return done(keep);
        } else if head.method != "POST" {
            fail(
                "405 Method Not Allowed",
                "method_not_allowed",
                "use POST, OPTIONS",
            )
        } else {
            match self.read_body(stream, head, buf).await {
                Err(failure) => failure,
                Ok(body) => match self.posted(session, body.freeze()).await {
                    Ok(()) => {
                        answer(stream, "202 Accepted", &lines, None, !keep).await;
                        return done(keep);
                    }
                    Err(failure) => {
                        let Failure(status, code, message) = failure;
                        crate::metrics::sse_post(code);
                        let retry = match status.starts_with("503") {
                            true => format!("{lines}retry-after: 1\r\n"),
                            false => lines,
                        };
                        answer(stream, status, &retry, Some((code, &message)), !keep).await;
                        return done(keep);
                    }
                },
            }
        };
        // The body was not read: the socket cannot serve another request.
        let Failure(status, code, message) = failure;
        crate::metrics::sse_post(code);
        let mut lines = lines;
        if status.starts_with("405") {
            // RFC 9110, 15.5.6: a 405 lists the methods the route has.
            lines.push_str("Allow: POST, OPTIONS\r\n");
        }
        answer(stream, status, &lines, Some((code, &message)), true).await;
        Next::Served(Served::Done)
    }

    /// The body of a POST: its `Content-Length` bytes, at most `limits.max_frame`, within the
    /// handshake timeout.
    async fn read_body<S>(
        &self,
        stream: &mut S,
        head: &Head,
        buf: &mut BytesMut,
    ) -> Result<BytesMut, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let json = head.header("content-type").is_none_or(|t| {
            let t = String::from_utf8_lossy(t).to_ascii_lowercase();
            let t = t.split(';').next().unwrap_or("").trim().to_owned();
            t == "application/json" || t == "text/plain"
        });
        if !json {
            let e = "the body is JSON: application/json (or text/plain)".into();
            return Err(Failure("415 Unsupported Media Type", "bad_request", e));
        }
        let len = match head.header("content-length") {
            Some(len) => std::str::from_utf8(len)
                .ok()
                .and_then(|l| l.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    let e = "Content-Length is not a number".into();
                    Failure("400 Bad Request", "bad_request", e)
                })?,
            None if head.header("transfer-encoding").is_some() => {
                let e = "send the body with a Content-Length".into();
                return Err(Failure("411 Length Required", "bad_request", e));
            }
            None => 0,
        };
        let max = self.limits.max_frame as usize;
        if len > max {
            let e = format!("the body is larger than the maximum frame size ({max} bytes)");
            return Err(Failure("413 Payload Too Large", "too_large", e));
        }
        let expects = head
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case(b"100-continue"));
        let reading = async {
            if expects && buf.len() < len {
                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            while buf.len() < len {
                buf.reserve(len - buf.len());
                if stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok::<_, std::io::Error>(buf.split_to(len))
        };
        match timeout(self.config.handshake_timeout, reading).await {
            Ok(Ok(body)) => Ok(body),
            _ => {
                let e = "the body did not arrive whole".into();
                Err(Failure("400 Bad Request", "bad_request", e))
            }
        }
    }

    /// Hands a POST's body to its session, on this node or through the router on the node
    /// its id names.
    async fn posted(&self, session: &str, body: Bytes) -> Result<(), Failure> {
        let unknown = || {
            let e = "no such session: open a stream again".into();
            Failure("404 Not Found", "unknown_session", e)
        };
        let frames = request::body_frames(&body)
            .map_err(|e| Failure("400 Bad Request", "bad_request", e))?;
        let (node, key) = session::parse_id(session).ok_or_else(unknown)?;
        if node != self.node.as_str() {
            return match self.delivery.post(&NodeId::new(node), key, body).await {
                Ok(()) => {
                    crate::metrics::sse_post("forwarded");
                    Ok(())
                }
                // No node listens under that name: the stream is gone with it.
                Err(DeliveryError::Router(RouterError::UnknownNode(_))) => Err(unknown()),
                Err(e) => {
                    debug!(error = %e, "cannot forward a POST to its node");
                    let e = "the session's node cannot be reached now; retry later".into();
                    Err(Failure("503 Service Unavailable", "unavailable", e))
                }
            };
        }
        match self.table.post_frames(key, frames) {
            Posted::Taken(_) => {
                crate::metrics::sse_post("taken");
                Ok(())
            }
            Posted::Full => {
                let e = "too many frames waiting for this session; retry later".into();
                Err(Failure("503 Service Unavailable", "busy", e))
            }
            Posted::Unknown => Err(unknown()),
        }
    }
}

/// Answers `status` with `headers` (lines ending in CRLF) and, when given, a JSON error body
/// `{"error", "code"}`; with `close`, says so and ends the sending side. Best effort.
async fn answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    headers: &str,
    error: Option<(&str, &str)>,
    close: bool,
) {
    let body = error.map_or(String::new(), |(code, message)| {
        serde_json::json!({ "error": message, "code": code }).to_string()
    });
    let mut response = format!("HTTP/1.1 {status}\r\n{headers}Cache-Control: no-store\r\n");
    if !body.is_empty() {
        response.push_str("Content-Type: application/json\r\n");
    }
    if !status.starts_with("204") {
        response.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close {
        response.push_str("Connection: close\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    let _ = stream.write_all(response.as_bytes()).await;
    if close {
        let _ = stream.shutdown().await;
    }
}

/// Answers a stream refused by the limits: `200`, then its `disconnect` event, after which
/// `EventSource` reconnects (in a second, by the `retry:` field).
async fn refuse_stream<S: AsyncWrite + Unpin>(stream: &mut S, code: Code, headers: &str) {
    let disconnect = Frame::new(
        0,
        Disconnect {
            code,
            reason: format!("refused: {}", code.label()),
            retry_after_ms: 1000,
        },
    );
    let mut out = BytesMut::from(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
             Connection: close\r\n{headers}\r\n"
        )
        .as_bytes(),
    );
    event::retry(&mut out, 1000);
    event::push_event(&mut out, None, &Encoding::Json.encode(&disconnect));
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
