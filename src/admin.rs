//! The sidecar's admin listener (SPEC section 6): liveness, readiness, metrics, the effective
//! configuration, log level and shutdown.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use tokio::sync::watch;

use crate::channel::ChannelState;
use crate::lifecycle::Readiness;
use crate::policy::PolicyStore;
use crate::telemetry::{LogLevel, Telemetry};
use crate::tls::TlsStore;

pub struct Admin {
    /// The certificate from the control plane's CA, when that is where it comes from.
    pub identity: Option<Arc<crate::channel::IdentityState>>,
    pub telemetry: Arc<Telemetry>,
    pub tls: Arc<TlsStore>,
    pub policy: Arc<PolicyStore>,
    /// The control channel, when a control plane is configured.
    pub channel: Option<Arc<ChannelState>>,
    pub readiness: Arc<Readiness>,
    /// The effective configuration, as loaded (it holds paths, never key material).
    pub config: serde_json::Value,
    pub log_level: LogLevel,
    pub shutdown: watch::Sender<bool>,
}

const MAX_BODY: usize = 4096;

pub(crate) fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("valid response")
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    reply(status, "text/plain; charset=utf-8", format!("{body}\n").into_bytes())
}

pub(crate) fn json_reply(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&value).expect("json");
    body.push(b'\n');
    reply(status, "application/json", body)
}

impl Admin {
    /// A certificate that a peer would accept: issued by the CA when that is the source, and
    /// not past its end whatever the source.
    fn identity_ready(&self) -> bool {
        let now = std::time::SystemTime::now();
        let expired = self.tls.current().credentials.not_after
            <= now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        match &self.identity {
            Some(state) => state.ready(now),
            None => !expired,
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        let tls = self.tls.current();
        let creds = &tls.credentials;
        let policy = self.policy.current();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config": self.config,
            "identity": {
                "spiffeId": creds.id.as_str(),
                "serial": creds.serial,
                "notAfter": creds.not_after,
                // Counts every credential set put in force (certificate or trust bundle).
                "generation": tls.generation,
                "trustBundle": {"certificates": creds.bundle.len()},
                "source": match self.tls.files() {
                    Some(files) => json!({"files": files}),
                    None => json!({"controlPlane": self.identity.as_ref().map(|s| json!({
                        "issued": !creds.placeholder,
                        "renewals": s.renewals(),
                        "failures": s.failures(),
                        "lastError": s.last_error(),
                    }))}),
                },
            },
            "policy": {
                "version": policy.version,
                "source": self.policy.source().label(),
                "files": self.policy.files(),
                "controlPlane": self.channel.as_ref().map(|c| json!({
                    "connected": c.connected(),
                    "attempts": c.attempts(),
                    "lastError": c.last_error(),
                })),
                "limits": {"maxUriBytes": policy.limits.max_uri_bytes, "maxHeaderBytes": policy.limits.max_header_bytes,
                           "maxBodyBytes": policy.limits.max_body_bytes},
                "mtls": policy.mtls,
                "rateLimitKeys": policy.rate_limit_keys(),
                "policies": policy.documents.iter().map(|d| json!({"source": d.file, "policy": d.policy})).collect::<Vec<_>>(),
            },
        })
    }

    async fn read_body(session: &mut ServerSession) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return None;
            }
        }
        Some(body)
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let from_loopback = session.client_addr().and_then(|a| a.as_inet()).is_some_and(|a| match a.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        });
        match (method, path.as_str()) {
            (Method::GET, "/live") => text(StatusCode::OK, "live"),
            (Method::GET, "/ready") if !self.identity_ready() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no valid certificate (not yet issued, or expired)")
            }
            (Method::GET, "/ready") if !self.policy.ready() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no policy loaded yet (policy.failMode: closed)")
            }
            (Method::GET, "/ready") if self.readiness.is_ready() => text(StatusCode::OK, "ready"),
            (Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
            (Method::GET, "/metrics") => {
                let tls = self.tls.current();
                self.telemetry.metrics.certificate_expiry.set(tls.credentials.not_after as f64);
                reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.telemetry.metrics.render())
            }
            (Method::GET, "/config_dump") => json_reply(StatusCode::OK, self.config_dump()),
            (Method::POST, "/shutdown") if from_loopback => {
                tracing::info!("shutdown requested through the admin API");
                self.shutdown.send_replace(true);
                text(StatusCode::OK, "shutting down")
            }
            (Method::POST, "/shutdown") => text(StatusCode::FORBIDDEN, "shutdown is accepted from localhost only"),
            (Method::GET, "/log_level") => text(StatusCode::OK, &self.log_level.get()),
            (Method::POST, "/log_level") if from_loopback => {
                let Some(body) = Self::read_body(session).await else {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "filter too long");
                };
                match self.log_level.set(String::from_utf8_lossy(&body).trim()) {
                    Ok(()) => text(StatusCode::OK, &self.log_level.get()),
                    Err(e) => text(StatusCode::BAD_REQUEST, &e),
                }
            }
            (Method::POST, "/log_level") => {
                text(StatusCode::FORBIDDEN, "log level changes are accepted from localhost only")
            }
            (_, "/live" | "/ready" | "/metrics" | "/config_dump" | "/shutdown" | "/log_level") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => text(StatusCode::NOT_FOUND, "not found; try /live /ready /metrics /config_dump /log_level"),
        }
    }
}
