//! The directory on CQL: accounts, devices, conversations and members
//! (migration 1).

use super::*;

/// A conversation's row: kind, title, default TTL, creation time.
type ConvRow = (Option<i8>, Option<String>, Option<i64>, Option<i64>);

impl CqlStore {
    /// Writes memberships: the members rows in one batch (one partition),
    /// then each account's index row.
    pub(super) async fn write_members(
        &self,
        conversation_id: &str,
        by_account: &BTreeMap<&str, Role>,
    ) -> Result<(), StoreError> {
        if by_account.is_empty() {
            return Ok(());
        }
        for chunk in by_account.iter().collect::<Vec<_>>().chunks(500) {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(chunk.len());
            for (a, r) in chunk {
                batch.append_statement(self.st.mem_put.clone());
                values.push((conversation_id, **a, role_code(**r)));
            }
            self.check_open()?;
            self.session
                .batch(&batch, values)
                .await
                .map_err(|e| backend("write members", e))?;
        }
        for a in by_account.keys() {
            self.exec(&self.st.cba_put, (*a, conversation_id), "write membership")
                .await?;
        }
        Ok(())
    }

    pub(super) async fn require_accounts(&self, ids: &[&str]) -> Result<(), StoreError> {
        for id in ids {
            if self.get_account(id).await?.is_none() {
                return Err(StoreError::NoSuchAccount((*id).to_owned()));
            }
        }
        Ok(())
    }

    pub(super) async fn device_row(&self, id: &str) -> Result<Option<(Device, i64)>, StoreError> {
        let row: Option<DeviceRow> = self.one(&self.st.dev_get, (id,), "read device").await?;
        Ok(row.map(|(id, acc, key, revoked, created, inc)| {
            (
                Device {
                    id,
                    account_id: acc.unwrap_or_default(),
                    public_key: key.unwrap_or_default(),
                    revoked: revoked.unwrap_or(false),
                    created_at_ms: created.unwrap_or(0),
                },
                inc.unwrap_or(0),
            )
        }))
    }

    /// Changes an account's device slots by one with an LWT loop; `limit`
    /// bounds an increment.
    pub(super) async fn change_slots(
        &self,
        account_id: &str,
        up: bool,
        limit: u32,
    ) -> Result<(), StoreError> {
        let row: Option<(Option<String>, Option<i64>, Option<i32>)> = self
            .one(&self.st.acc_get, (account_id,), "read account")
            .await?;
        let Some((_, _, slots)) = row else {
            return Err(StoreError::NoSuchAccount(account_id.to_owned()));
        };
        let mut current = slots.unwrap_or(0);
        for attempt in 0..100u32 {
            let next = if up {
                if i64::from(current) >= i64::from(limit) {
                    return Err(StoreError::DeviceLimit {
                        account: account_id.to_owned(),
                        limit,
                    });
                }
                current + 1
            } else {
                (current - 1).max(0)
            };
            let r = self
                .lwt(
                    &self.st.acc_slot,
                    (next, account_id, current),
                    "claim device slot",
                )
                .await?;
            if r.applied {
                return Ok(());
            }
            match r.get("device_slots") {
                Some(CqlValue::Int(v)) => current = *v,
                // The row is gone: the account was deleted meanwhile.
                _ => return Err(StoreError::NoSuchAccount(account_id.to_owned())),
            }
            backoff(attempt).await;
        }
        Err(StoreError::Backend(format!(
            "cql: device slots of {account_id:?} stayed contended"
        )))
    }

    pub(super) async fn d_create_account(&self, account: Account) -> Result<(), StoreError> {
        let r = self
            .lwt(
                &self.st.acc_insert,
                (&account.id, &account.display_name, account.created_at_ms),
                "create account",
            )
            .await?;
        if r.applied {
            Ok(())
        } else {
            Err(StoreError::AccountExists(account.id))
        }
    }

    pub(super) async fn d_get_account(
        &self,
        account_id: &str,
    ) -> Result<Option<Account>, StoreError> {
        let row: Option<(Option<String>, Option<i64>, Option<i32>)> = self
            .one(&self.st.acc_get, (account_id,), "read account")
            .await?;
        Ok(row.map(|(name, created, _)| Account {
            id: account_id.to_owned(),
            display_name: name.unwrap_or_default(),
            created_at_ms: created.unwrap_or(0),
        }))
    }

