//! Per-request bookkeeping shared by both directions: the context, and metric labels that cost
//! no allocation.

use std::sync::OnceLock;
use std::time::Instant;

use pingora::proxy::Session;

use super::RequestId;
use crate::policy::Limited;
use crate::telemetry::{AccessRecord, Telemetry};

/// State carried across the phases of one request.
pub struct RequestCtx {
    pub id: RequestId,
    pub started: Instant,
    /// `allow` unless a step refused the request.
    pub decision: &'static str,
    /// Set when a rate limit refused the request: the 429 carries its headers.
    pub limited: Option<Limited>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx { id: RequestId::NONE, started: Instant::now(), decision: "allow", limited: None }
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

/// Counts the request and its duration once it has ended.
pub fn finish(telemetry: &Telemetry, direction: &'static str, session: &Session, principal: &str, ctx: &RequestCtx) {
    let code = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
    let method = method_label(&session.req_header().method);
    telemetry.requests.record(
        &telemetry.metrics,
        direction,
        method,
        code,
        status_label(code),
        principal,
        ctx.decision,
        ctx.started.elapsed().as_secs_f64(),
    );
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
            decision: ctx.decision,
            request_id: ctx.id.as_str(),
        });
    }
}
