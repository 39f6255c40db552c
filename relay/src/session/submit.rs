//! Submit tasks: validate a device's Submit, append it to the store, answer
//! Accepted, then fan it out. Each runs as its own task and hands its answer
//! back to the session through [`Done`], which also counts it out of the
//! session's in-flight budget (even if the task panics).
//!
//! A resend the store reports as a duplicate is fanned out again: the first
//! acceptance may never have been (the relay crashed after the write, or a
//! CQL write timed out with unknown outcome and actually landed), and the
//! recipients on other relays should not have to wait for the next message
//! of the conversation. Sessions skip what they sent already, so a second
//! fan-out costs a push, never a duplicate on a device.

use std::sync::Arc;

use bytes::Bytes;
use herold_proto::ids;
use herold_proto::v1::{self, ErrorCode, server_frame};
use herold_store::{NewMessage, StoredMessage};
use tokio::sync::mpsc;
use tracing::{Instrument as _, warn};

use super::{DeviceCtx, count_rejected, error_frame, server_frame};
use crate::metrics as m;
use crate::node::{Shared, now_ms};

/// A task's answer slot: sends the frame to the session once; dropped
/// unused (a panic), it tells the session the task is over without one.
#[derive(Debug)]
pub(super) struct Done {
    tx: Option<mpsc::UnboundedSender<Option<Bytes>>>,
}

impl Done {
    pub(super) fn new(tx: mpsc::UnboundedSender<Option<Bytes>>) -> Self {
        Self { tx: Some(tx) }
    }

    /// Hands the answer to the session.
    pub(super) fn finish(mut self, frame: Option<Bytes>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(frame);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None);
        }
    }
}

/// A refused submit's error frame (counted under its code).
/// The wait a shed submit is told before it is resent (the SDK adds up to
/// as much again at random, so the resends do not come back together).
const SHED_RETRY_AFTER_MS: u32 = 250;

fn reject(code: ErrorCode, msg: &str, message_id: &[u8]) -> Bytes {
    count_rejected(code);
    error_frame(code, msg, message_id.to_vec(), false)
}

fn refuse(r: &super::e2e::Refusal, message_id: &[u8]) -> Bytes {
    count_rejected(r.code);
    server_frame(server_frame::Kind::Error(r.to_error(message_id.to_vec())))
}

/// What an accepted submit leaves to fan out.
struct Stored {
    message: StoredMessage,
    roster: Arc<crate::roster::Roster>,
    duplicate: bool,
}

/// Validates, stores and acknowledges one submit, then fans it out.
pub(super) async fn submit(shared: Arc<Shared>, ctx: Arc<DeviceCtx>, s: v1::Submit, done: Done) {
    let started = tokio::time::Instant::now();
    let stored = match store(&shared, &ctx, s).await {
        Ok(s) => s,
        Err(frame) => return done.finish(Some(frame)),
    };
    let msg = &stored.message;
    // Answered before the fan-out: the device's in-flight budget counts
    // submits awaiting an answer, not fan-outs.
    done.finish(Some(server_frame(server_frame::Kind::Accepted(
        v1::Accepted {
            message_id: msg.message_id.clone(),
            conversation_id: msg.conversation_id.clone(),
            seq: msg.seq,
            server_time_ms: msg.server_time_ms,
            duplicate: stored.duplicate,
        },
    ))));
    let hot = m::hot();
    if stored.duplicate {
        hot.submits_duplicate.increment(1);
    } else {
        hot.submits_accepted.increment(1);
    }
    hot.submit_accept_seconds.record(m::seconds_since(started));
    let message = if stored.duplicate {
        // The first acceptance may never have been fanned out: fan out the
        // stored message again (unless it expired meanwhile).
        match stored_again(&shared, &stored.message).await {
            Some(m) => m,
            None => return,
        }
    } else {
        stored.message
    };
    let roster = &stored.roster;
    // Tracked: a drain waits for the fan-outs of what it accepted.
    let fan_out = crate::delivery::fan_out(&shared, roster, &message)
        .instrument(tracing::info_span!("route", devices = roster.devices.len()));
    shared.fan_outs.track_future(fan_out).await;
}

/// The message a duplicate submit refers to, read back from the store.
async fn stored_again(shared: &Shared, m: &StoredMessage) -> Option<StoredMessage> {
    let page = shared
        .store
        .read(&m.conversation_id, m.seq.saturating_sub(1), 1, now_ms())
        .instrument(tracing::info_span!("store", op = "read"))
        .await;
    match page {
        Ok(page) => page.into_iter().next().filter(|s| s.seq == m.seq),
        Err(e) => {
            // Sessions that missed it fill the gap on the next message or sync.
            warn!(error = %e, "reading a resent message back failed");
            None
        }
    }
}

