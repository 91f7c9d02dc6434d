//! The DoS defences' refusals (SPEC section 3 `limits`): connections closed at accept, heads and
//! bodies that did not arrive in time, idle connections reaped, requests shed. Each is counted at
//! once (its Prometheus counter), and reported as a security event in aggregate: at most one event
//! per listener and reason a second (the accept loops ask for a report several times a second; one
//! is made when a second has passed since the last), carrying how many there were, so a flood of
//! 10,000 connections writes a line a second, not 10,000. A listener that stops reports what is
//! left at once.
//!
//! Recording is two atomic adds and, when the source is known, one uncontended `try_lock`; the
//! event is built only by the flush.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;

use super::events::{now_millis, DosRefusal, RuleId, SecurityEvent};

/// Why a DoS defence refused a connection or a request; the `reason` label of
/// `palisade_connections_closed_total` (load shedding has `palisade_requests_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// `limits.maxConnections`: closed at accept.
    ConnectionLimit,
    /// `limits.maxConnectionsPerSource`: closed at accept.
    SourceLimit,
    /// `limits.headerTimeout`: the request head did not arrive in time (408 when part of it did).
    HeaderTimeout,
    /// `limits.idleTimeout`: a keep-alive connection with nothing in flight.
    IdleTimeout,
    /// `limits.bodyTimeout`: no request-body bytes for this long (408).
    BodyTimeout,
    /// `limits.sendTimeout`: the caller took none of the answer for this long (slow read).
    SendTimeout,
    /// `limits.maxInflight`: a request answered 503 (load shedding).
    Shed,
    /// `limits.maxInflightPerSource`: a request answered 503, its source holding its share of
    /// the listener's requests in flight.
    SourceShed,
    /// `limits.http2.maxResetsPerSecond`: an HTTP/2 connection closed for resetting too many of
    /// its streams (rapid reset).
    RapidReset,
    /// `limits.http2`: an HTTP/2 connection h2 itself closed for a flood (GOAWAY
    /// ENHANCE_YOUR_CALM: streams reset before the server accepted them, CONTINUATION frames
    /// past any bound, a header list far past `maxHeaderListBytes`).
    Http2Abuse,
    /// `limits.maxMemoryBytes`: a request answered 503 while the sidecar was over it.
    MemoryShed,
    /// `limits.maxMemoryBytes`: an answer its caller was not reading cut off (HTTP/1.1
    /// connection closed, HTTP/2 stream reset) while the sidecar was over it.
    MemoryCut,
    /// `limits.maxMemoryBytes`: a connection closed at accept while the sidecar was over it.
    MemoryLimit,
    /// `limits.maxMemoryBytes`: an idle connection (no request in flight) closed while the
    /// sidecar was over it.
    MemoryIdle,
    /// A TLS handshake refused, past the first [`REPORTED_EACH_PER_SECOND`] of a second
    /// (those are reported one by one, with their reason).
    TlsRefused,
    /// An inbound request refused as malformed or over a size limit (400, 413, 414, 431), past
    /// the first [`REPORTED_EACH_PER_SECOND`] of a second.
    InvalidRequest,
    /// An inbound request over a rate limit (429), past the first [`REPORTED_EACH_PER_SECOND`]
    /// of a second: the refusal a flood makes most of.
    RateLimited,
    /// An inbound request whose token did not verify, or that had none where one is required
    /// (401), past the first [`REPORTED_EACH_PER_SECOND`] of a second.
    Unauthenticated,
    /// An inbound request an ENFORCE policy denied (403), past the first
    /// [`REPORTED_EACH_PER_SECOND`] of a second.
    Forbidden,
    /// An inbound request a WAF in BLOCK mode refused (403), past the first
    /// [`REPORTED_EACH_PER_SECOND`] of a second.
    WafBlocked,
    /// A WAF finding in DETECT mode (the request went on), past the first
    /// [`REPORTED_EACH_PER_SECOND`] of a second.
    WafDetected,
    /// A request an AUDIT policy would have denied (it went on), past the first
    /// [`REPORTED_EACH_PER_SECOND`] of a second.
    AuditDenied,
    /// `outbound.passthrough`: a captured connection that is not HTTP, to a destination not
    /// listed there that proved no mesh identity (no sidecar to tunnel it to), closed before a
    /// byte of the app's is sent.
    NotHttp,
}

