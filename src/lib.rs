//! Palisade: an API-security sidecar for service meshes, built on pingora.
//!
//! Modules are split by concern; `app` is the one place that wires them together.
//! See ARCHITECTURE.md for how a request and a policy flow through them.

// Denied everywhere; `memory` holds the one exception (a madvise), allowed on that function only.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod authn;
pub mod ca;
pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod identity;
pub mod initnet;
pub mod inject;
pub mod lifecycle;
mod memory;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod waf;
pub mod yaml;
