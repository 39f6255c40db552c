//! The CQL side of end-to-end encryption (migration 3, tables in
//! `store/migrations/cql/0003_mls.cql`): key packages, the MLS state on the
//! conversation row (roster bumps, reconciliation) and Welcomes. The MLS
//! condition of `append` is part of the seq claim in `mod.rs`.
//!
//! Every change of the conversation row and of a `key_packages` row is a
//! compare-and-set lightweight transaction on the values read, retried with
//! backoff when another writer came first; within one process the writers of
//! one conversation (or device) queue on an async mutex, so the LWTs contend
//! only between processes.

use futures_util::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use scylla::value::MaybeUnset;

use super::{CONCURRENCY, CqlStore, Lwt, backoff, to_i64, to_u64};
use crate::{KeyPackageCount, KeyPackageUpload, MlsState, Store, StoreError, reconcile, restart};

/// The MLS columns of a conversation row as stored: NULL (a row from before
/// migration 3) reads as 0 but is compared as NULL in LWT conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct MlsCols {
    pub(super) epoch: Option<i64>,
    pub(super) roster: Option<i64>,
    pub(super) group: Option<i64>,
    /// `mls_generation` (migration 5).
    pub(super) generation: Option<i64>,
}

impl MlsCols {
    /// The MLS columns a refused LWT returned (it conditioned on them all).
    pub(super) fn from_lwt(r: &Lwt) -> Self {
        Self {
            epoch: r.bigint("mls_epoch"),
            roster: r.bigint("roster_version"),
            group: r.bigint("group_roster_version"),
            generation: r.bigint("mls_generation"),
        }
    }

    pub(super) fn state(self) -> MlsState {
        MlsState {
            generation: to_u64(self.generation.unwrap_or(0)),
            epoch: to_u64(self.epoch.unwrap_or(0)),
            roster_version: to_u64(self.roster.unwrap_or(0)),
            group_roster_version: to_u64(self.group.unwrap_or(0)),
        }
    }
}

/// Rounds of an LWT loop before giving up on a contended row.
const LWT_ROUNDS: u32 = 100;

/// The statements of migration 3, prepared once.
#[derive(Debug)]
pub(super) struct MlsStatements {
    conv_mls: PreparedStatement,
    conv_bump: PreparedStatement,
    conv_reconcile: PreparedStatement,
    conv_restart: PreparedStatement,
    kp_get: PreparedStatement,
    kp_ready: PreparedStatement,
    kp_insert: PreparedStatement,
    kp_update: PreparedStatement,
    kp_take: PreparedStatement,
    kp_announce: PreparedStatement,
    kp_delete: PreparedStatement,
    welcome_put: PreparedStatement,
    welcome_get: PreparedStatement,
    wbd_put: PreparedStatement,
    wbd_get: PreparedStatement,
    wbd_delete_all: PreparedStatement,
}

