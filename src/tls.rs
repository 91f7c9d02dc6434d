//! Mutual TLS for the mesh: the workload's credentials, SPIFFE-aware verifiers for both
//! directions, and a store that reloads certificate and trust bundle from disk without a restart.
//!
//! The store publishes one immutable [`TlsState`] per credential set through an `ArcSwap`:
//! handshakes read it without a lock, and a reload swaps in a whole new set at once.

mod connect;
mod credentials;
mod reload;
mod serving;
mod store;
mod tunnel;
mod verify;

pub use connect::{connect, connect_http1, connect_tcp, ConnectError, Negotiated};
pub use credentials::{Credentials, IdentityFiles};
pub use serving::ServingCert;
pub use store::{PeerIdentity, TlsState, TlsStore};
pub use tunnel::{
    accept_tunnel, connect_tunnel, sort_client_hello, HelloFor, RECORD_HEADER, TUNNEL_ALPN, TUNNEL_HELLO_MAX,
};
pub use verify::{LeafError, TrustDomains};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// TLS 1.2 and 1.3 only, with ring as the provider: no OpenSSL, no aws-lc.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a handshake failed on a certificate (this side refused the peer's): not on an answer
/// that was not TLS, an alert, or a close.
pub fn is_certificate_refusal(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented))
}

/// Whether a handshake failed because the other side answered with something that is not TLS
/// (a plaintext server where this side connected, or a plaintext caller where it accepted).
pub fn is_plaintext(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)))
}

/// The verifier's own words when a handshake failed on a certificate (rustls prints our
/// `LeafError` through `Debug` otherwise); `None` when the I/O error is not a TLS one.
pub fn refusal_reason(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            Some(in_words(&other.0.to_string()))
        }
        other => Some(in_words(&other.to_string())),
    }
}

/// A handshake error's text (rustls's, as pingora passes it on) in an operator's words: the
/// verifier's reason out of rustls's `Other(OtherError(...))`, webpki's variant names said
/// plainly, and plaintext on a TLS port named as what it most often is.
pub fn in_words(text: &str) -> String {
    const WRAPPER: &str = "Other(OtherError(";
    let mut text = match text.find(WRAPPER) {
        Some(at) => {
            let inner = &text[at + WRAPPER.len()..];
            format!("{}{}", &text[..at], inner.strip_suffix("))").unwrap_or(inner))
        }
        None => text.to_string(),
    };
    const PLAIN: [(&str, &str); 6] = [
        (
            "received corrupt message of type InvalidContentType",
            "not TLS: plaintext on a port that requires mutual TLS (STRICT); is the caller outside the mesh?",
        ),
        ("UnsupportedCriticalExtension", "the certificate has a critical extension that is not understood"),
        ("CaUsedAsEndEntity", "a CA certificate presented as a workload's"),
        ("EndEntityUsedAsCa", "a workload certificate used as a CA"),
        ("NameConstraintViolation", "the identity is outside the issuing CA's name constraints"),
        // Every `palisade ca init` root has the same name: during a rotation a peer's
        // certificate from the new CA meets the old root of that name.
        (
            "BadSignature",
            "its signature does not verify with the trust bundle's root of its issuer's name (BadSignature): a certificate of another CA with the same name (a CA rotation whose new root this bundle does not hold yet?), or a forgery",
        ),
    ];
    for (name, words) in PLAIN {
        if text.ends_with(name) {
            text = format!("{}{words}", &text[..text.len() - name.len()]);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    /// A peer certificate from another CA with the same name as a root in the bundle (every
    /// `palisade ca init` root is named alike) reads as tampering in rustls's word; it says
    /// what it most likely is (outside tester j3).
    #[test]
    fn a_bad_signature_says_what_it_most_likely_is() {
        let text = super::in_words("invalid peer certificate: BadSignature");
        assert!(text.starts_with("invalid peer certificate: its signature does not verify"), "{text}");
        assert!(text.contains("(BadSignature)") && text.contains("CA rotation"), "{text}");
    }
}
