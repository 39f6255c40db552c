//! How rows are encoded: the records (protobuf) and their conversion to
//! and from the store's types.

use super::*;

// ---------------------------------------------------------------------------
// records

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct AccountRec {
    #[prost(string, tag = "1")]
    pub(super) display_name: String,
    #[prost(int64, tag = "2")]
    pub(super) created_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct DeviceRec {
    #[prost(string, tag = "1")]
    pub(super) account_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(super) public_key: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub(super) revoked: bool,
    #[prost(int64, tag = "4")]
    pub(super) created_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ConversationRec {
    /// 1 direct, 2 group, 3 channel.
    #[prost(uint32, tag = "1")]
    pub(super) kind: u32,
    #[prost(string, tag = "2")]
    pub(super) title: String,
    #[prost(uint64, tag = "3")]
    pub(super) default_ttl_seconds: u64,
    #[prost(int64, tag = "4")]
    pub(super) created_at_ms: i64,
    #[prost(bool, tag = "5")]
    pub(super) archived: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct AccountStateRec {
    #[prost(string, repeated, tag = "1")]
    pub(super) tags: Vec<String>,
    #[prost(bool, tag = "2")]
    pub(super) suspended: bool,
    #[prost(int64, tag = "3")]
    pub(super) codes_valid_from_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PolicyRec {
    #[prost(uint64, optional, tag = "1")]
    pub(super) default_expiry_seconds: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub(super) max_expiry_seconds: Option<u64>,
    #[prost(uint32, optional, tag = "3")]
    pub(super) max_devices: Option<u32>,
    #[prost(uint64, optional, tag = "4")]
    pub(super) max_attachment_bytes: Option<u64>,
    /// 1 everyone, 2 shared group, 3 nobody.
    #[prost(uint32, optional, tag = "5")]
    pub(super) direct_chats: Option<u32>,
    #[prost(bool, optional, tag = "6")]
    pub(super) sealed_sender: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct CodeRec {
    #[prost(string, tag = "1")]
    pub(super) account_id: String,
    #[prost(int64, tag = "2")]
    pub(super) account_created_at_ms: i64,
    #[prost(int64, tag = "3")]
    pub(super) created_at_ms: i64,
    #[prost(int64, tag = "4")]
    pub(super) expires_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct AuditRec {
    #[prost(string, tag = "1")]
    pub(super) operator: String,
    #[prost(string, tag = "2")]
    pub(super) action: String,
    #[prost(string, tag = "3")]
    pub(super) target: String,
    #[prost(string, tag = "4")]
    pub(super) outcome: String,
    #[prost(string, tag = "5")]
    pub(super) detail: String,
    /// Position in the hash chain (0: written before the chain).
    #[prost(uint64, tag = "6")]
    pub(super) chain_seq: u64,
    #[prost(bytes = "vec", tag = "7")]
    pub(super) hash: Vec<u8>,
    /// The chain (the writing relay's node id).
    #[prost(string, tag = "8")]
    pub(super) chain: String,
}

pub(super) fn policy_key(scope: &PolicyScope) -> String {
    match scope {
        PolicyScope::Org => "org".to_owned(),
        PolicyScope::Conversation(id) => format!("c:{id}"),
    }
}

pub(super) fn policy_rec(p: &Policy) -> PolicyRec {
    PolicyRec {
        default_expiry_seconds: p.default_expiry_seconds,
        max_expiry_seconds: p.max_expiry_seconds,
        max_devices: p.max_devices,
        max_attachment_bytes: p.max_attachment_bytes,
        direct_chats: p.direct_chats.map(|d| match d {
            DirectChats::Everyone => 1,
            DirectChats::SharedGroup => 2,
            DirectChats::Nobody => 3,
        }),
        sealed_sender: p.sealed_sender,
    }
}

pub(super) fn policy_from(r: PolicyRec) -> Result<Policy, StoreError> {
    Ok(Policy {
        default_expiry_seconds: r.default_expiry_seconds,
        max_expiry_seconds: r.max_expiry_seconds,
        max_devices: r.max_devices,
        max_attachment_bytes: r.max_attachment_bytes,
        direct_chats: match r.direct_chats {
            None => None,
            Some(1) => Some(DirectChats::Everyone),
            Some(2) => Some(DirectChats::SharedGroup),
            Some(3) => Some(DirectChats::Nobody),
            Some(other) => {
                return Err(StoreError::Corrupt {
                    table: "policies",
                    detail: format!("unknown direct_chats {other}"),
                });
            }
        },
        sealed_sender: r.sealed_sender,
    })
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct MessageRec {
    #[prost(bytes = "vec", tag = "1")]
    pub(super) message_id: Vec<u8>,
    #[prost(string, tag = "2")]
    pub(super) sender_account_id: String,
    #[prost(string, tag = "3")]
    pub(super) sender_device_id: String,
    #[prost(int64, tag = "4")]
    pub(super) server_time_ms: i64,
    #[prost(int64, optional, tag = "5")]
    pub(super) expires_at_ms: Option<i64>,
    #[prost(bytes = "vec", tag = "6")]
    pub(super) ciphertext: Vec<u8>,
    /// A commit's Welcome devices ([`StoredMessage::welcomed`]).
    #[prost(string, repeated, tag = "7")]
    pub(super) welcomed: Vec<String>,
}

pub(super) fn decode<M: prost::Message + Default>(
    table: &'static str,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

pub(super) fn kind_code(kind: ConversationKind) -> u32 {
    match kind {
        ConversationKind::Direct => 1,
        ConversationKind::Group => 2,
        ConversationKind::Channel => 3,
    }
}

pub(super) fn kind_from_code(code: u32) -> Result<ConversationKind, StoreError> {
    match code {
        1 => Ok(ConversationKind::Direct),
        2 => Ok(ConversationKind::Group),
        3 => Ok(ConversationKind::Channel),
        other => Err(StoreError::Corrupt {
            table: "conversations",
            detail: format!("unknown conversation kind {other}"),
        }),
    }
}

pub(super) fn role_code(role: Role) -> u8 {
    match role {
        Role::Member => 1,
        Role::Publisher => 2,
        Role::Admin => 3,
        Role::Owner => 4,
    }
}

pub(super) fn role_from_code(code: u8) -> Result<Role, StoreError> {
    match code {
        1 => Ok(Role::Member),
        2 => Ok(Role::Publisher),
        3 => Ok(Role::Admin),
        4 => Ok(Role::Owner),
        other => Err(StoreError::Corrupt {
            table: "members",
            detail: format!("unknown role {other}"),
        }),
    }
}

pub(super) fn account_from(id: &str, rec: AccountRec) -> Account {
    Account {
        id: id.to_owned(),
        display_name: rec.display_name,
        created_at_ms: rec.created_at_ms,
    }
}

pub(super) fn device_from(id: &str, rec: DeviceRec) -> Device {
    Device {
        id: id.to_owned(),
        account_id: rec.account_id,
        public_key: rec.public_key,
        revoked: rec.revoked,
        created_at_ms: rec.created_at_ms,
    }
}

pub(super) fn device_rec(device: &Device) -> DeviceRec {
    DeviceRec {
        account_id: device.account_id.clone(),
        public_key: device.public_key.clone(),
        revoked: device.revoked,
        created_at_ms: device.created_at_ms,
    }
}

pub(super) fn conversation_from(
    id: &str,
    rec: ConversationRec,
) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        id: id.to_owned(),
        kind: kind_from_code(rec.kind)?,
        title: rec.title,
        default_ttl_seconds: rec.default_ttl_seconds,
        created_at_ms: rec.created_at_ms,
    })
}

pub(super) fn message_from(conversation_id: &str, seq: u64, rec: MessageRec) -> StoredMessage {
    StoredMessage {
        conversation_id: conversation_id.to_owned(),
        seq,
        message_id: rec.message_id,
        sender_account_id: rec.sender_account_id,
        sender_device_id: rec.sender_device_id,
        server_time_ms: rec.server_time_ms,
        expires_at_ms: rec.expires_at_ms,
        welcomed: rec.welcomed,
        ciphertext: rec.ciphertext,
    }
}
