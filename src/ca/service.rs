//! The CA's gRPC service (`palisade.identity.v1.Certificates/Sign`) and what it reports: an
//! event and a count for every certificate signed and every request refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use tonic::{Request, Response, Status};

use super::signer::CaSigner;
use super::tokens::TokenChecker;
use super::Refused;
use crate::proto::identity::certificates_server::Certificates;
use crate::proto::identity::{SignRequest, SignResponse};
use crate::telemetry::{SecurityEvent, Telemetry};

/// A certification request of a P-256 key is about 250 bytes; a token about 1 KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
const SIGN_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// `palisade_ca_requests_total{result}` (`issued`, or the refusal's reason) and how long each
/// request took, token check included.
#[derive(Clone)]
pub struct CaMetrics {
    pub requests: IntCounterVec,
    pub duration: Histogram,
}

impl CaMetrics {
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new("palisade_ca_requests_total", "Certificate requests, by result: issued, or why refused."),
            &["result"],
        )
        .expect("metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new("palisade_ca_request_duration_seconds", "Time to check a token and sign.")
                .buckets(SIGN_BUCKETS.to_vec()),
        )
        .expect("metric");
        registry.register(Box::new(requests.clone())).expect("metric registers once");
        registry.register(Box::new(duration.clone())).expect("metric registers once");
        CaMetrics { requests, duration }
    }
}

pub struct CaService {
    pub signer: Arc<ArcSwap<CaSigner>>,
    pub tokens: Arc<dyn TokenChecker>,
    pub ttl: Duration,
    pub metrics: CaMetrics,
    pub telemetry: Arc<Telemetry>,
}

impl CaService {
    async fn issue(&self, request: &SignRequest) -> Result<SignResponse, (Option<String>, Refused)> {
        let proven = self.tokens.check(&request.token).await.map_err(|r| (None, r))?;
        let signer = self.signer.load_full();
        let identity = proven.spiffe_id(signer.trust_domain()).map_err(|r| (None, r))?;
        let issued = signer
            .sign(&request.csr, &identity, self.ttl, SystemTime::now())
            .map_err(|r| (Some(identity.to_string()), r))?;
        let not_after = unix(issued.not_after);
        self.telemetry.events.emit(SecurityEvent::CertificateIssued {
            identity: identity.to_string(),
            serial: issued.serial.clone(),
            not_after,
            peer: None,
            pod: proven.pod.map(|(name, _)| format!("{}/{name}", proven.namespace)),
        });
        tracing::info!(%identity, serial = %issued.serial, "certificate issued");
        Ok(SignResponse {
            chain: issued.chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle: issued.trust_bundle.iter().map(|c| c.to_vec()).collect(),
            not_after,
        })
    }
}

#[tonic::async_trait]
impl Certificates for CaService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let started = Instant::now();
        // The CA's listener records each connection's address (control/transport.rs).
        let peer: Option<SocketAddr> = request.extensions().get::<Option<SocketAddr>>().copied().flatten();
        let request = request.into_inner();
        let outcome = self.issue(&request).await;
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(response) => {
                self.metrics.requests.with_label_values(&["issued"]).inc();
                Ok(Response::new(response))
            }
            Err((identity, refused)) => {
                self.metrics.requests.with_label_values(&[refused.label()]).inc();
                tracing::warn!(peer = ?peer, identity = identity.as_deref().unwrap_or("-"), reason = %refused,
                    "certificate request refused");
                self.telemetry.events.emit(SecurityEvent::CertificateRefused {
                    identity,
                    peer,
                    reason: refused.to_string(),
                });
                Err(refused.status())
            }
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
