//! TLS over the socket (rustls), under any framing: `tls://` is raw TCP's frames inside TLS,
//! `wss://` WebSocket's.
//!
//! The handshake is done before the wire exists (by `tokio_rustls`, bounded by the gateway's
//! handshake timeout); this carrier takes the established session and the socket apart from
//! each other, so that a parked connection keeps its session ([`Tls`]'s `Rest`) while its
//! socket waits in the gateway's poller like any other.
//!
//! # What a TLS connection costs
//! Its session: the record layer's keys, the state machine, and rustls' read buffer, which
//! rustls keeps at 4 KiB once a record has been read (see `docs/benchmarks.md` for the
//! measured figure). Records to write exist only while they are being written: rustls frees
//! each once the socket took it, and takes at most [`SEND_LIMIT`] of plaintext at once.
//!
//! There are no direct writes ([`super::Framing::Sealed`]): every frame must pass through the
//! session, which only the connection's task holds, so a fan-out queues and wakes it (a parked
//! connection too).

use std::io::{self, BufRead, Read, Write};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use rustls::ServerConnection;
use tokio::net::TcpStream;

use super::carrier::{Carrier, shutdown_write};

/// Most plaintext the session takes ahead of the socket: two full records.
pub const SEND_LIMIT: usize = 32 * 1024;

/// TLS over a socket.
#[derive(Debug)]
pub struct Tls {
    stream: Arc<TcpStream>,
    session: Box<ServerConnection>,
}

impl Tls {
    /// The carrier of a session whose handshake is done on `stream`.
    pub fn new(stream: TcpStream, session: ServerConnection) -> Self {
        let mut tls = Tls::resume(Arc::new(stream), Box::new(session));
        tls.session.set_buffer_limit(Some(SEND_LIMIT));
        tls
    }

    /// Decrypts what rustls has read; a bad record is an error, after the alert that says so
    /// is queued (and written by the next flush).
    fn process(&mut self, cx: &Context<'_>) -> io::Result<()> {
        let processed = self.session.process_new_packets();
        if self.session.wants_write() {
            // An alert, a key update's answer: the task's next pass writes it.
            cx.waker().wake_by_ref();
        }
        processed
            .map(drop)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl Carrier for Tls {
    type Rest = Box<ServerConnection>;

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        _want: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            // What rustls decrypted already comes first, all of it, so that none is left
            // inside the session where no socket readiness would announce it.
            let mut read = 0;
            loop {
                let mut reader = self.session.reader();
                match reader.fill_buf() {
                    Ok([]) => return Poll::Ready(Ok(read)),
                    Ok(chunk) => {
                        let n = chunk.len();
                        buf.extend_from_slice(chunk);
                        reader.consume(n);
                        read += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The peer closed the socket without a close_notify: it is simply gone
                    // (the framing says whether that cut a frame).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Poll::Ready(Ok(read));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if read > 0 {
                return Poll::Ready(Ok(read));
            }
            match self.session.read_tls(&mut Socket(&self.stream)) {
                // The end: rustls notes it, and its reader says how the peer ended.
                Ok(0) => self.process(cx)?,
                Ok(_) => self.process(cx)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // What the session holds goes out before it takes more.
        ready!(self.poll_flush(cx))?;
        let taken = self.session.writer().write_vectored(slices)?;
        if taken == 0 && slices.iter().any(|s| !s.is_empty()) {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        // Out at once if the socket takes it; otherwise the next call waits for it.
        if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut Socket(&self.stream)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn unflushed(&self) -> bool {
        self.session.wants_write()
    }

    fn socket(&self) -> Arc<TcpStream> {
        self.stream.clone()
    }

    fn sealed(&self) -> bool {
        true
    }

    async fn shutdown(&mut self) {
        self.session.send_close_notify();
        let _ = std::future::poll_fn(|cx| self.poll_flush(cx)).await;
        shutdown_write(&self.stream);
    }

    fn park(self) -> Box<ServerConnection> {
        self.session
    }

    fn resume(stream: Arc<TcpStream>, session: Box<ServerConnection>) -> Self {
        Tls { stream, session }
    }
}

/// The socket as rustls reads and writes it: at once or `WouldBlock`, which clears tokio's
/// readiness so that the next `poll_*_ready` registers the waker.
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        super::carrier::try_send(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
