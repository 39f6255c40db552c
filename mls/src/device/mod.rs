//! Client side: one device's MLS identity, key packages and groups.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

mod channel;
mod image;
mod names;
mod receive;

pub use channel::{Post, is_channel_post};

pub(crate) use names::capabilities;
pub use names::{
    DISPLAY_NAME_EXTENSION, MAX_DISPLAY_NAME_BYTES, MAX_TITLE_BYTES, TITLE_EXTENSION, check_title,
};

use crate::ds::{basic_identity, parse_key_package};
use crate::error::{MlsError, group_text};
use crate::state::{DbError, State, StateDb};
use crate::{CIPHERSUITE, create_config};

/// The group `group_id` and its epoch, for a commit of this device:
/// refused while one of its commits is pending.
fn committable<'a>(
    groups: &'a mut BTreeMap<Vec<u8>, Group>,
    group_id: &[u8],
) -> Result<(&'a mut Group, u64), MlsError> {
    let group = groups.get_mut(group_id).ok_or_else(|| unknown(group_id))?;
    let from_epoch = group.mls.epoch().as_u64();
    if group.mls.pending_commit().is_some() {
        return Err(MlsError::CommitPending {
            group: group_text(group_id),
            epoch: from_epoch,
        });
    }
    Ok((group, from_epoch))
}

/// One device's MLS state: its signature key and credential (identity =
/// device id), the private keys of the key packages it handed out, and its
/// groups. Kept in memory and, if a path is given, in a state file (a redb
/// database) that every call that changes state updates before it returns,
/// in one transaction that writes only what changed.
///
/// If writing the file fails, the call returns [`MlsError::Io`] but the
/// in-memory state has already changed; the file still holds the previous
/// state. Treat the device as broken then (reopen from the file).
pub struct MlsDevice {
    device_id: String,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    groups: BTreeMap<Vec<u8>, Group>,
    path: Option<PathBuf>,
    db: Option<Mutex<StateDb>>,
    /// The display name this device puts into its leaves.
    display_name: Option<String>,
    /// Sender keys of large channels, its own and its publishers'.
    sender_keys: channel::SenderKeys,
}

struct Group {
    mls: MlsGroup,
    /// The epoch this device entered the group at (0 for the creator):
    /// messages of earlier epochs are from before it joined.
    joined_epoch: u64,
    /// When this device's own leaf key in the group was last renewed
    /// (joined, created, or a commit of its own with a path), unix ms.
    renewed_at_ms: i64,
}

/// A commit made by [`MlsDevice::commit`], not yet applied: send `commit`
/// (and `welcome`) to the relay, then call
/// [`MlsDevice::confirm_commit`] if the relay accepted it, or
/// [`MlsDevice::discard_commit`] if another commit won the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommit {
    /// The epoch the commit starts from (the relay's `MlsCheck::Commit`
    /// epoch); it moves the group to `from_epoch + 1`.
    pub from_epoch: u64,
    /// The commit, an MLSMessage-wrapped PrivateMessage.
    pub commit: Vec<u8>,
    /// The Welcome for the added devices (tree inside), if any were added.
    pub welcome: Option<Vec<u8>>,
    /// Device ids added, in commit order.
    pub added: Vec<String>,
    /// Device ids removed (those of the request that were members).
    pub removed: Vec<String>,
    /// Key packages left out, with the reason: (device id, reason).
    pub rejected: Vec<(String, String)>,
}

/// The outcome of [`MlsDevice::process`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// A decrypted application message.
    Application {
        /// The message.
        plaintext: Vec<u8>,
        /// Its authenticated data (see [`crate::decode_aad`]).
        aad: Vec<u8>,
        /// The sending device's id (its credential identity).
        sender: String,
        /// The epoch it was sent in.
        epoch: u64,
    },
    /// Another member's commit, applied.
    Commit {
        /// The group's epoch after the commit.
        epoch: u64,
        /// Device ids added.
        added: Vec<String>,
        /// Device ids removed.
        removed: Vec<String>,
        /// This device was removed; the group is forgotten.
        removed_me: bool,
    },
    /// This device's own commit of `epoch`, echoed back (not decryptable by
    /// design). Nothing changed: [`MlsDevice::confirm_commit`] applies it if
    /// it is still pending. Where the relay names no sender (sealed sender),
    /// this is how a device tells its own commits.
    OwnCommit {
        /// The epoch the commit starts from.
        epoch: u64,
    },
    /// Our own application message echoed back (not decryptable by
    /// design), a message of an epoch we never had (before we joined), or a
    /// handshake message of an epoch we already left. Nothing changed.
    Skipped {
        /// Why, for logs.
        reason: String,
    },
}

