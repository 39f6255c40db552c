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

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// Kind of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationKind {
    /// Two accounts talking.
    Direct,
    /// Every member may post.
    Group,
    /// Only publishers, admins and owners post; members read.
    Channel,
}

/// A member's role in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads; posts in groups and direct conversations, not in channels.
    Member,
    /// Posts in channels.
    Publisher,
    /// Manages members.
    Admin,
    /// Owns the conversation.
    Owner,
}

impl Role {
    /// Whether this role may post in a conversation of `kind`.
    pub fn may_post(self, kind: ConversationKind) -> bool {
        match kind {
            ConversationKind::Direct | ConversationKind::Group => true,
            ConversationKind::Channel => self >= Role::Publisher,
        }
    }
}

/// An account: a person (or a bot) owning up to N devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Unique id.
    pub id: String,
    /// Name shown to people; may be empty.
    pub display_name: String,
    /// Creation time.
    pub created_at_ms: UnixMillis,
}

/// A device enrolled for an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Unique id (globally, not only within the account).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Ed25519 public key, 32 bytes.
    pub public_key: Vec<u8>,
    /// A revoked device may not authenticate.
    pub revoked: bool,
    /// Enrollment time.
    pub created_at_ms: UnixMillis,
}

/// A conversation: direct, group or channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Unique id.
    pub id: String,
    /// Kind.
    pub kind: ConversationKind,
    /// Title; may be empty. Stored in the clear: the directory is server-side
    /// metadata the city manages (a group's name, not a message).
    pub title: String,
    /// Retention of messages submitted without an expiry, in seconds; 0 keeps
    /// them until they are deleted with the conversation.
    pub default_ttl_seconds: u64,
    /// Creation time.
    pub created_at_ms: UnixMillis,
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member account.
    pub account_id: String,
    /// Its role.
    pub role: Role,
}

/// A message to append to a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Conversation.
    pub conversation_id: String,
    /// Client-chosen idempotency key, unique within the conversation.
    pub message_id: Vec<u8>,
    /// Sending account.
    pub sender_account_id: String,
    /// Sending device.
    pub sender_device_id: String,
    /// Server time of acceptance.
    pub server_time_ms: UnixMillis,
    /// Expiry; `None` keeps the message until its conversation is deleted.
    pub expires_at_ms: Option<UnixMillis>,
    /// Opaque end-to-end encrypted payload.
    pub ciphertext: Vec<u8>,
    /// The MLS condition the message is accepted under; `None` for an opaque
    /// envelope, accepted only while the conversation has no MLS group
    /// (epoch 0). See [`MlsCheck`].
    pub mls: Option<MlsCheck>,
}

impl NewMessage {
    /// The message as the store keeps it once `append` answered `appended`
    /// (for a duplicate: the seq and time of its first acceptance).
    pub fn stored(self, appended: &Appended) -> StoredMessage {
        StoredMessage {
            conversation_id: self.conversation_id,
            seq: appended.seq,
            message_id: self.message_id,
            sender_account_id: self.sender_account_id,
            sender_device_id: self.sender_device_id,
            server_time_ms: appended.server_time_ms,
            expires_at_ms: self.expires_at_ms,
            ciphertext: self.ciphertext,
        }
    }
}

/// The MLS condition of an appended message, checked atomically with the
/// seq claim. A resend of an already accepted message id is a duplicate
/// before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlsCheck {
    /// Application message of `epoch`: accepted only if `epoch` is the
    /// conversation's current epoch and `group_roster_version ==
    /// roster_version`; else [`StoreError::WrongEpoch`] /
    /// [`StoreError::MembershipPending`].
    Application {
        /// The MLS epoch the message was encrypted in.
        epoch: u64,
    },
    /// Commit from `epoch` to `epoch + 1` that reflects `roster_version`:
    /// accepted only if the group is at `epoch` (the first commit of an epoch
    /// wins; else [`StoreError::WrongEpoch`]) and `roster_version <=` the
    /// current roster version (else [`StoreError::InvalidRosterVersion`]).
    /// On success, atomically with the seq: epoch += 1,
    /// `group_roster_version = roster_version` (never decreasing), and the
    /// Welcome stored for its devices.
    Commit {
        /// The epoch the commit starts from.
        epoch: u64,
        /// The roster version the committed group reflects.
        roster_version: u64,
        /// The Welcome for the devices the commit adds, if it adds any.
        welcome: Option<Welcome>,
    },
}

