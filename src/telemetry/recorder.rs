//! Per-request metrics without a lock shared by all requests and without allocating: the
//! counter and histogram of each label combination are looked up in prometheus once, then kept
//! in an immutable map that requests read through an `ArcSwap`. A new combination (a new caller,
//! a new status) copies the map once.
//!
//! Outbound requests carry a `destination`: the SPIFFE ID the peer proved, or the authority of a
//! destination outside the mesh. Those values are interned ([`Destinations`]): at most
//! [`MAX_DESTINATIONS`] per process, past it `other`, so a caller cannot grow the label set, and a
//! destination already seen costs a lookup, not an allocation.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};

use super::Metrics;

/// Label values that are static strings, plus the status code: direction, method, code,
/// decision, destination.
type Outer = (&'static str, &'static str, u16, &'static str, &'static str);

#[derive(Clone)]
struct Series {
    requests: IntCounter,
    duration: Histogram,
}

type ByPrincipal = HashMap<Box<str>, Series, BuildHasherDefault<Fnv1a>>;

#[derive(Default)]
pub struct RequestRecorder {
    series: ArcSwap<HashMap<Outer, Arc<ByPrincipal>, BuildHasherDefault<Fnv1a>>>,
    /// The `destination` values in use.
    pub destinations: Destinations,
}

/// One request as `palisade_requests_total` and `palisade_request_duration_seconds` count it.
pub struct Recorded<'a> {
    pub direction: &'static str,
    pub method: &'static str,
    pub code: u16,
    pub code_label: &'static str,
    /// The caller's SPIFFE ID (inbound), else empty.
    pub principal: &'a str,
    pub decision: &'static str,
    /// A label from [`Destinations::label`] (outbound), else empty.
    pub destination: &'static str,
    pub seconds: f64,
}

