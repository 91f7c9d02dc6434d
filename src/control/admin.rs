//! The control plane's admin listener: `/live`, `/ready`, `/metrics`, and `/status`, which shows
//! every connected sidecar and the version it applied, so an operator can see that a change
//! reached every pod.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use tokio::sync::watch;

use super::catalog::Catalog;
use super::metrics::ControlMetrics;
use super::status::{Registry, SyncState};
use crate::admin::{json_reply, reply, text};
use crate::lifecycle::Readiness;

pub struct ControlAdmin {
    /// The control plane's own certificate, as reloaded: `/status` shows whom it now proves.
    pub tls: Arc<crate::tls::TlsStore>,
    pub policies_dir: std::path::PathBuf,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<ControlMetrics>,
    /// Listeners up and not draining: the same conditions as a sidecar's.
    pub readiness: Arc<Readiness>,
}

impl ControlAdmin {
    /// Ready, or why not: the listeners are up and not draining. The policy directory does not
    /// count: the CA and the webhook behind the same Service serve whatever it holds, a
    /// directory that cannot be read keeps the catalog it had, and a replica that has no
    /// catalog it can send puts off policy streams one by one (`UNAVAILABLE`, so each sidecar
    /// retries and may reach another replica). Every replica reads the same mount: failing
    /// readiness on it would take them all out of the Service together.
    fn ready(&self) -> Result<(), String> {
        if let Some(why) = self.readiness.why_not() {
            return Err(why.into());
        }
        // Every handshake of the policy stream and the CA fails with it: sidecars must be sent
        // to a replica that can complete one.
        let state = self.tls.current();
        if state.credentials.expired_at(std::time::SystemTime::now()) {
            return Err(format!(
                "not ready: the control plane's certificate ({}) has expired; renew the CA (ca.cert) or the identity files",
                state.credentials.serial
            ));
        }
        Ok(())
    }

    fn status(&self) -> serde_json::Value {
        let catalog = self.catalog.borrow().clone();
        let sidecars = self.registry.list();
        let count = |state: SyncState| sidecars.iter().filter(|s| s.state == state).count();
        json!({
            "controlPlane": {
                "identity": self.tls.current().credentials.id.as_str(),
                "certificateNotAfter": self.tls.current().credentials.not_after,
                "version": env!("CARGO_PKG_VERSION"),
            },
            "policies": {
                "dir": self.policies_dir,
                "readable": catalog.readable,
                "servable": catalog.servable(),
                "unservableBecause": catalog.unservable_because,
                "version": catalog.version,
                "revision": catalog.revision,
                "generation": catalog.generation,
                "count": catalog.len(),
                "sources": catalog.sources,
            },
            "summary": {
                "connected": sidecars.len(),
                "synced": count(SyncState::Synced),
                "pending": count(SyncState::Pending),
                "rejected": count(SyncState::Rejected),
                "ahead": count(SyncState::Ahead),
            },
            "sidecars": sidecars,
        })
    }
}

#[async_trait]
impl ServeHttp for ControlAdmin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        match (method, session.req_header().uri.path()) {
            (Method::GET, "/live") => text(StatusCode::OK, "live"),
            (Method::GET, "/ready") => match self.ready() {
                Ok(()) => text(StatusCode::OK, "ready"),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, &why),
            },
            (Method::GET, "/metrics") => {
                self.metrics.certificate_expiry.set(self.tls.current().credentials.not_after as f64);
                reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render())
            }
            // Every sidecar's identity, labels, address and NACK reasons: for an operator on the
            // pod (`kubectl port-forward`, `exec`), as a sidecar's /config_dump is, and never to
            // a web page whose name was rebound to this address.
            (Method::GET, "/status") if !crate::admin::from_loopback(session) => text(
                StatusCode::FORBIDDEN,
                "/status answers on localhost only (kubectl port-forward); the pod address serves /live, /ready and /metrics",
            ),
            (Method::GET, "/status") => match crate::admin::foreign_request(session) {
                Some(why) => text(StatusCode::FORBIDDEN, why),
                None => json_reply(StatusCode::OK, self.status()),
            },
            (_, "/live" | "/ready" | "/metrics" | "/status") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => text(StatusCode::NOT_FOUND, "not found; try /live /ready /metrics /status"),
        }
    }
}
