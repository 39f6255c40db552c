//! The store's types: the directory, messages, MLS state and the
//! operators' state, as every backend reads and writes them.

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// Kind of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationKind {
    /// Two accounts talking.
    Direct,
    /// Every member may post.
    Group,
    /// Only publishers, admins and owners post; members read.
    Channel,
}

/// A member's role in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads; posts in groups and direct conversations, not in channels.
    Member,
    /// Posts in channels.
    Publisher,
    /// Manages members.
    Admin,
    /// Owns the conversation.
    Owner,
}

impl Role {
    /// Whether this role may post in a conversation of `kind`.
    pub fn may_post(self, kind: ConversationKind) -> bool {
        match kind {
            ConversationKind::Direct | ConversationKind::Group => true,
            ConversationKind::Channel => self >= Role::Publisher,
        }
    }
}

/// An account: a person (or a bot) owning up to N devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Unique id.
    pub id: String,
    /// Name shown to people; may be empty.
    pub display_name: String,
    /// Creation time.
    pub created_at_ms: UnixMillis,
}

/// A device enrolled for an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Unique id (globally, not only within the account).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Ed25519 public key, 32 bytes.
    pub public_key: Vec<u8>,
    /// A revoked device may not authenticate.
    pub revoked: bool,
    /// Enrollment time.
    pub created_at_ms: UnixMillis,
}

/// A conversation: direct, group or channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Unique id.
    pub id: String,
    /// Kind.
    pub kind: ConversationKind,
    /// Title; may be empty. Stored in the clear: the directory is server-side
    /// metadata the city manages (a group's name, not a message).
    pub title: String,
    /// Retention of messages submitted without an expiry, in seconds; 0 keeps
    /// them until they are deleted with the conversation.
    pub default_ttl_seconds: u64,
    /// Creation time.
    pub created_at_ms: UnixMillis,
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member account.
    pub account_id: String,
    /// Its role.
    pub role: Role,
}

/// A message to append to a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Conversation.
    pub conversation_id: String,
    /// Client-chosen idempotency key, unique within the conversation.
    pub message_id: Vec<u8>,
    /// Sending account.
    pub sender_account_id: String,
    /// Sending device.
    pub sender_device_id: String,
    /// Server time of acceptance.
    pub server_time_ms: UnixMillis,
    /// Expiry; `None` keeps the message until its conversation is deleted.
    pub expires_at_ms: Option<UnixMillis>,
    /// Opaque end-to-end encrypted payload.
    pub ciphertext: Vec<u8>,
    /// The MLS condition the message is accepted under; `None` for an opaque
    /// envelope, accepted only while the conversation has no MLS group
    /// (epoch 0). See [`MlsCheck`].
    pub mls: Option<MlsCheck>,
}

impl NewMessage {
    /// The message as the store keeps it once `append` answered `appended`
    /// (for a duplicate: the seq and time of its first acceptance).
    pub fn stored(self, appended: &Appended) -> StoredMessage {
        StoredMessage {
            conversation_id: self.conversation_id,
            seq: appended.seq,
            message_id: self.message_id,
            sender_account_id: self.sender_account_id,
            sender_device_id: self.sender_device_id,
            server_time_ms: appended.server_time_ms,
            expires_at_ms: self.expires_at_ms,
            welcomed: self
                .mls
                .and_then(MlsCheck::into_welcomed)
                .unwrap_or_default(),
            ciphertext: self.ciphertext,
        }
    }
}

impl MlsCheck {
    /// The devices the Welcome of a commit names.
    fn into_welcomed(self) -> Option<Vec<String>> {
        match self {
            Self::Commit {
                welcome: Some(w), ..
            } => Some(w.device_ids),
            _ => None,
        }
    }
}

/// The MLS condition of an appended message, checked atomically with the
/// seq claim. A resend of an already accepted message id is a duplicate
/// before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlsCheck {
    /// Application message of `epoch` in the group of `generation`:
    /// accepted only if both are the conversation's current ones and
    /// `group_roster_version == roster_version`; else
    /// [`StoreError::WrongGeneration`] / [`StoreError::WrongEpoch`] /
    /// [`StoreError::MembershipPending`].
    Application {
        /// The group's generation (from its MLS group id).
        generation: u64,
        /// The MLS epoch the message was encrypted in.
        epoch: u64,
    },
    /// Commit from `epoch` to `epoch + 1` that reflects `roster_version`:
    /// accepted only if the group is of `generation` (else
    /// [`StoreError::WrongGeneration`]) and at `epoch` (the first commit of
    /// an epoch wins; else [`StoreError::WrongEpoch`]) and `roster_version <=` the
    /// current roster version (else [`StoreError::InvalidRosterVersion`]).
    /// On success, atomically with the seq: epoch += 1,
    /// `group_roster_version = roster_version` (never decreasing), and the
    /// Welcome stored for its devices.
    Commit {
        /// The group's generation (from its MLS group id).
        generation: u64,
        /// The epoch the commit starts from.
        epoch: u64,
        /// The roster version the committed group reflects.
        roster_version: u64,
        /// The Welcome for the devices the commit adds, if it adds any.
        welcome: Option<Welcome>,
    },
}

