//! The relays as one cluster: directory changes this node made are told to
//! the others over the router, theirs are applied here, and when this
//! node's inbox lagged (the router may have lost messages) it recovers.

use herold_sync::Coalesced;
use std::sync::Arc;

use herold_proto::v1::{self, ErrorCode, cluster_event};
use herold_router::Router;
use herold_store::Store;
use prost::Message as _;
use tracing::warn;

use crate::interest::Interest;
use crate::metrics as m;
use crate::registry::{Kick, Push, Registry};
use crate::roster::Rosters;

/// What cluster events need of the node.
#[derive(Debug)]
pub(crate) struct Cluster {
    node_id: String,
    router: Arc<dyn Router>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    rosters: Arc<Rosters>,
    /// This node's interest in conversations, registered with the router.
    pub interest: Arc<Interest>,
    /// Resync passes over this node's devices.
    resync: Coalesced,
    /// Telling the other relays to resync: they may have missed something
    /// this node told or delivered through the router.
    repair: Coalesced,
}

impl Cluster {
    pub fn new(
        node_id: String,
        router: Arc<dyn Router>,
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        rosters: Arc<Rosters>,
    ) -> Self {
        Self {
            interest: Arc::new(Interest::new(
                node_id.clone(),
                router.clone(),
                rosters.clone(),
            )),
            node_id,
            router,
            store,
            registry,
            rosters,
            resync: Coalesced::default(),
            repair: Coalesced::default(),
        }
    }

    /// Membership or devices of these conversations changed (an empty
    /// slice: of any conversation): every node's roster cache forgets them.
    pub async fn rosters_changed(self: &Arc<Self>, conversations: &[String]) {
        self.rosters.invalidate_some(conversations);
        self.update_interest(conversations);
        self.tell(cluster_event::Kind::RostersChanged(v1::RostersChanged {
            conversation_ids: conversations.to_vec(),
        }))
        .await;
    }

    /// Members of these conversations changed: this node's interest follows
    /// (in a task: it loads the rosters). An empty list (changes that only
    /// remove: deleted accounts, policies) changes no interest; deliveries
    /// are checked against the current roster anyway. A device here that
    /// joined a conversation syncs: a post by interest that reached this
    /// node before the change did passed it by.
    fn update_interest(&self, conversations: &[String]) {
        if conversations.is_empty() {
            return;
        }
        let (interest, registry) = (self.interest.clone(), self.registry.clone());
        let conversations = conversations.to_vec();
        tokio::spawn(async move {
            for device in interest.rosters_changed(&conversations).await {
                registry.push(&device, Push::Resync);
            }
        });
    }

    /// The devices here that a delivery by interest in `conv` is for.
    pub async fn local_members(&self, conv: &str) -> Vec<String> {
        match self.rosters.get(conv).await {
            Ok(roster) => match roster {
                Some(r) => self.interest.local_members(conv, Some(&r)),
                // The conversation is gone: nobody.
                None => Vec::new(),
            },
            Err(e) => {
                // Without the store, the members as last known here.
                warn!(error = %e, "loading a roster for a delivery failed; using the known members");
                self.interest.local_members(conv, None)
            }
        }
    }

    /// Ends the sessions of these devices on every node, with `why`.
    pub async fn kick_devices(self: &Arc<Self>, devices: &[String], why: Kick) {
        for d in devices {
            self.registry.kick(d, why.clone());
        }
        self.tell(cluster_event::Kind::KickDevices(v1::KickDevices {
            device_ids: devices.to_vec(),
            code: why.code as i32,
            message: why.message,
        }))
        .await;
    }

    /// Broadcasts a change this node has applied already to the others. If
    /// the router fails it, the others are told to resync as soon as it
    /// answers again (see [`Cluster::missed`]).
    async fn tell(self: &Arc<Self>, kind: cluster_event::Kind) {
        let ev = v1::ClusterEvent {
            origin_node: self.node_id.clone(),
            kind: Some(kind),
        };
        if let Err(e) = self.router.broadcast(ev.encode_to_vec().into()).await {
            warn!(error = %e, "telling the other relays failed; they resync once the router answers");
            self.missed();
        }
    }

