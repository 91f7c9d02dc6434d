//! The one place where a refusal or a failure becomes a response. The pipeline refuses with a
//! [`Refusal`] (from `policy::decide`); what goes wrong while forwarding is an [`ErrorKind`].
//! The caller sees the status, a code and the request id, never which rule matched.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use http::{HeaderName, HeaderValue, StatusCode};
use pingora::proxy::FailToProxy;

use super::record::RequestCtx;
use super::RequestId;
use crate::policy::Refusal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Unauthenticated,
    Forbidden,
    /// A request body that stalled past `limits.bodyTimeout` (or a head past
    /// `limits.headerTimeout`, answered by the accept loop).
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    RateLimited,
    HeadersTooLarge,
    Internal,
    BadGateway,
    Unavailable,
    GatewayTimeout,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UriTooLong => 414,
            ErrorKind::RateLimited => 429,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::Internal => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::GatewayTimeout => 504,
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::Internal => "internal_error",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::GatewayTimeout => "gateway_timeout",
        }
    }

    pub(crate) fn from_status(status: u16) -> Self {
        match status {
            401 => ErrorKind::Unauthenticated,
            403 => ErrorKind::Forbidden,
            408 => ErrorKind::RequestTimeout,
            413 => ErrorKind::PayloadTooLarge,
            414 => ErrorKind::UriTooLong,
            429 => ErrorKind::RateLimited,
            431 => ErrorKind::HeadersTooLarge,
            502 => ErrorKind::BadGateway,
            503 => ErrorKind::Unavailable,
            504 => ErrorKind::GatewayTimeout,
            400..=499 => ErrorKind::InvalidRequest,
            _ => ErrorKind::Internal,
        }
    }

    /// The error a pipeline step returns to stop the request with this response.
    pub fn fail(self, why: &'static str) -> Box<Error> {
        Error::explain(ErrorType::HTTPStatus(self.status()), why)
    }

    /// What a proxy failure means for the caller; `None` when the caller is gone already.
    pub fn classify(e: &Error) -> Option<Self> {
        use ErrorType::*;
        Some(match e.etype() {
            HTTPStatus(code) => Self::from_status(*code),
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                ErrorKind::GatewayTimeout
            }
            _ => match e.esource() {
                ErrorSource::Upstream => ErrorKind::BadGateway,
                ErrorSource::Downstream => match e.etype() {
                    // Gone, or not reading (limits.sendTimeout): nothing more can reach it. An
                    // HTTP/2 caller that reset its stream (a gRPC deadline passed, a call
                    // cancelled) is gone too: no probe, and no 400 to write on a reset stream.
                    WriteError | ReadError | ConnectionClosed | WriteTimedout | H2Error => return None,
                    // The caller's body stalled (limits.bodyTimeout).
                    ReadTimedout => ErrorKind::RequestTimeout,
                    // Its body stalled while the sidecar was over its memory limit: shed, as new
                    // requests are then.
                    Custom(MEMORY_CUT) => ErrorKind::Unavailable,
                    _ => ErrorKind::InvalidRequest,
                },
                ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                    ConnectTimedout => ErrorKind::GatewayTimeout,
                    ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert
                    | HandshakeError => ErrorKind::BadGateway,
                    _ => ErrorKind::Internal,
                },
            },
        })
    }
}

/// Whether an HTTP/1.1 connection may carry the caller's next request after the sidecar answered
/// this one itself: after a decision on a well-formed request of which nothing is left unread (no
/// body), as nginx keeps it, so a caller over a limit or shed under load need not reconnect (and
/// handshake again) when the sidecar is busiest; after anything else (a malformed request, a body
/// left unread, whose bytes the next parse would take for a request), it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Reusable,
    Close,
}

impl Connection {
    /// [`Connection::Reusable`] when `decided` and the request had no body.
    pub fn after(session: &mut Session, decided: bool) -> Self {
        match decided && session.is_body_empty() {
            true => Connection::Reusable,
            false => Connection::Close,
        }
    }
}

