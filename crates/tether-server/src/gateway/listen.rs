//! The gateway's accept loops: raw TCP and WebSocket (with SSE), each plain or inside TLS
//! (`tls://`, `wss://`). Each accepted socket meets its listener's guard and the admission limits before a
//! byte is read; a TLS connection's handshake comes next, bounded by the handshake timeout,
//! then the transport's own handshake and the session's, as on a plain socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::BytesMut;
use tether_proto::{Code, Disconnect, Frame};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::admission::Permit;
use super::sse::Served;
use super::{Gateway, REFUSAL_TIMEOUT, conn};
use crate::accept::AcceptErrors;
use crate::edge::{Guard, Refusal};
use crate::tls::Certs;
use crate::transport::carrier::AsIo;
use crate::transport::mqtt::MqttWire;
use crate::transport::tls::{self, Tls};
use crate::transport::upgrade::{self, Speaks, Upgraded};
use crate::transport::ws::stream::WsStream;
use crate::transport::{Carrier, Plain, SseWire, TcpWire, WsWire};

impl Gateway {
    /// Accepts raw TCP clients until shutdown, inside TLS with `tls`.
    ///
    /// A client whose address the listener's guard refuses is closed at once, before a byte
    /// is read. One over the per-IP rate or a limit is told its code (4004, 4102, ...) from
    /// this loop, without a task: a refusal holds its descriptor only for one non-blocking
    /// write, so a crowd of clients over the limit cannot take the descriptors kept for the
    /// rest of the node. Inside TLS, where telling would take a handshake, it is closed.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, tls: Option<Arc<Certs>>) {
        let name = if tls.is_some() { "tls" } else { "tcp" };
        let mut errors = AcceptErrors::new(name);
        while let Some((stream, peer)) = self.accept(&listener, &mut errors).await {
            let guard = self.tcp_guard.load();
            let Ok(refused) = self.guard_ip(&guard, peer.ip()) else {
                continue;
            };
            let admitted = match refused {
                Some(code) => Err(code),
                None => self.admit(&guard, peer.ip()),
            };
            let permit = match admitted {
                Ok(permit) => permit,
                Err(code) => {
                    if tls.is_none() {
                        refuse_tcp(&stream, code);
                    }
                    continue;
                }
            };
            let gw = self.clone();
            let max_frame = gw.limits.max_frame;
            match &tls {
                None => self.tasks.spawn(async move {
                    let wire = TcpWire::new(stream, max_frame);
                    conn::serve(wire, permit).await;
                }),
                Some(certs) => {
                    let certs = certs.clone();
                    self.tasks.spawn(async move {
                        let Some(tls) = gw.tls_handshake(&certs, stream, peer, name).await else {
                            return;
                        };
                        let wire = TcpWire::over(tls, max_frame);
                        conn::serve(wire, permit).await;
                    })
                }
            };
        }
    }

    /// Accepts WebSocket clients on `/ws` (MQTT's on `/mqtt`, `docs/mqtt.md`), and SSE streams and their POSTs on `/v1/sse`
    /// (see `super::sse`), until shutdown, inside TLS with `tls`.
    ///
    /// A client whose address the listener's guard refuses is closed at once, before a byte
    /// is read. Other refused clients get their HTTP answer (429 over the per-IP rate, 503 over
    /// a limit, 403 for an Origin not allowed) from a task, as they must send their request
    /// first; at most [`super::MAX_WS_REFUSALS`] wait at once, and one past them is closed without an
    /// answer.
    pub async fn serve_ws(self: Arc<Self>, listener: TcpListener, tls: Option<Arc<Certs>>) {
        let name = if tls.is_some() { "wss" } else { "ws" };
        if self.config.ws_echo {
            warn!(
                listener = name,
                "gateway.ws_echo is on (a test mode): WebSocket clients are echoed, not served"
            );
        }
        let mut errors = AcceptErrors::new(name);
        while let Some((stream, peer)) = self.accept(&listener, &mut errors).await {
            let guard = self.ws_guard.load_full();
            let Ok(refused) = self.guard_ip(&guard, peer.ip()) else {
                continue;
            };
            let permit = match refused {
                Some(code) => Err(code),
                None => self.admit(&guard, peer.ip()),
            };
            let refused = permit.as_ref().err().copied();
            let refusal = match refused {
                None => None,
                Some(_) => match self.ws_refusals.clone().try_acquire_owned() {
                    Ok(slot) => Some(slot),
                    Err(_) => continue,
                },
            };
            let client = WsClient {
                gw: self.clone(),
                stream,
                peer,
                guard,
                permit,
                refusal,
            };
            // Each a task of its own type, so that a plain connection's is not sized for
            // TLS's state as well.
            match &tls {
                None => self.tasks.spawn(client.plain()),
                Some(certs) => self.tasks.spawn(client.tls(certs.clone(), name)),
            };
        }
    }

    /// The TLS handshake of a client of `listener`, within the handshake timeout; `None` (and
    /// counted) when it failed.
    pub(super) async fn tls_handshake(
        &self,
        certs: &Certs,
        stream: TcpStream,
        peer: SocketAddr,
        listener: &'static str,
    ) -> Option<Tls> {
        let accepting = tls::accept(stream, certs.config());
        match tokio::time::timeout(self.config.handshake_timeout, accepting).await {
            Ok(Ok(tls)) => {
                crate::metrics::tls_handshake(listener, "ok");
                Some(tls)
            }
            Ok(Err(e)) => {
                crate::metrics::tls_handshake(listener, "error");
                debug!(%peer, listener, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                crate::metrics::tls_handshake(listener, "timeout");
                self.metrics.handshake_failed(Code::HANDSHAKE_TIMEOUT);
                None
            }
        }
    }

    /// Reads and answers a WebSocket upgrade request on `stream` (the socket, or TLS over
    /// it), of which `read` was read already: what the wire starts with, or `None` when no
    /// connection came of it.
    pub(super) async fn upgrade<S>(
        &self,
        stream: &mut S,
        read: BytesMut,
        check: Upgrade<'_>,
    ) -> Option<Upgraded>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        // A refused client only needs its HTTP answer: it gets a second, not the whole
        // handshake timeout, to hold one of the refusals' sockets.
        let limit = match check.refused {
            Some(_) => self.config.handshake_timeout.min(REFUSAL_TIMEOUT),
            None => self.config.handshake_timeout,
        };
        let origin = |origin: Option<&[u8]>| check.origin_ok(origin);
        let upgrading = upgrade::upgrade(stream, read, check.refused, &origin, check.cookie);
        match tokio::time::timeout(limit, Box::pin(upgrading)).await {
            Ok(Ok(upgraded)) => Some(upgraded),
            Ok(Err(e)) => {
                debug!(peer = %check.peer, error = %e, "websocket upgrade failed");
                None
            }
            Err(_) => {
                self.metrics.handshake_failed(Code::HANDSHAKE_TIMEOUT);
                None
            }
        }
    }

    /// The next accepted socket, or `None` at shutdown.
    pub(super) async fn accept(
        &self,
        listener: &TcpListener,
        errors: &mut AcceptErrors,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Pushes are small and latency matters more than packet count; batching
                    // happens in the connection's queue instead.
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => errors.failed(&e).await,
            }
        }
    }

    /// What `guard` says of a connection from `ip`: `Ok(None)` to go on, `Ok(Some(code))` to
    /// be told `code`, `Err` to be closed at once.
    pub(super) fn guard_ip(&self, guard: &Guard, ip: IpAddr) -> Result<Option<Code>, ()> {
        match guard.check_ip(ip) {
            Ok(()) => Ok(None),
            Err(refusal) => {
                self.metrics.rejected_connections.increment(1);
                refusal.code().map(Some).ok_or(())
            }
        }
    }

    /// A place for a connection from `ip` on the listener of `guard`, which counts a refusal.
    pub(super) fn admit(self: &Arc<Self>, guard: &Guard, ip: IpAddr) -> Result<Permit, Code> {
        Permit::admit(self, ip).inspect_err(|code| {
            self.metrics.rejected_connections.increment(1);
            self.metrics.handshake_failed(*code);
            guard.refused(Refusal::of_limit(*code), ip.to_canonical());
        })
    }
}

