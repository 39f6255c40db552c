//! Attachments: an encrypted file's description in `attachments`, its
//! chunks in `attachment_chunks` (one row per chunk, so no value grows with
//! the file), and `attachment_expiry` to find the expired ones.

use super::*;

pub(super) const ATTACHMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("attachments");
pub(super) const ATTACHMENT_CHUNKS: TableDefinition<(&[u8], u32), &[u8]> =
    TableDefinition::new("attachment_chunks");
pub(super) const ATTACHMENT_EXPIRY: TableDefinition<(i64, &[u8]), ()> =
    TableDefinition::new("attachment_expiry");

/// Expired attachments deleted per writer operation: each may hold up to
/// 1,600 chunks (100 MB).
const PURGE_BATCH: usize = 4;

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct AttachmentRec {
    #[prost(string, tag = "1")]
    conversation_id: String,
    #[prost(string, tag = "2")]
    uploader_device_id: String,
    #[prost(uint64, tag = "3")]
    size: u64,
    #[prost(uint32, tag = "4")]
    chunk_bytes: u32,
    #[prost(int64, tag = "5")]
    created_at_ms: i64,
    #[prost(int64, optional, tag = "6")]
    expires_at_ms: Option<i64>,
    #[prost(uint32, tag = "7")]
    received_chunks: u32,
}

fn rec_of(a: &Attachment) -> AttachmentRec {
    AttachmentRec {
        conversation_id: a.conversation_id.clone(),
        uploader_device_id: a.uploader_device_id.clone(),
        size: a.size,
        chunk_bytes: a.chunk_bytes,
        created_at_ms: a.created_at_ms,
        expires_at_ms: a.expires_at_ms,
        received_chunks: a.received_chunks,
    }
}

fn load(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: &[u8],
) -> Result<Option<Attachment>, StoreError> {
    let Some(g) = table.get(id).or_backend()? else {
        return Ok(None);
    };
    let r: AttachmentRec = decode("attachments", g.value())?;
    Ok(Some(Attachment {
        id: id.to_vec(),
        conversation_id: r.conversation_id,
        uploader_device_id: r.uploader_device_id,
        size: r.size,
        chunk_bytes: r.chunk_bytes,
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        received_chunks: r.received_chunks,
    }))
}

fn w_create(t: &mut WriteTables<'_>, a: &Attachment) -> Result<(), StoreError> {
    if t.attachments.get(a.id.as_slice()).or_backend()?.is_some() {
        return Err(StoreError::AttachmentExists);
    }
    if !exists(&t.conversations, &a.conversation_id)? {
        return Err(StoreError::NoSuchConversation(a.conversation_id.clone()));
    }
    let rec = AttachmentRec {
        received_chunks: 0,
        ..rec_of(a)
    };
    t.attachments
        .insert(a.id.as_slice(), rec.encode_to_vec().as_slice())
        .or_backend()?;
    if let Some(e) = a.expires_at_ms {
        t.attachment_expiry
            .insert((e, a.id.as_slice()), ())
            .or_backend()?;
    }
    Ok(())
}

fn w_put_chunk(
    t: &mut WriteTables<'_>,
    id: &[u8],
    index: u32,
    data: &[u8],
) -> Result<Attachment, StoreError> {
    let mut a = load(&t.attachments, id)?.ok_or(StoreError::NoSuchAttachment)?;
    check_chunk(&a, index, data.len())?;
    t.attachment_chunks.insert((id, index), data).or_backend()?;
    if index == a.received_chunks {
        a.received_chunks = index + 1;
        t.attachments
            .insert(id, rec_of(&a).encode_to_vec().as_slice())
            .or_backend()?;
    }
    Ok(a)
}

/// Deletes up to [`PURGE_BATCH`] attachments expired at `now_ms`; returns
/// how many it found (fewer than the batch: nothing left).
fn w_purge(t: &mut WriteTables<'_>, now_ms: UnixMillis) -> Result<usize, StoreError> {
    let upper: Bound<(i64, &[u8])> = match now_ms.checked_add(1) {
        Some(next) => Bound::Excluded((next, &[][..])),
        None => Bound::Unbounded,
    };
    let mut due = Vec::new();
    for item in t
        .attachment_expiry
        .range((Bound::Unbounded, upper))
        .or_backend()?
    {
        if due.len() >= PURGE_BATCH {
            break;
        }
        let (key, _) = item.or_backend()?;
        let (at, id) = key.value();
        due.push((at, id.to_vec()));
    }
    for (at, id) in &due {
        t.attachment_expiry
            .remove((*at, id.as_slice()))
            .or_backend()?;
        t.attachments.remove(id.as_slice()).or_backend()?;
        let mut indexes = Vec::new();
        for item in t
            .attachment_chunks
            .range((id.as_slice(), 0)..=(id.as_slice(), u32::MAX))
            .or_backend()?
        {
            indexes.push(item.or_backend()?.0.value().1);
        }
        for i in indexes {
            t.attachment_chunks
                .remove((id.as_slice(), i))
                .or_backend()?;
        }
    }
    Ok(due.len())
}

impl EmbeddedStore {
    pub(super) async fn att_create(&self, a: Attachment) -> Result<(), StoreError> {
        self.write(move |t| w_create(t, &a)).await
    }

    pub(super) async fn att_get(
        &self,
        id: &[u8],
        now_ms: UnixMillis,
    ) -> Result<Option<Attachment>, StoreError> {
        let id = id.to_vec();
        let a = self
            .read_with(move |txn| load(&txn.open_table(ATTACHMENTS).or_backend()?, &id))
            .await?;
        Ok(a.filter(|a| !a.expired(now_ms)))
    }

    pub(super) async fn att_put_chunk(
        &self,
        id: &[u8],
        index: u32,
        data: Vec<u8>,
    ) -> Result<Attachment, StoreError> {
        let id = id.to_vec();
        self.write(move |t| w_put_chunk(t, &id, index, &data)).await
    }

    pub(super) async fn att_chunk(
        &self,
        id: &[u8],
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_vec();
        self.read_with(move |txn| {
            let table = txn.open_table(ATTACHMENT_CHUNKS).or_backend()?;
            Ok(table
                .get((id.as_slice(), index))
                .or_backend()?
                .map(|g| g.value().to_vec()))
        })
        .await
    }

    pub(super) async fn att_purge(&self, now_ms: UnixMillis) -> Result<u64, StoreError> {
        let mut purged = 0u64;
        loop {
            let n = self.write(move |t| w_purge(t, now_ms)).await?;
            purged = purged.saturating_add(n as u64);
            if n < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }
}
