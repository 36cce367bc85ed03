//! End-to-end WebSocket conformance of the gateway (RFC 6455), in raw bytes over a TCP socket
//! so that frames no library would send can be sent: close codes for what breaks WebSocket
//! itself, UTF-8 checked as it arrives, the message size limit, pongs, the close handshake and
//! the lingering close, subprotocols and the encoding they fix, and the echo test mode.

mod common;

use std::time::Duration;

use common::*;
use tether_proto::{Code, Connected, binary};
use tether_server::{Config, Node};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A WebSocket client written by hand: masked frames out, the server's frames in.
struct RawWs {
    socket: TcpStream,
    /// Read and not yet taken.
    buf: Vec<u8>,
}

/// What the server sent, frame by frame.
#[derive(Debug, PartialEq)]
enum Got {
    Frame {
        opcode: u8,
        payload: Vec<u8>,
    },
    /// The end of the stream, cleanly (a FIN).
    End,
    /// A reset, or another read error.
    Error(String),
}

impl RawWs {
    /// Upgrades at `/ws` with these extra header lines; the answer's head and the client.
    async fn open_with(node: &tether_server::Node, extra: &str) -> (RawWs, String) {
        let mut socket = TcpStream::connect(node.ws_addr().unwrap()).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             {extra}\r\n"
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut ws = RawWs {
            socket,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(at) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(ws.fill().await > 0, "closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).to_string();
        ws.buf.drain(..end);
        (ws, head)
    }

    async fn open(node: &tether_server::Node) -> RawWs {
        let (ws, head) = RawWs::open_with(node, "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws
    }

    /// Opens and connects as `user` in the binary encoding: the client and its `connected`.
    async fn connected(node: &Node, user: &str) -> (RawWs, Connected) {
        let mut ws = RawWs::open(node).await;
        let connect = common::encode(&connect_frame(user, "raw", 0));
        ws.send(true, BINARY, &connect).await;
        let connected = expect_connected(ws.binary_frame().await);
        (ws, connected)
    }

    /// The next frame must be a text message holding a JSON frame.
    async fn json_frame(&mut self) -> serde_json::Value {
        match self.next().await {
            Got::Frame {
                opcode: TEXT,
                payload,
            } => serde_json::from_slice(&payload).expect("a JSON frame"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next frame must be a binary message holding a tether frame.
    async fn binary_frame(&mut self) -> tether_proto::Frame {
        match self.next().await {
            Got::Frame {
                opcode: BINARY,
                payload,
            } => binary::parse(payload.into(), 1 << 20).expect("a binary frame"),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    /// Reads more; 0 at the end of the stream. Panics on an error or after [`WAIT`].
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = timeout(WAIT, self.socket.read(&mut chunk))
            .await
            .expect("nothing read within WAIT")
            .expect("read failed");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.socket.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(&client_frame(fin, opcode, payload)).await;
    }

    /// The next frame from the server, or how its stream ended.
    async fn next(&mut self) -> Got {
        next_frame(&mut self.socket, &mut self.buf).await
    }

    /// The next frame must be a close with `code`: its reason.
    async fn expect_close(&mut self, code: Code) -> String {
        close_reason(self.next().await, code)
    }

    /// Answers the server's close, then the stream must end cleanly (no reset).
    async fn finish_close(&mut self) {
        self.send(true, CLOSE, &1000u16.to_be_bytes()).await;
        assert_eq!(self.next().await, Got::End);
    }
}

/// The next frame the server sent on `socket` (`buf`: read and not yet taken), or how its
/// stream ended.
async fn next_frame(socket: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Got {
    loop {
        if let Some((opcode, payload, len)) = server_frame(buf) {
            buf.drain(..len);
            return Got::Frame { opcode, payload };
        }
        let mut chunk = [0u8; 16 * 1024];
        match timeout(WAIT, socket.read(&mut chunk))
            .await
            .expect("nothing from the server within WAIT")
        {
            Ok(0) if buf.is_empty() => return Got::End,
            Ok(0) => panic!("the stream ended inside a frame: {buf:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Got::Error(e.to_string()),
        }
    }
}

/// `got` must be a close frame with `code`: its reason.
fn close_reason(got: Got, code: Code) -> String {
    match got {
        Got::Frame {
            opcode: CLOSE,
            payload,
        } => {
            assert!(payload.len() >= 2, "a close with no code");
            let reason = String::from_utf8(payload[2..].to_vec()).expect("UTF-8 reason");
            assert_eq!(
                u16::from_be_bytes([payload[0], payload[1]]),
                code.0,
                "close reason: {reason}"
            );
            reason
        }
        other => panic!("expected a close with {code}, got {other:?}"),
    }
}

/// A client frame: masked, as RFC 6455 requires of clients.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The server frame at the front of `buf` (opcode, payload, its length), if whole.
fn server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    assert_eq!(b1 & 0x80, 0, "a server frame must not be masked");
    assert_ne!(b0 & 0x80, 0, "the server sends whole messages");
    let (len, at) = match b1 {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap())),
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((b0 & 0x0F, payload, at + len))
}

async fn no_connections_left(node: &tether_server::Node) {
    let deadline = Instant::now() + WAIT;
    while node.connections() != 0 {
        assert!(Instant::now() < deadline, "a connection is still open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn frames_websocket_forbids_close_with_1002_and_no_disconnect() {
    let node = start(Config::for_tests()).await;
    let mut unmasked = client_frame(true, BINARY, b"x");
    unmasked[1] &= 0x7F;
    unmasked.truncate(2);
    unmasked.push(b'x');
    let cases: [(&str, Vec<u8>); 6] = [
        ("unmasked", unmasked),
        ("unknown opcode", client_frame(true, 0x3, b"x")),
        ("reserved bit", {
            let mut frame = client_frame(true, BINARY, b"x");
            frame[0] |= 0x40;
            frame
        }),
        ("fragmented ping", client_frame(false, PING, b"")),
        (
            "continuation with no message",
            client_frame(true, CONTINUATION, b"x"),
        ),
        ("message inside a message", {
            let mut frames = client_frame(false, TEXT, b"{");
            frames.extend(client_frame(true, TEXT, b"}"));
            frames
        }),
    ];
    for (what, bytes) in cases {
        let mut ws = RawWs::open(&node).await;
        ws.send_raw(&bytes).await;
        let reason = ws.expect_close(Code::WS_PROTOCOL).await;
        assert!(reason.contains("protocol error"), "{what}: {reason}");
        // The server, which cannot frame what follows, waits for the end of the stream.
        ws.socket.shutdown().await.unwrap();
        assert_eq!(ws.next().await, Got::End, "{what}");
    }
    no_connections_left(&node).await;
}

#[tokio::test]
async fn a_frame_breaking_websocket_after_connect_closes_with_1002_alone() {
    let node = start(Config::for_tests()).await;
    let mut ws = RawWs::open(&node).await;
    let connect = common::encode(&connect_frame("alice", "browser", 0));
    ws.send(true, BINARY, &connect).await;
    assert!(matches!(ws.next().await, Got::Frame { opcode: BINARY, .. }));
    ws.send(true, CONTINUATION, b"x").await;
    // No `disconnect` first: the close frame is the next message.
    ws.expect_close(Code::WS_PROTOCOL).await;
    ws.socket.shutdown().await.unwrap();
    assert_eq!(ws.next().await, Got::End);
    no_connections_left(&node).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_in_the_fragment_that_brings_it() {
    let node = start(Config::for_tests()).await;
    // Whole: one frame.
    let mut ws = RawWs::open(&node).await;
    ws.send(true, TEXT, b"{\"op\":\"ping\xff\"}").await;
    ws.expect_close(Code::WS_INVALID_UTF8).await;
    ws.finish_close().await;

    // In fragments: the bad byte comes in the second of many, and the message never ends:
    // the close must come without waiting for its end.
    let mut ws = RawWs::open(&node).await;
    ws.send(false, TEXT, b"{\"op\":\"pi").await;
    ws.send(false, CONTINUATION, &[b'n', 0xE0, 0x80]).await;
    ws.expect_close(Code::WS_INVALID_UTF8).await;
    ws.finish_close().await;

    // A message ending inside a character.
    let mut ws = RawWs::open(&node).await;
    ws.send(false, TEXT, b"{\"op\":\"ping\"}").await;
    ws.send(true, CONTINUATION, &[0xE2, 0x82]).await;
    ws.expect_close(Code::WS_INVALID_UTF8).await;
    ws.finish_close().await;
    no_connections_left(&node).await;
}

#[tokio::test]
async fn characters_cut_between_fragments_are_accepted() {
    let node = start(Config::for_tests()).await;
    let mut ws = RawWs::open(&node).await;
    // Unknown fields are ignored: one carries characters of two, three and four bytes.
    let connect = tether_proto::json::encode(&connect_frame("alice", "browser", 0)).replacen(
        '{',
        "{\"note\":\"é€𝄞\",",
        1,
    );
    let bytes = connect.as_bytes();
    // Cut inside every multi-byte character: one fragment per byte.
    ws.send(false, TEXT, &bytes[..1]).await;
    for (i, byte) in bytes[1..].iter().enumerate() {
        let last = i + 2 == bytes.len();
        ws.send(last, CONTINUATION, &[*byte]).await;
    }
    match ws.next().await {
        Got::Frame {
            opcode: TEXT,
            payload,
        } => {
            let text = String::from_utf8(payload).unwrap();
            assert!(text.contains("\"op\":\"connected\""), "{text}");
        }
        other => panic!("expected `connected`, got {other:?}"),
    }
}

/// A text message may hold `max_frame` bytes, as section 7 of the spec says, not a byte more
/// (a binary one holds `max_frame` plus its 4-byte length prefix).
#[tokio::test]
async fn text_messages_are_limited_to_max_frame() {
    let node = start(Config::for_tests()).await;
    let max = Config::for_tests().limits.max_frame as usize;
    // Exactly `max_frame`: a `connect` padded with spaces, which JSON allows.
    let mut ws = RawWs::open(&node).await;
    let mut text = tether_proto::json::encode(&connect_frame("alice", "browser", 0));
    text.push_str(&" ".repeat(max - text.len()));
    assert_eq!(text.len(), max);
    ws.send(false, TEXT, &text.as_bytes()[..max / 2]).await;
    ws.send(true, CONTINUATION, &text.as_bytes()[max / 2..])
        .await;
    match ws.next().await {
        Got::Frame {
            opcode: TEXT,
            payload,
        } => assert!(String::from_utf8(payload).unwrap().contains("connected")),
        other => panic!("expected `connected`, got {other:?}"),
    }
    // One more byte, in one frame: refused with 1009, from the header alone.
    let mut ws = RawWs::open(&node).await;
    let header = &client_frame(true, TEXT, &vec![b' '; max + 1])[..14];
    ws.send_raw(header).await;
    let reason = ws.expect_close(Code::WS_TOO_BIG).await;
    assert_eq!(
        reason,
        format!(
            "frame of {} bytes exceeds the maximum frame size of {max} bytes",
            max + 1
        )
    );
    ws.finish_close().await;
}

#[tokio::test]
async fn a_message_too_big_in_fragments_closes_with_1009() {
    let node = start(Config::for_tests()).await;
    let max = Config::for_tests().limits.max_frame as usize;
    let mut ws = RawWs::open(&node).await;
    ws.send(false, BINARY, &vec![0; max]).await;
    ws.send(true, CONTINUATION, &[0; 5]).await;
    let reason = ws.expect_close(Code::WS_TOO_BIG).await;
    assert!(
        reason.contains(&format!("frame of {} bytes", max + 1)),
        "{reason}"
    );
    ws.finish_close().await;
}

/// The client is still sending the message refused for its size when it reads the close (a
/// browser reads while it sends): the server reads on, so the client finishes its message,
/// answers the close, and sees a clean end of the stream, never a reset. Without the
/// lingering close, its writes after the close fail with a broken pipe or a reset.
#[tokio::test]
async fn a_close_for_size_reaches_a_client_still_sending() {
    let node = start(Config::for_tests()).await;
    let max = Config::for_tests().limits.max_frame as usize;
    let (mut ws, _) = RawWs::connected(&node, "alice").await;
    let frame = client_frame(true, BINARY, &vec![7; max + 5]);
    let (seen, close_seen) = tokio::sync::oneshot::channel();
    let RawWs { socket, buf } = &mut ws;
    let (mut reader, mut writer) = socket.split();
    let sending = async {
        // The header and some of the payload, then the rest once the close has been read.
        writer.write_all(&frame[..4096]).await?;
        close_seen.await.expect("the reader went away");
        writer.write_all(&frame[4096..]).await?;
        writer
            .write_all(&client_frame(true, CLOSE, &1000u16.to_be_bytes()))
            .await
    };
    let reading = async {
        close_reason(next_frame(&mut reader, buf).await, Code::WS_TOO_BIG);
        seen.send(()).unwrap();
        next_frame(&mut reader, buf).await
    };
    let (sent, end) = timeout(WAIT, async { tokio::join!(sending, reading) })
        .await
        .expect("the exchange took longer than WAIT");
    sent.expect("the client could not finish sending");
    assert_eq!(end, Got::End);
    no_connections_left(&node).await;
}

/// The lingering close is bounded in time: a client that neither answers the close nor
/// closes its side is let go after about a second (the goodbye's bound), not before.
#[tokio::test]
async fn lingering_ends_after_a_second_at_most() {
    let node = start(Config::for_tests()).await;
    let (mut ws, _) = RawWs::connected(&node, "alice").await;
    ws.send(true, CONTINUATION, b"x").await;
    let closed = Instant::now();
    ws.expect_close(Code::WS_PROTOCOL).await;
    // The server's side is shut: the client reads the end of the stream at once.
    assert_eq!(ws.next().await, Got::End);
    // And the server still reads, waiting for the client's close.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(node.connections(), 1, "the server let go before it had to");
    no_connections_left(&node).await;
    let held = closed.elapsed();
    assert!(held < Duration::from_millis(2500), "held for {held:?}");
}

/// The lingering close is bounded in bytes: a client that sends on after the close (here the
/// rest of a huge message) is let go once the server has read the longest message and 64 KiB
/// more, well before the second it would otherwise wait.
#[tokio::test]
async fn lingering_ends_after_the_longest_message_and_64_kib() {
    let node = start(Config::for_tests()).await;
    let max = Config::for_tests().limits.max_frame as usize;
    let (mut ws, _) = RawWs::connected(&node, "alice").await;
    // The header of a 64 MiB message.
    let header = &client_frame(true, BINARY, &vec![0; 64 << 20])[..14];
    ws.send_raw(header).await;
    ws.expect_close(Code::WS_TOO_BIG).await;
    let started = Instant::now();
    // Three times the server's budget: the write may fail once the server lets go.
    let more = vec![0u8; 3 * (max + 4 + 64 * 1024)];
    let writing = async {
        let _ = ws.socket.write_all(&more).await;
    };
    let deadline = started + Duration::from_millis(700);
    let watching = async {
        while node.connections() != 0 {
            assert!(
                Instant::now() < deadline,
                "still reading {:?} after the budget was sent",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    timeout(WAIT, async { tokio::join!(writing, watching) })
        .await
        .expect("the write neither finished nor failed within WAIT");
}

/// A close of tether's own (here a kick) is a `disconnect`, then the close frame; the client's
/// answering close is read, and the stream ends cleanly.
#[tokio::test]
async fn the_close_handshake_completes_without_a_reset() {
    let node = start(Config::for_tests()).await;
    let mut ws = RawWs::open(&node).await;
    let connect = common::encode(&connect_frame("alice", "browser", 0));
    ws.send(true, BINARY, &connect).await;
    assert!(matches!(ws.next().await, Got::Frame { opcode: BINARY, .. }));
    Http::new(&node).kick("alice").await;
    assert!(matches!(ws.next().await, Got::Frame { opcode: BINARY, .. }));
    ws.expect_close(Code::KICKED).await;
    // Late pings from the client are read and dropped, not answered with a reset.
    ws.send(true, PING, b"late").await;
    ws.finish_close().await;
    no_connections_left(&node).await;
}

/// A browser naming tether's subprotocol (`new WebSocket(url, ["tether.json"])`) needs it
/// answered, or it fails the connection; offered only others, the server names none.
#[tokio::test]
async fn tethers_subprotocol_is_answered_and_others_are_not() {
    let node = start(Config::for_tests()).await;
    let (_ws, head) =
        RawWs::open_with(&node, "Sec-WebSocket-Protocol: chat, tether.json\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("\r\nSec-WebSocket-Protocol: tether.json\r\n"),
        "{head}"
    );
    let (_ws, head) = RawWs::open_with(&node, "Sec-WebSocket-Protocol: tether.binary\r\n").await;
    assert!(
        head.contains("\r\nSec-WebSocket-Protocol: tether.binary\r\n"),
        "{head}"
    );
    let (mut ws, head) = RawWs::open_with(&node, "Sec-WebSocket-Protocol: chat\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
    // And the connection works as without one.
    let connect = common::encode(&connect_frame("alice", "raw", 0));
    ws.send(true, BINARY, &connect).await;
    expect_connected(ws.binary_frame().await);
}

/// The subprotocol agreed sets the encoding from the upgrade on: a refusal before `connect`
/// (here the handshake timeout) is a `disconnect` in it, then the close. The JSON client is
/// tokio-tungstenite, which checks the subprotocol answered as browsers do.
#[tokio::test]
async fn a_refusal_before_connect_comes_in_the_agreed_encoding() {
    let mut config = Config::for_tests();
    config.gateway.handshake_timeout = Duration::from_millis(200);
    let node = start(config).await;

    let mut request = ws_url(&node).into_client_request().unwrap();
    let offered = HeaderValue::from_static("chat, tether.json");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", offered);
    let (ws, response) = timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("WebSocket connect timed out")
        .expect("WebSocket upgrade failed");
    assert_eq!(response.headers()["sec-websocket-protocol"], "tether.json");
    let mut json = WsClient { ws };
    let disconnect = json.json().await;
    assert_eq!(disconnect["op"], "disconnect", "{disconnect}");
    assert_eq!(
        disconnect["code"],
        Code::HANDSHAKE_TIMEOUT.0,
        "{disconnect}"
    );
    json.expect_close(Code::HANDSHAKE_TIMEOUT).await;

    let (mut ws, head) = RawWs::open_with(&node, "Sec-WebSocket-Protocol: tether.binary\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let disconnect = expect_disconnect(ws.binary_frame().await);
    assert_eq!(disconnect.code, Code::HANDSHAKE_TIMEOUT);
    ws.expect_close(Code::HANDSHAKE_TIMEOUT).await;
    ws.finish_close().await;
}

/// A connection's encoding, once the subprotocol or the first message set it, is kept: a
/// message in the other closes with 1003 (RFC 6455: data of a type the endpoint does not
/// take), from its header, in a close frame alone.
#[tokio::test]
async fn a_message_in_the_other_encoding_closes_with_1003() {
    let node = start(Config::for_tests()).await;
    // Only the header of a 1000-byte message: refused before its payload.
    let header = |opcode| client_frame(true, opcode, &[b' '; 1000])[..8].to_vec();

    // Agreed JSON, then binary, before `connect`.
    let (mut ws, _) = RawWs::open_with(&node, "Sec-WebSocket-Protocol: tether.json\r\n").await;
    ws.send_raw(&header(BINARY)).await;
    let reason = ws.expect_close(Code::WS_UNSUPPORTED_DATA).await;
    assert!(
        reason.contains("a binary message on a connection that speaks JSON"),
        "{reason}"
    );

    // Agreed binary, then text.
    let (mut ws, _) = RawWs::open_with(&node, "Sec-WebSocket-Protocol: tether.binary\r\n").await;
    ws.send_raw(&header(TEXT)).await;
    let reason = ws.expect_close(Code::WS_UNSUPPORTED_DATA).await;
    assert!(
        reason.contains("a text message on a connection"),
        "{reason}"
    );

    // No subprotocol: `connect` in JSON sets JSON; a binary message after it is refused, and
    // the close comes alone (no `disconnect` in either encoding).
    let mut ws = RawWs::open(&node).await;
    let connect = tether_proto::json::encode(&connect_frame("alice", "browser", 0));
    ws.send(true, TEXT, connect.as_bytes()).await;
    assert_eq!(ws.json_frame().await["op"], "connected");
    ws.send_raw(&header(BINARY)).await;
    ws.expect_close(Code::WS_UNSUPPORTED_DATA).await;
    ws.socket.shutdown().await.unwrap();
    assert_eq!(ws.next().await, Got::End);
    no_connections_left(&node).await;
}

/// Invalid UTF-8 is refused when it arrives, even inside one frame whose end has not come
/// (the Autobahn testsuite's "fail fast" cases 6.4.3 and 6.4.4).
#[tokio::test]
async fn invalid_utf8_is_refused_before_its_frame_ends() {
    let node = start(Config::for_tests()).await;
    let mut ws = RawWs::open(&node).await;
    let mut text = b"{\"op\":\"ping\",\"note\":\"".to_vec();
    let valid = text.len() + 3;
    text.extend_from_slice("€".as_bytes());
    // A 4-byte character's start, then a byte that cannot continue it, then more.
    text.extend_from_slice(&[0xF0, 0x90, 0x28]);
    text.resize(200, b' ');
    let frame = client_frame(true, TEXT, &text);
    let payload_at = frame.len() - text.len();
    // The valid part, cut inside the euro sign: no close yet.
    ws.send_raw(&frame[..payload_at + valid - 1]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut probe = [0u8; 1];
    assert!(
        ws.socket.try_read(&mut probe).is_err(),
        "the server answered valid text"
    );
    // Then up to the bad byte: the close comes, with the frame's end still to come.
    ws.send_raw(&frame[payload_at + valid - 1..payload_at + valid + 3])
        .await;
    ws.expect_close(Code::WS_INVALID_UTF8).await;
    ws.socket.shutdown().await.unwrap();
    assert_eq!(ws.next().await, Got::End);
}

/// Every ping gets its pong, in order, even when they come together (RFC 6455 would allow
/// answering only the last; the Autobahn testsuite's case 2.10 expects them all).
#[tokio::test]
async fn every_ping_gets_its_pong() {
    let node = start(Config::for_tests()).await;
    let (mut ws, _) = RawWs::connected(&node, "alice").await;
    let pings: Vec<u8> = (0..10)
        .flat_map(|i| client_frame(true, PING, format!("payload-{i}").as_bytes()))
        .collect();
    ws.send_raw(&pings).await;
    for i in 0..10 {
        assert_eq!(
            ws.next().await,
            Got::Frame {
                opcode: PONG,
                payload: format!("payload-{i}").into_bytes()
            }
        );
    }
}

/// A node in the echo test mode.
fn echo_config() -> Config {
    let mut config = Config::for_tests();
    config.gateway.ws_echo = true;
    config.test_modes = true;
    config
}

/// `gateway.ws_echo` is refused unless the node allows test modes (`tether serve
/// --test-modes`), so that no configuration turns it on by itself.
#[tokio::test]
async fn the_echo_mode_is_refused_without_test_modes() {
    let mut config = echo_config();
    config.test_modes = false;
    let started = timeout(WAIT, Node::start(config)).await;
    let Err(e) = started.expect("node start timed out") else {
        panic!("the node started");
    };
    assert!(
        format!("{e:#}").contains("gateway.ws_echo is a test mode"),
        "{e:#}"
    );
}

/// In the echo test mode, every message comes back as it came (text as text, binary as
/// binary, whole however it arrived), pings get pongs, and a close is answered with its code.
#[tokio::test]
async fn the_echo_mode_echoes_messages() {
    let node = start(echo_config()).await;
    let mut ws = RawWs::open(&node).await;
    ws.send(true, TEXT, "hello".as_bytes()).await;
    assert_eq!(
        ws.next().await,
        Got::Frame {
            opcode: TEXT,
            payload: b"hello".to_vec()
        }
    );
    ws.send(true, BINARY, &[0, 1, 255]).await;
    assert_eq!(
        ws.next().await,
        Got::Frame {
            opcode: BINARY,
            payload: vec![0, 1, 255]
        }
    );
    // In fragments cut inside a character, with a ping between them: the pong comes first.
    let text = "é€𝄞".as_bytes();
    ws.send(false, TEXT, &text[..1]).await;
    ws.send(true, PING, b"p").await;
    ws.send(true, CONTINUATION, &text[1..]).await;
    assert_eq!(
        ws.next().await,
        Got::Frame {
            opcode: PONG,
            payload: b"p".to_vec()
        }
    );
    assert_eq!(
        ws.next().await,
        Got::Frame {
            opcode: TEXT,
            payload: text.to_vec()
        }
    );
    // A message over the limit is refused as on a client connection.
    let max = Config::for_tests().limits.max_frame as usize;
    let mut ws2 = RawWs::open(&node).await;
    ws2.send_raw(&client_frame(true, TEXT, &vec![b' '; max + 1])[..14])
        .await;
    ws2.expect_close(Code::WS_TOO_BIG).await;
    // The close, answered with its code; the server then ends the stream.
    ws.send(true, CLOSE, &3000u16.to_be_bytes()).await;
    assert_eq!(ws.expect_close(Code(3000)).await, "");
    assert_eq!(ws.next().await, Got::End);
}
