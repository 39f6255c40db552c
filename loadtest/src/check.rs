//! What a run's deliveries are checked against: every acceptance
//! delivered exactly once, in order, only to members; the silences and the
//! recoveries after disconnects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::report::{Latency, Recovery, Verification};
use crate::world::World;

/// What a device's receiver hands back at the end (and a slice hands to
/// the merge).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Received {
    /// (message number, seq) of every message of this run the app saw.
    pub messages: Vec<(u64, u64)>,
    /// Deliveries whose seq did not increase within their conversation.
    pub reordered: u64,
    /// Lost connections (`Event::Disconnected`).
    pub disconnects: u64,
    /// Successful reconnections (`Event::Reconnected`).
    pub reconnects: u64,
    /// (disconnected at, received again at) in seconds since the schedule
    /// started: from a disconnect (the first of a chain of failed attempts)
    /// to the first delivery after reconnecting.
    pub recoveries: Vec<(f64, f64)>,
    /// Disconnected at, with no delivery since (at the end of the run).
    pub waiting_since: Option<f64>,
}

/// Counts deliveries of accepted messages, looking at each device's new
/// arrivals only.
pub(crate) struct OwedSeen {
    checked: Vec<usize>,
    seen: u64,
}

impl OwedSeen {
    pub(crate) fn new(devices: usize) -> Self {
        Self {
            checked: vec![0; devices],
            seen: 0,
        }
    }

    pub(crate) fn update(
        &mut self,
        progress: &[Arc<Mutex<Received>>],
        accepted: &std::collections::HashSet<u64>,
    ) -> u64 {
        for (d, p) in progress.iter().enumerate() {
            let got = p.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (m, _) in &got.messages[self.checked[d]..] {
                if accepted.contains(m) {
                    self.seen += 1;
                }
            }
            self.checked[d] = got.messages.len();
        }
        self.seen
    }
}

/// The longest silence between two deliveries (to any device) from the
/// first delivery to the end of the schedule: while the schedule runs,
/// deliveries are expected all the time.
#[derive(Debug, Default)]
pub(crate) struct Gap {
    pub last_us: Option<u64>,
    pub longest_us: u64,
    pub longest_from_us: u64,
}

impl Gap {
    pub(crate) fn delivered(&mut self, at_us: u64, schedule_end_us: u64) {
        if let Some(last) = self.last_us {
            // Only the part of a silence that lies within the schedule.
            let end = at_us.min(schedule_end_us.max(last));
            if at_us > last && end.saturating_sub(last) > self.longest_us {
                self.longest_us = end - last;
                self.longest_from_us = last;
            }
        }
        self.last_us = Some(self.last_us.map_or(at_us, |l| l.max(at_us)));
    }
}

/// Disconnects, reconnects and the time each device took to receive again.
pub(crate) fn recovery(received: &[Received], gap: &Gap) -> anyhow::Result<Recovery> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("histogram")?;
    let mut r = Recovery {
        longest_delivery_gap_secs: gap.longest_us as f64 / 1e6,
        longest_delivery_gap_from_secs: gap.longest_from_us as f64 / 1e6,
        ..Default::default()
    };
    for got in received {
        r.disconnects += got.disconnects;
        r.reconnects += got.reconnects;
        if got.disconnects > 0 {
            r.devices_disconnected += 1;
        }
        if got.waiting_since.is_some() {
            r.never_received_again += 1;
        }
        for (from, to) in &got.recoveries {
            let _ = h.record((((to - from) * 1e6) as u64).max(1));
            r.first_disconnect_at_secs =
                Some(r.first_disconnect_at_secs.map_or(*from, |f| f.min(*from)));
            r.last_received_again_at_secs =
                Some(r.last_received_again_at_secs.map_or(*to, |l| l.max(*to)));
        }
        if let Some(from) = got.waiting_since {
            r.first_disconnect_at_secs =
                Some(r.first_disconnect_at_secs.map_or(from, |f| f.min(from)));
        }
    }
    r.time_to_receive_again = Latency::from(&h);
    Ok(r)
}

