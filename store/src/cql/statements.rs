//! The prepared statements of the directory and the logs (migration 1).

use super::*;

/// Every statement, prepared once.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) acc_insert: PreparedStatement,
    pub(super) acc_get: PreparedStatement,
    pub(super) acc_slot: PreparedStatement,
    pub(super) acc_delete: PreparedStatement,
    pub(super) dev_insert: PreparedStatement,
    pub(super) dev_get: PreparedStatement,
    pub(super) dev_revoke: PreparedStatement,
    pub(super) dev_delete: PreparedStatement,
    pub(super) dba_insert: PreparedStatement,
    pub(super) dba_list: PreparedStatement,
    pub(super) dba_delete_all: PreparedStatement,
    pub(super) conv_insert: PreparedStatement,
    pub(super) conv_get: PreparedStatement,
    pub(super) conv_head: PreparedStatement,
    pub(super) conv_claim: PreparedStatement,
    pub(super) mid_forget: PreparedStatement,
    pub(super) mem_put: PreparedStatement,
    pub(super) mem_list: PreparedStatement,
    pub(super) mem_get: PreparedStatement,
    pub(super) mem_delete: PreparedStatement,
    pub(super) cba_put: PreparedStatement,
    pub(super) cba_list: PreparedStatement,
    pub(super) cba_delete: PreparedStatement,
    pub(super) cba_delete_all: PreparedStatement,
    pub(super) mid_insert: PreparedStatement,
    pub(super) mid_get: PreparedStatement,
    pub(super) mid_delete: PreparedStatement,
    pub(super) seq_put: PreparedStatement,
    pub(super) seq_get: PreparedStatement,
    pub(super) seq_delete: PreparedStatement,
    pub(super) log_put: PreparedStatement,
    pub(super) log_read: PreparedStatement,
    pub(super) log_ids: PreparedStatement,
    pub(super) log_delete: PreparedStatement,
    pub(super) log_delete_bucket: PreparedStatement,
    pub(super) eaw_put: PreparedStatement,
    pub(super) eaw_list: PreparedStatement,
    pub(super) eaw_delete: PreparedStatement,
    pub(super) cur_put: PreparedStatement,
    pub(super) cur_list: PreparedStatement,
    pub(super) cur_delete_all: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
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
            conv_head: p(format!("SELECT head, head_message_id, mls_epoch, roster_version, group_roster_version, mls_generation FROM {ks}.conversations WHERE id = ?")).await?,
            // The seq claim carries the MLS condition: conditions on every
            // MLS column as read, the new epoch and group roster version set
            // in the same write.
            conv_claim: p(format!("UPDATE {ks}.conversations SET head = ?, head_message_id = ?, mls_epoch = ?, group_roster_version = ? WHERE id = ? IF head = ? AND head_message_id = ? AND mls_epoch = ? AND roster_version = ? AND group_roster_version = ? AND mls_generation = ?")).await?,
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
            log_put: p(format!("INSERT INTO {ks}.conversation_log (conversation_id, bucket, seq, message_id, sender_account_id, sender_device_id, server_time_ms, expires_at_ms, ciphertext, welcome_devices) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?")).await?,
            log_read: p(format!("SELECT seq, message_id, sender_account_id, sender_device_id, server_time_ms, expires_at_ms, ciphertext, welcome_devices FROM {ks}.conversation_log WHERE conversation_id = ? AND bucket = ? AND seq > ?")).await?,
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
