//! The embedded backend: one redb file on local disk, with group commit.
//!
//! # Files
//! [`EmbeddedStore::open`] takes a *data directory*. It creates the directory
//! if needed and keeps everything in one file in it, `herold.redb`
//! ([`DB_FILE_NAME`]). A redb file may be open in one process at a time: a
//! second open of the same directory fails with [`StoreError::Backend`].
//!
//! # Tables
//! Records are protobuf messages (prost), so fields can be added later
//! without a migration; ids live in the keys, not repeated in the records.
//! Keys are redb tuples, which sort element by element, so a prefix of a
//! tuple key is a contiguous range: per-account and per-conversation
//! listings are range scans.
//!
//! | table             | key                                  | value                      |
//! |-------------------|--------------------------------------|----------------------------|
//! | `meta`            | `&str` name                          | `u64` (`schema_version`)   |
//! | `accounts`        | account id                           | `AccountRec`               |
//! | `devices`         | device id                            | `DeviceRec`                |
//! | `account_devices` | (account id, device id)              | `()`                       |
//! | `conversations`   | conversation id                      | `ConversationRec`          |
//! | `members`         | (conversation id, account id)        | role `u8` (1 member .. 4 owner) |
//! | `account_convs`   | (account id, conversation id)        | `()`                       |
//! | `messages`        | (conversation id, seq)               | `MessageRec`               |
//! | `heads`           | conversation id                      | last seq given out (`u64`) |
//! | `message_ids`     | (conversation id, message id bytes)  | seq (`u64`)                |
//! | `expiry`          | (expires at ms, conversation id, seq) | `()`                      |
//! | `cursors`         | (device id, conversation id)         | seq (`u64`)                |
//! | `account_state`   | account id                           | `AccountStateRec` (tags, suspended) |
//! | `accounts_by_tag` | (tag, account id)                    | `()`                       |
//! | `policies`        | `org` or `c:<conversation id>`       | `PolicyRec`                |
//! | `enroll_codes`    | SHA-256 of the code                  | `CodeRec`                  |
//! | `audit`           | (at ms, entry id)                    | `AuditRec`                 |
//! | `mls_state`       | conversation id                      | (epoch, roster version, group roster version) |
//! | `key_packages`    | (device id, upload index)            | one-time key package       |
//! | `last_resort_packages` | device id                       | last-resort key package    |
//! | `welcomes`        | (conversation id, seq of the commit) | Welcome bytes              |
//! | `device_welcomes` | (device id, conversation id)         | seq of its latest Welcome  |
//!
//! A conversation's archived flag is field 5 of `ConversationRec`. The
//! admin API's five tables (`account_state` to `audit`) and the five MLS
//! tables after them are created on open, so a file of the first layout
//! opens unchanged; a conversation without a `mls_state` row is at
//! (0, 0, 0).
//!
//! # MLS
//! Everything MLS needs to be atomic is one operation on the writer, so one
//! transaction: `append` reads the conversation's `mls_state` after its
//! duplicate check, refuses (before writing anything) a message whose
//! [`MlsCheck`] fails, and writes a commit's epoch advance, its Welcome and
//! the Welcome index with the message and its seq. A roster bump is a
//! read-modify-write of `mls_state` in the transaction of its trigger
//! (membership change, revocation, account deletion, a device's first
//! last-resort package), so bumps never collapse. A claim takes the first
//! `key_packages` entry of the device and deletes it in the same operation.
//!
//! `members` and `account_convs` are the two directions of one relation, and
//! `account_devices` indexes `devices` by account; a write keeps them in step
//! in one transaction. `heads` is kept apart from `messages` so that a
//! conversation's head survives the purge of its messages: sequence numbers
//! are never given out twice.
//!
//! # Group commit
//! Every mutation runs on one dedicated writer thread, which owns all write
//! transactions. A mutating method sends its operation over a channel and
//! awaits a oneshot reply. The writer blocks for the first operation, then
//! takes every operation already queued (up to [`EmbeddedConfig::max_batch`]),
//! applies them in order in *one* write transaction, commits it once with
//! [`redb::Durability::Immediate`] (one fsync for the whole batch) and only
//! then replies to each. So a method returns only once its effect is durable,
//! and concurrent writers share the cost of an fsync.
//!
//! Because one thread applies all writes, in order, an operation sees the
//! effects of the operations before it in its batch: `append` reads the
//! conversation's head (and MLS state) and writes head + 1, and two appends
//! of the same conversation (or of the same message id, or two commits of
//! one epoch) in one batch are ordered correctly.
//!
//! Contract of an operation within a batch:
//! - It validates before it mutates. A *logical* error (an id taken or
//!   unknown, a device limit, ...) is returned before anything was written,
//!   so it is that operation's answer and the batch goes on.
//! - A [`StoreError::Corrupt`] record met by one operation aborts the
//!   transaction (the operation may have written already); that operation
//!   fails with it, and the rest of the batch is applied again, without it,
//!   in a fresh transaction.
//! - A [`StoreError::Backend`] failure (I/O, a failed commit) fails the whole
//!   batch: every operation in it gets [`StoreError::Backend`], and none took
//!   effect.
//!
//! [`Store::purge_expired`] goes through the writer too, in chunks of
//! [`EmbeddedConfig::purge_chunk`] expired messages, one operation each, so a
//! large purge never builds one giant transaction nor holds up other writes
//! for long.
//!
//! # Reads
//! Reads run in redb read transactions (consistent snapshots) on
//! [`tokio::task::spawn_blocking`], concurrently with the writer and each
//! other. They must be called from within a Tokio runtime. Reading an
//! unknown id is not an error: it gives `None`, an empty list or head 0.
//!
//! # Shutdown
//! [`EmbeddedStore`] is a cheap handle ([`Clone`]; an [`Arc`] inside). When
//! the last handle is dropped, or on [`EmbeddedStore::close`], the writer
//! applies the operations already queued, then exits and the file is
//! released; from then on every call returns [`StoreError::Closed`]. Dropping
//! the last handle waits (blocking) for the writer to finish its current
//! batch. Should the writer thread die (a panic inside redb), the operations
//! of its batch and every later write fail with [`StoreError::Closed`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use prost::Message as _;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    Value, WriteTransaction,
};
use tokio::sync::oneshot;

use crate::{
    Account, AccountPurge, AccountState, Appended, AuditEntry, Conversation, ConversationKind,
    Device, DirectChats, EnrollmentCode, KeyPackageCount, KeyPackageUpload, Member, MlsCheck,
    MlsState, NewMessage, Page, Policy, PolicyScope, Role, Store, StoreError, StoredMessage,
    UnixMillis, admit_mls, normalize_tags, reconcile,
};

#[cfg(test)]
mod tests;

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "herold.redb";

/// Version of the table layout written to `meta`; a file of another version
/// is refused with [`StoreError::Corrupt`].
const SCHEMA_VERSION: u64 = 1;
const SCHEMA_VERSION_KEY: &str = "schema_version";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const ACCOUNT_DEVICES: TableDefinition<(&str, &str), ()> = TableDefinition::new("account_devices");
const CONVERSATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
const MEMBERS: TableDefinition<(&str, &str), u8> = TableDefinition::new("members");
const ACCOUNT_CONVS: TableDefinition<(&str, &str), ()> = TableDefinition::new("account_convs");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const HEADS: TableDefinition<&str, u64> = TableDefinition::new("heads");
const MESSAGE_IDS: TableDefinition<(&str, &[u8]), u64> = TableDefinition::new("message_ids");
const EXPIRY: TableDefinition<(i64, &str, u64), ()> = TableDefinition::new("expiry");
const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("cursors");
const ACCOUNT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("account_state");
const ACCOUNTS_BY_TAG: TableDefinition<(&str, &str), ()> = TableDefinition::new("accounts_by_tag");
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const ENROLL_CODES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("enroll_codes");
const AUDIT: TableDefinition<(i64, &str), &[u8]> = TableDefinition::new("audit");
const MLS_STATE: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("mls_state");
const KEY_PACKAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("key_packages");
const LAST_RESORT: TableDefinition<&str, &[u8]> = TableDefinition::new("last_resort_packages");
const WELCOMES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("welcomes");
const DEVICE_WELCOMES: TableDefinition<(&str, &str), u64> = TableDefinition::new("device_welcomes");

// ---------------------------------------------------------------------------
// configuration

