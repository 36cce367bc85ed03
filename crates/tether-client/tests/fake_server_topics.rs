//! Topic behaviour against the scripted fake server: resubscribing with `since` after a drop,
//! dropping duplicates, server-side subscriptions, refused subscribes, unsubscribing.

mod support;

use std::time::Duration;

use support::{Peer, assert_connected, config, listener, next, next_publication};
use tether_client::{Client, ClientError, Code, Event, Recovery};
use tokio::time::timeout;

/// How long "nothing happens" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn subscribed(
    topic: &str,
    offset: u64,
    recovery: Recovery,
    since: Option<u64>,
    server_side: bool,
) -> Event {
    Event::Subscribed {
        app: "demo".into(),
        topic: topic.into(),
        offset,
        recovery,
        since,
        server_side,
    }
}

/// Skips the `Disconnected` of a lost connection and expects the reconnect.
async fn reconnected(client: &mut Client) {
    match next(client).await {
        Event::Disconnected {
            reconnecting: true, ..
        } => {}
        other => panic!("expected a lost connection, got {other:?}"),
    }
    assert_connected(next(client).await);
}

#[tokio::test]
async fn a_reconnect_resubscribes_from_the_last_offset_and_drops_duplicates() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.handshake(30_000).await;
        let (id, since) = first.expect_subscribe("room").await;
        assert_eq!(since, None, "a first subscribe is live only");
        first.subscribed(id, "room", 10, Recovery::Live).await;
        first.publish("room", 11).await;
        first.publish("room", 12).await;
        first.disconnect(Code::INTERNAL, 0).await;

        let mut second = Peer::accept(&listener).await;
        second.handshake(30_000).await;
        let (id, since) = second.expect_subscribe("room").await;
        assert_eq!(
            since,
            Some(12),
            "resumes after the last publication handed over"
        );
        // Live ones can get ahead of the reply (a server-side subscription re-applied first):
        // 13 comes again in the recovery; a live-only one (offset 0) does not.
        second.publish("room", 13).await;
        second.publish("room", 0).await;
        second.subscribed(id, "room", 14, Recovery::Complete).await;
        for offset in [12, 13, 14, 14, 15, 0] {
            second.publish("room", offset).await;
        }
        second
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    client.subscribe("demo", "room").expect("subscribe");
    assert_eq!(
        next(&mut client).await,
        subscribed("room", 10, Recovery::Live, None, false)
    );
    assert_eq!(next_publication(&mut client, "room").await, 11);
    assert_eq!(next_publication(&mut client, "room").await, 12);
    reconnected(&mut client).await;
    assert_eq!(next_publication(&mut client, "room").await, 0);
    assert_eq!(
        next(&mut client).await,
        subscribed("room", 14, Recovery::Complete, Some(12), false)
    );
    for offset in [13, 14, 15, 0] {
        assert_eq!(next_publication(&mut client, "room").await, offset);
    }
    let _second = server.await.expect("server");
    assert!(
        timeout(QUIET, client.recv()).await.is_err(),
        "no duplicate follows"
    );
    client.close().await;
}

#[tokio::test]
async fn server_side_subscriptions_are_recovered_without_subscribing_twice() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.handshake(30_000).await;
        first.subscribed(0, "news", 3, Recovery::Live).await;
        first.publish("news", 4).await;
        first.publish("news", 5).await;
        first.disconnect(Code::INTERNAL, 0).await;

        // 6 and 7 were published meanwhile; the server re-applies the subscription live.
        let mut second = Peer::accept(&listener).await;
        second.handshake(30_000).await;
        second.subscribed(0, "news", 7, Recovery::Live).await;
        second.publish("news", 8).await;
        let (id, since) = second.expect_subscribe("news").await;
        assert_eq!(since, Some(5));
        second.subscribed(id, "news", 8, Recovery::Complete).await;
        for offset in [6, 7, 8, 9] {
            second.publish("news", offset).await;
        }
        second.disconnect(Code::INTERNAL, 0).await;

        // Nothing missed this time: no subscribe from the client at all.
        let mut third = Peer::accept(&listener).await;
        third.handshake(30_000).await;
        third.subscribed(0, "news", 9, Recovery::Live).await;
        if let Some(frame) = third.within(QUIET).await {
            panic!("the client sent {frame:?}");
        }
        third.publish("news", 10).await;
        third
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    assert_eq!(
        next(&mut client).await,
        subscribed("news", 3, Recovery::Live, None, true)
    );
    assert_eq!(next_publication(&mut client, "news").await, 4);
    assert_eq!(next_publication(&mut client, "news").await, 5);
    reconnected(&mut client).await;
    assert_eq!(
        next(&mut client).await,
        subscribed("news", 8, Recovery::Complete, Some(5), true)
    );
    for offset in [6, 7, 8, 9] {
        assert_eq!(next_publication(&mut client, "news").await, offset);
    }
    reconnected(&mut client).await;
    assert_eq!(
        next(&mut client).await,
        subscribed("news", 9, Recovery::Live, None, true)
    );
    assert_eq!(next_publication(&mut client, "news").await, 10);
    let _third = server.await.expect("server");
    client.close().await;
}

