//! Delivery: a stored message fanned out to the nodes that hold its
//! recipients' devices, and this node's inbox handed to its devices.
//!
//! Two shapes of inbox entry leave a fan-out. Located (small
//! conversations): the Deliver frame and the devices on the destination
//! node. By interest (large conversations): no device list and, to any
//! node but this one, no frame either: a reference to `(conversation,
//! seq)` that the receiving node loads from the store once for all its
//! members, through the shared log reads. The message then never enters
//! the router, and a post costs the router a small entry per relay
//! whatever its size. This node's own share skips the router.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use herold_router::{Delivery, Inbox, InboxEvent, RouterError};
use herold_store::StoredMessage;
use tracing::warn;

use crate::cluster::Cluster;
use crate::metrics as m;
use crate::node::Shared;
use crate::pacer::Pacer;
use crate::reads::SharedReads;

/// Inbox events being resolved at once (roster lookups, messages loaded by
/// reference) before the consumer stops taking more; they are handed on in
/// inbox order.
const MAX_RESOLVING: usize = 256;
/// Waits before loading a referenced message again when the store did not
/// have it (a replica behind) or failed; then the devices resync.
const LOAD_RETRIES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
];

/// Sends one stored message to every online recipient device: one delivery
/// per relay node holding any of them. A large conversation's goes to the
/// nodes interested in it, without a device list (see `interest`).
pub(crate) async fn fan_out(shared: &Shared, roster: &crate::roster::Roster, m: &StoredMessage) {
    let devices = &roster.devices[..];
    m::hot().fanout_devices.record(devices.len() as f64);
    let frame = crate::frames::deliver_frame(m);
    let by_interest = crate::interest::by_interest(roster);
    let route = if by_interest { "interest" } else { "locate" };
    metrics::counter!(m::FANOUTS, "route" => route).increment(1);
    let located = if by_interest {
        interested(shared, devices, m).await
    } else {
        shared.router.locate(devices).await
    };
    let located = match located {
        Ok(l) => l,
        Err(e) => {
            // Without the router, this node still serves its own devices;
            // the others resync when their inboxes report the lag.
            warn!(error = %e, "router locate failed; delivering to local devices only");
            shared.cluster.missed();
            let d = Arc::new(Delivery {
                conversation_id: m.conversation_id.clone(),
                seq: m.seq,
                expires_at_ms: m.expires_at_ms,
                accepted_at_ms: Some(m.server_time_ms),
                traceparent: None,
                frame,
                devices: devices.to_vec(),
            });
            shared.pacer.deliver(d);
            return;
        }
    };
    m::hot().fanout_nodes.record(located.len() as f64);
    if !by_interest {
        wake_the_absent(shared, devices, &located);
    }
    // The receiving relays' spans join this trace (when it is sampled).
    let traceparent = crate::telemetry::traceparent(&tracing::Span::current());
    let mut batch: Vec<(String, Delivery)> = Vec::with_capacity(located.len());
    for (node, devices) in located {
        let mut d = Delivery {
            conversation_id: m.conversation_id.clone(),
            seq: m.seq,
            expires_at_ms: m.expires_at_ms,
            accepted_at_ms: Some(m.server_time_ms),
            traceparent: traceparent.clone(),
            frame: frame.clone(),
            devices,
        };
        if node == shared.node_id {
            // This node's own devices: straight to them, not through the router.
            if d.devices.is_empty() {
                d.devices = shared.cluster.local_members(&d.conversation_id).await;
            }
            if !d.devices.is_empty() {
                shared.pacer.deliver(Arc::new(d));
            }
            continue;
        }
        if by_interest {
            // A reference: the node loads the message from the store.
            d.frame = Bytes::new();
        }
        batch.push((node, d));
    }
    if batch.is_empty() {
        return;
    }
    for r in shared.router.publish_many(batch).await {
        match r {
            Ok(()) => {}
            // A node that just died: its devices reconnect elsewhere and sync.
            Err(e @ RouterError::UnknownNode(_)) => warn!(error = %e, "router publish failed"),
            Err(e) => {
                warn!(error = %e, "router publish failed; the other relays will resync");
                shared.cluster.missed();
            }
        }
    }
}

/// The nodes interested in the message's conversation, each with an empty
/// device list. When push gateways are configured, the devices to wake are
/// located in a task of their own, off the fan-out's path.
async fn interested(
    shared: &Shared,
    devices: &[String],
    m: &StoredMessage,
) -> Result<std::collections::HashMap<String, Vec<String>>, RouterError> {
    let nodes = shared.router.interested(&m.conversation_id).await?;
    if !shared.push.gateways().is_empty() {
        let (router, push, devices) =
            (shared.router.clone(), shared.push.clone(), devices.to_vec());
        tokio::spawn(async move {
            match router.locate(&devices).await {
                Ok(located) => {
                    let here: std::collections::HashSet<&str> =
                        located.values().flatten().map(String::as_str).collect();
                    push.offline(
                        devices
                            .iter()
                            .map(String::as_str)
                            .filter(|d| !here.contains(d)),
                    );
                }
                Err(e) => warn!(error = %e, "router locate for push failed"),
            }
        });
    }
    Ok(nodes.into_iter().map(|n| (n, Vec::new())).collect())
}

