//! The control plane's configuration (SPEC section 8).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::sidecar::{EventsConfig, TrustDomain};
use super::{HumanDuration, ListenAddr};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ControlConfig {
    pub trust_domain: TrustDomain,
    pub identity: ControlIdentity,
    pub grpc: Listen,
    /// The workload CA (SPEC section 8); without it, sidecars use certificates from files.
    pub ca: Option<CaConfig>,
    /// The API server (TokenReview, pods' labels); in a pod, found without this section.
    pub kubernetes: Option<KubernetesConfig>,
    /// The injection webhook (SPEC section 9).
    pub webhook: Option<WebhookConfig>,
    pub admin: Listen,
    pub policies: PolicyDirConfig,
    /// The control plane's own security events (policy files refused, subscriptions refused).
    pub events: EventsConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            trust_domain: TrustDomain("cluster.local".into()),
            identity: ControlIdentity::default(),
            grpc: Listen { listen: "0.0.0.0:15010".parse().expect("default") },
            ca: None,
            kubernetes: None,
            webhook: None,
            admin: Listen { listen: "0.0.0.0:15014".parse().expect("default") },
            policies: PolicyDirConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ControlIdentity {
    /// The control plane's own certificate. Without it (`files: null`), a control plane with a
    /// `ca` signs its own certificate and renews it, and nothing needs to be mounted.
    pub files: Option<ControlIdentityFiles>,
    /// The identity the control plane signs for itself when `files` is null, and that sidecars
    /// are told to expect (`policy.controlPlaneIdentity`); by default
    /// `spiffe://<trustDomain>/ns/palisade-system/sa/palisade-control`.
    pub spiffe_id: Option<super::SpiffeIdField>,
}

impl Default for ControlIdentity {
    fn default() -> Self {
        ControlIdentity { files: Some(ControlIdentityFiles::default()), spiffe_id: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ControlIdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
    pub reload_interval: HumanDuration,
}

impl Default for ControlIdentityFiles {
    fn default() -> Self {
        ControlIdentityFiles {
            cert: "/etc/palisade/control/tls.crt".into(),
            key: "/etc/palisade/control/tls.key".into(),
            trust_bundle: "/etc/palisade/control/ca.crt".into(),
            reload_interval: HumanDuration(std::time::Duration::from_secs(1)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listen {
    pub listen: ListenAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PolicyDirConfig {
    /// Every `*.yaml` / `*.yml` file here (symlinks followed, dot-entries skipped: a mounted
    /// ConfigMap's `..data` machinery is invisible).
    pub dir: PathBuf,
    /// How often the directory is read; a change reaches the sidecars within about this long.
    pub poll_interval: HumanDuration,
    /// Select policies by the labels a sidecar's Hello claims when it sends no token to prove
    /// its pod (local meshes, certificates from files). Off by default: in a cluster the labels
    /// come from the API server, for the pod the sidecar's token names.
    pub trust_hello_labels: bool,
    /// How long a replica holds back a snapshot of an earlier revision than the one a
    /// sidecar holds (it has not read the latest ConfigMap yet; a kubelet syncs one within
    /// about two minutes). Past that the revision was reset (the chart uninstalled and
    /// installed again), and the snapshot is sent.
    pub revision_hold: HumanDuration,
}

impl Default for PolicyDirConfig {
    fn default() -> Self {
        PolicyDirConfig {
            dir: "/etc/palisade/policies".into(),
            poll_interval: HumanDuration(std::time::Duration::from_millis(250)),
            trust_hello_labels: false,
            revision_hold: HumanDuration(std::time::Duration::from_secs(180)),
        }
    }
}

/// The workload CA: its signing key and certificate, how long the certificates it signs live,
/// and how a sidecar proves its service account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CaConfig {
    pub listen: ListenAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_ttl: HumanDuration,
    /// The roots workloads trust, when not the CA certificate's own (an intermediate CA, or a
    /// rotation: the old root and the new one side by side).
    pub trust_bundle: Option<PathBuf>,
    pub tokens: TokensConfig,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            listen: "0.0.0.0:15012".parse().expect("default"),
            cert: "/etc/palisade/ca/ca.crt".into(),
            key: "/etc/palisade/ca/ca.key".into(),
            cert_ttl: HumanDuration(std::time::Duration::from_secs(24 * 3600)),
            trust_bundle: None,
            tokens: TokensConfig::default(),
        }
    }
}

/// How service-account tokens are checked: by the API server's TokenReview, or offline
/// against the service-account issuer's keys.
///
/// Without a `tokens` section, TokenReview with audience `palisade`; a section names its way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokensConfig {
    #[serde(default = "default_audience")]
    pub audience: String,
    #[serde(default)]
    pub token_review: Option<TokenReviewConfig>,
    #[serde(default)]
    pub jwks: Option<JwksSourceConfig>,
}

fn default_audience() -> String {
    "palisade".into()
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig { audience: default_audience(), token_review: Some(TokenReviewConfig::default()), jwks: None }
    }
}

/// The API server's TokenReview (at the API server of `kubernetes`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TokenReviewConfig {}

/// Offline checks against the service-account issuer's keys.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct JwksSourceConfig {
    pub file: Option<PathBuf>,
    pub uri: Option<String>,
    /// The issuer tokens must name (`--service-account-issuer`), e.g.
    /// `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// The CA of `uri`'s server, when it is not in the system's roots (the API server's).
    pub ca_file: Option<PathBuf>,
    /// `uri` only: a file sent as `Authorization: Bearer` on every fetch, for an API server
    /// whose `/openid/v1/jwks` needs an authenticated caller (the control plane's own
    /// service-account token).
    pub bearer_token_file: Option<PathBuf>,
}

/// The API server: where the control plane finds it and how it proves itself to it. Without
/// this section, the in-cluster environment (`KUBERNETES_SERVICE_HOST`, the service account's
/// token and CA).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct KubernetesConfig {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

/// The mutating admission webhook (`POST /inject` over TLS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WebhookConfig {
    pub listen: ListenAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The MutatingWebhookConfiguration's failurePolicy, which the webhook also follows when a
    /// pod cannot be injected (`Fail`: refused; `Ignore`: admitted without a sidecar).
    pub failure_policy: super::FailurePolicy,
    /// What injection adds to each pod (also read by `palisade inject --config`).
    pub sidecar: super::InjectSettings,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: "0.0.0.0:15017".parse().expect("default"),
            cert: "/etc/palisade/webhook/tls.crt".into(),
            key: "/etc/palisade/webhook/tls.key".into(),
            failure_policy: super::FailurePolicy::default(),
            sidecar: super::InjectSettings::default(),
        }
    }
}

