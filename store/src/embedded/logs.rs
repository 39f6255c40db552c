//! Writes to the message logs and cursors: appends, cursor advances and the
//! purge of expired messages.

use super::*;

pub(super) fn w_append(
    t: &mut WriteTables<'_>,
    message: &NewMessage,
) -> Result<Appended, StoreError> {
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
    let state = load_mls(&t.mls_state, &t.mls_generation, conv)?;
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
        welcomed: match &message.mls {
            Some(MlsCheck::Commit {
                welcome: Some(w), ..
            }) => w.device_ids.clone(),
            _ => Vec::new(),
        },
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

pub(super) fn w_advance_cursors(
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
pub(super) struct PurgeChunk {
    /// Expiry entries consumed.
    pub(super) entries: usize,
    /// Messages deleted.
    pub(super) messages: u64,
}

pub(super) fn w_purge_chunk(
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
