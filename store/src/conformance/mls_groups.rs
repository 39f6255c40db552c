//! Conformance cases: MLS group state beyond single appends: roster
//! versions, reconciliation, Welcomes, restarts of a broken group.

use super::*;

/// A commit may reflect an older roster version than the group already
/// does: the epoch advances, `group_roster_version` does not go back.
pub async fn mls_group_roster_never_decreases(store: Arc<dyn Store>) {
    let ids = Ids::new("mls-never-decreases");
    let (a, b, c, conv) = (ids.id("a"), ids.id("b"), ids.id("c"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    new_account(&*store, &b).await;
    new_account(&*store, &c).await;
    for x in [&b, &c] {
        store
            .put_members(&conv, vec![member(x, Role::Member)])
            .await
            .unwrap();
    }
    let m = |id: &str, check| with_mls(message(&conv, id, &a), check);
    store.append(m("c0", commit(0, 2))).await.unwrap();
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(1, 2, 2));
    store.remove_members(&conv, vec![c.clone()]).await.unwrap();
    store.append(m("c1", commit(1, 1))).await.unwrap();
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(2, 3, 2));
    assert_eq!(
        store.mark_reconciled(&conv, 0, 2, 1).await.unwrap(),
        state(2, 3, 2)
    );
    assert_eq!(
        store.mark_reconciled(&conv, 0, 2, 3).await.unwrap(),
        state(2, 3, 3)
    );
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(2, 3, 3));
}

/// `mark_reconciled`: only at the current epoch, never a future roster
/// version, never decreasing; it unblocks application messages.
pub async fn mark_reconciled_rules(store: Arc<dyn Store>) {
    let ids = Ids::new("mark-reconciled");
    let (a, b, conv) = (ids.id("a"), ids.id("b"), ids.id("conv"));
    let ghost = ids.id("ghost-conv");
    assert_err!(
        store.mark_reconciled(&ghost, 0, 0, 0).await,
        StoreError::NoSuchConversation(ref id) if *id == ghost
    );
    group_with(&*store, &conv, &[&a]).await;
    new_account(&*store, &b).await;
    store
        .put_members(&conv, vec![member(&b, Role::Member)])
        .await
        .unwrap();
    assert_err!(
        store
            .append(with_mls(message(&conv, "x", &a), app(0)))
            .await,
        StoreError::MembershipPending { roster_version: 1 }
    );
    assert_err!(
        store.mark_reconciled(&conv, 0, 1, 1).await,
        StoreError::WrongEpoch { current: 0 }
    );
    assert_err!(
        store.mark_reconciled(&conv, 0, 0, 2).await,
        StoreError::InvalidRosterVersion { current: 1 }
    );
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(0, 1, 0));
    assert_eq!(
        store.mark_reconciled(&conv, 0, 0, 1).await.unwrap(),
        state(0, 1, 1)
    );
    store
        .append(with_mls(message(&conv, "x", &a), app(0)))
        .await
        .unwrap();
    store.remove_members(&conv, vec![b.clone()]).await.unwrap();
    assert_eq!(
        store.mark_reconciled(&conv, 0, 0, 1).await.unwrap(),
        state(0, 2, 1)
    );
    assert_err!(
        store
            .append(with_mls(message(&conv, "y", &a), app(0)))
            .await,
        StoreError::MembershipPending { roster_version: 2 }
    );
}

/// `welcome_for` gives the latest Welcome of a device in a conversation;
/// refused commits store none.
pub async fn welcome_for_latest_wins(store: Arc<dyn Store>) {
    let ids = Ids::new("welcome-latest");
    let (a, conv, other) = (ids.id("a"), ids.id("conv"), ids.id("other"));
    group_with(&*store, &conv, &[&a]).await;
    store
        .create_conversation(
            conversation(&other, ConversationKind::Group),
            vec![member(&a, Role::Owner)],
        )
        .await
        .unwrap();
    let (d1, d2, d3) = (ids.id("d1"), ids.id("d2"), ids.id("d3"));
    let m = |id: &str, check| with_mls(message(&conv, id, &a), check);
    let s1 = store
        .append(m("c0", commit_welcoming(0, 0, b"W1", &[&d1, &d2])))
        .await
        .unwrap()
        .seq;
    assert_eq!(
        store.welcome_for(&d1, &conv).await.unwrap(),
        Some((s1, b"W1".to_vec()))
    );
    assert_eq!(
        store.welcome_for(&d2, &conv).await.unwrap(),
        Some((s1, b"W1".to_vec()))
    );
    assert_eq!(store.welcome_for(&d3, &conv).await.unwrap(), None);
    assert_eq!(store.welcome_for(&d1, &other).await.unwrap(), None);
    assert_eq!(
        store.welcome_for(&d1, &ids.id("ghost")).await.unwrap(),
        None
    );
    store.append(m("a1", app(1))).await.unwrap();
    let s2 = store
        .append(m("c1", commit_welcoming(1, 0, b"W2", &[&d1])))
        .await
        .unwrap()
        .seq;
    assert!(s2 > s1);
    assert_eq!(
        store.welcome_for(&d1, &conv).await.unwrap(),
        Some((s2, b"W2".to_vec()))
    );
    assert_eq!(
        store.welcome_for(&d2, &conv).await.unwrap(),
        Some((s1, b"W1".to_vec()))
    );
    store.append(m("c2", commit(2, 0))).await.unwrap();
    assert_eq!(
        store.welcome_for(&d1, &conv).await.unwrap(),
        Some((s2, b"W2".to_vec()))
    );
    assert_err!(
        store
            .append(m("c-late", commit_welcoming(1, 0, b"W3", &[&d1, &d3])))
            .await,
        StoreError::WrongEpoch { current: 3 }
    );
    assert_eq!(store.welcome_for(&d3, &conv).await.unwrap(), None);
    assert_eq!(
        store.welcome_for(&d1, &conv).await.unwrap(),
        Some((s2, b"W2".to_vec()))
    );
    // Each commit's log row names the devices its Welcome welcomed (what
    // members check the commit against); other rows name none.
    let read = store.read(&conv, 0, 10, NOW).await.unwrap();
    let welcomed: Vec<(&[u8], Vec<&str>)> = read
        .iter()
        .map(|m| {
            let w = m.welcomed.iter().map(String::as_str).collect();
            (m.message_id.as_slice(), w)
        })
        .collect();
    assert_eq!(
        welcomed,
        vec![
            (&b"c0"[..], vec![d1.as_str(), d2.as_str()]),
            (&b"a1"[..], vec![]),
            (&b"c1"[..], vec![d1.as_str()]),
            (&b"c2"[..], vec![]),
        ]
    );
}

