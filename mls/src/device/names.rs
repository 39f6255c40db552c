//! Names only members see: a group's title and each device's display name
//! (docs/e2e.md, "Titles and display names").
//!
//! The title is an extension of the group context, the display name an
//! extension of the device's leaf. Both change only by a commit, which the
//! relay cannot read, and both are in the tree a Welcome carries, so a
//! device that joins later learns them too. Extension types are from the
//! private-use range of RFC 9420, section 17.3.

use openmls::prelude::*;

use super::{MlsDevice, PendingCommit, identity_text};
use crate::error::{MlsError, group_text};

/// Group context extension: the group's title, UTF-8.
pub const TITLE_EXTENSION: u16 = 0xF0A0;
/// Leaf node extension: the device's display name, UTF-8.
pub const DISPLAY_NAME_EXTENSION: u16 = 0xF0A1;
/// The longest title, in bytes of UTF-8.
pub const MAX_TITLE_BYTES: usize = 256;
/// The longest display name, in bytes of UTF-8.
pub const MAX_DISPLAY_NAME_BYTES: usize = 128;

/// The settings key of the display name in the state file.
pub(super) const DISPLAY_NAME_SETTING: &str = "display_name";

/// What this device's leaves support: both name extensions, and last
/// resort for last-resort key packages.
pub(crate) fn capabilities(last_resort: bool) -> Capabilities {
    let mut extensions = vec![
        ExtensionType::Unknown(TITLE_EXTENSION),
        ExtensionType::Unknown(DISPLAY_NAME_EXTENSION),
    ];
    if last_resort {
        extensions.push(ExtensionType::LastResort);
    }
    Capabilities::builder().extensions(extensions).build()
}

/// The extensions of this device's leaf: its display name, if set.
fn leaf_extensions(name: Option<&str>) -> Result<Extensions<LeafNode>, MlsError> {
    let Some(name) = name else {
        return Ok(Extensions::empty());
    };
    let ext = Extension::Unknown(
        DISPLAY_NAME_EXTENSION,
        UnknownExtension(name.as_bytes().to_vec()),
    );
    Extensions::single(ext).map_err(|e| MlsError::openmls("making the leaf's extensions", e))
}

/// Checks a title or display name: at most `max` bytes, no control
/// characters; an empty one means none.
pub(crate) fn checked_name<'a>(
    what: &'static str,
    name: Option<&'a str>,
    max: usize,
) -> Result<Option<&'a str>, MlsError> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.len() > max {
        return Err(MlsError::InvalidName {
            what,
            reason: format!("{} bytes, at most {max}", name.len()),
        });
    }
    if name.chars().any(char::is_control) {
        return Err(MlsError::InvalidName {
            what,
            reason: "control characters are not allowed".into(),
        });
    }
    Ok(Some(name))
}

/// Checks a title before anything is committed: at most
/// [`MAX_TITLE_BYTES`], no control characters.
pub fn check_title(title: Option<&str>) -> Result<(), MlsError> {
    checked_name("title", title, MAX_TITLE_BYTES).map(drop)
}

/// A name read from a member's extension: shown only if it would have been
/// accepted when set (another member's app may be hostile or buggy).
fn shown_name(what: &'static str, bytes: &[u8], max: usize) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    checked_name(what, Some(text), max)
        .ok()
        .flatten()
        .map(str::to_owned)
}

impl MlsDevice {
    /// This device's display name, as it puts it into its key packages and
    /// leaves; `None` when unset.
    pub fn display_name(&self) -> Option<&str> {
        self.display_name.as_deref()
    }

    /// Sets (or with `None` or "" clears) this device's display name, kept
    /// in the state file. Groups this device creates carry it from the
    /// start; any other group learns it from this device's next commit with
    /// a path there ([`MlsDevice::renew_leaf_key`]). Key packages never
    /// carry it: the relay reads them.
    pub fn set_display_name(&mut self, name: Option<&str>) -> Result<(), MlsError> {
        let name = checked_name("display name", name, MAX_DISPLAY_NAME_BYTES)?;
        if let (Some(db), Some(path)) = (&self.db, &self.path) {
            db.lock()
                .map_err(|_| MlsError::StoragePoisoned)?
                .set_setting(DISPLAY_NAME_SETTING, name.map(str::as_bytes))
                .map_err(|e| super::db_error(path, e))?;
        }
        self.display_name = name.map(str::to_owned);
        Ok(())
    }

    /// The display name of the member `device` in the group, from its leaf;
    /// `None` if it set none, is not a member, or the name is not valid.
    pub fn member_display_name(&self, group_id: &[u8], device: &str) -> Option<String> {
        let group = self.groups.get(group_id)?;
        let member = group
            .mls
            .members()
            .find(|m| identity_text(&m.credential) == device)?;
        let leaf = group.mls.public_group().leaf(member.index)?;
        let ext = leaf.extensions().unknown(DISPLAY_NAME_EXTENSION)?;
        shown_name("display name", &ext.0, MAX_DISPLAY_NAME_BYTES)
    }