impl RequestRecorder {
    /// Counts one request: `palisade_requests_total` and `palisade_request_duration_seconds`.
    pub fn record(&self, metrics: &Metrics, r: Recorded<'_>) {
        let Recorded { direction, method, code, code_label, principal, decision, destination, seconds } = r;
        let key = (direction, method, code, decision, destination);
        let found = self.series.load().get(&key).and_then(|by| by.get(principal).cloned());
        let series = match found {
            Some(series) => series,
            None => {
                let series = Series {
                    requests: metrics.requests.with_label_values(&[
                        direction,
                        method,
                        code_label,
                        principal,
                        decision,
                        destination,
                    ]),
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

/// At most this many distinct `destination` label values per process; later ones are `other`.
pub const MAX_DESTINATIONS: usize = 100;

/// What a destination past [`MAX_DESTINATIONS`] is counted as, and one that is no host name,
/// address or SPIFFE ID of at most [`MAX_DESTINATION_BYTES`].
pub const OTHER_DESTINATION: &str = "other";

/// The longest `destination` label value. The app behind the sidecar names the authority (an
/// SSRF in it, anyone): 100 values of 60 KB made every scrape 51 MB and held the memory for
/// good. A SPIFFE ID of Kubernetes names fits.
pub const MAX_DESTINATION_BYTES: usize = 512;

/// Whether `destination` may be a label value: short, and only the bytes of a host name, an
/// IP address (with brackets and port) or a SPIFFE ID.
fn labelable(destination: &str) -> bool {
    destination.len() <= MAX_DESTINATION_BYTES
        && destination
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/' | b'[' | b']'))
}

/// The `destination` label values of this process, interned. Each is made once, as a
/// `&'static str` (at most [`MAX_DESTINATIONS`] of them, so the memory is bounded), so a request
/// carries its label without a copy and looks it up without a lock.
#[derive(Default)]
pub struct Destinations {
    known: ArcSwap<HashMap<Box<str>, &'static str, BuildHasherDefault<Fnv1a>>>,
    /// Taken only to add a value, so the bound is exact when requests race to add; holds how
    /// many of the values kept were named by the app.
    adding: Mutex<usize>,
}

impl Destinations {
    /// The label for a name the app chose (an authority, an address): itself while there is
    /// room, else `other`; empty stays empty. Such names take at most half the room: the rest is
    /// kept for [`Destinations::label_identity`], so an app (or an SSRF in it) naming junk, even
    /// junk spelled as a SPIFFE ID, cannot make every real peer `other`.
    pub fn label(&self, destination: &str) -> &'static str {
        self.label_of(destination, true)
    }

    /// The label for a SPIFFE ID a peer proved, or one the configuration expects.
    pub fn label_identity(&self, identity: &str) -> &'static str {
        self.label_of(identity, false)
    }

    fn label_of(&self, destination: &str, named_by_app: bool) -> &'static str {
        if destination.is_empty() {
            return "";
        }
        let known = self.known.load();
        if let Some(label) = known.get(destination) {
            return label;
        }
        // Checked on a miss only: every value kept passed it.
        if !labelable(destination) || known.len() >= MAX_DESTINATIONS {
            return OTHER_DESTINATION;
        }
        drop(known);
        let mut app_named = self.adding.lock().expect("destinations lock");
        let known = self.known.load();
        if let Some(label) = known.get(destination) {
            return label;
        }
        if known.len() >= MAX_DESTINATIONS || (named_by_app && *app_named >= MAX_DESTINATIONS / 2) {
            return OTHER_DESTINATION;
        }
        *app_named += usize::from(named_by_app);
        let label: &'static str = Box::leak(destination.into());
        let mut next = HashMap::clone(&known);
        next.insert(destination.into(), label);
        self.known.store(Arc::new(next));
        label
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
        let request = |code: u16, principal, decision, destination: &'static str| Recorded {
            direction: if destination.is_empty() { "inbound" } else { "outbound" },
            method: "GET",
            code,
            code_label: if code == 200 { "200" } else { "403" },
            principal,
            decision,
            destination,
            seconds: 0.001,
        };
        for _ in 0..3 {
            recorder.record(&metrics, request(200, "spiffe://td/ns/a/sa/b", "allow", ""));
        }
        recorder.record(&metrics, request(403, "", "deny", ""));
        let orders = recorder.destinations.label("spiffe://td/ns/shop/sa/orders");
        recorder.record(&metrics, request(200, "", "allow", orders));
        recorder
            .record(&metrics, request(200, "", "allow", recorder.destinations.label("spiffe://td/ns/shop/sa/orders")));
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains(r#"palisade_requests_total{code="200",decision="allow",destination="",direction="inbound",method="GET",source_principal="spiffe://td/ns/a/sa/b"} 3"#), "{text}");
        assert!(text.contains(r#"palisade_requests_total{code="403",decision="deny",destination="",direction="inbound",method="GET",source_principal=""} 1"#), "{text}");
        assert!(text.contains(r#"palisade_requests_total{code="200",decision="allow",destination="spiffe://td/ns/shop/sa/orders",direction="outbound",method="GET",source_principal=""} 2"#), "{text}");
        assert!(
            text.contains(r#"palisade_request_duration_seconds_count{code="200",direction="inbound"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn destinations_are_interned_and_bounded() {
        let destinations = Destinations::default();
        let first = destinations.label_identity("spiffe://td/ns/a/sa/b");
        assert_eq!(first, "spiffe://td/ns/a/sa/b");
        assert!(std::ptr::eq(first, destinations.label("spiffe://td/ns/a/sa/b")), "made once, then looked up");
        assert_eq!(destinations.label(""), "", "no destination stays empty");
        // What no host, address or SPIFFE ID looks like, or is longer than one, takes no value.
        for junk in ["a".repeat(MAX_DESTINATION_BYTES + 1), "evil\" x=\"1".into(), "a b".into(), "é.shop".into()] {
            assert_eq!(destinations.label(&junk), OTHER_DESTINATION, "{junk:.40}");
        }
        assert_eq!(destinations.label("[fd00::1]:8080"), "[fd00::1]:8080");
        assert_eq!(destinations.known.load().len(), 2, "junk took no place");
        // Names the app chose fill half the room; proven SPIFFE IDs still get labels after them.
        for i in 1..MAX_DESTINATIONS / 2 {
            assert_eq!(destinations.label(&format!("svc-{i}.shop:80")), format!("svc-{i}.shop:80"));
        }
        assert_eq!(destinations.label("one-too-many.shop:80"), OTHER_DESTINATION);
        assert_eq!(destinations.label("svc-2.shop:80"), "svc-2.shop:80", "values seen before keep their label");
        // Not even spelled as a SPIFFE ID: the app named it.
        assert_eq!(destinations.label("spiffe://td/ns/a/sa/junk"), OTHER_DESTINATION);
        for i in 1..MAX_DESTINATIONS / 2 {
            let peer = format!("spiffe://td/ns/a/sa/peer-{i}");
            assert_eq!(destinations.label_identity(&peer), peer);
        }
        assert_eq!(destinations.label_identity("spiffe://td/ns/a/sa/one-too-many"), OTHER_DESTINATION);
        assert_eq!(destinations.known.load().len(), MAX_DESTINATIONS);
    }
}
