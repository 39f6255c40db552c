//! The sub-groups of large channels (docs/e2e.md, "Large channels"): each
//! an ordinary channel `<id>~<n>` with every publisher of the channel and a
//! slice of its other members, kept in line with the channel by the relay.
//! Operators never name them: ids with `~` are refused.

use super::*;
use crate::roster::{MAX_SUB_GROUPS, sub_group_count, sub_group_of_account};

/// The members of each of `n` sub-groups for a channel of `members`.
fn split(members: &[herold_store::Member], n: u32) -> Vec<HashMap<String, Role>> {
    let mut out = vec![HashMap::new(); n as usize];
    for m in members {
        if m.role.may_post(ConversationKind::Channel) {
            for sub in &mut out {
                sub.insert(m.account_id.clone(), m.role);
            }
        } else if let Some(sub) = out.get_mut(sub_group_of_account(&m.account_id, n) as usize) {
            sub.insert(m.account_id.clone(), m.role);
        }
    }
    out
}

impl AdminService {
    /// Checks a requested sub-group count for a new conversation.
    pub(super) fn check_sub_groups(id: &str, kind: ConversationKind, n: u32) -> Result<(), Status> {
        if n == 0 {
            return Ok(());
        }
        if kind != ConversationKind::Channel {
            return Err(Status::invalid_argument(
                "only a channel can have sub-groups",
            ));
        }
        if n > MAX_SUB_GROUPS {
            return Err(Status::invalid_argument(format!(
                "{n} sub-groups; at most {MAX_SUB_GROUPS}"
            )));
        }
        let longest = ids::sub_group_id(id, n - 1);
        ids::validate_id("conversation", &longest).map_err(|_| {
            Status::invalid_argument(format!(
                "the id of a channel with {n} sub-groups can be at most {} bytes",
                ids::MAX_ID_BYTES - (longest.len() - id.len())
            ))
        })
    }

    /// Creates the `n` sub-groups of the new channel `c` (none for 0),
    /// empty; the first [`AdminService::mirror_sub_groups`] fills them.
    /// Sub-groups left by an earlier attempt that failed halfway are kept;
    /// more of them than `n` refuse the creation (they cannot be deleted,
    /// and the count is read from which exist).
    pub(super) async fn create_sub_groups(
        &self,
        c: &herold_store::Conversation,
        n: u32,
    ) -> Result<(), Status> {
        let store = &self.node.store;
        if store
            .get_conversation(&c.id)
            .await
            .map_err(store_status)?
            .is_some()
        {
            return Err(store_status(StoreError::ConversationExists(c.id.clone())));
        }
        let left = sub_group_count(store.as_ref(), &c.id)
            .await
            .map_err(store_status)?;
        if left > n {
            return Err(Status::failed_precondition(format!(
                "an earlier attempt to create channel {:?} made {left} sub-groups; \
                 create it with sub_groups = {left}",
                c.id
            )));
        }
        // Lowest first, so that what an attempt leaves is always `~0` up
        // to some `~k`, which the count (a binary search) reads right.
        for i in 0..n {
            let sub = herold_store::Conversation {
                id: ids::sub_group_id(&c.id, i),
                kind: ConversationKind::Channel,
                title: String::new(),
                default_ttl_seconds: c.default_ttl_seconds,
                created_at_ms: c.created_at_ms,
            };
            match store.create_conversation(sub, Vec::new()).await {
                Ok(()) | Err(StoreError::ConversationExists(_)) => {}
                Err(e) => return Err(store_status(e)),
            }
        }
        Ok(())
    }

    /// Makes the rosters (and the archive state) of the channel's
    /// sub-groups follow the channel's: every publisher in each, every
    /// other member in the one its account id hashes to. Returns the
    /// sub-groups it changed. Nothing for a conversation without any.
    pub(super) async fn mirror_sub_groups(&self, channel: &str) -> Result<Vec<String>, Status> {
        let store = &self.node.store;
        let n = sub_group_count(store.as_ref(), channel)
            .await
            .map_err(store_status)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let members = store.members(channel).await.map_err(store_status)?;
        let archived = store
            .conversation_archived(channel)
            .await
            .map_err(store_status)?;
        let mut touched = Vec::new();
        for (i, want) in (0..n).zip(split(&members, n)) {
            let sub = ids::sub_group_id(channel, i);
            let have: HashMap<String, Role> = store
                .members(&sub)
                .await
                .map_err(store_status)?
                .into_iter()
                .map(|m| (m.account_id, m.role))
                .collect();
            let gone: Vec<String> = have
                .keys()
                .filter(|a| !want.contains_key(*a))
                .cloned()
                .collect();
            let put: Vec<herold_store::Member> = want
                .iter()
                .filter(|(a, r)| have.get(*a) != Some(r))
                .map(|(a, r)| herold_store::Member {
                    account_id: a.clone(),
                    role: *r,
                })
                .collect();
            let mut changed = false;
            if !gone.is_empty() {
                store
                    .remove_members(&sub, gone)
                    .await
                    .map_err(store_status)?;
                changed = true;
            }
            if !put.is_empty() {
                store.put_members(&sub, put).await.map_err(store_status)?;
                changed = true;
            }
            if store
                .conversation_archived(&sub)
                .await
                .map_err(store_status)?
                != archived
            {
                store
                    .update_conversation(&sub, None, Some(archived))
                    .await
                    .map_err(store_status)?;
                changed = true;
            }
            if changed {
                touched.push(sub);
            }
        }
        Ok(touched)
    }
}
