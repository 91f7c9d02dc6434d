//! The overload guard of `limits.maxMemoryBytes`: past that much heap in use, new requests and
//! connections are shed, every answer waiting on a caller that does not read it is cut off and
//! every idle connection closed, so a sidecar under a slow-read attack or a flood of idle
//! connections gives up the attacker's buffers instead of growing until its container is killed
//! (Envoy's overload manager does the same with `stop_accepting_requests`,
//! `reset_high_memory_stream`, `reject_incoming_connections` and `reduce_timeouts`).
//!
//! Admission control alone cannot bound memory: a burst of requests is admitted while the heap
//! is still small and fills its buffers only when the app answers. So the heap is looked at
//! where it grows, at most every [`SAMPLE_EVERY`]: when a connection is accepted, when a request
//! starts, when a piece of an answer is written, when a write waits on its caller
//! ([`Pressure::watch`]). Past half the limit a sampler task also looks on its own, every
//! [`SAMPLE_EVERY`], and each sample over the limit wakes the writers stalled on their callers
//! and the reads of idle connections: those stalled or idle for [`CUT_AFTER`] give up (a caller
//! reading at any useful rate is not cut for a moment's back-pressure). Nothing runs
//! while the sidecar is idle or its heap well under the limit. Once over, the sidecar is back
//! under only below nine tenths of the limit, so admission does not flap around it.
//!
//! glibc's `mallinfo2` walks the allocator's free lists, so a fragmented heap makes it slower
//! (4 us typical; milliseconds with a hundred thousand free chunks): samples are spaced to at
//! least a hundred times the last one's duration, so they never take more than 1% of a thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// How often the heap is looked at, at most: at a gigabyte a second of answers, what a stalled
/// burst can add between two looks is ten megabytes.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// How long an answer's write must have waited on its caller to be cut off under pressure: more
/// than a slow but reading client waits for one piece (64 KiB at 64 KB/s), far less than
/// `sendTimeout`. A connection idle for as long is closed: a pooled one between two requests a
/// moment apart is not.
pub const CUT_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Pressure {
    /// Bytes of heap in use past which the sidecar is overloaded; 0: never.
    limit: u64,
    over: AtomicBool,
    /// The sampler task runs (past half the limit).
    sampling: AtomicBool,
    /// When the next sample is due, in microseconds since `epoch`.
    next_due: AtomicU64,
    epoch: tokio::time::Instant,
    /// The last heap sample.
    last_sample: AtomicU64,
    /// Notified on each sample over the limit: writers stalled on their callers give up.
    cut: Arc<Notify>,
    sample: fn() -> Option<u64>,
}

/// What something that has waited on its caller, or been idle, since a given time polls for the
/// guard's word to give up: a sample over the limit once it has for [`CUT_AFTER`]. One too young
/// at such a sample is looked at again when it is old enough, not woken at every sample meanwhile.
/// The signal is made at the first poll (or [`CutWait::restart`]): samples before it do not count.
#[derive(Debug, Default)]
pub struct CutWait {
    signal: Option<Pin<Box<OwnedNotified>>>,
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CutWait {
    /// Only samples from now on count.
    pub fn restart(&mut self, guard: &Pressure) {
        self.recheck = None;
        let Some(signal) = guard.cut_signal() else { return };
        match self.signal.as_mut() {
            Some(current) => current.set(signal),
            None => self.signal = Some(Box::pin(signal)),
        }
    }

    /// Ready when whatever has waited since `since` is to be given up; never while `guard` is off.
    pub fn poll(&mut self, cx: &mut Context<'_>, guard: &Pressure, since: tokio::time::Instant) -> Poll<()> {
        if self.signal.is_none() {
            self.restart(guard);
        }
        let old_enough = since + CUT_AFTER;
        loop {
            if let Some(recheck) = self.recheck.as_mut() {
                if recheck.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.recheck = None;
            } else {
                let Some(signal) = self.signal.as_mut() else { return Poll::Pending };
                if signal.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // A sample over the limit, maybe taken while nothing waited (a busy connection).
                let next = guard.cut_signal().expect("a signal is made only with a limit");
                signal.set(next);
            }
            if !guard.is_over() {
                continue;
            }
            if tokio::time::Instant::now() >= old_enough {
                return Poll::Ready(());
            }
            self.recheck = Some(Box::pin(tokio::time::sleep_until(old_enough)));
        }
    }
}

/// An answer cut off because the sidecar was over its memory limit while it waited on its
/// caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut;

impl Pressure {
    /// A guard for `limit` bytes of heap; `None` or 0, or where the heap cannot be measured: off.
    pub fn new(limit: Option<u64>) -> Arc<Self> {
        let limit = limit.filter(|_| super::heap_in_use().is_some()).unwrap_or(0);
        Self::with_sampler(limit, super::heap_in_use)
    }

