//! Which SPIFFE ID a server's certificate carries, learned once per certificate.
//!
//! pingora verifies the chain of an upstream connection but exposes only the SHA-256 fingerprint
//! of the server's certificate, not its subject alternative names. The first time a fingerprint
//! is seen, a probe connection (our own rustls handshake with the SPIFFE-aware verifier) fetches
//! the server's certificate and reads its identity. The probe's certificate must have the very
//! same fingerprint, so a server cannot show one certificate to the probe and another to the
//! connection that carries requests. Known fingerprints are answered from memory: the per-request
//! cost is one lock-free map lookup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::{Error, ErrorType};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::identity::{spiffe_id_from_der, CertIdentity, SpiffeId};
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::TlsStore;

type Fingerprint = [u8; 32];

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Server certificates remembered; certificates rotate, so old ones age out when this fills.
const MAX_KNOWN: usize = 4096;

pub struct PeerIdentities {
    known: ArcSwap<HashMap<Fingerprint, SpiffeId>>,
    tls: Arc<TlsStore>,
    telemetry: Arc<Telemetry>,
}

impl PeerIdentities {
    pub fn new(tls: Arc<TlsStore>, telemetry: Arc<Telemetry>) -> Self {
        PeerIdentities { known: ArcSwap::from_pointee(HashMap::new()), tls, telemetry }
    }

    /// Checks that the connection's server is a member of the trust domain and, when `expected`
    /// is given, exactly that identity. A failure is a 502 for the request and a security event.
    pub async fn check(
        &self,
        address: SocketAddr,
        fingerprint: Option<&[u8]>,
        expected: Option<&SpiffeId>,
        reused: bool,
    ) -> pingora::Result<()> {
        let Some(fingerprint) = fingerprint.and_then(|f| Fingerprint::try_from(f).ok()) else {
            return Err(self.refuse(address, expected, "the connection carries no server certificate".into()));
        };
        let known = self.known.load().get(&fingerprint).cloned();
        let identity = match known {
            Some(id) => id,
            None => {
                let (probed, id) =
                    self.probe(address).await.map_err(|reason| self.refuse(address, expected, reason))?;
                if probed != fingerprint {
                    return Err(self.refuse(
                        address,
                        expected,
                        format!("{address} presented different certificates to two connections"),
                    ));
                }
                self.remember(fingerprint, id.clone());
                id
            }
        };
        if let Some(expected) = expected {
            if identity != *expected {
                return Err(self.refuse(
                    address,
                    Some(expected),
                    format!("{address} presented {identity}, expected {expected}"),
                ));
            }
        }
        if !reused {
            self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "success"]).inc();
        }
        Ok(())
    }

    fn remember(&self, fingerprint: Fingerprint, id: SpiffeId) {
        self.known.rcu(|known| {
            let mut next = if known.len() >= MAX_KNOWN { HashMap::new() } else { HashMap::clone(known) };
            next.insert(fingerprint, id.clone());
            next
        });
    }

    /// A separate handshake with the SPIFFE-aware verifier; the server's fingerprint and identity.
    async fn probe(&self, address: SocketAddr) -> Result<(Fingerprint, SpiffeId), String> {
        let config = self.tls.current().client_config.clone();
        let handshake = async {
            let tcp = TcpStream::connect(address).await.map_err(|e| format!("probe of {address}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(address.ip().into()), tcp)
                .await
                .map_err(|e| format!("handshake with {address} failed: {e}"))
        };
        let tls = tokio::time::timeout(PROBE_TIMEOUT, handshake)
            .await
            .map_err(|_| format!("handshake with {address} timed out"))??;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no server certificate")?;
        let fingerprint: Fingerprint =
            ring::digest::digest(&ring::digest::SHA256, leaf).as_ref().try_into().expect("SHA-256 is 32 bytes");
        match spiffe_id_from_der(leaf) {
            CertIdentity::Spiffe(id) => Ok((fingerprint, id)),
            _ => Err(format!("{address} presented no SPIFFE identity")),
        }
    }

    fn refuse(&self, peer: SocketAddr, expected: Option<&SpiffeId>, reason: String) -> Box<Error> {
        self.record_failure(peer, expected, &reason);
        Error::explain(ErrorType::TLSHandshakeFailure, reason)
    }

    /// Counts and reports a server that failed verification (also when pingora's own handshake
    /// refused its chain).
    pub fn record_failure(&self, peer: SocketAddr, expected: Option<&SpiffeId>, reason: &str) {
        self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "failure"]).inc();
        tracing::warn!(%peer, %reason, "outbound server identity refused");
        self.telemetry.events.emit(SecurityEvent::TlsFailure {
            direction: "outbound",
            peer: Some(peer),
            expected: expected.map(|e| e.to_string()),
            reason: reason.to_string(),
        });
    }
}
