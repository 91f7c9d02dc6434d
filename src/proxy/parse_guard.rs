//! pingora's own refusals in SPEC section 5's shape. When pingora's HTTP/1 parser refuses a
//! request head (a NUL or bare CR in a header, obs-fold, a duplicate Host, conflicting
//! Content-Lengths, a head over its size limit), it writes a bare `400` itself and closes,
//! before any `ProxyHttp` phase runs, so no hook of ours can answer instead. This stream wrapper
//! sees that write: bytes pingora sends on an HTTP/1 connection while no request of ours is in
//! progress can only be such a refusal, and they are replaced by the JSON body and
//! `x-request-id` every response of the sidecar carries.
//!
//! A request is "in progress" from `early_request_filter` (the first phase, so the parser
//! accepted the head) to `logging` (the last). HTTP/2 connections are left alone: their
//! parser's refusals are stream resets, and the connection writes frames before any request.
//! The cost on the data path: one pointer hop and one atomic load per read and write.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::ALPN;
use pingora::protocols::{Peek, Shutdown, Ssl, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::respond::ErrorKind;
use super::RequestId;
use crate::policy::Malformation;
use crate::telemetry::Telemetry;

/// A [`ServerApp`] (the proxy) whose connections are wrapped in a [`Guarded`] stream and kept
/// alive between HTTP/1.1 requests by [`super::keepalive`].
pub struct Strict<A> {
    pub app: Arc<A>,
    /// Where the refusals are counted and logged, and as which direction.
    pub telemetry: Arc<Telemetry>,
    pub direction: &'static str,
}

#[async_trait::async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Strict<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let counted = Counted { telemetry: self.telemetry.clone(), direction: self.direction };
        super::keepalive::serve(&self.app, Box::new(Guarded::new(stream, Some(counted))), shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// Marks the session's request as accepted by the parser (`early_request_filter`).
pub fn request_started(session: &pingora::proxy::Session) {
    if let Some(guarded) = guarded(session) {
        guarded.in_request.store(true, Ordering::Release);
    }
}

/// Marks the session's request as finished (`logging`): the connection may carry another.
pub fn request_finished(session: &pingora::proxy::Session) {
    if let Some(guarded) = guarded(session) {
        guarded.next_head.store(true, Ordering::Release);
        guarded.in_request.store(false, Ordering::Release);
    }
}

fn guarded(session: &pingora::proxy::Session) -> Option<&Guarded> {
    session.stream()?.as_any().downcast_ref::<Guarded>()
}

/// Where a refusal of pingora's parser is counted (`palisade_requests_total`, decision
/// `invalid`) and written to the access log, as every answer of the sidecar's own is: a
/// smuggling probe (two Host fields, a bare CR) would otherwise leave no trace but its 400.
pub struct Counted {
    telemetry: Arc<Telemetry>,
    direction: &'static str,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").field("direction", &self.direction).finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Guarded {
    inner: Stream,
    in_request: AtomicBool,
    /// HTTP/2 (by ALPN or the h2c preface): never touched.
    h2: bool,
    /// Our answer in place of pingora's, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    counted: Option<Counted>,
    /// The connection's count of HTTP/2 requests h2 refused as malformed, when counted.
    malformed_h2: Option<Arc<std::sync::atomic::AtomicU32>>,
    /// How long the request line of the head being read is (so far, while `line_open`).
    request_line: usize,
    line_open: bool,
    /// A request finished: what is read next starts another head.
    next_head: AtomicBool,
}

/// A request line longer than this that pingora's parser refuses is a URI too long (414, as
/// the policy's default `maxUriBytes` answers one it reads): past its buffer (64 KiB) pingora
/// says 400.
const LONG_REQUEST_LINE: usize = 8192;

impl Guarded {
    fn new(inner: Stream, counted: Option<Counted>) -> Self {
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        let malformed_h2 = counted.as_ref().and_then(|_| crate::serve::malformed_http2_requests(&inner));
        Guarded {
            inner,
            in_request: AtomicBool::new(false),
            h2,
            replacement: None,
            counted,
            malformed_h2,
            request_line: 0,
            line_open: true,
            next_head: AtomicBool::new(false),
        }
    }

    /// Counts and reports what h2 refused as malformed since the last look: requests pingora
    /// never saw, answered with a stream reset.
    fn count_malformed_http2(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(malformed) = self.malformed_h2.as_ref().filter(|m| m.load(Relaxed) > 0) else { return };
        for _ in 0..malformed.swap(0, Relaxed) {
            self.count(400, RequestId::generate().as_str(), H2_REFUSAL);
        }
    }

    /// Counts and logs the refusal whose answer is `answer` (its status and request id).
    fn count(&self, status: u16, request_id: &str, rule: Malformation) {
        let Some(Counted { telemetry, direction }) = &self.counted else { return };
        let identity = self.inner.get_ssl_digest();
        let principal = identity.as_ref().and_then(|d| d.extension.get::<crate::tls::PeerIdentity>());
        let principal = principal.map_or("", |p| p.id.as_str());
        let socket = self.inner.get_socket_digest();
        let source = socket.as_ref().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        record_unparsed(telemetry, direction, status, request_id, principal, source);
        // A smuggling probe is what a SIEM must see: reported as the inbound side's other
        // malformed requests are (at most 10 a second per source, the rest summed up).
        if *direction == "inbound" {
            let destination = socket.as_ref().and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
            telemetry.inbound_request_invalid(crate::telemetry::DeniedRequest {
                status,
                policy: "-".into(),
                rule: rule.id.into(),
                detail: Some(rule.why.into()),
                audit: false,
                request: crate::telemetry::RequestFacts {
                    principal: (!principal.is_empty()).then(|| principal.to_string()),
                    source,
                    method: "-".into(),
                    path: "-".into(),
                    request_id: request_id.to_string(),
                    destination,
                    trace_id: None,
                    request_principal: None,
                    normalized_path: None,
                },
            });
        }
    }

    /// Whether `buf`, written now, is pingora refusing a head it could not parse.
    fn is_refusal(&self, buf: &[u8]) -> bool {
        !self.h2
            && !self.in_request.load(Ordering::Acquire)
            && (self.replacement.is_some() || buf.starts_with(b"HTTP/1."))
    }

    /// Writes our answer in place of pingora's `buf` (whose status it keeps); pingora's own
    /// bytes are dropped, and so is whatever else it writes for this answer.
    fn poll_replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.replacement.is_none() {
            let too_long = self.request_line > LONG_REQUEST_LINE;
            let (answer, status, id) = match too_long && buf.starts_with(b"HTTP/1.1 400") {
                true => answer_of(b"HTTP/1.1 414 "),
                false => answer_of(buf),
            };
            self.count(status, id.as_str(), parser_refusal(status));
            self.replacement = Some((answer, 0));
        }
        let Some((answer, written)) = self.replacement.as_mut() else { unreachable!("set above") };
        while *written < answer.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(buf.len()))
    }
}

