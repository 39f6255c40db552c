//! The background task of an [`E2eClient`](super::E2eClient): processes
//! every delivery in conversation order (commits, Welcomes, application
//! messages) and keeps the device's key packages topped up.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use herold_mls::{MlsDevice, Processed};
use herold_proto::v1::{self, request, response};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::{
    Broken, E2eError, E2eEvent, KEY_PACKAGE_TARGET, Message, lock, now_ms, request_restart,
};
use crate::{Client, Event, Sender};

/// Tops the device's key packages up on the relay.
async fn refill_key_packages(
    sender: &Sender,
    mls: &Mutex<MlsDevice>,
    renew_last_resort: bool,
) -> Result<(), E2eError> {
    let status = match sender
        .request(request::Kind::UploadKeyPackages(
            v1::UploadKeyPackages::default(),
        ))
        .await?
    {
        response::Kind::KeyPackageStatus(s) => s,
        other => return Err(E2eError::Protocol(format!("{other:?}"))),
    };
    let target = KEY_PACKAGE_TARGET.min(status.max_available as usize);
    let missing = target.saturating_sub(status.available as usize);
    if status.last_resort && !renew_last_resort && missing < target / 2 {
        return Ok(());
    }
    let upload = {
        let mut m = lock(mls);
        v1::UploadKeyPackages {
            key_packages: m.key_packages(missing)?,
            // A new one at every start, so that it never outlives its
            // lifetime (12 weeks) on a device that is used now and then.
            last_resort: if status.last_resort && !renew_last_resort {
                Vec::new()
            } else {
                m.last_resort_key_package()?
            },
        }
    };
    sender
        .request(request::Kind::UploadKeyPackages(upload))
        .await?;
    Ok(())
}

/// Processes deliveries in order, in the background.
pub(super) struct Pump {
    /// Told when the first key-package upload is done.
    pub ready: Option<tokio::sync::oneshot::Sender<Result<(), E2eError>>>,
    pub client: Client,
    pub device_id: String,
    /// Events read while a request was awaiting its answer.
    pub backlog: VecDeque<Event>,
    pub sender: Sender,
    pub mls: Arc<Mutex<MlsDevice>>,
    pub events: mpsc::UnboundedSender<E2eEvent>,
    pub progress: watch::Sender<u64>,
    /// Per conversation without a group: the highest seq for which the
    /// relay had no Welcome for us (asked again at the next commit).
    pub welcome_checked: HashMap<String, u64>,
    /// Groups this device failed a commit or Welcome of (shared with the
    /// sending side, which asks for a restart before it sends).
    pub broken: Broken,
    /// Per direct conversation: the account of each device, from
    /// `MlsState.roster_accounts` (sealed sender).
    pub accounts: HashMap<String, HashMap<String, String>>,
    /// Per large channel: posts that came before their sender key.
    pub waiting: super::channel::Waiting,
    /// Whether to hand out checkpoints (app acks on an image).
    pub checkpoints: bool,
    /// Per conversation, the last position processed.
    pub processed: HashMap<String, u64>,
    /// The positions of the last checkpoint handed out.
    pub checkpointed: Option<HashMap<String, u64>>,
    /// Envelopes processed since then.
    pub unkept: usize,
    /// Sends asking for a checkpoint to be kept before they go out: told
    /// its id.
    pub asks: mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<u64>>,
    /// The id of the last checkpoint handed out.
    pub next_checkpoint: u64,
}

/// Envelopes after which a checkpoint is handed out even while more are
/// waiting (a long sync is acknowledged as it goes).
const CHECKPOINT_EVERY: usize = 256;

