//! Large channels (docs/e2e.md, "Large channels"): a channel the relay
//! split into sub-groups (`MlsState.sub_conversations`). A publisher device
//! keeps an MLS group in every sub-group, hands its sender key out there as
//! an MLS application message, and posts to the channel itself once per
//! post, encrypted with that key and signed ([`herold_mls`]'s sender keys).
//! A membership change costs a commit in one sub-group of ~55 members and
//! a new sender key in every sub-group: kilobytes per member where one MLS
//! group of 7,000 would send each member half a megabyte.
//!
//! The publisher hands out a new key whenever it finds that a sub-group's
//! group or epoch moved (someone joined, left or renewed a leaf, or the
//! group was restarted), so a removed device never holds a key that a
//! later post uses, and a newcomer none that an earlier one did. It reads
//! the channel's roster version before each post and walks the sub-groups
//! when it moved, at least every [`SUB_GROUP_CHECK_INTERVAL`], and when
//! the key is older than the key renewal interval.
//!
//! A receiving device takes key messages from its sub-group and reads posts
//! with them. A sync brings a channel's sub-groups before the channel; a
//! post that still comes before its key (live, through another
//! conversation) waits, bounded, until the key comes, for at most
//! [`KEY_WAIT`]. At the end of a sync, when every stored key message has
//! been read, what still waits is [`E2eEvent::Unreadable`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use web_time::Instant;

use herold_proto::v1::{self, ErrorCode};
use tracing::debug;

use super::pump::Pump;
use super::{E2eClient, E2eError, E2eEvent, Message, SEND_ATTEMPTS, lock, now_ms};
use crate::{Accepted, new_message_id};

/// Posts a device keeps waiting for their sender key, per channel; beyond
/// it the oldest is given up as unreadable.
pub const MAX_WAITING_POSTS: usize = 10_000;

/// Bytes of the expiry in front of a post's plaintext (inside the
/// encryption, so that the relay can neither read nor change it).
const EXPIRY_LEN: usize = 8;

/// How often a publisher walks the sub-groups of a channel it posts to
/// even when the channel's roster did not move: a sub-group restarted by a
/// reader that could not go on, or changed by another publisher device,
/// moves no roster version.
pub const SUB_GROUP_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// How long a post waits for its sender key before it is reported
/// unreadable (the key's message comes through another conversation, and
/// in a sync before the post: this is for a key that never comes).
pub const KEY_WAIT: Duration = Duration::from_secs(60);

/// Where a publisher device stands with its sender key in one channel.
#[derive(Debug, Clone)]
pub(super) struct Handed {
    /// The channel's roster version when the sub-groups were last walked.
    roster_version: u64,
    /// Each sub-group's (MLS group id, epoch) when the key went out.
    at: HashMap<String, (Vec<u8>, u64)>,
    /// When the key went out.
    keyed: Instant,
    /// When the sub-groups were last walked.
    walked: Instant,
}

/// Whether less than `age` has passed since `then`.
fn within(then: Instant, age: Duration) -> bool {
    Instant::now().saturating_duration_since(then) < age
}

/// Per channel, posts that arrived before their sender key, with when.
pub(super) type Waiting = HashMap<String, VecDeque<(v1::Envelope, Instant)>>;

/// Why handing out a key did not finish.
enum HandOut {
    /// A sub-group moved on meanwhile: walk them again.
    Raced,
    Failed(E2eError),
}

impl From<E2eError> for HandOut {
    fn from(e: E2eError) -> Self {
        HandOut::Failed(e)
    }
}

