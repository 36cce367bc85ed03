//! Client behaviour against a scripted fake server speaking raw binary frames over TCP:
//! reconnect, heartbeats, do-not-reconnect codes, acks, backpressure, close.

mod support;

use std::time::Duration;

use support::{Peer, STEP, assert_connected, config, listener, next};
use tether_client::{Client, ClientError, Code, Event};
use tether_proto::{Ack, Body, Frame, Op};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

async fn next_message_seq(client: &mut Client) -> u64 {
    match next(client).await {
        Event::Message(push) => push.seq,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn reconnects_after_a_reconnect_code() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.handshake(30_000).await;
        first.disconnect(Code::INTERNAL, 0).await;
        let mut second = Peer::accept(&listener).await;
        second.handshake(30_000).await;
        second.push(1).await;
        second
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    let Event::Connected(c) = next(&mut client).await else {
        panic!("first event must be Connected");
    };
    assert_eq!((c.conn_id, c.node.as_str()), (7, "fake"));
    assert_eq!(c.bindings[0].user, "alice");
    match next(&mut client).await {
        Event::Disconnected {
            code,
            reconnecting,
            reason,
        } => {
            assert_eq!(code, Some(Code::INTERNAL));
            assert!(reconnecting);
            assert_eq!(reason, "internal");
        }
        other => panic!("{other:?}"),
    }
    assert_connected(next(&mut client).await);
    assert_eq!(next_message_seq(&mut client).await, 1);
    let _second = server.await.expect("server");
    client.close().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.handshake(30_000).await;
        first.disconnect(Code::SHUTDOWN, 300).await;
        let lost_at = tokio::time::Instant::now();
        let mut second = Peer::accept(&listener).await;
        let waited = lost_at.elapsed();
        second.handshake(30_000).await;
        (waited, second)
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            code: Some(Code::SHUTDOWN),
            reconnecting: true,
            ..
        }
    ));
    assert_connected(next(&mut client).await);
    let (waited, _second) = server.await.expect("server");
    assert!(
        waited >= Duration::from_millis(290),
        "reconnected after {waited:?}"
    );
}

#[tokio::test]
async fn stops_on_a_do_not_reconnect_code_during_reconnect() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.handshake(30_000).await;
        first.disconnect(Code::INTERNAL, 0).await;
        let mut second = Peer::accept(&listener).await;
        second.refuse(Code::TOKEN_EXPIRED).await;
        // No third attempt.
        let third = timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(third.is_err(), "the client reconnected after a 42xx code");
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            reconnecting: true,
            ..
        }
    ));
    match next(&mut client).await {
        Event::Disconnected {
            code, reconnecting, ..
        } => {
            assert_eq!(code, Some(Code::TOKEN_EXPIRED));
            assert!(!reconnecting);
        }
        other => panic!("{other:?}"),
    }
    assert!(timeout(STEP, client.recv()).await.expect("end").is_none());
    server.await.expect("server");
}

#[tokio::test]
async fn refused_first_connect_is_an_error() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.refuse(Code::BAD_TOKEN).await;
    });
    let err = Client::connect(config(&url)).await.expect_err("refused");
    assert_eq!(err.code(), Some(Code::BAD_TOKEN));
    assert!(!err.is_retryable());
    assert!(matches!(err, ClientError::Rejected { .. }));
    server.await.expect("server");
}

#[tokio::test]
async fn no_server_is_an_io_error() {
    let (listener, url) = listener().await;
    drop(listener);
    let err = Client::connect(config(&url))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ClientError::Io(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn pings_when_idle_and_detects_a_silent_server() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.handshake(50).await;
        // Two pings in a row, each with a fresh id; never answered.
        let a = peer.recv().await.expect("ping");
        let b = peer.recv().await.expect("ping");
        assert_eq!((a.op(), b.op()), (Op::Ping, Op::Ping));
        assert_ne!(a.id, b.id);
        // Keep the socket open but silent until the client gives up on it.
        while peer.recv().await.is_some() {}
        // The client comes back.
        let mut again = Peer::accept(&listener).await;
        again.handshake(30_000).await;
        again
    });
    let mut config = config(&url);
    config.heartbeat = Duration::from_secs(5); // the server's 50 ms wins
    let mut client = Client::connect(config).await.expect("connect");
    assert_connected(next(&mut client).await);
    let started = tokio::time::Instant::now();
    match next(&mut client).await {
        Event::Disconnected {
            code,
            reason,
            reconnecting,
        } => {
            assert_eq!(code, None);
            assert!(reason.contains("no frame"), "{reason}");
            assert!(reconnecting);
        }
        other => panic!("{other:?}"),
    }
    // First ping after one 50 ms interval, then two intervals without an answer.
    assert!(started.elapsed() >= Duration::from_millis(140));
    assert_connected(next(&mut client).await);
    let _again = server.await.expect("server");
}

#[tokio::test]
async fn pongs_keep_the_connection_alive() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.handshake(100).await;
        // Answer pings for 5 intervals, then push.
        for _ in 0..5 {
            let ping = peer.recv().await.expect("ping");
            assert_eq!(ping.op(), Op::Ping);
            peer.send(Frame::new(ping.id, Body::Pong)).await;
        }
        peer.push(1).await;
        peer
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    assert_eq!(next_message_seq(&mut client).await, 1);
    let _peer = server.await.expect("server");
}

