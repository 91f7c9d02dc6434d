//! The data path: the inbound and outbound proxies (pingora `ProxyHttp` implementations) and
//! the one place that turns failures into responses; [`crate::serve`] feeds them connections.
//!
//! Every listener of a sidecar runs on one tokio runtime: a request crosses no thread boundary
//! between accept, inbound, the app and back (pingora's own `Server` gives each service a runtime
//! of its own, which costs a cross-thread wake-up per hop).

mod app_pool;
mod forward;
mod inbound;
mod keepalive;
mod mesh_connector;
mod outbound;
mod parse_guard;
mod record;
mod request_id;
mod respond;
mod shed;
mod upgrade;

use crate::policy::Malformation;
pub use inbound::Inbound;
pub use outbound::Outbound;
pub use parse_guard::{request_timeout_answer, Strict};
pub use request_id::RequestId;
pub use respond::ErrorKind;
pub use shed::Inflight;

/// Carries the caller's HTTP version across the sidecar-to-sidecar hop, which is always HTTP/2,
/// so the inbound side speaks to its app as the caller spoke (Linkerd's `l5d-orig-proto`).
pub(crate) const ORIG_PROTO_HEADER: &str = "palisade-orig-proto";
pub(crate) const XFCC_HEADER: &str = "x-forwarded-client-cert";
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// Headers that describe one HTTP/1.1 connection and are forbidden in HTTP/2 (RFC 9113 §8.2.2).
pub(crate) const CONNECTION_SPECIFIC: [http::HeaderName; 6] = [
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    http::HeaderName::from_static("http2-settings"),
];

/// HTTP/2 field values that begin or end with a blank, trimmed before anyone reads them. RFC
/// 9113 section 8.2.1 calls them malformed, but h2 takes them and so much traffic carries them
/// that Envoy and nginx trim rather than refuse (envoyproxy/envoy#23266). Untrimmed, the policy
/// would judge `x-debug: " 1"` while the app's HTTP/1.1 parser reads `1`. Nothing is copied
/// unless a value is padded.
pub(crate) fn trim_padded_values(session: &mut pingora::proxy::Session) {
    fn padded(v: &[u8]) -> bool {
        matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
    }
    if !session.is_http2() || !session.req_header().headers.values().any(|v| padded(v.as_bytes())) {
        return;
    }
    let trimmed = |value: &http::HeaderValue| {
        let bytes = value.as_bytes();
        let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(bytes.len());
        let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
        http::HeaderValue::from_bytes(&bytes[start..end]).unwrap_or_else(|_| value.clone())
    };
    let headers = &session.req_header().headers;
    let names: Vec<http::HeaderName> =
        headers.keys().filter(|name| headers.get_all(*name).iter().any(|v| padded(v.as_bytes()))).cloned().collect();
    // Every value of such a name, in its order (pingora's header lets a name be replaced, not
    // one value of it).
    for name in names {
        let values: Vec<http::HeaderValue> = session.req_header().headers.get_all(&name).iter().map(trimmed).collect();
        let header = session.req_header_mut();
        header.remove_header(&name);
        for value in values {
            let _ = header.append_header(name.clone(), value);
        }
    }
}

