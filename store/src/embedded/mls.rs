//! Writes of MLS state: key packages, epochs and group rosters.

use super::*;

impl WriteTables<'_> {
    /// Deletes a device's one-time and last-resort key packages.
    pub(super) fn key_packages_purge(&mut self, device_id: &str) -> Result<(), StoreError> {
        for (index, _) in scan_key_packages(&self.key_packages, device_id)? {
            self.key_packages.remove((device_id, index)).or_backend()?;
        }
        self.last_resort.remove(device_id).or_backend()?;
        Ok(())
    }
}

/// Deletes what MLS keeps about a device that goes away: its key packages
/// and its Welcome index; and its push endpoint.
pub(super) fn w_purge_device_mls(
    t: &mut WriteTables<'_>,
    device_id: &str,
) -> Result<(), StoreError> {
    t.key_packages_purge(device_id)?;
    t.push_endpoints.remove(device_id).or_backend()?;
    for conv in scan_keys(&t.device_welcomes, device_id)? {
        t.device_welcomes
            .remove((device_id, conv.as_str()))
            .or_backend()?;
    }
    Ok(())
}

pub(super) fn store_mls(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    state: MlsState,
) -> Result<(), StoreError> {
    t.mls_state
        .insert(
            conversation_id,
            (
                state.epoch,
                state.roster_version,
                state.group_roster_version,
            ),
        )
        .or_backend()?;
    if state.generation > 0 {
        t.mls_generation
            .insert(conversation_id, state.generation)
            .or_backend()?;
    }
    Ok(())
}

pub(super) fn w_upload_key_packages(
    t: &mut WriteTables<'_>,
    device_id: &str,
    one_time: &[Vec<u8>],
    last_resort: Option<&[u8]>,
    max_available: u32,
) -> Result<KeyPackageUpload, StoreError> {
    let device = match load_device(&t.devices, device_id)? {
        Some(d) if !d.revoked => d,
        _ => return Err(StoreError::NoSuchDevice(device_id.to_owned())),
    };
    let before = count_key_packages(&t.key_packages, &t.last_resort, device_id)?;
    let available = u64::from(before.available).saturating_add(one_time.len() as u64);
    if available > u64::from(max_available) {
        return Err(StoreError::KeyPackageLimit {
            limit: max_available,
        });
    }
    let mut next = match t
        .key_packages
        .range((device_id, 0)..=(device_id, u64::MAX))
        .or_backend()?
        .next_back()
    {
        Some(item) => item.or_backend()?.0.value().1.saturating_add(1),
        None => 0,
    };
    for package in one_time {
        t.key_packages
            .insert((device_id, next), package.as_slice())
            .or_backend()?;
        next = next.saturating_add(1);
    }
    if let Some(package) = last_resort {
        t.last_resort.insert(device_id, package).or_backend()?;
    }
    let became_ready = !before.last_resort && last_resort.is_some();
    if became_ready {
        w_bump_account(t, &device.account_id)?;
    }
    Ok(KeyPackageUpload {
        count: KeyPackageCount {
            available: u32::try_from(available).unwrap_or(u32::MAX),
            last_resort: before.last_resort || last_resort.is_some(),
        },
        became_ready,
    })
}

pub(super) fn w_claim_key_package(
    t: &mut WriteTables<'_>,
    device_id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    match load_device(&t.devices, device_id)? {
        Some(d) if !d.revoked => {}
        _ => return Ok(None),
    }
    let first = match t
        .key_packages
        .range((device_id, 0)..=(device_id, u64::MAX))
        .or_backend()?
        .next()
    {
        Some(item) => {
            let (key, value) = item.or_backend()?;
            Some((key.value().1, value.value().to_vec()))
        }
        None => None,
    };
    if let Some((index, package)) = first {
        t.key_packages.remove((device_id, index)).or_backend()?;
        return Ok(Some(package));
    }
    Ok(t.last_resort
        .get(device_id)
        .or_backend()?
        .map(|g| g.value().to_vec()))
}

pub(super) fn w_mark_reconciled(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    generation: u64,
    epoch: u64,
    roster_version: u64,
) -> Result<MlsState, StoreError> {
    if !exists(&t.conversations, conversation_id)? {
        return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
    }
    let state = load_mls(&t.mls_state, &t.mls_generation, conversation_id)?;
    let next = reconcile(state, generation, epoch, roster_version)?;
    if next != state {
        store_mls(t, conversation_id, next)?;
    }
    Ok(next)
}

pub(super) fn w_reset_mls_group(
    t: &mut WriteTables<'_>,
    conversation_id: &str,
    generation: u64,
    epoch: u64,
) -> Result<MlsState, StoreError> {
    if !exists(&t.conversations, conversation_id)? {
        return Err(StoreError::NoSuchConversation(conversation_id.to_owned()));
    }
    let state = load_mls(&t.mls_state, &t.mls_generation, conversation_id)?;
    let next = restart(state, generation, epoch)?;
    store_mls(t, conversation_id, next)?;
    Ok(next)
}
