//! The HTTP request that opens a WebSocket connection (RFC 6455, section 4), the server's side.
//!
//! The request's head is read into a buffer of at most [`MAX_REQUEST`] bytes and checked:
//! `GET /ws` (or `/mqtt`) over HTTP/1.1 with `Upgrade: websocket`, `Connection: upgrade`, version 13 and a
//! key. The answer is `101 Switching Protocols`, or an error status with a line of text saying
//! why. Whatever the client sent after the head (its first frames, if it did not wait) is handed
//! to the wire. No extension is ever agreed to; of the subprotocols a client offers, the first
//! of tether's ([`SUBPROTOCOLS`]) is answered, so that a browser that names one (`new
//! WebSocket(url, ["tether.json"])`) gets the answer it requires, and the connection speaks
//! that subprotocol's encoding from the start. A client that offers only others is answered
//! without one (RFC 6455, 4.2.2: browsers then fail the connection themselves, other clients
//! may go on), rather than refused: the choice is the client's.
//!
//! MQTT over WebSocket (`docs/mqtt.md`, section 1): an upgrade at `/mqtt`, or one at `/ws`
//! whose first subprotocol of ours offered is [`MQTT`], carries MQTT packets rather than
//! tether's frames. MQTT clients must offer `mqtt` [MQTT-6.0.0-3] and the server must answer
//! it [MQTT-6.0.0-4]; at `/mqtt` a client that offers none is taken too (answered without one).

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::BytesMut;
use tether_proto::Code;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::link::Encoding;

/// The longest request head taken, headers included. Browsers send well under 1 KiB, but a
/// site's cookies and a proxy's headers can add several.
pub const MAX_REQUEST: usize = 16 * 1024;

/// Most headers a request may have (proxies and tracing add their own).
const MAX_HEADERS: usize = 100;

/// The subprotocols tether answers, each naming the encoding a connection that agrees it
/// speaks from its first message on.
pub const SUBPROTOCOLS: [(&str, Encoding); 2] = [
    ("tether.json", Encoding::Json),
    ("tether.binary", Encoding::Binary),
];

/// The subprotocol of MQTT over WebSocket (MQTT 5.0, section 6; 3.1.1, section 6).
pub const MQTT: &str = "mqtt";

/// What a WebSocket connection carries, from its upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// tether's frames, in the encoding of the subprotocol agreed if any (otherwise the first
    /// message's).
    Tether(Option<Encoding>),
    /// MQTT packets, as a byte stream in binary messages (`crate::transport::ws::stream`).
    Mqtt,
}

/// What an answered upgrade hands to the wire.
#[derive(Debug)]
pub struct Upgraded {
    /// What the client sent after its request (its first frames, if it did not wait).
    pub rest: BytesMut,
    /// What the connection carries.
    pub speaks: Speaks,
}

/// Why no WebSocket connection came of a request.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The client was answered with this status (a bad request, or a refusal).
    #[error("answered {status}: {reason}")]
    Refused { status: u16, reason: &'static str },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client closed the connection during the upgrade")]
    Closed,
}

/// Whether a request with this `Origin` header (`None`: without one) may connect.
pub type OriginCheck<'a> = &'a (dyn Fn(Option<&[u8]>) -> bool + Sync);

/// Reads the upgrade request (after `read`, what was read of it already), answers it, and
/// returns the bytes that followed its head and the subprotocol agreed. The `101` carries `headers` (lines ending in CRLF: the affinity
/// cookie), an error answer does not. With
/// `refused`, the client is told why it cannot connect (429 for its address's limit, 503 for
/// the node's) once its request has been read; its path is checked first, so that a wrong
/// URL reads as one. Otherwise a request whose Origin `origin` refuses is answered 403.
///
/// `stream` is the socket, or the TLS stream over it (`wss://`).
///
/// # Memory
/// The request's buffer is gone before the answer is written, and what followed the head is
/// copied out of it (nothing, from clients that wait for the `101`): a buffer kept by the
/// connection, or freed only once the session has made its long-lived allocations, would
/// leave a hole between them in the heap of every WebSocket connection.
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    read: BytesMut,
    refused: Option<Code>,
    origin: OriginCheck<'_>,
    headers: &str,
) -> Result<Upgraded, UpgradeError> {
    let mut buf = read;
    let (head_len, accept, (protocol, speaks)) = loop {
        if !buf.is_empty() {
            match check(&buf, refused, origin) {
                Ok(Some(done)) => break done,
                Ok(None) if buf.len() < MAX_REQUEST => {}
                Ok(None) => return Err(answer_error(stream, 431, "request head too large").await),
                Err((status, reason)) => return Err(answer_error(stream, status, reason).await),
            }
        }
        buf.reserve(1024.min(MAX_REQUEST - buf.len()));
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(UpgradeError::Closed);
        }
    };
    let rest = BytesMut::from(&buf[head_len..]);
    drop(buf);
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(name) = protocol {
        let _ = write!(response, "Sec-WebSocket-Protocol: {name}\r\n");
    }
    response.push_str(headers);
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    Ok(Upgraded { rest, speaks })
}

