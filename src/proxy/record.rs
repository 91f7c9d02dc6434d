//! Per-request bookkeeping shared by both directions: the context, and metric labels that cost
//! no allocation.

use std::sync::OnceLock;
use std::time::Instant;

use opentelemetry::trace::SpanKind;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::RequestId;
use crate::policy::{Note, Refusal, WafFinding};
use crate::telemetry::trace_headers::{
    B3, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_SPAN_ID, B3_TRACE_ID, TRACEPARENT, TRACESTATE,
};
use crate::telemetry::{
    reported, AccessRecord, Observed, Recorded, RefusalReason, RequestFacts, RequestSpan, SecurityEvent, SpanEnd,
    Telemetry, WafEvent,
};

/// State carried across the phases of one request.
pub struct RequestCtx {
    pub id: RequestId,
    pub started: Instant,
    /// Why the pipeline refused the request, when it did: the response, the metric labels, the
    /// span and the event all come from this one value.
    pub refusal: Option<Refusal>,
    /// The request was refused before the pipeline could judge it (pingora's parser).
    pub invalid: bool,
    /// This hop's span, when traces are on.
    pub span: Option<RequestSpan>,
    /// Its place among the listener's requests in flight; `None` when shed (or not yet counted).
    pub inflight: Option<super::shed::Slot>,
    /// Answered 503 by load shedding.
    pub shed: bool,
    /// How long a `DELAY` rate limit held the request back.
    pub ratelimit_delay: Option<std::time::Duration>,
    /// The app or the peer failed the request (set when it ends; see [`finish`]).
    pub failed_upstream: bool,
    /// The caller's verified token (inbound), for the events and the access log's end user.
    pub token: Option<crate::authn::Verified>,
    /// A gRPC answer's status (`grpc-status`, from its trailers or a trailers-only header): a
    /// failed call is an HTTP 200 (outside tester o3 found them all logged as successes).
    pub grpc_status: Option<u16>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            id: RequestId::NONE,
            started: Instant::now(),
            refusal: None,
            invalid: false,
            span: None,
            inflight: None,
            shed: false,
            ratelimit_delay: None,
            failed_upstream: false,
            token: None,
            grpc_status: None,
        }
    }

    pub fn trace_id(&self) -> Option<String> {
        self.span.as_ref().map(RequestSpan::trace_id)
    }

    /// The `decision` label: what refused the request, else `allow`.
    pub fn decision(&self) -> &'static str {
        match (&self.refusal, self.invalid) {
            _ if self.shed => "shed",
            (Some(refusal), _) => refusal.decision(),
            (None, true) => "invalid",
            (None, false) => "allow",
        }
    }
}

/// Reports a refusal (or, with `audit`, what an AUDIT policy would have refused) to the log and
/// the security events, from the refusal itself.
pub fn report(telemetry: &Telemetry, session: &Session, ctx: &RequestCtx, refusal: &Refusal, audit: bool, path: &str) {
    // Past ten a second of each kind from one source, summed up per rule in one event a second
    // (each is in the metrics), before anything of the request is copied for an event.
    let aggregated = |reason, policy: &str, rule: &str| {
        let (source, listener) = peer_and_listener(session);
        !telemetry.refusal_reported_each(reason, source, listener, policy, rule)
    };
    let summed_up = match refusal {
        Refusal::Blocked(found) => aggregated(RefusalReason::WafBlocked, &found.policy, found.finding.detector.rule()),
        Refusal::Unauthenticated(u) => {
            aggregated(RefusalReason::Unauthenticated, u.policy.as_deref().unwrap_or("-"), u.rule())
        }
        Refusal::RateLimited(limited) if !audit => {
            aggregated(RefusalReason::RateLimited, &limited.by.policy, &limited.by.rule)
        }
        Refusal::Forbidden(by) if audit => aggregated(RefusalReason::AuditDenied, &by.policy, &by.rule),
        Refusal::Forbidden(by) => aggregated(RefusalReason::Forbidden, &by.policy, &by.rule),
        _ => false,
    };
    if summed_up {
        return;
    }
    let req = session.req_header();
    let facts = facts(session, ctx, path);
    let (method, path) = (reported(req.method.as_str()), reported(path));
    let (method, path) = (&*method, &*path);
    match refusal {
        Refusal::Blocked(found) => return report_finding(telemetry, found, facts),
        Refusal::Unauthenticated(u) => {
            let reason = u.reason_label();
            let detail = u.detail.as_deref().map(|d| crate::telemetry::reported(d).into_owned());
            tracing::info!(reason, detail = ?detail.as_deref().unwrap_or("-"), method, path, request_id = ctx.id.as_str(), "request unauthenticated");
            telemetry.events.emit(SecurityEvent::AuthenticationFailed {
                reason,
                description: refusal.reason(),
                policy: u.policy.as_deref().map(str::to_string),
                detail,
                request: facts,
            });
            return;
        }
        _ => {}
    }
    let denied = refusal.denied(audit, facts);
    tracing::info!(status = denied.status, policy = %denied.policy, rule = %denied.rule, audit, method,
        path, principal = denied.request.principal.as_deref().unwrap_or("-"), request_id = ctx.id.as_str(),
        "{}", if audit { "audit: request would be denied" } else { "request denied" });
    telemetry.events.emit(SecurityEvent::RequestDenied(denied));
}