impl RefusalReason {
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::ConnectionLimit => "connection_limit",
            RefusalReason::SourceLimit => "source_limit",
            RefusalReason::HeaderTimeout => "header_timeout",
            RefusalReason::IdleTimeout => "idle_timeout",
            RefusalReason::BodyTimeout => "body_timeout",
            RefusalReason::SendTimeout => "send_timeout",
            RefusalReason::Shed => "shed",
            RefusalReason::SourceShed => "source_shed",
            RefusalReason::RapidReset => "rapid_reset",
            RefusalReason::Http2Abuse => "http2_abuse",
            RefusalReason::MemoryShed => "memory_shed",
            RefusalReason::MemoryCut => "memory_cut",
            RefusalReason::MemoryLimit => "memory_limit",
            RefusalReason::MemoryIdle => "memory_idle",
            RefusalReason::NotHttp => "not_http",
            RefusalReason::TlsRefused => "tls_refused",
            RefusalReason::InvalidRequest => "invalid_request",
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::Unauthenticated => "unauthenticated",
            RefusalReason::Forbidden => "forbidden",
            RefusalReason::WafBlocked => "waf_blocked",
            RefusalReason::WafDetected => "waf_detected",
            RefusalReason::AuditDenied => "audit_denied",
        }
    }

    /// The `limits` setting that refused.
    pub fn setting(self) -> &'static str {
        match self {
            RefusalReason::ConnectionLimit => "limits.maxConnections",
            RefusalReason::SourceLimit => "limits.maxConnectionsPerSource",
            RefusalReason::HeaderTimeout => "limits.headerTimeout",
            RefusalReason::IdleTimeout => "limits.idleTimeout",
            RefusalReason::BodyTimeout => "limits.bodyTimeout",
            RefusalReason::SendTimeout => "limits.sendTimeout",
            RefusalReason::Shed => "limits.maxInflight",
            RefusalReason::SourceShed => "limits.maxInflightPerSource",
            RefusalReason::RapidReset => "limits.http2.maxResetsPerSecond",
            RefusalReason::Http2Abuse => "limits.http2",
            RefusalReason::MemoryShed
            | RefusalReason::MemoryCut
            | RefusalReason::MemoryLimit
            | RefusalReason::MemoryIdle => "limits.maxMemoryBytes",
            RefusalReason::NotHttp => "outbound.passthrough",
            RefusalReason::TlsRefused => "inbound.mtls",
            RefusalReason::InvalidRequest => "inputValidation",
            RefusalReason::RateLimited => "rateLimits",
            RefusalReason::Unauthenticated => "authentication",
            RefusalReason::Forbidden => "authorization",
            RefusalReason::WafBlocked | RefusalReason::WafDetected => "inputValidation.waf",
            RefusalReason::AuditDenied => "authorization",
        }
    }
}

/// Refusals a caller can cause without any credential that are reported each (with their
/// reason and peer) in one second from one source; the rest go into that second's aggregate
/// event. A client could otherwise write an event and a log line per connection or request:
/// refused TLS handshakes once wrote 34,000 events a second, 30 MB/s.
pub const REPORTED_EACH_PER_SECOND: u32 = 10;

/// Of one kind, from every source together: what a flood from many addresses can write.
pub const REPORTED_EACH_PER_SECOND_IN_ALL: u32 = 100;

/// How many sources a second are told apart; the rest share one count.
const SOURCES_TOLD_APART: usize = 64;

/// One kind of such refusal: how many were reported each in the current second, from each
/// source and in all, and where the rest are counted. Each source has its own share, so one
/// that sends junk to be refused cannot use up what is reported of another's (tester u2: ten
/// junk requests a second took the details from every other caller's attacks).
pub struct OneByOne {
    reason: RefusalReason,
    window: PerSecond,
    by_source: Mutex<BySource>,
    aggregate: std::sync::OnceLock<RefusalCounter>,
}

/// How many were reported each from each source in one second.
#[derive(Default)]
struct BySource {
    second: u64,
    counts: Vec<(Option<IpAddr>, u32)>,
    /// Sources past [`SOURCES_TOLD_APART`], together.
    others: u32,
}

impl BySource {
    fn admit(&mut self, source: Option<IpAddr>, second: u64) -> bool {
        // One IPv6 host holds a whole /64: its addresses are one source (the review).
        let source = source.map(|ip| match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())
            }
            other => other,
        });
        if self.second != second {
            self.second = second;
            self.counts.clear();
            self.others = 0;
        }
        let count = match self.counts.iter().position(|(s, _)| *s == source) {
            Some(i) => &mut self.counts[i].1,
            None if self.counts.len() < SOURCES_TOLD_APART => {
                self.counts.push((source, 0));
                &mut self.counts.last_mut().expect("just pushed").1
            }
            None => &mut self.others,
        };
        *count += 1;
        *count <= REPORTED_EACH_PER_SECOND
    }
}