impl MlsStatements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String| async move {
            let mut st = s.prepare(cql.clone()).await.map_err(|e| {
                StoreError::Backend(format!(
                    "cql prepare {cql:?}: {e} (is keyspace {ks} migrated to version 5?)"
                ))
            })?;
            st.set_is_idempotent(!cql.contains(" IF "));
            Ok::<_, StoreError>(st)
        };
        Ok(Self {
            conv_mls: p(format!("SELECT kind, mls_epoch, roster_version, group_roster_version, mls_generation FROM {ks}.conversations WHERE id = ?")).await?,
            // `kind` is never NULL in an existing row: the condition on it
            // keeps a NULL comparison from creating a row that is not there.
            conv_bump: p(format!("UPDATE {ks}.conversations SET roster_version = ? WHERE id = ? IF kind = ? AND roster_version = ?")).await?,
            conv_reconcile: p(format!("UPDATE {ks}.conversations SET group_roster_version = ? WHERE id = ? IF kind = ? AND mls_epoch = ? AND roster_version = ? AND group_roster_version = ? AND mls_generation = ?")).await?,
            // A restart changes the epoch (from > 0 to 0), which every seq
            // claim conditions on: no message of the old generation is
            // claimed after it.
            conv_restart: p(format!("UPDATE {ks}.conversations SET mls_generation = ?, mls_epoch = 0, group_roster_version = 0 WHERE id = ? IF kind = ? AND mls_epoch = ? AND roster_version = ? AND group_roster_version = ? AND mls_generation = ?")).await?,
            kp_get: p(format!("SELECT incarnation, version, one_time, last_resort, announced FROM {ks}.key_packages WHERE device_id = ?")).await?,
            kp_ready: p(format!("SELECT incarnation, ready FROM {ks}.key_packages WHERE device_id = ?")).await?,
            kp_insert: p(format!("INSERT INTO {ks}.key_packages (device_id, incarnation, version, one_time, last_resort, ready, announced) VALUES (?, ?, 1, ?, ?, ?, false) IF NOT EXISTS")).await?,
            kp_update: p(format!("UPDATE {ks}.key_packages SET incarnation = ?, version = ?, one_time = ?, last_resort = ?, ready = ?, announced = ? WHERE device_id = ? IF version = ?")).await?,
            kp_take: p(format!("UPDATE {ks}.key_packages SET one_time = ?, version = ? WHERE device_id = ? IF version = ?")).await?,
            kp_announce: p(format!("UPDATE {ks}.key_packages SET announced = true WHERE device_id = ? IF incarnation = ?")).await?,
            kp_delete: p(format!("DELETE FROM {ks}.key_packages WHERE device_id = ? IF EXISTS")).await?,
            welcome_put: p(format!("INSERT INTO {ks}.welcomes (conversation_id, seq, welcome) VALUES (?, ?, ?)")).await?,
            welcome_get: p(format!("SELECT welcome FROM {ks}.welcomes WHERE conversation_id = ? AND seq = ?")).await?,
            wbd_put: p(format!("INSERT INTO {ks}.welcomes_by_device (device_id, conversation_id, seq) VALUES (?, ?, ?)")).await?,
            wbd_get: p(format!("SELECT seq FROM {ks}.welcomes_by_device WHERE device_id = ? AND conversation_id = ? LIMIT 1")).await?,
            wbd_delete_all: p(format!("DELETE FROM {ks}.welcomes_by_device WHERE device_id = ?")).await?,
        })
    }
}

/// A `key_packages` row as read.
type KpRow = (
    Option<i64>,
    Option<i64>,
    Option<Vec<Vec<u8>>>,
    Option<Vec<u8>>,
    Option<bool>,
);

/// A device's key packages as they count for the device's current
/// incarnation.
#[derive(Debug, Default)]
struct Packages {
    /// The row's `version` as read (`None`: no row, or NULL).
    version: Option<i64>,
    /// Whether a row exists (of any incarnation).
    row: bool,
    /// The row is an earlier device's: everything in it is to be replaced.
    stale: bool,
    one_time: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    announced: bool,
}

/// The conversation row's kind (`None`: no such row) and MLS columns.
type ConvMls = (Option<i8>, MlsCols);