/// Writes `{"error": ..., "request_id": ...}` with `x-request-id` and any `extra` headers: every
/// response the sidecar writes itself goes through here. To a gRPC call it adds `grpc-status`
/// and `grpc-message` ([`grpc_status`]) in the head, and over HTTP/2 in trailers after the body
/// too: tonic reads a status in the head first, and without one read the JSON body as a
/// malformed message (`INTERNAL`, "invalid compression flag") whatever the refusal; grpc-core
/// reads one only in trailers; grpc-go and grpc-java read the HTTP status, to the same code.
pub async fn write(
    session: &mut Session,
    status: u16,
    code: &'static str,
    request_id: &RequestId,
    extra: &[(HeaderName, HeaderValue)],
    connection: Connection,
) -> pingora::Result<()> {
    let body = format!(r#"{{"error":"{code}","request_id":"{}"}}"#, request_id.as_str());
    // The same two fields in the head and, over HTTP/2, in trailers.
    let grpc = super::is_grpc(session.req_header()).then(|| grpc_trailers(status, code, request_id));
    let grpc_fields = grpc.as_ref().map_or(0, http::HeaderMap::len);
    let mut header = ResponseHeader::build(status, Some(4 + grpc_fields + extra.len()))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    header.insert_header(super::REQUEST_ID_HEADER, request_id.header_value())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in grpc.iter().flatten() {
        header.insert_header(name.clone(), value.clone())?;
    }
    for (name, value) in extra {
        header.insert_header(name.clone(), value.clone())?;
    }
    if connection == Connection::Close {
        session.set_keepalive(None);
    }
    // An answer to HEAD is its head alone (its length says what a GET would get): over HTTP/2
    // a body after it is a protocol error that hides the status.
    if session.req_header().method == http::Method::HEAD {
        return session.write_response_header(Box::new(header), true).await;
    }
    session.write_response_header(Box::new(header), false).await?;
    let trailers = grpc.filter(|_| session.is_http2());
    session.write_response_body(Some(Bytes::from(body)), trailers.is_none()).await?;
    if let Some(trailers) = trailers {
        // grpc-core (Python, C++, Ruby, PHP clients) reads a status only from trailers, or from
        // a head that ends the stream: without these it reported `UNKNOWN: Stream removed`.
        session.downstream_session.write_response_trailers(trailers).await?;
    }
    Ok(())
}

/// `grpc-status` and `grpc-message` for an answer of `status` the sidecar made.
fn grpc_trailers(status: u16, code: &str, request_id: &RequestId) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::with_capacity(2);
    trailers.insert(crate::policy::GRPC_STATUS, HeaderValue::from(u16::from(grpc_status(status))));
    // Printable ASCII but `%`: nothing to percent-encode.
    let message = format!("{code} (request id {})", request_id.as_str());
    trailers.insert("grpc-message", HeaderValue::from_str(&message).expect("ASCII"));
    trailers
}

