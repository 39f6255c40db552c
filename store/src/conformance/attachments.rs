//! Attachments: chunks stored in order, resumable, read back as written,
//! hidden once expired and then deleted.

use std::time::Duration;

use super::*;
use crate::Attachment;

/// A sealed chunk of the client's format: 64 KiB and a 16-byte tag.
const CHUNK: u32 = 65_552;

fn attachment(ids: &Ids, conv: &str, size: u64) -> Attachment {
    Attachment {
        id: ids.id("file").into_bytes(),
        conversation_id: conv.to_owned(),
        uploader_device_id: ids.id("device"),
        size,
        chunk_bytes: CHUNK,
        created_at_ms: NOW,
        expires_at_ms: Some(NOW + 60_000),
        received_chunks: 0,
    }
}

/// The bytes of chunk `index` of a file of `size` bytes.
fn chunk_of(a: &Attachment, index: u32) -> Vec<u8> {
    let len = a.chunk_len(index).unwrap();
    (0..len).map(|i| (i as u8) ^ (index as u8)).collect()
}

fn wall_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap())
}

/// An upload in chunks: in order only, each of its exact length, storing
/// one again allowed (a resumed upload); read back byte for byte.
pub async fn attachment_chunks_in_order(store: Arc<dyn Store>) {
    let ids = Ids::new("att-chunks");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    // Two whole chunks and a short one.
    let att = attachment(&ids, &conv, u64::from(CHUNK) * 2 + 100);
    assert_eq!(att.chunks(), 3);
    store.create_attachment(att.clone()).await.unwrap();
    assert_err!(
        store.create_attachment(att.clone()).await,
        StoreError::AttachmentExists
    );
    let stored = store.attachment(&att.id, NOW).await.unwrap().unwrap();
    assert_eq!(stored, att);
    assert!(!stored.complete());
    // Nothing yet: no chunk to read.
    assert_eq!(store.attachment_chunk(&att.id, 0).await.unwrap(), None);

    let got = store
        .put_attachment_chunk(&att.id, 0, chunk_of(&att, 0))
        .await
        .unwrap();
    assert_eq!(got.received_chunks, 1);
    // A gap, a wrong length, a chunk past the end: refused.
    assert_err!(
        store
            .put_attachment_chunk(&att.id, 2, chunk_of(&att, 2))
            .await,
        StoreError::InvalidChunk { index: 2, .. }
    );
    assert_err!(
        store.put_attachment_chunk(&att.id, 1, vec![1; 10]).await,
        StoreError::InvalidChunk { index: 1, .. }
    );
    assert_err!(
        store.put_attachment_chunk(&att.id, 3, vec![1; 10]).await,
        StoreError::InvalidChunk { index: 3, .. }
    );
    // A resumed upload sends chunk 0 again.
    let again = store
        .put_attachment_chunk(&att.id, 0, chunk_of(&att, 0))
        .await
        .unwrap();
    assert_eq!(again.received_chunks, 1);
    for i in 1..3 {
        store
            .put_attachment_chunk(&att.id, i, chunk_of(&att, i))
            .await
            .unwrap();
    }
    let done = store.attachment(&att.id, NOW).await.unwrap().unwrap();
    assert_eq!(done.received_chunks, 3);
    assert!(done.complete());
    for i in 0..3 {
        assert_eq!(
            store.attachment_chunk(&att.id, i).await.unwrap(),
            Some(chunk_of(&att, i)),
            "chunk {i}"
        );
    }
    // Hidden once expired.
    assert_eq!(store.attachment(&att.id, NOW + 60_000).await.unwrap(), None);
}

/// Unknown ids and conversations.
pub async fn attachment_unknown_ids(store: Arc<dyn Store>) {
    let ids = Ids::new("att-unknown");
    let conv = ids.id("conv");
    let att = attachment(&ids, &conv, 10);
    assert_err!(
        store.create_attachment(att.clone()).await,
        StoreError::NoSuchConversation(c) if c == conv
    );
    assert_eq!(store.attachment(&att.id, NOW).await.unwrap(), None);
    assert_err!(
        store.put_attachment_chunk(&att.id, 0, vec![0; 10]).await,
        StoreError::NoSuchAttachment
    );
    assert_eq!(store.attachment_chunk(&att.id, 0).await.unwrap(), None);
    // An empty file has no chunk and is complete at once.
    let a = ids.id("a");
    group_with(&*store, &conv, &[&a]).await;
    let empty = Attachment {
        size: 0,
        expires_at_ms: None,
        ..att
    };
    store.create_attachment(empty.clone()).await.unwrap();
    let got = store.attachment(&empty.id, NOW).await.unwrap().unwrap();
    assert!(got.complete());
    assert_err!(
        store.put_attachment_chunk(&empty.id, 0, Vec::new()).await,
        StoreError::InvalidChunk { index: 0, .. }
    );
}

/// An expired attachment leaves storage, chunks and all: through
/// `purge_expired_attachments`, or by itself (a TTL). Runs on the wall
/// clock, since a TTL does.
pub async fn attachment_expiry_deletes_chunks(store: Arc<dyn Store>) {
    let ids = Ids::new("att-expiry");
    let (a, conv) = (ids.id("a"), ids.id("conv"));
    group_with(&*store, &conv, &[&a]).await;
    let now = wall_ms();
    let att = Attachment {
        created_at_ms: now,
        expires_at_ms: Some(now + 1_500),
        ..attachment(&ids, &conv, u64::from(CHUNK) + 1)
    };
    store.create_attachment(att.clone()).await.unwrap();
    for i in 0..2 {
        store
            .put_attachment_chunk(&att.id, i, chunk_of(&att, i))
            .await
            .unwrap();
    }
    assert!(store.attachment(&att.id, now).await.unwrap().is_some());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let at = wall_ms().max(now + 1_500);
        store.purge_expired_attachments(at).await.unwrap();
        // Gone, not hidden: read as by a clock from before the expiry.
        let row = store.attachment(&att.id, UnixMillis::MIN).await.unwrap();
        let chunks = [
            store.attachment_chunk(&att.id, 0).await.unwrap(),
            store.attachment_chunk(&att.id, 1).await.unwrap(),
        ];
        if row.is_none() && chunks.iter().all(Option::is_none) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired attachment is still stored 30 s on"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
