//! The data path: the inbound and outbound proxies (pingora `ProxyHttp` implementations) and
//! the one place that turns failures into responses; [`crate::serve`] feeds them connections.
//!
//! Every listener of a sidecar runs on one tokio runtime: a request crosses no thread boundary
//! between accept, inbound, the app and back (pingora's own `Server` gives each service a runtime
//! of its own, which costs a cross-thread wake-up per hop).

mod app_pool;
mod forward;
mod inbound;
mod mesh_connector;
mod outbound;
mod record;
mod request_id;
mod respond;
mod shed;

pub use inbound::Inbound;
pub use outbound::Outbound;
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

/// Content-Length and Transfer-Encoding on one HTTP/1 request: the shape of request smuggling,
/// which SPEC section 5 answers with 400. pingora's parser drops the Content-Length before any
/// phase runs (the body is then read as chunked), so the parsed headers never show both; the
/// request as received does. Only requests that carry Transfer-Encoding are looked at again.
pub(crate) fn has_conflicting_framing(session: &pingora::proxy::Session) -> bool {
    if session.is_http2() || !session.req_header().headers.contains_key(http::header::TRANSFER_ENCODING) {
        return false;
    }
    let raw = session.as_downstream().to_h1_raw();
    raw.split(|&b| b == b'\n').any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
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
        Refusal(_) => ErrorType::TLSHandshakeFailure,
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

/// An IPv4 client on a dual-stack listener is an IPv4 client.
pub(crate) fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
