//! Push endpoints: one per device, gone with the device.

use super::*;

/// Set, replace, clear; unknown and revoked devices have none and cannot
/// set one; deleting the account deletes it.
pub async fn push_endpoints_follow_their_device(store: Arc<dyn Store>) {
    let ids = Ids::new("push");
    let (a, d1, d2) = (ids.id("a"), ids.id("d1"), ids.id("d2"));
    new_account(&*store, &a).await;
    store.add_device(device(&d1, &a), 10).await.unwrap();
    store.add_device(device(&d2, &a), 10).await.unwrap();
    assert_eq!(store.push_endpoint(&d1).await.unwrap(), None);
    let e1 = "https://push.example/up/1".to_owned();
    store
        .set_push_endpoint(&d1, Some(e1.clone()))
        .await
        .unwrap();
    store
        .set_push_endpoint(&d2, Some("https://push.example/up/2".into()))
        .await
        .unwrap();
    assert_eq!(store.push_endpoint(&d1).await.unwrap(), Some(e1));
    let e1b = "https://push.example/up/1b".to_owned();
    store
        .set_push_endpoint(&d1, Some(e1b.clone()))
        .await
        .unwrap();
    assert_eq!(store.push_endpoint(&d1).await.unwrap(), Some(e1b));
    store.set_push_endpoint(&d1, None).await.unwrap();
    assert_eq!(store.push_endpoint(&d1).await.unwrap(), None);

    let unknown = ids.id("nobody");
    assert_err!(
        store.set_push_endpoint(&unknown, Some("https://x.example/".into())).await,
        StoreError::NoSuchDevice(d) if d == unknown
    );
    assert_eq!(store.push_endpoint(&unknown).await.unwrap(), None);

    // Revoked: gone, and no new one.
    store
        .set_push_endpoint(&d1, Some("https://push.example/up/1c".into()))
        .await
        .unwrap();
    store.revoke_device(&d1).await.unwrap();
    assert_eq!(store.push_endpoint(&d1).await.unwrap(), None);
    assert_err!(
        store
            .set_push_endpoint(&d1, Some("https://x.example/".into()))
            .await,
        StoreError::NoSuchDevice(_)
    );
    // The account deleted and the device id enrolled again: nothing left.
    store.delete_account(&a).await.unwrap();
    assert_eq!(store.push_endpoint(&d2).await.unwrap(), None);
    new_account(&*store, &a).await;
    store.add_device(device(&d2, &a), 10).await.unwrap();
    assert_eq!(store.push_endpoint(&d2).await.unwrap(), None);
}
