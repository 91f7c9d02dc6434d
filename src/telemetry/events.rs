//! Security events as JSON lines, for a SIEM: OCSF 1.5.0 by default, ECS as the alternative.
//!
//! OCSF classes, each checked against an independent implementation of the schema
//! (tests/k8s/test_events.py, the pydantic models of PyPI `ocsf-emitter`):
//! - requests (denied, rate-limited, unauthenticated, WAF findings): HTTP Activity (4002), with the
//!   `security_control` profile (`action_id`, `disposition_id`, `firewall_rule`) and the `host`
//!   profile (`actor`, the caller's SPIFFE ID);
//! - TLS refusals: Network Activity (4001), activity Refuse;
//! - the DoS defences' refusals, aggregated (`count`, `start_time`, `end_time`): connections
//!   closed at accept as Network Activity (4001) Refuse, closed for a head that did not arrive or
//!   for idleness as Network Activity Close; requests shed (503) or whose body stalled (408) as HTTP
//!   Activity (4002) with that `http_response`;
//! - policy sets, workload certificates and workload labels: Entity Management (3004, Identity &
//!   Access Management), the managed entity being the policy set, the certificate or the
//!   workload. Device Config State Change (5019) would need a `device` and reports a device's
//!   posture, and Application Lifecycle (6002) is for installing, starting and stopping
//!   software; Entity Management is the class for "this managed object was created, updated or
//!   refused", which is what these events say.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::lines::JsonLines;
use crate::config::{EventFormat, EventsConfig};

/// What a completed TLS handshake negotiated, as a refusal event reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSession {
    /// `1.2` or `1.3`.
    pub version: &'static str,
    /// The cipher suite, as rustls names it (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: Option<&'static str>,
    /// The SPIFFE ID (URI SAN) the peer's certificate presented.
    pub presented: Option<String>,
}

/// What happened. Each kind maps to an OCSF disposition and an ECS category.
#[derive(Debug, Clone)]
pub enum SecurityEvent {
    /// A TLS handshake was refused (inbound) or the server failed verification (outbound).
    TlsFailure {
        direction: &'static str,
        peer: Option<SocketAddr>,
        /// The listener that refused (inbound and the control plane's): where the caller came.
        listener: Option<SocketAddr>,
        expected: Option<String>,
        reason: String,
        /// What the handshake negotiated, when the refusal came after it completed (a server
        /// that proved another identity than the one expected); `None` for a refusal inside the
        /// handshake, whose version rustls does not tell.
        tls: Option<TlsSession>,
    },
    /// A new workload certificate or trust bundle is in use.
    CertificateRotated { identity: String, serial: String, not_after: i64 },
    /// A new certificate could not be loaded; the previous one stays in use.
    CertificateReloadFailed { reason: String },
    /// The workload certificate in force has passed its end and nothing has replaced it: peers
    /// refuse this sidecar until one does.
    CertificateExpired { identity: String, serial: String, not_after: i64 },
    /// A new policy set is in force.
    PolicyApplied { version: String, policies: Vec<String> },
    /// A policy update was refused; the set in force stays.
    PolicyRejected { kept_version: String, errors: Vec<String> },
    /// A request was refused by authorisation (403) or a rate limit (429), or would have been
    /// refused by an AUDIT policy.
    RequestDenied(DeniedRequest),
    /// The workload CA signed a certificate.
    CertificateIssued {
        identity: String,
        serial: String,
        not_after: i64,
        peer: Option<SocketAddr>,
        pod: Option<String>,
    },
    /// The workload CA refused a request, or a sidecar's renewal failed: `reason` says why.
    CertificateRefused { identity: Option<String>, peer: Option<SocketAddr>, reason: String },
    /// The control plane read a pod's labels from the API server and they disagree with the
    /// ones its sidecar claimed: the claim is ignored.
    LabelsMismatch { identity: String, pod: String, claimed: String, actual: String },
    /// A TCP connection from a mesh peer (a tunnel) was refused by policy, or would have been
    /// refused by an AUDIT policy: closed before a byte reached the app.
    ConnectionDenied(DeniedConnection),
    /// A request's JWT was refused, or it had none where one is required (401).
    AuthenticationFailed {
        /// The `palisade_authn_failures_total` reason label.
        reason: &'static str,
        /// What is wrong with the token, as the caller is told.
        description: &'static str,
        /// The policy whose `requireJwt` refused a request without a token.
        policy: Option<String>,
        /// What exactly failed (the `kid`, the issuer, the header), for the operator.
        detail: Option<String>,
        request: RequestFacts,
    },
    /// The WAF found an attack: blocked (403) in BLOCK mode, reported in DETECT mode.
    WafFinding(WafEvent),
    /// Connections or requests a DoS defence (SPEC section 3 `limits`) refused since the last
    /// report on one listener, for one reason: one event for many (see `refusals.rs`).
    DosRefused(DosRefusal),
}

/// How many connections or requests one listener refused for one reason, over a time span.
#[derive(Debug, Clone, PartialEq)]
pub struct DosRefusal {
    /// The listener: inbound, outbound, admin...
    pub direction: &'static str,
    /// `palisade_connections_closed_total`'s reason label, or `shed`.
    pub reason: &'static str,
    /// The `limits` setting that refused (`limits.maxConnections`).
    pub setting: &'static str,
    /// Its value (`10000`, `10s`).
    pub limit: String,
    pub count: u64,
    /// The first and the last refusal reported (Unix ms).
    pub start_ms: u64,
    pub end_ms: u64,
    /// The listener's address.
    pub listener: Option<SocketAddr>,
    /// The one address every refused connection came from, when it was one.
    pub source: Option<std::net::IpAddr>,
    /// They came from more than one address.
    pub several_sources: bool,
    /// The policy and its rule that refused them, for refusals a policy makes (a rate limit):
    /// the aggregate names the rule its requests reported each name.
    pub rule: Option<RuleId>,
}