/// Configuration of the embedded backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Most operations applied in one write transaction (one fsync).
    /// Default 512.
    pub max_batch: usize,
    /// Most expired messages deleted in one write operation of
    /// [`Store::purge_expired`]. Default 10 000.
    pub purge_chunk: usize,
    /// Memory redb may use to cache pages, in bytes. Default 256 MiB.
    pub cache_size_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            purge_chunk: 10_000,
            cache_size_bytes: 256 * 1024 * 1024,
        }
    }
}

impl EmbeddedConfig {
    /// Checks the values: `max_batch` and `purge_chunk` must be at least 1.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.max_batch == 0 {
            return Err(StoreError::InvalidConfig(
                "max_batch must be at least 1".into(),
            ));
        }
        if self.purge_chunk == 0 {
            return Err(StoreError::InvalidConfig(
                "purge_chunk must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Counters of the writer, for metrics and tests. See
/// [`EmbeddedStore::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Operations handed to the writer.
    pub submitted: u64,
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Operations applied in committed transactions, including those that
    /// answered with a logical error.
    pub ops_committed: u64,
    /// Batches that failed as a whole on a backend error.
    pub failed_batches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    commits: AtomicU64,
    ops_committed: AtomicU64,
    failed_batches: AtomicU64,
}

// ---------------------------------------------------------------------------
// records

#[derive(Clone, PartialEq, prost::Message)]
struct AccountRec {
    #[prost(string, tag = "1")]
    display_name: String,
    #[prost(int64, tag = "2")]
    created_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeviceRec {
    #[prost(string, tag = "1")]
    account_id: String,
    #[prost(bytes = "vec", tag = "2")]
    public_key: Vec<u8>,
    #[prost(bool, tag = "3")]
    revoked: bool,
    #[prost(int64, tag = "4")]
    created_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConversationRec {
    /// 1 direct, 2 group, 3 channel.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(string, tag = "2")]
    title: String,
    #[prost(uint64, tag = "3")]
    default_ttl_seconds: u64,
    #[prost(int64, tag = "4")]
    created_at_ms: i64,
    #[prost(bool, tag = "5")]
    archived: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AccountStateRec {
    #[prost(string, repeated, tag = "1")]
    tags: Vec<String>,
    #[prost(bool, tag = "2")]
    suspended: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PolicyRec {
    #[prost(uint64, optional, tag = "1")]
    default_expiry_seconds: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    max_expiry_seconds: Option<u64>,
    #[prost(uint32, optional, tag = "3")]
    max_devices: Option<u32>,
    #[prost(uint64, optional, tag = "4")]
    max_attachment_bytes: Option<u64>,
    /// 1 everyone, 2 shared group, 3 nobody.
    #[prost(uint32, optional, tag = "5")]
    direct_chats: Option<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CodeRec {
    #[prost(string, tag = "1")]
    account_id: String,
    #[prost(int64, tag = "2")]
    account_created_at_ms: i64,
    #[prost(int64, tag = "3")]
    created_at_ms: i64,
    #[prost(int64, tag = "4")]
    expires_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AuditRec {
    #[prost(string, tag = "1")]
    operator: String,
    #[prost(string, tag = "2")]
    action: String,
    #[prost(string, tag = "3")]
    target: String,
    #[prost(string, tag = "4")]
    outcome: String,
    #[prost(string, tag = "5")]
    detail: String,
}

fn policy_key(scope: &PolicyScope) -> String {
    match scope {
        PolicyScope::Org => "org".to_owned(),
        PolicyScope::Conversation(id) => format!("c:{id}"),
    }
}

fn policy_rec(p: &Policy) -> PolicyRec {
    PolicyRec {
        default_expiry_seconds: p.default_expiry_seconds,
        max_expiry_seconds: p.max_expiry_seconds,
        max_devices: p.max_devices,
        max_attachment_bytes: p.max_attachment_bytes,
        direct_chats: p.direct_chats.map(|d| match d {
            DirectChats::Everyone => 1,
            DirectChats::SharedGroup => 2,
            DirectChats::Nobody => 3,
        }),
    }
}

fn policy_from(r: PolicyRec) -> Result<Policy, StoreError> {
    Ok(Policy {
        default_expiry_seconds: r.default_expiry_seconds,
        max_expiry_seconds: r.max_expiry_seconds,
        max_devices: r.max_devices,
        max_attachment_bytes: r.max_attachment_bytes,
        direct_chats: match r.direct_chats {
            None => None,
            Some(1) => Some(DirectChats::Everyone),
            Some(2) => Some(DirectChats::SharedGroup),
            Some(3) => Some(DirectChats::Nobody),
            Some(other) => {
                return Err(StoreError::Corrupt {
                    table: "policies",
                    detail: format!("unknown direct_chats {other}"),
                });
            }
        },
    })
}

#[derive(Clone, PartialEq, prost::Message)]
struct MessageRec {
    #[prost(bytes = "vec", tag = "1")]
    message_id: Vec<u8>,
    #[prost(string, tag = "2")]
    sender_account_id: String,
    #[prost(string, tag = "3")]
    sender_device_id: String,
    #[prost(int64, tag = "4")]
    server_time_ms: i64,
    #[prost(int64, optional, tag = "5")]
    expires_at_ms: Option<i64>,
    #[prost(bytes = "vec", tag = "6")]
    ciphertext: Vec<u8>,
}

fn decode<M: prost::Message + Default>(table: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

fn kind_code(kind: ConversationKind) -> u32 {
    match kind {
        ConversationKind::Direct => 1,
        ConversationKind::Group => 2,
        ConversationKind::Channel => 3,
    }
}

fn kind_from_code(code: u32) -> Result<ConversationKind, StoreError> {
    match code {
        1 => Ok(ConversationKind::Direct),
        2 => Ok(ConversationKind::Group),
        3 => Ok(ConversationKind::Channel),
        other => Err(StoreError::Corrupt {
            table: "conversations",
            detail: format!("unknown conversation kind {other}"),
        }),
    }
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Member => 1,
        Role::Publisher => 2,
        Role::Admin => 3,
        Role::Owner => 4,
    }
}

fn role_from_code(code: u8) -> Result<Role, StoreError> {
    match code {
        1 => Ok(Role::Member),
        2 => Ok(Role::Publisher),
        3 => Ok(Role::Admin),
        4 => Ok(Role::Owner),
        other => Err(StoreError::Corrupt {
            table: "members",
            detail: format!("unknown role {other}"),
        }),
    }
}

fn account_from(id: &str, rec: AccountRec) -> Account {
    Account {
        id: id.to_owned(),
        display_name: rec.display_name,
        created_at_ms: rec.created_at_ms,
    }
}

fn device_from(id: &str, rec: DeviceRec) -> Device {
    Device {
        id: id.to_owned(),
        account_id: rec.account_id,
        public_key: rec.public_key,
        revoked: rec.revoked,
        created_at_ms: rec.created_at_ms,
    }
}

fn device_rec(device: &Device) -> DeviceRec {
    DeviceRec {
        account_id: device.account_id.clone(),
        public_key: device.public_key.clone(),
        revoked: device.revoked,
        created_at_ms: device.created_at_ms,
    }
}

fn conversation_from(id: &str, rec: ConversationRec) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        id: id.to_owned(),
        kind: kind_from_code(rec.kind)?,
        title: rec.title,
        default_ttl_seconds: rec.default_ttl_seconds,
        created_at_ms: rec.created_at_ms,
    })
}

fn message_from(conversation_id: &str, seq: u64, rec: MessageRec) -> StoredMessage {
    StoredMessage {
        conversation_id: conversation_id.to_owned(),
        seq,
        message_id: rec.message_id,
        sender_account_id: rec.sender_account_id,
        sender_device_id: rec.sender_device_id,
        server_time_ms: rec.server_time_ms,
        expires_at_ms: rec.expires_at_ms,
        ciphertext: rec.ciphertext,
    }
}

// ---------------------------------------------------------------------------
// errors

/// Maps any redb (or other foreign) error to [`StoreError::Backend`].
trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T, E: fmt::Display> OrBackend<T> for Result<T, E> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Backend(e.to_string()))
    }
}

/// Whether an error is an operation's own answer, returned before it wrote
/// anything, as opposed to a failure of the transaction.
fn is_logical(error: &StoreError) -> bool {
    match error {
        StoreError::AccountExists(_)
        | StoreError::NoSuchAccount(_)
        | StoreError::DeviceExists(_)
        | StoreError::NoSuchDevice(_)
        | StoreError::DeviceLimit { .. }
        | StoreError::ConversationExists(_)
        | StoreError::NoSuchConversation(_)
        | StoreError::DirectNeedsTwo(_)
        | StoreError::NoSuchCode
        | StoreError::InvalidConfig(_)
        | StoreError::WrongEpoch { .. }
        | StoreError::MembershipPending { .. }
        | StoreError::InvalidRosterVersion { .. }
        | StoreError::MlsRequired
        | StoreError::KeyPackageLimit { .. } => true,
        StoreError::Corrupt { .. } | StoreError::Backend(_) | StoreError::Closed => false,
    }
}

// ---------------------------------------------------------------------------
// shared read helpers (work on read and write transactions alike)

fn exists<V: Value + 'static>(
    table: &impl ReadableTable<&'static str, V>,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(table.get(id).or_backend()?.is_some())
}

fn load_account(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Account>, StoreError> {
    match table.get(id).or_backend()? {
        None => Ok(None),
        Some(guard) => Ok(Some(account_from(id, decode("accounts", guard.value())?))),
    }
}

fn load_device(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Device>, StoreError> {
    match table.get(id).or_backend()? {
        None => Ok(None),
        Some(guard) => Ok(Some(device_from(id, decode("devices", guard.value())?))),
    }
}

fn load_conversation(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    match table.get(id).or_backend()? {
        None => Ok(None),
        Some(guard) => Ok(Some(conversation_from(
            id,
            decode("conversations", guard.value())?,
        )?)),
    }
}

fn load_head(table: &impl ReadableTable<&'static str, u64>, id: &str) -> Result<u64, StoreError> {
    Ok(table.get(id).or_backend()?.map_or(0, |g| g.value()))
}

/// A conversation's MLS state; all zero until the first change.
fn load_mls(
    table: &impl ReadableTable<&'static str, (u64, u64, u64)>,
    id: &str,
) -> Result<MlsState, StoreError> {
    Ok(table
        .get(id)
        .or_backend()?
        .map_or_else(MlsState::default, |g| {
            let (epoch, roster_version, group_roster_version) = g.value();
            MlsState {
                epoch,
                roster_version,
                group_roster_version,
            }
        }))
}

/// The one-time packages of a device, as (index, bytes), in upload order.
fn scan_key_packages(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    device_id: &str,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for item in table
        .range((device_id, 0)..=(device_id, u64::MAX))
        .or_backend()?
    {
        let (key, value) = item.or_backend()?;
        out.push((key.value().1, value.value().to_vec()));
    }
    Ok(out)
}

fn count_key_packages(
    one_time: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    last_resort: &impl ReadableTable<&'static str, &'static [u8]>,
    device_id: &str,
) -> Result<KeyPackageCount, StoreError> {
    let mut available = 0u32;
    for item in one_time
        .range((device_id, 0)..=(device_id, u64::MAX))
        .or_backend()?
    {
        item.or_backend()?;
        available = available.saturating_add(1);
    }
    Ok(KeyPackageCount {
        available,
        last_resort: exists(last_resort, device_id)?,
    })
}

/// The second elements of the keys `(first, _)`, in order.
fn scan_keys<V: Value + 'static>(
    table: &impl ReadableTable<(&'static str, &'static str), V>,
    first: &str,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for item in table.range((first, "")..).or_backend()? {
        let (key, _) = item.or_backend()?;
        let (a, b) = key.value();
        if a != first {
            break;
        }
        out.push(b.to_owned());
    }
    Ok(out)
}

/// The entries `(first, second) -> u64`, as `(second, value)`, in order.
fn scan_u64(
    table: &impl ReadableTable<(&'static str, &'static str), u64>,
    first: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    for item in table.range((first, "")..).or_backend()? {
        let (key, value) = item.or_backend()?;
        let (a, b) = key.value();
        if a != first {
            break;
        }
        out.push((b.to_owned(), value.value()));
    }
    Ok(out)
}

fn scan_members(
    table: &impl ReadableTable<(&'static str, &'static str), u8>,
    conversation_id: &str,
) -> Result<Vec<Member>, StoreError> {
    let mut out = Vec::new();
    for item in table.range((conversation_id, "")..).or_backend()? {
        let (key, value) = item.or_backend()?;
        let (conv, account) = key.value();
        if conv != conversation_id {
            break;
        }
        out.push(Member {
            account_id: account.to_owned(),
            role: role_from_code(value.value())?,
        });
    }
    Ok(out)
}

/// Deduplicates members by account id; the last role given wins.
fn dedup_members(members: &[Member]) -> BTreeMap<&str, Role> {
    members
        .iter()
        .map(|m| (m.account_id.as_str(), m.role))
        .collect()
}

// ---------------------------------------------------------------------------
// write operations (run on the writer thread)

/// All tables, open in one write transaction.
struct WriteTables<'t> {
    accounts: Table<'t, &'static str, &'static [u8]>,
    devices: Table<'t, &'static str, &'static [u8]>,
    account_devices: Table<'t, (&'static str, &'static str), ()>,
    conversations: Table<'t, &'static str, &'static [u8]>,
    members: Table<'t, (&'static str, &'static str), u8>,
    account_convs: Table<'t, (&'static str, &'static str), ()>,
    messages: Table<'t, (&'static str, u64), &'static [u8]>,
    heads: Table<'t, &'static str, u64>,
    message_ids: Table<'t, (&'static str, &'static [u8]), u64>,
    expiry: Table<'t, (i64, &'static str, u64), ()>,
    cursors: Table<'t, (&'static str, &'static str), u64>,
    account_state: Table<'t, &'static str, &'static [u8]>,
    accounts_by_tag: Table<'t, (&'static str, &'static str), ()>,
    policies: Table<'t, &'static str, &'static [u8]>,
    enroll_codes: Table<'t, &'static [u8], &'static [u8]>,
    audit: Table<'t, (i64, &'static str), &'static [u8]>,
    mls_state: Table<'t, &'static str, (u64, u64, u64)>,
    key_packages: Table<'t, (&'static str, u64), &'static [u8]>,
    last_resort: Table<'t, &'static str, &'static [u8]>,
    welcomes: Table<'t, (&'static str, u64), &'static [u8]>,
    device_welcomes: Table<'t, (&'static str, &'static str), u64>,
}

