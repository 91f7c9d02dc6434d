//! The sidecar's configuration (SPEC section 3).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{HumanDuration, ListenAddr};
use crate::identity::SpiffeId;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SidecarConfig {
    pub identity: IdentityConfig,
    pub trust_domain: TrustDomain,
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
    pub admin: AdminConfig,
    pub workload: WorkloadConfig,
    pub policy: PolicySourceConfig,
    pub telemetry: TelemetryConfig,
    /// Worker threads for the data path; one runtime serves every listener.
    pub threads: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub drain_period: HumanDuration,
    /// DoS defences on the data listeners (SPEC section 3 `limits`).
    pub limits: LimitsConfig,
}

/// SPEC section 3 `limits`: what a connection or a request may cost before it is refused. Every
/// setting the SPEC names is implemented, and `sendTimeout` and `maxMemoryBytes` beside them (the
/// SPEC is silent on callers that stop reading and on memory); anything else is refused as an
/// unknown field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LimitsConfig {
    /// The whole request head must arrive within this, counted from the connection's start (its
    /// first request) or from the first byte of a later one: a slowloris client that sends a byte
    /// at a time is closed however often it sends.
    pub header_timeout: HumanDuration,
    /// A keep-alive connection with no request in flight (HTTP/1.1: no bytes either way; HTTP/2:
    /// no open stream) is closed after this.
    pub idle_timeout: HumanDuration,
    /// No request-body bytes for this long: the request fails (408 when no answer has started)
    /// and its connection closes.
    pub body_timeout: HumanDuration,
    /// The caller took none of the answer for this long (a slow-read attack): the request is cut
    /// off, its HTTP/1.1 connection closed or its HTTP/2 stream reset. nginx's `send_timeout`.
    pub send_timeout: HumanDuration,
    /// Open connections per listener; past it new connections are closed at accept.
    pub max_connections: usize,
    /// Open connections from one source address per listener; past it new ones
    /// from that source are closed at accept. Not on the outbound listener, whose only caller is
    /// the pod's own app.
    pub max_connections_per_source: usize,
    /// Requests in flight per data listener; past it new ones get 503 with `Retry-After`.
    pub max_inflight: usize,
    /// Requests in flight on the inbound listener from one source address; past it that
    /// source's new ones get 503, others' do not. Absent: a quarter of `maxInflight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight_per_source: Option<usize>,
    /// Heap in use past which the sidecar is overloaded: new requests get 503 and answers
    /// stalled on callers that do not read them are cut off. Absent: three quarters of the
    /// container's memory limit, when it has one; 0: never.
    pub max_memory_bytes: Option<u64>,
    /// HTTP/2 connections on the data listeners.
    pub http2: Http2Limits,
}

/// SPEC section 3 `limits.http2`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Http2Limits {
    /// Streams a peer may have open on one connection (SETTINGS_MAX_CONCURRENT_STREAMS); more are
    /// refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// A request's decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE); a longer one is answered 431.
    pub max_header_list_bytes: u32,
    /// RST_STREAM frames a peer may send on one connection within a second; past it the connection
    /// is closed (rapid reset, CVE-2023-44487).
    pub max_resets_per_second: u32,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits { max_concurrent_streams: 256, max_header_list_bytes: 65536, max_resets_per_second: 200 }
    }
}

/// The least `limits.maxMemoryBytes` that is not 0.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;

impl LimitsConfig {
    /// `maxMemoryBytes` as it applies in this process: set, or three quarters of the container's
    /// memory limit (`container_limit`), or none.
    pub fn memory_limit(&self, container_limit: Option<u64>) -> Option<u64> {
        match self.max_memory_bytes {
            Some(0) => None,
            Some(bytes) => Some(bytes),
            None => container_limit.map(|limit| (limit / 4 * 3).max(MIN_MEMORY_BYTES)),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_timeout: HumanDuration(std::time::Duration::from_secs(10)),
            idle_timeout: HumanDuration(std::time::Duration::from_secs(300)),
            body_timeout: HumanDuration(std::time::Duration::from_secs(60)),
            send_timeout: HumanDuration(std::time::Duration::from_secs(60)),
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            max_inflight: 5_000,
            max_inflight_per_source: None,
            max_memory_bytes: None,
            http2: Http2Limits::default(),
        }
    }
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            identity: IdentityConfig::default(),
            trust_domain: TrustDomain("cluster.local".into()),
            inbound: InboundConfig::default(),
            outbound: OutboundConfig::default(),
            admin: AdminConfig::default(),
            workload: WorkloadConfig::default(),
            policy: PolicySourceConfig::default(),
            telemetry: TelemetryConfig::default(),
            threads: 1,
            drain_period: HumanDuration(std::time::Duration::from_secs(5)),
            limits: LimitsConfig::default(),
        }
    }
}

/// A SPIFFE trust domain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomain(pub String);

impl std::str::FromStr for TrustDomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SpiffeId::parse(&format!("spiffe://{s}"))
            .ok()
            .filter(|id| id.path().is_empty())
            .map(|_| TrustDomain(s.to_string()))
            .ok_or_else(|| format!("expected a trust domain such as cluster.local (lowercase letters, digits, '.', '-', '_'), got {s:?}"))
    }
}

impl std::fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Where the workload certificate comes from: files now; the control plane's CA later.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityConfig {
    #[serde(default)]
    pub files: Option<IdentityFilesConfig>,
    #[serde(default)]
    pub control_plane: Option<IdentityFromControlPlane>,
}

/// Certificates from the control plane's CA (SPEC section 2 (b)): the sidecar makes its key,
/// proves its service account with a projected token, and renews before expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct IdentityFromControlPlane {
    /// `host:port` of the CA (the control plane's Service, port 15012).
    pub address: String,
    /// The roots that sign the CA's own certificate.
    pub trust_bundle: PathBuf,
    /// A Kubernetes projected service-account token with audience `palisade`.
    pub token_file: PathBuf,
    /// The same roots as PEM text, instead of `trustBundle`: what an injected sidecar is given
    /// in its environment, since a pod cannot mount a ConfigMap of another namespace.
    pub trust_anchors: Option<String>,
}

impl Default for IdentityFromControlPlane {
    fn default() -> Self {
        IdentityFromControlPlane {
            address: "palisade-control.palisade-system.svc:15012".into(),
            trust_bundle: "/var/run/palisade/ca.crt".into(),
            token_file: "/var/run/secrets/palisade/token".into(),
            trust_anchors: None,
        }
    }
}