    /// Never overloaded (proxies built without limits, unit tests).
    pub fn off() -> Arc<Self> {
        Self::with_sampler(0, || None)
    }

    /// Over its limit from the start, and never sampled (unit tests of what sheds).
    #[cfg(test)]
    pub(crate) fn overloaded() -> Arc<Self> {
        let guard = Self::with_sampler(1, || None);
        guard.over.store(true, Ordering::Relaxed);
        guard.next_due.store(u64::MAX, Ordering::Relaxed);
        guard
    }

    /// Sampled, and every sample over its limit (unit tests of what it cuts).
    #[cfg(test)]
    pub(crate) fn always_over() -> Arc<Self> {
        Self::with_sampler(1, || Some(2))
    }

    fn with_sampler(limit: u64, sample: fn() -> Option<u64>) -> Arc<Self> {
        Arc::new(Pressure {
            limit,
            over: AtomicBool::new(false),
            sampling: AtomicBool::new(false),
            next_due: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            last_sample: AtomicU64::new(0),
            cut: Arc::new(Notify::new()),
            sample,
        })
    }

    pub fn limit(&self) -> Option<u64> {
        (self.limit > 0).then_some(self.limit)
    }

    /// The limit as refusal events name it: its bytes, or `none`.
    pub fn setting(&self) -> String {
        self.limit().map_or_else(|| "none".to_string(), |bytes| bytes.to_string())
    }

    /// Whether new requests are to be shed: the last sample was over the limit.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// The heap in use at the last sample (0 before the first).
    pub fn last_sample(&self) -> u64 {
        self.last_sample.load(Ordering::Relaxed)
    }

    /// The heap may have grown here (a request starts, an answer's piece is written or waits):
    /// a sample if one is due. Call it on the runtime.
    pub fn watch(self: &Arc<Self>) {
        if self.limit > 0 {
            self.watch_at(self.micros());
        }
    }