/// A request refused before any policy could judge it: malformed, or over a size limit.
pub fn report_invalid(telemetry: &Telemetry, session: &Session, ctx: &RequestCtx, refusal: &Refusal, path: &str) {
    telemetry.inbound_request_invalid(refusal.denied(false, facts(session, ctx, path)));
}

/// A request whose reading failed as the caller's fault (a chunk that does not parse) and was
/// answered 400: reported as a malformed one is, since such a body is a smuggling probe too.
pub fn report_unreadable(telemetry: &Telemetry, session: &Session, ctx: &RequestCtx, e: &pingora::Error) {
    let why = e.context.as_ref().map_or_else(|| e.etype().as_str().to_string(), |c| c.as_str().to_string());
    let path = session.req_header().uri.path().to_string();
    telemetry.inbound_request_invalid(crate::telemetry::DeniedRequest {
        status: 400,
        policy: "-".into(),
        rule: "body-unreadable".into(),
        detail: Some(format!("the request could not be read: {why}")),
        audit: false,
        request: facts(session, ctx, &path),
    });
}

/// What a decision noted without refusing: an AUDIT policy's would-be denial, a DETECT
/// WAF's finding.
pub fn report_note(telemetry: &Telemetry, session: &Session, ctx: &RequestCtx, note: Note, path: &str) {
    match note {
        Note::Audit(by) => report(telemetry, session, ctx, &Refusal::Forbidden(by), true, path),
        Note::Detected(found) => {
            // A DETECT WAF's findings under a flood: summed up as its blocks would be.
            let (source, listener) = peer_and_listener(session);
            let rule = found.finding.detector.rule();
            if telemetry.refusal_reported_each(RefusalReason::WafDetected, source, listener, &found.policy, rule) {
                report_finding(telemetry, &found, facts(session, ctx, path));
            }
        }
    }
}

/// The caller's address and the listener's, for a refusal's aggregate.
fn peer_and_listener(session: &Session) -> (Option<std::net::IpAddr>, Option<std::net::SocketAddr>) {
    let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| a.and_then(|a| a.as_inet()).copied();
    (inet(session.client_addr()).map(|a| a.ip()), inet(session.server_addr()))
}

fn report_finding(telemetry: &Telemetry, found: &WafFinding, request: RequestFacts) {
    let f = &found.finding;
    tracing::info!(policy = %found.policy, detector = f.detector.as_str(), location = f.location.kind.as_str(),
        name = ?f.location.name, paranoia = f.paranoia, blocked = found.blocked, request_id = %request.request_id,
        "{}", if found.blocked { "WAF blocked a request" } else { "WAF finding (DETECT)" });
    telemetry.events.emit(SecurityEvent::WafFinding(WafEvent {
        policy: found.policy.to_string(),
        detector: f.detector.as_str(),
        location: f.location.kind.as_str(),
        name: f.location.name.clone(),
        paranoia: f.paranoia,
        fragment: f.fragment.clone(),
        blocked: found.blocked,
        request,
    }));
}

fn facts(session: &Session, ctx: &RequestCtx, path: &str) -> RequestFacts {
    let req = session.req_header();
    RequestFacts {
        principal: super::peer_identity(session).map(|p| p.id.to_string()),
        source: session.client_addr().and_then(|a| a.as_inet()).copied(),
        destination: session.server_addr().and_then(|a| a.as_inet()).copied(),
        method: reported(req.method.as_str()).into_owned(),
        path: reported(path).into_owned(),
        request_id: ctx.id.as_str().to_string(),
        trace_id: ctx.trace_id(),
        request_principal: ctx.token.as_ref().map(|t| reported(t.principal()).into_owned()),
        normalized_path: match crate::policy::normalize(path) {
            Ok(std::borrow::Cow::Owned(normal)) if normal != path => Some(reported(&normal).into_owned()),
            _ => None,
        },
    }
}

