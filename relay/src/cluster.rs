//! The relays as one cluster: directory changes this node made are told to
//! the others over the router, theirs are applied here, and when this
//! node's inbox lagged (the router may have lost messages) it recovers.

use std::sync::Arc;

use herold_proto::v1::{self, ErrorCode, cluster_event};
use herold_router::Router;
use herold_store::Store;
use prost::Message as _;
use tracing::warn;

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
            node_id,
            router,
            store,
            registry,
            rosters,
        }
    }

    /// Membership or devices of these conversations changed (an empty
    /// slice: of any conversation): every node's roster cache forgets them.
    pub async fn rosters_changed(&self, conversations: &[String]) {
        self.rosters.invalidate_some(conversations);
        self.tell(cluster_event::Kind::RostersChanged(v1::RostersChanged {
            conversation_ids: conversations.to_vec(),
        }))
        .await;
    }

    /// Ends the sessions of these devices on every node, with `why`.
    pub async fn kick_devices(&self, devices: &[String], why: Kick) {
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
    /// the router is unreachable the others learn it when they resync
    /// (their inbox reports `Lagged`, which clears caches and re-checks
    /// every connected device).
    async fn tell(&self, kind: cluster_event::Kind) {
        let ev = v1::ClusterEvent {
            origin_node: self.node_id.clone(),
            kind: Some(kind),
        };
        if let Err(e) = self.router.broadcast(ev.encode_to_vec().into()).await {
            warn!(error = %e, "telling the other relays failed; they catch up when they resync");
        }
    }

    /// Applies another node's broadcast.
    pub fn apply(&self, payload: &[u8]) {
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
            None => {}
        }
    }

    /// After the router may have lost messages: every device resyncs from the
    /// store, cached rosters are dropped, and every connected device is checked
    /// against the directory (a revocation broadcast may be among the lost).
    pub fn recover_from_lag(self: &Arc<Self>) {
        metrics::counter!(m::RESYNCS).increment(1);
        self.rosters.invalidate();
        self.registry.push_all(&Push::Resync);
        let this = self.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let devices = this.registry.device_ids();
            futures_util::stream::iter(devices)
                .for_each_concurrent(32, |d| {
                    let this = this.clone();
                    async move {
                        match this.store.get_device(&d).await {
                            Ok(Some(dev)) if !dev.revoked => {}
                            Ok(_) => {
                                this.registry.kick(
                                    &d,
                                    Kick {
                                        code: ErrorCode::DeviceRevoked,
                                        message: "this device was revoked".into(),
                                    },
                                );
                            }
                            Err(e) => warn!(error = %e, "re-checking a device failed"),
                        }
                    }
                })
                .await;
        });
    }
}