impl<'t> WriteTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            accounts: txn.open_table(ACCOUNTS).or_backend()?,
            devices: txn.open_table(DEVICES).or_backend()?,
            account_devices: txn.open_table(ACCOUNT_DEVICES).or_backend()?,
            conversations: txn.open_table(CONVERSATIONS).or_backend()?,
            members: txn.open_table(MEMBERS).or_backend()?,
            account_convs: txn.open_table(ACCOUNT_CONVS).or_backend()?,
            messages: txn.open_table(MESSAGES).or_backend()?,
            heads: txn.open_table(HEADS).or_backend()?,
            message_ids: txn.open_table(MESSAGE_IDS).or_backend()?,
            expiry: txn.open_table(EXPIRY).or_backend()?,
            cursors: txn.open_table(CURSORS).or_backend()?,
            account_state: txn.open_table(ACCOUNT_STATE).or_backend()?,
            accounts_by_tag: txn.open_table(ACCOUNTS_BY_TAG).or_backend()?,
            policies: txn.open_table(POLICIES).or_backend()?,
            enroll_codes: txn.open_table(ENROLL_CODES).or_backend()?,
            audit: txn.open_table(AUDIT).or_backend()?,
            mls_state: txn.open_table(MLS_STATE).or_backend()?,
            key_packages: txn.open_table(KEY_PACKAGES).or_backend()?,
            last_resort: txn.open_table(LAST_RESORT).or_backend()?,
            welcomes: txn.open_table(WELCOMES).or_backend()?,
            device_welcomes: txn.open_table(DEVICE_WELCOMES).or_backend()?,
        })
    }
}

fn w_create_account(t: &mut WriteTables<'_>, account: &Account) -> Result<(), StoreError> {
    if exists(&t.accounts, &account.id)? {
        return Err(StoreError::AccountExists(account.id.clone()));
    }
    let rec = AccountRec {
        display_name: account.display_name.clone(),
        created_at_ms: account.created_at_ms,
    };
    t.accounts
        .insert(account.id.as_str(), rec.encode_to_vec().as_slice())
        .or_backend()?;
    Ok(())
}

