//! The handle's queue, close and durable-delivery rules, with sockets only where direct writes
//! are the point.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::time::Duration;

use bytes::Bytes;
use tether_core::{AppId, ConnId, DeviceId, Transport, UserId};
use tether_proto::Code;
use tokio::net::TcpStream;

use super::super::outbox::{Close, Outbox, rest};
use super::super::table::ConnTable;
use super::{ConnHandle, NewConn};
use crate::gateway::sweep::TokenTimes;
use crate::link::{Binding, Encoding, Enqueued, Link, Offered};
use crate::session::inbox::{InboxState, NextWork, REORDER_FRAMES, REORDER_WAIT_MS};
use crate::transport::Framing;

fn new_conn(limit: usize) -> NewConn {
    NewConn {
        id: ConnId(1),
        transport: Transport::Tcp,
        encoding: Encoding::Binary,
        device: DeviceId::from("d"),
        bindings: vec![],
        resume: vec![],
        queue_limit: limit,
        direct: None,
        idle_limit: Duration::from_secs(30),
        now_ms: 0,
    }
}

fn handle(limit: usize) -> ConnHandle {
    ConnHandle::new(new_conn(limit))
}

#[test]
fn an_idle_connection_handle_stays_small() {
    // Every connection holds one for its whole life, parked or not. Its `Arc` (16 bytes
    // more) must fit glibc's 256-byte chunk (8 bytes of header): so at most 232.
    let size = size_of::<ConnHandle>();
    eprintln!("ConnHandle: {size} bytes, Outbox: {}", size_of::<Outbox>());
    assert!(size <= 232, "ConnHandle grew to {size} bytes");
}

/// A handle with one live binding at seq 0.
fn live(limit: usize) -> ConnHandle {
    let mut inbox = InboxState::resuming(0, 0);
    inbox.catching_up = false;
    ConnHandle::new(NewConn {
        bindings: vec![Binding::new(AppId::from("a"), UserId::from("u"), 0)],
        resume: vec![inbox],
        ..new_conn(limit)
    })
}

#[test]
fn overtaking_pushes_wait_for_the_earlier_seq_and_go_out_in_order() {
    let conn = live(1000);
    for seq in [3, 2] {
        assert_eq!(
            conn.offer_durable(0, seq, Bytes::from(vec![seq as u8; 10])),
            Enqueued::Queued
        );
    }
    let mut taken = VecDeque::new();
    conn.take(&mut taken);
    assert!(taken.is_empty(), "nothing goes out before seq 1");
    conn.offer_durable(0, 1, Bytes::from(vec![1u8; 10]));
    conn.offer_durable(0, 2, Bytes::from(vec![2u8; 10]));
    conn.take(&mut taken);
    let order: Vec<u8> = taken.iter().map(|f| f[0]).collect();
    assert_eq!(order, vec![1, 2, 3], "in seq order, each once");
    let inbox = conn.inbox(0).unwrap();
    assert_eq!(
        (inbox.sent, inbox.held_count(), inbox.catching_up),
        (3, 0, false)
    );
    conn.written(30, 0);
    assert_eq!(conn.outbox().queue.bytes, 0, "held bytes were counted once");
}

#[test]
fn a_gap_that_does_not_fill_falls_back_to_the_store() {
    let conn = live(1000);
    conn.offer_durable(0, 5, Bytes::from(vec![5u8; 10]));
    assert_eq!(
        conn.outbox().queue.bytes,
        10,
        "held bytes count against the queue"
    );
    conn.expire_held(tether_core::now_ms());
    assert!(!conn.inbox(0).unwrap().catching_up, "not before the wait");
    conn.expire_held(tether_core::now_ms() + REORDER_WAIT_MS + 1);
    let inbox = conn.inbox(0).unwrap();
    assert!(inbox.catching_up && inbox.held.is_none());
    assert_eq!(inbox.missed, 5);
    assert_eq!(conn.outbox().queue.bytes, 0);
    assert!(matches!(
        conn.next_work(0),
        Some(NextWork::Backlog { after: 0, .. })
    ));
}

