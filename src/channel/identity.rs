//! A sidecar's identity from the control plane's CA (SPEC section 2 (b)): a key made in memory
//! (never written anywhere, never in `/config_dump`), a certification request for the sidecar's
//! own SPIFFE ID sent with its projected service-account token, the certificate put in force
//! for new handshakes as soon as it arrives, and renewal at 70% of its life. When the CA cannot
//! be reached the certificate in force stays and renewal is retried with jittered backoff.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{watch, Notify};

use super::Backoff;
use crate::identity::SpiffeId;
use crate::proto::identity::certificates_client::CertificatesClient;
use crate::proto::identity::SignRequest;
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::{Credentials, TlsStore};

/// The share of a certificate's life after which it is renewed (Linkerd's and SPEC's 70%).
const RENEW_AT: f64 = 0.7;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(60);
/// The longest wait between requests while the sidecar has no valid certificate (none yet, or
/// the one in force expired): it is not ready until one comes, so it asks often (a sidecar whose
/// certificate expired while the CA was down waited up to a minute more once it came back).
const UNREADY_RETRY: Duration = Duration::from_secs(5);
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/ready`, `/config_dump` and the metrics know of the identity.
#[derive(Default)]
pub struct IdentityState {
    issued: AtomicBool,
    /// The certificate's notAfter, seconds since the epoch.
    not_after: AtomicI64,
    renewals: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Asks for a renewal now (a trust bundle the certificate no longer chains to).
    renew_now: Notify,
    /// Wakes whoever waits for the first certificate.
    first: Notify,
}

impl IdentityState {
    /// A certificate from the CA is in force and has not expired.
    pub fn ready(&self, now: SystemTime) -> bool {
        self.issued.load(Ordering::Acquire) && unix(now) < self.not_after.load(Ordering::Acquire)
    }

    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Acquire)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("identity state lock").clone()
    }

    pub fn renew_soon(&self) {
        self.renew_now.notify_one();
    }

    /// Waits until a certificate from the CA has been put in force.
    pub async fn wait_issued(&self) {
        loop {
            let notified = self.first.notified();
            if self.issued.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

pub struct IdentityClient {
    /// `host:port` of the CA (the control plane's Service, port 15012).
    pub host: String,
    pub port: u16,
    /// The SPIFFE ID the CA must present.
    pub expected: SpiffeId,
    /// This sidecar's own SPIFFE ID: the one its token proves.
    pub own: SpiffeId,
    pub token_file: PathBuf,
    pub tls: Arc<TlsStore>,
    pub telemetry: Arc<Telemetry>,
    pub state: Arc<IdentityState>,
}

impl IdentityClient {
    /// Gets a certificate, then keeps it renewed, until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(FIRST_RETRY, LONGEST_RETRY);
        let mut expiry_reported = false;
        loop {
            let wait = match self.renew().await {
                Ok(not_after) => {
                    backoff.reset();
                    expiry_reported = false;
                    renew_in(SystemTime::now(), not_after)
                }
                Err(failure) => {
                    let (refused, reason) = match failure {
                        Failure::Refused(reason) => (true, reason),
                        Failure::Failed(reason) => (false, reason),
                    };
                    self.state.failures.fetch_add(1, Ordering::AcqRel);
                    self.telemetry.metrics.certificate_reloads.with_label_values(&["rejected"]).inc();
                    *self.state.last_error.lock().expect("identity state lock") = Some(reason.clone());
                    let ca = format!("{}:{}", self.host, self.port);
                    let issued = self.state.issued.load(Ordering::Acquire);
                    let not_after = self.state.not_after.load(Ordering::Acquire);
                    let valid = self.state.ready(SystemTime::now());
                    let delay = retry_delay(backoff.next(), valid);
                    match (issued, valid) {
                        (true, true) => tracing::warn!(%ca, %reason, retry_in = ?delay, not_after,
                            "certificate request failed; the certificate in force stays"),
                        (true, false) => tracing::error!(%ca, %reason, retry_in = ?delay, not_after,
                            "certificate request failed, and the certificate in force has expired: the sidecar is not ready, and peers refuse it, until the CA answers"),
                        (false, _) => tracing::warn!(%ca, %reason, retry_in = ?delay,
                            "certificate request failed; there is no certificate yet, so the sidecar is not ready"),
                    }
                    // Once per certificate: the expiry an operator alerts on, as with files.
                    if issued && !valid && !expiry_reported {
                        let state = self.tls.current();
                        self.telemetry.events.emit(SecurityEvent::CertificateExpired {
                            identity: self.own.to_string(),
                            serial: state.credentials.serial.clone(),
                            not_after,
                        });
                        expiry_reported = true;
                    }
                    // A refusal is the CA's decision about this workload; a CA out of reach (or a
                    // token that cannot be read here) is a failed renewal, not a denial.
                    let event = match refused {
                        true => SecurityEvent::CertificateRefused {
                            identity: Some(self.own.to_string()),
                            peer: None,
                            reason,
                        },
                        false => SecurityEvent::CertificateReloadFailed { reason },
                    };
                    self.telemetry.events.emit(event);
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.state.renew_now.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One request: a new key, its CSR and the token; the answer put in force. Returns the
    /// new certificate's end.
    async fn renew(&self) -> Result<SystemTime, Failure> {
        let key = rcgen::KeyPair::generate().map_err(|e| Failure::Failed(format!("making a key: {e}")))?;
        let csr = certification_request(&self.own, &key).map_err(Failure::Failed)?;
        let token = crate::yaml::read_file(&self.token_file, 64 * 1024)
            .map_err(|e| Failure::Failed(format!("the service-account token {}: {e}", self.token_file.display())))?;
        let connector = super::connector(self.host.clone(), self.port, self.expected.clone(), self.tls.clone());
        let channel = tonic::transport::Endpoint::from_static("http://palisade-ca")
            .connect_timeout(SIGN_TIMEOUT)
            .timeout(SIGN_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                Failure::Failed(super::policy::connect_error(&format!("the CA at {}:{}", self.host, self.port), &e))
            })?;
        let answer = CertificatesClient::new(channel)
            .sign(SignRequest { csr, token: token.trim().to_string() })
            .await
            .map_err(|status| match status.code() {
                // What the CA decided about this request; anything else is the way to it.
                tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                    Failure::Refused(format!("the CA refused: {}", status.message()))
                }
                _ => Failure::Failed(format!("the CA did not sign: {}", status.message())),
            })?
            .into_inner();
        let chain: Vec<CertificateDer<'static>> = answer.chain.into_iter().map(CertificateDer::from).collect();
        let bundle: Vec<CertificateDer<'static>> = answer.trust_bundle.into_iter().map(CertificateDer::from).collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let credentials =
            Credentials::from_memory(chain, key, bundle, self.own.trust_domain(), Path::new("the control plane's CA"))
                .map_err(|e| Failure::Refused(e.to_string()))?;
        if credentials.id != self.own {
            return Err(Failure::Refused(format!("the CA signed {}, not {}", credentials.id, self.own)));
        }
        let (serial, not_after) = (credentials.serial.clone(), credentials.not_after);
        self.tls.install(credentials).map_err(|e| Failure::Failed(e.to_string()))?;
        self.state.not_after.store(not_after, Ordering::Release);
        self.state.issued.store(true, Ordering::Release);
        self.state.first.notify_waiters();
        self.state.renewals.fetch_add(1, Ordering::AcqRel);
        *self.state.last_error.lock().expect("identity state lock") = None;
        self.telemetry.metrics.certificate_expiry.set(not_after as f64);
        self.telemetry.metrics.certificate_reloads.with_label_values(&["applied"]).inc();
        self.telemetry.events.emit(SecurityEvent::CertificateRotated {
            identity: self.own.to_string(),
            serial: serial.clone(),
            not_after,
        });
        tracing::info!(identity = %self.own, %serial, not_after, "certificate from the control plane's CA in force");
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64))
    }
}

/// Why a certificate request got no certificate.
enum Failure {
    /// The CA answered, and refused this workload (or signed what it cannot use).
    Refused(String),
    /// No answer: the CA out of reach or busy, or the request could not be made here.
    Failed(String),
}

/// A PKCS#10 request, DER, for `id` and nothing else.
fn certification_request(id: &SpiffeId, key: &rcgen::KeyPair) -> Result<Vec<u8>, String> {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names =
        vec![rcgen::SanType::URI(id.as_str().try_into().map_err(|e: rcgen::Error| e.to_string())?)];
    let request = params.serialize_request(key).map_err(|e| format!("making the request: {e}"))?;
    Ok(request.der().to_vec())
}

/// The wait before the next request after a failure: the backoff's, held to [`UNREADY_RETRY`]
/// while the sidecar has no valid certificate.
fn retry_delay(backoff: Duration, valid: bool) -> Duration {
    match valid {
        true => backoff,
        false => backoff.min(UNREADY_RETRY),
    }
}

/// How long until a certificate ending at `not_after`, received `now`, is renewed: at 70% of
/// what was left of its life, give or take 5% so a fleet does not renew in step.
fn renew_in(now: SystemTime, not_after: SystemTime) -> Duration {
    let life = not_after.duration_since(now).unwrap_or_default();
    let mut random = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    let jitter = (f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX) - 0.5) * 0.1;
    life.mul_f64((RENEW_AT + jitter).clamp(0.5, 0.9))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Where the CA is: `host:port`.
pub fn parse_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().ok()?)))
        .filter(|(h, p)| !h.is_empty() && *p != 0)
        .ok_or_else(|| {
            format!("expected HOST:PORT such as palisade-control.palisade-system.svc:15012, got {address:?}")
        })?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a valid certificate the sidecar is not ready: it asks again within seconds, not
    /// the minute a valid one may wait (outside tester j3: unready 40 s more after the CA came back).
    #[test]
    fn without_a_valid_certificate_the_next_request_comes_soon() {
        let minute = Duration::from_secs(60);
        assert_eq!(retry_delay(minute, true), minute);
        assert_eq!(retry_delay(minute, false), UNREADY_RETRY);
        assert_eq!(retry_delay(Duration::from_secs(2), false), Duration::from_secs(2));
    }

    #[test]
    fn renewal_comes_at_about_seventy_percent_of_the_life_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..100 {
            let wait = renew_in(now, now + Duration::from_secs(100));
            assert!(wait >= Duration::from_secs(65) && wait <= Duration::from_secs(75), "{wait:?}");
        }
        assert_eq!(renew_in(now, now - Duration::from_secs(1)), Duration::ZERO, "already over: at once");
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("cp.ns.svc:15012").unwrap(), ("cp.ns.svc".to_string(), 15012));
        assert_eq!(parse_address("[::1]:15012").unwrap(), ("::1".to_string(), 15012));
        for bad in ["cp", "cp:0", ":15012", "cp:x"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
