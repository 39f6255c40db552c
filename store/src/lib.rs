//! Herold's durable store.
//!
//! # Layout
//! - [`Store`]: the trait every backend implements: the directory (accounts,
//!   devices, conversations and their members), conversation logs with
//!   per-conversation sequence numbers, device cursors, and expiry.
//! - [`embedded`]: the embedded default backend, on local disk (redb), with
//!   group commit: concurrent writes are batched into one fsynced transaction.
//! - `cql` (feature `cql`): the CQL backend for Scylla (Cassandra 5 in
//!   tests), with versioned migrations; see `docs/storage.md`.
//! - [`conformance`] (feature `conformance`, and in this crate's tests): the
//!   suite every backend must pass.
//! - [`metered::Metered`]: wraps any backend and records the duration and
//!   failures of each operation under the names declared in [`metrics`].
//!
//! # Ordering
//! [`Store::append`] gives each accepted message the next sequence number of
//! its conversation, atomically with the durable write. The store, not the
//! router, is the source of order: it is the one component whose writes are
//! not lost on failover (docs/design.md, invariant 2). Sequence numbers start at 1
//! and have no gaps.
//!
//! # Durability
//! Every mutating method returns only once its effect is durable (fsynced on
//! the embedded backend). A relay acknowledges a message to its sender only
//! after `append` returned.
//!
//! # MLS
//! Every conversation that uses end-to-end encryption is one MLS group; the
//! store is the Delivery Service's memory of it ([`MlsState`]): the epoch of
//! the accepted group, the roster version (bumped by every change of who
//! should be in the group: [`Store::put_members`], [`Store::remove_members`],
//! [`Store::revoke_device`], [`Store::delete_account`], and a device becoming
//! ready in [`Store::upload_key_packages`]) and the roster version the group
//! reflects. [`Store::append`] checks a message's [`MlsCheck`] atomically
//! with its seq claim: exactly one commit per epoch wins, and application
//! messages are refused while the group lags behind the roster. Key packages
//! are handed out once each ([`Store::claim_key_package`]); Welcomes are
//! kept per commit with an index per device ([`Store::welcome_for`]).
//!
//! # Unknown ids
//! Reading an unknown id is not an error: it gives `None`, an empty list or
//! head 0. Writing through an unknown id fails with the matching
//! `NoSuch*` error and changes nothing.

#![warn(missing_docs)]

use std::fmt;

use async_trait::async_trait;

pub mod embedded;
pub mod metered;
pub mod metrics;
#[cfg(any(test, feature = "fault-injection"))]
pub mod unreliable;

#[cfg(feature = "cql")]
pub mod cql;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

mod error;
mod model;
mod rules;

pub use error::StoreError;
pub use model::*;
pub use rules::CodeTimes;
pub(crate) use rules::{admit_mls, check_chunk, normalize_tags, reconcile, restart};

