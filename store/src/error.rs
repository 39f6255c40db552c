//! What a store operation can fail with.

/// Errors of the store. Each variant is one specific reason.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An account with this id exists already.
    #[error("account {0:?} already exists")]
    AccountExists(String),
    /// No account with this id.
    #[error("no account {0:?}")]
    NoSuchAccount(String),
    /// A device with this id exists already.
    #[error("device {0:?} already exists")]
    DeviceExists(String),
    /// No device with this id.
    #[error("no device {0:?}")]
    NoSuchDevice(String),
    /// The account has reached its device limit.
    #[error("account {account:?} already has {limit} devices, the limit")]
    DeviceLimit {
        /// The account.
        account: String,
        /// The limit.
        limit: u32,
    },
    /// A conversation with this id exists already.
    #[error("conversation {0:?} already exists")]
    ConversationExists(String),
    /// No conversation with this id.
    #[error("no conversation {0:?}")]
    NoSuchConversation(String),
    /// A direct conversation must have exactly two members.
    #[error("a direct conversation has exactly two members, not {0}")]
    DirectNeedsTwo(usize),
    /// The enrollment code is unknown, used, expired, or its account is gone.
    #[error("the enrollment code is not valid (unknown, used or expired)")]
    NoSuchCode,
    /// A record failed to decode: the data on disk is damaged or from an
    /// incompatible version.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// Where.
        table: &'static str,
        /// What.
        detail: String,
    },
    /// The backend failed (I/O, database).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
    /// A backend's configuration is invalid.
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    /// The MLS message is not for the conversation's current epoch, or a
    /// commit lost the race for its epoch.
    #[error("the MLS group of the conversation is at epoch {current}")]
    WrongEpoch {
        /// The conversation's current epoch.
        current: u64,
    },
    /// The MLS message or request is for another generation of the group
    /// than the current one: the group was restarted.
    #[error("the MLS group of the conversation was restarted (generation {current})")]
    WrongGeneration {
        /// The conversation's current generation.
        current: u64,
    },
    /// The group does not reflect the conversation's roster yet: a member
    /// must commit the changes before application messages are accepted.
    #[error(
        "the MLS group does not reflect roster version {roster_version} yet: commit the membership changes first"
    )]
    MembershipPending {
        /// The conversation's current roster version.
        roster_version: u64,
    },
    /// A commit or reconciliation claims a roster version the conversation
    /// has not reached.
    #[error("roster version is ahead of the conversation's current roster version {current}")]
    InvalidRosterVersion {
        /// The conversation's current roster version.
        current: u64,
    },
    /// The conversation has an MLS group: only MLS messages are accepted.
    #[error("the conversation has an MLS group: only MLS messages are accepted")]
    MlsRequired,
    /// The device would hold more one-time key packages than allowed.
    #[error("a device may hold at most {limit} one-time key packages")]
    KeyPackageLimit {
        /// The most one-time packages a device may hold.
        limit: u32,
    },
    /// An attachment with this id exists already.
    #[error("an attachment with this id exists already")]
    AttachmentExists,
    /// No attachment with this id, or it expired.
    #[error("no such attachment (unknown or expired)")]
    NoSuchAttachment,
    /// A chunk that does not fit its attachment: out of order, past the
    /// end, or of the wrong length.
    #[error("chunk {index} does not fit the attachment: {detail}")]
    InvalidChunk {
        /// The chunk's index.
        index: u32,
        /// What is wrong with it.
        detail: String,
    },
}
