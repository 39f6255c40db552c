//! Conformance cases: Message logs: appends, reads, expiry.

use super::*;

// ---------------------------------------------------------------------------
// logs

/// Appends get 1, 2, 3 and read back with every field.
pub async fn append_sequential(store: Arc<dyn Store>) {
    let ids = Ids::new("append-seq");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    assert_eq!(store.head(&conv).await.unwrap(), 0);
    let mut sent = Vec::new();
    let mut expected = Vec::new();
    for (i, name) in ["one", "two", "three"].into_iter().enumerate() {
        let mut m = message(&conv, name, &a);
        m.server_time_ms = NOW + i as i64;
        m.ciphertext = vec![i as u8; 100 * (i + 1)];
        if i == 1 {
            m.expires_at_ms = Some(NOW + 3_600_000);
        }
        let appended = store.append(m.clone()).await.unwrap();
        assert_eq!(appended.seq, i as u64 + 1);
        assert_eq!(appended.server_time_ms, m.server_time_ms);
        assert!(!appended.duplicate);
        expected.push(m.clone().stored(&appended));
        sent.push(m);
    }
    assert_eq!(store.head(&conv).await.unwrap(), 3);
    let read = store.read(&conv, 0, 100, NOW).await.unwrap();
    assert_eq!(read.len(), 3);
    for (i, (got, m)) in read.iter().zip(&sent).enumerate() {
        assert_eq!(got.conversation_id, conv);
        assert_eq!(got.seq, i as u64 + 1);
        assert_eq!(got.message_id, m.message_id);
        assert_eq!(got.sender_account_id, m.sender_account_id);
        assert_eq!(got.sender_device_id, m.sender_device_id);
        assert_eq!(got.server_time_ms, m.server_time_ms);
        assert_eq!(got.expires_at_ms, m.expires_at_ms);
        assert_eq!(got.ciphertext, m.ciphertext);
    }
    // What a relay fans out right after the append is what a read gives.
    assert_eq!(read, expected);
}

/// A repeated message id returns the first acceptance and writes nothing.
pub async fn append_idempotent(store: Arc<dyn Store>) {
    let ids = Ids::new("append-idem");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    let first = store.append(message(&conv, "m1", &a)).await.unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    let mut again = message(&conv, "m1", &a);
    again.server_time_ms = NOW + 999;
    again.ciphertext = b"different".to_vec();
    let repeat = store.append(again).await.unwrap();
    assert_eq!(repeat.seq, 1);
    assert_eq!(repeat.server_time_ms, first.server_time_ms);
    assert!(repeat.duplicate);
    assert_eq!(store.head(&conv).await.unwrap(), 1);
    let read = store.read(&conv, 0, 10, NOW).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].ciphertext, b"ciphertext of m1");
    let next = store.append(message(&conv, "m2", &a)).await.unwrap();
    assert_eq!((next.seq, next.duplicate), (2, false));
    let repeat = store.append(message(&conv, "m1", &a)).await.unwrap();
    assert_eq!((repeat.seq, repeat.duplicate), (1, true));
}

/// Message ids are per conversation.
pub async fn append_message_id_per_conversation(store: Arc<dyn Store>) {
    let ids = Ids::new("append-per-conv");
    let (a, c1, c2) = (ids.id("a"), ids.id("c1"), ids.id("c2"));
    group_with(&*store, &c1, &[&a]).await;
    store
        .create_conversation(
            conversation(&c2, ConversationKind::Group),
            vec![member(&a, Role::Member)],
        )
        .await
        .unwrap();
    store.append(message(&c1, "x", &a)).await.unwrap();
    let in_c1 = store.append(message(&c1, "same", &a)).await.unwrap();
    let in_c2 = store.append(message(&c2, "same", &a)).await.unwrap();
    assert_eq!((in_c1.seq, in_c1.duplicate), (2, false));
    assert_eq!((in_c2.seq, in_c2.duplicate), (1, false));
    assert_eq!(
        ids_of(&store.read(&c2, 0, 10, NOW).await.unwrap()),
        ["same"]
    );
}

/// Appending to an unknown conversation fails and creates nothing.
pub async fn append_unknown_conversation(store: Arc<dyn Store>) {
    let ids = Ids::new("append-unknown");
    let conv = ids.id("none");
    assert_err!(
        store.append(message(&conv, "m", "someone")).await,
        StoreError::NoSuchConversation(ref id) if *id == conv
    );
    assert_eq!(store.head(&conv).await.unwrap(), 0);
    assert!(store.read(&conv, 0, 10, NOW).await.unwrap().is_empty());
}

