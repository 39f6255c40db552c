//! Conformance cases: Accounts, devices, conversations and their members.

use super::*;

// ---------------------------------------------------------------------------
// accounts

/// An account reads back as created; an unknown one is `None`.
pub async fn account_create_get(store: Arc<dyn Store>) {
    let ids = Ids::new("account-create-get");
    let alice = Account {
        id: ids.id("alice"),
        display_name: "Alice Ünïcødé 🐦".into(),
        created_at_ms: NOW - 5,
    };
    let bare = Account {
        id: ids.id("bare"),
        display_name: String::new(),
        created_at_ms: 0,
    };
    store.create_account(alice.clone()).await.unwrap();
    store.create_account(bare.clone()).await.unwrap();
    assert_eq!(store.get_account(&alice.id).await.unwrap(), Some(alice));
    assert_eq!(store.get_account(&bare.id).await.unwrap(), Some(bare));
    assert_eq!(store.get_account(&ids.id("nobody")).await.unwrap(), None);
}

/// A taken account id is refused, and the first account is unchanged.
pub async fn account_duplicate(store: Arc<dyn Store>) {
    let ids = Ids::new("account-duplicate");
    let first = account(&ids.id("alice"));
    store.create_account(first.clone()).await.unwrap();
    let second = Account {
        display_name: "impostor".into(),
        ..first.clone()
    };
    assert_err!(
        store.create_account(second).await,
        StoreError::AccountExists(ref id) if *id == first.id
    );
    assert_eq!(store.get_account(&first.id).await.unwrap(), Some(first));
}

/// Deleting an account purges its devices, their cursors and its
/// memberships; its messages stay readable by the others; the id is free
/// again afterwards.
pub async fn account_delete_purges(store: Arc<dyn Store>) {
    let ids = Ids::new("account-delete");
    let (alice, bob) = (ids.id("alice"), ids.id("bob"));
    let (c1, c2) = (ids.id("c1"), ids.id("c2"));
    group_with(&*store, &c1, &[&alice, &bob]).await;
    store
        .create_conversation(
            conversation(&c2, ConversationKind::Direct),
            vec![member(&alice, Role::Owner), member(&bob, Role::Member)],
        )
        .await
        .unwrap();
    let (a1, a2, b1) = (ids.id("a1"), ids.id("a2"), ids.id("b1"));
    for d in [&a1, &a2] {
        store.add_device(device(d, &alice), 10).await.unwrap();
    }
    store.add_device(device(&b1, &bob), 10).await.unwrap();
    store
        .append(message(&c1, "from-alice", &alice))
        .await
        .unwrap();
    store.append(message(&c1, "from-bob", &bob)).await.unwrap();
    store
        .advance_cursors(&a1, vec![(c1.clone(), 2), (c2.clone(), 0)])
        .await
        .unwrap();
    store
        .advance_cursors(&a2, vec![(c1.clone(), 1)])
        .await
        .unwrap();
    store
        .advance_cursors(&b1, vec![(c1.clone(), 2)])
        .await
        .unwrap();

    let purge = store.delete_account(&alice).await.unwrap();
    assert_eq!(
        purge,
        AccountPurge {
            devices: 2,
            memberships: 2,
            cursors: 3,
        }
    );
    assert_eq!(store.get_account(&alice).await.unwrap(), None);
    assert_eq!(store.get_device(&a1).await.unwrap(), None);
    assert_eq!(store.get_device(&a2).await.unwrap(), None);
    assert!(store.list_devices(&alice).await.unwrap().is_empty());
    assert!(store.cursors(&a1).await.unwrap().is_empty());
    assert!(store.cursors(&a2).await.unwrap().is_empty());
    assert!(store.conversations_of(&alice).await.unwrap().is_empty());
    assert_eq!(
        store.members(&c1).await.unwrap(),
        vec![member(&bob, Role::Member)]
    );
    assert_eq!(
        store.members(&c2).await.unwrap(),
        vec![member(&bob, Role::Member)]
    );
    // Bob is untouched, and still reads Alice's message.
    assert!(store.get_device(&b1).await.unwrap().is_some());
    assert_eq!(store.cursors(&b1).await.unwrap(), vec![(c1.clone(), 2)]);
    let mut convs = vec![c1.clone(), c2.clone()];
    convs.sort();
    assert_eq!(store.conversations_of(&bob).await.unwrap(), convs);
    let read = store.read(&c1, 0, 10, NOW).await.unwrap();
    assert_eq!(ids_of(&read), ["from-alice", "from-bob"]);
    assert_eq!(read[0].sender_account_id, alice);

    assert_err!(
        store.delete_account(&alice).await,
        StoreError::NoSuchAccount(ref id) if *id == alice
    );
    // The id can be taken again, and starts with nothing.
    new_account(&*store, &alice).await;
    assert!(store.list_devices(&alice).await.unwrap().is_empty());
    assert!(store.conversations_of(&alice).await.unwrap().is_empty());
}

