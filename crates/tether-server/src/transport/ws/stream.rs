//! WebSocket as a byte stream: a [`Carrier`] whose bytes travel in binary messages, for
//! protocols that frame themselves (MQTT over WebSocket, `docs/mqtt.md` section 1: MQTT 5.0
//! section 6, and 3.1.1's).
//!
//! Messages mean nothing to the stream: a packet may span messages and a message may hold
//! several packets. So a binary message's payload is unmasked and handed on as it arrives,
//! and never buffered whole: the framing above bounds what it buffers (MQTT's maximum packet
//! size). What is written goes out as one binary message per write.
//!
//! Control frames are answered here (a ping with a pong, a close with a close, then the end
//! of the stream); a text message, or framing RFC 6455 forbids, fails the stream with the
//! close code of its [`WsError`], written when the connection closes ([`Carrier::shutdown`]).

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tether_proto::ws::{self, Opcode, ServerHeader, WsError};
use tokio::net::TcpStream;

use crate::transport::Carrier;
use crate::transport::carrier::READ_CHUNK;

/// How long a closing stream tries to write its close frame.
const CLOSE_TIME: Duration = Duration::from_secs(1);

/// How long a closed stream waits for the client's close frame (see [`WsStream::linger`]):
/// the bound of tether's own WebSocket connections.
const LINGER_TIME: Duration = Duration::from_secs(1);

/// How much a closed stream reads while it waits for the client's close: MQTT's largest
/// packet the node takes is 64 KiB by default (`limits.max_frame`), and a device may be in the
/// middle of one.
const LINGER_BYTES: usize = 256 * 1024;

/// Bytes asked of each read while lingering.
const LINGER_READ: usize = 16 * 1024;

/// A byte stream over WebSocket binary messages, over the socket or TLS (`C`).
///
/// # Memory
/// `raw` holds only what arrived and is not yet unwrapped (a header in part, a control frame
/// in part); `out` only the rest of a message the socket did not take, and control frames.
/// Both are given back when emptied, so an idle stream holds neither.
#[derive(Debug)]
pub struct WsStream<C> {
    inner: C,
    raw: BytesMut,
    frame: Frame,
    /// To write before anything else: the rest of a message begun, pongs, the close.
    out: BytesMut,
    /// The client's close came (answered in `out`): the stream has ended.
    ended: bool,
    /// Our close frame is in `out` or written: nothing follows it.
    closed: bool,
}

/// Where the stream is among the client's frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct Frame {
    /// Payload bytes of the data frame being read that have not arrived yet.
    left: usize,
    /// That frame's masking key, rotated to where its next byte falls.
    mask: [u8; 4],
    /// A binary message was begun and not finished: continuations come next.
    in_message: bool,
}

impl<C: Carrier> WsStream<C> {
    /// The stream over `inner`, whose upgrade is answered; `rest`: what the client sent after
    /// its request.
    pub fn new(inner: C, rest: BytesMut) -> Self {
        WsStream {
            inner,
            raw: rest,
            frame: Frame::default(),
            out: BytesMut::new(),
            ended: false,
            closed: false,
        }
    }

