//! Token buckets for the relay's rate limits. Sans-IO: the caller passes
//! the time, so the session core and the tests drive them without a clock.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Seconds of the sustained rate a bucket saves up as its burst.
pub(crate) const BURST_SECONDS: u32 = 4;

/// `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`; a burst of [`BURST_SECONDS`] of the rate.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self::with_burst(per_sec, per_sec * f64::from(BURST_SECONDS), now)
    }

    /// A full bucket at `now` of `per_sec` tokens a second (may be below
    /// one) and `burst` saved up (at least one).
    pub fn with_burst(per_sec: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            per_sec: per_sec.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Takes one token; without one, how long until there is one.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec);
        Err(wait.max(Duration::from_millis(1)))
    }

    /// Whether it has a token now, taking nothing; without one, how long
    /// until there is one.
    pub fn peek(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec);
        Err(wait.max(Duration::from_millis(1)))
    }

    /// Whether it has refilled completely (nothing taken for a burst's time).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One bucket per key (a conversation id), created full on first use.
/// Bounded: past `max_keys`, the buckets that refilled completely are
/// forgotten (a forgotten bucket and a new one are the same).
#[derive(Debug)]
pub(crate) struct Buckets {
    per_sec: f64,
    burst: f64,
    max_keys: usize,
    map: DashMap<String, TokenBucket>,
}

impl Buckets {
    /// `per_sec` a second per key, a burst of [`BURST_SECONDS`] of it.
    pub fn new(per_sec: u32, max_keys: usize) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self::with_burst(per_sec, per_sec * f64::from(BURST_SECONDS), max_keys)
    }

    /// `per_hour` an hour per key, `burst` saved up: for rare operations.
    pub fn per_hour(per_hour: u32, burst: u32, max_keys: usize) -> Self {
        Self::with_burst(
            f64::from(per_hour.max(1)) / 3600.0,
            f64::from(burst.max(1)),
            max_keys,
        )
    }

    fn with_burst(per_sec: f64, burst: f64, max_keys: usize) -> Self {
        Self {
            per_sec,
            burst,
            max_keys,
            map: DashMap::new(),
        }
    }

    /// Takes one token of `key`'s bucket; without one, how long to wait.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if let Some(mut b) = self.map.get_mut(key) {
            return b.take(now);
        }
        if self.map.len() >= self.max_keys {
            self.map.retain(|_, b| !b.is_full(now));
        }
        let mut b = TokenBucket::with_burst(self.per_sec, self.burst, now);
        let taken = b.take(now);
        self.map.insert(key.to_owned(), b);
        taken
    }

    /// Whether `key`'s bucket has a token now, taking nothing; without one,
    /// how long until there is one.
    pub fn peek(&self, key: &str, now: Instant) -> Result<(), Duration> {
        match self.map.get_mut(key) {
            Some(mut b) => b.peek(now),
            None => Ok(()),
        }
    }

    /// Keys with a bucket now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        for _ in 0..10 * BURST_SECONDS {
            assert_eq!(b.take(t0), Ok(()));
        }
        let wait = b.take(t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // One token every 100 ms.
        assert_eq!(b.take(t0 + Duration::from_millis(100)), Ok(()));
        assert!(b.take(t0 + Duration::from_millis(150)).is_err());
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..10 * BURST_SECONDS {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
        // A clock that steps back takes nothing away.
        assert!(b.take(t0).is_err());
    }

    #[test]
    fn hourly_buckets_give_their_burst_then_one_token_per_interval() {
        let t0 = Instant::now();
        let buckets = Buckets::per_hour(6, 2, 10);
        assert_eq!(buckets.take("c", t0), Ok(()));
        assert_eq!(buckets.take("c", t0), Ok(()));
        let wait = buckets.take("c", t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(599) && wait <= Duration::from_secs(600),
            "{wait:?}"
        );
        assert!(buckets.take("c", t0 + Duration::from_secs(590)).is_err());
        assert_eq!(buckets.take("c", t0 + Duration::from_secs(600)), Ok(()));
        assert_eq!(buckets.take("d", t0), Ok(()));
    }

    #[test]
    fn peeking_takes_nothing() {
        let t0 = Instant::now();
        let buckets = Buckets::new(1, 10);
        assert_eq!(buckets.peek("a", t0), Ok(()));
        for _ in 0..BURST_SECONDS {
            assert_eq!(buckets.peek("a", t0), Ok(()));
            assert_eq!(buckets.take("a", t0), Ok(()));
        }
        let wait = buckets.peek("a", t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(buckets.peek("a", t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn buckets_per_key_are_independent_and_bounded() {
        let t0 = Instant::now();
        let buckets = Buckets::new(1, 2);
        for _ in 0..BURST_SECONDS {
            assert_eq!(buckets.take("a", t0), Ok(()));
        }
        assert!(buckets.take("a", t0).is_err());
        assert_eq!(buckets.take("b", t0), Ok(()));
        // Full: "c" makes room by forgetting the buckets that refilled.
        let later = t0 + Duration::from_secs(u64::from(BURST_SECONDS) + 1);
        assert_eq!(buckets.take("c", later), Ok(()));
        assert_eq!(buckets.len(), 1);
    }
}
