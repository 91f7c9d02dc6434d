//! Connections to other sidecars: TCP, then mutual TLS with the workload's current credentials
//! and the SPIFFE-aware verifier, then the server's identity checked against the expected one,
//! all before pingora sees the connection.
//!
//! pingora's rustls connector can only check DNS names, and it pools only connections that have
//! a real file descriptor whose peer matches the `HttpPeer` address. So the TLS session lives
//! here, and pingora gets one end of a socket pair whose other end a relay task copies to and
//! from the TLS stream. The `HttpPeer` address is `0.0.0.0:<port>`, which pingora's reuse check
//! accepts for any socket; the real destination and identity are part of the pool key. This
//! verifies the identity inside the handshake, so it holds when the destination is a
//! load-balanced virtual IP whose backends each have their own certificate.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::{Error, ErrorType};
use tokio::net::UnixStream;

use crate::identity::SpiffeId;
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::{connect, ConnectError, TlsStore};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connectors remembered for destinations that are not configured routes.
const MAX_DYNAMIC: usize = 4096;

pub struct MeshConnector {
    target: SocketAddr,
    expected: Option<SpiffeId>,
    tls: Arc<TlsStore>,
    telemetry: Arc<Telemetry>,
    key: u64,
}

impl std::fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnector").field("target", &self.target).field("expected", &self.expected).finish()
    }
}

impl MeshConnector {
    pub fn new(target: SocketAddr, expected: Option<SpiffeId>, tls: Arc<TlsStore>, telemetry: Arc<Telemetry>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (target, expected.as_ref().map(SpiffeId::as_str)).hash(&mut hasher);
        MeshConnector { target, expected, tls, telemetry, key: hasher.finish() }
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The identity the server must present, when it is known.
    pub fn expected(&self) -> Option<&SpiffeId> {
        self.expected.as_ref()
    }

    /// Keeps connections apart by destination, expected identity and credential generation: a
    /// new trust bundle or certificate means new connections.
    pub fn pool_key(&self) -> u64 {
        self.key ^ self.tls.generation().wrapping_mul(0x9e37_79b9_7f4a_7c15)
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

#[async_trait]
impl L4Connect for MeshConnector {
    async fn connect(&self, _unused: &PingoraAddr) -> pingora::Result<L4Stream> {
        let addr = self.target;
        let mut tls = match connect(&self.tls, addr, self.expected.as_ref(), CONNECT_TIMEOUT).await {
            Ok(tls) => tls,
            Err(ConnectError::Refusal(reason)) => return Err(self.refuse(reason)),
            Err(e @ ConnectError::Refused(_)) => return Err(Error::explain(ErrorType::ConnectRefused, e.to_string())),
            Err(e @ ConnectError::ConnectTimeout(_)) => {
                return Err(Error::explain(ErrorType::ConnectTimedout, e.to_string()))
            }
            Err(e @ ConnectError::HandshakeTimeout(_)) => {
                return Err(Error::explain(ErrorType::TLSHandshakeTimedout, e.to_string()))
            }
            Err(e @ ConnectError::Unreachable(..)) => {
                return Err(Error::explain(ErrorType::ConnectError, e.to_string()))
            }
        };
        self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "success"]).inc();
        let (ours, mut relay_end) =
            UnixStream::pair().map_err(|e| Error::because(ErrorType::InternalError, "socket pair", e))?;
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut relay_end, &mut tls).await;
        });
        Ok(ours.into())
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
        self.known.rcu(|known| {
            let mut next = if known.len() >= MAX_DYNAMIC { HashMap::new() } else { HashMap::clone(known) };
            next.insert(key.clone(), made.clone());
            next
        });
        made
    }
}
