//! Herold's router: which relay node holds which device, and the node inboxes
//! that carry delivery batches between relays.
//!
//! # Layout
//! - [`Router`]: the trait. A relay registers itself with
//!   [`Router::register_node`] and gets its [`Inbox`]; it announces the
//!   devices connected to it with [`Router::set_present`] /
//!   [`Router::set_absent`]; to fan out it asks [`Router::locate`] where the
//!   recipients are (grouped by node) and sends one [`Delivery`] per node with
//!   [`Router::publish`]. For large conversations it registers under the
//!   conversations its devices belong to ([`Router::add_interest`]), and a
//!   fan-out asks [`Router::interested`] which nodes hold any of their
//!   members, instead of locating every device: the cost of a post then
//!   grows with the relays, not with the members.
//! - [`memory`]: the in-process backend of the embedded default (one node).
//! - `redis` (feature `redis`): the cluster backend on a single Redis,
//!   Sentinel or Redis Cluster; `docs/routing.md` describes its keys.
//! - [`conformance`] (feature `conformance`, and in tests): the suite every
//!   backend passes.
//! - [`faults::Faulty`]: wraps any backend and fails its calls while
//!   switched off, for tests of a relay whose router is away.
//! - [`metered::Metered`]: wraps any backend and records the duration and
//!   failures of each operation under the names declared in [`metrics`]; the
//!   backends record their inbox metrics themselves.
//!
//! # Ordering and loss
//! The router does not number messages: the store does, atomically with the
//! durable write (see `herold-store`), because the store is the component
//! whose writes survive failover. The router carries each delivery with its
//! `(conversation, seq)`; a relay that sees a seq beyond the next one it
//! expects fills the gap from the store. An inbox delivers batches published
//! by one relay in publish order. A backend that can lose batches (for
//! example pub/sub across a disconnect) must say so with
//! [`InboxEvent::Lagged`], after which the relay resynchronises its devices
//! from the store: nothing is dropped silently.

#![warn(missing_docs)]

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;

pub mod faults;
pub mod memory;
pub mod metered;
pub mod metrics;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// Identifies a relay node.
pub type NodeId = String;

/// One envelope for the devices of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The envelope's conversation.
    pub conversation_id: String,
    /// The envelope's seq in the conversation.
    pub seq: u64,
    /// The envelope's expiry (unix milliseconds): past it, it is not delivered.
    pub expires_at_ms: Option<i64>,
    /// When the store accepted the envelope (unix milliseconds): the
    /// receiving relay measures acceptance-to-delivery latency from it.
    pub accepted_at_ms: Option<i64>,
    /// The W3C `traceparent` of the fan-out that published this delivery,
    /// when it was traced: the receiving relay's spans join the sender's
    /// trace. Carries trace and span ids only, nothing of the message.
    pub traceparent: Option<String>,
    /// The complete, length-prefixed `ServerFrame::Deliver` frame, encoded
    /// once and written unchanged to every device. Empty: a reference, and
    /// the receiving relay loads the message `(conversation_id, seq)` from
    /// the store (a fan-out by interest sends the message itself through
    /// no router).
    pub frame: Bytes,
    /// The recipient devices connected to the destination node. Empty: the
    /// delivery went to a node interested in the conversation
    /// ([`Router::interested`]), which finds its local members itself.
    pub devices: Vec<String>,
}

/// What a node's inbox yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxEvent {
    /// A delivery for devices on this node.
    Delivery(Delivery),
    /// Deliveries may have been lost; resynchronise every device from storage.
    Lagged,
    /// A payload sent with [`Router::broadcast`] (cluster-wide control
    /// messages of the relay: roster changes, revoked devices).
    Broadcast(Bytes),
}

/// The receiving end of a node's inbox.
#[derive(Debug)]
pub struct Inbox {
    rx: tokio::sync::mpsc::Receiver<InboxEvent>,
}

impl Inbox {
    /// Wraps a channel receiver; for backends.
    pub fn new(rx: tokio::sync::mpsc::Receiver<InboxEvent>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the node is deregistered or the router
    /// is gone.
    pub async fn recv(&mut self) -> Option<InboxEvent> {
        self.rx.recv().await
    }
}

/// Errors of router operations.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The destination node is not registered (it died or drained).
    #[error("node {0:?} is not registered")]
    UnknownNode(String),
    /// A node with this id is registered already.
    #[error("node {0:?} is already registered")]
    NodeExists(String),
    /// The backend failed.
    #[error("router backend failed: {0}")]
    Backend(String),
}

/// Presence and node-to-node delivery.
#[async_trait]
pub trait Router: Send + Sync + std::fmt::Debug + 'static {
    /// Registers a relay node and returns its inbox.
    async fn register_node(&self, node: &str) -> Result<Inbox, RouterError>;
    /// Removes a node: its inbox closes and its devices stop counting as present.
    async fn deregister_node(&self, node: &str) -> Result<(), RouterError>;
    /// Records that `devices` are connected to `node` (the latest call wins
    /// when a device moves).
    async fn set_present(&self, node: &str, devices: &[String]) -> Result<(), RouterError>;
    /// Records that `devices` left `node`; ignored for a device that has
    /// meanwhile connected to another node.
    async fn set_absent(&self, node: &str, devices: &[String]) -> Result<(), RouterError>;
    /// Where the connected ones of `devices` are, grouped by node. Devices
    /// that are not connected anywhere are left out.
    async fn locate(&self, devices: &[String])
    -> Result<HashMap<NodeId, Vec<String>>, RouterError>;
    /// Records that `node` holds devices of these conversations, until
    /// [`Router::remove_interest`] or until the node is gone (deregistered,
    /// or its lease ran out). Idempotent.
    async fn add_interest(&self, node: &str, conversations: &[String]) -> Result<(), RouterError>;
    /// Records that `node` holds no more devices of these conversations.
    async fn remove_interest(
        &self,
        node: &str,
        conversations: &[String],
    ) -> Result<(), RouterError>;
    /// The live nodes that hold devices of `conversation`: what a fan-out to
    /// a large conversation publishes to, one delivery each, without a
    /// device list.
    async fn interested(&self, conversation: &str) -> Result<Vec<NodeId>, RouterError>;
    /// Puts one delivery into a node's inbox.
    async fn publish(&self, node: &str, delivery: Delivery) -> Result<(), RouterError>;
    /// Puts one delivery into each named node's inbox, all at once where the
    /// backend can (one pipelined round trip). Results are per entry, in
    /// order.
    async fn publish_many(
        &self,
        deliveries: Vec<(NodeId, Delivery)>,
    ) -> Vec<Result<(), RouterError>> {
        let mut out = Vec::with_capacity(deliveries.len());
        for (node, d) in deliveries {
            out.push(self.publish(&node, d).await);
        }
        out
    }
    /// Puts `payload` into the inbox of every registered node, this one
    /// included, as [`InboxEvent::Broadcast`].
    async fn broadcast(&self, payload: Bytes) -> Result<(), RouterError>;
}
