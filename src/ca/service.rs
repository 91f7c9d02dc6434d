//! The CA's gRPC service (`palisade.identity.v1.Certificates/Sign`) and what it reports: an
//! event and a count for every certificate signed and every request refused.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use tonic::{Request, Response, Status};

use super::signer::CaSigner;
use super::tokens::TokenChecker;
use super::Refused;
use crate::identity::SpiffeId;
use crate::policy::Buckets;
use crate::proto::identity::certificates_server::Certificates;
use crate::proto::identity::{SignRequest, SignResponse};
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::TlsStore;

/// A certification request of a P-256 key is about 250 bytes; a token about 1 KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
const SIGN_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// `palisade_ca_requests_total{result}` (`issued`, or the refusal's reason) and how long each
/// request took, token check included.
#[derive(Clone)]
pub struct CaMetrics {
    pub requests: IntCounterVec,
    pub duration: Histogram,
    /// `palisade_ca_certificate_expiry_timestamp_seconds`: when the CA's own certificate ends.
    pub expiry: prometheus::IntGauge,
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
        let expiry = prometheus::IntGauge::new(
            "palisade_ca_certificate_expiry_timestamp_seconds",
            "When the CA's own certificate ends (Unix time): past it, or 10 minutes before, the CA issues nothing.",
        )
        .expect("metric");
        registry.register(Box::new(requests.clone())).expect("metric registers once");
        registry.register(Box::new(duration.clone())).expect("metric registers once");
        registry.register(Box::new(expiry.clone())).expect("metric registers once");
        CaMetrics { requests, duration, expiry }
    }

    /// Shows `signer`'s end, and says loudly when it is past or nearer than `ttl`.
    pub fn in_force(&self, signer: &CaSigner, ttl: Duration) {
        let end = signer.not_after();
        self.expiry.set(unix(end));
        let now = SystemTime::now();
        let at = time::OffsetDateTime::from(end);
        if end <= now {
            tracing::error!(ends = %at, "the CA's certificate has ended: the CA issues nothing until ca.cert is renewed");
        } else if end < now + ttl {
            tracing::warn!(ends = %at, cert_ttl = %crate::config::HumanDuration(ttl),
                "the CA's certificate ends sooner than certTtl: certificates are cut to its end, and none is issued in its last 10 minutes");
        }
    }
}

pub struct CaService {
    pub signer: Arc<ArcSwap<CaSigner>>,
    pub tokens: Arc<dyn TokenChecker>,
    pub ttl: Duration,
    pub metrics: CaMetrics,
    pub telemetry: Arc<Telemetry>,
    /// Requests per source address ([`CaService::per_source`]).
    pub sources: Buckets,
    /// Identities the CA never issues.
    pub reserved: Reserved,
}

/// The control plane's own identity: every sidecar takes its policy and its roots from whoever
/// proves it, so a certificate for it is the whole mesh's trust. The control plane signs its
/// own in-process or reads it from files and never asks the CA for it, so a token for its
/// service account (anyone who may create one) must not buy it either.
#[derive(Default)]
pub struct Reserved {
    /// The identity sidecars expect by default, and the one configured for the control plane.
    pub ids: Vec<SpiffeId>,
    /// The control plane's credentials, whose identity (from files) may be another still.
    pub own: Option<Arc<TlsStore>>,
}

impl Reserved {
    fn holds(&self, id: &SpiffeId) -> bool {
        self.ids.contains(id) || self.own.as_ref().is_some_and(|tls| tls.current().credentials.id == *id)
    }
}

/// A source address may ask this many times in a burst, then once a second: a sidecar asks at
/// start and at renewal (every 17 hours of a day's certificate), retrying with backoff. A
/// caller that has proven nothing cannot make the CA send a TokenReview to the API server for
/// each of a thousand requests a second.
pub const SOURCE_BURST: u32 = 10;

impl CaService {
    /// The bucket of each source address.
    pub fn per_source() -> Buckets {
        Buckets::new(NonZeroU32::MIN, Duration::from_secs(1), NonZeroU32::new(SOURCE_BURST).expect("nonzero"))
    }

