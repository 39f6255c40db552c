//! [`Metered`]: a [`Store`] that records the duration and the failures of
//! every operation of the store it wraps, under the names of
//! [`crate::metrics`].
//!
//! Every method, the trait's default ones included, calls the inner store's
//! method of the same name, so the inner backend's own overrides (a batched
//! `devices_of`, say) are the ones that run. Each call records
//! [`OPERATION_SECONDS`] with `op` = the method's name, and on failure
//! increments [`ERRORS`] with `op` and `kind` ([`error_kind`]).
//!
//! The metrics go to whatever recorder is installed (the relay installs the
//! Prometheus one); without one they cost a few atomic loads.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use metrics::{counter, histogram};
use tokio::time::Instant;

use crate::metrics::{ERRORS, OPERATION_SECONDS};
#[allow(unused_imports)] // used by the expansions of `delegate_store!`
use crate::{
    Account, AccountPurge, AccountState, Appended, Attachment, AuditEntry, Conversation, Device,
    EnrollmentCode, KeyPackageCount, KeyPackageUpload, Member, MlsState, NewMessage, Page, Policy,
    PolicyScope, Store, StoreError, StoredMessage, UnixMillis,
};

/// The `kind` label of an error that means the backend could not be reached
/// or could not give an answer.
pub const UNAVAILABLE: &str = "unavailable";
/// The `kind` label of an error that is the store's answer to the request:
/// something does not exist, exists already, or a limit or a rule refuses it.
pub const REJECTED: &str = "rejected";

/// The `kind` label [`Metered`] records for `error`:
///
/// - [`UNAVAILABLE`]: [`StoreError::Backend`] (I/O, database, network),
///   [`StoreError::Closed`] (the store is shut down),
///   [`StoreError::Corrupt`] (the backend answered with a record it cannot
///   decode, so it has no answer to give) and [`StoreError::InvalidConfig`]
///   (a backend that cannot serve as configured, e.g. a CQL schema whose
///   applied migration changed). Each of these is the operator's problem,
///   never the caller's: worth an alert.
/// - [`REJECTED`]: every other variant: an unknown or duplicate id
///   (`NoSuch*`, `*Exists`), a limit (`DeviceLimit`, `KeyPackageLimit`) or
///   a rule (`DirectNeedsTwo`, the MLS checks `WrongEpoch`,
///   `MembershipPending`, `InvalidRosterVersion`, `MlsRequired`). These are
///   answers the store gave on purpose and that change nothing, part of
///   normal traffic (a commit that lost its epoch's race, for one).
///
/// The match names every variant: a new one must be sorted here.
pub fn error_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Backend(_)
        | StoreError::Closed
        | StoreError::Corrupt { .. }
        | StoreError::InvalidConfig(_) => UNAVAILABLE,
        StoreError::AccountExists(_)
        | StoreError::NoSuchAccount(_)
        | StoreError::DeviceExists(_)
        | StoreError::NoSuchDevice(_)
        | StoreError::DeviceLimit { .. }
        | StoreError::ConversationExists(_)
        | StoreError::NoSuchConversation(_)
        | StoreError::DirectNeedsTwo(_)
        | StoreError::NoSuchCode
        | StoreError::WrongEpoch { .. }
        | StoreError::WrongGeneration { .. }
        | StoreError::MembershipPending { .. }
        | StoreError::InvalidRosterVersion { .. }
        | StoreError::MlsRequired
        | StoreError::KeyPackageLimit { .. }
        | StoreError::AttachmentExists
        | StoreError::NoSuchAttachment
        | StoreError::InvalidChunk { .. } => REJECTED,
    }
}

/// A [`Store`] that records the duration and failures of every operation of
/// `S` (see the [module](self) doc). `Metered<dyn Store>` (the default)
/// wraps the relay's `Arc<dyn Store>`; `Metered<EmbeddedStore>` a concrete
/// backend.
#[derive(Debug)]
pub struct Metered<S: ?Sized = dyn Store> {
    /// The store every call goes to.
    inner: Arc<S>,
}

impl<S: Store + ?Sized> Metered<S> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<S>) -> Self {
        Self { inner }
    }

    /// The wrapped store (calls on it are not recorded).
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }
}

/// Awaits `call`, then records its duration under `op` and, if it failed,
/// the failure under `op` and its [`error_kind`].
async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let result = call.await;
    let seconds = Instant::now()
        .saturating_duration_since(start)
        .as_secs_f64();
    histogram!(OPERATION_SECONDS, "op" => op).record(seconds);
    if let Err(e) = &result {
        counter!(ERRORS, "op" => op, "kind" => error_kind(e)).increment(1);
    }
    result
}

