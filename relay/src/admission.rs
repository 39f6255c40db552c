//! Admission of new QUIC connections, before any TLS work: who may start a
//! handshake. Sans-IO: the caller passes the address, whether QUIC already
//! validated it (a Retry token) and the time.
//!
//! A connection is *unauthenticated* from its first packet until its device
//! proved its key (or it ended). Those are what a peer without an enrolled
//! device can hold, so they are bounded three ways: in total, per source
//! address, and in the rate at which one address may start them. Past a
//! threshold of unauthenticated connections, a peer must first prove it
//! receives at its address (QUIC Retry), which stops floods from spoofed
//! addresses at the cost of one round trip.
//!
//! Addresses are counted as IPv4 addresses and IPv6 /64 prefixes (one
//! subscriber's network gets a /64). Many devices behind one NAT share an
//! address, which is why the per-address defaults are generous.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Limits;
use crate::metrics as m;
use crate::rate::TokenBucket;

/// Addresses tracked at once before those with nothing pending and a full
/// bucket are forgotten (forgetting them changes nothing).
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// What a new connection gets.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Go ahead; hold the ticket until the device authenticated.
    Admit(Ticket),
    /// Prove the address first: answer with a QUIC Retry.
    Retry,
    /// Refused before TLS, for this reason.
    Refuse(Refusal),
}

/// Why a connection was refused; the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_unauthenticated` connections are awaiting authentication.
    Unauthenticated,
    /// The address has `max_unauthenticated_per_address` awaiting it.
    Address,
    /// The address started handshakes faster than
    /// `handshake_rate_per_address`.
    AddressRate,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Address => "address",
            Self::AddressRate => "address_rate",
        }
    }
}

/// An unauthenticated connection counted against its address and the
/// total; dropping it (authenticated, or ended) gives the place back.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.key);
    }
}

#[derive(Debug)]
struct Address {
    pending: u32,
    bucket: TokenBucket,
}

#[derive(Debug, Default)]
struct Inner {
    pending: u32,
    addresses: HashMap<IpAddr, Address>,
}

/// The limits on unauthenticated connections, and their count.
#[derive(Debug)]
pub(crate) struct Admission {
    max_unauthenticated: u32,
    max_per_address: u32,
    rate_per_address: u32,
    retry_above: u32,
    inner: Mutex<Inner>,
}

