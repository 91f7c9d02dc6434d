//! Local rate limits: a token bucket (GCRA, on governor's keyed state store) per limit and key.
//! Keys are hashed with a per-process random key, so the table holds 8-byte keys whatever the
//! caller sends, and buckets that have refilled are dropped by [`Buckets::forget_idle`].
//!
//! Memory is bounded without forgiving anyone (issue 16: resetting the table past a cap let a
//! flood of new keys reset a limited one). The table ([`CappedStore`]) admits at most `max_keys`
//! keys. A new key that finds the table full makes room first (at most every [`EVICT_EVERY`]):
//! buckets that are full again go, as they are indistinguishable from new ones; if that frees too
//! little, buckets that still hold a token go too (their caller is not limited now). A limited
//! bucket, or one with throttled requests waiting on it, never goes. When even that leaves no room
//! (every tracked key is limited), the new key shares one overflow bucket with every other such
//! key: a flood of new keys limits itself instead of the keys already tracked.
//!
//! Throttling (`action: DELAY`) is a reservation on the same bucket: a request that finds no
//! token may take the next one that comes within `maxDelay`, and waits for it. Each reservation
//! moves the bucket's arrival time on by one token, so a key has at most `maxDelay / period`
//! requests waiting (its queue, bounded by the arithmetic, with no list kept), and a reserved
//! bucket is in the future, so the sweep never drops it.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock, Reference};
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

/// Live keys per limit (a few MB at most); past it, new keys share the overflow bucket.
pub const MAX_KEYS: usize = 100_000;

/// How often a full table may be swept from the request path: a sweep walks every entry, so a
/// flood of new keys pays for one a tenth of a second, not one per request.
pub const EVICT_EVERY: Duration = Duration::from_millis(100);

/// Past a sweep of full buckets, the table is still crowded above this share of the cap: the
/// buckets that hold a token go too.
const CROWDED_PERCENT: usize = 90;

/// governor's DashMap store with a bound on its entries and an overflow bucket past it.
pub struct CappedStore {
    map: DashMapStateStore<u64>,
    /// Entries in `map`, counted exactly: a slot is reserved before an insert and given back when
    /// another thread inserted the key first; the sweep subtracts what it removes.
    live: AtomicUsize,
    cap: usize,
    /// The bucket shared by keys that found the table full.
    overflow: InMemoryState,
    /// Requests that went to the overflow bucket since the last sweep.
    overflowed: AtomicU64,
    /// When the request path last swept the full table (bucket time, nanoseconds; `u64::MAX`: never).
    evicted_at: AtomicU64,
}

impl CappedStore {
    fn new(cap: usize) -> Self {
        CappedStore {
            map: DashMapStateStore::default(),
            live: AtomicUsize::new(0),
            cap,
            overflow: InMemoryState::default(),
            overflowed: AtomicU64::new(0),
            evicted_at: AtomicU64::new(u64::MAX),
        }
    }