fn w_delete_account(t: &mut WriteTables<'_>, account_id: &str) -> Result<AccountPurge, StoreError> {
    if !exists(&t.accounts, account_id)? {
        return Err(StoreError::NoSuchAccount(account_id.to_owned()));
    }
    let devices = scan_keys(&t.account_devices, account_id)?;
    let conversations = scan_keys(&t.account_convs, account_id)?;
    let mut purge = AccountPurge::default();
    for device in &devices {
        w_purge_device_mls(t, device)?;
        for conv in scan_keys(&t.cursors, device)? {
            t.cursors
                .remove((device.as_str(), conv.as_str()))
                .or_backend()?;
            purge.cursors = purge.cursors.saturating_add(1);
        }
        t.devices.remove(device.as_str()).or_backend()?;
        t.account_devices
            .remove((account_id, device.as_str()))
            .or_backend()?;
        purge.devices = purge.devices.saturating_add(1);
    }
    for conv in &conversations {
        t.members.remove((conv.as_str(), account_id)).or_backend()?;
        t.account_convs
            .remove((account_id, conv.as_str()))
            .or_backend()?;
        purge.memberships = purge.memberships.saturating_add(1);
        w_bump_roster(t, conv)?;
    }
    if let Some(state) = load_account_state(&t.account_state, account_id)? {
        for tag in &state.tags {
            t.accounts_by_tag
                .remove((tag.as_str(), account_id))
                .or_backend()?;
        }
        t.account_state.remove(account_id).or_backend()?;
    }
    t.accounts.remove(account_id).or_backend()?;
    Ok(purge)
}

fn load_account_state(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<AccountState>, StoreError> {
    match table.get(id).or_backend()? {
        None => Ok(None),
        Some(g) => {
            let rec: AccountStateRec = decode("account_state", g.value())?;
            Ok(Some(AccountState {
                tags: rec.tags,
                suspended: rec.suspended,
            }))
        }
    }
}

fn w_set_account_state(
    t: &mut WriteTables<'_>,
    account_id: &str,
    state: &AccountState,
) -> Result<(), StoreError> {
    if !exists(&t.accounts, account_id)? {
        return Err(StoreError::NoSuchAccount(account_id.to_owned()));
    }
    let old = load_account_state(&t.account_state, account_id)?.unwrap_or_default();
    for tag in old.tags.iter().filter(|t| !state.tags.contains(t)) {
        t.accounts_by_tag
            .remove((tag.as_str(), account_id))
            .or_backend()?;
    }
    for tag in &state.tags {
        t.accounts_by_tag
            .insert((tag.as_str(), account_id), ())
            .or_backend()?;
    }
    let rec = AccountStateRec {
        tags: state.tags.clone(),
        suspended: state.suspended,
    };
    t.account_state
        .insert(account_id, rec.encode_to_vec().as_slice())
        .or_backend()?;
    Ok(())
}

fn w_update_conversation(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    title: Option<&String>,
    archived: Option<bool>,
) -> Result<(), StoreError> {
    let mut rec: ConversationRec = match t.conversations.get(conversation_id).or_backend()? {
        None => return Err(StoreError::NoSuchConversation(conversation_id.to_owned())),
        Some(g) => decode("conversations", g.value())?,
    };
    if let Some(title) = title {
        rec.title = title.clone();
    }
    if let Some(archived) = archived {
        rec.archived = archived;
    }
    t.conversations
        .insert(conversation_id, rec.encode_to_vec().as_slice())
        .or_backend()?;
    Ok(())
}

fn w_purge_codes(t: &mut WriteTables<'_>, now_ms: UnixMillis) -> Result<(), StoreError> {
    let mut expired = Vec::new();
    for item in t.enroll_codes.iter().or_backend()? {
        let (k, v) = item.or_backend()?;
        let rec: CodeRec = decode("enroll_codes", v.value())?;
        if rec.expires_at_ms <= now_ms {
            expired.push(k.value().to_vec());
        }
    }
    for k in expired {
        t.enroll_codes.remove(k.as_slice()).or_backend()?;
    }
    Ok(())
}

fn w_redeem_code(
    t: &mut WriteTables<'_>,
    code_hash: &[u8],
    device: &Device,
    now_ms: UnixMillis,
    max_devices: u32,
) -> Result<Device, StoreError> {
    let rec: CodeRec = match t.enroll_codes.get(code_hash).or_backend()? {
        None => return Err(StoreError::NoSuchCode),
        Some(g) => decode("enroll_codes", g.value())?,
    };
    let account = load_account(&t.accounts, &rec.account_id)?;
    if !EnrollmentCode::redeemable(
        rec.expires_at_ms,
        rec.account_created_at_ms,
        account.as_ref(),
        now_ms,
    ) {
        return Err(StoreError::NoSuchCode);
    }
    let device = Device {
        account_id: rec.account_id,
        ..device.clone()
    };
    w_add_device(t, &device, max_devices)?;
    t.enroll_codes.remove(code_hash).or_backend()?;
    Ok(device)
}

fn w_add_device(
    t: &mut WriteTables<'_>,
    device: &Device,
    max_devices: u32,
) -> Result<(), StoreError> {
    if !exists(&t.accounts, &device.account_id)? {
        return Err(StoreError::NoSuchAccount(device.account_id.clone()));
    }
    if exists(&t.devices, &device.id)? {
        return Err(StoreError::DeviceExists(device.id.clone()));
    }
    let count = scan_keys(&t.account_devices, &device.account_id)?.len();
    if count >= usize::try_from(max_devices).unwrap_or(usize::MAX) {
        return Err(StoreError::DeviceLimit {
            account: device.account_id.clone(),
            limit: max_devices,
        });
    }
    t.devices
        .insert(
            device.id.as_str(),
            device_rec(device).encode_to_vec().as_slice(),
        )
        .or_backend()?;
    t.account_devices
        .insert((device.account_id.as_str(), device.id.as_str()), ())
        .or_backend()?;
    Ok(())
}

fn w_revoke_device(t: &mut WriteTables<'_>, device_id: &str) -> Result<Device, StoreError> {
    let Some(mut device) = load_device(&t.devices, device_id)? else {
        return Err(StoreError::NoSuchDevice(device_id.to_owned()));
    };
    if !device.revoked {
        device.revoked = true;
        t.devices
            .insert(device_id, device_rec(&device).encode_to_vec().as_slice())
            .or_backend()?;
    }
    t.key_packages_purge(device_id)?;
    w_bump_account(t, &device.account_id)?;
    Ok(device)
}

impl WriteTables<'_> {
    /// Deletes a device's one-time and last-resort key packages.
    fn key_packages_purge(&mut self, device_id: &str) -> Result<(), StoreError> {
        for (index, _) in scan_key_packages(&self.key_packages, device_id)? {
            self.key_packages.remove((device_id, index)).or_backend()?;
        }
        self.last_resort.remove(device_id).or_backend()?;
        Ok(())
    }
}

/// Deletes what MLS keeps about a device that goes away: its key packages
/// and its Welcome index.
fn w_purge_device_mls(t: &mut WriteTables<'_>, device_id: &str) -> Result<(), StoreError> {
    t.key_packages_purge(device_id)?;
    for conv in scan_keys(&t.device_welcomes, device_id)? {
        t.device_welcomes
            .remove((device_id, conv.as_str()))
            .or_backend()?;
    }
    Ok(())
}

fn store_mls(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    state: MlsState,
) -> Result<(), StoreError> {
    t.mls_state
        .insert(
            conversation_id,
            (
                state.epoch,
                state.roster_version,
                state.group_roster_version,
            ),
        )
        .or_backend()?;
    Ok(())
}

/// roster_version += 1 for one conversation.
fn w_bump_roster(t: &mut WriteTables<'_>, conversation_id: &str) -> Result<(), StoreError> {
    let mut state = load_mls(&t.mls_state, conversation_id)?;
    state.roster_version = state.roster_version.saturating_add(1);
    store_mls(t, conversation_id, state)
}

/// roster_version += 1 for every conversation of an account.
fn w_bump_account(t: &mut WriteTables<'_>, account_id: &str) -> Result<(), StoreError> {
    for conv in scan_keys(&t.account_convs, account_id)? {
        w_bump_roster(t, &conv)?;
    }
    Ok(())
}