/// 200 concurrent appends get the seqs 1..=200, each once, and read back in
/// that order with the message each was given.
pub async fn append_concurrent(store: Arc<dyn Store>) {
    const N: u64 = 200;
    let ids = Ids::new("append-concurrent");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    let mut tasks = JoinSet::new();
    for i in 0..N {
        let store = Arc::clone(&store);
        let m = message(&conv, &format!("m{i}"), &a);
        tasks.spawn(async move { (format!("m{i}"), store.append(m).await) });
    }
    let mut by_seq = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined.unwrap();
        let appended = result.unwrap();
        assert!(!appended.duplicate);
        assert!(
            by_seq.insert(appended.seq, id).is_none(),
            "seq {} given twice",
            appended.seq
        );
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=N).collect::<Vec<_>>()
    );
    assert_eq!(store.head(&conv).await.unwrap(), N);
    let read = store.read(&conv, 0, 1000, NOW).await.unwrap();
    assert_eq!(seqs_of(&read), (1..=N).collect::<Vec<_>>());
    assert_eq!(ids_of(&read), by_seq.into_values().collect::<Vec<_>>());
}

/// Concurrent appends of one message id: one is accepted, the others are
/// duplicates of it.
pub async fn append_concurrent_duplicates(store: Arc<dyn Store>) {
    let ids = Ids::new("append-concurrent-dup");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let store = Arc::clone(&store);
        let name = if i % 2 == 0 { "same" } else { "other" };
        let mut m = message(&conv, name, &a);
        m.server_time_ms = NOW + i;
        tasks.spawn(async move { (name, store.append(m).await) });
    }
    let mut fresh: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    let mut dups: Vec<(&str, u64, i64)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined.unwrap();
        let appended = result.unwrap();
        if appended.duplicate {
            dups.push((name, appended.seq, appended.server_time_ms));
        } else {
            let before = fresh.insert(name, (appended.seq, appended.server_time_ms));
            assert!(before.is_none(), "{name} accepted twice");
        }
    }
    assert_eq!(fresh.len(), 2);
    assert_eq!(dups.len(), 38);
    for (name, seq, time) in dups {
        assert_eq!((seq, time), fresh[name]);
    }
    let seqs: BTreeSet<u64> = fresh.values().map(|v| v.0).collect();
    assert_eq!(seqs, BTreeSet::from([1, 2]));
    assert_eq!(store.head(&conv).await.unwrap(), 2);
    assert_eq!(store.read(&conv, 0, 10, NOW).await.unwrap().len(), 2);
}

/// Concurrent writes where some fail: each failure is its own, the others
/// all take effect.
pub async fn concurrent_failures_are_isolated(store: Arc<dyn Store>) {
    let ids = Ids::new("isolated");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    let mut tasks: JoinSet<Result<Option<u64>, StoreError>> = JoinSet::new();
    for i in 0..30 {
        let store = Arc::clone(&store);
        let (conv, a, ghost_conv) = (conv.clone(), a.clone(), ids.id("ghost-conv"));
        let ghost = ids.id(&format!("ghost{i}"));
        let taken = a.clone();
        tasks.spawn(async move {
            match i % 3 {
                0 => store
                    .append(message(&conv, &format!("m{i}"), &a))
                    .await
                    .map(|x| Some(x.seq)),
                1 => {
                    assert_err!(
                        store.append(message(&ghost_conv, "m", &a)).await,
                        StoreError::NoSuchConversation(_)
                    );
                    assert_err!(
                        store.add_device(device(&ghost, &ghost), 5).await,
                        StoreError::NoSuchAccount(_)
                    );
                    Ok(None)
                }
                _ => {
                    assert_err!(
                        store.create_account(account(&taken)).await,
                        StoreError::AccountExists(_)
                    );
                    Ok(None)
                }
            }
        });
    }
    let mut seqs = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        if let Some(seq) = joined.unwrap().unwrap() {
            assert!(seqs.insert(seq));
        }
    }
    assert_eq!(seqs, (1..=10).collect());
    assert_eq!(store.head(&conv).await.unwrap(), 10);
}

/// Paging with `after_seq` and `limit`.
pub async fn read_paging(store: Arc<dyn Store>) {
    let ids = Ids::new("read-paging");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    for i in 1..=10 {
        store
            .append(message(&conv, &format!("m{i}"), &a))
            .await
            .unwrap();
    }
    let page = store.read(&conv, 3, 4, NOW).await.unwrap();
    assert_eq!(seqs_of(&page), [4, 5, 6, 7]);
    assert_eq!(ids_of(&page), ["m4", "m5", "m6", "m7"]);
    assert_eq!(
        seqs_of(&store.read(&conv, 7, 4, NOW).await.unwrap()),
        [8, 9, 10]
    );
    assert!(store.read(&conv, 10, 4, NOW).await.unwrap().is_empty());
    assert!(store.read(&conv, 0, 0, NOW).await.unwrap().is_empty());
    assert!(
        store
            .read(&conv, u64::MAX, 4, NOW)
            .await
            .unwrap()
            .is_empty()
    );
    // Paging through gives every message once.
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page = store.read(&conv, after, 3, NOW).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(seqs_of(&page));
    }
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
}

