//! The [`Cursors`](crate::Cursors) part of the store contract.

use crate::store::Cursor;
use crate::{AppId, DeviceId, Seq, Store, UserId};

/// Runs after the inbox contract, on the inboxes it wrote (an ack must not move their heads).
pub(super) async fn contract(store: &dyn Store) {
    let now = crate::now_ms();
    let app = AppId::from("contract-s");
    let alice = UserId::from("alice");
    let bob = UserId::from("bob");

    // Cursors: per device, forward only.
    let phone = DeviceId::from("phone");
    let laptop = DeviceId::from("laptop");
    assert_eq!(
        store.cursor(&app, &alice, &phone).await.unwrap(),
        Cursor::default()
    );
    store.ack(&app, &alice, &phone, Seq(2)).await.unwrap();
    store.ack(&app, &alice, &phone, Seq(1)).await.unwrap();
    store.ack(&app, &alice, &laptop, Seq(1)).await.unwrap();
    assert_eq!(
        store.cursor(&app, &alice, &phone).await.unwrap().acked,
        Seq(2),
        "a cursor never moves back"
    );
    let all = store.cursors(&app, &alice).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|(d, c)| (d.as_str(), c.acked.0))
            .collect::<Vec<_>>(),
        vec![("laptop", 1), ("phone", 2)],
        "cursors per device, sorted by device"
    );
    assert!(store.cursors(&app, &bob).await.unwrap().is_empty());
    assert_eq!(
        store
            .read(&app, &alice, Seq(0), 10, now)
            .await
            .unwrap()
            .head,
        Seq(2),
        "acks do not delete messages"
    );

    // The poison guard's count.
    let tablet = DeviceId::from("tablet");
    for expected in 1..=3 {
        let n = store
            .note_attempt(&app, &alice, &tablet, Seq(1))
            .await
            .unwrap();
        assert_eq!(n, expected, "attempts of one seq add up");
    }
    assert_eq!(
        store
            .note_attempt(&app, &alice, &tablet, Seq(2))
            .await
            .unwrap(),
        1,
        "another seq starts again at 1"
    );
    store.ack(&app, &alice, &tablet, Seq(2)).await.unwrap();
    let cursor = store.cursor(&app, &alice, &tablet).await.unwrap();
    assert_eq!(cursor.acked, Seq(2));
    assert_eq!(
        cursor.attempts, 0,
        "an ack past the attempted seq clears it"
    );
}