    /// Something this node told or delivered through the router may not
    /// have reached the other relays. Until a [`v1::Resync`] broadcast gets
    /// through, a task retries it every [`REPAIR_RETRY`]; the others then
    /// resync from the store, so a missed delivery, roster change or kick
    /// reaches them late, never not at all.
    pub fn missed(self: &Arc<Self>) {
        if !self.repair.want() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let ev = v1::ClusterEvent {
                origin_node: this.node_id.clone(),
                kind: Some(cluster_event::Kind::Resync(v1::Resync {})),
            };
            let payload = bytes::Bytes::from(ev.encode_to_vec());
            while this.repair.next() {
                if this.router.broadcast(payload.clone()).await.is_err() {
                    tokio::time::sleep(REPAIR_RETRY).await;
                    this.repair.want();
                }
            }
        });
    }

    /// Applies another node's broadcast.
    pub fn apply(self: &Arc<Self>, payload: &[u8]) {
        let ev = match v1::ClusterEvent::decode(payload) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, "undecodable cluster event; clearing the roster cache");
                self.rosters.invalidate();
                return;
            }
        };
        if ev.origin_node == self.node_id {
            return;
        }
        match ev.kind {
            Some(cluster_event::Kind::RostersChanged(r)) => {
                self.rosters.invalidate_some(&r.conversation_ids);
                self.update_interest(&r.conversation_ids);
            }
            Some(cluster_event::Kind::KickDevices(k)) => {
                let why = Kick {
                    code: ErrorCode::try_from(k.code).unwrap_or(ErrorCode::DeviceRevoked),
                    message: k.message,
                };
                for d in &k.device_ids {
                    self.registry.kick(d, why.clone());
                }
            }
            Some(cluster_event::Kind::Resync(_)) => self.recover_from_lag(),
            None => {}
        }
    }

    /// After the router may have lost messages: every device resyncs from the
    /// store, cached rosters are dropped, and every connected device is checked
    /// against the directory (a revocation, suspension or deletion broadcast
    /// may be among the lost). Requests that come while a pass is under way
    /// are folded into one more pass; a pass goes through the devices at
    /// [`RESYNC_RATE`], so a relay (or every relay, when Redis returns) does
    /// not ask the store for all its devices at once.
    pub fn recover_from_lag(self: &Arc<Self>) {
        metrics::counter!(m::RESYNCS).increment(1);
        self.rosters.invalidate();
        if !self.resync.want() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            while this.resync.next() {
                this.resync_pass().await;
            }
        });
    }

    /// One pass over the connected devices, [`RESYNC_BATCH`] at a time.
    async fn resync_pass(self: &Arc<Self>) {
        use futures_util::StreamExt;
        let devices = self.registry.device_ids();
        let mut tick = tokio::time::interval(resync_tick());
        for batch in devices.chunks(RESYNC_BATCH) {
            tick.tick().await;
            for d in batch {
                self.registry.push(d, Push::Resync);
            }
            futures_util::stream::iter(batch)
                .for_each_concurrent(32, |d| self.recheck(d))
                .await;
        }
    }

    /// Ends the session of a device that may no longer be connected.
    async fn recheck(&self, device_id: &str) {
        let refusal = match self.store.get_device(device_id).await {
            Ok(Some(dev)) if !dev.revoked => {
                match self.store.account_state(&dev.account_id).await {
                    Ok(Some(s)) if !s.suspended => return,
                    Ok(Some(_)) => "this device's account is suspended",
                    Ok(None) => "this device's account was deleted",
                    Err(e) => {
                        warn!(error = %e, "re-checking a device's account failed");
                        return;
                    }
                }
            }
            Ok(_) => "this device was revoked",
            Err(e) => {
                warn!(error = %e, "re-checking a device failed");
                return;
            }
        };
        self.registry.kick(
            device_id,
            Kick {
                code: ErrorCode::DeviceRevoked,
                message: refusal.into(),
            },
        );
    }
}

/// How often a node retries telling the others to resync (see
/// [`Cluster::missed`]).
pub(crate) const REPAIR_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Devices told to resync per second after a lag, at most.
pub(crate) const RESYNC_RATE: usize = 5_000;
/// Devices told at once, every [`resync_tick`].
pub(crate) const RESYNC_BATCH: usize = 250;

/// Time between two batches of a resync pass.
pub(crate) fn resync_tick() -> std::time::Duration {
    std::time::Duration::from_secs(1) * RESYNC_BATCH as u32 / RESYNC_RATE as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

    use std::time::Duration;

    use herold_router::faults::Faulty;
    use herold_router::memory::MemoryRouter;
    use herold_router::{Inbox, InboxEvent};

    use super::*;
    use crate::config::Limits;

    fn node(id: &str, router: Arc<dyn Router>, store: Arc<dyn Store>) -> Arc<Cluster> {
        let registry = Arc::new(Registry::default());
        let rosters = Arc::new(Rosters::new(store.clone(), Limits::default()));
        Arc::new(Cluster::new(id.into(), router, store, registry, rosters))
    }

    /// The next cluster event in `inbox`, within a deadline.
    async fn next_event(inbox: &mut Inbox) -> v1::ClusterEvent {
        let ev = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("a broadcast arrives within 10 s")
            .expect("the inbox is open");
        match ev {
            InboxEvent::Broadcast(b) => v1::ClusterEvent::decode(&b[..]).unwrap(),
            other => panic!("expected a broadcast, got {other:?}"),
        }
    }

    /// A roster change or kick the router failed to carry, and a delivery
    /// it failed to route, end in a resync broadcast once it answers again.
    #[tokio::test]
    async fn what_the_router_failed_to_carry_ends_in_a_resync_once_it_answers() {
        let (_dir, store) = crate::roster::testing::store_with(&[], &[]).await;
        let shared = Arc::new(MemoryRouter::default());
        let faulty = Arc::new(Faulty::new(shared.clone()));
        let a = node("a", faulty.clone(), store.clone());
        let mut b_inbox = shared.register_node("b").await.unwrap();

        faulty.set_down(true);
        a.rosters_changed(&["c1".into()]).await;
        a.kick_devices(
            &["lost-phone".into()],
            Kick {
                code: ErrorCode::DeviceRevoked,
                message: "this device was revoked".into(),
            },
        )
        .await;
        a.missed();
        // Retried while the router is away, nothing delivered.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while faulty.refused() < 4 {
            assert!(tokio::time::Instant::now() < deadline, "no retry");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            tokio::time::timeout(Duration::ZERO, b_inbox.recv())
                .await
                .is_err(),
            "nothing reached the other node"
        );

        faulty.set_down(false);
        let ev = next_event(&mut b_inbox).await;
        assert_eq!(ev.origin_node, "a");
        assert!(
            matches!(ev.kind, Some(cluster_event::Kind::Resync(_))),
            "{ev:?}"
        );
        // One resync for all three misses, then quiet.
        a.rosters_changed(&["c2".into()]).await;
        let ev = next_event(&mut b_inbox).await;
        assert!(
            matches!(ev.kind, Some(cluster_event::Kind::RostersChanged(_))),
            "{ev:?}"
        );
    }
}
