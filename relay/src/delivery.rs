//! Delivery: a stored message fanned out to the nodes that hold its
//! recipients' devices, and this node's inbox handed to its devices.

use std::sync::Arc;

use herold_router::{Delivery, Inbox, InboxEvent, RouterError};
use herold_store::StoredMessage;
use tracing::warn;

use crate::cluster::Cluster;
use crate::metrics as m;
use crate::node::Shared;
use crate::pacer::Pacer;

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
    let batch: Vec<(String, Delivery)> = located
        .into_iter()
        .map(|(node, devices)| {
            let d = Delivery {
                conversation_id: m.conversation_id.clone(),
                seq: m.seq,
                expires_at_ms: m.expires_at_ms,
                accepted_at_ms: Some(m.server_time_ms),
                traceparent: traceparent.clone(),
                frame: frame.clone(),
                devices,
            };
            (node, d)
        })
        .collect();
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
/// broadcasts, until the inbox closes.
pub(crate) async fn consume_inbox(mut inbox: Inbox, pacer: Arc<Pacer>, cluster: Arc<Cluster>) {
    while let Some(ev) = inbox.recv().await {
        match ev {
            InboxEvent::Delivery(mut d) => {
                if d.devices.is_empty() {
                    // By interest: for this node's members of the conversation.
                    d.devices = cluster.local_members(&d.conversation_id).await;
                    if d.devices.is_empty() {
                        continue;
                    }
                }
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
            InboxEvent::Lagged => cluster.recover_from_lag(),
            InboxEvent::Broadcast(payload) => cluster.apply(&payload),
        }
    }
}