/// Why h2 refused an HTTP/2 request (with a stream reset, `PROTOCOL_ERROR`): the forms RFC 9113
/// section 8.2 calls malformed, which smuggling probes try on a hop that speaks HTTP/1.1 behind.
const H2_REFUSAL: Malformation = Malformation::new(
    "h2-malformed",
    "an HTTP/2 request refused as malformed before it reached the proxy (an upper-case or connection-specific header such as transfer-encoding, a bad or repeated pseudo-header, CR, LF or NUL in a field, a host that differs from :authority)",
);

/// Why pingora's parser refused a request, as far as its status tells.
fn parser_refusal(status: u16) -> Malformation {
    match status {
        431 | 413 => Malformation::new("h1-head-too-large", "a request head over the parser's size limit"),
        _ => Malformation::new(
            "h1-malformed",
            "a request the HTTP/1 parser refuses (a bare CR or NUL, a folded line, two Host or Content-Length fields, a byte outside a token)",
        ),
    }
}

/// An answer to a request head that never became a request (refused by the parser, or cut
/// short by `limits.headerTimeout`): counted in `palisade_requests_total` with `decision`
/// `invalid` and written to the access log with `method` and `path` `-`, so its request id
/// leads somewhere.
fn record_unparsed(
    telemetry: &Telemetry,
    direction: &'static str,
    status: u16,
    request_id: &str,
    principal: &str,
    source: Option<std::net::SocketAddr>,
) {
    let decision = "invalid";
    telemetry.requests.record(
        &telemetry.metrics,
        crate::telemetry::Recorded {
            direction,
            method: "OTHER",
            code: status,
            code_label: super::record::status_label(status),
            principal,
            decision,
            destination: "",
            seconds: 0.0,
        },
    );
    if telemetry.access_log_enabled() {
        telemetry.access(crate::telemetry::AccessRecord {
            direction,
            method: "-",
            path: "-",
            status,
            seconds: 0.0,
            source,
            principal,
            destination: "",
            decision,
            request_id,
            ratelimit_delay: None,
            request_principal: None,
            grpc_status: None,
        });
    }
}