/// The gRPC status code (`google.rpc.Code`) gRPC's clients infer from an HTTP status
/// (gRPC's "HTTP to gRPC status code mapping"), so every client reads one refusal alike; a
/// message or head too large is `RESOURCE_EXHAUSTED`, as a gRPC server answers a message past
/// its limit (the table's `UNKNOWN` left callers guessing; outside tester o3).
pub(super) fn grpc_status(http: u16) -> u8 {
    match http {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        413 | 414 | 431 => 8,  // RESOURCE_EXHAUSTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// Answers a refused request from its refusal, which stays in the context for the metrics and
/// the span.
pub async fn refuse(session: &mut Session, refusal: Refusal, ctx: &mut RequestCtx) {
    ctx.id = ctx.id.or_generate();
    let mut extra = Vec::new();
    refusal.headers(|name, value| extra.push((name, value)));
    let connection = Connection::after(session, refusal.is_decision());
    if let Err(e) = write(session, refusal.status(), refusal.code(), &ctx.id, &extra, connection).await {
        tracing::debug!(error = %e, "could not send the refusal");
    }
    ctx.refusal = Some(refusal);
}

/// Takes a place among the requests in flight, or answers 503 with `Retry-After: 1` (load
/// shedding); whether the request may go on.
pub async fn admit(session: &mut Session, inflight: &std::sync::Arc<super::Inflight>, ctx: &mut RequestCtx) -> bool {
    let source = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_canonical());
    if let Some(slot) = inflight.enter(source) {
        ctx.inflight = Some(slot);
        return true;
    }
    ctx.shed = true;
    ctx.id = ctx.id.or_generate();
    let retry = [(http::header::RETRY_AFTER, HeaderValue::from_static("1"))];
    let connection = Connection::after(session, true);
    if let Err(e) = write(session, 503, ErrorKind::Unavailable.code(), &ctx.id, &retry, connection).await {
        tracing::debug!(error = %e, "could not send the 503");
    }
    false
}

/// A request that failed because its body stalled past `limits.bodyTimeout`.
pub fn is_body_timeout(e: &Error) -> bool {
    e.etype() == &ErrorType::ReadTimedout && e.esource() == &ErrorSource::Downstream
}

/// A request cut off because its caller took none of the answer within `limits.sendTimeout`.
pub fn is_send_timeout(e: &Error) -> bool {
    e.etype() == &ErrorType::WriteTimedout && e.esource() == &ErrorSource::Downstream
}

/// What an answer cut off under memory pressure failed with ([`super::CallerTimeouts::write_body`]).
pub fn memory_cut() -> Box<Error> {
    Error::explain(
        ErrorType::Custom(MEMORY_CUT),
        "cut off: over limits.maxMemoryBytes while the caller was not reading",
    )
    .into_down()
}

const MEMORY_CUT: &str = "memory_cut";

/// An answer cut off under memory pressure.
pub fn is_memory_cut(e: &Error) -> bool {
    e.etype() == &ErrorType::Custom(MEMORY_CUT) && e.esource() == &ErrorSource::Downstream
}

/// A refusal the pipeline decided on is reported by metrics and events, and a caller hanging up
/// is the caller's business: neither is an error log.
pub fn is_decision(e: &Error) -> bool {
    use pingora::ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code < 500,
        // A stalled body or an unread answer is counted and reported as a DoS refusal
        // (limits.bodyTimeout, limits.sendTimeout).
        ConnectionClosed | ReadError | WriteError | ReadTimedout | WriteTimedout => {
            e.esource() == &pingora::ErrorSource::Downstream
        }
        Custom(MEMORY_CUT) => e.esource() == &pingora::ErrorSource::Downstream,
        _ => false,
    }
}

/// pingora writes an ERROR line for every request that fails, however many there are: a caller
/// could fill the log at will (5,000 lines for 5,000 requests to an app that is down). This
/// takes its place: refusals are counted and reported as events already and get no line; other
/// failures get at most [`crate::telemetry::REPORTED_EACH_PER_SECOND`] lines a second per
/// listener (the window the events' one-by-one reports use), and the first line after a full
/// second says how many went unlogged (every one is counted in `palisade_requests_total`).
pub struct FailureLog {
    direction: &'static str,
    lines: crate::telemetry::PerSecond,
    unlogged: std::sync::atomic::AtomicU64,
}

impl FailureLog {
    pub fn new(direction: &'static str) -> Self {
        FailureLog { direction, lines: Default::default(), unlogged: Default::default() }
    }