impl Pump {
    pub(super) async fn run(mut self) {
        // First thing: key packages, so that others can add this device. In
        // the background task, which keeps reading deliveries meanwhile: a
        // long sync would otherwise fill the connection's queue and hold
        // back the answer.
        let (sender, mls) = (self.sender.clone(), self.mls.clone());
        let r = self
            .draining(async move { refill_key_packages(&sender, &mls, true).await })
            .await;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(r);
        }
        // The key packages' private keys are state to keep.
        if self.checkpoint(true).is_none() {
            return;
        }
        loop {
            // Between two deliveries the state is whole: sends waiting to
            // go out get their checkpoint.
            while let Ok(reply) = self.asks.try_recv() {
                let Some(id) = self.checkpoint(true) else {
                    return;
                };
                let _ = reply.send(id);
            }
            let ev = match self.backlog.pop_front() {
                Some(ev) => ev,
                None => tokio::select! {
                    ev = self.client.next_event() => match ev {
                        Some(ev) => ev,
                        None => return,
                    },
                    Some(reply) = self.asks.recv() => {
                        let Some(id) = self.checkpoint(true) else {
                            return;
                        };
                        let _ = reply.send(id);
                        continue;
                    }
                },
            };
            let mut changed = false;
            let out = match ev {
                Event::Message(env) => {
                    let (conv, seq) = (env.conversation_id.clone(), env.seq);
                    let out = self.on_envelope(env).await;
                    let p = self.processed.entry(conv).or_insert(0);
                    *p = (*p).max(seq);
                    self.unkept += 1;
                    out
                }
                Event::Synced { .. } => {
                    let mut out = self.give_up_waiting();
                    out.push(E2eEvent::Synced);
                    out
                }
                Event::Disconnected { reason } => vec![E2eEvent::Disconnected { reason }],
                Event::Reconnected => {
                    let (sender, mls) = (self.sender.clone(), self.mls.clone());
                    let r = self
                        .draining(async move { refill_key_packages(&sender, &mls, false).await })
                        .await;
                    if let Err(e) = r {
                        warn!(error = %e, "refilling key packages failed");
                    }
                    changed = true;
                    Vec::new()
                }
                Event::Stopped(e) => vec![E2eEvent::Stopped(e)],
            };
            self.progress.send_modify(|p| *p += 1);
            for e in out {
                if self.events.send(e).is_err() {
                    return;
                }
            }
            // Once nothing else is waiting to be processed: what the app
            // has now is a state to keep.
            let idle = self.backlog.is_empty() && !self.client.has_events();
            if (idle || self.unkept >= CHECKPOINT_EVERY) && self.checkpoint(changed).is_none() {
                return;
            }
        }
    }

    /// Hands out a checkpoint when the positions moved (or `force`): its
    /// id, 0 when none was needed; `None` once the app is gone.
    fn checkpoint(&mut self, force: bool) -> Option<u64> {
        if !self.checkpoints {
            return Some(0);
        }
        // A post waiting for its sender key is not processed yet (it is
        // held here, not in the state): the positions stay below it.
        let mut positions = self.processed.clone();
        for queue in self.waiting.values() {
            for (post, _) in queue {
                if let Some(p) = positions.get_mut(&post.conversation_id) {
                    *p = (*p).min(post.seq.saturating_sub(1));
                }
            }
        }
        if !force && self.checkpointed.as_ref() == Some(&positions) {
            return Some(0);
        }
        let Some(mls_image) = super::lock(&self.mls).image() else {
            return Some(0);
        };
        self.checkpointed = Some(positions.clone());
        self.unkept = 0;
        self.next_checkpoint += 1;
        let id = self.next_checkpoint;
        self.events
            .send(E2eEvent::Checkpoint(super::Checkpoint {
                id,
                mls_image,
                positions,
            }))
            .ok()
            .map(|()| id)
    }

    /// The account of `device` in the direct conversation `conv`, for a
    /// message whose envelope names no sender; asks the relay for the
    /// roster when the device is not known yet. Empty when the relay does
    /// not say (the device left since).
    async fn account_of(&mut self, conv: &str, device: &str) -> String {
        if let Some(a) = self.accounts.get(conv).and_then(|m| m.get(device)) {
            return a.clone();
        }
        let sender = self.sender.clone();
        let c = conv.to_owned();
        let asked = self
            .draining(async move {
                sender
                    .request(request::Kind::GetMlsState(v1::GetMlsState {
                        conversation_id: c,
                    }))
                    .await
            })
            .await;
        match asked {
            Ok(response::Kind::MlsState(st)) => {
                let known = self.accounts.entry(conv.to_owned()).or_default();
                // An empty account (a device the relay's roster cache does
                // not know yet) is asked again next time.
                known.extend(
                    st.roster
                        .into_iter()
                        .zip(st.roster_accounts)
                        .filter(|(_, a)| !a.is_empty()),
                );
                known.get(device).cloned().unwrap_or_default()
            }
            Ok(other) => {
                warn!(conversation = conv, "unexpected answer {other:?}");
                String::new()
            }
            Err(e) => {
                warn!(conversation = conv, error = %e, "looking up the sender's account failed");
                String::new()
            }
        }
    }

    /// Awaits `fut` (a request to the relay) while still reading events
    /// into the backlog: the connection's event queue is bounded, and a full
    /// queue would hold back the very answer awaited here.
    async fn draining<T>(&mut self, fut: impl Future<Output = T>) -> T {
        tokio::pin!(fut);
        let mut open = true;
        loop {
            tokio::select! {
                r = &mut fut => return r,
                ev = self.client.next_event(), if open => match ev {
                    Some(ev) => self.backlog.push_back(ev),
                    None => open = false,
                },
            }
        }
    }

    async fn on_envelope(&mut self, env: v1::Envelope) -> Vec<E2eEvent> {
        if herold_mls::is_channel_post(&env.ciphertext) {
            return self.on_post(env);
        }
        let conv = env.conversation_id.clone();
        let unreadable = |reason: String| E2eEvent::Unreadable {
            conversation_id: env.conversation_id.clone(),
            seq: env.seq,
            reason,
        };
        let (header, generation) = match herold_mls::inspect(&env.ciphertext) {
            Ok(h) => match herold_mls::group_generation(&conv, &h.group_id) {
                Some(g) => (h, g),
                None => return vec![unreadable("an MLS message of another group".into())],
            },
            Err(_) => return vec![unreadable("not end-to-end encrypted with MLS".into())],
        };
        let gid = header.group_id.clone();
        let mut out = Vec::new();
        let is_commit = matches!(header.kind, herold_mls::ContentKind::Commit);
        if is_commit && generation > 0 {
            // A commit of a restarted group: everything of the older ones
            // came before it, in order, so they can go.
            out.extend(self.leave_older_generations(&conv, generation));
        }
        let local = lock(&self.mls).epoch(&gid);
        let mut own = is_commit && env.sender_device_id == self.device_id;
        // With sealed sender the relay names no sender: only processing
        // tells whether a commit is this device's own.
        let mut tried = None;
        if is_commit && env.sender_device_id.is_empty() && local.is_some() {
            let r = lock(&self.mls).process_declared(&gid, &env.ciphertext, &env.welcomed_devices);
            match r {
                Ok(Processed::OwnCommit { .. }) => own = true,
                // Our group at epoch 0 was only a proposal, and this is
                // another device's first commit: we join from its Welcome.
                _ if local == Some(0) => {}
                r => tried = Some(r),
            }
        }
        if own {
            // Our own commit, back from the relay: proof that it was taken.
            // Merge it if the sender has not yet (or crashed before it could).
            if local == Some(header.epoch) {
                let merged = lock(&self.mls).confirm_commit(&gid);
                if let Err(e) = merged
                    && !matches!(e, herold_mls::MlsError::NoPendingCommit { .. })
                {
                    warn!(conversation = conv, error = %e, "merging our own commit failed");
                }
            }
            out.push(unreadable("this device's own commit".into()));
            return out;
        }
        // A group still at epoch 0 is only a proposal of ours: another
        // device's first commit wins over it, and we join from its Welcome.
        let has_group = local.is_some_and(|e| e > 0);
        if !has_group {
            // Only a commit can add us; ask for a Welcome then.
            let checked = self.welcome_checked.get(&conv).copied();
            if !is_commit || checked.is_some_and(|c| c >= env.seq) {
                out.push(unreadable(
                    "sent before this device joined the group".into(),
                ));
                return out;
            }
            let mut fetched = Err(E2eError::Protocol("not asked".into()));
            for _ in 0..3 {
                let sender = self.sender.clone();
                let c = conv.clone();
                fetched = self
                    .draining(async move { fetch_welcome(&sender, &c).await })
                    .await;
                if fetched.is_ok() {
                    break;
                }
            }
            match fetched {
                Ok(Some((seq, welcome))) if seq >= env.seq => {
                    if seq > env.seq {
                        self.welcome_checked.insert(conv.clone(), seq - 1);
                        out.push(unreadable(
                            "sent before this device joined the group".into(),
                        ));
                        return out;
                    }
                    let joined = lock(&self.mls).join_group(&gid, &welcome);
                    match joined {
                        Ok(()) => {
                            self.welcome_checked.remove(&conv);
                            let epoch = lock(&self.mls).epoch(&gid).unwrap_or(0);
                            // The Welcome used up one of our key packages.
                            let (sender, mls) = (self.sender.clone(), self.mls.clone());
                            let r = self
                                .draining(
                                    async move { refill_key_packages(&sender, &mls, false).await },
                                )
                                .await;
                            if let Err(e) = r {
                                warn!(error = %e, "refilling key packages failed");
                            }
                            out.push(E2eEvent::Joined {
                                conversation_id: conv,
                                seq: env.seq,
                                epoch,
                            });
                            return out;
                        }
                        Err(e) => {
                            out.push(unreadable(format!("the Welcome failed: {e}")));
                            if breaks_group(&e) {
                                // Addressed to us and unusable: we can
                                // never join this group.
                                self.broke(&conv, &gid, generation, header.epoch).await;
                            }
                            return out;
                        }
                    }
                }
                Ok(_) => {
                    self.welcome_checked.insert(conv.clone(), env.seq);
                    out.push(unreadable(
                        "sent before this device joined the group".into(),
                    ));
                    return out;
                }
                Err(e) => {
                    out.push(unreadable(format!("fetching the Welcome failed: {e}")));
                    return out;
                }
            }
        }
        // A commit may add only the devices the relay checked against the
        // roster (its Welcome's); anything else breaks the group for us.
        let processed = match tried {
            Some(r) => r,
            None => lock(&self.mls).process_declared(&gid, &env.ciphertext, &env.welcomed_devices),
        };
        match processed {
            Ok(Processed::Application {
                plaintext, sender, ..
            }) if herold_proto::ids::sub_group_of(&conv).is_some() => {
                // A sub-group of a large channel carries sender keys only.
                let channel = herold_proto::ids::sub_group_of(&conv).map_or("", |(c, _)| c);
                out.extend(self.on_sender_key(&gid, &env, channel, &sender, &plaintext));
            }
            Ok(Processed::Application {
                plaintext,
                aad,
                sender,
                ..
            }) => {
                let expires_at_ms = herold_mls::decode_aad(&aad).unwrap_or(0);
                if expires_at_ms != 0 && expires_at_ms <= now_ms() {
                    out.push(unreadable("expired".into()));
                } else {
                    let sender_account_id = if env.sender_account_id.is_empty() {
                        // Sealed sender: the account of the device the MLS
                        // credential names, as the relay's roster says.
                        self.account_of(&conv, &sender).await
                    } else {
                        env.sender_account_id
                    };
                    out.push(E2eEvent::Message(Message {
                        conversation_id: conv,
                        seq: env.seq,
                        sender_account_id,
                        sender_device_id: sender,
                        server_time_ms: env.server_time_ms,
                        expires_at_ms,
                        plaintext,
                    }));
                }
            }
            Ok(Processed::Commit {
                epoch,
                added,
                removed,
                removed_me,
            }) => {
                if removed_me {
                    out.push(E2eEvent::Removed {
                        conversation_id: conv,
                        seq: env.seq,
                    });
                } else {
                    let title = lock(&self.mls).title(&gid);
                    out.push(E2eEvent::GroupChanged {
                        conversation_id: conv,
                        seq: env.seq,
                        epoch,
                        added,
                        removed,
                        title,
                    });
                }
            }
            Ok(Processed::Skipped { reason }) => out.push(unreadable(reason)),
            // Told apart above; a commit of ours can only come back here if
            // its envelope named another device.
            Ok(Processed::OwnCommit { .. }) => {
                out.push(unreadable("this device's own commit".into()));
            }
            Err(e) if is_commit && breaks_group(&e) => {
                // The relay accepted it, so the group moved on without us.
                out.push(unreadable(format!("cannot process the commit: {e}")));
                self.broke(&conv, &gid, generation, header.epoch).await;
            }
            Err(e) => out.push(unreadable(format!("cannot decrypt: {e}"))),
        }
        out
    }

    /// This device failed the commit (or its Welcome) from `epoch` of the
    /// group `gid`: the group is broken here. Marks it for the sending side
    /// and asks the relay for a restart at the epoch the commit led to.
    /// Another member may have asked first, or the group moved on (then
    /// the next commit fails here too and asks again); a refused request
    /// is retried by the next send.
    async fn broke(&mut self, conv: &str, gid: &[u8], generation: u64, epoch: u64) {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(gid.to_vec());
        let (sender, conv_owned) = (self.sender.clone(), conv.to_owned());
        let broken_at = epoch.saturating_add(1);
        let r = self
            .draining(
                async move { request_restart(&sender, &conv_owned, generation, broken_at).await },
            )
            .await;
        if let Err(e) = r {
            debug!(conversation = conv, error = %e, "restart not done by this device");
        }
    }

    /// Forgets this device's groups of `conv` older than `generation`;
    /// [`E2eEvent::Restarted`] if there was one.
    fn leave_older_generations(&mut self, conv: &str, generation: u64) -> Option<E2eEvent> {
        let mut m = lock(&self.mls);
        let older: Vec<Vec<u8>> = m
            .group_ids()
            .into_iter()
            .filter(|id| herold_mls::group_generation(conv, id).is_some_and(|g| g < generation))
            .collect();
        if older.is_empty() {
            return None;
        }
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        for id in &older {
            broken.remove(id);
            if let Err(e) = m.forget_group(id) {
                warn!(conversation = conv, error = %e, "forgetting a restarted group failed");
            }
        }
        Some(E2eEvent::Restarted {
            conversation_id: conv.to_owned(),
            generation,
        })
    }
}

