//! Palisade: an API-security sidecar for service meshes, built on pingora.
//!
//! Modules are split by concern; `app` is the one place that wires them together.
//! See ARCHITECTURE.md for how a request and a policy flow through them.

// Denied everywhere; `memory` holds the two exceptions (madvise, mallinfo2), allowed on those functions only.
#![deny(unsafe_code)]

/// The pingora stream traits a connection wrapper passes straight to the stream it wraps: its
/// id and its digests. `Peek`, `Shutdown` and `Ssl` are each wrapper's own business.
/// `pass_stream_digests!(Wrapper, s => &s.inner, s => &mut s.inner)`.
macro_rules! pass_stream_digests {
    ($wrapper:ty, $this:ident => $inner:expr, $this_mut:ident => $inner_mut:expr) => {
        impl pingora::protocols::UniqueID for $wrapper {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                let $this = self;
                $inner.id()
            }
        }

        impl pingora::protocols::GetTimingDigest for $wrapper {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                let $this = self;
                $inner.get_timing_digest()
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                let $this = self;
                $inner.get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                let $this = self;
                $inner.get_write_pending_time()
            }
        }

        impl pingora::protocols::GetProxyDigest for $wrapper {
            fn get_proxy_digest(&self) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                let $this = self;
                $inner.get_proxy_digest()
            }

            fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
                let $this_mut = self;
                $inner_mut.set_proxy_digest(digest)
            }
        }

        impl pingora::protocols::GetSocketDigest for $wrapper {
            fn get_socket_digest(&self) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                let $this = self;
                $inner.get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
                let $this_mut = self;
                $inner_mut.set_socket_digest(digest)
            }
        }
    };
}

pub mod admin;
pub mod app;
pub mod authn;
pub mod ca;
pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod files;
pub mod identity;
pub mod initnet;
pub mod inject;
pub mod lifecycle;
mod memory;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod query;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod waf;
pub mod yaml;