/// A policy's rule, as events name it: `<policy>/<rule>` and the rule's own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleId {
    pub policy: Arc<str>,
    pub rule: Arc<str>,
}

impl DosRefusal {
    /// A refused request with an HTTP answer (503 shed, 408 body timeout), rather than a
    /// connection closed.
    pub fn http_status(&self) -> Option<u16> {
        match self.reason {
            "shed" | "source_shed" | "memory_shed" => Some(503),
            "rate_limited" => Some(429),
            "unauthenticated" => Some(401),
            "forbidden" | "waf_blocked" => Some(403),
            "body_timeout" => Some(408),
            _ => None,
        }
    }

    /// Requests the sidecar answered (503, 408, and 400, 413, 414 or 431 for a malformed or
    /// oversized one), or let through with a note (DETECT, AUDIT), rather than connections closed.
    pub fn answers_requests(&self) -> bool {
        self.http_status().is_some() || matches!(self.reason, "invalid_request" | "waf_detected" | "audit_denied")
    }

    /// A note on requests that went on (a DETECT finding, an AUDIT would-deny), not a refusal.
    pub fn let_through(&self) -> bool {
        matches!(self.reason, "waf_detected" | "audit_denied")
    }

    /// What the rule that refused protects against: the sidecar's own resources (`dos`), or, for
    /// traffic the mesh cannot carry, what the app may reach (`egress`).
    pub fn category(&self) -> Option<&'static str> {
        if self.rule.is_some() {
            // A policy's rule, as its requests reported each are filed.
            return matches!(self.reason, "waf_blocked" | "waf_detected").then_some("input-validation");
        }
        match self.reason {
            "not_http" => Some("egress"),
            // Handshakes refused past the ones reported each: filed as those are.
            "tls_refused" => None,
            _ => Some("dos"),
        }
    }

    /// The rule that refused, as a SIEM matches it: `(uid, name)`. TLS refusals in aggregate
    /// carry the rule each refusal does (`mtls`, `inbound-mtls`).
    pub fn rule(&self) -> (Cow<'static, str>, Cow<'static, str>) {
        if let Some(RuleId { policy, rule }) = &self.rule {
            // As each request's event names it: a WAF's `<policy>/waf:sqli` is named `sqli`; a
            // token's failure is summed up per reason (`jwt:expired`), under `<policy>/jwt`.
            let (uid, name) = match self.reason {
                "waf_blocked" | "waf_detected" => {
                    (format!("{policy}/{rule}"), rule.strip_prefix("waf:").unwrap_or(rule))
                }
                "unauthenticated" => (format!("{policy}/jwt"), &**rule),
                _ => (format!("{policy}/{rule}"), &**rule),
            };
            return (Cow::Owned(uid), Cow::Owned(name.to_string()));
        }
        match self.reason {
            "tls_refused" => (Cow::Borrowed("mtls"), Cow::Owned(format!("{}-mtls", self.direction))),
            reason => (Cow::Borrowed(self.setting), Cow::Borrowed(reason)),
        }
    }

    pub fn message(&self) -> String {
        let (n, direction, setting, limit) = (self.count, self.direction, self.setting, &self.limit);
        let plural = if n == 1 { "" } else { "s" };
        match self.reason {
            "memory_limit" => format!(
                "{n} connection{plural} closed at accept on {direction}: the sidecar's heap was over {setting} ({limit} bytes)"
            ),
            "memory_idle" => format!(
                "{n} idle connection{plural} on {direction} closed: the sidecar's heap was over {setting} ({limit} bytes)"
            ),
            "connection_limit" | "source_limit" => {
                format!("{n} connection{plural} closed at accept on {direction}: {setting} ({limit}) reached")
            }
            "header_timeout" => format!(
                "{n} connection{plural} on {direction} closed: the request head did not arrive within {setting} ({limit})"
            ),
            "idle_timeout" => format!("{n} idle connection{plural} on {direction} closed after {setting} ({limit})"),
            "body_timeout" => format!(
                "{n} request{plural} on {direction} answered 408: no body bytes within {setting} ({limit})"
            ),
            "send_timeout" => format!(
                "{n} request{plural} on {direction} cut off: the caller took none of the answer within {setting} ({limit})"
            ),
            "shed" => format!("{n} request{plural} on {direction} shed (503): {setting} ({limit}) in flight"),
            "source_shed" => format!(
                "{n} request{plural} on {direction} shed (503): the source already had {setting} ({limit}) in flight, with no more than that share of the listener free"
            ),
            "http2_abuse" => format!(
                "{n} HTTP/2 connection{plural} on {direction} closed by h2's own flood guards (GOAWAY ENHANCE_YOUR_CALM: streams reset before they were accepted, CONTINUATION frames, header lists far past the limit)"
            ),
            "rate_limited" => format!(
                "{n} more request{plural} on {direction} rate limited (429): past {limit} a second from a source or 100 from all, they are reported in aggregate (each is counted in palisade_ratelimit_decisions_total and palisade_requests_total)"
            ),
            "memory_shed" => format!(
                "{n} request{plural} on {direction} shed (503): the sidecar's heap was over {setting} ({limit} bytes)"
            ),
            "memory_cut" => format!(
                "{n} answer{plural} or connection{plural} on {direction} cut off while the caller was not reading: the sidecar's heap was over {setting} ({limit} bytes)"
            ),
            "not_http" => format!(
                "{n} connection{plural} on {direction} closed: not HTTP, to a destination that proved no mesh identity, \
                 outside {setting} ({limit}). Either it has no sidecar, or its sidecar closed the connection before \
                 the handshake (its connection limits: see its palisade_connections_closed_total; then nothing here \
                 needs changing). Only for a destination outside the mesh: list it there (in a pod: the \
                 palisade.dev/outbound-passthrough annotation) to relay it, or exclude its port from capture"
            ),
            "rapid_reset" => format!(
                "{n} HTTP/2 connection{plural} on {direction} closed: more stream resets than {setting} ({limit}) a second"
            ),
            "tls_refused" => format!(
                "{n} more TLS handshake{plural} on {direction} refused: past {limit} a second from a source or 100 from all, refusals are reported in aggregate (each is counted in palisade_tls_handshakes_total)"
            ),
            "unauthenticated" => format!(
                "{n} more request{plural} on {direction} refused as unauthenticated (401): past {limit} a second from a source or 100 from all, they are reported in aggregate (each is counted in palisade_authn_failures_total)"
            ),
            "forbidden" => format!(
                "{n} more request{plural} on {direction} denied by authorization (403): past {limit} a second from a source or 100 from all, they are reported in aggregate (each is counted in palisade_authz_decisions_total)"
            ),
            "waf_detected" => format!(
                "{n} more WAF finding{plural} on {direction} in DETECT mode (forwarded): past {limit} a second from a source or 100 from all, they are reported in aggregate (each is counted in palisade_waf_findings_total)"
            ),
            "audit_denied" => format!(
                "{n} more request{plural} on {direction} an AUDIT policy would deny (forwarded): past {limit} a second from a source or 100 from all, they are reported in aggregate (each is counted in palisade_authz_decisions_total)"
            ),
            "waf_blocked" => format!(
                "{n} more request{plural} on {direction} blocked by the WAF (403): past {limit} a second from a source or 100 from all, they are reported in aggregate (each is counted in palisade_waf_findings_total)"
            ),
            "invalid_request" => format!(
                "{n} more request{plural} on {direction} refused as malformed or over a size limit (400, 413, 414, 431): past {limit} a second from a source or 100 from all, they are reported in aggregate (each is counted in palisade_requests_total)"
            ),
            other => format!("{n} refused on {direction}: {other}"),
        }
    }
}

