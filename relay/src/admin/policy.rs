//! Policies of the organisation and of conversations.

use super::*;

impl AdminService {
    pub(super) async fn org_policy(&self) -> Result<Option<Policy>, Status> {
        self.node
            .store
            .get_policy(PolicyScope::Org)
            .await
            .map_err(store_status)
    }

    pub(super) async fn set_policy(
        &self,
        req: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::PolicyView>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        let org = r.conversation_id.is_empty();
        let target = if org {
            "org"
        } else {
            r.conversation_id.as_str()
        }
        .to_owned();
        let detail = r.policy.as_ref().map(policy_detail).unwrap_or_default();
        let need = if org {
            Need::Org
        } else {
            Need::Group(&r.conversation_id)
        };
        self.audited(&op, "SetPolicy", need, &target, detail, async {
            if !org {
                check_id("conversation", &r.conversation_id)?;
            }
            let p = r
                .policy
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("policy is missing"))?;
            let policy = validate_policy(p, org, &self.node.limits)?;
            let scope = if org {
                PolicyScope::Org
            } else {
                PolicyScope::Conversation(r.conversation_id.clone())
            };
            // A large channel's sub-groups carry its key messages: they
            // live as long as its posts, under the same limits.
            let mut touched = vec![r.conversation_id.clone()];
            if !org {
                let n =
                    crate::roster::sub_group_count(self.node.store.as_ref(), &r.conversation_id)
                        .await
                        .map_err(store_status)?;
                for i in 0..n {
                    let sub = ids::sub_group_id(&r.conversation_id, i);
                    self.node
                        .store
                        .put_policy(PolicyScope::Conversation(sub.clone()), policy.clone())
                        .await
                        .map_err(store_status)?;
                    touched.push(sub);
                }
            }
            self.node
                .store
                .put_policy(scope, policy)
                .await
                .map_err(store_status)?;
            if org {
                self.node.rosters_changed(&[]).await;
            } else {
                self.node.rosters_changed(&touched).await;
            }
            self.policy_view(&r.conversation_id).await
        })
        .await
    }

    pub(super) async fn get_policy(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::PolicyView>, Status> {
        let op = operator_of(&req)?;
        let r = req.into_inner();
        self.audited(
            &op,
            "GetPolicy",
            Need::Read,
            &r.conversation_id,
            String::new(),
            async {
                if !r.conversation_id.is_empty() {
                    check_id("conversation", &r.conversation_id)?;
                }
                self.policy_view(&r.conversation_id).await
            },
        )
        .await
    }

    pub(super) async fn policy_view(
        &self,
        conversation_id: &str,
    ) -> Result<v1::PolicyView, Status> {
        let store = &self.node.store;
        let org = self.org_policy().await?;
        if conversation_id.is_empty() {
            let eff = Effective::org(&self.node.limits, org.as_ref());
            return Ok(v1::PolicyView {
                conversation_id: String::new(),
                set: Some(policy_to(&org.unwrap_or_default())),
                effective: Some(policy_to(&eff.as_policy())),
            });
        }
        let conv = store
            .get_conversation(conversation_id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no conversation {conversation_id:?}")))?;
        let set = store
            .get_policy(PolicyScope::Conversation(conversation_id.to_owned()))
            .await
            .map_err(store_status)?;
        let eff = Effective::resolve(
            &self.node.limits,
            org.as_ref(),
            set.as_ref(),
            conv.default_ttl_seconds,
        );
        Ok(v1::PolicyView {
            conversation_id: conversation_id.to_owned(),
            set: Some(policy_to(&set.unwrap_or_default())),
            effective: Some(policy_to(&eff.as_policy())),
        })
    }
}

pub(super) fn policy_to(p: &Policy) -> v1::Policy {
    v1::Policy {
        default_expiry_seconds: p.default_expiry_seconds,
        max_expiry_seconds: p.max_expiry_seconds,
        max_devices: p.max_devices,
        max_attachment_bytes: p.max_attachment_bytes,
        direct_chats: p
            .direct_chats
            .map_or(v1::DirectChats::Unspecified, direct_to) as i32,
        sealed_sender: p.sealed_sender,
    }
}

/// A policy for the audit log: the settings given, `name=value`.
pub(super) fn policy_detail(p: &v1::Policy) -> String {
    let mut parts = Vec::new();
    let mut put = |name: &str, v: Option<u64>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    put("default_expiry_seconds", p.default_expiry_seconds);
    put("max_expiry_seconds", p.max_expiry_seconds);
    put("max_devices", p.max_devices.map(u64::from));
    put("max_attachment_bytes", p.max_attachment_bytes);
    if let Ok(d) = v1::DirectChats::try_from(p.direct_chats)
        && d != v1::DirectChats::Unspecified
    {
        parts.push(format!("direct_chats={}", d.as_str_name()));
    }
    if let Some(s) = p.sealed_sender {
        parts.push(format!("sealed_sender={s}"));
    }
    parts.join(" ")
}

pub(super) fn validate_policy(
    p: &v1::Policy,
    org: bool,
    limits: &crate::config::Limits,
) -> Result<Policy, Status> {
    let max_expiry = limits.max_expiry.as_secs();
    let check_expiry = |name: &str, v: Option<u64>| -> Result<(), Status> {
        match v {
            Some(0) => Err(Status::invalid_argument(format!(
                "{name} must be greater than 0 (leave it unset to inherit)"
            ))),
            Some(s) if s > max_expiry => Err(Status::invalid_argument(format!(
                "{name} {s} is above this relay's maximum of {max_expiry} seconds"
            ))),
            _ => Ok(()),
        }
    };
    check_expiry("default_expiry_seconds", p.default_expiry_seconds)?;
    check_expiry("max_expiry_seconds", p.max_expiry_seconds)?;
    if let (Some(d), Some(m)) = (p.default_expiry_seconds, p.max_expiry_seconds)
        && d > m
    {
        return Err(Status::invalid_argument(format!(
            "default_expiry_seconds {d} is above max_expiry_seconds {m}"
        )));
    }
    let direct = match v1::DirectChats::try_from(p.direct_chats) {
        Ok(v1::DirectChats::Unspecified) => None,
        Ok(v1::DirectChats::Everyone) => Some(DirectChats::Everyone),
        Ok(v1::DirectChats::SharedGroup) => Some(DirectChats::SharedGroup),
        Ok(v1::DirectChats::Nobody) => Some(DirectChats::Nobody),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown direct_chats {}",
                p.direct_chats
            )));
        }
    };
    if !org && (p.max_devices.is_some() || direct.is_some() || p.sealed_sender.is_some()) {
        return Err(Status::invalid_argument(
            "max_devices, direct_chats and sealed_sender apply to the organisation only",
        ));
    }
    if let Some(d) = p.max_devices
        && (d == 0 || d > MAX_DEVICES_CEILING)
    {
        return Err(Status::invalid_argument(format!(
            "max_devices must be 1..={MAX_DEVICES_CEILING}, not {d}"
        )));
    }
    if p.max_attachment_bytes == Some(0) {
        return Err(Status::invalid_argument(
            "max_attachment_bytes must be greater than 0",
        ));
    }
    Ok(Policy {
        default_expiry_seconds: p.default_expiry_seconds,
        max_expiry_seconds: p.max_expiry_seconds,
        max_devices: p.max_devices,
        max_attachment_bytes: p.max_attachment_bytes,
        direct_chats: direct,
        sealed_sender: p.sealed_sender,
    })
}
