//! The [`SavedSessions`](crate::SavedSessions) part of the store contract.

use bytes::Bytes;

use crate::store::MAX_SESSION_BYTES;
use crate::{AppId, DeviceId, SavedSessions, UserId};

pub(super) async fn contract(store: &dyn SavedSessions) {
    let app = AppId::from("contract-sessions");
    let (alice, bob) = (UserId::from("alice"), UserId::from("bob"));
    let (phone, tablet) = (DeviceId::from("phone"), DeviceId::from("tablet"));
    let now = crate::now_ms();
    let read = |user: &UserId, device: &DeviceId, at: u64| {
        let (app, user, device) = (app.clone(), user.clone(), device.clone());
        async move {
            store
                .saved_session(&app, &user, &device, at)
                .await
                .expect("a saved session must be readable")
        }
    };
    assert_eq!(read(&alice, &phone, now).await, None, "nothing saved yet");

    let first = Bytes::from_static(b"first");
    store
        .save_session(&app, &alice, &phone, first.clone(), now + 60_000)
        .await
        .unwrap();
    assert_eq!(read(&alice, &phone, now).await, Some(first.clone()));
    assert_eq!(
        read(&alice, &phone, now + 60_000).await,
        None,
        "a session is never returned at its expiry"
    );
    assert_eq!(read(&alice, &tablet, now).await, None, "another device");
    assert_eq!(
        read(&bob, &phone, now).await,
        None,
        "the same device of another user"
    );

    let second = Bytes::from_static(b"second");
    store
        .save_session(&app, &alice, &phone, second.clone(), now + 120_000)
        .await
        .unwrap();
    assert_eq!(
        read(&alice, &phone, now + 60_000).await,
        Some(second.clone()),
        "a save replaces the value and its expiry"
    );

    let huge = Bytes::from(vec![b'x'; MAX_SESSION_BYTES + 1]);
    assert!(
        store
            .save_session(&app, &alice, &phone, huge, now + 60_000)
            .await
            .is_err(),
        "a value over MAX_SESSION_BYTES is refused"
    );
    assert_eq!(
        read(&alice, &phone, now).await,
        Some(second),
        "a refused save leaves the old value"
    );

    store.forget_session(&app, &alice, &phone).await.unwrap();
    assert_eq!(read(&alice, &phone, now).await, None, "forgotten");
    store
        .forget_session(&app, &bob, &tablet)
        .await
        .expect("forgetting nothing is no error");

    // Already expired when saved: never returned.
    store
        .save_session(&app, &bob, &tablet, first, now.saturating_sub(1))
        .await
        .unwrap();
    assert_eq!(read(&bob, &tablet, now).await, None);
}