/// A WAF finding: where it was and what matched (cut short; never the whole value or body).
#[derive(Debug, Clone, PartialEq)]
pub struct WafEvent {
    pub policy: String,
    pub detector: &'static str,
    pub location: &'static str,
    /// The parameter, cookie or header name; empty for the path and the body.
    pub name: String,
    pub paranoia: u8,
    pub fragment: String,
    pub blocked: bool,
    pub request: RequestFacts,
}

/// A refused (or, under AUDIT, would-be refused) request, as both formats report it: what
/// refused it, and the request.
#[derive(Debug, Clone, PartialEq)]
pub struct DeniedRequest {
    pub status: u16,
    pub policy: String,
    /// A policy's rule or limit; with no policy (`-`), a stable id (`path-double-encoded`,
    /// `inputValidation.maxUriBytes`) that `detail` says in words.
    pub rule: String,
    pub detail: Option<String>,
    pub audit: bool,
    pub request: RequestFacts,
}

/// The rule a [`DeniedConnection`] names when the port takes no tunnels, before any policy.
pub const OPAQUE_PORTS_RULE: &str = "inbound.opaquePorts";

/// A refused (or, under AUDIT, would-be refused) TCP connection from a mesh peer.
#[derive(Debug, Clone, PartialEq)]
pub struct DeniedConnection {
    pub policy: String,
    pub rule: String,
    pub audit: bool,
    /// The SPIFFE ID the caller proved; none for a PERMISSIVE port's plaintext.
    pub principal: Option<String>,
    pub source: SocketAddr,
    /// The address and port the caller addressed: the app's.
    pub destination: SocketAddr,
}

impl DeniedConnection {
    fn message(&self) -> String {
        let verdict = if self.audit { "audit, would deny" } else { "denied" };
        let caller = match &self.principal {
            Some(principal) => principal.clone(),
            None => format!("{} (plaintext)", self.source.ip()),
        };
        let port = self.destination.port();
        if self.rule == OPAQUE_PORTS_RULE {
            return format!(
                "{verdict} TCP connection from {caller} to port {port}: the port is not in inbound.opaquePorts; \
                 if the app speaks something other than HTTP there, list it (in a pod: the \
                 palisade.dev/opaque-ports annotation)"
            );
        }
        match self.policy.as_str() {
            // No policy decided: the rule is the reason (plaintext once the workload is STRICT).
            "-" => format!("{verdict} TCP connection from {caller} to port {port}: {}", self.rule),
            policy => format!("{verdict} TCP connection from {caller} to port {port}: {policy} rule {}", self.rule),
        }
    }
}

/// What an event says about the request itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestFacts {
    pub principal: Option<String>,
    pub source: Option<SocketAddr>,
    pub method: String,
    pub path: String,
    pub request_id: String,
    /// The address the request was sent to (the sidecar's listener): OCSF `dst_endpoint`.
    pub destination: Option<SocketAddr>,
    /// The request's trace, when traces are on: `metadata.correlation_uid` in OCSF.
    pub trace_id: Option<String>,
    /// The end user: the verified token's `<iss>/<sub>`, when the request carried one.
    pub request_principal: Option<String>,
    /// The path as the policy judged it, when normalising changed it (`/x/../admin` is
    /// `/admin`): a SIEM's search for `/admin*` finds the evasions too (outside tester q2).
    pub normalized_path: Option<String>,
}

impl DeniedRequest {
    fn message(&self) -> String {
        let verdict = match (self.audit, self.status) {
            (true, 429) => "audit, would rate-limit",
            (true, _) => "audit, would deny",
            (false, 429) => "rate limited",
            (false, _) => "denied",
        };
        match self.policy.as_str() {
            // No policy decided: refused before any could judge it; the rule is the reason.
            "-" => format!(
                "refused {} {} ({}): {}",
                self.request.method,
                self.request.path,
                self.status,
                self.detail.as_deref().unwrap_or(&self.rule)
            ),
            policy => format!("{verdict} {} {}: {policy} rule {}", self.request.method, self.request.path, self.rule),
        }
    }
}