fn w_upload_key_packages(
    t: &mut WriteTables<'_>,
    device_id: &str,
    one_time: &[Vec<u8>],
    last_resort: Option<&[u8]>,
    max_available: u32,
) -> Result<KeyPackageUpload, StoreError> {
    let device = match load_device(&t.devices, device_id)? {
        Some(d) if !d.revoked => d,
        _ => return Err(StoreError::NoSuchDevice(device_id.to_owned())),
    };
    let before = count_key_packages(&t.key_packages, &t.last_resort, device_id)?;
    let available = u64::from(before.available).saturating_add(one_time.len() as u64);
    if available > u64::from(max_available) {
        return Err(StoreError::KeyPackageLimit {
            limit: max_available,
        });
    }
    let mut next = match t
        .key_packages
        .range((device_id, 0)..=(device_id, u64::MAX))
        .or_backend()?
        .next_back()
    {
        Some(item) => item.or_backend()?.0.value().1.saturating_add(1),
        None => 0,
    };
    for package in one_time {
        t.key_packages
            .insert((device_id, next), package.as_slice())
            .or_backend()?;
        next = next.saturating_add(1);
    }
    if let Some(package) = last_resort {
        t.last_resort.insert(device_id, package).or_backend()?;
    }
    let became_ready = !before.last_resort && last_resort.is_some();
    if became_ready {
        w_bump_account(t, &device.account_id)?;
    }
    Ok(KeyPackageUpload {
        count: KeyPackageCount {
            available: u32::try_from(available).unwrap_or(u32::MAX),
            last_resort: before.last_resort || last_resort.is_some(),
        },
        became_ready,
    })
}

fn w_claim_key_package(
    t: &mut WriteTables<'_>,
    device_id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    match load_device(&t.devices, device_id)? {
        Some(d) if !d.revoked => {}
        _ => return Ok(None),
    }
    let first = match t
        .key_packages
        .range((device_id, 0)..=(device_id, u64::MAX))
        .or_backend()?
        .next()
    {
        Some(item) => {
            let (key, value) = item.or_backend()?;
            Some((key.value().1, value.value().to_vec()))
        }
        None => None,
    };
    if let Some((index, package)) = first {
        t.key_packages.remove((device_id, index)).or_backend()?;
        return Ok(Some(package));
    }
    Ok(t.last_resort
        .get(device_id)
        .or_backend()?
        .map(|g| g.value().to_vec()))
}

fn w_mark_reconciled(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    epoch: u64,
    roster_version: u64,
) -> Result<MlsState, StoreError> {
    if !exists(&t.conversations, conversation_id)? {
        return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
    }
    let state = load_mls(&t.mls_state, conversation_id)?;
    let next = reconcile(state, epoch, roster_version)?;
    if next != state {
        store_mls(t, conversation_id, next)?;
    }
    Ok(next)
}

fn w_insert_members(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    members: &BTreeMap<&str, Role>,
) -> Result<(), StoreError> {
    for (&account, &role) in members {
        t.members
            .insert((conversation_id, account), role_code(role))
            .or_backend()?;
        t.account_convs
            .insert((account, conversation_id), ())
            .or_backend()?;
    }
    Ok(())
}

fn check_accounts_exist<'a>(
    t: &WriteTables<'_>,
    accounts: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    for account in accounts {
        if !exists(&t.accounts, account)? {
            return Err(StoreError::NoSuchAccount(account.to_owned()));
        }
    }
    Ok(())
}

fn w_create_conversation(
    t: &mut WriteTables<'_>,
    conversation: &Conversation,
    members: &[Member],
) -> Result<(), StoreError> {
    if exists(&t.conversations, &conversation.id)? {
        return Err(StoreError::ConversationExists(conversation.id.clone()));
    }
    let members = dedup_members(members);
    if conversation.kind == ConversationKind::Direct && members.len() != 2 {
        return Err(StoreError::DirectNeedsTwo(members.len()));
    }
    check_accounts_exist(t, members.keys().copied())?;
    let rec = ConversationRec {
        kind: kind_code(conversation.kind),
        title: conversation.title.clone(),
        default_ttl_seconds: conversation.default_ttl_seconds,
        created_at_ms: conversation.created_at_ms,
        archived: false,
    };
    t.conversations
        .insert(conversation.id.as_str(), rec.encode_to_vec().as_slice())
        .or_backend()?;
    w_insert_members(t, &conversation.id, &members)
}

fn w_put_members(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    members: &[Member],
) -> Result<(), StoreError> {
    let Some(conversation) = load_conversation(&t.conversations, conversation_id)? else {
        return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
    };
    let members = dedup_members(members);
    check_accounts_exist(t, members.keys().copied())?;
    if conversation.kind == ConversationKind::Direct {
        let existing = scan_keys(&t.members, conversation_id)?;
        let added = members
            .keys()
            .filter(|a| !existing.iter().any(|e| e == **a))
            .count();
        let total = existing.len().saturating_add(added);
        if total > 2 {
            return Err(StoreError::DirectNeedsTwo(total));
        }
    }
    w_insert_members(t, conversation_id, &members)?;
    if !members.is_empty() {
        w_bump_roster(t, conversation_id)?;
    }
    Ok(())
}

fn w_remove_members(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    account_ids: &[String],
) -> Result<u32, StoreError> {
    if !exists(&t.conversations, conversation_id)? {
        return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
    }
    let mut removed = 0u32;
    for account in account_ids {
        let was_member = t
            .members
            .remove((conversation_id, account.as_str()))
            .or_backend()?
            .is_some();
        if was_member {
            t.account_convs
                .remove((account.as_str(), conversation_id))
                .or_backend()?;
            removed = removed.saturating_add(1);
        }
    }
    if !account_ids.is_empty() {
        w_bump_roster(t, conversation_id)?;
    }
    Ok(removed)
}

fn w_append(t: &mut WriteTables<'_>, message: &NewMessage) -> Result<Appended, StoreError> {
    let conv = message.conversation_id.as_str();
    if !exists(&t.conversations, conv)? {
        return Err(StoreError::NoSuchConversation(conv.to_owned()));
    }
    let known = t
        .message_ids
        .get((conv, message.message_id.as_slice()))
        .or_backend()?
        .map(|g| g.value());
    if let Some(seq) = known {
        let Some(guard) = t.messages.get((conv, seq)).or_backend()? else {
            return Err(StoreError::Corrupt {
                table: "message_ids",
                detail: format!("{conv:?} message id points at missing seq {seq}"),
            });
        };
        let first: MessageRec = decode("messages", guard.value())?;
        return Ok(Appended {
            seq,
            server_time_ms: first.server_time_ms,
            duplicate: true,
        });
    }
    // Idempotency first: only a new message id meets the MLS condition.
    let state = load_mls(&t.mls_state, conv)?;
    let after = admit_mls(message.mls.as_ref(), state)?;
    let seq = load_head(&t.heads, conv)?
        .checked_add(1)
        .ok_or_else(|| StoreError::Backend(format!("sequence of {conv:?} overflows")))?;
    let rec = MessageRec {
        message_id: message.message_id.clone(),
        sender_account_id: message.sender_account_id.clone(),
        sender_device_id: message.sender_device_id.clone(),
        server_time_ms: message.server_time_ms,
        expires_at_ms: message.expires_at_ms,
        ciphertext: message.ciphertext.clone(),
    };
    t.messages
        .insert((conv, seq), rec.encode_to_vec().as_slice())
        .or_backend()?;
    t.heads.insert(conv, seq).or_backend()?;
    t.message_ids
        .insert((conv, message.message_id.as_slice()), seq)
        .or_backend()?;
    if let Some(expires_at) = message.expires_at_ms {
        t.expiry.insert((expires_at, conv, seq), ()).or_backend()?;
    }
    if after != state {
        store_mls(t, conv, after)?;
    }
    if let Some(MlsCheck::Commit {
        welcome: Some(welcome),
        ..
    }) = &message.mls
    {
        t.welcomes
            .insert((conv, seq), welcome.bytes.as_slice())
            .or_backend()?;
        for device in &welcome.device_ids {
            t.device_welcomes
                .insert((device.as_str(), conv), seq)
                .or_backend()?;
        }
    }
    Ok(Appended {
        seq,
        server_time_ms: message.server_time_ms,
        duplicate: false,
    })
}

fn w_advance_cursors(
    t: &mut WriteTables<'_>,
    device_id: &str,
    cursors: &[(String, u64)],
) -> Result<(), StoreError> {
    if !exists(&t.devices, device_id)? {
        return Err(StoreError::NoSuchDevice(device_id.to_owned()));
    }
    for (conv, seq) in cursors {
        let stored = t
            .cursors
            .get((device_id, conv.as_str()))
            .or_backend()?
            .map(|g| g.value());
        if stored.is_none_or(|s| *seq > s) {
            t.cursors
                .insert((device_id, conv.as_str()), *seq)
                .or_backend()?;
        }
    }
    Ok(())
}

