//! One request from the local app to a peer sidecar: the app's HTTP/1.1 or HTTP/2 request
//! becomes an HTTP/2 stream on a connection of [`super::mesh_connector`], and the answer comes
//! back the way the app spoke. The request body and the response travel at the same time, so
//! streaming gRPC works in both directions; trailers pass to HTTP/2 callers.

use std::future::poll_fn;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use http::header::{self, HeaderName};

use super::mesh_connector::{self, MeshStream};
use super::CONNECTION_SPECIFIC;
use http::{StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, OrErr};

/// More names than this in `Connection` is not a real client.
const MAX_CONNECTION_NAMES: usize = 32;

fn invalid(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, why).into_down()
}

/// Turns the app's request into an HTTP/2 request before the sidecar adds headers of its own
/// (so a `Connection` header cannot name them away): `:authority` from the absolute-form target
/// or `Host`, no connection-specific headers nor those `Connection` names, `te` only as
/// `trailers`, no `expect` (the sidecar answers it). Content-Length beside Transfer-Encoding never
/// gets here: it is refused first (see [`super::malformed_head`]).
pub fn to_h2(request: &RequestHeader) -> pingora::Result<http::request::Parts> {
    if !request.raw_path_is_utf8() {
        return Err(invalid("a request target that is not UTF-8 cannot travel over HTTP/2"));
    }
    // The parts alone: an HTTP/1.1 caller's header-case map has no use on HTTP/2, and a header
    // the sidecar adds to a plain map is not re-parsed to keep one.
    let mut parts = request.as_owned_parts();
    if parts.version != Version::HTTP_2 {
        let named = connection_names(&parts.headers)?;
        let headers = &mut parts.headers;
        for name in named.iter().chain(CONNECTION_SPECIFIC.iter()) {
            headers.remove(name);
        }
        let trailers_only =
            headers.get_all(header::TE).iter().all(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !trailers_only {
            headers.remove(header::TE);
        }
        headers.remove(header::EXPECT);
    }
    // An HTTP/2 caller may send `host` in place of `:authority` (RFC 9113 §8.3.1), as an
    // HTTP/1.1 one always does: either way it becomes the peer's `:authority`.
    if parts.uri.authority().is_none() {
        let host = parts.headers.remove(header::HOST).ok_or_else(|| invalid("no Host header"))?;
        // The target is moved, not copied, into the new URI.
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTPS);
        uri.authority =
            Some(http::uri::Authority::try_from(host.as_bytes()).map_err(|_| invalid("Host is not an authority"))?);
        uri.path_and_query.get_or_insert(http::uri::PathAndQuery::from_static("/"));
        parts.uri = http::Uri::from_parts(uri).map_err(|_| invalid("Host is not an authority"))?;
    } else if parts.version != Version::HTTP_2 {
        parts.headers.remove(header::HOST);
    }
    parts.version = Version::HTTP_2;
    Ok(parts)
}

/// The headers an HTTP/1.1 request's `Connection` names, which are this hop's alone.
pub(super) fn connection_names(headers: &http::HeaderMap) -> pingora::Result<Vec<HeaderName>> {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let value = value.to_str().map_err(|_| invalid("Connection is not text"))?;
        for name in super::connection_tokens(value) {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("Connection names a bad header"))?;
            named.push(name);
            if named.len() > MAX_CONNECTION_NAMES {
                return Err(invalid("Connection names too many headers"));
            }
        }
    }
    Ok(named)
}