    /// The group's title, from its group context; `None` if no member set
    /// one, or the group is unknown.
    pub fn title(&self, group_id: &[u8]) -> Option<String> {
        let group = self.groups.get(group_id)?;
        let ext = group.mls.extensions().unknown(TITLE_EXTENSION)?;
        shown_name("title", &ext.0, MAX_TITLE_BYTES)
    }

    /// A commit that sets (or with `None` or "" removes) the group's title.
    /// It carries a path, like a self-update. Fails with
    /// [`MlsError::TitlesUnsupported`] while a member's leaf does not list
    /// the title extension (a device on an older app). Send, confirm and
    /// discard it like any [`MlsDevice::commit`].
    pub fn commit_title(
        &mut self,
        group_id: &[u8],
        title: Option<&str>,
    ) -> Result<PendingCommit, MlsError> {
        let title = checked_name("title", title, MAX_TITLE_BYTES)?;
        let leaf = self.leaf_parameters()?;
        let (group, from_epoch) = super::committable(&mut self.groups, group_id)?;
        let title_type = ExtensionType::Unknown(TITLE_EXTENSION);
        let lacking: Vec<String> = group
            .mls
            .members()
            .filter_map(|m| {
                let leaf = group.mls.public_group().leaf(m.index)?;
                (!leaf.capabilities().extensions().contains(&title_type))
                    .then(|| identity_text(&m.credential))
            })
            .collect();
        if !lacking.is_empty() {
            return Err(MlsError::TitlesUnsupported {
                group: group_text(group_id),
                devices: lacking,
            });
        }
        // The proposal replaces the context's extensions: keep the others,
        // and require title support from every device added later.
        let mut extensions = group.mls.extensions().clone();
        let required = extensions.required_capabilities().cloned();
        let mut required_types: Vec<ExtensionType> = required
            .as_ref()
            .map(|r| r.extension_types().to_vec())
            .unwrap_or_default();
        if !required_types.contains(&title_type) {
            required_types.push(title_type);
        }
        let (proposals, credentials) = required
            .as_ref()
            .map(|r| (r.proposal_types().to_vec(), r.credential_types().to_vec()))
            .unwrap_or_default();
        let required =
            RequiredCapabilitiesExtension::new(&required_types, &proposals, &credentials);
        let replace = |e: &mut Extensions<GroupContext>, ext: Extension| {
            e.add_or_replace(ext)
                .map(drop)
                .map_err(|e| MlsError::openmls("setting the title", e))
        };
        replace(&mut extensions, Extension::RequiredCapabilities(required))?;
        match title {
            Some(t) => replace(
                &mut extensions,
                Extension::Unknown(TITLE_EXTENSION, UnknownExtension(t.as_bytes().to_vec())),
            )?,
            None => drop(extensions.remove(title_type)),
        }
        let builder = group
            .mls
            .commit_builder()
            .propose_group_context_extensions(extensions)
            .map_err(|e| MlsError::openmls("creating the commit", e))?
            .force_self_update(true)
            .leaf_node_parameters(leaf);
        let (commit, welcome) = super::finish_commit(&self.provider, &self.signer, builder)?;
        self.save()?;
        Ok(PendingCommit {
            from_epoch,
            commit,
            welcome,
            added: Vec::new(),
            removed: Vec::new(),
            rejected: Vec::new(),
        })
    }

    /// This device's leaf as a commit with a path sets it: current
    /// capabilities and display name.
    pub(super) fn leaf_parameters(&self) -> Result<LeafNodeParameters, MlsError> {
        Ok(LeafNodeParameters::builder()
            .with_capabilities(capabilities(false))
            .with_extensions(self.leaf_extensions()?)
            .build())
    }

    /// The extensions of this device's leaf in the groups it creates and
    /// its commits with a path: its display name, if set.
    pub(super) fn leaf_extensions(&self) -> Result<Extensions<LeafNode>, MlsError> {
        leaf_extensions(self.display_name.as_deref())
    }

    /// Whether a key package's leaf supports what the group requires (a
    /// titled group requires the title extension).
    pub(super) fn supports_required(group: &MlsGroup, kp: &KeyPackage) -> bool {
        group.extensions().required_capabilities().is_none_or(|r| {
            // Herold's own types (the defaults need no listing).
            r.extension_types().iter().all(|t| {
                !matches!(t, ExtensionType::Unknown(_))
                    || kp.leaf_node().capabilities().extensions().contains(t)
            })
        })
    }
}