    /// governor's `measure_and_replace` on `key`'s bucket, making room for a new key in a full
    /// table first (see the module's notes). `now`, `t` and `tau` are the limit's, as in
    /// [`Buckets`].
    fn measure_and_replace<T, F, E>(&self, key: &u64, now: u64, t: u64, tau: u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The common case, a known key: one shard read lock, as in governor's own store.
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let slot = self.take_slot() || (self.make_room(now, t, tau) && self.take_slot());
        if !slot {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut inserted = false;
        let state = self.map.entry(*key).or_insert_with(|| {
            inserted = true;
            InMemoryState::default()
        });
        if !inserted {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }

    /// Moves a bucket's arrival time back by one token (never before `now`): the key's, or the
    /// overflow bucket's when the key is not in the table (its reservation was made there).
    fn give_back(&self, key: &u64, now: u64, t: u64) {
        let back = |tat: Option<Nanos>| -> Result<((), Nanos), ()> {
            let tat = u64::from(tat.ok_or(())?);
            Ok(((), Nanos::from(tat.saturating_sub(t).max(now))))
        };
        let _ = match self.map.get(key) {
            Some(state) => state.measure_and_replace(&NotKeyed::NonKey, back),
            None => self.overflow.measure_and_replace(&NotKeyed::NonKey, back),
        };
    }

    /// Reserves a slot for a new entry, if the table has one.
    fn take_slot(&self) -> bool {
        if self.live.fetch_add(1, Ordering::Relaxed) < self.cap {
            return true;
        }
        self.live.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Sweeps the full table, unless another request did within [`EVICT_EVERY`]: full buckets
    /// first, then, if the table is still crowded, those that hold a token. True when it swept.
    fn make_room(&self, now: u64, t: u64, tau: u64) -> bool {
        let last = self.evicted_at.load(Ordering::Relaxed);
        let every = EVICT_EVERY.as_nanos() as u64;
        if last != u64::MAX && now.saturating_sub(last) < every {
            return false;
        }
        // One sweeper at a time; the others go on to the overflow bucket meanwhile.
        if self.evicted_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        self.retain_recent(Nanos::from(now.saturating_sub(t)));
        if self.live.load(Ordering::Relaxed) * 100 > self.cap * CROWDED_PERCENT {
            // A bucket whose next token is due by now (TAT - tau <= now) lets its caller in: not
            // limited, and no throttled request waits on it (a reservation puts the TAT past that).
            self.retain_recent(Nanos::from(now.saturating_add(tau)));
        }
        true
    }

    /// A bucket's theoretical arrival time, read without changing it (the closure refuses).
    fn tat(state: &InMemoryState) -> u64 {
        state
            .measure_and_replace(&NotKeyed::NonKey, |prev: Option<Nanos>| Err::<((), Nanos), _>(prev))
            .err()
            .flatten()
            .map_or(0, u64::from)
    }
}

impl CappedStore {
    /// Drops the buckets whose arrival time is not after `drop_below`: with the time a token ago,
    /// those full again (the sweep); with `now + tau`, also those that hold a token (a crowded
    /// table). A limited bucket's is later than either, so it is never dropped.
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        let mut removed = 0;
        self.map.retain(|_, state| {
            let keep = Self::tat(state) > drop_below;
            removed += usize::from(!keep);
            keep
        });
        self.live.fetch_sub(removed, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The buckets of one limit: GCRA over [`CappedStore`]. A bucket's state is its theoretical
/// arrival time (TAT), in nanoseconds since `start`: a request at `now` conforms when
/// `now >= tat - tau`, and moves the TAT to `max(tat, now) + t`.
///
/// The clock is the monotonic one tokio's timers run on (not governor's default TSC clock), so a
/// throttled request's wait, slept on a tokio timer, ends when its token is due.
pub struct Buckets<C: Clock = MonotonicClock> {
    store: CappedStore,
    clock: C,
    start: C::Instant,
    /// One token's worth of time (the period), in nanoseconds.
    t: u64,
    /// How far ahead of now a bucket's TAT may be and still conform: `t * (burst - 1)`.
    tau: u64,
    hasher: RandomState,
}

impl Buckets<MonotonicClock> {
    pub fn new(rate: NonZeroU32, per: Duration, burst: NonZeroU32) -> Self {
        Self::with_clock(rate, per, burst, MonotonicClock, MAX_KEYS)
    }
}

impl<C: Clock> Buckets<C> {
    pub fn with_clock(rate: NonZeroU32, per: Duration, burst: NonZeroU32, clock: C, max_keys: usize) -> Self {
        let period = (per / rate.get()).max(Duration::from_nanos(1));
        let t = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        let tau = t.saturating_mul(u64::from(burst.get() - 1));
        let start = clock.now();
        Buckets { store: CappedStore::new(max_keys), clock, start, t, tau, hasher: RandomState::new() }
    }

    pub fn key_of(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// Takes a token; on refusal, how long until the next one.
    pub fn take(&self, key: u64) -> Result<(), Duration> {
        self.reserve(key, Duration::ZERO).map(|_| ())
    }

    /// Takes a token that comes within `max_wait`: `Ok(wait)`, the time until it is the
    /// request's (zero: at once). Past `max_wait` nothing is taken: `Err(wait)`, how long until a
    /// token would be free.
    pub fn reserve(&self, key: u64, max_wait: Duration) -> Result<Duration, Duration> {
        let now = self.now();
        let max_wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
        let (t, tau) = (self.t, self.tau);
        let outcome = self.store.measure_and_replace(&key, now, t, tau, |tat: Option<Nanos>| {
            let tat = tat.map_or(now, u64::from);
            let wait = tat.saturating_sub(tau).saturating_sub(now);
            if wait > max_wait {
                return Err(wait);
            }
            Ok((wait, Nanos::from(tat.max(now).saturating_add(t))))
        });
        outcome.map(Duration::from_nanos).map_err(Duration::from_nanos)
    }

    /// Gives back a token [`Buckets::reserve`] set aside for a request that never used it (its
    /// caller left while it waited, or a later limit refused it): the next caller may have it.
    /// The requests waiting after it keep their times; one later arrival shares the last's.
    pub fn release(&self, key: u64) {
        self.store.give_back(&key, self.now(), self.t);
    }

    /// Drops the buckets that are full again (indistinguishable from new ones). Returns how many
    /// requests since the last call found the table full and used the overflow bucket.
    pub fn forget_idle(&self) -> u64 {
        // A TAT in the past means a full bucket; a token's margin, as governor's own sweep keeps.
        self.store.retain_recent(Nanos::from(self.now().saturating_sub(self.t)));
        self.store.shrink_to_fit();
        self.store.overflowed.swap(0, Ordering::Relaxed)
    }

    pub fn keys(&self) -> usize {
        self.store.len()
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
    fn a_limited_key_stays_limited_through_200k_new_keys_and_the_table_stays_under_the_cap() {
        // Issue 16: past the cap the table used to start afresh, so 101,000 new header values
        // gave a key at 429 a full bucket again. Here: 1 token a minute, 200,000 new keys over 50
        // (simulated) seconds, a sweep every half second (the sidecar sweeps every second).
        let clock = FakeRelativeClock::default();
        let cap = 50_000;
        let buckets = Buckets::with_clock(nz(1), Duration::from_secs(60), nz(1), clock.clone(), cap);
        let limited = buckets.key_of(b"tenant-limited");
        assert!(buckets.take(limited).is_ok());
        assert!(buckets.take(limited).is_err(), "at 429 before the flood");
        let mut peak = 0;
        let mut overflowed = 0;
        for step in 0..100u32 {
            for i in 0..2_000u32 {
                let _ = buckets.take(buckets.key_of(format!("flood-{step}-{i}").as_bytes()));
            }
            peak = peak.max(buckets.keys());
            // Still limited, and still waiting for the same token: the minute since its last one.
            let wait = buckets.take(limited).expect_err("forgiven by the flood");
            let elapsed = Duration::from_millis(500) * step;
            assert!(wait > Duration::from_secs(60) - elapsed - Duration::from_secs(1), "{wait:?} at {elapsed:?}");
            clock.advance(Duration::from_millis(500));
            overflowed += buckets.forget_idle();
        }
        assert!(peak <= cap, "entries {peak} over the cap {cap}");
        assert!(overflowed > 100_000, "new keys beyond the cap used the overflow bucket: {overflowed}");
        clock.advance(Duration::from_secs(10));
        assert!(buckets.take(limited).is_ok(), "its token came at the minute, as without the flood");
    }

    #[test]
    fn past_the_cap_new_keys_share_one_bucket_and_tracked_keys_keep_theirs() {
        // Every tracked key is limited (its two tokens spent), so a full table has nothing to let go.
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(1), Duration::from_secs(3600), nz(2), clock.clone(), 1000);
        for i in 0..1000u32 {
            let key = buckets.key_of(&i.to_le_bytes());
            assert!(buckets.take(key).is_ok() && buckets.take(key).is_ok());
        }
        assert_eq!(buckets.keys(), 1000);
        assert!(buckets.take(buckets.key_of(&7u32.to_le_bytes())).is_err(), "tracked keys keep their buckets");
        // New keys: the table is full of limited buckets, so they share the overflow bucket
        // (burst 2), and stay out.
        let shared: Vec<bool> =
            (0..4u32).map(|i| buckets.take(buckets.key_of(&(5000 + i).to_le_bytes())).is_ok()).collect();
        assert_eq!(shared, [true, true, false, false]);
        assert_eq!(buckets.keys(), 1000);
        assert_eq!(buckets.forget_idle(), 4, "four requests used the overflow bucket");
        assert_eq!(buckets.keys(), 1000, "no bucket is full yet: none is dropped");
        assert_eq!(buckets.forget_idle(), 0, "the count is per sweep");
        assert!(buckets.take(buckets.key_of(&7u32.to_le_bytes())).is_err(), "and none was forgiven");
    }

    #[test]
    fn a_full_table_lets_full_buckets_go_when_a_new_key_comes_not_a_second_later() {
        // 100/s, burst 100: a key that sent one request is full again 10 ms later. A flood of
        // one-request keys must not hold the table until the next sweep and push new callers
        // into the shared overflow bucket.
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(100), Duration::from_secs(1), nz(100), clock.clone(), 100);
        for i in 0..100u32 {
            assert!(buckets.take(buckets.key_of(&i.to_le_bytes())).is_ok());
        }
        clock.advance(Duration::from_millis(100));
        // The first new key makes room; a hundred new keys get buckets of their own.
        for i in 0..100u32 {
            assert!(buckets.take(buckets.key_of(&(1000 + i).to_le_bytes())).is_ok(), "new key {i}");
        }
        assert_eq!(buckets.keys(), 100);
        assert_eq!(buckets.forget_idle(), 0, "no new key used the overflow bucket");
    }

    #[test]
    fn a_crowded_table_lets_go_of_buckets_with_tokens_left_never_of_limited_ones() {
        // 1 an hour, burst 2. Tracked: one limited key and 99 with a token left (not full, so a
        // sweep of full buckets frees nothing).
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(1), Duration::from_secs(3600), nz(2), clock.clone(), 100);
        let limited = buckets.key_of(b"limited");
        assert!(buckets.take(limited).is_ok() && buckets.take(limited).is_ok());
        assert!(buckets.take(limited).is_err());
        for i in 0..99u32 {
            assert!(buckets.take(buckets.key_of(&i.to_le_bytes())).is_ok());
        }
        assert_eq!(buckets.keys(), 100);
        // A new caller gets a bucket of its own; the 99 unlimited buckets made way for it.
        let newcomer = buckets.key_of(b"newcomer");
        assert!(buckets.take(newcomer).is_ok() && buckets.take(newcomer).is_ok());
        assert!(buckets.take(newcomer).is_err(), "its own bucket of two, not the overflow's");
        assert_eq!(buckets.keys(), 2, "the limited key and the newcomer");
        assert!(buckets.take(limited).is_err(), "the limited key was not forgiven");
        assert_eq!(buckets.forget_idle(), 0);
    }

    #[test]
    fn a_full_table_is_swept_from_the_request_path_at_most_every_tenth_of_a_second() {
        // 1000/s, burst 1: a bucket is full again 2 ms after its request.
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(1000), Duration::from_secs(1), nz(1), clock.clone(), 10);
        let take = |name: String| buckets.take(buckets.key_of(name.as_bytes())).is_ok();
        assert!((0..10).all(|i| take(format!("first-{i}"))));
        clock.advance(Duration::from_millis(5));
        assert!(take("a".into()), "the first new key swept the ten full buckets out");
        assert_eq!(buckets.keys(), 1);
        assert!((0..9).all(|i| take(format!("second-{i}"))));
        assert_eq!(buckets.keys(), 10);
        clock.advance(Duration::from_millis(5));
        // All full again, but the request path swept 5 ms ago: new keys share the overflow
        // bucket (one token).
        assert!(take("b".into()));
        assert!(!take("c".into()));
        assert_eq!(buckets.keys(), 10);
        clock.advance(EVICT_EVERY);
        assert!(take("d".into()));
        assert_eq!(buckets.keys(), 1, "a tenth of a second on, the next new key swept again");
        assert_eq!(buckets.forget_idle(), 2, "two requests used the overflow bucket");
    }

    // === Throttling: reservations (DELAY) ===

    /// A reservation whose request never went on is given back: the next caller gets its
    /// place, not one behind it (tester m2: 30 abandoned waiters made the next one wait 29 s).
    #[test]
    fn a_token_given_back_is_the_next_callers() {
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(1), Duration::from_secs(1), nz(1), clock.clone(), MAX_KEYS);
        let key = buckets.key_of(b"caller");
        let max = Duration::from_secs(30);
        assert_eq!(buckets.reserve(key, max), Ok(Duration::ZERO));
        for n in 1..=5 {
            assert_eq!(buckets.reserve(key, max), Ok(Duration::from_secs(n)));
        }
        // The five waiters leave.
        for _ in 0..5 {
            buckets.release(key);
        }
        assert_eq!(buckets.reserve(key, max), Ok(Duration::from_secs(1)), "the first free place");
        // Given back past the present, it stays at the present: nothing is forgiven.
        for _ in 0..5 {
            buckets.release(key);
        }
        assert_eq!(buckets.take(key), Ok(()));
        assert!(buckets.take(key).is_err(), "one token a second still");
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_reservation_waits_for_the_next_free_token_and_the_queue_is_what_max_wait_admits() {
        // 10/s (a token every 100 ms), burst 2, waits of at most 300 ms.
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(10), Duration::from_secs(1), nz(2), clock.clone(), MAX_KEYS);
        let key = buckets.key_of(b"caller");
        let max = 300 * MS;
        let got: Vec<_> = (0..6).map(|_| buckets.reserve(key, max)).collect();
        assert_eq!(
            got,
            [Ok(Duration::ZERO), Ok(Duration::ZERO), Ok(100 * MS), Ok(200 * MS), Ok(300 * MS), Err(400 * MS)],
            "the burst at once, then one token a period apart, as far as max_wait reaches; then refused"
        );
        assert_eq!(buckets.reserve(key, max), Err(400 * MS), "a refusal takes nothing");
        // 100 ms on, one waiter has had its token: one place in the queue is free again.
        clock.advance(100 * MS);
        assert_eq!(buckets.reserve(key, max), Ok(300 * MS));
        assert_eq!(buckets.reserve(key, max), Err(400 * MS));
        // Another key has a bucket of its own.
        assert_eq!(buckets.reserve(buckets.key_of(b"other"), max), Ok(Duration::ZERO));
        // No wait allowed: the REJECT path, the same bucket arithmetic.
        assert_eq!(buckets.take(key), Err(400 * MS));
    }

    #[test]
    fn reserved_tokens_never_come_faster_than_the_rate_whatever_the_arrivals() {
        // Every grant is released at `now + wait`; whatever the arrival pattern, the releases up to
        // any time T number at most burst + rate * T (T from the first request), and none waits
        // past max_wait. Arrivals from a fixed pseudo-random sequence: deterministic.
        let clock = FakeRelativeClock::default();
        let (rate, burst, max) = (20u32, 5u32, 250 * MS);
        let buckets = Buckets::with_clock(nz(rate), Duration::from_secs(1), nz(burst), clock.clone(), MAX_KEYS);
        let key = buckets.key_of(b"k");
        let (mut now, mut seed, mut releases) = (Duration::ZERO, 0x2545_f491_u64, Vec::new());
        let mut refused = 0;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Bursts of arrivals (0 ms apart) mixed with gaps of up to 120 ms.
            let gap = if seed % 3 == 0 { Duration::ZERO } else { Duration::from_millis(seed % 120) };
            clock.advance(gap);
            now += gap;
            match buckets.reserve(key, max) {
                Ok(wait) => {
                    assert!(wait <= max, "{wait:?}");
                    releases.push(now + wait);
                }
                Err(wait) => {
                    assert!(wait > max);
                    refused += 1;
                }
            }
        }
        releases.sort();
        for (i, at) in releases.iter().enumerate() {
            let allowed = f64::from(burst) + f64::from(rate) * at.as_secs_f64();
            assert!((i + 1) as f64 <= allowed + 1e-9, "release {} at {at:?}: more than {allowed}", i + 1);
        }
        assert!(refused > 0 && releases.len() > 1000, "both happened: {refused} refused, {} let in", releases.len());
    }

    #[test]
    fn a_bucket_with_reservations_is_not_forgotten_until_they_are_spent_and_it_refills() {
        let clock = FakeRelativeClock::default();
        let buckets = Buckets::with_clock(nz(1), Duration::from_secs(1), nz(1), clock.clone(), MAX_KEYS);
        let key = buckets.key_of(b"k");
        assert_eq!(buckets.reserve(key, Duration::from_secs(5)), Ok(Duration::ZERO));
        assert_eq!(buckets.reserve(key, Duration::from_secs(5)), Ok(Duration::from_secs(1)));
        assert_eq!(buckets.reserve(key, Duration::from_secs(5)), Ok(Duration::from_secs(2)));
        clock.advance(Duration::from_secs(2));
        buckets.forget_idle();
        assert_eq!(buckets.keys(), 1, "its tokens are promised into the future: kept");
        assert_eq!(buckets.take(key), Err(Duration::from_secs(1)), "and not forgiven");
        clock.advance(Duration::from_secs(3));
        buckets.forget_idle();
        assert_eq!(buckets.keys(), 0, "refilled: forgotten");
    }
}
