//! Load shedding (SPEC section 3 `limits.maxInflight`): past a number of requests in flight on a
//! listener, a new request is answered 503 with `Retry-After` at once instead of queueing without
//! bound behind the others (queued requests only add latency and memory, and time out anyway).
//! The count is one atomic per request in and out: no lock, no allocation.
//!
//! The same door sheds requests while the sidecar is over `limits.maxMemoryBytes`
//! ([`crate::memory::Pressure`], shared by the listeners), which a new request also asks to
//! look at the heap when a look is due.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::memory::Pressure;
use crate::telemetry::{RefusalCounter, RefusalReason, Refusals};

/// One listener's requests in flight.
pub struct Inflight {
    now: AtomicUsize,
    max: usize,
    /// Each source's share of `max`, where one is kept (`limits.maxInflightPerSource`).
    shares: Option<SourceShares>,
    /// `palisade_requests_shed_total{direction}`, resolved once, and the shed events' count.
    shed: RefusalCounter,
    memory: Arc<Pressure>,
    /// The same series, counted in the events as `limits.maxMemoryBytes`.
    memory_shed: RefusalCounter,
}

/// Requests in flight per source address, in buckets chosen by a keyed hash of it: one caller
/// (1,000 connections of 256 streams each, a byte of body a stream every few seconds) had held
/// every slot of the listener and every other caller got 503. Buckets keep it one atomic per
/// request and bounded in memory; two sources that share one share its count (1 in
/// [`SHARE_BUCKETS`] for any two, and no caller can choose its neighbour: the hash is keyed
/// per process).
struct SourceShares {
    buckets: Box<[AtomicU32]>,
    hasher: std::hash::RandomState,
    max: usize,
    shed: RefusalCounter,
}

/// 8 KiB of counts per listener: a sidecar's whole heap is a few hundred.
const SHARE_BUCKETS: usize = 2048;

impl SourceShares {
    fn bucket(&self, source: IpAddr) -> usize {
        (self.hasher.hash_one(source.to_canonical()) % SHARE_BUCKETS as u64) as usize
    }
}

/// A request's place among those in flight (and in its source's share); given back when the
/// request's context is dropped, after its response and its log line.
pub struct Slot(Arc<Inflight>, Option<usize>);

impl Inflight {
    pub fn new(max: usize, shed: RefusalCounter) -> Arc<Self> {
        // Never over its limit: nothing is counted as shed for memory.
        let memory_shed = shed.clone();
        Arc::new(Inflight { now: AtomicUsize::new(0), max, shares: None, shed, memory: Pressure::off(), memory_shed })
    }

    /// Also sheds while `memory` is over its limit, counting those in `shed`.
    pub fn with_memory(
        max: usize,
        shed: RefusalCounter,
        memory: Arc<Pressure>,
        memory_shed: RefusalCounter,
    ) -> Arc<Self> {
        Arc::new(Inflight { now: AtomicUsize::new(0), max, shares: None, shed, memory, memory_shed })
    }

    /// Also holds each source address to `per_source` requests in flight while fewer than
    /// `per_source` of the listener's slots are free, counting those shed for it in `shed`. For
    /// a listener whose callers are many (inbound), not for the outbound one, whose only caller
    /// is the pod's own app.
    pub fn per_source(self: Arc<Self>, per_source: usize, shed: RefusalCounter) -> Arc<Self> {
        let mut this = Arc::into_inner(self).expect("set up before it is shared");
        this.shares = Some(SourceShares {
            buckets: (0..SHARE_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
            max: per_source,
            shed,
        });
        Arc::new(this)
    }

    /// No limit (a proxy built without one, as in unit tests).
    pub fn unlimited() -> Arc<Self> {
        let shed = prometheus::IntCounter::new("palisade_requests_shed_total", "unregistered").expect("counter");
        Self::new(usize::MAX, Refusals::default().counter("other", RefusalReason::Shed, "unlimited", shed))
    }

    /// A slot, or `None` (counted, for `source`) when `max` requests are in flight already or
    /// the sidecar is over its memory limit.
    pub fn enter(self: &Arc<Self>, source: Option<IpAddr>) -> Option<Slot> {
        self.memory.watch();
        if self.memory.is_over() {
            self.memory_shed.refused(source);
            return None;
        }
        let before = self.now.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.now.fetch_sub(1, Ordering::AcqRel);
            self.shed.refused(source);
            return None;
        }
        let share = match (&self.shares, source) {
            (Some(shares), Some(source)) => {
                let bucket = shares.bucket(source);
                let held = shares.buckets[bucket].fetch_add(1, Ordering::AcqRel) as usize;
                // Past its share only while more than a share of the listener is free: a lone
                // caller may use most of it, and the last share is kept for the others.
                if held >= shares.max && before >= self.max.saturating_sub(shares.max) {
                    shares.buckets[bucket].fetch_sub(1, Ordering::AcqRel);
                    self.now.fetch_sub(1, Ordering::AcqRel);
                    shares.shed.refused(Some(source));
                    return None;
                }
                Some(bucket)
            }
            _ => None,
        };
        Some(Slot(self.clone(), share))
    }