/// What an acceptable request head gives: its length, the accept key, the subprotocol agreed
/// and what the connection carries.
type Accepted = (usize, String, (Option<&'static str>, Speaks));

/// The head's length, the accept key and the subprotocol agreed once the head is all there and
/// acceptable; `None` while it is not complete; the status and reason to answer otherwise.
fn check(
    buf: &[u8],
    refused: Option<Code>,
    origin: OriginCheck<'_>,
) -> Result<Option<Accepted>, (u16, &'static str)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err((431, "too many headers")),
        Err(_) => return Err((400, "malformed HTTP request")),
    };
    let path = request.path.unwrap_or("");
    let mqtt_path = match path.split('?').next() {
        Some("/ws") => false,
        Some("/mqtt") => true,
        _ => return Err((404, "the WebSocket endpoints are /ws and /mqtt")),
    };
    if request.method != Some("GET") {
        return Err((405, "a WebSocket upgrade is a GET"));
    }
    if request.version != Some(1) {
        return Err((505, "a WebSocket upgrade needs HTTP/1.1"));
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err((426, "this endpoint takes WebSocket upgrades only"));
    }
    if header("sec-websocket-version") != Some(b"13") {
        return Err((426, "WebSocket version 13 is the one spoken here"));
    }
    let key = header("sec-websocket-key").unwrap_or_default();
    let key_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !key_ok {
        return Err((400, "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    match refused {
        Some(Code::IP_LIMIT) => Err((429, "too many connections from this address")),
        Some(_) => Err((503, "connection limit reached; retry later")),
        // Asked once, of a complete and good request: it counts the refusal.
        None if !origin(header("origin")) => Err((403, "this origin may not connect")),
        None => {
            let offered = request.headers.iter().filter_map(|h| {
                let named = h.name.eq_ignore_ascii_case("sec-websocket-protocol");
                named.then_some(h.value)
            });
            let agreed = if mqtt_path {
                let mqtt = offers(offered, MQTT);
                (mqtt.then_some(MQTT), Speaks::Mqtt)
            } else {
                match subprotocol(offered) {
                    Some(Offered::Tether(name, encoding)) => {
                        (Some(name), Speaks::Tether(Some(encoding)))
                    }
                    Some(Offered::Mqtt) => (Some(MQTT), Speaks::Mqtt),
                    None => (None, Speaks::Tether(None)),
                }
            };
            Ok(Some((head_len, derive_accept_key(key), agreed)))
        }
    }
}

/// One of the subprotocols the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    Tether(&'static str, Encoding),
    Mqtt,
}

/// The first of the server's subprotocols (tether's, then [`MQTT`]) that the
/// `Sec-WebSocket-Protocol` header lines offer (a comma-separated list each, in the client's
/// order of preference), if any.
fn subprotocol<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Option<Offered> {
    lines
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .find_map(|offered| {
            let offered = offered.trim();
            if offered == MQTT {
                return Some(Offered::Mqtt);
            }
            SUBPROTOCOLS
                .into_iter()
                .find(|(name, _)| *name == offered)
                .map(|(name, encoding)| Offered::Tether(name, encoding))
        })
}

/// Whether the `Sec-WebSocket-Protocol` header lines offer `name`.
fn offers<'a>(lines: impl Iterator<Item = &'a [u8]>, name: &str) -> bool {
    lines
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .any(|offered| offered.trim() == name)
}

/// Answers `status` with `reason` as its body, best effort, and closes.
async fn answer_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &'static str,
) -> UpgradeError {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let mut response = format!("HTTP/1.1 {status} {text}\r\n");
    if status == 426 {
        response.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
    }
    if status == 429 || status == 503 {
        response.push_str("Retry-After: 1\r\n");
    }
    let _ = write!(
        response,
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    UpgradeError::Refused { status, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn any(_: Option<&[u8]>) -> bool {
        true
    }

    fn request(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn the_rfc_example_key_is_accepted() {
        let req = request("/ws?x=1", "");
        let (len, accept, agreed) = check(req.as_bytes(), None, &any).unwrap().unwrap();
        assert_eq!(len, req.len());
        // RFC 6455, 1.3.
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(agreed, (None, Speaks::Tether(None)));
    }

    #[test]
    fn the_first_of_our_subprotocols_offered_is_agreed() {
        let agreed = |extra: &str| {
            let req = request("/ws", extra);
            check(req.as_bytes(), None, &any).unwrap().unwrap().2
        };
        assert_eq!(SUBPROTOCOLS[0], ("tether.json", Encoding::Json));
        assert_eq!(
            agreed("Sec-WebSocket-Protocol: chat, tether.json, tether.binary\r\n"),
            (Some("tether.json"), Speaks::Tether(Some(Encoding::Json)))
        );
        assert_eq!(
            agreed("Sec-WebSocket-Protocol: chat\r\nsec-websocket-protocol: tether.binary\r\n"),
            (
                Some("tether.binary"),
                Speaks::Tether(Some(Encoding::Binary))
            )
        );
        // MQTT offered first: the connection carries MQTT.
        assert_eq!(
            agreed("Sec-WebSocket-Protocol: mqtt, tether.json\r\n"),
            (Some("mqtt"), Speaks::Mqtt)
        );
        assert_eq!(
            agreed("Sec-WebSocket-Protocol: tether.binary, mqtt\r\n"),
            (
                Some("tether.binary"),
                Speaks::Tether(Some(Encoding::Binary))
            )
        );
        // Names are case-sensitive tokens.
        assert_eq!(
            agreed("Sec-WebSocket-Protocol: Tether.JSON, MQTT\r\n"),
            (None, Speaks::Tether(None))
        );
    }

    #[test]
    fn the_mqtt_path_carries_mqtt_whatever_is_offered() {
        let agreed = |extra: &str| {
            let req = request("/mqtt", extra);
            check(req.as_bytes(), None, &any).unwrap().unwrap().2
        };
        assert_eq!(
            agreed("Sec-WebSocket-Protocol: mqtt\r\n"),
            (Some("mqtt"), Speaks::Mqtt)
        );
        assert_eq!(
            agreed("Sec-WebSocket-Protocol: tether.json, mqtt\r\n"),
            (Some("mqtt"), Speaks::Mqtt)
        );
        assert_eq!(agreed(""), (None, Speaks::Mqtt));
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        let req = request("/ws", "");
        assert_eq!(
            check(&req.as_bytes()[..req.len() - 1], None, &any),
            Ok(None)
        );
    }

    #[test]
    fn bad_requests_get_a_status_that_says_why() {
        let cases = [
            (request("/other", ""), 404),
            (request("/ws", "").replacen("GET", "POST", 1), 405),
            (request("/ws", "").replace("websocket", "h2c"), 426),
            (request("/ws", "").replace("Version: 13", "Version: 8"), 426),
            (request("/ws", "").replace(KEY, "c2hvcnQ="), 400),
            ("GET /ws HTTP/1.1\r\n\0\r\n\r\n".to_owned(), 400),
        ];
        for (req, status) in cases {
            assert_eq!(
                check(req.as_bytes(), None, &any).map(|_| ()).unwrap_err().0,
                status,
                "{req:?}"
            );
        }
        let many = (0..110).fold(String::new(), |s, i| s + &format!("X-{i}: y\r\n"));
        assert_eq!(
            check(request("/ws", &many).as_bytes(), None, &any)
                .unwrap_err()
                .0,
            431
        );
    }

    #[test]
    fn an_origin_refused_is_answered_403_once_the_request_is_known_good() {
        let only = |o: Option<&[u8]>| o == Some(&b"https://ok.example"[..]);
        let good = request("/ws", "Origin: https://ok.example\r\n");
        assert!(check(good.as_bytes(), None, &only).unwrap().is_some());
        let bad = request("/ws", "Origin: https://evil.example\r\n");
        assert_eq!(check(bad.as_bytes(), None, &only).unwrap_err().0, 403);
        assert_eq!(
            check(request("/ws", "").as_bytes(), None, &only)
                .unwrap_err()
                .0,
            403
        );
        assert_eq!(
            check(request("/x", "").as_bytes(), None, &only)
                .unwrap_err()
                .0,
            404
        );
    }

    #[test]
    fn refusals_come_after_the_request_is_known_good() {
        let req = request("/ws", "");
        assert_eq!(
            check(req.as_bytes(), Some(Code::IP_LIMIT), &any)
                .unwrap_err()
                .0,
            429
        );
        assert_eq!(
            check(req.as_bytes(), Some(Code::CONNECTION_LIMIT), &any)
                .unwrap_err()
                .0,
            503
        );
        assert_eq!(
            check(request("/x", "").as_bytes(), Some(Code::IP_LIMIT), &any)
                .unwrap_err()
                .0,
            404
        );
    }
}