impl super::Validate for ControlConfig {
    fn validate(&self, _env: &dyn super::Env) -> Vec<super::Invalid> {
        use super::Invalid;
        let mut invalid = Vec::new();
        if let Some(ca) = &self.ca {
            match (&ca.tokens.token_review, &ca.tokens.jwks) {
                (Some(_), Some(_)) => invalid.push(Invalid::field("ca.tokens", "choose tokenReview or jwks, not both")),
                (None, None) => {
                    invalid.push(Invalid::field("ca.tokens", "choose how tokens are checked: tokenReview or jwks"))
                }
                (None, Some(jwks)) => {
                    if jwks.file.is_some() == jwks.uri.is_some() {
                        invalid.push(Invalid::field(
                            "ca.tokens.jwks",
                            "give the issuer's keys as file or uri (one of them)",
                        ));
                    }
                    if jwks.issuer.is_empty() {
                        invalid.push(Invalid::field(
                            "ca.tokens.jwks.issuer",
                            "name the service-account issuer tokens must carry",
                        ));
                    }
                }
                _ => {}
            }
            if ca.tokens.audience.is_empty() {
                invalid.push(Invalid::field("ca.tokens.audience", "must not be empty"));
            }
            // A workload certificate lives a day by default; a year is past any use (Istio caps
            // workload certificates at 90 days) and far past what time arithmetic must hold.
            if ca.cert_ttl.0 < std::time::Duration::from_secs(5)
                || ca.cert_ttl.0 > std::time::Duration::from_secs(366 * 24 * 3600)
            {
                invalid.push(Invalid::field(
                    "ca.certTtl",
                    format!("must be from 5s to 8784h (366 days), got {}", ca.cert_ttl),
                ));
            }
        }
        let mut listeners = vec![("grpc.listen", self.grpc.listen.0), ("admin.listen", self.admin.listen.0)];
        listeners.extend(self.ca.as_ref().map(|ca| ("ca.listen", ca.listen.0)));
        listeners.extend(self.webhook.as_ref().map(|w| ("webhook.listen", w.listen.0)));
        invalid.extend(ListenAddr::clashes(&listeners));
        if self.identity.files.is_none() && self.ca.is_none() {
            invalid.push(Invalid::field(
                "identity.files",
                "give the control plane's certificate files, or a ca to sign its own",
            ));
        }
        if let Some(id) = &self.identity.spiffe_id {
            if id.0.trust_domain() != self.trust_domain.0 {
                invalid.push(Invalid::field(
                    "identity.spiffeId",
                    format!("{} is not in trust domain {}", id.0, self.trust_domain.0),
                ));
            }
        }
        // Each look reads and hashes the certificates and their key: at 1 ms, most of a core.
        let least = super::sidecar::MIN_RELOAD_INTERVAL;
        if self.identity.files.as_ref().is_some_and(|f| f.reload_interval.0 < least) {
            invalid.push(Invalid::field(
                "identity.files.reloadInterval",
                format!("must be at least {}ms", least.as_millis()),
            ));
        }
        if self.policies.poll_interval.0.is_zero() {
            invalid.push(Invalid::field("policies.pollInterval", "must be more than 0"));
        }
        invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;
    use std::path::Path;

    #[test]
    fn the_spec_example_parses_and_errors_name_the_field() {
        let cfg: ControlConfig = parse_yaml(
            Path::new("control.yaml"),
            r#"
trustDomain: cluster.local
identity: {files: {cert: /etc/palisade/control/tls.crt, key: /etc/palisade/control/tls.key, trustBundle: /etc/palisade/control/ca.crt}}
grpc:    {listen: "0.0.0.0:15010"}
ca:      {listen: "0.0.0.0:15012", cert: /etc/palisade/ca/ca.crt, key: /etc/palisade/ca/ca.key, certTtl: 24h,
          tokens: {audience: palisade, tokenReview: {}}}
webhook: {listen: "0.0.0.0:15017", cert: /etc/palisade/webhook/tls.crt, key: /etc/palisade/webhook/tls.key}
admin:   {listen: "0.0.0.0:15014"}
policies: {dir: /etc/palisade/policies}
"#,
        )
        .unwrap();
        assert_eq!(cfg.grpc.listen.to_string(), "0.0.0.0:15010");
        assert_eq!(cfg.policies.poll_interval.0, std::time::Duration::from_millis(250));

        let err =
            parse_yaml::<ControlConfig>(Path::new("control.yaml"), "policies:\n  dir: /p\n  pollInterval: soon\n")
                .unwrap_err();
        assert_eq!(err.field, "policies.pollInterval");
        assert!(err.line.is_some() && err.message.contains("duration"), "{err}");

        // Certificates looked at every millisecond took most of a core.
        use crate::config::{Invalid, Validate};
        let mut fast = cfg.clone();
        fast.identity.files.as_mut().unwrap().reload_interval = HumanDuration(std::time::Duration::from_millis(1));
        let env = std::collections::BTreeMap::<String, String>::new();
        let fields = |cfg: &ControlConfig| -> Vec<String> {
            cfg.validate(&env)
                .into_iter()
                .map(|i| match i {
                    Invalid::Field { field, .. } => field,
                    Invalid::Var { name, .. } => name,
                })
                .collect()
        };
        assert_eq!(fields(&fast), ["identity.files.reloadInterval"]);

        // Two listeners on one port (tester m3: exit 71, "Address already in use").
        let mut clash = cfg.clone();
        clash.admin.listen = "127.0.0.1:15010".parse().unwrap();
        clash.webhook.as_mut().unwrap().listen = "0.0.0.0:15012".parse().unwrap();
        assert_eq!(fields(&clash), ["admin.listen", "webhook.listen"]);
    }
}
