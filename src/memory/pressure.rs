//! The overload guard of `limits.maxMemoryBytes`: past that much heap in use, new requests are
//! shed and every answer waiting on a caller that does not read it is cut off, so a sidecar under
//! a slow-read attack gives up the attacker's buffers instead of growing until its container is
//! killed (Envoy's overload manager does the same with `stop_accepting_requests` and
//! `reset_high_memory_stream`).
//!
//! Admission control alone cannot bound memory: a burst of requests is admitted while the heap
//! is still small and fills its buffers only when the app answers. So the heap is sampled while
//! requests are in flight (every [`SAMPLE_EVERY`]), and each sample over the limit also wakes
//! the writers that are stalled on their callers: those stalled for [`CUT_AFTER`] give up (a
//! caller reading at any useful rate is not cut for a moment's back-pressure). Nothing is sampled
//! while the sidecar is idle. Once over, the sidecar is back under only below nine tenths of the
//! limit, so admission does not flap around it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// How often the heap is looked at while requests are in flight: at a gigabyte a second of
/// answers, what a stalled burst can add between two looks is ten megabytes.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// How long an answer's write must have waited on its caller to be cut off under pressure: more
/// than a slow but reading client waits for one piece (64 KiB at 64 KB/s), far less than
/// `sendTimeout`.
pub const CUT_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Pressure {
    /// Bytes of heap in use past which the sidecar is overloaded; 0: never.
    limit: u64,
    over: AtomicBool,
    /// A sampler task is running.
    sampling: AtomicBool,
    /// Requests in flight on every listener that shares this guard.
    active: AtomicUsize,
    /// The last heap sample.
    last_sample: AtomicU64,
    /// Notified on each sample over the limit: writers stalled on their callers give up.
    cut: Arc<Notify>,
    sample: fn() -> Option<u64>,
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
        guard
    }

    fn with_sampler(limit: u64, sample: fn() -> Option<u64>) -> Arc<Self> {
        Arc::new(Pressure {
            limit,
            over: AtomicBool::new(false),
            sampling: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            last_sample: AtomicU64::new(0),
            cut: Arc::new(Notify::new()),
            sample,
        })
    }

    pub fn limit(&self) -> Option<u64> {
        (self.limit > 0).then_some(self.limit)
    }

    /// Whether new requests are to be shed: the last sample was over the limit.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// The heap in use at the last sample (0 before the first).
    pub fn last_sample(&self) -> u64 {
        self.last_sample.load(Ordering::Relaxed)
    }

    /// A request begins; the heap is watched while any is in flight. Call it on the runtime;
    /// when it returns true, call [`Self::request_ended`] once the request is over.
    pub fn request_started(self: &Arc<Self>) -> bool {
        if self.limit == 0 {
            return false;
        }
        // SeqCst here and where the sampler stops: of the two, one sees the other's write.
        self.active.fetch_add(1, Ordering::SeqCst);
        if !self.sampling.load(Ordering::SeqCst) && !self.sampling.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().sample_while_busy());
        }
        true
    }

    pub fn request_ended(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves at the next sample over the limit from now on (never when the guard is off):
    /// for a stream wrapper that must poll it.
    pub fn cut_signal(&self) -> Option<OwnedNotified> {
        (self.limit > 0).then(|| self.cut.clone().notified_owned())
    }

    /// Runs `write` (an answer's write to its caller), unless a sample over the limit comes
    /// once it has waited [`CUT_AFTER`]: then it is dropped unfinished and [`Cut`] returned. A
    /// write that can go at once never waits on the guard.
    pub async fn unless_cut<T>(&self, write: impl Future<Output = T>) -> Result<T, Cut> {
        if self.limit == 0 {
            return Ok(write.await);
        }
        let started = tokio::time::Instant::now();
        tokio::pin!(write);
        loop {
            tokio::select! {
                biased;
                done = &mut write => return Ok(done),
                () = self.cut.notified() => {
                    if started.elapsed() >= CUT_AFTER {
                        return Err(Cut);
                    }
                }
            }
        }
    }

    async fn sample_while_busy(self: Arc<Self>) {
        loop {
            let heap = (self.sample)().unwrap_or(0);
            self.last_sample.store(heap, Ordering::Relaxed);
            let was_over = self.over.load(Ordering::Relaxed);
            let over = heap > self.limit || (was_over && heap > self.limit / 10 * 9);
            if over != was_over {
                self.over.store(over, Ordering::Relaxed);
                if over {
                    tracing::warn!(heap, limit = self.limit, "over limits.maxMemoryBytes: new requests are shed and answers stalled on their callers cut off");
                } else {
                    tracing::info!(heap, limit = self.limit, "back under limits.maxMemoryBytes");
                }
            }
            if over {
                self.cut.notify_waiters();
            } else if self.active.load(Ordering::SeqCst) == 0 {
                self.sampling.store(false, Ordering::SeqCst);
                // A request that began since the load above saw a sampler running and started
                // none: carry on for it, unless it started one after all.
                if self.active.load(Ordering::SeqCst) == 0 || self.sampling.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_samples() {
        for _ in 0..3 {
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_requests_are_shed_stalled_writes_cut_and_both_recover() {
        static HEAP: AtomicU64 = AtomicU64::new(10);
        let guard = Pressure::with_sampler(100, || Some(HEAP.load(Ordering::Relaxed)));
        assert!(guard.request_started(), "the guard is on");
        next_samples().await;
        assert!(!guard.is_over());
        assert_eq!(guard.last_sample(), 10);

        HEAP.store(101, Ordering::Relaxed);
        next_samples().await;
        assert!(guard.is_over(), "new requests are shed");
        // A write that goes at once is never cut, even over the limit.
        assert_eq!(guard.unless_cut(async { 7 }).await, Ok(7));
        // A write that waits a moment on its caller is not cut...
        let moment = guard.unless_cut(tokio::time::sleep(CUT_AFTER / 2)).await;
        assert_eq!(moment, Ok(()));
        // ...one stalled on its caller is, at the first sample after CUT_AFTER.
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
        next_samples().await;
        assert!(guard.is_over(), "still over at 95% of the limit");
        HEAP.store(50, Ordering::Relaxed);
        next_samples().await;
        assert!(!guard.is_over(), "recovers as soon as the heap falls");
        let stalled = tokio::time::timeout(Duration::from_secs(1), guard.unless_cut(std::future::pending::<()>()));
        assert!(stalled.await.is_err(), "under the limit nothing is cut");
        guard.request_ended();
    }

    #[tokio::test(start_paused = true)]
    async fn the_sampler_stops_when_no_request_is_in_flight_and_starts_with_the_next() {
        static HEAP: AtomicU64 = AtomicU64::new(10);
        let guard = Pressure::with_sampler(100, || Some(HEAP.load(Ordering::Relaxed)));
        assert!(guard.request_started());
        guard.request_ended();
        next_samples().await;
        assert!(!guard.sampling.load(Ordering::Acquire), "idle: nothing polls");
        assert!(guard.request_started());
        assert!(guard.sampling.load(Ordering::Acquire));
        HEAP.store(200, Ordering::Relaxed);
        next_samples().await;
        assert!(guard.is_over());
    }

    #[tokio::test]
    async fn off_never_sheds_or_cuts() {
        let guard = Pressure::off();
        assert!(!guard.request_started() && guard.cut_signal().is_none() && !guard.is_over());
        assert_eq!(guard.unless_cut(async { 1 }).await, Ok(1));
    }
}