/// Outcome of one purge chunk.
#[derive(Debug, Clone, Copy)]
struct PurgeChunk {
    /// Expiry entries consumed.
    entries: usize,
    /// Messages deleted.
    messages: u64,
}

fn w_purge_chunk(
    t: &mut WriteTables<'_>,
    now_ms: UnixMillis,
    chunk: usize,
) -> Result<PurgeChunk, StoreError> {
    // Expired means expires_at <= now: every key below (now + 1, "", 0).
    let upper: Bound<(i64, &str, u64)> = match now_ms.checked_add(1) {
        Some(next) => Bound::Excluded((next, "", 0)),
        None => Bound::Unbounded,
    };
    let mut due = Vec::new();
    for item in t.expiry.range((Bound::Unbounded, upper)).or_backend()? {
        if due.len() >= chunk {
            break;
        }
        let (key, _) = item.or_backend()?;
        let (expires_at, conv, seq) = key.value();
        due.push((expires_at, conv.to_owned(), seq));
    }
    let mut messages = 0u64;
    for (expires_at, conv, seq) in &due {
        let conv = conv.as_str();
        t.expiry.remove((*expires_at, conv, *seq)).or_backend()?;
        let removed = match t.messages.remove((conv, *seq)).or_backend()? {
            Some(guard) => Some(decode::<MessageRec>("messages", guard.value())?),
            None => None,
        };
        let Some(rec) = removed else { continue };
        messages = messages.saturating_add(1);
        let key = (conv, rec.message_id.as_slice());
        let points_here = t
            .message_ids
            .get(key)
            .or_backend()?
            .is_some_and(|g| g.value() == *seq);
        if points_here {
            t.message_ids.remove(key).or_backend()?;
        }
    }
    Ok(PurgeChunk {
        entries: due.len(),
        messages,
    })
}

// ---------------------------------------------------------------------------
// the writer

