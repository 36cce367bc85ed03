//! Raw TCP: a stream of binary frames (`tether_proto::binary`).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tether_core::Transport;
use tether_proto::{Code, Frame, binary};
use tokio::net::TcpStream;

use super::{
    Counts, Framing, MAX_IOVECS, READ_CHUNK, Wire, WireError, poll_more, poll_write, shutdown_write,
};
use crate::link::Encoding;

/// Raw TCP: a stream of binary frames.
///
/// # Memory
/// The read buffer is allocated only while a frame is arriving and released as soon as it is
/// empty again, so an idle connection holds no buffer at all.
#[derive(Debug)]
pub struct TcpWire {
    /// Shared with the connection's handle, which writes to it directly while this side has
    /// nothing to write (see [`Wire::direct`]).
    stream: Arc<TcpStream>,
    buf: BytesMut,
    max_frame: u32,
    counts: Counts,
}

impl TcpWire {
    pub fn new(stream: TcpStream, max_frame: u32) -> Self {
        Self::resume(Arc::new(stream), (), max_frame, Encoding::Binary)
    }
}

impl Wire for TcpWire {
    type Rest = ();

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
            let (stream, buf, counts) = (&self.stream, &mut self.buf, &mut self.counts);
            if !ready!(poll_more(stream, cx, buf, want, counts, end))? {
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
            let written = ready!(poll_write(&self.stream, cx, &slices[..n]))?;
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
        Poll::Ready(Ok(()))
    }

    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }

    fn direct(&self) -> Option<(Arc<TcpStream>, Framing)> {
        Some((self.stream.clone(), Framing::Raw))
    }

    fn parkable(&self) -> bool {
        self.buf.is_empty() && !self.counts.partial
    }

    fn park(self) -> Result<(), Self> {
        if self.parkable() { Ok(()) } else { Err(self) }
    }

    fn resume(stream: Arc<TcpStream>, (): (), max_frame: u32, _: Encoding) -> Self {
        TcpWire {
            stream,
            buf: BytesMut::new(),
            max_frame,
            counts: Counts::default(),
        }
    }

    async fn close(&mut self, _code: Code, _reason: &str) {
        shutdown_write(&self.stream);
    }
}
