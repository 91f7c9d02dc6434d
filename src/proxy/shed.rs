//! Load shedding (SPEC section 3 `limits.maxInflight`): past a number of requests in flight on a
//! listener, a new request is answered 503 with `Retry-After` at once instead of queueing without
//! bound behind the others (queued requests only add latency and memory, and time out anyway).
//! The count is one atomic per request in and out: no lock, no allocation.
//!
//! The same door sheds requests while the sidecar is over `limits.maxMemoryBytes`
//! ([`crate::memory::Pressure`], shared by the listeners), which a new request also asks to
//! look at the heap when a look is due.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::memory::Pressure;
use crate::telemetry::{RefusalCounter, RefusalReason, Refusals};

/// One listener's requests in flight.
pub struct Inflight {
    now: AtomicUsize,
    max: usize,
    /// `palisade_requests_shed_total{direction}`, resolved once, and the shed events' count.
    shed: RefusalCounter,
    memory: Arc<Pressure>,
    /// The same series, counted in the events as `limits.maxMemoryBytes`.
    memory_shed: RefusalCounter,
}

/// A request's place among those in flight; given back when the request's context is dropped,
/// after its response and its log line.
pub struct Slot(Arc<Inflight>);

impl Inflight {
    pub fn new(max: usize, shed: RefusalCounter) -> Arc<Self> {
        // Never over its limit: nothing is counted as shed for memory.
        let memory_shed = shed.clone();
        Arc::new(Inflight { now: AtomicUsize::new(0), max, shed, memory: Pressure::off(), memory_shed })
    }

    /// Also sheds while `memory` is over its limit, counting those in `shed`.
    pub fn with_memory(
        max: usize,
        shed: RefusalCounter,
        memory: Arc<Pressure>,
        memory_shed: RefusalCounter,
    ) -> Arc<Self> {
        Arc::new(Inflight { now: AtomicUsize::new(0), max, shed, memory, memory_shed })
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
        if self.now.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.now.fetch_sub(1, Ordering::AcqRel);
            self.shed.refused(source);
            return None;
        }
        Some(Slot(self.clone()))
    }

    pub fn in_flight(&self) -> usize {
        self.now.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
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
