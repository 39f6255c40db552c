//! The CQL backend (feature `cql`): Scylla in production, spoken to with the
//! `scylla` driver; Apache Cassandra 5 stands in for Scylla in tests (same
//! CQL protocol, see `scripts/cassandra.sh` and `docs/storage.md`).
//!
//! # Layout
//! - [`config`]: [`CqlConfig`], replication and consistency parsing.
//! - [`migrate`](mod@migrate): the versioned CQL migrations in
//!   `store/migrations/cql/`, applied in order and recorded in
//!   `schema_migrations`.
//! - [`CqlStore`]: the [`Store`] on a driver [`Session`], every statement
//!   prepared once at connect; token-aware routing is the driver's default
//!   load balancing, so each prepared statement goes to a replica of its
//!   partition. The [`Store`] methods are spread by domain: `directory`
//!   (accounts, devices, conversations, members), `log` (appends, reads,
//!   cursors, the purge), `admin` (tags, suspension, policies, enrollment
//!   codes, the audit log), `mls`; `statements` prepares those of
//!   migration 1.
//!
//! # Sequence numbers without gaps (append)
//! Seqs are dense, start at 1 and are unique per conversation across every
//! relay process sharing the database:
//! 1. the payload is written first, keyed by message id, with
//!    `INSERT INTO message_ids ... IF NOT EXISTS` (the idempotency key: a
//!    repeat or a concurrent duplicate finds the first attempt's row);
//! 2. the seq is claimed with one lightweight transaction on the
//!    conversation row, `SET head = h+1, head_message_id = id IF head = h AND
//!    head_message_id = prev` — the claim names the message, so whoever reads
//!    the row knows which message owns `head`;
//! 3. the log row `(conversation, seq / 1000, seq)` is written, then
//!    `message_seqs` (id -> seq).
//!
//! A process that dies after step 2 leaves exactly one claimed-but-unwritten
//! seq, and only ever the head: before anyone claims `h+1` it completes `h`
//! (steps 3 for the message named in the row, whose payload is durable since
//! step 1). `read` completes the head too before reading, and a retry of the
//! same message id completes its own claim. So a gap can never become
//! visible: a reader that saw `head` = h but no row h yet finds it on its
//! next `read`, which writes it if the writer is gone.
//!
//! Within one process, appends to one conversation are serialised by an
//! async mutex per conversation, so the LWT sees contention only between
//! processes.
//!
//! # MLS (migration 3, `cql/mls.rs`)
//! The conversation row also holds `mls_epoch`, `roster_version` and
//! `group_roster_version`. The claim of step 2 carries the message's
//! [`MlsCheck`]: it is evaluated on the row as read, and the LWT has
//! conditions on every MLS column as read (NULL, from rows older than the
//! migration, compares as NULL) and sets the new epoch and group roster
//! version with the head, so a commit's epoch advance and its seq are one
//! write, and a lost race re-evaluates on the values the LWT returns. A
//! refusal is only ever decided on values read from the database during the
//! call (never on this process's cached row), and it deletes the
//! `message_ids` row the attempt wrote, so the id can come again. A commit's
//! Welcome is part of its `message_ids` payload; step 3 stores it in
//! `welcomes` and indexes it per device before `message_seqs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, MaybeUnset, Row};

use crate::{
    Account, AccountPurge, AccountState, Appended, Attachment, AuditEntry, Conversation,
    ConversationKind, Device, EnrollmentCode, KeyPackageCount, KeyPackageUpload, Member, MlsCheck,
    MlsState, NewMessage, Page, Policy, PolicyScope, Role, Store, StoreError, StoredMessage,
    UnixMillis, admit_mls,
};

mod admin;
mod attachments;
mod audit;
pub mod config;
mod directory;
mod log;
pub mod migrate;
mod mls;
mod push;
use mls::MlsCols;
mod statements;

#[cfg(test)]
mod tests;

pub use config::{CqlConfig, Replication, parse_consistency};
pub use migrate::{MIGRATIONS, Migration};
use statements::Statements;

/// Seqs per log partition: partition `(conversation, seq / BUCKET_SIZE)`.
/// Part of the data layout: never change it for an existing keyspace.
pub const BUCKET_SIZE: u64 = 1000;

