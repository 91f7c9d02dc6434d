//! Connections to other sidecars: TCP, then mutual TLS with the workload's current credentials
//! and the SPIFFE-aware verifier, then the server's identity checked against the expected one,
//! then HTTP/2; each connector keeps its own few connections and opens streams on them.
//!
//! pingora's rustls connector can only check DNS names, and its pools re-check every reused
//! connection's file descriptor against the peer address, which a TLS session held outside
//! pingora does not have. So the session lives here and pingora's HTTP/2 client runs directly
//! on it: no socket pair, no relay task, no `getpeername` per request. This verifies the
//! identity inside the handshake, so it holds when the destination is a load-balanced virtual
//! IP whose backends each have their own certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::connectors::http::v2::{handshake as h2_handshake, ConnectionRef, H2HandshakeSettings};
use pingora::protocols::http::v2::client::Http2Session;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::SpiffeId;
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::{connect, ConnectError, TlsStore};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connectors remembered for destinations that are not configured routes.
const MAX_DYNAMIC: usize = 4096;
/// Concurrent requests on one HTTP/2 connection to a peer sidecar.
const STREAMS_PER_CONNECTION: usize = 100;
/// A pooled connection whose peer vanished without a word (a node lost, a partition) is found
/// out by a PING left unanswered, instead of by the requests that would hang on it.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// One pooled connection and the credential generation it was made with.
struct Pooled {
    generation: u64,
    connection: ConnectionRef,
}

pub struct MeshConnector {
    target: SocketAddr,
    expected: Option<SpiffeId>,
    tls: Arc<TlsStore>,
    telemetry: Arc<Telemetry>,
    /// Held only to pick a connection, never across an await.
    pool: Mutex<Vec<Pooled>>,
    /// One connection attempt at a time per destination, so a burst of first requests shares
    /// one new connection instead of opening one each; it holds when the last attempt failed,
    /// so the requests that waited for it share its failure instead of each trying in turn.
    connecting: tokio::sync::Mutex<Option<Failure>>,
}

/// A failed connection attempt, as the requests that waited for it see it.
struct Failure {
    at: Instant,
    etype: ErrorType,
    reason: String,
}

impl std::fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnector").field("target", &self.target).field("expected", &self.expected).finish()
    }
}

impl MeshConnector {
    pub fn new(target: SocketAddr, expected: Option<SpiffeId>, tls: Arc<TlsStore>, telemetry: Arc<Telemetry>) -> Self {
        MeshConnector {
            target,
            expected,
            tls,
            telemetry,
            pool: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(None),
        }
    }

    /// The identity the server must present, when it is known.
    pub fn expected(&self) -> Option<&SpiffeId> {
        self.expected.as_ref()
    }

    /// A new HTTP/2 stream to the destination, on a pooled connection when one has room, and
    /// whether that connection was reused. Connections made with older credentials (a rotated
    /// certificate or trust bundle) take no new streams; they close once their last stream ends.
    pub async fn open_stream(&self) -> pingora::Result<(Http2Session, bool)> {
        if let Some(stream) = self.pooled_stream().await? {
            return Ok((stream, true));
        }
        let waited_since = Instant::now();
        let mut last_failure = self.connecting.lock().await;
        if let Some(stream) = self.pooled_stream().await? {
            return Ok((stream, true));
        }
        if let Some(failure) = last_failure.as_ref().filter(|f| f.at >= waited_since) {
            return Err(Error::explain(
                failure.etype.clone(),
                format!("{} (the attempt this request waited for)", failure.reason),
            ));
        }
        let generation = self.tls.generation();
        let connection = match self.connect().await {
            Ok(connection) => connection,
            Err(e) => {
                *last_failure = Some(Failure {
                    at: Instant::now(),
                    etype: e.etype().clone(),
                    reason: e
                        .context
                        .as_ref()
                        .map_or_else(|| e.etype().as_str().to_string(), |c| c.as_str().to_string()),
                });
                return Err(e);
            }
        };
        let stream = connection.spawn_stream().await?.ok_or_else(|| {
            Error::explain(ErrorType::H2Error, "new connection to the peer sidecar has no free stream")
        })?;
        self.pool.lock().expect("pool lock").push(Pooled { generation, connection });
        Ok((stream, false))
    }