/// Why a request's head is malformed or ambiguous past what the parser refuses, if it is, which
/// SPEC section 5 answers with 400: a target in neither origin nor absolute form, a Host field
/// that is not one host. Then the body's framing, the shape of request smuggling: more than one
/// Content-Length, or one that is not a plain number (`5, 5`: RFC 9110 lets a recipient collapse
/// the list, and an app or a proxy behind us may not); on HTTP/1, a Transfer-Encoding other than
/// exactly one `chunked` (pingora reads `gzip, chunked` or a second header its own way, the app
/// may read it another), or one beside a Content-Length. pingora's parser drops the
/// Content-Length in that case before any phase runs, so the parsed headers never show both; the
/// request as received does. Only requests that carry Transfer-Encoding are looked at again.
pub(crate) fn malformed_head(session: &pingora::proxy::Session) -> Option<Malformation> {
    let req = session.req_header();
    let headers = &req.headers;
    // Origin form (`/path?query`), or on HTTP/1.1 absolute form, which routes: pingora parses
    // `GET admin` or `GET host:80` with the path `/`, and the app would get a request for `/`
    // that no one asked for.
    let target = req.raw_path();
    let absolute = |t: &[u8]| {
        let scheme = |s: &[u8]| t.len() > s.len() && t[..s.len()].eq_ignore_ascii_case(s);
        scheme(b"http://") || scheme(b"https://")
    };
    if req.method != http::Method::CONNECT && target.first() != Some(&b'/') && (session.is_http2() || !absolute(target))
    {
        return Some(Malformation::new("target-form", "request target is neither origin nor absolute form"));
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        if lengths.next().is_some() {
            return Some(Malformation::new("content-length-repeated", "more than one Content-Length"));
        }
        if length.is_empty() || !length.as_bytes().iter().all(u8::is_ascii_digit) {
            return Some(Malformation::new("content-length-not-a-number", "Content-Length is not a number"));
        }
    }
    if session.is_http2() && req.uri.authority().is_some_and(|a| !is_authority(a.as_str().as_bytes())) {
        return Some(Malformation::new("authority-not-one-host", ":authority is not one host"));
    }
    // One Host field, with one host (RFC 9112 section 3.2 answers anything else with 400):
    // without one, with `a, b`, or with `evil.shop:80:80` (which the policy read as the host
    // `evil.shop:80` and nginx routes as `evil.shop`), the policy, the router and the app could
    // each take another host or none. HTTP/1.0 may send none, and HTTP/2 (`:authority` in its
    // place); an HTTP/2 `host` field, which the policy reads without `:authority`, is held to the
    // same form.
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if is_authority(host.as_bytes()) => {}
        (None, _) if req.version != http::Version::HTTP_11 => {}
        _ => return Some(Malformation::new("host-not-exactly-one", "a request without exactly one Host")),
    }
    if session.is_http2() {
        return None;
    }
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    let coding = codings.next()?;
    if codings.next().is_some() || !coding.as_bytes().eq_ignore_ascii_case(b"chunked") {
        return Some(Malformation::new("transfer-encoding-not-chunked", "Transfer-Encoding other than one chunked"));
    }
    let raw = session.as_downstream().to_h1_raw();
    raw.split(|&b| b == b'\n')
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
        .then_some(Malformation::new(
            "content-length-and-transfer-encoding",
            "both Content-Length and Transfer-Encoding",
        ))
}

/// RFC 9110's `Host = uri-host [ ":" port ]`: a bracketed IPv6 literal or a reg-name (RFC 3986's
/// unreserved and sub-delimiter characters, the comma aside: it joins list values), then at
/// most one colon and digits. Empty is allowed (a target with no authority). A name's labels are
/// not empty, but for one trailing dot: `evil..shop`, `.evil.shop` and `evil.shop..` are
/// `evil.shop` to resolvers and routers that drop empty labels, and not to a policy's host
/// (nginx refuses them too). Nor is a name percent-encoded (`evil%2eshop`): no client writes
/// one, and an app that decodes it would see another host than the policy judged.
fn is_authority(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &value[1..end];
                if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
                    return false;
                }
                (&value[..=end], &value[end + 1..])
            }
            None => return false,
        },
        _ => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &[][..]),
        },
    };
    let labels_ok = || {
        let name = host.strip_suffix(b".").unwrap_or(host);
        host.is_empty() || !name.is_empty() && name.split(|&b| b == b'.').all(|label| !label.is_empty())
    };
    let name_ok = host.first() == Some(&b'[')
        || labels_ok()
            && host.iter().all(|&b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b';'
                            | b'='
                    )
            });
    // A port in its one spelling: `:080`, `:` and `:99999` would each dodge a rule naming `:80`.
    let port_ok = match port.split_first() {
        None => true,
        // Digits without a leading zero, 1 to 65535: no allocation on a request's way.
        Some((b':', digits)) => {
            !host.is_empty()
                && digits.first().is_some_and(|&d| d != b'0')
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        Some(_) => false,
    };
    name_ok && port_ok
}

/// `limits.bodyTimeout` and `limits.sendTimeout` for one proxy: how long a caller may leave its
/// request's body unsent or its answer unread, and where those timeouts are counted.
/// HTTP/1.1 bodies are held to the first by pingora's own read timer, set per request
/// ([`CallerTimeouts::start`]), wherever they are read; HTTP/2 bodies where this crate reads them
/// ([`CallerTimeouts::read`], [`forward::exchange`]). Every answer's body, on either protocol, is
/// held to the second by pingora's write timer, set per request: whoever wrote it (pingora's
/// proxy or this crate), it goes through the session. An answer's head is not timed: it is at
/// most 1 MiB (pingora's limit), one per HTTP/1.1 connection at a time, and the socket's
/// buffers take it whole.
///
/// The answers this crate writes itself are also given up while the sidecar is over
/// `limits.maxMemoryBytes` and their caller is not taking them ([`CallerTimeouts::write_body`];
/// pingora's own proxy writes through the connection's wrapper in [`crate::serve`], which does the
/// same).
#[derive(Clone)]
pub struct CallerTimeouts {
    pub body: std::time::Duration,
    send: std::time::Duration,
    body_timeouts: crate::telemetry::RefusalCounter,
    send_timeouts: crate::telemetry::RefusalCounter,
    memory: std::sync::Arc<crate::memory::Pressure>,
    memory_cuts: Option<crate::telemetry::RefusalCounter>,
}

