//! The tables of the database file, how they are read, and the write
//! transaction's open tables.

use super::*;

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
pub(super) const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
pub(super) const ACCOUNT_DEVICES: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("account_devices");
pub(super) const CONVERSATIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("conversations");
pub(super) const MEMBERS: TableDefinition<(&str, &str), u8> = TableDefinition::new("members");
pub(super) const ACCOUNT_CONVS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("account_convs");
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
pub(super) const HEADS: TableDefinition<&str, u64> = TableDefinition::new("heads");
pub(super) const MESSAGE_IDS: TableDefinition<(&str, &[u8]), u64> =
    TableDefinition::new("message_ids");
pub(super) const EXPIRY: TableDefinition<(i64, &str, u64), ()> = TableDefinition::new("expiry");
pub(super) const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("cursors");
pub(super) const ACCOUNT_STATE: TableDefinition<&str, &[u8]> =
    TableDefinition::new("account_state");
pub(super) const ACCOUNTS_BY_TAG: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("accounts_by_tag");
pub(super) const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
pub(super) const ENROLL_CODES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("enroll_codes");
pub(super) const AUDIT: TableDefinition<(i64, &str), &[u8]> = TableDefinition::new("audit");
/// The audit log's hash chains: chain (a relay's node id) -> (position,
/// hash) of its last entry.
pub(super) const AUDIT_HEAD: TableDefinition<&str, (u64, &[u8])> =
    TableDefinition::new("audit_head");
pub(super) const MLS_STATE: TableDefinition<&str, (u64, u64, u64)> =
    TableDefinition::new("mls_state");
/// Restarts of a conversation's MLS group; no row: never restarted.
pub(super) const MLS_GENERATION: TableDefinition<&str, u64> =
    TableDefinition::new("mls_generation");
pub(super) const KEY_PACKAGES: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("key_packages");
pub(super) const LAST_RESORT: TableDefinition<&str, &[u8]> =
    TableDefinition::new("last_resort_packages");
pub(super) const WELCOMES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("welcomes");
pub(super) const DEVICE_WELCOMES: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("device_welcomes");
/// Device id -> its Web Push endpoint.
pub(super) const PUSH_ENDPOINTS: TableDefinition<&str, &str> =
    TableDefinition::new("push_endpoints");

// ---------------------------------------------------------------------------
// errors

/// Maps any redb (or other foreign) error to [`StoreError::Backend`].
pub(super) trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T, E: fmt::Display> OrBackend<T> for Result<T, E> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Backend(e.to_string()))
    }
}

/// Whether an error is an operation's own answer, returned before it wrote
/// anything, as opposed to a failure of the transaction.
pub(super) fn is_logical(error: &StoreError) -> bool {
    match error {
        StoreError::AccountExists(_)
        | StoreError::NoSuchAccount(_)
        | StoreError::DeviceExists(_)
        | StoreError::NoSuchDevice(_)
        | StoreError::DeviceLimit { .. }
        | StoreError::ConversationExists(_)
        | StoreError::NoSuchConversation(_)
        | StoreError::DirectNeedsTwo(_)
        | StoreError::NoSuchCode
        | StoreError::InvalidConfig(_)
        | StoreError::WrongEpoch { .. }
        | StoreError::WrongGeneration { .. }
        | StoreError::MembershipPending { .. }
        | StoreError::InvalidRosterVersion { .. }
        | StoreError::MlsRequired
        | StoreError::KeyPackageLimit { .. }
        | StoreError::AttachmentExists
        | StoreError::NoSuchAttachment
        | StoreError::InvalidChunk { .. } => true,
        StoreError::Corrupt { .. } | StoreError::Backend(_) | StoreError::Closed => false,
    }
}

// ---------------------------------------------------------------------------
// shared read helpers (work on read and write transactions alike)

pub(super) fn exists<V: Value + 'static>(
    table: &impl ReadableTable<&'static str, V>,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(table.get(id).or_backend()?.is_some())
}

