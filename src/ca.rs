//! The workload CA of `palisade control` (SPEC sections 2 (b) and 8): a sidecar sends a
//! certification request and its projected service-account token; the token is checked (by the
//! API server's TokenReview, or offline against the service-account issuer's keys), and the CA
//! signs a short-lived certificate for exactly the namespace and service account it proves.
//!
//! - [`signer`]: the CA's key and certificate, the roots workloads trust, what a request may ask
//!   for, the certificate it gets.
//! - [`tokens`]: who a token proves (namespace, service account, pod), and why one is refused.
//! - [`kube`]: the API server, as the control plane reaches it from inside the cluster:
//!   TokenReview and the pods whose labels select policies.
//! - [`service`]: the gRPC service on port 15012, its events and metrics.

mod kube;
mod service;
mod signer;
mod tokens;

pub use kube::{KubeApi, PodInfo};
pub use service::{CaMetrics, CaService, Reserved, MAX_REQUEST_BYTES};
pub use signer::{CaError, CaFiles, CaSigner, Issued};
pub use tokens::{
    BoundedTokens, JwksTokens, Proven, TokenChecker, TokenReviewTokens, MAX_TOKEN_CHECKS, TOKEN_CHECK_WAIT,
};

/// Why a request for a certificate was refused: what the caller is told, what the event says,
/// and (`label`) the bounded reason of `palisade_ca_requests_total{result}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no token")]
    NoToken,
    #[error("the token is not valid: {0}")]
    Token(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is for another audience: {0}")]
    Audience(String),
    #[error("the token is signed by a key or issuer the CA does not know: {0}")]
    UnknownSigner(String),
    #[error("the token is not a service account's: {0}")]
    NotServiceAccount(String),
    #[error("the token's service account is not allowed here: {0}")]
    Identity(String),
    /// A well-formed request for an identity the token does not prove.
    #[error("{0}")]
    OtherIdentity(String),
    #[error("{0}")]
    Csr(String),
    #[error("the token could not be checked now: {0}")]
    Unavailable(String),
    /// Too many requests from one address: refused before anything was checked.
    #[error("{0}")]
    RateLimited(String),
    /// The CA's own certificate ends too soon to issue from: a renewed CA file mends it.
    #[error("{0}")]
    CaExpiring(String),
}

impl Refused {
    pub fn label(&self) -> &'static str {
        match self {
            Refused::NoToken => "no_token",
            Refused::Token(_) => "bad_token",
            Refused::Expired => "expired_token",
            Refused::Audience(_) => "wrong_audience",
            Refused::UnknownSigner(_) => "unknown_signer",
            Refused::NotServiceAccount(_) => "not_a_service_account",
            Refused::Identity(_) => "wrong_identity",
            Refused::OtherIdentity(_) => "other_identity",
            Refused::Csr(_) => "bad_request",
            Refused::Unavailable(_) => "unavailable",
            Refused::RateLimited(_) => "rate_limited",
            Refused::CaExpiring(_) => "ca_expiring",
        }
    }

    /// The gRPC status the caller gets: a retry helps only when the checker was unreachable.
    pub fn status(&self) -> tonic::Status {
        match self {
            Refused::Unavailable(_) | Refused::RateLimited(_) | Refused::CaExpiring(_) => {
                tonic::Status::unavailable(self.to_string())
            }
            Refused::Csr(_) => tonic::Status::invalid_argument(self.to_string()),
            _ => tonic::Status::permission_denied(self.to_string()),
        }
    }
}
