//! The receiving side of a device: joining groups from Welcomes and
//! processing what other members sent.

use openmls::prelude::*;

use super::{Group, MlsDevice, Processed, identity_text, unknown, welcome_error};
use crate::ds::{parse, parse_welcome};
use crate::error::{MlsError, group_text};
use crate::join_config;

impl MlsDevice {
    /// Joins a group from a Welcome (tree inside) addressed to one of this
    /// device's key packages; returns the group id. One-time key packages
    /// are used up by this, last-resort ones are kept. If the device still
    /// has the group at an older epoch (it was removed and added again but
    /// has not processed its removal), the old state is replaced; a Welcome
    /// for an epoch the device already has fails with
    /// [`MlsError::GroupExists`].
    pub fn join(&mut self, welcome: &[u8]) -> Result<Vec<u8>, MlsError> {
        self.join_checked(welcome, None)
    }

    /// Like [`MlsDevice::join`], for a Welcome that must be for
    /// `expected_group`: one for any other group fails with
    /// [`MlsError::GroupMismatch`] before any state changes (a Welcome
    /// fetched for one conversation must not touch another's group).
    pub fn join_group(&mut self, expected_group: &[u8], welcome: &[u8]) -> Result<(), MlsError> {
        self.join_checked(welcome, Some(expected_group)).map(|_| ())
    }

    fn join_checked(
        &mut self,
        welcome: &[u8],
        expected: Option<&[u8]>,
    ) -> Result<Vec<u8>, MlsError> {
        let welcome = parse_welcome(welcome)?;
        let builder = StagedWelcome::build_from_welcome(&self.provider, &join_config(), welcome)
            .map_err(welcome_error)?;
        let info = builder.processed_welcome().unverified_group_info();
        let group_id = info.group_id().as_slice().to_vec();
        if let Some(expected) = expected
            && expected != group_id.as_slice()
        {
            return Err(MlsError::GroupMismatch {
                expected: group_text(expected),
                found: group_text(&group_id),
            });
        }
        let welcome_epoch = info.epoch().as_u64();
        let exists = |device: &Self| MlsError::GroupExists {
            group: group_text(&group_id),
            epoch: device.epoch(&group_id).unwrap_or_default(),
        };
        let replace = match self.epoch(&group_id) {
            Some(current) if current >= welcome_epoch => return Err(exists(self)),
            Some(_) => true,
            None => false,
        };
        // Lifetimes of the leaves already in the tree are not checked: in
        // add-only commits the added leaves keep their key package's
        // lifetime until the member commits itself, and a member that never
        // commits would otherwise lock newcomers out after 12 weeks. Key
        // packages are checked when they are added.
        let builder = builder.skip_lifetime_validation();
        let builder = if replace {
            builder.replace_old_group()
        } else {
            builder
        };
        let staged = builder.build().map_err(welcome_error)?;
        if staged.group_context().group_id().as_slice() != group_id
            || staged.group_context().epoch().as_u64() != welcome_epoch
        {
            return Err(MlsError::openmls(
                "joining from the Welcome",
                "verified group info differs from the unverified one",
            ));
        }
        if replace {
            self.delete_group(&group_id)?;
        }
        let mls = staged.into_group(&self.provider).map_err(welcome_error)?;
        let joined_epoch = mls.epoch().as_u64();
        self.groups.insert(
            group_id.clone(),
            Group {
                mls,
                joined_epoch,
                renewed_at_ms: super::now_ms(),
            },
        );
        self.save()?;
        Ok(group_id)
    }

    /// Processes a message of the group from the relay: decrypts an
    /// application message, or applies another member's commit. Own
    /// messages echoed back, messages from before this device joined and
    /// handshake messages of past epochs are [`Processed::Skipped`]. A
    /// commit that removes this device forgets the group.
    pub fn process(&mut self, group_id: &[u8], message: &[u8]) -> Result<Processed, MlsError> {
        self.process_checked(group_id, message, None)
    }

    /// Like [`MlsDevice::process`], and a commit that adds a device not in
    /// `declared` (the devices the relay says its Welcome names, checked
    /// against the roster) fails with [`MlsError::UndeclaredAdd`] before
    /// anything is applied: a member cannot slip an unlisted device into the
    /// group past the others.
    pub fn process_declared(
        &mut self,
        group_id: &[u8],
        message: &[u8],
        declared: &[String],
    ) -> Result<Processed, MlsError> {
        self.process_checked(group_id, message, Some(declared))
    }

