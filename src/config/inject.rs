//! What injection adds, as the operator configures it: one struct shared by `palisade inject`
//! and the webhook (the control plane's `webhook.sidecar` section, the chart's `sidecar` values).
//! Here with the rest of the configuration; `crate::inject` uses it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{IpBlock, TrustDomain};

/// The sidecar every injected pod gets. Every field has a default, so a section may name only
/// what differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct InjectSettings {
    /// The sidecar's image (the Dockerfile's final target).
    pub image: String,
    /// The init container's image: the same binary with iptables (the Dockerfile's `init` target).
    pub init_image: String,
    pub image_pull_policy: PullPolicy,
    /// Where the control plane runs; its namespace is never injected.
    pub control_plane: ControlPlaneRef,
    pub trust_domain: TrustDomain,
    pub identity: IdentitySettings,
    /// The sidecar's uid and gid; the iptables rules let this uid's traffic out uncaptured.
    pub proxy_uid: u32,
    pub ports: ProxyPorts,
    /// The sidecar container's resources (`requests`/`limits` of `cpu`, `memory`, ...).
    pub resources: Resources,
    /// The init container's resources.
    pub init_resources: Resources,
    /// `PALISADE_LOG` of every sidecar unless a pod says otherwise (`palisade.dev/log-level`).
    pub log_level: String,
    /// Namespaces never injected, besides `kube-system` and the control plane's own (a list
    /// given here adds to those two, as the chart's `webhook.excludeNamespaces` does).
    pub excluded_namespaces: Vec<String>,
    /// Inbound ports never captured, in every pod (besides the sidecar's own).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports never captured, in every pod.
    pub exclude_outbound_ports: Vec<u16>,
    /// Destinations never captured, in every pod (e.g. the API server's address).
    pub exclude_outbound_cidrs: Vec<String>,
    /// Every sidecar's `outbound.passthrough`: destinations outside the mesh its app may reach
    /// through it (plaintext HTTP forwarded, other TCP relayed), seen and counted by the sidecar.
    pub outbound_passthrough: Vec<String>,
    /// Every sidecar's `outbound.opaquePorts` (ports of protocols where the server speaks first),
    /// and added to its `inbound.opaquePorts` (its app's ports that are not HTTP).
    pub opaque_ports: Vec<u16>,
    /// Every sidecar's `telemetry` section (an OTLP collector and its sampling, the events'
    /// format, the access log): what an Istio operator sets in meshConfig, once for the mesh.
    pub telemetry: super::TelemetryConfig,
}

impl Default for InjectSettings {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        InjectSettings {
            image: format!("ghcr.io/palisade-mesh/palisade:{version}"),
            init_image: format!("ghcr.io/palisade-mesh/palisade-init:{version}"),
            image_pull_policy: PullPolicy::IfNotPresent,
            control_plane: ControlPlaneRef::default(),
            trust_domain: TrustDomain("cluster.local".into()),
            identity: IdentitySettings::default(),
            proxy_uid: 2102,
            ports: ProxyPorts::default(),
            resources: Resources {
                requests: quantities(&[("cpu", "50m"), ("memory", "32Mi")]),
                limits: quantities(&[("cpu", "1"), ("memory", "256Mi")]),
            },
            init_resources: Resources {
                requests: quantities(&[("cpu", "10m"), ("memory", "10Mi")]),
                limits: quantities(&[("cpu", "100m"), ("memory", "32Mi")]),
            },
            log_level: "info".into(),
            excluded_namespaces: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            outbound_passthrough: Vec::new(),
            opaque_ports: Vec::new(),
            telemetry: super::TelemetryConfig::default(),
        }
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The control plane's Service: the sidecars reach its policy stream (15010) and CA (15012).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ControlPlaneRef {
    pub service: String,
    pub namespace: String,
    /// Its service account: with the namespace, the SPIFFE ID the sidecars expect of it.
    pub service_account: String,
    pub grpc_port: u16,
    pub ca_port: u16,
}

impl Default for ControlPlaneRef {
    fn default() -> Self {
        ControlPlaneRef {
            service: "palisade-control".into(),
            namespace: "palisade-system".into(),
            service_account: "palisade-control".into(),
            grpc_port: 15010,
            ca_port: 15012,
        }
    }
}

impl ControlPlaneRef {
    /// The Service's cluster DNS name.
    pub fn host(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }
}

