use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets fine enough to resolve a sidecar's sub-millisecond overhead, wide enough for slow apps.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Throttling waits: from a millisecond to `maxDelay`'s bound (60 s).
const DELAY_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub tls_handshakes: IntCounterVec,
    pub certificate_expiry: Gauge,
    pub certificate_reloads: IntCounterVec,
    pub events_dropped: prometheus::IntCounter,
    /// Access log lines lost, apart from the security events: an access log that cannot keep up
    /// must not look like lost security events to an alert on those.
    pub access_log_dropped: prometheus::IntCounter,
    pub authz_decisions: IntCounterVec,
    pub ratelimit_decisions: IntCounterVec,
    /// How long `DELAY` rate limits held requests back, by policy and limit.
    pub ratelimit_delay: HistogramVec,
    pub policy_version: IntGaugeVec,
    pub policy_updates: IntCounterVec,
    pub control_plane_connected: prometheus::IntGauge,
    pub trace_spans_exported: prometheus::IntCounter,
    pub trace_spans_dropped: prometheus::IntCounter,
    pub authn_failures: IntCounterVec,
    pub authn_cache_lookups: IntCounterVec,
    pub waf_findings: IntCounterVec,
    /// Bodies of an inspected type over `inspectBodyBytes`, passed on uninspected (`PASS`).
    pub waf_uninspected: prometheus::IntCounter,
    pub connections_closed: IntCounterVec,
    pub opaque_connections: prometheus::IntCounter,
    /// TCP to the app's opaque ports, by caller (empty: plaintext), the app's port reached (`other`: not an
    /// opaque port) and decision.
    pub inbound_tcp_connections: IntCounterVec,
    pub requests_shed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "palisade_requests_total",
                "Requests handled, by direction, method, status, caller (inbound) and destination (outbound).",
            ),
            &["direction", "method", "code", "source_principal", "decision", "destination"],
        )
        .expect("metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("palisade_request_duration_seconds", "Time from request head to response end.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["direction", "code"],
        )
        .expect("metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new("palisade_tls_handshakes_total", "TLS handshakes, by direction and result."),
            &["direction", "result"],
        )
        .expect("metric");
        let certificate_expiry = Gauge::new(
            "palisade_certificate_expiry_timestamp_seconds",
            "When the workload certificate in use expires (Unix time).",
        )
        .expect("metric");
        let certificate_reloads = IntCounterVec::new(
            Opts::new(
                "palisade_certificate_reloads_total",
                "New certificates or trust bundles, put in force (applied) or refused (rejected).",
            ),
            &["result"],
        )
        .expect("metric");
        let events_dropped = prometheus::IntCounter::new(
            "palisade_security_events_dropped_total",
            "Security events dropped because the event writer fell behind or its sink failed.",
        )
        .expect("metric");
        let access_log_dropped = prometheus::IntCounter::new(
            "palisade_access_log_lines_dropped_total",
            "Access log lines dropped because the access log writer fell behind or its sink failed.",
        )
        .expect("metric");
        let authz_decisions = IntCounterVec::new(
            Opts::new("palisade_authz_decisions_total", "Authorisation decisions, by policy and rule."),
            &["policy", "rule", "decision", "mode"],
        )
        .expect("metric");
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "palisade_ratelimit_decisions_total",
                "Rate-limit decisions, by policy and limit: allowed, limited (429), delayed (DELAY: waited, then allowed).",
            ),
            &["policy", "limit", "result"],
        )
        .expect("metric");
        let ratelimit_delay = HistogramVec::new(
            HistogramOpts::new(
                "palisade_ratelimit_delay_seconds",
                "How long requests over a DELAY rate limit waited for a token, by policy and limit.",
            )
            .buckets(DELAY_BUCKETS.to_vec()),
            &["policy", "limit"],
        )
        .expect("metric");
        let policy_version = IntGaugeVec::new(
            Opts::new("palisade_policy_version_info", "The policy version in force (value 1)."),
            &["source", "version"],
        )
        .expect("metric");
        let policy_updates = IntCounterVec::new(
            Opts::new("palisade_policy_updates_total", "Policy updates, applied or rejected."),
            &["result"],
        )
        .expect("metric");
        // Shown at 0 from the start, so `increase()` sees the first failure or update too (a
        // series that appears with its first count has no earlier sample to rise from).
        for direction in ["inbound", "outbound"] {
            for result in ["success", "failure", "timeout"] {
                tls_handshakes.with_label_values(&[direction, result]);
            }
        }
        for result in ["applied", "rejected"] {
            certificate_reloads.with_label_values(&[result]);
            policy_updates.with_label_values(&[result]);
        }
        let control_plane_connected = prometheus::IntGauge::new(
            "palisade_control_plane_connected",
            "1 while the policy stream to the control plane is open.",
        )
        .expect("metric");
        let trace_spans_exported =
            prometheus::IntCounter::new("palisade_trace_spans_exported_total", "Spans the OTLP collector accepted.")
                .expect("metric");
        let trace_spans_dropped = prometheus::IntCounter::new(
            "palisade_trace_spans_dropped_total",
            "Sampled spans dropped: the export queue was full, or the collector refused or did not answer.",
        )
        .expect("metric");
        let authn_failures = IntCounterVec::new(
            Opts::new("palisade_authn_failures_total", "Requests refused by JWT authentication (401), by reason."),
            &["reason"],
        )
        .expect("metric");
        let authn_cache_lookups = IntCounterVec::new(
            Opts::new(
                "palisade_authn_cache_lookups_total",
                "Requests with a token, by whether its verification was found in the cache of verified tokens (hit) or done in full (miss, refusals included).",
            ),
            &["result"],
        )
        .expect("metric");
        let waf_findings = IntCounterVec::new(
            Opts::new(
                "palisade_waf_findings_total",
                "Input-validation findings, by detector and what was done (blocked, detected).",
            ),
            &["detector", "action"],
        )
        .expect("metric");
        let waf_uninspected = prometheus::IntCounter::new(
            "palisade_waf_uninspected_bodies_total",
            "Bodies longer than inspectBodyBytes passed on uninspected (bodyOverLimit: PASS).",
        )
        .expect("metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "palisade_connections_closed_total",
                "Connections (or HTTP/2 streams) the sidecar closed to protect itself, by listener and reason: \
                 connection_limit, source_limit, header_timeout, idle_timeout, body_timeout, send_timeout, \
                 rapid_reset, memory_cut, memory_limit, memory_idle, not_http.",
            ),
            &["direction", "reason"],
        )
        .expect("metric");
        let opaque_connections = prometheus::IntCounter::new(
            "palisade_outbound_opaque_connections_total",
            "Outbound connections that were not HTTP, relayed as bytes: in a TCP tunnel to the peer sidecar, or to a destination in outbound.passthrough.",
        )
        .expect("metric");
        let inbound_tcp_connections = IntCounterVec::new(
            Opts::new(
                "palisade_inbound_tcp_connections_total",
                "TCP connections to the app's opaque ports: mesh peers' tunnels (source_principal: the \
                 SPIFFE ID they proved) and, while the port is PERMISSIVE, plaintext (source_principal \
                 empty), by the app's port they reach (other: not an opaque port) and the decision \
                 (allow, deny, not_opaque; http: plaintext that was an HTTP request, served by the \
                 pipeline).",
            ),
            &["source_principal", "port", "decision"],
        )
        .expect("metric");
        let requests_shed = IntCounterVec::new(
            Opts::new(
                "palisade_requests_shed_total",
                "Requests answered 503 at once: limits.maxInflight requests were in flight on the listener, or the sidecar was over limits.maxMemoryBytes.",
            ),
            &["direction"],
        )
        .expect("metric");
        let build_info =
            IntGaugeVec::new(Opts::new("palisade_build_info", "Build information."), &["version"]).expect("metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(certificate_reloads.clone()),
            Box::new(events_dropped.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(super::logging::dropped_lines()),
            Box::new(build_info),
            Box::new(authz_decisions.clone()),
            Box::new(ratelimit_decisions.clone()),
            Box::new(ratelimit_delay.clone()),
            Box::new(policy_version.clone()),
            Box::new(policy_updates.clone()),
            Box::new(control_plane_connected.clone()),
            Box::new(trace_spans_exported.clone()),
            Box::new(trace_spans_dropped.clone()),
            Box::new(authn_failures.clone()),
            Box::new(authn_cache_lookups.clone()),
            Box::new(waf_findings.clone()),
            Box::new(waf_uninspected.clone()),
            Box::new(connections_closed.clone()),
            Box::new(opaque_connections.clone()),
            Box::new(inbound_tcp_connections.clone()),
            Box::new(requests_shed.clone()),
            Box::new(crate::telemetry::ProcessMetrics::new()),
        ] {
            registry.register(c).expect("metric registers once");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            tls_handshakes,
            certificate_expiry,
            certificate_reloads,
            events_dropped,
            access_log_dropped,
            authz_decisions,
            ratelimit_decisions,
            ratelimit_delay,
            policy_version,
            policy_updates,
            control_plane_connected,
            trace_spans_exported,
            trace_spans_dropped,
            authn_failures,
            authn_cache_lookups,
            waf_findings,
            waf_uninspected,
            connections_closed,
            opaque_connections,
            inbound_tcp_connections,
            requests_shed,
        }
    }

    /// A gauge whose value is `read` at each scrape (what another module owns and keeps no
    /// metric of: the heap in use, say).
    pub fn register_read_at_scrape(&self, name: &str, help: &str, read: impl Fn() -> f64 + Send + Sync + 'static) {
        let gauge = Gauge::new(name, help).expect("metric");
        let collector = ReadAtScrape { gauge, read: Box::new(read) };
        self.registry.register(Box::new(collector)).expect("metric registers once");
    }

    /// For metrics of parts of the sidecar with their own types (the memory trimmer).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// [`Metrics::register_read_at_scrape`]'s gauge.
struct ReadAtScrape {
    gauge: Gauge,
    read: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl prometheus::core::Collector for ReadAtScrape {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.set((self.read)());
        self.gauge.collect()
    }
}