impl SecurityEvent {
    /// The event as one JSON object in `format`: what a sink receives.
    pub fn render(&self, format: EventFormat) -> Value {
        match format {
            EventFormat::Ocsf => ocsf(self),
            EventFormat::Ecs => ecs(self),
        }
    }
}

pub struct EventWriter {
    lines: Option<JsonLines>,
    format: EventFormat,
}

impl EventWriter {
    pub fn start(config: &EventsConfig, dropped: prometheus::IntCounter) -> std::io::Result<Self> {
        Ok(EventWriter {
            lines: Some(JsonLines::start("palisade-events", &config.sink, dropped)?),
            format: config.format,
        })
    }

    /// A writer that discards everything (tools that emit no events).
    pub fn disabled() -> Self {
        EventWriter { lines: None, format: EventFormat::Ocsf }
    }

    /// Waits until every event emitted before this call is written, or counted as dropped.
    pub fn flush(&self) {
        if let Some(lines) = &self.lines {
            lines.flush();
        }
    }

    pub fn emit(&self, event: SecurityEvent) {
        let Some(lines) = &self.lines else { return };
        lines.send(&event.render(self.format));
    }
}

pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Now as RFC 3339 in UTC with milliseconds (`2026-12-02T16:04:05.123Z`): ECS `@timestamp`.
pub(super) fn now_rfc3339_millis() -> String {
    format_rfc3339_millis(time::OffsetDateTime::now_utc())
}

/// A Unix time in milliseconds as RFC 3339 in UTC with milliseconds.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format_rfc3339_millis(t)
}

fn format_rfc3339_millis(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn endpoint(addr: Option<SocketAddr>) -> Value {
    match addr {
        Some(a) => json!({"ip": a.ip().to_string(), "port": a.port()}),
        None => Value::Null,
    }
}

/// OCSF classes the events use: (class_uid, class_name, category_uid, category_name).
const HTTP_ACTIVITY: (u32, &str, u32, &str) = (4002, "HTTP Activity", 4, "Network Activity");
const NETWORK_ACTIVITY: (u32, &str, u32, &str) = (4001, "Network Activity", 4, "Network Activity");
const ENTITY_MANAGEMENT: (u32, &str, u32, &str) = (3004, "Entity Management", 3, "Identity & Access Management");

/// OCSF `status_id`.
const SUCCESS: u32 = 1;
const FAILURE: u32 = 2;

/// The `security_control` profile's `action_id` / `disposition_id`.
const ALLOWED: u32 = 1;
const DENIED: u32 = 2;
const BLOCKED: u32 = 2;
const DETECTED: u32 = 15;

/// What an OCSF record is made of, before the common attributes are added.
struct Ocsf {
    class: (u32, &'static str, u32, &'static str),
    activity: (u32, &'static str),
    status_id: u32,
    severity_id: u32,
    message: String,
    /// `action_id` and `disposition_id`, for events a security control decided (the
    /// `security_control` profile).
    control: Option<(u32, u32)>,
    /// The class's (and profiles') own attributes.
    extra: Value,
}

fn ocsf(event: &SecurityEvent) -> Value {
    let o = ocsf_parts(event);
    let (class_uid, class_name, category_uid, category_name) = o.class;
    let (activity_id, activity_name) = o.activity;
    let mut profiles = Vec::new();
    let mut record = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": format!("{class_name}: {activity_name}"),
        "time": now_millis(),
        "severity_id": o.severity_id,
        "severity": severity_name(o.severity_id),
        "status_id": o.status_id,
        "status": if o.status_id == SUCCESS { "Success" } else { "Failure" },
        "message": o.message,
        "metadata": {"version": OCSF_VERSION, "product": {"name": "Palisade", "vendor_name": "Palisade",
                     "version": env!("CARGO_PKG_VERSION")}},
    });
    if let Some((action_id, disposition_id)) = o.control {
        profiles.push("security_control");
        record["action_id"] = json!(action_id);
        record["action"] = json!(if action_id == ALLOWED { "Allowed" } else { "Denied" });
        record["disposition_id"] = json!(disposition_id);
        record["disposition"] = json!(match disposition_id {
            BLOCKED => "Blocked",
            DETECTED => "Detected",
            _ => "Allowed",
        });
    }
    merge(&mut record, o.extra);
    // `actor` is not an attribute of the network classes: the `host` profile adds it.
    if o.class != ENTITY_MANAGEMENT && record.get("actor").is_some_and(|a| !a.is_null()) {
        profiles.push("host");
    }
    record["metadata"]["profiles"] = json!(profiles);
    if let Some(trace_id) = trace_id(event) {
        record["metadata"]["correlation_uid"] = json!(trace_id);
    }
    // The end user, beside the workload in `actor.user`: OCSF's actor holds one user.
    if let Some(user) = request_of(event).and_then(|r| r.request_principal.as_deref()) {
        record["unmapped"]["request_principal"] = json!(user);
    }
    if let Some(path) = request_of(event).and_then(|r| r.normalized_path.as_deref()) {
        record["unmapped"]["normalized_path"] = json!(path);
    }
    // OCSF leaves out what is not known rather than writing null.
    strip_nulls(&mut record);
    record
}

/// The OCSF schema version the events follow.
const OCSF_VERSION: &str = "1.5.0";

fn severity_name(id: u32) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        _ => "Unknown",
    }
}

/// An HTTP Activity record's request attributes: the caller, the request, the sidecar it reached.
fn http_attributes(request: &RequestFacts, code: Option<u16>) -> Value {
    json!({"src_endpoint": endpoint(request.source),
           "dst_endpoint": endpoint(request.destination),
           "actor": request.principal.as_deref().map(workload),
           "http_request": {"http_method": request.method, "url": {"path": request.path}, "uid": request.request_id},
           "http_response": code.map(|code| json!({"code": code}))})
}