impl MlsDevice {
    /// A fresh identity for `device_id`; state kept in memory, and in `path`
    /// if given (written after every state change, atomically: temp file +
    /// rename). Refuses to overwrite an existing `path`.
    pub fn create(device_id: &str, path: Option<&Path>) -> Result<Self, MlsError> {
        if device_id.is_empty() {
            return Err(MlsError::EmptyDeviceId);
        }
        if let Some(p) = path {
            let exists = p.try_exists().map_err(|source| MlsError::Io {
                path: p.to_path_buf(),
                source,
            })?;
            if exists {
                return Err(MlsError::StateExists(p.to_path_buf()));
            }
        }
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| MlsError::openmls("generating the signature key", e))?;
        signer
            .store(provider.storage())
            .map_err(|e| MlsError::openmls("storing the signature key", e))?;
        let mut device = Self {
            device_id: device_id.to_string(),
            credential: credential(device_id, &signer),
            provider,
            signer,
            groups: BTreeMap::new(),
            path: path.map(Path::to_path_buf),
            db: None,
            display_name: None,
            sender_keys: channel::SenderKeys::new(),
        };
        if let Some(p) = path {
            let db = StateDb::create(p, &device.fresh_state()?).map_err(|e| db_error(p, e))?;
            device.db = Some(Mutex::new(db));
        }
        Ok(device)
    }

    /// Loads a device from its state file.
    pub fn open(path: &Path) -> Result<Self, MlsError> {
        let (db, state) = StateDb::open(path).map_err(|e| db_error(path, e))?;
        Self::load(db, state, path)
    }

    /// The device of an opened state database (`path` names it in errors).
    fn load(db: StateDb, state: State, path: &Path) -> Result<Self, MlsError> {
        let corrupt = |reason: String| MlsError::CorruptState {
            path: path.to_path_buf(),
            reason,
        };
        if state.device_id.is_empty() {
            return Err(corrupt("empty device id".into()));
        }
        let provider = OpenMlsRustCrypto::default();
        provider
            .storage()
            .values
            .write()
            .map_err(|_| MlsError::StoragePoisoned)?
            .extend(state.storage);
        let signer = SignatureKeyPair::read(
            provider.storage(),
            &state.signature_public_key,
            CIPHERSUITE.signature_algorithm(),
        )
        .ok_or_else(|| corrupt("the signature key is missing".into()))?;
        let mut groups = BTreeMap::new();
        let loaded_at = now_ms();
        for (group_id, joined_epoch, renewed) in state.groups {
            let mut mls = MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id))
                .map_err(|e| corrupt(format!("group {}: {e:?}", group_text(&group_id))))?
                .ok_or_else(|| {
                    corrupt(format!(
                        "group {} is listed but its state is missing",
                        group_text(&group_id)
                    ))
                })?;
            // Groups made by earlier versions kept past epochs: no more.
            if mls.configuration() != &crate::join_config() {
                mls.set_configuration(provider.storage(), &crate::join_config())
                    .map_err(|e| MlsError::openmls("updating the group's configuration", e))?;
            }
            // A version 1 file does not say: count from now, so that an
            // upgrade does not make every device renew at once.
            let renewed_at_ms = renewed.unwrap_or(loaded_at);
            groups.insert(
                group_id,
                Group {
                    mls,
                    joined_epoch,
                    renewed_at_ms,
                },
            );
        }
        let display_name = db
            .setting(names::DISPLAY_NAME_SETTING)
            .map_err(|e| db_error(path, e))?
            .map(|b| String::from_utf8(b).map_err(|_| corrupt("display name is not UTF-8".into())))
            .transpose()?;
        let sender_keys = channel::load(&db).map_err(corrupt)?;
        Ok(Self {
            credential: credential(&state.device_id, &signer),
            device_id: state.device_id,
            provider,
            signer,
            groups,
            path: Some(path.to_path_buf()),
            db: Some(Mutex::new(db)),
            display_name,
            sender_keys,
        })
    }

    /// Opens the state file if it exists (it must belong to `device_id`),
    /// else creates a fresh identity there.
    pub fn open_or_create(device_id: &str, path: &Path) -> Result<Self, MlsError> {
        let exists = path.try_exists().map_err(|source| MlsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if !exists {
            return Self::create(device_id, Some(path));
        }
        let device = Self::open(path)?;
        if device.device_id != device_id {
            return Err(MlsError::DeviceMismatch {
                path: path.to_path_buf(),
                expected: device_id.to_string(),
                found: device.device_id,
            });
        }
        Ok(device)
    }

    /// This device's id (its credential identity).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// `n` fresh one-time key packages (MLSMessage-wrapped), for
    /// `upload_key_packages`. Their private keys are saved before this
    /// returns. Key packages are public: they carry no display name.
    pub fn key_packages(&mut self, n: usize) -> Result<Vec<Vec<u8>>, MlsError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let bundle = KeyPackage::builder()
                .leaf_node_capabilities(capabilities(false))
                .build(
                    CIPHERSUITE,
                    &self.provider,
                    &self.signer,
                    self.credential.clone(),
                )
                .map_err(|e| MlsError::openmls("creating a key package", e))?;
            out.push(key_package_bytes(bundle.key_package())?);
        }
        self.save()?;
        Ok(out)
    }

    /// A fresh last-resort key package (used whenever the one-time packages
    /// run out; may be used more than once). Its private key is saved
    /// before this returns. Older last-resort packages stay usable.
    pub fn last_resort_key_package(&mut self) -> Result<Vec<u8>, MlsError> {
        // LastResort is not a default extension: the leaf must list it in
        // its capabilities or validation fails with UnsupportedExtension.
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities(true))
            .mark_as_last_resort()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(|e| MlsError::openmls("creating a last-resort key package", e))?;
        let bytes = key_package_bytes(bundle.key_package())?;
        self.save()?;
        Ok(bytes)
    }

    /// Whether this device has the group.
    pub fn has_group(&self, group_id: &[u8]) -> bool {
        self.groups.contains_key(group_id)
    }

    /// The ids of the groups this device has.
    pub fn group_ids(&self) -> Vec<Vec<u8>> {
        self.groups.keys().cloned().collect()
    }

    /// The group's current epoch on this device.
    pub fn epoch(&self, group_id: &[u8]) -> Option<u64> {
        self.groups.get(group_id).map(|g| g.mls.epoch().as_u64())
    }

    /// When this device last renewed its own leaf key in the group (unix
    /// ms): when it created or joined the group, or had a commit of its own
    /// with a path accepted. `None` for an unknown group.
    pub fn key_renewed_at_ms(&self, group_id: &[u8]) -> Option<i64> {
        self.groups.get(group_id).map(|g| g.renewed_at_ms)
    }

    /// The public HPKE key of this device's own leaf in the group, TLS
    /// encoded (what a self-update replaces); `None` for an unknown group.
    pub fn own_leaf_key(&self, group_id: &[u8]) -> Option<Vec<u8>> {
        let group = self.groups.get(group_id)?;
        let leaf = group.mls.own_leaf_node()?;
        leaf.encryption_key().tls_serialize_detached().ok()
    }

    /// A self-update: a commit that changes no membership and renews this
    /// device's leaf key and its path (post-compromise security). Send,
    /// confirm and discard it like any [`MlsDevice::commit`].
    pub fn renew_leaf_key(&mut self, group_id: &[u8]) -> Result<PendingCommit, MlsError> {
        self.commit(group_id, Vec::new(), Vec::new())
    }

    /// The device ids of the group's members (this device included), in
    /// leaf order; empty for an unknown group.
    pub fn members(&self, group_id: &[u8]) -> Vec<String> {
        self.groups
            .get(group_id)
            .map(|g| {
                g.mls
                    .members()
                    .map(|m| identity_text(&m.credential))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates the group with this device as its only member, at epoch 0.
    /// The relay knows nothing of it until the first commit is accepted.
    pub fn create_group(&mut self, group_id: &[u8]) -> Result<(), MlsError> {
        if group_id.is_empty() {
            return Err(MlsError::EmptyGroupId);
        }
        if let Some(epoch) = self.epoch(group_id) {
            return Err(MlsError::GroupExists {
                group: group_text(group_id),
                epoch,
            });
        }
        let mls = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &create_config(self.leaf_extensions()?)?,
            GroupId::from_slice(group_id),
            self.credential.clone(),
        )
        .map_err(|e| MlsError::openmls("creating the group", e))?;
        self.groups.insert(
            group_id.to_vec(),
            Group {
                mls,
                joined_epoch: 0,
                renewed_at_ms: now_ms(),
            },
        );
        self.save()
    }

    /// Makes a commit that adds the given (device id, key package) pairs and
    /// removes the given device ids, in one commit. Key packages that fail
    /// validation, whose credential identity is not the stated device id,
    /// that are listed twice or whose device is already a member are left
    /// out and reported in `rejected`. Device ids to remove that are not
    /// members are ignored. An add-only commit carries no update path; a
    /// commit with removals (or with nothing to add or remove: a plain key
    /// update) does. The commit stays pending until confirmed or discarded.
    pub fn commit(
        &mut self,
        group_id: &[u8],
        add: Vec<(String, Vec<u8>)>,
        remove: Vec<String>,
    ) -> Result<PendingCommit, MlsError> {
        let leaf = self.leaf_parameters()?;
        let own = self.device_id.as_str();
        let (group, from_epoch) = committable(&mut self.groups, group_id)?;
        if remove.iter().any(|d| d == own) {
            return Err(MlsError::CannotRemoveSelf {
                device: own.to_string(),
            });
        }

        // Current members: (identity, leaf).
        let members: Vec<(Vec<u8>, LeafNodeIndex)> = group
            .mls
            .members()
            .map(|m| (basic_identity(&m.credential).unwrap_or_default(), m.index))
            .collect();

        let mut removed = Vec::new();
        let mut remove_leaves = Vec::new();
        for device in remove {
            if removed.contains(&device) {
                continue;
            }
            let leaves: Vec<LeafNodeIndex> = members
                .iter()
                .filter(|(id, _)| id.as_slice() == device.as_bytes())
                .map(|(_, leaf)| *leaf)
                .collect();
            if !leaves.is_empty() {
                remove_leaves.extend(leaves);
                removed.push(device);
            }
        }

        let mut added = Vec::new();
        let mut key_packages = Vec::new();
        let mut rejected = Vec::new();
        let mut seen = HashSet::new();
        for (device, bytes) in add {
            if !seen.insert(device.clone()) {
                rejected.push((device, "listed more than once in this commit".into()));
                continue;
            }
            let is_member = members
                .iter()
                .any(|(id, _)| id.as_slice() == device.as_bytes());
            if is_member && !removed.contains(&device) {
                rejected.push((device, "already a member of the group".into()));
                continue;
            }
            let kp = match parse_key_package(&bytes) {
                Ok(kp) => kp,
                Err(e) => {
                    rejected.push((device, e.to_string()));
                    continue;
                }
            };
            match basic_identity(kp.leaf_node().credential()) {
                Ok(id) if id == device.as_bytes() => {}
                Ok(id) => {
                    let reason = format!(
                        "key package belongs to {:?}, not to this device",
                        String::from_utf8_lossy(&id)
                    );
                    rejected.push((device, reason));
                    continue;
                }
                Err(e) => {
                    rejected.push((device, e.to_string()));
                    continue;
                }
            }
            if !Self::supports_required(&group.mls, &kp) {
                let reason = "the device's app does not support this group's title yet".into();
                rejected.push((device, reason));
                continue;
            }
            key_packages.push(kp);
            added.push(device);
        }

        // RFC 9420 §12.4: removals need a path; add-only commits do not, and
        // leaving it out keeps joins cheap in large groups.
        let with_path = !remove_leaves.is_empty() || key_packages.is_empty();
        let mut builder = group
            .mls
            .commit_builder()
            .propose_adds(key_packages)
            .propose_removals(remove_leaves)
            .force_self_update(with_path);
        if with_path {
            // A path renews this device's leaf: with its current name.
            builder = builder.leaf_node_parameters(leaf);
        }
        let (commit, welcome) = finish_commit(&self.provider, &self.signer, builder)?;
        self.save()?;
        Ok(PendingCommit {
            from_epoch,
            commit,
            welcome,
            added,
            removed,
            rejected,
        })
    }

    /// Applies the pending commit (the relay accepted it): the group moves
    /// to the next epoch.
    pub fn confirm_commit(&mut self, group_id: &[u8]) -> Result<(), MlsError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or_else(|| unknown(group_id))?;
        if group.mls.pending_commit().is_none() {
            return Err(MlsError::NoPendingCommit {
                group: group_text(group_id),
            });
        }
        let with_path = group
            .mls
            .pending_commit()
            .is_some_and(|c| c.update_path_leaf_node().is_some());
        group
            .mls
            .merge_pending_commit(&self.provider)
            .map_err(|e| MlsError::openmls("merging the pending commit", e))?;
        if with_path {
            group.renewed_at_ms = now_ms();
        }
        self.save()
    }

    /// Clears the pending commit (the relay refused it: another commit won
    /// the epoch; process that one, then commit again). A group that never
    /// got past epoch 0 is forgotten: somebody else's group won, and this
    /// device joins it from a Welcome. Without a pending commit this only
    /// does the epoch-0 part.
    pub fn discard_commit(&mut self, group_id: &[u8]) -> Result<(), MlsError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or_else(|| unknown(group_id))?;
        group
            .mls
            .clear_pending_commit(self.provider.storage())
            .map_err(|e| MlsError::openmls("clearing the pending commit", e))?;
        if group.mls.epoch().as_u64() == 0 {
            self.delete_group(group_id)?;
        }
        self.save()
    }

    /// Encrypts an application message for the group's current epoch with
    /// the given authenticated data (see [`crate::encode_aad`]). The sender
    /// ratchet advances, and the state is saved before the ciphertext is
    /// returned, so a crash can never make the device reuse a key.
    pub fn encrypt(
        &mut self,
        group_id: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, MlsError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or_else(|| unknown(group_id))?;
        group.mls.set_aad(aad.to_vec());
        let message = match group
            .mls
            .create_message(&self.provider, &self.signer, plaintext)
        {
            Ok(m) => m,
            Err(e) => {
                // openmls resets the aad only on success; a later commit
                // would carry it otherwise.
                group.mls.set_aad(Vec::new());
                return Err(MlsError::openmls("encrypting the message", e));
            }
        };
        let bytes = message
            .to_bytes()
            .map_err(|e| MlsError::openmls("encoding the message", e))?;
        self.save()?;
        Ok(bytes)
    }

    /// Deletes the group's state from this device (no message to anyone).
    /// Unknown groups are fine.
    pub fn forget_group(&mut self, group_id: &[u8]) -> Result<(), MlsError> {
        if !self.groups.contains_key(group_id) {
            return Ok(());
        }
        self.delete_group(group_id)?;
        self.save()
    }

    // ---- internals ----

    fn delete_group(&mut self, group_id: &[u8]) -> Result<(), MlsError> {
        if let Some(mut group) = self.groups.remove(group_id) {
            group
                .mls
                .delete(self.provider.storage())
                .map_err(|e| MlsError::openmls("deleting the group state", e))?;
        }
        Ok(())
    }

    /// Writes what changed to the state file, if there is one.
    fn save(&self) -> Result<(), MlsError> {
        let (Some(db), Some(path)) = (&self.db, &self.path) else {
            return Ok(());
        };
        let groups: Vec<(Vec<u8>, u64, i64)> = self
            .groups
            .iter()
            .map(|(id, g)| (id.clone(), g.joined_epoch, g.renewed_at_ms))
            .collect();
        let entries = self
            .provider
            .storage()
            .values
            .read()
            .map_err(|_| MlsError::StoragePoisoned)?;
        db.lock()
            .map_err(|_| MlsError::StoragePoisoned)?
            .save(&groups, &entries)
            .map_err(|e| db_error(path, e))
    }

    /// Bytes of this device's whole MLS state (openmls's keys and values):
    /// what a format that rewrites the whole state on every change writes.
    pub fn stored_bytes(&self) -> u64 {
        self.provider.storage().values.read().map_or(0, |v| {
            v.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
        })
    }

    /// Bytes of openmls entries and group rows the last write to the state
    /// file wrote (0 without a file, or when nothing changed): what a call
    /// costs the disk.
    pub fn last_save_bytes(&self) -> u64 {
        self.db
            .as_ref()
            .and_then(|db| db.lock().ok().map(|d| d.last_written()))
            .unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn group_for_test(&self, group_id: &[u8]) -> Option<&MlsGroup> {
        self.groups.get(group_id).map(|g| &g.mls)
    }

    #[cfg(test)]
    pub(crate) fn key_package_with_lifetime(&self, lifetime: Lifetime) -> Vec<u8> {
        let bundle = KeyPackage::builder()
            .key_package_lifetime(lifetime)
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .unwrap();
        key_package_bytes(bundle.key_package()).unwrap()
    }
}

