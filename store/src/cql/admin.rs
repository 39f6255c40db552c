//! The CQL side of what the admin API manages beyond the directory of
//! migration 1: account tags and suspension, archived conversations,
//! policies, enrollment codes and the audit log (migration 2, tables in
//! `store/migrations/cql/0002_admin.cql`).

use futures_util::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{CONCURRENCY, CqlStore, to_i64, to_u64};

use crate::{
    Account, AccountState, CodeTimes, Conversation, Device, DirectChats, EnrollmentCode, Page,
    Policy, PolicyScope, Store, StoreError, UnixMillis, normalize_tags,
};

/// Cassandra's and Scylla's largest TTL: 20 years.
const MAX_TTL: i64 = 630_720_000;

/// The statements of migration 2, prepared once.
#[derive(Debug)]
pub(super) struct AdminStatements {
    state_get: PreparedStatement,
    state_put: PreparedStatement,
    state_delete: PreparedStatement,
    tag_put: PreparedStatement,
    tag_delete: PreparedStatement,
    tag_list: PreparedStatement,
    tag_list_after: PreparedStatement,
    acc_page: PreparedStatement,
    acc_page_after: PreparedStatement,
    conv_title: PreparedStatement,
    conv_state_get: PreparedStatement,
    conv_state_put: PreparedStatement,
    conv_page: PreparedStatement,
    conv_page_after: PreparedStatement,
    policy_put: PreparedStatement,
    policy_get: PreparedStatement,
    code_put: PreparedStatement,
    code_get: PreparedStatement,
    code_take: PreparedStatement,
    code_restore: PreparedStatement,
}

impl AdminStatements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String| async move {
            let mut st = s.prepare(cql.clone()).await.map_err(|e| {
                StoreError::Backend(format!(
                    "cql prepare {cql:?}: {e} (is keyspace {ks} migrated to version 2?)"
                ))
            })?;
            st.set_is_idempotent(!cql.contains(" IF "));
            Ok::<_, StoreError>(st)
        };
        Ok(Self {
            state_get: p(format!("SELECT tags, suspended, codes_valid_from_ms FROM {ks}.account_state WHERE account_id = ?")).await?,
            state_put: p(format!("INSERT INTO {ks}.account_state (account_id, tags, suspended, codes_valid_from_ms) VALUES (?, ?, ?, ?)")).await?,
            state_delete: p(format!("DELETE FROM {ks}.account_state WHERE account_id = ?")).await?,
            tag_put: p(format!("INSERT INTO {ks}.accounts_by_tag (tag, account_id) VALUES (?, ?)")).await?,
            tag_delete: p(format!("DELETE FROM {ks}.accounts_by_tag WHERE tag = ? AND account_id = ?")).await?,
            tag_list: p(format!("SELECT account_id FROM {ks}.accounts_by_tag WHERE tag = ? LIMIT ?")).await?,
            tag_list_after: p(format!("SELECT account_id FROM {ks}.accounts_by_tag WHERE tag = ? AND account_id > ? LIMIT ?")).await?,
            acc_page: p(format!("SELECT id, display_name, created_at_ms FROM {ks}.accounts LIMIT ?")).await?,
            acc_page_after: p(format!("SELECT id, display_name, created_at_ms FROM {ks}.accounts WHERE token(id) > token(?) LIMIT ?")).await?,
            conv_title: p(format!("UPDATE {ks}.conversations SET title = ? WHERE id = ? IF EXISTS")).await?,
            conv_state_get: p(format!("SELECT archived FROM {ks}.conversation_state WHERE conversation_id = ?")).await?,
            conv_state_put: p(format!("INSERT INTO {ks}.conversation_state (conversation_id, archived) VALUES (?, ?)")).await?,
            conv_page: p(format!("SELECT id, kind, title, default_ttl_seconds, created_at_ms FROM {ks}.conversations LIMIT ?")).await?,
            conv_page_after: p(format!("SELECT id, kind, title, default_ttl_seconds, created_at_ms FROM {ks}.conversations WHERE token(id) > token(?) LIMIT ?")).await?,
            policy_put: p(format!("INSERT INTO {ks}.policies (scope, default_expiry_seconds, max_expiry_seconds, max_devices, max_attachment_bytes, direct_chats, sealed_sender) VALUES (?, ?, ?, ?, ?, ?, ?)")).await?,
            policy_get: p(format!("SELECT default_expiry_seconds, max_expiry_seconds, max_devices, max_attachment_bytes, direct_chats, sealed_sender FROM {ks}.policies WHERE scope = ?")).await?,
            code_put: p(format!("INSERT INTO {ks}.enrollment_codes (code_hash, account_id, account_created_at_ms, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?) USING TTL ?")).await?,
            code_get: p(format!("SELECT account_id, account_created_at_ms, created_at_ms, expires_at_ms FROM {ks}.enrollment_codes WHERE code_hash = ?")).await?,
            code_take: p(format!("DELETE FROM {ks}.enrollment_codes WHERE code_hash = ? IF EXISTS")).await?,
            code_restore: p(format!("INSERT INTO {ks}.enrollment_codes (code_hash, account_id, account_created_at_ms, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?")).await?,
        })
    }
}