/// `reset_mls_group`: only of the current generation at its current epoch
/// (> 0); the next generation starts at epoch 0 with nothing reconciled,
/// and from then on every message, commit and reconciliation of the old
/// generation is refused. Of concurrent restarts exactly one wins.
pub async fn mls_restart_rules(store: Arc<dyn Store>) {
    let ids = Ids::new("mls-restart");
    let (a, b, conv) = (ids.id("a"), ids.id("b"), ids.id("conv"));
    let ghost = ids.id("ghost-conv");
    assert_err!(
        store.reset_mls_group(&ghost, 0, 1).await,
        StoreError::NoSuchConversation(ref id) if *id == ghost
    );
    group_with(&*store, &conv, &[&a]).await;
    new_account(&*store, &b).await;
    let m = |id: &str, check| with_mls(message(&conv, id, &a), check);
    // No group yet: nothing to restart.
    assert_err!(
        store.reset_mls_group(&conv, 0, 0).await,
        StoreError::WrongEpoch { current: 0 }
    );
    store.append(m("c0", commit(0, 0))).await.unwrap();
    store
        .put_members(&conv, vec![member(&b, Role::Member)])
        .await
        .unwrap();
    store.append(m("c1", commit(1, 1))).await.unwrap();
    store.append(m("a2", app(2))).await.unwrap();
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(2, 1, 1));
    assert_err!(
        store.reset_mls_group(&conv, 1, 2).await,
        StoreError::WrongGeneration { current: 0 }
    );
    assert_err!(
        store.reset_mls_group(&conv, 0, 1).await,
        StoreError::WrongEpoch { current: 2 }
    );
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(2, 1, 1));

    let restarted = store.reset_mls_group(&conv, 0, 2).await.unwrap();
    assert_eq!(restarted, state_in(1, 0, 1, 0));
    assert_eq!(store.mls_state(&conv).await.unwrap(), restarted);
    // The same request again (another member saw the same broken commit).
    assert_err!(
        store.reset_mls_group(&conv, 0, 2).await,
        StoreError::WrongGeneration { current: 1 }
    );
    assert_err!(
        store.reset_mls_group(&conv, 1, 0).await,
        StoreError::WrongEpoch { current: 0 }
    );
    // Nothing of the old generation passes any more, nor plain messages.
    assert_err!(
        store.append(m("old-app", app(2))).await,
        StoreError::WrongGeneration { current: 1 }
    );
    assert_err!(
        store.append(m("old-commit", commit(2, 1))).await,
        StoreError::WrongGeneration { current: 1 }
    );
    assert_err!(
        store.append(message(&conv, "plain", &a)).await,
        StoreError::MlsRequired
    );
    assert_err!(
        store.mark_reconciled(&conv, 0, 2, 1).await,
        StoreError::WrongGeneration { current: 1 }
    );
    // The new group must take in the roster before anyone talks.
    assert_err!(
        store.append(m("early", app_in(1, 0))).await,
        StoreError::MembershipPending { roster_version: 1 }
    );
    let head = store.head(&conv).await.unwrap();
    let d = ids.id("d");
    let first = MlsCheck::Commit {
        generation: 1,
        epoch: 0,
        roster_version: 1,
        welcome: Some(Welcome {
            bytes: b"welcome of generation 1".to_vec(),
            device_ids: vec![d.clone()],
        }),
    };
    let c = store.append(m("g1-c0", first)).await.unwrap();
    assert_eq!(c.seq, head + 1);
    assert_eq!(store.mls_state(&conv).await.unwrap(), state_in(1, 1, 1, 1));
    assert_eq!(
        store.welcome_for(&d, &conv).await.unwrap(),
        Some((c.seq, b"welcome of generation 1".to_vec()))
    );
    store.append(m("g1-a1", app_in(1, 1))).await.unwrap();

    // Concurrent restarts of one broken epoch: exactly one wins.
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (store, conv) = (Arc::clone(&store), conv.clone());
        tasks.spawn(async move { store.reset_mls_group(&conv, 1, 1).await });
    }
    let mut won = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(s) => {
                assert_eq!(s, state_in(2, 0, 1, 0));
                won += 1;
            }
            Err(StoreError::WrongGeneration { current: 2 }) => {}
            Err(other) => panic!("a losing restart failed with {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one restart of generation 1 wins");
    assert_eq!(store.mls_state(&conv).await.unwrap(), state_in(2, 0, 1, 0));
    assert_err!(
        store.append(m("g1-late", app_in(1, 1))).await,
        StoreError::WrongGeneration { current: 2 }
    );
    assert_eq!(store.head(&conv).await.unwrap(), head + 2);
}
