//! Who a projected service-account token proves: its namespace, service account and (a bound
//! token's) pod. Checked by the API server's TokenReview or offline against the issuer's keys;
//! either way the CA and the policy stream get the same [`Proven`] or the same [`Refused`].

use std::sync::Arc;

use async_trait::async_trait;

use super::kube::KubeApi;
use super::Refused;
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
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
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