    async fn pooled_stream(&self) -> pingora::Result<Option<Http2Session>> {
        loop {
            let candidate = {
                let generation = self.tls.generation();
                let mut pool = self.pool.lock().expect("pool lock");
                pool.retain(|p| {
                    p.generation == generation && !p.connection.is_closed() && !p.connection.is_shutting_down()
                });
                pool.iter().find(|p| p.connection.more_streams_allowed()).map(|p| p.connection.clone())
            };
            let Some(connection) = candidate else { return Ok(None) };
            match connection.spawn_stream().await {
                Ok(Some(stream)) => return Ok(Some(stream)),
                // Full after all, or going away: look again.
                Ok(None) => {
                    if !connection.more_streams_allowed() && !connection.is_shutting_down() {
                        return Ok(None);
                    }
                }
                Err(_) => connection.mark_shutdown(),
            }
        }
    }

    async fn connect(&self) -> pingora::Result<ConnectionRef> {
        let addr = self.target;
        let tls = match connect(&self.tls, addr, self.expected.as_ref(), CONNECT_TIMEOUT).await {
            Ok(tls) => tls,
            Err(ConnectError::Refusal(reason)) => return Err(self.refuse(reason)),
            Err(e) => return Err(super::connect_failure(&e)),
        };
        self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "success"]).inc();
        let stream = L4Stream::from(VirtualSocketStream::new(Box::new(MeshTls(tls))));
        let mut settings = H2HandshakeSettings::new();
        settings.max_streams = STREAMS_PER_CONNECTION;
        settings.ping_interval = Some(PING_INTERVAL);
        h2_handshake(Box::new(stream), settings).await
    }

    fn refuse(&self, reason: String) -> Box<Error> {
        self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "failure"]).inc();
        tracing::warn!(peer = %self.target, %reason, "outbound server refused");
        self.telemetry.events.emit(SecurityEvent::TlsFailure {
            direction: "outbound",
            peer: Some(self.target),
            expected: self.expected.as_ref().map(|e| e.to_string()),
            reason: reason.clone(),
        });
        Error::explain(ErrorType::TLSHandshakeFailure, reason)
    }
}

/// The verified TLS session, as the socket pingora's HTTP/2 client writes to.
struct MeshTls(tokio_rustls::client::TlsStream<TcpStream>);

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MeshTls").field(&self.0.get_ref().0.peer_addr().ok()).finish()
    }
}

impl VirtualSocket for MeshTls {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.0.get_ref().0.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for MeshTls {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshTls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A connector per destination and expected identity.
type KnownConnectors = HashMap<(SocketAddr, Option<SpiffeId>), Arc<MeshConnector>>;

/// Connectors for destinations learned per request (original destination or authority),
/// made once per destination and identity.
pub struct Connectors {
    known: ArcSwap<KnownConnectors>,
    tls: Arc<TlsStore>,
    telemetry: Arc<Telemetry>,
}

impl Connectors {
    pub fn new(tls: Arc<TlsStore>, telemetry: Arc<Telemetry>) -> Self {
        Connectors { known: ArcSwap::from_pointee(HashMap::new()), tls, telemetry }
    }

    pub fn make(&self, target: SocketAddr, expected: Option<SpiffeId>) -> Arc<MeshConnector> {
        Arc::new(MeshConnector::new(target, expected, self.tls.clone(), self.telemetry.clone()))
    }

    pub fn get(&self, target: SocketAddr, expected: Option<&SpiffeId>) -> Arc<MeshConnector> {
        let key = (target, expected.cloned());
        if let Some(found) = self.known.load().get(&key) {
            return found.clone();
        }
        let made = self.make(target, expected.cloned());
        // A request racing this one may have added the destination first: keep its connector
        // (and so its connections), and hand that one out.
        let mut kept = made.clone();
        self.known.rcu(|known| {
            if let Some(existing) = known.get(&key) {
                kept = existing.clone();
                return Arc::clone(known);
            }
            let mut next = if known.len() >= MAX_DYNAMIC { HashMap::new() } else { HashMap::clone(known) };
            next.insert(key.clone(), made.clone());
            kept = made.clone();
            Arc::new(next)
        });
        kept
    }
}
