//! Rules both backends apply, written once: enrollment-code validity, how
//! tags are kept, and which MLS messages a conversation admits.

use crate::{Account, AccountState, EnrollmentCode, MlsCheck, MlsState, StoreError, UnixMillis};

impl EnrollmentCode {
    /// Whether a code issued for an account created at
    /// `account_created_at_ms`, void from `expires_at_ms`, still enrols a
    /// device at `now_ms`, given the account of that id as it is now: the
    /// code has not expired and the account is the one it was issued for (a
    /// code outlives neither its account nor a later account of the same id),
    /// and it was issued at `created_at_ms`, not before the account's
    /// `state` voided its codes ([`AccountState::codes_valid_from_ms`]).
    /// Both backends decide with this.
    pub fn redeemable(
        code: &CodeTimes,
        account: Option<&Account>,
        state: Option<&AccountState>,
        now_ms: UnixMillis,
    ) -> bool {
        code.expires_at_ms > now_ms
            && account.is_some_and(|a| a.created_at_ms == code.account_created_at_ms)
            && code.created_at_ms >= state.map_or(0, |s| s.codes_valid_from_ms)
    }
}

/// The times an enrollment code's validity depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeTimes {
    /// Creation time of the account it was issued for.
    pub account_created_at_ms: UnixMillis,
    /// When it was issued.
    pub created_at_ms: UnixMillis,
    /// When it expires.
    pub expires_at_ms: UnixMillis,
}

/// Sorted, deduplicated tags: how both backends keep an account's tags.
pub(crate) fn normalize_tags(mut tags: Vec<String>) -> Vec<String> {
    tags.sort();
    tags.dedup();
    tags
}

/// The state of a conversation at `state` after accepting a message under
/// `check`, or why the message is refused (see [`MlsCheck`]).
pub(crate) fn admit_mls(check: Option<&MlsCheck>, state: MlsState) -> Result<MlsState, StoreError> {
    match check {
        // A restarted group (generation > 0) had a first commit too.
        None if state.epoch > 0 || state.generation > 0 => Err(StoreError::MlsRequired),
        None => Ok(state),
        Some(MlsCheck::Application { generation, .. })
        | Some(MlsCheck::Commit { generation, .. })
            if *generation != state.generation =>
        {
            Err(StoreError::WrongGeneration {
                current: state.generation,
            })
        }
        Some(MlsCheck::Application { epoch, .. }) => {
            if *epoch != state.epoch {
                Err(StoreError::WrongEpoch {
                    current: state.epoch,
                })
            } else if state.group_roster_version != state.roster_version {
                Err(StoreError::MembershipPending {
                    roster_version: state.roster_version,
                })
            } else {
                Ok(state)
            }
        }
        Some(MlsCheck::Commit {
            epoch,
            roster_version,
            ..
        }) => {
            if *epoch != state.epoch {
                return Err(StoreError::WrongEpoch {
                    current: state.epoch,
                });
            }
            if *roster_version > state.roster_version {
                return Err(StoreError::InvalidRosterVersion {
                    current: state.roster_version,
                });
            }
            let next = state.epoch.checked_add(1).ok_or(StoreError::Corrupt {
                table: "conversations",
                detail: "the MLS epoch is at its maximum".into(),
            })?;
            Ok(MlsState {
                generation: state.generation,
                epoch: next,
                roster_version: state.roster_version,
                group_roster_version: state.group_roster_version.max(*roster_version),
            })
        }
    }
}

/// The state after [`Store::mark_reconciled`] at `generation` and `epoch`
/// with `roster_version`, or why it is refused.
pub(crate) fn reconcile(
    state: MlsState,
    generation: u64,
    epoch: u64,
    roster_version: u64,
) -> Result<MlsState, StoreError> {
    if generation != state.generation {
        return Err(StoreError::WrongGeneration {
            current: state.generation,
        });
    }
    if epoch != state.epoch {
        return Err(StoreError::WrongEpoch {
            current: state.epoch,
        });
    }
    if roster_version > state.roster_version {
        return Err(StoreError::InvalidRosterVersion {
            current: state.roster_version,
        });
    }
    Ok(MlsState {
        group_roster_version: state.group_roster_version.max(roster_version),
        ..state
    })
}

/// The state after [`Store::reset_mls_group`] of the group at `generation`
/// and `epoch`, or why it is refused: the next generation at epoch 0, with
/// nothing of the roster reconciled.
pub(crate) fn restart(
    state: MlsState,
    generation: u64,
    epoch: u64,
) -> Result<MlsState, StoreError> {
    if generation != state.generation {
        return Err(StoreError::WrongGeneration {
            current: state.generation,
        });
    }
    // At epoch 0 there is no group to restart.
    if epoch != state.epoch || epoch == 0 {
        return Err(StoreError::WrongEpoch {
            current: state.epoch,
        });
    }
    let next = state.generation.checked_add(1).ok_or(StoreError::Corrupt {
        table: "conversations",
        detail: "the MLS generation is at its maximum".into(),
    })?;
    Ok(MlsState {
        generation: next,
        epoch: 0,
        roster_version: state.roster_version,
        group_roster_version: 0,
    })
}

/// Checks chunk `index` of `a` before it is stored.
pub(crate) fn check_chunk(a: &crate::Attachment, index: u32, len: usize) -> Result<(), StoreError> {
    let invalid = |detail: String| StoreError::InvalidChunk { index, detail };
    let Some(want) = a.chunk_len(index) else {
        return Err(invalid(format!("the attachment has {} chunks", a.chunks())));
    };
    if index > a.received_chunks {
        return Err(invalid(format!(
            "chunks go in order and {} are stored",
            a.received_chunks
        )));
    }
    if len as u64 != want {
        return Err(invalid(format!("it has {len} bytes, not {want}")));
    }
    Ok(())
}
