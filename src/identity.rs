//! Workload identity: SPIFFE IDs and the development certificate authority.
//!
//! An identity is a SPIFFE ID carried in the URI SAN of an X.509 certificate:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

mod dev_tokens;
mod devca;
mod spiffe;

pub use dev_tokens::{DevTokenIssuer, DEV_TOKEN_ISSUER};
pub use devca::{CaFiles, DevCa, DevCaError, LeafSpec, WorkloadFiles};
pub use spiffe::{
    cert_identity, check_trust_anchor_certs, check_trust_anchors, is_namespace_name, is_service_account_name,
    pem_problem, spiffe_id_from_der, CertIdentity, InvalidSpiffeId, SpiffeId,
};