    async fn issue(&self, request: &SignRequest) -> Result<SignResponse, (Option<String>, Refused)> {
        let proven = self.tokens.check(&request.token).await.map_err(|r| (None, r))?;
        let signer = self.signer.load_full();
        let identity = proven.spiffe_id(signer.trust_domain()).map_err(|r| (None, r))?;
        if self.reserved.holds(&identity) {
            let why = format!("{identity} is the control plane's own identity, which the CA never issues");
            return Err((Some(identity.to_string()), Refused::Identity(why)));
        }
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
        if let Some(peer) = peer {
            let address = match peer.ip().to_canonical() {
                std::net::IpAddr::V4(ip) => self.sources.key_of(&ip.octets()),
                std::net::IpAddr::V6(ip) => self.sources.key_of(&ip.octets()),
            };
            if let Err(wait) = self.sources.take(address) {
                // Counted, not reported one by one: a flood must not become a flood of events.
                let retry = wait.as_secs() + 1;
                let refused = Refused::RateLimited(format!(
                    "too many requests from {}; retry in {retry} s",
                    peer.ip().to_canonical()
                ));
                self.metrics.requests.with_label_values(&[refused.label()]).inc();
                tracing::debug!(%peer, "certificate request refused: too many from this address");
                return Err(refused.status());
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ca::tokens::{Proven, MAX_TOKEN_CHECKS};

    /// A token check that takes a minute and counts how many run at once.
    #[derive(Default)]
    struct SlowChecks {
        running: AtomicUsize,
        most: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl TokenChecker for SlowChecks {
        async fn check(&self, _token: &str) -> Result<Proven, Refused> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            Err(Refused::Token("slow".into()))
        }
    }

    /// A token check that refuses at once and counts its calls.
    #[derive(Default)]
    struct CountedChecks(AtomicUsize);

    #[async_trait::async_trait]
    impl TokenChecker for CountedChecks {
        async fn check(&self, _token: &str) -> Result<Proven, Refused> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(Refused::Token("forged".into()))
        }
    }

    fn service(tokens: Arc<dyn TokenChecker>) -> CaService {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::identity::DevCa::generate("cluster.local").unwrap();
        let files = dev.write(dir.path()).unwrap();
        let signer = CaSigner::load(
            &super::super::CaFiles { cert: files.cert, key: files.key, trust_bundle: None },
            "cluster.local",
        )
        .unwrap();
        let telemetry = Telemetry::new(&crate::config::TelemetryConfig::default(), None).unwrap();
        CaService {
            signer: Arc::new(ArcSwap::from_pointee(signer)),
            tokens,
            ttl: Duration::from_secs(3600),
            metrics: CaMetrics::register(&Registry::new()),
            telemetry: Arc::new(telemetry),
            sources: CaService::per_source(),
            reserved: Reserved::default(),
        }
    }

    #[tokio::test]
    async fn one_source_address_makes_at_most_a_burst_of_token_checks() {
        let checks = Arc::new(CountedChecks::default());
        let service = service(checks.clone());
        let from = |ip: &str| {
            let mut request = Request::new(SignRequest { token: "t".into(), csr: Vec::new() });
            request.extensions_mut().insert(Some(SocketAddr::new(ip.parse().unwrap(), 40000)));
            request
        };
        let mut codes = Vec::new();
        for _ in 0..SOURCE_BURST + 5 {
            codes.push(service.sign(from("10.0.0.7")).await.unwrap_err().code());
        }
        let refused = codes
            .iter()
            .filter(|c| **c == tonic::Code::Unauthenticated || **c == tonic::Code::PermissionDenied)
            .count();
        assert_eq!(checks.0.load(Ordering::SeqCst), SOURCE_BURST as usize, "{codes:?}");
        assert_eq!(refused, SOURCE_BURST as usize, "{codes:?}");
        assert!(codes[SOURCE_BURST as usize..].iter().all(|c| *c == tonic::Code::Unavailable), "{codes:?}");
        // Another address (IPv4-mapped or not, the same host is one key) has its own bucket.
        let limited = service.sign(from("::ffff:10.0.0.7")).await.unwrap_err();
        assert_eq!(limited.code(), tonic::Code::Unavailable);
        // No token was looked at: the answer does not say one could not be.
        assert!(limited.message().starts_with("too many requests from 10.0.0.7"), "{}", limited.message());
        assert_ne!(service.sign(from("10.0.0.8")).await.unwrap_err().code(), tonic::Code::Unavailable);
        // (Refilling at one a second is the buckets' own, tested with them.)
        let counted = service.metrics.requests.with_label_values(&["rate_limited"]).get();
        assert_eq!(counted, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_requests_checks_at_most_so_many_tokens_at_once_and_turns_the_rest_away() {
        let checks = Arc::new(SlowChecks::default());
        let service = Arc::new(service(Arc::new(super::super::tokens::BoundedTokens::new(checks.clone()))));
        let flood: Vec<_> = (0..MAX_TOKEN_CHECKS + 100)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    let request = SignRequest { token: "t".into(), csr: Vec::new() };
                    service.issue(&request).await.map(|_| ()).map_err(|(_, refused)| refused)
                })
            })
            .collect();
        let mut busy = 0;
        let mut checked = 0;
        for outcome in flood {
            match outcome.await.unwrap() {
                Err(Refused::Unavailable(_)) => busy += 1,
                Err(Refused::Token(_)) => checked += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(checks.most.load(Ordering::SeqCst), MAX_TOKEN_CHECKS, "never more at once");
        assert_eq!((checked, busy), (MAX_TOKEN_CHECKS, 100), "the rest waited their turn's time and were turned away");
    }
}
