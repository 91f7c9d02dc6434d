//! What the sidecar reports: Prometheus metrics and security events.
//!
//! Other modules record through [`Telemetry`]; it owns the registry and the event writer.

mod events;
mod inventory;
mod lines;
mod logging;
mod metrics;
mod otlp_tls;
mod process;
mod recorder;
mod refusals;
mod traces;

pub use events::{
    now_millis, rfc3339_millis, DeniedConnection, DeniedRequest, DosRefusal, EventWriter, RequestFacts, RuleId,
    SecurityEvent, TlsSession, WafEvent, OPAQUE_PORTS_RULE,
};
pub use inventory::{Inventory, Observed};
pub use logging::{dropped_lines as log_lines_dropped, flush as flush_logs, LogFormat, LogLevel};
pub use metrics::Metrics;
pub use process::ProcessMetrics;
pub use recorder::{Destinations, Fnv1a, Recorded, RequestRecorder, MAX_DESTINATIONS, OTHER_DESTINATION};
pub use refusals::{PerSecond, RefusalCounter, RefusalReason, Refusals, REPORTED_EACH_PER_SECOND};
pub use traces::{
    header_names as trace_headers, ParentRoot, Propagators, RequestSpan, SamplerChoice, SpanEnd, TraceCounters,
    TraceSettings, Traces,
};
pub(crate) use traces::{hex_into, single_traceparent, unique_header_value};

use crate::config::TelemetryConfig;
use lines::JsonLines;

pub struct Telemetry {
    pub metrics: Metrics,
    pub requests: RequestRecorder,
    pub events: EventWriter,
    /// OpenTelemetry traces, when configured.
    pub traces: Option<Traces>,
    /// The DoS defences' refusals, reported in aggregate ([`Telemetry::report_refusals`]).
    pub refusals: Refusals,
    /// The routes the app serves, as inbound requests show them (admin `GET /inventory`).
    pub inventory: Inventory,
    tls_refusals: refusals::OneByOne,
    invalid_requests: refusals::OneByOne,
    rate_limited: refusals::OneByOne,
    unauthenticated: refusals::OneByOne,
    forbidden: refusals::OneByOne,
    waf_blocked: refusals::OneByOne,
    waf_detected: refusals::OneByOne,
    audit_denied: refusals::OneByOne,
    access_log: Option<JsonLines>,
}

/// The most of a caller's text (a path, a method) a log line, an access-log entry, an event or
/// a span carries. Uncut, a refused request with an 8 KB path wrote four times its size to the
/// logs, fast enough for any caller to rotate older evidence away (kubelet keeps 10 MB of a
/// container's log).
pub const REPORTED_TEXT_BYTES: usize = 1024;

/// `text` cut to [`REPORTED_TEXT_BYTES`] at a character boundary, the cut marked with how much
/// was left out; borrowed, as nearly every path is, when nothing was.
pub fn reported(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= REPORTED_TEXT_BYTES {
        return std::borrow::Cow::Borrowed(text);
    }
    let end = (0..=REPORTED_TEXT_BYTES).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    std::borrow::Cow::Owned(format!("{}...[{} more bytes]", &text[..end], text.len() - end))
}

/// One request as the access log tells it.
pub struct AccessRecord<'a> {
    pub direction: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub seconds: f64,
    pub source: Option<std::net::SocketAddr>,
    pub principal: &'a str,
    /// Outbound, who was called: the SPIFFE ID the peer proved (or was expected to), or a
    /// passthrough destination's authority, as `palisade_requests_total`'s `destination`; empty
    /// inbound, where it is not written.
    pub destination: &'a str,
    pub decision: &'static str,
    pub request_id: &'a str,
    /// How long a `DELAY` rate limit held the request back (`ratelimit_delay_ms`, only when it did).
    pub ratelimit_delay: Option<std::time::Duration>,
    /// The end user: the verified token's `<iss>/<sub>` (`request_principal`, only when there was one).
    pub request_principal: Option<&'a str>,
    /// A gRPC call's status (`grpc_status`, only when the answer carried one).
    pub grpc_status: Option<u16>,
}