/// Asks the push gateways to wake the recipients connected nowhere.
fn wake_the_absent(
    shared: &Shared,
    devices: &[String],
    located: &std::collections::HashMap<String, Vec<String>>,
) {
    let online: usize = located.values().map(Vec::len).sum();
    if online >= devices.len() {
        return;
    }
    let here: std::collections::HashSet<&str> =
        located.values().flatten().map(String::as_str).collect();
    shared.push.offline(
        devices
            .iter()
            .map(String::as_str)
            .filter(|d| !here.contains(d)),
    );
}

/// Hands this node's inbox to its devices and applies the other relays'
/// broadcasts, until the inbox closes. Events are resolved concurrently
/// (local members, referenced messages) and handed on in inbox order.
pub(crate) async fn consume_inbox(
    mut inbox: Inbox,
    pacer: Arc<Pacer>,
    cluster: Arc<Cluster>,
    reads: Arc<SharedReads>,
) {
    let mut resolving = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            ev = inbox.recv(), if open && resolving.len() < MAX_RESOLVING => match ev {
                Some(ev) => resolving.push_back(resolve(ev, cluster.clone(), reads.clone())),
                None => open = false,
            },
            Some(step) = resolving.next(), if !resolving.is_empty() => {
                apply(step, &pacer, &cluster);
            }
            else => return,
        }
    }
}

/// An inbox event, ready to be applied.
#[derive(Debug)]
enum Step {
    Deliver(Delivery),
    Lagged,
    Broadcast(Bytes),
    Nothing,
}

/// Finds a delivery by interest's local members and loads a referenced
/// message; other events are ready as they are.
async fn resolve(ev: InboxEvent, cluster: Arc<Cluster>, reads: Arc<SharedReads>) -> Step {
    let mut d = match ev {
        InboxEvent::Delivery(d) => d,
        InboxEvent::Lagged => return Step::Lagged,
        InboxEvent::Broadcast(b) => return Step::Broadcast(b),
    };
    if d.devices.is_empty() {
        // By interest: for this node's members of the conversation.
        d.devices = cluster.local_members(&d.conversation_id).await;
        if d.devices.is_empty() {
            return Step::Nothing;
        }
    }
    if d.frame.is_empty() {
        match load(&reads, &d).await {
            Loaded::Frame(frame) => d.frame = frame,
            Loaded::Expired => return Step::Nothing,
            Loaded::Missing => {
                warn!(
                    seq = d.seq,
                    "a referenced message could not be loaded; devices resync"
                );
                return Step::Lagged;
            }
        }
    }
    Step::Deliver(d)
}

/// What loading a referenced message found.
enum Loaded {
    Frame(Bytes),
    /// Its expiry passed: nobody gets it any more.
    Expired,
    /// The store did not have it (or failed) after every retry.
    Missing,
}

/// The Deliver frame of the message a reference names, read with the
/// sessions' shared log reads: one store read for a burst of them.
async fn load(reads: &Arc<SharedReads>, d: &Delivery) -> Loaded {
    let mut retries = LOAD_RETRIES.iter();
    loop {
        let now = crate::node::now_ms();
        if d.expires_at_ms.is_some_and(|e| e <= now) {
            return Loaded::Expired;
        }
        let read = reads
            .read(&d.conversation_id, d.seq.saturating_sub(1), 1, now)
            .await;
        match read {
            Ok(msgs) => {
                if let Some(msg) = msgs.iter().find(|x| x.seq == d.seq) {
                    return Loaded::Frame(crate::frames::deliver_frame(msg));
                }
                // Nothing at that seq: expired meanwhile (the read skips
                // expired messages) or not on this replica yet.
            }
            Err(e) => warn!(error = %e, "loading a referenced message failed"),
        }
        match retries.next() {
            Some(wait) => tokio::time::sleep(*wait).await,
            None => return Loaded::Missing,
        }
    }
}

/// Hands a resolved event on: to the devices, or to the cluster state.
fn apply(step: Step, pacer: &Arc<Pacer>, cluster: &Arc<Cluster>) {
    match step {
        Step::Deliver(mut d) => {
            let span = match &d.traceparent {
                Some(tp) => {
                    let span = tracing::info_span!("deliver", devices = d.devices.len());
                    crate::telemetry::follow(&span, tp);
                    // The pushes to devices are children of this span.
                    d.traceparent = crate::telemetry::traceparent(&span);
                    span
                }
                None => tracing::Span::none(),
            };
            let _entered = span.enter();
            // One allocation per delivery, not per recipient device.
            pacer.deliver(Arc::new(d));
        }
        Step::Lagged => cluster.recover_from_lag(),
        Step::Broadcast(payload) => cluster.apply(&payload),
        Step::Nothing => {}
    }
}

#[cfg(test)]
mod tests;
