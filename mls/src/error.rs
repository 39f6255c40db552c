//! The crate's error type.

use std::path::PathBuf;

/// What went wrong. Every variant names the object and the reason, so the
/// message can be logged or shown as is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlsError {
    /// The bytes are not a TLS-encoded MLSMessage (truncated, trailing
    /// bytes, unknown wire format, ...).
    #[error("not a valid MLS message: {0}")]
    Malformed(String),

    /// A well-formed MLSMessage of the wrong kind, e.g. a Welcome where an
    /// application message or commit was expected.
    #[error("expected {expected}, got {found}")]
    WrongMessageType {
        /// What the function accepts.
        expected: &'static str,
        /// What the bytes contained.
        found: &'static str,
    },

    /// The key package failed openmls validation (signature, lifetime,
    /// init key, extensions, protocol version).
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),

    /// A key package, Welcome or group uses a ciphersuite other than
    /// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.
    #[error(
        "unsupported ciphersuite {0}: Herold uses MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"
    )]
    UnsupportedCiphersuite(String),

    /// The credential is not an MLS BasicCredential.
    #[error(
        "unsupported credential type {0}: Herold uses basic credentials (identity = device id)"
    )]
    UnsupportedCredential(String),

    /// Authenticated data that is not Herold's format.
    #[error("invalid authenticated data: {0}")]
    InvalidAad(&'static str),

    /// An empty device id.
    #[error("device id must not be empty")]
    EmptyDeviceId,

    /// No sender key for a channel post: its key message has not arrived
    /// yet, or never will (this device was removed before it was made).
    #[error("no sender key of {sender} for channel {channel}{}", epoch.map(|e| format!(" at epoch {e}")).unwrap_or_default())]
    NoSenderKey {
        /// The channel.
        channel: String,
        /// The publisher's device.
        sender: String,
        /// The epoch the post names (`None`: this device has none to post).
        epoch: Option<u64>,
    },

    /// A channel post or key message that is malformed, wrongly signed,
    /// or does not decrypt.
    #[error("invalid channel post or sender key: {0}")]
    BadSenderKey(String),

    /// A title or display name that is too long or holds control
    /// characters.
    #[error("invalid {what}: {reason}")]
    InvalidName {
        /// "title" or "display name".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A title cannot be set while members' devices run an app that does
    /// not know titles (their leaves do not list the extension).
    #[error(
        "MLS group {group}: the apps of {devices:?} do not support titles yet; \
         they do after their next update"
    )]
    TitlesUnsupported {
        /// The group id, as text.
        group: String,
        /// The members that lack support.
        devices: Vec<String>,
    },

    /// An empty group id.
    #[error("group id must not be empty")]
    EmptyGroupId,

    /// The device has no group with this id (never joined, removed, or
    /// forgotten).
    #[error("no MLS group {group} on this device")]
    UnknownGroup {
        /// The group id, as text.
        group: String,
    },

    /// `create_group` for a group the device already has, or `join` with a
    /// Welcome for an epoch the device already has.
    #[error("MLS group {group} already exists on this device at epoch {epoch}")]
    GroupExists {
        /// The group id, as text.
        group: String,
        /// The group's epoch on this device.
        epoch: u64,
    },

    /// `process` got a message of another group than the one named.
    #[error("message belongs to MLS group {found}, not {expected}")]
    GroupMismatch {
        /// The group the caller named.
        expected: String,
        /// The group named in the message.
        found: String,
    },

    /// A message from an epoch the group has not reached: a commit is
    /// missing (fetch and process it first).
    #[error(
        "message of MLS group {group} is from epoch {message_epoch} but the group is at epoch \
         {current}: a commit is missing"
    )]
    FutureEpoch {
        /// The group id, as text.
        group: String,
        /// The epoch in the message.
        message_epoch: u64,
        /// The group's epoch on this device.
        current: u64,
    },

    /// A commit adds a device its committer did not declare to the relay
    /// (the relay checks the declared devices against the conversation's
    /// roster): refused, nothing applied.
    #[error(
        "the commit to MLS group {group} adds device {device:?}, which its Welcome does not \
         name: refused as not checked against the roster"
    )]
    UndeclaredAdd {
        /// The group id, as text.
        group: String,
        /// The device the commit adds.
        device: String,
    },

    /// `commit` while an earlier commit of the group is still pending.
    #[error(
        "MLS group {group} has a pending commit from epoch {epoch}; confirm or discard it first"
    )]
    CommitPending {
        /// The group id, as text.
        group: String,
        /// The epoch the pending commit starts from.
        epoch: u64,
    },

    /// `confirm_commit` without a pending commit.
    #[error("MLS group {group} has no pending commit to confirm")]
    NoPendingCommit {
        /// The group id, as text.
        group: String,
    },

    /// `commit` asked to remove the committing device itself, which RFC 9420
    /// does not allow.
    #[error("device {device} cannot remove itself by commit; another member has to remove it")]
    CannotRemoveSelf {
        /// This device's id.
        device: String,
    },

    /// The Welcome is not addressed to any key package this device still
    /// has (another device's Welcome, or the one-time key package was used
    /// or lost).
    #[error("the Welcome is not for a key package of this device (or that key package was used)")]
    WelcomeNotForMe,

    /// An openmls operation failed; `operation` says which, `detail` is
    /// openmls's error.
    #[error("{operation} failed: {detail}")]
    Openmls {
        /// What was attempted.
        operation: &'static str,
        /// openmls's error, with its variant path.
        detail: String,
    },

    /// `create` with a state path that already exists: creating would
    /// overwrite a device identity.
    #[error("state file {0} already exists; open it instead of creating a new identity")]
    StateExists(PathBuf),

    /// `open_or_create` found state of another device.
    #[error("state file {path} belongs to device {found}, not {expected}")]
    DeviceMismatch {
        /// The state file.
        path: PathBuf,
        /// The device id the caller expected.
        expected: String,
        /// The device id in the file.
        found: String,
    },

    /// The state file is not a valid Herold MLS state.
    #[error("state file {path} is unreadable: {reason}")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Reading or writing the state file failed. After a failed write the
    /// in-memory state is already changed; the file holds the state before
    /// the call.
    #[error("state file {path}: {source}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A lock inside openmls's in-memory storage was poisoned by a panic in
    /// another thread.
    #[error("MLS key store lock is poisoned (a thread panicked while holding it)")]
    StoragePoisoned,
}

impl MlsError {
    /// An openmls failure of `operation`.
    pub(crate) fn openmls(
        operation: &'static str,
        error: impl std::fmt::Display + std::fmt::Debug,
    ) -> Self {
        MlsError::Openmls {
            operation,
            detail: format!("{error} [{error:?}]"),
        }
    }
}

/// A group id as text for messages: group ids are conversation ids (UTF-8).
pub(crate) fn group_text(group_id: &[u8]) -> String {
    String::from_utf8_lossy(group_id).into_owned()
}
