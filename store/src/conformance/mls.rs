//! Conformance cases: MLS: key packages, epochs and commits, roster versions, Welcomes.

use super::*;

// ---------------------------------------------------------------------------
// MLS

pub(super) fn with_mls(mut m: NewMessage, check: MlsCheck) -> NewMessage {
    m.mls = Some(check);
    m
}

pub(super) fn app(epoch: u64) -> MlsCheck {
    app_in(0, epoch)
}

pub(super) fn app_in(generation: u64, epoch: u64) -> MlsCheck {
    MlsCheck::Application { generation, epoch }
}

pub(super) fn commit(epoch: u64, roster_version: u64) -> MlsCheck {
    commit_in(0, epoch, roster_version)
}

pub(super) fn commit_in(generation: u64, epoch: u64, roster_version: u64) -> MlsCheck {
    MlsCheck::Commit {
        generation,
        epoch,
        roster_version,
        welcome: None,
    }
}

pub(super) fn commit_welcoming(
    epoch: u64,
    roster_version: u64,
    bytes: &[u8],
    devices: &[&str],
) -> MlsCheck {
    MlsCheck::Commit {
        generation: 0,
        epoch,
        roster_version,
        welcome: Some(Welcome {
            bytes: bytes.to_vec(),
            device_ids: devices.iter().map(|d| (*d).to_owned()).collect(),
        }),
    }
}

pub(super) fn state(epoch: u64, roster_version: u64, group_roster_version: u64) -> MlsState {
    state_in(0, epoch, roster_version, group_roster_version)
}

pub(super) fn state_in(
    generation: u64,
    epoch: u64,
    roster_version: u64,
    group_roster_version: u64,
) -> MlsState {
    MlsState {
        generation,
        epoch,
        roster_version,
        group_roster_version,
    }
}

pub(super) fn count(available: u32, last_resort: bool) -> KeyPackageCount {
    KeyPackageCount {
        available,
        last_resort,
    }
}

pub(super) fn packages(device: &str, range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range
        .map(|i| format!("key package {i} of {device}").into_bytes())
        .collect()
}

pub(super) async fn roster_version(store: &dyn Store, conv: &str) -> u64 {
    store.mls_state(conv).await.unwrap().roster_version
}

/// Makes a device ready: a last-resort package.
pub(super) async fn make_ready(store: &dyn Store, device: &str) {
    let lr = format!("last resort of {device}").into_bytes();
    store
        .upload_key_packages(device, Vec::new(), Some(lr), 100)
        .await
        .unwrap();
}

/// Uploads append one-time packages, a last-resort package replaces the
/// previous one, claims hand out each one-time package once and then the
/// last-resort package without consuming it.
pub async fn key_packages_upload_claim(store: Arc<dyn Store>) {
    let ids = Ids::new("kp-upload-claim");
    let (alice, d) = (ids.id("alice"), ids.id("d"));
    new_account(&*store, &alice).await;
    let ghost = ids.id("ghost");
    assert_err!(
        store
            .upload_key_packages(&ghost, packages(&ghost, 0..1), None, 10)
            .await,
        StoreError::NoSuchDevice(ref id) if *id == ghost
    );
    assert_eq!(
        store.key_package_count(&ghost).await.unwrap(),
        count(0, false)
    );
    assert_eq!(store.claim_key_package(&ghost).await.unwrap(), None);

    store.add_device(device(&d, &alice), 10).await.unwrap();
    assert_eq!(store.key_package_count(&d).await.unwrap(), count(0, false));
    assert_eq!(store.claim_key_package(&d).await.unwrap(), None);

    let one_time = packages(&d, 0..4);
    let up = store
        .upload_key_packages(&d, one_time[..3].to_vec(), None, 10)
        .await
        .unwrap();
    assert_eq!((up.count, up.became_ready), (count(3, false), false));
    let up = store
        .upload_key_packages(&d, one_time[3..].to_vec(), Some(b"lr1".to_vec()), 10)
        .await
        .unwrap();
    assert_eq!((up.count, up.became_ready), (count(4, true), true));
    let up = store
        .upload_key_packages(&d, Vec::new(), Some(b"lr2".to_vec()), 10)
        .await
        .unwrap();
    assert_eq!(
        (up.count, up.became_ready),
        (count(4, true), false),
        "replacing the last-resort package is not becoming ready"
    );
    assert_eq!(store.key_package_count(&d).await.unwrap(), count(4, true));

    let mut claimed = BTreeSet::new();
    for _ in 0..4 {
        let p = store.claim_key_package(&d).await.unwrap().unwrap();
        assert!(claimed.insert(p), "a one-time package handed out twice");
    }
    assert_eq!(claimed, one_time.into_iter().collect());
    assert_eq!(store.key_package_count(&d).await.unwrap(), count(0, true));
    for _ in 0..2 {
        assert_eq!(
            store.claim_key_package(&d).await.unwrap(),
            Some(b"lr2".to_vec()),
            "the last-resort package (the newest) is not consumed"
        );
    }
    assert_eq!(store.key_package_count(&d).await.unwrap(), count(0, true));

    let more = packages(&d, 10..11);
    let up = store
        .upload_key_packages(&d, more.clone(), None, 10)
        .await
        .unwrap();
    assert_eq!((up.count, up.became_ready), (count(1, true), false));
    assert_eq!(
        store.claim_key_package(&d).await.unwrap(),
        Some(more[0].clone())
    );
    assert_eq!(
        store.claim_key_package(&d).await.unwrap(),
        Some(b"lr2".to_vec())
    );
}