#[tokio::test]
async fn a_refused_subscribe_is_forgotten_unless_the_server_was_busy() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.handshake(30_000).await;
        let (id, _) = first.expect_subscribe("full").await;
        first.error(id, Code::LIMIT).await;
        let (id, _) = first.expect_subscribe("busy").await;
        first.error(id, Code::UNAVAILABLE).await;
        // Sent again after the backoff (20 ms at most with this config).
        let (id, since) = first.expect_subscribe("busy").await;
        assert_eq!(since, None);
        first.subscribed(id, "busy", 0, Recovery::Live).await;
        first.disconnect(Code::INTERNAL, 0).await;

        let mut second = Peer::accept(&listener).await;
        second.handshake(30_000).await;
        let (id, since) = second.expect_subscribe("busy").await;
        assert_eq!(since, Some(0));
        second.subscribed(id, "busy", 0, Recovery::Complete).await;
        if let Some(frame) = second.within(QUIET).await {
            panic!("the refused topic came back: {frame:?}");
        }
        second
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    assert!(matches!(
        client.subscribe("other", "room"),
        Err(ClientError::NotBound(_))
    ));
    assert!(matches!(
        client.subscribe("demo", "bad\ntopic"),
        Err(ClientError::InvalidTopic { .. })
    ));
    client.subscribe("demo", "full").expect("subscribe");
    assert_eq!(
        next(&mut client).await,
        Event::SubscribeFailed {
            app: "demo".into(),
            topic: "full".into(),
            code: Code::LIMIT,
            message: "limit".into(),
            retrying: false,
        }
    );
    client.subscribe("demo", "busy").expect("subscribe");
    assert!(matches!(
        next(&mut client).await,
        Event::SubscribeFailed {
            code: Code::UNAVAILABLE,
            retrying: true,
            ..
        }
    ));
    assert_eq!(
        next(&mut client).await,
        subscribed("busy", 0, Recovery::Live, None, false)
    );
    reconnected(&mut client).await;
    assert_eq!(
        next(&mut client).await,
        subscribed("busy", 0, Recovery::Complete, Some(0), false)
    );
    let _second = server.await.expect("server");
    client.close().await;
}

#[tokio::test]
async fn unsubscribed_topics_stop_at_once_and_are_not_resubscribed() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.handshake(30_000).await;
        let (id, _) = first.expect_subscribe("room").await;
        first.subscribed(id, "room", 0, Recovery::Live).await;
        first.publish("room", 1).await;
        let id = first.expect_unsubscribe("room").await;
        // Already on the way when the unsubscribe arrived.
        first.publish("room", 2).await;
        first.publish("room", 0).await;
        first.unsubscribed(id, "room").await;
        // The business subscribes the user, then unsubscribes it.
        first.subscribed(0, "news", 0, Recovery::Live).await;
        first.publish("news", 1).await;
        first.unsubscribed(0, "news").await;
        first.disconnect(Code::INTERNAL, 0).await;

        let mut second = Peer::accept(&listener).await;
        second.handshake(30_000).await;
        if let Some(frame) = second.within(QUIET).await {
            panic!("the client sent {frame:?}");
        }
        second
    });
    let mut client = Client::connect(config(&url)).await.expect("connect");
    assert_connected(next(&mut client).await);
    client.subscribe("demo", "room").expect("subscribe");
    assert_eq!(
        next(&mut client).await,
        subscribed("room", 0, Recovery::Live, None, false)
    );
    assert_eq!(next_publication(&mut client, "room").await, 1);
    client.unsubscribe("demo", "room").expect("unsubscribe");
    assert_eq!(
        next(&mut client).await,
        Event::Unsubscribed {
            app: "demo".into(),
            topic: "room".into(),
            server_side: false,
        }
    );
    assert_eq!(
        next(&mut client).await,
        subscribed("news", 0, Recovery::Live, None, true)
    );
    assert_eq!(next_publication(&mut client, "news").await, 1);
    assert_eq!(
        next(&mut client).await,
        Event::Unsubscribed {
            app: "demo".into(),
            topic: "news".into(),
            server_side: true,
        }
    );
    reconnected(&mut client).await;
    let _second = server.await.expect("server");
    client.close().await;
}