impl Default for IdentityConfig {
    /// Files at the default paths, so `PALISADE_IDENTITY_FILES_*` work without an identity section.
    fn default() -> Self {
        IdentityConfig { files: Some(IdentityFilesConfig::default()), control_plane: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct IdentityFilesConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
    /// How often the files are checked for a rotation.
    pub reload_interval: HumanDuration,
}

impl Default for IdentityFilesConfig {
    fn default() -> Self {
        IdentityFilesConfig {
            cert: "/var/run/palisade/tls.crt".into(),
            key: "/var/run/palisade/tls.key".into(),
            trust_bundle: "/var/run/palisade/ca.crt".into(),
            reload_interval: HumanDuration(std::time::Duration::from_secs(1)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MtlsMode {
    /// Only mutual TLS with a valid mesh identity.
    #[default]
    STRICT,
    /// Mutual TLS or plaintext; plaintext requests have no principal.
    PERMISSIVE,
}

/// Where the app listens for what a caller sent to `addressed_port` (`addressed` is read only
/// when needed; its port is not used), with `inbound.app` at `app`: port 0 is the port the caller addressed, as an
/// injected sidecar reaches every port of its pod. An unspecified address (`0.0.0.0`, `::`; what
/// injection writes) is the pod address the caller reached, as Istio forwards since 1.10: a port
/// the app bound to loopback only (a metrics or debug port, an agent's API) stays out of the
/// network's reach, where forwarding to 127.0.0.1 put it in reach of every caller the policy let
/// in. HTTP requests and tunnelled connections both go where this says. An IPv6 link-local
/// address keeps the scope (interface) it was reached on: without one, connecting to it fails.
pub fn app_target(
    app: std::net::SocketAddr,
    addressed: impl FnOnce() -> Option<std::net::SocketAddr>,
    addressed_port: u16,
) -> std::net::SocketAddr {
    use std::net::SocketAddr;
    let port = if app.port() == 0 { addressed_port } else { app.port() };
    match (app.ip().is_unspecified(), app.ip().is_unspecified().then(addressed).flatten()) {
        (true, Some(SocketAddr::V6(v6))) => {
            SocketAddr::V6(std::net::SocketAddrV6::new(*v6.ip(), port, 0, v6.scope_id()))
        }
        (true, Some(other)) => SocketAddr::new(other.ip(), port),
        _ => SocketAddr::new(app.ip(), port),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct InboundConfig {
    pub listen: ListenAddr,
    /// The application's own listener, where inbound requests are forwarded.
    pub app: ListenAddr,
    pub mtls: MtlsMode,
    /// The protocol the app speaks; `auto` forwards in the caller's own protocol.
    pub app_protocol: AppProtocol,
    /// How long the app may stay silent while a request waits for its response (504 after);
    /// none by default, so long-lived streams are not cut.
    #[serde(default)]
    pub app_timeout: Option<HumanDuration>,
    /// `false` pins this workload to STRICT: a policy that asks for PERMISSIVE, from a file or
    /// from the control plane, is refused, so no policy push can open the port to plaintext.
    pub allow_permissive: bool,
    /// Request headers whose names hold `_`, on their way to the app.
    pub headers_with_underscores: UnderscoreHeaders,
    /// The app's ports that speak something other than HTTP (a database's protocol, its own
    /// TLS): a mesh peer's tunnel to one is relayed to the app as bytes, once the policy allows
    /// the caller. A tunnel to any other port is refused, so a caller cannot carry HTTP past the
    /// pipeline (the WAF, rate limits, the headers the sidecar sets) to an HTTP port.
    pub opaque_ports: Vec<u16>,
}

/// `inbound.opaquePorts` and `outbound.opaquePorts` by default: the well-known ports of protocols that are not HTTP, as
/// Linkerd's default opaque ports (SMTP, MySQL, Galera, PostgreSQL, Redis, Elasticsearch's
/// transport, memcached).
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// What the app gets of request headers whose names hold `_` (Envoy's
/// `headers_with_underscores_action`). CGI, WSGI, Rack/Puma and PHP read `x_user_id` as
/// `x-user-id` (both are HTTP_X_USER_ID), so such a header is a caller's own copy of one the
/// sidecar sets (`x-forwarded-client-cert`, a forwarded claim) or judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    /// Removed before the request goes to the app, as nginx does by default.
    #[default]
    Drop,
    /// Passed on (an app that uses such names and reads no header the sidecar sets or judges).
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Auto,
    Http1,
    /// HTTP/2 over plaintext with prior knowledge (gRPC servers).
    Http2,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: "0.0.0.0:15006".parse().expect("default"),
            app: "127.0.0.1:8080".parse().expect("default"),
            mtls: MtlsMode::STRICT,
            app_protocol: AppProtocol::Auto,
            app_timeout: None,
            allow_permissive: true,
            headers_with_underscores: UnderscoreHeaders::Drop,
            opaque_ports: DEFAULT_OPAQUE_PORTS.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OutboundConfig {
    pub listen: ListenAddr,
    /// Known destinations: where an authority is reached and which identity must answer there.
    pub destinations: Vec<Destination>,
    /// Destinations without a sidecar that the app may reach in plaintext (a database outside
    /// the mesh, a cloud API behind its own TLS): their requests are forwarded, and connections
    /// that are not HTTP relayed, as they are. Every other destination must prove a mesh
    /// identity, or the request is refused (502 and a security event) and the connection closed:
    /// a mesh never falls back to plaintext on its own, since whoever can break a handshake could
    /// then read the traffic.
    pub passthrough: Vec<super::IpBlock>,
    /// Destination ports whose connections are relayed without waiting for the app's first
    /// bytes: protocols where the server speaks first (MySQL, SMTP), which an outbound listener
    /// would otherwise hold to `limits.headerTimeout` waiting for a request. Relayed to
    /// `passthrough` destinations, tunnelled to mesh ones, like every connection that is not HTTP.
    pub opaque_ports: Vec<u16>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            listen: "127.0.0.1:15001".parse().expect("default"),
            destinations: Vec::new(),
            passthrough: Vec::new(),
            // The server's side relays these by default; a client of a server-first protocol
            // there must not wait for its own first bytes, which never come.
            opaque_ports: DEFAULT_OPAQUE_PORTS.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// The `host[:port]` the application calls (its Host header or request authority).
    pub authority: String,
    /// Where to connect; without it, the original destination or the authority itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<ListenAddr>,
    /// The SPIFFE ID the server must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeIdField>,
}

/// The identities `outbound.destinations` pin to addresses: who must answer a connection there
/// however the app addressed it (HTTP by IP or another name, a TCP tunnel). Addresses compared
/// canonical (an IPv4 peer of a dual-stack socket, `::ffff:a.b.c.d`, as IPv4). Entries that pin
/// different identities at one address are refused when the configuration is read.
#[derive(Debug, Clone, Default)]
pub struct PinnedAddresses(Vec<((std::net::IpAddr, u16), SpiffeId)>);

impl PinnedAddresses {
    pub fn new(destinations: &[Destination]) -> Self {
        let pinned = destinations.iter().filter_map(|d| Some((canonical(d.address?.0), d.identity.clone()?.0)));
        PinnedAddresses(pinned.collect())
    }

    /// The identity pinned at `address`, if any.
    pub fn at(&self, address: SocketAddr) -> Option<&SpiffeId> {
        let at = canonical(address);
        self.0.iter().find(|(known, _)| *known == at).map(|(_, id)| id)
    }
}

fn canonical(address: SocketAddr) -> (std::net::IpAddr, u16) {
    (address.ip().to_canonical(), address.port())
}

/// A SPIFFE ID checked while the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeIdField(pub SpiffeId);

impl<'de> Deserialize<'de> for SpiffeIdField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map(SpiffeIdField).map_err(serde::de::Error::custom)
    }
}

impl Serialize for SpiffeIdField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AdminConfig {
    pub listen: ListenAddr,
    /// The app's own probes, answered at `GET /app-health/<name>` (`<container>/<liveness|
    /// readiness|startup>`): the kubelet's plaintext probe of a captured port would meet STRICT
    /// mTLS, so injection points it here and the sidecar asks the app (Istio's rewrite).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub app_probes: BTreeMap<String, AppProbe>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: "0.0.0.0:15000".parse().expect("default"), app_probes: BTreeMap::new() }
    }
}

/// One app probe, to `port` on the address the kubelet reached: an HTTP GET of `path` (the
/// app's status comes back: 200-399 healthy), a gRPC health check (`grpc`), or with neither a
/// TCP connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppProbe {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `grpc.health.v1.Health/Check` over HTTP/2 without TLS, as the kubelet's `grpc` probe asks:
    /// healthy when the app says `SERVING`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProbe>,
    /// Headers the probe sends (`httpHeaders` of the probe as written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ProbeHeader>,
    /// How long the app has to answer (the probe's `timeoutSeconds`, 1 by default as in
    /// Kubernetes).
    #[serde(default = "one_second")]
    pub timeout_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcProbe {
    /// The service asked about; empty for the server as a whole (the kubelet's default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

fn one_second() -> u32 {
    1
}

impl AppProbe {
    /// What in the probe could not be sent as written; `None` when all of it can.
    pub fn problem(&self) -> Option<String> {
        if self.port == 0 {
            return Some("port must be from 1 to 65535".into());
        }
        if let Some(path) = &self.path {
            if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
                return Some(format!("path must start with / and hold only visible ASCII, got {path:?}"));
            }
        }
        if let Some(grpc) = &self.grpc {
            if self.path.is_some() {
                return Some("a probe is an HTTP GET (path) or a gRPC check (grpc), not both".into());
            }
            if !self.headers.is_empty() {
                return Some("headers go with an HTTP GET (path), not a gRPC check".into());
            }
            if grpc.service.len() > 1024 || grpc.service.chars().any(char::is_control) {
                return Some(format!(
                    "grpc.service must be at most 1024 bytes without control characters, got {:?}",
                    grpc.service
                ));
            }
        }
        for header in &self.headers {
            // The request's framing and connection are the sidecar's: a Content-Length would leave
            // the app waiting for a body that never comes.
            const FRAMING: [&str; 6] = ["content-length", "transfer-encoding", "connection", "te", "upgrade", "expect"];
            if FRAMING.iter().any(|f| header.name.eq_ignore_ascii_case(f)) {
                return Some(format!("header {:?} is the request's framing, which the probe cannot set", header.name));
            }
            let name_ok =
                !header.name.is_empty() && header.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !name_ok || !header.value.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()) {
                return Some(format!("header {:?} cannot be sent as written", header.name));
            }
        }
        if !(1..=300).contains(&self.timeout_seconds) {
            return Some(format!("timeoutSeconds must be from 1 to 300, got {}", self.timeout_seconds));
        }
        None
    }
}

/// Who this sidecar is to policies, as configured. What it leaves out is taken from the
/// certificate: a configuration that named its certificate but not its workload used to be
/// selected as `default/default`, and enforced none of its namespace's policies.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WorkloadConfig {
    /// Left out: the namespace in the certificate's SPIFFE ID (`default` when it names none, and
    /// with `identity.controlPlane`, whose CA issues the certificate for the name given here).
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// A Kubernetes downward-API file of the pod's labels (`key="value"` per line), read at
    /// start and merged over `labels`: how an injected sidecar learns its pod's labels.
    pub labels_file: Option<PathBuf>,
}

/// The workload policies select, as resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload { namespace: "default".into(), service_account: "default".into(), labels: BTreeMap::new() }
    }
}

impl WorkloadConfig {
    /// The workload: the names given, else the certificate's; with the labels of `labelsFile`
    /// merged in (they win: they are the pod's). A name given that the certificate contradicts is
    /// refused: peers would judge this sidecar as the certificate's workload while it enforced
    /// another's policies. Errors name their field.
    pub fn resolve(&self, certificate: Option<&crate::identity::SpiffeId>) -> Result<Workload, (&'static str, String)> {
        let mut resolved = Workload { labels: self.labels.clone(), ..Workload::default() };
        let pick = |field: &'static str,
                    what: &str,
                    given: &Option<String>,
                    certified: Option<&str>|
         -> Result<Option<String>, (&'static str, String)> {
            match (given, certified) {
                (Some(given), Some(certified)) if given != certified => Err((
                    field,
                    format!(
                        "{given:?}, but the certificate ({}) names {what} {certified:?}: peers know this sidecar by its certificate, and policies would select it by this; leave {field} out (the certificate's is taken) or make the two agree",
                        certificate.map(|c| c.as_str()).unwrap_or_default()
                    ),
                )),
                (Some(given), _) => Ok(Some(given.clone())),
                (None, certified) => Ok(certified.map(str::to_string)),
            }
        };
        if let Some(namespace) =
            pick("workload.namespace", "namespace", &self.namespace, certificate.and_then(|c| c.namespace()))?
        {
            resolved.namespace = namespace;
        }
        if let Some(account) = pick(
            "workload.serviceAccount",
            "service account",
            &self.service_account,
            certificate.and_then(|c| c.service_account()),
        )? {
            resolved.service_account = account;
        }
        let Some(file) = &self.labels_file else { return Ok(resolved) };
        let field = "workload.labelsFile";
        let text = crate::yaml::read_file(file, 256 * 1024).map_err(|e| (field, format!("{}: {e}", file.display())))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parsed = line.split_once('=').and_then(|(k, v)| {
                let v = v.strip_prefix('"')?.strip_suffix('"')?;
                Some((k.to_string(), unescape_label(v)?))
            });
            let (key, value) = parsed.ok_or_else(|| {
                (field, format!("{}:{}: expected key=\"value\", got {line:?}", file.display(), n + 1))
            })?;
            resolved.labels.insert(key, value);
        }
        Ok(resolved)
    }
}

