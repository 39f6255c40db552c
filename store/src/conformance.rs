//! The conformance suite: what every [`Store`] backend must do.
//!
//! Each case is a `pub async fn case(store: Arc<dyn Store>)` that panics on a
//! violation. A backend runs them all, one `#[tokio::test]` each, with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! async fn make() -> (std::sync::Arc<dyn herold_store::Store>, MyGuard) { ... }
//! mod conformance {
//!     herold_store::conformance_tests!(super::make);
//! }
//! ```
//!
//! `make` is an async function (or anything callable as `make().await`)
//! giving the store and a guard (for instance a temporary directory) kept
//! alive until the case ends. The test crate needs `tokio` with the `macros`
//! and `rt-multi-thread` features.
//!
//! Every case uses ids unique to the run (process id, clock, counter), so
//! the cases can run concurrently against one shared, persistent database.
//! They assume only what they wrote themselves; the one global operation,
//! [`Store::purge_expired`], is called only with times long before those any
//! other case uses for expiry.
//!
//! Semantics pinned down here beyond the trait's documentation:
//! - reading unknown ids gives `None`, an empty list, or head 0; writing
//!   through unknown ids fails with the matching `NoSuch*` error;
//! - `read` skips expired messages without counting them towards `limit`;
//! - a failed write changes nothing (no partial membership changes etc.);
//!   in particular a message refused by its MLS condition leaves nothing
//!   behind: its id may be sent again, with new content, and is then new;
//! - one-time key packages are handed out in no particular order;
//!   `claim_key_package`, `key_package_count` and `mls_roster` treat unknown
//!   and revoked devices (and unknown conversations) as having nothing;
//! - `put_members` and `remove_members` bump the roster version once per
//!   call with a non-empty list (even if nobody was removed); revocation
//!   bumps on every call; `create_conversation` does not bump.

// This is a test suite: panicking is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;

use crate::{
    Account, AccountPurge, AccountState, AuditEntry, Conversation, ConversationKind, Device,
    DirectChats, EnrollmentCode, KeyPackageCount, Member, MlsCheck, MlsState, NewMessage, Policy,
    PolicyScope, Role, Store, StoreError, UnixMillis, Welcome,
};

/// The "current time" of the cases (2030-03-17), far after the times
/// [`purge_expired_removes_rows`] purges.
pub const NOW: UnixMillis = 1_900_000_000_000;

/// Asserts that `$result` is `Err` matching the pattern.
macro_rules! assert_err {
    ($result:expr, $pat:pat $(if $guard:expr)?) => {
        match $result {
            Err($pat) $(if $guard)? => {}
            other => panic!("expected Err({}), got {:?}", stringify!($pat), other),
        }
    };
}

/// Ids unique to one case run.
struct Ids(String);

impl Ids {
    fn new(case: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(format!("{case}-{}-{nanos:x}-{n}", std::process::id()))
    }

    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.0)
    }
}

fn account(id: &str) -> Account {
    Account {
        id: id.to_owned(),
        display_name: format!("name of {id}"),
        created_at_ms: NOW,
    }
}

fn device(id: &str, account_id: &str) -> Device {
    Device {
        id: id.to_owned(),
        account_id: account_id.to_owned(),
        public_key: vec![7; 32],
        revoked: false,
        created_at_ms: NOW,
    }
}

fn conversation(id: &str, kind: ConversationKind) -> Conversation {
    Conversation {
        id: id.to_owned(),
        kind,
        title: format!("title of {id}"),
        default_ttl_seconds: 0,
        created_at_ms: NOW,
    }
}

fn member(account_id: &str, role: Role) -> Member {
    Member {
        account_id: account_id.to_owned(),
        role,
    }
}

fn message(conversation_id: &str, message_id: &str, sender: &str) -> NewMessage {
    NewMessage {
        conversation_id: conversation_id.to_owned(),
        message_id: message_id.as_bytes().to_vec(),
        sender_account_id: sender.to_owned(),
        sender_device_id: format!("{sender}-device"),
        server_time_ms: NOW,
        expires_at_ms: None,
        ciphertext: format!("ciphertext of {message_id}").into_bytes(),
        mls: None,
    }
}

