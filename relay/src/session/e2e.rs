//! The relay as MLS Delivery Service (RFC 9750): it keeps key packages,
//! orders each group's handshakes (one commit per epoch, decided by the
//! store, so it holds across relays), hands out Welcomes and tells clients
//! who should be in a group. It reads only MLS framing: group id, epoch,
//! content type and authenticated data, which RFC 9420 keeps in the clear.
//! Never content. See docs/e2e.md.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use herold_proto::ids;
use herold_proto::v1::{self, ErrorCode, request, response, server_frame};
use herold_store::{MlsCheck, StoreError, Welcome};
use tokio::sync::mpsc;
use tracing::warn;

use super::{DeviceCtx, server_frame as frame};
use crate::node::Shared;
use crate::roster::PostRefusal;

/// Largest key package accepted (a typical one is about 300 bytes).
pub(crate) const MAX_KEY_PACKAGE_BYTES: usize = 16 * 1024;
/// Devices one ClaimKeyPackages may name (a 7,000-member channel fits).
pub(crate) const MAX_CLAIM_DEVICES: usize = 10_000;
/// Expired packages skipped per device and claim before giving up.
const MAX_STALE_PACKAGES: usize = 8;
/// Concurrent store claims per request.
const CLAIM_CONCURRENCY: usize = 32;