/// The downward API writes label values as Go-quoted strings; labels themselves allow only
/// letters, digits, '-', '_' and '.', so only the escapes of `"` and `\\` can appear.
fn unescape_label(v: &str) -> Option<String> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                other => other,
            }),
            c => out.push(c),
        }
    }
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    #[default]
    Closed,
    Open,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PolicySourceConfig {
    pub files: Vec<PathBuf>,
    /// `https://host:port` (or `host:port`) of the control plane's policy stream.
    pub control_plane: Option<ControlPlaneAddress>,
    /// The SPIFFE ID the control plane must present; by default
    /// `spiffe://<trustDomain>/ns/palisade-system/sa/palisade-control`.
    pub control_plane_identity: Option<SpiffeIdField>,
    pub fail_mode: FailMode,
    /// A projected service-account token shown to the control plane on the policy stream, so it
    /// reads this pod's labels from the API server (`identity.controlPlane.tokenFile` when
    /// certificates come from the CA).
    pub token_file: Option<PathBuf>,
}

/// Where the control plane listens: a host (a DNS name or an address) and a port. The name is
/// only used to find it; the control plane is authenticated by its SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneAddress {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for ControlPlaneAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ControlPlaneAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || {
            format!("expected https://HOST:PORT such as https://palisade-control.palisade-system.svc:15010, got {s:?}")
        };
        let rest = s.strip_prefix("https://").unwrap_or(s);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains("://") || rest.contains('/') {
            return Err(expected());
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(expected)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| expected())?;
        if host.is_empty() || port == 0 {
            return Err(expected());
        }
        Ok(ControlPlaneAddress { host: host.to_string(), port })
    }
}

