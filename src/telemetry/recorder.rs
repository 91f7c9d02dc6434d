//! Per-request metrics without a lock shared by all requests and without allocating: the
//! counter and histogram of each label combination are looked up in prometheus once, then kept
//! in an immutable map that requests read through an `ArcSwap`. A new combination (a new caller,
//! a new status) copies the map once.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};

use super::Metrics;

/// Label values that are static strings, plus the status code.
type Outer = (&'static str, &'static str, u16, &'static str);

#[derive(Clone)]
struct Series {
    requests: IntCounter,
    duration: Histogram,
}

type ByPrincipal = HashMap<Box<str>, Series, BuildHasherDefault<Fnv1a>>;

#[derive(Default)]
pub struct RequestRecorder {
    series: ArcSwap<HashMap<Outer, Arc<ByPrincipal>, BuildHasherDefault<Fnv1a>>>,
}

impl RequestRecorder {
    /// Counts one request: `palisade_requests_total` and `palisade_request_duration_seconds`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        metrics: &Metrics,
        direction: &'static str,
        method: &'static str,
        code: u16,
        code_label: &'static str,
        principal: &str,
        decision: &'static str,
        seconds: f64,
    ) {
        let key = (direction, method, code, decision);
        let found = self.series.load().get(&key).and_then(|by| by.get(principal).cloned());
        let series = match found {
            Some(series) => series,
            None => {
                let series = Series {
                    requests: metrics.requests.with_label_values(&[direction, method, code_label, principal, decision]),
                    duration: metrics.request_duration.with_label_values(&[direction, code_label]),
                };
                self.series.rcu(|all| {
                    let mut all = HashMap::clone(all);
                    let mut by = all.get(&key).map(|b| ByPrincipal::clone(b)).unwrap_or_default();
                    by.insert(principal.into(), series.clone());
                    all.insert(key, Arc::new(by));
                    all
                });
                series
            }
        };
        series.requests.inc();
        series.duration.observe(seconds);
    }
}

/// FNV-1a: short keys, no HashDoS exposure (callers do not choose principals; a CA does).
#[derive(Default)]
pub struct Fnv1a(u64);

impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_the_right_series() {
        let metrics = Metrics::new();
        let recorder = RequestRecorder::default();
        for _ in 0..3 {
            recorder.record(&metrics, "inbound", "GET", 200, "200", "spiffe://td/ns/a/sa/b", "allow", 0.001);
        }
        recorder.record(&metrics, "inbound", "GET", 403, "403", "", "deny", 0.0002);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains(r#"palisade_requests_total{code="200",decision="allow",direction="inbound",method="GET",source_principal="spiffe://td/ns/a/sa/b"} 3"#), "{text}");
        assert!(text.contains(r#"palisade_requests_total{code="403",decision="deny",direction="inbound",method="GET",source_principal=""} 1"#), "{text}");
        assert!(
            text.contains(r#"palisade_request_duration_seconds_count{code="200",direction="inbound"} 3"#),
            "{text}"
        );
    }
}
