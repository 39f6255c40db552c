//! The embedded backend: one redb file on local disk, with group commit.
//!
//! # Layout
//! This file opens the database and holds the store's handle; the rest is
//! one file per concern: `records` (row encodings), `tables` (table
//! definitions and reads), `writer` (the writer thread and its batches), the
//! writes by domain (`directory`, `logs` with cursors and the purge, `mls`,
//! `operators` for tags, suspension and enrollment codes), and `store_api`
//! (the [`Store`] trait on top of them).
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
//! | `audit`           | (at ms, entry id)                    | `AuditRec` (with its place in the hash chain) |
//! | `audit_head`      | chain (a relay's node id)            | (position, hash) of the chain's last entry |
//! | `mls_state`       | conversation id                      | (epoch, roster version, group roster version) |
//! | `mls_generation`  | conversation id                      | restarts of its MLS group (no row: 0) |
//! | `key_packages`    | (device id, upload index)            | one-time key package       |
//! | `last_resort_packages` | device id                       | last-resort key package    |
//! | `welcomes`        | (conversation id, seq of the commit) | Welcome bytes              |
//! | `device_welcomes` | (device id, conversation id)         | seq of its latest Welcome  |
//! | `push_endpoints`  | device id                            | its Web Push endpoint      |
//! | `attachments`     | attachment id                        | `AttachmentRec` (conversation, uploader, size, expiry, chunks stored) |
//! | `attachment_chunks` | (attachment id, chunk index)       | the chunk's ciphertext     |
//! | `attachment_expiry` | (expires at ms, attachment id)     | `()`                       |
//!
//! A conversation's archived flag is field 5 of `ConversationRec`. The
//! admin API's five tables (`account_state` to `audit`), `audit_head` and the six MLS
//! tables after them are created on open, so a file of the first layout
//! opens unchanged; a conversation without a `mls_state` row is at
//! (0, 0, 0), without a `mls_generation` row at generation 0.
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
    Account, AccountPurge, AccountState, Appended, Attachment, AuditEntry, Conversation,
    ConversationKind, Device, DirectChats, EnrollmentCode, KeyPackageCount, KeyPackageUpload,
    Member, MlsCheck, MlsState, NewMessage, Page, Policy, PolicyScope, Role, Store, StoreError,
    StoredMessage, UnixMillis, admit_mls, check_chunk, normalize_tags, reconcile, restart,
};

#[cfg(test)]
mod tests;

mod attachments;
mod directory;
mod logs;
mod mls;
mod operators;
mod records;
mod store_api;
mod tables;
mod writer;

use attachments::*;
use directory::*;
use logs::*;
use mls::*;
use operators::*;
use records::*;
use tables::*;
use writer::*;

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "herold.redb";

/// Version of the table layout written to `meta`; a file of another version
/// is refused with [`StoreError::Corrupt`].
const SCHEMA_VERSION: u64 = 1;

const SCHEMA_VERSION_KEY: &str = "schema_version";

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