/// Validates and appends a submit; the error frame to answer if refused.
async fn store(shared: &Shared, ctx: &DeviceCtx, s: v1::Submit) -> Result<Stored, Bytes> {
    let id = s.message_id.clone();
    if s.message_id.len() != ids::MESSAGE_ID_BYTES {
        return Err(reject(
            ErrorCode::InvalidEnvelope,
            &format!(
                "message_id must be {} bytes, not {}",
                ids::MESSAGE_ID_BYTES,
                s.message_id.len()
            ),
            &id,
        ));
    }
    if let Err(e) = ids::validate_id("conversation", &s.conversation_id) {
        return Err(reject(ErrorCode::InvalidEnvelope, &e.to_string(), &id));
    }
    if s.ciphertext.is_empty() {
        return Err(reject(
            ErrorCode::InvalidEnvelope,
            "the ciphertext is empty",
            &id,
        ));
    }
    // An MLS message's framing is checked before anything is stored; the
    // store decides its epoch (see e2e.rs).
    let mut s = s;
    let (mls, commit) = if s.mls {
        match super::e2e::check_submit(shared, &mut s) {
            Ok((check, commit)) => (Some(check), commit),
            Err(r) => return Err(refuse(&r, &id)),
        }
    } else {
        (None, false)
    };
    let max_ct = shared.limits.max_ciphertext_bytes as usize;
    // A commit is bounded by max_handshake_bytes (checked above).
    if !commit && s.ciphertext.len() > max_ct {
        return Err(reject(
            ErrorCode::InvalidEnvelope,
            &format!(
                "the ciphertext has {} bytes; the limit is {max_ct}",
                s.ciphertext.len()
            ),
            &id,
        ));
    }
    let roster = match shared.rosters.get(&s.conversation_id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(reject(
                ErrorCode::UnknownConversation,
                "no such conversation",
                &id,
            ));
        }
        Err(e) => {
            warn!(error = %e, "roster load failed");
            return Err(reject(
                ErrorCode::Unavailable,
                "storage is unavailable; retry with the same message id",
                &id,
            ));
        }
    };
    if let Err(why) = roster.check_post(&ctx.account_id) {
        return Err(reject(why.code(), why.message(), &id));
    }
    if roster.sub_groups > 0 && s.mls {
        // Its posts are sender-key posts; an MLS group here would make the
        // relay require MLS for them.
        return Err(reject(
            ErrorCode::InvalidEnvelope,
            "a large channel takes sender-key posts, not MLS messages; \
             MLS belongs in its sub-groups",
            &id,
        ));
    }
    if roster.kind == herold_store::ConversationKind::Direct
        && roster.policy.direct_chats == herold_store::DirectChats::Nobody
    {
        return Err(reject(
            ErrorCode::PolicyDenied,
            "the organisation's policy allows no direct conversations",
            &id,
        ));
    }
    let policy_ct = roster.policy.max_attachment_bytes;
    if !commit && s.ciphertext.len() as u64 > policy_ct {
        return Err(reject(
            ErrorCode::InvalidEnvelope,
            &format!(
                "the ciphertext has {} bytes; this conversation's policy allows {policy_ct}",
                s.ciphertext.len()
            ),
            &id,
        ));
    }
    let now = now_ms();
    let expires_at_ms = if commit {
        // A commit is the group's history: a device that syncs late needs
        // every one of them, so commits live as long as the conversation.
        None
    } else {
        match roster.policy.expiry(s.expires_at_ms, now) {
            Ok(e) => e,
            Err(why) => return Err(reject(ErrorCode::InvalidExpiry, &why, &id)),
        }
    };
    if let Some(herold_store::MlsCheck::Commit {
        welcome: Some(w), ..
    }) = &mls
        && let Err(r) = super::e2e::check_welcome_devices(shared, &s.conversation_id, w).await
    {
        return Err(refuse(&r, &id));
    }
    // Last: a submit refused for anything else takes nothing from the
    // conversation's rate.
    if let Err(wait) = shared
        .conversation_rates
        .take(&s.conversation_id, tokio::time::Instant::now().into_std())
    {
        count_rejected(ErrorCode::RateLimited);
        return Err(crate::frames::rate_limited_frame(
            shared.limits.conversation_submit_rate,
            "into this conversation",
            id,
            wait,
        ));
    }
    // Sealed sender: a 1:1 message's row names nobody. The recipient learns
    // the sender from the MLS credential; limits and suspension still apply
    // to this authenticated connection.
    let sealed =
        roster.kind == herold_store::ConversationKind::Direct && roster.policy.sealed_sender;
    let (sender_account_id, sender_device_id) = if sealed {
        (String::new(), String::new())
    } else {
        (ctx.account_id.clone(), ctx.device_id.clone())
    };
    let msg = NewMessage {
        conversation_id: s.conversation_id,
        message_id: s.message_id,
        sender_account_id,
        sender_device_id,
        server_time_ms: now,
        expires_at_ms,
        ciphertext: s.ciphertext,
        mls,
    };
    // Storage slower than the submits coming in: refuse new ones with the
    // time to wait (the SDK resends by itself) instead of queueing them in
    // memory without end; deliveries and reads go on.
    let Ok(_slot) = shared.appends.try_acquire() else {
        count_rejected(ErrorCode::Unavailable);
        metrics::counter!(m::SUBMITS_SHED).increment(1);
        return Err(crate::frames::overloaded_frame(
            shared.limits.max_pending_appends,
            id.clone(),
            SHED_RETRY_AFTER_MS,
        ));
    };
    let appended = match shared
        .store
        .append(msg.clone())
        .instrument(tracing::info_span!("store", op = "append"))
        .await
    {
        Ok(a) => a,
        Err(e) => return Err(refuse(&super::e2e::store_refusal(&e), &id)),
    };
    Ok(Stored {
        message: msg.stored(&appended),
        roster,
        duplicate: appended.duplicate,
    })
}