impl CallerTimeouts {
    pub fn new(
        (body, body_timeouts): (std::time::Duration, crate::telemetry::RefusalCounter),
        (send, send_timeouts): (std::time::Duration, crate::telemetry::RefusalCounter),
    ) -> Self {
        CallerTimeouts {
            body,
            send,
            body_timeouts,
            send_timeouts,
            memory: crate::memory::Pressure::off(),
            memory_cuts: None,
        }
    }

    /// Answers stalled on their callers are cut off while `memory` is over its limit, counted
    /// in `cuts`.
    pub fn memory(
        mut self,
        memory: std::sync::Arc<crate::memory::Pressure>,
        cuts: crate::telemetry::RefusalCounter,
    ) -> Self {
        self.memory = memory;
        self.memory_cuts = Some(cuts);
        self
    }

    /// Writes a piece of an answer to the caller (pingora's write timer holds it to
    /// `sendTimeout`), unless the sidecar goes over its memory limit while the caller is not
    /// taking it.
    pub(crate) async fn write_body(
        &self,
        session: &mut pingora::proxy::Session,
        data: Option<bytes::Bytes>,
        end: bool,
    ) -> pingora::Result<()> {
        match self.memory.unless_cut(session.write_response_body(data, end)).await {
            Ok(written) => written.map_err(pingora::Error::into_down),
            Err(crate::memory::Cut) => Err(respond::memory_cut()),
        }
    }

    /// The SPEC's defaults (60 s each), counted nowhere (proxies built without limits, unit tests).
    pub(crate) fn default_uncounted() -> Self {
        use crate::telemetry::{RefusalReason, Refusals};
        let uncounted = |reason| {
            let counter =
                prometheus::IntCounter::new("palisade_connections_closed_total", "unregistered").expect("counter");
            (std::time::Duration::from_secs(60), Refusals::default().counter("other", reason, "60s", counter))
        };
        CallerTimeouts::new(uncounted(RefusalReason::BodyTimeout), uncounted(RefusalReason::SendTimeout))
    }

    /// Holds an HTTP/1.1 request's body reads, and the answer's writes on either protocol, to
    /// their timeouts (pingora's per-read and per-write timers).
    pub(crate) fn start(&self, session: &mut pingora::proxy::Session) {
        session.set_read_timeout(Some(self.body));
        session.set_write_timeout(Some(self.send));
    }

    /// One read of a request body the sidecar holds whole (for the WAF, or for an app that
    /// takes no streamed body), at most the body timeout long, and cut off if the sidecar is
    /// over its memory limit while the body, held since `held_since`, is not yet all there: a
    /// body that trickles a byte now and then restarts the timeout at each one, so thousands of
    /// them would otherwise hold the heap over the limit, and the guard refuse everyone else,
    /// for as long as their callers like (Envoy's `reset_high_memory_stream` resets such
    /// streams too).
    pub(crate) async fn read(
        &self,
        session: &mut pingora::proxy::Session,
        held_since: tokio::time::Instant,
    ) -> pingora::Result<Option<bytes::Bytes>> {
        let read = tokio::time::timeout(self.body, session.read_request_body());
        match self.memory.unless_cut_since(Some(held_since), read).await {
            Ok(Ok(read)) => read.map_err(pingora::Error::into_down),
            Ok(Err(_)) => Err(body_timed_out()),
            Err(crate::memory::Cut) => Err(respond::memory_cut()),
        }
    }

    /// Counts a request that failed for its caller's stalling (`e`, the failure).
    pub(crate) fn count(&self, session: &pingora::proxy::Session, e: &pingora::Error) {
        let counter = match (respond::is_body_timeout(e), respond::is_send_timeout(e)) {
            (true, _) => &self.body_timeouts,
            (_, true) => &self.send_timeouts,
            _ if respond::is_memory_cut(e) => match &self.memory_cuts {
                Some(cuts) => cuts,
                None => return,
            },
            _ => return,
        };
        let source = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_canonical());
        counter.refused(source);
    }
}

