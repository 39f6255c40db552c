//! Conformance cases: Read cursors, and the devices of accounts.

use super::*;

// ---------------------------------------------------------------------------
// cursors

/// `devices_of` lists the devices of several accounts; unknown ones add none.
pub async fn devices_of_accounts(store: Arc<dyn Store>) {
    let ids = Ids::new("devices_of");
    let (a, b) = (ids.id("a"), ids.id("b"));
    new_account(&*store, &a).await;
    new_account(&*store, &b).await;
    for d in ["a1", "a2"] {
        store.add_device(device(&ids.id(d), &a), 5).await.unwrap();
    }
    store
        .add_device(device(&ids.id("b1"), &b), 5)
        .await
        .unwrap();
    let mut got: Vec<String> = store
        .devices_of(vec![a.clone(), ids.id("nobody"), b.clone()])
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    got.sort();
    assert_eq!(got, vec![ids.id("a1"), ids.id("a2"), ids.id("b1")]);
    assert!(store.devices_of(Vec::new()).await.unwrap().is_empty());
}

/// `advance_cursors_many` advances several devices at once, monotonically,
/// and skips devices that do not exist.
pub async fn cursors_many(store: Arc<dyn Store>) {
    let ids = Ids::new("cursors_many");
    let a = ids.id("a");
    new_account(&*store, &a).await;
    let (d1, d2, ghost) = (ids.id("d1"), ids.id("d2"), ids.id("ghost"));
    store.add_device(device(&d1, &a), 5).await.unwrap();
    store.add_device(device(&d2, &a), 5).await.unwrap();
    let (cx, cy) = (ids.id("x"), ids.id("y"));
    store
        .advance_cursors_many(vec![
            (d1.clone(), vec![(cx.clone(), 4), (cy.clone(), 2)]),
            (ghost.clone(), vec![(cx.clone(), 9)]),
            (d2.clone(), vec![(cx.clone(), 1)]),
        ])
        .await
        .unwrap();
    store
        .advance_cursors_many(vec![(d1.clone(), vec![(cx.clone(), 3), (cy.clone(), 6)])])
        .await
        .unwrap();
    assert_eq!(
        store.cursors(&d1).await.unwrap(),
        vec![(cx.clone(), 4), (cy.clone(), 6)]
    );
    assert_eq!(store.cursors(&d2).await.unwrap(), vec![(cx.clone(), 1)]);
    assert!(store.cursors(&ghost).await.unwrap().is_empty());
}

/// Cursors only move forward, are per device, and list by conversation id.
pub async fn cursors_monotonic(store: Arc<dyn Store>) {
    let ids = Ids::new("cursors");
    let a = ids.id("a");
    new_account(&*store, &a).await;
    let (d1, d2) = (ids.id("d1"), ids.id("d2"));
    store.add_device(device(&d1, &a), 5).await.unwrap();
    store.add_device(device(&d2, &a), 5).await.unwrap();
    let (cx, cy, cz) = (ids.id("x"), ids.id("y"), ids.id("z"));

    store
        .advance_cursors(&d1, vec![(cy.clone(), 5), (cx.clone(), 2)])
        .await
        .unwrap();
    assert_eq!(
        store.cursors(&d1).await.unwrap(),
        vec![(cx.clone(), 2), (cy.clone(), 5)]
    );
    assert!(store.cursors(&d2).await.unwrap().is_empty());

    store
        .advance_cursors(&d1, vec![(cy.clone(), 3), (cx.clone(), 7), (cz.clone(), 1)])
        .await
        .unwrap();
    assert_eq!(
        store.cursors(&d1).await.unwrap(),
        vec![(cx.clone(), 7), (cy.clone(), 5), (cz.clone(), 1)]
    );
    // Repeats within one call: the highest wins.
    store
        .advance_cursors(&d1, vec![(cz.clone(), 9), (cz.clone(), 4), (cz.clone(), 6)])
        .await
        .unwrap();
    assert_eq!(store.cursors(&d1).await.unwrap()[2], (cz.clone(), 9));

    store
        .advance_cursors(&d2, vec![(cx.clone(), 1)])
        .await
        .unwrap();
    assert_eq!(store.cursors(&d2).await.unwrap(), vec![(cx.clone(), 1)]);
    assert_eq!(store.cursors(&d1).await.unwrap()[0], (cx.clone(), 7));

    let none = ids.id("none");
    assert_err!(
        store.advance_cursors(&none, vec![(cx.clone(), 1)]).await,
        StoreError::NoSuchDevice(ref id) if *id == none
    );
    assert!(store.cursors(&none).await.unwrap().is_empty());
}

/// Concurrent advances of one cursor end at the highest value.
pub async fn cursors_concurrent(store: Arc<dyn Store>) {
    let ids = Ids::new("cursors-concurrent");
    let a = ids.id("a");
    new_account(&*store, &a).await;
    let d = ids.id("d");
    store.add_device(device(&d, &a), 5).await.unwrap();
    let conv = ids.id("conv");
    let mut tasks = JoinSet::new();
    for seq in (1..=50).rev() {
        let store = Arc::clone(&store);
        let (d, conv) = (d.clone(), conv.clone());
        tasks.spawn(async move { store.advance_cursors(&d, vec![(conv, seq)]).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    assert_eq!(store.cursors(&d).await.unwrap(), vec![(conv, 50)]);
}