/// An MLS Welcome attached to a commit, for the devices it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The MlsMessage-wrapped Welcome, opaque to the store.
    pub bytes: Vec<u8>,
    /// The devices it welcomes.
    pub device_ids: Vec<String>,
}

/// How many key packages a device has on the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyPackageCount {
    /// One-time packages not yet handed out.
    pub available: u32,
    /// Whether the device has a last-resort package (is "ready").
    pub last_resort: bool,
}

/// The result of [`Store::upload_key_packages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackageUpload {
    /// The device's packages after the upload.
    pub count: KeyPackageCount,
    /// The device had no last-resort package before and has one now: it
    /// became addable, and the roster version of every conversation of its
    /// account was bumped.
    pub became_ready: bool,
}

/// The MLS state of a conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MlsState {
    /// Epoch of the accepted MLS group; 0 = no group yet.
    pub epoch: u64,
    /// Bumped by every change of who should be in the group.
    pub roster_version: u64,
    /// The roster version the group reflects.
    pub group_roster_version: u64,
}

/// A message as stored, with its place in the conversation's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Conversation.
    pub conversation_id: String,
    /// Position in the conversation, from 1, without gaps.
    pub seq: u64,
    /// Client-chosen idempotency key.
    pub message_id: Vec<u8>,
    /// Sending account.
    pub sender_account_id: String,
    /// Sending device.
    pub sender_device_id: String,
    /// Server time of acceptance.
    pub server_time_ms: UnixMillis,
    /// Expiry, if any.
    pub expires_at_ms: Option<UnixMillis>,
    /// Opaque payload.
    pub ciphertext: Vec<u8>,
}

/// The result of [`Store::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's seq (the first one's, for a duplicate).
    pub seq: u64,
    /// Server time of the first acceptance.
    pub server_time_ms: UnixMillis,
    /// True when the message id was already in the log: nothing was written.
    pub duplicate: bool,
}

/// What [`Store::delete_account`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountPurge {
    /// Devices removed.
    pub devices: u32,
    /// Conversation memberships removed.
    pub memberships: u32,
    /// Cursors removed.
    pub cursors: u32,
}

/// What an operator manages about an account beyond [`Account`]: its tags
/// (the cohort of a bulk import, e.g. `election-2026`) and whether it is
/// suspended (its devices may not connect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountState {
    /// Tags, sorted and without duplicates.
    pub tags: Vec<String>,
    /// A suspended account's devices are refused at authentication.
    pub suspended: bool,
}

/// One page of a listing, in the backend's listing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Where the next page starts (pass it as `after`); `None` on the last
    /// page.
    pub next: Option<String>,
}

/// Who may start a direct (1:1) conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirectChats {
    /// Any two accounts.
    Everyone,
    /// Only two accounts that share a group or channel.
    SharedGroup,
    /// Nobody: no direct conversations, and existing ones are read-only.
    Nobody,
}

/// Security policy of the organisation or of one conversation. `None` means
/// "not set here": a conversation's policy falls back to the organisation's,
/// the organisation's to the relay's configured limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Expiry of messages sent without one, in seconds (self-destruct).
    pub default_expiry_seconds: Option<u64>,
    /// Longest expiry a message may ask for, in seconds.
    pub max_expiry_seconds: Option<u64>,
    /// Devices one account may enroll (organisation scope only).
    pub max_devices: Option<u32>,
    /// Largest message or attachment chunk ciphertext, in bytes.
    pub max_attachment_bytes: Option<u64>,
    /// Who may start direct conversations (organisation scope only).
    pub direct_chats: Option<DirectChats>,
}

