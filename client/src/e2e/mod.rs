//! End-to-end encryption with MLS (RFC 9420), transparent to the app.
//!
//! [`E2eClient`] wraps a [`Client`]: the app sends and receives plaintext,
//! the relay and its store only ever see MLS ciphertext. Every conversation
//! is one MLS group (group id = conversation id). The relay orders each
//! group's commits (one per epoch) and says who should be in the group;
//! the client keeps the group in line with it:
//!
//! - On connect the device uploads key packages (and a last-resort one) so
//!   that others can add it, and refills them when they run low.
//! - Before sending, the client brings the group up to date: it creates the
//!   group if there is none, adds the devices the relay lists and removes
//!   those it no longer lists, in one commit. If another member's commit won
//!   the epoch, the client processes it and tries again.
//! - A background task processes every delivery in conversation order:
//!   commits advance the group, Welcomes add this device to groups, and
//!   application messages come out as plaintext [`Message`]s.
//! - A group that cannot go on is restarted: when this device cannot
//!   process a commit (or the Welcome) that the relay accepted, a member
//!   sent something no one can use, and waiting would wait forever. The
//!   device asks the relay for a new generation of the group (its own MLS
//!   group id); the next member to send creates it with everyone on the
//!   roster, exactly as for a new conversation, and the others join from
//!   its Welcome ([`E2eEvent::Restarted`]).
//! - Expiry travels in the authenticated data of each message: the relay
//!   checks it matches the envelope, and the client never surfaces an expired
//!   message (a message store of the app removes them with
//!   [`Message::is_expired`]).
//!
//! The MLS state (keys, groups) lives in a [`herold_mls::MlsDevice`]; give
//! it a file to keep it across restarts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use web_time::{SystemTime, UNIX_EPOCH};

use herold_mls::{MlsDevice, Processed};
use herold_proto::v1::{self, ErrorCode, request, response};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

mod channel;
mod events;
mod files;
mod names;
mod pump;
mod renew;

use crate::{Accepted, Client, ClientConfig, ClientError, Sender, new_message_id};
pub use channel::{KEY_WAIT, MAX_WAITING_POSTS, SUB_GROUP_CHECK_INTERVAL};
pub use events::{Checkpoint, E2eEvent, Message};
use pump::Pump;
use renew::{OwnChange, Renewal};

/// One-time key packages a device keeps on the relay.
pub const KEY_PACKAGE_TARGET: usize = 20;
/// How long [`E2eClient::send`] waits for the group to catch up (a commit
/// to arrive, a Welcome to be processed) before it gives up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a device renews its own leaf key in each group it sends to
/// (a self-update commit before a send once this much time has passed):
/// post-compromise security does not wait for other members' commits.
/// [`E2eClient::set_key_renewal_interval`] changes it.
pub const KEY_RENEWAL_INTERVAL: Duration = Duration::from_secs(3 * 24 * 3600);
/// Attempts of [`E2eClient::send`] when commits keep racing.
const SEND_ATTEMPTS: usize = 12;

/// Errors of the end-to-end layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum E2eError {
    /// The connection or the relay failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The MLS layer failed.
    #[error("MLS: {0}")]
    Mls(String),
    /// This device is not in the conversation's group yet, and no member
    /// has added it within the wait.
    #[error("this device is not in the group of {0:?} yet: a member must add it first")]
    NotInGroup(String),
    /// The relay answered something unexpected.
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
    /// A member that is not a publisher tried to post in a large channel
    /// (it is in one sub-group only, and only publishers post).
    #[error("only publishers post in the channel {0:?}")]
    NotPublisher(String),
    /// Commits kept racing; try again later.
    #[error("the group of {0:?} kept changing; try again")]
    Contended(String),
    /// A file could not be encrypted or decrypted, or is not the one its
    /// message describes.
    #[error("file: {0}")]
    File(String),
    /// The app did not keep the state a send moved on from in time
    /// ([`E2eEvent::Checkpoint`]): the message did not go out.
    #[error("the device's state was not kept within {0} s; nothing was sent")]
    NotKept(u64),
}

impl From<herold_mls::MlsError> for E2eError {
    fn from(e: herold_mls::MlsError) -> Self {
        E2eError::Mls(e.to_string())
    }
}