/// An upload that would exceed `max_available` stores nothing, not even its
/// last-resort package; reaching the limit exactly is fine; the last-resort
/// package does not count. A revoked device cannot upload.
pub async fn key_package_limit(store: Arc<dyn Store>) {
    let ids = Ids::new("kp-limit");
    let (alice, d) = (ids.id("alice"), ids.id("d"));
    new_account(&*store, &alice).await;
    store.add_device(device(&d, &alice), 10).await.unwrap();
    store
        .upload_key_packages(&d, packages(&d, 0..3), None, 4)
        .await
        .unwrap();
    assert_err!(
        store
            .upload_key_packages(&d, packages(&d, 3..5), Some(b"lr".to_vec()), 4)
            .await,
        StoreError::KeyPackageLimit { limit: 4 }
    );
    assert_eq!(store.key_package_count(&d).await.unwrap(), count(3, false));
    let up = store
        .upload_key_packages(&d, packages(&d, 3..4), None, 4)
        .await
        .unwrap();
    assert_eq!(up.count, count(4, false));
    let up = store
        .upload_key_packages(&d, Vec::new(), Some(b"lr".to_vec()), 4)
        .await
        .unwrap();
    assert_eq!((up.count, up.became_ready), (count(4, true), true));
    assert_err!(
        store
            .upload_key_packages(&d, packages(&d, 4..5), None, 4)
            .await,
        StoreError::KeyPackageLimit { limit: 4 }
    );
    store.revoke_device(&d).await.unwrap();
    assert_err!(
        store
            .upload_key_packages(&d, Vec::new(), Some(b"lr".to_vec()), 4)
            .await,
        StoreError::NoSuchDevice(ref id) if *id == d
    );
}

/// Concurrent claims hand out each one-time package exactly once, then the
/// last-resort package to the rest.
pub async fn key_package_claims_concurrent(store: Arc<dyn Store>) {
    const PACKAGES: u32 = 30;
    const CLAIMS: usize = 40;
    let ids = Ids::new("kp-claims-concurrent");
    let (alice, d) = (ids.id("alice"), ids.id("d"));
    new_account(&*store, &alice).await;
    store.add_device(device(&d, &alice), 10).await.unwrap();
    let one_time = packages(&d, 0..PACKAGES);
    store
        .upload_key_packages(&d, one_time.clone(), Some(b"lr".to_vec()), 100)
        .await
        .unwrap();
    let mut tasks = JoinSet::new();
    for _ in 0..CLAIMS {
        let (store, d) = (Arc::clone(&store), d.clone());
        tasks.spawn(async move { store.claim_key_package(&d).await });
    }
    let mut got = BTreeMap::<Vec<u8>, usize>::new();
    while let Some(joined) = tasks.join_next().await {
        let p = joined
            .unwrap()
            .unwrap()
            .expect("a package or the last resort");
        *got.entry(p).or_default() += 1;
    }
    assert_eq!(
        got.remove(b"lr".as_slice()),
        Some(CLAIMS - PACKAGES as usize)
    );
    assert_eq!(got.len(), PACKAGES as usize);
    assert!(got.values().all(|n| *n == 1), "handed out twice: {got:?}");
    assert_eq!(got.into_keys().collect::<Vec<_>>(), {
        let mut v = one_time;
        v.sort();
        v
    });
    assert_eq!(store.key_package_count(&d).await.unwrap(), count(0, true));
}

