//! Outbound: plaintext requests from the local app to other workloads, sent on over mutual TLS.
//! The destination is the original destination of a redirected connection, else the request's
//! authority; the server must prove a SPIFFE ID of the trust domain, and exactly the expected
//! one when the destination's identity is known (see [`super::mesh_connector`]).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use opentelemetry::trace::SpanKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};

use super::mesh_connector::{Connectors, MeshConnector};
use super::record::{self, RequestCtx};
use super::respond::{self, fail, ErrorKind};
use super::{forward, upgrade};
use super::{RequestId, ORIG_PROTO_HEADER, REQUEST_ID_HEADER};
use crate::config::{Destination, IpBlock, PinnedAddresses};
use crate::identity::SpiffeId;
use crate::policy::Refusal;
use crate::telemetry::Telemetry;
use crate::tls::TlsStore;

/// A configured destination: who must answer, and (when its address is fixed) its connector.
struct Route {
    /// The authority split once, as [`crate::config::split_authority`] reads it: the host
    /// without a final dot, and the port when one is named.
    host: Box<str>,
    port: Option<Box<str>>,
    expected: Option<SpiffeId>,
    connector: Option<Arc<MeshConnector>>,
}

pub struct Outbound {
    routes: Vec<Route>,
    /// The identities destinations pin to their addresses.
    pinned: PinnedAddresses,
    connectors: Connectors,
    own_listener: SocketAddr,
    /// Destinations forwarded in plaintext (`outbound.passthrough`).
    passthrough: Vec<IpBlock>,
    telemetry: Arc<Telemetry>,
    inflight: Arc<super::Inflight>,
    caller_timeouts: super::CallerTimeouts,
    failures: super::respond::FailureLog,
}

pub struct OutboundCtx {
    request: RequestCtx,
    connector: Option<Arc<MeshConnector>>,
    /// A destination outside the mesh the configuration lets the app reach in plaintext.
    passthrough: Option<SocketAddr>,
    /// The request got as far as choosing where it goes.
    routed: bool,
    /// The `destination` label, once known: the SPIFFE ID the peer proved, or the authority of
    /// a passthrough destination (see [`Outbound::destination`] for the rest).
    destination: &'static str,
}

/// Where a request goes: to a peer sidecar over mutual TLS, or (configured) as it is.
enum Next {
    Mesh(Arc<MeshConnector>),
    Passthrough(SocketAddr),
}

impl Outbound {
    pub fn new(
        destinations: &[Destination],
        passthrough: &[IpBlock],
        own_listener: SocketAddr,
        tls: Arc<TlsStore>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let connectors = Connectors::new(tls, telemetry.clone());
        let pinned = PinnedAddresses::new(destinations);
        let routes = destinations
            .iter()
            .map(|d| {
                // An entry that names no identity but an address another entry pins is held to
                // that identity, as the address itself is (an alias is no way around a pin).
                let pinned_there = d.address.and_then(|a| pinned.at(a.0)).cloned();
                let expected = d.identity.as_ref().map(|i| i.0.clone()).or(pinned_there);
                let (host, port) = crate::config::split_authority(&d.authority);
                Route {
                    host: host.into(),
                    port: port.map(Into::into),
                    connector: d.address.map(|a| connectors.make(a.0, expected.clone())),
                    expected,
                }
            })
            .collect();
        let inflight = super::Inflight::unlimited();
        let caller_timeouts = super::CallerTimeouts::default_uncounted();
        Outbound {
            routes,
            pinned,
            connectors,
            own_listener,
            passthrough: passthrough.to_vec(),
            telemetry,
            inflight,
            caller_timeouts,
            failures: super::respond::FailureLog::new("outbound"),
        }
    }

    /// Sheds requests past `inflight`'s limit (503).
    pub fn shedding(mut self, inflight: Arc<super::Inflight>) -> Self {
        self.inflight = inflight;
        self
    }