/// Sends `request` (already HTTP/2, see [`to_h2`]) and its body on `upstream` and writes the
/// response to the app. An error says whose side failed (`esource`), which decides the status
/// of the error response, when one can still be written.
/// `first` is the body's first piece when it was read before the request was sent (see
/// [`super::read_first_piece`]), with whether it ended the body. A caller whose body stalls for
/// `body_timeout` while the peer waits for it fails the request (408, `limits.bodyTimeout`).
pub async fn exchange(
    session: &mut Session,
    upstream: &mut MeshStream,
    request: http::request::Parts,
    expects_continue: bool,
    first: Option<(Bytes, bool)>,
    timeouts: &super::CallerTimeouts,
) -> pingora::Result<Option<u16>> {
    let body_timeout = timeouts.body;
    // A gRPC stream may rightly say nothing for long (a watch, a subscription), and gRPC has
    // deadlines of its own: its silence is not timed, as the inbound side does not time it.
    let timed = !super::is_grpc(session.req_header());
    let mut request_done = first.is_none() && session.is_body_empty() && session.is_body_done();
    let (response, body_writer) = upstream.send_request(request, request_done).map_err(Error::into_up)?;
    if expects_continue && !request_done {
        // The peer's interim answer cannot cross HTTP/2 (h2 drops 1xx), so this hop says go on.
        session.write_continue_response().await.map_err(Error::into_down)?;
    }
    let mut body_writer = Some(body_writer);
    let mut incoming = Incoming::Header(response);
    let mut pending: Option<(Bytes, bool)> = first;
    // False once the peer stopped taking the body: the rest of it is still arriving from the
    // caller, and reading it as "idle" would call it a protocol error.
    let mut watch_caller = true;
    // Set once the response header went to an HTTP/1.1 caller: from then on, with the request
    // body in, the caller is not watched. A client that has the whole body (by its
    // Content-Length) sends its next request at once, often before the peer's end of stream
    // arrives here, and pingora reads those bytes as data after the end of the body: an error
    // that would drop a healthy keep-alive connection. A caller that went away shows when the
    // next bytes are written.
    let mut caller_may_pipeline = false;
    // From the last body bytes read or passed on: how long the caller may keep the rest.
    let stalled = tokio::time::sleep(body_timeout);
    tokio::pin!(stalled);
    loop {
        // Only reads and flow-control waits race; each write happens once its branch has won.
        tokio::select! {
            // Once the body is in, this watches for the caller going away.
            read = session.read_body_or_idle(request_done),
                if pending.is_none() && watch_caller && !(request_done && caller_may_pipeline) => {
                let read = read.map_err(Error::into_down)?;
                if !request_done {
                    let end = read.is_none() || session.is_body_done();
                    pending = Some((read.unwrap_or_default(), end));
                    stalled.as_mut().reset(tokio::time::Instant::now() + body_timeout);
                }
            }
            // Waiting for the caller's body (not for the peer's flow control): HTTP/1.1 reads
            // time out in pingora too; HTTP/2 ones only here.
            () = &mut stalled, if timed && pending.is_none() && watch_caller && !request_done => {
                return Err(super::body_timed_out());
            }
            sent = send_pending(body_writer.as_mut(), &mut pending), if pending.is_some() => {
                stalled.as_mut().reset(tokio::time::Instant::now() + body_timeout);
                match sent {
                    Ok(true) => request_done = true,
                    Ok(false) => {}
                    // The peer stopped taking the body: it may have answered already (an early
                    // 413, RFC 9113 §8.1); the response decides.
                    Err(_) => {
                        body_writer = None;
                        pending = None;
                        request_done = true;
                        watch_caller = false;
                    }
                }
            }
            event = incoming.next(upstream) => match event.map_err(Error::into_up)? {
                Event::Header(header, end) => {
                    let mut header = downstream_header(session, header, end)?;
                    super::frame_for_http10(session, &mut header);
                    // A gRPC call that failed before any message: its status is in this header.
                    let grpc = if end { crate::policy::grpc_status(&header.headers) } else { None };
                    write_header(session, header, end).await?;
                    if end {
                        return Ok(grpc);
                    }
                    caller_may_pipeline = !session.is_http2();
                }
                Event::Data(data) => {
                    timeouts.write_body(session, Some(data), false).await?;
                    // The caller's silence is not judged while its answer waited on it.
                    stalled.as_mut().reset(tokio::time::Instant::now() + body_timeout);
                }
                Event::End(trailers) => {
                    let grpc = trailers.as_ref().and_then(crate::policy::grpc_status);
                    match trailers {
                        Some(trailers) if session.is_http2() => {
                            session.write_response_trailers(trailers).await.map_err(Error::into_down)?
                        }
                        _ => timeouts.write_body(session, Some(Bytes::new()), true).await?,
                    }
                    // Whatever the app had not sent yet is no longer wanted (RFC 9113 §8.1).
                    return Ok(grpc);
                }
            }
        }
    }
}

/// Writes a response header to the caller; one that ends the response (a gRPC status without a
/// body) stays a single HTTP/2 frame.
pub async fn write_header(session: &mut Session, header: Box<ResponseHeader>, end: bool) -> pingora::Result<()> {
    let written = if end {
        session.write_response_tasks(vec![HttpTask::Header(header, true)]).await.map(drop)
    } else {
        session.write_response_header(header, false).await
    };
    written.map_err(Error::into_down)
}

