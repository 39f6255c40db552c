//! Link codes: a device asks for a one-time enrollment code for its own
//! account and shows it (as a QR code) to the browser or phone to be
//! added, which redeems it as any enrollment code: the account's device
//! limit applies, the code is void once used and after
//! `LINK_CODE_TTL_MS`. Issuing is rate limited per account and written to
//! the audit log (the code itself never is).

use herold_proto::v1::{self, ErrorCode, response};
use herold_store::AuditEntry;

use super::DeviceCtx;
use super::e2e::{Refusal, store_refusal};
use crate::codes::{LINK_CODE_TTL_MS, LINK_CODES_PER_HOUR};
use crate::node::{Shared, now_ms};

/// Issues a link code for the device's account.
pub(super) async fn issue(shared: &Shared, ctx: &DeviceCtx) -> Result<response::Kind, Refusal> {
    if let Err(wait) = shared
        .link_codes
        .take(&ctx.account_id, tokio::time::Instant::now().into_std())
    {
        return Err(Refusal {
            retry_after_ms: crate::frames::retry_ms(wait),
            ..Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {LINK_CODES_PER_HOUR} link codes per account and hour; \
                     retry in {} s",
                    wait.as_secs().max(1)
                ),
            )
        });
    }
    let account = shared
        .store
        .get_account(&ctx.account_id)
        .await
        .map_err(|e| store_refusal(&e))?
        .ok_or_else(|| Refusal::new(ErrorCode::DeviceRevoked, "the account is gone"))?;
    let (code, hash) =
        crate::codes::new_code().map_err(|e| Refusal::new(ErrorCode::Internal, e))?;
    let now = now_ms();
    let expires_at_ms = now.saturating_add(LINK_CODE_TTL_MS);
    shared
        .store
        .create_enrollment_code(crate::codes::stored(hash, &account, now, expires_at_ms))
        .await
        .map_err(|e| store_refusal(&e))?;
    audit(shared, ctx, expires_at_ms).await;
    Ok(response::Kind::LinkCode(v1::LinkCode {
        code,
        expires_at_ms,
    }))
}

/// Writes who issued a link code, for which account, valid until when.
async fn audit(shared: &Shared, ctx: &DeviceCtx, expires_at_ms: i64) {
    let mut id = [0u8; 8];
    let _ = getrandom::fill(&mut id);
    let entry = AuditEntry {
        at_ms: now_ms(),
        id: hex::encode(id),
        operator: format!("device:{}", ctx.device_id),
        action: "IssueLinkCode".into(),
        target: ctx.account_id.clone(),
        outcome: "ok".into(),
        detail: format!("expires_at_ms={expires_at_ms}"),
        chain: shared.node_id.clone(),
        chain_seq: 0,
        hash: Vec::new(),
    };
    if let Err(e) = shared.store.append_audit(entry).await {
        metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES).increment(1);
        tracing::warn!(error = %e, "writing the audit log failed");
    }
}