    pub(super) async fn d_delete_account(
        &self,
        account_id: &str,
    ) -> Result<AccountPurge, StoreError> {
        if self.get_account(account_id).await?.is_none() {
            return Err(StoreError::NoSuchAccount(account_id.to_owned()));
        }
        let mut purge = AccountPurge::default();
        let devices: Vec<(String,)> = self
            .all(&self.st.dba_list, (account_id,), "list devices")
            .await?;
        for (device_id,) in devices {
            if let Some((_, incarnation)) = self.device_row(&device_id).await? {
                let cursors: Vec<(String, Option<i64>)> = self
                    .all(&self.st.cur_list, (&device_id, incarnation), "list cursors")
                    .await?;
                purge.cursors += u32::try_from(cursors.len()).unwrap_or(u32::MAX);
                self.exec(
                    &self.st.cur_delete_all,
                    (&device_id, incarnation),
                    "delete cursors",
                )
                .await?;
                self.delete_key_packages(&device_id).await?;
                self.delete_welcome_index(&device_id).await?;
                self.delete_push_endpoint(&device_id).await?;
                self.lwt(&self.st.dev_delete, (&device_id,), "delete device")
                    .await?;
                purge.devices += 1;
            }
        }
        self.exec(&self.st.dba_delete_all, (account_id,), "delete device list")
            .await?;
        let convs: Vec<(String,)> = self
            .all(&self.st.cba_list, (account_id,), "list memberships")
            .await?;
        for (cid,) in convs {
            let was: Option<(Option<i8>,)> = self
                .one(&self.st.mem_get, (&cid, account_id), "read member")
                .await?;
            if was.is_some() {
                self.exec(&self.st.mem_delete, (&cid, account_id), "delete member")
                    .await?;
                purge.memberships += 1;
                // Messages only this account could still read go with it.
                if self.members(&cid).await?.is_empty() {
                    self.purge_conversation_messages(&cid).await?;
                }
            }
            // After the member row, and for every conversation still listed
            // (even if the member row went in an earlier, failed attempt):
            // the retry of a failed deletion completes the bumps.
            self.bump_roster(&cid).await?;
        }
        self.exec(&self.st.cba_delete_all, (account_id,), "delete memberships")
            .await?;
        self.a_purge_state(account_id).await?;
        self.lwt(&self.st.acc_delete, (account_id,), "delete account")
            .await?;
        Ok(purge)
    }

