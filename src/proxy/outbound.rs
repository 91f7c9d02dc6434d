//! Outbound: plaintext requests from the local app to other workloads, sent on over mutual TLS.
//! The destination is the original destination of a redirected connection, else the request's
//! authority; the server must prove a SPIFFE ID of the trust domain, and exactly the expected
//! one when the destination's identity is known.
//!
//! pingora's rustls connector makes and pools the connections (HTTP/2, one connection carries
//! many requests), verifying the chain against the trust bundle; it cannot check a URI SAN. The
//! identity check therefore runs on every request, in `connected_to_upstream`, against the
//! fingerprint of the certificate the connection presented (see [`super::identity_check`]).

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::{Digest, ALPN};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};

use super::identity_check::PeerIdentities;
use super::inbound::{fail, is_decision};
use super::record::{self, RequestCtx};
use super::respond::ErrorKind;
use super::{RequestId, ORIG_PROTO_HEADER, REQUEST_ID_HEADER};
use crate::config::Destination;
use crate::identity::SpiffeId;
use crate::telemetry::Telemetry;
use crate::tls::TlsStore;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Concurrent requests on one pooled HTTP/2 connection to a peer sidecar.
const H2_STREAMS_PER_CONNECTION: usize = 100;
/// Sent as SNI only to satisfy the connector; servers are named by their SPIFFE ID.
const MESH_SNI: &str = "mesh.palisade.internal";

/// Where known authorities go and who must answer there.
pub struct OutboundRoutes {
    routes: Vec<(Box<str>, Route)>,
    any_identity: Route,
}

#[derive(Clone)]
struct Route {
    address: Option<SocketAddr>,
    expected: Option<SpiffeId>,
    /// Keeps connections verified for one identity out of another identity's pool.
    pool_key: u64,
}

impl Route {
    fn new(address: Option<SocketAddr>, expected: Option<SpiffeId>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ("palisade-mesh", expected.as_ref().map(SpiffeId::as_str)).hash(&mut hasher);
        Route { address, expected, pool_key: hasher.finish() }
    }
}

impl OutboundRoutes {
    pub fn new(destinations: &[Destination]) -> Self {
        let routes = destinations
            .iter()
            .map(|d| {
                let route = Route::new(d.address.map(|a| a.0), d.identity.as_ref().map(|i| i.0.clone()));
                (d.authority.to_ascii_lowercase().into_boxed_str(), route)
            })
            .collect();
        OutboundRoutes { routes, any_identity: Route::new(None, None) }
    }

    fn find(&self, authority: &str) -> Option<&Route> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        self.routes
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(authority))
            .or_else(|| self.routes.iter().find(|(known, _)| known.eq_ignore_ascii_case(host)))
            .map(|(_, route)| route)
    }
}

pub struct Outbound {
    routes: OutboundRoutes,
    own_listener: SocketAddr,
    tls: Arc<TlsStore>,
    identities: PeerIdentities,
    telemetry: Arc<Telemetry>,
}

pub struct OutboundCtx {
    request: RequestCtx,
    target: Option<(SocketAddr, Route)>,
}

impl Outbound {
    pub fn new(
        routes: OutboundRoutes,
        own_listener: SocketAddr,
        tls: Arc<TlsStore>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let identities = PeerIdentities::new(tls.clone(), telemetry.clone());
        Outbound { routes, own_listener, tls, identities, telemetry }
    }

    async fn resolve(&self, session: &Session) -> Result<(SocketAddr, Route), Box<Error>> {
        let req = session.req_header();
        let authority = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()));
        let route = authority.and_then(|a| self.routes.find(a)).unwrap_or(&self.routes.any_identity);
        if let Some(address) = route.address {
            return Ok((address, route.clone()));
        }
        let socket = session.digest().and_then(|d| d.socket_digest.as_ref());
        let redirected = socket.and_then(|s| {
            let original = s.original_dst()?.as_inet()?;
            (Some(original) != s.local_addr().and_then(|l| l.as_inet())).then_some(*original)
        });
        if let Some(original) = redirected {
            return Ok((original, route.clone()));
        }
        let authority = authority.ok_or_else(|| ErrorKind::InvalidRequest.fail("no authority to route by"))?;
        let address = match authority.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => resolve_name(authority).await?,
        };
        if address == self.own_listener {
            return Err(ErrorKind::InvalidRequest.fail("request addressed to the outbound listener itself"));
        }
        Ok((address, route.clone()))
    }
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

    fn new_ctx(&self) -> OutboundCtx {
        OutboundCtx { request: RequestCtx::new(), target: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut OutboundCtx) -> pingora::Result<bool> {
        ctx.request.id = RequestId::from_header(session.req_header().headers.get(REQUEST_ID_HEADER));
        ctx.target = Some(self.resolve(session).await?);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut OutboundCtx) -> pingora::Result<Box<HttpPeer>> {
        let (address, route) = ctx.target.as_ref().ok_or_else(|| ErrorKind::Internal.fail("no route"))?;
        let tls = self.tls.current();
        let mut peer = HttpPeer::new(*address, true, MESH_SNI.to_string());
        peer.client_cert_key = Some(tls.upstream_cert.clone());
        peer.options.ca = Some(tls.upstream_ca.clone());
        // The chain is checked against the bundle here; the name is the SPIFFE ID, checked below.
        peer.options.verify_cert = true;
        peer.options.verify_hostname = false;
        peer.options.alpn = ALPN::H2;
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.total_connection_timeout = Some(CONNECT_TIMEOUT);
        peer.group_key = route.pool_key;
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        digest: Option<&Digest>,
        ctx: &mut OutboundCtx,
    ) -> pingora::Result<()> {
        let (address, route) = ctx.target.as_ref().ok_or_else(|| ErrorKind::Internal.fail("no route"))?;
        let fingerprint = digest.and_then(|d| d.ssl_digest.as_ref()).map(|s| s.cert_digest.as_slice());
        self.identities.check(*address, fingerprint, route.expected.as_ref(), reused).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut OutboundCtx,
    ) -> pingora::Result<()> {
        if !session.is_http2() {
            upstream.insert_header(ORIG_PROTO_HEADER, "HTTP/1.1")?;
        }
        upstream.insert_header(REQUEST_ID_HEADER, ctx.request.id.header_value())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut OutboundCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        use ErrorType::*;
        if matches!(e.etype(), TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup) {
            if let Some((address, route)) = &ctx.target {
                self.identities.record_failure(*address, route.expected.as_ref(), &e.to_string());
            }
        }
        // A server that failed verification fails it again; a refused port stays refused.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut OutboundCtx) -> FailToProxy {
        fail(session, e, &mut ctx.request).await
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &OutboundCtx, e: &Error) -> bool {
        is_decision(e)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut OutboundCtx) {
        record::finish(&self.telemetry, "outbound", session, "", &ctx.request);
    }
}
