//! Message logs and cursors on CQL: the append protocol (a claimed seq
//! is completed by whoever comes next), reads, cursors and the purge.

use super::*;

impl CqlStore {
    /// Whether this process knows `head`, owned by `mid`, to be written
    /// (without waiting for an append in progress).
    pub(super) fn known_complete(&self, cid: &str, head: u64, mid: &[u8]) -> bool {
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

    pub(super) async fn read_head(&self, cid: &str) -> Result<Option<ConvHead>, StoreError> {
        type R = (
            Option<i64>,
            Option<Vec<u8>>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let row: Option<R> = self.one(&self.st.conv_head, (cid,), "read head").await?;
        Ok(
            row.map(|(h, m, epoch, roster, group, generation)| ConvHead {
                head: to_u64(h.unwrap_or(0)),
                mid: m.unwrap_or_default(),
                mls: MlsCols {
                    epoch,
                    roster,
                    group,
                    generation,
                },
            }),
        )
    }

    pub(super) async fn seq_of(&self, cid: &str, mid: &[u8]) -> Result<Option<u64>, StoreError> {
        let row: Option<(Option<i64>,)> =
            self.one(&self.st.seq_get, (cid, mid), "read seq").await?;
        Ok(row.and_then(|(s,)| s).map(to_u64))
    }

    pub(super) async fn payload(
        &self,
        cid: &str,
        mid: &[u8],
    ) -> Result<Option<Payload>, StoreError> {
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
    pub(super) async fn complete(
        &self,
        cid: &str,
        seq: u64,
        p: &Payload,
    ) -> Result<(), StoreError> {
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
                p.welcome
                    .as_ref()
                    .map_or(MaybeUnset::Unset, |(_, d)| MaybeUnset::Set(d)),
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
    pub(super) async fn help(&self, cid: &str, seq: u64, mid: &[u8]) -> Result<(), StoreError> {
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
    pub(super) async fn purge_conversation_messages(&self, cid: &str) -> Result<(), StoreError> {
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

    pub(super) async fn l_append(&self, m: NewMessage) -> Result<Appended, StoreError> {
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
                        row.mls.generation,
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
                            generation: row.mls.generation,
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
                mls: MlsCols::from_lwt(&claim),
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

    pub(super) async fn l_read(
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
                let (seq, mid, acc, dev, time, exp, ct, welcomed) =
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
                    welcomed: welcomed.unwrap_or_default(),
                    ciphertext: ct.unwrap_or_default(),
                });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn l_head(&self, conversation_id: &str) -> Result<u64, StoreError> {
        Ok(self.read_head(conversation_id).await?.map_or(0, |h| h.head))
    }

    pub(super) async fn l_advance_cursors(
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

    pub(super) async fn l_advance_cursors_many(
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

    pub(super) async fn l_cursors(
        &self,
        device_id: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
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

    pub(super) async fn l_purge_expired(&self, now_ms: UnixMillis) -> Result<u64, StoreError> {
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