impl CqlStore {
    async fn conv_mls(&self, cid: &str) -> Result<Option<ConvMls>, StoreError> {
        type R = (
            Option<i8>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let row: Option<R> = self
            .one(&self.mls.conv_mls, (cid,), "read MLS state")
            .await?;
        Ok(row.map(|(kind, epoch, roster, group, generation)| {
            (
                kind,
                MlsCols {
                    epoch,
                    roster,
                    group,
                    generation,
                },
            )
        }))
    }

    pub(super) async fn m_mls_state(&self, cid: &str) -> Result<MlsState, StoreError> {
        match self.conv_mls(cid).await? {
            Some((Some(_), cols)) => Ok(cols.state()),
            _ => Err(StoreError::NoSuchConversation(cid.to_owned())),
        }
    }

    /// roster_version += 1, with an LWT loop so that concurrent bumps (from
    /// any relay) each count. A conversation that is gone is skipped.
    pub(super) async fn bump_roster(&self, cid: &str) -> Result<(), StoreError> {
        let lock = self.head_lock(cid);
        let mut cached = lock.lock().await;
        let Some((Some(kind), cols)) = self.conv_mls(cid).await? else {
            return Ok(());
        };
        let mut roster = cols.roster;
        for attempt in 0..LWT_ROUNDS {
            let next = to_i64(to_u64(roster.unwrap_or(0)).saturating_add(1));
            let r = self
                .lwt(
                    &self.mls.conv_bump,
                    (next, cid, kind, roster),
                    "bump roster version",
                )
                .await?;
            if r.applied {
                if let Some(known) = cached.known.as_mut() {
                    known.mls.roster = Some(next);
                }
                return Ok(());
            }
            if r.get("kind").is_none() {
                return Ok(());
            }
            roster = r.bigint("roster_version");
            backoff(attempt).await;
        }
        Err(StoreError::Backend(format!(
            "cql: the roster version of {cid:?} stayed contended"
        )))
    }

    /// Bumps every conversation of an account.
    pub(super) async fn bump_account(&self, account_id: &str) -> Result<(), StoreError> {
        let convs: Vec<(String,)> = self
            .all(&self.st.cba_list, (account_id,), "list memberships")
            .await?;
        futures_util::stream::iter(
            convs
                .into_iter()
                .map(|(cid,)| async move { self.bump_roster(&cid).await }),
        )
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    pub(super) async fn m_mark_reconciled(
        &self,
        cid: &str,
        generation: u64,
        epoch: u64,
        roster_version: u64,
    ) -> Result<MlsState, StoreError> {
        self.conv_mls_cas(
            cid,
            "mark reconciled",
            &self.mls.conv_reconcile,
            |state| reconcile(state, generation, epoch, roster_version),
            |next| next.group_roster_version,
            |cols, next| cols.group = Some(to_i64(next.group_roster_version)),
        )
        .await
    }

    pub(super) async fn m_reset_mls_group(
        &self,
        cid: &str,
        generation: u64,
        epoch: u64,
    ) -> Result<MlsState, StoreError> {
        self.conv_mls_cas(
            cid,
            "restart MLS group",
            &self.mls.conv_restart,
            |state| restart(state, generation, epoch),
            |next| next.generation,
            |cols, next| {
                cols.generation = Some(to_i64(next.generation));
                cols.epoch = Some(0);
                cols.group = Some(0);
            },
        )
        .await
    }

    /// Changes the MLS columns of a conversation row to the state `rule`
    /// gives: an LWT (`st` sets the value `set` picks, `WHERE id = ? IF
    /// kind = ? AND` every MLS column as read) looped until it applies or
    /// `rule` refuses. `write` applies the change to the columns as read,
    /// which is what the row holds afterwards (the head cache learns it).
    async fn conv_mls_cas(
        &self,
        cid: &str,
        op: &str,
        st: &PreparedStatement,
        rule: impl Fn(MlsState) -> Result<MlsState, StoreError>,
        set: fn(MlsState) -> u64,
        write: impl Fn(&mut MlsCols, MlsState),
    ) -> Result<MlsState, StoreError> {
        let lock = self.head_lock(cid);
        let mut cached = lock.lock().await;
        let Some((Some(kind), mut cols)) = self.conv_mls(cid).await? else {
            return Err(StoreError::NoSuchConversation(cid.to_owned()));
        };
        for attempt in 0..LWT_ROUNDS {
            let state = cols.state();
            let next = rule(state)?;
            if next == state {
                return Ok(next);
            }
            let mut after = cols;
            write(&mut after, next);
            let r = self
                .lwt(
                    st,
                    (
                        to_i64(set(next)),
                        cid,
                        kind,
                        cols.epoch,
                        cols.roster,
                        cols.group,
                        cols.generation,
                    ),
                    op,
                )
                .await?;
            if r.applied {
                if let Some(known) = cached.known.as_mut() {
                    known.mls = after;
                }
                return Ok(next);
            }
            if r.get("kind").is_none() {
                return Err(StoreError::NoSuchConversation(cid.to_owned()));
            }
            cols = MlsCols::from_lwt(&r);
            backoff(attempt).await;
        }
        Err(StoreError::Backend(format!(
            "cql: the MLS state of {cid:?} stayed contended"
        )))
    }

    /// The device's incarnation if it exists and is not revoked.
    async fn live_device(&self, device_id: &str) -> Result<Option<(String, i64)>, StoreError> {
        Ok(self
            .device_row(device_id)
            .await?
            .filter(|(d, _)| !d.revoked)
            .map(|(d, inc)| (d.account_id, inc)))
    }

    async fn packages(&self, device_id: &str, incarnation: i64) -> Result<Packages, StoreError> {
        let row: Option<KpRow> = self
            .one(&self.mls.kp_get, (device_id,), "read key packages")
            .await?;
        Ok(match row {
            None => Packages::default(),
            Some((inc, version, one_time, last_resort, announced)) => {
                if inc == Some(incarnation) {
                    Packages {
                        version,
                        row: true,
                        stale: false,
                        one_time: one_time.unwrap_or_default(),
                        last_resort,
                        announced: announced.unwrap_or(false),
                    }
                } else {
                    // An earlier device of the same id: counts as empty.
                    Packages {
                        version,
                        row: true,
                        stale: true,
                        ..Packages::default()
                    }
                }
            }
        })
    }

    pub(super) async fn m_upload_key_packages(
        &self,
        device_id: &str,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_available: u32,
    ) -> Result<KeyPackageUpload, StoreError> {
        let Some((account_id, incarnation)) = self.live_device(device_id).await? else {
            return Err(StoreError::NoSuchDevice(device_id.to_owned()));
        };
        let lock = self.device_lock(device_id);
        let _serial = lock.lock().await;
        for attempt in 0..LWT_ROUNDS {
            let mut current = self.packages(device_id, incarnation).await?;
            let available = current.one_time.len().saturating_add(one_time.len());
            if available > usize::try_from(max_available).unwrap_or(usize::MAX) {
                return Err(StoreError::KeyPackageLimit {
                    limit: max_available,
                });
            }
            current.one_time.extend(one_time.iter().cloned());
            let lr = last_resort.clone().or(current.last_resort);
            let ready = lr.is_some();
            // Unset, not NULL, leaves no tombstone; an earlier device's
            // package is overwritten with NULL.
            let lr_value = match &lr {
                Some(bytes) => MaybeUnset::Set(Some(bytes)),
                None if current.stale => MaybeUnset::Set(None),
                None => MaybeUnset::Unset,
            };
            let applied = if current.row {
                let version = current.version.unwrap_or(0).saturating_add(1);
                self.lwt(
                    &self.mls.kp_update,
                    (
                        incarnation,
                        version,
                        &current.one_time,
                        lr_value,
                        ready,
                        current.announced,
                        device_id,
                        current.version,
                    ),
                    "store key packages",
                )
                .await?
                .applied
            } else {
                self.lwt(
                    &self.mls.kp_insert,
                    (device_id, incarnation, &current.one_time, lr_value, ready),
                    "store key packages",
                )
                .await?
                .applied
            };
            if !applied {
                backoff(attempt).await;
                continue;
            }
            // Announce after the packages are visible (a committer that
            // sees the new roster version also sees the device), and mark
            // the announcement done last: an upload interrupted in between
            // is announced by the next one.
            let became_ready = ready && !current.announced;
            if became_ready {
                self.bump_account(&account_id).await?;
                self.lwt(
                    &self.mls.kp_announce,
                    (device_id, incarnation),
                    "mark device ready",
                )
                .await?;
            }
            return Ok(KeyPackageUpload {
                count: KeyPackageCount {
                    available: u32::try_from(available).unwrap_or(u32::MAX),
                    last_resort: ready,
                },
                became_ready,
            });
        }
        Err(StoreError::Backend(format!(
            "cql: the key packages of {device_id:?} stayed contended"
        )))
    }

    pub(super) async fn m_claim_key_package(
        &self,
        device_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((_, incarnation)) = self.live_device(device_id).await? else {
            return Ok(None);
        };
        let lock = self.device_lock(device_id);
        let _serial = lock.lock().await;
        for attempt in 0..LWT_ROUNDS {
            let current = self.packages(device_id, incarnation).await?;
            let mut rest = current.one_time.into_iter();
            let Some(first) = rest.next() else {
                return Ok(current.last_resort);
            };
            let rest: Vec<Vec<u8>> = rest.collect();
            let r = self
                .lwt(
                    &self.mls.kp_take,
                    (
                        &rest,
                        current.version.unwrap_or(0).saturating_add(1),
                        device_id,
                        current.version,
                    ),
                    "claim key package",
                )
                .await?;
            if r.applied {
                return Ok(Some(first));
            }
            backoff(attempt).await;
        }
        Err(StoreError::Backend(format!(
            "cql: the key packages of {device_id:?} stayed contended"
        )))
    }

    pub(super) async fn m_key_package_count(
        &self,
        device_id: &str,
    ) -> Result<KeyPackageCount, StoreError> {
        let Some((_, incarnation)) = self.live_device(device_id).await? else {
            return Ok(KeyPackageCount::default());
        };
        let current = self.packages(device_id, incarnation).await?;
        Ok(KeyPackageCount {
            available: u32::try_from(current.one_time.len()).unwrap_or(u32::MAX),
            last_resort: current.last_resort.is_some(),
        })
    }

    /// Deletes a device's key packages (revocation, account deletion).
    pub(super) async fn delete_key_packages(&self, device_id: &str) -> Result<(), StoreError> {
        self.lwt(&self.mls.kp_delete, (device_id,), "delete key packages")
            .await?;
        Ok(())
    }

    /// Deletes a device's Welcome index (account deletion).
    pub(super) async fn delete_welcome_index(&self, device_id: &str) -> Result<(), StoreError> {
        self.exec(
            &self.mls.wbd_delete_all,
            (device_id,),
            "delete Welcome index",
        )
        .await?;
        Ok(())
    }

    /// Whether a live device of this incarnation has a last-resort package.
    async fn is_ready(&self, device_id: &str, incarnation: i64) -> Result<bool, StoreError> {
        let row: Option<(Option<i64>, Option<bool>)> = self
            .one(&self.mls.kp_ready, (device_id,), "read key packages")
            .await?;
        Ok(matches!(row, Some((Some(inc), Some(true))) if inc == incarnation))
    }

    pub(super) async fn m_mls_roster(&self, cid: &str) -> Result<Vec<String>, StoreError> {
        let members = self.members(cid).await?;
        let lists: Vec<Vec<(String,)>> =
            futures_util::stream::iter(members.into_iter().map(|m| async move {
                self.all::<(String,)>(&self.st.dba_list, (m.account_id,), "list devices")
                    .await
            }))
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let candidates = lists.into_iter().flatten().map(|(d,)| d);
        let ready: Vec<Option<String>> =
            futures_util::stream::iter(candidates.map(|device_id| async move {
                let Some((device, incarnation)) = self.device_row(&device_id).await? else {
                    return Ok(None);
                };
                if device.revoked || !self.is_ready(&device_id, incarnation).await? {
                    return Ok(None);
                }
                Ok::<_, StoreError>(Some(device_id))
            }))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut out: Vec<String> = ready.into_iter().flatten().collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Stores a commit's Welcome for its seq, then the index rows of its
    /// devices (the index never points at a missing Welcome). Idempotent.
    pub(super) async fn store_welcome(
        &self,
        cid: &str,
        seq: u64,
        welcome: &[u8],
        device_ids: &[String],
    ) -> Result<(), StoreError> {
        let s = to_i64(seq);
        self.exec(&self.mls.welcome_put, (cid, s, welcome), "store Welcome")
            .await?;
        futures_util::stream::iter(device_ids.iter().cloned().map(|device| async move {
            self.exec(&self.mls.wbd_put, (&device, cid, s), "index Welcome")
                .await
                .map(|_| ())
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    pub(super) async fn m_welcome_for(
        &self,
        device_id: &str,
        cid: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let row: Option<(i64,)> = self
            .one(&self.mls.wbd_get, (device_id, cid), "read Welcome index")
            .await?;
        let Some((seq,)) = row else {
            return Ok(None);
        };
        let welcome: Option<(Option<Vec<u8>>,)> = self
            .one(&self.mls.welcome_get, (cid, seq), "read Welcome")
            .await?;
        match welcome {
            Some((Some(bytes),)) => Ok(Some((to_u64(seq), bytes))),
            _ => Err(super::corrupt(
                "welcomes_by_device",
                format!("{device_id:?} in {cid:?} points at missing Welcome of seq {seq}"),
            )),
        }
    }
}