fn policy_key(scope: &PolicyScope) -> String {
    match scope {
        PolicyScope::Org => "org".to_owned(),
        PolicyScope::Conversation(id) => format!("c:{id}"),
    }
}

fn limit_i32(limit: usize) -> i32 {
    i32::try_from(limit.max(1)).unwrap_or(i32::MAX)
}

fn code_ttl(expires_at_ms: UnixMillis, now: UnixMillis) -> i32 {
    let secs = ((expires_at_ms - now) / 1000 + 1).clamp(1, MAX_TTL);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

type CodeRow = (Option<String>, Option<i64>, Option<i64>, Option<i64>);
/// tags, suspended, codes_valid_from_ms.
type StateRow = (Option<Vec<String>>, Option<bool>, Option<i64>);

impl CqlStore {
    pub(super) async fn a_account_state(
        &self,
        account_id: &str,
    ) -> Result<Option<AccountState>, StoreError> {
        if self.get_account(account_id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.raw_state(account_id).await?.unwrap_or_default()))
    }

    async fn raw_state(&self, account_id: &str) -> Result<Option<AccountState>, StoreError> {
        let row: Option<StateRow> = self
            .one(&self.adm.state_get, (account_id,), "read account state")
            .await?;
        Ok(row.map(|(tags, suspended, valid_from)| AccountState {
            tags: normalize_tags(tags.unwrap_or_default()),
            suspended: suspended.unwrap_or(false),
            codes_valid_from_ms: valid_from.unwrap_or(0),
        }))
    }

    pub(super) async fn a_set_account_state(
        &self,
        account_id: &str,
        state: AccountState,
    ) -> Result<(), StoreError> {
        if self.get_account(account_id).await?.is_none() {
            return Err(StoreError::NoSuchAccount(account_id.to_owned()));
        }
        let tags = normalize_tags(state.tags);
        let old = self.raw_state(account_id).await?.unwrap_or_default();
        for t in old.tags.iter().filter(|t| !tags.contains(t)) {
            self.exec(&self.adm.tag_delete, (t, account_id), "untag account")
                .await?;
        }
        for t in &tags {
            self.exec(&self.adm.tag_put, (t, account_id), "tag account")
                .await?;
        }
        self.exec(
            &self.adm.state_put,
            (
                account_id,
                &tags,
                state.suspended,
                state.codes_valid_from_ms,
            ),
            "write account state",
        )
        .await?;
        Ok(())
    }

    /// Removes an account's tags and state (part of deleting it).
    pub(super) async fn a_purge_state(&self, account_id: &str) -> Result<(), StoreError> {
        if let Some(old) = self.raw_state(account_id).await? {
            for t in &old.tags {
                self.exec(&self.adm.tag_delete, (t, account_id), "untag account")
                    .await?;
            }
            self.exec(
                &self.adm.state_delete,
                (account_id,),
                "delete account state",
            )
            .await?;
        }
        Ok(())
    }

    pub(super) async fn a_list_accounts(
        &self,
        tag: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Account>, StoreError> {
        if limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let n = limit_i32(limit);
        let items: Vec<Account> = match tag {
            Some(tag) => {
                let ids: Vec<(String,)> = match after {
                    None => self.all(&self.adm.tag_list, (tag, n), "list tag").await?,
                    Some(a) => {
                        self.all(&self.adm.tag_list_after, (tag, a, n), "list tag")
                            .await?
                    }
                };
                let found: Vec<Option<Account>> = futures_util::stream::iter(
                    ids.into_iter()
                        .map(|(id,)| async move { self.get_account(&id).await }),
                )
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
                found.into_iter().flatten().collect()
            }
            None => {
                let rows: Vec<(String, Option<String>, Option<i64>)> = match after {
                    None => self.all(&self.adm.acc_page, (n,), "list accounts").await?,
                    Some(a) => {
                        self.all(&self.adm.acc_page_after, (a, n), "list accounts")
                            .await?
                    }
                };
                rows.into_iter()
                    .map(|(id, name, created)| Account {
                        id,
                        display_name: name.unwrap_or_default(),
                        created_at_ms: created.unwrap_or(0),
                    })
                    .collect()
            }
        };
        // A full page may have a successor; the tag index can hold an id
        // whose account row is already gone, so count the index rows.
        let next = (items.len() >= limit).then(|| items.last().map(|a| a.id.clone()));
        Ok(Page {
            items,
            next: next.flatten(),
        })
    }

    pub(super) async fn a_update_conversation(
        &self,
        conversation_id: &str,
        title: Option<String>,
        archived: Option<bool>,
    ) -> Result<(), StoreError> {
        if self.get_conversation(conversation_id).await?.is_none() {
            return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
        }
        if let Some(title) = title {
            let r = self
                .lwt(
                    &self.adm.conv_title,
                    (title, conversation_id),
                    "rename conversation",
                )
                .await?;
            if !r.applied {
                return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
            }
        }
        if let Some(archived) = archived {
            self.exec(
                &self.adm.conv_state_put,
                (conversation_id, archived),
                "archive conversation",
            )
            .await?;
        }
        Ok(())
    }

    pub(super) async fn a_conversation_archived(
        &self,
        conversation_id: &str,
    ) -> Result<bool, StoreError> {
        let row: Option<(Option<bool>,)> = self
            .one(
                &self.adm.conv_state_get,
                (conversation_id,),
                "read conversation state",
            )
            .await?;
        Ok(row.and_then(|(a,)| a).unwrap_or(false))
    }

    pub(super) async fn a_list_conversations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>, StoreError> {
        if limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        type R = (String, Option<i8>, Option<String>, Option<i64>, Option<i64>);
        let n = limit_i32(limit);
        let rows: Vec<R> = match after {
            None => {
                self.all(&self.adm.conv_page, (n,), "list conversations")
                    .await?
            }
            Some(a) => {
                self.all(&self.adm.conv_page_after, (a, n), "list conversations")
                    .await?
            }
        };
        let items = rows
            .into_iter()
            .map(|(id, kind, title, ttl, created)| {
                Ok(Conversation {
                    id,
                    kind: super::kind_of(kind.unwrap_or(1))?,
                    title: title.unwrap_or_default(),
                    default_ttl_seconds: to_u64(ttl.unwrap_or(0)),
                    created_at_ms: created.unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = (items.len() >= limit).then(|| items.last().map(|c| c.id.clone()));
        Ok(Page {
            items,
            next: next.flatten(),
        })
    }

    pub(super) async fn a_put_policy(
        &self,
        scope: PolicyScope,
        policy: Policy,
    ) -> Result<(), StoreError> {
        if let PolicyScope::Conversation(id) = &scope
            && self.get_conversation(id).await?.is_none()
        {
            return Err(StoreError::NoSuchConversation(id.clone()));
        }
        let direct: Option<i8> = policy.direct_chats.map(|d| match d {
            DirectChats::Everyone => 1,
            DirectChats::SharedGroup => 2,
            DirectChats::Nobody => 3,
        });
        self.exec(
            &self.adm.policy_put,
            (
                policy_key(&scope),
                policy.default_expiry_seconds.map(to_i64),
                policy.max_expiry_seconds.map(to_i64),
                policy
                    .max_devices
                    .map(|d| i32::try_from(d).unwrap_or(i32::MAX)),
                policy.max_attachment_bytes.map(to_i64),
                direct,
                policy.sealed_sender,
            ),
            "write policy",
        )
        .await?;
        Ok(())
    }

    pub(super) async fn a_get_policy(
        &self,
        scope: PolicyScope,
    ) -> Result<Option<Policy>, StoreError> {
        type R = (
            Option<i64>,
            Option<i64>,
            Option<i32>,
            Option<i64>,
            Option<i8>,
            Option<bool>,
        );
        let row: Option<R> = self
            .one(&self.adm.policy_get, (policy_key(&scope),), "read policy")
            .await?;
        row.map(|(de, me, md, ma, dc, ss)| {
            Ok(Policy {
                default_expiry_seconds: de.map(to_u64),
                max_expiry_seconds: me.map(to_u64),
                max_devices: md.map(|d| u32::try_from(d).unwrap_or(0)),
                max_attachment_bytes: ma.map(to_u64),
                direct_chats: match dc {
                    None => None,
                    Some(1) => Some(DirectChats::Everyone),
                    Some(2) => Some(DirectChats::SharedGroup),
                    Some(3) => Some(DirectChats::Nobody),
                    Some(other) => {
                        return Err(super::corrupt("policies", format!("direct_chats {other}")));
                    }
                },
                sealed_sender: ss,
            })
        })
        .transpose()
    }

    pub(super) async fn a_create_enrollment_code(
        &self,
        code: EnrollmentCode,
    ) -> Result<(), StoreError> {
        if self.get_account(&code.account_id).await?.is_none() {
            return Err(StoreError::NoSuchAccount(code.account_id));
        }
        let ttl = code_ttl(code.expires_at_ms, super::wall_ms());
        self.exec(
            &self.adm.code_put,
            (
                &code.code_hash,
                &code.account_id,
                code.account_created_at_ms,
                code.created_at_ms,
                code.expires_at_ms,
                ttl,
            ),
            "write enrollment code",
        )
        .await?;
        Ok(())
    }

    pub(super) async fn a_redeem_enrollment_code(
        &self,
        code_hash: &[u8],
        device: Device,
        now_ms: UnixMillis,
        max_devices: u32,
    ) -> Result<Device, StoreError> {
        let row: Option<CodeRow> = self
            .one(&self.adm.code_get, (code_hash,), "read enrollment code")
            .await?;
        let Some((Some(account_id), Some(acc_created), created, Some(expires))) = row else {
            return Err(StoreError::NoSuchCode);
        };
        let account = self.get_account(&account_id).await?;
        let state = self.raw_state(&account_id).await?;
        let times = CodeTimes {
            account_created_at_ms: acc_created,
            created_at_ms: created.unwrap_or(0),
            expires_at_ms: expires,
        };
        if !EnrollmentCode::redeemable(&times, account.as_ref(), state.as_ref(), now_ms) {
            return Err(StoreError::NoSuchCode);
        }
        // Take the code first, with Paxos: of two concurrent redemptions
        // exactly one gets it.
        let taken = self
            .lwt(&self.adm.code_take, (code_hash,), "take enrollment code")
            .await?;
        if !taken.applied {
            return Err(StoreError::NoSuchCode);
        }
        let device = Device {
            account_id: account_id.clone(),
            ..device
        };
        match self.add_device(device.clone(), max_devices).await {
            Ok(()) => Ok(device),
            Err(e) => {
                // The device was refused: the code stays valid, as on the
                // embedded store.
                let ttl = code_ttl(expires, super::wall_ms());
                let _ = self
                    .lwt(
                        &self.adm.code_restore,
                        (
                            code_hash,
                            &account_id,
                            acc_created,
                            created.unwrap_or(0),
                            expires,
                            ttl,
                        ),
                        "restore enrollment code",
                    )
                    .await;
                Err(e)
            }
        }
    }
}