/// An accepted client of a WebSocket listener, before its upgrade (or SSE request) is read.
struct WsClient {
    gw: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    guard: Arc<Guard>,
    /// Its admission, or the code it is to be told.
    permit: Result<Permit, Code>,
    /// A refused client's slot among the refusals being answered.
    #[expect(dead_code, reason = "held for its Drop, which gives the slot back")]
    refusal: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl WsClient {
    /// Reads and answers the client's request over plain TCP. A WebSocket connection, and an
    /// SSE stream, then get a task of their own, so that this one is freed before the
    /// connection's long-lived allocations rather than leaving a hole between them; and this
    /// one is sized for its own work alone, not for a TLS handshake and connection as well
    /// (1,280 bytes against 2,176 in a release build, `docs/benchmarks.md`).
    async fn plain(mut self) {
        let (gw, peer, guard) = (&self.gw, self.peer, &self.guard);
        let served = Self::request_of(gw, peer, guard, &self.permit, &mut self.stream, false).await;
        // A refused client was answered above (its answer was the refusal).
        let Ok(permit) = self.permit else { return };
        let tasks = self.gw.tasks.clone();
        match served {
            Served::WebSocket(upgraded) => {
                tasks.spawn(serve_ws_over(Plain::new(self.stream), upgraded, permit));
            }
            Served::Stream(opened) => {
                tasks.spawn(conn::serve(SseWire::new(self.stream, *opened), permit));
            }
            Served::Done => {}
        }
    }

    /// Reads and answers the client's request on `stream` (its socket, or TLS over it, as
    /// `tls` says): a WebSocket upgrade, or SSE's routes (`super::sse`).
    async fn request_of<S>(
        gw: &Gateway,
        peer: SocketAddr,
        guard: &Guard,
        permit: &Result<Permit, Code>,
        stream: &mut S,
        tls: bool,
    ) -> Served
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        // A draining node sends no client back to itself.
        let affinity = gw.affinity.load_full();
        let check = Upgrade {
            peer,
            refused: permit.as_ref().err().copied(),
            guard,
            cookie: affinity.line(tls, gw.drain.is_cancelled()),
        };
        gw.serve_http(stream, check).await
    }