/// Revoking a device and deleting its account delete its key packages; a
/// device enrolled again under the same id starts with none.
pub async fn key_packages_purged_on_revoke_and_delete(store: Arc<dyn Store>) {
    let ids = Ids::new("kp-purged");
    let (alice, bob) = (ids.id("alice"), ids.id("bob"));
    let (a1, a2, b1) = (ids.id("a1"), ids.id("a2"), ids.id("b1"));
    new_account(&*store, &alice).await;
    new_account(&*store, &bob).await;
    for (d, acc) in [(&a1, &alice), (&a2, &alice), (&b1, &bob)] {
        store.add_device(device(d, acc), 10).await.unwrap();
        store
            .upload_key_packages(d, packages(d, 0..3), Some(b"lr".to_vec()), 10)
            .await
            .unwrap();
    }
    store.revoke_device(&a1).await.unwrap();
    assert_eq!(store.key_package_count(&a1).await.unwrap(), count(0, false));
    assert_eq!(store.claim_key_package(&a1).await.unwrap(), None);
    assert_eq!(store.key_package_count(&a2).await.unwrap(), count(3, true));

    store.delete_account(&alice).await.unwrap();
    assert_eq!(store.key_package_count(&a2).await.unwrap(), count(0, false));
    assert_eq!(store.claim_key_package(&a2).await.unwrap(), None);
    assert_eq!(store.key_package_count(&b1).await.unwrap(), count(3, true));

    new_account(&*store, &alice).await;
    store.add_device(device(&a2, &alice), 10).await.unwrap();
    assert_eq!(store.key_package_count(&a2).await.unwrap(), count(0, false));
    assert_eq!(store.claim_key_package(&a2).await.unwrap(), None);
}

/// A new conversation is at (0, 0, 0); each trigger bumps the roster
/// version of exactly the conversations it concerns.
pub async fn roster_bumps_from_each_trigger(store: Arc<dyn Store>) {
    let ids = Ids::new("roster-bumps");
    let (a, b, c) = (ids.id("a"), ids.id("b"), ids.id("c"));
    let (c1, c2, c3) = (ids.id("c1"), ids.id("c2"), ids.id("c3"));
    group_with(&*store, &c1, &[&a, &b]).await;
    store
        .create_conversation(
            conversation(&c2, ConversationKind::Group),
            vec![member(&a, Role::Owner)],
        )
        .await
        .unwrap();
    group_with(&*store, &c3, &[&c]).await;
    assert_eq!(store.mls_state(&c1).await.unwrap(), state(0, 0, 0));
    let ghost = ids.id("ghost-conv");
    assert_err!(
        store.mls_state(&ghost).await,
        StoreError::NoSuchConversation(ref id) if *id == ghost
    );

    store
        .put_members(&c1, vec![member(&c, Role::Member)])
        .await
        .unwrap();
    assert_eq!(roster_version(&*store, &c1).await, 1);
    store.put_members(&c1, Vec::new()).await.unwrap();
    assert_eq!(roster_version(&*store, &c1).await, 1);
    store.remove_members(&c1, vec![c.clone()]).await.unwrap();
    assert_eq!(roster_version(&*store, &c1).await, 2);
    store
        .remove_members(&c1, vec![ids.id("nobody")])
        .await
        .unwrap();
    assert_eq!(roster_version(&*store, &c1).await, 3);
    assert_eq!(roster_version(&*store, &c3).await, 0);

    let a1 = ids.id("a1");
    store.add_device(device(&a1, &a), 10).await.unwrap();
    store
        .upload_key_packages(&a1, packages(&a1, 0..2), None, 10)
        .await
        .unwrap();
    assert_eq!(roster_version(&*store, &c1).await, 3, "not ready yet");
    let up = store
        .upload_key_packages(&a1, Vec::new(), Some(b"lr".to_vec()), 10)
        .await
        .unwrap();
    assert!(up.became_ready);
    assert_eq!(roster_version(&*store, &c1).await, 4);
    assert_eq!(roster_version(&*store, &c2).await, 1);
    assert_eq!(roster_version(&*store, &c3).await, 0);
    store
        .upload_key_packages(&a1, packages(&a1, 2..3), Some(b"lr2".to_vec()), 10)
        .await
        .unwrap();
    assert_eq!(roster_version(&*store, &c1).await, 4, "ready already");

    store.revoke_device(&a1).await.unwrap();
    assert_eq!(roster_version(&*store, &c1).await, 5);
    assert_eq!(roster_version(&*store, &c2).await, 2);

    store.delete_account(&b).await.unwrap();
    assert_eq!(roster_version(&*store, &c1).await, 6);
    assert_eq!(roster_version(&*store, &c2).await, 2);
    assert_eq!(roster_version(&*store, &c3).await, 0);
    assert_eq!(store.mls_state(&c1).await.unwrap(), state(0, 6, 0));
}

