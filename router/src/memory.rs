//! The in-process router of the embedded default: presence in a map, inboxes
//! as bounded channels. One process, so nothing can be lost between nodes.
//!
//! Metrics: every delivery and broadcast put into an inbox counts in
//! [`INBOX_ENTRIES`] (the same entries the Redis backend counts as it reads
//! them). Nothing is lost, so the inbox never reports
//! [`InboxEvent::Lagged`] and [`INBOX_LAGGED`](crate::metrics::INBOX_LAGGED)
//! stays 0; an entry goes straight from publisher to reader, so there is no
//! lag to observe.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use metrics::counter;
use tokio::sync::mpsc;

use crate::metrics::INBOX_ENTRIES;
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
    /// conversation -> the nodes interested in it.
    interest: HashMap<String, HashSet<NodeId>>,
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
        st.interest.retain(|_, nodes| {
            nodes.remove(node);
            !nodes.is_empty()
        });
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

    async fn add_interest(&self, node: &str, conversations: &[String]) -> Result<(), RouterError> {
        let mut st = self.state();
        if !st.nodes.contains_key(node) {
            return Err(RouterError::UnknownNode(node.to_owned()));
        }
        for c in conversations {
            st.interest
                .entry(c.clone())
                .or_default()
                .insert(node.to_owned());
        }
        Ok(())
    }

    async fn remove_interest(
        &self,
        node: &str,
        conversations: &[String],
    ) -> Result<(), RouterError> {
        let mut st = self.state();
        for c in conversations {
            if let Some(nodes) = st.interest.get_mut(c) {
                nodes.remove(node);
                if nodes.is_empty() {
                    st.interest.remove(c);
                }
            }
        }
        Ok(())
    }

    async fn interested(&self, conversation: &str) -> Result<Vec<NodeId>, RouterError> {
        let st = self.state();
        Ok(st
            .interest
            .get(conversation)
            .into_iter()
            .flatten()
            .filter(|n| st.nodes.get(*n).is_some_and(|tx| !tx.is_closed()))
            .cloned()
            .collect())
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
            .map_err(|_| RouterError::UnknownNode(node.to_owned()))?;
        counter!(INBOX_ENTRIES).increment(1);
        Ok(())
    }

    async fn broadcast(&self, payload: bytes::Bytes) -> Result<(), RouterError> {
        let nodes: Vec<_> = self.state().nodes.values().cloned().collect();
        let mut sent = 0u64;
        for tx in nodes {
            // A node that is gone has nothing to be told.
            if tx
                .send(InboxEvent::Broadcast(payload.clone()))
                .await
                .is_ok()
            {
                sent += 1;
            }
        }
        counter!(INBOX_ENTRIES).increment(sent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::MemoryRouter;
    use crate::metrics::INBOX_ENTRIES;
    use crate::{Delivery, Router};

    crate::router_conformance_tests!(super::MemoryRouter::new(64));

    // current_thread runtime: the local recorder is the test thread's.
    #[tokio::test]
    async fn counts_entries_put_into_inboxes() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let router = MemoryRouter::new(8);
        let _a = router.register_node("a").await.unwrap();
        let _b = router.register_node("b").await.unwrap();

        router.publish("a", Delivery::default()).await.unwrap();
        router
            .publish("gone", Delivery::default())
            .await
            .unwrap_err();
        router.broadcast(Bytes::from_static(b"x")).await.unwrap();

        // One delivery, one broadcast into each of two inboxes; the failed
        // publish put nothing anywhere.
        let entries = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(key, ..)| key.key().name() == INBOX_ENTRIES)
            .map(|(.., value)| value);
        assert_eq!(entries, Some(DebugValue::Counter(3)));
    }
}