/// One relayed TCP connection (not HTTP) as the access log tells it, when it ended.
pub struct TcpAccessRecord<'a> {
    pub direction: &'static str,
    /// The mesh identity of the other side, when the connection crossed the mesh in a tunnel:
    /// the server's outbound, the caller's inbound.
    pub principal: Option<&'a str>,
    pub source: std::net::SocketAddr,
    pub destination: std::net::SocketAddr,
    /// From the app to the destination, and back.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub seconds: f64,
    /// `closed` (both sides closed), `idle_timeout`, `error` (a reset or another failure on
    /// either side), `unreachable` (the destination refused or did not answer in time), or
    /// `denied` (a tunnel the policy refused after a policy update).
    pub end: &'static str,
}

/// A sink that could not be opened, and the setting that names it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {error}")]
pub struct SinkError {
    pub setting: &'static str,
    pub error: std::io::Error,
}

impl Telemetry {
    pub fn new(config: &TelemetryConfig, traces: Option<TraceSettings>) -> Result<Self, SinkError> {
        let metrics = Metrics::new();
        let events = EventWriter::start(&config.events, metrics.events_dropped.clone())
            .map_err(|error| SinkError { setting: "telemetry.events.sink", error })?;
        let access_log = match config.access_log {
            true => Some(
                JsonLines::start("palisade-access", &config.access_log_sink, metrics.access_log_dropped.clone())
                    .map_err(|error| SinkError { setting: "telemetry.accessLogSink", error })?,
            ),
            false => None,
        };
        let traces = traces.map(|settings| {
            let counters = TraceCounters {
                exported: metrics.trace_spans_exported.clone(),
                dropped: metrics.trace_spans_dropped.clone(),
            };
            Traces::new(settings, counters)
        });
        Ok(Telemetry {
            metrics,
            requests: RequestRecorder::default(),
            events,
            traces,
            refusals: Refusals::default(),
            inventory: Inventory::default(),
            tls_refusals: refusals::OneByOne::new(RefusalReason::TlsRefused),
            invalid_requests: refusals::OneByOne::new(RefusalReason::InvalidRequest),
            rate_limited: refusals::OneByOne::new(RefusalReason::RateLimited),
            unauthenticated: refusals::OneByOne::new(RefusalReason::Unauthenticated),
            forbidden: refusals::OneByOne::new(RefusalReason::Forbidden),
            waf_blocked: refusals::OneByOne::new(RefusalReason::WafBlocked),
            waf_detected: refusals::OneByOne::new(RefusalReason::WafDetected),
            audit_denied: refusals::OneByOne::new(RefusalReason::AuditDenied),
            access_log,
        })
    }

    /// Emits the DoS refusals counted since the last report: one event per listener and reason,
    /// at most once a second however many accept loops ask (each does every second).
    pub fn report_refusals(&self) {
        for event in self.refusals.report() {
            self.events.emit(event);
        }
    }

    /// A handshake refused on a listener of this process (the sidecar's inbound, the control
    /// plane's policy port): the caller's certificate, or what it sent. The first few of each
    /// second are logged and reported each as a security event, the rest in the second's
    /// aggregate ([`refusals::REPORTED_EACH_PER_SECOND`]): a client needs no credential to be
    /// refused. The caller counts it in its own metric.
    pub fn tls_refused(
        &self,
        direction: &'static str,
        peer: std::net::SocketAddr,
        listener: Option<std::net::SocketAddr>,
        reason: String,
    ) {
        if !self.tls_refusals.reported_each(&self.refusals, direction, Some(peer.ip())) {
            return;
        }
        tracing::info!(direction, %peer, %reason, "TLS handshake refused");
        self.events.emit(SecurityEvent::TlsFailure {
            direction,
            peer: Some(peer),
            listener,
            expected: None,
            reason,
            // pingora (through tokio-rustls) drops rustls's connection with a refusal, so the
            // version it chose is not known.
            tls: None,
        });
    }

    /// An inbound request refused before any policy could judge it (malformed, or over a size
    /// limit): a probe that escapes the root or smuggles is a security event too. As for
    /// handshakes, the first few of each second are reported each, the rest in aggregate.
    pub fn inbound_request_invalid(&self, denied: DeniedRequest) {
        if !self.invalid_requests.reported_each(&self.refusals, "inbound", denied.request.source.map(|s| s.ip())) {
            return;
        }
        // Quoted, as every other request line's: a path may hold `"` or a blank.
        tracing::info!(status = denied.status, reason = %denied.rule, method = denied.request.method.as_str(),
            path = denied.request.path.as_str(), request_id = %denied.request.request_id, "request refused as invalid");
        self.events.emit(SecurityEvent::RequestDenied(denied));
    }