impl E2eClient {
    /// The sub-group conversations of `conv` when it is a large channel;
    /// `None` for any other conversation. Asked once per conversation (a
    /// channel gets its sub-groups at creation and keeps them).
    pub(super) async fn sub_groups(&self, conv: &str) -> Result<Option<Arc<[String]>>, E2eError> {
        if let Some(known) = self
            .large
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(conv)
        {
            return Ok((!known.is_empty()).then(|| known.clone()));
        }
        let st = self.mls_state(conv).await?;
        let subs: Arc<[String]> = st.sub_conversations.into();
        self.large
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conv.to_owned(), subs.clone());
        Ok((!subs.is_empty()).then_some(subs))
    }

    /// Brings every sub-group of a large channel up to date; returns each
    /// one's (MLS group id, epoch).
    pub(super) async fn sub_groups_up_to_date(
        &self,
        subs: &[String],
    ) -> Result<HashMap<String, (Vec<u8>, u64)>, E2eError> {
        let mut at = HashMap::with_capacity(subs.len());
        for sub in subs {
            let sub_lock = self.conv_lock(sub);
            let _one_at_a_time = sub_lock.lock().await;
            let gid = match self.up_to_date(sub).await {
                Ok(gid) => gid,
                // A reader of the channel is in one sub-group only.
                Err(E2eError::Client(e))
                    if matches!(
                        e.code(),
                        Some(ErrorCode::NotMember | ErrorCode::NotPublisher)
                    ) =>
                {
                    let channel =
                        herold_proto::ids::sub_group_of(sub).map_or(sub.as_str(), |(c, _)| c);
                    return Err(E2eError::NotPublisher(channel.to_owned()));
                }
                Err(e) => return Err(e),
            };
            let epoch = lock(&self.mls).epoch(&gid).unwrap_or(0);
            at.insert(sub.clone(), (gid, epoch));
        }
        Ok(at)
    }

    /// Sends `plaintext` to the large channel `conv`: a new sender key
    /// first when the membership moved, then one post for every member.
    pub(super) async fn send_post(
        &self,
        conv: &str,
        subs: &[String],
        plaintext: &[u8],
        expires_at_ms: i64,
    ) -> Result<Accepted, E2eError> {
        let conv_lock = self.conv_lock(conv);
        let _one_at_a_time = conv_lock.lock().await;
        let mut body = Vec::with_capacity(EXPIRY_LEN + plaintext.len());
        body.extend_from_slice(&expires_at_ms.to_be_bytes());
        body.extend_from_slice(plaintext);
        for _ in 0..SEND_ATTEMPTS {
            let roster_version = self.mls_state(conv).await?.roster_version;
            let fresh = {
                let handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
                handed.get(conv).is_some_and(|h| {
                    h.roster_version == roster_version
                        && within(h.walked, SUB_GROUP_CHECK_INTERVAL)
                        && within(h.keyed, self.key_renewal)
                }) && lock(&self.mls).sender_key_epoch(conv).is_some()
            };
            if !fresh {
                match self.new_sender_key(conv, subs, roster_version).await {
                    Ok(()) => {}
                    Err(HandOut::Raced) => continue,
                    Err(HandOut::Failed(e)) => return Err(e),
                }
            }
            let post = lock(&self.mls).encrypt_post(conv, &body, &[])?;
            let submit = v1::Submit {
                message_id: new_message_id()?.to_vec(),
                conversation_id: conv.to_owned(),
                expires_at_ms,
                ciphertext: post,
                ..Default::default()
            };
            self.keep_before_sending().await?;
            return Ok(self.sender.submit(submit).await?);
        }
        Err(E2eError::Contended(conv.to_owned()))
    }

    /// Brings the sub-groups up to date and, unless their epochs are still
    /// those the current key went out at, makes a new sender key and hands
    /// it out in every sub-group.
    async fn new_sender_key(
        &self,
        conv: &str,
        subs: &[String],
        roster_version: u64,
    ) -> Result<(), HandOut> {
        let at = self.sub_groups_up_to_date(subs).await?;
        let kept = self
            .handed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(conv)
            .filter(|h| h.at == at && within(h.keyed, self.key_renewal))
            .map(|h| h.keyed);
        let keyed = match kept {
            Some(when) if lock(&self.mls).sender_key_epoch(conv).is_some() => when,
            _ => {
                let epoch = lock(&self.mls)
                    .rotate_sender_key(conv)
                    .map_err(E2eError::from)?;
                debug!(channel = conv, epoch, "handing out a new sender key");
                for (sub, (gid, _)) in &at {
                    self.hand_out(conv, sub, gid).await?;
                }
                Instant::now()
            }
        };
        self.handed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                conv.to_owned(),
                Handed {
                    roster_version,
                    at,
                    keyed,
                    walked: Instant::now(),
                },
            );
        Ok(())
    }

    /// Sends this device's current sender key for `conv` to the sub-group
    /// `sub` (MLS group `gid`).
    async fn hand_out(&self, conv: &str, sub: &str, gid: &[u8]) -> Result<(), HandOut> {
        let ciphertext = lock(&self.mls)
            .sender_key_message(conv, gid, &herold_mls::encode_aad(0))
            .map_err(E2eError::from)?;
        let submit = v1::Submit {
            message_id: new_message_id().map_err(E2eError::from)?.to_vec(),
            conversation_id: sub.to_owned(),
            ciphertext,
            mls: true,
            ..Default::default()
        };
        self.keep_before_sending().await?;
        match self.sender.submit(submit).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::MlsWrongEpoch | ErrorCode::MlsMembershipPending)
                ) =>
            {
                debug!(channel = conv, sub, error = %e, "sub-group moved on; again");
                Err(HandOut::Raced)
            }
            Err(e) => Err(HandOut::Failed(e.into())),
        }
    }
}

