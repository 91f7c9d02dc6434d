//! Outbound: plaintext requests from the local app to other workloads, sent on over mutual TLS.
//! The destination is the original destination of a redirected connection, else the request's
//! authority; the server must prove a SPIFFE ID of the trust domain, and exactly the expected
//! one when the destination's identity is known.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::inbound::{fail, is_decision};
use super::record::{self, RequestCtx};
use super::respond::ErrorKind;
use super::{RequestId, ORIG_PROTO_HEADER, REQUEST_ID_HEADER};
use crate::config::Destination;
use crate::identity::{spiffe_id_from_der, CertIdentity, SpiffeId};
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::TlsStore;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Concurrent requests on one pooled HTTP/2 connection to a peer sidecar.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Where known authorities go and who must answer there.
pub struct OutboundRoutes {
    routes: Vec<(Box<str>, Route)>,
    any_identity: Arc<MeshConnector>,
}

#[derive(Clone)]
struct Route {
    address: Option<SocketAddr>,
    connector: Arc<MeshConnector>,
}

impl OutboundRoutes {
    pub fn new(
        destinations: &[Destination],
        tls: Arc<TlsStore>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let connector = |expected: Option<SpiffeId>| {
            Arc::new(MeshConnector::new(tls.clone(), expected, telemetry.clone()))
        };
        let routes = destinations
            .iter()
            .map(|d| {
                let route = Route {
                    address: d.address.map(|a| a.0),
                    connector: connector(d.identity.as_ref().map(|i| i.0.clone())),
                };
                (d.authority.to_ascii_lowercase().into_boxed_str(), route)
            })
            .collect();
        OutboundRoutes {
            routes,
            any_identity: connector(None),
        }
    }

    fn find(&self, authority: &str) -> Option<&Route> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        self.routes
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(authority))
            .or_else(|| {
                self.routes
                    .iter()
                    .find(|(known, _)| known.eq_ignore_ascii_case(host))
            })
            .map(|(_, route)| route)
    }
}

pub struct Outbound {
    routes: OutboundRoutes,
    own_listener: SocketAddr,
    telemetry: Arc<Telemetry>,
}

pub struct OutboundCtx {
    request: RequestCtx,
    target: Option<(SocketAddr, Arc<MeshConnector>)>,
}

impl Outbound {
    pub fn new(
        routes: OutboundRoutes,
        own_listener: SocketAddr,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Outbound {
            routes,
            own_listener,
            telemetry,
        }
    }

    async fn resolve(
        &self,
        session: &Session,
    ) -> Result<(SocketAddr, Arc<MeshConnector>), Box<Error>> {
        let req = session.req_header();
        let authority = req.uri.authority().map(|a| a.as_str()).or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let route = authority.and_then(|a| self.routes.find(a));
        let connector =
            route.map_or_else(|| self.routes.any_identity.clone(), |r| r.connector.clone());
        if let Some(address) = route.and_then(|r| r.address) {
            return Ok((address, connector));
        }
        let socket = session.digest().and_then(|d| d.socket_digest.as_ref());
        let redirected = socket.and_then(|s| {
            let original = s.original_dst()?.as_inet()?;
            (Some(original) != s.local_addr().and_then(|l| l.as_inet())).then_some(*original)
        });
        if let Some(original) = redirected {
            return Ok((original, connector));
        }
        let authority =
            authority.ok_or_else(|| ErrorKind::InvalidRequest.fail("no authority to route by"))?;
        let address = match authority.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => resolve_name(authority).await?,
        };
        if address == self.own_listener {
            return Err(
                ErrorKind::InvalidRequest.fail("request addressed to the outbound listener itself")
            );
        }
        Ok((address, connector))
    }
}

async fn resolve_name(authority: &str) -> Result<SocketAddr, Box<Error>> {
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    tokio::net::lookup_host(with_port)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                "destination name does not resolve",
            )
        })
}

#[async_trait]
impl ProxyHttp for Outbound {
    type CTX = OutboundCtx;

