//! The control plane and its channel (SPEC section 8).
//!
//! Server side: [`catalog`] reads a directory of policy files into an immutable catalog, kept per
//! file at its last good version; [`server`] serves one gRPC stream per sidecar and sends each
//! the snapshot of exactly the policies that select it; [`status`] records what every sidecar
//! acknowledged, for `/status` and the metrics; [`plane`] wires them into `palisade control`.
//!
//! The sidecar's end of the stream is [`crate::channel`]; the protocol both speak is
//! [`crate::proto`].

mod admin;
pub mod catalog;
mod metrics;
pub mod plane;
mod server;
mod status;
mod transport;
mod workload_ca;

pub use catalog::{Catalog, PolicyDirectory};
pub use plane::ControlPlane;