/// A commit prepared by [`E2eClient::prepare_membership_commit`].
#[derive(Debug, Clone)]
pub struct PreparedCommit {
    /// Conversation.
    pub conversation_id: String,
    /// The MLS group id (see [`herold_mls::group_id`]).
    group_id: Vec<u8>,
    /// The epoch the commit starts from.
    pub from_epoch: u64,
    /// Devices it adds.
    pub added: Vec<String>,
    /// Devices it removes.
    pub removed: Vec<String>,
    submit: v1::Submit,
}

/// A device's end-to-end encrypted connection. See the module docs.
#[derive(Debug)]
pub struct E2eClient {
    sender: Sender,
    mls: Arc<Mutex<MlsDevice>>,
    events: mpsc::UnboundedReceiver<E2eEvent>,
    /// Bumped after every processed delivery: senders wait on it to catch up.
    progress: watch::Receiver<u64>,
    account_id: String,
    device_id: String,
    pump: crate::rt::Task,
    /// One send at a time per conversation: two commits prepared at once by
    /// one device would collide in its own MLS state.
    conv_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Groups (by MLS group id) this device cannot go on in: it failed to
    /// process a commit or Welcome of theirs. Filled by the background task.
    broken: Broken,
    /// [`KEY_RENEWAL_INTERVAL`], or what the app set.
    key_renewal: Duration,
    /// Per conversation asked: its sub-group conversations (empty: not a
    /// large channel).
    large: Mutex<HashMap<String, Arc<[String]>>>,
    /// Per large channel: where this device's sender key went out.
    handed: Mutex<HashMap<String, channel::Handed>>,
    /// With checkpoints: how a send gets its state kept first.
    keeping: Option<Keeping>,
}

/// How a send has the state it moved on from kept before its ciphertext
/// leaves (checkpoints only): it asks the background task for a
/// checkpoint, then waits until the app has kept that one or a later one.
#[derive(Debug)]
struct Keeping {
    ask: mpsc::UnboundedSender<tokio::sync::oneshot::Sender<u64>>,
    /// The id of the newest checkpoint the app has kept.
    kept: watch::Sender<u64>,
}

/// How long a send waits for the app to keep its state.
const KEEP_TIMEOUT: Duration = Duration::from_secs(30);

/// MLS group ids of groups that are broken on this device.
pub(super) type Broken = Arc<Mutex<HashSet<Vec<u8>>>>;

/// The MLS group id of the newest generation of `conv` this device has;
/// the conversation id itself when it has none.
fn newest_group(mls: &MlsDevice, conv: &str) -> Vec<u8> {
    mls.group_ids()
        .into_iter()
        .filter_map(|id| herold_mls::group_generation(conv, &id).map(|g| (g, id)))
        .max_by_key(|(g, _)| *g)
        .map_or_else(|| conv.as_bytes().to_vec(), |(_, id)| id)
}

