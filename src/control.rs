//! The control plane and its channel (SPEC section 8).
//!
//! Server side: [`catalog`] reads a directory of policy files into an immutable catalog, kept per
//! file at its last good version; [`server`] serves one gRPC stream per sidecar and sends each
//! the snapshot of exactly the policies that select it; [`status`] records what every sidecar
//! acknowledged, for `/status` and the metrics; [`plane`] wires them into `palisade control`.
//!
//! Sidecar side: [`channel`] keeps one stream to the control plane open, applies the snapshots
//! it receives through the policy store, and answers ACK or NACK.

mod admin;
pub mod catalog;
pub mod channel;
mod codec;
mod metrics;
pub mod plane;
mod server;
mod status;
mod transport;

/// The protocol, generated from `proto/palisade/control/v1/policy.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("palisade.control.v1");
}

pub use catalog::{Catalog, PolicyDirectory};
pub use channel::{ChannelState, PolicyChannel};
pub use plane::ControlPlane;
pub use transport::connector;

/// The identity sidecars expect of the control plane unless configured otherwise.
pub fn default_identity(trust_domain: &str) -> crate::identity::SpiffeId {
    crate::identity::SpiffeId::for_workload(trust_domain, "palisade-system", "palisade-control")
        .expect("a valid trust domain makes a valid SPIFFE ID")
}
