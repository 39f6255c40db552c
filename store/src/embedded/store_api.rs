//! The [`Store`] trait on the embedded database: reads in read
//! transactions, writes queued to the writer.

use super::*;

#[async_trait]
impl Store for EmbeddedStore {
    async fn close(&self) -> Result<(), StoreError> {
        EmbeddedStore::close(self).await
    }

    async fn create_account(&self, account: Account) -> Result<(), StoreError> {
        self.write(move |t| w_create_account(t, &account)).await
    }

    async fn get_account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        let id = account_id.to_owned();
        self.read_with(move |txn| load_account(&txn.open_table(ACCOUNTS).or_backend()?, &id))
            .await
    }

    async fn delete_account(&self, account_id: &str) -> Result<AccountPurge, StoreError> {
        let id = account_id.to_owned();
        self.write(move |t| w_delete_account(t, &id)).await
    }

    async fn add_device(&self, device: Device, max_devices: u32) -> Result<(), StoreError> {
        self.write(move |t| w_add_device(t, &device, max_devices))
            .await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        let id = device_id.to_owned();
        self.read_with(move |txn| load_device(&txn.open_table(DEVICES).or_backend()?, &id))
            .await
    }

    async fn devices_of(&self, account_ids: Vec<String>) -> Result<Vec<Device>, StoreError> {
        self.read_with(move |txn| {
            let index = txn.open_table(ACCOUNT_DEVICES).or_backend()?;
            let devices = txn.open_table(DEVICES).or_backend()?;
            let mut out = Vec::new();
            for id in &account_ids {
                for device_id in scan_keys(&index, id)? {
                    out.push(load_device(&devices, &device_id)?.ok_or_else(|| {
                        StoreError::Corrupt {
                            table: "account_devices",
                            detail: format!("{id:?} lists missing device {device_id:?}"),
                        }
                    })?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_devices(&self, account_id: &str) -> Result<Vec<Device>, StoreError> {
        let id = account_id.to_owned();
        self.read_with(move |txn| {
            let index = txn.open_table(ACCOUNT_DEVICES).or_backend()?;
            let devices = txn.open_table(DEVICES).or_backend()?;
            scan_keys(&index, &id)?
                .iter()
                .map(|device_id| {
                    load_device(&devices, device_id)?.ok_or_else(|| StoreError::Corrupt {
                        table: "account_devices",
                        detail: format!("{id:?} lists missing device {device_id:?}"),
                    })
                })
                .collect()
        })
        .await
    }

    async fn revoke_device(&self, device_id: &str) -> Result<Device, StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| w_revoke_device(t, &id)).await
    }

    async fn create_conversation(
        &self,
        conversation: Conversation,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        self.write(move |t| w_create_conversation(t, &conversation, &members))
            .await
    }

    async fn get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            load_conversation(&txn.open_table(CONVERSATIONS).or_backend()?, &id)
        })
        .await
    }

    async fn put_members(
        &self,
        conversation_id: &str,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_put_members(t, &id, &members)).await
    }

    async fn remove_members(
        &self,
        conversation_id: &str,
        account_ids: Vec<String>,
    ) -> Result<u32, StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_remove_members(t, &id, &account_ids))
            .await
    }

    async fn members(&self, conversation_id: &str) -> Result<Vec<Member>, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| scan_members(&txn.open_table(MEMBERS).or_backend()?, &id))
            .await
    }

    async fn conversations_of(&self, account_id: &str) -> Result<Vec<String>, StoreError> {
        let id = account_id.to_owned();
        self.read_with(move |txn| scan_keys(&txn.open_table(ACCOUNT_CONVS).or_backend()?, &id))
            .await
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        self.write(move |t| w_append(t, &message)).await
    }

    async fn read(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: usize,
        now_ms: UnixMillis,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            let messages = txn.open_table(MESSAGES).or_backend()?;
            let mut out = Vec::new();
            for item in messages
                .range((id.as_str(), first)..=(id.as_str(), u64::MAX))
                .or_backend()?
            {
                let (key, value) = item.or_backend()?;
                let rec: MessageRec = decode("messages", value.value())?;
                if rec.expires_at_ms.is_some_and(|at| at <= now_ms) {
                    continue;
                }
                out.push(message_from(&id, key.value().1, rec));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn head(&self, conversation_id: &str) -> Result<u64, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| load_head(&txn.open_table(HEADS).or_backend()?, &id))
            .await
    }

    async fn advance_cursors(
        &self,
        device_id: &str,
        cursors: Vec<(String, u64)>,
    ) -> Result<(), StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| w_advance_cursors(t, &id, &cursors))
            .await
    }

    async fn advance_cursors_many(
        &self,
        updates: Vec<(String, Vec<(String, u64)>)>,
    ) -> Result<(), StoreError> {
        // One operation, so one place in one group commit, however many devices.
        self.write(move |t| {
            for (device, cursors) in &updates {
                match w_advance_cursors(t, device, cursors) {
                    Ok(()) | Err(StoreError::NoSuchDevice(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
    }

    async fn cursors(&self, device_id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let id = device_id.to_owned();
        self.read_with(move |txn| scan_u64(&txn.open_table(CURSORS).or_backend()?, &id))
            .await
    }

    async fn account_state(&self, account_id: &str) -> Result<Option<AccountState>, StoreError> {
        let id = account_id.to_owned();
        self.read_with(move |txn| {
            if load_account(&txn.open_table(ACCOUNTS).or_backend()?, &id)?.is_none() {
                return Ok(None);
            }
            Ok(Some(
                load_account_state(&txn.open_table(ACCOUNT_STATE).or_backend()?, &id)?
                    .unwrap_or_default(),
            ))
        })
        .await
    }

    async fn set_account_state(
        &self,
        account_id: &str,
        state: AccountState,
    ) -> Result<(), StoreError> {
        let id = account_id.to_owned();
        let state = AccountState {
            tags: normalize_tags(state.tags),
            ..state
        };
        self.write(move |t| w_set_account_state(t, &id, &state))
            .await
    }

    async fn list_accounts(
        &self,
        tag: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Account>, StoreError> {
        let tag = tag.map(str::to_owned);
        let after = after.map(str::to_owned);
        self.read_with(move |txn| {
            let accounts = txn.open_table(ACCOUNTS).or_backend()?;
            let mut items = Vec::new();
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            match &tag {
                None => {
                    for item in accounts
                        .range::<&str>((start, Bound::Unbounded))
                        .or_backend()?
                    {
                        if items.len() >= limit {
                            break;
                        }
                        let (k, v) = item.or_backend()?;
                        items.push(account_from(k.value(), decode("accounts", v.value())?));
                    }
                }
                Some(tag) => {
                    let index = txn.open_table(ACCOUNTS_BY_TAG).or_backend()?;
                    let from = (tag.as_str(), after.as_deref().unwrap_or(""));
                    for item in index.range(from..).or_backend()? {
                        if items.len() >= limit {
                            break;
                        }
                        let (k, _) = item.or_backend()?;
                        let (t, a) = k.value();
                        if t != tag {
                            break;
                        }
                        if after.as_deref() == Some(a) {
                            continue;
                        }
                        if let Some(acc) = load_account(&accounts, a)? {
                            items.push(acc);
                        }
                    }
                }
            }
            let next = (items.len() >= limit && limit > 0)
                .then(|| items.last().map(|a: &Account| a.id.clone()))
                .flatten();
            Ok(Page { items, next })
        })
        .await
    }

    async fn update_conversation(
        &self,
        conversation_id: &str,
        title: Option<String>,
        archived: Option<bool>,
    ) -> Result<(), StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_update_conversation(t, &id, title.as_ref(), archived))
            .await
    }

    async fn conversation_archived(&self, conversation_id: &str) -> Result<bool, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            let table = txn.open_table(CONVERSATIONS).or_backend()?;
            match table.get(id.as_str()).or_backend()? {
                None => Ok(false),
                Some(g) => Ok(decode::<ConversationRec>("conversations", g.value())?.archived),
            }
        })
        .await
    }

    async fn list_conversations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>, StoreError> {
        let after = after.map(str::to_owned);
        self.read_with(move |txn| {
            let table = txn.open_table(CONVERSATIONS).or_backend()?;
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut items = Vec::new();
            for item in table
                .range::<&str>((start, Bound::Unbounded))
                .or_backend()?
            {
                if items.len() >= limit {
                    break;
                }
                let (k, v) = item.or_backend()?;
                items.push(conversation_from(
                    k.value(),
                    decode("conversations", v.value())?,
                )?);
            }
            let next = (items.len() >= limit && limit > 0)
                .then(|| items.last().map(|c: &Conversation| c.id.clone()))
                .flatten();
            Ok(Page { items, next })
        })
        .await
    }

    async fn put_policy(&self, scope: PolicyScope, policy: Policy) -> Result<(), StoreError> {
        let key = policy_key(&scope);
        let rec = policy_rec(&policy).encode_to_vec();
        self.write(move |t| {
            if let PolicyScope::Conversation(id) = &scope
                && !exists(&t.conversations, id)?
            {
                return Err(StoreError::NoSuchConversation(id.clone()));
            }
            t.policies
                .insert(key.as_str(), rec.as_slice())
                .or_backend()?;
            Ok(())
        })
        .await
    }

    async fn get_policy(&self, scope: PolicyScope) -> Result<Option<Policy>, StoreError> {
        let key = policy_key(&scope);
        self.read_with(move |txn| {
            let table = txn.open_table(POLICIES).or_backend()?;
            match table.get(key.as_str()).or_backend()? {
                None => Ok(None),
                Some(g) => Ok(Some(policy_from(decode("policies", g.value())?)?)),
            }
        })
        .await
    }

    async fn create_enrollment_code(&self, code: EnrollmentCode) -> Result<(), StoreError> {
        self.write(move |t| {
            if !exists(&t.accounts, &code.account_id)? {
                return Err(StoreError::NoSuchAccount(code.account_id.clone()));
            }
            let rec = CodeRec {
                account_id: code.account_id.clone(),
                account_created_at_ms: code.account_created_at_ms,
                created_at_ms: code.created_at_ms,
                expires_at_ms: code.expires_at_ms,
            };
            t.enroll_codes
                .insert(code.code_hash.as_slice(), rec.encode_to_vec().as_slice())
                .or_backend()?;
            Ok(())
        })
        .await
    }

    async fn redeem_enrollment_code(
        &self,
        code_hash: &[u8],
        device: Device,
        now_ms: UnixMillis,
        max_devices: u32,
    ) -> Result<Device, StoreError> {
        let hash = code_hash.to_vec();
        self.write(move |t| w_redeem_code(t, &hash, &device, now_ms, max_devices))
            .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.write(move |t| {
            let mut entry = entry.clone();
            let (seq, hash) = match t.audit_head.get(entry.chain.as_str()).or_backend()? {
                Some(g) => {
                    let (seq, hash) = g.value();
                    let hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Corrupt {
                        table: "audit_head",
                        detail: "the chain head's hash is not 32 bytes".into(),
                    })?;
                    (seq, hash)
                }
                None => (0, herold_proto::audit::GENESIS),
            };
            entry.chain_after(seq, &hash);
            t.audit_head
                .insert(
                    entry.chain.as_str(),
                    (entry.chain_seq, entry.hash.as_slice()),
                )
                .or_backend()?;
            let rec = AuditRec {
                operator: entry.operator.clone(),
                action: entry.action.clone(),
                target: entry.target.clone(),
                outcome: entry.outcome.clone(),
                detail: entry.detail.clone(),
                chain: entry.chain.clone(),
                chain_seq: entry.chain_seq,
                hash: entry.hash.clone(),
            };
            t.audit
                .insert(
                    (entry.at_ms, entry.id.as_str()),
                    rec.encode_to_vec().as_slice(),
                )
                .or_backend()?;
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        before_ms: UnixMillis,
        before_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let before_id = before_id.to_owned();
        self.read_with(move |txn| {
            let table = txn.open_table(AUDIT).or_backend()?;
            let mut out = Vec::new();
            for item in table
                .range::<(i64, &str)>(..(before_ms, before_id.as_str()))
                .or_backend()?
                .rev()
            {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item.or_backend()?;
                let (at_ms, id) = k.value();
                let rec: AuditRec = decode("audit", v.value())?;
                out.push(AuditEntry {
                    at_ms,
                    id: id.to_owned(),
                    operator: rec.operator,
                    action: rec.action,
                    target: rec.target,
                    outcome: rec.outcome,
                    detail: rec.detail,
                    chain: rec.chain,
                    chain_seq: rec.chain_seq,
                    hash: rec.hash,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn upload_key_packages(
        &self,
        device_id: &str,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_available: u32,
    ) -> Result<KeyPackageUpload, StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| {
            w_upload_key_packages(t, &id, &one_time, last_resort.as_deref(), max_available)
        })
        .await
    }

    async fn claim_key_package(&self, device_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| w_claim_key_package(t, &id)).await
    }

    async fn key_package_count(&self, device_id: &str) -> Result<KeyPackageCount, StoreError> {
        let id = device_id.to_owned();
        self.read_with(move |txn| {
            match load_device(&txn.open_table(DEVICES).or_backend()?, &id)? {
                Some(d) if !d.revoked => {}
                _ => return Ok(KeyPackageCount::default()),
            }
            count_key_packages(
                &txn.open_table(KEY_PACKAGES).or_backend()?,
                &txn.open_table(LAST_RESORT).or_backend()?,
                &id,
            )
        })
        .await
    }

    async fn mls_state(&self, conversation_id: &str) -> Result<MlsState, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            if !exists(&txn.open_table(CONVERSATIONS).or_backend()?, &id)? {
                return Err(StoreError::NoSuchConversation(id));
            }
            load_mls(
                &txn.open_table(MLS_STATE).or_backend()?,
                &txn.open_table(MLS_GENERATION).or_backend()?,
                &id,
            )
        })
        .await
    }

    async fn mls_roster(&self, conversation_id: &str) -> Result<Vec<String>, StoreError> {
        let id = conversation_id.to_owned();
        self.read_with(move |txn| {
            let members = txn.open_table(MEMBERS).or_backend()?;
            let index = txn.open_table(ACCOUNT_DEVICES).or_backend()?;
            let devices = txn.open_table(DEVICES).or_backend()?;
            let last_resort = txn.open_table(LAST_RESORT).or_backend()?;
            let mut out = Vec::new();
            for account in scan_keys(&members, &id)? {
                for device_id in scan_keys(&index, &account)? {
                    let ready = load_device(&devices, &device_id)?.is_some_and(|d| !d.revoked)
                        && exists(&last_resort, &device_id)?;
                    if ready {
                        out.push(device_id);
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn mark_reconciled(
        &self,
        conversation_id: &str,
        generation: u64,
        epoch: u64,
        roster_version: u64,
    ) -> Result<MlsState, StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_mark_reconciled(t, &id, generation, epoch, roster_version))
            .await
    }

    async fn reset_mls_group(
        &self,
        conversation_id: &str,
        generation: u64,
        epoch: u64,
    ) -> Result<MlsState, StoreError> {
        let id = conversation_id.to_owned();
        self.write(move |t| w_reset_mls_group(t, &id, generation, epoch))
            .await
    }

    async fn welcome_for(
        &self,
        device_id: &str,
        conversation_id: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let (device, conv) = (device_id.to_owned(), conversation_id.to_owned());
        self.read_with(move |txn| {
            let index = txn.open_table(DEVICE_WELCOMES).or_backend()?;
            let Some(seq) = index
                .get((device.as_str(), conv.as_str()))
                .or_backend()?
                .map(|g| g.value())
            else {
                return Ok(None);
            };
            let welcomes = txn.open_table(WELCOMES).or_backend()?;
            match welcomes.get((conv.as_str(), seq)).or_backend()? {
                Some(g) => Ok(Some((seq, g.value().to_vec()))),
                None => Err(StoreError::Corrupt {
                    table: "device_welcomes",
                    detail: format!(
                        "{device:?} in {conv:?} points at missing Welcome of seq {seq}"
                    ),
                }),
            }
        })
        .await
    }

    async fn purge_expired(&self, now_ms: UnixMillis) -> Result<u64, StoreError> {
        let chunk = self.inner.config.purge_chunk;
        let mut purged = 0u64;
        loop {
            let done = self
                .write(move |t| {
                    let done = w_purge_chunk(t, now_ms, chunk)?;
                    if done.entries < chunk {
                        // The last chunk also drops expired enrollment
                        // codes: few (about one per account).
                        w_purge_codes(t, now_ms)?;
                    }
                    Ok(done)
                })
                .await?;
            purged = purged.saturating_add(done.messages);
            if done.entries < chunk {
                break;
            }
        }
        Ok(purged)
    }

    async fn set_push_endpoint(
        &self,
        device_id: &str,
        endpoint: Option<String>,
    ) -> Result<(), StoreError> {
        let id = device_id.to_owned();
        self.write(move |t| {
            match load_device(&t.devices, &id)? {
                Some(d) if !d.revoked => {}
                _ => return Err(StoreError::NoSuchDevice(id.clone())),
            }
            match &endpoint {
                Some(e) => {
                    t.push_endpoints
                        .insert(id.as_str(), e.as_str())
                        .or_backend()?;
                }
                None => {
                    t.push_endpoints.remove(id.as_str()).or_backend()?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn push_endpoint(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        let id = device_id.to_owned();
        self.read_with(move |txn| {
            match load_device(&txn.open_table(DEVICES).or_backend()?, &id)? {
                Some(d) if !d.revoked => {}
                _ => return Ok(None),
            }
            let table = txn.open_table(PUSH_ENDPOINTS).or_backend()?;
            Ok(table
                .get(id.as_str())
                .or_backend()?
                .map(|g| g.value().to_owned()))
        })
        .await
    }

    async fn create_attachment(&self, attachment: Attachment) -> Result<(), StoreError> {
        self.att_create(attachment).await
    }

    async fn attachment(
        &self,
        id: &[u8],
        now_ms: UnixMillis,
    ) -> Result<Option<Attachment>, StoreError> {
        self.att_get(id, now_ms).await
    }

    async fn put_attachment_chunk(
        &self,
        id: &[u8],
        index: u32,
        data: Vec<u8>,
    ) -> Result<Attachment, StoreError> {
        self.att_put_chunk(id, index, data).await
    }

    async fn attachment_chunk(&self, id: &[u8], index: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.att_chunk(id, index).await
    }

    async fn purge_expired_attachments(&self, now_ms: UnixMillis) -> Result<u64, StoreError> {
        self.att_purge(now_ms).await
    }
}
