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
//!   partition.
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
    Account, AccountPurge, AccountState, Appended, AuditEntry, Conversation, ConversationKind,
    Device, EnrollmentCode, KeyPackageCount, KeyPackageUpload, Member, MlsCheck, MlsState,
    NewMessage, Page, Policy, PolicyScope, Role, Store, StoreError, StoredMessage, UnixMillis,
    admit_mls,
};

mod admin;
pub mod config;
pub mod migrate;
mod mls;

#[cfg(test)]
mod tests;

pub use config::{CqlConfig, Replication, parse_consistency};
pub use migrate::{MIGRATIONS, Migration};

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

/// The MLS columns of a conversation row as stored: NULL (a row from before
/// migration 3) reads as 0 but is compared as NULL in LWT conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MlsCols {
    epoch: Option<i64>,
    roster: Option<i64>,
    group: Option<i64>,
}

impl MlsCols {
    fn state(self) -> MlsState {
        MlsState {
            epoch: to_u64(self.epoch.unwrap_or(0)),
            roster_version: to_u64(self.roster.unwrap_or(0)),
            group_roster_version: to_u64(self.group.unwrap_or(0)),
        }
    }
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

/// Every statement, prepared once.
#[derive(Debug)]
struct Statements {
    acc_insert: PreparedStatement,
    acc_get: PreparedStatement,
    acc_slot: PreparedStatement,
    acc_delete: PreparedStatement,
    dev_insert: PreparedStatement,
    dev_get: PreparedStatement,
    dev_revoke: PreparedStatement,
    dev_delete: PreparedStatement,
    dba_insert: PreparedStatement,
    dba_list: PreparedStatement,
    dba_delete_all: PreparedStatement,
    conv_insert: PreparedStatement,
    conv_get: PreparedStatement,
    conv_head: PreparedStatement,
    conv_claim: PreparedStatement,
    mid_forget: PreparedStatement,
    mem_put: PreparedStatement,
    mem_list: PreparedStatement,
    mem_get: PreparedStatement,
    mem_delete: PreparedStatement,
    cba_put: PreparedStatement,
    cba_list: PreparedStatement,
    cba_delete: PreparedStatement,
    cba_delete_all: PreparedStatement,
    mid_insert: PreparedStatement,
    mid_get: PreparedStatement,
    mid_delete: PreparedStatement,
    seq_put: PreparedStatement,
    seq_get: PreparedStatement,
    seq_delete: PreparedStatement,
    log_put: PreparedStatement,
    log_read: PreparedStatement,
    log_ids: PreparedStatement,
    log_delete: PreparedStatement,
    log_delete_bucket: PreparedStatement,
    eaw_put: PreparedStatement,
    eaw_list: PreparedStatement,
    eaw_delete: PreparedStatement,
    cur_put: PreparedStatement,
    cur_list: PreparedStatement,
    cur_delete_all: PreparedStatement,
}

impl Statements {
    async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String| async move {
            let mut st = s.prepare(cql.clone()).await.map_err(|e| {
                StoreError::Backend(format!(
                    "cql prepare {cql:?}: {e} (is keyspace {ks} migrated? start the relay with --cql-contact-points, which migrates first, or run `herold-relay --migrate-only`)"
                ))
            })?;
            // Reads and blind upserts are safe to retry; LWTs are not
            // marked idempotent (the driver then does not speculate them).
            st.set_is_idempotent(!cql.contains(" IF "));
            Ok::<_, StoreError>(st)
        };
        Ok(Self {
            acc_insert: p(format!("INSERT INTO {ks}.accounts (id, display_name, created_at_ms, device_slots) VALUES (?, ?, ?, 0) IF NOT EXISTS")).await?,
            acc_get: p(format!("SELECT display_name, created_at_ms, device_slots FROM {ks}.accounts WHERE id = ?")).await?,
            acc_slot: p(format!("UPDATE {ks}.accounts SET device_slots = ? WHERE id = ? IF device_slots = ?")).await?,
            acc_delete: p(format!("DELETE FROM {ks}.accounts WHERE id = ? IF EXISTS")).await?,
            dev_insert: p(format!("INSERT INTO {ks}.devices (id, account_id, public_key, revoked, created_at_ms, incarnation) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS")).await?,
            dev_get: p(format!("SELECT id, account_id, public_key, revoked, created_at_ms, incarnation FROM {ks}.devices WHERE id = ?")).await?,
            dev_revoke: p(format!("UPDATE {ks}.devices SET revoked = true WHERE id = ? IF EXISTS")).await?,
            dev_delete: p(format!("DELETE FROM {ks}.devices WHERE id = ? IF EXISTS")).await?,
            dba_insert: p(format!("INSERT INTO {ks}.devices_by_account (account_id, device_id) VALUES (?, ?)")).await?,
            dba_list: p(format!("SELECT device_id FROM {ks}.devices_by_account WHERE account_id = ?")).await?,
            dba_delete_all: p(format!("DELETE FROM {ks}.devices_by_account WHERE account_id = ?")).await?,
            conv_insert: p(format!("INSERT INTO {ks}.conversations (id, kind, title, default_ttl_seconds, created_at_ms, head, head_message_id, mls_epoch, roster_version, group_roster_version) VALUES (?, ?, ?, ?, ?, 0, 0x, 0, 0, 0) IF NOT EXISTS")).await?,
            conv_get: p(format!("SELECT kind, title, default_ttl_seconds, created_at_ms FROM {ks}.conversations WHERE id = ?")).await?,
            conv_head: p(format!("SELECT head, head_message_id, mls_epoch, roster_version, group_roster_version FROM {ks}.conversations WHERE id = ?")).await?,
            // The seq claim carries the MLS condition: conditions on every
            // MLS column as read, the new epoch and group roster version set
            // in the same write.
            conv_claim: p(format!("UPDATE {ks}.conversations SET head = ?, head_message_id = ?, mls_epoch = ?, group_roster_version = ? WHERE id = ? IF head = ? AND head_message_id = ? AND mls_epoch = ? AND roster_version = ? AND group_roster_version = ?")).await?,
            mid_forget: p(format!("DELETE FROM {ks}.message_ids WHERE conversation_id = ? AND message_id = ? IF EXISTS")).await?,
            mem_put: p(format!("INSERT INTO {ks}.members (conversation_id, account_id, role) VALUES (?, ?, ?)")).await?,
            mem_list: p(format!("SELECT account_id, role FROM {ks}.members WHERE conversation_id = ?")).await?,
            mem_get: p(format!("SELECT role FROM {ks}.members WHERE conversation_id = ? AND account_id = ?")).await?,
            mem_delete: p(format!("DELETE FROM {ks}.members WHERE conversation_id = ? AND account_id = ?")).await?,
            cba_put: p(format!("INSERT INTO {ks}.conversations_by_account (account_id, conversation_id) VALUES (?, ?)")).await?,
            cba_list: p(format!("SELECT conversation_id FROM {ks}.conversations_by_account WHERE account_id = ?")).await?,
            cba_delete: p(format!("DELETE FROM {ks}.conversations_by_account WHERE account_id = ? AND conversation_id = ?")).await?,
            cba_delete_all: p(format!("DELETE FROM {ks}.conversations_by_account WHERE account_id = ?")).await?,
            mid_insert: p(format!("INSERT INTO {ks}.message_ids (conversation_id, message_id, sender_account_id, sender_device_id, server_time_ms, expires_at_ms, ciphertext, welcome, welcome_devices) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?")).await?,
            mid_get: p(format!("SELECT sender_account_id, sender_device_id, server_time_ms, expires_at_ms, ciphertext, welcome, welcome_devices FROM {ks}.message_ids WHERE conversation_id = ? AND message_id = ?")).await?,
            mid_delete: p(format!("DELETE FROM {ks}.message_ids WHERE conversation_id = ? AND message_id = ?")).await?,
            seq_put: p(format!("INSERT INTO {ks}.message_seqs (conversation_id, message_id, seq) VALUES (?, ?, ?) USING TTL ?")).await?,
            seq_get: p(format!("SELECT seq FROM {ks}.message_seqs WHERE conversation_id = ? AND message_id = ?")).await?,
            seq_delete: p(format!("DELETE FROM {ks}.message_seqs WHERE conversation_id = ? AND message_id = ?")).await?,
            log_put: p(format!("INSERT INTO {ks}.conversation_log (conversation_id, bucket, seq, message_id, sender_account_id, sender_device_id, server_time_ms, expires_at_ms, ciphertext) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?")).await?,
            log_read: p(format!("SELECT seq, message_id, sender_account_id, sender_device_id, server_time_ms, expires_at_ms, ciphertext FROM {ks}.conversation_log WHERE conversation_id = ? AND bucket = ? AND seq > ?")).await?,
            log_ids: p(format!("SELECT message_id FROM {ks}.conversation_log WHERE conversation_id = ? AND bucket = ?")).await?,
            log_delete: p(format!("DELETE FROM {ks}.conversation_log WHERE conversation_id = ? AND bucket = ? AND seq = ?")).await?,
            log_delete_bucket: p(format!("DELETE FROM {ks}.conversation_log WHERE conversation_id = ? AND bucket = ?")).await?,
            eaw_put: p(format!("INSERT INTO {ks}.expired_at_write (shard, expires_at_ms, conversation_id, seq) VALUES (?, ?, ?, ?) USING TTL ?")).await?,
            eaw_list: p(format!("SELECT expires_at_ms, conversation_id, seq FROM {ks}.expired_at_write WHERE shard = ? AND expires_at_ms <= ?")).await?,
            eaw_delete: p(format!("DELETE FROM {ks}.expired_at_write WHERE shard = ? AND expires_at_ms <= ?")).await?,
            cur_put: p(format!("INSERT INTO {ks}.cursors (device_id, incarnation, conversation_id, seq) VALUES (?, ?, ?, ?) USING TIMESTAMP ?")).await?,
            cur_list: p(format!("SELECT conversation_id, seq FROM {ks}.cursors WHERE device_id = ? AND incarnation = ?")).await?,
            cur_delete_all: p(format!("DELETE FROM {ks}.cursors WHERE device_id = ? AND incarnation = ?")).await?,
        })
    }
}