impl fmt::Debug for MlsDevice {
    /// Device id, state path, groups and epochs; never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: Vec<(String, u64)> = self
            .groups
            .iter()
            .map(|(id, g)| (group_text(id), g.mls.epoch().as_u64()))
            .collect();
        f.debug_struct("MlsDevice")
            .field("device_id", &self.device_id)
            .field("path", &self.path)
            .field("groups", &groups)
            .finish_non_exhaustive()
    }
}

/// Builds, stages and encodes a commit: (commit, Welcome if it adds).
fn finish_commit(
    provider: &OpenMlsRustCrypto,
    signer: &SignatureKeyPair,
    builder: CommitBuilder<'_, Initial>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), MlsError> {
    let bundle = builder
        .load_psks(provider.storage())
        .map_err(|e| MlsError::openmls("creating the commit", e))?
        .build(provider.rand(), provider.crypto(), signer, |_| true)
        .map_err(|e| MlsError::openmls("creating the commit", e))?
        .stage_commit(provider)
        .map_err(|e| MlsError::openmls("staging the commit", e))?;
    let welcome = bundle
        .to_welcome_msg()
        .map(|w| w.to_bytes())
        .transpose()
        .map_err(|e| MlsError::openmls("encoding the Welcome", e))?;
    let (commit, _, _) = bundle.into_messages();
    let commit = commit
        .to_bytes()
        .map_err(|e| MlsError::openmls("encoding the commit", e))?;
    Ok((commit, welcome))
}

