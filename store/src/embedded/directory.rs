//! Writes to the directory: accounts, devices, conversations, members,
//! and the roster versions they bump.

use super::*;

pub(super) fn w_create_account(
    t: &mut WriteTables<'_>,
    account: &Account,
) -> Result<(), StoreError> {
    if exists(&t.accounts, &account.id)? {
        return Err(StoreError::AccountExists(account.id.clone()));
    }
    let rec = AccountRec {
        display_name: account.display_name.clone(),
        created_at_ms: account.created_at_ms,
    };
    t.accounts
        .insert(account.id.as_str(), rec.encode_to_vec().as_slice())
        .or_backend()?;
    Ok(())
}

pub(super) fn w_delete_account(
    t: &mut WriteTables<'_>,
    account_id: &str,
) -> Result<AccountPurge, StoreError> {
    if !exists(&t.accounts, account_id)? {
        return Err(StoreError::NoSuchAccount(account_id.to_owned()));
    }
    let devices = scan_keys(&t.account_devices, account_id)?;
    let conversations = scan_keys(&t.account_convs, account_id)?;
    let mut purge = AccountPurge::default();
    for device in &devices {
        w_purge_device_mls(t, device)?;
        for conv in scan_keys(&t.cursors, device)? {
            t.cursors
                .remove((device.as_str(), conv.as_str()))
                .or_backend()?;
            purge.cursors = purge.cursors.saturating_add(1);
        }
        t.devices.remove(device.as_str()).or_backend()?;
        t.account_devices
            .remove((account_id, device.as_str()))
            .or_backend()?;
        purge.devices = purge.devices.saturating_add(1);
    }
    for conv in &conversations {
        t.members.remove((conv.as_str(), account_id)).or_backend()?;
        t.account_convs
            .remove((account_id, conv.as_str()))
            .or_backend()?;
        purge.memberships = purge.memberships.saturating_add(1);
        w_bump_roster(t, conv)?;
    }
    if let Some(state) = load_account_state(&t.account_state, account_id)? {
        for tag in &state.tags {
            t.accounts_by_tag
                .remove((tag.as_str(), account_id))
                .or_backend()?;
        }
        t.account_state.remove(account_id).or_backend()?;
    }
    t.accounts.remove(account_id).or_backend()?;
    Ok(purge)
}

pub(super) fn w_update_conversation(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    title: Option<&String>,
    archived: Option<bool>,
) -> Result<(), StoreError> {
    let mut rec: ConversationRec = match t.conversations.get(conversation_id).or_backend()? {
        None => return Err(StoreError::NoSuchConversation(conversation_id.to_owned())),
        Some(g) => decode("conversations", g.value())?,
    };
    if let Some(title) = title {
        rec.title = title.clone();
    }
    if let Some(archived) = archived {
        rec.archived = archived;
    }
    t.conversations
        .insert(conversation_id, rec.encode_to_vec().as_slice())
        .or_backend()?;
    Ok(())
}

pub(super) fn w_add_device(
    t: &mut WriteTables<'_>,
    device: &Device,
    max_devices: u32,
) -> Result<(), StoreError> {
    if !exists(&t.accounts, &device.account_id)? {
        return Err(StoreError::NoSuchAccount(device.account_id.clone()));
    }
    if exists(&t.devices, &device.id)? {
        return Err(StoreError::DeviceExists(device.id.clone()));
    }
    let count = scan_keys(&t.account_devices, &device.account_id)?.len();
    if count >= usize::try_from(max_devices).unwrap_or(usize::MAX) {
        return Err(StoreError::DeviceLimit {
            account: device.account_id.clone(),
            limit: max_devices,
        });
    }
    t.devices
        .insert(
            device.id.as_str(),
            device_rec(device).encode_to_vec().as_slice(),
        )
        .or_backend()?;
    t.account_devices
        .insert((device.account_id.as_str(), device.id.as_str()), ())
        .or_backend()?;
    Ok(())
}

