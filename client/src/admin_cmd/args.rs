//! The command line of `herold admin`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCmd {
    /// Who the admin API takes you for: operator name, role, groups.
    Whoami,
    /// Accounts.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
    /// Devices of an account.
    Devices {
        /// The account.
        account: String,
    },
    /// Register a device's public key for an account directly.
    RegisterDevice {
        /// The account.
        account: String,
        /// The device id.
        device: String,
        /// Ed25519 public key, 64 hex digits.
        public_key: String,
    },
    /// Revoke a device: it is disconnected and cannot reconnect.
    Revoke {
        /// The device.
        device: String,
    },
    /// One-time enrollment codes: issue, print, export.
    Codes {
        /// For these accounts.
        #[arg(long = "account")]
        accounts: Vec<String>,
        /// For every account with this tag (cohort).
        #[arg(long)]
        tag: Option<String>,
        /// Lifetime in hours [default: 168, a week].
        #[arg(long)]
        ttl_hours: Option<u64>,
        /// Only accounts without a device yet.
        #[arg(long)]
        only_new: bool,
        /// Write the codes as CSV.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write a printable page (HTML, one card with QR code per code).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Write one QR code PNG per code into this directory.
        #[arg(long)]
        png_dir: Option<PathBuf>,
        /// Print each code's QR code in the terminal.
        #[arg(long)]
        qr: bool,
    },
    /// Create a group: every member may post.
    Group {
        /// Conversation id.
        id: String,
        /// Member accounts.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// Owners (may also manage members).
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Title.
        #[arg(long, default_value = "")]
        title: String,
        /// Delete messages without an expiry after this many seconds.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Create an information channel: publishers post, members read.
    Channel {
        /// Conversation id.
        id: String,
        /// Accounts that may post.
        #[arg(long = "publisher", required = true)]
        publishers: Vec<String>,
        /// Accounts that read.
        #[arg(long = "member")]
        members: Vec<String>,
        /// Title.
        #[arg(long, default_value = "")]
        title: String,
        /// Split the members into this many MLS sub-groups, for a channel
        /// of thousands (docs/e2e.md, "Large channels"): a removal then
        /// costs each member kilobytes, not half a megabyte. About one per
        /// 50 members; fixed at creation. 0: one MLS group.
        #[arg(long, default_value_t = 0)]
        sub_groups: u32,
    },
    /// Create a direct conversation between two accounts.
    Direct {
        /// Conversation id.
        id: String,
        /// First account.
        a: String,
        /// Second account.
        b: String,
    },
    /// List groups, channels and direct conversations.
    Conversations {
        /// Page size.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Start after this id (a previous page's last).
        #[arg(long)]
        after: Option<String>,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
    /// Rename a group or channel.
    Rename {
        /// Conversation id.
        id: String,
        /// New title.
        title: String,
    },
    /// Archive a group or channel: members read, nobody posts.
    Archive {
        /// Conversation id.
        id: String,
    },
    /// Undo an archive.
    Unarchive {
        /// Conversation id.
        id: String,
    },
    /// Add members to a conversation (or change their role).
    AddMembers {
        /// Conversation id.
        id: String,
        /// Accounts.
        #[arg(required = true)]
        accounts: Vec<String>,
        /// Their role: member, publisher, admin or owner.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Remove members from a conversation.
    RemoveMembers {
        /// Conversation id.
        id: String,
        /// Accounts.
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Show a conversation and its members.
    Show {
        /// Conversation id.
        id: String,
    },
    /// Security policy of the organisation or of one group or channel.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Import a roster CSV (name, station, role, cohort[, account_id]):
    /// accounts, one group per polling station, channels for everyone,
    /// enrollment codes for the new accounts. Idempotent.
    Import {
        /// The roster file.
        file: PathBuf,
        /// Channels every volunteer reads (created if missing).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Prefix of the station groups' ids.
        #[arg(long, default_value = "station-")]
        group_prefix: String,
        /// Rows per call.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Lifetime of the new codes in hours [default: 168].
        #[arg(long)]
        code_ttl_hours: Option<u64>,
        /// Write the new accounts' codes as CSV.
        #[arg(long)]
        codes_csv: Option<PathBuf>,
        /// Write the new accounts' codes as a printable page.
        #[arg(long)]
        codes_html: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// The audit log, newest first; `audit verify` checks its hash chain.
    Audit {
        #[command(subcommand)]
        check: Option<AuditCmd>,
        /// Entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue from a previous page's token.
        #[arg(long)]
        page_token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Reads the whole audit log and checks its hash chains (one per
    /// relay) here, on this machine: an edited, deleted or moved entry is
    /// reported with its chain and position, and the command fails. Prints
    /// each chain's head; keep them and pass them as --expect-head next
    /// time, so that a rewrite or removal of everything after them is found
    /// too.
    Verify {
        /// A head printed by an earlier verify: `<chain>=<position>:<hash>`
        /// (repeat for several chains).
        #[arg(long)]
        expect_head: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AccountCmd {
    /// Create an account.
    Create {
        /// Account id.
        id: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Tags (cohorts).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Show an account.
    Show {
        /// Account id.
        id: String,
    },
    /// List accounts, optionally of one tag (cohort).
    List {
        /// Only this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Start after this id (a previous page's token).
        #[arg(long)]
        after: Option<String>,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
    /// Suspend an account: its devices are cut off and refused.
    Suspend {
        /// Account id.
        id: String,
    },
    /// Void every enrollment code issued so far for an account (a letter
    /// went astray); issue a new one after.
    RevokeCodes {
        /// Account id.
        id: String,
    },
    /// Reinstate a suspended account.
    Resume {
        /// Account id.
        id: String,
    },
    /// Delete an account: its devices are cut off, its data purged.
    Delete {
        /// Account id.
        id: String,
    },
    /// Delete every account of a cohort (after the election).
    DeleteCohort {
        /// The cohort tag.
        tag: String,
        /// Only count.
        #[arg(long)]
        dry_run: bool,
        /// Really delete (required unless --dry-run).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Show what is set and what is enforced.
    Show {
        /// A group or channel (default: the organisation).
        #[arg(long)]
        conversation: Option<String>,
    },
    /// Set (replace) the policy; unset values inherit.
    Set {
        /// A group or channel (default: the organisation).
        #[arg(long)]
        conversation: Option<String>,
        /// Expiry of messages sent without one, seconds.
        #[arg(long)]
        default_expiry: Option<u64>,
        /// Longest expiry a message may ask for, seconds.
        #[arg(long)]
        max_expiry: Option<u64>,
        /// Devices per account (organisation only).
        #[arg(long)]
        max_devices: Option<u32>,
        /// Largest file (its ciphertext) a device may send, and largest
        /// message ciphertext, bytes; at most the relay's --max-attachment-bytes.
        #[arg(long)]
        max_attachment_bytes: Option<u64>,
        /// Who may start 1:1 chats: everyone, shared-group, nobody
        /// (organisation only).
        #[arg(long)]
        direct_chats: Option<String>,
        /// Sealed sender: true stores no sender for 1:1 messages
        /// (organisation only).
        #[arg(long)]
        sealed_sender: Option<bool>,
    },
}