    pub fn in_flight(&self) -> usize {
        self.now.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (Some(shares), Some(bucket)) = (&self.0.shares, self.1) {
            shares.buckets[bucket].fetch_sub(1, Ordering::AcqRel);
        }
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_requests_are_shed_and_a_freed_slot_lets_the_next_one_in() {
        let shed = prometheus::IntCounter::new("shed", "shed").unwrap();
        let refusals = Refusals::default();
        let inflight = Inflight::new(2, refusals.counter("inbound", RefusalReason::Shed, 2, shed.clone()));
        let a = inflight.enter(None).expect("first");
        let _b = inflight.enter(None).expect("second");
        assert!(inflight.enter(None).is_none(), "third, over the limit");
        assert_eq!((inflight.in_flight(), shed.get()), (2, 1));
        assert_eq!(refusals.flush().len(), 1, "and reported");
        drop(a);
        let c = inflight.enter(None);
        assert!(c.is_some(), "recovers as soon as one ends");
        assert_eq!(inflight.in_flight(), 2);
        drop(c);
        assert_eq!(inflight.in_flight(), 1, "a slot is given back when dropped");
    }

    /// One source may take the listener but its last share, which is kept for the others; its
    /// slots come back as its requests end.
    #[test]
    fn one_source_cannot_take_the_share_kept_for_others() {
        let shed = prometheus::IntCounter::new("shed", "shed").unwrap();
        let refusals = Refusals::default();
        let inflight = Inflight::new(10, refusals.counter("inbound", RefusalReason::Shed, 10, shed.clone()))
            .per_source(3, refusals.counter("inbound", RefusalReason::SourceShed, 3, shed.clone()));
        let hog: IpAddr = "10.0.0.5".parse().unwrap();
        let held: Vec<_> = (0..7).map(|_| inflight.enter(Some(hog)).expect("more than a share is free")).collect();
        assert!(inflight.enter(Some(hog)).is_none(), "past its share, with a share left");
        assert!(inflight.enter(Some("::ffff:10.0.0.5".parse().unwrap())).is_none(), "the same source, mapped");
        // Another source (unless it shares the hog's bucket, 1 in 2048: pick one that does not).
        let other = (1..=255u8)
            .map(|n| IpAddr::from([10, 0, 1, n]))
            .find(|ip| inflight.shares.as_ref().unwrap().bucket(*ip) != inflight.shares.as_ref().unwrap().bucket(hog))
            .unwrap();
        let neighbours: Vec<_> = (0..3).map(|_| inflight.enter(Some(other)).expect("another source gets in")).collect();
        assert_eq!((inflight.in_flight(), shed.get()), (10, 2));
        assert!(inflight.enter(Some(other)).is_none(), "the listener is full");
        let reported = refusals.flush();
        assert!(
            reported
                .iter()
                .any(|e| matches!(e, crate::telemetry::SecurityEvent::DosRefused(d) if d.reason == "source_shed")),
            "{reported:?}"
        );
        drop(held);
        assert!(inflight.enter(Some(hog)).is_some(), "its slots back once its requests end");
        drop(neighbours);
        assert_eq!(inflight.in_flight(), 0);
    }

    #[test]
    fn over_the_memory_limit_every_request_is_shed_and_counted_as_such() {
        let shed = prometheus::IntCounter::new("shed", "shed").unwrap();
        let refusals = Refusals::default();
        let inflight = Inflight::with_memory(
            10,
            refusals.counter("inbound", RefusalReason::Shed, 10, shed.clone()),
            crate::memory::Pressure::overloaded(),
            refusals.counter("inbound", RefusalReason::MemoryShed, 1, shed.clone()),
        );
        assert!(inflight.enter(None).is_none(), "none in flight, yet shed");
        assert_eq!((inflight.in_flight(), shed.get()), (0, 1));
        let reported = refusals.flush();
        let reasons: Vec<_> = reported
            .iter()
            .map(|event| match event {
                crate::telemetry::SecurityEvent::DosRefused(d) => d.reason,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons, ["memory_shed"]);
    }
}
