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

mod attachments;
mod cursors;
mod directory;
mod logs;
mod mls;
mod mls_groups;
mod operators;
mod push;

pub use attachments::*;
pub use cursors::*;
pub use directory::*;
pub use logs::*;
pub use mls::*;
pub use mls_groups::*;
pub use operators::*;
pub use push::*;

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
            enrollment_codes_voided_by_the_account,
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
            mls_restart_rules,
            welcome_for_latest_wins,
            attachment_chunks_in_order,
            attachment_unknown_ids,
            attachment_expiry_deletes_chunks,
            push_endpoints_follow_their_device,
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
