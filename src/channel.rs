//! The sidecar's channel to the control plane (SPEC section 8): one policy stream over mutual
//! TLS, kept open and reconnected with backoff ([`policy`]), to a control plane verified by
//! its SPIFFE ID ([`connector`]).

mod policy;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

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
                    Ok(stream) => return Ok(hyper_util::rt::TokioIo::new(stream)),
                    Err(e) => last = std::io::Error::other(e.to_string()),
                }
            }
            Err(last)
        }
    })
}
