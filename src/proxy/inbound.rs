//! Inbound: requests from other workloads (mutual TLS, or plaintext in PERMISSIVE mode) to the
//! local app. The order of checks is SPEC section 5; each step fails with an [`ErrorKind`].

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::trace::SpanKind;
use pingora::http::RequestHeader;
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::Error;

use super::app_pool::{self, AppPool};
use super::record::{self, RequestCtx};
use super::respond::{fail, is_decision, ErrorKind};
use super::{RequestId, ORIG_PROTO_HEADER, REQUEST_ID_HEADER, XFCC_HEADER};
use crate::config::AppProtocol;
use crate::policy::{match_form, normalize, InputLimits, PolicyStore, RequestView};
use crate::telemetry::{DeniedRequest, SecurityEvent, Telemetry};
use crate::tls::PeerIdentity;

pub struct Inbound {
    app: SocketAddr,
    app_protocol: AppProtocol,
    app_timeout: Option<Duration>,
    app_pool: AppPool,
    policy: Arc<PolicyStore>,
    telemetry: Arc<Telemetry>,
}

pub struct InboundCtx {
    request: RequestCtx,
    app_h2: bool,
    body_limit: Option<u64>,
    body_seen: u64,
}

impl Inbound {
    pub fn new(
        app: SocketAddr,
        app_protocol: AppProtocol,
        app_timeout: Option<Duration>,
        policy: Arc<PolicyStore>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let app_pool = AppPool::new(app, app_timeout);
        Inbound { app, app_protocol, app_timeout, app_pool, policy, telemetry }
    }

    /// The port the caller addressed: the original destination behind an iptables REDIRECT,
    /// else the app's port.
    fn destination_port(&self, session: &Session) -> u16 {
        session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| {
                let original = s.original_dst()?.as_inet()?;
                (Some(original) != s.local_addr().and_then(|l| l.as_inet())).then_some(original.port())
            })
            .unwrap_or(self.app.port())
    }

    fn denied_event(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        status: u16,
        policy: &str,
        rule: &str,
        audit: bool,
        path: &str,
    ) {
        let req = session.req_header();
        let principal = peer_identity(session).map(|p| p.id.to_string());
        tracing::info!(status, policy, rule, audit, method = %req.method, path,
            principal = principal.as_deref().unwrap_or("-"), request_id = ctx.id.as_str(),
            "{}", if audit { "audit: request would be denied" } else { "request denied" });
        self.telemetry.events.emit(SecurityEvent::RequestDenied(DeniedRequest {
            status,
            policy: policy.to_string(),
            rule: rule.to_string(),
            audit,
            principal,
            source: session.client_addr().and_then(|a| a.as_inet()).copied(),
            method: req.method.to_string(),
            path: path.to_string(),
            request_id: ctx.id.as_str().to_string(),
            trace_id: ctx.trace_id(),
        }));
    }
}

impl InboundCtx {
    /// Counts body bytes as they arrive against maxBodyBytes: a body of unannounced length is
    /// refused (413) as it crosses the limit.
    fn count_body(&mut self, len: usize) -> pingora::Result<()> {
        self.body_seen += len as u64;
        match self.body_limit {
            Some(max) if self.body_seen > max => Err(ErrorKind::PayloadTooLarge.fail("body over maxBodyBytes")),
            _ => Ok(()),
        }
    }
}

/// What only this sidecar may tell the app: who the caller is (any `x-forwarded-client-cert`
/// from outside is dropped), the request id and the trace context.
fn add_sidecar_headers(session: &Session, upstream: &mut RequestHeader, ctx: &InboundCtx) -> pingora::Result<()> {
    upstream.remove_header(XFCC_HEADER);
    upstream.remove_header(ORIG_PROTO_HEADER);
    if let Some(peer) = peer_identity(session) {
        upstream.insert_header(XFCC_HEADER, peer.xfcc.clone())?;
    }
    upstream.insert_header(REQUEST_ID_HEADER, ctx.request.id.header_value())?;
    record::propagate(upstream, &ctx.request)
}

/// The verified caller of this connection, if it came over mutual TLS.
fn peer_identity(session: &Session) -> Option<&PeerIdentity> {
    session.digest()?.ssl_digest.as_ref()?.extension.get::<PeerIdentity>()
}