pub(super) fn load_account(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Account>, StoreError> {
    match table.get(id).or_backend()? {
        None => Ok(None),
        Some(guard) => Ok(Some(account_from(id, decode("accounts", guard.value())?))),
    }
}

pub(super) fn load_device(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Device>, StoreError> {
    match table.get(id).or_backend()? {
        None => Ok(None),
        Some(guard) => Ok(Some(device_from(id, decode("devices", guard.value())?))),
    }
}

pub(super) fn load_conversation(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    match table.get(id).or_backend()? {
        None => Ok(None),
        Some(guard) => Ok(Some(conversation_from(
            id,
            decode("conversations", guard.value())?,
        )?)),
    }
}

pub(super) fn load_head(
    table: &impl ReadableTable<&'static str, u64>,
    id: &str,
) -> Result<u64, StoreError> {
    Ok(table.get(id).or_backend()?.map_or(0, |g| g.value()))
}

/// A conversation's MLS state; all zero until the first change.
pub(super) fn load_mls(
    table: &impl ReadableTable<&'static str, (u64, u64, u64)>,
    generations: &impl ReadableTable<&'static str, u64>,
    id: &str,
) -> Result<MlsState, StoreError> {
    let generation = generations.get(id).or_backend()?.map_or(0, |g| g.value());
    Ok(table
        .get(id)
        .or_backend()?
        .map_or_else(MlsState::default, |g| {
            let (epoch, roster_version, group_roster_version) = g.value();
            MlsState {
                generation,
                epoch,
                roster_version,
                group_roster_version,
            }
        }))
}

/// The one-time packages of a device, as (index, bytes), in upload order.
pub(super) fn scan_key_packages(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    device_id: &str,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for item in table
        .range((device_id, 0)..=(device_id, u64::MAX))
        .or_backend()?
    {
        let (key, value) = item.or_backend()?;
        out.push((key.value().1, value.value().to_vec()));
    }
    Ok(out)
}

pub(super) fn count_key_packages(
    one_time: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    last_resort: &impl ReadableTable<&'static str, &'static [u8]>,
    device_id: &str,
) -> Result<KeyPackageCount, StoreError> {
    let mut available = 0u32;
    for item in one_time
        .range((device_id, 0)..=(device_id, u64::MAX))
        .or_backend()?
    {
        item.or_backend()?;
        available = available.saturating_add(1);
    }
    Ok(KeyPackageCount {
        available,
        last_resort: exists(last_resort, device_id)?,
    })
}

/// The second elements of the keys `(first, _)`, in order.
pub(super) fn scan_keys<V: Value + 'static>(
    table: &impl ReadableTable<(&'static str, &'static str), V>,
    first: &str,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for item in table.range((first, "")..).or_backend()? {
        let (key, _) = item.or_backend()?;
        let (a, b) = key.value();
        if a != first {
            break;
        }
        out.push(b.to_owned());
    }
    Ok(out)
}

/// The entries `(first, second) -> u64`, as `(second, value)`, in order.
pub(super) fn scan_u64(
    table: &impl ReadableTable<(&'static str, &'static str), u64>,
    first: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    for item in table.range((first, "")..).or_backend()? {
        let (key, value) = item.or_backend()?;
        let (a, b) = key.value();
        if a != first {
            break;
        }
        out.push((b.to_owned(), value.value()));
    }
    Ok(out)
}

pub(super) fn scan_members(
    table: &impl ReadableTable<(&'static str, &'static str), u8>,
    conversation_id: &str,
) -> Result<Vec<Member>, StoreError> {
    let mut out = Vec::new();
    for item in table.range((conversation_id, "")..).or_backend()? {
        let (key, value) = item.or_backend()?;
        let (conv, account) = key.value();
        if conv != conversation_id {
            break;
        }
        out.push(Member {
            account_id: account.to_owned(),
            role: role_from_code(value.value())?,
        });
    }
    Ok(out)
}

/// Deduplicates members by account id; the last role given wins.
pub(super) fn dedup_members(members: &[Member]) -> BTreeMap<&str, Role> {
    members
        .iter()
        .map(|m| (m.account_id.as_str(), m.role))
        .collect()
}

// ---------------------------------------------------------------------------
// write operations (run on the writer thread)

/// All tables, open in one write transaction.
pub(super) struct WriteTables<'t> {
    pub(super) accounts: Table<'t, &'static str, &'static [u8]>,
    pub(super) devices: Table<'t, &'static str, &'static [u8]>,
    pub(super) account_devices: Table<'t, (&'static str, &'static str), ()>,
    pub(super) conversations: Table<'t, &'static str, &'static [u8]>,
    pub(super) members: Table<'t, (&'static str, &'static str), u8>,
    pub(super) account_convs: Table<'t, (&'static str, &'static str), ()>,
    pub(super) messages: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) heads: Table<'t, &'static str, u64>,
    pub(super) message_ids: Table<'t, (&'static str, &'static [u8]), u64>,
    pub(super) expiry: Table<'t, (i64, &'static str, u64), ()>,
    pub(super) cursors: Table<'t, (&'static str, &'static str), u64>,
    pub(super) account_state: Table<'t, &'static str, &'static [u8]>,
    pub(super) accounts_by_tag: Table<'t, (&'static str, &'static str), ()>,
    pub(super) policies: Table<'t, &'static str, &'static [u8]>,
    pub(super) enroll_codes: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) audit: Table<'t, (i64, &'static str), &'static [u8]>,
    pub(super) audit_head: Table<'t, &'static str, (u64, &'static [u8])>,
    pub(super) mls_state: Table<'t, &'static str, (u64, u64, u64)>,
    pub(super) mls_generation: Table<'t, &'static str, u64>,
    pub(super) key_packages: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) last_resort: Table<'t, &'static str, &'static [u8]>,
    pub(super) welcomes: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) device_welcomes: Table<'t, (&'static str, &'static str), u64>,
    pub(super) push_endpoints: Table<'t, &'static str, &'static str>,
    pub(super) attachments: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) attachment_chunks: Table<'t, (&'static [u8], u32), &'static [u8]>,
    pub(super) attachment_expiry: Table<'t, (i64, &'static [u8]), ()>,
}

