//! Effective policy: what the relay enforces in one conversation, from the
//! conversation's policy over the organisation's over the relay's configured
//! limits. Sans-IO: the caller loads the policies and passes them in.

use std::time::Duration;

use herold_store::{DirectChats, Policy};

use crate::config::Limits;

/// Hard ceiling of the device limit, whatever a policy says.
pub(crate) const MAX_DEVICES_CEILING: u32 = 100;

/// Every policy value, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effective {
    /// Expiry of messages sent without one, seconds; 0 keeps them.
    pub default_expiry_seconds: u64,
    /// Longest expiry a message may ask for, seconds.
    pub max_expiry_seconds: u64,
    /// Devices per account.
    pub max_devices: u32,
    /// Largest attachment ciphertext, bytes; a message's ciphertext is
    /// bounded by it too (besides the relay's `max_ciphertext_bytes`).
    pub max_attachment_bytes: u64,
    /// Who may start direct conversations.
    pub direct_chats: DirectChats,
    /// The relay stores no sender for messages of direct conversations.
    pub sealed_sender: bool,
}

impl Effective {
    /// Resolves the policy of a conversation (`conv`, with the
    /// conversation's own retention `conv_default_ttl`), under the
    /// organisation's (`org`) and the relay's `limits`. The relay's limits
    /// are ceilings no policy can lift.
    pub fn resolve(
        limits: &Limits,
        org: Option<&Policy>,
        conv: Option<&Policy>,
        conv_default_ttl: u64,
    ) -> Self {
        let relay_max_expiry = limits.max_expiry.as_secs();
        let pick = |f: fn(&Policy) -> Option<u64>| conv.and_then(f).or_else(|| org.and_then(f));
        let max_expiry_seconds = pick(|p| p.max_expiry_seconds)
            .unwrap_or(relay_max_expiry)
            .min(relay_max_expiry);
        let default_expiry_seconds = conv
            .and_then(|p| p.default_expiry_seconds)
            .or((conv_default_ttl > 0).then_some(conv_default_ttl))
            .or_else(|| org.and_then(|p| p.default_expiry_seconds))
            .unwrap_or(0)
            .min(max_expiry_seconds);
        let relay_max_att = limits.max_attachment_bytes;
        Self {
            default_expiry_seconds,
            max_expiry_seconds,
            max_devices: org
                .and_then(|p| p.max_devices)
                .unwrap_or(limits.max_devices_per_account)
                .min(MAX_DEVICES_CEILING),
            max_attachment_bytes: pick(|p| p.max_attachment_bytes)
                .unwrap_or(relay_max_att)
                .min(relay_max_att),
            direct_chats: org
                .and_then(|p| p.direct_chats)
                .unwrap_or(DirectChats::Everyone),
            sealed_sender: org.and_then(|p| p.sealed_sender).unwrap_or(false),
        }
    }

    /// The organisation-wide values (no conversation).
    pub fn org(limits: &Limits, org: Option<&Policy>) -> Self {
        Self::resolve(limits, org, None, 0)
    }

    /// The longest expiry, as a duration.
    pub fn max_expiry(&self) -> Duration {
        Duration::from_secs(self.max_expiry_seconds)
    }

    /// When something sent at `now_ms` asking for `requested_ms` (0: the
    /// default retention) expires: `None` keeps it. Refused (the reason
    /// for `INVALID_EXPIRY`) in the past or beyond the maximum.
    pub fn expiry(&self, requested_ms: i64, now_ms: i64) -> Result<Option<i64>, String> {
        let max_expiry = i64::try_from(self.max_expiry().as_millis()).unwrap_or(i64::MAX);
        if requested_ms == 0 {
            let ttl_ms = i64::try_from(self.default_expiry_seconds.saturating_mul(1000))
                .unwrap_or(i64::MAX)
                .min(max_expiry);
            Ok((ttl_ms > 0).then(|| now_ms.saturating_add(ttl_ms)))
        } else if requested_ms <= now_ms {
            Err("the expiry lies in the past".into())
        } else if requested_ms > now_ms.saturating_add(max_expiry) {
            Err(format!(
                "the expiry lies more than {} seconds ahead (the policy's maximum)",
                self.max_expiry_seconds
            ))
        } else {
            Ok(Some(requested_ms))
        }
    }

    /// As a fully filled [`Policy`].
    pub fn as_policy(&self) -> Policy {
        Policy {
            default_expiry_seconds: Some(self.default_expiry_seconds),
            max_expiry_seconds: Some(self.max_expiry_seconds),
            max_devices: Some(self.max_devices),
            max_attachment_bytes: Some(self.max_attachment_bytes),
            direct_chats: Some(self.direct_chats),
            sealed_sender: Some(self.sealed_sender),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_over_org_over_relay_and_ceilings_hold() {
        let limits = Limits::default();
        let none = Effective::org(&limits, None);
        assert_eq!(none.max_devices, 10);
        assert_eq!(none.default_expiry_seconds, 0);
        assert_eq!(none.direct_chats, DirectChats::Everyone);
        assert!(!none.sealed_sender);
        let org = Policy {
            default_expiry_seconds: Some(3600),
            max_expiry_seconds: Some(86_400),
            max_devices: Some(3),
            max_attachment_bytes: Some(10_000),
            direct_chats: Some(DirectChats::Nobody),
            sealed_sender: Some(true),
        };
        let conv = Policy {
            default_expiry_seconds: Some(60),
            max_attachment_bytes: Some(u64::MAX),
            ..Policy::default()
        };
        let e = Effective::resolve(&limits, Some(&org), Some(&conv), 0);
        assert_eq!(e.default_expiry_seconds, 60);
        assert_eq!(e.max_expiry_seconds, 86_400);
        assert_eq!(e.max_devices, 3);
        // The relay's limit is a ceiling.
        assert_eq!(e.max_attachment_bytes, limits.max_attachment_bytes);
        assert_eq!(none.max_attachment_bytes, 100 * 1024 * 1024);
        assert_eq!(e.direct_chats, DirectChats::Nobody);
        assert!(e.sealed_sender);
        // The conversation's own retention beats the org default, and the
        // default never exceeds the maximum.
        let e = Effective::resolve(&limits, Some(&org), None, 999_999);
        assert_eq!(e.default_expiry_seconds, 86_400);
    }
}
