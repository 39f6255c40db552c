//! The in-process router of the embedded default: presence in a map, inboxes
//! as bounded channels. One process, so nothing can be lost between nodes.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{Delivery, Inbox, InboxEvent, NodeId, Router, RouterError};

/// Default capacity of a node inbox, in deliveries. A full inbox makes
/// `publish` wait: back-pressure on submitters instead of unbounded memory.
pub const DEFAULT_INBOX_CAPACITY: usize = 8192;

/// In-process [`Router`].
#[derive(Debug)]
pub struct MemoryRouter {
    capacity: usize,
    /// A std mutex, not tokio's: it is never held across an `.await`.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<NodeId, mpsc::Sender<InboxEvent>>,
    presence: HashMap<String, NodeId>,
}

impl Default for MemoryRouter {
    fn default() -> Self {
        Self::new(DEFAULT_INBOX_CAPACITY)
    }
}

impl MemoryRouter {
    /// A router whose inboxes hold up to `capacity` deliveries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Router for MemoryRouter {
    async fn register_node(&self, node: &str) -> Result<Inbox, RouterError> {
        let mut st = self.state();
        if st.nodes.get(node).is_some_and(|tx| !tx.is_closed()) {
            return Err(RouterError::NodeExists(node.to_owned()));
        }
        let (tx, rx) = mpsc::channel(self.capacity);
        st.nodes.insert(node.to_owned(), tx);
        Ok(Inbox::new(rx))
    }

    async fn deregister_node(&self, node: &str) -> Result<(), RouterError> {
        let mut st = self.state();
        st.nodes.remove(node);
        st.presence.retain(|_, n| n != node);
        Ok(())
    }

    async fn set_present(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        let mut st = self.state();
        if !st.nodes.contains_key(node) {
            return Err(RouterError::UnknownNode(node.to_owned()));
        }
        for d in devices {
            st.presence.insert(d.clone(), node.to_owned());
        }
        Ok(())
    }

    async fn set_absent(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        let mut st = self.state();
        for d in devices {
            if st.presence.get(d).is_some_and(|n| n == node) {
                st.presence.remove(d);
            }
        }
        Ok(())
    }

    async fn locate(
        &self,
        devices: &[String],
    ) -> Result<HashMap<NodeId, Vec<String>>, RouterError> {
        let st = self.state();
        let mut out: HashMap<NodeId, Vec<String>> = HashMap::new();
        for d in devices {
            if let Some(n) = st.presence.get(d) {
                out.entry(n.clone()).or_default().push(d.clone());
            }
        }
        Ok(out)
    }

    async fn publish(&self, node: &str, delivery: Delivery) -> Result<(), RouterError> {
        let tx = self
            .state()
            .nodes
            .get(node)
            .cloned()
            .ok_or_else(|| RouterError::UnknownNode(node.to_owned()))?;
        tx.send(InboxEvent::Delivery(delivery))
            .await
            .map_err(|_| RouterError::UnknownNode(node.to_owned()))
    }

    async fn broadcast(&self, payload: bytes::Bytes) -> Result<(), RouterError> {
        let nodes: Vec<_> = self.state().nodes.values().cloned().collect();
        for tx in nodes {
            // A node that is gone has nothing to be told.
            let _ = tx.send(InboxEvent::Broadcast(payload.clone())).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    crate::router_conformance_tests!(super::MemoryRouter::new(64));
}