/// Step 2: sizes. Declared bodies are refused before a byte is forwarded; chunked ones as they
/// cross the limit (in `request_body_filter`).
fn check_limits(req: &RequestHeader, limits: &InputLimits) -> Result<(), Box<Error>> {
    // Only origin-form targets ("/path?query"): anything else is forwarded as written by pingora
    // while its parsed path is "/", so the policy and the app would see different paths.
    if req.raw_path().first() != Some(&b'/') {
        return Err(ErrorKind::InvalidRequest.fail("request target is not in origin form"));
    }
    // Methods are case-sensitive; "delete" would dodge a rule on DELETE yet reach frameworks
    // that upper-case it.
    if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(ErrorKind::InvalidRequest.fail("method is not upper case"));
    }
    if req.raw_path().len() > limits.max_uri_bytes {
        return Err(ErrorKind::UriTooLong.fail("request target over maxUriBytes"));
    }
    let header_bytes: usize = req.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ErrorKind::HeadersTooLarge.fail("request headers over maxHeaderBytes"));
    }
    if let Some(max) = limits.max_body_bytes {
        let declared = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(ErrorKind::PayloadTooLarge.fail("declared body over maxBodyBytes"));
        }
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Inbound {
    type CTX = InboundCtx;

    /// None: pingora's default adds a response-compression module that stays disabled yet
    /// runs on every request; a sidecar forwards bodies as they are.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> InboundCtx {
        InboundCtx { request: RequestCtx::new(), app_h2: false, body_limit: None, body_seen: 0 }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut InboundCtx) -> pingora::Result<bool> {
        record::start_span(&self.telemetry, SpanKind::Server, session, &mut ctx.request);
        let policy = self.policy.current();
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
        if super::has_conflicting_framing(session) {
            return Err(ErrorKind::InvalidRequest.fail("both Content-Length and Transfer-Encoding"));
        }
        check_limits(req, &policy.limits)?;
        ctx.body_limit = policy.limits.max_body_bytes;
        let normalized =
            normalize(req.uri.path()).map_err(|_| ErrorKind::InvalidRequest.fail("path cannot be normalised"))?;
        let view = RequestView {
            principal: peer_identity(session).map(|p| &p.id),
            source_ip: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()).map(canonical_ip),
            method: &req.method,
            path: match_form(&normalized),
            port: self.destination_port(session),
            headers: &req.headers,
        };
        // 3. Authentication (JWT) will run here.
        // 4. Authorisation.
        let mut audited = Vec::new();
        let authorized = policy.authorize(&view, |d| audited.push(d));
        for d in &audited {
            self.denied_event(session, &ctx.request, 403, &d.policy, &d.rule, true, view.path);
        }
        if let Err(denied) = authorized {
            ctx.request.decision = "deny";
            self.denied_event(session, &ctx.request, 403, &denied.policy, &denied.rule, false, view.path);
            ctx.request.decided_by = Some((denied.policy, denied.rule));
            return Err(ErrorKind::Forbidden.fail("denied by policy"));
        }
        // 5. Rate limits.
        if let Err(limited) = policy.rate_limit(&view) {
            ctx.request.decision = "rate_limited";
            self.denied_event(session, &ctx.request, 429, &limited.policy, &limited.limit, false, view.path);
            ctx.request.decided_by = Some((limited.policy.clone(), limited.limit.clone()));
            ctx.request.limited = Some(limited);
            return Err(ErrorKind::RateLimited.fail("rate limited"));
        }
        // 6. Input validation (WAF) will run here.

        // The app sees the path the policy judged, at the authority the caller named (an
        // HTTP/2 caller's only Host).
        if let Cow::Owned(path) = normalized {
            let uri = &session.req_header().uri;
            let target = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = http::uri::Parts::default();
            parts.scheme = uri.scheme().cloned();
            parts.authority = uri.authority().cloned();
            parts.path_and_query =
                Some(target.parse().map_err(|_| ErrorKind::InvalidRequest.fail("bad request target"))?);
            let uri = http::Uri::from_parts(parts).map_err(|_| ErrorKind::InvalidRequest.fail("bad request target"))?;
            session.req_header_mut().set_uri(uri);
        }
        if AppPool::serves(session, ctx.app_h2) {
            let body = app_pool::held_body(session, |len| ctx.count_body(len)).await?;
            self.app_pool
                .forward(session, body, |session| {
                    let mut request = app_pool::app_request(session)?;
                    add_sidecar_headers(session, &mut request, ctx)?;
                    Ok(request)
                })
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut InboundCtx,
    ) -> pingora::Result<()> {
        match body {
            Some(chunk) => ctx.count_body(chunk.len()),
            None => Ok(()),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut InboundCtx) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.app, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout = self.app_timeout;
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
        add_sidecar_headers(session, upstream, ctx)
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
        record::finish(&self.telemetry, "inbound", session, principal, principal, &mut ctx.request);
    }
}

/// An IPv4 client on a dual-stack listener is an IPv4 client.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
