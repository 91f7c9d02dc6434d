//! The sidecar's admin listener (SPEC section 6): liveness, readiness, metrics, the effective
//! configuration, log level and shutdown; and the app's own probes, asked for the kubelet.

mod app_probes;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use tokio::sync::watch;

use crate::channel::ChannelState;
use crate::config::split_authority;
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
    /// `admin.appProbes`, by name.
    pub app_probes: std::collections::BTreeMap<String, crate::config::AppProbe>,
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

/// This machine's (the pod's) own host name, read once: a `Host` it may be addressed by.
fn own_host_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|n| n.trim().to_ascii_lowercase())
            .unwrap_or_default()
    })
}

/// A host the admin port may be addressed by: an IP literal, `localhost`, or the pod's own name.
/// A name that resolves here only because an attacker's DNS says so (DNS rebinding: a web page
/// on `evil.example` whose name now points at 127.0.0.1) is none of these.
fn own_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    unbracketed.parse::<IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || (!own_host_name().is_empty() && host.eq_ignore_ascii_case(own_host_name()))
}

/// Why a state-changing request is refused before it is looked at: a `Host` that is not one of
/// the admin's own names, or an `Origin` other than the admin's own (a web page's request).
/// Clients that are not browsers (curl, kubelet hooks) send no `Origin`, and HTTP/1.0 clients may
/// send no `Host`: both are accepted.
pub(crate) fn foreign_request(session: &ServerSession) -> Option<&'static str> {
    let own_port = session.server_addr().and_then(|a| a.as_inet()).map(|a| a.port());
    const FOREIGN_HOST: &str = "the Host header is not this pod's address or name";
    if let Some(host) = session.get_header(http::header::HOST) {
        if !host.to_str().is_ok_and(|h| own_host(split_authority(h).0)) {
            return Some(FOREIGN_HOST);
        }
    }
    // An absolute-form target (`POST http://evil.example/shutdown`) names a host too.
    if session.req_header().uri.host().is_some_and(|h| !own_host(h)) {
        return Some(FOREIGN_HOST);
    }
    if let Some(origin) = session.get_header(http::header::ORIGIN) {
        let own = origin.to_str().ok().and_then(|o| o.strip_prefix("http://")).is_some_and(|authority| {
            let (host, port) = split_authority(authority);
            let port = match port {
                None => Some(80),
                Some(p) => p.parse::<u16>().ok(),
            };
            own_host(host) && port.is_some() && port == own_port
        });
        if !own {
            return Some("the request comes from another origin (a web page)");
        }
    }
    None
}

/// Whether the caller is on this pod (`kubectl port-forward` and `exec` arrive on loopback too).
pub(crate) fn from_loopback(session: &ServerSession) -> bool {
    session.client_addr().and_then(|a| a.as_inet()).is_some_and(|a| a.ip().to_canonical().is_loopback())
}

const FROM_THE_POD_ONLY: &str =
    "this endpoint answers on localhost only; the pod address serves GET /live, /ready and /metrics";

/// What the admin listener serves to callers other than the pod itself: the probes (its own
/// and the app's) and the scrape.
fn served_to_the_network(method: &Method, path: &str) -> bool {
    *method == Method::GET && (matches!(path, "/live" | "/ready" | "/metrics") || path.starts_with(APP_HEALTH))
}

const APP_HEALTH: &str = "/app-health/";

const REDACTED: &str = "<redacted>";