/// What an HTTP/1.1 connection from `peer` whose request head did not arrive within
/// `limits.headerTimeout` is answered before it closes (SPEC section 5): 408 with the JSON body
/// and `x-request-id`, recorded as [`record_unparsed`] says. (The closure itself is reported
/// with the listener's others, `palisade_connections_closed_total{reason="header_timeout"}`.)
pub fn request_timeout_answer(
    telemetry: Option<&Telemetry>,
    direction: &'static str,
    peer: std::net::SocketAddr,
    principal: Option<&str>,
) -> Vec<u8> {
    let (answer, status, id) = answer_of(b"HTTP/1.1 408 ");
    if let Some(telemetry) = telemetry {
        record_unparsed(telemetry, direction, status, id.as_str(), principal.unwrap_or(""), Some(peer));
    }
    answer
}

/// The sidecar's JSON refusal for the status pingora chose (`HTTP/1.1 400 ...`), with that status
/// and the request id it names.
fn answer_of(pingora_wrote: &[u8]) -> (Vec<u8>, u16, RequestId) {
    let status = pingora_wrote
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        .filter(|s| (400..600).contains(s))
        .unwrap_or(400);
    let kind = ErrorKind::from_status(status);
    let id = RequestId::generate();
    let body = format!(r#"{{"error":"{}","request_id":"{}"}}"#, kind.code(), id.as_str());
    let reason = http::StatusCode::from_u16(kind.status()).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let answer = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        kind.status(),
        body.len(),
        id.as_str()
    );
    (answer.into_bytes(), kind.status(), id)
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.h2 {
            // The request line's length, for what a refusal of it means: from a head's first
            // byte (empty lines before it skipped, as httparse skips them) to its LF.
            if self.next_head.swap(false, Ordering::AcqRel) {
                (self.request_line, self.line_open) = (0, true);
            }
            if self.line_open && !self.in_request.load(Ordering::Acquire) {
                let bytes = &buf.filled()[before..];
                let bytes = match self.request_line {
                    0 => &bytes[bytes.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(bytes.len())..],
                    _ => bytes,
                };
                let end = bytes.iter().position(|&b| b == b'\n');
                self.request_line += end.unwrap_or(bytes.len());
                self.line_open = end.is_none();
            }
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.is_refusal(buf) {
            return self.poll_replace(cx, buf);
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_malformed_http2();
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        if self.is_refusal(first) {
            let len = bufs.iter().map(|b| b.len()).sum();
            return match self.poll_replace(cx, first) {
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(len)),
                other => other,
            };
        }
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_malformed_http2();
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

pass_stream_digests!(Guarded, s => s.inner, s => s.inner);

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

#[async_trait::async_trait]
impl Peek for Guarded {
    /// A plaintext connection is peeked for the h2c preface before a protocol is picked
    /// (`keepalive::is_http1`, then pingora): the same bytes decide here.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let peeked = self.inner.try_peek(buf).await?;
        if peeked && buf.starts_with(crate::serve::H2_PREFACE) {
            self.h2 = true;
        }
        Ok(peeked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_keeps_pingoras_status_and_carries_the_json_body() {
        let ours = String::from_utf8(answer_of(b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\n\r\n").0).unwrap();
        assert!(ours.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{ours}");
        let (head, body) = ours.split_once("\r\n\r\n").unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "invalid_request");
        let id = json["request_id"].as_str().unwrap();
        assert!(head.contains(&format!("x-request-id: {id}\r\n")), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let large = String::from_utf8(answer_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n").0).unwrap();
        assert!(large.contains("\"error\":\"headers_too_large\""), "{large}");
    }
}
