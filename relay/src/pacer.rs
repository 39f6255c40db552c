//! Local deliveries, spread over time: a post to a 7,000-device channel
//! must not put 7,000 packets on the wire faster than the relay (and the
//! network behind it) can take them and read the acknowledgements that come
//! back. Unpaced, the acks pile up in the UDP socket until the kernel drops
//! them, QUIC's loss recovery probes every connection, and a burst turns
//! into seconds.
//!
//! Every delivery to this node's devices reserves time on one schedule at
//! `rate` devices per second, shared by all conversations. A delivery to a
//! few devices is handed out at once (its share of the schedule is taken,
//! so the big ones behind it make room); a bigger one is handed out a slice
//! at a time, each slice at its reserved moment, by a worker of its own
//! conversation, so that small conversations are never stuck behind a
//! channel post and a conversation's deliveries keep their order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herold_router::Delivery;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use crate::registry::{Push, PushOutcome, Registry};

/// Devices handed a delivery at once; a delivery to more is paced.
pub(crate) const SLICE: usize = 64;

/// The schedule: when the next device may be handed a delivery.
#[derive(Debug)]
pub(crate) struct Schedule {
    /// Time one device takes on the schedule.
    per_device: Duration,
    next_free: Mutex<Instant>,
}

impl Schedule {
    pub fn new(rate_per_sec: u32) -> Self {
        Self {
            per_device: Duration::from_secs(1) / rate_per_sec.max(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Reserves the schedule for `devices` devices from `now` on; returns
    /// when they may go (`now` if the schedule is free).
    pub fn reserve(&self, now: Instant, devices: usize) -> Instant {
        let mut next = match self.next_free.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let start = (*next).max(now);
        let n = u32::try_from(devices).unwrap_or(u32::MAX);
        *next = start + self.per_device.saturating_mul(n);
        start
    }
}

type Workers = HashMap<String, mpsc::UnboundedSender<Arc<Delivery>>>;

/// This node's paced deliveries: one worker per conversation with a big
/// delivery under way.
#[derive(Debug)]
pub(crate) struct Pacer {
    schedule: Schedule,
    workers: Mutex<Workers>,
    registry: Arc<Registry>,
}

impl Pacer {
    pub fn new(rate_per_sec: u32, registry: Arc<Registry>) -> Self {
        Self {
            schedule: Schedule::new(rate_per_sec),
            workers: Mutex::default(),
            registry,
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, Workers> {
        match self.workers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Hands `d` to its local devices: at once if it is small and its
    /// conversation has nothing paced under way, else through the
    /// conversation's worker (started if needed), behind what it has queued.
    pub fn deliver(self: &Arc<Self>, d: Arc<Delivery>) {
        let mut workers = self.workers();
        if let Some(w) = workers.get(&d.conversation_id) {
            match w.send(d) {
                Ok(()) => return,
                // The worker is gone (it cannot be while it is in the map,
                // but do not lose the delivery if it were).
                Err(mpsc::error::SendError(d)) => {
                    workers.remove(&d.conversation_id);
                    drop(workers);
                    return self.deliver(d);
                }
            }
        }
        if d.devices.len() <= SLICE {
            drop(workers);
            self.schedule.reserve(Instant::now(), d.devices.len());
            push(&self.registry, &d, &d.devices);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let conversation = d.conversation_id.clone();
        // Cannot fail: the receiver is alive.
        let _ = tx.send(d);
        workers.insert(conversation.clone(), tx);
        drop(workers);
        tokio::spawn(work(self.clone(), conversation, rx));
    }
}

/// Paces one conversation's deliveries, in order, until none is left.
async fn work(
    pacer: Arc<Pacer>,
    conversation: String,
    mut rx: mpsc::UnboundedReceiver<Arc<Delivery>>,
) {
    loop {
        let d = match rx.try_recv() {
            Ok(d) => d,
            Err(_) => {
                // Leave only when nothing was queued meanwhile: a
                // sender holds the map's lock while it sends.
                let mut workers = pacer.workers();
                match rx.try_recv() {
                    Ok(d) => {
                        drop(workers);
                        d
                    }
                    Err(_) => {
                        workers.remove(&conversation);
                        return;
                    }
                }
            }
        };
        for slice in d.devices.chunks(SLICE) {
            let at = pacer.schedule.reserve(Instant::now(), slice.len());
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            push(&pacer.registry, &d, slice);
        }
    }
}

fn push(registry: &Registry, d: &Arc<Delivery>, devices: &[String]) {
    for device in devices {
        if registry.push(device, Push::Deliver(d.clone())) == PushOutcome::SlowConsumer {
            warn!("slow consumer disconnected; it will resync");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_spreads_devices_at_its_rate_and_shares_it() {
        let s = Schedule::new(32_000);
        let t0 = Instant::now();
        // A 7,000-device post: 110 slices over about 219 ms.
        let mut last = t0;
        for (i, slice) in (0..7_000).collect::<Vec<_>>().chunks(SLICE).enumerate() {
            let at = s.reserve(t0, slice.len());
            assert!(at >= last, "slice {i} goes before the one ahead of it");
            last = at;
        }
        let spread = last - t0;
        assert!(
            spread >= Duration::from_millis(215) && spread <= Duration::from_millis(220),
            "{spread:?}"
        );
        // A small delivery arriving meanwhile takes the next free moment,
        // and the next slice of the big one goes after it.
        let small = s.reserve(t0, 10);
        let next = s.reserve(t0, SLICE);
        assert!(small > last && next > small);
        assert_eq!(next - small, Duration::from_secs(1) / 32_000 * 10);
        // Once the schedule is idle, a delivery goes at once.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(s.reserve(later, 1_000), later);
    }
}
