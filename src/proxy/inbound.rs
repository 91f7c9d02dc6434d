//! Inbound: requests from other workloads (mutual TLS, or plaintext in PERMISSIVE mode) to the
//! local app. The order of checks is SPEC section 5; each step fails with an [`ErrorKind`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::Error;

use super::record::{self, RequestCtx};
use super::respond::{self, ErrorKind};
use super::{RequestId, ORIG_PROTO_HEADER, REQUEST_ID_HEADER, XFCC_HEADER};
use crate::config::AppProtocol;
use crate::telemetry::Telemetry;
use crate::tls::PeerIdentity;

/// Limits applied before any policy, as Envoy's and nginx's defaults do.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { max_uri_bytes: 8192, max_header_bytes: 65536 }
    }
}

pub struct Inbound {
    app: SocketAddr,
    app_protocol: AppProtocol,
    limits: RequestLimits,
    telemetry: Arc<Telemetry>,
}

pub struct InboundCtx {
    request: RequestCtx,
    app_h2: bool,
}

impl Inbound {
    pub fn new(app: SocketAddr, app_protocol: AppProtocol, telemetry: Arc<Telemetry>) -> Self {
        Inbound { app, app_protocol, limits: RequestLimits::default(), telemetry }
    }
}

/// The verified caller of this connection, if it came over mutual TLS.
fn peer_identity(session: &Session) -> Option<&PeerIdentity> {
    session.digest()?.ssl_digest.as_ref()?.extension.get::<PeerIdentity>()
}

fn check_limits(req: &RequestHeader, limits: &RequestLimits) -> Result<(), Box<Error>> {
    if req.raw_path().len() > limits.max_uri_bytes {
        return Err(ErrorKind::UriTooLong.fail("request target over maxUriBytes"));
    }
    let header_bytes: usize = req.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ErrorKind::HeadersTooLarge.fail("request headers over maxHeaderBytes"));
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Inbound {
    type CTX = InboundCtx;

    fn new_ctx(&self) -> InboundCtx {
        InboundCtx { request: RequestCtx::new(), app_h2: false }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut InboundCtx) -> pingora::Result<bool> {
        let req = session.req_header();
        // A request id from a meshed peer is kept, so one id follows the request end to end.
        ctx.request.id = RequestId::from_header(req.headers.get(REQUEST_ID_HEADER));
        // The hop between sidecars is always HTTP/2; the header says whether the caller spoke
        // HTTP/1.1, which is then what the app gets.
        ctx.app_h2 = match self.app_protocol {
            AppProtocol::Auto => session.is_http2() && !req.headers.contains_key(ORIG_PROTO_HEADER),
            AppProtocol::Http1 => false,
            AppProtocol::Http2 => true,
        };

        // 2. HTTP parsing and limits (malformed framing is refused by pingora's parser).
        check_limits(req, &self.limits)?;
        // 3. authentication, 4. authorisation, 5. rate limits and 6. input validation run here,
        //    in that order, once the policy engine provides them.
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut InboundCtx) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.app, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        if ctx.app_h2 {
            peer.options.alpn = ALPN::H2; // h2c with prior knowledge, as gRPC servers expect
            peer.group_key = 2;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut InboundCtx,
    ) -> pingora::Result<()> {
        // Only this sidecar may say who the caller is.
        upstream.remove_header(XFCC_HEADER);
        upstream.remove_header(ORIG_PROTO_HEADER);
        if let Some(peer) = peer_identity(session) {
            upstream.insert_header(XFCC_HEADER, peer.xfcc.clone())?;
        }
        upstream.insert_header(REQUEST_ID_HEADER, ctx.request.id.header_value())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut InboundCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The app is local: a refused connection will not succeed on a second try.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut InboundCtx) -> FailToProxy {
        fail(session, e, &mut ctx.request).await
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &InboundCtx, e: &Error) -> bool {
        is_decision(e)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut InboundCtx) {
        let principal = peer_identity(session).map(|p| p.id.as_str()).unwrap_or("");
        record::finish(&self.telemetry, "inbound", session, principal, &ctx.request);
    }
}

/// A refusal the pipeline decided on is reported by metrics and events, not as an error log.
pub(super) fn is_decision(e: &Error) -> bool {
    matches!(e.etype(), pingora::ErrorType::HTTPStatus(code) if *code < 500)
}

/// Answers a failed request with the JSON error body; shared by both directions.
pub(super) async fn fail(session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
    let Some(kind) = ErrorKind::classify(e) else {
        return FailToProxy { error_code: 0, can_reuse_downstream: false };
    };
    if kind.status() < 500 {
        ctx.decision = "deny";
    } else {
        tracing::debug!(error = %e, request_id = ctx.id.as_str(), "request failed");
    }
    if let Err(write_error) = respond::write(session, kind, &ctx.id).await {
        tracing::debug!(error = %write_error, "could not send the error response");
    }
    FailToProxy { error_code: kind.status(), can_reuse_downstream: false }
}