/// What pingora's own error lines say of a request: its method (any token a parser takes), path
/// and host, each cut to 100 bytes and escaped. pingora's summary writes the whole Host and target as they came, so an
/// app naming a 60 KB host that does not resolve wrote 60 KB lines, one per request, which log
/// pipelines split (over 16 KB) and which fill the log volume. No query: it may carry a
/// credential (`?access_token=`), and the access log, events and spans leave it out too.
pub(crate) fn request_summary(session: &pingora::proxy::Session) -> String {
    const MAX: usize = 100;
    let req = session.req_header();
    let cut = |b: &[u8]| {
        let shown = &b[..b.len().min(MAX)];
        let more = if b.len() > MAX { "..." } else { "" };
        format!("{}{more}", shown.escape_ascii())
    };
    let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes()).or_else(|| req.uri.host().map(str::as_bytes));
    let method = cut(req.method.as_str().as_bytes());
    let target = req.raw_path();
    let (path, query) = match target.iter().position(|b| *b == b'?') {
        Some(at) => (&target[..at], "?<query>"),
        None => (target, ""),
    };
    format!("{method} {}{query}, Host: {}", cut(path), cut(host.unwrap_or_default()))
}

/// The failure of a request whose body stalled: pingora's own (an HTTP/1.1 read timed out) has
/// this type and side too.
pub(crate) fn body_timed_out() -> Box<pingora::Error> {
    pingora::Error::explain(pingora::ErrorType::ReadTimedout, "no request body bytes within limits.bodyTimeout")
        .into_down()
}

/// An HTTP/1 request whose body is chunked: its framing is known only as the body is read.
pub(crate) fn is_chunked_h1(session: &pingora::proxy::Session) -> bool {
    !session.is_http2() && session.req_header().headers.contains_key(http::header::TRANSFER_ENCODING)
}

/// Reads the first piece of a chunked body before anything of the request is forwarded, so a
/// malformed chunk head (a bad size, an overlong extension) is refused with 400 while the app
/// and the peer have seen nothing. One piece, because pingora's retry buffer, which replays it
/// on its own proxy path, holds one read (64 KiB) and no more; a body that goes bad further on
/// is cut off mid-stream and the app never sees it complete. A caller that waits for
/// `100 Continue` gets it here, as it would from the app. Returns the piece and whether it
/// ended the body.
pub(crate) async fn read_first_piece(session: &mut pingora::proxy::Session) -> pingora::Result<(bytes::Bytes, bool)> {
    answer_expect_continue(session).await?;
    let piece = session.read_request_body().await.map_err(pingora::Error::into_down)?;
    let done = piece.is_none() || session.is_body_done();
    if session.retry_buffer_truncated() {
        return Err(respond::ErrorKind::PayloadTooLarge.fail("first body piece over the retry buffer"));
    }
    Ok((piece.unwrap_or_default(), done))
}

/// Tells a caller that waits for `100 Continue` before its body to send it, as the app would
/// have; the sidecar reads the body first, so the app's own answer would come too late. An
/// HTTP/1.0 caller gets no interim answer (RFC 9110 §10.1.1): its header is only dropped.
pub(crate) async fn answer_expect_continue(session: &mut pingora::proxy::Session) -> pingora::Result<()> {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        if session.req_header().version != http::Version::HTTP_10 {
            session.write_continue_response().await.map_err(pingora::Error::into_down)?;
        }
        session.req_header_mut().remove_header(&http::header::EXPECT);
    }
    Ok(())
}

/// A connection that could not be made, as the pingora error whose type decides the caller's
/// status (refused or unreachable 502, timed out 504); the message names the address.
pub(crate) fn connect_failure(e: &crate::tls::ConnectError) -> Box<pingora::Error> {
    use crate::tls::ConnectError::*;
    use pingora::ErrorType;
    let etype = match e {
        Refused(_) => ErrorType::ConnectRefused,
        Unreachable(..) => ErrorType::ConnectError,
        ConnectTimeout(_) => ErrorType::ConnectTimedout,
        HandshakeTimeout(_) => ErrorType::TLSHandshakeTimedout,
        Refusal(..) | NoHandshake(_) => ErrorType::TLSHandshakeFailure,
    };
    pingora::Error::explain(etype, e.to_string())
}

