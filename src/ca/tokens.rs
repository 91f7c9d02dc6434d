//! Who a projected service-account token proves: its namespace, service account and (a bound
//! token's) pod. Checked by the API server's TokenReview or offline against the issuer's keys;
//! either way the CA and the policy stream get the same [`Proven`] or the same [`Refused`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::kube::KubeApi;
use super::Refused;
use crate::authn::{Authenticator, AuthnOptions, AuthnRuntime, ClaimPath, Claims, JwksSpec, ProviderSpec, Reason};
use crate::config::JwksSourceConfig;
use crate::identity::SpiffeId;

/// What a valid token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub namespace: String,
    pub service_account: String,
    /// The pod a bound token names (`kubernetes.io.pod`), and its uid.
    pub pod: Option<(String, String)>,
}

impl Proven {
    /// From a service account's user name, `system:serviceaccount:<namespace>:<name>`.
    pub fn from_username(username: &str, pod: Option<String>, pod_uid: Option<String>) -> Result<Proven, Refused> {
        let rest = username
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(|| Refused::NotServiceAccount(format!("{username:?} is not a service account")))?;
        let (namespace, service_account) = rest
            .split_once(':')
            .filter(|(ns, sa)| crate::identity::is_namespace_name(ns) && crate::identity::is_service_account_name(sa))
            .ok_or_else(|| Refused::NotServiceAccount(format!("{username:?} is not a service account")))?;
        Ok(Proven {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod: pod.zip(pod_uid),
        })
    }

    /// The SPIFFE ID this proves in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> Result<SpiffeId, Refused> {
        SpiffeId::for_workload(trust_domain, &self.namespace, &self.service_account)
            .map_err(|e| Refused::Identity(e.to_string()))
    }
}

/// Checks tokens for the audience the CA was configured with.
#[async_trait]
pub trait TokenChecker: Send + Sync {
    async fn check(&self, token: &str) -> Result<Proven, Refused>;
}

/// Token checks in flight at once: a TokenReview is a call to the API server, made for callers
/// who have proven nothing yet (the CA's, and policy streams opening), so a flood of requests
/// must not become a flood of them.
pub const MAX_TOKEN_CHECKS: usize = 32;
/// How long a check waits for its turn before it is refused as unavailable (sidecars retry with
/// backoff): a rollout's burst waits, a flood is turned away.
pub const TOKEN_CHECK_WAIT: Duration = Duration::from_secs(2);

/// A checker taking its turn among at most [`MAX_TOKEN_CHECKS`]: one bound for every check the
/// control plane makes, wherever the token comes from.
pub struct BoundedTokens {
    inner: Arc<dyn TokenChecker>,
    turns: tokio::sync::Semaphore,
}

impl BoundedTokens {
    pub fn new(inner: Arc<dyn TokenChecker>) -> Self {
        BoundedTokens { inner, turns: tokio::sync::Semaphore::new(MAX_TOKEN_CHECKS) }
    }
}

#[async_trait]
impl TokenChecker for BoundedTokens {
    async fn check(&self, token: &str) -> Result<Proven, Refused> {
        let busy = || Refused::Unavailable("the control plane is checking as many tokens as it may; retry".into());
        let turn = tokio::time::timeout(TOKEN_CHECK_WAIT, self.turns.acquire()).await.map_err(|_| busy())?;
        let _turn = turn.map_err(|_| busy())?;
        self.inner.check(token).await
    }
}

/// By the API server's TokenReview: the API server knows every key, revocation and bound pod.
pub struct TokenReviewTokens {
    pub api: Arc<KubeApi>,
    pub audience: String,
}

#[async_trait]
impl TokenChecker for TokenReviewTokens {
    async fn check(&self, token: &str) -> Result<Proven, Refused> {
        if token.trim().is_empty() {
            return Err(Refused::NoToken);
        }
        self.api.token_review(token.trim(), &self.audience).await
    }
}

/// Offline, against the service-account issuer's keys (a JWKS file, or a URI such as the API
/// server's `/openid/v1/jwks`, refreshed when a token names a key not yet seen). Cheaper than a
/// TokenReview per CSR and independent of the API server's availability; what it cannot see is
/// revocation: a bound token stays valid until it expires after its pod or account is deleted
/// (the TokenReview mode sees that).
pub struct JwksTokens {
    /// Rebuilt when a file-based JWKS changes on disk (checked when a token names an unknown key).
    authenticator: arc_swap::ArcSwap<Authenticator>,
    runtime: AuthnRuntime,
    spec: ProviderSpec,
    file_stamp: std::sync::Mutex<Option<std::time::SystemTime>>,
}

// The private claims of a projected service-account token (`"kubernetes.io": {...}`).
const NAMESPACE: &[&str] = &["kubernetes.io", "namespace"];
const SERVICE_ACCOUNT: &[&str] = &["kubernetes.io", "serviceaccount", "name"];
const POD_NAME: &[&str] = &["kubernetes.io", "pod", "name"];
const POD_UID: &[&str] = &["kubernetes.io", "pod", "uid"];