impl<'t> WriteTables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            accounts: txn.open_table(ACCOUNTS).or_backend()?,
            devices: txn.open_table(DEVICES).or_backend()?,
            account_devices: txn.open_table(ACCOUNT_DEVICES).or_backend()?,
            conversations: txn.open_table(CONVERSATIONS).or_backend()?,
            members: txn.open_table(MEMBERS).or_backend()?,
            account_convs: txn.open_table(ACCOUNT_CONVS).or_backend()?,
            messages: txn.open_table(MESSAGES).or_backend()?,
            heads: txn.open_table(HEADS).or_backend()?,
            message_ids: txn.open_table(MESSAGE_IDS).or_backend()?,
            expiry: txn.open_table(EXPIRY).or_backend()?,
            cursors: txn.open_table(CURSORS).or_backend()?,
            account_state: txn.open_table(ACCOUNT_STATE).or_backend()?,
            accounts_by_tag: txn.open_table(ACCOUNTS_BY_TAG).or_backend()?,
            policies: txn.open_table(POLICIES).or_backend()?,
            enroll_codes: txn.open_table(ENROLL_CODES).or_backend()?,
            audit: txn.open_table(AUDIT).or_backend()?,
            audit_head: txn.open_table(AUDIT_HEAD).or_backend()?,
            mls_state: txn.open_table(MLS_STATE).or_backend()?,
            mls_generation: txn.open_table(MLS_GENERATION).or_backend()?,
            key_packages: txn.open_table(KEY_PACKAGES).or_backend()?,
            last_resort: txn.open_table(LAST_RESORT).or_backend()?,
            welcomes: txn.open_table(WELCOMES).or_backend()?,
            device_welcomes: txn.open_table(DEVICE_WELCOMES).or_backend()?,
            push_endpoints: txn.open_table(PUSH_ENDPOINTS).or_backend()?,
            attachments: txn.open_table(ATTACHMENTS).or_backend()?,
            attachment_chunks: txn.open_table(ATTACHMENT_CHUNKS).or_backend()?,
            attachment_expiry: txn.open_table(ATTACHMENT_EXPIRY).or_backend()?,
        })
    }
}