/// Sends as much of the pending chunk as the peer's flow-control window allows; true once the
/// end of the body is sent. Cancel-safe: the chunk is split only after capacity is granted, and
/// nothing awaits after that.
async fn send_pending(
    writer: Option<&mut SendStream<Bytes>>,
    pending: &mut Option<(Bytes, bool)>,
) -> pingora::Result<bool> {
    let writer = writer
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "request body without a stream to send it on"))?;
    let Some((data, end)) = pending.as_mut() else { return Ok(false) };
    if data.is_empty() {
        let end = *end;
        *pending = None;
        if end {
            writer.send_data(Bytes::new(), true).or_err(ErrorType::WriteError, "ending the request body")?;
        }
        return Ok(end);
    }
    writer.reserve_capacity(data.len());
    let granted = match poll_fn(|cx| writer.poll_capacity(cx)).await {
        Some(Ok(granted)) => granted,
        Some(Err(e)) => return Err(e).or_err(ErrorType::WriteError, "waiting to send the request body"),
        None => return Error::e_explain(ErrorType::WriteError, "the peer closed the request stream"),
    };
    if granted == 0 {
        return Ok(false);
    }
    let chunk = data.split_to(granted.min(data.len()));
    let last = data.is_empty();
    let end = last && *end;
    writer.send_data(chunk, end).or_err(ErrorType::WriteError, "sending the request body")?;
    if last {
        *pending = None;
    }
    Ok(end)
}

enum Event {
    /// The response header; true when it ended the stream.
    Header(ResponseHeader, bool),
    Data(Bytes),
    End(Option<http::HeaderMap>),
}

/// Where the response from the peer is.
enum Incoming {
    Header(ResponseFuture),
    Body(RecvStream),
}

impl Incoming {
    /// The next step of the response. Every read here is cancel-safe, so the request body may
    /// win the race at any point without losing a byte.
    async fn next(&mut self, upstream: &MeshStream) -> pingora::Result<Event> {
        match self {
            Incoming::Header(response) => {
                let response = response
                    .await
                    .map_err(|e| upstream.failure(e, ErrorType::H2Error, "reading the response header", true))?;
                let (parts, body) = response.into_parts();
                let end = body.is_end_stream();
                *self = Incoming::Body(body);
                Ok(Event::Header(ResponseHeader::from(parts), end))
            }
            Incoming::Body(body) => match body.data().await {
                Some(Ok(data)) => {
                    body.flow_control()
                        .release_capacity(data.len())
                        .map_err(|e| upstream.failure(e, ErrorType::ReadError, "reading the response body", false))?;
                    Ok(Event::Data(data))
                }
                Some(Err(e)) => Err(upstream.failure(e, ErrorType::ReadError, "reading the response body", false)),
                None => match body.trailers().await {
                    Ok(trailers) => Ok(Event::End(trailers)),
                    // A peer that ended its side in good order once it had answered has no
                    // trailers to send.
                    Err(e) if mesh_connector::ended_in_good_order(&e) => Ok(Event::End(None)),
                    Err(e) => Err(upstream.failure(e, ErrorType::ReadError, "reading the response trailers", false)),
                },
            },
        }
    }
}