/// Checks every delivery against every acceptance.
pub(crate) fn verify(
    world: &World,
    accepted: &[(u64, usize, u64)],
    received: &[Received],
) -> Verification {
    let mut v = Verification::default();
    // msg -> (conversation, seq)
    let by_msg: HashMap<u64, (usize, u64)> =
        accepted.iter().map(|(m, c, s)| (*m, (*c, *s))).collect();
    let mut by_slot: HashMap<(usize, u64), u64> = HashMap::new();
    for (m, c, s) in accepted {
        if by_slot.insert((*c, *s), *m).is_some() {
            v.order_conflicts += 1;
        }
    }
    let mut per_conv = vec![0u64; world.conversations.len()];
    for (_, c, _) in accepted {
        per_conv[*c] += 1;
    }
    let mut account_convs: Vec<Vec<usize>> = vec![Vec::new(); world.accounts.len()];
    for (i, c) in world.conversations.iter().enumerate() {
        for m in &c.members {
            account_convs[*m].push(i);
        }
    }
    for (d, got) in received.iter().enumerate() {
        let account = world.devices[d].account;
        let expected: u64 = account_convs[account].iter().map(|c| per_conv[*c]).sum();
        v.expected += expected;
        v.reordered += got.reordered;
        let mut msgs: Vec<(u64, u64)> = got.messages.clone();
        msgs.sort_unstable();
        let mut good = 0u64;
        let mut prev: Option<u64> = None;
        for (m, seq) in msgs {
            v.delivered += 1;
            if prev == Some(m) {
                v.duplicated += 1;
                continue;
            }
            prev = Some(m);
            match by_msg.get(&m) {
                None => v.unexpected += 1,
                Some((c, s)) => {
                    if !world.conversations[*c].members.contains(&account) {
                        v.misdelivered += 1;
                    } else if *s != seq {
                        v.reordered += 1;
                    } else {
                        good += 1;
                    }
                }
            }
        }
        v.lost += expected.saturating_sub(good);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_only_within_the_schedule() {
        let mut g = Gap::default();
        let end = 10_000_000;
        for at in [
            1_000_000, 1_100_000, 4_100_000, 4_000_000, 4_200_000, 5_000_000, 6_000_000, 7_000_000,
        ] {
            g.delivered(at, end);
        }
        assert_eq!((g.longest_us, g.longest_from_us), (3_000_000, 1_100_000));
        // A silence running past the end of the schedule counts up to it.
        g.delivered(16_000_000, end);
        assert_eq!((g.longest_us, g.longest_from_us), (3_000_000, 1_100_000));
        let mut g = Gap::default();
        g.delivered(1_000_000, end);
        g.delivered(15_000_000, end);
        assert_eq!((g.longest_us, g.longest_from_us), (9_000_000, 1_000_000));
    }

    #[test]
    fn time_to_receive_again_per_device() {
        let received = vec![
            Received {
                disconnects: 2,
                reconnects: 2,
                recoveries: vec![(10.0, 13.0), (20.0, 20.5)],
                ..Default::default()
            },
            Received {
                disconnects: 1,
                reconnects: 1,
                recoveries: vec![(11.0, 17.0)],
                ..Default::default()
            },
            Received {
                disconnects: 1,
                waiting_since: Some(30.0),
                ..Default::default()
            },
            Received::default(),
        ];
        let r = recovery(&received, &Gap::default()).unwrap();
        assert_eq!(
            (r.devices_disconnected, r.disconnects, r.reconnects),
            (3, 4, 3)
        );
        assert_eq!(r.never_received_again, 1);
        assert_eq!(r.time_to_receive_again.count, 3);
        assert!(
            (r.time_to_receive_again.max_ms - 6000.0).abs() < 10.0,
            "{r:?}"
        );
        assert_eq!(r.first_disconnect_at_secs, Some(10.0));
        assert_eq!(r.last_received_again_at_secs, Some(20.5));
    }
}