/// Deleting an unknown account fails.
pub async fn account_delete_unknown(store: Arc<dyn Store>) {
    let ids = Ids::new("account-delete-unknown");
    let nobody = ids.id("nobody");
    assert_err!(
        store.delete_account(&nobody).await,
        StoreError::NoSuchAccount(ref id) if *id == nobody
    );
}

/// Concurrent creations of one account id: exactly one wins.
pub async fn account_create_race(store: Arc<dyn Store>) {
    let ids = Ids::new("account-race");
    let id = ids.id("contested");
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let store = Arc::clone(&store);
        let acc = Account {
            display_name: format!("attempt {i}"),
            ..account(&id)
        };
        tasks.spawn(async move { store.create_account(acc).await });
    }
    let mut won = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::AccountExists(ref got)) if *got == id => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert!(store.get_account(&id).await.unwrap().is_some());
}

// ---------------------------------------------------------------------------
// devices

/// Devices read back as added and list by id; unknown ones are absent.
pub async fn device_add_get_list(store: Arc<dyn Store>) {
    let ids = Ids::new("device-add");
    let alice = ids.id("alice");
    new_account(&*store, &alice).await;
    let d_b = Device {
        public_key: (0..32).collect(),
        created_at_ms: NOW - 1,
        ..device(&ids.id("b"), &alice)
    };
    let d_a = device(&ids.id("a"), &alice);
    let d_c = device(&ids.id("c"), &alice);
    for d in [&d_b, &d_c, &d_a] {
        store.add_device(d.clone(), 5).await.unwrap();
    }
    assert_eq!(store.get_device(&d_b.id).await.unwrap(), Some(d_b.clone()));
    assert_eq!(
        store.list_devices(&alice).await.unwrap(),
        vec![d_a, d_b, d_c]
    );
    assert_eq!(store.get_device(&ids.id("none")).await.unwrap(), None);
    assert!(
        store
            .list_devices(&ids.id("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A taken device id is refused, also for another account.
pub async fn device_duplicate(store: Arc<dyn Store>) {
    let ids = Ids::new("device-duplicate");
    let (alice, bob) = (ids.id("alice"), ids.id("bob"));
    new_account(&*store, &alice).await;
    new_account(&*store, &bob).await;
    let d = device(&ids.id("d"), &alice);
    store.add_device(d.clone(), 5).await.unwrap();
    assert_err!(
        store.add_device(d.clone(), 5).await,
        StoreError::DeviceExists(ref id) if *id == d.id
    );
    assert_err!(
        store.add_device(device(&d.id, &bob), 5).await,
        StoreError::DeviceExists(ref id) if *id == d.id
    );
    assert_eq!(store.get_device(&d.id).await.unwrap(), Some(d));
    assert!(store.list_devices(&bob).await.unwrap().is_empty());
}

/// A device of an unknown account is refused.
pub async fn device_unknown_account(store: Arc<dyn Store>) {
    let ids = Ids::new("device-unknown-account");
    let nobody = ids.id("nobody");
    let d = device(&ids.id("d"), &nobody);
    assert_err!(
        store.add_device(d.clone(), 5).await,
        StoreError::NoSuchAccount(ref id) if *id == nobody
    );
    assert_eq!(store.get_device(&d.id).await.unwrap(), None);
}

/// The device limit holds, revoked devices count, and a higher limit admits
/// more.
pub async fn device_limit(store: Arc<dyn Store>) {
    let ids = Ids::new("device-limit");
    let alice = ids.id("alice");
    new_account(&*store, &alice).await;
    store
        .add_device(device(&ids.id("d1"), &alice), 2)
        .await
        .unwrap();
    store
        .add_device(device(&ids.id("d2"), &alice), 2)
        .await
        .unwrap();
    assert_err!(
        store.add_device(device(&ids.id("d3"), &alice), 2).await,
        StoreError::DeviceLimit { ref account, limit: 2 } if *account == alice
    );
    store.revoke_device(&ids.id("d1")).await.unwrap();
    assert_err!(
        store.add_device(device(&ids.id("d3"), &alice), 2).await,
        StoreError::DeviceLimit { limit: 2, .. }
    );
    assert_eq!(store.get_device(&ids.id("d3")).await.unwrap(), None);
    store
        .add_device(device(&ids.id("d3"), &alice), 3)
        .await
        .unwrap();
    assert_eq!(store.list_devices(&alice).await.unwrap().len(), 3);
    assert_err!(
        store.add_device(device(&ids.id("d4"), &alice), 0).await,
        StoreError::DeviceLimit { limit: 0, .. }
    );
}

/// Concurrent enrolments against a limit: exactly `limit` succeed.
pub async fn device_limit_race(store: Arc<dyn Store>) {
    let ids = Ids::new("device-limit-race");
    let alice = ids.id("alice");
    new_account(&*store, &alice).await;
    let mut tasks = JoinSet::new();
    for i in 0..12 {
        let store = Arc::clone(&store);
        let d = device(&ids.id(&format!("d{i}")), &alice);
        tasks.spawn(async move { store.add_device(d, 5).await });
    }
    let mut added = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(()) => added += 1,
            Err(StoreError::DeviceLimit { limit: 5, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 5);
    assert_eq!(store.list_devices(&alice).await.unwrap().len(), 5);
}

/// Revoking marks the device, is idempotent, and fails for unknown devices.
pub async fn device_revoke(store: Arc<dyn Store>) {
    let ids = Ids::new("device-revoke");
    let alice = ids.id("alice");
    new_account(&*store, &alice).await;
    let (d1, d2) = (device(&ids.id("d1"), &alice), device(&ids.id("d2"), &alice));
    store.add_device(d1.clone(), 5).await.unwrap();
    store.add_device(d2.clone(), 5).await.unwrap();
    let revoked = Device {
        revoked: true,
        ..d1.clone()
    };
    assert_eq!(store.revoke_device(&d1.id).await.unwrap(), revoked);
    assert_eq!(
        store.get_device(&d1.id).await.unwrap(),
        Some(revoked.clone())
    );
    assert_eq!(store.revoke_device(&d1.id).await.unwrap(), revoked);
    assert_eq!(store.get_device(&d2.id).await.unwrap(), Some(d2.clone()));
    assert_eq!(store.list_devices(&alice).await.unwrap(), vec![revoked, d2]);
    let none = ids.id("none");
    assert_err!(
        store.revoke_device(&none).await,
        StoreError::NoSuchDevice(ref id) if *id == none
    );
}

// ---------------------------------------------------------------------------
// conversations

/// A conversation reads back as created, with its members ordered by
/// account id, and shows in each member's list.
pub async fn conversation_create_get(store: Arc<dyn Store>) {
    let ids = Ids::new("conversation-create");
    let (a, b, c) = (ids.id("a"), ids.id("b"), ids.id("c"));
    for x in [&a, &b, &c] {
        new_account(&*store, x).await;
    }
    let conv = Conversation {
        default_ttl_seconds: 86_400,
        ..conversation(&ids.id("chan"), ConversationKind::Channel)
    };
    store
        .create_conversation(
            conv.clone(),
            vec![
                member(&c, Role::Member),
                member(&a, Role::Owner),
                member(&b, Role::Publisher),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_conversation(&conv.id).await.unwrap(),
        Some(conv.clone())
    );
    assert_eq!(
        store.members(&conv.id).await.unwrap(),
        vec![
            member(&a, Role::Owner),
            member(&b, Role::Publisher),
            member(&c, Role::Member),
        ]
    );
    for x in [&a, &b, &c] {
        assert_eq!(
            store.conversations_of(x).await.unwrap(),
            vec![conv.id.clone()]
        );
    }
    assert_eq!(store.get_conversation(&ids.id("none")).await.unwrap(), None);
    // Kinds round-trip.
    for kind in [ConversationKind::Group, ConversationKind::Direct] {
        let other = conversation(&ids.id(&format!("{kind:?}")), kind);
        store
            .create_conversation(
                other.clone(),
                vec![member(&a, Role::Member), member(&b, Role::Member)],
            )
            .await
            .unwrap();
        assert_eq!(
            store.get_conversation(&other.id).await.unwrap(),
            Some(other)
        );
    }
}

/// A taken conversation id is refused and the first is unchanged.
pub async fn conversation_duplicate(store: Arc<dyn Store>) {
    let ids = Ids::new("conversation-duplicate");
    let (a, b) = (ids.id("a"), ids.id("b"));
    let conv = ids.id("conv");
    group_with(&*store, &conv, &[&a]).await;
    new_account(&*store, &b).await;
    assert_err!(
        store
            .create_conversation(
                conversation(&conv, ConversationKind::Channel),
                vec![member(&b, Role::Owner)],
            )
            .await,
        StoreError::ConversationExists(ref id) if *id == conv
    );
    let got = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(got.kind, ConversationKind::Group);
    assert_eq!(
        store.members(&conv).await.unwrap(),
        vec![member(&a, Role::Member)]
    );
    assert!(store.conversations_of(&b).await.unwrap().is_empty());
}

/// A direct conversation has exactly two distinct members.
pub async fn conversation_direct_needs_two(store: Arc<dyn Store>) {
    let ids = Ids::new("direct-two");
    let (a, b, c) = (ids.id("a"), ids.id("b"), ids.id("c"));
    for x in [&a, &b, &c] {
        new_account(&*store, x).await;
    }
    let direct = |name: &str| conversation(&ids.id(name), ConversationKind::Direct);
    assert_err!(
        store.create_conversation(direct("zero"), vec![]).await,
        StoreError::DirectNeedsTwo(0)
    );
    assert_err!(
        store
            .create_conversation(direct("one"), vec![member(&a, Role::Member)])
            .await,
        StoreError::DirectNeedsTwo(1)
    );
    assert_err!(
        store
            .create_conversation(
                direct("same"),
                vec![member(&a, Role::Member), member(&a, Role::Owner)],
            )
            .await,
        StoreError::DirectNeedsTwo(1)
    );
    assert_err!(
        store
            .create_conversation(
                direct("three"),
                vec![
                    member(&a, Role::Member),
                    member(&b, Role::Member),
                    member(&c, Role::Member),
                ],
            )
            .await,
        StoreError::DirectNeedsTwo(3)
    );
    for name in ["zero", "one", "same", "three"] {
        assert_eq!(store.get_conversation(&ids.id(name)).await.unwrap(), None);
    }
    assert!(store.conversations_of(&a).await.unwrap().is_empty());
    store
        .create_conversation(
            direct("ok"),
            vec![member(&a, Role::Member), member(&b, Role::Member)],
        )
        .await
        .unwrap();
    // A third member cannot join; a role change is fine.
    assert_err!(
        store
            .put_members(&ids.id("ok"), vec![member(&c, Role::Member)])
            .await,
        StoreError::DirectNeedsTwo(3)
    );
    store
        .put_members(&ids.id("ok"), vec![member(&a, Role::Admin)])
        .await
        .unwrap();
    assert_eq!(
        store.members(&ids.id("ok")).await.unwrap(),
        vec![member(&a, Role::Admin), member(&b, Role::Member)]
    );
    assert!(store.conversations_of(&c).await.unwrap().is_empty());
}

/// Every initial member must exist; nothing is created otherwise.
pub async fn conversation_unknown_member(store: Arc<dyn Store>) {
    let ids = Ids::new("conversation-unknown-member");
    let (a, ghost) = (ids.id("a"), ids.id("ghost"));
    new_account(&*store, &a).await;
    let conv = conversation(&ids.id("conv"), ConversationKind::Group);
    assert_err!(
        store
            .create_conversation(
                conv.clone(),
                vec![member(&a, Role::Owner), member(&ghost, Role::Member)],
            )
            .await,
        StoreError::NoSuchAccount(ref id) if *id == ghost
    );
    assert_eq!(store.get_conversation(&conv.id).await.unwrap(), None);
    assert!(store.members(&conv.id).await.unwrap().is_empty());
    assert!(store.conversations_of(&a).await.unwrap().is_empty());
}

/// `put_members` adds members and changes roles, `remove_members` removes
/// and counts; both keep `conversations_of` in step and fail as a whole.
pub async fn members_put_remove(store: Arc<dyn Store>) {
    let ids = Ids::new("members");
    let (a, b, c, ghost) = (ids.id("a"), ids.id("b"), ids.id("c"), ids.id("ghost"));
    let conv = ids.id("conv");
    group_with(&*store, &conv, &[&a]).await;
    new_account(&*store, &b).await;
    new_account(&*store, &c).await;

    store
        .put_members(
            &conv,
            vec![member(&b, Role::Member), member(&a, Role::Owner)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.members(&conv).await.unwrap(),
        vec![member(&a, Role::Owner), member(&b, Role::Member)]
    );
    assert_eq!(
        store.conversations_of(&b).await.unwrap(),
        vec![conv.clone()]
    );

    // An unknown account fails the whole call.
    assert_err!(
        store
            .put_members(
                &conv,
                vec![member(&c, Role::Admin), member(&ghost, Role::Member)],
            )
            .await,
        StoreError::NoSuchAccount(ref id) if *id == ghost
    );
    assert_eq!(store.members(&conv).await.unwrap().len(), 2);
    assert!(store.conversations_of(&c).await.unwrap().is_empty());

    store
        .put_members(&conv, vec![member(&c, Role::Admin)])
        .await
        .unwrap();
    assert_eq!(
        store
            .remove_members(&conv, vec![b.clone(), ghost.clone(), b.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.members(&conv).await.unwrap(),
        vec![member(&a, Role::Owner), member(&c, Role::Admin)]
    );
    assert!(store.conversations_of(&b).await.unwrap().is_empty());
    assert_eq!(
        store.remove_members(&conv, vec![b.clone()]).await.unwrap(),
        0
    );
    assert_eq!(store.remove_members(&conv, vec![]).await.unwrap(), 0);

    let none = ids.id("none");
    assert_err!(
        store.put_members(&none, vec![member(&a, Role::Member)]).await,
        StoreError::NoSuchConversation(ref id) if *id == none
    );
    assert_err!(
        store.remove_members(&none, vec![a.clone()]).await,
        StoreError::NoSuchConversation(ref id) if *id == none
    );
    assert!(store.members(&none).await.unwrap().is_empty());
}

/// `conversations_of` lists by conversation id, whatever the creation
/// order.
pub async fn conversations_of_ordered(store: Arc<dyn Store>) {
    let ids = Ids::new("conversations-of");
    let a = ids.id("a");
    new_account(&*store, &a).await;
    let names = ["m", "b", "z", "a"];
    for name in names {
        store
            .create_conversation(
                conversation(&ids.id(name), ConversationKind::Group),
                vec![member(&a, Role::Member)],
            )
            .await
            .unwrap();
    }
    let mut want: Vec<String> = names.iter().map(|n| ids.id(n)).collect();
    want.sort();
    assert_eq!(store.conversations_of(&a).await.unwrap(), want);
    assert!(
        store
            .conversations_of(&ids.id("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
}
