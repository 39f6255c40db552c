//! MLS (RFC 9420) end-to-end encryption for Herold, on openmls.
//!
//! Every conversation that uses end-to-end encryption is one MLS group whose
//! group id is the conversation id's UTF-8 bytes ([`group_id`]; a group
//! restarted after it broke gets a new id with its generation). Every device is one member:
//! its credential is a BasicCredential whose identity is the device id, with
//! its own Ed25519 signature key (separate from its relay login key).
//!
//! The crate has two sides:
//!
//! - **Delivery Service** (the relay), with no group state:
//!   [`inspect`] reads group id, epoch, content kind and authenticated data
//!   from the clear framing of a message, so the relay can accept exactly one
//!   commit per epoch and refuse application messages of stale epochs;
//!   [`validate_key_package`] checks uploaded key packages;
//!   [`check_welcome`] checks that a Welcome parses.
//! - **Client** (the SDK): [`MlsDevice`] holds a device's identity, the
//!   private keys of its key packages and its groups, persisted in one state
//!   file that is replaced atomically after every state change. It creates
//!   groups, commits membership changes (adds and removes in one commit),
//!   joins from Welcomes, encrypts, and processes what the relay delivers.
//!
//! Application messages carry Herold's authenticated data
//! ([`encode_aad`] / [`decode_aad`]): the expiry, readable by the relay and
//! tamper-proof for the members.
//!
//! # Group configuration
//! Ciphersuite `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`; handshake
//! messages encrypted too (pure ciphertext wire format), so the relay sees no
//! membership changes; the ratchet tree travels inside the Welcome; secrets
//! of the last 2 epochs are kept for late application messages; per sender
//! up to 20 out-of-order messages and jumps of up to 1000 messages. Add-only
//! commits carry no update path (a join costs a few hundred bytes even in
//! groups of thousands); commits with removals carry one, as RFC 9420
//! requires. Standalone proposals and external senders are not used.
//!
//! # Commit flow
//! [`MlsDevice::commit`] returns a [`PendingCommit`]; the SDK submits it
//! (with its Welcome) to the relay, which accepts only the first commit of
//! an epoch. Accepted: [`MlsDevice::confirm_commit`]. Refused: the SDK calls
//! [`MlsDevice::discard_commit`], processes the winning commit and commits
//! again.

#![warn(missing_docs)]

mod device;
mod ds;
mod error;
mod state;
#[cfg(test)]
mod tests;

use openmls::prelude::{
    Ciphersuite, Extensions, LeafNode, MlsGroupCreateConfig, MlsGroupJoinConfig,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, SenderRatchetConfiguration,
};

pub use device::{
    DISPLAY_NAME_EXTENSION, MAX_DISPLAY_NAME_BYTES, MAX_TITLE_BYTES, MlsDevice, PendingCommit,
    Post, Processed, TITLE_EXTENSION, check_title, is_channel_post,
};
pub use ds::{
    ContentKind, Inspected, ValidKeyPackage, check_welcome, decode_aad, encode_aad,
    group_generation, group_id, inspect, validate_key_package,
};
pub use error::MlsError;

/// The only ciphersuite Herold uses.
pub(crate) const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Epochs whose secrets stay available for late application messages:
/// none. The relay accepts an application message only in the current
/// epoch and devices process the log in order, merging even their own
/// commits only when the log reaches them, so no message is ever read after
/// its epoch ended. Past epochs would cost every save their member lists
/// (megabytes in a 7,000-member channel).
const MAX_PAST_EPOCHS: usize = 0;
/// Per sender: skipped message keys kept for out-of-order messages.
const OUT_OF_ORDER_TOLERANCE: u32 = 20;
/// Per sender: the largest jump ahead in the ratchet.
const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;

/// The configuration for groups this device creates. The creator's leaf
/// lists Herold's name extensions and carries `leaf`
/// (its display name).
pub(crate) fn create_config(leaf: Extensions<LeafNode>) -> Result<MlsGroupCreateConfig, MlsError> {
    Ok(MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .capabilities(device::capabilities(false))
        .with_leaf_node_extensions(leaf)
        .map_err(|e| MlsError::openmls("configuring the group", e))?
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .build())
}

/// The configuration for groups this device joins (joiners do not inherit
/// the creator's, so it must match [`create_config`]).
pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .build()
}
