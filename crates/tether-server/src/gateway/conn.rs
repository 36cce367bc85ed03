//! One connection's life, whatever its transport: the handshake, registration and `connected`;
//! then the connected loop (`super::io`) until someone closes it or it parks; then the
//! goodbye and forgetting it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use tether_proto::{Body, Bound, Code, Connected, Frame};
use tokio::time::timeout;
use tracing::{debug, info};

use super::Gateway;
use super::admission::Permit;
use super::drain::drain_close;
use super::handle::{ConnHandle, NewConn};
use super::io::{GOODBYE_TIMEOUT, goodbye};
use super::outbox::Close;
use super::task::{Parked, ended, live};
use crate::edge::LogLimit;
use crate::link::{Binding, Link};
use crate::session::handshake::Accepted;
use crate::session::inbox::InboxState;
use crate::transport::{self, Wire};

/// How long a new MQTT connection lets the device's other connection end by itself before it
/// closes it (see [`crate::delivery::Delivery::hand_over`]).
const HAND_OVER_GRACE: Duration = Duration::from_millis(50);

/// How long a new MQTT connection waits for the one it replaces to end (its goodbye, at most
/// [`GOODBYE_TIMEOUT`], then its last acks' writes) before it reads where it resumes.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// Serves one accepted connection until it ends or parks.
///
/// # Memory
/// This future is the largest per-connection allocation while the connection is active, so
/// what it holds while idle is kept small: the handshake, the goodbye and the clean-up are
/// boxed, so that their state is allocated only while they run rather than reserved for the
/// connection's whole life. An idle connection gives it up altogether (see `super::task`).
pub(super) fn serve<W: Wire>(wire: W, permit: Permit) -> impl Future<Output = ()> + Send {
    // Not an `async fn`: its arguments would be kept beside its state for its whole life. They
    // move into the boxed handshake instead, and out of it into `live`.
    let handshake = Box::pin(async move {
        let mut wire = wire;
        let conn = establish(&mut wire, permit.gw()).await?;
        Some((wire, Parked { conn, permit }))
    });
    // A chain rather than an `async` block: the block would keep the handshake's result
    // beside `live`'s state, this holds one or the other.
    handshake
        .then(|established| OptionFuture::from(established.map(|(w, h)| live(w, h, true))))
        .map(drop)
}

