//! Security events as JSON lines, for a SIEM: OCSF HTTP Activity (class 4002) by default, ECS as
//! the alternative.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::lines::JsonLines;
use crate::config::{EventFormat, EventsConfig};

/// What happened. Each kind maps to an OCSF disposition and an ECS category.
#[derive(Debug, Clone)]
pub enum SecurityEvent {
    /// A TLS handshake was refused (inbound) or the server failed verification (outbound).
    TlsFailure { direction: &'static str, peer: Option<SocketAddr>, expected: Option<String>, reason: String },
    /// A new workload certificate or trust bundle is in use.
    CertificateRotated { identity: String, serial: String, not_after: i64 },
    /// A new certificate could not be loaded; the previous one stays in use.
    CertificateReloadFailed { reason: String },
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
    /// A request's JWT was refused, or it had none where one is required (401).
    AuthenticationFailed {
        /// The `palisade_authn_failures_total` reason label.
        reason: &'static str,
        /// What is wrong with the token, as the caller is told.
        description: &'static str,
        /// The policy whose `requireJwt` refused a request without a token.
        policy: Option<String>,
        request: RequestFacts,
    },
    /// The WAF found an attack: blocked (403) in BLOCK mode, reported in DETECT mode.
    WafFinding(WafEvent),
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
    pub rule: String,
    pub audit: bool,
    pub request: RequestFacts,
}

/// What an event says about the request itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestFacts {
    pub principal: Option<String>,
    pub source: Option<SocketAddr>,
    pub method: String,
    pub path: String,
    pub request_id: String,
    /// The request's trace, when traces are on: `metadata.correlation_uid` in OCSF.
    pub trace_id: Option<String>,
}