#[test]
fn a_failed_recheck_is_given_up_but_a_failed_resume_or_gap_closes() {
    let mut inbox = InboxState::resuming(3, 3);
    inbox.catching_up = false;
    inbox.first_page = false;
    let conn = ConnHandle::new(NewConn {
        bindings: vec![Binding::new(AppId::from("a"), UserId::from("u"), 0)],
        resume: vec![inbox],
        ..new_conn(100_000)
    });
    conn.recheck_inboxes();
    assert!(matches!(
        conn.next_work(0),
        Some(NextWork::Backlog { after: 3, .. })
    ));
    assert!(!conn.backlog_failed(0), "a recheck that fails is dropped");
    let inbox = conn.inbox(0).unwrap();
    assert!(!inbox.catching_up && inbox.sent == 3);

    // A known gap (seq 6 came live after 3): its read must not be dropped.
    conn.recheck_inboxes();
    conn.offer_durable(0, 6, Bytes::from_static(b"x"));
    assert_eq!(conn.inbox(0).unwrap().missed, 6);
    assert!(conn.backlog_failed(0));

    // The first page of a resume: neither.
    let fresh = live(100_000);
    fresh.recheck_inboxes();
    assert!(fresh.backlog_failed(0));
}

#[test]
fn too_many_overtaking_pushes_fall_back_to_the_store() {
    let conn = live(100_000);
    for seq in 2..(2 + REORDER_FRAMES as u64 + 1) {
        conn.offer_durable(0, seq, Bytes::from(vec![0u8; 10]));
    }
    let inbox = conn.inbox(0).unwrap();
    assert!(inbox.catching_up && inbox.held.is_none());
    assert_eq!(inbox.missed, 2 + REORDER_FRAMES as u64);
}

#[test]
fn the_queue_is_bounded_in_bytes_and_overflow_closes_as_slow() {
    let conn = handle(100);
    assert_eq!(conn.enqueue(Bytes::from(vec![0; 60])), Enqueued::Queued);
    assert_eq!(conn.enqueue(Bytes::from(vec![0; 60])), Enqueued::Overflow);
    assert_eq!(conn.enqueue(Bytes::from(vec![0; 1])), Enqueued::Closed);
    let mut taken = VecDeque::new();
    let close = conn.take(&mut taken).expect("closed");
    assert_eq!(close.code, Code::SLOW);
    assert!(
        taken.is_empty(),
        "a slow client's queue is dropped, not written"
    );
}

#[test]
fn written_bytes_free_the_budget() {
    let conn = handle(100);
    assert_eq!(conn.enqueue(Bytes::from(vec![0; 80])), Enqueued::Queued);
    let mut taken = VecDeque::new();
    assert!(conn.take(&mut taken).is_none());
    assert_eq!(taken.len(), 1);
    // Still counted while being written.
    assert_eq!(conn.enqueue(Bytes::from(vec![0; 30])), Enqueued::Overflow);
    let conn = handle(100);
    conn.enqueue(Bytes::from(vec![0; 80]));
    conn.take(&mut VecDeque::new());
    conn.written(80, 0);
    assert_eq!(conn.enqueue(Bytes::from(vec![0; 80])), Enqueued::Queued);
}

#[test]
fn the_sweep_closes_only_silent_connections() {
    let table = ConnTable::new(metrics::counter!("x"), metrics::counter!("y"));
    let conn = Arc::new(handle(100));
    table.insert(conn.clone());
    let write_timeout = Duration::from_secs(10);
    let silent_for_the_limit =
        table.sweep(30_000, write_timeout, Duration::ZERO, TokenTimes::default());
    assert_eq!(
        silent_for_the_limit, 0,
        "silent for exactly the limit is still alive"
    );
    conn.seen(20_000);
    assert_eq!(
        table.sweep(50_000, write_timeout, Duration::ZERO, TokenTimes::default()),
        0
    );
    assert_eq!(
        table.sweep(50_001, write_timeout, Duration::ZERO, TokenTimes::default()),
        1
    );
    let close = conn.take(&mut VecDeque::new()).unwrap();
    assert_eq!(close.code, Code::HEARTBEAT_TIMEOUT);
    let again = table.sweep(90_000, write_timeout, Duration::ZERO, TokenTimes::default());
    assert_eq!(again, 0, "a closing connection is not closed twice");
}