    fn watch_at(self: &Arc<Self>, now: u64) {
        if self.claim_sample(now) && self.take_sample() && !self.sampling.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().sample_while_high());
        }
    }

    /// Whether a sample is due at `now` and this caller is the one to take it (no other task
    /// takes it meanwhile: `take_sample` sets the next due time).
    fn claim_sample(&self, now: u64) -> bool {
        let due = self.next_due.load(Ordering::Acquire);
        now >= due && self.next_due.compare_exchange(due, u64::MAX, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Resolves at the next sample over the limit from now on (never when the guard is off).
    fn cut_signal(&self) -> Option<OwnedNotified> {
        (self.limit > 0).then(|| self.cut.clone().notified_owned())
    }

    /// Runs `write` (an answer's write to its caller), unless a sample over the limit comes
    /// once it has waited [`CUT_AFTER`]: then it is dropped unfinished and [`Cut`] returned. A
    /// write that can go at once never waits on the guard.
    pub async fn unless_cut<T>(self: &Arc<Self>, write: impl Future<Output = T>) -> Result<T, Cut> {
        self.unless_cut_since(None, write).await
    }

    /// [`Pressure::unless_cut`] for something that has waited on its caller since `since`
    /// already (a request body held piece by piece: each piece it trickles must not start the
    /// wait afresh), or since now.
    pub async fn unless_cut_since<T>(
        self: &Arc<Self>,
        since: Option<tokio::time::Instant>,
        write: impl Future<Output = T>,
    ) -> Result<T, Cut> {
        if self.limit == 0 {
            return Ok(write.await);
        }
        let started = self.micros();
        self.watch_at(started);
        let since = since.unwrap_or(self.epoch + Duration::from_micros(started));
        let mut wait = CutWait::default();
        tokio::pin!(write);
        std::future::poll_fn(|cx| match write.as_mut().poll(cx) {
            Poll::Ready(done) => Poll::Ready(Ok(done)),
            Poll::Pending => wait.poll(cx, self, since).map(|()| Err(Cut)),
        })
        .await
    }

    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Samples the heap, updates `over` (telling stalled writers when over), sets when the next
    /// sample is due; returns whether the heap is past half the limit (the sampler task's work).
    fn take_sample(&self) -> bool {
        let started = self.micros();
        let clock = std::time::Instant::now();
        let heap = (self.sample)().unwrap_or(0);
        let took = clock.elapsed().as_micros() as u64;
        let every = (SAMPLE_EVERY.as_micros() as u64).max(took.saturating_mul(100));
        self.next_due.store(started + took + every, Ordering::Release);
        self.last_sample.store(heap, Ordering::Relaxed);
        let was_over = self.over.load(Ordering::Relaxed);
        let over = heap > self.limit || (was_over && heap > self.limit / 10 * 9);
        if over != was_over {
            self.over.store(over, Ordering::Relaxed);
            if over {
                tracing::warn!(
                    heap,
                    limit = self.limit,
                    "over limits.maxMemoryBytes: new requests are shed and answers stalled on their callers cut off"
                );
            } else {
                tracing::info!(heap, limit = self.limit, "back under limits.maxMemoryBytes");
            }
        }
        if over {
            self.cut.notify_waiters();
        }
        over || heap > self.limit / 2
    }

    /// Samples on its own while the heap is past half the limit, however quiet the requests.
    async fn sample_while_high(self: Arc<Self>) {
        loop {
            let due = self.next_due.load(Ordering::Acquire);
            let wait = Duration::from_micros(due.saturating_sub(self.micros()).min(1_000_000));
            tokio::time::sleep(wait.max(SAMPLE_EVERY / 10)).await;
            // A sample another task took meanwhile counts; this one waits for the next.
            if !self.claim_sample(self.micros()) {
                continue;
            }
            if !self.take_sample() {
                self.sampling.store(false, Ordering::Release);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_samples(guard: &Arc<Pressure>) {
        for _ in 0..3 {
            tokio::time::sleep(SAMPLE_EVERY).await;
            guard.watch();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_requests_are_shed_stalled_writes_cut_and_both_recover() {
        static HEAP: AtomicU64 = AtomicU64::new(10);
        let guard = Pressure::with_sampler(100, || Some(HEAP.load(Ordering::Relaxed)));
        next_samples(&guard).await;
        assert!(!guard.is_over());
        assert_eq!(guard.last_sample(), 10);
        assert!(!guard.sampling.load(Ordering::Acquire), "well under the limit nothing runs on its own");

        HEAP.store(101, Ordering::Relaxed);
        next_samples(&guard).await;
        assert!(guard.is_over(), "new requests are shed");
        // A write that goes at once is never cut, even over the limit.
        assert_eq!(guard.unless_cut(async { 7 }).await, Ok(7));
        // A write that waits a moment on its caller is not cut...
        let moment = guard.unless_cut(tokio::time::sleep(CUT_AFTER / 2)).await;
        assert_eq!(moment, Ok(()));
        // ...one stalled on its caller is, at the sampler's first sample after CUT_AFTER, with
        // no request to look at the heap meanwhile.
        let started = tokio::time::Instant::now();
        assert_eq!(guard.unless_cut(std::future::pending::<()>()).await, Err(Cut));
        let waited = started.elapsed();
        assert!(waited >= CUT_AFTER && waited <= CUT_AFTER + 2 * SAMPLE_EVERY, "{waited:?}");
        let signal = guard.cut_signal().expect("on");
        tokio::select! {
            () = signal => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => panic!("the stream wrapper's signal never came"),
        }

        // Back under only below nine tenths of the limit: no flapping around it.
        HEAP.store(95, Ordering::Relaxed);
        next_samples(&guard).await;
        assert!(guard.is_over(), "still over at 95% of the limit");
        HEAP.store(40, Ordering::Relaxed);
        tokio::time::sleep(3 * SAMPLE_EVERY).await;
        assert!(!guard.is_over(), "the sampler sees the heap fall, with no request");
        assert!(!guard.sampling.load(Ordering::Acquire), "and stops under half the limit");
        let stalled = tokio::time::timeout(Duration::from_secs(2), guard.unless_cut(std::future::pending::<()>()));
        assert!(stalled.await.is_err(), "under the limit nothing is cut");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_sample_spaces_the_next_ones_out() {
        static SLOW: AtomicBool = AtomicBool::new(false);
        static TAKEN: AtomicU64 = AtomicU64::new(0);
        fn sample() -> Option<u64> {
            TAKEN.fetch_add(1, Ordering::Relaxed);
            if SLOW.load(Ordering::Relaxed) {
                // Stands for mallinfo2 walking a fragmented heap (paused time moves only so).
                std::thread::sleep(Duration::from_millis(2));
            }
            Some(1)
        }
        let guard = Pressure::with_sampler(100, sample);
        for _ in 0..10 {
            guard.watch();
            tokio::time::advance(SAMPLE_EVERY).await;
        }
        assert!(TAKEN.load(Ordering::Relaxed) >= 5, "about one per SAMPLE_EVERY");
        SLOW.store(true, Ordering::Relaxed);
        tokio::time::advance(SAMPLE_EVERY).await;
        guard.watch();
        let slow = TAKEN.load(Ordering::Relaxed);
        for _ in 0..10 {
            tokio::time::advance(SAMPLE_EVERY).await;
            guard.watch();
        }
        assert_eq!(TAKEN.load(Ordering::Relaxed), slow, "a 2 ms sample: the next not for 200 ms");
    }

    #[tokio::test]
    async fn off_never_sheds_or_cuts() {
        let guard = Pressure::off();
        guard.watch();
        assert!(guard.cut_signal().is_none() && !guard.is_over());
        assert_eq!(guard.unless_cut(async { 1 }).await, Ok(1));
    }
}
