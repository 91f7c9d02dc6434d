//! The sidecar's channel to the control plane (SPEC section 8): one policy stream over mutual
//! TLS, kept open and reconnected with backoff ([`policy`]), to a control plane verified by
//! its SPIFFE ID ([`connector`]).

mod identity;
mod policy;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

pub use identity::{parse_address, IdentityClient, IdentityState};
pub use policy::{ChannelState, PolicyChannel};

use crate::identity::SpiffeId;
use crate::tls::TlsStore;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The identity sidecars expect of the control plane unless configured otherwise.
pub fn default_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::for_workload(trust_domain, "palisade-system", "palisade-control")
        .expect("a valid trust domain makes a valid SPIFFE ID")
}

/// A tonic connector that dials `address` (resolved on every attempt, so a Service name follows
/// its endpoints) and proves the control plane is `expected`.
pub fn connector(
    host: String,
    port: u16,
    expected: SpiffeId,
    tls: Arc<TlsStore>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_: http::Uri| {
        let (host, expected, tls) = (host.clone(), expected.clone(), tls.clone());
        async move {
            let mut last = std::io::Error::other(format!("{host}:{port} resolved to no address"));
            for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
                match crate::tls::connect(&tls, addr, Some(&expected), HANDSHAKE_TIMEOUT).await {
                    Ok((stream, _)) => return Ok(hyper_util::rt::TokioIo::new(stream)),
                    // Kept whole: what refused the handshake is read from it (see
                    // `policy::connect_error`).
                    Err(e) => last = std::io::Error::other(e),
                }
            }
            Err(last)
        }
    })
}

/// Jittered exponential backoff: each delay is between half and all of a step that doubles up to
/// a ceiling, so sidecars that lost their control plane together do not return together.
pub(crate) struct Backoff {
    first: Duration,
    longest: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, longest: Duration) -> Self {
        Backoff { first, longest, step: first }
    }

    pub(crate) fn reset(&mut self) {
        self.step = self.first;
    }

    pub(crate) fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.longest);
        step / 2 + step.mul_f64(random_fraction() / 2.0)
    }
}

/// A random number in [0, 1], for jitter.
pub(crate) fn random_fraction() -> f64 {
    let mut random = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    u32::from_le_bytes(random) as f64 / u32::MAX as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
        for (delay, step) in delays.iter().zip([100u64, 200, 400, 800, 1000, 1000, 1000, 1000]) {
            let step = Duration::from_millis(step);
            assert!(*delay >= step / 2 && *delay <= step, "{delay:?} for a step of {step:?}");
        }
        assert!(delays[4..].windows(2).any(|w| w[0] != w[1]), "jittered: {delays:?}");
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(100));
    }
}