#[test]
fn a_write_that_makes_no_progress_is_abandoned_and_keeps_a_pending_close_code() {
    let table = ConnTable::new(metrics::counter!("x"), metrics::counter!("y"));
    let conn = Arc::new(handle(1000));
    table.insert(conn.clone());
    conn.seen(100_000);
    conn.enqueue(Bytes::from(vec![0; 20]));
    conn.take(&mut VecDeque::new());
    conn.set_writing(true, 1_000);
    conn.written(10, 5_000);
    assert_eq!(
        table.sweep(
            15_000,
            Duration::from_secs(10),
            Duration::ZERO,
            TokenTimes::default()
        ),
        0,
        "progress at 5 s"
    );
    conn.close(Close {
        code: Code::KICKED,
        reason: "kicked".into(),
        retry_after_ms: 0,
        flush: true,
    });
    assert_eq!(
        table.sweep(
            15_001,
            Duration::from_secs(10),
            Duration::ZERO,
            TokenTimes::default()
        ),
        1
    );
    let close = conn.take(&mut VecDeque::new()).unwrap();
    assert_eq!(close.code, Code::KICKED, "the kick's code is kept");
    assert!(!close.flush, "what is queued is given up");
}

#[test]
fn a_connection_not_writing_is_never_stalled() {
    let conn = handle(1000);
    conn.seen(1_000_000);
    conn.set_writing(true, 0);
    conn.set_writing(false, 1);
    assert!(!conn.sweep(1_000_000, 10, 0));
}

#[test]
fn a_flushing_close_keeps_queued_frames_and_the_first_close_wins() {
    let conn = handle(100);
    conn.enqueue(Bytes::from_static(b"a"));
    let kick = Close {
        code: Code::KICKED,
        reason: "kicked".into(),
        retry_after_ms: 0,
        flush: true,
    };
    assert!(conn.close(kick.clone()));
    assert!(!conn.close(Close {
        code: Code::SHUTDOWN,
        ..kick
    }));
    let mut taken = VecDeque::new();
    assert_eq!(conn.take(&mut taken).unwrap().code, Code::KICKED);
    assert_eq!(taken.len(), 1);
}

/// A connected loopback pair with small buffers: the server end (shared, as a
/// connection's handle holds it) and the client end.
async fn small_pair() -> (Arc<TcpStream>, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&listener.local_addr().unwrap().into())
        .unwrap();
    socket.set_nonblocking(true).unwrap();
    let client = TcpStream::from_std(std::net::TcpStream::from(socket)).unwrap();
    let (server, _) = listener.accept().await.unwrap();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    (Arc::new(server), client)
}

fn direct_conn(limit: usize, stream: Arc<TcpStream>) -> ConnHandle {
    let mut conn = new_conn(limit);
    conn.direct = Some((stream, Framing::Raw));
    let mut inbox = InboxState::resuming(0, 0);
    inbox.catching_up = false;
    conn.resume = vec![inbox];
    ConnHandle::new(conn)
}

