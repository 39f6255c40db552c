//! Attachments on CQL (migration 10): the description in `attachments`,
//! the chunks in `attachment_chunks`, [`CHUNKS_PER_PARTITION`] to a
//! partition. Every row gets the attachment's expiry as its TTL, so expired
//! attachments need no purge.
//!
//! A chunk is written before the description records it, so
//! `received_chunks` never counts a chunk that is not there. Two uploads
//! of one attachment at once (a device that reconnected while its old
//! connection still writes) can only move `received_chunks` back, which
//! makes the next resume send a chunk again.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, ttl_for, wall_ms};
use crate::{Attachment, Store as _, StoreError, UnixMillis, check_chunk};

/// Chunks per partition: 64 chunks of 64 KiB make partitions of 4 MiB.
/// Part of the data layout: never change it for an existing keyspace.
pub const CHUNKS_PER_PARTITION: u32 = 64;

type Row = (
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
);

/// The statements of attachments, prepared once.
#[derive(Debug)]
pub(super) struct AttachmentStatements {
    create: PreparedStatement,
    get: PreparedStatement,
    progress: PreparedStatement,
    chunk_put: PreparedStatement,
    chunk_get: PreparedStatement,
}

impl AttachmentStatements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String| async move {
            let mut st = s.prepare(cql.clone()).await.map_err(|e| {
                StoreError::Backend(format!(
                    "cql prepare {cql:?}: {e} (is keyspace {ks} migrated to version 10?)"
                ))
            })?;
            st.set_is_idempotent(!cql.contains(" IF "));
            Ok::<_, StoreError>(st)
        };
        const COLUMNS: &str = "conversation_id, uploader_device_id, size, chunk_bytes, created_at_ms, expires_at_ms, received_chunks";
        Ok(Self {
            create: p(format!("INSERT INTO {ks}.attachments (id, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0) IF NOT EXISTS USING TTL ?")).await?,
            get: p(format!("SELECT {COLUMNS} FROM {ks}.attachments WHERE id = ?")).await?,
            progress: p(format!("UPDATE {ks}.attachments USING TTL ? SET received_chunks = ? WHERE id = ?")).await?,
            chunk_put: p(format!("INSERT INTO {ks}.attachment_chunks (id, bucket, idx, data) VALUES (?, ?, ?, ?) USING TTL ?")).await?,
            chunk_get: p(format!("SELECT data FROM {ks}.attachment_chunks WHERE id = ? AND bucket = ? AND idx = ?")).await?,
        })
    }
}

fn bucket(index: u32) -> i32 {
    i32::try_from(index / CHUNKS_PER_PARTITION).unwrap_or(i32::MAX)
}

fn index_i32(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

impl CqlStore {
    pub(super) async fn att_create(&self, a: Attachment) -> Result<(), StoreError> {
        if self.get_conversation(&a.conversation_id).await?.is_none() {
            return Err(StoreError::NoSuchConversation(a.conversation_id));
        }
        let (ttl, _) = ttl_for(a.expires_at_ms, wall_ms());
        let r = self
            .lwt(
                &self.att.create,
                (
                    &a.id,
                    &a.conversation_id,
                    &a.uploader_device_id,
                    super::to_i64(a.size),
                    i32::try_from(a.chunk_bytes).unwrap_or(i32::MAX),
                    a.created_at_ms,
                    a.expires_at_ms,
                    ttl,
                ),
                "create attachment",
            )
            .await?;
        if r.applied {
            Ok(())
        } else {
            Err(StoreError::AttachmentExists)
        }
    }

    pub(super) async fn att_get(
        &self,
        id: &[u8],
        now_ms: UnixMillis,
    ) -> Result<Option<Attachment>, StoreError> {
        let row: Option<Row> = self.one(&self.att.get, (id,), "read attachment").await?;
        let Some((conv, uploader, size, chunk_bytes, created, expires, received)) = row else {
            return Ok(None);
        };
        let (Some(conversation_id), Some(size), Some(chunk_bytes)) = (conv, size, chunk_bytes)
        else {
            // A row whose TTL took some cells only: gone.
            return Ok(None);
        };
        let a = Attachment {
            id: id.to_vec(),
            conversation_id,
            uploader_device_id: uploader.unwrap_or_default(),
            size: super::to_u64(size),
            chunk_bytes: u32::try_from(chunk_bytes).unwrap_or(0),
            created_at_ms: created.unwrap_or(0),
            expires_at_ms: expires,
            received_chunks: u32::try_from(received.unwrap_or(0)).unwrap_or(0),
        };
        Ok((!a.expired(now_ms)).then_some(a))
    }

    pub(super) async fn att_put_chunk(
        &self,
        id: &[u8],
        index: u32,
        data: Vec<u8>,
    ) -> Result<Attachment, StoreError> {
        // Not filtered by expiry: the TTL decides when it is gone.
        let mut a = self
            .att_get(id, UnixMillis::MIN)
            .await?
            .ok_or(StoreError::NoSuchAttachment)?;
        check_chunk(&a, index, data.len())?;
        let (ttl, _) = ttl_for(a.expires_at_ms, wall_ms());
        self.exec(
            &self.att.chunk_put,
            (id, bucket(index), index_i32(index), data, ttl),
            "write attachment chunk",
        )
        .await?;
        if index == a.received_chunks {
            a.received_chunks = index + 1;
            self.exec(
                &self.att.progress,
                (ttl, index_i32(a.received_chunks), id),
                "record attachment chunk",
            )
            .await?;
        }
        Ok(a)
    }

    pub(super) async fn att_chunk(
        &self,
        id: &[u8],
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Option<Vec<u8>>,)> = self
            .one(
                &self.att.chunk_get,
                (id, bucket(index), index_i32(index)),
                "read attachment chunk",
            )
            .await?;
        Ok(row.and_then(|(d,)| d))
    }
}
