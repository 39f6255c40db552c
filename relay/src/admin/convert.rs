//! Conversions between the API's messages and the store's types, and the
//! checks of ids and pages every call shares.

use super::*;

// ---------------------------------------------------------------------------
// conversions and checks

pub(super) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::AccountExists(_)
        | StoreError::DeviceExists(_)
        | StoreError::ConversationExists(_) => Status::already_exists(e.to_string()),
        StoreError::NoSuchAccount(_)
        | StoreError::NoSuchDevice(_)
        | StoreError::NoSuchConversation(_) => Status::not_found(e.to_string()),
        StoreError::DeviceLimit { .. } => Status::failed_precondition(e.to_string()),
        StoreError::DirectNeedsTwo(_) => Status::invalid_argument(e.to_string()),
        StoreError::NoSuchCode => Status::unauthenticated(e.to_string()),
        StoreError::Closed | StoreError::Backend(_) | StoreError::Corrupt { .. } => {
            tracing::warn!(error = %e, "admin: store failed");
            Status::unavailable("storage is unavailable")
        }
        StoreError::InvalidConfig(_) => Status::internal(e.to_string()),
        StoreError::WrongEpoch { .. }
        | StoreError::WrongGeneration { .. }
        | StoreError::MembershipPending { .. }
        | StoreError::InvalidRosterVersion { .. }
        | StoreError::MlsRequired
        | StoreError::KeyPackageLimit { .. } => Status::failed_precondition(e.to_string()),
        StoreError::AttachmentExists => Status::already_exists(e.to_string()),
        StoreError::NoSuchAttachment => Status::not_found(e.to_string()),
        StoreError::InvalidChunk { .. } => Status::invalid_argument(e.to_string()),
    }
}

pub(super) fn check_id(what: &'static str, id: &str) -> Result<(), Status> {
    ids::validate_id(what, id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if id.contains(ids::SUB_GROUP_SEPARATOR) {
        return Err(Status::invalid_argument(format!(
            "{what} id contains '~', which is kept for the sub-groups of large channels"
        )));
    }
    Ok(())
}

pub(super) fn kind_from(k: i32) -> Result<ConversationKind, Status> {
    match v1::ConversationKind::try_from(k) {
        Ok(v1::ConversationKind::Direct) => Ok(ConversationKind::Direct),
        Ok(v1::ConversationKind::Group) => Ok(ConversationKind::Group),
        Ok(v1::ConversationKind::Channel) => Ok(ConversationKind::Channel),
        _ => Err(Status::invalid_argument(
            "kind must be DIRECT, GROUP or CHANNEL",
        )),
    }
}

pub(super) fn kind_to(k: ConversationKind) -> v1::ConversationKind {
    match k {
        ConversationKind::Direct => v1::ConversationKind::Direct,
        ConversationKind::Group => v1::ConversationKind::Group,
        ConversationKind::Channel => v1::ConversationKind::Channel,
    }
}

pub(super) fn role_from(r: i32) -> Result<Role, Status> {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Unspecified) | Ok(v1::Role::Member) => Ok(Role::Member),
        Ok(v1::Role::Publisher) => Ok(Role::Publisher),
        Ok(v1::Role::Admin) => Ok(Role::Admin),
        Ok(v1::Role::Owner) => Ok(Role::Owner),
        Err(_) => Err(Status::invalid_argument(format!("unknown role {r}"))),
    }
}

pub(super) fn role_to(r: Role) -> v1::Role {
    match r {
        Role::Member => v1::Role::Member,
        Role::Publisher => v1::Role::Publisher,
        Role::Admin => v1::Role::Admin,
        Role::Owner => v1::Role::Owner,
    }
}

pub(super) fn members_from(ms: Vec<v1::Member>) -> Result<Vec<herold_store::Member>, Status> {
    ms.into_iter()
        .map(|m| {
            check_id("account", &m.account_id)?;
            Ok(herold_store::Member {
                account_id: m.account_id,
                role: role_from(m.role)?,
            })
        })
        .collect()
}

pub(super) fn device_to(d: herold_store::Device) -> v1::Device {
    v1::Device {
        device_id: d.id,
        account_id: d.account_id,
        public_key: d.public_key,
        revoked: d.revoked,
        created_at_ms: d.created_at_ms,
    }
}

pub(super) fn account_to(a: herold_store::Account, s: AccountState) -> v1::Account {
    v1::Account {
        account_id: a.id,
        display_name: a.display_name,
        created_at_ms: a.created_at_ms,
        tags: s.tags,
        suspended: s.suspended,
    }
}

pub(super) fn direct_to(d: DirectChats) -> v1::DirectChats {
    match d {
        DirectChats::Everyone => v1::DirectChats::Everyone,
        DirectChats::SharedGroup => v1::DirectChats::SharedGroup,
        DirectChats::Nobody => v1::DirectChats::Nobody,
    }
}

pub(super) fn page_size(n: u32) -> usize {
    (if n == 0 {
        PAGE_DEFAULT
    } else {
        n.min(PAGE_MAX)
    }) as usize
}

pub(super) fn valid_public_key(key: &[u8]) -> Result<(), Status> {
    let bytes: [u8; 32] = key.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "public_key must be a 32-byte Ed25519 key, not {} bytes",
            key.len()
        ))
    })?;
    if ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_err() {
        return Err(Status::invalid_argument(
            "public_key is not a valid Ed25519 point",
        ));
    }
    Ok(())
}
