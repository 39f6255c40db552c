//! Self-updates: a device renews its own leaf key in the groups it sends to
//! (docs/e2e.md, "Self-updates"); the same commit carries a new display
//! name, and a title change is one like it (names.rs).

use std::time::Duration;

use herold_proto::v1::{self, ErrorCode};
use tracing::{debug, warn};

use super::{E2eClient, E2eError, PreparedCommit, SEND_ATTEMPTS, lock, newest_group, now_ms};
use crate::new_message_id;

/// A commit that changes no membership.
#[derive(Clone, Copy)]
pub(super) enum OwnChange<'a> {
    /// A self-update (with the device's current display name).
    Renew,
    /// A new title for the group (`None`: remove it).
    Title(Option<&'a str>),
}

/// How such a commit went.
pub(super) enum Renewal {
    Done,
    /// Another member's commit won the epoch: process it, then again.
    Lost,
    /// The relay refused it; the group goes on with the old key.
    Refused,
}

impl E2eClient {
    /// How often this device renews its leaf key in a group it sends to
    /// (default [`KEY_RENEWAL_INTERVAL`]). A device that does not send can
    /// call [`E2eClient::renew_key`] on a timer of its own.
    pub fn set_key_renewal_interval(&mut self, every: Duration) {
        self.key_renewal = every;
    }

    /// When this device last renewed its leaf key in the conversation's
    /// group (unix ms); `None` without a group.
    pub fn key_renewed_at_ms(&self, conversation_id: &str) -> Option<i64> {
        let m = lock(&self.mls);
        m.key_renewed_at_ms(&newest_group(&m, conversation_id))
    }

    /// Renews this device's leaf key in the conversation's group now (a
    /// self-update commit), after bringing the group up to date. Ok(false)
    /// when the relay refused the commit (e.g. a reader of a channel may
    /// not commit).
    pub async fn renew_key(&self, conversation_id: &str) -> Result<bool, E2eError> {
        self.own_change(conversation_id, OwnChange::Renew).await
    }

    /// Commits `change` now, after bringing the group up to date, again
    /// while other commits win the epoch. Ok(false) when the relay refused
    /// the commit.
    pub(super) async fn own_change(
        &self,
        conv: &str,
        change: OwnChange<'_>,
    ) -> Result<bool, E2eError> {
        let conv_lock = self.conv_lock(conv);
        let _one_at_a_time = conv_lock.lock().await;
        for _ in 0..SEND_ATTEMPTS {
            let gid = self.up_to_date(conv).await?;
            let st = self.mls_state(conv).await?;
            match self.renew(conv, &gid, &st, change).await? {
                Renewal::Done => return Ok(true),
                Renewal::Refused => return Ok(false),
                Renewal::Lost => {}
            }
        }
        Err(E2eError::Contended(conv.to_owned()))
    }

    /// A commit of `change` in the group `gid`, which is at the relay's
    /// epoch and reflects its roster (`st`).
    pub(super) async fn renew(
        &self,
        conv: &str,
        gid: &[u8],
        st: &v1::MlsState,
        change: OwnChange<'_>,
    ) -> Result<Renewal, E2eError> {
        let pending = {
            let mut m = lock(&self.mls);
            // A commit of ours left pending at this epoch was not taken.
            m.discard_commit(gid)?;
            match change {
                OwnChange::Renew => m.renew_leaf_key(gid)?,
                OwnChange::Title(title) => m.commit_title(gid, title)?,
            }
        };
        let prepared = PreparedCommit {
            conversation_id: conv.to_owned(),
            group_id: gid.to_vec(),
            from_epoch: pending.from_epoch,
            added: Vec::new(),
            removed: Vec::new(),
            submit: v1::Submit {
                message_id: new_message_id()?.to_vec(),
                conversation_id: conv.to_owned(),
                ciphertext: pending.commit,
                mls: true,
                mls_roster_version: st.group_roster_version,
                ..Default::default()
            },
        };
        match self.submit_membership_commit(prepared).await {
            Ok(true) => {
                debug!(conversation = conv, "leaf key renewed");
                Ok(Renewal::Done)
            }
            Ok(false) => Ok(Renewal::Lost),
            // Refused, so not stored: this device may not commit here.
            // UNAVAILABLE says nothing of the sort (a write that timed out
            // may have landed): the commit stays pending, and its echo
            // merges it or the next attempt drops it.
            Err(E2eError::Client(e))
                if e.code().is_some() && e.code() != Some(ErrorCode::Unavailable) =>
            {
                warn!(conversation = conv, error = %e, "renewing the leaf key was refused");
                lock(&self.mls).discard_commit(gid)?;
                Ok(Renewal::Refused)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether this device's leaf in `gid` is due for renewal: its key is
    /// old, or it carries another display name than the device's.
    pub(super) fn renewal_due(&self, gid: &[u8]) -> bool {
        let every = i64::try_from(self.key_renewal.as_millis()).unwrap_or(i64::MAX);
        let m = lock(&self.mls);
        let old = m
            .key_renewed_at_ms(gid)
            .is_some_and(|at| now_ms().saturating_sub(at) >= every);
        let renamed = m.member_display_name(gid, m.device_id()).as_deref() != m.display_name();
        m.epoch(gid).is_some_and(|e| e > 0) && (old || renamed)
    }
}