/// Whether a request that failed on a connection may be sent once more on another: the error
/// allows it (on a reused connection only, where pingora says so) and nothing of an answer has
/// reached the caller. Each hop adds what else it needs (no body; an idempotent method).
pub(crate) fn may_send_again(e: &mut pingora::Error, reused: bool, session: &pingora::proxy::Session) -> bool {
    e.retry.decide_reuse(reused);
    e.retry() && session.response_written().is_none()
}

/// HTTP/1.0 has no chunked coding (RFC 9112 §7): a response of unknown length goes to an
/// HTTP/1.0 caller as its bytes, ended by closing the connection, as nginx answers one. Chunk
/// framing would reach such a caller (nginx's default `proxy_http_version 1.0`, ab) as part of
/// the body.
pub(crate) fn frame_for_http10(session: &mut pingora::proxy::Session, header: &mut pingora::http::ResponseHeader) {
    if session.is_http2()
        || session.req_header().version != http::Version::HTTP_10
        || header.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        return;
    }
    if header.remove_header(&http::header::TRANSFER_ENCODING).is_some() {
        session.set_keepalive(None);
    }
}

/// An answer pingora's proxy passes on from an app or a passthrough server, fitted to the
/// caller: framed for HTTP/1.0 (see [`frame_for_http10`]), and a `101` leaves the caller's
/// reads untimed, since an upgraded connection (a WebSocket) may rightly be silent for long;
/// `bodyTimeout` would otherwise close an idle one after a minute.
pub(crate) fn passed_answer(session: &mut pingora::proxy::Session, header: &mut pingora::http::ResponseHeader) {
    drop_hop_by_hop(header);
    frame_for_http10(session, header);
    if header.status == http::StatusCode::SWITCHING_PROTOCOLS {
        session.set_read_timeout(None);
    }
}

/// An HTTP/1.1 answer's fields for its own hop (RFC 9110 §7.6.1): those its `Connection` names,
/// `Keep-Alive` (the app's timeout, not the sidecar's) and `Proxy-Connection`, as they are
/// dropped from requests. `Connection` itself goes too: the sidecar says its own. The framing
/// stays (`Transfer-Encoding`, `Content-Length`), whatever `Connection` names, and a `101`
/// keeps its `Connection: upgrade`.
pub(crate) fn drop_hop_by_hop(header: &mut pingora::http::ResponseHeader) {
    if header.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    if header.headers.contains_key(http::header::CONNECTION) {
        // Cloned values (a count on shared bytes), so the names can go while they are read; the
        // rest of several `Connection` lines (rare) is the only allocation.
        let mut values = header.headers.get_all(http::header::CONNECTION).iter().cloned();
        let (first, rest): (Option<http::HeaderValue>, Vec<_>) = (values.next(), values.collect());
        let text = first.iter().chain(&rest).map(|v| v.to_str().unwrap_or(""));
        for name in text.flat_map(connection_tokens).take(32) {
            let framing = name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("content-length");
            if !framing && header.headers.contains_key(name) {
                header.remove_header(name);
            }
        }
        header.remove_header(&http::header::CONNECTION);
    }
    for name in ["keep-alive", "proxy-connection"] {
        if header.headers.contains_key(name) {
            header.remove_header(name);
        }
    }
}

/// The names in one `Connection` value, of a request or an answer.
pub(crate) fn connection_tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|n| !n.is_empty())
}

/// A gRPC request (`application/grpc`, `application/grpc+proto`, gRPC-Web), as the WAF reads
/// its type.
pub(crate) fn is_grpc(request: &pingora::http::RequestHeader) -> bool {
    crate::policy::is_grpc(request.headers.get(http::header::CONTENT_TYPE).map(|t| t.as_bytes()))
}

/// The verified caller of this connection, if it came over mutual TLS.
pub(crate) fn peer_identity(session: &pingora::proxy::Session) -> Option<&crate::tls::PeerIdentity> {
    session.digest()?.ssl_digest.as_ref()?.extension.get::<crate::tls::PeerIdentity>()
}

/// Where a request is addressed: the absolute-form authority, else the `Host` header.
pub(crate) fn request_authority(req: &pingora::http::RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_claim_is_forwarded_in_a_header_the_proxies_set_for_the_app() {
        for header in [super::XFCC_HEADER, super::ORIG_PROTO_HEADER, super::REQUEST_ID_HEADER] {
            assert!(crate::authn::RESERVED_HEADERS.contains(&header), "{header}");
        }
        for header in crate::authn::SIDECAR_SET_HEADERS {
            assert!(crate::authn::RESERVED_HEADERS.contains(&header), "{header}");
        }
    }
}