/// A request's failure: an error code and an explanation for the client.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub mls_epoch: u64,
    pub retry_after_ms: u32,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            mls_epoch: 0,
            retry_after_ms: 0,
        }
    }

    pub(crate) fn to_error(&self, message_id: Vec<u8>) -> v1::Error {
        v1::Error {
            code: self.code as i32,
            message: self.message.clone(),
            message_id,
            fatal: false,
            mls_epoch: self.mls_epoch,
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// The refusal for a store error of a submit or an MLS request.
pub(crate) fn store_refusal(e: &StoreError) -> Refusal {
    match e {
        StoreError::WrongEpoch { current } => Refusal {
            mls_epoch: *current,
            ..Refusal::new(
                ErrorCode::MlsWrongEpoch,
                format!(
                    "the group is at epoch {current}: process the conversation up to it, then send again"
                ),
            )
        },
        StoreError::WrongGeneration { current } => Refusal::new(
            ErrorCode::MlsWrongEpoch,
            format!(
                "the group was restarted (generation {current}): get the group's state, join or create the new group, then send again"
            ),
        ),
        StoreError::MembershipPending { roster_version } => Refusal::new(
            ErrorCode::MlsMembershipPending,
            format!(
                "the conversation's members changed (roster version {roster_version}): commit the change to the group first"
            ),
        ),
        StoreError::InvalidRosterVersion { current } => Refusal::new(
            ErrorCode::MlsInvalid,
            format!("the commit names a roster version above the current one ({current})"),
        ),
        StoreError::MlsRequired => Refusal::new(
            ErrorCode::MlsRequired,
            "this conversation has an MLS group: only MLS messages are accepted",
        ),
        StoreError::KeyPackageLimit { limit } => Refusal::new(
            ErrorCode::KeyPackageLimit,
            format!("the relay keeps at most {limit} one-time key packages per device"),
        ),
        StoreError::NoSuchConversation(_) => {
            Refusal::new(ErrorCode::UnknownConversation, "no such conversation")
        }
        StoreError::NoSuchDevice(_) => Refusal::new(
            ErrorCode::DeviceRevoked,
            "this device is no longer enrolled",
        ),
        other => {
            warn!(error = %other, "store unavailable; the device retries with the same id");
            Refusal::new(
                ErrorCode::Unavailable,
                "storage is unavailable; retry with the same message id",
            )
        }
    }
}

/// What a Submit flagged `mls` asks of the store, after checking its framing.
/// `expires_at_ms` is the Submit's own field, which must match the expiry in
/// the message's authenticated data.
pub(crate) fn check_submit(
    shared: &Shared,
    s: &mut v1::Submit,
) -> Result<(MlsCheck, bool /* commit */), Refusal> {
    let invalid = |m: String| Refusal::new(ErrorCode::MlsInvalid, m);
    let header = herold_mls::inspect(&s.ciphertext)
        .map_err(|e| invalid(format!("not an MLS message: {e}")))?;
    let Some(generation) = herold_mls::group_generation(&s.conversation_id, &header.group_id)
    else {
        return Err(invalid(
            "the MLS message belongs to another group than this conversation".into(),
        ));
    };
    match header.kind {
        herold_mls::ContentKind::Proposal => Err(invalid(
            "proposals are not relayed: put them in a commit".into(),
        )),
        herold_mls::ContentKind::Application => {
            if header.epoch == 0 {
                return Err(invalid(
                    "no application message before the group's first commit (epoch 0)".into(),
                ));
            }
            if !s.mls_welcome.is_empty() || !s.mls_welcome_devices.is_empty() {
                return Err(invalid("only a commit carries a Welcome".into()));
            }
            let expiry = herold_mls::decode_aad(&header.aad)
                .map_err(|e| invalid(format!("the authenticated data is not Herold's: {e}")))?;
            if expiry != s.expires_at_ms {
                return Err(invalid(format!(
                    "the expiry in the authenticated data ({expiry}) differs from the envelope's ({})",
                    s.expires_at_ms
                )));
            }
            Ok((
                MlsCheck::Application {
                    generation,
                    epoch: header.epoch,
                },
                false,
            ))
        }
        herold_mls::ContentKind::Commit => {
            let max = shared.limits.max_handshake_bytes as usize;
            let total = s.ciphertext.len().saturating_add(s.mls_welcome.len());
            if total > max {
                return Err(invalid(format!(
                    "the commit and its Welcome have {total} bytes; the limit is {max}"
                )));
            }
            let welcome = if s.mls_welcome.is_empty() {
                if !s.mls_welcome_devices.is_empty() {
                    return Err(invalid("Welcome devices without a Welcome".into()));
                }
                None
            } else {
                if s.mls_welcome_devices.is_empty() {
                    return Err(invalid("a Welcome names no device".into()));
                }
                if s.mls_welcome_devices.len() > MAX_CLAIM_DEVICES {
                    return Err(invalid(format!(
                        "a Welcome names at most {MAX_CLAIM_DEVICES} devices"
                    )));
                }
                for d in &s.mls_welcome_devices {
                    ids::validate_id("device", d).map_err(|e| invalid(e.to_string()))?;
                }
                herold_mls::check_welcome(&s.mls_welcome)
                    .map_err(|e| invalid(format!("the Welcome is not valid: {e}")))?;
                Some(Welcome {
                    bytes: std::mem::take(&mut s.mls_welcome),
                    device_ids: std::mem::take(&mut s.mls_welcome_devices),
                })
            };
            Ok((
                MlsCheck::Commit {
                    generation,
                    epoch: header.epoch,
                    roster_version: s.mls_roster_version,
                    welcome,
                },
                true,
            ))
        }
    }
}

/// A Welcome may only name devices of the conversation's roster: a member
/// cannot point other devices at a Welcome that is not theirs.
pub(crate) async fn check_welcome_devices(
    shared: &Shared,
    conversation_id: &str,
    welcome: &Welcome,
) -> Result<(), Refusal> {
    let roster: std::collections::HashSet<String> = shared
        .store
        .mls_roster(conversation_id)
        .await
        .map_err(|e| store_refusal(&e))?
        .into_iter()
        .collect();
    match welcome.device_ids.iter().find(|d| !roster.contains(*d)) {
        Some(d) => Err(Refusal::new(
            ErrorCode::MlsInvalid,
            format!("the Welcome names device {d:?}, which is not in this conversation's roster"),
        )),
        None => Ok(()),
    }
}

/// Answers one Request on the device's connection.
pub(crate) async fn handle_request(
    shared: Arc<Shared>,
    ctx: Arc<DeviceCtx>,
    req: v1::Request,
    reply: mpsc::UnboundedSender<Bytes>,
) {
    let label = match &req.kind {
        Some(request::Kind::UploadKeyPackages(_)) => "upload_key_packages",
        Some(request::Kind::ClaimKeyPackages(_)) => "claim_key_packages",
        Some(request::Kind::GetMlsState(_)) => "get_mls_state",
        Some(request::Kind::FetchWelcome(_)) => "fetch_welcome",
        Some(request::Kind::MarkReconciled(_)) => "mark_reconciled",
        Some(request::Kind::ResetMlsGroup(_)) => "reset_mls_group",
        Some(request::Kind::RegisterPush(_)) => "register_push",
        Some(request::Kind::IssueLinkCode(_)) => "issue_link_code",
        None => "unknown",
    };
    let kind = match answer(&shared, &ctx, req.kind).await {
        Ok(k) => {
            metrics::counter!(crate::metrics::MLS_REQUESTS, "kind" => label, "outcome" => "ok")
                .increment(1);
            k
        }
        Err(r) => {
            let outcome = crate::metrics::code_label(r.code);
            metrics::counter!(crate::metrics::MLS_REQUESTS, "kind" => label, "outcome" => outcome)
                .increment(1);
            response::Kind::Error(r.to_error(Vec::new()))
        }
    };
    let _ = reply.send(frame(server_frame::Kind::Response(v1::Response {
        request_id: req.request_id,
        kind: Some(kind),
    })));
}

async fn answer(
    shared: &Shared,
    ctx: &DeviceCtx,
    kind: Option<request::Kind>,
) -> Result<response::Kind, Refusal> {
    match kind {
        Some(request::Kind::UploadKeyPackages(u)) => upload(shared, ctx, u).await,
        Some(request::Kind::ClaimKeyPackages(c)) => claim(shared, ctx, c).await,
        Some(request::Kind::GetMlsState(g)) => {
            member(shared, ctx, &g.conversation_id).await?;
            state(shared, &g.conversation_id).await
        }
        Some(request::Kind::FetchWelcome(f)) => {
            member(shared, ctx, &f.conversation_id).await?;
            let found = shared
                .store
                .welcome_for(&ctx.device_id, &f.conversation_id)
                .await
                .map_err(|e| store_refusal(&e))?;
            let (seq, welcome) = found.unwrap_or_default();
            Ok(response::Kind::Welcome(v1::WelcomeFound {
                conversation_id: f.conversation_id,
                seq,
                welcome,
            }))
        }
        Some(request::Kind::MarkReconciled(m)) => {
            // Only someone who could commit may declare that nothing needs
            // committing, and only for a group that exists.
            poster(shared, ctx, &m.conversation_id).await?;
            if m.epoch == 0 {
                return Err(Refusal::new(
                    ErrorCode::MlsInvalid,
                    "the group has no first commit yet: commit instead",
                ));
            }
            shared
                .store
                .mark_reconciled(&m.conversation_id, m.generation, m.epoch, m.roster_version)
                .await
                .map_err(|e| store_refusal(&e))?;
            state(shared, &m.conversation_id).await
        }
        Some(request::Kind::ResetMlsGroup(r)) => restart(shared, ctx, r).await,
        Some(request::Kind::RegisterPush(p)) => register_push(shared, ctx, p).await,
        Some(request::Kind::IssueLinkCode(_)) => super::link::issue(shared, ctx).await,
        None => Err(Refusal::new(
            ErrorCode::UnknownFrame,
            "unknown request; this relay speaks protocol version 1",
        )),
    }
}

/// Sets or clears where the device is woken while away (docs/push.md).
async fn register_push(
    shared: &Shared,
    ctx: &DeviceCtx,
    p: v1::RegisterPush,
) -> Result<response::Kind, Refusal> {
    let endpoint = p.endpoint.trim();
    if !endpoint.is_empty() {
        crate::push::check_endpoint(endpoint, shared.push.gateways())
            .map_err(|why| Refusal::new(ErrorCode::PushEndpointRefused, &why))?;
    }
    if let Err(wait) = shared
        .push_registrations
        .take(&ctx.device_id, tokio::time::Instant::now().into_std())
    {
        return Err(Refusal::new(
            ErrorCode::PushEndpointRefused,
            format!(
                "the push endpoint changes too often; retry in {} ms",
                crate::frames::retry_ms(wait)
            ),
        ));
    }
    let endpoint = (!endpoint.is_empty()).then(|| endpoint.to_owned());
    shared
        .store
        .set_push_endpoint(&ctx.device_id, endpoint.clone())
        .await
        .map_err(|e| store_refusal(&e))?;
    shared.push.forget(&ctx.device_id);
    Ok(response::Kind::PushRegistered(v1::PushRegistered {
        endpoint: endpoint.unwrap_or_default(),
    }))
}

/// The device's account must be a member of the conversation; its roster.
async fn member(
    shared: &Shared,
    ctx: &DeviceCtx,
    conversation_id: &str,
) -> Result<Arc<crate::roster::Roster>, Refusal> {
    ids::validate_id("conversation", conversation_id)
        .map_err(|e| Refusal::new(ErrorCode::InvalidEnvelope, e.to_string()))?;
    match shared.rosters.get(conversation_id).await {
        Ok(Some(r)) if r.members.contains_key(&ctx.account_id) => Ok(r),
        Ok(Some(_)) => {
            let why = PostRefusal::NotMember;
            Err(Refusal::new(why.code(), why.message()))
        }
        Ok(None) => Err(Refusal::new(
            ErrorCode::UnknownConversation,
            "no such conversation",
        )),
        Err(e) => {
            warn!(error = %e, "roster load failed");
            Err(Refusal::new(
                ErrorCode::Unavailable,
                "storage is unavailable; retry",
            ))
        }
    }
}

/// The device's account must be allowed to post (and so to commit) in the
/// conversation: a member of a group, a publisher of a channel, and the
/// conversation not archived.
async fn poster(shared: &Shared, ctx: &DeviceCtx, conversation_id: &str) -> Result<(), Refusal> {
    let r = member(shared, ctx, conversation_id).await?;
    r.check_post(&ctx.account_id)
        .map_err(|why| Refusal::new(why.code(), why.message()))
}

async fn state(shared: &Shared, conversation_id: &str) -> Result<response::Kind, Refusal> {
    let s = shared
        .store
        .mls_state(conversation_id)
        .await
        .map_err(|e| store_refusal(&e))?;
    let roster = shared
        .store
        .mls_roster(conversation_id)
        .await
        .map_err(|e| store_refusal(&e))?;
    // Only a direct conversation names the accounts (sealed sender needs
    // them; a channel's roster would only grow).
    // An answer without them would make a large channel look small to the
    // SDK: none rather than a wrong one.
    let cached = shared.rosters.get(conversation_id).await.map_err(|e| {
        warn!(error = %e, "roster load failed");
        Refusal::new(ErrorCode::Unavailable, "storage is unavailable; retry")
    })?;
    let roster_accounts = match &cached {
        Some(r) if !r.device_accounts.is_empty() => roster
            .iter()
            .map(|d| r.device_accounts.get(d).cloned().unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    };
    let sub_conversations = match &cached {
        Some(r) => (0..r.sub_groups)
            .map(|i| herold_proto::ids::sub_group_id(conversation_id, i))
            .collect(),
        None => Vec::new(),
    };
    Ok(response::Kind::MlsState(v1::MlsState {
        conversation_id: conversation_id.to_owned(),
        epoch: s.epoch,
        roster_version: s.roster_version,
        group_roster_version: s.group_roster_version,
        roster,
        generation: s.generation,
        roster_accounts,
        sub_conversations,
    }))
}

/// `ResetMlsGroup`: a member that cannot process the commit (or Welcome)
/// that took the group to its current epoch asks for a new group. Any
/// member may ask (a member that only reads is stuck as much as one that
/// posts); a request for a generation or epoch that is not the current one
/// changes nothing, so many members seeing the same broken commit restart
/// the group once. Restarts are rate-limited per conversation.
async fn restart(
    shared: &Shared,
    ctx: &DeviceCtx,
    r: v1::ResetMlsGroup,
) -> Result<response::Kind, Refusal> {
    member(shared, ctx, &r.conversation_id).await?;
    if r.epoch == 0 {
        return Err(Refusal::new(
            ErrorCode::MlsInvalid,
            "the group has no first commit yet: there is nothing to restart",
        ));
    }
    let current = shared
        .store
        .mls_state(&r.conversation_id)
        .await
        .map_err(|e| store_refusal(&e))?;
    // Decided on the current state first: the other members' requests for
    // the same broken commit cost a read, not a rate-limit token.
    if current.generation != r.generation {
        return Err(store_refusal(&StoreError::WrongGeneration {
            current: current.generation,
        }));
    }
    if current.epoch != r.epoch {
        return Err(store_refusal(&StoreError::WrongEpoch {
            current: current.epoch,
        }));
    }
    // A token is taken only by a restart that happens: the members racing
    // to report the same broken commit all pass this check, one restarts.
    if let Err(wait) = shared
        .mls_restarts
        .peek(&r.conversation_id, std::time::Instant::now())
    {
        metrics::counter!(crate::metrics::MLS_RESTARTS, "outcome" => "rate_limited").increment(1);
        return Err(Refusal {
            retry_after_ms: crate::frames::retry_ms(wait),
            ..Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "this conversation's group was restarted too often ({} an hour through this relay); ask again later",
                    shared.limits.mls_restarts_per_hour
                ),
            )
        });
    }
    let next = shared
        .store
        .reset_mls_group(&r.conversation_id, r.generation, r.epoch)
        .await
        .map_err(|e| store_refusal(&e))?;
    let _ = shared
        .mls_restarts
        .take(&r.conversation_id, std::time::Instant::now());
    metrics::counter!(crate::metrics::MLS_RESTARTS, "outcome" => "restarted").increment(1);
    tracing::info!(
        generation = next.generation,
        broken_epoch = r.epoch,
        "an MLS group was restarted: a member could not process its last commit"
    );
    state(shared, &r.conversation_id).await
}

async fn upload(
    shared: &Shared,
    ctx: &DeviceCtx,
    u: v1::UploadKeyPackages,
) -> Result<response::Kind, Refusal> {
    let invalid = |m: String| Refusal::new(ErrorCode::MlsInvalid, m);
    let max = shared.limits.max_key_packages;
    if u.key_packages.len() > max as usize {
        return Err(Refusal::new(
            ErrorCode::KeyPackageLimit,
            format!("the relay keeps at most {max} one-time key packages per device"),
        ));
    }
    let check = |bytes: &[u8], last_resort: bool, what: &str| -> Result<(), Refusal> {
        if bytes.len() > MAX_KEY_PACKAGE_BYTES {
            return Err(invalid(format!(
                "{what} has {} bytes; the limit is {MAX_KEY_PACKAGE_BYTES}",
                bytes.len()
            )));
        }
        let kp = herold_mls::validate_key_package(bytes)
            .map_err(|e| invalid(format!("{what} is not a valid key package: {e}")))?;
        if kp.identity != ctx.device_id.as_bytes() {
            return Err(invalid(format!(
                "{what} names another device than this one"
            )));
        }
        if kp.last_resort != last_resort {
            return Err(invalid(if last_resort {
                format!("{what} is not marked as last resort")
            } else {
                format!("{what} is a last-resort package; send it as last_resort")
            }));
        }
        Ok(())
    };
    for (i, kp) in u.key_packages.iter().enumerate() {
        check(kp, false, &format!("key package {i}"))?;
    }
    let last_resort = if u.last_resort.is_empty() {
        None
    } else {
        check(&u.last_resort, true, "the last-resort package")?;
        Some(u.last_resort)
    };
    let up = shared
        .store
        .upload_key_packages(&ctx.device_id, u.key_packages, last_resort, max)
        .await
        .map_err(|e| store_refusal(&e))?;
    Ok(response::Kind::KeyPackageStatus(v1::KeyPackageStatus {
        available: up.count.available,
        last_resort: up.count.last_resort,
        max_available: max,
    }))
}

async fn claim(
    shared: &Shared,
    ctx: &DeviceCtx,
    mut c: v1::ClaimKeyPackages,
) -> Result<response::Kind, Refusal> {
    // Claims exist to commit adds: only who may commit may claim, and only
    // while the group lacks a change of its roster (or does not exist
    // yet). Otherwise a member could claim again and again and use up the
    // one-time packages of every device in the conversation.
    poster(shared, ctx, &c.conversation_id).await?;
    let state = shared
        .store
        .mls_state(&c.conversation_id)
        .await
        .map_err(|e| store_refusal(&e))?;
    if state.epoch > 0 && state.group_roster_version >= state.roster_version {
        return Err(Refusal {
            mls_epoch: state.epoch,
            ..Refusal::new(
                ErrorCode::MlsWrongEpoch,
                format!(
                    "the group at epoch {} already reflects its roster: there is nobody to add",
                    state.epoch
                ),
            )
        });
    }
    // One package per device per claim, however often it is named.
    let mut seen = std::collections::HashSet::new();
    c.device_ids.retain(|d| seen.insert(d.clone()));
    if c.device_ids.len() > MAX_CLAIM_DEVICES {
        return Err(Refusal::new(
            ErrorCode::MlsInvalid,
            format!("a claim names at most {MAX_CLAIM_DEVICES} devices"),
        ));
    }
    let roster: std::collections::HashSet<String> = shared
        .store
        .mls_roster(&c.conversation_id)
        .await
        .map_err(|e| store_refusal(&e))?
        .into_iter()
        .collect();
    if let Some(d) = c.device_ids.iter().find(|d| !roster.contains(*d)) {
        return Err(Refusal::new(
            ErrorCode::MlsInvalid,
            format!("device {d:?} is not in this conversation's roster"),
        ));
    }
    let store = &shared.store;
    let claimed: Vec<Result<v1::ClaimedKeyPackage, StoreError>> = stream::iter(c.device_ids)
        .map(|d| async move {
            let mut kp = None;
            // A package that no longer validates (its lifetime ended while
            // it waited) is used up and the next one taken; the last-resort
            // package comes back on every claim, so a bounded number of
            // tries ends.
            for _ in 0..MAX_STALE_PACKAGES {
                let got = match store.claim_key_package(&d).await {
                    // Revoked since the roster was read: nothing to add.
                    Err(StoreError::NoSuchDevice(_)) => None,
                    r => r?,
                };
                match got {
                    Some(p) if herold_mls::validate_key_package(&p).is_err() => continue,
                    other => {
                        kp = other;
                        break;
                    }
                }
            }
            Ok(v1::ClaimedKeyPackage {
                device_id: d,
                key_package: kp.unwrap_or_default(),
            })
        })
        .buffered(CLAIM_CONCURRENCY)
        .collect()
        .await;
    let packages = claimed
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| store_refusal(&e))?;
    Ok(response::Kind::ClaimedKeyPackages(v1::ClaimedKeyPackages {
        packages,
    }))
}
