//! One-time tickets for attachment transfers on a WebSocket (sans-IO).
//!
//! On QUIC a device opens a stream per transfer beside its session. A
//! WebSocket (the TCP fallback, the web messenger) has no streams, so the
//! device asks its authenticated session for a ticket (`TransferTicket`)
//! and opens a second WebSocket at `/v1/transfer` on the same relay whose
//! first bytes are the ticket. A ticket is 32 random bytes, good once, for
//! [`TICKET_TTL`], on the relay that issued it, and only for the device
//! that asked: it carries that device's identity to the transfer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of a ticket.
pub(crate) const TICKET_BYTES: usize = 32;
/// How long a ticket may wait for its WebSocket.
pub(crate) const TICKET_TTL: Duration = Duration::from_secs(30);
/// Tickets one device may hold unused at once.
pub(crate) const MAX_PER_DEVICE: usize = 16;
/// Tickets the relay holds unused at once, all devices together.
pub(crate) const MAX_TICKETS: usize = 100_000;

/// Who a ticket lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub device_id: String,
    pub account_id: String,
}

/// The tickets issued and not yet used.
#[derive(Debug, Default)]
pub(crate) struct Tickets {
    issued: Mutex<HashMap<[u8; TICKET_BYTES], (Holder, Instant)>>,
}

impl Tickets {
    /// Records `ticket` (fresh random bytes) for `holder` at `now`; refused
    /// when the device or the relay holds too many unused.
    pub(crate) fn issue(
        &self,
        ticket: [u8; TICKET_BYTES],
        holder: Holder,
        now: Instant,
    ) -> Result<(), String> {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.retain(|_, (_, at)| now.saturating_duration_since(*at) < TICKET_TTL);
        let mine = issued
            .values()
            .filter(|(h, _)| h.device_id == holder.device_id)
            .count();
        if mine >= MAX_PER_DEVICE {
            return Err(format!(
                "this device holds {MAX_PER_DEVICE} unused transfer tickets; use them first"
            ));
        }
        if issued.len() >= MAX_TICKETS {
            return Err("the relay holds too many unused transfer tickets; try again".into());
        }
        issued.insert(ticket, (holder, now));
        Ok(())
    }

    /// The holder of `ticket`, if it was issued, is unused and fresh at
    /// `now`; it cannot be used again.
    pub(crate) fn redeem(&self, ticket: &[u8], now: Instant) -> Option<Holder> {
        let key: [u8; TICKET_BYTES] = ticket.try_into().ok()?;
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let (holder, at) = issued.remove(&key)?;
        (now.saturating_duration_since(at) < TICKET_TTL).then_some(holder)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn bob() -> Holder {
        Holder {
            device_id: "bob.web".into(),
            account_id: "bob".into(),
        }
    }

    #[test]
    fn a_ticket_opens_one_transfer_for_its_device_while_fresh() {
        let t = Tickets::default();
        let now = Instant::now();
        t.issue([1; TICKET_BYTES], bob(), now).unwrap();
        t.issue([2; TICKET_BYTES], bob(), now).unwrap();
        assert_eq!(t.redeem(&[1; TICKET_BYTES], now), Some(bob()));
        assert_eq!(t.redeem(&[1; TICKET_BYTES], now), None, "once");
        assert_eq!(t.redeem(&[3; TICKET_BYTES], now), None, "never issued");
        assert_eq!(t.redeem(&[2; 5], now), None, "not a ticket");
        assert_eq!(
            t.redeem(&[2; TICKET_BYTES], now + TICKET_TTL),
            None,
            "stale"
        );
    }

    #[test]
    fn a_device_holds_a_bounded_number_of_unused_tickets() {
        let t = Tickets::default();
        let now = Instant::now();
        for i in 0..MAX_PER_DEVICE {
            t.issue([i as u8; TICKET_BYTES], bob(), now).unwrap();
        }
        let e = t.issue([99; TICKET_BYTES], bob(), now).unwrap_err();
        assert!(e.contains("unused transfer tickets"), "{e}");
        // Another device is not held up, and stale tickets make room.
        let alice = Holder {
            device_id: "alice.web".into(),
            account_id: "alice".into(),
        };
        t.issue([100; TICKET_BYTES], alice, now).unwrap();
        t.issue([99; TICKET_BYTES], bob(), now + TICKET_TTL)
            .unwrap();
    }
}
