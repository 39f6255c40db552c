//! Writes to the operators' state: account tags and suspension,
//! enrollment codes.

use super::*;
use crate::CodeTimes;

pub(super) fn load_account_state(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<AccountState>, StoreError> {
    match table.get(id).or_backend()? {
        None => Ok(None),
        Some(g) => {
            let rec: AccountStateRec = decode("account_state", g.value())?;
            Ok(Some(AccountState {
                tags: rec.tags,
                suspended: rec.suspended,
                codes_valid_from_ms: rec.codes_valid_from_ms,
            }))
        }
    }
}

pub(super) fn w_set_account_state(
    t: &mut WriteTables<'_>,
    account_id: &str,
    state: &AccountState,
) -> Result<(), StoreError> {
    if !exists(&t.accounts, account_id)? {
        return Err(StoreError::NoSuchAccount(account_id.to_owned()));
    }
    let old = load_account_state(&t.account_state, account_id)?.unwrap_or_default();
    for tag in old.tags.iter().filter(|t| !state.tags.contains(t)) {
        t.accounts_by_tag
            .remove((tag.as_str(), account_id))
            .or_backend()?;
    }
    for tag in &state.tags {
        t.accounts_by_tag
            .insert((tag.as_str(), account_id), ())
            .or_backend()?;
    }
    let rec = AccountStateRec {
        tags: state.tags.clone(),
        suspended: state.suspended,
        codes_valid_from_ms: state.codes_valid_from_ms,
    };
    t.account_state
        .insert(account_id, rec.encode_to_vec().as_slice())
        .or_backend()?;
    Ok(())
}

pub(super) fn w_purge_codes(t: &mut WriteTables<'_>, now_ms: UnixMillis) -> Result<(), StoreError> {
    let mut expired = Vec::new();
    for item in t.enroll_codes.iter().or_backend()? {
        let (k, v) = item.or_backend()?;
        let rec: CodeRec = decode("enroll_codes", v.value())?;
        if rec.expires_at_ms <= now_ms {
            expired.push(k.value().to_vec());
        }
    }
    for k in expired {
        t.enroll_codes.remove(k.as_slice()).or_backend()?;
    }
    Ok(())
}

pub(super) fn w_redeem_code(
    t: &mut WriteTables<'_>,
    code_hash: &[u8],
    device: &Device,
    now_ms: UnixMillis,
    max_devices: u32,
) -> Result<Device, StoreError> {
    let rec: CodeRec = match t.enroll_codes.get(code_hash).or_backend()? {
        None => return Err(StoreError::NoSuchCode),
        Some(g) => decode("enroll_codes", g.value())?,
    };
    let account = load_account(&t.accounts, &rec.account_id)?;
    let state = load_account_state(&t.account_state, &rec.account_id)?;
    let times = CodeTimes {
        account_created_at_ms: rec.account_created_at_ms,
        created_at_ms: rec.created_at_ms,
        expires_at_ms: rec.expires_at_ms,
    };
    if !EnrollmentCode::redeemable(&times, account.as_ref(), state.as_ref(), now_ms) {
        return Err(StoreError::NoSuchCode);
    }
    let device = Device {
        account_id: rec.account_id,
        ..device.clone()
    };
    w_add_device(t, &device, max_devices)?;
    t.enroll_codes.remove(code_hash).or_backend()?;
    Ok(device)
}
