//! TLS over the socket (rustls), under any framing: `tls://` is raw TCP's frames inside TLS,
//! `wss://` WebSocket's.
//!
//! # Buffers only while bytes are in flight
//! rustls' usual connection keeps a read buffer of 4 KiB once it has read a record, for the
//! connection's whole life. Most of a push system's connections are idle, so this carrier
//! drives rustls' *unbuffered* connection instead and owns the buffers: ciphertext read and not
//! yet decrypted, and records not yet written, each allocated while it holds something and
//! dropped when the connection parks. A parked TLS connection keeps its session alone (the
//! record keys and the state machine, see `docs/benchmarks.md` for the measured figure) as its
//! `Wire::Rest`, and its socket waits in the gateway's poller like any other.
//!
//! The handshake ([`accept`]) runs on the same carrier, bounded by the gateway's handshake
//! timeout, before the wire exists.
//!
//! There are no direct writes ([`super::Framing::Sealed`]): every frame must pass through the
//! session, which only the connection's task holds, so a fan-out queues and wakes it (a parked
//! connection too).

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::net::TcpStream;

use super::carrier::{Carrier, READ_CHUNK, shutdown_write, try_send};

/// Most plaintext encrypted at once: one full record.
pub const RECORD: usize = 16 * 1024;

/// Room for a record's header, content type and AEAD tag beside its plaintext.
const RECORD_OVERHEAD: usize = 5 + 1 + 16 + 256;

/// The most ciphertext held undecrypted: rustls decrypts a record as soon as it is whole, but
/// keeps the records of a handshake message split over several until the message is whole,
/// which it allows up to 64 KiB.
const READ_MAX: usize = 0xffff + 2 * (RECORD + RECORD_OVERHEAD);

/// TLS over a socket.
pub struct Tls {
    stream: Arc<TcpStream>,
    session: Box<UnbufferedServerConnection>,
    /// Ciphertext read and not yet decrypted: a record's start, while the rest is on its way.
    incoming: BytesMut,
    /// Records to write, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext that came with the handshake's last flight (a client that sends its first
    /// frames at once), for the first read.
    early: BytesMut,
    /// The peer sent its close_notify: the end of its stream.
    peer_closed: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("stream", &self.stream)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

/// The TLS handshake of a client on `stream`, with `config`: the carrier, ready for frames.
/// The caller bounds the time.
pub async fn accept(stream: TcpStream, config: Arc<ServerConfig>) -> io::Result<Tls> {
    let session = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut tls = Tls::resume(Arc::new(stream), Box::new(session));
    std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
    Ok(tls)
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What one step of the session asked for.
enum Step {
    /// Go on processing.
    Again,
    /// Plaintext arrived (copied out), this many bytes.
    Read(usize),
    /// The plaintext to send is encrypted into `outgoing`.
    Encrypted,
    /// Nothing to do until more ciphertext comes (or the handshake is done: `true`).
    Wait { established: bool },
    /// The peer closed its side.
    Closed,
}

impl Tls {
    /// One step of the session: over what has been read (decrypting records into `read`),
    /// or, with `write`, encrypting that into `outgoing` once nothing
    /// of rustls' own is left to send. What rustls has to send (handshake messages, tickets,
    /// alerts, key update answers) is encoded into `outgoing` on the way.
    fn step(&mut self, read: Option<&mut BytesMut>, write: Option<&[u8]>) -> io::Result<Step> {
        // A write processes no records: reads take every whole one as it comes.
        let incoming = match write {
            Some(_) => &mut [][..],
            None => &mut self.incoming[..],
        };
        let UnbufferedStatus { discard, state } = self.session.process_tls_records(incoming);
        let step = match state.map_err(invalid)? {
            ConnectionState::ReadTraffic(mut records) => {
                let Some(read) = read else {
                    // A write processes no records (see above).
                    return Err(io::Error::other("records decrypted while writing"));
                };
                let mut n = 0;
                while let Some(record) = records.next_record() {
                    let record = record.map_err(invalid)?;
                    read.extend_from_slice(record.payload);
                    n += record.payload.len();
                }
                Step::Read(n)
            }
            ConnectionState::EncodeTlsData(mut data) => {
                let start = self.outgoing.len();
                let mut room = READ_CHUNK;
                loop {
                    self.outgoing.resize(start + room, 0);
                    match data.encode(&mut self.outgoing[start..]) {
                        Ok(n) => {
                            self.outgoing.truncate(start + n);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(e)) => room = e.required_size,
                        Err(e) => return Err(io::Error::other(e.to_string())),
                    }
                }
                Step::Again
            }
            // Written in order with everything encoded after it: the next flush sends it.
            ConnectionState::TransmitTlsData(data) => {
                data.done();
                Step::Again
            }
            ConnectionState::WriteTraffic(mut traffic) => match write {
                None => Step::Wait { established: true },
                Some(plaintext) => {
                    let start = self.outgoing.len();
                    let mut room = plaintext.len() + RECORD_OVERHEAD;
                    loop {
                        self.outgoing.resize(start + room, 0);
                        match traffic.encrypt(plaintext, &mut self.outgoing[start..]) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncryptError::InsufficientSize(e)) => room = e.required_size,
                            Err(e) => return Err(io::Error::other(e.to_string())),
                        }
                    }
                    Step::Encrypted
                }
            },
            ConnectionState::BlockedHandshake => Step::Wait { established: false },
            ConnectionState::PeerClosed | ConnectionState::Closed => Step::Closed,
            // No early data is accepted (rustls' default); any other state is unknown.
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected TLS state",
                ));
            }
        };
        if write.is_none() {
            self.incoming.advance(discard);
            if self.incoming.is_empty() {
                // Drop the read's allocation while nothing is on its way.
                self.incoming = BytesMut::new();
            }
        }
        Ok(step)
    }

    /// Reads what ciphertext the socket has: `Ready(Ok(0))` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() > READ_MAX {
            // rustls takes a record whole once it is here: more is a broken peer.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a TLS record larger than the protocol allows",
            )));
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            self.incoming.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.incoming) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                read => return Poll::Ready(read),
            }
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_flush(cx))?;
            let mut early = std::mem::take(&mut self.early);
            let step = self.step(Some(&mut early), None);
            self.early = early;
            match step? {
                Step::Again | Step::Read(_) | Step::Encrypted => {}
                Step::Wait { established: true } => {
                    // Its last flight (tickets) goes out now; the client may already have
                    // sent its first frames: in `early`, or still in `incoming`.
                    ready!(self.poll_flush(cx))?;
                    self.outgoing = Vec::new();
                    return Poll::Ready(Ok(()));
                }
                Step::Wait { established: false } => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            }
        }
    }

    /// Encrypts `plaintext` into `outgoing` (behind what rustls has of its own to send).
    fn encrypt(&mut self, plaintext: &[u8]) -> io::Result<()> {
        loop {
            match self.step(None, Some(plaintext))? {
                Step::Encrypted => return Ok(()),
                Step::Again => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS session cannot send",
                    ));
                }
            }
        }
    }
}