impl<S: Store + ?Sized> Metered<S> {
    /// What [`delegate_store!`] wraps every call in: [`timed`].
    async fn around<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        timed(op, call).await
    }
}

/// `call!(self.method(args..))`: the inner store's `method`, passed through
/// the wrapper's `around` with the method's name as `op` (the name is
/// written once, so label and method cannot disagree).
macro_rules! call {
    ($self:ident . $method:ident ( $($arg:expr),* $(,)? )) => {
        $self.around(stringify!($method), $self.inner.$method($($arg),*)).await
    };
}
// Used again by `unreliable` (tests and feature `fault-injection`).
#[cfg_attr(not(any(test, feature = "fault-injection")), allow(unused_imports))]
pub(crate) use call;

/// `delegate_store!(Wrapper)`: implements [`Store`] for `Wrapper<S>` (a
/// struct with an `inner: Arc<S>` and an `async fn around(&self, op, call)`)
/// by sending every method, the trait's default ones included, to the inner
/// store through `around`. One list of the trait's methods for every
/// wrapper ([`Metered`], and the fault-injecting `Unreliable` of the tests).
macro_rules! delegate_store {
    ($wrapper:ident) => {
        #[async_trait]
        impl<S: Store + ?Sized> Store for $wrapper<S> {
            async fn create_account(&self, account: Account) -> Result<(), StoreError> {
                call!(self.create_account(account))
            }
            async fn get_account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
                call!(self.get_account(account_id))
            }
            async fn delete_account(&self, account_id: &str) -> Result<AccountPurge, StoreError> {
                call!(self.delete_account(account_id))
            }

            async fn add_device(&self, device: Device, max_devices: u32) -> Result<(), StoreError> {
                call!(self.add_device(device, max_devices))
            }
            async fn get_device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
                call!(self.get_device(device_id))
            }
            async fn list_devices(&self, account_id: &str) -> Result<Vec<Device>, StoreError> {
                call!(self.list_devices(account_id))
            }
            async fn devices_of(
                &self,
                account_ids: Vec<String>,
            ) -> Result<Vec<Device>, StoreError> {
                call!(self.devices_of(account_ids))
            }
            async fn revoke_device(&self, device_id: &str) -> Result<Device, StoreError> {
                call!(self.revoke_device(device_id))
            }

            async fn create_conversation(
                &self,
                conversation: Conversation,
                members: Vec<Member>,
            ) -> Result<(), StoreError> {
                call!(self.create_conversation(conversation, members))
            }
            async fn get_conversation(
                &self,
                conversation_id: &str,
            ) -> Result<Option<Conversation>, StoreError> {
                call!(self.get_conversation(conversation_id))
            }
            async fn put_members(
                &self,
                conversation_id: &str,
                members: Vec<Member>,
            ) -> Result<(), StoreError> {
                call!(self.put_members(conversation_id, members))
            }
            async fn remove_members(
                &self,
                conversation_id: &str,
                account_ids: Vec<String>,
            ) -> Result<u32, StoreError> {
                call!(self.remove_members(conversation_id, account_ids))
            }
            async fn members(&self, conversation_id: &str) -> Result<Vec<Member>, StoreError> {
                call!(self.members(conversation_id))
            }
            async fn conversations_of(&self, account_id: &str) -> Result<Vec<String>, StoreError> {
                call!(self.conversations_of(account_id))
            }

            async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
                call!(self.append(message))
            }
            async fn read(
                &self,
                conversation_id: &str,
                after_seq: u64,
                limit: usize,
                now_ms: UnixMillis,
            ) -> Result<Vec<StoredMessage>, StoreError> {
                call!(self.read(conversation_id, after_seq, limit, now_ms))
            }
            async fn head(&self, conversation_id: &str) -> Result<u64, StoreError> {
                call!(self.head(conversation_id))
            }

            async fn advance_cursors(
                &self,
                device_id: &str,
                cursors: Vec<(String, u64)>,
            ) -> Result<(), StoreError> {
                call!(self.advance_cursors(device_id, cursors))
            }
            async fn advance_cursors_many(
                &self,
                updates: Vec<(String, Vec<(String, u64)>)>,
            ) -> Result<(), StoreError> {
                call!(self.advance_cursors_many(updates))
            }
            async fn cursors(&self, device_id: &str) -> Result<Vec<(String, u64)>, StoreError> {
                call!(self.cursors(device_id))
            }

            async fn account_state(
                &self,
                account_id: &str,
            ) -> Result<Option<AccountState>, StoreError> {
                call!(self.account_state(account_id))
            }
            async fn set_account_state(
                &self,
                account_id: &str,
                state: AccountState,
            ) -> Result<(), StoreError> {
                call!(self.set_account_state(account_id, state))
            }
            async fn list_accounts(
                &self,
                tag: Option<&str>,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Page<Account>, StoreError> {
                call!(self.list_accounts(tag, after, limit))
            }

            async fn update_conversation(
                &self,
                conversation_id: &str,
                title: Option<String>,
                archived: Option<bool>,
            ) -> Result<(), StoreError> {
                call!(self.update_conversation(conversation_id, title, archived))
            }
            async fn conversation_archived(
                &self,
                conversation_id: &str,
            ) -> Result<bool, StoreError> {
                call!(self.conversation_archived(conversation_id))
            }
            async fn list_conversations(
                &self,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Page<Conversation>, StoreError> {
                call!(self.list_conversations(after, limit))
            }

            async fn put_policy(
                &self,
                scope: PolicyScope,
                policy: Policy,
            ) -> Result<(), StoreError> {
                call!(self.put_policy(scope, policy))
            }
            async fn get_policy(&self, scope: PolicyScope) -> Result<Option<Policy>, StoreError> {
                call!(self.get_policy(scope))
            }

            async fn create_enrollment_code(&self, code: EnrollmentCode) -> Result<(), StoreError> {
                call!(self.create_enrollment_code(code))
            }
            async fn redeem_enrollment_code(
                &self,
                code_hash: &[u8],
                device: Device,
                now_ms: UnixMillis,
                max_devices: u32,
            ) -> Result<Device, StoreError> {
                call!(self.redeem_enrollment_code(code_hash, device, now_ms, max_devices))
            }

            async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
                call!(self.append_audit(entry))
            }
            async fn list_audit(
                &self,
                before_ms: UnixMillis,
                before_id: &str,
                limit: usize,
            ) -> Result<Vec<AuditEntry>, StoreError> {
                call!(self.list_audit(before_ms, before_id, limit))
            }

            async fn upload_key_packages(
                &self,
                device_id: &str,
                one_time: Vec<Vec<u8>>,
                last_resort: Option<Vec<u8>>,
                max_available: u32,
            ) -> Result<KeyPackageUpload, StoreError> {
                call!(self.upload_key_packages(device_id, one_time, last_resort, max_available))
            }
            async fn claim_key_package(
                &self,
                device_id: &str,
            ) -> Result<Option<Vec<u8>>, StoreError> {
                call!(self.claim_key_package(device_id))
            }
            async fn key_package_count(
                &self,
                device_id: &str,
            ) -> Result<KeyPackageCount, StoreError> {
                call!(self.key_package_count(device_id))
            }

            async fn mls_state(&self, conversation_id: &str) -> Result<MlsState, StoreError> {
                call!(self.mls_state(conversation_id))
            }
            async fn mls_roster(&self, conversation_id: &str) -> Result<Vec<String>, StoreError> {
                call!(self.mls_roster(conversation_id))
            }
            async fn mark_reconciled(
                &self,
                conversation_id: &str,
                generation: u64,
                epoch: u64,
                roster_version: u64,
            ) -> Result<MlsState, StoreError> {
                call!(self.mark_reconciled(conversation_id, generation, epoch, roster_version))
            }
            async fn reset_mls_group(
                &self,
                conversation_id: &str,
                generation: u64,
                epoch: u64,
            ) -> Result<MlsState, StoreError> {
                call!(self.reset_mls_group(conversation_id, generation, epoch))
            }
            async fn welcome_for(
                &self,
                device_id: &str,
                conversation_id: &str,
            ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
                call!(self.welcome_for(device_id, conversation_id))
            }

            async fn close(&self) -> Result<(), StoreError> {
                call!(self.close())
            }

            async fn purge_expired(&self, now_ms: UnixMillis) -> Result<u64, StoreError> {
                call!(self.purge_expired(now_ms))
            }

            async fn set_push_endpoint(
                &self,
                device_id: &str,
                endpoint: Option<String>,
            ) -> Result<(), StoreError> {
                call!(self.set_push_endpoint(device_id, endpoint))
            }
            async fn push_endpoint(&self, device_id: &str) -> Result<Option<String>, StoreError> {
                call!(self.push_endpoint(device_id))
            }
            async fn create_attachment(&self, attachment: Attachment) -> Result<(), StoreError> {
                call!(self.create_attachment(attachment))
            }
            async fn attachment(
                &self,
                id: &[u8],
                now_ms: UnixMillis,
            ) -> Result<Option<Attachment>, StoreError> {
                call!(self.attachment(id, now_ms))
            }
            async fn put_attachment_chunk(
                &self,
                id: &[u8],
                index: u32,
                data: Vec<u8>,
            ) -> Result<Attachment, StoreError> {
                call!(self.put_attachment_chunk(id, index, data))
            }
            async fn attachment_chunk(
                &self,
                id: &[u8],
                index: u32,
            ) -> Result<Option<Vec<u8>>, StoreError> {
                call!(self.attachment_chunk(id, index))
            }
            async fn purge_expired_attachments(
                &self,
                now_ms: UnixMillis,
            ) -> Result<u64, StoreError> {
                call!(self.purge_expired_attachments(now_ms))
            }
        }
    };
}
// Used again by `unreliable` (tests and feature `fault-injection`).
#[cfg_attr(not(any(test, feature = "fault-injection")), allow(unused_imports))]
pub(crate) use delegate_store;