/// Starts this hop's span (inbound: a server span; outbound: a client span), continuing the
/// caller's trace when `trusted` (the local app, a meshed peer). A caller that proved no
/// identity (a PERMISSIVE port's plaintext) starts a new one, as it gets a new request id: its
/// `traceparent` would otherwise choose the sampling against the configured ratio, and put its
/// refused requests in another's trace (the events' `correlation_uid`).
pub fn start_span(telemetry: &Telemetry, kind: SpanKind, session: &Session, trusted: bool, ctx: &mut RequestCtx) {
    if let Some(traces) = &telemetry.traces {
        let req = session.req_header();
        let none = http::HeaderMap::new();
        let headers = if trusted { &req.headers } else { &none };
        ctx.span = Some(traces.start(method_label(&req.method), kind, headers));
    }
}

/// A request on its way out, that trace headers are written into: pingora's header for the
/// app, or the HTTP/2 parts for a peer sidecar (a plain map: nothing re-parses the name).
pub trait Outgoing {
    fn headers(&self) -> &http::HeaderMap;
    fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) -> pingora::Result<()>;
    fn remove(&mut self, name: &http::HeaderName);
}

impl Outgoing for RequestHeader {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }

    fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) -> pingora::Result<()> {
        self.insert_header(name, value)
    }

    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
}

impl Outgoing for http::request::Parts {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }

    fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) -> pingora::Result<()> {
        self.headers.insert(name, value);
        Ok(())
    }

    fn remove(&mut self, name: &http::HeaderName) {
        self.headers.remove(name);
    }
}

/// Names this hop's span as the parent of the next one, in the formats in use
/// ([`crate::telemetry::Propagators`]). A `traceparent` the sidecar does not write passes
/// through when it is well-formed and is dropped with its `tracestate` when it is not (or comes
/// twice), so the app never parses what the sidecar would not.
pub fn propagate(upstream: &mut impl Outgoing, ctx: &RequestCtx) -> pingora::Result<()> {
    let propagators = ctx.span.as_ref().map(RequestSpan::propagators);
    if !propagators.is_some_and(|p| p.tracecontext) {
        let one_valid =
            crate::telemetry::single_traceparent(upstream.headers()).is_some_and(|p| valid_traceparent(p.as_bytes()));
        if upstream.headers().contains_key(TRACEPARENT) && !one_valid {
            upstream.remove(&TRACEPARENT);
            upstream.remove(&TRACESTATE);
        }
    }
    let (Some(span), Some(propagators)) = (&ctx.span, propagators) else { return Ok(()) };
    if propagators.tracecontext {
        upstream.set(TRACEPARENT, span.traceparent())?;
        match span.tracestate() {
            Some(state) => upstream.set(TRACESTATE, state)?,
            None => upstream.remove(&TRACESTATE),
        }
    }
    // By default a caller that spoke B3 gets B3 on the next hop too, in its form, naming this
    // hop's span, so an app that only reads B3 does not attach its span to the caller's.
    let (single, multi) = match propagators.b3_as_received {
        true => (upstream.headers().contains_key(B3), upstream.headers().contains_key(B3_TRACE_ID)),
        false => (propagators.b3, propagators.b3multi),
    };
    if single {
        upstream.set(B3, span.b3_single())?;
    }
    if multi {
        let [trace, span_id, sampled] = span.b3_multi();
        upstream.set(B3_TRACE_ID, trace)?;
        upstream.set(B3_SPAN_ID, span_id)?;
        upstream.set(B3_SAMPLED, sampled)?;
        upstream.remove(&B3_PARENT_SPAN_ID);
    }
    Ok(())
}

/// W3C Trace Context: `version-traceid-parentid-flags`, lower-case hex, neither id all zeros,
/// version `ff` invalid; version 00 is exactly 55 bytes, a later version may append
/// `-`-separated fields.
pub fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    hex(version)
        && version != b"ff"
        && hex(trace)
        && nonzero(trace)
        && hex(parent)
        && nonzero(parent)
        && hex(flags)
        && match version {
            b"00" => v.len() == 55,
            _ => v.len() == 55 || v[55] == b'-',
        }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// Standard methods by name; anything else is `OTHER`, so a client cannot grow the label set.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