/// Where an injected sidecar's certificate comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct IdentitySettings {
    pub mode: IdentityMode,
    /// `controlPlane` mode: the mesh's root certificates (PEM), with which the sidecar checks
    /// the CA; given inline because a pod cannot mount a ConfigMap of another namespace.
    pub trust_anchors: Option<String>,
    /// Or a file the PEM is read from when the settings are loaded (the mesh CA Secret's
    /// `ca.crt`, mounted in the control plane).
    pub trust_anchors_file: Option<std::path::PathBuf>,
    /// `secret` mode: the Secret (`tls.crt`, `tls.key`, `ca.crt`, as cert-manager writes it) in
    /// the pod's namespace; `{serviceAccount}` is replaced by the pod's service account.
    pub secret_name: String,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        IdentitySettings {
            mode: IdentityMode::ControlPlane,
            trust_anchors: None,
            trust_anchors_file: None,
            secret_name: "palisade-identity-{serviceAccount}".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum IdentityMode {
    /// The sidecar makes its key and has the control plane's CA sign it (SPEC section 2 (b)).
    #[default]
    ControlPlane,
    /// The sidecar reads a mounted Secret per service account (cert-manager, or made by hand).
    Secret,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ProxyPorts {
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        ProxyPorts { inbound: 15006, outbound: 15001, admin: 15000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl Resources {
    /// The first resource whose request is more than its limit: the API server refuses such a
    /// container ("must be less than or equal to ... limit"), naming no setting of ours.
    pub fn request_over_limit(&self) -> Option<(&str, &str, &str)> {
        self.requests.iter().find_map(|(name, request)| {
            let limit = self.limits.get(name)?;
            (quantity(request)? > quantity(limit)?).then_some((name.as_str(), request.as_str(), limit.as_str()))
        })
    }
}

/// What the API server does when the webhook cannot answer or cannot inject: `Fail` refuses
/// the pod (no pod runs unprotected), `Ignore` admits it without a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FailurePolicy {
    #[default]
    Fail,
    Ignore,
}

impl FailurePolicy {
    /// How events and logs say it.
    pub fn describe(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail (closed: a pod that cannot be injected is refused)",
            FailurePolicy::Ignore => "Ignore (open: a pod that cannot be injected runs without a sidecar)",
        }
    }
}

impl InjectSettings {
    /// Reads what the settings name by file (`identity.trustAnchorsFile`) into the settings.
    pub fn resolve_files(mut self) -> Result<InjectSettings, (String, String)> {
        if let Some(path) = &self.identity.trust_anchors_file {
            let pem = crate::yaml::read_file(path, 1 << 20)
                .map_err(|e| ("identity.trustAnchorsFile".to_string(), format!("{}: {e}", path.display())))?;
            self.identity.trust_anchors = Some(pem);
        }
        Ok(self)
    }

    /// Mistakes no pod could fix, as `(field, message)`, fields relative to this section.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut invalid = Vec::new();
        let mut bad = |field: &str, message: String| invalid.push((field.to_string(), message));
        if self.image.trim().is_empty() {
            bad("image", "must name an image".into());
        }
        if self.init_image.trim().is_empty() {
            bad("initImage", "must name an image".into());
        }
        if self.proxy_uid == 0 {
            bad("proxyUid", "must not be 0: the sidecar runs as a non-root user whose traffic is not captured".into());
        }
        let ports = [
            ("ports.inbound", self.ports.inbound),
            ("ports.outbound", self.ports.outbound),
            ("ports.admin", self.ports.admin),
        ];
        for (i, (field, port)) in ports.iter().enumerate() {
            if *port == 0 {
                bad(field, "must be a port from 1 to 65535".into());
            } else if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                bad(field, format!("{port} is also {other}"));
            }
        }
        let cp = &self.control_plane;
        if crate::identity::SpiffeId::for_workload(&self.trust_domain.0, &cp.namespace, &cp.service_account).is_err() {
            bad(
                "controlPlane",
                format!("namespace {:?} and serviceAccount {:?} make no SPIFFE ID", cp.namespace, cp.service_account),
            );
        }
        if self.identity.mode == IdentityMode::ControlPlane {
            match &self.identity.trust_anchors {
                Some(pem) => {
                    if let Err(why) = crate::identity::check_trust_anchors(pem) {
                        bad("identity.trustAnchors", why);
                    }
                }
                None if self.identity.trust_anchors_file.is_some() => {}
                None => bad(
                    "identity.trustAnchors",
                    "the mesh's root certificates (PEM, or trustAnchorsFile) are needed in controlPlane mode; give them, or use mode: secret".into(),
                ),
            }
        }
        if self.identity.mode == IdentityMode::Secret && self.identity.secret_name.trim().is_empty() {
            bad("identity.secretName", "must name a Secret".into());
        }
        for (section, resources) in [("resources", &self.resources), ("initResources", &self.init_resources)] {
            for (kind, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
                for (name, quantity) in map {
                    if !is_quantity(quantity) {
                        bad(
                            &format!("{section}.{kind}.{name}"),
                            format!("expected a Kubernetes quantity such as 100m, 1 or 64Mi, got {quantity:?}"),
                        );
                    }
                }
            }
            if let Some((name, request, limit)) = resources.request_over_limit() {
                bad(
                    &format!("{section}.requests.{name}"),
                    format!("{request} is more than its limit {limit}: Kubernetes refuses every pod injected so"),
                );
            }
        }
        if !is_log_filter(&self.log_level) {
            bad("logLevel", format!("expected a log filter such as info or palisade=debug, got {:?}", self.log_level));
        }
        for (field, cidrs) in [
            ("excludeOutboundCidrs", &self.exclude_outbound_cidrs),
            ("outboundPassthrough", &self.outbound_passthrough),
        ] {
            for (i, cidr) in cidrs.iter().enumerate() {
                if let Err(e) = cidr.parse::<IpBlock>() {
                    bad(&format!("{field}[{i}]"), e);
                }
            }
        }
        if self.opaque_ports.contains(&0) {
            bad("opaquePorts", "every port must be from 1 to 65535, got 0".into());
        }
        // An injected sidecar's file system is read-only and holds only what injection mounts:
        // a file it should write or read would stop every injected sidecar at start.
        let telemetry = &self.telemetry;
        for (field, sink) in
            [("telemetry.events.sink", &telemetry.events.sink), ("telemetry.accessLogSink", &telemetry.access_log_sink)]
        {
            if matches!(sink, super::EventSink::File(_)) {
                bad(field, "an injected sidecar's file system is read-only: stdout or stderr, which the node's log collector reads".into());
            }
        }
        if telemetry.otlp.as_ref().is_some_and(|o| o.trust_bundle.is_some()) {
            bad("telemetry.otlp.trustBundle", "a file injection does not mount into the sidecar: reach the collector over http://, or trust a public CA".into());
        }
        // What a sidecar would refuse at start, refused here, before a pod is injected with it.
        let no_env = BTreeMap::<String, String>::new();
        let workload = super::Workload::default();
        let otlp = telemetry.otlp.clone().map(|o| super::OtlpConfig { trust_bundle: None, ..o });
        if let Err(errors) = super::TraceSettings::resolve(otlp.as_ref(), &no_env, &workload) {
            for e in errors {
                match e {
                    super::Invalid::Field { field, message } => bad(&field, message),
                    super::Invalid::Var { name, message } => bad(&name, message),
                }
            }
        }
        invalid
    }
}
/// A Kubernetes resource quantity (the forms a request or limit is written in).
pub fn is_quantity(value: &str) -> bool {
    quantity(value).is_some()
}