pub(super) fn w_revoke_device(
    t: &mut WriteTables<'_>,
    device_id: &str,
) -> Result<Device, StoreError> {
    let Some(mut device) = load_device(&t.devices, device_id)? else {
        return Err(StoreError::NoSuchDevice(device_id.to_owned()));
    };
    if !device.revoked {
        device.revoked = true;
        t.devices
            .insert(device_id, device_rec(&device).encode_to_vec().as_slice())
            .or_backend()?;
    }
    t.key_packages_purge(device_id)?;
    t.push_endpoints.remove(device_id).or_backend()?;
    w_bump_account(t, &device.account_id)?;
    Ok(device)
}

/// roster_version += 1 for one conversation.
pub(super) fn w_bump_roster(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
) -> Result<(), StoreError> {
    let mut state = load_mls(&t.mls_state, &t.mls_generation, conversation_id)?;
    state.roster_version = state.roster_version.saturating_add(1);
    store_mls(t, conversation_id, state)
}

/// roster_version += 1 for every conversation of an account.
pub(super) fn w_bump_account(t: &mut WriteTables<'_>, account_id: &str) -> Result<(), StoreError> {
    for conv in scan_keys(&t.account_convs, account_id)? {
        w_bump_roster(t, &conv)?;
    }
    Ok(())
}

pub(super) fn w_insert_members(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    members: &BTreeMap<&str, Role>,
) -> Result<(), StoreError> {
    for (&account, &role) in members {
        t.members
            .insert((conversation_id, account), role_code(role))
            .or_backend()?;
        t.account_convs
            .insert((account, conversation_id), ())
            .or_backend()?;
    }
    Ok(())
}

pub(super) fn check_accounts_exist<'a>(
    t: &WriteTables<'_>,
    accounts: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    for account in accounts {
        if !exists(&t.accounts, account)? {
            return Err(StoreError::NoSuchAccount(account.to_owned()));
        }
    }
    Ok(())
}

pub(super) fn w_create_conversation(
    t: &mut WriteTables<'_>,
    conversation: &Conversation,
    members: &[Member],
) -> Result<(), StoreError> {
    if exists(&t.conversations, &conversation.id)? {
        return Err(StoreError::ConversationExists(conversation.id.clone()));
    }
    let members = dedup_members(members);
    if conversation.kind == ConversationKind::Direct && members.len() != 2 {
        return Err(StoreError::DirectNeedsTwo(members.len()));
    }
    check_accounts_exist(t, members.keys().copied())?;
    let rec = ConversationRec {
        kind: kind_code(conversation.kind),
        title: conversation.title.clone(),
        default_ttl_seconds: conversation.default_ttl_seconds,
        created_at_ms: conversation.created_at_ms,
        archived: false,
    };
    t.conversations
        .insert(conversation.id.as_str(), rec.encode_to_vec().as_slice())
        .or_backend()?;
    w_insert_members(t, &conversation.id, &members)
}

pub(super) fn w_put_members(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    members: &[Member],
) -> Result<(), StoreError> {
    let Some(conversation) = load_conversation(&t.conversations, conversation_id)? else {
        return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
    };
    let members = dedup_members(members);
    check_accounts_exist(t, members.keys().copied())?;
    if conversation.kind == ConversationKind::Direct {
        let existing = scan_keys(&t.members, conversation_id)?;
        let added = members
            .keys()
            .filter(|a| !existing.iter().any(|e| e == **a))
            .count();
        let total = existing.len().saturating_add(added);
        if total > 2 {
            return Err(StoreError::DirectNeedsTwo(total));
        }
    }
    w_insert_members(t, conversation_id, &members)?;
    if !members.is_empty() {
        w_bump_roster(t, conversation_id)?;
    }
    Ok(())
}

pub(super) fn w_remove_members(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    account_ids: &[String],
) -> Result<u32, StoreError> {
    if !exists(&t.conversations, conversation_id)? {
        return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
    }
    let mut removed = 0u32;
    for account in account_ids {
        let was_member = t
            .members
            .remove((conversation_id, account.as_str()))
            .or_backend()?
            .is_some();
        if was_member {
            t.account_convs
                .remove((account.as_str(), conversation_id))
                .or_backend()?;
            removed = removed.saturating_add(1);
        }
    }
    if !account_ids.is_empty() {
        w_bump_roster(t, conversation_id)?;
    }
    Ok(removed)
}