    /// Whether a request a policy's rule refused (`reason`: [`RefusalReason::RateLimited`],
    /// [`RefusalReason::Unauthenticated`], [`RefusalReason::Forbidden`] or
    /// [`RefusalReason::WafBlocked`]), from `source`, is reported on its own: the first
    /// [`refusals::REPORTED_EACH_PER_SECOND`] of a second of each kind are, the rest summed up per
    /// rule (`<policy>/<rule>`, as their reported requests name it) in one event a second. A
    /// flood of 20,000 429s had written 19 MB of events in 1.6 s; one of forged tokens or of
    /// attacks the WAF refuses wrote about 1 KB a request (outside tester q2).
    pub fn refusal_reported_each(
        &self,
        reason: RefusalReason,
        source: Option<std::net::IpAddr>,
        listener: Option<std::net::SocketAddr>,
        policy: &str,
        rule: &str,
    ) -> bool {
        let kind = match reason {
            RefusalReason::RateLimited => &self.rate_limited,
            RefusalReason::Unauthenticated => &self.unauthenticated,
            RefusalReason::Forbidden => &self.forbidden,
            RefusalReason::WafBlocked => &self.waf_blocked,
            RefusalReason::WafDetected => &self.waf_detected,
            RefusalReason::AuditDenied => &self.audit_denied,
            // No policy rule makes these: reported as a listener's (the review: they had been
            // filed as rate limits).
            other => {
                debug_assert!(false, "{} is no policy refusal", other.label());
                return true;
            }
        };
        kind.reported_each_for(&self.refusals, "inbound", (source, listener), policy, rule)
    }

    /// Emits the refusals not yet reported at once (a listener that stops).
    pub fn flush_refusals(&self) {
        for event in self.refusals.flush() {
            self.events.emit(event);
        }
    }

    /// Waits until the security events and access-log lines emitted so far are written (or
    /// counted as dropped): for whatever reads the files next.
    pub fn flush(&self) {
        self.events.flush();
        if let Some(lines) = &self.access_log {
            lines.flush();
        }
    }

    pub fn access_log_enabled(&self) -> bool {
        self.access_log.is_some()
    }

    /// A server this sidecar connected to failed the handshake (no mesh identity, or not the one
    /// expected): counted, logged, and a security event. `tls` is what the handshake negotiated,
    /// when it completed (`crate::tls::Negotiated`'s fields).
    pub fn outbound_tls_refused(
        &self,
        server: std::net::SocketAddr,
        expected: Option<String>,
        reason: String,
        tls: Option<(&'static str, Option<&'static str>, Option<String>)>,
    ) {
        let tls = tls.map(|(version, cipher, presented)| TlsSession { version, cipher, presented });
        self.metrics.tls_handshakes.with_label_values(&["outbound", "failure"]).inc();
        tracing::warn!(peer = %server, %reason, "outbound server refused");
        self.events.emit(SecurityEvent::TlsFailure {
            direction: "outbound",
            peer: Some(server),
            listener: None,
            expected,
            reason,
            tls,
        });
    }

    /// One access log line, written straight into its buffer (no JSON value tree per request).
    pub fn access(&self, r: AccessRecord<'_>) {
        use std::io::Write;
        let Some(lines) = &self.access_log else { return };
        let mut line = Vec::with_capacity(256);
        let text = |line: &mut Vec<u8>, s: &str| serde_json::to_writer(line, s).expect("a string serialises");
        let _ = write!(line, "{{\"time\":{},\"direction\":\"{}\",\"method\":", events::now_millis(), r.direction);
        text(&mut line, &reported(r.method));
        line.extend_from_slice(b",\"path\":");
        text(&mut line, &reported(r.path));
        let _ = write!(line, ",\"status\":{},\"duration_ms\":", r.status);
        write_millis(&mut line, r.seconds);
        line.extend_from_slice(b",\"source\":");
        match r.source {
            Some(source) => {
                let _ = write!(line, "\"{source}\"");
            }
            None => line.extend_from_slice(b"null"),
        }
        line.extend_from_slice(b",\"principal\":");
        text(&mut line, r.principal);
        if !r.destination.is_empty() {
            line.extend_from_slice(b",\"destination\":");
            text(&mut line, r.destination);
        }
        let _ = write!(line, ",\"decision\":\"{}\",\"request_id\":", r.decision);
        text(&mut line, r.request_id);
        if let Some(delay) = r.ratelimit_delay {
            line.extend_from_slice(b",\"ratelimit_delay_ms\":");
            write_millis(&mut line, delay.as_secs_f64());
        }
        if let Some(user) = r.request_principal {
            line.extend_from_slice(b",\"request_principal\":");
            text(&mut line, &reported(user));
        }
        if let Some(code) = r.grpc_status {
            let _ = write!(line, ",\"grpc_status\":{code}");
        }
        line.extend_from_slice(b"}\n");
        lines.send_line(line);
    }