/// The durable store. All methods are cancellation-safe in the sense that a
/// cancelled call either took full effect or none.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    // ---- directory: accounts ----

    /// Creates an account. [`StoreError::AccountExists`] if the id is taken.
    async fn create_account(&self, account: Account) -> Result<(), StoreError>;
    /// The account, if it exists.
    async fn get_account(&self, account_id: &str) -> Result<Option<Account>, StoreError>;
    /// Deletes an account and purges its devices, their cursors, its
    /// memberships, tags and suspension, and its devices' key packages and
    /// Welcome index; bumps the roster version of every conversation it was
    /// a member of. Messages it sent stay in the conversations (the other
    /// members can still read them) until they expire.
    async fn delete_account(&self, account_id: &str) -> Result<AccountPurge, StoreError>;

    // ---- directory: devices ----

    /// Enrolls a device. Fails if the account does not exist, the device id is
    /// taken, or the account already has `max_devices` devices (revoked ones
    /// count until they are deleted).
    async fn add_device(&self, device: Device, max_devices: u32) -> Result<(), StoreError>;
    /// The device, if it exists.
    async fn get_device(&self, device_id: &str) -> Result<Option<Device>, StoreError>;
    /// All devices of an account, ordered by id.
    async fn list_devices(&self, account_id: &str) -> Result<Vec<Device>, StoreError>;
    /// The devices of many accounts, in one read where the backend can (a
    /// relay loading the roster of a 7,000-member channel). Unknown accounts
    /// contribute nothing.
    async fn devices_of(&self, account_ids: Vec<String>) -> Result<Vec<Device>, StoreError> {
        let mut out = Vec::new();
        for a in account_ids {
            out.extend(self.list_devices(&a).await?);
        }
        Ok(out)
    }
    /// Marks a device revoked, deletes its key packages and bumps the roster
    /// version of every conversation of its account. Returns the updated
    /// device.
    async fn revoke_device(&self, device_id: &str) -> Result<Device, StoreError>;

    // ---- directory: conversations ----

    /// Creates a conversation with its initial members. Every member account
    /// must exist.
    async fn create_conversation(
        &self,
        conversation: Conversation,
        members: Vec<Member>,
    ) -> Result<(), StoreError>;
    /// The conversation, if it exists.
    async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<Conversation>, StoreError>;
    /// Adds members or changes their roles. Every account must exist. A
    /// direct conversation cannot get a third member
    /// ([`StoreError::DirectNeedsTwo`]). Bumps the roster version (unless
    /// `members` is empty).
    async fn put_members(
        &self,
        conversation_id: &str,
        members: Vec<Member>,
    ) -> Result<(), StoreError>;
    /// Removes members; absent ones are ignored. Returns how many were removed.
    /// [`StoreError::NoSuchConversation`] if the conversation does not exist.
    /// Bumps the roster version (unless `account_ids` is empty), even when
    /// none of them was a member, so that a retry after a failure completes
    /// the bump.
    async fn remove_members(
        &self,
        conversation_id: &str,
        account_ids: Vec<String>,
    ) -> Result<u32, StoreError>;
    /// The members of a conversation, ordered by account id.
    async fn members(&self, conversation_id: &str) -> Result<Vec<Member>, StoreError>;
    /// The conversations an account is a member of, ordered by id.
    async fn conversations_of(&self, account_id: &str) -> Result<Vec<String>, StoreError>;

    // ---- conversation logs ----

    /// Appends a message durably and gives it the conversation's next seq.
    /// Idempotent by `(conversation_id, message_id)`: a repeat returns the
    /// first acceptance with `duplicate: true` and writes nothing.
    /// [`StoreError::NoSuchConversation`] if the conversation does not exist;
    /// the store does not check that the sender is a member (the caller
    /// authorises). Then the MLS condition ([`NewMessage::mls`], see
    /// [`MlsCheck`]): `None` fails with [`StoreError::MlsRequired`] once the
    /// conversation's epoch is above 0. A refused message writes nothing.
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError>;
    /// Up to `limit` messages with seq > `after_seq`, in seq order, leaving
    /// out those expired at `now_ms` (expired: `expires_at_ms <= now_ms`).
    /// Expired messages do not count towards `limit`: the page holds the first
    /// `limit` live messages after `after_seq`.
    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
        now_ms: UnixMillis,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// The highest seq given out in the conversation (0 if none).
    async fn head(&self, conversation_id: &str) -> Result<u64, StoreError>;

    // ---- cursors ----

    /// Advances device cursors: each `(conversation, seq)` is stored as
    /// max(stored, seq); a cursor never moves back.
    /// [`StoreError::NoSuchDevice`] if the device does not exist; conversation
    /// ids are not checked.
    async fn advance_cursors(
        &self,
        device_id: &str,
        cursors: Vec<(String, u64)>,
    ) -> Result<(), StoreError>;
    /// Advances the cursors of many devices at once (a relay coalesces its
    /// sessions' acks into one call). Devices that no longer exist are
    /// skipped: their cursors went with them.
    async fn advance_cursors_many(
        &self,
        updates: Vec<(String, Vec<(String, u64)>)>,
    ) -> Result<(), StoreError> {
        for (device, cursors) in updates {
            match self.advance_cursors(&device, cursors).await {
                Ok(()) | Err(StoreError::NoSuchDevice(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    /// The stored cursors of a device, ordered by conversation id.
    async fn cursors(&self, device_id: &str) -> Result<Vec<(String, u64)>, StoreError>;

    // ---- directory: operator state ----

    /// The account's tags and suspension; `None` for an unknown account.
    async fn account_state(&self, account_id: &str) -> Result<Option<AccountState>, StoreError>;
    /// Replaces the account's tags and suspension (tags are sorted and
    /// deduplicated). [`StoreError::NoSuchAccount`] if it does not exist.
    async fn set_account_state(
        &self,
        account_id: &str,
        state: AccountState,
    ) -> Result<(), StoreError>;
    /// Up to `limit` accounts after `after` (a [`Page::next`]), all or only
    /// those tagged `tag`. The order is the backend's (by id on the embedded
    /// store and within a tag; by token on CQL) and stable across pages.
    async fn list_accounts(
        &self,
        tag: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Account>, StoreError>;

    // ---- directory: conversation administration ----

    /// Renames and/or archives (no one may post; members still read) a
    /// conversation. [`StoreError::NoSuchConversation`] if it does not exist.
    async fn update_conversation(
        &self,
        conversation_id: &str,
        title: Option<String>,
        archived: Option<bool>,
    ) -> Result<(), StoreError>;
    /// Whether the conversation is archived (false for an unknown one).
    async fn conversation_archived(&self, conversation_id: &str) -> Result<bool, StoreError>;
    /// Up to `limit` conversations after `after`, in the backend's order.
    async fn list_conversations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>, StoreError>;

    // ---- policies ----

    /// Sets (replaces) the policy of a scope. A conversation scope must name
    /// an existing conversation.
    async fn put_policy(&self, scope: PolicyScope, policy: Policy) -> Result<(), StoreError>;
    /// The policy set at a scope, if any.
    async fn get_policy(&self, scope: PolicyScope) -> Result<Option<Policy>, StoreError>;

    // ---- enrollment codes ----

    /// Stores an enrollment code. [`StoreError::NoSuchAccount`] if its
    /// account does not exist.
    async fn create_enrollment_code(&self, code: EnrollmentCode) -> Result<(), StoreError>;
    /// Redeems a code: enrolls `device` (its `account_id` is taken from the
    /// code) and voids the code, once. [`StoreError::NoSuchCode`] for an
    /// unknown, used or expired code, or one whose account is gone; the
    /// device errors of [`Store::add_device`] otherwise, in which case the
    /// code stays valid.
    async fn redeem_enrollment_code(
        &self,
        code_hash: &[u8],
        device: Device,
        now_ms: UnixMillis,
        max_devices: u32,
    ) -> Result<Device, StoreError>;

    // ---- audit log ----

    /// Appends an entry to the audit log, as the next link of the hash
    /// chain `entry.chain` ([`AuditEntry::chain_after`] on that chain's
    /// current head, atomically: concurrent appends to one chain get
    /// consecutive positions).
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError>;
    /// Up to `limit` entries older than `(before_ms, before_id)`, newest
    /// first. Backends may look back a bounded time (two years on CQL).
    async fn list_audit(
        &self,
        before_ms: UnixMillis,
        before_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    // ---- MLS: key packages ----

    /// Stores one-time packages (appended to what is there) and, if given,
    /// replaces the last-resort package. Fails with
    /// [`StoreError::KeyPackageLimit`] if the available one-time packages
    /// would exceed `max_available` (nothing is stored then),
    /// [`StoreError::NoSuchDevice`] for an unknown or revoked device. When
    /// the device becomes ready (had no last-resort package before, has one
    /// now), the roster version of every conversation of its account is
    /// bumped and `became_ready` is true.
    async fn upload_key_packages(
        &self,
        device_id: &str,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_available: u32,
    ) -> Result<KeyPackageUpload, StoreError>;
    /// Hands out one one-time package (each exactly once, even under
    /// concurrency, across relays), else the last-resort package (not
    /// consumed), else `None` (also for an unknown or revoked device).
    async fn claim_key_package(&self, device_id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The device's packages; zero for an unknown or revoked device.
    /// A device is "ready" (addable) once it has a last-resort package;
    /// [`Store::revoke_device`] and [`Store::delete_account`] delete its
    /// packages.
    async fn key_package_count(&self, device_id: &str) -> Result<KeyPackageCount, StoreError>;

    // ---- MLS: group state ----

    /// The conversation's MLS state. [`StoreError::NoSuchConversation`] if
    /// it does not exist.
    async fn mls_state(&self, conversation_id: &str) -> Result<MlsState, StoreError>;
    /// The ids of the ready (has a last-resort package), non-revoked devices
    /// of the member accounts, ordered by id. Empty for an unknown
    /// conversation.
    async fn mls_roster(&self, conversation_id: &str) -> Result<Vec<String>, StoreError>;
    /// Records that the group of `generation` at `epoch` already reflects
    /// `roster_version` (no commit needed): sets `group_roster_version` to
    /// it (never decreasing) if the group is there and `roster_version` is
    /// not ahead of the current one; returns the new state.
    /// [`StoreError::WrongGeneration`] / [`StoreError::WrongEpoch`] if the
    /// group is elsewhere, [`StoreError::InvalidRosterVersion`] if
    /// `roster_version` is in the future, [`StoreError::NoSuchConversation`].
    async fn mark_reconciled(
        &self,
        conversation_id: &str,
        generation: u64,
        epoch: u64,
        roster_version: u64,
    ) -> Result<MlsState, StoreError>;
    /// Restarts the group of `generation`, broken at `epoch` (> 0): the
    /// next generation at epoch 0 with `group_roster_version` 0, so that the
    /// next commit creates a new group of the whole roster. Atomic with
    /// [`Store::append`]: no message of the old generation is accepted
    /// after it. [`StoreError::WrongGeneration`] / [`StoreError::WrongEpoch`]
    /// if the group is elsewhere (or at epoch 0),
    /// [`StoreError::NoSuchConversation`]. Returns the new state.
    async fn reset_mls_group(
        &self,
        conversation_id: &str,
        generation: u64,
        epoch: u64,
    ) -> Result<MlsState, StoreError>;
    /// The latest Welcome stored for this device in this conversation: the
    /// seq of its commit and the Welcome's bytes.
    async fn welcome_for(
        &self,
        device_id: &str,
        conversation_id: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    // ---- lifecycle ----

    /// Finishes queued writes and releases the backend (files, connections).
    /// Later calls fail with [`StoreError::Closed`]. Idempotent.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    // ---- push ----

    /// Sets (`Some`) or clears (`None`) where the device is woken while it
    /// is not connected (a Web Push endpoint; the caller validates it).
    /// [`StoreError::NoSuchDevice`] for an unknown or revoked device.
    /// Revoking the device or deleting its account deletes it.
    async fn set_push_endpoint(
        &self,
        device_id: &str,
        endpoint: Option<String>,
    ) -> Result<(), StoreError>;
    /// The device's push endpoint; `None` if it set none, or for an
    /// unknown or revoked device.
    async fn push_endpoint(&self, device_id: &str) -> Result<Option<String>, StoreError>;

    // ---- attachments ----

    /// Stores an attachment's description, with no chunk yet
    /// (`received_chunks` is taken as 0). [`StoreError::AttachmentExists`]
    /// if the id is taken, [`StoreError::NoSuchConversation`].
    async fn create_attachment(&self, attachment: Attachment) -> Result<(), StoreError>;
    /// The attachment, with the chunks stored so far; `None` if unknown or
    /// expired at `now_ms`.
    async fn attachment(
        &self,
        id: &[u8],
        now_ms: UnixMillis,
    ) -> Result<Option<Attachment>, StoreError>;
    /// Stores chunk `index` durably and records that every chunk up to it
    /// is stored; returns the attachment as it now stands. Chunks go in
    /// order: `index` may be at most `received_chunks` (storing one again
    /// is allowed: a resumed upload), and must have the length
    /// [`Attachment::chunk_len`] gives. [`StoreError::InvalidChunk`]
    /// otherwise, [`StoreError::NoSuchAttachment`] for an unknown id. The
    /// chunk expires with the attachment.
    async fn put_attachment_chunk(
        &self,
        id: &[u8],
        index: u32,
        data: Vec<u8>,
    ) -> Result<Attachment, StoreError>;
    /// Chunk `index` of the attachment, if stored. The caller checks the
    /// attachment (its expiry, who may read it) first.
    async fn attachment_chunk(&self, id: &[u8], index: u32) -> Result<Option<Vec<u8>>, StoreError>;
    /// Deletes every attachment expired at `now_ms`, chunks and all;
    /// returns how many. Backends whose rows expire by themselves (CQL's
    /// TTL) may have nothing to do.
    async fn purge_expired_attachments(&self, now_ms: UnixMillis) -> Result<u64, StoreError>;

    // ---- expiry ----

    /// Deletes every message expired at `now_ms`; returns how many. Reads
    /// already hide expired messages; this frees their space.
    async fn purge_expired(&self, now_ms: UnixMillis) -> Result<u64, StoreError>;
}