    /// Unwraps what `raw` holds into `buf`: the payload bytes of binary messages, answering
    /// control frames on the way. The number of payload bytes moved.
    fn unwrap(&mut self, cx: &Context<'_>, buf: &mut BytesMut) -> Result<usize, WsError> {
        let mut moved = 0;
        loop {
            if self.frame.left > 0 {
                let n = self.frame.left.min(self.raw.len());
                if n == 0 {
                    return Ok(moved);
                }
                let start = buf.len();
                buf.extend_from_slice(&self.raw[..n]);
                self.raw.advance(n);
                ws::unmask_at(&mut buf[start..], self.frame.mask, 0);
                self.frame.mask.rotate_left(n % 4);
                self.frame.left -= n;
                moved += n;
                continue;
            }
            // Any length: the payload is streamed, never buffered whole.
            let Some(header) = ws::parse_header(&self.raw, usize::MAX >> 1)? else {
                return Ok(moved);
            };
            match header.opcode {
                Opcode::Text => {
                    return Err(WsError::UnsupportedData(
                        "MQTT over WebSocket is carried in binary messages",
                    ));
                }
                Opcode::Binary if self.frame.in_message => {
                    return Err(WsError::Protocol("a message began inside a fragmented one"));
                }
                Opcode::Continuation if !self.frame.in_message => {
                    return Err(WsError::Protocol(
                        "a continuation frame with no message to continue",
                    ));
                }
                Opcode::Binary | Opcode::Continuation => {
                    self.raw.advance(header.header_len);
                    self.frame.left = header.len;
                    self.frame.mask = header.mask;
                    self.frame.in_message = !header.fin;
                }
                Opcode::Ping | Opcode::Pong | Opcode::Close => {
                    let whole = header.header_len + header.len;
                    if self.raw.len() < whole {
                        return Ok(moved);
                    }
                    let mut payload = self.raw.split_to(whole);
                    payload.advance(header.header_len);
                    ws::unmask(&mut payload, header.mask);
                    match header.opcode {
                        Opcode::Ping if !self.closed => {
                            self.out
                                .extend_from_slice(&ws::control(Opcode::Pong, &payload));
                            // The task's next pass writes it (`Carrier::unflushed`).
                            cx.waker().wake_by_ref();
                        }
                        Opcode::Close => {
                            if !self.closed {
                                self.out.extend_from_slice(&ws::close_reply(&payload));
                                self.closed = true;
                            }
                            self.ended = true;
                            self.raw = BytesMut::new();
                            return Ok(moved);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Queues our close frame with `code`, unless one is queued or written already.
    fn close_with(&mut self, code: u16, reason: &str) {
        if !self.closed {
            let frame = ws::control(Opcode::Close, &ws::close_payload(code, reason));
            self.out.extend_from_slice(&frame);
            self.closed = true;
        }
    }

    /// Writes `out` until it is empty.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(self.inner.poll_write(cx, &[io::IoSlice::new(&self.out)]))?;
            self.out.advance(n);
        }
        if self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<C: Carrier> WsStream<C> {
    /// After our close frame went out: reads and drops what the client still sends, until its
    /// close frame or the end of its stream, so that the socket is not dropped with unread
    /// bytes (the kernel would answer them with a reset, which can destroy our close frame, and
    /// a DISCONNECT before it, in the client's receive buffer: RFC 6455, 7.1.1), as tether's
    /// own WebSocket connections do. Bounded by the caller in time, and here in bytes
    /// ([`LINGER_BYTES`]).
    async fn linger(&mut self) {
        let mut left = LINGER_BYTES;
        // Payload bytes, dropped as they are unwrapped.
        let mut dropped = BytesMut::new();
        // Bytes that cannot be framed: only the end of the stream is awaited.
        let mut lost = false;
        std::future::poll_fn(|cx| {
            loop {
                if !lost && self.unwrap(cx, &mut dropped).is_err() {
                    lost = true;
                }
                dropped.clear();
                if lost {
                    self.raw.clear();
                }
                if self.ended || left == 0 {
                    return Poll::Ready(());
                }
                match ready!(
                    self.inner
                        .poll_read(cx, &mut self.raw, left.min(LINGER_READ))
                ) {
                    Ok(0) | Err(_) => return Poll::Ready(()),
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
        self.raw = BytesMut::new();
    }
}

/// A [`WsError`] carried in an [`io::Error`], which `super::super::poll_more` unwraps, so that
/// the connection is closed for it (with its code) rather than taken as gone.
fn failed(e: WsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The [`WsError`] an [`io::Error`] of a [`WsStream`] carries, if any.
pub fn ws_error(e: &io::Error) -> Option<WsError> {
    e.get_ref()?.downcast_ref::<WsError>().cloned()
}

/// What a parked [`WsStream`] keeps.
#[derive(Debug)]
pub struct WsRest<R> {
    inner: R,
    frame: Frame,
}

impl<C: Carrier> Carrier for WsStream<C> {
    type Rest = WsRest<C::Rest>;

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let moved = match self.unwrap(cx, buf) {
                Ok(moved) => moved,
                Err(e) => {
                    self.close_with(e.code().0, &e.to_string());
                    self.raw = BytesMut::new();
                    return Poll::Ready(Err(failed(e)));
                }
            };
            if moved > 0 {
                return Poll::Ready(Ok(moved));
            }
            if self.ended {
                return Poll::Ready(Ok(0));
            }
            if self.raw.is_empty() {
                // Drop our reference to the last read's allocation while idle.
                self.raw = BytesMut::new();
            }
            // The payload the reader wants, and the next frame's header.
            let want = want.max(READ_CHUNK) + ws::MAX_CLIENT_HEADER;
            if ready!(self.inner.poll_read(cx, &mut self.raw, want))? == 0 {
                return Poll::Ready(Ok(0));
            }
        }
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_out(cx))?;
        if self.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // One message per write: the first slice (MQTT writes one).
        let Some(first) = slices.iter().find(|s| !s.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let header = ServerHeader::new(Opcode::Binary, first.len());
        let header = header.as_bytes();
        let both = [io::IoSlice::new(header), io::IoSlice::new(first)];
        let n = ready!(self.inner.poll_write(cx, &both))?;
        // Taken whole: what the socket did not take waits in `out` (`poll_flush`).
        if n < header.len() {
            self.out.extend_from_slice(&header[n..]);
            self.out.extend_from_slice(first);
        } else {
            self.out.extend_from_slice(&first[n - header.len()..]);
        }
        Poll::Ready(Ok(first.len()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_out(cx))?;
        self.inner.poll_flush(cx)
    }

    fn unflushed(&self) -> bool {
        !self.out.is_empty() || self.inner.unflushed()
    }

    fn busy(&self) -> bool {
        !self.raw.is_empty() || self.ended || self.unflushed() || self.inner.busy()
    }

    fn socket(&self) -> Arc<TcpStream> {
        self.inner.socket()
    }

    fn sealed(&self) -> bool {
        // Every write is a message of its own: nothing may go past the stream.
        true
    }

    async fn shutdown(&mut self) {
        self.close_with(1000, "");
        let sent =
            tokio::time::timeout(CLOSE_TIME, std::future::poll_fn(|cx| self.poll_flush(cx))).await;
        self.inner.shutdown().await;
        if matches!(sent, Ok(Ok(()))) && !self.ended {
            let _ = tokio::time::timeout(LINGER_TIME, self.linger()).await;
        }
    }

    fn park(self) -> Self::Rest {
        WsRest {
            inner: self.inner.park(),
            frame: self.frame,
        }
    }

    fn resume(stream: Arc<TcpStream>, rest: Self::Rest) -> Self {
        WsStream {
            inner: C::resume(stream, rest.inner),
            raw: BytesMut::new(),
            frame: rest.frame,
            out: BytesMut::new(),
            ended: false,
            closed: false,
        }
    }
}