/// The first [`REPORTED_EACH_PER_SECOND`] of each second, counted lock-free: what is reported
/// (or logged) one by one before the rest is summed up.
#[derive(Debug, Default)]
pub struct PerSecond {
    /// The second (Unix) and how many were admitted in it, in one word: `second << 32 | count`.
    window: AtomicU64,
}

impl PerSecond {
    /// Whether one more is admitted now.
    pub fn admit(&self) -> bool {
        self.admit_at(now_millis() / 1000)
    }

    /// Whether one more is admitted in the Unix second `second`.
    pub fn admit_at(&self, second: u64) -> bool {
        self.admit_up_to(second, REPORTED_EACH_PER_SECOND)
    }

    /// Whether one more is admitted in the Unix second `second`, of at most `limit` a second.
    fn admit_up_to(&self, second: u64, limit: u32) -> bool {
        let mut seen = self.window.load(Ordering::Acquire);
        loop {
            let next = if seen >> 32 == second & 0xffff_ffff {
                if seen & 0xffff_ffff >= u64::from(limit) {
                    return false;
                }
                seen + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
    }
}

impl OneByOne {
    pub fn new(reason: RefusalReason) -> Self {
        OneByOne {
            reason,
            window: PerSecond::default(),
            by_source: Mutex::new(BySource::default()),
            aggregate: std::sync::OnceLock::new(),
        }
    }

    /// Whether one more from `source` is reported on its own now: within its source's share,
    /// and within the kind's share of all sources.
    fn admit(&self, source: Option<IpAddr>) -> bool {
        let second = now_millis() / 1000;
        // Refusals only: a request that passes never comes here.
        let within_its_share =
            self.by_source.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(source, second);
        within_its_share && self.window.admit_up_to(second, REPORTED_EACH_PER_SECOND_IN_ALL)
    }

    /// Whether this refusal, from `source`, is reported on its own; if not, it is counted for
    /// its second's aggregate report.
    pub fn reported_each(&self, refusals: &Refusals, direction: &'static str, source: Option<IpAddr>) -> bool {
        let each = self.admit(source);
        if !each {
            self.aggregate(refusals, direction).refused(source);
        }
        each
    }

    /// [`OneByOne::reported_each`] for a refusal a policy's rule made (a rate limit, an
    /// authorisation rule, a WAF detector): the rest are summed up per rule, so each rule's
    /// aggregate event names it (outside tester q2: one event for every limit named none, and a
    /// limit flooded beside another had no event at all).
    pub fn reported_each_for(
        &self,
        refusals: &Refusals,
        direction: &'static str,
        (source, listener): (Option<IpAddr>, Option<std::net::SocketAddr>),
        policy: &str,
        rule: &str,
    ) -> bool {
        let each = self.admit(source);
        if !each {
            // Counted in the limit's own metric already: the rule's slot shares the listener
            // aggregate's series, which is not exported.
            let not_exported = self.aggregate(refusals, direction).0.counter.clone();
            let counter = refusals.counter_for(
                direction,
                self.reason,
                Some((policy, rule)),
                REPORTED_EACH_PER_SECOND,
                not_exported,
            );
            counter.seen_at(listener);
            counter.refused(source);
        }
        each
    }

    /// Where the rest are counted for the aggregate report, under the listener that refused
    /// first (a process has one such listener: the sidecar's inbound, the control plane's).
    fn aggregate(&self, refusals: &Refusals, direction: &'static str) -> &RefusalCounter {
        self.aggregate.get_or_init(|| {
            // Counted already in their own metric: this series is not exported.
            let uncounted = IntCounter::new("refused_in_aggregate", "not exported").expect("metric");
            refusals.counter(direction, self.reason, REPORTED_EACH_PER_SECOND, uncounted)
        })
    }
}

/// How many rules' slots are kept with nothing pending: a rule renamed or removed by an update
/// leaves its slot, which the flush drops past this many.
const IDLE_RULE_SLOTS: usize = 64;

/// Every listener's refusal counts, for the flush.
#[derive(Default)]
pub struct Refusals {
    /// One slot per (listener, reason), and per rule for a policy's refusals past the first of a
    /// second; touched when a listener starts, by the flush, and by such a refusal (a flood of
    /// 429s: one short lock each, past the first ten a second).
    slots: Mutex<Vec<Arc<Slot>>>,
    /// When the last report was made (Unix ms): every accept loop asks for one each second, and
    /// only the first to ask after a second has passed gets it.
    last_report: AtomicU64,
}

/// The least time between two reports of the same listener and reason.
pub const REPORT_EVERY_MS: u64 = 1000;

struct Slot {
    direction: &'static str,
    reason: RefusalReason,
    /// The policy's rule that refused, for refusals counted per rule.
    rule: Option<RuleId>,
    /// What the limit was, for the event's message ("10000").
    limit: String,
    counter: IntCounter,
    /// Refusals since the last flush.
    pending: AtomicU64,
    /// When the first of them happened (Unix ms; 0: none pending).
    since: AtomicU64,
    /// The listener's own address.
    listener: Mutex<Option<SocketAddr>>,
    /// Who was refused since the last flush: one address, or several.
    sources: Mutex<Sources>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Sources {
    #[default]
    Unknown,
    One(IpAddr),
    Several,
}

/// Where one listener counts one kind of refusal.
#[derive(Clone)]
pub struct RefusalCounter(Arc<Slot>);

impl RefusalCounter {
    /// Counts one refusal of a connection or request from `source` (when known).
    pub fn refused(&self, source: Option<IpAddr>) {
        let slot = &*self.0;
        slot.counter.inc();
        if slot.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            let _ = slot.since.compare_exchange(0, now_millis(), Ordering::AcqRel, Ordering::Acquire);
        }
        // Never waits: a flush or another refusal holding the lock just means this source is not
        // the one named (the count is exact either way).
        if let (Some(ip), Ok(mut sources)) = (source, slot.sources.try_lock()) {
            *sources = match *sources {
                Sources::Unknown => Sources::One(ip),
                Sources::One(seen) if seen == ip => Sources::One(ip),
                _ => Sources::Several,
            };
        }
    }

    /// The listener's address, for the events (known once it is bound).
    pub fn at(&self, listener: SocketAddr) -> Self {
        *self.0.listener.lock().expect("listener lock") = Some(listener);
        self.clone()
    }

    /// The listener's address for the events, when not known yet (a policy's rule counts its
    /// refusals on whichever listener makes them; the first names it). Never waits.
    pub fn seen_at(&self, listener: Option<SocketAddr>) {
        if let (Some(at), Ok(mut known)) = (listener, self.0.listener.try_lock()) {
            known.get_or_insert(at);
        }
    }

    /// How many were counted (the Prometheus counter's value).
    pub fn total(&self) -> u64 {
        self.0.counter.get()
    }
}

impl Refusals {
    /// The counter for `reason` on the listener `direction` (one per pair: asking again returns
    /// the same), counted in `counter` (the metric's series) as well.
    pub fn counter(
        &self,
        direction: &'static str,
        reason: RefusalReason,
        limit: impl ToString,
        counter: IntCounter,
    ) -> RefusalCounter {
        self.counter_for(direction, reason, None, limit, counter)
    }

    /// [`Refusals::counter`] for one policy rule's refusals (`(policy, rule)`, copied only when
    /// its slot is made), or the listener's own.
    pub fn counter_for(
        &self,
        direction: &'static str,
        reason: RefusalReason,
        rule: Option<(&str, &str)>,
        limit: impl ToString,
        counter: IntCounter,
    ) -> RefusalCounter {
        let mut slots = self.slots.lock().expect("refusal slots lock");
        let same_rule = |s: &Slot| match (&s.rule, rule) {
            (None, None) => true,
            (Some(r), Some((policy, name))) => *r.policy == *policy && *r.rule == *name,
            _ => false,
        };
        if let Some(slot) = slots.iter().find(|s| s.direction == direction && s.reason == reason && same_rule(s)) {
            return RefusalCounter(slot.clone());
        }
        let slot = Arc::new(Slot {
            direction,
            reason,
            rule: rule.map(|(policy, rule)| RuleId { policy: policy.into(), rule: rule.into() }),
            limit: limit.to_string(),
            counter,
            pending: AtomicU64::new(0),
            since: AtomicU64::new(0),
            listener: Mutex::new(None),
            sources: Mutex::new(Sources::Unknown),
        });
        slots.push(slot.clone());
        RefusalCounter(slot)
    }

    /// [`Refusals::flush`], unless the last report was less than a second ago (then nothing, and
    /// the counts wait for the next).
    pub fn report(&self) -> Vec<SecurityEvent> {
        let now = now_millis();
        let last = self.last_report.load(Ordering::Acquire);
        if now.saturating_sub(last) < REPORT_EVERY_MS
            || self.last_report.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            return Vec::new();
        }
        self.flush()
    }

    /// The refusals counted since the last flush, one event per listener and reason that had
    /// any, each with its count, and one log line each.
    pub fn flush(&self) -> Vec<SecurityEvent> {
        let slots: Vec<Arc<Slot>> = {
            let mut slots = self.slots.lock().expect("refusal slots lock");
            // Idle, and held by nobody but this list: a refusal that took the slot under the lock
            // and has yet to count itself keeps it (the review: its count would land in a slot
            // no flush reads).
            let idle =
                |s: &Arc<Slot>| s.rule.is_some() && s.pending.load(Ordering::Acquire) == 0 && Arc::strong_count(s) == 1;
            if slots.iter().filter(|s| idle(s)).count() > IDLE_RULE_SLOTS {
                slots.retain(|s| !idle(s));
            }
            slots.clone()
        };
        let mut events = Vec::new();
        for slot in slots {
            let count = slot.pending.swap(0, Ordering::AcqRel);
            if count == 0 {
                continue;
            }
            let since = slot.since.swap(0, Ordering::AcqRel);
            let sources = std::mem::take(&mut *slot.sources.lock().expect("sources lock"));
            let refusal = DosRefusal {
                direction: slot.direction,
                reason: slot.reason.label(),
                setting: slot.reason.setting(),
                limit: slot.limit.clone(),
                count,
                start_ms: if since == 0 { now_millis() } else { since },
                end_ms: now_millis(),
                listener: *slot.listener.lock().expect("listener lock"),
                source: match sources {
                    Sources::One(ip) => Some(ip),
                    _ => None,
                },
                several_sources: sources == Sources::Several,
                rule: slot.rule.clone(),
            };
            let source = match refusal.source {
                Some(ip) => ip.to_string(),
                None if refusal.several_sources => "several".to_string(),
                None => "-".to_string(),
            };
            let (rule, _) = refusal.rule();
            tracing::warn!(direction = slot.direction, reason = refusal.reason, count, setting = refusal.setting,
                limit = %refusal.limit, %source, rule = %rule, "{}", refusal.message());
            events.push(SecurityEvent::DosRefused(refusal));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_each_and_reported_once_per_flush_with_their_count() {
        let refusals = Refusals::default();
        let metric = IntCounter::new("closed", "closed").unwrap();
        let at_accept = refusals
            .counter("inbound", RefusalReason::ConnectionLimit, 10, metric.clone())
            .at("127.0.0.1:15006".parse().unwrap());
        let again = refusals.counter("inbound", RefusalReason::ConnectionLimit, 10, metric.clone());
        let attacker: IpAddr = "10.9.9.9".parse().unwrap();
        for _ in 0..10_000 {
            again.refused(Some(attacker));
        }
        assert_eq!((metric.get(), at_accept.total()), (10_000, 10_000), "one counter per listener and reason");
        let events = refusals.flush();
        assert_eq!(events.len(), 1, "10,000 refusals, one event");
        let SecurityEvent::DosRefused(r) = &events[0] else { panic!("{events:?}") };
        assert_eq!((r.count, r.reason, r.direction, r.source), (10_000, "connection_limit", "inbound", Some(attacker)));
        assert_eq!(r.listener, Some("127.0.0.1:15006".parse().unwrap()));
        assert!(r.start_ms <= r.end_ms && r.start_ms > 0);
        assert!(refusals.flush().is_empty(), "nothing new, nothing reported");
        // Reports (what the accept loops ask for) come a second apart at most, whoever asks.
        at_accept.refused(Some(attacker));
        assert_eq!(refusals.report().len(), 1, "the first report");
        at_accept.refused(Some(attacker));
        assert!(refusals.report().is_empty(), "another within the second: nothing yet");
        refusals.last_report.store(now_millis() - REPORT_EVERY_MS, Ordering::Release);
        let events = refusals.report();
        let SecurityEvent::DosRefused(r) = &events[0] else { panic!() };
        assert_eq!(r.count, 1, "the refusal that waited is in the next report");

        // Two sources: none is named as the source.
        at_accept.refused(Some(attacker));
        at_accept.refused(Some("10.1.1.1".parse().unwrap()));
        let events = refusals.flush();
        let SecurityEvent::DosRefused(r) = &events[0] else { panic!() };
        assert_eq!((r.count, r.source, r.several_sources), (2, None, true));
        assert_eq!(metric.get(), 10_004);
    }

    /// Tester u2: ten junk refusals a second from one source had used up what was reported each
    /// of every other caller's.
    #[test]
    fn each_source_has_its_own_share_and_all_together_are_capped() {
        let mut by_source = BySource::default();
        let (junk, other): (IpAddr, IpAddr) = ("10.0.0.66".parse().unwrap(), "10.0.0.7".parse().unwrap());
        let admitted = |b: &mut BySource, ip, n| (0..n).filter(|_| b.admit(Some(ip), 7)).count();
        assert_eq!(admitted(&mut by_source, junk, 50), REPORTED_EACH_PER_SECOND as usize);
        assert_eq!(admitted(&mut by_source, other, 50), REPORTED_EACH_PER_SECOND as usize);
        // A new second, a new share.
        assert!(by_source.admit(Some(junk), 8));
        // One IPv6 /64 is one source, whatever address of it each refusal comes from.
        let from_64 =
            (0..50u16).filter(|n| by_source.admit(Some(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, *n])), 8)).count();
        assert_eq!(from_64, REPORTED_EACH_PER_SECOND as usize);
        // Past the sources told apart, the rest share one.
        let mut many = BySource::default();
        for n in 0..SOURCES_TOLD_APART as u32 {
            assert!(many.admit(Some(IpAddr::from(n.to_be_bytes())), 7));
        }
        let late = (0..50u32).filter(|n| many.admit(Some(IpAddr::from((1_000_000 + n).to_be_bytes())), 7)).count();
        assert_eq!(late, REPORTED_EACH_PER_SECOND as usize);
        // And all sources together: at most the kind's cap.
        let one = OneByOne::new(RefusalReason::WafBlocked);
        let each = (0..200u32).filter(|n| one.admit(Some(IpAddr::from((n / 5).to_be_bytes())))).count();
        assert!(each <= 2 * REPORTED_EACH_PER_SECOND_IN_ALL as usize, "{each}: a second boundary at most");
        assert!(each >= REPORTED_EACH_PER_SECOND_IN_ALL as usize / 2, "{each}");
    }

    /// Outside tester q2: two limits flooded together were summed up in one event that named
    /// neither, and one of them had no event of its own at all.
    #[test]
    fn refusals_past_the_first_of_a_second_are_summed_up_per_rule() {
        let refusals = Refusals::default();
        let limited = OneByOne::new(RefusalReason::RateLimited);
        let policy: Arc<str> = "demo/api".into();
        let (orders, tenants): (Arc<str>, Arc<str>) = ("orders".into(), "per-tenant".into());
        let caller: IpAddr = "10.0.0.7".parse().unwrap();
        let mut each = 0;
        for i in 0..3000 {
            let which = if i % 2 == 0 { &orders } else { &tenants };
            each += u32::from(limited.reported_each_for(&refusals, "inbound", (Some(caller), None), &policy, which));
        }
        assert!(each <= 2 * REPORTED_EACH_PER_SECOND, "{each} reported each");
        let events = refusals.flush();
        let mut named: Vec<(String, String, u64)> = events
            .iter()
            .map(|e| {
                let SecurityEvent::DosRefused(r) = e else { panic!("{e:?}") };
                let (uid, name) = r.rule();
                (uid.into_owned(), name.into_owned(), r.count)
            })
            .collect();
        named.sort();
        assert_eq!(named.len(), 2, "one event per limit: {named:?}");
        assert_eq!((named[0].0.as_str(), named[0].1.as_str()), ("demo/api/orders", "orders"));
        assert_eq!((named[1].0.as_str(), named[1].1.as_str()), ("demo/api/per-tenant", "per-tenant"));
        assert_eq!(named[0].2 + named[1].2 + u64::from(each), 3000, "every refusal reported once");
        // A rule's slot that idles is dropped once there are many (ten more than that, for the
        // ten a new second would report each).
        for n in 0..=IDLE_RULE_SLOTS + REPORTED_EACH_PER_SECOND as usize {
            let _ = limited.reported_each_for(&refusals, "inbound", (Some(caller), None), &policy, &format!("r{n}"));
        }
        refusals.flush();
        refusals.flush();
        assert!(refusals.slots.lock().unwrap().len() <= 2, "idle rules' slots dropped");
    }
}