/// Reads leave out messages expired at `now` (expiry <= now), and fill
/// the page with live ones.
pub async fn read_hides_expired(store: Arc<dyn Store>) {
    let ids = Ids::new("read-expired");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    let expiries = [
        None,
        Some(NOW + 10),
        None,
        Some(NOW + 20),
        Some(NOW + 10),
        None,
    ];
    for (i, expires_at_ms) in expiries.into_iter().enumerate() {
        let mut m = message(&conv, &format!("m{}", i + 1), &a);
        m.expires_at_ms = expires_at_ms;
        store.append(m).await.unwrap();
    }
    let at = |now| {
        let store = Arc::clone(&store);
        let conv = conv.clone();
        async move { seqs_of(&store.read(&conv, 0, 100, now).await.unwrap()) }
    };
    assert_eq!(at(NOW).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(at(NOW + 9).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(at(NOW + 10).await, [1, 3, 4, 6]);
    assert_eq!(at(NOW + 19).await, [1, 3, 4, 6]);
    assert_eq!(at(NOW + 20).await, [1, 3, 6]);
    assert_eq!(at(UnixMillis::MAX).await, [1, 3, 6]);
    // Expired messages do not use up the limit.
    let page = store.read(&conv, 0, 2, NOW + 20).await.unwrap();
    assert_eq!(seqs_of(&page), [1, 3]);
    let page = store.read(&conv, 3, 1, NOW + 20).await.unwrap();
    assert_eq!(seqs_of(&page), [6]);
    // Hidden, not gone: the head is unchanged.
    assert_eq!(store.head(&conv).await.unwrap(), 6);
}

/// `purge_expired` deletes expired messages for good; the head stays and
/// seqs are not reused.
pub async fn purge_expired_removes_rows(store: Arc<dyn Store>) {
    // Times long before NOW: no other case's message expires this early, so
    // this global purge cannot disturb a case running beside it.
    const T: UnixMillis = 1_000_000;
    let ids = Ids::new("purge");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    let expiries = [Some(T), Some(T + 5), None, Some(T + 100), Some(T - 1)];
    for (i, expires_at_ms) in expiries.into_iter().enumerate() {
        let mut m = message(&conv, &format!("m{}", i + 1), &a);
        m.expires_at_ms = expires_at_ms;
        m.server_time_ms = T - 10;
        store.append(m).await.unwrap();
    }
    // Everything still stored: a read at an early time shows all.
    assert_eq!(
        seqs_of(&store.read(&conv, 0, 10, T - 100).await.unwrap()),
        [1, 2, 3, 4, 5]
    );
    let purged = store.purge_expired(T + 5).await.unwrap();
    assert!(purged >= 3, "purged {purged}, want at least this case's 3");
    // Gone even for a reader whose clock is early.
    assert_eq!(
        seqs_of(&store.read(&conv, 0, 10, T - 100).await.unwrap()),
        [3, 4]
    );
    assert_eq!(store.head(&conv).await.unwrap(), 5);
    store.purge_expired(T + 100).await.unwrap();
    assert_eq!(
        seqs_of(&store.read(&conv, 0, 10, T - 100).await.unwrap()),
        [3]
    );
    assert_eq!(store.head(&conv).await.unwrap(), 5);
    // Seqs are not given out again.
    let next = store.append(message(&conv, "m6", &a)).await.unwrap();
    assert_eq!((next.seq, next.duplicate), (6, false));
    // Nothing left to purge here.
    store.purge_expired(T + 100).await.unwrap();
    assert_eq!(
        seqs_of(&store.read(&conv, 0, 10, T - 100).await.unwrap()),
        [3, 6]
    );
}

/// Unknown conversations read as empty, with head 0 and no members.
pub async fn read_unknown_conversation(store: Arc<dyn Store>) {
    let ids = Ids::new("read-unknown");
    let conv = ids.id("none");
    assert!(store.read(&conv, 0, 10, NOW).await.unwrap().is_empty());
    assert_eq!(store.head(&conv).await.unwrap(), 0);
    assert!(store.members(&conv).await.unwrap().is_empty());
    assert_eq!(store.get_conversation(&conv).await.unwrap(), None);
}