/// Handshake, registration, `connected`. Returns the connection, or `None` when it was refused
/// or lost (and everything is cleaned up).
async fn establish<W: Wire>(wire: &mut W, gw: &Gateway) -> Option<Arc<ConnHandle>> {
    let (id, accepted) = handshake(wire, gw).await?;
    if wire.takes_over() {
        // MQTT: the device's connection that this one replaces ends first, its last acks
        // written, so that this one resumes after them (docs/mqtt.md 4.4).
        let (device, bindings) = (&accepted.device, &accepted.bindings[..]);
        let transport = wire.transport();
        gw.delivery
            .hand_over(device, transport, bindings, HAND_OVER_GRACE, HAND_OVER_WAIT)
            .await;
    }
    let mut resume = Vec::with_capacity(accepted.bindings.len());
    for (Binding { app, user, .. }, last_seq) in accepted.bindings.iter().zip(&accepted.last_seqs) {
        // Read even when the client says where it is: acks are written only past the stored
        // position, which may be behind the client's `last_seq`.
        let stored = match gw.delivery.acked(app, user, &accepted.device).await {
            Ok(acked) => acked,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a device cursor");
                reject(wire, gw, Code::INTERNAL, "store unavailable").await;
                return None;
            }
        };
        resume.push(InboxState::resuming(last_seq.unwrap_or(stored), stored));
    }
    // A client that heartbeats may miss a few; the keep-alives of a server that keeps the
    // connection alive itself go out every interval.
    let idle_limit = match wire.keepalive() {
        true => accepted.heartbeat,
        false => accepted.heartbeat * gw.config.heartbeat_missed,
    };
    let handle = ConnHandle::new(NewConn {
        id: gw.table.next_id(),
        transport: wire.transport(),
        encoding: wire.encoding(),
        device: accepted.device,
        bindings: accepted.bindings,
        resume,
        queue_limit: gw.limits.outbound_queue_bytes,
        direct: wire.direct(),
        idle_limit,
        now_ms: gw.clock_ms(),
    });
    let conn = Arc::new(match wire.keepalive() {
        true => handle.kept_alive(),
        false => handle,
    });
    // Visible to pushes from here on; they queue behind `connected`.
    gw.table.insert(conn.clone());
    // A shutdown that began before the insert did not see this connection: close it here.
    // One that begins after it will (the table's lock orders the two). Same for a drain.
    // Likewise a reload that removed one of its apps after the handshake read the rules: it
    // swaps them before it walks the table, so either it finds this connection or this
    // check sees its rules.
    let removed = {
        let access = gw.access.load();
        conn.bindings
            .iter()
            .find(|b| access.app(b.app.as_str()).is_none())
            .map(|b| b.app.clone())
    };
    if gw.shutdown.is_cancelled() {
        conn.close(Close::new(Code::SHUTDOWN, "server shutting down"));
    } else if gw.drain.is_cancelled() {
        conn.close(drain_close());
    } else if let Some(app) = removed {
        let reason = format!("app {app} was removed from the configuration");
        conn.close(Close::new(Code::APP_REMOVED, reason));
    }
    gw.delivery.attach(&(conn.clone() as Arc<dyn Link>)).await;
    // MQTT: of two connections of the device that raced through the hand-over above (each
    // found the other not registered yet), the older one goes, before this one reads the
    // session that connection leaves.
    if wire.takes_over() {
        gw.delivery.take_over(&*conn).await;
    }
    // Before `connected`: a client that saw it and then closed another connection of its user
    // must not make the user look offline.
    gw.events.connected(&*conn);
    gw.metrics
        .transport(conn.transport)
        .connections
        .increment(1.0);
    gw.metrics.handshakes_ok.increment(1);
    let reply = Frame::new(
        id,
        Connected {
            conn_id: conn.id.0,
            node: gw.node.to_string(),
            heartbeat_ms: accepted.heartbeat.as_millis() as u32,
            max_frame: gw.limits.max_frame,
            bindings: conn
                .bindings
                .iter()
                .map(|Binding { app, user, .. }| Bound {
                    app: app.to_string(),
                    user: user.to_string(),
                })
                .collect(),
        },
    );
    wire.accepted(&transport::Accepted {
        conn: conn.id,
        device: &conn.device,
        bindings: &conn.bindings,
        sessions: &gw.sessions,
        wills: &gw.wills,
        max_session: gw.max_session,
        max_inflight: gw.max_inflight,
        tasks: &gw.tasks,
    })
    .await;
    let mut pending = VecDeque::from([conn.encoding.encode(&reply)]);
    let sent = timeout(gw.config.write_timeout, wire.send(&mut pending)).await;
    // The reply was never in the queue's budget: count it here, apart from the queue.
    let bytes = wire.take_bytes_written();
    let metrics = gw.metrics.transport(conn.transport);
    metrics.bytes_out.increment(bytes as u64);
    if let Ok(Ok(())) = sent {
        metrics.frames_out.increment(1);
        return Some(conn);
    }
    ended(gw, &conn, None).await;
    None
}

/// Waits for the `connect` frame and checks it. `None`: the connection was refused (and told
/// why) or went away.
async fn handshake<W: Wire>(wire: &mut W, gw: &Gateway) -> Option<(u32, Accepted)> {
    let first = tokio::select! {
        biased;
        () = gw.shutdown.cancelled() => {
            reject(wire, gw, Code::SHUTDOWN, "server shutting down").await;
            return None;
        }
        () = gw.drain.cancelled() => {
            let close = drain_close();
            debug!(code = %close.code, "handshake refused: draining");
            gw.metrics.handshake_failed(close.code);
            goodbye(wire, &mut VecDeque::new(), &close).await;
            return None;
        }
        r = timeout(gw.config.handshake_timeout, wire.recv()) => r,
    };
    let (id, connect) = match first {
        Err(_) => {
            let reason = "no connect frame within the handshake timeout";
            reject(wire, gw, Code::HANDSHAKE_TIMEOUT, reason).await;
            return None;
        }
        Ok(Ok(None)) => {
            // A WebSocket client that closed before `connect` gets its close answered (no
            // handle exists yet, so nothing else can write in between).
            if wire.wants_write() {
                let _ = timeout(GOODBYE_TIMEOUT, wire.send(&mut VecDeque::new())).await;
            }
            return None;
        }
        Ok(Err(e)) => {
            let code = e.code().unwrap_or(Code::PROTOCOL);
            reject(wire, gw, code, &e.to_string()).await;
            return None;
        }
        Ok(Ok(Some(Frame {
            id,
            body: Body::Connect(connect),
        }))) => (id, connect),
        Ok(Ok(Some(frame))) => {
            let reason = format!("the first frame must be connect, not {}", frame.op().name());
            reject(wire, gw, Code::EXPECTED_CONNECT, &reason).await;
            return None;
        }
    };
    let metrics = gw.metrics.transport(wire.transport());
    metrics.frames_in.increment(1);
    metrics.bytes_in.increment(wire.take_bytes_read() as u64);
    match gw.handshake.accept(connect) {
        Ok(accepted) => Some((id, accepted)),
        Err((code, reason)) => {
            reject(wire, gw, code, &reason).await;
            None
        }
    }
}