/// An MLS Welcome attached to a commit, for the devices it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The MlsMessage-wrapped Welcome, opaque to the store.
    pub bytes: Vec<u8>,
    /// The devices it welcomes.
    pub device_ids: Vec<String>,
}

/// How many key packages a device has on the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyPackageCount {
    /// One-time packages not yet handed out.
    pub available: u32,
    /// Whether the device has a last-resort package (is "ready").
    pub last_resort: bool,
}

/// The result of [`Store::upload_key_packages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackageUpload {
    /// The device's packages after the upload.
    pub count: KeyPackageCount,
    /// The device had no last-resort package before and has one now: it
    /// became addable, and the roster version of every conversation of its
    /// account was bumped.
    pub became_ready: bool,
}

/// The MLS state of a conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MlsState {
    /// How often the group was restarted ([`crate::Store::reset_mls_group`]);
    /// the MLS group id names it (`herold_mls::group_id`).
    pub generation: u64,
    /// Epoch of the accepted MLS group of this generation; 0 = no group yet.
    pub epoch: u64,
    /// Bumped by every change of who should be in the group.
    pub roster_version: u64,
    /// The roster version the group reflects.
    pub group_roster_version: u64,
}

/// A message as stored, with its place in the conversation's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Conversation.
    pub conversation_id: String,
    /// Position in the conversation, from 1, without gaps.
    pub seq: u64,
    /// Client-chosen idempotency key.
    pub message_id: Vec<u8>,
    /// Sending account.
    pub sender_account_id: String,
    /// Sending device.
    pub sender_device_id: String,
    /// Server time of acceptance.
    pub server_time_ms: UnixMillis,
    /// Expiry, if any.
    pub expires_at_ms: Option<UnixMillis>,
    /// For a commit: the devices its Welcome names, as the committer
    /// declared them and the relay checked them against the roster. Members
    /// refuse a commit that adds any other device. Empty otherwise.
    pub welcomed: Vec<String>,
    /// Opaque payload.
    pub ciphertext: Vec<u8>,
}

/// The result of [`Store::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's seq (the first one's, for a duplicate).
    pub seq: u64,
    /// Server time of the first acceptance.
    pub server_time_ms: UnixMillis,
    /// True when the message id was already in the log: nothing was written.
    pub duplicate: bool,
}

/// What [`Store::delete_account`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountPurge {
    /// Devices removed.
    pub devices: u32,
    /// Conversation memberships removed.
    pub memberships: u32,
    /// Cursors removed.
    pub cursors: u32,
}

/// What an operator manages about an account beyond [`Account`]: its tags
/// (the cohort of a bulk import, e.g. `election-2026`) and whether it is
/// suspended (its devices may not connect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountState {
    /// Tags, sorted and without duplicates.
    pub tags: Vec<String>,
    /// A suspended account's devices are refused at authentication.
    pub suspended: bool,
    /// Enrollment codes issued before this time are void: issuing a code
    /// sets it to the new code's time (the older codes are void), revoking
    /// the account's codes to just after now. 0: none voided.
    pub codes_valid_from_ms: UnixMillis,
}

/// One page of a listing, in the backend's listing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Where the next page starts (pass it as `after`); `None` on the last
    /// page.
    pub next: Option<String>,
}

/// Who may start a direct (1:1) conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirectChats {
    /// Any two accounts.
    Everyone,
    /// Only two accounts that share a group or channel.
    SharedGroup,
    /// Nobody: no direct conversations, and existing ones are read-only.
    Nobody,
}

/// Security policy of the organisation or of one conversation. `None` means
/// "not set here": a conversation's policy falls back to the organisation's,
/// the organisation's to the relay's configured limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Expiry of messages sent without one, in seconds (self-destruct).
    pub default_expiry_seconds: Option<u64>,
    /// Longest expiry a message may ask for, in seconds.
    pub max_expiry_seconds: Option<u64>,
    /// Devices one account may enroll (organisation scope only).
    pub max_devices: Option<u32>,
    /// Largest attachment ciphertext (and message ciphertext), in bytes.
    pub max_attachment_bytes: Option<u64>,
    /// Who may start direct conversations (organisation scope only).
    pub direct_chats: Option<DirectChats>,
    /// Sealed sender (organisation scope only): the relay stores no sender
    /// for the messages of direct (1:1) conversations.
    pub sealed_sender: Option<bool>,
}