fn credential(device_id: &str, signer: &SignatureKeyPair) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(device_id.as_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    }
}

/// A member's device id for reports: the BasicCredential identity as text
/// (lossy; empty for other credential types, which Herold never creates).
fn identity_text(credential: &Credential) -> String {
    basic_identity(credential)
        .map(|id| String::from_utf8_lossy(&id).into_owned())
        .unwrap_or_default()
}

fn key_package_bytes(kp: &KeyPackage) -> Result<Vec<u8>, MlsError> {
    MlsMessageOut::from(kp.clone())
        .tls_serialize_detached()
        .map_err(|e| MlsError::openmls("encoding the key package", e))
}

fn unknown(group_id: &[u8]) -> MlsError {
    MlsError::UnknownGroup {
        group: group_text(group_id),
    }
}

fn welcome_error<E: std::error::Error>(e: WelcomeError<E>) -> MlsError {
    match e {
        WelcomeError::NoMatchingKeyPackage | WelcomeError::JoinerSecretNotFound => {
            MlsError::WelcomeNotForMe
        }
        other => MlsError::openmls("joining from the Welcome", other),
    }
}

/// The wall clock in unix ms (0 before 1970); in a browser, the page's
/// (`std`'s clock is not there on wasm32).
pub(crate) fn now_ms() -> i64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn db_error(path: &Path, e: DbError) -> MlsError {
    match e {
        DbError::Io(source) => MlsError::Io {
            path: path.to_path_buf(),
            source,
        },
        DbError::Corrupt(reason) => MlsError::CorruptState {
            path: path.to_path_buf(),
            reason,
        },
    }
}