fn ocsf_parts(event: &SecurityEvent) -> Ocsf {
    let entity = |activity: (u32, &'static str), status_id: u32, severity_id: u32, message: String, extra: Value| {
        Ocsf { class: ENTITY_MANAGEMENT, activity, status_id, severity_id, message, control: None, extra }
    };
    match event {
        SecurityEvent::TlsFailure { direction, peer, listener, expected, reason, tls } => {
            // Inbound (and the control plane's listener) refuse a caller; outbound refuses the
            // server it connected to.
            let (src, dst) = match *direction {
                "outbound" => (Value::Null, endpoint(*peer)),
                _ => (endpoint(*peer), endpoint(*listener)),
            };
            Ocsf {
                class: NETWORK_ACTIVITY,
                activity: (5, "Refuse"),
                status_id: FAILURE,
                severity_id: 3,
                message: format!("{direction} TLS handshake refused: {reason}"),
                control: Some((DENIED, BLOCKED)),
                // A `tls` object only after a completed handshake: the schema requires its
                // `version`, and a handshake refused midway ends (in rustls, through tokio-rustls
                // and pingora) without telling which was negotiated.
                extra: json!({"src_endpoint": src, "dst_endpoint": dst, "status_detail": reason,
                              "tls": tls.as_ref().map(|t| json!({"version": t.version, "cipher": t.cipher,
                                  "sans": t.presented.as_ref().map(|p| [json!({"name": p, "type": "URI"})])})),
                              "firewall_rule": {"uid": "mtls", "name": format!("{direction}-mtls")},
                              "unmapped": {"direction": direction, "expected_identity": expected}}),
            }
        }
        SecurityEvent::CertificateRotated { identity, serial, not_after } => entity(
            (3, "Update"),
            SUCCESS,
            1,
            format!("certificate rotated for {identity}"),
            json!({"entity": certificate(identity, serial, *not_after), "actor": workload(identity)}),
        ),
        SecurityEvent::CertificateReloadFailed { reason } => entity(
            (3, "Update"),
            FAILURE,
            4,
            format!("certificate reload failed, previous kept: {reason}"),
            json!({"entity": {"type": "Certificate", "name": "workload certificate"}, "status_detail": reason}),
        ),
        SecurityEvent::CertificateExpired { identity, serial, not_after } => entity(
            (11, "Deactivate"),
            FAILURE,
            5,
            format!("certificate expired for {identity}, nothing replaced it: peers refuse this sidecar"),
            json!({"entity": certificate(identity, serial, *not_after), "actor": workload(identity)}),
        ),
        SecurityEvent::CertificateIssued { identity, serial, not_after, peer, pod } => entity(
            (1, "Create"),
            SUCCESS,
            1,
            format!("certificate issued for {identity}"),
            json!({"entity": certificate(identity, serial, *not_after), "actor": workload(identity),
                   "src_endpoint": endpoint(*peer), "unmapped": {"pod": pod}}),
        ),
        SecurityEvent::CertificateRefused { identity, peer, reason } => Ocsf {
            control: Some((DENIED, BLOCKED)),
            extra: json!({"entity": {"type": "Certificate", "name": identity},
                          "actor": identity.as_deref().map(workload), "src_endpoint": endpoint(*peer),
                          "status_detail": reason,
                          "firewall_rule": {"uid": "workload-ca", "name": "workload-ca"}}),
            ..entity((1, "Create"), FAILURE, 3, format!("certificate refused: {reason}"), Value::Null)
        },
        SecurityEvent::LabelsMismatch { identity, pod, claimed, actual } => Ocsf {
            control: Some((DENIED, BLOCKED)),
            extra: json!({"entity": {"type": "Workload", "name": pod, "uid": identity,
                                     "data": {"claimed_labels": claimed, "labels": actual}},
                          "actor": workload(identity),
                          "firewall_rule": {"uid": "workload-labels", "name": "workload-labels"}}),
            ..entity(
                (99, "Verify"),
                FAILURE,
                4,
                format!(
                    "{identity} (pod {pod}) claimed labels {claimed}; the API server says {actual}; the claim is ignored"
                ),
                Value::Null,
            )
        },
        SecurityEvent::PolicyApplied { version, policies } => entity(
            (3, "Update"),
            SUCCESS,
            1,
            format!("policy version {version} in force"),
            json!({"entity": {"type": "Policy", "name": "security policies", "version": version,
                              "data": {"policies": policies}}}),
        ),
        SecurityEvent::PolicyRejected { kept_version, errors } => entity(
            (3, "Update"),
            FAILURE,
            4,
            format!("policy update rejected; version {kept_version} stays in force"),
            json!({"entity": {"type": "Policy", "name": "security policies", "version": kept_version},
                   "status_detail": errors.join("; "), "unmapped": {"errors": errors}}),
        ),
        SecurityEvent::AuthenticationFailed { reason, description, policy, detail, request } => {
            let mut extra = http_attributes(request, Some(401));
            merge(
                &mut extra,
                json!({"firewall_rule": {"uid": format!("{}/jwt", policy.as_deref().unwrap_or("-")),
                                         "name": format!("jwt:{reason}"), "desc": detail},
                       "status_detail": reason}),
            );
            Ocsf {
                class: HTTP_ACTIVITY,
                activity: http_activity(&request.method),
                status_id: FAILURE,
                severity_id: 3,
                message: format!("unauthenticated {} {}: {description}", request.method, request.path),
                control: Some((DENIED, BLOCKED)),
                extra,
            }
        }
        SecurityEvent::WafFinding(w) => {
            let mut extra = http_attributes(&w.request, w.blocked.then_some(403));
            merge(
                &mut extra,
                json!({"firewall_rule": {"uid": format!("{}/waf:{}", w.policy, w.detector), "name": w.detector,
                                         "category": "input-validation"},
                       "unmapped": {"waf": {"detector": w.detector, "location": w.location, "name": w.name,
                                            "paranoia": w.paranoia, "fragment": w.fragment}}}),
            );
            Ocsf {
                class: HTTP_ACTIVITY,
                activity: http_activity(&w.request.method),
                status_id: if w.blocked { FAILURE } else { SUCCESS },
                severity_id: if w.blocked { 4 } else { 3 },
                message: format!(
                    "{} {} {}: {} in {}{}",
                    if w.blocked { "blocked" } else { "detected" },
                    w.request.method,
                    w.request.path,
                    w.detector,
                    w.location,
                    if w.name.is_empty() { String::new() } else { format!(" {}", w.name) }
                ),
                control: Some(if w.blocked { (DENIED, BLOCKED) } else { (ALLOWED, DETECTED) }),
                extra,
            }
        }
        SecurityEvent::DosRefused(d) => {
            let (uid, name) = d.rule();
            let mut extra = json!({"count": d.count, "start_time": d.start_ms, "end_time": d.end_ms,
                                   "src_endpoint": d.source.map(|ip| json!({"ip": ip.to_string()})),
                                   "dst_endpoint": endpoint(d.listener),
                                   "firewall_rule": {"uid": uid, "name": name, "category": d.category()},
                                   "status_detail": d.reason,
                                   "unmapped": {"direction": d.direction, "limit": d.limit,
                                                "several_sources": d.several_sources}});
            let (class, activity) = match d.http_status() {
                // Many requests, of any method: the activity is not one method's.
                Some(code) => {
                    merge(&mut extra, json!({"http_response": {"code": code}}));
                    (HTTP_ACTIVITY, (0, "Unknown"))
                }
                // Let through with a note (DETECT, AUDIT): the app's answers are not the
                // sidecar's to sum up; the requests are what HTTP Activity needs named.
                None if d.let_through() => {
                    merge(&mut extra, json!({"http_request": {"url": {"port": d.listener.map(|l| l.port())}}}));
                    (HTTP_ACTIVITY, (0, "Unknown"))
                }
                // Of several statuses (400, 413, 414, 431): the ones reported each carry theirs.
                None if d.answers_requests() => (HTTP_ACTIVITY, (0, "Unknown")),
                None if d.reason.ends_with("_limit") || matches!(d.reason, "not_http" | "tls_refused") => {
                    (NETWORK_ACTIVITY, (5, "Refuse"))
                }
                None => (NETWORK_ACTIVITY, (2, "Close")),
            };
            // Filed as each is: a blocked attack High, a note on what went on a success.
            let control = match d.reason {
                "waf_detected" => (ALLOWED, DETECTED),
                "audit_denied" => (ALLOWED, ALLOWED),
                _ => (DENIED, BLOCKED),
            };
            Ocsf {
                class,
                activity,
                status_id: if d.let_through() { SUCCESS } else { FAILURE },
                severity_id: if d.reason == "waf_blocked" { 4 } else { 3 },
                message: d.message(),
                control: Some(control),
                extra,
            }
        }
        SecurityEvent::ConnectionDenied(c) => Ocsf {
            class: NETWORK_ACTIVITY,
            activity: if c.audit { (6, "Traffic") } else { (5, "Refuse") },
            status_id: if c.audit { SUCCESS } else { FAILURE },
            severity_id: 3,
            message: c.message(),
            control: Some(if c.audit { (ALLOWED, ALLOWED) } else { (DENIED, BLOCKED) }),
            extra: json!({"src_endpoint": endpoint(Some(c.source)), "dst_endpoint": endpoint(Some(c.destination)),
                          "actor": c.principal.as_deref().map(workload),
                          "connection_info": {"protocol_name": "tcp", "direction_id": 1, "direction": "Inbound"},
                          "firewall_rule": {"uid": format!("{}/{}", c.policy, c.rule), "name": c.rule}}),
        },
        SecurityEvent::RequestDenied(r) => {
            let mut extra = http_attributes(&r.request, (!r.audit).then_some(r.status));
            merge(&mut extra, json!({"firewall_rule": {"uid": format!("{}/{}", r.policy, r.rule), "name": r.rule,
                                                       "desc": r.detail}}));
            if let Some(detail) = &r.detail {
                merge(&mut extra, json!({"status_detail": detail}));
            }
            Ocsf {
                class: HTTP_ACTIVITY,
                activity: http_activity(&r.request.method),
                status_id: if r.audit { SUCCESS } else { FAILURE },
                severity_id: 3,
                message: r.message(),
                control: Some(if r.audit { (ALLOWED, ALLOWED) } else { (DENIED, BLOCKED) }),
                extra,
            }
        }
    }
}