impl Carrier for Tls {
    type Rest = Box<UnbufferedServerConnection>;

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        _want: usize,
    ) -> Poll<io::Result<usize>> {
        if self.peer_closed {
            return Poll::Ready(Ok(0));
        }
        if !self.early.is_empty() {
            let early = std::mem::take(&mut self.early);
            buf.extend_from_slice(&early);
            return Poll::Ready(Ok(early.len()));
        }
        let mut read = 0;
        loop {
            // Every whole record is decrypted before this returns, so that none waits inside
            // the session where no socket readiness would announce it.
            match self.step(Some(buf), None)? {
                Step::Read(n) => read += n,
                Step::Again | Step::Encrypted => {
                    if !self.outgoing.is_empty() {
                        // An answer of rustls' own (a key update, an alert): the task's next
                        // pass writes it.
                        cx.waker().wake_by_ref();
                    }
                }
                Step::Closed => {
                    self.peer_closed = true;
                    return Poll::Ready(Ok(read));
                }
                Step::Wait { .. } if read > 0 => return Poll::Ready(Ok(read)),
                Step::Wait { .. } => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        // The peer went without a close_notify: it is simply gone (the
                        // framing says whether that cut a frame).
                        return Poll::Ready(Ok(0));
                    }
                }
            }
        }
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // What is encrypted goes out before more is.
        ready!(self.poll_flush(cx))?;
        self.outgoing.clear();
        self.sent = 0;
        let taken = match slices {
            [] => 0,
            [one] => {
                let one = &one[..one.len().min(RECORD)];
                self.encrypt(one)?;
                one.len()
            }
            // Many frames, one record: gathered first.
            _ => {
                let mut plaintext =
                    Vec::with_capacity(RECORD.min(slices.iter().map(|s| s.len()).sum()));
                for slice in slices {
                    let room = RECORD - plaintext.len();
                    plaintext.extend_from_slice(&slice[..slice.len().min(room)]);
                    if plaintext.len() == RECORD {
                        break;
                    }
                }
                self.encrypt(&plaintext)?;
                plaintext.len()
            }
        };
        // Out at once if the socket takes it; otherwise the next call waits for it.
        if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let rest = [io::IoSlice::new(&self.outgoing[self.sent..])];
            match try_send(&self.stream, &rest) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.outgoing.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn unflushed(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    fn busy(&self) -> bool {
        self.unflushed() || !self.incoming.is_empty() || !self.early.is_empty()
    }

    fn socket(&self) -> Arc<TcpStream> {
        self.stream.clone()
    }

    fn sealed(&self) -> bool {
        true
    }

    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_flush(cx)).await;
        if let Ok(ConnectionState::WriteTraffic(mut traffic)) =
            self.session.process_tls_records(&mut []).state
        {
            let mut alert = [0; 64];
            if let Ok(n) = traffic.queue_close_notify(&mut alert) {
                self.outgoing.extend_from_slice(&alert[..n]);
            }
        }
        let _ = std::future::poll_fn(|cx| self.poll_flush(cx)).await;
        shutdown_write(&self.stream);
    }

    fn park(self) -> Box<UnbufferedServerConnection> {
        self.session
    }

    fn resume(stream: Arc<TcpStream>, session: Box<UnbufferedServerConnection>) -> Self {
        Tls {
            stream,
            session,
            incoming: BytesMut::new(),
            outgoing: Vec::new(),
            sent: 0,
            early: BytesMut::new(),
            peer_closed: false,
        }
    }
}
