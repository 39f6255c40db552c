//! What the end-to-end client hands the app: decrypted messages and the
//! group's events.

use crate::ClientError;

/// A decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Conversation.
    pub conversation_id: String,
    /// Position in the conversation.
    pub seq: u64,
    /// Sending account, as the relay stored it; with sealed sender (the
    /// relay stores none), the account the relay's roster gives for the
    /// sending device. Empty if neither says.
    pub sender_account_id: String,
    /// Sending device, as authenticated by MLS (its credential).
    pub sender_device_id: String,
    /// Relay time of acceptance, unix milliseconds.
    pub server_time_ms: i64,
    /// Expiry from the authenticated data, unix milliseconds; 0: none.
    pub expires_at_ms: i64,
    /// The plaintext.
    pub plaintext: Vec<u8>,
}

impl Message {
    /// Whether the message has expired at `now_ms` (an app's message store
    /// deletes it then).
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }
}

/// The device's state after the events before it, for an app that
/// acknowledges deliveries itself ([`crate::ClientConfig::app_acks`]) and
/// keeps its MLS state as an image (`MlsDevice::create_in_image`): keep
/// the image and the positions together with what the events before it
/// changed, then acknowledge the positions
/// ([`super::E2eClient::ack_checkpoint`]). After a restart from them
/// (`MlsDevice::from_image`, the positions as
/// [`crate::ClientConfig::cursors`]) nothing is lost and nothing comes
/// twice.
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Increasing: a later checkpoint holds all an earlier one does.
    pub id: u64,
    /// The MLS state.
    pub mls_image: Vec<u8>,
    /// Per conversation, the last position the state covers.
    pub positions: std::collections::HashMap<String, u64>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("mls_image_bytes", &self.mls_image.len())
            .field("positions", &self.positions)
            .finish()
    }
}

/// What the end-to-end client reports to the app.
#[derive(Debug, Clone)]
pub enum E2eEvent {
    /// A decrypted message, in conversation order, once.
    Message(Message),
    /// The group changed: devices added or removed (by a commit).
    GroupChanged {
        /// Conversation.
        conversation_id: String,
        /// The commit's seq.
        seq: u64,
        /// The group's new epoch.
        epoch: u64,
        /// Devices added.
        added: Vec<String>,
        /// Devices removed.
        removed: Vec<String>,
        /// The group's title after the commit (a member may have changed
        /// it); `None` without one. See [`E2eClient::title`].
        title: Option<String>,
    },
    /// This device joined the conversation's group (from a Welcome).
    Joined {
        /// Conversation.
        conversation_id: String,
        /// The seq of the commit that added it.
        seq: u64,
        /// The epoch it joined at.
        epoch: u64,
    },
    /// This device was removed from the conversation's group.
    Removed {
        /// Conversation.
        conversation_id: String,
        /// The seq of the commit that removed it.
        seq: u64,
    },
    /// A publisher's sender key for a large channel came in a sub-group
    /// (docs/e2e.md, "Large channels"): nothing to show; posts waiting for
    /// it follow as [`E2eEvent::Message`]s.
    KeyReceived {
        /// The sub-group conversation.
        conversation_id: String,
        /// Its seq.
        seq: u64,
    },
    /// The conversation's group was restarted because a member could not
    /// process a commit: this device left the old group; it joins the new
    /// one from a Welcome ([`E2eEvent::Joined`]) or creates it when it
    /// sends. Apps may tell the user that the conversation's encryption was
    /// renewed.
    Restarted {
        /// Conversation.
        conversation_id: String,
        /// The new group's generation.
        generation: u64,
    },
    /// An envelope this device cannot read: sent before it joined, after
    /// it left, expired, or not end-to-end encrypted.
    Unreadable {
        /// Conversation.
        conversation_id: String,
        /// Its seq.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Everything stored up to now has been processed (after each connect).
    Synced,
    /// The state to keep before acknowledging (app acks only).
    Checkpoint(Checkpoint),
    /// The connection was lost; the client is reconnecting.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The client stopped for good.
    Stopped(ClientError),
}

impl E2eEvent {
    /// The envelope this event came from, (conversation, seq), for events
    /// that came from one: what an app stores as its cursor
    /// ([`crate::ClientConfig::cursors`]) once it has handled the event.
    pub fn position(&self) -> Option<(&str, u64)> {
        match self {
            E2eEvent::Message(m) => Some((&m.conversation_id, m.seq)),
            E2eEvent::GroupChanged {
                conversation_id,
                seq,
                ..
            }
            | E2eEvent::Joined {
                conversation_id,
                seq,
                ..
            }
            | E2eEvent::Removed {
                conversation_id,
                seq,
            }
            | E2eEvent::KeyReceived {
                conversation_id,
                seq,
            }
            | E2eEvent::Unreadable {
                conversation_id,
                seq,
                ..
            } => Some((conversation_id, *seq)),
            E2eEvent::Restarted { .. }
            | E2eEvent::Synced
            | E2eEvent::Checkpoint(_)
            | E2eEvent::Disconnected { .. }
            | E2eEvent::Stopped(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_a_delivery_name_it_and_the_others_do_not() {
        let at = |e: &E2eEvent| e.position().map(|(c, s)| (c.to_owned(), s));
        let key = E2eEvent::KeyReceived {
            conversation_id: "news~3".into(),
            seq: 7,
        };
        assert_eq!(at(&key), Some(("news~3".into(), 7)));
        let joined = E2eEvent::Joined {
            conversation_id: "g".into(),
            seq: 2,
            epoch: 1,
        };
        assert_eq!(at(&joined), Some(("g".into(), 2)));
        assert_eq!(at(&E2eEvent::Synced), None);
        let restarted = E2eEvent::Restarted {
            conversation_id: "g".into(),
            generation: 1,
        };
        assert_eq!(at(&restarted), None);
    }
}