    /// The TLS handshake, then the client's request inside it, served on this task.
    async fn tls(self, certs: Arc<Certs>, name: &'static str) {
        let (gw, peer) = (&self.gw, self.peer);
        let Some(mut tls) = gw.tls_handshake(&certs, self.stream, peer, name).await else {
            return;
        };
        let mut io = AsIo::new(&mut tls);
        let served = Self::request_of(gw, peer, &self.guard, &self.permit, &mut io, true).await;
        // What TLS decrypted past what the requests took comes after them.
        let unread = io.unread();
        let Ok(permit) = self.permit else { return };
        match served {
            Served::WebSocket(mut upgraded) => {
                upgraded.rest.extend_from_slice(&unread);
                serve_ws_over(tls, upgraded, permit).await;
            }
            Served::Stream(opened) if unread.is_empty() => {
                conn::serve(SseWire::over(tls, *opened), permit).await;
            }
            Served::Stream(_) | Served::Done => {}
        }
    }
}

/// What an upgrade request (or an SSE request) is checked against.
pub(super) struct Upgrade<'a> {
    pub peer: SocketAddr,
    /// The client is to be told this code instead of connecting.
    pub refused: Option<Code>,
    /// The listener's guard: its origins, and the CORS of SSE's routes.
    pub guard: &'a Guard,
    /// The affinity cookie's header line for a `101` or a stream (`super::affinity`), or "".
    pub cookie: &'a str,
}

impl Upgrade<'_> {
    /// Whether a request with this `Origin` header (`None`: without one) may connect.
    pub fn origin_ok(&self, origin: Option<&[u8]>) -> bool {
        self.guard.check_origin(origin, self.peer.ip()).is_ok()
    }
}

/// Serves a WebSocket connection over `carrier` once its upgrade is answered: tether's frames,
/// or MQTT's packets (`docs/mqtt.md`, section 1); in the test mode `gateway.ws_echo`, echoes
/// its messages instead.
async fn serve_ws_over<C: Carrier>(carrier: C, upgraded: Upgraded, permit: Permit) {
    let gw = permit.gw();
    let encoding = match upgraded.speaks {
        Speaks::Tether(encoding) => encoding,
        Speaks::Mqtt => {
            let stream = WsStream::new(carrier, upgraded.rest);
            let wire = MqttWire::over(stream, gw.limits.max_frame);
            conn::serve(wire, permit).await;
            return;
        }
    };
    let wire = WsWire::over(carrier, upgraded.rest, gw.limits.max_frame, encoding);
    if gw.config.ws_echo {
        wire.echo().await;
        drop(permit);
        return;
    }
    conn::serve(wire, permit).await;
}

/// Tells a raw TCP client that it was refused, in a binary `disconnect` frame, with one
/// non-blocking write: a new socket's send buffer takes the frame whole, and should it not, the
/// client sees the connection close.
fn refuse_tcp(stream: &TcpStream, code: Code) {
    let frame = Frame::new(
        0,
        Disconnect {
            code,
            reason: format!("refused: {}", code.label()),
            retry_after_ms: 1000,
        },
    );
    let bytes = tether_proto::binary::encode_to_bytes(&frame);
    let _ = stream.try_write(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::testing::gateway;

    /// A plain WebSocket (or SSE) client's first task holds only its request's reading and
    /// answering: no TLS state, no connection's.
    #[tokio::test]
    async fn a_plain_websocket_clients_first_task_stays_small() {
        let gw = gateway();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let client = WsClient {
            gw: gw.clone(),
            peer: stream.local_addr().unwrap(),
            stream,
            guard: gw.ws_guard.load_full(),
            permit: Err(Code::IP_LIMIT),
            refusal: None,
        };
        let plain = std::mem::size_of_val(&client.plain());
        // About 1,150 bytes in a debug build; the task that held TLS's state as well took a
        // 2,176-byte chunk in a release build, this one 1,280 (heaptrack).
        assert!(plain <= 1536, "grew to {plain} bytes");
    }
}
