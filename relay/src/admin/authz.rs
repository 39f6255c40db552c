//! Who may do what: the operator a request carries and its role's rights.

use super::*;

impl AdminService {
    pub(super) async fn who_am_i(
        &self,
        req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::Operator>, Status> {
        let op = operator_of(&req)?;
        Ok(Response::new(v1::Operator {
            name: op.name,
            role: match op.role {
                OperatorRole::OrgAdmin => v1::OperatorRole::OrgAdmin,
                OperatorRole::GroupAdmin => v1::OperatorRole::GroupAdmin,
                OperatorRole::Auditor => v1::OperatorRole::Auditor,
            } as i32,
            groups: op.groups,
        }))
    }
}

pub(super) fn role_name(r: OperatorRole) -> &'static str {
    match r {
        OperatorRole::OrgAdmin => "org-admin",
        OperatorRole::GroupAdmin => "group-admin",
        OperatorRole::Auditor => "auditor",
    }
}

/// What a call needs of its operator.
#[derive(Debug, Clone, Copy)]
pub(super) enum Need<'a> {
    /// Reads of the directory: every role.
    Read,
    /// The audit log: org admins and auditors.
    AuditRead,
    /// Changes of one group or channel: org admins and its group admins.
    Group(&'a str),
    /// Everything else: org admins.
    Org,
}

pub(super) fn authorize(op: &Operator, action: &str, need: Need<'_>) -> Result<(), Status> {
    let denied = || {
        Status::permission_denied(format!(
            "operator {:?} ({}) may not call {action}",
            op.name,
            role_name(op.role)
        ))
    };
    match (op.role, need) {
        (OperatorRole::OrgAdmin, _) | (_, Need::Read) => Ok(()),
        (OperatorRole::Auditor, Need::AuditRead) => Ok(()),
        (OperatorRole::GroupAdmin, Need::Group(id)) => {
            if op.groups.iter().any(|g| g == id) {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "operator {:?} (group-admin) manages only {}; not {id:?}",
                    op.name,
                    op.groups.join(", ")
                )))
            }
        }
        _ => Err(denied()),
    }
}

pub(super) fn operator_of<T>(req: &Request<T>) -> Result<Operator, Status> {
    req.extensions()
        .get::<Operator>()
        .cloned()
        .ok_or_else(|| Status::internal("no operator on the request"))
}

/// What of the directory an operator may read: org admins and auditors
/// (who read the ids in the audit log) all of it; a group admin the groups
/// it manages, and the accounts and devices of their members. What a group
/// admin may not read is refused as not its group, whether it exists or
/// not.
impl AdminService {
    /// Refuses a group admin a conversation it does not manage.
    pub(super) fn may_read_conversation(op: &Operator, id: &str) -> Result<(), Status> {
        match op.role {
            OperatorRole::GroupAdmin => authorize(op, "GetConversation", Need::Group(id)),
            _ => Ok(()),
        }
    }

    /// The accounts a group admin may read (the members of its groups);
    /// `None`: every account.
    pub(super) async fn readable_accounts(
        &self,
        op: &Operator,
    ) -> Result<Option<BTreeSet<String>>, Status> {
        if op.role != OperatorRole::GroupAdmin {
            return Ok(None);
        }
        let mut ids = BTreeSet::new();
        for g in &op.groups {
            let members = self.node.store.members(g).await.map_err(store_status)?;
            ids.extend(members.into_iter().map(|m| m.account_id));
        }
        Ok(Some(ids))
    }

    /// Refuses a group admin an account that is in none of its groups.
    pub(super) async fn may_read_account(&self, op: &Operator, id: &str) -> Result<(), Status> {
        match self.readable_accounts(op).await? {
            Some(ids) if !ids.contains(id) => Err(Status::permission_denied(format!(
                "operator {:?} (group-admin) reads only the members of {}; not {id:?}",
                op.name,
                op.groups.join(", ")
            ))),
            _ => Ok(()),
        }
    }
}