/// Handshake refusals logged, by the code's place in [`Code::ALL`]: at most a line a second
/// for each code (a client with a bad token retries; a flood must not flood the log).
static REFUSAL_LOGS: [LogLimit; Code::ALL.len()] = [const { LogLimit::new() }; Code::ALL.len()];

/// Refuses a connection that did not complete its handshake.
async fn reject<W: Wire>(wire: &mut W, gw: &Gateway, code: Code, reason: &str) {
    let limit = Code::ALL
        .iter()
        .position(|c| *c == code)
        .map(|i| &REFUSAL_LOGS[i]);
    match limit.and_then(LogLimit::take) {
        Some(suppressed) => info!(
            code = code.label(),
            transport = wire.transport().as_str(),
            reason,
            suppressed,
            "handshake refused (suppressed: refusals with this code not logged since the previous line)"
        ),
        None => debug!(%code, reason, "handshake refused"),
    }
    gw.metrics.handshake_failed(code);
    goodbye(wire, &mut VecDeque::new(), &Close::at_once(code, reason)).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::handle::{ConnHandle, NewConn};
    use super::super::testing::gateway;
    use crate::link::Encoding;
    use crate::transport::{TcpWire, WsWire};

    fn handle() -> Arc<ConnHandle> {
        Arc::new(ConnHandle::new(NewConn {
            id: tether_core::ConnId(1),
            transport: tether_core::Transport::Tcp,
            encoding: Encoding::Binary,
            device: "d".into(),
            bindings: vec![],
            resume: vec![],
            queue_limit: 100,
            direct: None,
            idle_limit: std::time::Duration::from_secs(1),
            now_ms: 0,
        }))
    }

    fn size_of_future<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The connection future is what every idle connection costs: keep it from creeping up.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let gw = gateway();
        let resumed = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let held = super::Parked {
            conn: handle(),
            permit: gw
                .admit(&gw.tcp_guard.load(), [127, 0, 0, 2].into())
                .unwrap(),
        };
        // With its lock and `Arc` (16 bytes), a parked connection's waker stays within 56
        // bytes: glibc's 64-byte chunk.
        assert!(size_of::<super::Parked>() <= 32);
        // A parked connection's new task: `live` alone.
        let size = size_of_future(&super::live(TcpWire::new(resumed, 1024), held, false));
        assert!(
            size <= 384,
            "the resumed connection future grew to {size} bytes"
        );
        let permit = gw
            .admit(&gw.tcp_guard.load(), [127, 0, 0, 1].into())
            .unwrap();
        let future = super::serve(TcpWire::new(stream, 1024), permit);
        let size = size_of_future(&future);
        assert!(
            size <= 384,
            "the TCP connection future grew to {size} bytes"
        );
    }

    /// Likewise a WebSocket connection's, with tether's wire or MQTT's.
    #[tokio::test]
    async fn the_websocket_connection_futures_stay_small() {
        use crate::transport::Plain;
        use crate::transport::mqtt::MqttWire;
        use crate::transport::ws::stream::WsStream;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = gateway();
        let permit = |last: u8| {
            gw.admit(&gw.ws_guard.load(), [127, 0, 0, last].into())
                .unwrap()
        };
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let wire = WsWire::over(Plain::new(stream), Default::default(), 1024, None);
        let size = size_of_future(&super::serve(wire, permit(1)));
        assert!(
            size <= 512,
            "the WebSocket connection future grew to {size} bytes"
        );
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let carrier = WsStream::new(Plain::new(stream), Default::default());
        let wire = MqttWire::over(carrier, 1024);
        let size = size_of_future(&super::serve(wire, permit(2)));
        assert!(
            size <= 640,
            "the MQTT over WebSocket connection future grew to {size} bytes"
        );
    }
}