/// Where a [`Policy`] applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicyScope {
    /// The whole organisation.
    Org,
    /// One group or channel, overriding the organisation.
    Conversation(String),
}

/// A one-time enrollment code, as stored: only its hash, never the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentCode {
    /// SHA-256 of the code.
    pub code_hash: Vec<u8>,
    /// The account a device enrolled with it belongs to.
    pub account_id: String,
    /// The account's creation time: a code outlives neither its account nor
    /// a later account of the same id.
    pub account_created_at_ms: UnixMillis,
    /// Issue time.
    pub created_at_ms: UnixMillis,
    /// The code is void from this time on.
    pub expires_at_ms: UnixMillis,
}

/// One entry of the audit log: who did what, when, with what outcome. Ids
/// and actions only, never message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at_ms: UnixMillis,
    /// Unique id (orders entries of the same millisecond).
    pub id: String,
    /// The operator's name.
    pub operator: String,
    /// The API call, e.g. `DeleteAccount`.
    pub action: String,
    /// What it acted on (an account, device or conversation id, a cohort).
    pub target: String,
    /// `ok` or the gRPC status code name.
    pub outcome: String,
    /// Counts and parameters (never message content).
    pub detail: String,
    /// The hash chain the entry belongs to: the writing relay's node id
    /// (each relay appends to its own chain, so relays never wait for one
    /// another); empty for entries written before the chains existed.
    pub chain: String,
    /// Position in its chain, from 1, set by the store when it appends
    /// (ignored on input); 0 for entries written before the chains existed.
    pub chain_seq: u64,
    /// `herold_proto::audit::entry_hash` of this entry after the previous
    /// one, set by the store; empty for entries from before the chain.
    pub hash: Vec<u8>,
}

impl AuditEntry {
    /// What the hash chain covers of this entry, at `seq`.
    pub fn chain_fields(&self, seq: u64) -> herold_proto::audit::Fields<'_> {
        herold_proto::audit::Fields {
            chain: &self.chain,
            seq,
            at_ms: self.at_ms,
            id: &self.id,
            operator: &self.operator,
            action: &self.action,
            target: &self.target,
            outcome: &self.outcome,
            detail: &self.detail,
        }
    }

    /// Gives the entry its place in its chain after the head `(seq, hash)`
    /// (`(0, GENESIS)` for the first entry): the next position and its hash.
    pub fn chain_after(&mut self, head_seq: u64, head_hash: &[u8; 32]) {
        self.chain_seq = head_seq.saturating_add(1);
        self.hash =
            herold_proto::audit::entry_hash(head_hash, &self.chain_fields(self.chain_seq)).to_vec();
    }
}

/// An end-to-end encrypted file uploaded to a conversation: its ciphertext
/// only, kept in chunks of `chunk_bytes` (the last one shorter) so that no
/// row or partition grows with the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Random and unguessable, chosen by the relay (16 bytes).
    pub id: Vec<u8>,
    /// Where it was uploaded: only this conversation's members fetch it.
    pub conversation_id: String,
    /// The device that uploads it, the only one that may resume the upload.
    pub uploader_device_id: String,
    /// Ciphertext bytes in all.
    pub size: u64,
    /// Bytes per chunk (every chunk but the last).
    pub chunk_bytes: u32,
    /// Relay clock at the start of the upload.
    pub created_at_ms: UnixMillis,
    /// When it is deleted (the message's expiry); `None`: kept.
    pub expires_at_ms: Option<UnixMillis>,
    /// Chunks stored, from the first one on without a gap.
    pub received_chunks: u32,
}

impl Attachment {
    /// How many chunks the whole file takes (0 for an empty one).
    pub fn chunks(&self) -> u32 {
        let per = u64::from(self.chunk_bytes.max(1));
        u32::try_from(self.size.div_ceil(per)).unwrap_or(u32::MAX)
    }

    /// Whether every chunk is stored: the attachment can be fetched.
    pub fn complete(&self) -> bool {
        self.received_chunks >= self.chunks()
    }

    /// The length chunk `index` must have; `None` past the last.
    pub fn chunk_len(&self, index: u32) -> Option<u64> {
        if index >= self.chunks() {
            return None;
        }
        let per = u64::from(self.chunk_bytes);
        let start = u64::from(index) * per;
        Some(per.min(self.size - start))
    }

    /// Whether it is expired at `now_ms`.
    pub fn expired(&self, now_ms: UnixMillis) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }
}