/// A quantity's value in billionths of its unit (cores, bytes), exactly: `100m` is 10^8,
/// `0.35` and `350m` are both 3.5 * 10^8 (as floats, 350m came out above 0.35), `64Mi` is
/// 64 * 2^20 * 10^9. More than nine decimals, or more than fits, is no quantity.
fn quantity(value: &str) -> Option<u128> {
    const NANO: u128 = 1_000_000_000;
    const SUFFIXES: [(&str, u128); 14] = [
        ("Ki", NANO << 10),
        ("Mi", NANO << 20),
        ("Gi", NANO << 30),
        ("Ti", NANO << 40),
        ("Pi", NANO << 50),
        ("Ei", NANO << 60),
        ("m", NANO / 1000),
        ("k", NANO * 1000),
        ("M", NANO * 1_000_000),
        ("G", NANO * 1_000_000_000),
        ("T", NANO * 1_000_000_000_000),
        ("P", NANO * 1_000_000_000_000_000),
        ("E", NANO * 1_000_000_000_000_000_000),
        ("", NANO),
    ];
    let (number, scale) =
        SUFFIXES.iter().find_map(|(s, scale)| value.strip_suffix(s).filter(|n| !n.is_empty()).map(|n| (n, *scale)))?;
    let (int, frac) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || frac.len() > 9 || int.len() > 20 {
        return None;
    }
    // The number in billionths, times the suffix's scale (itself in billionths of the unit).
    let number = int.parse::<u128>().ok()? * NANO + format!("{frac:0<9}").parse::<u128>().ok()?;
    Some(number.checked_mul(scale)? / NANO)
}

/// A log filter as `EnvFilter` reads it: blanks around its directives taken out (it refuses
/// `info, palisade=debug`, which `is_log_filter` takes).
pub fn log_filter_text(value: &str) -> String {
    value.split(',').map(str::trim).filter(|d| !d.is_empty()).collect::<Vec<_>>().join(",")
}

/// A `PALISADE_LOG` filter (`RUST_LOG` syntax) in the characters such filters use, so a value
/// can never carry anything else into the pod; and one whose bare words are levels or name
/// what logs: `verbose` reads as "everything from a module named verbose", and the process would
/// write nothing at all.
pub fn is_log_filter(value: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    const TARGETS: [&str; 9] =
        ["palisade", "pingora", "h2", "hyper", "rustls", "tonic", "tokio", "tower", "opentelemetry"];
    let level = |word: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word));
    let target = |word: &str| {
        TARGETS.iter().any(|t| {
            word.strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::") || rest.starts_with('_'))
        })
    };
    !value.is_empty()
        && value.len() <= 256
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_=,:.- ".contains(&b))
        && value.split(',').map(str::trim).filter(|d| !d.is_empty()).all(|directive| match directive.split_once('=') {
            Some((name, wanted)) => !name.trim().is_empty() && level(wanted.trim()),
            None => level(directive) || target(directive),
        })
}