/// Whether failing a commit or Welcome with `e` means the group cannot go
/// on for this device. A failure of this device's own storage does not: a
/// restart would cost every member of the conversation for one device's
/// full disk.
fn breaks_group(e: &herold_mls::MlsError) -> bool {
    use herold_mls::MlsError as E;
    !matches!(
        e,
        E::Io { .. } | E::StoragePoisoned | E::CorruptState { .. } | E::GroupExists { .. }
    )
}

/// The latest Welcome the relay holds for this device in `conv`.
async fn fetch_welcome(sender: &Sender, conv: &str) -> Result<Option<(u64, Vec<u8>)>, E2eError> {
    {
        match sender
            .request(request::Kind::FetchWelcome(v1::FetchWelcome {
                conversation_id: conv.to_owned(),
            }))
            .await?
        {
            response::Kind::Welcome(w) if w.welcome.is_empty() => Ok(None),
            response::Kind::Welcome(w) => Ok(Some((w.seq, w.welcome))),
            other => Err(E2eError::Protocol(format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::breaks_group;
    use herold_mls::MlsError;

    #[test]
    fn only_a_failure_of_the_message_breaks_a_group() {
        assert!(breaks_group(&MlsError::FutureEpoch {
            group: "g".into(),
            message_epoch: 3,
            current: 1,
        }));
        assert!(breaks_group(&MlsError::WelcomeNotForMe));
        assert!(breaks_group(&MlsError::Malformed("truncated".into())));
        assert!(!breaks_group(&MlsError::StoragePoisoned));
        assert!(!breaks_group(&MlsError::Io {
            path: "state".into(),
            source: std::io::Error::other("disk full"),
        }));
        assert!(!breaks_group(&MlsError::GroupExists {
            group: "g".into(),
            epoch: 4,
        }));
    }
}