impl<'de> Deserialize<'de> for ControlPlaneAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ControlPlaneAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TelemetryConfig {
    /// OpenTelemetry traces over OTLP; the standard `OTEL_*` variables also apply.
    pub otlp: Option<OtlpConfig>,
    pub events: EventsConfig,
    /// One JSON line per request, apart from the security events.
    pub access_log: bool,
    /// Where access log lines go; stderr by default, so they never interleave with the events
    /// on stdout.
    pub access_log_sink: EventSink,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp: None,
            events: EventsConfig::default(),
            access_log: true,
            access_log_sink: EventSink::Stderr,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OtlpConfig {
    /// The collector: `http://host:4317` for gRPC, `http://host:4318` for HTTP/protobuf.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// The share of traces started here that are recorded (a caller's decision is followed).
    #[serde(deserialize_with = "ratio")]
    pub sampling: f64,
    /// `service.name` of this sidecar's spans; `<serviceAccount>.<namespace>` by default.
    pub service_name: Option<String>,
    /// For an `https://` endpoint: a PEM file of the CA certificates the collector's certificate
    /// must chain to (`OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE` win over it); without it, the
    /// system's bundle.
    pub trust_bundle: Option<PathBuf>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: "http://localhost:4317".into(),
            protocol: OtlpProtocol::Grpc,
            sampling: 0.01,
            service_name: None,
            trust_bundle: None,
        }
    }
}

fn ratio<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!("expected a ratio from 0 to 1, got {value}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    HttpProtobuf,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" | "http" => Ok(OtlpProtocol::HttpProtobuf),
            _ => Err(format!("expected grpc or http/protobuf, got {s:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for OtlpProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for OtlpProtocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct EventsConfig {
    pub sink: EventSink,
    pub format: EventFormat,
}

/// `stdout`, `stderr`, or `file:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EventSink {
    #[default]
    Stdout,
    Stderr,
    File(PathBuf),
}

impl std::str::FromStr for EventSink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(EventSink::Stdout),
            "stderr" => Ok(EventSink::Stderr),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(EventSink::File(path.into())),
                _ => Err(format!("expected stdout, stderr or file:PATH, got {s:?}")),
            },
        }
    }
}

