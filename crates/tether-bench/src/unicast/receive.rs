//! The receiving side: one task per connection reads pushes, records push-to-delivery
//! latency, checks qos 1 seqs and acks cumulatively.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use tether_core::AppId;
use tether_proto::{Ack, Body, Frame, binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Shared, WINDOW, json_u64};
use crate::connections::{connect_frame, negotiated_heartbeat, open_socket, read_tcp};

#[derive(Debug)]
pub(super) struct ReceiverConfig {
    /// User u<n> connects to `addrs[n % addrs.len()]` (never empty).
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) app: AppId,
    pub(super) secret: String,
    pub(super) heartbeat: Duration,
    pub(super) ack_every: u64,
    pub(super) ack_delay: Duration,
}

/// A connection past its handshake.
#[derive(Debug)]
pub(super) struct Receiver {
    stream: TcpStream,
    buf: BytesMut,
    heartbeat: Duration,
    /// The last seq held (the resume position at first).
    last: u64,
}

impl ReceiverConfig {
    pub(super) async fn handshake(&self, n: u64, head: u64) -> anyhow::Result<Receiver> {
        let addr = self.addrs[(n % self.addrs.len() as u64) as usize];
        let mut stream = open_socket(addr, 0, n).await.context("connect")?;
        stream.set_nodelay(true)?;
        let connect = connect_frame(&self.app, &self.secret, n, self.heartbeat, Some(head));
        stream.write_all(&binary::encode_to_bytes(&connect)).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let heartbeat = negotiated_heartbeat(read_tcp(&mut stream, &mut buf).await?)?;
        Ok(Receiver {
            stream,
            buf,
            heartbeat,
            last: head,
        })
    }
}

impl Receiver {
    /// Reads pushes until the connection closes: records latencies, checks seqs, acks, pings.
    pub(super) async fn receive(
        mut self,
        config: &ReceiverConfig,
        shared: &Shared,
        shard: usize,
    ) -> anyhow::Result<()> {
        let ping_every = self.heartbeat / 2;
        let mut acked = self.last;
        let mut ack_due: Option<Instant> = None;
        let mut next_ping = Instant::now() + ping_every;
        let mut wbuf = BytesMut::with_capacity(64);
        let mut request_id = 1_u32;
        let mut samples: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let wake = |ack_due: Option<Instant>, next_ping: Instant| {
            ack_due.map_or(next_ping, |a| a.min(next_ping))
        };
        let mut armed = wake(ack_due, next_ping);
        let sleep = tokio::time::sleep_until(armed.into());
        tokio::pin!(sleep);
        loop {
            let mut send_ack = false;
            let mut fired = false;
            tokio::select! {
                n = self.stream.read_buf(&mut self.buf) => {
                    if n? == 0 {
                        bail!("closed by server");
                    }
                    self.read_batch(shared, &mut samples)?;
                    for (phase, batch) in samples.iter_mut().enumerate() {
                        shared.delivery_latency[phase].record(shard, batch);
                    }
                    if self.last >= acked + config.ack_every {
                        send_ack = true;
                    } else if self.last > acked && ack_due.is_none() {
                        ack_due = Some(Instant::now() + config.ack_delay);
                    }
                    if self.buf.capacity() - self.buf.len() < 1024 {
                        self.buf.reserve(4096);
                    }
                }
                () = &mut sleep => {
                    fired = true;
                    let now = Instant::now();
                    if ack_due.is_some_and(|due| due <= now) {
                        send_ack = true;
                    } else if now >= next_ping {
                        request_id = request_id.wrapping_add(1);
                        binary::encode(&Frame::new(request_id, Body::Ping), &mut wbuf);
                    }
                }
            }
            if send_ack && self.last > acked {
                request_id = request_id.wrapping_add(1);
                let ack = Ack {
                    app: config.app.to_string(),
                    seq: self.last,
                };
                binary::encode(&Frame::new(request_id, ack), &mut wbuf);
                acked = self.last;
            }
            if send_ack {
                ack_due = None;
            }
            if !wbuf.is_empty() {
                self.stream.write_all(&wbuf).await?;
                wbuf.clear();
                // Any frame is a sign of life.
                next_ping = Instant::now() + ping_every;
            }
            let next = wake(ack_due, next_ping);
            // A fired sleep stays ready: re-arm it even when the deadline did not move.
            if next != armed || fired {
                armed = next;
                sleep.as_mut().reset(armed.into());
            }
        }
    }

    /// Handles every whole frame in the buffer.
    fn read_batch(&mut self, shared: &Shared, samples: &mut [Vec<u64>; 2]) -> anyhow::Result<()> {
        let now = shared.clock.now_us();
        let (mut delivered, mut in_window, mut of_window) = (0, 0, 0);
        let (mut gaps, mut duplicates, mut unparsed) = (0, 0, 0);
        while let Some(frame) = binary::decode(&mut self.buf, tether_proto::DEFAULT_MAX_FRAME)? {
            match frame.body {
                Body::Push(push) => {
                    delivered += 1;
                    if shared.in_window(now) {
                        in_window += 1;
                    }
                    if push.qos == 1 {
                        if push.seq <= self.last {
                            duplicates += 1;
                            continue;
                        }
                        gaps += push.seq - self.last - 1;
                        self.last = push.seq;
                    }
                    let Some(t) = json_u64(&push.payload, b"{\"t\":") else {
                        unparsed += 1;
                        continue;
                    };
                    if let Some(phase) = shared.phase(t) {
                        samples[phase].push(now.saturating_sub(t));
                        if phase == WINDOW {
                            of_window += 1;
                        }
                    }
                }
                Body::Disconnect(d) => bail!("disconnected: {} {}", d.code, d.reason),
                Body::Error(e) => Shared::count(&shared.dropped, format!("error {}", e.code)),
                _ => {}
            }
        }
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&shared.delivered, delivered);
        add(&shared.delivered_in_window, in_window);
        add(&shared.win_delivered, of_window);
        add(&shared.gaps, gaps);
        add(&shared.duplicates, duplicates);
        add(&shared.unparsed, unparsed);
        Ok(())
    }
}
