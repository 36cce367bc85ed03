//! Frames over a socket: a TCP stream of length-prefixed binary frames, or a WebSocket carrying
//! one frame per message (binary message: binary frame; text message: JSON frame). Either runs
//! over plain TCP or inside TLS (`tls://`, `wss://`), as [`crate::net`] opened it.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tether_proto::{Code, Frame, binary, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::config::{Endpoint, Scheme};
use crate::net::{self, Stream};
use crate::tls::Tls;
use crate::{ClientConfig, ClientError, WsEncoding};

/// How long a graceful close waits for the server's side of the close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What [`Transport::recv`] got.
#[derive(Debug)]
pub(crate) enum Incoming {
    Frame(Frame),
    /// The server closed: end of stream, or a WebSocket close frame (with its code when it is
    /// in the application range 4000-4999, where tether codes live).
    Closed {
        code: Option<Code>,
        reason: String,
    },
}

/// One connection to a server.
#[derive(Debug)]
pub(crate) struct Transport {
    inner: Inner,
    max_frame: u32,
}

#[derive(Debug)]
enum Inner {
    Tcp {
        stream: Stream,
        /// Bytes read but not yet decoded. Never holds more than one frame plus one read:
        /// `binary::check` rejects an oversized length prefix before it is buffered.
        rbuf: BytesMut,
        wbuf: BytesMut,
    },
    Ws {
        stream: Box<WebSocketStream<Stream>>,
        encoding: WsEncoding,
    },
}

impl Transport {
    /// Opens the TCP connection, runs the TLS handshake for `tls://` and `wss://` (with the
    /// client's config from `tls`), and for `ws://` and `wss://` performs the WebSocket
    /// upgrade. No tether frame is exchanged yet. The caller bounds the time.
    pub async fn connect(
        endpoint: &Endpoint,
        config: &ClientConfig,
        tls: &mut Tls,
    ) -> Result<Self, ClientError> {
        let tls = if endpoint.tls {
            Some(tls.config()?)
        } else {
            None
        };
        let stream = net::open(&endpoint.host, endpoint.port, tls).await?;
        let inner = match endpoint.scheme {
            Scheme::Tcp => Inner::Tcp {
                stream,
                rbuf: BytesMut::with_capacity(8 * 1024),
                wbuf: BytesMut::with_capacity(1024),
            },
            Scheme::Ws => {
                let limit = ws_message_limit(config.max_frame);
                let ws_config = WebSocketConfig::default()
                    .read_buffer_size(16 * 1024)
                    .max_message_size(Some(limit))
                    .max_frame_size(Some(limit));
                let (stream, _response) = tokio_tungstenite::client_async_with_config(
                    endpoint.ws_url(),
                    stream,
                    Some(ws_config),
                )
                .await?;
                Inner::Ws {
                    stream: Box::new(stream),
                    encoding: config.ws_encoding,
                }
            }
        };
        Ok(Transport {
            inner,
            max_frame: config.max_frame,
        })
    }

    /// Writes `frames` and flushes once.
    pub async fn send(&mut self, frames: &[Frame]) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Tcp { stream, wbuf, .. } => {
                wbuf.clear();
                for frame in frames {
                    binary::try_encode(frame, wbuf)
                        .map_err(|e| ClientError::Config(format!("cannot encode a frame: {e}")))?;
                }
                stream.write_all(wbuf).await?;
                // TLS may keep the end of the record in its buffer until flushed.
                stream.flush().await?;
                Ok(())
            }
            Inner::Ws { stream, encoding } => {
                for frame in frames {
                    let message = match encoding {
                        WsEncoding::Binary => {
                            let mut buf = BytesMut::new();
                            binary::try_encode(frame, &mut buf).map_err(|e| {
                                ClientError::Config(format!("cannot encode a frame: {e}"))
                            })?;
                            Message::Binary(buf.freeze())
                        }
                        WsEncoding::Json => Message::text(json::encode(frame)),
                    };
                    stream.feed(message).await?;
                }
                stream.flush().await?;
                Ok(())
            }
        }
    }

    /// The next frame or the close. Cancel-safe: dropping the future loses nothing, so it can
    /// sit in a `select!` next to timers.
    pub async fn recv(&mut self) -> Result<Incoming, ClientError> {
        match &mut self.inner {
            Inner::Tcp { stream, rbuf, .. } => loop {
                if let Some(frame) = binary::decode(rbuf, self.max_frame)? {
                    return Ok(Incoming::Frame(frame));
                }
                rbuf.reserve(8 * 1024);
                // `read_buf` is cancel-safe: bytes are only appended when the read completes.
                if stream.read_buf(rbuf).await? == 0 {
                    let reason = if rbuf.is_empty() {
                        "connection closed by the server"
                    } else {
                        "connection closed by the server in the middle of a frame"
                    };
                    return Ok(Incoming::Closed {
                        code: None,
                        reason: reason.to_owned(),
                    });
                }
            },
            Inner::Ws { stream, .. } => loop {
                let message = match stream.next().await {
                    None => {
                        return Ok(Incoming::Closed {
                            code: None,
                            reason: "connection closed by the server".to_owned(),
                        });
                    }
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(m)) => m,
                };
                match message {
                    Message::Binary(bytes) => {
                        return Ok(Incoming::Frame(binary::parse(bytes, self.max_frame)?));
                    }
                    Message::Text(text) => {
                        return Ok(Incoming::Frame(json::decode(text.as_bytes())?));
                    }
                    Message::Close(close) => {
                        let (code, reason) = match close {
                            Some(CloseFrame { code, reason }) => {
                                let n = u16::from(code);
                                let code = (4000..=4999).contains(&n).then_some(Code(n));
                                (code, reason.as_str().to_owned())
                            }
                            None => (None, String::new()),
                        };
                        let reason = if reason.is_empty() {
                            "WebSocket closed by the server".to_owned()
                        } else {
                            reason
                        };
                        return Ok(Incoming::Closed { code, reason });
                    }
                    // tungstenite answers pings itself.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            },
        }
    }

    /// Closes politely (TCP: shut down our side; WebSocket: close handshake), bounded in time.
    /// Errors are ignored: the connection is going away either way.
    pub async fn close(&mut self) {
        let close = async {
            match &mut self.inner {
                Inner::Tcp { stream, .. } => {
                    let _ = stream.shutdown().await;
                }
                Inner::Ws { stream, .. } => {
                    let frame = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "client closing".into(),
                    };
                    if (**stream).close(Some(frame)).await.is_ok() {
                        // Read until the server's close frame ends the stream.
                        while let Some(Ok(_)) = stream.next().await {}
                    }
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
    }
}

/// The largest WebSocket message accepted: a binary frame with its prefix, or a JSON frame,
/// which the protocol allows to be up to twice `max_frame` (base64 payloads).
fn ws_message_limit(max_frame: u32) -> usize {
    (max_frame as usize).saturating_mul(2)
}