impl<'de> Deserialize<'de> for EventSink {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for EventSink {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventSink::Stdout => s.serialize_str("stdout"),
            EventSink::Stderr => s.serialize_str("stderr"),
            EventSink::File(p) => s.collect_str(&format_args!("file:{}", p.display())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    #[default]
    Ocsf,
    Ecs,
}

/// The shortest `identity.files.reloadInterval` (the control plane's too).
pub(super) const MIN_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest of the `limits` timeouts: no request head, body or silence is awaited for a day.
const MAX_LIMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Worker threads a sidecar may ask for: a sidecar that needs more than this is not one.
pub const MAX_THREADS: usize = 64;

impl super::Validate for SidecarConfig {
    fn validate(&self, env: &dyn super::Env) -> Vec<super::Invalid> {
        use super::Invalid;
        let mut invalid = Vec::new();
        match (&self.identity.files, &self.identity.control_plane) {
            (Some(_), Some(_)) => invalid
                .push(Invalid::field("identity", "give one source of certificates, files or controlPlane, not both")),
            (None, None) => {
                invalid.push(Invalid::field("identity", "give a source of certificates: files or controlPlane"))
            }

            // Every look reads and hashes the certificates and the policy files: at 1 ms an idle
            // sidecar spent most of a core on it.
            (Some(files), None) if files.reload_interval.0 < MIN_RELOAD_INTERVAL => invalid.push(Invalid::field(
                "identity.files.reloadInterval",
                format!("must be at least {}ms", MIN_RELOAD_INTERVAL.as_millis()),
            )),
            _ => {}
        }
        if !self.inbound.allow_permissive && self.inbound.mtls == MtlsMode::PERMISSIVE {
            invalid.push(Invalid::field(
                "inbound.mtls",
                "PERMISSIVE contradicts inbound.allowPermissive: false; use STRICT or allow PERMISSIVE",
            ));
        }
        for (field, value) in [
            ("limits.headerTimeout", self.limits.header_timeout),
            ("limits.idleTimeout", self.limits.idle_timeout),
            ("limits.bodyTimeout", self.limits.body_timeout),
            ("limits.sendTimeout", self.limits.send_timeout),
        ] {
            if value.0.is_zero() {
                invalid.push(Invalid::field(field, "must be more than 0"));
            }
            // Deadlines are instants this far ahead; past what the clock can add, every
            // connection's timer panicked (and /live with them).
            if value.0 > MAX_LIMIT_TIMEOUT {
                invalid.push(Invalid::field(field, "must be at most 24h"));
            }
        }
        if self.outbound.opaque_ports.contains(&0) {
            invalid.push(Invalid::field("outbound.opaquePorts", "every port must be from 1 to 65535, got 0"));
        }
        // An identity no peer can prove is a 502 for every request to it: say so at load.
        for (i, d) in self.outbound.destinations.iter().enumerate() {
            let Some(identity) = &d.identity else { continue };
            let field = format!("outbound.destinations[{i}].identity");
            if identity.0.trust_domain() != self.trust_domain.0 {
                invalid.push(Invalid::field(&field, format!(
                    "{} is of trust domain {}, not trustDomain {}: a peer of another trust domain is refused at the handshake (there are no trust-domain aliases), so every request to {} would be 502",
                    identity.0, identity.0.trust_domain(), self.trust_domain.0, d.authority
                )));
            } else if identity.0.path().is_empty() {
                invalid.push(Invalid::field(&field, format!(
                    "{} is the trust domain's own ID, which no workload may present: name the workload (spiffe://{}/ns/NAMESPACE/sa/SERVICE_ACCOUNT)",
                    identity.0, self.trust_domain.0
                )));
            }
        }
        // One address, one workload: two identities pinned at one address cannot both answer
        // there, and which one held would depend on the order of the list.
        let pinned = PinnedAddresses::new(&self.outbound.destinations);
        for (i, d) in self.outbound.destinations.iter().enumerate() {
            let (Some(address), Some(identity)) = (d.address, &d.identity) else { continue };
            if let Some(first) = pinned.at(address.0).filter(|first| **first != identity.0) {
                invalid.push(Invalid::field(
                    &format!("outbound.destinations[{i}].identity"),
                    format!("{} at {}, where an earlier entry pins {first}: one address is one workload's; give this authority that identity, or its own address", identity.0, address.0),
                ));
            }
        }
        // One authority, one entry: two would leave which address or identity answers to the
        // list's order. Compared as the outbound router compares them: ASCII case and a final
        // dot aside (`orders.shop.` is `orders.shop`; the review).
        for (i, d) in self.outbound.destinations.iter().enumerate() {
            let (host, port) = split_authority(&d.authority);
            let earlier = self.outbound.destinations[..i].iter().position(|e| same_authority(&e.authority, host, port));
            if let Some(first) = earlier {
                invalid.push(Invalid::field(
                    &format!("outbound.destinations[{i}].authority"),
                    format!(
                        "{} is also outbound.destinations[{first}] ({}; names are compared without regard to case or a final dot): one entry per authority, or which one answers depends on the list's order; merge the two",
                        d.authority, self.outbound.destinations[first].authority
                    ),
                ));
            }
        }
        if self.inbound.opaque_ports.contains(&0) {
            invalid.push(Invalid::field("inbound.opaquePorts", "every port must be from 1 to 65535, got 0"));
        }
        if self.limits.max_connections == 0 {
            invalid.push(Invalid::field("limits.maxConnections", "must be at least 1"));
        }
        if self.limits.max_connections_per_source == 0 {
            invalid.push(Invalid::field("limits.maxConnectionsPerSource", "must be at least 1"));
        }
        if self.limits.max_memory_bytes.is_some_and(|bytes| bytes > 0 && bytes < MIN_MEMORY_BYTES) {
            invalid.push(Invalid::field(
                "limits.maxMemoryBytes",
                format!("must be 0 (no limit) or at least {MIN_MEMORY_BYTES} (a sidecar's own baseline is a few MB)"),
            ));
        }
        if self.limits.max_inflight == 0 {
            invalid.push(Invalid::field("limits.maxInflight", "must be at least 1"));
        }
        if self.limits.max_inflight_per_source == Some(0) {
            invalid.push(Invalid::field("limits.maxInflightPerSource", "must be at least 1"));
        }
        let h2 = &self.limits.http2;
        // Past 4096 streams at once a connection's streams are no longer followed, and with them
        // its idleness (serve.rs): no client needs that many on one connection.
        if !(1..=4096).contains(&h2.max_concurrent_streams) {
            invalid.push(Invalid::field(
                "limits.http2.maxConcurrentStreams",
                format!("must be from 1 to 4096, got {}", h2.max_concurrent_streams),
            ));
        }
        // Below about a kilobyte no ordinary request head fits; past 16 MiB HPACK's memory is the
        // attacker's to choose.
        if !(1024..=16 << 20).contains(&h2.max_header_list_bytes) {
            invalid.push(Invalid::field(
                "limits.http2.maxHeaderListBytes",
                format!("must be from 1024 to 16777216, got {}", h2.max_header_list_bytes),
            ));
        }
        if h2.max_resets_per_second == 0 {
            invalid.push(Invalid::field("limits.http2.maxResetsPerSecond", "must be at least 1"));
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            invalid.push(Invalid::field("threads", format!("must be from 1 to {MAX_THREADS}, got {}", self.threads)));
        }
        for (name, probe) in &self.admin.app_probes {
            let named =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/'));
            if !named {
                invalid.push(Invalid::field(
                    &format!("admin.appProbes.{name}"),
                    "a probe's name is <container>/<kind>: letters, digits, '-', '.' and '/'",
                ));
            }
            if let Some(problem) = probe.problem() {
                invalid.push(Invalid::field(&format!("admin.appProbes.{name}"), problem));
            }
        }
        let listeners = [
            ("inbound.listen", self.inbound.listen),
            ("outbound.listen", self.outbound.listen),
            ("admin.listen", self.admin.listen),
        ];
        invalid.extend(ListenAddr::clashes(&listeners.map(|(field, listen)| (field, listen.0))));
        // The app at one of the sidecar's own listeners: each request would come back to the
        // sidecar until a limit stopped it (at the outbound port, one request went round 4,500
        // times and took the heap to 444 MB). A loopback or wildcard listener takes both IP
        // families, and an app at a wildcard address is reached on this host.
        let app = self.inbound.app.0;
        // `::ffff:127.0.0.1` is 127.0.0.1 (a loop that went 4,470 times through the outbound port).
        let app_ip = app.ip().to_canonical();
        let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
        // An address of this host's own (the pod's, behind a wildcard listener): one it may bind.
        let this_hosts = |ip: std::net::IpAddr| std::net::UdpSocket::bind((ip, 0)).is_ok();
        let reaches = |listen: SocketAddr| {
            let listen_ip = listen.ip().to_canonical();
            app.port() == listen.port()
                && (app_ip == listen_ip
                    || (local(listen_ip) && local(app_ip))
                    || (listen_ip.is_unspecified() && (app_ip.is_loopback() || this_hosts(app_ip))))
        };
        if let Some((field, listen)) = listeners.iter().find(|(_, listen)| reaches(listen.0)) {
            invalid.push(Invalid::field(
                "inbound.app",
                format!("{app} is {field}'s own address ({listen}): name the app's port"),
            ));
        }
        if let Some(namespace) = self.workload.namespace.as_deref().filter(|n| !crate::identity::is_namespace_name(n)) {
            invalid.push(Invalid::field(
                "workload.namespace",
                format!("expected a Kubernetes namespace (lowercase letters, digits and '-', at most 63), got {namespace:?}"),
            ));
        }
        if let Some(account) =
            self.workload.service_account.as_deref().filter(|n| !crate::identity::is_service_account_name(n))
        {
            invalid.push(Invalid::field(
                "workload.serviceAccount",
                format!("expected a Kubernetes service account name (lowercase letters, digits, '-' and '.'), got {account:?}"),
            ));
        }
        let workload = Workload::default();
        if let Err(errors) = super::TraceSettings::resolve(self.telemetry.otlp.as_ref(), env, &workload) {
            invalid.extend(errors);
        }
        invalid
    }
}

/// An authority's host, without the dot that makes a name fully qualified (`b.demo.` is the
/// name `b.demo`, as DNS reads it), and its port.
pub fn split_authority(authority: &str) -> (&str, Option<&str>) {
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets; one written without them (`::1`, a
        // `Host` no client should send) has no port.
        Some((h, p)) if !p.contains(']') && ((h.starts_with('[') && h.ends_with(']')) || !h.contains(':')) => {
            (h, Some(p))
        }
        _ => (authority, None),
    };
    (host.strip_suffix('.').unwrap_or(host), port)
}

/// Whether a configured destination (`b.demo` or `b.demo:8080`) is `host` with exactly `port`,
/// without regard to case or a final dot. (The router also lets a destination named without a
/// port take any port's requests.)
pub fn same_authority(configured: &str, host: &str, port: Option<&str>) -> bool {
    same_host_and_port(split_authority(configured), (host, port))
}

/// Whether two authorities, split by [`split_authority`], name one destination: hosts without
/// regard to ASCII case, ports as the numbers a TCP stack reads (`b.demo:080` is `b.demo:80`;
/// compared as text, it found no mesh route: the review).
pub fn same_host_and_port(a: (&str, Option<&str>), b: (&str, Option<&str>)) -> bool {
    let same_port = match (a.1, b.1) {
        (Some(x), Some(y)) => match (x.parse::<u16>(), y.parse::<u16>()) {
            (Ok(x), Ok(y)) => x == y,
            _ => x == y,
        },
        (x, y) => x == y,
    };
    a.0.eq_ignore_ascii_case(b.0) && same_port
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `validate` names: each invalid field, or environment variable.
    fn invalid_fields(cfg: &SidecarConfig, env: &std::collections::BTreeMap<String, String>) -> Vec<String> {
        use crate::config::{Invalid, Validate};
        cfg.validate(env)
            .into_iter()
            .map(|i| match i {
                Invalid::Field { field, .. } => field,
                Invalid::Var { name, .. } => name,
            })
            .collect()
    }
    use crate::config::{load, parse_yaml, ConfigError};
    use std::path::Path;

    fn parse(text: &str) -> Result<SidecarConfig, ConfigError> {
        parse_yaml(Path::new("sidecar.yaml"), text)
    }

    #[test]
    fn limits_default_as_the_spec_says_and_refuse_zero() {
        let cfg = parse("threads: 1\n").unwrap();
        assert_eq!(cfg.limits.header_timeout.0, std::time::Duration::from_secs(10));
        assert_eq!(cfg.limits.idle_timeout.0, std::time::Duration::from_secs(300));
        assert_eq!(cfg.limits.max_connections, 10_000);
        assert_eq!(cfg.limits.max_inflight, 5_000);
        assert_eq!(cfg.limits.body_timeout.0, std::time::Duration::from_secs(60));
        assert_eq!(cfg.limits.max_connections_per_source, 1_000);
        let cfg = parse(
            "limits: {headerTimeout: 2s, idleTimeout: 30s, bodyTimeout: 5s, maxConnections: 50, maxConnectionsPerSource: 7}\n",
        )
        .unwrap();
        assert_eq!(cfg.limits.header_timeout.0, std::time::Duration::from_secs(2));
        assert_eq!(cfg.limits.body_timeout.0, std::time::Duration::from_secs(5));
        assert_eq!((cfg.limits.max_connections, cfg.limits.max_connections_per_source), (50, 7));
        let env = std::collections::BTreeMap::<String, String>::new();
        let cfg = parse(
            "limits: {headerTimeout: 0s, idleTimeout: 0s, bodyTimeout: 0s, maxConnections: 0, maxConnectionsPerSource: 0, maxInflight: 0}\n",
        )
        .unwrap();
        let fields = invalid_fields(&cfg, &env);
        assert_eq!(
            fields,
            [
                "limits.headerTimeout",
                "limits.idleTimeout",
                "limits.bodyTimeout",
                "limits.maxConnections",
                "limits.maxConnectionsPerSource",
                "limits.maxInflight"
            ]
        );
        let h2 = parse("threads: 1\n").unwrap().limits.http2;
        assert_eq!((h2.max_concurrent_streams, h2.max_header_list_bytes, h2.max_resets_per_second), (256, 65536, 200));
        let cfg = parse("limits: {http2: {maxConcurrentStreams: 0, maxHeaderListBytes: 100, maxResetsPerSecond: 0}}\n")
            .unwrap();
        assert_eq!(
            invalid_fields(&cfg, &env),
            ["limits.http2.maxConcurrentStreams", "limits.http2.maxHeaderListBytes", "limits.http2.maxResetsPerSecond"]
        );
        let many = parse("limits: {http2: {maxConcurrentStreams: 5000}}\n").unwrap();
        assert_eq!(invalid_fields(&many, &env), ["limits.http2.maxConcurrentStreams"]);
        assert!(parse("limits: {http2: {maxContinuationFrames: 5}}\n").is_err(), "unknown: refused");
    }

    #[test]
    fn two_identities_pinned_at_one_address_are_refused() {
        let env = std::collections::BTreeMap::<String, String>::new();
        let cfg = parse(
            "outbound:\n  destinations:\n    - {authority: orders.shop, address: \"10.0.0.7:8080\", identity: \"spiffe://cluster.local/ns/shop/sa/orders\"}\n    - {authority: alias.shop, address: \"10.0.0.7:8080\"}\n    - {authority: same.shop, address: \"10.0.0.7:8080\", identity: \"spiffe://cluster.local/ns/shop/sa/orders\"}\n    - {authority: payments.shop, address: \"[::ffff:10.0.0.7]:8080\", identity: \"spiffe://cluster.local/ns/shop/sa/payments\"}\n",
        )
        .unwrap();
        // An alias, or the same identity again, is fine; another identity there is not.
        assert_eq!(invalid_fields(&cfg, &env), ["outbound.destinations[3].identity"]);
    }

    /// An identity no peer can prove (another trust domain, or the trust domain's own ID) was
    /// accepted, and every request to the destination was 502 (outside tester j3).
    #[test]
    fn a_destination_identity_no_peer_can_prove_is_refused() {
        let env = std::collections::BTreeMap::<String, String>::new();
        let cfg = parse(
            "outbound:\n  destinations:\n    - {authority: a.shop, identity: \"spiffe://other.local/ns/shop/sa/a\"}\n    - {authority: b.shop, identity: \"spiffe://cluster.local\"}\n    - {authority: c.shop, identity: \"spiffe://cluster.local/ns/shop/sa/c\"}\n",
        )
        .unwrap();
        assert_eq!(
            invalid_fields(&cfg, &env),
            ["outbound.destinations[0].identity", "outbound.destinations[1].identity"]
        );
        let other = parse("trustDomain: other.local\noutbound:\n  destinations:\n    - {authority: a.shop, identity: \"spiffe://other.local/ns/shop/sa/a\"}\n").unwrap();
        assert!(invalid_fields(&other, &env).is_empty(), "of the configured trust domain");
    }

    #[test]
    fn the_memory_limit_follows_the_container_unless_set_and_refuses_a_baseline() {
        let env = std::collections::BTreeMap::<String, String>::new();
        let limits = parse("threads: 1\n").unwrap().limits;
        assert_eq!(limits.memory_limit(Some(256 << 20)), Some(192 << 20), "three quarters of the container's");
        assert_eq!(limits.memory_limit(None), None, "no container limit: none");
        assert_eq!(limits.memory_limit(Some(16 << 20)), Some(MIN_MEMORY_BYTES), "never below the least allowed");
        let limits = parse("limits: {maxMemoryBytes: 0}\n").unwrap().limits;
        assert_eq!(limits.memory_limit(Some(256 << 20)), None, "0: off");
        let cfg = parse("limits: {maxMemoryBytes: 100000000}\n").unwrap();
        assert_eq!(cfg.limits.memory_limit(Some(256 << 20)), Some(100_000_000));
        assert!(invalid_fields(&cfg, &env).is_empty());
        let cfg = parse("limits: {maxMemoryBytes: 1000000}\n").unwrap();
        assert_eq!(invalid_fields(&cfg, &env), ["limits.maxMemoryBytes"]);
        assert!(parse("limits: {maxMemoryBytes: lots}\n").is_err());
    }

    #[test]
    fn the_spec_example_parses() {
        let cfg = parse(
            r#"
identity:
  files: {cert: /var/run/palisade/tls.crt, key: /var/run/palisade/tls.key, trustBundle: /var/run/palisade/ca.crt}
trustDomain: cluster.local
inbound:  {listen: "0.0.0.0:15006", app: "127.0.0.1:8080", mtls: STRICT}
outbound: {listen: "127.0.0.1:15001"}
admin:    {listen: "0.0.0.0:15000"}
workload: {namespace: shop, serviceAccount: orders, labels: {app: orders}}
policy:
  files: [/etc/palisade/policy.yaml]
  controlPlane: "https://palisade-control.palisade-system.svc:15010"
  failMode: closed
telemetry:
  otlp: {endpoint: "http://otel-collector:4317", protocol: grpc, sampling: 0.01}
  events: {sink: stdout, format: ocsf}
  accessLog: true
threads: 1
"#,
        )
        .unwrap();
        assert_eq!(cfg.workload.service_account.as_deref(), Some("orders"));
        assert_eq!(cfg.inbound.mtls, MtlsMode::STRICT);
        assert_eq!(cfg.admin.listen.to_string(), "0.0.0.0:15000");
        let cp = cfg.policy.control_plane.unwrap();
        assert_eq!((cp.host.as_str(), cp.port), ("palisade-control.palisade-system.svc", 15010));
    }

    #[test]
    fn control_plane_addresses() {
        for (text, host, port) in
            [("https://cp:15010", "cp", 15010), ("127.0.0.1:1", "127.0.0.1", 1), ("https://[::1]:9/", "::1", 9)]
        {
            let a: ControlPlaneAddress = text.parse().unwrap();
            assert_eq!((a.host.as_str(), a.port), (host, port));
        }
        for bad in ["cp", "http://cp:1", "https://cp:1/x", "https://:1", "cp:0", "cp:99999"] {
            assert!(bad.parse::<ControlPlaneAddress>().is_err(), "{bad}");
        }
        let err = parse("policy:\n  controlPlane: cp\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (Some(2), "policy.controlPlane"));
        assert!(err.message.contains("https://HOST:PORT"), "{err}");
    }

    #[test]
    fn errors_name_line_field_and_expected_form() {
        let err = parse("inbound:\n  listen: 0.0.0.0:15006\n  mtls: STRIKT\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.field, "inbound.mtls");
        assert!(err.message.contains("STRICT"), "{err}");
        assert!(err.to_string().starts_with("sidecar.yaml:3:"), "{err}");

        let err = parse("admin:\n  listen: localhost\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (Some(2), "admin.listen"));
        assert!(err.message.contains("0.0.0.0:15006"), "{err}");

        let err = parse("outbound:\n  listen: 127.0.0.1:1\n  lisen: 1\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(err.message.contains("unknown field `lisen`"), "{err}");

        let err = parse("trustDomain: Cluster.Local\n").unwrap_err();
        assert_eq!(err.field, "trustDomain");

        let err = parse("drainPeriod: 5\n").unwrap_err();
        assert!(err.message.contains("duration"), "{err}");
    }

    #[test]
    fn environment_overrides_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sidecar.yaml");
        std::fs::write(&file, "admin: {listen: \"0.0.0.0:15000\"}\n").unwrap();
        let env: std::collections::BTreeMap<String, String> = [
            ("PALISADE_ADMIN_LISTEN", "127.0.0.1:25000"),
            ("PALISADE_WORKLOAD_SERVICEACCOUNT", "orders"),
            ("PALISADE_THREADS", "2"),
            ("PALISADE_LOG", "debug"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cfg: SidecarConfig = load(&file, &env).unwrap();
        assert_eq!(cfg.admin.listen.to_string(), "127.0.0.1:25000");
        assert_eq!(cfg.workload.service_account.as_deref(), Some("orders"));
        assert_eq!(cfg.threads, 2);

        let env: std::collections::BTreeMap<String, String> =
            [("PALISADE_INBOUND_MTLS".to_string(), "SOMETIMES".to_string())].into();
        let err = load::<SidecarConfig>(&file, &env).unwrap_err().remove(0);
        assert_eq!(err.env_var.as_deref(), Some("PALISADE_INBOUND_MTLS"));
        assert!(err.to_string().contains("PERMISSIVE"), "{err}");

        let env: std::collections::BTreeMap<String, String> =
            [("PALISADE_ADMIN_PORT".to_string(), "1".to_string())].into();
        let err = load::<SidecarConfig>(&file, &env).unwrap_err().remove(0);
        assert!(err.to_string().contains("expected one of: listen"), "{err}");

        // Kubernetes service links (a Service named palisade-admin gives PALISADE_ADMIN_*, whose
        // section is a real one), string settings that look like numbers, absent sections.
        let env: std::collections::BTreeMap<String, String> = [
            ("PALISADE_CONTROL_SERVICE_HOST", "10.0.0.1"),
            ("PALISADE_CONTROL_PORT_15010_TCP", "tcp://10.0.0.1:15010"),
            ("PALISADE_ADMIN_SERVICE_HOST", "10.96.0.10"),
            ("PALISADE_ADMIN_SERVICE_PORT", "15000"),
            ("PALISADE_ADMIN_SERVICE_PORT_HTTP_ADMIN", "15000"),
            ("PALISADE_ADMIN_PORT", "tcp://10.96.0.10:15000"),
            ("PALISADE_ADMIN_PORT_15000_TCP", "tcp://10.96.0.10:15000"),
            ("PALISADE_ADMIN_PORT_15000_TCP_PROTO", "tcp"),
            ("PALISADE_ADMIN_PORT_15000_TCP_PORT", "15000"),
            ("PALISADE_ADMIN_PORT_15000_TCP_ADDR", "10.96.0.10"),
            ("PALISADE_POLICY_SERVICE_HOST", "fd00::10"),
            ("PALISADE_WORKLOAD_SERVICEACCOUNT", "123"),
            ("PALISADE_IDENTITY_FILES_CERT", "/elsewhere/tls.crt"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cfg: SidecarConfig = load(&file, &env).unwrap();
        assert_eq!(cfg.workload.service_account.as_deref(), Some("123"));
        assert_eq!(cfg.identity.files.unwrap().cert, std::path::PathBuf::from("/elsewhere/tls.crt"));

        // Settings without a value in the file can be set too.
        let env: std::collections::BTreeMap<String, String> = [
            ("PALISADE_POLICY_CONTROLPLANE", "https://cp.palisade-system.svc:15010"),
            ("PALISADE_INBOUND_APPTIMEOUT", "30s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cfg: SidecarConfig = load(&file, &env).unwrap();
        assert_eq!(cfg.policy.control_plane.map(|c| c.port), Some(15010));
        assert_eq!(cfg.inbound.app_timeout.map(|t| t.0.as_secs()), Some(30));
    }

    #[test]
    fn every_mistake_of_a_configuration_is_reported_at_once_and_located() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sidecar.yaml");
        // One mistake in the file, one in the environment, one rule across fields, one OTEL_*.
        std::fs::write(
            &file,
            "inbound:\n  mtls: PERMISSIVE\n  allowPermissive: false\nadmin:\n  listen: nowhere\nthreads: 2\n",
        )
        .unwrap();
        let env: std::collections::BTreeMap<String, String> = [
            ("PALISADE_OUTBOUND_LISTEN", "x"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let errors = load::<SidecarConfig>(&file, &env).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with(&format!("{}:5:11: admin.listen: expected an IP address", file.display())),
            "{}",
            shown[0]
        );
        assert!(
            shown[1].starts_with("environment variable PALISADE_OUTBOUND_LISTEN (overrides outbound.listen"),
            "{}",
            shown[1]
        );
        assert!(
            shown[2].starts_with(&format!("{}:2:9: inbound.mtls: PERMISSIVE contradicts", file.display())),
            "{}",
            shown[2]
        );
        assert!(
            shown[3].starts_with("environment variable OTEL_TRACES_SAMPLER: \"sometimes\" is not one of"),
            "{}",
            shown[3]
        );
    }

    #[test]
    fn labels_come_from_the_downward_api_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("labels");
        std::fs::write(&file, "app=\"orders\"\npod-template-hash=\"7d9f\"\nquote=\"a\\\"b\"\n").unwrap();
        let workload = WorkloadConfig {
            labels: [("app".to_string(), "old".to_string()), ("team".to_string(), "x".to_string())].into(),
            labels_file: Some(file.clone()),
            ..Default::default()
        };
        let labels = workload.resolve(None).unwrap().labels;
        assert_eq!(labels["app"], "orders");
        assert_eq!(labels["team"], "x");
        assert_eq!(labels["pod-template-hash"], "7d9f");
        assert_eq!(labels["quote"], "a\"b");
        std::fs::write(&file, "app=orders\n").unwrap();
        let (field, error) = workload.resolve(None).unwrap_err();
        assert_eq!(field, "workload.labelsFile");
        assert!(error.contains("labels:1"), "{error}");
    }

    #[test]
    fn threads_are_bounded_and_one_source_of_certificates_is_given() {
        use crate::config::Validate;
        let env = std::collections::BTreeMap::<String, String>::new();
        let mut cfg = SidecarConfig { threads: 100_000, ..Default::default() };
        cfg.identity.control_plane = Some(Default::default());
        let fields = invalid_fields(&cfg, &env);
        assert_eq!(fields, ["identity", "threads"], "files and controlPlane both given");
        cfg.identity.files = None;
        cfg.threads = 1;
        assert!(cfg.validate(&env).is_empty(), "certificates from the control plane's CA");
    }

    /// Two listeners of the sidecar on one port failed at start as "Address already in use",
    /// taken for another process (tester m3): each pair is refused at load, naming the fields.
    #[test]
    fn listeners_that_take_one_port_are_refused_at_load() {
        let env = std::collections::BTreeMap::<String, String>::new();
        let with = |inbound: &str, outbound: &str, admin: &str| {
            let mut cfg = SidecarConfig::default();
            cfg.inbound.listen = ListenAddr(inbound.parse().unwrap());
            cfg.outbound.listen = ListenAddr(outbound.parse().unwrap());
            cfg.admin.listen = ListenAddr(admin.parse().unwrap());
            invalid_fields(&cfg, &env)
        };
        for (inbound, outbound, admin, clash) in [
            ("0.0.0.0:15006", "127.0.0.1:15006", "0.0.0.0:15000", "outbound.listen"),
            ("[::]:15006", "127.0.0.1:15001", "0.0.0.0:15006", "admin.listen"),
            ("0.0.0.0:15006", "[::1]:15001", "127.0.0.1:15001", "admin.listen"),
            ("10.0.0.5:15006", "127.0.0.1:15001", "10.0.0.5:15006", "admin.listen"),
        ] {
            assert_eq!(with(inbound, outbound, admin), [clash], "{inbound} {outbound} {admin}");
        }
        assert!(with("10.0.0.5:15006", "127.0.0.1:15001", "10.0.0.6:15006").is_empty(), "two addresses of the host");
        assert!(with("0.0.0.0:15006", "127.0.0.1:15001", "127.0.0.2:15001").is_empty(), "two loopback addresses");
        assert!(with("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0").is_empty(), "ports the system picks");
    }

    #[test]
    fn an_app_at_any_of_the_sidecars_own_listeners_is_refused() {
        let env = std::collections::BTreeMap::<String, String>::new();
        let at = |listen: (&str, &str, &str), app: &str| {
            let mut cfg = SidecarConfig::default();
            cfg.identity.control_plane = Some(Default::default());
            cfg.identity.files = None;
            cfg.inbound.listen = ListenAddr(listen.0.parse().unwrap());
            cfg.outbound.listen = ListenAddr(listen.1.parse().unwrap());
            cfg.admin.listen = ListenAddr(listen.2.parse().unwrap());
            cfg.inbound.app = ListenAddr(app.parse().unwrap());
            invalid_fields(&cfg, &env)
        };
        let loopback = ("127.0.0.1:23456", "127.0.0.1:23451", "127.0.0.1:23450");
        for app in ["127.0.0.1:23451", "[::1]:23451", "0.0.0.0:23451", "127.0.0.1:23450", "[::1]:23456", "[::]:23456"] {
            assert_eq!(at(loopback, app), ["inbound.app"], "{app}");
        }
        let wildcard = ("0.0.0.0:15006", "127.0.0.1:15001", "[::]:15000");
        for app in ["127.0.0.1:15006", "[::1]:15006", "[::1]:15000", "[::1]:15001"] {
            assert_eq!(at(wildcard, app), ["inbound.app"], "{app}");
        }
        for app in ["127.0.0.1:8080", "10.0.0.5:8080", "10.0.0.5:15001", "[::ffff:127.0.0.1]:8080"] {
            assert!(at(wildcard, app).is_empty(), "{app}");
        }
        // IPv4 in IPv6's clothes is IPv4.
        for app in ["[::ffff:127.0.0.1]:23451", "[::ffff:127.0.0.1]:23456"] {
            assert_eq!(at(loopback, app), ["inbound.app"], "{app}");
        }
        // This host's own address behind a wildcard listener (as a pod's IP is its sidecar's):
        // the address a UDP socket would send from (connecting one sends nothing). A
        // documentation address is no host's.
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if let Ok(own) = socket.connect("192.0.2.1:9").and_then(|()| socket.local_addr()) {
            assert_eq!(at(wildcard, &format!("{}:15006", own.ip())), ["inbound.app"], "{own}");
            assert!(at(wildcard, &format!("{}:8080", own.ip())).is_empty(), "{own}");
        }
        assert!(at(wildcard, "192.0.2.7:15006").is_empty());
    }

    #[test]
    fn timeouts_a_reload_interval_and_the_app_address_are_held_to_what_works() {
        let env = std::collections::BTreeMap::<String, String>::new();
        let mut cfg = SidecarConfig::default();
        cfg.identity.control_plane = Some(Default::default());
        cfg.identity.files = None;
        cfg.limits.header_timeout = HumanDuration(std::time::Duration::from_secs(2562047788015216 * 3600));
        cfg.limits.idle_timeout = HumanDuration(std::time::Duration::from_secs(25 * 3600));
        cfg.inbound.app = cfg.inbound.listen;
        let fields = invalid_fields(&cfg, &env);
        assert_eq!(fields, ["limits.headerTimeout", "limits.idleTimeout", "inbound.app"]);
        let mut files = SidecarConfig::default();
        files.identity.files.as_mut().unwrap().reload_interval = HumanDuration(std::time::Duration::from_millis(1));
        assert_eq!(invalid_fields(&files, &env), ["identity.files.reloadInterval"]);
    }

    /// Two entries for one authority leave which one answers to the list's order.
    #[test]
    fn an_authority_is_listed_once_in_outbound_destinations() {
        let env = std::collections::BTreeMap::<String, String>::new();
        let entry = |authority: &str, address: &str| Destination {
            authority: authority.into(),
            address: Some(address.parse().unwrap()),
            identity: None,
        };
        let mut cfg = SidecarConfig::default();
        cfg.identity.files = None;
        cfg.identity.control_plane = Some(Default::default());
        cfg.outbound.destinations = vec![
            entry("orders.shop", "10.0.0.1:80"),
            entry("orders.shop:8080", "10.0.0.2:80"),
            entry("[::1]:8080", "10.0.0.3:80"),
            entry("ORDERS.shop", "10.0.0.4:80"),
            entry("orders.shop.", "10.0.0.5:80"),
        ];
        assert_eq!(
            invalid_fields(&cfg, &env),
            ["outbound.destinations[3].authority", "outbound.destinations[4].authority"]
        );
    }
}
