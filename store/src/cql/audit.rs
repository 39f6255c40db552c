//! The CQL audit log (migrations 2 and 6): entries in `audit_log`, one
//! partition per 30 days, newest first, chained by hash per relay through
//! that relay's head row in `audit_chain`.
//!
//! An append reads its chain's head (unless this process moved it last),
//! writes the head's own `audit_log` row again (plain, idempotent: it
//! completes an append that crashed after moving the head), then moves the
//! head to the new entry with an LWT on `seq` and writes the entry's row.
//! So at any time only a head's row can be missing, and every listing first
//! writes the heads' rows again (with its first page): a listing never
//! shows a gap that a crash, rather than a deletion, made. Within a process
//! the appends queue on an async mutex that also keeps the heads this
//! process moved last (their rows written): a relay's chain has one writer,
//! so its LWTs do not contend, and an append is two round trips.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, backend, backoff, to_i64, to_u64};
use crate::{AuditEntry, StoreError, UnixMillis};

/// Audit log partition: 30 days.
const AUDIT_BUCKET_MS: i64 = 30 * 24 * 3600 * 1000;
/// How many audit partitions a listing looks back: two years.
const AUDIT_LOOKBACK_BUCKETS: i64 = 25;
/// Rounds of the head's LWT loop before giving up.
const LWT_ROUNDS: u32 = 100;
/// Rounds in which a failed (e.g. timed-out) LWT is tried again.
const TIMEOUT_ROUNDS: u32 = 5;

/// The statements of the audit log, prepared once.
#[derive(Debug)]
pub(super) struct AuditStatements {
    put: PreparedStatement,
    list: PreparedStatement,
    head_get: PreparedStatement,
    heads: PreparedStatement,
    head_create: PreparedStatement,
    head_move: PreparedStatement,
}

impl AuditStatements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String| async move {
            let mut st = s.prepare(cql.clone()).await.map_err(|e| {
                StoreError::Backend(format!(
                    "cql prepare {cql:?}: {e} (is keyspace {ks} migrated to version 6?)"
                ))
            })?;
            st.set_is_idempotent(!cql.contains(" IF "));
            Ok::<_, StoreError>(st)
        };
        const ENTRY: &str = "at_ms, entry_id, operator, action, target, outcome, detail";
        Ok(Self {
            put: p(format!("INSERT INTO {ks}.audit_log (bucket, at_ms, id, operator, action, target, outcome, detail, chain, chain_seq, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")).await?,
            list: p(format!("SELECT at_ms, id, operator, action, target, outcome, detail, chain, chain_seq, hash FROM {ks}.audit_log WHERE bucket = ? AND (at_ms, id) < (?, ?) LIMIT ?")).await?,
            head_get: p(format!("SELECT id, seq, hash, {ENTRY} FROM {ks}.audit_chain WHERE id = ?")).await?,
            heads: p(format!("SELECT id, seq, hash, {ENTRY} FROM {ks}.audit_chain")).await?,
            head_create: p(format!("INSERT INTO {ks}.audit_chain (id, seq, hash, {ENTRY}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")).await?,
            head_move: p(format!("UPDATE {ks}.audit_chain SET seq = ?, hash = ?, at_ms = ?, entry_id = ?, operator = ?, action = ?, target = ?, outcome = ?, detail = ? WHERE id = ? IF seq = ?")).await?,
        })
    }
}