/// The address `ip` is counted under: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Admission {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            max_unauthenticated: limits.max_unauthenticated,
            max_per_address: limits.max_unauthenticated_per_address,
            rate_per_address: limits.handshake_rate_per_address,
            retry_above: limits.retry_above,
            inner: Mutex::default(),
        })
    }

    /// Decides on a new connection from `ip`; `validated`: QUIC already
    /// proved the address (the connection came back with a Retry token).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, validated: bool, now: Instant) -> Verdict {
        let key = address_key(ip);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !validated && inner.pending >= self.retry_above {
            return Verdict::Retry;
        }
        if inner.pending >= self.max_unauthenticated {
            return Verdict::Refuse(Refusal::Unauthenticated);
        }
        if !inner.addresses.contains_key(&key) && inner.addresses.len() >= MAX_TRACKED_ADDRESSES {
            inner
                .addresses
                .retain(|_, a| a.pending > 0 || !a.bucket.is_full(now));
            if inner.addresses.len() >= MAX_TRACKED_ADDRESSES {
                // Everyone's bucket is in use: forget the rates, keep the
                // counts (at most `max_unauthenticated` of those).
                inner.addresses.retain(|_, a| a.pending > 0);
            }
        }
        let rate = self.rate_per_address;
        let a = inner.addresses.entry(key).or_insert_with(|| Address {
            pending: 0,
            bucket: TokenBucket::new(rate, now),
        });
        if a.pending >= self.max_per_address {
            return Verdict::Refuse(Refusal::Address);
        }
        if a.bucket.take(now).is_err() {
            return Verdict::Refuse(Refusal::AddressRate);
        }
        a.pending += 1;
        inner.pending += 1;
        metrics::gauge!(m::UNAUTHENTICATED).set(f64::from(inner.pending));
        Verdict::Admit(Ticket {
            admission: self.clone(),
            key,
        })
    }

    fn release(&self, key: IpAddr) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.pending = inner.pending.saturating_sub(1);
        metrics::gauge!(m::UNAUTHENTICATED).set(f64::from(inner.pending));
        if let Some(a) = inner.addresses.get_mut(&key) {
            a.pending = a.pending.saturating_sub(1);
        }
    }

    /// Connections awaiting authentication now.
    #[cfg(test)]
    pub fn unauthenticated(&self) -> u32 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rate::BURST_SECONDS;

    fn admission(total: u32, per_address: u32, rate: u32, retry_above: u32) -> Arc<Admission> {
        Admission::new(&Limits {
            max_unauthenticated: total,
            max_unauthenticated_per_address: per_address,
            handshake_rate_per_address: rate,
            retry_above,
            ..Limits::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admitted(v: Verdict) -> Ticket {
        match v {
            Verdict::Admit(t) => t,
            other => panic!("not admitted: {other:?}"),
        }
    }

    fn refused(v: Verdict) -> Refusal {
        match v {
            Verdict::Refuse(r) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back_when_done() {
        let a = admission(100, 2, 1000, 100);
        let t0 = Instant::now();
        let first = admitted(a.admit(ip("192.0.2.1"), true, t0));
        let _second = admitted(a.admit(ip("192.0.2.1"), true, t0));
        assert_eq!(
            refused(a.admit(ip("192.0.2.1"), true, t0)),
            Refusal::Address
        );
        // Another address is not affected.
        let _other = admitted(a.admit(ip("192.0.2.2"), true, t0));
        assert_eq!(a.unauthenticated(), 3);
        // Authenticated (or gone): the place is free again.
        drop(first);
        assert_eq!(a.unauthenticated(), 2);
        let _third = admitted(a.admit(ip("192.0.2.1"), true, t0));
    }

    #[test]
    fn an_address_starts_handshakes_at_its_rate() {
        let a = admission(1000, 1000, 10, 1000);
        let t0 = Instant::now();
        for _ in 0..10 * BURST_SECONDS {
            drop(admitted(a.admit(ip("192.0.2.1"), true, t0)));
        }
        assert_eq!(
            refused(a.admit(ip("192.0.2.1"), true, t0)),
            Refusal::AddressRate
        );
        drop(admitted(a.admit(ip("192.0.2.9"), true, t0)));
        drop(admitted(a.admit(
            ip("192.0.2.1"),
            true,
            t0 + Duration::from_millis(100),
        )));
    }

    #[test]
    fn unauthenticated_connections_are_bounded_in_total() {
        let a = admission(3, 10, 1000, 1000);
        let t0 = Instant::now();
        let _held: Vec<_> = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
            .iter()
            .map(|s| admitted(a.admit(ip(s), true, t0)))
            .collect();
        assert_eq!(
            refused(a.admit(ip("192.0.2.4"), true, t0)),
            Refusal::Unauthenticated
        );
    }

    #[test]
    fn under_load_an_unproven_address_is_asked_to_retry() {
        let a = admission(100, 10, 1000, 2);
        let t0 = Instant::now();
        // Below the threshold nobody is asked.
        let _one = admitted(a.admit(ip("192.0.2.1"), false, t0));
        let _two = admitted(a.admit(ip("192.0.2.2"), false, t0));
        assert!(matches!(
            a.admit(ip("192.0.2.3"), false, t0),
            Verdict::Retry
        ));
        // Back with a token, it is admitted.
        let _three = admitted(a.admit(ip("192.0.2.3"), true, t0));
        // A threshold of 0: everyone proves the address.
        let always = admission(100, 10, 1000, 0);
        assert!(matches!(
            always.admit(ip("192.0.2.1"), false, t0),
            Verdict::Retry
        ));
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a = admission(100, 1, 1000, 100);
        let t0 = Instant::now();
        let _t = admitted(a.admit(ip("2001:db8:1:2::1"), true, t0));
        assert_eq!(
            refused(a.admit(ip("2001:db8:1:2:ffff::9"), true, t0)),
            Refusal::Address
        );
        let _u = admitted(a.admit(ip("2001:db8:1:3::1"), true, t0));
        let _v = admitted(a.admit(ip("192.0.2.7"), true, t0));
        assert_eq!(
            refused(a.admit(ip("::ffff:192.0.2.7"), true, t0)),
            Refusal::Address
        );
    }

    #[test]
    fn the_addresses_tracked_are_bounded() {
        let a = admission(u32::MAX, 10, 1, u32::MAX);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 + 10 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(admitted(a.admit(addr, true, t0)));
        }
        let tracked = a.inner.lock().unwrap().addresses.len();
        assert!(tracked <= MAX_TRACKED_ADDRESSES, "{tracked}");
    }
}