/// Where a [`Policy`] applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicyScope {
    /// The whole organisation.
    Org,
    /// One group or channel, overriding the organisation.
    Conversation(String),
}

/// A one-time enrollment code, as stored: only its hash, never the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentCode {
    /// SHA-256 of the code.
    pub code_hash: Vec<u8>,
    /// The account a device enrolled with it belongs to.
    pub account_id: String,
    /// The account's creation time: a code outlives neither its account nor
    /// a later account of the same id.
    pub account_created_at_ms: UnixMillis,
    /// Issue time.
    pub created_at_ms: UnixMillis,
    /// The code is void from this time on.
    pub expires_at_ms: UnixMillis,
}

impl EnrollmentCode {
    /// Whether a code issued for an account created at
    /// `account_created_at_ms`, void from `expires_at_ms`, still enrols a
    /// device at `now_ms`, given the account of that id as it is now: the
    /// code has not expired and the account is the one it was issued for (a
    /// code outlives neither its account nor a later account of the same id).
    /// Both backends decide with this.
    pub fn redeemable(
        expires_at_ms: UnixMillis,
        account_created_at_ms: UnixMillis,
        account: Option<&Account>,
        now_ms: UnixMillis,
    ) -> bool {
        expires_at_ms > now_ms && account.is_some_and(|a| a.created_at_ms == account_created_at_ms)
    }
}

/// Sorted, deduplicated tags: how both backends keep an account's tags.
pub(crate) fn normalize_tags(mut tags: Vec<String>) -> Vec<String> {
    tags.sort();
    tags.dedup();
    tags
}

/// One entry of the audit log: who did what, when, with what outcome. Ids
/// and actions only, never message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at_ms: UnixMillis,
    /// Unique id (orders entries of the same millisecond).
    pub id: String,
    /// The operator's name.
    pub operator: String,
    /// The API call, e.g. `DeleteAccount`.
    pub action: String,
    /// What it acted on (an account, device or conversation id, a cohort).
    pub target: String,
    /// `ok` or the gRPC status code name.
    pub outcome: String,
    /// Counts and parameters (never message content).
    pub detail: String,
}

/// Errors of the store. Each variant is one specific reason.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An account with this id exists already.
    #[error("account {0:?} already exists")]
    AccountExists(String),
    /// No account with this id.
    #[error("no account {0:?}")]
    NoSuchAccount(String),
    /// A device with this id exists already.
    #[error("device {0:?} already exists")]
    DeviceExists(String),
    /// No device with this id.
    #[error("no device {0:?}")]
    NoSuchDevice(String),
    /// The account has reached its device limit.
    #[error("account {account:?} already has {limit} devices, the limit")]
    DeviceLimit {
        /// The account.
        account: String,
        /// The limit.
        limit: u32,
    },
    /// A conversation with this id exists already.
    #[error("conversation {0:?} already exists")]
    ConversationExists(String),
    /// No conversation with this id.
    #[error("no conversation {0:?}")]
    NoSuchConversation(String),
    /// A direct conversation must have exactly two members.
    #[error("a direct conversation has exactly two members, not {0}")]
    DirectNeedsTwo(usize),
    /// The enrollment code is unknown, used, expired, or its account is gone.
    #[error("the enrollment code is not valid (unknown, used or expired)")]
    NoSuchCode,
    /// A record failed to decode: the data on disk is damaged or from an
    /// incompatible version.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// Where.
        table: &'static str,
        /// What.
        detail: String,
    },
    /// The backend failed (I/O, database).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
    /// A backend's configuration is invalid.
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    /// The MLS message is not for the conversation's current epoch, or a
    /// commit lost the race for its epoch.
    #[error("the MLS group of the conversation is at epoch {current}")]
    WrongEpoch {
        /// The conversation's current epoch.
        current: u64,
    },
    /// The group does not reflect the conversation's roster yet: a member
    /// must commit the changes before application messages are accepted.
    #[error(
        "the MLS group does not reflect roster version {roster_version} yet: commit the membership changes first"
    )]
    MembershipPending {
        /// The conversation's current roster version.
        roster_version: u64,
    },
    /// A commit or reconciliation claims a roster version the conversation
    /// has not reached.
    #[error("roster version is ahead of the conversation's current roster version {current}")]
    InvalidRosterVersion {
        /// The conversation's current roster version.
        current: u64,
    },
    /// The conversation has an MLS group: only MLS messages are accepted.
    #[error("the conversation has an MLS group: only MLS messages are accepted")]
    MlsRequired,
    /// The device would hold more one-time key packages than allowed.
    #[error("a device may hold at most {limit} one-time key packages")]
    KeyPackageLimit {
        /// The most one-time packages a device may hold.
        limit: u32,
    },
}