/// The peer's response header as the app's protocol carries it; `finished` when the header
/// ended the response.
pub(super) fn downstream_header(
    session: &Session,
    mut header: ResponseHeader,
    finished: bool,
) -> pingora::Result<Box<ResponseHeader>> {
    single_content_length(&header)?;
    header.set_version(Version::HTTP_11);
    let head = session.req_header().method == http::Method::HEAD;
    let bodiless = head || matches!(header.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) || finished;
    // A 304's length is the representation's it stands for (RFC 9110 §8.6), as a HEAD's is.
    let length_without_body = !head && header.status != StatusCode::NOT_MODIFIED;
    if finished
        && length_without_body
        && header.headers.get(header::CONTENT_LENGTH).is_some_and(|l| l.as_bytes() != b"0")
    {
        return Err(Error::explain(ErrorType::InvalidHTTPHeader, "a response with a length and no body").into_up());
    }
    if !session.is_http2() && !bodiless && header.headers.get(header::CONTENT_LENGTH).is_none() {
        header.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(Box::new(header))
}

/// A response whose `Content-Length` values disagree (or are not numbers) would be framed one
/// way by this hop and another by the app's client: refused (RFC 9110 §8.6).
fn single_content_length(header: &ResponseHeader) -> pingora::Result<()> {
    let mut length = None;
    for value in header.headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let parsed =
                std::str::from_utf8(part).ok().filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            let Some(parsed) = parsed.and_then(|p| p.parse::<u64>().ok()) else {
                return Err(Error::explain(ErrorType::InvalidHTTPHeader, "Content-Length is not a number").into_up());
            };
            if length.is_some_and(|l| l != parsed) {
                return Err(Error::explain(ErrorType::InvalidHTTPHeader, "Content-Length values disagree").into_up());
            }
            length = Some(parsed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h1(path: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", path, None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn an_http1_request_becomes_http2_without_its_connection_headers() {
        let request = h1(
            b"/orders?id=7",
            &[
                ("host", "orders.shop:8080"),
                ("connection", "keep-alive, X-Private"),
                ("x-private", "for this hop"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "websocket"),
                ("te", "trailers"),
                ("x-kept", "yes"),
            ],
        );
        let request = to_h2(&request).unwrap();
        assert_eq!(request.version, Version::HTTP_2);
        assert_eq!(request.uri.to_string(), "https://orders.shop:8080/orders?id=7");
        for gone in ["host", "connection", "x-private", "keep-alive", "proxy-connection", "upgrade"] {
            assert!(request.headers.get(gone).is_none(), "{gone} crossed the hop");
        }
        assert_eq!(request.headers.get("te").unwrap(), "trailers");
        assert_eq!(request.headers.get("x-kept").unwrap(), "yes");

        let gzip = to_h2(&h1(b"/", &[("host", "a"), ("te", "gzip")])).unwrap();
        assert!(gzip.headers.get("te").is_none(), "HTTP/2 allows te only as trailers");
    }

    /// RFC 9113 §8.3.1: `host` may stand in for `:authority`; the peer sidecar gets it as
    /// `:authority` (without one the request could not be sent on: a 502 that blamed the peer).
    #[test]
    fn an_http2_request_with_host_in_place_of_its_authority_keeps_it() {
        let mut request = h1(b"/orders", &[("host", "orders.shop")]);
        request.set_version(Version::HTTP_2);
        let request = to_h2(&request).unwrap();
        assert_eq!(request.uri.to_string(), "https://orders.shop/orders");
        assert!(request.headers.get("host").is_none());
        let mut without = h1(b"/", &[]);
        without.set_version(Version::HTTP_2);
        assert_eq!(to_h2(&without).unwrap_err().esource(), &pingora::ErrorSource::Downstream, "no authority at all");
    }

    #[test]
    fn a_response_framed_two_ways_is_refused() {
        let response = |lengths: &[&str]| {
            let mut header = ResponseHeader::build(200, None).unwrap();
            for length in lengths {
                header.append_header("content-length", *length).unwrap();
            }
            single_content_length(&header)
        };
        assert!(response(&[]).is_ok());
        assert!(response(&["12"]).is_ok());
        assert!(response(&["12", "12"]).is_ok(), "the same length twice is one length");
        assert!(response(&["12, 12"]).is_ok());
        for ambiguous in [&["12", "13"][..], &["12, 13"], &["-1"], &["0x10"], &["12 13"], &[""], &["12,"]] {
            let e = response(ambiguous).unwrap_err();
            assert_eq!(e.esource(), &pingora::ErrorSource::Upstream, "{ambiguous:?}");
        }
    }

    #[test]
    fn requests_http2_cannot_carry_are_refused_as_the_callers_fault() {
        let no_host = to_h2(&h1(b"/", &[])).unwrap_err();
        let bad_host = to_h2(&h1(b"/", &[("host", "a b")])).unwrap_err();
        let not_utf8 = to_h2(&h1(b"/caf\xe9", &[("host", "a")])).unwrap_err();
        for e in [no_host, bad_host, not_utf8] {
            assert_eq!(e.esource(), &pingora::ErrorSource::Downstream, "{e}");
            assert_eq!(e.etype(), &ErrorType::InvalidHTTPHeader, "{e}");
        }
    }
}