async fn new_account(store: &dyn Store, id: &str) {
    store
        .create_account(account(id))
        .await
        .expect("create account");
}

/// Creates the accounts, and a group conversation with them as members.
async fn group_with(store: &dyn Store, conv: &str, accounts: &[&str]) {
    for a in accounts {
        new_account(store, a).await;
    }
    let members = accounts.iter().map(|a| member(a, Role::Member)).collect();
    store
        .create_conversation(conversation(conv, ConversationKind::Group), members)
        .await
        .expect("create conversation");
}

/// The message ids of a read, as strings.
fn ids_of(messages: &[crate::StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.message_id).into_owned())
        .collect()
}

fn seqs_of(messages: &[crate::StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

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

// ---------------------------------------------------------------------------
// logs

/// Appends get 1, 2, 3 and read back with every field.
pub async fn append_sequential(store: Arc<dyn Store>) {
    let ids = Ids::new("append-seq");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    assert_eq!(store.head(&conv).await.unwrap(), 0);
    let mut sent = Vec::new();
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

// ---------------------------------------------------------------------------
// operator state: tags, suspension, listing

/// Tags and suspension read back (tags sorted, deduplicated); an unknown
/// account has no state and cannot get one.
pub async fn account_state_roundtrip(store: Arc<dyn Store>) {
    let ids = Ids::new("account-state");
    let alice = ids.id("alice");
    new_account(&*store, &alice).await;
    assert_eq!(
        store.account_state(&alice).await.unwrap(),
        Some(AccountState::default())
    );
    let tag_b = ids.id("tag-b");
    let tag_a = ids.id("tag-a");
    store
        .set_account_state(
            &alice,
            AccountState {
                tags: vec![tag_b.clone(), tag_a.clone(), tag_b.clone()],
                suspended: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.account_state(&alice).await.unwrap(),
        Some(AccountState {
            tags: vec![tag_a.clone(), tag_b.clone()],
            suspended: true,
        })
    );
    // Dropping a tag removes the account from its listing.
    store
        .set_account_state(
            &alice,
            AccountState {
                tags: vec![tag_a.clone()],
                suspended: false,
            },
        )
        .await
        .unwrap();
    let page = store.list_accounts(Some(&tag_b), None, 10).await.unwrap();
    assert!(page.items.is_empty(), "{page:?}");
    let page = store.list_accounts(Some(&tag_a), None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(store.account_state(&ids.id("nobody")).await.unwrap(), None);
    assert_err!(
        store
            .set_account_state(&ids.id("nobody"), AccountState::default())
            .await,
        StoreError::NoSuchAccount(_)
    );
}

/// Listing by tag pages through exactly the tagged accounts, in id order;
/// the unfiltered listing pages without repeating; deleting an account takes
/// it out of its tags.
pub async fn account_list_by_tag(store: Arc<dyn Store>) {
    let ids = Ids::new("account-list");
    let cohort = ids.id("cohort");
    let mut tagged = Vec::new();
    for i in 0..5 {
        let a = ids.id(&format!("a{i}"));
        new_account(&*store, &a).await;
        if i != 2 {
            store
                .set_account_state(
                    &a,
                    AccountState {
                        tags: vec![cohort.clone()],
                        suspended: false,
                    },
                )
                .await
                .unwrap();
            tagged.push(a);
        }
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = store
            .list_accounts(Some(&cohort), after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|a| a.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, tagged);
    // Unfiltered: two pages of one are different accounts.
    let p1 = store.list_accounts(None, None, 1).await.unwrap();
    assert_eq!(p1.items.len(), 1);
    let next = p1.next.clone().expect("more than one account exists");
    let p2 = store.list_accounts(None, Some(&next), 1).await.unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_ne!(p1.items[0].id, p2.items[0].id);
    // Deleting purges the tag index and the state.
    store.delete_account(&tagged[0]).await.unwrap();
    assert_eq!(store.account_state(&tagged[0]).await.unwrap(), None);
    let page = store.list_accounts(Some(&cohort), None, 10).await.unwrap();
    let left: Vec<String> = page.items.into_iter().map(|a| a.id).collect();
    assert_eq!(left, tagged[1..].to_vec());
    // A re-created account does not inherit the old tags.
    new_account(&*store, &tagged[0]).await;
    assert_eq!(
        store.account_state(&tagged[0]).await.unwrap(),
        Some(AccountState::default())
    );
}

/// Rename and archive; unknown conversations are refused; listing pages.
pub async fn conversation_update_archive(store: Arc<dyn Store>) {
    let ids = Ids::new("conv-update");
    let (alice, conv) = (ids.id("alice"), ids.id("group"));
    group_with(&*store, &conv, &[&alice]).await;
    assert!(!store.conversation_archived(&conv).await.unwrap());
    store
        .update_conversation(&conv, Some("Wahllokal 17".into()), None)
        .await
        .unwrap();
    let c = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(c.title, "Wahllokal 17");
    assert!(!store.conversation_archived(&conv).await.unwrap());
    store
        .update_conversation(&conv, None, Some(true))
        .await
        .unwrap();
    assert!(store.conversation_archived(&conv).await.unwrap());
    let c = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(c.title, "Wahllokal 17");
    store
        .update_conversation(&conv, None, Some(false))
        .await
        .unwrap();
    assert!(!store.conversation_archived(&conv).await.unwrap());
    assert!(
        !store
            .conversation_archived(&ids.id("nothing"))
            .await
            .unwrap()
    );
    assert_err!(
        store
            .update_conversation(&ids.id("nothing"), Some("x".into()), None)
            .await,
        StoreError::NoSuchConversation(_)
    );
    let p = store.list_conversations(None, 1).await.unwrap();
    assert_eq!(p.items.len(), 1);
    let p2 = store
        .list_conversations(p.next.as_deref(), 1)
        .await
        .unwrap();
    if let Some(c2) = p2.items.first() {
        assert_ne!(c2.id, p.items[0].id);
    }
}

/// Policies read back per scope; a conversation scope must exist.
pub async fn policy_put_get(store: Arc<dyn Store>) {
    let ids = Ids::new("policy");
    let (alice, conv) = (ids.id("alice"), ids.id("group"));
    group_with(&*store, &conv, &[&alice]).await;
    let scope = PolicyScope::Conversation(conv.clone());
    assert_eq!(store.get_policy(scope.clone()).await.unwrap(), None);
    let p = Policy {
        default_expiry_seconds: Some(86_400),
        max_expiry_seconds: Some(7 * 86_400),
        max_devices: None,
        max_attachment_bytes: Some(1 << 20),
        direct_chats: Some(DirectChats::SharedGroup),
    };
    store.put_policy(scope.clone(), p.clone()).await.unwrap();
    assert_eq!(store.get_policy(scope.clone()).await.unwrap(), Some(p));
    let q = Policy {
        direct_chats: Some(DirectChats::Nobody),
        ..Policy::default()
    };
    store.put_policy(scope.clone(), q.clone()).await.unwrap();
    assert_eq!(store.get_policy(scope).await.unwrap(), Some(q));
    assert_err!(
        store
            .put_policy(
                PolicyScope::Conversation(ids.id("nothing")),
                Policy::default()
            )
            .await,
        StoreError::NoSuchConversation(_)
    );
}

fn code(hash: &str, account: &Account, expires_at_ms: UnixMillis) -> EnrollmentCode {
    EnrollmentCode {
        code_hash: hash.as_bytes().to_vec(),
        account_id: account.id.clone(),
        account_created_at_ms: account.created_at_ms,
        created_at_ms: NOW,
        expires_at_ms,
    }
}

/// A code enrolls one device, once; expired, unknown and orphaned codes are
/// refused alike; a refused device leaves the code valid.
pub async fn enrollment_code_single_use(store: Arc<dyn Store>) {
    let ids = Ids::new("enroll");
    let alice = account(&ids.id("alice"));
    store.create_account(alice.clone()).await.unwrap();
    let h1 = ids.id("code-1");
    store
        .create_enrollment_code(code(&h1, &alice, NOW + 60_000))
        .await
        .unwrap();
    let d = store
        .redeem_enrollment_code(h1.as_bytes(), device(&ids.id("phone"), "ignored"), NOW, 10)
        .await
        .unwrap();
    assert_eq!(d.account_id, alice.id);
    assert_eq!(
        store.get_device(&d.id).await.unwrap().unwrap().account_id,
        alice.id
    );
    assert_err!(
        store
            .redeem_enrollment_code(h1.as_bytes(), device(&ids.id("again"), ""), NOW, 10)
            .await,
        StoreError::NoSuchCode
    );
    // Expired.
    let h2 = ids.id("code-2");
    store
        .create_enrollment_code(code(&h2, &alice, NOW + 60_000))
        .await
        .unwrap();
    assert_err!(
        store
            .redeem_enrollment_code(h2.as_bytes(), device(&ids.id("late"), ""), NOW + 60_000, 10)
            .await,
        StoreError::NoSuchCode
    );
    // Unknown.
    assert_err!(
        store
            .redeem_enrollment_code(b"no such code", device(&ids.id("x"), ""), NOW, 10)
            .await,
        StoreError::NoSuchCode
    );
    // Device limit: refused, the code stays valid.
    let h3 = ids.id("code-3");
    store
        .create_enrollment_code(code(&h3, &alice, NOW + 60_000))
        .await
        .unwrap();
    assert_err!(
        store
            .redeem_enrollment_code(h3.as_bytes(), device(&ids.id("tablet"), ""), NOW, 1)
            .await,
        StoreError::DeviceLimit { .. }
    );
    store
        .redeem_enrollment_code(h3.as_bytes(), device(&ids.id("tablet"), ""), NOW, 2)
        .await
        .unwrap();
    // A code of a deleted account is void, even for a new account of that id.
    let h4 = ids.id("code-4");
    store
        .create_enrollment_code(code(&h4, &alice, NOW + 60_000))
        .await
        .unwrap();
    store.delete_account(&alice.id).await.unwrap();
    let reborn = Account {
        created_at_ms: NOW + 1,
        ..alice.clone()
    };
    store.create_account(reborn).await.unwrap();
    assert_err!(
        store
            .redeem_enrollment_code(h4.as_bytes(), device(&ids.id("old"), ""), NOW, 10)
            .await,
        StoreError::NoSuchCode
    );
    assert_err!(
        store
            .create_enrollment_code(code(&h4, &account(&ids.id("nobody")), NOW + 1))
            .await,
        StoreError::NoSuchAccount(_)
    );
}

/// The audit log lists newest first, paged by (time, id).
pub async fn audit_log_paging(store: Arc<dyn Store>) {
    let ids = Ids::new("audit");
    // A time window unique to this run (the log is global).
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let base = NOW + 1_000_000 + i64::try_from(nanos % 1_000_000_000).unwrap_or(0) * 10;
    let mut written = Vec::new();
    for i in 0..5i64 {
        let e = AuditEntry {
            at_ms: base + i / 2,
            id: ids.id(&format!("e{i}")),
            operator: "ops".into(),
            action: "DeleteAccount".into(),
            target: ids.id("alice"),
            outcome: "ok".into(),
            detail: format!("n={i}"),
        };
        store.append_audit(e.clone()).await.unwrap();
        written.push(e);
    }
    written.reverse();
    let first = store.list_audit(base + 3, "", 3).await.unwrap();
    assert_eq!(first, written[..3].to_vec());
    let last = &first[2];
    let rest = store.list_audit(last.at_ms, &last.id, 2).await.unwrap();
    assert_eq!(rest, written[3..].to_vec());
}

// ---------------------------------------------------------------------------
// MLS

fn with_mls(mut m: NewMessage, check: MlsCheck) -> NewMessage {
    m.mls = Some(check);
    m
}

fn app(epoch: u64) -> MlsCheck {
    MlsCheck::Application { epoch }
}

fn commit(epoch: u64, roster_version: u64) -> MlsCheck {
    MlsCheck::Commit {
        epoch,
        roster_version,
        welcome: None,
    }
}

fn commit_welcoming(epoch: u64, roster_version: u64, bytes: &[u8], devices: &[&str]) -> MlsCheck {
    MlsCheck::Commit {
        epoch,
        roster_version,
        welcome: Some(Welcome {
            bytes: bytes.to_vec(),
            device_ids: devices.iter().map(|d| (*d).to_owned()).collect(),
        }),
    }
}

fn state(epoch: u64, roster_version: u64, group_roster_version: u64) -> MlsState {
    MlsState {
        epoch,
        roster_version,
        group_roster_version,
    }
}

fn count(available: u32, last_resort: bool) -> KeyPackageCount {
    KeyPackageCount {
        available,
        last_resort,
    }
}

fn packages(device: &str, range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range
        .map(|i| format!("key package {i} of {device}").into_bytes())
        .collect()
}

async fn roster_version(store: &dyn Store, conv: &str) -> u64 {
    store.mls_state(conv).await.unwrap().roster_version
}

/// Makes a device ready: a last-resort package.
async fn make_ready(store: &dyn Store, device: &str) {
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
        store.mark_reconciled(&conv, 2, 1).await.unwrap(),
        state(2, 3, 2)
    );
    assert_eq!(
        store.mark_reconciled(&conv, 2, 3).await.unwrap(),
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
        store.mark_reconciled(&ghost, 0, 0).await,
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
        store.mark_reconciled(&conv, 1, 1).await,
        StoreError::WrongEpoch { current: 0 }
    );
    assert_err!(
        store.mark_reconciled(&conv, 0, 2).await,
        StoreError::InvalidRosterVersion { current: 1 }
    );
    assert_eq!(store.mls_state(&conv).await.unwrap(), state(0, 1, 0));
    assert_eq!(
        store.mark_reconciled(&conv, 0, 1).await.unwrap(),
        state(0, 1, 1)
    );
    store
        .append(with_mls(message(&conv, "x", &a), app(0)))
        .await
        .unwrap();
    store.remove_members(&conv, vec![b.clone()]).await.unwrap();
    assert_eq!(
        store.mark_reconciled(&conv, 0, 1).await.unwrap(),
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
}

/// Expands to one `#[tokio::test]` per conformance case, each calling
/// `$make().await` for a fresh `(Arc<dyn Store>, guard)` and running the case
/// on the store (the guard is dropped after the case), plus
/// `all_cases_concurrently_on_one_store`, which runs every case at once on
/// one store. See the [`conformance`](crate::conformance) module.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(
            @cases $make;
            account_create_get,
            account_duplicate,
            account_delete_purges,
            account_delete_unknown,
            account_create_race,
            device_add_get_list,
            device_duplicate,
            device_unknown_account,
            device_limit,
            device_limit_race,
            device_revoke,
            conversation_create_get,
            conversation_duplicate,
            conversation_direct_needs_two,
            conversation_unknown_member,
            members_put_remove,
            conversations_of_ordered,
            append_sequential,
            append_idempotent,
            append_message_id_per_conversation,
            append_unknown_conversation,
            append_concurrent,
            append_concurrent_duplicates,
            concurrent_failures_are_isolated,
            read_paging,
            read_hides_expired,
            purge_expired_removes_rows,
            read_unknown_conversation,
            cursors_monotonic,
            cursors_many,
            devices_of_accounts,
            cursors_concurrent,
            account_state_roundtrip,
            account_list_by_tag,
            conversation_update_archive,
            policy_put_get,
            enrollment_code_single_use,
            audit_log_paging,
            key_packages_upload_claim,
            key_package_limit,
            key_package_claims_concurrent,
            key_packages_purged_on_revoke_and_delete,
            roster_bumps_from_each_trigger,
            roster_bumps_concurrent,
            mls_roster_content,
            mls_append_rules,
            mls_duplicates_skip_checks,
            mls_commits_concurrent,
            mls_group_roster_never_decreases,
            mark_reconciled_rules,
            welcome_for_latest_wins,
        );
    };
    (@cases $make:path; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, guard) = $make().await;
                $crate::conformance::$case(store).await;
                drop(guard);
            }
        )+

        /// Every case at once on one store: the cases must not see each
        /// other's data (as on a shared, persistent database).
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn all_cases_concurrently_on_one_store() {
            let (store, guard) = $make().await;
            let mut cases = ::tokio::task::JoinSet::new();
            $(
                cases.spawn($crate::conformance::$case(::std::sync::Arc::clone(&store)));
            )+
            while let Some(joined) = cases.join_next().await {
                if let Err(error) = joined {
                    panic!("a conformance case failed: {error}");
                }
            }
            drop(guard);
        }
    };
}