/// TTL (seconds) of a message that was already expired when it was written:
/// reads hide it, `purge_expired` deletes it, the TTL is the backstop.
const EXPIRED_AT_WRITE_TTL: i32 = 3600;

/// Shards of `expired_at_write`.
const EXPIRED_SHARDS: i32 = 16;

/// Cassandra's and Scylla's largest TTL: 20 years.
const MAX_TTL: i64 = 630_720_000;

/// Requests one fan-out operation keeps in flight (roster loads, cursor
/// flushes of many devices).
const CONCURRENCY: usize = 64;

/// Past this many cached conversations, idle entries are dropped.
const HEAD_CACHE_MAX: usize = 50_000;

pub(crate) fn wall_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn backend(op: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("cql {op}: {e}"))
}

/// The TTL (seconds, 0 = none) for a row of a message expiring at `expires`,
/// written at `now`, and whether it was already expired.
fn ttl_for(expires: Option<UnixMillis>, now: UnixMillis) -> (i32, bool) {
    match expires {
        None => (0, false),
        Some(e) if e <= now => (EXPIRED_AT_WRITE_TTL, true),
        Some(e) => {
            let secs = (e - now + 999) / 1000;
            (
                i32::try_from(secs.clamp(1, MAX_TTL)).unwrap_or(i32::MAX),
                false,
            )
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn kind_code(k: ConversationKind) -> i8 {
    match k {
        ConversationKind::Direct => 0,
        ConversationKind::Group => 1,
        ConversationKind::Channel => 2,
    }
}

fn kind_of(code: i8) -> Result<ConversationKind, StoreError> {
    Ok(match code {
        0 => ConversationKind::Direct,
        1 => ConversationKind::Group,
        2 => ConversationKind::Channel,
        other => return Err(corrupt("conversations", format!("kind {other}"))),
    })
}

fn role_code(r: Role) -> i8 {
    match r {
        Role::Member => 0,
        Role::Publisher => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    }
}

fn role_of(code: i8) -> Result<Role, StoreError> {
    Ok(match code {
        0 => Role::Member,
        1 => Role::Publisher,
        2 => Role::Admin,
        3 => Role::Owner,
        other => return Err(corrupt("members", format!("role {other}"))),
    })
}

fn corrupt(table: &'static str, detail: String) -> StoreError {
    StoreError::Corrupt { table, detail }
}

/// The result of a lightweight transaction: applied, and the current values
/// of the row when it was not.
struct Lwt {
    applied: bool,
    cols: Vec<(String, Option<CqlValue>)>,
}

impl Lwt {
    fn parse(result: QueryResult, op: &str) -> Result<Self, StoreError> {
        let rows = result.into_rows_result().map_err(|e| backend(op, e))?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let row: Row = rows.single_row::<Row>().map_err(|e| backend(op, e))?;
        let cols: Vec<_> = names.into_iter().zip(row.columns).collect();
        let applied = matches!(
            cols.iter().find(|(n, _)| n == "[applied]"),
            Some((_, Some(CqlValue::Boolean(true))))
        );
        Ok(Self { applied, cols })
    }

    fn get(&self, name: &str) -> Option<&CqlValue> {
        self.cols
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
    }

    fn bigint(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(CqlValue::BigInt(v)) => Some(*v),
            Some(CqlValue::Int(v)) => Some(i64::from(*v)),
            _ => None,
        }
    }

    fn blob(&self, name: &str) -> Option<Vec<u8>> {
        match self.get(name) {
            Some(CqlValue::Blob(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// A list (or set) of text; empty when NULL.
    fn texts(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Some(CqlValue::List(v) | CqlValue::Set(v)) => v
                .iter()
                .filter_map(|x| match x {
                    CqlValue::Text(s) | CqlValue::Ascii(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A message's payload as kept in `message_ids`.
#[derive(Debug, Clone)]
struct Payload {
    message_id: Vec<u8>,
    sender_account_id: String,
    sender_device_id: String,
    server_time_ms: UnixMillis,
    expires_at_ms: Option<UnixMillis>,
    ciphertext: Vec<u8>,
    /// A commit's Welcome and the devices it welcomes.
    welcome: Option<(Vec<u8>, Vec<String>)>,
}

/// The claim-relevant columns of a conversation row.
#[derive(Debug, Clone, Default)]
struct ConvHead {
    /// Last seq given out.
    head: u64,
    /// The message that owns it.
    mid: Vec<u8>,
    mls: MlsCols,
}

/// What this process knows about a conversation's head.
#[derive(Debug, Default)]
struct Head {
    /// Known head row; `None` until read.
    known: Option<ConvHead>,
    /// The known head's log row is written.
    complete: bool,
}

/// The [`Store`] on Scylla / Cassandra.
#[derive(Debug)]
pub struct CqlStore {
    session: Session,
    st: Statements,
    adm: admin::AdminStatements,
    mls: mls::MlsStatements,
    audit: audit::AuditStatements,
    att: attachments::AttachmentStatements,
    push: push::PushStatements,
    /// This process's audit appends, one at a time, and the chain heads it
    /// moved last (see `audit`).
    audit_heads: tokio::sync::Mutex<HashMap<String, AuditEntry>>,
    /// Per device: an async mutex serialising this process's changes of the
    /// device's key packages (the LWTs then contend only between processes).
    devices: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per conversation: the head this process knows, behind an async mutex
    /// that serialises this process's appends to the conversation (held
    /// across the LWT round trips, hence tokio's). The outer std mutex only
    /// guards the map and is never held across an await.
    heads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Head>>>>,
    closed: AtomicBool,
    keyspace: String,
}

type DeviceRow = (
    String,
    Option<String>,
    Option<Vec<u8>>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
);

type LogRow = (
    i64,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<String>>,
);

impl CqlStore {
    /// Opens a driver session for `config`, without keyspace.
    pub async fn session(config: &CqlConfig) -> Result<Session, StoreError> {
        config.validate()?;
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency)
            .serial_consistency(Some(config.serial_consistency))
            .request_timeout(Some(config.request_timeout))
            .build();
        SessionBuilder::new()
            .known_nodes(&config.contact_points)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(|e| {
                StoreError::Backend(format!(
                    "cannot connect to CQL at {}: {e}",
                    config.contact_points.join(",")
                ))
            })
    }

    /// Creates the keyspace and applies pending migrations (see
    /// [`migrate::migrate`]). Returns the versions applied now.
    pub async fn migrate(config: &CqlConfig) -> Result<Vec<i32>, StoreError> {
        let session = Self::session(config).await?;
        migrate::migrate(&session, &config.keyspace, &config.replication).await
    }

    /// Connects, migrates if `config.migrate`, and prepares every statement.
    pub async fn connect(config: CqlConfig) -> Result<Self, StoreError> {
        let session = Self::session(&config).await?;
        if config.migrate {
            migrate::migrate(&session, &config.keyspace, &config.replication).await?;
        }
        let st = Statements::prepare(&session, &config.keyspace).await?;
        let adm = admin::AdminStatements::prepare(&session, &config.keyspace).await?;
        let mls = mls::MlsStatements::prepare(&session, &config.keyspace).await?;
        let audit = audit::AuditStatements::prepare(&session, &config.keyspace).await?;
        let att = attachments::AttachmentStatements::prepare(&session, &config.keyspace).await?;
        let push = push::PushStatements::prepare(&session, &config.keyspace).await?;
        Ok(Self {
            session,
            st,
            adm,
            mls,
            audit,
            att,
            push,
            audit_heads: tokio::sync::Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
            heads: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            keyspace: config.keyspace,
        })
    }

    /// The keyspace in use.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The driver session (for tests and tools that query directly).
    pub fn driver_session(&self) -> &Session {
        &self.session
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    async fn exec(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        op: &str,
    ) -> Result<QueryResult, StoreError> {
        self.check_open()?;
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| backend(op, e))
    }

    async fn lwt(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        op: &str,
    ) -> Result<Lwt, StoreError> {
        let r = self.exec(st, values, op).await?;
        Lwt::parse(r, op)
    }

    /// At most one row (point lookups by primary key).
    async fn one<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        op: &str,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let r = self.exec(st, values, op).await?;
        let rows = r.into_rows_result().map_err(|e| backend(op, e))?;
        rows.maybe_first_row::<R>().map_err(|e| backend(op, e))
    }

    /// Every row, paged.
    async fn all<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        op: &str,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + 'static,
    {
        self.check_open()?;
        self.session
            .execute_iter(st.clone(), values)
            .await
            .map_err(|e| backend(op, e))?
            .rows_stream::<R>()
            .map_err(|e| backend(op, e))?
            .try_collect()
            .await
            .map_err(|e| backend(op, e))
    }

    fn head_lock(&self, conversation_id: &str) -> Arc<tokio::sync::Mutex<Head>> {
        let mut map = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > HEAD_CACHE_MAX {
            map.retain(|_, v| Arc::strong_count(v) > 1);
        }
        map.entry(conversation_id.to_owned()).or_default().clone()
    }

    fn device_lock(&self, device_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > HEAD_CACHE_MAX {
            map.retain(|_, v| Arc::strong_count(v) > 1);
        }
        map.entry(device_id.to_owned()).or_default().clone()
    }
}

/// A short randomised pause after a lost LWT race.
async fn backoff(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Capped low: a contender that backs off longer than the others
    // retry loses every round to them and starves (a relay's submit to a
    // conversation that other relays' devices keep posting to waited 10 s
    // and more with a cap of 128 ms). With every contender retrying within
    // a few milliseconds, each round is a fair draw.
    let base = 2u64 << attempt.min(3);
    let jitter = u64::from(nanos % 1000) * base / 1000;
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

#[async_trait]
impl Store for CqlStore {
    async fn account_state(&self, account_id: &str) -> Result<Option<AccountState>, StoreError> {
        self.a_account_state(account_id).await
    }

    async fn set_account_state(
        &self,
        account_id: &str,
        state: AccountState,
    ) -> Result<(), StoreError> {
        self.a_set_account_state(account_id, state).await
    }

    async fn list_accounts(
        &self,
        tag: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Account>, StoreError> {
        self.a_list_accounts(tag, after, limit).await
    }

    async fn update_conversation(
        &self,
        conversation_id: &str,
        title: Option<String>,
        archived: Option<bool>,
    ) -> Result<(), StoreError> {
        self.a_update_conversation(conversation_id, title, archived)
            .await
    }

    async fn conversation_archived(&self, conversation_id: &str) -> Result<bool, StoreError> {
        self.a_conversation_archived(conversation_id).await
    }

    async fn list_conversations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>, StoreError> {
        self.a_list_conversations(after, limit).await
    }

    async fn put_policy(&self, scope: PolicyScope, policy: Policy) -> Result<(), StoreError> {
        self.a_put_policy(scope, policy).await
    }

    async fn get_policy(&self, scope: PolicyScope) -> Result<Option<Policy>, StoreError> {
        self.a_get_policy(scope).await
    }

    async fn create_enrollment_code(&self, code: EnrollmentCode) -> Result<(), StoreError> {
        self.a_create_enrollment_code(code).await
    }

    async fn redeem_enrollment_code(
        &self,
        code_hash: &[u8],
        device: Device,
        now_ms: UnixMillis,
        max_devices: u32,
    ) -> Result<Device, StoreError> {
        self.a_redeem_enrollment_code(code_hash, device, now_ms, max_devices)
            .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.a_append_audit(entry).await
    }

    async fn list_audit(
        &self,
        before_ms: UnixMillis,
        before_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.a_list_audit(before_ms, before_id, limit).await
    }

    async fn create_account(&self, account: Account) -> Result<(), StoreError> {
        self.d_create_account(account).await
    }

    async fn get_account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        self.d_get_account(account_id).await
    }

    async fn delete_account(&self, account_id: &str) -> Result<AccountPurge, StoreError> {
        self.d_delete_account(account_id).await
    }

    async fn add_device(&self, device: Device, max_devices: u32) -> Result<(), StoreError> {
        self.d_add_device(device, max_devices).await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        self.d_get_device(device_id).await
    }

    async fn list_devices(&self, account_id: &str) -> Result<Vec<Device>, StoreError> {
        self.d_list_devices(account_id).await
    }

    async fn devices_of(&self, account_ids: Vec<String>) -> Result<Vec<Device>, StoreError> {
        self.d_devices_of(account_ids).await
    }

    async fn revoke_device(&self, device_id: &str) -> Result<Device, StoreError> {
        self.d_revoke_device(device_id).await
    }

    async fn create_conversation(
        &self,
        conversation: Conversation,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        self.d_create_conversation(conversation, members).await
    }

    async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        self.d_get_conversation(conversation_id).await
    }

    async fn put_members(
        &self,
        conversation_id: &str,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        self.d_put_members(conversation_id, members).await
    }

    async fn remove_members(
        &self,
        conversation_id: &str,
        account_ids: Vec<String>,
    ) -> Result<u32, StoreError> {
        self.d_remove_members(conversation_id, account_ids).await
    }

    async fn members(&self, conversation_id: &str) -> Result<Vec<Member>, StoreError> {
        self.d_members(conversation_id).await
    }

    async fn conversations_of(&self, account_id: &str) -> Result<Vec<String>, StoreError> {
        self.d_conversations_of(account_id).await
    }

    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        self.l_append(m).await
    }

    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
        now_ms: UnixMillis,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.l_read(conversation_id, after_seq, limit, now_ms).await
    }

    async fn head(&self, conversation_id: &str) -> Result<u64, StoreError> {
        self.l_head(conversation_id).await
    }

    async fn advance_cursors(
        &self,
        device_id: &str,
        cursors: Vec<(String, u64)>,
    ) -> Result<(), StoreError> {
        self.l_advance_cursors(device_id, cursors).await
    }

    async fn advance_cursors_many(
        &self,
        updates: Vec<(String, Vec<(String, u64)>)>,
    ) -> Result<(), StoreError> {
        self.l_advance_cursors_many(updates).await
    }

    async fn cursors(&self, device_id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.l_cursors(device_id).await
    }

    async fn upload_key_packages(
        &self,
        device_id: &str,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_available: u32,
    ) -> Result<KeyPackageUpload, StoreError> {
        self.m_upload_key_packages(device_id, one_time, last_resort, max_available)
            .await
    }

    async fn claim_key_package(&self, device_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.m_claim_key_package(device_id).await
    }

    async fn key_package_count(&self, device_id: &str) -> Result<KeyPackageCount, StoreError> {
        self.m_key_package_count(device_id).await
    }

    async fn mls_state(&self, conversation_id: &str) -> Result<MlsState, StoreError> {
        self.m_mls_state(conversation_id).await
    }

    async fn mls_roster(&self, conversation_id: &str) -> Result<Vec<String>, StoreError> {
        self.m_mls_roster(conversation_id).await
    }

    async fn mark_reconciled(
        &self,
        conversation_id: &str,
        generation: u64,
        epoch: u64,
        roster_version: u64,
    ) -> Result<MlsState, StoreError> {
        self.m_mark_reconciled(conversation_id, generation, epoch, roster_version)
            .await
    }

    async fn reset_mls_group(
        &self,
        conversation_id: &str,
        generation: u64,
        epoch: u64,
    ) -> Result<MlsState, StoreError> {
        self.m_reset_mls_group(conversation_id, generation, epoch)
            .await
    }

    async fn welcome_for(
        &self,
        device_id: &str,
        conversation_id: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.m_welcome_for(device_id, conversation_id).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    async fn purge_expired(&self, now_ms: UnixMillis) -> Result<u64, StoreError> {
        self.l_purge_expired(now_ms).await
    }

    async fn set_push_endpoint(&self, device: &str, e: Option<String>) -> Result<(), StoreError> {
        self.p_set(device, e).await
    }
    async fn push_endpoint(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        self.p_get(device_id).await
    }
    async fn create_attachment(&self, a: Attachment) -> Result<(), StoreError> {
        self.att_create(a).await
    }
    async fn attachment(
        &self,
        id: &[u8],
        now: UnixMillis,
    ) -> Result<Option<Attachment>, StoreError> {
        self.att_get(id, now).await
    }
    async fn put_attachment_chunk(
        &self,
        id: &[u8],
        i: u32,
        data: Vec<u8>,
    ) -> Result<Attachment, StoreError> {
        self.att_put_chunk(id, i, data).await
    }
    async fn attachment_chunk(&self, id: &[u8], i: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.att_chunk(id, i).await
    }
    /// Nothing to do: every row of an attachment has its expiry as TTL.
    async fn purge_expired_attachments(&self, _now: UnixMillis) -> Result<u64, StoreError> {
        Ok(0)
    }
}