/// The [`Store`] on Scylla / Cassandra.
#[derive(Debug)]
pub struct CqlStore {
    session: Session,
    st: Statements,
    adm: admin::AdminStatements,
    mls: mls::MlsStatements,
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
        Ok(Self {
            session,
            st,
            adm,
            mls,
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

    /// Whether this process knows `head`, owned by `mid`, to be written
    /// (without waiting for an append in progress).
    fn known_complete(&self, cid: &str, head: u64, mid: &[u8]) -> bool {
        let map = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(cid)
            .and_then(|h| h.try_lock().ok())
            .is_some_and(|h| {
                h.complete
                    && h.known
                        .as_ref()
                        .is_some_and(|k| k.head == head && k.mid == mid)
            })
    }

    async fn read_head(&self, cid: &str) -> Result<Option<ConvHead>, StoreError> {
        type R = (
            Option<i64>,
            Option<Vec<u8>>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let row: Option<R> = self.one(&self.st.conv_head, (cid,), "read head").await?;
        Ok(row.map(|(h, m, epoch, roster, group)| ConvHead {
            head: to_u64(h.unwrap_or(0)),
            mid: m.unwrap_or_default(),
            mls: MlsCols {
                epoch,
                roster,
                group,
            },
        }))
    }

    async fn seq_of(&self, cid: &str, mid: &[u8]) -> Result<Option<u64>, StoreError> {
        let row: Option<(Option<i64>,)> =
            self.one(&self.st.seq_get, (cid, mid), "read seq").await?;
        Ok(row.and_then(|(s,)| s).map(to_u64))
    }

    async fn payload(&self, cid: &str, mid: &[u8]) -> Result<Option<Payload>, StoreError> {
        type R = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<String>>,
        );
        let row: Option<R> = self
            .one(&self.st.mid_get, (cid, mid), "read message id")
            .await?;
        Ok(row.map(|(a, d, t, e, c, w, wd)| Payload {
            message_id: mid.to_vec(),
            sender_account_id: a.unwrap_or_default(),
            sender_device_id: d.unwrap_or_default(),
            server_time_ms: t.unwrap_or(0),
            expires_at_ms: e,
            ciphertext: c.unwrap_or_default(),
            welcome: w.map(|w| (w, wd.unwrap_or_default())),
        }))
    }

    /// Step 3 of append: the log row, a commit's Welcome, then the id -> seq
    /// row (so a known seq means everything is written). Idempotent.
    async fn complete(&self, cid: &str, seq: u64, p: &Payload) -> Result<(), StoreError> {
        let now = wall_ms();
        let (ttl, expired) = ttl_for(p.expires_at_ms, now);
        let s = to_i64(seq);
        self.exec(
            &self.st.log_put,
            (
                cid,
                to_i64(seq / BUCKET_SIZE),
                s,
                &p.message_id,
                &p.sender_account_id,
                &p.sender_device_id,
                p.server_time_ms,
                p.expires_at_ms,
                &p.ciphertext,
                ttl,
            ),
            "write log row",
        )
        .await?;
        if expired {
            let shard = i32::try_from(seq % EXPIRED_SHARDS as u64).unwrap_or(0);
            self.exec(
                &self.st.eaw_put,
                (shard, p.expires_at_ms, cid, s, EXPIRED_AT_WRITE_TTL),
                "index expired message",
            )
            .await?;
        }
        if let Some((welcome, devices)) = &p.welcome {
            self.store_welcome(cid, seq, welcome, devices).await?;
        }
        self.exec(
            &self.st.seq_put,
            (cid, &p.message_id, s, ttl),
            "write message seq",
        )
        .await?;
        Ok(())
    }

    /// Makes sure the head `seq`, owned by `mid`, has its log row.
    async fn help(&self, cid: &str, seq: u64, mid: &[u8]) -> Result<(), StoreError> {
        if seq == 0 || self.seq_of(cid, mid).await?.is_some() {
            return Ok(());
        }
        match self.payload(cid, mid).await? {
            Some(p) => self.complete(cid, seq, &p).await,
            // Expired and gone by TTL: an expired message is never shown.
            None => Ok(()),
        }
    }

    /// Deletes a conversation's messages (every bucket up to the head):
    /// used when its last member's account is deleted.
    async fn purge_conversation_messages(&self, cid: &str) -> Result<(), StoreError> {
        let Some(ConvHead { head, .. }) = self.read_head(cid).await? else {
            return Ok(());
        };
        if head == 0 {
            return Ok(());
        }
        for bucket in 0..=head / BUCKET_SIZE {
            let b = to_i64(bucket);
            let ids: Vec<(Option<Vec<u8>>,)> =
                self.all(&self.st.log_ids, (cid, b), "list log ids").await?;
            for mid in ids.into_iter().filter_map(|(m,)| m) {
                self.exec(&self.st.mid_delete, (cid, &mid), "delete message id")
                    .await?;
                self.exec(&self.st.seq_delete, (cid, &mid), "delete message seq")
                    .await?;
            }
            self.exec(&self.st.log_delete_bucket, (cid, b), "delete log bucket")
                .await?;
        }
        Ok(())
    }

    async fn require_accounts(&self, ids: &[&str]) -> Result<(), StoreError> {
        for id in ids {
            if self.get_account(id).await?.is_none() {
                return Err(StoreError::NoSuchAccount((*id).to_owned()));
            }
        }
        Ok(())
    }

    async fn device_row(&self, id: &str) -> Result<Option<(Device, i64)>, StoreError> {
        let row: Option<DeviceRow> = self.one(&self.st.dev_get, (id,), "read device").await?;
        Ok(row.map(|(id, acc, key, revoked, created, inc)| {
            (
                Device {
                    id,
                    account_id: acc.unwrap_or_default(),
                    public_key: key.unwrap_or_default(),
                    revoked: revoked.unwrap_or(false),
                    created_at_ms: created.unwrap_or(0),
                },
                inc.unwrap_or(0),
            )
        }))
    }

    /// Changes an account's device slots by one with an LWT loop; `limit`
    /// bounds an increment.
    async fn change_slots(&self, account_id: &str, up: bool, limit: u32) -> Result<(), StoreError> {
        let row: Option<(Option<String>, Option<i64>, Option<i32>)> = self
            .one(&self.st.acc_get, (account_id,), "read account")
            .await?;
        let Some((_, _, slots)) = row else {
            return Err(StoreError::NoSuchAccount(account_id.to_owned()));
        };
        let mut current = slots.unwrap_or(0);
        for attempt in 0..100u32 {
            let next = if up {
                if i64::from(current) >= i64::from(limit) {
                    return Err(StoreError::DeviceLimit {
                        account: account_id.to_owned(),
                        limit,
                    });
                }
                current + 1
            } else {
                (current - 1).max(0)
            };
            let r = self
                .lwt(
                    &self.st.acc_slot,
                    (next, account_id, current),
                    "claim device slot",
                )
                .await?;
            if r.applied {
                return Ok(());
            }
            match r.get("device_slots") {
                Some(CqlValue::Int(v)) => current = *v,
                // The row is gone: the account was deleted meanwhile.
                _ => return Err(StoreError::NoSuchAccount(account_id.to_owned())),
            }
            backoff(attempt).await;
        }
        Err(StoreError::Backend(format!(
            "cql: device slots of {account_id:?} stayed contended"
        )))
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
        let r = self
            .lwt(
                &self.st.acc_insert,
                (&account.id, &account.display_name, account.created_at_ms),
                "create account",
            )
            .await?;
        if r.applied {
            Ok(())
        } else {
            Err(StoreError::AccountExists(account.id))
        }
    }

    async fn get_account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        let row: Option<(Option<String>, Option<i64>, Option<i32>)> = self
            .one(&self.st.acc_get, (account_id,), "read account")
            .await?;
        Ok(row.map(|(name, created, _)| Account {
            id: account_id.to_owned(),
            display_name: name.unwrap_or_default(),
            created_at_ms: created.unwrap_or(0),
        }))
    }

    async fn delete_account(&self, account_id: &str) -> Result<AccountPurge, StoreError> {
        if self.get_account(account_id).await?.is_none() {
            return Err(StoreError::NoSuchAccount(account_id.to_owned()));
        }
        let mut purge = AccountPurge::default();
        let devices: Vec<(String,)> = self
            .all(&self.st.dba_list, (account_id,), "list devices")
            .await?;
        for (device_id,) in devices {
            if let Some((_, incarnation)) = self.device_row(&device_id).await? {
                let cursors: Vec<(String, Option<i64>)> = self
                    .all(&self.st.cur_list, (&device_id, incarnation), "list cursors")
                    .await?;
                purge.cursors += u32::try_from(cursors.len()).unwrap_or(u32::MAX);
                self.exec(
                    &self.st.cur_delete_all,
                    (&device_id, incarnation),
                    "delete cursors",
                )
                .await?;
                self.delete_key_packages(&device_id).await?;
                self.delete_welcome_index(&device_id).await?;
                self.lwt(&self.st.dev_delete, (&device_id,), "delete device")
                    .await?;
                purge.devices += 1;
            }
        }
        self.exec(&self.st.dba_delete_all, (account_id,), "delete device list")
            .await?;
        let convs: Vec<(String,)> = self
            .all(&self.st.cba_list, (account_id,), "list memberships")
            .await?;
        for (cid,) in convs {
            let was: Option<(Option<i8>,)> = self
                .one(&self.st.mem_get, (&cid, account_id), "read member")
                .await?;
            if was.is_some() {
                self.exec(&self.st.mem_delete, (&cid, account_id), "delete member")
                    .await?;
                purge.memberships += 1;
                // Messages only this account could still read go with it.
                if self.members(&cid).await?.is_empty() {
                    self.purge_conversation_messages(&cid).await?;
                }
            }
            // After the member row, and for every conversation still listed
            // (even if the member row went in an earlier, failed attempt):
            // the retry of a failed deletion completes the bumps.
            self.bump_roster(&cid).await?;
        }
        self.exec(&self.st.cba_delete_all, (account_id,), "delete memberships")
            .await?;
        self.a_purge_state(account_id).await?;
        self.lwt(&self.st.acc_delete, (account_id,), "delete account")
            .await?;
        Ok(purge)
    }

    async fn add_device(&self, device: Device, max_devices: u32) -> Result<(), StoreError> {
        if self.get_account(&device.account_id).await?.is_none() {
            return Err(StoreError::NoSuchAccount(device.account_id));
        }
        if self.device_row(&device.id).await?.is_some() {
            return Err(StoreError::DeviceExists(device.id));
        }
        // The slot first: a crash then costs a slot, never an uncounted device.
        self.change_slots(&device.account_id, true, max_devices)
            .await?;
        let incarnation = i64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        ) ^ wall_ms().rotate_left(20);
        let r = self
            .lwt(
                &self.st.dev_insert,
                (
                    &device.id,
                    &device.account_id,
                    &device.public_key,
                    device.revoked,
                    device.created_at_ms,
                    incarnation,
                ),
                "add device",
            )
            .await?;
        if !r.applied {
            self.change_slots(&device.account_id, false, max_devices)
                .await?;
            return Err(StoreError::DeviceExists(device.id));
        }
        self.exec(
            &self.st.dba_insert,
            (&device.account_id, &device.id),
            "list device",
        )
        .await?;
        Ok(())
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(self.device_row(device_id).await?.map(|(d, _)| d))
    }