/// The state of a conversation at `state` after accepting a message under
/// `check`, or why the message is refused (see [`MlsCheck`]).
pub(crate) fn admit_mls(check: Option<&MlsCheck>, state: MlsState) -> Result<MlsState, StoreError> {
    match check {
        None if state.epoch > 0 => Err(StoreError::MlsRequired),
        None => Ok(state),
        Some(MlsCheck::Application { epoch }) => {
            if *epoch != state.epoch {
                Err(StoreError::WrongEpoch {
                    current: state.epoch,
                })
            } else if state.group_roster_version != state.roster_version {
                Err(StoreError::MembershipPending {
                    roster_version: state.roster_version,
                })
            } else {
                Ok(state)
            }
        }
        Some(MlsCheck::Commit {
            epoch,
            roster_version,
            ..
        }) => {
            if *epoch != state.epoch {
                return Err(StoreError::WrongEpoch {
                    current: state.epoch,
                });
            }
            if *roster_version > state.roster_version {
                return Err(StoreError::InvalidRosterVersion {
                    current: state.roster_version,
                });
            }
            let next = state.epoch.checked_add(1).ok_or(StoreError::Corrupt {
                table: "conversations",
                detail: "the MLS epoch is at its maximum".into(),
            })?;
            Ok(MlsState {
                epoch: next,
                roster_version: state.roster_version,
                group_roster_version: state.group_roster_version.max(*roster_version),
            })
        }
    }
}

/// The state after [`Store::mark_reconciled`] at `epoch` with
/// `roster_version`, or why it is refused.
pub(crate) fn reconcile(
    state: MlsState,
    epoch: u64,
    roster_version: u64,
) -> Result<MlsState, StoreError> {
    if epoch != state.epoch {
        return Err(StoreError::WrongEpoch {
            current: state.epoch,
        });
    }
    if roster_version > state.roster_version {
        return Err(StoreError::InvalidRosterVersion {
            current: state.roster_version,
        });
    }
    Ok(MlsState {
        group_roster_version: state.group_roster_version.max(roster_version),
        ..state
    })
}

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

    /// Appends an entry to the audit log.
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
    /// Records that the group at `epoch` already reflects `roster_version`
    /// (no commit needed): sets `group_roster_version` to it (never
    /// decreasing) if the group is at `epoch` and `roster_version` is not
    /// ahead of the current one; returns the new state.
    /// [`StoreError::WrongEpoch`] if the group is at another epoch,
    /// [`StoreError::InvalidRosterVersion`] if `roster_version` is in the
    /// future, [`StoreError::NoSuchConversation`].
    async fn mark_reconciled(
        &self,
        conversation_id: &str,
        epoch: u64,
        roster_version: u64,
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

    // ---- expiry ----

    /// Deletes every message expired at `now_ms`; returns how many. Reads
    /// already hide expired messages; this frees their space.
    async fn purge_expired(&self, now_ms: UnixMillis) -> Result<u64, StoreError>;
}