#[tokio::test]
async fn acks_are_cumulative_and_survive_a_reconnect() {
    let (listener, url) = listener().await;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::channel::<Ack>(16);
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.handshake(30_000).await;
        for seq in 1..=3 {
            first.push(seq).await;
        }
        let frame = first.recv().await.expect("ack");
        let Body::Ack(ack) = frame.body else {
            panic!("expected ack, got {:?}", frame.op());
        };
        acked_tx.send(ack).await.expect("report");
        first.disconnect(Code::INTERNAL, 200).await;
        // The ack made while disconnected arrives right after the next handshake.
        let mut second = Peer::accept(&listener).await;
        second.handshake(30_000).await;
        let frame = second.recv().await.expect("ack");
        let Body::Ack(ack) = frame.body else {
            panic!("expected ack, got {:?}", frame.op());
        };
        acked_tx.send(ack).await.expect("report");
        second
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    for seq in 1..=3 {
        assert_eq!(next_message_seq(&mut client).await, seq);
    }
    // Acks made before the task writes them coalesce into one; 0 is ignored.
    client.ack("demo", 2).expect("ack");
    client.ack("demo", 3).expect("ack");
    client.ack("demo", 1).expect("ack");
    client.ack("demo", 0).expect("ack");
    assert!(matches!(
        client.ack("other", 1),
        Err(ClientError::NotBound(_))
    ));
    let ack = timeout(STEP, acked_rx.recv())
        .await
        .expect("in time")
        .expect("ack");
    assert_eq!((ack.app.as_str(), ack.seq), ("demo", 3));
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            reconnecting: true,
            ..
        }
    ));
    // Disconnected now (retry_after 200 ms): the ack waits for the next connection.
    client.ack("demo", 9).expect("ack");
    assert_connected(next(&mut client).await);
    let ack = timeout(STEP, acked_rx.recv())
        .await
        .expect("in time")
        .expect("ack");
    assert_eq!(ack.seq, 9);
    let _second = server.await.expect("server");
}

#[tokio::test]
async fn a_slow_reader_loses_nothing_and_keeps_order() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.handshake(30_000).await;
        for seq in 1..=50 {
            peer.push(seq).await;
        }
        peer
    });
    let mut config = config(&url);
    config.event_buffer = 2;
    let mut client = Client::connect(config).await.expect("connect");
    let _peer = server.await.expect("server");
    // Let the task fill the queue and hold one event before reading.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_connected(next(&mut client).await);
    for seq in 1..=50 {
        assert_eq!(next_message_seq(&mut client).await, seq);
    }
}

#[tokio::test]
async fn reconnect_disabled_ends_the_stream() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.handshake(30_000).await;
        peer.disconnect(Code::INTERNAL, 0).await;
    });
    let mut config = config(&url);
    config.reconnect.enabled = false;
    let mut client = Client::connect(config).await.expect("connect");
    assert_connected(next(&mut client).await);
    assert!(matches!(
        next(&mut client).await,
        Event::Disconnected {
            code: Some(Code::INTERNAL),
            reconnecting: false,
            ..
        }
    ));
    assert!(timeout(STEP, client.recv()).await.expect("end").is_none());
    assert!(matches!(client.ack("demo", 1), Err(ClientError::Closed)));
    server.await.expect("server");
}

#[tokio::test]
async fn close_writes_pending_acks_then_closes() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.handshake(30_000).await;
        let mut frames = Vec::new();
        while let Some(frame) = peer.recv().await {
            frames.push(frame);
        }
        frames
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    client.ack("demo", 5).expect("ack");
    timeout(STEP, client.close()).await.expect("close in time");
    let frames = server.await.expect("server");
    let acks: Vec<_> = frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Ack(a) => Some(a.seq),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [5]);
}

#[tokio::test]
async fn a_server_error_frame_names_the_close() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.handshake(30_000).await;
        let request_error = tether_proto::ErrorBody {
            code: Code::BAD_REQUEST,
            message: "no such app".into(),
        };
        peer.send(Frame::new(3, request_error)).await;
        let fatal = tether_proto::ErrorBody {
            code: Code::KICKED,
            message: "kicked by the business".into(),
        };
        peer.send(Frame::new(0, fatal)).await;
        let _ = peer.stream.shutdown().await;
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    assert_eq!(
        next(&mut client).await,
        Event::Error {
            code: Code::BAD_REQUEST,
            message: "no such app".into()
        }
    );
    assert_eq!(
        next(&mut client).await,
        Event::Disconnected {
            code: Some(Code::KICKED),
            reason: "kicked by the business".into(),
            reconnecting: false
        }
    );
    server.await.expect("server");
}

#[tokio::test]
async fn a_full_queue_does_not_stop_heartbeats() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.handshake(50).await;
        for seq in 1..=5 {
            peer.push(seq).await;
        }
        // Nobody reads on the client side, yet pings keep coming for many intervals.
        for _ in 0..6 {
            let ping = peer.recv().await.expect("ping");
            assert_eq!(ping.op(), Op::Ping);
            peer.send(Frame::new(ping.id, Body::Pong)).await;
        }
        peer
    });
    let mut config = config(&url);
    config.event_buffer = 1;
    let mut client = Client::connect(config).await.expect("connect");
    let _peer = server.await.expect("server");
    assert_connected(next(&mut client).await);
    for seq in 1..=5 {
        assert_eq!(next_message_seq(&mut client).await, seq);
    }
}