delegate_store!(Metered);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metrics::{SharedString, Unit};
    use metrics_util::CompositeKey;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tempfile::TempDir;

    use super::{Metered, REJECTED, UNAVAILABLE};
    use crate::conformance::NOW;
    use crate::embedded::{EmbeddedConfig, EmbeddedStore};
    use crate::metrics::{ERRORS, OPERATION_SECONDS};
    use crate::{Account, Store, StoreError};

    /// The wrapper must not change what the store does: the whole suite,
    /// through it.
    async fn make_store() -> (Arc<dyn Store>, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
        let inner: Arc<dyn Store> = Arc::new(store);
        (Arc::new(Metered::new(inner)), dir)
    }

    mod conformance {
        crate::conformance_tests!(super::make_store);
    }

    /// One snapshot of a recorder (taking it drains the values).
    type Metrics = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

    /// The value of metric `name` with exactly `labels`.
    fn value<'m>(
        metrics: &'m Metrics,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'m DebugValue> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort_unstable();
        metrics.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let mut got: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            got.sort_unstable();
            (key.name() == name && got == want).then_some(value)
        })
    }

    fn account(id: &str) -> Account {
        Account {
            id: id.to_owned(),
            display_name: String::new(),
            created_at_ms: NOW,
        }
    }

    // current_thread runtime: the local recorder is the test thread's, and
    // every call is recorded on that thread.
    #[tokio::test]
    async fn records_durations_and_failures_by_kind() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().unwrap();
        let store = Metered::new(Arc::new(
            EmbeddedStore::open(dir.path(), EmbeddedConfig::default()).unwrap(),
        ));

        store.create_account(account("alice")).await.unwrap();
        assert!(store.get_account("alice").await.unwrap().is_some());
        assert!(matches!(
            store.create_account(account("alice")).await,
            Err(StoreError::AccountExists(_))
        ));
        store.close().await.unwrap();
        assert!(matches!(
            store.get_account("alice").await,
            Err(StoreError::Closed)
        ));

        let metrics = snapshotter.snapshot().into_vec();
        match value(&metrics, OPERATION_SECONDS, &[("op", "create_account")]) {
            Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 2, "{samples:?}"),
            other => panic!("create_account duration: {other:?}"),
        }
        match value(&metrics, OPERATION_SECONDS, &[("op", "get_account")]) {
            Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 2, "{samples:?}"),
            other => panic!("get_account duration: {other:?}"),
        }
        match value(&metrics, OPERATION_SECONDS, &[("op", "close")]) {
            Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 1, "{samples:?}"),
            other => panic!("close duration: {other:?}"),
        }
        assert_eq!(
            value(
                &metrics,
                ERRORS,
                &[("op", "create_account"), ("kind", REJECTED)]
            ),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(
            value(
                &metrics,
                ERRORS,
                &[("op", "get_account"), ("kind", UNAVAILABLE)]
            ),
            Some(&DebugValue::Counter(1))
        );
        // Successes count no error: these two are the only error series.
        let errors = metrics
            .iter()
            .filter(|(key, ..)| key.key().name() == ERRORS)
            .count();
        assert_eq!(errors, 2, "{metrics:?}");
    }
}