    /// One access log line for a relayed TCP connection: the same file and `time`,
    /// `direction`, `duration_ms` and `source` as a request's, with `"protocol":"tcp"` and no
    /// method, path or status.
    pub fn access_tcp(&self, r: &TcpAccessRecord<'_>) {
        use std::io::Write;
        let Some(lines) = &self.access_log else { return };
        let mut line = Vec::with_capacity(224);
        let _ = write!(
            line,
            "{{\"time\":{},\"direction\":\"{}\",\"protocol\":\"tcp\",\"source\":\"{}\",\"destination\":\"{}\",\"bytes_sent\":{},\"bytes_received\":{},\"duration_ms\":",
            events::now_millis(),
            r.direction,
            r.source,
            r.destination,
            r.bytes_sent,
            r.bytes_received
        );
        write_millis(&mut line, r.seconds);
        if let Some(principal) = r.principal {
            line.extend_from_slice(b",\"principal\":");
            serde_json::to_writer(&mut line, principal).expect("a string serialises");
        }
        let _ = writeln!(line, ",\"end\":\"{}\"}}", r.end);
        lines.send_line(line);
    }
}

/// Milliseconds with three decimals, as `{:.3}` writes them, in integer arithmetic: float
/// formatting was the most expensive part of an access-log line.
fn write_millis(line: &mut Vec<u8>, seconds: f64) {
    use std::io::Write;
    let micros = (seconds * 1e6).round() as u64;
    let _ = write!(line, "{}.{:03}", micros / 1000, micros % 1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_text_is_cut_at_a_character_boundary_and_says_how_much_was_left_out() {
        assert!(matches!(reported("/orders/1"), std::borrow::Cow::Borrowed("/orders/1")));
        let long = format!("/{}", "é".repeat(1000));
        let cut = reported(&long);
        let (kept, note) = cut.split_once("...[").unwrap();
        assert_eq!(kept.len(), 1023, "a two-byte character is not split");
        assert_eq!(note, format!("{} more bytes]", long.len() - 1023));
    }
    use crate::config::EventSink;

    #[test]
    fn millis_are_written_as_with_three_decimals() {
        for seconds in [0.0, 0.000_000_4, 0.000_000_6, 0.000_001, 0.001_234_4, 0.999_999_6, 1.5, 12.345_678, 3600.0] {
            let mut line = Vec::new();
            write_millis(&mut line, seconds);
            assert_eq!(String::from_utf8(line).unwrap(), format!("{:.3}", seconds * 1e3), "{seconds}");
        }
    }

    #[test]
    fn access_log_drops_are_not_counted_as_lost_security_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = TelemetryConfig::default();
        config.events.sink = EventSink::File(dir.path().join("events.jsonl"));
        // A sink that refuses every write: each access line is lost and counted.
        config.access_log_sink = EventSink::File("/dev/full".into());
        let telemetry = Telemetry::new(&config, None).unwrap();
        let record = || AccessRecord {
            direction: "inbound",
            method: "GET",
            path: "/",
            status: 200,
            seconds: 0.001,
            source: None,
            principal: "",
            destination: "",
            decision: "allow",
            request_id: "r",
            ratelimit_delay: None,
            request_principal: None,
            grpc_status: None,
        };
        telemetry.access(record());
        telemetry.events.emit(SecurityEvent::PolicyApplied { version: "v1".into(), policies: vec![] });
        telemetry.flush();
        let written = || std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap_or_default();
        assert_eq!(telemetry.metrics.access_log_dropped.get(), 1, "the lost access line is counted as such");
        assert_eq!(telemetry.metrics.events_dropped.get(), 0, "and not as a lost security event");
        assert_eq!(written().lines().count(), 1, "the event itself was written");
        let text = String::from_utf8(telemetry.metrics.render()).unwrap();
        assert!(text.contains("palisade_access_log_lines_dropped_total 1"), "{text}");
        assert!(text.contains("palisade_security_events_dropped_total 0"), "{text}");
    }
}
