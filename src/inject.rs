//! Kubernetes injection (SPEC section 9): what adds the sidecar to a pod, shared by
//! `palisade inject` (manifests in, manifests out) and the mutating admission webhook.
//!
//! One function decides for a pod and writes the change as a JSON Patch ([`pod::plan`]). The
//! webhook sends that patch to the API server; `palisade inject` applies the same operations
//! to the manifest's text at the places the YAML parser located ([`text`]), so comments, key
//! order and fields this crate does not know stay byte for byte, and both produce the same pod.
//!
//! A pod gets: the `palisade-init` init container (`palisade init-net`, the iptables capture),
//! the sidecar as a native sidecar (`palisade-proxy`, an init container with
//! `restartPolicy: Always`, configured by `PALISADE_CONFIG`), the volumes they use, and the
//! `palisade.dev/injected` annotation. Injecting twice changes nothing.

pub mod annotations;
pub mod command;
mod manifest;
pub mod patch;
pub mod pod;
pub mod text;
pub mod webhook;

pub use crate::config::{
    ControlPlaneRef, FailurePolicy, IdentityMode, IdentitySettings, InjectSettings, ProxyPorts, PullPolicy, Resources,
};
pub use manifest::{inject, plan_object, pod_path, ManifestError, Outcome, Report};
pub use pod::{plan, Decision, PodError, Skip};
pub use webhook::{review, InjectWebhook};

#[cfg(test)]
mod tests;