    /// For pingora's `suppress_error_log`: always true, having written this sidecar's own line
    /// when one is due.
    pub fn suppress(&self, session: &Session, e: &Error) -> bool {
        if is_decision(e) {
            return true;
        }
        // The caller's doing (it left mid-answer, cancelled a gRPC call, sent a broken body): what
        // callers do every day, answered and counted already, is no error of the sidecar's to
        // page anyone for.
        if e.esource() == &ErrorSource::Downstream {
            tracing::debug!(
                direction = self.direction,
                "request ended by the caller: {e}; {}",
                super::request_summary(session)
            );
            return true;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some(unlogged) = self.admit(now) {
            let summary = super::request_summary(session);
            match unlogged {
                0 => tracing::error!(direction = self.direction, "request failed: {e}; {summary}"),
                n => tracing::error!(
                    direction = self.direction,
                    unlogged = n,
                    "request failed: {e}; {summary} ({n} failed requests before it were not logged)"
                ),
            }
        }
        true
    }

    /// Whether a failure at Unix second `now` gets a line, and then how many went unlogged
    /// before it.
    fn admit(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.lines.admit_at(now) {
            return Some(self.unlogged.swap(0, Relaxed));
        }
        self.unlogged.fetch_add(1, Relaxed);
        None
    }
}

/// How long the start of an answer that failed midway may take to reach its caller.
const FLUSH_ON_FAILURE: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers a failed request with the JSON error body; shared by both directions.
pub async fn fail(session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
    ctx.id = ctx.id.or_generate();
    // Once the app's response has started, writing our own would splice two responses into one
    // that looks complete: abort the stream instead.
    // A `100 Continue` the sidecar sent (or an app's `103`) is not the start of an answer; a
    // `101` is, of another protocol's bytes, where a JSON error would be taken for its data.
    let started = |status: StatusCode| !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS;
    if let Some(started) = session.response_written().filter(|r| started(r.status)) {
        let error_code = started.status.as_u16();
        // A gRPC call refused as it streamed, after its app began to answer (a bidirectional
        // stream): over HTTP/2 its answer ends as an app's own refusal would, with the status in
        // trailers, where a reset stream reads as `CANCELLED` or `INTERNAL` to its client.
        // gRPC-Web and Connect carry their trailers in the body, which is the app's: reset.
        let native_grpc = |r: &pingora::http::RequestHeader| {
            super::is_grpc(r)
                && !crate::policy::rpc_over_http1(r.headers.get(http::header::CONTENT_TYPE).map(|t| t.as_bytes()))
        };
        // So too an answer the app or the peer broke off (an app that died, a peer sidecar whose
        // drain ended): `UNAVAILABLE`, which gRPC's retry policies retry, where the reset read
        // as `CANCELLED`, the caller's own doing (outside tester o3).
        let broken_off = || {
            ErrorKind::classify(e)
                .filter(|k| {
                    e.esource() == &ErrorSource::Upstream
                        && matches!(k, ErrorKind::BadGateway | ErrorKind::GatewayTimeout)
                })
                .map(|k| (k.status(), k.code()))
        };
        let ending = ctx.refusal.as_ref().map(|r| (r.status(), r.code())).or_else(broken_off);
        if let Some((status, code)) = ending.filter(|_| session.is_http2() && native_grpc(session.req_header())) {
            let trailers = grpc_trailers(status, code, &ctx.id);
            if let Err(write_error) = session.downstream_session.write_response_trailers(trailers).await {
                tracing::debug!(error = %write_error, "could not end the answer with the refusal");
            }
        }
        // An HTTP/1.1 answer of known length is buffered until its end, head included: dropped
        // with the connection, the caller would get an empty reply, which clients take for a
        // kept-alive connection closed under them (and some send again). Closed here instead, it
        // gets what the app sent, then the close that tells it the answer was cut short; a
        // caller that does not read gets a second, not a task held open.
        if !session.is_http2() {
            let _ = tokio::time::timeout(FLUSH_ON_FAILURE, session.downstream_session.shutdown()).await;
        }
        return FailToProxy { error_code, can_reuse_downstream: false };
    }
    // A refusal made while the body streamed (a gRPC message the WAF blocked): its own answer.
    if let Some(refusal) = &ctx.refusal {
        let mut extra = Vec::new();
        refusal.headers(|name, value| extra.push((name, value)));
        let (status, code) = (refusal.status(), refusal.code());
        if let Err(write_error) = write(session, status, code, &ctx.id, &extra, Connection::Close).await {
            tracing::debug!(error = %write_error, "could not send the refusal");
        }
        return FailToProxy { error_code: status, can_reuse_downstream: false };
    }
    let Some(kind) = ErrorKind::classify(e) else {
        return FailToProxy { error_code: 0, can_reuse_downstream: false };
    };
    if kind.status() < 500 {
        ctx.invalid = true;
    } else {
        tracing::debug!(error = %e, request_id = ctx.id.as_str(), "request failed");
    }
    if let Err(write_error) = write(session, kind.status(), kind.code(), &ctx.id, &[], Connection::Close).await {
        tracing::debug!(error = %write_error, "could not send the error response");
    }
    FailToProxy { error_code: kind.status(), can_reuse_downstream: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILURE_LINES_PER_SECOND: u64 = crate::telemetry::REPORTED_EACH_PER_SECOND as u64;

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        let refused = Error::explain(ErrorType::ConnectRefused, "app down");
        assert_eq!(ErrorKind::classify(&refused), Some(ErrorKind::BadGateway));
        let timeout = Error::explain(ErrorType::ConnectTimedout, "slow");
        assert_eq!(ErrorKind::classify(&timeout), Some(ErrorKind::GatewayTimeout));
        let status = ErrorKind::UriTooLong.fail("long");
        assert_eq!(ErrorKind::classify(&status), Some(ErrorKind::UriTooLong));
        // A caller's body that stalled is the caller's timeout (408), an app's silence is 504.
        let stalled = super::super::body_timed_out();
        assert!(is_body_timeout(&stalled));
        assert_eq!(ErrorKind::classify(&stalled).map(|k| (k.status(), k.code())), Some((408, "request_timeout")));
        let pingora_h1 = Error::explain(ErrorType::ReadTimedout, "reading body, timeout: 60s").into_down();
        assert_eq!(ErrorKind::classify(&pingora_h1), Some(ErrorKind::RequestTimeout));
        let app = Error::explain(ErrorType::ReadTimedout, "app").into_up();
        assert_eq!(ErrorKind::classify(&app), Some(ErrorKind::GatewayTimeout));
        // A caller that reset its HTTP/2 stream left; it sent nothing malformed.
        let cancelled = Error::explain(ErrorType::H2Error, "downstream error while idling").into_down();
        assert_eq!(ErrorKind::classify(&cancelled), None);
    }

    #[test]
    fn failures_get_a_few_lines_a_second_and_the_next_line_counts_those_unlogged() {
        let log = FailureLog::new("inbound");
        let lines: Vec<_> = (0..25).filter_map(|_| log.admit(100)).collect();
        assert_eq!(lines, vec![0; FAILURE_LINES_PER_SECOND as usize], "ten lines, none missed before them");
        assert_eq!(log.admit(101), Some(15), "the next second's first line counts the fifteen");
        assert_eq!(log.admit(101), Some(0));
    }

    /// gRPC's table for the refusals its clients share; a message too large is what a gRPC
    /// server answers for one (RESOURCE_EXHAUSTED), not UNKNOWN.
    #[test]
    fn refusals_map_to_the_codes_grpc_clients_expect() {
        let codes: Vec<(u16, u8)> = [400, 401, 403, 404, 413, 429, 431, 503, 500].map(|s| (s, grpc_status(s))).into();
        assert_eq!(
            codes,
            vec![(400, 13), (401, 16), (403, 7), (404, 12), (413, 8), (429, 14), (431, 8), (503, 14), (500, 2)]
        );
    }
}