    /// The `destination` label of a finished request: the SPIFFE ID its peer proved; when no
    /// peer proved one (the connection failed, or the peer was refused), the identity expected
    /// there, else the authority the request was addressed to; empty when the request was
    /// answered before it was routed (malformed, shed). Bounded: see
    /// [`crate::telemetry::Destinations`].
    fn destination(&self, session: &Session, ctx: &OutboundCtx) -> &'static str {
        if !ctx.destination.is_empty() || !ctx.routed {
            return ctx.destination;
        }
        let destinations = &self.telemetry.requests.destinations;
        match ctx.connector.as_ref().and_then(|c| c.expected()) {
            Some(expected) => destinations.label_identity(expected.as_str()),
            None => destinations.label(super::request_authority(session.req_header()).unwrap_or("")),
        }
    }

    /// Fails requests whose body stalls (408) or whose answer goes unread past their timeouts.
    pub fn caller_timeouts(mut self, caller_timeouts: super::CallerTimeouts) -> Self {
        self.caller_timeouts = caller_timeouts;
        self
    }

    /// The destination named `host:port`, else the one named `host` alone (any port's).
    fn route(&self, authority: &str) -> Option<&Route> {
        let (host, port) = crate::config::split_authority(authority);
        let named = |r: &&Route, port: Option<&str>| {
            crate::config::same_host_and_port((&r.host, r.port.as_deref()), (host, port))
        };
        self.routes.iter().find(|r| named(r, port)).or_else(|| self.routes.iter().find(|r| named(r, None)))
    }

    /// The request as the peer sidecar gets it: HTTP/2 first (so the app's `Connection` header
    /// cannot name the sidecar's own headers away), or HTTP/1.1 for an upgrade (see
    /// [`upgrade::to_h1`]), then the sidecar's headers.
    fn mesh_request(
        &self,
        session: &Session,
        ctx: &OutboundCtx,
        upgrade: bool,
    ) -> pingora::Result<http::request::Parts> {
        const ORIG_PROTO: HeaderName = HeaderName::from_static(ORIG_PROTO_HEADER);
        const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
        let mut request = match upgrade {
            true => upgrade::to_h1(session.req_header())?,
            false => forward::to_h2(session.req_header())?,
        };
        // Only this sidecar may say what the app spoke, and only when the hop changes it.
        match !upgrade && !session.is_http2() {
            true => request.headers.insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1")),
            false => request.headers.remove(ORIG_PROTO),
        };
        request.headers.insert(REQUEST_ID, ctx.request.id.header_value());
        record::propagate(&mut request, &ctx.request)?;
        Ok(request)
    }

    async fn resolve(&self, session: &Session) -> Result<Next, Box<Error>> {
        let authority = super::request_authority(session.req_header());
        let route = authority.and_then(|a| self.route(a));
        if let Some(connector) = route.and_then(|r| r.connector.as_ref()) {
            return Ok(Next::Mesh(connector.clone()));
        }
        let expected = route.and_then(|r| r.expected.as_ref());
        let socket = session.digest().and_then(|d| d.socket_digest.as_ref());
        let redirected = socket.and_then(|s| crate::serve::redirected_to(s));
        let target = match redirected {
            Some(original) => original,
            None => {
                let authority = authority.ok_or_else(|| ErrorKind::InvalidRequest.fail("no authority to route by"))?;
                match authority.parse::<SocketAddr>() {
                    Ok(address) => address,
                    Err(_) => resolve_name(authority).await?,
                }
            }
        };
        // A listed destination reached by its address rather than a name that pins an identity
        // (an IP, another name, an iptables redirect) is held to the identity pinned there, as a
        // TCP tunnel to it is.
        if let Some(pinned) = self.pinned.at(target).filter(|_| expected.is_none()) {
            return Ok(Next::Mesh(self.connectors.get(target, Some(pinned))));
        }
        // Any spelling of this host's address for the listener (either family's, IPv4-mapped, the
        // wildcard, which connects to this host) would come back round to the listener; so would
        // any address of this host when the listener is on the wildcard (its pod address inside a
        // passthrough block sent one request round thousands of times).
        let own = self.own_listener;
        let ip = target.ip().to_canonical();
        let own_ip = || {
            ip == own.ip()
                || Some(ip) == crate::lifecycle::family_counterpart(own.ip())
                || ip.is_unspecified()
                || (own.ip().is_unspecified() && (ip.is_loopback() || crate::serve::holds_address(ip)))
        };
        if target.port() == own.port() && own_ip() {
            return Err(ErrorKind::InvalidRequest.fail("request addressed to the outbound listener itself"));
        }
        // A destination with an expected identity is always a mesh one.
        if expected.is_none() && self.passthrough.iter().any(|b| b.contains(target.ip().to_canonical())) {
            return Ok(Next::Passthrough(target));
        }
        Ok(Next::Mesh(self.connectors.get(target, expected)))
    }
}