/// An operation queued for the writer.
trait Job: Send {
    /// Applies the operation. `Ok` when it has an answer (success or logical
    /// error), `Err` when the transaction must be aborted. May be called
    /// again, in a fresh transaction, when another operation of the batch
    /// aborted it.
    fn run(&mut self, tables: &mut WriteTables<'_>) -> Result<(), StoreError>;
    /// Replies: with the answer of the last run if `failure` is `None`.
    fn finish(self: Box<Self>, failure: Option<StoreError>);
}

struct Pending<T, F> {
    op: F,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnMut(&mut WriteTables<'_>) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, tables: &mut WriteTables<'_>) -> Result<(), StoreError> {
        self.outcome = None;
        match (self.op)(tables) {
            Ok(value) => {
                self.outcome = Some(Ok(value));
                Ok(())
            }
            Err(error) if is_logical(&error) => {
                self.outcome = Some(Err(error));
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn finish(self: Box<Self>, failure: Option<StoreError>) {
        let Pending { outcome, reply, .. } = *self;
        let result = match failure {
            Some(error) => Err(error),
            None => outcome.unwrap_or_else(|| {
                Err(StoreError::Backend(
                    "internal: operation committed without running".into(),
                ))
            }),
        };
        // The caller may have gone away (cancelled); the effect stands.
        let _ = reply.send(result);
    }
}

enum BatchError {
    /// Operation `index` failed with `error`; the transaction was aborted.
    One { index: usize, error: StoreError },
    /// The transaction failed; every operation fails.
    All(String),
}

fn writer_loop(
    db: Arc<Database>,
    queue: mpsc::Receiver<Box<dyn Job>>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    // recv fails once every sender is gone *and* the queue is empty, so the
    // operations queued before shutdown are all applied.
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&db, batch, &counters);
    }
    tracing::debug!("herold-store writer exits");
}

fn run_batch(db: &Database, mut batch: Vec<Box<dyn Job>>, counters: &Counters) {
    loop {
        match apply_batch(db, &mut batch) {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .ops_committed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for job in batch {
                    job.finish(None);
                }
                return;
            }
            Err(BatchError::One { index, error }) => {
                tracing::error!(%error, "store operation failed; retrying the rest of its batch");
                if index < batch.len() {
                    batch.remove(index).finish(Some(error));
                } else {
                    // Cannot happen; fail everything rather than loop.
                    fail_all(batch, &error.to_string(), counters);
                    return;
                }
                if batch.is_empty() {
                    return;
                }
            }
            Err(BatchError::All(detail)) => {
                tracing::error!(%detail, "store write batch failed");
                fail_all(batch, &detail, counters);
                return;
            }
        }
    }
}

fn fail_all(batch: Vec<Box<dyn Job>>, detail: &str, counters: &Counters) {
    counters.failed_batches.fetch_add(1, Ordering::Relaxed);
    for job in batch {
        job.finish(Some(StoreError::Backend(detail.to_owned())));
    }
}

fn apply_batch(db: &Database, batch: &mut [Box<dyn Job>]) -> Result<(), BatchError> {
    let all = |e: StoreError| BatchError::All(e.to_string());
    let mut txn = db.begin_write().or_backend().map_err(all)?;
    txn.set_durability(Durability::Immediate)
        .or_backend()
        .map_err(all)?;
    let applied = match WriteTables::open(&txn) {
        Err(error) => Err(all(error)),
        Ok(mut tables) => {
            let mut applied = Ok(());
            for (index, job) in batch.iter_mut().enumerate() {
                match job.run(&mut tables) {
                    Ok(()) => {}
                    Err(StoreError::Backend(detail)) => {
                        applied = Err(BatchError::All(detail));
                        break;
                    }
                    Err(error) => {
                        applied = Err(BatchError::One { index, error });
                        break;
                    }
                }
            }
            applied
        }
    };
    match applied {
        Ok(()) => txn.commit().or_backend().map_err(all),
        Err(error) => {
            if let Err(abort) = txn.abort() {
                tracing::warn!(%abort, "aborting a failed write transaction failed");
            }
            Err(error)
        }
    }
}

// ---------------------------------------------------------------------------
// the store

/// The embedded backend. A cheap handle: clones share one database and one
/// writer thread. See the [module documentation](self).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    config: EmbeddedConfig,
    /// `None` once closed.
    db: RwLock<Option<Arc<Database>>>,
    /// `None` once closed.
    queue: RwLock<Option<mpsc::Sender<Box<dyn Job>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.inner.dir)
            .field("config", &self.inner.config)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Stops accepting work; returns the writer to join, the first time.
    fn shut(&self) -> Option<JoinHandle<()>> {
        drop(
            self.queue
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        drop(
            self.db
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(writer) = self.shut()
            && writer.join().is_err()
        {
            tracing::error!("herold-store writer thread panicked");
        }
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in the data directory `dir`: the
    /// directory and its parents are created, and the database is the file
    /// [`DB_FILE_NAME`] in it. Starts the writer thread.
    ///
    /// Blocks on file I/O; call it at startup or on a blocking thread.
    /// Fails with [`StoreError::InvalidConfig`] for a bad `config`,
    /// [`StoreError::Backend`] if the file cannot be opened (for instance
    /// because it is open elsewhere), [`StoreError::Corrupt`] if it has an
    /// unknown layout version.
    pub fn open(dir: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            StoreError::Backend(format!("creating data directory {}: {e}", dir.display()))
        })?;
        let file = dir.join(DB_FILE_NAME);
        let db = Database::builder()
            .set_cache_size(config.cache_size_bytes)
            .create(&file)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", file.display())))?;
        init_schema(&db)?;
        let db = Arc::new(db);
        let counters = Arc::new(Counters::default());
        let (queue, jobs) = mpsc::channel::<Box<dyn Job>>();
        let writer = {
            let db = Arc::clone(&db);
            let counters = Arc::clone(&counters);
            let max_batch = config.max_batch;
            std::thread::Builder::new()
                .name("herold-store-writer".into())
                .spawn(move || writer_loop(db, jobs, max_batch, counters))
                .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                config,
                db: RwLock::new(Some(db)),
                queue: RwLock::new(Some(queue)),
                writer: Mutex::new(Some(writer)),
                counters,
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &EmbeddedConfig {
        &self.inner.config
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> EmbeddedStats {
        let c = &self.inner.counters;
        EmbeddedStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            ops_committed: c.ops_committed.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// Whether the store was closed.
    pub fn is_closed(&self) -> bool {
        self.inner
            .queue
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Closes the store for all handles: new calls fail with
    /// [`StoreError::Closed`], the writer applies the operations already
    /// queued and exits, and the file is released (once reads in flight end).
    /// The first call waits for the writer to exit; later calls return at
    /// once. Fails only if the writer thread had panicked.
    pub async fn close(&self) -> Result<(), StoreError> {
        let Some(writer) = self.inner.shut() else {
            return Ok(());
        };
        let joined = tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| StoreError::Backend(format!("joining the writer: {e}")))?;
        joined.map_err(|_| StoreError::Backend("the writer thread panicked".into()))
    }

    fn submit(&self, job: Box<dyn Job>) -> Result<(), StoreError> {
        let queue = self
            .inner
            .queue
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let queue = queue.as_ref().ok_or(StoreError::Closed)?;
        queue.send(job).map_err(|_| StoreError::Closed)?;
        self.inner
            .counters
            .submitted
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `op` on the writer thread, in the next batch; returns after the
    /// batch committed.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut WriteTables<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.submit(Box::new(Pending {
            op,
            outcome: None,
            reply,
        }))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` in a read transaction on a blocking thread.
    async fn read_with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self
            .inner
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().or_backend()?;
            f(&txn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

/// Creates the tables (so read transactions find them) and checks or writes
/// the layout version.
fn init_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().or_backend()?;
    {
        let mut meta = txn.open_table(META).or_backend()?;
        let version = meta
            .get(SCHEMA_VERSION_KEY)
            .or_backend()?
            .map(|g| g.value());
        match version {
            None => {
                meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                    .or_backend()?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Corrupt {
                    table: "meta",
                    detail: format!(
                        "layout version {other}, this build reads version {SCHEMA_VERSION}"
                    ),
                });
            }
        }
        let _tables = WriteTables::open(&txn)?;
    }
    txn.commit().or_backend()
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn close(&self) -> Result<(), StoreError> {
        EmbeddedStore::close(self).await
    }

    async fn create_account(&self, account: Account) -> Result<(), StoreError> {
        self.write(move |t| w_create_account(t, &account)).await
    }

    async fn get_account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        let id = account_id.to_owned();
        self.read_with(move |txn| load_account(&txn.open_table(ACCOUNTS).or_backend()?, &id))
            .await
    }

    async fn delete_account(&self, account_id: &str) -> Result<AccountPurge, StoreError> {
        let id = account_id.to_owned();
        self.write(move |t| w_delete_account(t, &id)).await
    }

    async fn add_device(&self, device: Device, max_devices: u32) -> Result<(), StoreError> {
        self.write(move |t| w_add_device(t, &device, max_devices))
            .await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        let id = device_id.to_owned();
        self.read_with(move |txn| load_device(&txn.open_table(DEVICES).or_backend()?, &id))
            .await
    }

    async fn devices_of(&self, account_ids: Vec<String>) -> Result<Vec<Device>, StoreError> {
        self.read_with(move |txn| {
            let index = txn.open_table(ACCOUNT_DEVICES).or_backend()?;
            let devices = txn.open_table(DEVICES).or_backend()?;
            let mut out = Vec::new();
            for id in &account_ids {
                for device_id in scan_keys(&index, id)? {
                    out.push(load_device(&devices, &device_id)?.ok_or_else(|| {
                        StoreError::Corrupt {
                            table: "account_devices",
                            detail: format!("{id:?} lists missing device {device_id:?}"),
                        }
                    })?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_devices(&self, account_id: &str) -> Result<Vec<Device>, StoreError> {
        let id = account_id.to_owned();
        self.read_with(move |txn| {
            let index = txn.open_table(ACCOUNT_DEVICES).or_backend()?;
            let devices = txn.open_table(DEVICES).or_backend()?;
            scan_keys(&index, &id)?
                .iter()
                .map(|device_id| {
                    load_device(&devices, device_id)?.ok_or_else(|| StoreError::Corrupt {
                        table: "account_devices",
                        detail: format!("{id:?} lists missing device {device_id:?}"),
                    })
                })
                .collect()
        })
        .await
    }

    async fn revoke_device(&self, device_id: &str) -> Result<Device, StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| w_revoke_device(t, &id)).await
    }

    async fn create_conversation(
        &self,
        conversation: Conversation,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        self.write(move |t| w_create_conversation(t, &conversation, &members))
            .await
    }

    async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            load_conversation(&txn.open_table(CONVERSATIONS).or_backend()?, &id)
        })
        .await
    }

    async fn put_members(
        &self,
        conversation_id: &str,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_put_members(t, &id, &members)).await
    }

    async fn remove_members(
        &self,
        conversation_id: &str,
        account_ids: Vec<String>,
    ) -> Result<u32, StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_remove_members(t, &id, &account_ids))
            .await
    }

    async fn members(&self, conversation_id: &str) -> Result<Vec<Member>, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| scan_members(&txn.open_table(MEMBERS).or_backend()?, &id))
            .await
    }

    async fn conversations_of(&self, account_id: &str) -> Result<Vec<String>, StoreError> {
        let id = account_id.to_owned();
        self.read_with(move |txn| scan_keys(&txn.open_table(ACCOUNT_CONVS).or_backend()?, &id))
            .await
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        self.write(move |t| w_append(t, &message)).await
    }

    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
        now_ms: UnixMillis,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            let messages = txn.open_table(MESSAGES).or_backend()?;
            let mut out = Vec::new();
            for item in messages
                .range((id.as_str(), first)..=(id.as_str(), u64::MAX))
                .or_backend()?
            {
                let (key, value) = item.or_backend()?;
                let rec: MessageRec = decode("messages", value.value())?;
                if rec.expires_at_ms.is_some_and(|at| at <= now_ms) {
                    continue;
                }
                out.push(message_from(&id, key.value().1, rec));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn head(&self, conversation_id: &str) -> Result<u64, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| load_head(&txn.open_table(HEADS).or_backend()?, &id))
            .await
    }

    async fn advance_cursors(
        &self,
        device_id: &str,
        cursors: Vec<(String, u64)>,
    ) -> Result<(), StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| w_advance_cursors(t, &id, &cursors))
            .await
    }

    async fn advance_cursors_many(
        &self,
        updates: Vec<(String, Vec<(String, u64)>)>,
    ) -> Result<(), StoreError> {
        // One operation, so one place in one group commit, however many devices.
        self.write(move |t| {
            for (device, cursors) in &updates {
                match w_advance_cursors(t, device, cursors) {
                    Ok(()) | Err(StoreError::NoSuchDevice(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
    }

    async fn cursors(&self, device_id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let id = device_id.to_owned();
        self.read_with(move |txn| scan_u64(&txn.open_table(CURSORS).or_backend()?, &id))
            .await
    }

    async fn account_state(&self, account_id: &str) -> Result<Option<AccountState>, StoreError> {
        let id = account_id.to_owned();
        self.read_with(move |txn| {
            if load_account(&txn.open_table(ACCOUNTS).or_backend()?, &id)?.is_none() {
                return Ok(None);
            }
            Ok(Some(
                load_account_state(&txn.open_table(ACCOUNT_STATE).or_backend()?, &id)?
                    .unwrap_or_default(),
            ))
        })
        .await
    }

    async fn set_account_state(
        &self,
        account_id: &str,
        state: AccountState,
    ) -> Result<(), StoreError> {
        let id = account_id.to_owned();
        let state = AccountState {
            tags: normalize_tags(state.tags),
            suspended: state.suspended,
        };
        self.write(move |t| w_set_account_state(t, &id, &state))
            .await
    }

    async fn list_accounts(
        &self,
        tag: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Account>, StoreError> {
        let tag = tag.map(str::to_owned);
        let after = after.map(str::to_owned);
        self.read_with(move |txn| {
            let accounts = txn.open_table(ACCOUNTS).or_backend()?;
            let mut items = Vec::new();
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            match &tag {
                None => {
                    for item in accounts
                        .range::<&str>((start, Bound::Unbounded))
                        .or_backend()?
                    {
                        if items.len() >= limit {
                            break;
                        }
                        let (k, v) = item.or_backend()?;
                        items.push(account_from(k.value(), decode("accounts", v.value())?));
                    }
                }
                Some(tag) => {
                    let index = txn.open_table(ACCOUNTS_BY_TAG).or_backend()?;
                    let from = (tag.as_str(), after.as_deref().unwrap_or(""));
                    for item in index.range(from..).or_backend()? {
                        if items.len() >= limit {
                            break;
                        }
                        let (k, _) = item.or_backend()?;
                        let (t, a) = k.value();
                        if t != tag {
                            break;
                        }
                        if after.as_deref() == Some(a) {
                            continue;
                        }
                        if let Some(acc) = load_account(&accounts, a)? {
                            items.push(acc);
                        }
                    }
                }
            }
            let next = (items.len() >= limit && limit > 0)
                .then(|| items.last().map(|a: &Account| a.id.clone()))
                .flatten();
            Ok(Page { items, next })
        })
        .await
    }

    async fn update_conversation(
        &self,
        conversation_id: &str,
        title: Option<String>,
        archived: Option<bool>,
    ) -> Result<(), StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_update_conversation(t, &id, title.as_ref(), archived))
            .await
    }

    async fn conversation_archived(&self, conversation_id: &str) -> Result<bool, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            let table = txn.open_table(CONVERSATIONS).or_backend()?;
            match table.get(id.as_str()).or_backend()? {
                None => Ok(false),
                Some(g) => Ok(decode::<ConversationRec>("conversations", g.value())?.archived),
            }
        })
        .await
    }

    async fn list_conversations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>, StoreError> {
        let after = after.map(str::to_owned);
        self.read_with(move |txn| {
            let table = txn.open_table(CONVERSATIONS).or_backend()?;
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut items = Vec::new();
            for item in table
                .range::<&str>((start, Bound::Unbounded))
                .or_backend()?
            {
                if items.len() >= limit {
                    break;
                }
                let (k, v) = item.or_backend()?;
                items.push(conversation_from(
                    k.value(),
                    decode("conversations", v.value())?,
                )?);
            }
            let next = (items.len() >= limit && limit > 0)
                .then(|| items.last().map(|c: &Conversation| c.id.clone()))
                .flatten();
            Ok(Page { items, next })
        })
        .await
    }

    async fn put_policy(&self, scope: PolicyScope, policy: Policy) -> Result<(), StoreError> {
        let key = policy_key(&scope);
        let rec = policy_rec(&policy).encode_to_vec();
        self.write(move |t| {
            if let PolicyScope::Conversation(id) = &scope
                && !exists(&t.conversations, id)?
            {
                return Err(StoreError::NoSuchConversation(id.clone()));
            }
            t.policies
                .insert(key.as_str(), rec.as_slice())
                .or_backend()?;
            Ok(())
        })
        .await
    }

    async fn get_policy(&self, scope: PolicyScope) -> Result<Option<Policy>, StoreError> {
        let key = policy_key(&scope);
        self.read_with(move |txn| {
            let table = txn.open_table(POLICIES).or_backend()?;
            match table.get(key.as_str()).or_backend()? {
                None => Ok(None),
                Some(g) => Ok(Some(policy_from(decode("policies", g.value())?)?)),
            }
        })
        .await
    }

    async fn create_enrollment_code(&self, code: EnrollmentCode) -> Result<(), StoreError> {
        self.write(move |t| {
            if !exists(&t.accounts, &code.account_id)? {
                return Err(StoreError::NoSuchAccount(code.account_id.clone()));
            }
            let rec = CodeRec {
                account_id: code.account_id.clone(),
                account_created_at_ms: code.account_created_at_ms,
                created_at_ms: code.created_at_ms,
                expires_at_ms: code.expires_at_ms,
            };
            t.enroll_codes
                .insert(code.code_hash.as_slice(), rec.encode_to_vec().as_slice())
                .or_backend()?;
            Ok(())
        })
        .await
    }

    async fn redeem_enrollment_code(
        &self,
        code_hash: &[u8],
        device: Device,
        now_ms: UnixMillis,
        max_devices: u32,
    ) -> Result<Device, StoreError> {
        let hash = code_hash.to_vec();
        self.write(move |t| w_redeem_code(t, &hash, &device, now_ms, max_devices))
            .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.write(move |t| {
            let rec = AuditRec {
                operator: entry.operator.clone(),
                action: entry.action.clone(),
                target: entry.target.clone(),
                outcome: entry.outcome.clone(),
                detail: entry.detail.clone(),
            };
            t.audit
                .insert(
                    (entry.at_ms, entry.id.as_str()),
                    rec.encode_to_vec().as_slice(),
                )
                .or_backend()?;
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        before_ms: UnixMillis,
        before_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let before_id = before_id.to_owned();
        self.read_with(move |txn| {
            let table = txn.open_table(AUDIT).or_backend()?;
            let mut out = Vec::new();
            for item in table
                .range::<(i64, &str)>(..(before_ms, before_id.as_str()))
                .or_backend()?
                .rev()
            {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item.or_backend()?;
                let (at_ms, id) = k.value();
                let rec: AuditRec = decode("audit", v.value())?;
                out.push(AuditEntry {
                    at_ms,
                    id: id.to_owned(),
                    operator: rec.operator,
                    action: rec.action,
                    target: rec.target,
                    outcome: rec.outcome,
                    detail: rec.detail,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn upload_key_packages(
        &self,
        device_id: &str,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_available: u32,
    ) -> Result<KeyPackageUpload, StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| {
            w_upload_key_packages(t, &id, &one_time, last_resort.as_deref(), max_available)
        })
        .await
    }

    async fn claim_key_package(&self, device_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| w_claim_key_package(t, &id)).await
    }

    async fn key_package_count(&self, device_id: &str) -> Result<KeyPackageCount, StoreError> {
        let id = device_id.to_owned();
        self.read_with(move |txn| {
            match load_device(&txn.open_table(DEVICES).or_backend()?, &id)? {
                Some(d) if !d.revoked => {}
                _ => return Ok(KeyPackageCount::default()),
            }
            count_key_packages(
                &txn.open_table(KEY_PACKAGES).or_backend()?,
                &txn.open_table(LAST_RESORT).or_backend()?,
                &id,
            )
        })
        .await
    }

    async fn mls_state(&self, conversation_id: &str) -> Result<MlsState, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            if !exists(&txn.open_table(CONVERSATIONS).or_backend()?, &id)? {
                return Err(StoreError::NoSuchConversation(id));
            }
            load_mls(&txn.open_table(MLS_STATE).or_backend()?, &id)
        })
        .await
    }

    async fn mls_roster(&self, conversation_id: &str) -> Result<Vec<String>, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            let members = txn.open_table(MEMBERS).or_backend()?;
            let index = txn.open_table(ACCOUNT_DEVICES).or_backend()?;
            let devices = txn.open_table(DEVICES).or_backend()?;
            let last_resort = txn.open_table(LAST_RESORT).or_backend()?;
            let mut out = Vec::new();
            for account in scan_keys(&members, &id)? {
                for device_id in scan_keys(&index, &account)? {
                    let ready = load_device(&devices, &device_id)?.is_some_and(|d| !d.revoked)
                        && exists(&last_resort, &device_id)?;
                    if ready {
                        out.push(device_id);
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn mark_reconciled(
        &self,
        conversation_id: &str,
        epoch: u64,
        roster_version: u64,
    ) -> Result<MlsState, StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_mark_reconciled(t, &id, epoch, roster_version))
            .await
    }

    async fn welcome_for(
        &self,
        device_id: &str,
        conversation_id: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let (device, conv) = (device_id.to_owned(), conversation_id.to_owned());
        self.read_with(move |txn| {
            let index = txn.open_table(DEVICE_WELCOMES).or_backend()?;
            let Some(seq) = index
                .get((device.as_str(), conv.as_str()))
                .or_backend()?
                .map(|g| g.value())
            else {
                return Ok(None);
            };
            let welcomes = txn.open_table(WELCOMES).or_backend()?;
            match welcomes.get((conv.as_str(), seq)).or_backend()? {
                Some(g) => Ok(Some((seq, g.value().to_vec()))),
                None => Err(StoreError::Corrupt {
                    table: "device_welcomes",
                    detail: format!(
                        "{device:?} in {conv:?} points at missing Welcome of seq {seq}"
                    ),
                }),
            }
        })
        .await
    }

    async fn purge_expired(&self, now_ms: UnixMillis) -> Result<u64, StoreError> {
        let chunk = self.inner.config.purge_chunk;
        let mut purged = 0u64;
        loop {
            let done = self
                .write(move |t| {
                    let done = w_purge_chunk(t, now_ms, chunk)?;
                    if done.entries < chunk {
                        // The last chunk also drops expired enrollment
                        // codes: few (about one per account).
                        w_purge_codes(t, now_ms)?;
                    }
                    Ok(done)
                })
                .await?;
            purged = purged.saturating_add(done.messages);
            if done.entries < chunk {
                break;
            }
        }
        Ok(purged)
    }
}