    async fn list_devices(&self, account_id: &str) -> Result<Vec<Device>, StoreError> {
        let ids: Vec<(String,)> = self
            .all(&self.st.dba_list, (account_id,), "list devices")
            .await?;
        // Point reads of single-row partitions, several in flight, in order.
        let found: Vec<Option<Device>> = futures_util::stream::iter(
            ids.into_iter()
                .map(|(id,)| async move { self.get_device(&id).await }),
        )
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
        Ok(found
            .into_iter()
            .flatten()
            .filter(|d| d.account_id == account_id)
            .collect())
    }

    async fn devices_of(&self, account_ids: Vec<String>) -> Result<Vec<Device>, StoreError> {
        // One partition per account: many reads in flight, not one at a
        // time (a 7,000-member channel's roster).
        let lists: Vec<Vec<Device>> = futures_util::stream::iter(
            account_ids
                .into_iter()
                .map(|a| async move { self.list_devices(&a).await }),
        )
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
        Ok(lists.into_iter().flatten().collect())
    }

    async fn revoke_device(&self, device_id: &str) -> Result<Device, StoreError> {
        let r = self
            .lwt(&self.st.dev_revoke, (device_id,), "revoke device")
            .await?;
        if !r.applied {
            return Err(StoreError::NoSuchDevice(device_id.to_owned()));
        }
        let device = self
            .get_device(device_id)
            .await?
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))?;
        self.delete_key_packages(device_id).await?;
        // Every call bumps, so a retry after a failure here completes it.
        self.bump_account(&device.account_id).await?;
        Ok(device)
    }

    async fn create_conversation(
        &self,
        conversation: Conversation,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        // Last role wins for a repeated account.
        let mut by_account: BTreeMap<&str, Role> = BTreeMap::new();
        for m in &members {
            by_account.insert(&m.account_id, m.role);
        }
        if conversation.kind == ConversationKind::Direct && by_account.len() != 2 {
            return Err(StoreError::DirectNeedsTwo(by_account.len()));
        }
        let ids: Vec<&str> = by_account.keys().copied().collect();
        self.require_accounts(&ids).await?;
        let r = self
            .lwt(
                &self.st.conv_insert,
                (
                    &conversation.id,
                    kind_code(conversation.kind),
                    &conversation.title,
                    to_i64(conversation.default_ttl_seconds),
                    conversation.created_at_ms,
                ),
                "create conversation",
            )
            .await?;
        if !r.applied {
            return Err(StoreError::ConversationExists(conversation.id));
        }
        self.write_members(&conversation.id, &by_account).await
    }

    async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let row: Option<(Option<i8>, Option<String>, Option<i64>, Option<i64>)> = self
            .one(&self.st.conv_get, (conversation_id,), "read conversation")
            .await?;
        row.map(|(kind, title, ttl, created)| {
            Ok(Conversation {
                id: conversation_id.to_owned(),
                kind: kind_of(kind.unwrap_or(1))?,
                title: title.unwrap_or_default(),
                default_ttl_seconds: to_u64(ttl.unwrap_or(0)),
                created_at_ms: created.unwrap_or(0),
            })
        })
        .transpose()
    }

    async fn put_members(
        &self,
        conversation_id: &str,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        let conv = self
            .get_conversation(conversation_id)
            .await?
            .ok_or_else(|| StoreError::NoSuchConversation(conversation_id.to_owned()))?;
        let mut by_account: BTreeMap<&str, Role> = BTreeMap::new();
        for m in &members {
            by_account.insert(&m.account_id, m.role);
        }
        let ids: Vec<&str> = by_account.keys().copied().collect();
        self.require_accounts(&ids).await?;
        if conv.kind == ConversationKind::Direct {
            let mut all: std::collections::BTreeSet<String> = self
                .members(conversation_id)
                .await?
                .into_iter()
                .map(|m| m.account_id)
                .collect();
            all.extend(ids.iter().map(|s| (*s).to_owned()));
            if all.len() > 2 {
                return Err(StoreError::DirectNeedsTwo(all.len()));
            }
        }
        self.write_members(conversation_id, &by_account).await?;
        // After the rows: whoever sees the new roster version sees them.
        if !by_account.is_empty() {
            self.bump_roster(conversation_id).await?;
        }
        Ok(())
    }

    async fn remove_members(
        &self,
        conversation_id: &str,
        account_ids: Vec<String>,
    ) -> Result<u32, StoreError> {
        if self.get_conversation(conversation_id).await?.is_none() {
            return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
        }
        let unique: std::collections::BTreeSet<String> = account_ids.into_iter().collect();
        let unique_empty = unique.is_empty();
        let mut removed = 0;
        for a in unique {
            let was: Option<(Option<i8>,)> = self
                .one(&self.st.mem_get, (conversation_id, &a), "read member")
                .await?;
            if was.is_some() {
                self.exec(&self.st.mem_delete, (conversation_id, &a), "delete member")
                    .await?;
                self.exec(
                    &self.st.cba_delete,
                    (&a, conversation_id),
                    "delete membership",
                )
                .await?;
                removed += 1;
            }
        }
        // Always (a retry after a failure between the deletes and the bump
        // completes it); after the deletes, so that whoever sees the new
        // roster version also sees the new membership.
        if !unique_empty {
            self.bump_roster(conversation_id).await?;
        }
        Ok(removed)
    }

    async fn members(&self, conversation_id: &str) -> Result<Vec<Member>, StoreError> {
        let rows: Vec<(String, Option<i8>)> = self
            .all(&self.st.mem_list, (conversation_id,), "list members")
            .await?;
        rows.into_iter()
            .map(|(account_id, role)| {
                Ok(Member {
                    account_id,
                    role: role_of(role.unwrap_or(0))?,
                })
            })
            .collect()
    }

    async fn conversations_of(&self, account_id: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self
            .all(&self.st.cba_list, (account_id,), "list memberships")
            .await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        self.check_open()?;
        let cid = m.conversation_id.clone();
        let lock = self.head_lock(&cid);
        let mut head_state = lock.lock().await;
        // `fresh`: `row` was read from the database during this call (not
        // taken from the cache), so a refusal on it is the current answer.
        let (mut row, mut fresh) = match head_state.known.clone() {
            Some(k) => (k, false),
            None => {
                let Some(k) = self.read_head(&cid).await? else {
                    return Err(StoreError::NoSuchConversation(cid));
                };
                head_state.complete = false;
                (k, true)
            }
        };
        let now = wall_ms();
        let (ttl, _) = ttl_for(m.expires_at_ms, now);
        let welcome = match &m.mls {
            Some(MlsCheck::Commit {
                welcome: Some(w), ..
            }) => Some(w),
            _ => None,
        };
        let ins = self
            .lwt(
                &self.st.mid_insert,
                (
                    &cid,
                    &m.message_id,
                    &m.sender_account_id,
                    &m.sender_device_id,
                    m.server_time_ms,
                    m.expires_at_ms,
                    &m.ciphertext,
                    welcome.map_or(MaybeUnset::Unset, |w| MaybeUnset::Set(&w.bytes)),
                    welcome.map_or(MaybeUnset::Unset, |w| MaybeUnset::Set(&w.device_ids)),
                    ttl,
                ),
                "record message id",
            )
            .await?;
        let payload = if ins.applied {
            Payload {
                message_id: m.message_id.clone(),
                sender_account_id: m.sender_account_id,
                sender_device_id: m.sender_device_id,
                server_time_ms: m.server_time_ms,
                expires_at_ms: m.expires_at_ms,
                ciphertext: m.ciphertext,
                welcome: welcome.map(|w| (w.bytes.clone(), w.device_ids.clone())),
            }
        } else {
            let first = Payload {
                message_id: m.message_id.clone(),
                sender_account_id: match ins.get("sender_account_id") {
                    Some(CqlValue::Text(s)) => s.clone(),
                    _ => String::new(),
                },
                sender_device_id: match ins.get("sender_device_id") {
                    Some(CqlValue::Text(s)) => s.clone(),
                    _ => String::new(),
                },
                server_time_ms: ins.bigint("server_time_ms").unwrap_or(0),
                expires_at_ms: ins.bigint("expires_at_ms"),
                ciphertext: ins.blob("ciphertext").unwrap_or_default(),
                welcome: ins
                    .blob("welcome")
                    .map(|w| (w, ins.texts("welcome_devices"))),
            };
            // Idempotency first: an accepted id is a duplicate, whatever its
            // MLS condition says now.
            if let Some(seq) = self.seq_of(&cid, &m.message_id).await? {
                return Ok(Appended {
                    seq,
                    server_time_ms: first.server_time_ms,
                    duplicate: true,
                });
            }
            first
        };
        for attempt in 0..200u32 {
            if row.head > 0 && row.mid == payload.message_id {
                // Claimed for this id already (a crashed or concurrent
                // attempt): finish it; this call is the duplicate.
                let seq = row.head;
                self.complete(&cid, seq, &payload).await?;
                *head_state = Head {
                    known: Some(row),
                    complete: true,
                };
                return Ok(Appended {
                    seq,
                    server_time_ms: payload.server_time_ms,
                    duplicate: true,
                });
            }
            if !(head_state.complete
                && head_state
                    .known
                    .as_ref()
                    .is_some_and(|k| k.head == row.head))
            {
                self.help(&cid, row.head, &row.mid).await?;
            }
            if attempt > 0
                && let Some(seq) = self.seq_of(&cid, &payload.message_id).await?
            {
                *head_state = Head {
                    known: Some(row),
                    complete: true,
                };
                return Ok(Appended {
                    seq,
                    server_time_ms: payload.server_time_ms,
                    duplicate: true,
                });
            }
            let after = match admit_mls(m.mls.as_ref(), row.mls.state()) {
                Ok(after) => after,
                Err(refusal) if fresh => {
                    // The head is complete: helped above or known.
                    *head_state = Head {
                        known: Some(row),
                        complete: true,
                    };
                    if ins.applied {
                        // A refused message leaves nothing behind: its id
                        // may come again (re-encrypted after catching up).
                        self.lwt(
                            &self.st.mid_forget,
                            (&cid, &payload.message_id),
                            "forget refused message",
                        )
                        .await?;
                    }
                    return Err(refusal);
                }
                Err(_) => {
                    // Refused on the cached row, which may be stale: decide
                    // on the current one.
                    let Some(current) = self.read_head(&cid).await? else {
                        *head_state = Head::default();
                        return Err(StoreError::NoSuchConversation(cid));
                    };
                    row = current;
                    fresh = true;
                    continue;
                }
            };
            let next = row.head + 1;
            let claim = self
                .lwt(
                    &self.st.conv_claim,
                    (
                        to_i64(next),
                        &payload.message_id,
                        to_i64(after.epoch),
                        to_i64(after.group_roster_version),
                        &cid,
                        to_i64(row.head),
                        &row.mid,
                        row.mls.epoch,
                        row.mls.roster,
                        row.mls.group,
                    ),
                    "claim seq",
                )
                .await?;
            if claim.applied {
                // Known before the log row is written: if that write fails,
                // the next append or read completes it.
                *head_state = Head {
                    known: Some(ConvHead {
                        head: next,
                        mid: payload.message_id.clone(),
                        mls: MlsCols {
                            epoch: Some(to_i64(after.epoch)),
                            roster: row.mls.roster,
                            group: Some(to_i64(after.group_roster_version)),
                        },
                    }),
                    complete: false,
                };
                self.complete(&cid, next, &payload).await?;
                head_state.complete = true;
                return Ok(Appended {
                    seq: next,
                    server_time_ms: payload.server_time_ms,
                    duplicate: false,
                });
            }
            let Some(h) = claim.bigint("head") else {
                *head_state = Head::default();
                return Err(StoreError::NoSuchConversation(cid));
            };
            row = ConvHead {
                head: to_u64(h),
                mid: claim.blob("head_message_id").unwrap_or_default(),
                mls: MlsCols {
                    epoch: claim.bigint("mls_epoch"),
                    roster: claim.bigint("roster_version"),
                    group: claim.bigint("group_roster_version"),
                },
            };
            fresh = true;
            let complete = head_state.complete
                && head_state
                    .known
                    .as_ref()
                    .is_some_and(|k| k.head == row.head);
            *head_state = Head {
                known: Some(row.clone()),
                complete,
            };
            backoff(attempt).await;
        }
        *head_state = Head::default();
        Err(StoreError::Backend(format!(
            "cql: the head of {cid:?} stayed contended"
        )))
    }

    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
        now_ms: UnixMillis,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(ConvHead {
            head,
            mid: head_mid,
            ..
        }) = self.read_head(conversation_id).await?
        else {
            return Ok(Vec::new());
        };
        if after_seq >= head {
            return Ok(Vec::new());
        }
        // Only the head can be claimed but unwritten: complete it first
        // (no round trip when this process wrote that head itself).
        if !self.known_complete(conversation_id, head, &head_mid) {
            self.help(conversation_id, head, &head_mid).await?;
        }
        let mut out = Vec::new();
        let page = i32::try_from(limit.clamp(16, 1000)).unwrap_or(1000);
        for bucket in (after_seq + 1) / BUCKET_SIZE..=head / BUCKET_SIZE {
            let mut bound = self
                .st
                .log_read
                .clone()
                .bind(&(conversation_id, to_i64(bucket), to_i64(after_seq)))
                .map_err(|e| backend("read log", e))?;
            bound.set_page_size(page);
            self.check_open()?;
            let mut rows = self
                .session
                .execute_bound_iter(bound)
                .await
                .map_err(|e| backend("read log", e))?
                .rows_stream::<LogRow>()
                .map_err(|e| backend("read log", e))?;
            while let Some(row) = rows.next().await {
                let (seq, mid, acc, dev, time, exp, ct) =
                    row.map_err(|e| backend("read log", e))?;
                if exp.is_some_and(|e| e <= now_ms) {
                    continue;
                }
                out.push(StoredMessage {
                    conversation_id: conversation_id.to_owned(),
                    seq: to_u64(seq),
                    message_id: mid.unwrap_or_default(),
                    sender_account_id: acc.unwrap_or_default(),
                    sender_device_id: dev.unwrap_or_default(),
                    server_time_ms: time.unwrap_or(0),
                    expires_at_ms: exp,
                    ciphertext: ct.unwrap_or_default(),
                });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    async fn head(&self, conversation_id: &str) -> Result<u64, StoreError> {
        Ok(self.read_head(conversation_id).await?.map_or(0, |h| h.head))
    }

    async fn advance_cursors(
        &self,
        device_id: &str,
        cursors: Vec<(String, u64)>,
    ) -> Result<(), StoreError> {
        let Some((_, incarnation)) = self.device_row(device_id).await? else {
            return Err(StoreError::NoSuchDevice(device_id.to_owned()));
        };
        let mut max: BTreeMap<String, u64> = BTreeMap::new();
        for (c, s) in cursors {
            let e = max.entry(c).or_insert(s);
            *e = (*e).max(s);
        }
        if max.is_empty() {
            return Ok(());
        }
        // One partition (the device's): an unlogged batch is atomic there.
        // The write timestamp is the seq, so the highest seq wins.
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(max.len());
        for (c, s) in &max {
            batch.append_statement(self.st.cur_put.clone());
            values.push((device_id, incarnation, c.as_str(), to_i64(*s), to_i64(*s)));
        }
        self.check_open()?;
        self.session
            .batch(&batch, values)
            .await
            .map_err(|e| backend("advance cursors", e))?;
        Ok(())
    }

    async fn advance_cursors_many(
        &self,
        updates: Vec<(String, Vec<(String, u64)>)>,
    ) -> Result<(), StoreError> {
        // One batch per device partition, several devices in flight.
        futures_util::stream::iter(updates.into_iter().map(|(device, cursors)| async move {
            match self.advance_cursors(&device, cursors).await {
                Ok(()) | Err(StoreError::NoSuchDevice(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    async fn cursors(&self, device_id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let Some((_, incarnation)) = self.device_row(device_id).await? else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String, Option<i64>)> = self
            .all(&self.st.cur_list, (device_id, incarnation), "list cursors")
            .await?;
        Ok(rows
            .into_iter()
            .map(|(c, s)| (c, to_u64(s.unwrap_or(0))))
            .collect())
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
        epoch: u64,
        roster_version: u64,
    ) -> Result<MlsState, StoreError> {
        self.m_mark_reconciled(conversation_id, epoch, roster_version)
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
        let mut purged = 0u64;
        for shard in 0..EXPIRED_SHARDS {
            let rows: Vec<(i64, String, i64)> = self
                .all(&self.st.eaw_list, (shard, now_ms), "list expired")
                .await?;
            if rows.is_empty() {
                continue;
            }
            for (_, cid, seq) in &rows {
                self.exec(
                    &self.st.log_delete,
                    (cid, seq / to_i64(BUCKET_SIZE), *seq),
                    "delete expired",
                )
                .await?;
                purged += 1;
            }
            // One range tombstone for the whole shard prefix.
            self.exec(&self.st.eaw_delete, (shard, now_ms), "delete expired index")
                .await?;
        }
        Ok(purged)
    }
}

impl CqlStore {
    /// Writes memberships: the members rows in one batch (one partition),
    /// then each account's index row.
    async fn write_members(
        &self,
        conversation_id: &str,
        by_account: &BTreeMap<&str, Role>,
    ) -> Result<(), StoreError> {
        if by_account.is_empty() {
            return Ok(());
        }
        for chunk in by_account.iter().collect::<Vec<_>>().chunks(500) {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(chunk.len());
            for (a, r) in chunk {
                batch.append_statement(self.st.mem_put.clone());
                values.push((conversation_id, **a, role_code(**r)));
            }
            self.check_open()?;
            self.session
                .batch(&batch, values)
                .await
                .map_err(|e| backend("write members", e))?;
        }
        for a in by_account.keys() {
            self.exec(&self.st.cba_put, (*a, conversation_id), "write membership")
                .await?;
        }
        Ok(())
    }
}