    pub(super) async fn d_add_device(
        &self,
        device: Device,
        max_devices: u32,
    ) -> Result<(), StoreError> {
        if self.get_account(&device.account_id).await?.is_none() {
            return Err(StoreError::NoSuchAccount(device.account_id));
        }
        if self.device_row(&device.id).await?.is_some() {
            return Err(StoreError::DeviceExists(device.id));
        }
        // The slot first: a crash then costs a slot, never an uncounted device.
        self.change_slots(&device.account_id, true, max_devices)
            .await?;
        let incarnation = i64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        ) ^ wall_ms().rotate_left(20);
        let r = self
            .lwt(
                &self.st.dev_insert,
                (
                    &device.id,
                    &device.account_id,
                    &device.public_key,
                    device.revoked,
                    device.created_at_ms,
                    incarnation,
                ),
                "add device",
            )
            .await?;
        if !r.applied {
            self.change_slots(&device.account_id, false, max_devices)
                .await?;
            return Err(StoreError::DeviceExists(device.id));
        }
        self.exec(
            &self.st.dba_insert,
            (&device.account_id, &device.id),
            "list device",
        )
        .await?;
        Ok(())
    }

    pub(super) async fn d_get_device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(self.device_row(device_id).await?.map(|(d, _)| d))
    }

    pub(super) async fn d_list_devices(&self, account_id: &str) -> Result<Vec<Device>, StoreError> {
        let ids: Vec<(String,)> = self
            .all(&self.st.dba_list, (account_id,), "list devices")
            .await?;
        // Point reads of single-row partitions, several in flight, in order.
        let found: Vec<Option<Device>> = futures_util::stream::iter(
            ids.into_iter()
                .map(|(id,)| async move { self.get_device(&id).await }),
        )
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
        Ok(found
            .into_iter()
            .flatten()
            .filter(|d| d.account_id == account_id)
            .collect())
    }

    pub(super) async fn d_devices_of(
        &self,
        account_ids: Vec<String>,
    ) -> Result<Vec<Device>, StoreError> {
        // One partition per account: many reads in flight, not one at a
        // time (a 7,000-member channel's roster).
        let lists: Vec<Vec<Device>> = futures_util::stream::iter(
            account_ids
                .into_iter()
                .map(|a| async move { self.list_devices(&a).await }),
        )
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
        Ok(lists.into_iter().flatten().collect())
    }

    pub(super) async fn d_revoke_device(&self, device_id: &str) -> Result<Device, StoreError> {
        let r = self
            .lwt(&self.st.dev_revoke, (device_id,), "revoke device")
            .await?;
        if !r.applied {
            return Err(StoreError::NoSuchDevice(device_id.to_owned()));
        }
        let device = self
            .get_device(device_id)
            .await?
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))?;
        self.delete_key_packages(device_id).await?;
        self.delete_push_endpoint(device_id).await?;
        // Every call bumps, so a retry after a failure here completes it.
        self.bump_account(&device.account_id).await?;
        Ok(device)
    }

    pub(super) async fn d_create_conversation(
        &self,
        conversation: Conversation,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        // Last role wins for a repeated account.
        let mut by_account: BTreeMap<&str, Role> = BTreeMap::new();
        for m in &members {
            by_account.insert(&m.account_id, m.role);
        }
        if conversation.kind == ConversationKind::Direct && by_account.len() != 2 {
            return Err(StoreError::DirectNeedsTwo(by_account.len()));
        }
        let ids: Vec<&str> = by_account.keys().copied().collect();
        self.require_accounts(&ids).await?;
        let r = self
            .lwt(
                &self.st.conv_insert,
                (
                    &conversation.id,
                    kind_code(conversation.kind),
                    &conversation.title,
                    to_i64(conversation.default_ttl_seconds),
                    conversation.created_at_ms,
                ),
                "create conversation",
            )
            .await?;
        if !r.applied {
            return Err(StoreError::ConversationExists(conversation.id));
        }
        self.write_members(&conversation.id, &by_account).await
    }

    pub(super) async fn d_get_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let row: Option<ConvRow> = self
            .one(&self.st.conv_get, (conversation_id,), "read conversation")
            .await?;
        row.map(|(kind, title, ttl, created)| {
            Ok(Conversation {
                id: conversation_id.to_owned(),
                kind: kind_of(kind.unwrap_or(1))?,
                title: title.unwrap_or_default(),
                default_ttl_seconds: to_u64(ttl.unwrap_or(0)),
                created_at_ms: created.unwrap_or(0),
            })
        })
        .transpose()
    }

    pub(super) async fn d_put_members(
        &self,
        conversation_id: &str,
        members: Vec<Member>,
    ) -> Result<(), StoreError> {
        let conv = self
            .get_conversation(conversation_id)
            .await?
            .ok_or_else(|| StoreError::NoSuchConversation(conversation_id.to_owned()))?;
        let mut by_account: BTreeMap<&str, Role> = BTreeMap::new();
        for m in &members {
            by_account.insert(&m.account_id, m.role);
        }
        let ids: Vec<&str> = by_account.keys().copied().collect();
        self.require_accounts(&ids).await?;
        if conv.kind == ConversationKind::Direct {
            let mut all: std::collections::BTreeSet<String> = self
                .members(conversation_id)
                .await?
                .into_iter()
                .map(|m| m.account_id)
                .collect();
            all.extend(ids.iter().map(|s| (*s).to_owned()));
            if all.len() > 2 {
                return Err(StoreError::DirectNeedsTwo(all.len()));
            }
        }
        self.write_members(conversation_id, &by_account).await?;
        // After the rows: whoever sees the new roster version sees them.
        if !by_account.is_empty() {
            self.bump_roster(conversation_id).await?;
        }
        Ok(())
    }

    pub(super) async fn d_remove_members(
        &self,
        conversation_id: &str,
        account_ids: Vec<String>,
    ) -> Result<u32, StoreError> {
        if self.get_conversation(conversation_id).await?.is_none() {
            return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
        }
        let unique: std::collections::BTreeSet<String> = account_ids.into_iter().collect();
        let unique_empty = unique.is_empty();
        let mut removed = 0;
        for a in unique {
            let was: Option<(Option<i8>,)> = self
                .one(&self.st.mem_get, (conversation_id, &a), "read member")
                .await?;
            if was.is_some() {
                self.exec(&self.st.mem_delete, (conversation_id, &a), "delete member")
                    .await?;
                self.exec(
                    &self.st.cba_delete,
                    (&a, conversation_id),
                    "delete membership",
                )
                .await?;
                removed += 1;
            }
        }
        // Always (a retry after a failure between the deletes and the bump
        // completes it); after the deletes, so that whoever sees the new
        // roster version also sees the new membership.
        if !unique_empty {
            self.bump_roster(conversation_id).await?;
        }
        Ok(removed)
    }

    pub(super) async fn d_members(&self, conversation_id: &str) -> Result<Vec<Member>, StoreError> {
        let rows: Vec<(String, Option<i8>)> = self
            .all(&self.st.mem_list, (conversation_id,), "list members")
            .await?;
        rows.into_iter()
            .map(|(account_id, role)| {
                Ok(Member {
                    account_id,
                    role: role_of(role.unwrap_or(0))?,
                })
            })
            .collect()
    }

    pub(super) async fn d_conversations_of(
        &self,
        account_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self
            .all(&self.st.cba_list, (account_id,), "list memberships")
            .await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }
}