/// A head row as read.
type HeadRow = (
    String,
    Option<i64>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn head_entry(r: HeadRow) -> Option<AuditEntry> {
    let (chain, seq, hash, at_ms, id, operator, action, target, outcome, detail) = r;
    Some(AuditEntry {
        chain,
        at_ms: at_ms?,
        id: id?,
        operator: operator.unwrap_or_default(),
        action: action.unwrap_or_default(),
        target: target.unwrap_or_default(),
        outcome: outcome.unwrap_or_default(),
        detail: detail.unwrap_or_default(),
        chain_seq: to_u64(seq?),
        hash: hash?,
    })
}

impl CqlStore {
    pub(super) async fn audit_head(&self, chain: &str) -> Result<Option<AuditEntry>, StoreError> {
        let row: Option<HeadRow> = self
            .one(&self.audit.head_get, (chain,), "read audit chain head")
            .await?;
        Ok(row.and_then(head_entry))
    }

    async fn put_audit_row(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.exec(
            &self.audit.put,
            (
                e.at_ms.div_euclid(AUDIT_BUCKET_MS),
                e.at_ms,
                &e.id,
                &e.operator,
                &e.action,
                &e.target,
                &e.outcome,
                &e.detail,
                &e.chain,
                to_i64(e.chain_seq),
                &e.hash,
            ),
            "write audit entry",
        )
        .await?;
        Ok(())
    }

    /// Moves the chain's head from `head` (`None`: no chain yet) to
    /// `entry`, which gets its place and hash: the LWT step of an append,
    /// without writing the entry's row. False if another append moved the
    /// head first.
    pub(super) async fn move_audit_head(
        &self,
        head: Option<&AuditEntry>,
        entry: &mut AuditEntry,
    ) -> Result<bool, StoreError> {
        let e = entry;
        let r = match head {
            Some(h) => {
                let hash: [u8; 32] =
                    h.hash
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt {
                            table: "audit_chain",
                            detail: "the chain head's hash is not 32 bytes".into(),
                        })?;
                e.chain_after(h.chain_seq, &hash);
                self.lwt(
                    &self.audit.head_move,
                    (
                        to_i64(e.chain_seq),
                        &e.hash,
                        e.at_ms,
                        &e.id,
                        &e.operator,
                        &e.action,
                        &e.target,
                        &e.outcome,
                        &e.detail,
                        &e.chain,
                        to_i64(h.chain_seq),
                    ),
                    "move audit chain head",
                )
                .await?
            }
            None => {
                e.chain_after(0, &herold_proto::audit::GENESIS);
                self.lwt(
                    &self.audit.head_create,
                    (
                        &e.chain,
                        to_i64(e.chain_seq),
                        &e.hash,
                        e.at_ms,
                        &e.id,
                        &e.operator,
                        &e.action,
                        &e.target,
                        &e.outcome,
                        &e.detail,
                    ),
                    "start audit chain",
                )
                .await?
            }
        };
        Ok(r.applied)
    }

    pub(super) async fn a_append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        // The heads this process moved last, rows written: with one writer
        // per chain, an append is then the LWT and the row.
        let mut known = self.audit_heads.lock().await;
        let mut failure = None;
        for attempt in 0..LWT_ROUNDS {
            let head = match known.remove(&entry.chain) {
                Some(h) => Some(h),
                None => {
                    let head = self.audit_head(&entry.chain).await?;
                    if let Some(h) = &head {
                        self.put_audit_row(h).await?;
                        if h.id == entry.id && h.at_ms == entry.at_ms {
                            // An earlier attempt's LWT was applied although
                            // its answer was an error (a timeout).
                            known.insert(entry.chain.clone(), h.clone());
                            return Ok(());
                        }
                    }
                    head
                }
            };
            let mut e = entry.clone();
            match self.move_audit_head(head.as_ref(), &mut e).await {
                Ok(true) => {
                    self.put_audit_row(&e).await?;
                    known.insert(e.chain.clone(), e);
                    return Ok(());
                }
                // Another writer of this chain (a second process with this
                // node id) moved it: read it again.
                Ok(false) => {}
                // A timed-out LWT may or may not have been applied: the
                // next round reads the head and knows.
                Err(StoreError::Backend(m)) if attempt < TIMEOUT_ROUNDS => failure = Some(m),
                Err(other) => return Err(other),
            }
            backoff(attempt).await;
        }
        Err(StoreError::Backend(failure.unwrap_or_else(|| {
            "cql: the audit chain's head stayed contended".into()
        })))
    }

    pub(super) async fn a_list_audit(
        &self,
        before_ms: UnixMillis,
        before_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        type R = (
            i64,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<Vec<u8>>,
        );
        // Only a head's row can be missing (a crash between moving the
        // head and writing the row): write them again first, once per
        // listing (its first page has no id to continue from).
        if before_id.is_empty() {
            let heads: Vec<HeadRow> = self
                .all(&self.audit.heads, (), "list audit chain heads")
                .await?;
            for h in heads.into_iter().filter_map(head_entry) {
                self.put_audit_row(&h).await?;
            }
        }
        let mut out = Vec::new();
        let first = before_ms.div_euclid(AUDIT_BUCKET_MS);
        for bucket in (first - AUDIT_LOOKBACK_BUCKETS + 1..=first).rev() {
            if out.len() >= limit {
                break;
            }
            let want = i32::try_from((limit - out.len()).max(1)).unwrap_or(i32::MAX);
            let rows: Vec<R> = self
                .all(
                    &self.audit.list,
                    (bucket, before_ms, before_id, want),
                    "list audit",
                )
                .await
                .map_err(|e| backend("list audit", e))?;
            out.extend(
                rows.into_iter().map(
                    |(at_ms, id, op, ac, t, o, d, chain, seq, hash)| AuditEntry {
                        at_ms,
                        id,
                        operator: op.unwrap_or_default(),
                        action: ac.unwrap_or_default(),
                        target: t.unwrap_or_default(),
                        outcome: o.unwrap_or_default(),
                        detail: d.unwrap_or_default(),
                        chain: chain.unwrap_or_default(),
                        chain_seq: seq.map_or(0, to_u64),
                        hash: hash.unwrap_or_default(),
                    },
                ),
            );
        }
        out.truncate(limit);
        Ok(out)
    }
}