impl JwksTokens {
    /// Reads a JWKS file now, or starts fetching a URI's (this needs a tokio runtime).
    pub fn new(config: &JwksSourceConfig, audience: &str) -> Result<JwksTokens, String> {
        // Through the policy format, so every field a policy's provider defaults to is the same.
        let spec: ProviderSpec = serde_json::from_value(serde_json::json!({
            "issuer": config.issuer,
            "audiences": [audience],
            "jwks": JwksSpec {
                file: config.file.clone(),
                uri: config.uri.clone(),
                ca_file: config.ca_file.clone(),
                bearer_token_file: config.bearer_token_file.clone(),
                ..JwksSpec::default()
            },
        }))
        .map_err(|e| e.to_string())?;
        let runtime = AuthnRuntime::default();
        let authenticator = build(&runtime, &spec)?;
        let file_stamp = std::sync::Mutex::new(config.file.as_deref().and_then(modified));
        Ok(JwksTokens { authenticator: arc_swap::ArcSwap::from_pointee(authenticator), runtime, spec, file_stamp })
    }

    /// A JWKS file that changed since it was read is read again; true when the keys changed.
    fn reload_file(&self) -> bool {
        let Some(path) = self.spec.jwks.as_ref().and_then(|j| j.file.as_deref()) else { return false };
        let now = modified(path);
        {
            let mut stamp = self.file_stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *stamp == now {
                return false;
            }
            *stamp = now;
        }
        match build(&self.runtime, &self.spec) {
            Ok(fresh) => {
                tracing::info!(path = %path.display(), "the service-account issuer's keys were read again");
                self.authenticator.store(Arc::new(fresh));
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the issuer's JWKS file is not usable; the keys in force stay");
                false
            }
        }
    }
}

fn build(runtime: &AuthnRuntime, spec: &ProviderSpec) -> Result<Authenticator, String> {
    Authenticator::from_specs(runtime, std::slice::from_ref(spec), AuthnOptions::default()).map_err(|e| e.to_string())
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[async_trait]
impl TokenChecker for JwksTokens {
    async fn check(&self, token: &str) -> Result<Proven, Refused> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Refused::NoToken);
        }
        let verified = match self.authenticator.load_full().verify(token).await {
            Err(f) if f.reason() == Reason::UnknownKey && self.reload_file() => {
                self.authenticator.load_full().verify(token).await
            }
            other => other,
        }
        .map_err(|f| match f.reason() {
            Reason::Expired => Refused::Expired,
            Reason::WrongAudience => Refused::Audience(f.to_string()),
            Reason::UnknownKey | Reason::WrongIssuer | Reason::BadSignature => Refused::UnknownSigner(f.to_string()),
            _ => Refused::Token(f.to_string()),
        })?;
        proven_from_claims(verified.claims())
    }
}

/// The service account a verified token's `kubernetes.io` claims name: both namespace and
/// account, else it is some other issuer's token that happens to verify.
fn proven_from_claims(claims: &Claims) -> Result<Proven, Refused> {
    let text = |names: &[&str]| {
        let path = ClaimPath::from_names(names.iter().copied()).expect("constant claim path");
        claims.text(&path).map(|v| v.into_owned()).filter(|v| !v.is_empty())
    };
    let (Some(namespace), Some(service_account)) = (text(NAMESPACE), text(SERVICE_ACCOUNT)) else {
        return Err(Refused::NotServiceAccount(
            "the token has no kubernetes.io namespace and service account claims".into(),
        ));
    };
    let username = format!("system:serviceaccount:{namespace}:{service_account}");
    Proven::from_username(&username, text(POD_NAME), text(POD_UID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_kubernetes_service_account_name_is_proven() {
        let proven = Proven::from_username("system:serviceaccount:shop:orders.v2-1", None, None).unwrap();
        assert_eq!((proven.namespace.as_str(), proven.service_account.as_str()), ("shop", "orders.v2-1"));
        for name in [
            // What would nest a SPIFFE ID under another account's: .../ns/shop/sa/orders/x/sa/y.
            "system:serviceaccount:shop/sa/orders/x:y",
            "system:serviceaccount:shop:orders/x",
            "system:serviceaccount:shop:a..b",
            "system:serviceaccount:Shop:orders",
            "system:serviceaccount:-shop:orders",
            "system:serviceaccount:shop:orders:extra",
            "system:serviceaccount:shop:",
            "system:serviceaccount::orders",
            "system:node:node-1",
        ] {
            let refused = Proven::from_username(name, None, None).unwrap_err();
            assert!(matches!(refused, Refused::NotServiceAccount(_)), "{name}: {refused:?}");
        }
        let long = format!("system:serviceaccount:{}:orders", "n".repeat(64));
        assert!(Proven::from_username(&long, None, None).is_err(), "a namespace is at most 63 characters");
    }
}
