//! Groups, channels and direct chats: create, read, list, update, members.

use super::*;

impl AdminService {
    /// A conversation's members or settings changed: every relay forgets
    /// its roster; the conversation as it is now.
    async fn changed(&self, conversation_id: &str) -> Result<v1::Conversation, Status> {
        // A large channel's sub-groups follow it; a failure here leaves
        // them behind until the next change, and is the caller's error.
        let mirrored = self.mirror_sub_groups(conversation_id).await;
        let mut touched = vec![conversation_id.to_owned()];
        if let Ok(subs) = &mirrored {
            touched.extend(subs.iter().cloned());
        }
        self.node.rosters_changed(&touched).await;
        mirrored?;
        self.conversation(conversation_id, true).await
    }

    pub(super) async fn conversation(
        &self,
        id: &str,
        with_members: bool,
    ) -> Result<v1::Conversation, Status> {
        let store = &self.node.store;
        let c = store
            .get_conversation(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no conversation {id:?}")))?;
        let members = store.members(id).await.map_err(store_status)?;
        let archived = store
            .conversation_archived(id)
            .await
            .map_err(store_status)?;
        let member_count = u32::try_from(members.len()).unwrap_or(u32::MAX);
        let sub_groups = if c.kind == ConversationKind::Channel {
            crate::roster::sub_group_count(store.as_ref(), id)
                .await
                .map_err(store_status)?
        } else {
            0
        };
        Ok(v1::Conversation {
            conversation_id: c.id,
            kind: kind_to(c.kind) as i32,
            title: c.title,
            members: if with_members {
                members
                    .into_iter()
                    .map(|m| v1::Member {
                        account_id: m.account_id,
                        role: role_to(m.role) as i32,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            default_ttl_seconds: c.default_ttl_seconds,
            archived,
            created_at_ms: c.created_at_ms,
            member_count,
            sub_groups,
        })
    }

    /// Whether two accounts may start a direct conversation.
    pub(super) async fn direct_allowed(&self, a: &str, b: &str) -> Result<(), Status> {
        let org = self.org_policy().await?;
        let eff = Effective::org(&self.node.limits, org.as_ref());
        match eff.direct_chats {
            DirectChats::Everyone => Ok(()),
            DirectChats::Nobody => Err(Status::failed_precondition(
                "the organisation's policy allows no direct conversations",
            )),
            DirectChats::SharedGroup => {
                let store = &self.node.store;
                let of_a: BTreeSet<String> = store
                    .conversations_of(a)
                    .await
                    .map_err(store_status)?
                    .into_iter()
                    .collect();
                for c in store.conversations_of(b).await.map_err(store_status)? {
                    if of_a.contains(&c)
                        && let Some(conv) =
                            store.get_conversation(&c).await.map_err(store_status)?
                        && conv.kind != ConversationKind::Direct
                    {
                        return Ok(());
                    }
                }
                Err(Status::failed_precondition(format!(
                    "the organisation's policy allows direct conversations only between \
                     accounts that share a group; {a:?} and {b:?} share none"
                )))
            }
        }
    }

    pub(super) async fn create_conversation(
        &self,
        req: Request<v1::CreateConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let target = r.conversation_id.clone();
        let detail = format!(
            "kind={} members={} sub_groups={}",
            r.kind,
            r.members.len(),
            r.sub_groups
        );
        self.audited(
            &op,
            "CreateConversation",
            Need::Org,
            &target,
            detail,
            async {
                check_id("conversation", &r.conversation_id)?;
                if r.title.len() > 256 {
                    return Err(Status::invalid_argument("title is longer than 256 bytes"));
                }
                let kind = kind_from(r.kind)?;
                Self::check_sub_groups(&r.conversation_id, kind, r.sub_groups)?;
                let members = members_from(r.members)?;
                if kind == ConversationKind::Direct {
                    let distinct: BTreeSet<&str> =
                        members.iter().map(|m| m.account_id.as_str()).collect();
                    if let [a, b] = distinct.into_iter().collect::<Vec<_>>()[..] {
                        self.direct_allowed(a, b).await?;
                    }
                }
                let c = herold_store::Conversation {
                    id: r.conversation_id.clone(),
                    kind,
                    title: r.title,
                    default_ttl_seconds: r.default_ttl_seconds,
                    created_at_ms: now_ms(),
                };
                if kind == ConversationKind::Channel {
                    // The sub-groups first: a channel is large from its
                    // first moment, and never becomes large later.
                    self.create_sub_groups(&c, r.sub_groups).await?;
                }
                self.node
                    .store
                    .create_conversation(c, members)
                    .await
                    .map_err(store_status)?;
                self.changed(&r.conversation_id).await
            },
        )
        .await
    }

    pub(super) async fn get_conversation(
        &self,
        req: Request<v1::GetConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited(
            &op,
            "GetConversation",
            Need::Read,
            &r.conversation_id,
            String::new(),
            async {
                check_id("conversation", &r.conversation_id)?;
                Self::may_read_conversation(&op, &r.conversation_id)?;
                self.conversation(&r.conversation_id, true).await
            },
        )
        .await
    }

    pub(super) async fn list_conversations(
        &self,
        req: Request<v1::ListConversationsRequest>,
    ) -> Result<Response<v1::ListConversationsResponse>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited(
            &op,
            "ListConversations",
            Need::Read,
            "",
            String::new(),
            async {
                if !r.page_token.is_empty() {
                    // Not check_id: a page may end at a sub-group.
                    ids::validate_id("page_token", &r.page_token)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                }
                if op.role == OperatorRole::GroupAdmin {
                    // Its groups, in one page: a group admin manages few.
                    let mut conversations = Vec::new();
                    for g in &op.groups {
                        match self.conversation(g, false).await {
                            Ok(c) => conversations.push(c),
                            Err(s) if s.code() == tonic::Code::NotFound => {}
                            Err(s) => return Err(s),
                        }
                    }
                    return Ok(v1::ListConversationsResponse {
                        conversations,
                        next_page_token: String::new(),
                    });
                }
                let page = self
                    .node
                    .store
                    .list_conversations(
                        (!r.page_token.is_empty()).then_some(r.page_token.as_str()),
                        page_size(r.page_size),
                    )
                    .await
                    .map_err(store_status)?;
                let mut conversations = Vec::with_capacity(page.items.len());
                // Sub-groups are the relay's business, shown as their
                // channel's `sub_groups` (a page may come out shorter).
                for c in page.items {
                    if ids::sub_group_of(&c.id).is_none() {
                        conversations.push(self.conversation(&c.id, false).await?);
                    }
                }
                Ok(v1::ListConversationsResponse {
                    conversations,
                    next_page_token: page.next.unwrap_or_default(),
                })
            },
        )
        .await
    }

    pub(super) async fn update_conversation(
        &self,
        req: Request<v1::UpdateConversationRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let detail = format!(
            "rename={}{}",
            r.title.is_some(),
            r.archived
                .map(|a| format!(" archived={a}"))
                .unwrap_or_default()
        );
        self.audited(
            &op,
            "UpdateConversation",
            Need::Group(&r.conversation_id),
            &r.conversation_id,
            detail,
            async {
                check_id("conversation", &r.conversation_id)?;
                if r.title.as_ref().is_some_and(|t| t.len() > 256) {
                    return Err(Status::invalid_argument("title is longer than 256 bytes"));
                }
                if r.title.is_none() && r.archived.is_none() {
                    return Err(Status::invalid_argument(
                        "nothing to change: give a title and/or archived",
                    ));
                }
                self.node
                    .store
                    .update_conversation(&r.conversation_id, r.title.clone(), r.archived)
                    .await
                    .map_err(store_status)?;
                self.changed(&r.conversation_id).await
            },
        )
        .await
    }

    pub(super) async fn add_members(
        &self,
        req: Request<v1::AddMembersRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let detail = format!("members={}", r.members.len());
        self.audited(
            &op,
            "AddMembers",
            Need::Group(&r.conversation_id),
            &r.conversation_id,
            detail,
            async {
                check_id("conversation", &r.conversation_id)?;
                let members = members_from(r.members)?;
                self.node
                    .store
                    .put_members(&r.conversation_id, members)
                    .await
                    .map_err(store_status)?;
                self.changed(&r.conversation_id).await
            },
        )
        .await
    }

    pub(super) async fn remove_members(
        &self,
        req: Request<v1::RemoveMembersRequest>,
    ) -> Result<Response<v1::Conversation>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let detail = format!("members={}", r.account_ids.len());
        self.audited(
            &op,
            "RemoveMembers",
            Need::Group(&r.conversation_id),
            &r.conversation_id,
            detail,
            async {
                check_id("conversation", &r.conversation_id)?;
                for a in &r.account_ids {
                    check_id("account", a)?;
                }
                self.node
                    .store
                    .remove_members(&r.conversation_id, r.account_ids.clone())
                    .await
                    .map_err(store_status)?;
                self.changed(&r.conversation_id).await
            },
        )
        .await
    }
}