/// What `/config_dump` must not show: condition values (`when`: they may hold API keys or
/// tenant names a policy singles out), secrets and tokens, header values (an app probe's
/// `Authorization`), and the private or symmetric parts of inline JWKS keys. Names are matched,
/// so a field added later under such a name is covered too.
fn redact(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if key == "when" {
                    for condition in field.as_array_mut().into_iter().flatten() {
                        if let Some(values) = condition.get_mut("values") {
                            *values = Value::from(REDACTED);
                        }
                    }
                } else if key == "headers" {
                    // Headers a probe or an exporter sends: their values are often credentials
                    // (`Authorization: Bearer ...`, an API key); the names stay.
                    match field {
                        Value::Array(items) => {
                            for value in items.iter_mut().filter_map(|h| h.get_mut("value")) {
                                *value = Value::from(REDACTED);
                            }
                        }
                        Value::Object(named) => named.values_mut().for_each(|v| *v = Value::from(REDACTED)),
                        _ => {}
                    }
                } else if key == "inline" {
                    // An inline JWKS: public keys may stay, "k" (HMAC) and private parts may not.
                    if let Some(text) = field.as_str() {
                        *field = Value::from(redact_jwks(text));
                    }
                } else if crate::config::holds_secrets(key) && !field.is_boolean() && !field.is_null() {
                    *field = Value::from(REDACTED);
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn redact_jwks(text: &str) -> String {
    const PRIVATE: [&str; 8] = ["k", "d", "p", "q", "dp", "dq", "qi", "oth"];
    let Ok(mut jwks) = serde_json::from_str::<serde_json::Value>(text) else {
        return REDACTED.to_string();
    };
    for key in jwks.get_mut("keys").and_then(|k| k.as_array_mut()).into_iter().flatten() {
        for member in PRIVATE {
            if let Some(v) = key.get_mut(member) {
                *v = serde_json::Value::from(REDACTED);
            }
        }
    }
    jwks.to_string()
}

impl Admin {
    /// A certificate that a peer would accept: issued by the CA when that is the source, and
    /// not past its end whatever the source.
    fn identity_ready(&self) -> bool {
        let now = std::time::SystemTime::now();
        match &self.identity {
            Some(state) => state.ready(now),
            None => !self.tls.current().credentials.expired_at(now),
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        let mut dump = self.config_dump_unredacted();
        redact(&mut dump);
        dump
    }

    fn config_dump_unredacted(&self) -> serde_json::Value {
        let tls = self.tls.current();
        let creds = &tls.credentials;
        let policy = self.policy.current();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config": self.config,
            // In force: the file's telemetry.otlp after the OTEL_* variables (null: no traces).
            "traces": self.telemetry.traces.as_ref().map(|t| t.settings().dump()),
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
                // From the same snapshot as the rest: a second load could see the next one.
                "source": policy.source.label(),
                "files": self.policy.files(),
                "controlPlane": self.channel.as_ref().map(|c| json!({
                    "connected": c.connected(),
                    "attempts": c.attempts(),
                    "lastError": c.last_error(),
                    "revision": c.revision(),
                })),
                "limits": {"maxUriBytes": policy.limits.max_uri_bytes, "maxHeaderBytes": policy.limits.max_header_bytes,
                           "maxBodyBytes": policy.limits.max_body_bytes},
                "mtls": policy.mtls,
                "portLevelMtls": policy.port_mtls.iter().map(|(port, mode)| (port.to_string(), json!(mode))).collect::<serde_json::Map<_, _>>(),
                "rateLimitKeys": policy.rate_limit_keys(),
                "policies": policy.documents.iter().map(|d| json!({"source": d.file, "policy": d.policy})).collect::<Vec<_>>(),
            },
        })
    }

    /// The whole body, or why not: a filter cut short (the client went, or sent less than its
    /// Content-Length) is not applied as if it were whole.
    async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, (StatusCode, &'static str)> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Ok(body),
                Err(_) => return Err((StatusCode::BAD_REQUEST, "the body did not arrive whole")),
            }
            if body.len() > MAX_BODY {
                return Err((StatusCode::PAYLOAD_TOO_LARGE, "filter too long"));
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let from_loopback = from_loopback(session);
        // The pod address serves what kubelet and Prometheus need; what shows policies or changes
        // state is for the pod itself, so another pod (or a node) cannot read a policy's shape,
        // raise the log level to flood the logs, or shut the sidecar down.
        if !from_loopback && !served_to_the_network(&method, &path) {
            return text(StatusCode::FORBIDDEN, FROM_THE_POD_ONLY);
        }
        // Whatever changes state (every method but GET and HEAD, on any path), and whatever only
        // the pod may read: a web page that rebinds its own name to 127.0.0.1 is same-origin to
        // the browser, so its reads of /config_dump would be answered too; its Host gives it away.
        let changes_state = method != Method::GET && method != Method::HEAD;
        if changes_state || !served_to_the_network(&method, &path) {
            if let Some(why) = foreign_request(session) {
                tracing::warn!(path, why, "admin request refused");
                return text(StatusCode::FORBIDDEN, why);
            }
        }
        match (method, path.as_str()) {
            (Method::GET, "/live") => text(StatusCode::OK, "live"),
            (Method::GET, "/ready") if !self.identity_ready() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no valid certificate (not yet issued, or expired)")
            }
            (Method::GET, "/ready") if !self.policy.ready() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no policy loaded yet (policy.failMode: closed)")
            }
            (Method::GET, "/ready") => match self.readiness.why_not() {
                None => text(StatusCode::OK, "ready"),
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            },
            (Method::GET, "/metrics") => {
                let tls = self.tls.current();
                self.telemetry.metrics.certificate_expiry.set(tls.credentials.not_after as f64);
                reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.telemetry.metrics.render())
            }
            (Method::GET, "/config_dump") => json_reply(StatusCode::OK, self.config_dump()),
            (Method::GET, "/inventory") => json_reply(StatusCode::OK, self.telemetry.inventory.report()),
            (Method::GET, path) if path.starts_with(APP_HEALTH) => {
                let Some(probe) = self.app_probes.get(&path[APP_HEALTH.len()..]) else {
                    return text(StatusCode::NOT_FOUND, "no such app probe (admin.appProbes)");
                };
                // The address the kubelet reached: the pod's, where the app listens for it.
                let address = session
                    .server_addr()
                    .and_then(|a| a.as_inet())
                    .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip().to_canonical());
                let verdict = app_probes::ask(probe, address).await;
                text(verdict.status, &verdict.why)
            }
            (Method::POST, "/shutdown") => {
                tracing::info!("shutdown requested through the admin API");
                self.shutdown.send_replace(true);
                text(StatusCode::OK, "shutting down")
            }
            (Method::GET, "/log_level") => text(StatusCode::OK, &self.log_level.get()),
            (Method::POST, "/log_level") => {
                let body = match Self::read_body(session).await {
                    Ok(body) => body,
                    Err((status, why)) => return text(status, why),
                };
                match self.log_level.set(String::from_utf8_lossy(&body).trim()) {
                    Ok(()) => text(StatusCode::OK, &self.log_level.get()),
                    Err(e) => text(StatusCode::BAD_REQUEST, &e),
                }
            }
            (_, "/live" | "/ready" | "/metrics" | "/config_dump" | "/inventory" | "/shutdown" | "/log_level") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            (_, path) if path.starts_with(APP_HEALTH) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => text(StatusCode::NOT_FOUND, "not found; try /live /ready /metrics /config_dump /inventory /log_level"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_hosts_are_ip_literals_localhost_and_the_pods_name() {
        for host in ["127.0.0.1", "10.1.2.3", "[::1]", "::1", "localhost", "LOCALHOST", "localhost."] {
            assert!(own_host(host), "{host}");
        }
        for host in ["evil.example", "127.0.0.1.nip.io", "localhost.evil.example", ""] {
            assert!(!own_host(host), "{host}");
        }
        assert_eq!(split_authority("[::1]:15000"), ("[::1]", Some("15000")));
        assert_eq!(split_authority("[::1]"), ("[::1]", None));
        assert_eq!(split_authority("::1"), ("::1", None));
        assert_eq!(split_authority("evil.example:80"), ("evil.example", Some("80")));
        assert_eq!(split_authority("localhost.:15000"), ("localhost", Some("15000")));
    }

    #[test]
    fn redaction_covers_conditions_secrets_tokens_and_private_jwk_parts() {
        let mut dump = json!({
            "rules": [{"name": "r", "when": [{"key": "request.headers[x-k]", "values": ["v1"]}]}],
            "hmacSecret": {"inline": "s1"},
            "clientSecret": "s2",
            "token": "t1",
            "forwardOriginalToken": true,
            "tokenFile": "/var/run/token",
            "jwks": {"inline": r#"{"keys":[{"kty":"oct","kid":"a","k":"s3"},{"kty":"RSA","n":"pub","e":"AQAB","d":"s4"}]}"#},
            "appProbes": {"app/liveness": {"port": 8080, "headers": [{"name": "Authorization", "value": "Bearer s5"}]}},
            "otlp": {"headers": {"api-key": "s6"}},
        });
        redact(&mut dump);
        let text = dump.to_string();
        assert_eq!(dump["appProbes"]["app/liveness"]["headers"][0]["name"], "Authorization", "names stay");
        for secret in ["v1", "s1", "s2", "t1", "s3", "s4", "Bearer s5", "s6"] {
            assert!(
                !text.contains(&format!("\"{secret}\"")) && !text.contains(&format!("\\\"{secret}\\\"")),
                "{secret}: {text}"
            );
        }
        assert_eq!(dump["rules"][0]["when"][0]["key"], "request.headers[x-k]");
        assert_eq!(dump["forwardOriginalToken"], true);
        assert_eq!(dump["tokenFile"], "/var/run/token", "paths to secrets are not secrets");
        assert!(text.contains("pub"), "public key parts stay: {text}");
    }
}