    fn process_checked(
        &mut self,
        group_id: &[u8],
        message: &[u8],
        declared: Option<&[String]>,
    ) -> Result<Processed, MlsError> {
        let protocol_message = match parse(message)?.extract() {
            MlsMessageBodyIn::PrivateMessage(m) => ProtocolMessage::from(m),
            MlsMessageBodyIn::PublicMessage(m) => ProtocolMessage::from(m),
            other => {
                return Err(MlsError::WrongMessageType {
                    expected: "an MLS PrivateMessage or PublicMessage",
                    found: crate::ds::body_name(&other),
                });
            }
        };
        if protocol_message.group_id().as_slice() != group_id {
            return Err(MlsError::GroupMismatch {
                expected: group_text(group_id),
                found: group_text(protocol_message.group_id().as_slice()),
            });
        }
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or_else(|| unknown(group_id))?;
        let epoch = protocol_message.epoch().as_u64();
        let current = group.mls.epoch().as_u64();
        let what = match protocol_message.content_type() {
            ContentType::Application => "application message",
            ContentType::Proposal => "proposal",
            ContentType::Commit => "commit",
        };
        if epoch < group.joined_epoch {
            return Ok(Processed::Skipped {
                reason: format!(
                    "{what} of epoch {epoch}, before this device joined at epoch {}",
                    group.joined_epoch
                ),
            });
        }
        if epoch > current {
            return Err(MlsError::FutureEpoch {
                group: group_text(group_id),
                message_epoch: epoch,
                current,
            });
        }
        if protocol_message.is_handshake_message() && epoch < current {
            return Ok(Processed::Skipped {
                reason: format!(
                    "{what} of epoch {epoch}, the group is already at epoch {current} \
                     (applied already, or lost the race for that epoch)"
                ),
            });
        }

        let processed = group
            .mls
            .process_message(&self.provider, protocol_message)
            .map_err(|e| MlsError::openmls("processing the message", e))?;
        let aad = processed.aad().to_vec();
        let message_epoch = processed.epoch().as_u64();
        // Identities are reported lossily: the message is consumed (ratchet
        // advanced, commit valid), so failing here would lose it.
        let sender = identity_text(processed.credential());
        let result = match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Processed::Application {
                plaintext: m.into_bytes(),
                aad,
                sender,
                epoch: message_epoch,
            },
            ProcessedMessageContent::OwnPrivateMessage if what == "commit" => {
                return Ok(Processed::OwnCommit {
                    epoch: message_epoch,
                });
            }
            ProcessedMessageContent::OwnPrivateMessage => {
                return Ok(Processed::Skipped {
                    reason: format!(
                        "own {what} of epoch {message_epoch} echoed back (not decryptable by design)"
                    ),
                });
            }
            ProcessedMessageContent::OwnPendingCommit => {
                return Ok(Processed::OwnCommit {
                    epoch: message_epoch,
                });
            }
            ProcessedMessageContent::ProposalMessage(_)
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => Processed::Skipped {
                reason: format!(
                    "standalone proposal of epoch {message_epoch} ignored: Herold commits carry \
                     their proposals"
                ),
            },
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                // Sorted: the proposal store has no stable order.
                let mut added: Vec<String> = staged
                    .add_proposals()
                    .map(|p| identity_text(p.add_proposal().key_package().leaf_node().credential()))
                    .collect();
                added.sort();
                if let Some(declared) = declared
                    && let Some(device) = added.iter().find(|d| !declared.contains(d))
                {
                    return Err(MlsError::UndeclaredAdd {
                        group: group_text(group_id),
                        device: device.clone(),
                    });
                }
                let mut removed: Vec<String> = staged
                    .remove_proposals()
                    .filter_map(|p| group.mls.member(p.remove_proposal().removed()))
                    .map(identity_text)
                    .collect();
                removed.sort();
                let removed_me = staged.self_removed();
                let new_epoch = staged.epoch().as_u64();
                // A commit of our epoch from someone else means the relay
                // took it, so our own pending commit (if any) lost.
                group
                    .mls
                    .clear_pending_commit(self.provider.storage())
                    .map_err(|e| MlsError::openmls("clearing the pending commit", e))?;
                if removed_me {
                    group
                        .mls
                        .delete(self.provider.storage())
                        .map_err(|e| MlsError::openmls("deleting the group state", e))?;
                    self.groups.remove(group_id);
                } else {
                    group
                        .mls
                        .merge_staged_commit(&self.provider, *staged)
                        .map_err(|e| MlsError::openmls("merging the commit", e))?;
                }
                Processed::Commit {
                    epoch: new_epoch,
                    added,
                    removed,
                    removed_me,
                }
            }
        };
        self.save()?;
        Ok(result)
    }
}