fn lock(m: &Mutex<MlsDevice>) -> MutexGuard<'_, MlsDevice> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl E2eClient {
    /// Connects, uploads key packages as needed and starts processing
    /// deliveries. `mls` must belong to `config.device_id`.
    pub async fn connect(config: ClientConfig, mls: MlsDevice) -> Result<Self, E2eError> {
        if mls.device_id() != config.device_id {
            return Err(E2eError::Mls(format!(
                "the MLS state belongs to device {:?}, not {:?}",
                mls.device_id(),
                config.device_id
            )));
        }
        let device_id = config.device_id.clone();
        // Checkpoints for an app that acknowledges itself and keeps the
        // state as an image (a file-backed state is kept as it changes).
        let checkpoints = config.app_acks && mls.image().is_some();
        let positions = config.cursors.clone();
        let client = Client::connect(config).await?;
        let sender = client.sender();
        let account_id = client.account_id().to_owned();
        let mls = Arc::new(Mutex::new(mls));
        // Unbounded: the background task must never stall on a slow app,
        // or a sender waiting for its group to catch up would wait forever.
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = watch::channel(0u64);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let broken = Broken::default();
        let (ask, asks) = mpsc::unbounded_channel();
        let keeping = checkpoints.then(|| Keeping {
            ask,
            kept: watch::Sender::new(0),
        });
        let pump = Pump {
            asks,
            next_checkpoint: 0,
            broken: broken.clone(),
            ready: Some(ready_tx),
            client,
            device_id: device_id.clone(),
            backlog: VecDeque::new(),
            sender: sender.clone(),
            mls: mls.clone(),
            events: ev_tx,
            progress: progress_tx,
            welcome_checked: HashMap::new(),
            accounts: HashMap::new(),
            waiting: HashMap::new(),
            checkpoints,
            processed: positions,
            checkpointed: None,
            unkept: 0,
        };
        let pump = crate::rt::spawn(pump.run());
        // Connected once the key packages are up: the device can be added
        // to groups from then on.
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                pump.abort();
                return Err(e);
            }
            Err(_) => return Err(E2eError::Client(ClientError::Shutdown)),
        }
        Ok(Self {
            sender,
            mls,
            events: ev_rx,
            progress: progress_rx,
            account_id,
            device_id,
            pump,
            conv_locks: Mutex::new(HashMap::new()),
            broken,
            key_renewal: KEY_RENEWAL_INTERVAL,
            large: Mutex::new(HashMap::new()),
            handed: Mutex::new(HashMap::new()),
            keeping,
        })
    }

    /// With checkpoints: has the app keep the state as it is now (after
    /// an encryption moved a ratchet on, before the ciphertext leaves), so
    /// that a page closed after the send never comes back to an older
    /// ratchet step. Without: nothing to do (a state file is written as it
    /// changes).
    pub(super) async fn keep_before_sending(&self) -> Result<(), E2eError> {
        let Some(k) = &self.keeping else {
            return Ok(());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        k.ask
            .send(tx)
            .map_err(|_| E2eError::Client(ClientError::Shutdown))?;
        let id = rx
            .await
            .map_err(|_| E2eError::Client(ClientError::Shutdown))?;
        let mut kept = k.kept.subscribe();
        match crate::rt::timeout(KEEP_TIMEOUT, kept.wait_for(|k| *k >= id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(E2eError::Client(ClientError::Shutdown)),
            Err(_) => Err(E2eError::NotKept(KEEP_TIMEOUT.as_secs())),
        }
    }

    fn conv_lock(&self, conv: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.conv_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(conv.to_owned())
            .or_default()
            .clone()
    }

    /// The transport of the connection of the moment (QUIC, or the TCP
    /// fallback); `None` while reconnecting.
    pub fn transport(&self) -> Option<crate::raw::Transport> {
        self.sender.transport()
    }

    /// Acknowledges the positions of `checkpoint`, once the app has kept
    /// it ([`E2eEvent::Checkpoint`]).
    pub async fn ack_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), E2eError> {
        for (conversation, seq) in &checkpoint.positions {
            self.sender.ack(conversation, *seq).await?;
        }
        if let Some(k) = &self.keeping {
            k.kept
                .send_modify(|kept| *kept = (*kept).max(checkpoint.id));
        }
        Ok(())
    }

    /// A one-time enrollment code for another device of this account
    /// ([`crate::Sender::issue_link_code`]).
    pub async fn issue_link_code(&self) -> Result<v1::LinkCode, E2eError> {
        Ok(self.sender.issue_link_code().await?)
    }

    /// The device's account.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The device's id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The next event; `None` after the client stopped.
    pub async fn next_event(&mut self) -> Option<E2eEvent> {
        self.events.recv().await
    }

    /// The next decrypted message, skipping other events.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.events.recv().await? {
                E2eEvent::Message(m) => return Some(m),
                E2eEvent::Stopped(_) => return None,
                _ => {}
            }
        }
    }

    /// The group's epoch on this device, if it is in the group (the newest
    /// generation of it this device has).
    pub fn epoch(&self, conversation_id: &str) -> Option<u64> {
        let m = lock(&self.mls);
        m.epoch(&newest_group(&m, conversation_id))
    }

    /// The devices in the conversation's group, as this device sees it.
    pub fn group_members(&self, conversation_id: &str) -> Vec<String> {
        let m = lock(&self.mls);
        m.members(&newest_group(&m, conversation_id))
    }

    /// The generation of the conversation's group on this device: how often
    /// it was restarted (see the module docs).
    pub fn generation(&self, conversation_id: &str) -> u64 {
        let m = lock(&self.mls);
        herold_mls::group_generation(conversation_id, &newest_group(&m, conversation_id))
            .unwrap_or(0)
    }

    /// Encrypts `plaintext` for the conversation's group and sends it;
    /// brings the group up to date first (see the module docs). In a
    /// large channel, one post encrypted with this device's sender key
    /// (`channel.rs`). `expires_at_ms` 0: no expiry.
    pub async fn send(
        &self,
        conversation_id: &str,
        plaintext: &[u8],
        expires_at_ms: i64,
    ) -> Result<Accepted, E2eError> {
        let conv = conversation_id;
        if let Some(subs) = self.sub_groups(conv).await? {
            return self.send_post(conv, &subs, plaintext, expires_at_ms).await;
        }
        let conv_lock = self.conv_lock(conv);
        let _one_at_a_time = conv_lock.lock().await;
        let mut message_id = new_message_id()?;
        for _ in 0..SEND_ATTEMPTS {
            let gid = self.up_to_date(conv).await?;
            let ciphertext = {
                let mut m = lock(&self.mls);
                m.encrypt(&gid, plaintext, &herold_mls::encode_aad(expires_at_ms))?
            };
            let submit = v1::Submit {
                message_id: message_id.to_vec(),
                conversation_id: conv.to_owned(),
                expires_at_ms,
                ciphertext,
                mls: true,
                ..Default::default()
            };
            self.keep_before_sending().await?;
            match self.sender.submit(submit).await {
                Ok(a) => return Ok(a),
                Err(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::MlsWrongEpoch | ErrorCode::MlsMembershipPending)
                    ) =>
                {
                    debug!(conversation = conv, error = %e, "group moved on; again");
                    // A new id: the refused attempt is not stored.
                    message_id = new_message_id()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(E2eError::Contended(conv.to_owned()))
    }

    /// Makes the local group match the relay: same generation and epoch,
    /// same devices as the roster. Commits when something must change, and
    /// asks for a restart when the group is broken on this device.
    /// In a large channel: the group of every sub-group.
    pub async fn bring_up_to_date(&self, conv: &str) -> Result<(), E2eError> {
        if let Some(subs) = self.sub_groups(conv).await? {
            return self.sub_groups_up_to_date(&subs).await.map(|_| ());
        }
        self.up_to_date(conv).await.map(|_| ())
    }

    /// [`E2eClient::bring_up_to_date`]; the MLS group id it brought up to
    /// date.
    async fn up_to_date(&self, conv: &str) -> Result<Vec<u8>, E2eError> {
        for _ in 0..SEND_ATTEMPTS {
            let st = self.mls_state(conv).await?;
            let gid = herold_mls::group_id(conv, st.generation);
            if st.epoch > 0 && self.is_broken(&gid) {
                // Waiting cannot help: this device will never get past the
                // commit it failed on. Another member may restart first.
                self.restart(conv, st.generation, st.epoch).await?;
                continue;
            }
            let local = lock(&self.mls).epoch(&gid);
            match local {
                None if st.epoch == 0 => {
                    // Nobody made the group yet: this device does.
                    lock(&self.mls).create_group(&gid)?;
                    if self.commit_roster(conv, &gid, &st).await? {
                        return Ok(gid);
                    }
                    // Another device created it first: its Welcome adds us.
                    self.wait_for(&gid, |e| e.is_some()).await;
                }
                None => {
                    if !self.wait_for(&gid, |e| e.is_some()).await {
                        return Err(E2eError::NotInGroup(conv.to_owned()));
                    }
                }
                Some(e) if e < st.epoch => {
                    let target = st.epoch;
                    if !self
                        .wait_for(&gid, |e| e.is_some_and(|e| e >= target))
                        .await
                    {
                        return Err(E2eError::Contended(conv.to_owned()));
                    }
                }
                Some(_) if st.group_roster_version < st.roster_version => {
                    if self.commit_roster(conv, &gid, &st).await? {
                        return Ok(gid);
                    }
                }
                Some(_) if self.renewal_due(&gid) => {
                    match self.renew(conv, &gid, &st, OwnChange::Renew).await? {
                        Renewal::Done | Renewal::Refused => return Ok(gid),
                        Renewal::Lost => {}
                    }
                }
                Some(_) => return Ok(gid),
            }
        }
        Err(E2eError::Contended(conv.to_owned()))
    }

    fn is_broken(&self, gid: &[u8]) -> bool {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(gid)
    }

    /// Asks the relay to restart the group of `generation`, broken at
    /// `epoch`. Ok also when another member's request came first (the
    /// caller reads the state again); a rate-limited restart is the caller's
    /// error.
    async fn restart(&self, conv: &str, generation: u64, epoch: u64) -> Result<(), E2eError> {
        match request_restart(&self.sender, conv, generation, epoch).await {
            Ok(()) => Ok(()),
            Err(E2eError::Client(e)) if e.code() == Some(ErrorCode::MlsWrongEpoch) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn mls_state(&self, conv: &str) -> Result<v1::MlsState, E2eError> {
        match self
            .sender
            .request(request::Kind::GetMlsState(v1::GetMlsState {
                conversation_id: conv.to_owned(),
            }))
            .await?
        {
            response::Kind::MlsState(s) => Ok(s),
            other => Err(E2eError::Protocol(format!("{other:?}"))),
        }
    }

    /// Commits the difference between the group `gid` and the roster of
    /// `st`. Ok(true): the group now matches; Ok(false): another commit won.
    async fn commit_roster(
        &self,
        conv: &str,
        gid: &[u8],
        st: &v1::MlsState,
    ) -> Result<bool, E2eError> {
        let prepared = match self.prepare(conv, gid, st).await {
            // Another member's commit brought the group up to date while
            // this one claimed its key packages.
            Err(E2eError::Client(e)) if e.code() == Some(ErrorCode::MlsWrongEpoch) => {
                return Ok(false);
            }
            r => r?,
        };
        match prepared {
            Some(p) => self.submit_membership_commit(p).await,
            None => match self
                .sender
                .request(request::Kind::MarkReconciled(v1::MarkReconciled {
                    conversation_id: conv.to_owned(),
                    generation: st.generation,
                    epoch: st.epoch,
                    roster_version: st.roster_version,
                }))
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some(ErrorCode::MlsWrongEpoch) => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Prepares (without sending) the commit that makes the group match the
    /// relay's roster: `None` when nothing must change. This device must be
    /// in the group at the relay's epoch. With
    /// [`E2eClient::submit_membership_commit`], this is what
    /// [`E2eClient::send`] does when the membership changed.
    pub async fn prepare_membership_commit(
        &self,
        conv: &str,
    ) -> Result<Option<PreparedCommit>, E2eError> {
        let st = self.mls_state(conv).await?;
        let gid = herold_mls::group_id(conv, st.generation);
        match lock(&self.mls).epoch(&gid) {
            Some(e) if e == st.epoch => {}
            _ => return Err(E2eError::Contended(conv.to_owned())),
        }
        self.prepare(conv, &gid, &st).await
    }

    async fn prepare(
        &self,
        conv: &str,
        gid: &[u8],
        st: &v1::MlsState,
    ) -> Result<Option<PreparedCommit>, E2eError> {
        let members: HashSet<String> = lock(&self.mls).members(gid).into_iter().collect();
        let roster: HashSet<&String> = st.roster.iter().collect();
        let to_add: Vec<String> = st
            .roster
            .iter()
            .filter(|d| !members.contains(*d))
            .cloned()
            .collect();
        let to_remove: Vec<String> = members
            .iter()
            .filter(|d| !roster.contains(d) && **d != self.device_id)
            .cloned()
            .collect();
        let local_epoch = lock(&self.mls).epoch(gid).unwrap_or(0);
        if local_epoch > 0 && local_epoch == st.epoch {
            // A commit of ours still pending at the relay's epoch was not
            // taken (the relay would be one epoch ahead): drop it.
            lock(&self.mls).discard_commit(gid)?;
        }
        if to_add.is_empty() && to_remove.is_empty() && local_epoch > 0 {
            // Already right (e.g. a device was enrolled and revoked).
            return Ok(None);
        }
        let add = if to_add.is_empty() {
            Vec::new()
        } else {
            match self
                .sender
                .request(request::Kind::ClaimKeyPackages(v1::ClaimKeyPackages {
                    conversation_id: conv.to_owned(),
                    device_ids: to_add,
                }))
                .await?
            {
                response::Kind::ClaimedKeyPackages(c) => c
                    .packages
                    .into_iter()
                    .filter(|p| !p.key_package.is_empty())
                    .map(|p| (p.device_id, p.key_package))
                    .collect(),
                other => return Err(E2eError::Protocol(format!("{other:?}"))),
            }
        };
        let pending = lock(&self.mls).commit(gid, add, to_remove)?;
        for (device, why) in &pending.rejected {
            warn!(conversation = conv, device, why, "key package rejected");
        }
        let welcome = pending.welcome.unwrap_or_default();
        let submit = v1::Submit {
            message_id: new_message_id()?.to_vec(),
            conversation_id: conv.to_owned(),
            ciphertext: pending.commit,
            mls: true,
            mls_roster_version: st.roster_version,
            mls_welcome_devices: if welcome.is_empty() {
                Vec::new()
            } else {
                pending.added.clone()
            },
            mls_welcome: welcome,
            ..Default::default()
        };
        Ok(Some(PreparedCommit {
            conversation_id: conv.to_owned(),
            group_id: gid.to_vec(),
            from_epoch: pending.from_epoch,
            added: pending.added,
            removed: pending.removed,
            submit,
        }))
    }

    /// Sends a prepared commit. Ok(true): the relay accepted it; the group
    /// moves to the next epoch when the commit comes back in the delivery
    /// stream (waited for up to [`CATCH_UP_TIMEOUT`]). Ok(false): another
    /// member's commit won this epoch, ours is discarded (process theirs,
    /// then try again).
    pub async fn submit_membership_commit(&self, p: PreparedCommit) -> Result<bool, E2eError> {
        let gid = p.group_id.as_slice();
        self.keep_before_sending().await?;
        match self.sender.submit(p.submit).await {
            Ok(_) => {
                // The background task merges it when its echo comes, after
                // everything the log holds before it: a message of the old
                // epoch sent just before the commit is read with the old
                // epoch's keys, so no device keeps past epochs (their member
                // lists would make every post of a large channel rewrite
                // megabytes of state).
                // Accepted either way: a slow echo (a long sync, a
                // reconnect) only delays the merge, and a send meanwhile
                // waits for it as for anyone's commit.
                let from = p.from_epoch;
                self.wait_for(gid, |e| e.is_some_and(|e| e > from)).await;
                Ok(true)
            }
            Err(e) if e.code() == Some(ErrorCode::MlsWrongEpoch) => {
                lock(&self.mls).discard_commit(gid)?;
                Ok(false)
            }
            // Anything else leaves the commit pending: the relay may have
            // stored it (a timeout after the write). Its echo in the
            // delivery stream merges it; otherwise the next attempt, finding
            // the relay still at this epoch, drops it.
            Err(e) => Err(e.into()),
        }
    }

    /// Decrypts a ciphertext obtained elsewhere (an exported envelope, an
    /// audit) with this device's state, without the relay. A post of a
    /// large channel comes out as an application message with its sender
    /// key epoch as the epoch.
    pub fn process_raw(
        &self,
        conversation_id: &str,
        ciphertext: &[u8],
    ) -> Result<Processed, E2eError> {
        if herold_mls::is_channel_post(ciphertext) {
            let post = lock(&self.mls).decrypt_post(conversation_id, ciphertext, &[])?;
            let post = channel::post_plaintext(post);
            return Ok(Processed::Application {
                plaintext: post.plaintext,
                aad: Vec::new(),
                sender: post.sender,
                epoch: post.epoch,
            });
        }
        let header = herold_mls::inspect(ciphertext)?;
        if herold_mls::group_generation(conversation_id, &header.group_id).is_none() {
            return Err(E2eError::Mls(format!(
                "the message belongs to another group than conversation {conversation_id:?}"
            )));
        }
        Ok(lock(&self.mls).process(&header.group_id, ciphertext)?)
    }

    /// Takes the event stream, e.g. to read it in another task while this
    /// handle sends; [`E2eClient::next_event`] returns `None` afterwards.
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<E2eEvent> {
        let (_, empty) = mpsc::unbounded_channel();
        std::mem::replace(&mut self.events, empty)
    }

    /// Waits until the local epoch of the group `gid` satisfies `ok` (or
    /// the group broke on this device), while the background task processes
    /// deliveries; false after the timeout.
    async fn wait_for(&self, gid: &[u8], ok: impl Fn(Option<u64>) -> bool) -> bool {
        let mut progress = self.progress.clone();
        let deadline = crate::rt::Instant::now() + CATCH_UP_TIMEOUT;
        let done = || ok(lock(&self.mls).epoch(gid)) || self.is_broken(gid);
        loop {
            if done() {
                return true;
            }
            match crate::rt::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                _ => return done(),
            }
        }
    }

    /// The MLS state's database image, for a device made with
    /// [`MlsDevice::create_in_image`] (a browser keeps it in IndexedDB and
    /// starts again from it after a reload); `None` otherwise.
    pub fn mls_image(&self) -> Option<Vec<u8>> {
        lock(&self.mls).image()
    }

    /// Stops processing and closes the connection.
    pub async fn close(self) {
        self.pump.abort();
    }
}

/// Asks the relay to restart the group of `generation` of `conv`, which
/// broke at `epoch` on this device.
pub(super) async fn request_restart(
    sender: &Sender,
    conv: &str,
    generation: u64,
    epoch: u64,
) -> Result<(), E2eError> {
    match sender
        .request(request::Kind::ResetMlsGroup(v1::ResetMlsGroup {
            conversation_id: conv.to_owned(),
            generation,
            epoch,
        }))
        .await?
    {
        response::Kind::MlsState(_) => Ok(()),
        other => Err(E2eError::Protocol(format!("{other:?}"))),
    }
}