/// Concurrent bumps from every trigger all count.
pub async fn roster_bumps_concurrent(store: Arc<dyn Store>) {
    const N: usize = 10;
    let ids = Ids::new("roster-concurrent");
    let conv = ids.id("conv");
    let members: Vec<String> = (0..N).map(|i| ids.id(&format!("m{i}"))).collect();
    let newcomers: Vec<String> = (0..N).map(|i| ids.id(&format!("n{i}"))).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    group_with(&*store, &conv, &refs).await;
    for (i, m) in members.iter().enumerate() {
        store
            .add_device(device(&format!("{m}-d{i}"), m), 10)
            .await
            .unwrap();
    }
    for n in &newcomers {
        new_account(&*store, n).await;
    }
    let mut tasks: JoinSet<Result<(), StoreError>> = JoinSet::new();
    for i in 0..N {
        let (store, conv) = (Arc::clone(&store), conv.clone());
        let newcomer = newcomers[i].clone();
        let d = format!("{}-d{i}", members[i]);
        let ghost = ids.id(&format!("ghost{i}"));
        let s2 = Arc::clone(&store);
        let c2 = conv.clone();
        tasks.spawn(async move {
            store
                .put_members(&conv, vec![member(&newcomer, Role::Member)])
                .await
        });
        let s3 = Arc::clone(&s2);
        tasks.spawn(async move {
            s2.upload_key_packages(&d, Vec::new(), Some(b"lr".to_vec()), 10)
                .await
                .map(|up| assert!(up.became_ready))
        });
        tasks.spawn(async move { s3.remove_members(&c2, vec![ghost]).await.map(|_| ()) });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    assert_eq!(roster_version(&*store, &conv).await, 3 * N as u64);
}

/// The roster: the ready, non-revoked devices of the member accounts.
pub async fn mls_roster_content(store: Arc<dyn Store>) {
    let ids = Ids::new("mls-roster");
    let (a, b, c) = (ids.id("a"), ids.id("b"), ids.id("c"));
    let conv = ids.id("conv");
    group_with(&*store, &conv, &[&a, &b]).await;
    new_account(&*store, &c).await;
    let (a1, a2, a3, b1, c1) = (
        ids.id("a1"),
        ids.id("a2"),
        ids.id("a3"),
        ids.id("b1"),
        ids.id("c1"),
    );
    for (d, acc) in [(&a1, &a), (&a2, &a), (&a3, &a), (&b1, &b), (&c1, &c)] {
        store.add_device(device(d, acc), 10).await.unwrap();
    }
    assert!(store.mls_roster(&conv).await.unwrap().is_empty());
    for d in [&a1, &a3, &b1, &c1] {
        make_ready(&*store, d).await;
    }
    store
        .upload_key_packages(&a2, packages(&a2, 0..5), None, 10)
        .await
        .unwrap();
    store.revoke_device(&a3).await.unwrap();
    let mut want = vec![a1.clone(), b1.clone()];
    want.sort();
    assert_eq!(store.mls_roster(&conv).await.unwrap(), want);
    store.remove_members(&conv, vec![b.clone()]).await.unwrap();
    assert_eq!(store.mls_roster(&conv).await.unwrap(), vec![a1.clone()]);
    store
        .put_members(&conv, vec![member(&c, Role::Member)])
        .await
        .unwrap();
    let mut want = vec![a1, c1];
    want.sort();
    assert_eq!(store.mls_roster(&conv).await.unwrap(), want);
    assert!(
        store
            .mls_roster(&ids.id("ghost-conv"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The conditions of `append`: opaque messages only before the first
/// commit, one commit per epoch reflecting a roster version not in the
/// future, application messages only of the current epoch and while the
/// group reflects the roster. Refused messages leave nothing behind.
pub async fn mls_append_rules(store: Arc<dyn Store>) {
    let ids = Ids::new("mls-append");
    let (a, b, conv) = (ids.id("a"), ids.id("b"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    new_account(&*store, &b).await;
    let send = |id: &str, check: Option<MlsCheck>| {
        let mut m = message(&conv, id, &a);
        m.mls = check;
        let store = Arc::clone(&store);
        async move { store.append(m).await }
    };
    assert_eq!(send("opaque", None).await.unwrap().seq, 1);
    assert_err!(
        send("x1", Some(app(1))).await,
        StoreError::WrongEpoch { current: 0 }
    );
    assert_err!(
        send("x2", Some(commit(0, 1))).await,
        StoreError::InvalidRosterVersion { current: 0 }
    );
    let c0 = send("c0", Some(commit(0, 0))).await.unwrap();
    assert_eq!((c0.seq, c0.duplicate), (2, false));
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(1, 0, 0));
    assert_err!(send("x3", None).await, StoreError::MlsRequired);
    assert_err!(
        send("x4", Some(app(0))).await,
        StoreError::WrongEpoch { current: 1 }
    );
    assert_eq!(send("a1", Some(app(1))).await.unwrap().seq, 3);
    assert_err!(
        send("x5", Some(commit(0, 0))).await,
        StoreError::WrongEpoch { current: 1 }
    );

    store
        .put_members(&conv, vec![member(&b, Role::Member)])
        .await
        .unwrap();
    assert_err!(
        send("x6", Some(app(1))).await,
        StoreError::MembershipPending { roster_version: 1 }
    );
    assert_err!(
        send("x7", Some(commit(1, 2))).await,
        StoreError::InvalidRosterVersion { current: 1 }
    );
    assert_err!(
        send("x8", Some(commit(2, 1))).await,
        StoreError::WrongEpoch { current: 1 }
    );
    assert_eq!(send("c1", Some(commit(1, 1))).await.unwrap().seq, 4);
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(2, 1, 1));
    assert_eq!(send("a2", Some(app(2))).await.unwrap().seq, 5);
    assert_eq!(store.head(&conv).await.unwrap(), 5);
    let read = store.read(&conv, 0, 100, NOW).await.unwrap();
    assert_eq!(ids_of(&read), vec!["opaque", "c0", "a1", "c1", "a2"]);

    // A refused id comes again, re-encrypted: it is new, with the new bytes.
    assert_err!(
        send("late", Some(app(1))).await,
        StoreError::WrongEpoch { current: 2 }
    );
    let mut again = with_mls(message(&conv, "late", &a), app(2));
    again.ciphertext = b"re-encrypted".to_vec();
    let late = store.append(again).await.unwrap();
    assert_eq!((late.seq, late.duplicate), (6, false));
    let read = store.read(&conv, 5, 10, NOW).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].ciphertext, b"re-encrypted");
}

/// Idempotency first: resending an accepted message returns the duplicate
/// result, whatever its MLS condition says now; a resent commit advances
/// nothing and does not replace its Welcome.
pub async fn mls_duplicates_skip_checks(store: Arc<dyn Store>) {
    let ids = Ids::new("mls-dup");
    let (a, b, conv) = (ids.id("a"), ids.id("b"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    new_account(&*store, &b).await;
    let d = ids.id("d");
    let opaque = store.append(message(&conv, "opaque", &a)).await.unwrap();
    let c0 = with_mls(
        message(&conv, "c0", &a),
        commit_welcoming(0, 0, b"welcome", &[&d]),
    );
    let first = store.append(c0.clone()).await.unwrap();
    assert!(!first.duplicate);
    let again = store.append(c0).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    let other_welcome = with_mls(
        message(&conv, "c0", &a),
        commit_welcoming(0, 0, b"another welcome", &[&d]),
    );
    assert!(store.append(other_welcome).await.unwrap().duplicate);
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(1, 0, 0));
    assert_eq!(
        store.welcome_for(&d, &conv).await.unwrap(),
        Some((first.seq, b"welcome".to_vec()))
    );

    let a1 = with_mls(message(&conv, "a1", &a), app(1));
    let a1_first = store.append(a1.clone()).await.unwrap();
    store
        .put_members(&conv, vec![member(&b, Role::Member)])
        .await
        .unwrap();
    store
        .append(with_mls(message(&conv, "c1", &a), commit(1, 1)))
        .await
        .unwrap();
    let a1_again = store.append(a1).await.unwrap();
    assert_eq!((a1_again.seq, a1_again.duplicate), (a1_first.seq, true));
    let opaque_again = store.append(message(&conv, "opaque", &a)).await.unwrap();
    assert_eq!(
        (opaque_again.seq, opaque_again.duplicate),
        (opaque.seq, true)
    );
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(2, 1, 1));
    assert_eq!(store.head(&conv).await.unwrap(), 4);
}

/// Concurrent commits on one epoch: exactly one wins, the others get
/// `WrongEpoch` with the new epoch and leave no Welcome. Application
/// messages of the old epoch racing a commit are all ordered before it.
pub async fn mls_commits_concurrent(store: Arc<dyn Store>) {
    const N: usize = 12;
    let ids = Ids::new("mls-commits-concurrent");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    let mut tasks = JoinSet::new();
    for i in 0..N {
        let store = Arc::clone(&store);
        let welcomed = ids.id(&format!("w{i}"));
        let m = with_mls(
            message(&conv, &format!("c{i}"), &a),
            commit_welcoming(0, 0, welcomed.as_bytes(), &[&welcomed]),
        );
        tasks.spawn(async move { (welcomed, store.append(m).await) });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (welcomed, result) = joined.unwrap();
        match result {
            Ok(appended) => {
                assert!(!appended.duplicate);
                winners.push((welcomed, appended.seq));
            }
            Err(StoreError::WrongEpoch { current: 1 }) => {
                assert_eq!(store.welcome_for(&welcomed, &conv).await.unwrap(), None);
            }
            Err(other) => panic!("a losing commit failed with {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one commit of epoch 0 wins");
    let (welcomed, seq) = winners.pop().unwrap();
    assert_eq!(seq, 1);
    assert_eq!(
        store.welcome_for(&welcomed, &conv).await.unwrap(),
        Some((1, welcomed.into_bytes()))
    );
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(1, 0, 0));
    assert_eq!(store.head(&conv).await.unwrap(), 1);

    // Epoch 1: commits and application messages of epoch 1 at once.
    let mut tasks = JoinSet::new();
    for i in 0..N {
        let store = Arc::clone(&store);
        let check = if i % 2 == 0 { commit(1, 0) } else { app(1) };
        let is_commit = i % 2 == 0;
        let m = with_mls(message(&conv, &format!("e1-{i}"), &a), check);
        tasks.spawn(async move { (is_commit, store.append(m).await) });
    }
    let (mut commit_seqs, mut app_seqs) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (true, Ok(x)) => commit_seqs.push(x.seq),
            (false, Ok(x)) => app_seqs.push(x.seq),
            (_, Err(StoreError::WrongEpoch { current: 2 })) => {}
            (_, Err(other)) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(commit_seqs.len(), 1, "exactly one commit of epoch 1 wins");
    assert!(
        app_seqs.iter().all(|s| *s < commit_seqs[0]),
        "an epoch-1 message was accepted after the commit to epoch 2: {app_seqs:?} vs {commit_seqs:?}"
    );
    let accepted = 1 + commit_seqs.len() + app_seqs.len();
    assert_eq!(store.head(&conv).await.unwrap(), accepted as u64);
    assert_eq!(store.mls_state(&conv).await.unwrap().epoch, 2);
}
