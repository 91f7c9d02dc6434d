//! One request from the local app to a peer sidecar: the app's HTTP/1.1 or HTTP/2 request
//! becomes an HTTP/2 stream on a connection of [`super::mesh_connector`], and the answer comes
//! back the way the app spoke. The request body and the response travel at the same time, so
//! streaming gRPC works in both directions; trailers pass to HTTP/2 callers.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v2::client::Http2Session;
use pingora::protocols::http::v2::write_body;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

/// Headers that describe one HTTP/1.1 connection and are forbidden in HTTP/2 (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Turns the app's request into an HTTP/2 request: `:authority` from the absolute-form target
/// or `Host`, no connection-specific headers (nor those the `Connection` header names), and
/// `te` only as `trailers`.
pub fn to_h2(request: &mut RequestHeader) -> pingora::Result<()> {
    if !request.raw_path_is_utf8() {
        return Err(Error::explain(ErrorType::InvalidHTTPHeader, "a request target that is not UTF-8 cannot travel over HTTP/2").into_down());
    }
    if request.version != Version::HTTP_2 {
        let named: Vec<HeaderName> = request
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named.iter().chain(CONNECTION_SPECIFIC.iter()) {
            request.remove_header(name);
        }
        if request.headers.get(header::TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
            request.remove_header(&header::TE);
        }
        if request.uri.authority().is_none() {
            let host = request
                .remove_header(&header::HOST)
                .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no Host header").into_down())?;
            let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
            let uri = http::Uri::builder()
                .scheme("https")
                .authority(host.as_bytes())
                .path_and_query(path)
                .build()
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "Host is not an authority").into_down())?;
            request.set_uri(uri);
        } else {
            request.remove_header(&header::HOST);
        }
    }
    request.set_version(Version::HTTP_2);
    Ok(())
}

/// Sends `request` (already HTTP/2, see [`to_h2`]) and its body on `upstream` and writes the
/// response to the app. An error says whose side failed (`esource`), which decides the status
/// of the error response, when one can still be written.
pub async fn exchange(session: &mut Session, upstream: &mut Http2Session, request: RequestHeader) -> pingora::Result<()> {
    let mut request_done = session.is_body_empty() && session.is_body_done();
    upstream.write_request_header(Box::new(request), request_done).map_err(Error::into_up)?;
    let mut body_writer = upstream.take_request_body_writer();
    let mut header_seen = false;
    loop {
        // Only the reads race; each write happens once its read has won, with both sides free.
        tokio::select! {
            chunk = session.read_request_body(), if !request_done => {
                let chunk = chunk.map_err(Error::into_down)?;
                let Some(writer) = body_writer.as_mut() else {
                    return Err(Error::explain(ErrorType::InternalError, "request body without a stream to send it on"));
                };
                request_done = chunk.is_none();
                write_body(writer, chunk.unwrap_or_default(), request_done, None).await.map_err(Error::into_up)?;
            }
            event = next_event(upstream, header_seen) => match event? {
                Event::Header => {
                    header_seen = true;
                    let header = downstream_header(session, upstream)?;
                    session.write_response_header(header, false).await.map_err(Error::into_down)?;
                }
                Event::Data(data) => session.write_response_body(Some(data), false).await.map_err(Error::into_down)?,
                Event::End(trailers) => {
                    match trailers {
                        Some(trailers) if session.is_http2() => {
                            session.write_response_trailers(trailers).await.map_err(Error::into_down)?
                        }
                        _ => session.write_response_body(Some(Bytes::new()), true).await.map_err(Error::into_down)?,
                    }
                    // Whatever the app had not sent yet is no longer wanted (RFC 9113 §8.1).
                    return Ok(());
                }
            }
        }
    }
}

enum Event {
    Header,
    Data(Bytes),
    End(Option<http::HeaderMap>),
}

/// The next step of the response. Every read here is cancel-safe, so the request body may win
/// the race at any point without losing a byte.
async fn next_event(upstream: &mut Http2Session, header_seen: bool) -> pingora::Result<Event> {
    if !header_seen {
        upstream.read_response_header().await.map_err(Error::into_up)?;
        return Ok(Event::Header);
    }
    match upstream.read_response_body().await.map_err(Error::into_up)? {
        Some(data) => Ok(Event::Data(data)),
        None => Ok(Event::End(upstream.read_trailers().await.map_err(Error::into_up)?)),
    }
}

/// The peer's response header as the app's protocol carries it.
fn downstream_header(session: &Session, upstream: &Http2Session) -> pingora::Result<Box<ResponseHeader>> {
    let mut header = Box::new(
        upstream
            .response_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header").into_up())?
            .clone(),
    );
    header.set_version(Version::HTTP_11);
    let bodiless = session.req_header().method == http::Method::HEAD
        || matches!(header.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if !session.is_http2() && !bodiless && header.headers.get(header::CONTENT_LENGTH).is_none() {
        header.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(header)
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
        let mut request = h1(
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
        to_h2(&mut request).unwrap();
        assert_eq!(request.version, Version::HTTP_2);
        assert_eq!(request.uri.to_string(), "https://orders.shop:8080/orders?id=7");
        for gone in ["host", "connection", "x-private", "keep-alive", "proxy-connection", "upgrade"] {
            assert!(request.headers.get(gone).is_none(), "{gone} crossed the hop");
        }
        assert_eq!(request.headers.get("te").unwrap(), "trailers");
        assert_eq!(request.headers.get("x-kept").unwrap(), "yes");

        let mut gzip = h1(b"/", &[("host", "a"), ("te", "gzip")]);
        to_h2(&mut gzip).unwrap();
        assert!(gzip.headers.get("te").is_none(), "HTTP/2 allows te only as trailers");
    }

    #[test]
    fn requests_http2_cannot_carry_are_refused_as_the_callers_fault() {
        let no_host = to_h2(&mut h1(b"/", &[])).unwrap_err();
        let bad_host = to_h2(&mut h1(b"/", &[("host", "a b")])).unwrap_err();
        let not_utf8 = to_h2(&mut h1(b"/caf\xe9", &[("host", "a")])).unwrap_err();
        for e in [no_host, bad_host, not_utf8] {
            assert_eq!(e.esource(), &pingora::ErrorSource::Downstream, "{e}");
            assert_eq!(e.etype(), &ErrorType::InvalidHTTPHeader, "{e}");
        }
    }
}