impl DeniedRequest {
    fn message(&self) -> String {
        let verdict = if self.audit { "audit, would deny" } else { "denied" };
        format!("{verdict} {} {}: {} rule {}", self.request.method, self.request.path, self.policy, self.rule)
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

    pub fn emit(&self, event: SecurityEvent) {
        let Some(lines) = &self.lines else { return };
        lines.send(&event.render(self.format));
    }
}

pub(super) fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn endpoint(addr: Option<SocketAddr>) -> Value {
    match addr {
        Some(a) => json!({"ip": a.ip().to_string(), "port": a.port()}),
        None => Value::Null,
    }
}

fn ocsf(event: &SecurityEvent) -> Value {
    // HTTP Activity: category 4 (Network Activity), class 4002; type_uid = class * 100 + activity.
    let (activity_id, action_id, disposition_id, severity_id, message, extra) = match event {
        SecurityEvent::TlsFailure { direction, peer, expected, reason } => (
            0,
            2,
            2, // blocked
            3,
            format!("{direction} TLS handshake refused: {reason}"),
            json!({"src_endpoint": endpoint(*peer), "tls": {"expected_identity": expected},
                   "firewall_rule": {"uid": "mtls", "name": format!("{direction}-mtls")}}),
        ),
        SecurityEvent::CertificateRotated { identity, serial, not_after } => (
            99,
            1,
            1, // allowed
            1,
            format!("certificate rotated for {identity}"),
            json!({"tls": {"certificate": {"serial_number": serial, "expiration_time": not_after * 1000}},
                   "actor": {"user": {"uid": identity}}}),
        ),
        SecurityEvent::CertificateReloadFailed { reason } => {
            (99, 1, 1, 4, format!("certificate reload failed, previous kept: {reason}"), json!({}))
        }
        SecurityEvent::CertificateIssued { identity, serial, not_after, peer, pod } => (
            99,
            1,
            1,
            1,
            format!("certificate issued for {identity}"),
            json!({"tls": {"certificate": {"serial_number": serial, "expiration_time": not_after * 1000}},
                   "actor": {"user": {"uid": identity}}, "src_endpoint": endpoint(*peer),
                   "unmapped": {"pod": pod}}),
        ),
        SecurityEvent::CertificateRefused { identity, peer, reason } => (
            99,
            2,
            2,
            3,
            format!("certificate refused: {reason}"),
            json!({"actor": {"user": {"uid": identity}}, "src_endpoint": endpoint(*peer),
                   "firewall_rule": {"uid": "workload-ca", "name": "workload-ca"}}),
        ),
        SecurityEvent::LabelsMismatch { identity, pod, claimed, actual } => (
            99,
            2,
            2,
            4,
            format!(
                "{identity} (pod {pod}) claimed labels {claimed}; the API server says {actual}; the claim is ignored"
            ),
            json!({"actor": {"user": {"uid": identity}},
                   "firewall_rule": {"uid": "workload-labels", "name": "workload-labels"}}),
        ),
        SecurityEvent::PolicyApplied { version, policies } => {
            (99, 1, 1, 1, format!("policy version {version} in force"), json!({"unmapped": {"policies": policies}}))
        }
        SecurityEvent::PolicyRejected { kept_version, errors } => (
            99,
            1,
            1,
            4,
            format!("policy update rejected; version {kept_version} stays in force"),
            json!({"unmapped": {"errors": errors}}),
        ),
        SecurityEvent::AuthenticationFailed { reason, description, policy, request } => (
            http_activity(&request.method),
            2,
            2,
            3,
            format!("unauthenticated {} {}: {description}", request.method, request.path),
            json!({"firewall_rule": {"uid": format!("{}/jwt", policy.as_deref().unwrap_or("-")), "name": format!("jwt:{reason}")},
                   "src_endpoint": endpoint(request.source),
                   "actor": {"user": {"uid": request.principal}},
                   "http_request": {"http_method": request.method, "url": {"path": request.path}, "uid": request.request_id},
                   "http_response": {"code": 401},
                   "status_detail": reason}),
        ),
        SecurityEvent::WafFinding(w) => (
            http_activity(&w.request.method),
            if w.blocked { 2 } else { 1 },
            if w.blocked { 2 } else { 15 }, // blocked, or detected
            if w.blocked { 4 } else { 3 },
            format!(
                "{} {} {}: {} in {}{}",
                if w.blocked { "blocked" } else { "detected" },
                w.request.method,
                w.request.path,
                w.detector,
                w.location,
                if w.name.is_empty() { String::new() } else { format!(" {}", w.name) }
            ),
            json!({"firewall_rule": {"uid": format!("{}/waf:{}", w.policy, w.detector), "name": w.detector,
                                     "category": "input-validation"},
                   "src_endpoint": endpoint(w.request.source),
                   "actor": {"user": {"uid": w.request.principal}},
                   "http_request": {"http_method": w.request.method, "url": {"path": w.request.path}, "uid": w.request.request_id},
                   "http_response": if w.blocked { json!({"code": 403}) } else { Value::Null },
                   "unmapped": {"waf": {"detector": w.detector, "location": w.location, "name": w.name,
                                        "paranoia": w.paranoia, "fragment": w.fragment}}}),
        ),
        SecurityEvent::RequestDenied(r) => (
            http_activity(&r.request.method),
            if r.audit { 1 } else { 2 },
            if r.audit { 1 } else { 2 },
            3,
            r.message(),
            json!({"firewall_rule": {"uid": format!("{}/{}", r.policy, r.rule), "name": r.rule},
                   "src_endpoint": endpoint(r.request.source),
                   "actor": {"user": {"uid": r.request.principal}},
                   "http_request": {"http_method": r.request.method, "url": {"path": r.request.path}, "uid": r.request.request_id},
                   "http_response": {"code": r.status}}),
        ),
    };
    let mut record = json!({
        "class_uid": 4002,
        "class_name": "HTTP Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": activity_id,
        "type_uid": 4002 * 100 + activity_id,
        "time": now_millis(),
        "severity_id": severity_id,
        "action_id": action_id,
        "disposition_id": disposition_id,
        "message": message,
        "metadata": {"version": "1.3.0", "product": {"name": "Palisade", "vendor_name": "Palisade",
                     "version": env!("CARGO_PKG_VERSION")}},
    });
    merge(&mut record, extra);
    if let Some(trace_id) = trace_id(event) {
        record["metadata"]["correlation_uid"] = json!(trace_id);
    }
    record
}

fn trace_id(event: &SecurityEvent) -> Option<&str> {
    match event {
        SecurityEvent::RequestDenied(r) => r.request.trace_id.as_deref(),
        SecurityEvent::AuthenticationFailed { request, .. } => request.trace_id.as_deref(),
        SecurityEvent::WafFinding(w) => w.request.trace_id.as_deref(),
        _ => None,
    }
}

/// OCSF HTTP Activity's activity_id for a method (99: other).
fn http_activity(method: &str) -> u32 {
    match method {
        "CONNECT" => 1,
        "DELETE" => 2,
        "GET" => 3,
        "HEAD" => 4,
        "OPTIONS" => 5,
        "POST" => 6,
        "PUT" => 7,
        "TRACE" => 8,
        _ => 99,
    }
}

fn ecs(event: &SecurityEvent) -> Value {
    let (action, outcome, category, message, extra) = match event {
        SecurityEvent::TlsFailure { direction, peer, expected, reason } => (
            "tls-handshake-refused",
            "failure",
            "network",
            format!("{direction} TLS handshake refused: {reason}"),
            json!({"source": peer.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "tls": {"server": {"x509": {"subject": {"common_name": expected}}}},
                   "rule": {"id": "mtls", "name": format!("{direction}-mtls")}}),
        ),
        SecurityEvent::CertificateRotated { identity, serial, not_after } => (
            "certificate-rotated",
            "success",
            "configuration",
            format!("certificate rotated for {identity}"),
            json!({"tls": {"server": {"x509": {"serial_number": serial, "not_after": not_after}}}}),
        ),
        SecurityEvent::CertificateReloadFailed { reason } => (
            "certificate-reload-failed",
            "failure",
            "configuration",
            format!("certificate reload failed, previous kept: {reason}"),
            json!({}),
        ),
        SecurityEvent::CertificateIssued { identity, serial, not_after, peer, .. } => (
            "certificate-issued",
            "success",
            "iam",
            format!("certificate issued for {identity}"),
            json!({"tls": {"client": {"x509": {"serial_number": serial, "not_after": not_after}}},
                   "user": {"name": identity},
                   "source": peer.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()}))}),
        ),
        SecurityEvent::CertificateRefused { identity, peer, reason } => (
            "certificate-refused",
            "failure",
            "iam",
            format!("certificate refused: {reason}"),
            json!({"user": {"name": identity},
                   "source": peer.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()}))}),
        ),
        SecurityEvent::LabelsMismatch { identity, pod, claimed, actual } => (
            "workload-labels-mismatch",
            "failure",
            "iam",
            format!(
                "{identity} (pod {pod}) claimed labels {claimed}; the API server says {actual}; the claim is ignored"
            ),
            json!({"user": {"name": identity}}),
        ),
        SecurityEvent::PolicyApplied { version, policies } => (
            "policy-applied",
            "success",
            "configuration",
            format!("policy version {version} in force"),
            json!({"labels": {"policies": policies.join(",")}}),
        ),
        SecurityEvent::PolicyRejected { kept_version, errors } => (
            "policy-rejected",
            "failure",
            "configuration",
            format!("policy update rejected; version {kept_version} stays in force"),
            json!({"error": {"message": errors.join("; ")}}),
        ),
        SecurityEvent::AuthenticationFailed { reason, description, policy, request } => (
            "authentication-failed",
            "failure",
            "authentication",
            format!("unauthenticated {} {}: {description}", request.method, request.path),
            json!({"rule": {"id": format!("{}/jwt", policy.as_deref().unwrap_or("-")), "name": format!("jwt:{reason}")},
                   "source": request.source.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "user": {"name": request.principal},
                   "http": {"request": {"method": request.method, "id": request.request_id}, "response": {"status_code": 401}},
                   "url": {"path": request.path}}),
        ),
        SecurityEvent::WafFinding(w) => (
            if w.blocked { "waf-blocked" } else { "waf-detected" },
            if w.blocked { "failure" } else { "success" },
            "intrusion_detection",
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
                   "user": {"name": w.request.principal},
                   "http": {"request": {"method": w.request.method, "id": w.request.request_id},
                            "response": if w.blocked { json!({"status_code": 403}) } else { Value::Null }},
                   "url": {"path": w.request.path},
                   "labels": {"waf_location": w.location, "waf_name": w.name, "waf_paranoia": w.paranoia,
                              "waf_fragment": w.fragment}}),
        ),
        SecurityEvent::RequestDenied(r) => (
            if r.audit { "request-audit-deny" } else { "request-denied" },
            if r.audit { "success" } else { "failure" },
            "web",
            r.message(),
            json!({"rule": {"id": format!("{}/{}", r.policy, r.rule), "name": r.rule, "ruleset": r.policy},
                   "source": r.request.source.map(|p| json!({"ip": p.ip().to_string(), "port": p.port()})),
                   "user": {"name": r.request.principal},
                   "http": {"request": {"method": r.request.method, "id": r.request.request_id}, "response": {"status_code": r.status}},
                   "url": {"path": r.request.path}}),
        ),
    };
    let mut record = json!({
        "@timestamp": now_millis(),
        "ecs": {"version": "8.11.0"},
        "event": {"kind": "event", "category": [category], "action": action, "outcome": outcome},
        "message": message,
        "observer": {"product": "Palisade", "version": env!("CARGO_PKG_VERSION")},
    });
    merge(&mut record, extra);
    if let Some(trace_id) = trace_id(event) {
        record["trace"] = json!({"id": trace_id});
    }
    record
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}