pub fn status_label(code: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..600).map(|c| c.to_string()).collect());
    labels.get(code as usize).map(String::as_str).unwrap_or("other")
}

/// Counts the request and its duration once it has ended, and ends its span. `principal` is
/// the caller's (inbound); `destination` the label of where it went (outbound, see
/// [`crate::telemetry::Destinations`]); `peer` is the other side's identity for the span (the
/// caller inbound, the server outbound).
pub fn finish(
    telemetry: &Telemetry,
    direction: &'static str,
    session: &Session,
    principal: &str,
    destination: &'static str,
    peer: &str,
    ctx: &mut RequestCtx,
) {
    let code = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
    // An answer the app or the peer broke off (a reset mid-body) never reached the caller
    // whole, whatever its status said: a failure of the hop, counted as the 502 it would have
    // been had it come before the answer began, so success rates do not hide app crashes.
    let broken_off = ctx.failed_upstream && code < 500 && code != 101;
    let code = if broken_off && code != 0 { 502 } else { code };
    let method = method_label(&session.req_header().method);
    // A gRPC answer with no `grpc-status` of its own and an HTTP error: the sidecar's own answer
    // (a refusal, a failure), which wrote the status gRPC's table gives (`respond::write`), or
    // an app's bare HTTP error, which gRPC clients read through the same table.
    if ctx.grpc_status.is_none() && code != 200 && code != 0 && super::is_grpc(session.req_header()) {
        ctx.grpc_status = Some(u16::from(super::respond::grpc_status(code)));
    }
    telemetry.requests.record(
        &telemetry.metrics,
        Recorded {
            direction,
            method,
            code,
            code_label: status_label(code),
            principal,
            decision: ctx.decision(),
            destination,
            seconds: ctx.started.elapsed().as_secs_f64(),
        },
    );
    if direction == "inbound" && ctx.decision() == "allow" {
        telemetry.inventory.observe(Observed {
            method,
            // Normalised by now: what the app was handed.
            path: session.req_header().uri.path(),
            status: code,
            principal,
            authenticated: ctx.token.is_some(),
        });
    }
    if telemetry.access_log_enabled() {
        let req = session.req_header();
        telemetry.access(AccessRecord {
            direction,
            method: req.method.as_str(),
            path: req.uri.path(),
            status: code,
            seconds: ctx.started.elapsed().as_secs_f64(),
            source: session.client_addr().and_then(|a| a.as_inet()).copied(),
            principal,
            destination,
            decision: ctx.decision(),
            request_id: ctx.id.as_str(),
            ratelimit_delay: ctx.ratelimit_delay,
            request_principal: ctx.token.as_ref().map(|t| t.principal()),
            grpc_status: ctx.grpc_status,
        });
    }
    if let Some(span) = ctx.span.take() {
        let req = session.req_header();
        // What refused, as the event names it (the rule, `waf:<detector>`, `jwt:<reason>`); made
        // only for a span that is exported.
        let named = ctx.refusal.as_ref().filter(|_| span.is_recording()).map(Refusal::policy_and_rule);
        let server = (direction == "outbound").then(|| super::request_authority(req)).flatten().map(|a| {
            match a.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => (host, port.parse().unwrap_or(80)),
                _ => (a, 80),
            }
        });
        span.end(SpanEnd {
            method: req.method.as_str(),
            path: req.uri.path(),
            status: code,
            protocol: if session.is_http2() { "2" } else { "1.1" },
            // Outbound, the app's own request (plaintext to its sidecar); inbound, the hop's.
            scheme: if session.digest().is_some_and(|d| d.ssl_digest.is_some()) { "https" } else { "http" },
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            server,
            decision: ctx.decision(),
            policy: named.as_ref().map(|(policy, _)| policy.as_str()).filter(|p| *p != "-"),
            rule: named.as_ref().map(|(_, rule)| rule.as_str()),
            principal: peer,
            request_id: ctx.id.as_str(),
            grpc_status: ctx.grpc_status,
        });
    }
}

#[cfg(test)]
mod traceparent_tests {
    use super::valid_traceparent;

    #[test]
    fn only_well_formed_traceparents_are_valid() {
        assert!(valid_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(valid_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"));
        for bad in [
            &b"garbage"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
