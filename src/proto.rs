//! The control channel's protocol (`proto/palisade/control/v1/policy.proto`), compiled by
//! `build.rs` with protox, and shared by both ends: the control plane's server and the
//! sidecar's client.

mod codec;

pub use codec::SmallBufferCodec;

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("palisade.control.v1");
}

/// The workload CA's protocol (`proto/palisade/identity/v1/ca.proto`).
#[allow(clippy::all, missing_docs)]
pub mod identity {
    tonic::include_proto!("palisade.identity.v1");
}

pub use generated::*;