    fn new_ctx(&self) -> OutboundCtx {
        OutboundCtx {
            request: RequestCtx::new(),
            target: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut OutboundCtx,
    ) -> pingora::Result<bool> {
        ctx.request.id =
            RequestId::from_header(session.req_header().headers.get(REQUEST_ID_HEADER));
        ctx.target = Some(self.resolve(session).await?);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut OutboundCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let (address, connector) = ctx
            .target
            .clone()
            .ok_or_else(|| ErrorKind::Internal.fail("no route"))?;
        let mut peer = HttpPeer::new(address, false, String::new());
        // The TLS handshake happens in the connector; pingora sees a plaintext HTTP/2 peer.
        peer.group_key = connector.pool_key;
        peer.options.custom_l4 = Some(connector);
        peer.options.alpn = ALPN::H2;
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        Ok(Box::new(peer))
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
        _ctx: &mut OutboundCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // A server that failed verification fails it again; a refused port stays refused.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut OutboundCtx,
    ) -> FailToProxy {
        fail(session, e, &mut ctx.request).await
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &OutboundCtx, e: &Error) -> bool {
        is_decision(e)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut OutboundCtx) {
        record::finish(&self.telemetry, "outbound", session, "", &ctx.request);
    }
}

/// Opens a TCP connection and runs the mutual TLS handshake with the workload's current
/// credentials, then checks the server's identity. pingora's rustls connector can only check
/// DNS names, so the handshake happens here and pingora pools the resulting stream.
pub struct MeshConnector {
    tls: Arc<TlsStore>,
    expected: Option<SpiffeId>,
    telemetry: Arc<Telemetry>,
    /// Keeps connections verified for one identity out of another identity's pool.
    pool_key: u64,
}

impl std::fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnector")
            .field("expected", &self.expected)
            .finish()
    }
}

impl MeshConnector {
    pub fn new(tls: Arc<TlsStore>, expected: Option<SpiffeId>, telemetry: Arc<Telemetry>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ("palisade-mesh", expected.as_ref().map(SpiffeId::as_str)).hash(&mut hasher);
        MeshConnector {
            tls,
            expected,
            telemetry,
            pool_key: hasher.finish(),
        }
    }

    fn refuse(&self, peer: SocketAddr, reason: String) -> Box<Error> {
        self.telemetry
            .metrics
            .tls_handshakes
            .with_label_values(&["outbound", "failure"])
            .inc();
        tracing::warn!(%peer, %reason, "outbound TLS verification failed");
        self.telemetry.events.emit(SecurityEvent::TlsFailure {
            direction: "outbound",
            peer: Some(peer),
            expected: self.expected.as_ref().map(|e| e.to_string()),
            reason: reason.clone(),
        });
        Error::explain(ErrorType::TLSHandshakeFailure, reason)
    }
}

#[async_trait]
impl L4Connect for MeshConnector {
    async fn connect(&self, addr: &PingoraAddr) -> pingora::Result<L4Stream> {
        let addr = *addr
            .as_inet()
            .ok_or_else(|| Error::explain(ErrorType::ConnectError, "not an IP address"))?;
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(Error::because(
                    ErrorType::ConnectRefused,
                    format!("connecting to {addr}"),
                    e,
                ))
            }
            Ok(Err(e)) => {
                return Err(Error::because(
                    ErrorType::ConnectError,
                    format!("connecting to {addr}"),
                    e,
                ))
            }
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::ConnectTimedout,
                    format!("connecting to {addr}"),
                ))
            }
        };
        let _ = tcp.set_nodelay(true);
        let config = self.tls.current().client_config.clone();
        // SNI is off; the name only satisfies the API, the identity is checked below.
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(self.refuse(addr, format!("handshake with {addr} failed: {e}")))
            }
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::TLSHandshakeTimedout,
                    format!("TLS with {addr}"),
                ))
            }
        };
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| spiffe_id_from_der(c));
        match (&self.expected, presented) {
            (Some(expected), Some(CertIdentity::Spiffe(id))) if id == *expected => {}
            (None, Some(CertIdentity::Spiffe(_))) => {}
            (Some(expected), Some(CertIdentity::Spiffe(id))) => {
                return Err(self.refuse(addr, format!("{addr} presented {id}, expected {expected}")))
            }
            _ => return Err(self.refuse(addr, format!("{addr} presented no SPIFFE identity"))),
        }
        self.telemetry
            .metrics
            .tls_handshakes
            .with_label_values(&["outbound", "success"])
            .inc();
        Ok(VirtualSocketStream::new(Box::new(MeshTls(tls))).into())
    }
}

#[derive(Debug)]
struct MeshTls(tokio_rustls::client::TlsStream<TcpStream>);

impl VirtualSocket for MeshTls {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.0.get_ref().0.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for MeshTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
