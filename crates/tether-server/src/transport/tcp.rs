//! Raw TCP: a stream of binary frames (`tether_proto::binary`).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tether_core::Transport;
use tether_proto::{Code, Frame, binary};
use tokio::net::TcpStream;

use super::carrier::READ_CHUNK;
use super::{Carrier, Counts, Framing, MAX_IOVECS, Plain, Wire, WireError, poll_more};
use crate::link::{Binding, Encoding};

/// Raw TCP: a stream of binary frames, over the socket itself or over TLS (`tls://`).
///
/// # Memory
/// The read buffer is allocated only while a frame is arriving and released as soon as it is
/// empty again, so an idle connection holds no buffer at all.
#[derive(Debug)]
pub struct TcpWire<C = Plain> {
    carrier: C,
    buf: BytesMut,
    max_frame: u32,
    counts: Counts,
}

impl TcpWire {
    pub fn new(stream: TcpStream, max_frame: u32) -> Self {
        Self::over(Plain::new(stream), max_frame)
    }
}

impl<C: Carrier> TcpWire<C> {
    /// A wire over `carrier`, whose handshake (if it has one) is done.
    pub fn over(carrier: C, max_frame: u32) -> Self {
        TcpWire {
            carrier,
            buf: BytesMut::new(),
            max_frame,
            counts: Counts::default(),
        }
    }
}

impl<C: Carrier> Wire for TcpWire<C> {
    type Rest = C::Rest;

    fn transport(&self) -> Transport {
        Transport::Tcp
    }

    fn encoding(&self) -> Encoding {
        Encoding::Binary
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, WireError>> {
        loop {
            if let Some(frame) = binary::decode(&mut self.buf, self.max_frame)? {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.buf.is_empty() {
                // Drop our reference to the last read's allocation while idle.
                self.buf = BytesMut::new();
            }
            // A whole frame's length is known once its prefix is here (and was checked
            // against max_frame by decode above): read up to the end of it.
            let want = match binary::check(&self.buf, self.max_frame)? {
                None if self.buf.len() >= binary::PREFIX_LEN => {
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    (len as usize + binary::PREFIX_LEN).saturating_sub(self.buf.len())
                }
                _ => READ_CHUNK,
            };
            let end = (self.buf.is_empty(), "connection closed inside a frame");
            let (carrier, buf, counts) = (&mut self.carrier, &mut self.buf, &mut self.counts);
            if !ready!(poll_more(carrier, cx, buf, want, counts, end))? {
                return Poll::Ready(Ok(None));
            }
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        while !frames.is_empty() {
            // Many frames, one syscall.
            let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
            let n = frames
                .iter()
                .zip(slices.iter_mut())
                .map(|(frame, slice)| *slice = io::IoSlice::new(frame))
                .count();
            let written = ready!(self.carrier.poll_write(cx, &slices[..n]))?;
            self.counts.written += written;
            let mut left = written;
            while let Some(front) = frames.front_mut() {
                if left < front.len() {
                    front.advance(left);
                    self.counts.partial = left > 0;
                    break;
                }
                left -= front.len();
                frames.pop_front();
                self.counts.partial = false;
            }
        }
        self.carrier.poll_flush(cx)
    }

    fn wants_write(&self) -> bool {
        self.carrier.unflushed()
    }

    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }

    fn direct(&self) -> Option<(Arc<TcpStream>, Framing)> {
        Some((self.carrier.socket(), Framing::Raw.over(&self.carrier)))
    }

    fn parkable(&self) -> bool {
        self.buf.is_empty() && !self.counts.partial && !self.carrier.busy()
    }

    fn park(self) -> Result<C::Rest, Self> {
        if self.parkable() {
            Ok(self.carrier.park())
        } else {
            Err(self)
        }
    }

    fn resume(
        stream: Arc<TcpStream>,
        rest: C::Rest,
        max_frame: u32,
        _: Encoding,
        _: &[Binding],
    ) -> Self {
        Self::over(C::resume(stream, rest), max_frame)
    }

    async fn close(&mut self, _code: Code, _reason: &str) {
        self.carrier.shutdown().await;
    }
}