/// A workload's SPIFFE ID as an OCSF actor (user type Other: a workload, not a person).
fn workload(identity: &str) -> Value {
    json!({"user": {"uid": identity, "type_id": 99, "type": "Workload"}})
}

/// A workload certificate as the managed entity. (Entity Management has no `tls` object; OCSF's
/// `certificate` object requires an issuer name these events do not carry.)
fn certificate(identity: &str, serial: &str, not_after: i64) -> Value {
    json!({"type": "Certificate", "uid": serial, "name": identity,
           "data": {"serial_number": serial, "expiration_time": not_after * 1000}})
}

/// The request an event is about, when it is about one.
fn request_of(event: &SecurityEvent) -> Option<&RequestFacts> {
    match event {
        SecurityEvent::RequestDenied(r) => Some(&r.request),
        SecurityEvent::AuthenticationFailed { request, .. } => Some(request),
        SecurityEvent::WafFinding(w) => Some(&w.request),
        _ => None,
    }
}

fn trace_id(event: &SecurityEvent) -> Option<&str> {
    request_of(event)?.trace_id.as_deref()
}

/// OCSF 1.5.0 HTTP Activity's activity for a method. PATCH has no activity of its own in 1.5.0
/// (its enum is Connect..Trace), so it is Other (99) with the method as the activity's name, as
/// OCSF asks of 99.
fn http_activity(method: &str) -> (u32, &'static str) {
    match method {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        "PATCH" => (99, "Patch"),
        _ => (99, "Other"),
    }
}

