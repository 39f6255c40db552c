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
