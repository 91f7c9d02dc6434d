//! Local rate limits: a token bucket (GCRA, via governor) per limit and key. Keys are hashed
//! with a per-process random key, so the map holds 8-byte keys whatever the caller sends, and
//! buckets that have refilled are dropped by [`Buckets::forget_idle`]. Past a hard cap of live
//! keys the whole set starts afresh: memory stays bounded even when a caller mints keys faster
//! than buckets refill (at worst, a flood resets the buckets it filled).

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

type Limiter<C> = RateLimiter<u64, DefaultKeyedStateStore<u64>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Live keys per limit before the buckets start afresh (a few MB at most).
pub const MAX_KEYS: usize = 100_000;

pub struct Buckets<C: Clock = DefaultClock> {
    limiter: arc_swap::ArcSwap<Limiter<C>>,
    quota: Quota,
    clock: C,
    max_keys: usize,
    hasher: RandomState,
}

impl Buckets<DefaultClock> {
    pub fn new(rate: NonZeroU32, per: Duration, burst: NonZeroU32) -> Self {
        Self::with_clock(rate, per, burst, DefaultClock::default(), MAX_KEYS)
    }
}

impl<C: Clock + Clone> Buckets<C> {
    pub fn with_clock(rate: NonZeroU32, per: Duration, burst: NonZeroU32, clock: C, max_keys: usize) -> Self {
        let period = (per / rate.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).expect("non-zero period").allow_burst(burst);
        let limiter = RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone());
        Buckets {
            limiter: arc_swap::ArcSwap::from_pointee(limiter),
            quota,
            clock,
            max_keys,
            hasher: RandomState::new(),
        }
    }

    pub fn key_of(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Takes a token; on refusal, how long until the next one.
    pub fn take(&self, key: u64) -> Result<(), Duration> {
        let limiter = self.limiter.load();
        limiter.check_key(&key).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Drops the buckets that are full again (indistinguishable from new ones); past the cap,
    /// starts afresh. Returns whether it had to.
    pub fn forget_idle(&self) -> bool {
        let limiter = self.limiter.load();
        limiter.retain_recent();
        if limiter.len() > self.max_keys {
            let fresh = RateLimiter::new(self.quota, DefaultKeyedStateStore::default(), self.clock.clone());
            self.limiter.store(std::sync::Arc::new(fresh));
            return true;
        }
        limiter.shrink_to_fit();
        false
    }

    pub fn keys(&self) -> usize {
        self.limiter.load().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn burst_then_refill_at_the_rate_exactly() {
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(10), Duration::from_secs(1), nz(5), clock.clone(), MAX_KEYS);
        let key = buckets.key_of(b"caller");
        let admitted = (0..20).filter(|_| buckets.take(key).is_ok()).count();
        assert_eq!(admitted, 5, "the burst");
        let wait = buckets.take(key).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        clock.advance(Duration::from_millis(1000));
        let admitted = (0..20).filter(|_| buckets.take(key).is_ok()).count();
        assert_eq!(admitted, 5, "a second refills ten tokens, capped at the bucket size");
        clock.advance(Duration::from_millis(300));
        let admitted = (0..20).filter(|_| buckets.take(key).is_ok()).count();
        assert_eq!(admitted, 3, "0.3 s at 10/s is three tokens");
    }

    #[test]
    fn keys_are_isolated() {
        let buckets =
            Buckets::with_clock(nz(1), Duration::from_secs(60), nz(1), FakeRelativeClock::default(), MAX_KEYS);
        let (a, b) = (buckets.key_of(b"a"), buckets.key_of(b"b"));
        assert!(buckets.take(a).is_ok());
        assert!(buckets.take(a).is_err());
        assert!(buckets.take(b).is_ok());
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        // 100,000 distinct keys over one (simulated) minute, idle buckets dropped every second.
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(100), Duration::from_secs(1), nz(200), clock.clone(), MAX_KEYS);
        let mut peak = 0;
        for second in 0..60u32 {
            for i in 0..1667u32 {
                let key = buckets.key_of(&(second * 10_000 + i).to_le_bytes());
                assert!(buckets.take(key).is_ok());
            }
            peak = peak.max(buckets.keys());
            clock.advance(Duration::from_secs(1));
            buckets.forget_idle();
        }
        assert!(peak <= 2 * 1667, "live keys stay within a couple of seconds' worth: {peak}");
        clock.advance(Duration::from_secs(5));
        buckets.forget_idle();
        assert_eq!(buckets.keys(), 0, "all buckets refilled and forgotten");
    }

    #[test]
    fn keys_that_never_refill_in_time_are_capped() {
        // One token an hour: a bucket stays live for an hour, so only the cap bounds the map.
        let buckets = Buckets::with_clock(nz(1), Duration::from_secs(3600), nz(1), FakeRelativeClock::default(), 1000);
        for i in 0..1500u32 {
            let _ = buckets.take(buckets.key_of(&i.to_le_bytes()));
        }
        assert_eq!(buckets.keys(), 1500);
        assert!(buckets.forget_idle(), "over the cap: start afresh");
        assert_eq!(buckets.keys(), 0);
        assert!(!buckets.forget_idle());
    }
}