/// ECS `event.kind`, `event.category` and `event.type` of each event, from the values the ECS
/// field reference allows (each type is one the reference lists for one of the categories).
fn ecs_classification(event: &SecurityEvent) -> (&'static str, &'static [&'static str], &'static [&'static str]) {
    match event {
        SecurityEvent::TlsFailure { .. } => ("event", &["network"], &["connection", "denied"]),
        SecurityEvent::CertificateRotated { .. } | SecurityEvent::CertificateReloadFailed { .. } => {
            ("event", &["configuration"], &["change"])
        }
        SecurityEvent::CertificateExpired { .. } => ("event", &["configuration"], &["info"]),
        SecurityEvent::CertificateIssued { .. } | SecurityEvent::CertificateRefused { .. } => {
            ("event", &["iam"], &["creation"])
        }
        SecurityEvent::LabelsMismatch { .. } => ("event", &["iam"], &["info"]),
        SecurityEvent::PolicyApplied { .. } | SecurityEvent::PolicyRejected { .. } => {
            ("event", &["configuration"], &["change"])
        }
        // A failed login is authentication / start / failure in ECS.
        SecurityEvent::AuthenticationFailed { .. } => ("event", &["authentication", "web"], &["start", "access"]),
        // A detection rule fired: an alert, whether or not it blocked.
        SecurityEvent::WafFinding(w) => (
            "alert",
            &["intrusion_detection", "web"],
            if w.blocked { &["denied", "access"] } else { &["allowed", "access"] },
        ),
        SecurityEvent::RequestDenied(r) => {
            ("event", &["network", "web"], if r.audit { &["allowed", "access"] } else { &["denied", "access"] })
        }
        SecurityEvent::ConnectionDenied(c) => {
            ("event", &["network"], if c.audit { &["connection", "allowed"] } else { &["connection", "denied"] })
        }
        // A policy's refusals in aggregate are filed as each is.
        SecurityEvent::DosRefused(d) => match d.reason {
            "waf_blocked" => ("alert", &["intrusion_detection", "web"], &["denied", "access"]),
            "waf_detected" => ("alert", &["intrusion_detection", "web"], &["allowed", "access"]),
            "audit_denied" => ("event", &["network", "web"], &["allowed", "access"]),
            "unauthenticated" => ("event", &["authentication", "web"], &["start", "access"]),
            _ if d.answers_requests() => ("event", &["network", "web"], &["denied", "access"]),
            _ => ("event", &["network"], &["connection", "denied"]),
        },
    }
}

fn ecs(event: &SecurityEvent) -> Value {
    let (action, outcome, message, extra) = match event {
        SecurityEvent::TlsFailure { direction, peer, listener, expected, reason, tls } => (
            "tls-handshake-refused",
            "failure",
            format!("{direction} TLS handshake refused: {reason}"),
            json!({"source": endpoint(if *direction == "outbound" { None } else { *peer }),
                   "destination": endpoint(if *direction == "outbound" { *peer } else { *listener }),
                   // Only an outbound refusal comes after a completed handshake: the server's.
                   "tls": tls.as_ref().map(|t| json!({"version": t.version, "version_protocol": "tls",
                       "cipher": t.cipher,
                       "server": t.presented.as_ref().map(|p| json!({"x509": {"alternative_names": [p]}}))})),
                   // The identity the server was expected to prove: a SPIFFE ID (a URI SAN), not
                   // a field of the presented certificate, so a label.
                   "labels": {"direction": direction, "expected_identity": expected},
                   "rule": {"id": "mtls", "name": format!("{direction}-mtls")}}),
        ),
        SecurityEvent::CertificateRotated { identity, serial, not_after } => (
            "certificate-rotated",
            "success",
            format!("certificate rotated for {identity}"),
            json!({"tls": {"server": {"x509": {"serial_number": serial, "not_after": not_after}}}}),
        ),
        SecurityEvent::CertificateReloadFailed { reason } => (
            "certificate-reload-failed",
            "failure",
            format!("certificate reload failed, previous kept: {reason}"),
            json!({}),
        ),
        SecurityEvent::CertificateExpired { identity, serial, not_after } => (
            "certificate-expired",
            "failure",
            format!("certificate expired for {identity}, nothing replaced it: peers refuse this sidecar"),
            json!({"tls": {"server": {"x509": {"serial_number": serial, "not_after": not_after}}}}),
        ),
        SecurityEvent::CertificateIssued { identity, serial, not_after, peer, .. } => (
            "certificate-issued",
            "success",
            format!("certificate issued for {identity}"),
            json!({"tls": {"client": {"x509": {"serial_number": serial, "not_after": not_after}}},
                   "user": {"name": identity},
                   "source": peer.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()}))}),
        ),
        SecurityEvent::CertificateRefused { identity, peer, reason } => (
            "certificate-refused",
            "failure",
            format!("certificate refused: {reason}"),
            json!({"user": {"name": identity},
                   "source": peer.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()}))}),
        ),
        SecurityEvent::LabelsMismatch { identity, pod, claimed, actual } => (
            "workload-labels-mismatch",
            "failure",
            format!(
                "{identity} (pod {pod}) claimed labels {claimed}; the API server says {actual}; the claim is ignored"
            ),
            json!({"user": {"name": identity}}),
        ),
        SecurityEvent::PolicyApplied { version, policies } => (
            "policy-applied",
            "success",
            format!("policy version {version} in force"),
            json!({"labels": {"policies": policies.join(",")}}),
        ),
        SecurityEvent::PolicyRejected { kept_version, errors } => (
            "policy-rejected",
            "failure",
            format!("policy update rejected; version {kept_version} stays in force"),
            json!({"error": {"message": errors.join("; ")}}),
        ),
        SecurityEvent::AuthenticationFailed { reason, description, policy, detail, request } => (
            "authentication-failed",
            "failure",
            format!("unauthenticated {} {}: {description}", request.method, request.path),
            json!({"rule": {"id": format!("{}/jwt", policy.as_deref().unwrap_or("-")), "name": format!("jwt:{reason}"),
                            "description": detail},
                   "source": request.source.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "destination": request.destination.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "user": {"name": request.principal},
                   "http": {"request": {"method": request.method, "id": request.request_id}, "response": {"status_code": 401}},
                   "url": {"path": request.path}}),
        ),
        SecurityEvent::WafFinding(w) => (
            if w.blocked { "waf-blocked" } else { "waf-detected" },
            if w.blocked { "failure" } else { "success" },
            format!(
                "{} {} {}: {} in {}",
                if w.blocked { "blocked" } else { "detected" },
                w.request.method,
                w.request.path,
                w.detector,
                w.location
            ),
            json!({"rule": {"id": format!("{}/waf:{}", w.policy, w.detector), "name": w.detector, "ruleset": w.policy},
                   "source": w.request.source.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "destination": w.request.destination.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "user": {"name": w.request.principal},
                   "http": {"request": {"method": w.request.method, "id": w.request.request_id},
                            "response": if w.blocked { json!({"status_code": 403}) } else { Value::Null }},
                   "url": {"path": w.request.path},
                   "labels": {"waf_location": w.location, "waf_name": w.name, "waf_paranoia": w.paranoia,
                              "waf_fragment": w.fragment}}),
        ),
        SecurityEvent::DosRefused(d) => {
            let action = match d.reason {
                // A policy's refusals in aggregate: each request's own action.
                "waf_blocked" => "waf-blocked",
                "waf_detected" => "waf-detected",
                "audit_denied" => "request-audit-deny",
                "unauthenticated" => "authentication-failed",
                "forbidden" => "request-denied",
                "rate_limited" => "request-rate-limited",
                _ if d.answers_requests() => "requests-refused",
                _ => "connections-refused",
            };
            (action, if d.let_through() { "success" } else { "failure" }, d.message(), {
                let (uid, name) = d.rule();
                json!({"rule": {"id": uid, "name": name, "category": d.category(),
                                "ruleset": d.rule.as_ref().map(|r| &*r.policy)},
                   "source": d.source.map(|ip| json!({"ip": ip.to_string()})),
                   "destination": endpoint(d.listener),
                   "http": d.http_status().map(|code| json!({"response": {"status_code": code}})),
                   "labels": {"direction": d.direction, "reason": d.reason, "count": d.count, "limit": d.limit,
                              "several_sources": d.several_sources}})
            })
        }
        SecurityEvent::ConnectionDenied(c) => (
            if c.audit { "connection-audit-deny" } else { "connection-denied" },
            if c.audit { "success" } else { "failure" },
            c.message(),
            json!({"rule": {"id": format!("{}/{}", c.policy, c.rule), "name": c.rule, "ruleset": c.policy},
                   "source": {"ip": c.source.ip().to_string(), "port": c.source.port()},
                   "destination": {"ip": c.destination.ip().to_string(), "port": c.destination.port()},
                   "network": {"transport": "tcp", "direction": "ingress"},
                   "user": {"name": c.principal}}),
        ),
        SecurityEvent::RequestDenied(r) => (
            // A spent limit is told apart from an authorisation's denial by a SIEM's rules.
            match (r.audit, r.status) {
                (true, _) => "request-audit-deny",
                (false, 429) => "request-rate-limited",
                (false, _) => "request-denied",
            },
            if r.audit { "success" } else { "failure" },
            r.message(),
            json!({"rule": {"id": format!("{}/{}", r.policy, r.rule), "name": r.rule, "ruleset": r.policy,
                            "description": r.detail},
                   "source": r.request.source.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "destination": r.request.destination.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "user": {"name": r.request.principal},
                   // AUDIT answered the request as if no rule had denied it: no 403 to report.
                   "http": {"request": {"method": r.request.method, "id": r.request.request_id},
                            "response": if r.audit { Value::Null } else { json!({"status_code": r.status}) }},
                   "url": {"path": r.request.path}}),
        ),
    };
    let (kind, category, types) = ecs_classification(event);
    let span = match event {
        SecurityEvent::DosRefused(d) => Some((rfc3339_millis(d.start_ms), rfc3339_millis(d.end_ms))),
        _ => None,
    };
    let mut record = json!({
        "@timestamp": now_rfc3339_millis(),
        "ecs": {"version": "8.11.0"},
        "event": {"kind": kind, "category": category, "type": types, "action": action, "outcome": outcome},
        "message": message,
        "observer": {"product": "Palisade", "version": env!("CARGO_PKG_VERSION")},
    });
    merge(&mut record, extra);
    if let Some((start, end)) = span {
        record["event"]["start"] = json!(start);
        record["event"]["end"] = json!(end);
    }
    if let Some(trace_id) = trace_id(event) {
        record["trace"] = json!({"id": trace_id});
    }
    // ECS's `user` is the calling workload; the end user is one more to pivot on.
    if let Some(user) = request_of(event).and_then(|r| r.request_principal.as_deref()) {
        record["related"] = json!({"user": [user]});
    }
    if let Some(path) = request_of(event).and_then(|r| r.normalized_path.as_deref()) {
        record["labels"]["normalized_path"] = json!(path);
    }
    strip_nulls(&mut record);
    record
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// Removes null members, recursively: absent facts are left out, not written as null.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
            map.retain(|_, v| !matches!(v, Value::Object(m) if m.is_empty()));
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}