#[tokio::test]
async fn a_direct_write_to_a_websocket_puts_each_frame_behind_its_header() {
    use tokio::io::AsyncReadExt;
    let (server, mut client) = small_pair().await;
    let mut new = new_conn(256 * 1024);
    new.transport = Transport::Ws;
    new.encoding = Encoding::Json;
    new.direct = Some((server, Framing::WebSocket));
    let conn = ConnHandle::new(new);
    conn.writer_idle();
    let frame = Bytes::from(vec![b'x'; 200]);
    assert_eq!(conn.write_or_queue(&frame), Offered::Written(200));
    let mut got = vec![0u8; 204];
    client.read_exact(&mut got).await.unwrap();
    // A text message (JSON), FIN, a 16-bit length.
    assert_eq!(got[..4], [0x81, 126, 0, 200]);
    assert_eq!(got[4..], frame[..]);

    // Too much for the socket: the rest waits, marked as begun, without a second header.
    let big = Bytes::from(vec![b'y'; 64 * 1024]);
    assert_eq!(conn.write_or_queue(&big), Offered::Queued);
    let mut taken = VecDeque::new();
    let (_, tail) = conn.take_batch(&mut taken);
    assert!(tail, "the task must treat it as half-written");
    let mut wire = vec![0u8; 10 + big.len() - taken[0].len()];
    client.read_exact(&mut wire).await.unwrap();
    assert_eq!(wire[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    wire.extend_from_slice(&taken[0]);
    assert_eq!(wire[10..], big[..]);
}

#[test]
fn the_rest_of_a_write_torn_inside_its_header_keeps_the_header_rest() {
    let frame = Bytes::from_static(b"payload");
    assert_eq!(rest(&[1, 2, 3, 4], &frame, 1), &b"\x02\x03\x04payload"[..]);
    assert_eq!(rest(&[1, 2], &frame, 2), frame);
    assert_eq!(rest(&[1, 2], &frame, 5), &b"load"[..]);
    assert_eq!(rest(&[], &frame, 3), &b"load"[..]);
}

#[tokio::test]
async fn a_direct_write_needs_room_for_the_whole_frame_in_the_budget() {
    let (server, client) = small_pair().await;
    let conn = direct_conn(64 * 1024, server);
    // Held durable pushes take most of the budget while the queue itself is empty.
    for seq in 2..=61u64 {
        assert_eq!(
            conn.offer_durable(0, seq, Bytes::from(vec![0u8; 1000])),
            Enqueued::Queued
        );
    }
    conn.writer_idle();
    // Not written in part with no room for the rest: refused whole, closing as slow.
    assert_eq!(
        conn.write_or_queue(&Bytes::from(vec![7u8; 32 * 1024])),
        Offered::Overflow
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        client.try_read(&mut buf).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "nothing of it reached the wire"
    );
}

#[tokio::test]
async fn the_rest_of_a_direct_write_survives_finish_and_non_flushing_closes() {
    let (server, client) = small_pair().await;
    let conn = direct_conn(256 * 1024, server);
    // Nothing is written before the task says it is idle (`connected` goes first).
    assert_eq!(
        conn.write_or_queue(&Bytes::from(vec![7u8; 1024])),
        Offered::Queued
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        client.try_read(&mut buf).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock)
    );
    let conn = {
        let (server, _client2) = small_pair().await;
        let conn = direct_conn(256 * 1024, server);
        conn.writer_idle();
        assert_eq!(
            conn.write_or_queue(&Bytes::from(vec![7u8; 64 * 1024])),
            Offered::Queued
        );
        conn
    };
    // A close that drops the queue keeps the rest, and says it is one.
    assert!(conn.abandon("stalled"));
    let mut taken = VecDeque::new();
    let (close, tail) = conn.take_batch(&mut taken);
    assert!(close.is_some());
    assert!(tail, "the task must treat it as half-written");
    assert_eq!(taken.len(), 1);
    assert!(!taken[0].is_empty() && taken[0].len() < 64 * 1024);
}

#[tokio::test]
async fn finish_hands_back_the_rest_of_a_direct_write() {
    let (server, _client) = small_pair().await;
    let conn = direct_conn(256 * 1024, server);
    conn.writer_idle();
    assert_eq!(
        conn.write_or_queue(&Bytes::from(vec![7u8; 64 * 1024])),
        Offered::Queued
    );
    let rest = conn.finish().expect("the rest of the begun frame");
    assert!(!rest.is_empty() && rest.len() < 64 * 1024);
    assert!(conn.finish().is_none(), "once");
}

#[tokio::test]
async fn the_sweep_asks_idle_connections_to_park_once_and_waits_after_a_refusal() {
    let (server, _client) = small_pair().await;
    let conn = direct_conn(1024, server);
    conn.seen(0);
    conn.progress_ms.store(0, Ordering::Relaxed);
    let (ask, never) = (100, 0);
    assert!(!conn.sweep(99, 10_000, ask));
    assert!(!conn.park_asked(), "not idle for park_after yet");
    assert!(!conn.sweep(100, 10_000, never));
    assert!(!conn.park_asked(), "park_after 0 never asks");
    assert!(!conn.sweep(100, 10_000, ask));
    assert!(conn.park_asked());
    assert!(
        conn.poll_ready(&mut noop_cx()).is_ready(),
        "the ask wakes the task"
    );
    // Busy: the next ask waits another park_after.
    conn.park_declined(150);
    conn.sweep(200, 10_000, ask);
    assert!(!conn.park_asked(), "asked again right after a refusal");
    conn.sweep(250, 10_000, ask);
    assert!(conn.park_asked());
    assert!(conn.poll_ready(&mut noop_cx()).is_ready());
    // Parked: the sweep leaves it alone (a wake would start a task for nothing).
    assert!(!conn.parking(std::task::Waker::noop()));
    assert!(conn.is_parked());
    conn.sweep(10_000, 10_000, ask);
    assert!(conn.is_parked());
    assert!(conn.poll_ready(&mut noop_cx()).is_pending(), "no wake");
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(std::task::Waker::noop())
}