/// pingora's HTTP/2 server limit (`SETTINGS_MAX_HEADER_LIST_SIZE`), which the peer sidecar's
/// inbound listener announces.
const PEER_MAX_HEADER_LIST: usize = 64 * 1024;

/// The size RFC 9113 §6.5.2 counts: each field's name and value plus 32, pseudo-headers
/// included (`:path` and `:authority` are the long ones).
fn header_list_size(req: &RequestHeader) -> usize {
    let fields: usize = req.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
    fields + req.raw_path().len() + req.method.as_str().len() + 4 * 32 + 64
}

async fn resolve_name(authority: &str) -> Result<SocketAddr, Box<Error>> {
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    tokio::net::lookup_host(with_port)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "destination name does not resolve"))
}

#[async_trait]
impl ProxyHttp for Outbound {
    type CTX = OutboundCtx;

    /// None: pingora's default adds a response-compression module that stays disabled yet
    /// runs on every request; a sidecar forwards bodies as they are.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Bounded: see [`super::request_summary`].
    fn request_summary(&self, session: &Session, _ctx: &OutboundCtx) -> String {
        super::request_summary(session)
    }

    /// The parser accepted the head: from here on, our phases answer (see [`super::parse_guard`]).
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut OutboundCtx) -> pingora::Result<()> {
        super::parse_guard::request_started(session);
        Ok(())
    }

    fn new_ctx(&self) -> OutboundCtx {
        OutboundCtx { request: RequestCtx::new(), connector: None, passthrough: None, routed: false, destination: "" }
    }

    /// The whole exchange happens here: the request goes to the peer sidecar on the connector's
    /// own HTTP/2 connections (see [`super::mesh_connector`]), not through pingora's upstream
    /// phases, and `true` tells pingora the response has been written.
    async fn request_filter(&self, session: &mut Session, ctx: &mut OutboundCtx) -> pingora::Result<bool> {
        record::start_span(&self.telemetry, SpanKind::Client, session, true, &mut ctx.request);
        self.caller_timeouts.start(session);
        ctx.request.id = RequestId::from_header(session.req_header().headers.get(REQUEST_ID_HEADER));
        if !respond::admit(session, &self.inflight, &mut ctx.request).await {
            return Ok(true);
        }
        super::trim_padded_values(session);
        if let Some(why) = super::malformed_head(session) {
            respond::refuse(session, Refusal::Malformed(why), &mut ctx.request).await;
            return Ok(true);
        }
        // The peer's HTTP/2 server takes a header list of at most 64 KiB and refuses a larger
        // one with a bare 431 of its own; refused here, the caller gets the JSON answer.
        if header_list_size(session.req_header()) > PEER_MAX_HEADER_LIST {
            respond::refuse(session, Refusal::HeadersTooLarge, &mut ctx.request).await;
            return Ok(true);
        }
        // HTTP/1.0 may leave Host out. A captured request's original destination names it then,
        // so the peer sidecar (HTTP/2 needs an authority) and a passthrough server (HTTP/1.1
        // needs a Host) get one, as Linkerd gives them.
        if super::request_authority(session.req_header()).is_none() {
            let socket = session.digest().and_then(|d| d.socket_digest.as_ref());
            if let Some(original) = socket.and_then(|s| crate::serve::redirected_to(s)) {
                let _ = session.req_header_mut().insert_header(http::header::HOST, original.to_string());
            }
        }
        ctx.routed = true;
        let connector = match self.resolve(session).await? {
            Next::Mesh(connector) => connector,
            Next::Passthrough(target) => {
                let destinations = &self.telemetry.requests.destinations;
                ctx.destination = match super::request_authority(session.req_header()) {
                    Some(authority) => destinations.label(authority),
                    None => destinations.label(&target.to_string()),
                };
                // pingora's own upstream phases forward it, in the app's protocol, as it is;
                // its retry buffer replays what was read first.
                if super::is_chunked_h1(session) {
                    session.enable_retry_buffering();
                    super::read_first_piece(session).await?;
                }
                ctx.passthrough = Some(target);
                return Ok(false);
            }
        };
        ctx.connector = Some(connector.clone());
        if upgrade::asked(session) {
            let request = self.mesh_request(session, ctx, true)?;
            let (peer, destination) = connector.connect_http1().await.map_err(Error::into_up)?;
            ctx.destination = destination;
            upgrade::exchange(session, peer, "the peer sidecar", request, &self.caller_timeouts, None).await?;
            return Ok(true);
        }
        let mut first = match super::is_chunked_h1(session) {
            true => Some(super::read_first_piece(session).await?),
            false => None,
        };
        let expects_continue = !session.is_http2()
            && session
                .req_header()
                .headers
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        // A pooled connection the peer is closing (GOAWAY), a stream it refused, or a reused
        // connection found dead: nothing of the request was processed, so a request without a
        // body goes once more on another connection, as pingora's own proxy would retry it.
        let mut retried = false;
        loop {
            let (mut upstream, reused) = connector.open_stream().await.map_err(Error::into_up)?;
            ctx.destination = upstream.destination();
            let request = self.mesh_request(session, ctx, false)?;
            let mut e = match forward::exchange(
                session,
                &mut upstream,
                request,
                expects_continue,
                first.take(),
                &self.caller_timeouts,
            )
            .await
            {
                Ok(grpc_status) => {
                    ctx.request.grpc_status = grpc_status;
                    return Ok(true);
                }
                Err(e) => e,
            };
            if retried || !(super::may_send_again(&mut e, reused, session) && session.is_body_empty()) {
                return Err(e);
            }
            upstream.mark_shutdown();
            retried = true;
        }
    }

    /// Only passthrough destinations get here; mesh requests are forwarded in request_filter.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut OutboundCtx) -> pingora::Result<Box<HttpPeer>> {
        let target = ctx.passthrough.ok_or_else(|| ErrorKind::Internal.fail("no passthrough destination"))?;
        let mut peer = HttpPeer::new(target, false, String::new());
        peer.options.connection_timeout = Some(std::time::Duration::from_secs(5));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut OutboundCtx,
    ) -> pingora::Result<()> {
        upstream.remove_header(ORIG_PROTO_HEADER);
        upstream.insert_header(REQUEST_ID_HEADER, ctx.request.id.header_value())?;
        record::propagate(upstream, &ctx.request)
    }

    /// A passthrough server's answer (mesh answers are written by `forward`).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        _ctx: &mut OutboundCtx,
    ) -> pingora::Result<()> {
        super::passed_answer(session, upstream);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut OutboundCtx) -> FailToProxy {
        self.caller_timeouts.count(session, e);
        fail(session, e, &mut ctx.request).await
    }

    fn suppress_error_log(&self, session: &Session, _ctx: &OutboundCtx, e: &Error) -> bool {
        self.failures.suppress(session, e)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut OutboundCtx) {
        ctx.request.failed_upstream = e.is_some_and(|e| e.esource() == &pingora::ErrorSource::Upstream);
        super::parse_guard::request_finished(session);
        let expected = ctx.connector.as_ref().and_then(|c| c.expected()).map(SpiffeId::as_str).unwrap_or("");
        let destination = self.destination(session, ctx);
        record::finish(&self.telemetry, "outbound", session, "", destination, expected, &mut ctx.request);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{same_authority, split_authority};

    /// Outside tester q1: `http://B.DEMO./` found no route and went out as plaintext to
    /// whatever the name resolved to (502 there, as it resolved to nothing).
    #[test]
    fn a_destination_is_found_whatever_its_case_and_a_final_dot() {
        for authority in ["b.demo", "B.DEMO", "b.demo.", "B.Demo.:80", "b.demo:80"] {
            let (host, port) = split_authority(authority);
            let found = same_authority("b.demo", host, port) || same_authority("b.demo", host, None);
            assert!(found, "{authority}");
        }
        let (host, port) = split_authority("b.demo.:8080");
        assert!(same_authority("b.demo:8080", host, port));
        // Ports are numbers: `080` is 80.
        assert!(same_authority("b.demo:80", "b.demo", Some("080")));
        assert!(!same_authority("b.demo:80", "b.demo", Some("8080")));
        assert!(!same_authority("b.demo:8080", host, Some("80")));
        for other in ["b.demo.evil", "xb.demo", "b.dem", "b.demo.."] {
            let (host, port) = split_authority(other);
            assert!(!same_authority("b.demo", host, port) && !same_authority("b.demo", host, None), "{other}");
        }
        assert_eq!(split_authority("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_authority("[::1]"), ("[::1]", None));
    }
}