impl Pump {
    /// A post of a large channel: read with its sender's key, or kept
    /// until the key comes.
    pub(super) fn on_post(&mut self, env: v1::Envelope) -> Vec<E2eEvent> {
        let mut out = Vec::new();
        let channel = env.conversation_id.clone();
        let queue = self.waiting.entry(channel.clone()).or_default();
        queue.push_back((env, Instant::now()));
        if queue.len() > MAX_WAITING_POSTS
            && let Some((oldest, _)) = queue.pop_front()
        {
            out.push(unreadable(&oldest, no_key_reason()));
        }
        self.read_waiting(&channel, &mut out);
        out
    }

    /// A key message in a sub-group of `channel`; then the posts waiting
    /// for it.
    pub(super) fn on_sender_key(
        &mut self,
        gid: &[u8],
        env: &v1::Envelope,
        channel: &str,
        sender: &str,
        payload: &[u8],
    ) -> Vec<E2eEvent> {
        let accepted = lock(&self.mls).accept_sender_key(gid, channel, sender, payload);
        if let Err(e) = accepted {
            return vec![unreadable(env, format!("not a sender key: {e}"))];
        }
        let mut out = vec![E2eEvent::KeyReceived {
            conversation_id: env.conversation_id.clone(),
            seq: env.seq,
        }];
        self.read_waiting(channel, &mut out);
        out
    }

    /// Reads what it can of the posts waiting in `channel`, oldest first;
    /// the others keep waiting. A post never becomes readable once this
    /// device holds a newer key of its sender (keys only move forward: it
    /// was posted before this device joined, or while it was out), nor
    /// after [`KEY_WAIT`]. One sender's posts come out in their order: a
    /// later one reads only with a later key, which makes the earlier ones
    /// hopeless; another sender's missing key holds nothing back.
    fn read_waiting(&mut self, channel: &str, out: &mut Vec<E2eEvent>) {
        let Some(queue) = self.waiting.remove(channel) else {
            return;
        };
        let mut still = VecDeque::new();
        for (post, since) in queue {
            match self.read_post(&post) {
                Ok(event) => out.push(event),
                Err(herold_mls::MlsError::NoSenderKey { sender, epoch, .. }) => {
                    let newest = lock(&self.mls).newest_sender_key(channel, &sender);
                    let hopeless = newest.is_some_and(|n| epoch.is_none_or(|e| e < n));
                    if hopeless || !within(since, KEY_WAIT) {
                        out.push(unreadable(&post, no_key_reason()));
                    } else {
                        still.push_back((post, since));
                    }
                }
                Err(e) => out.push(unreadable(&post, format!("cannot read the post: {e}"))),
            }
        }
        if !still.is_empty() {
            self.waiting.insert(channel.to_owned(), still);
        }
    }

    /// After a sync every stored key message has been read: posts still
    /// waiting never get theirs on this device.
    pub(super) fn give_up_waiting(&mut self) -> Vec<E2eEvent> {
        let mut out = Vec::new();
        for (_, queue) in self.waiting.drain() {
            for (post, _) in queue {
                out.push(unreadable(&post, no_key_reason()));
            }
        }
        out
    }

    fn read_post(&self, env: &v1::Envelope) -> Result<E2eEvent, herold_mls::MlsError> {
        let post = lock(&self.mls).decrypt_post(&env.conversation_id, &env.ciphertext, &[])?;
        if post.sender == self.device_id {
            return Ok(unreadable(env, "this device's own post".into()));
        }
        let Some((expiry, plaintext)) = post.plaintext.split_first_chunk::<EXPIRY_LEN>() else {
            return Ok(unreadable(env, "a post without its expiry".into()));
        };
        let expires_at_ms = i64::from_be_bytes(*expiry);
        if expires_at_ms != 0 && expires_at_ms <= now_ms() {
            return Ok(unreadable(env, "expired".into()));
        }
        Ok(E2eEvent::Message(Message {
            conversation_id: env.conversation_id.clone(),
            seq: env.seq,
            sender_account_id: env.sender_account_id.clone(),
            sender_device_id: post.sender,
            server_time_ms: env.server_time_ms,
            expires_at_ms,
            plaintext: plaintext.to_vec(),
        }))
    }
}

/// The plaintext of a post read elsewhere ([`E2eClient::process_raw`]):
/// without the expiry in front.
pub(super) fn post_plaintext(mut post: herold_mls::Post) -> herold_mls::Post {
    if post.plaintext.len() >= EXPIRY_LEN {
        post.plaintext.drain(..EXPIRY_LEN);
    }
    post
}

fn no_key_reason() -> String {
    "its sender key never reached this device (posted before it joined, or after it left)".into()
}

fn unreadable(env: &v1::Envelope, reason: String) -> E2eEvent {
    E2eEvent::Unreadable {
        conversation_id: env.conversation_id.clone(),
        seq: env.seq,
        reason,
    }
}
